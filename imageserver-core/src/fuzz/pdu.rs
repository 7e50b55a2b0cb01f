//! The PDU reader ([`PduReader`], [`PData::pdvs`](crate::dicom::pdu::PData)):
//! a stream of any bytes, arriving in any pieces, gives PDUs and then an
//! error or the end, never more PDUs than 6-byte headers fit in it, and
//! allocates at most the negotiated limit beyond what it was sent.

use std::io::{self, Read};

use dicom_ul::pdu::{
    write_pdu, AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu,
    PresentationContextProposed, UserVariableItem,
};
use proptest::collection::vec;
use proptest::prelude::*;

use super::mutate::{arbitrary_bytes, mutated, Encoded, Field};
use super::{check, run_case, Bound, MIB};
use crate::dicom::dimse::{Command, Priority};
use crate::dicom::pdu::{Incoming, PduError, PduReader, MAX_CONTROL_PDU_LEN, PDU_HEADER_LEN};

/// One PDU of a generated stream.
#[derive(Debug, Clone)]
enum Spec {
    /// P-DATA-TF: (context id, message control header, data) per PDV.
    PData(Vec<(u8, u8, Vec<u8>)>),
    /// A control PDU dicom-ul encodes.
    Control(Pdu),
    /// Any type byte and body.
    Raw(u8, Vec<u8>),
}

fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.2.840.10008.1.1".to_string()),
        Just("1.2.840.10008.5.1.4.1.2.2.1".to_string()),
        "[0-9.]{0,64}",
    ]
}

fn association_rq() -> impl Strategy<Value = Pdu> {
    (
        "[A-Z][A-Z ]{0,15}",
        "[A-Z][A-Z ]{0,15}",
        vec((any::<u8>(), uid(), vec(uid(), 0..3)), 0..4),
        any::<u32>(),
        prop::option::of(uid()),
    )
        .prop_map(|(calling, called, contexts, max, class)| {
            let mut user_variables = vec![UserVariableItem::MaxLength(max)];
            user_variables.extend(class.map(UserVariableItem::ImplementationClassUID));
            Pdu::AssociationRQ(AssociationRQ {
                protocol_version: 1,
                calling_ae_title: calling,
                called_ae_title: called,
                application_context_name: "1.2.840.10008.3.1.1.1".to_string(),
                presentation_contexts: contexts
                    .into_iter()
                    .map(
                        |(id, abstract_syntax, transfer_syntaxes)| PresentationContextProposed {
                            id,
                            abstract_syntax,
                            transfer_syntaxes,
                        },
                    )
                    .collect(),
                user_variables,
            })
        })
}

fn control() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        3 => association_rq(),
        1 => Just(Pdu::ReleaseRQ),
        1 => Just(Pdu::ReleaseRP),
        1 => Just(Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
        }),
        1 => Just(Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Permanent,
            source: AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ),
        })),
    ]
}

/// PDV data: a command set, or any bytes.
fn pdv_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u16>(), any::<bool>()).prop_map(|(id, find)| if find {
            Command::find_rq(id, "1.2.840.10008.5.1.4.1.2.2.1", Priority::Medium).encode()
        } else {
            Command::echo_rq(id).encode()
        }),
        vec(any::<u8>(), 0..64),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => vec((any::<u8>(), 0u8..4, pdv_data()), 0..4).prop_map(Spec::PData),
        2 => control().prop_map(Spec::Control),
        1 => (any::<u8>(), vec(any::<u8>(), 0..32)).prop_map(|(t, b)| Spec::Raw(t, b)),
    ]
}

/// Records the 2-byte item lengths of an A-ASSOCIATE-RQ/AC body.
fn item_fields(bytes: &[u8], mut at: usize, end: usize, fields: &mut Vec<Field>) {
    while at + 4 <= end {
        let kind = bytes[at];
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        fields.push(Field {
            at: at + 2,
            width: 2,
            big_endian: true,
        });
        let item_end = (at + 4 + len).min(end);
        match kind {
            0x20 | 0x21 => item_fields(bytes, at + 8, item_end, fields),
            0x50 => item_fields(bytes, at + 4, item_end, fields),
            _ => {}
        }
        at = at + 4 + len;
    }
}

fn encode(specs: &[Spec]) -> Encoded {
    let mut out = Encoded::default();
    for spec in specs {
        let mut pdu = Encoded::default();
        match spec {
            Spec::PData(pdvs) => {
                let mut body = Encoded::default();
                for (pc, mch, data) in pdvs {
                    body.put_len(data.len() as u32 + 2, 4, true);
                    body.bytes.extend_from_slice(&[*pc, *mch]);
                    body.bytes.extend_from_slice(data);
                }
                pdu.bytes.extend_from_slice(&[0x04, 0]);
                pdu.put_len(body.bytes.len() as u32, 4, true);
                pdu.append(body);
            }
            Spec::Control(control) => {
                if write_pdu(&mut pdu.bytes, control).is_err() {
                    // Something dicom-ul will not encode: leave it out.
                    continue;
                }
                pdu.fields.push(Field {
                    at: 2,
                    width: 4,
                    big_endian: true,
                });
                if pdu.bytes[0] == 0x01 {
                    let end = pdu.bytes.len();
                    item_fields(&pdu.bytes.clone(), 74, end, &mut pdu.fields);
                }
            }
            Spec::Raw(kind, body) => {
                pdu.bytes.extend_from_slice(&[*kind, 0]);
                pdu.put_len(body.len() as u32, 4, true);
                pdu.bytes.extend_from_slice(body);
            }
        }
        out.append(pdu);
    }
    out
}

/// How the peer's bytes arrive: in pieces of these sizes (cycled), with
/// an interrupted read now and then, and how the stream ends.
#[derive(Debug, Clone)]
struct Arrival {
    pieces: Vec<usize>,
    interrupt_every: Option<usize>,
    ends_with_timeout: bool,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        vec(prop_oneof![1usize..8, 1usize..100_000], 1..4),
        prop::option::of(2usize..8),
        any::<bool>(),
    )
        .prop_map(|(pieces, interrupt_every, ends_with_timeout)| Arrival {
            pieces,
            interrupt_every,
            ends_with_timeout,
        })
}

struct Peer {
    bytes: Vec<u8>,
    pos: usize,
    reads: usize,
    arrival: Arrival,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self
            .arrival
            .interrupt_every
            .is_some_and(|n| self.reads.is_multiple_of(n))
        {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.pos == self.bytes.len() {
            if self.arrival.ends_with_timeout {
                return Err(io::ErrorKind::TimedOut.into());
            }
            return Ok(0);
        }
        let piece = self.arrival.pieces[self.reads % self.arrival.pieces.len()];
        let n = piece.min(buf.len()).min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One connection: our limit, what the peer sends and how it arrives.
#[derive(Debug, Clone)]
struct Connection {
    max_pdata_len: u32,
    bytes: Vec<u8>,
    arrival: Arrival,
}

fn connection() -> BoxedStrategy<Connection> {
    (
        prop_oneof![
            Just(0u32),
            Just(16_384),
            Just(MAX_CONTROL_PDU_LEN),
            1u32..70_000
        ],
        prop_oneof![
            4 => mutated(vec(spec(), 0..5).prop_map(|s| encode(&s))),
            1 => arbitrary_bytes(),
        ],
        arrival(),
    )
        .prop_map(|(max_pdata_len, bytes, arrival)| Connection {
            max_pdata_len,
            bytes,
            arrival,
        })
        .boxed()
}

/// Reads PDUs until an error or the end; checks the reader's promises.
fn read_all(connection: Connection) -> Result<usize, String> {
    let len = connection.bytes.len();
    let mut reader = PduReader::new(connection.max_pdata_len);
    let limit = PDU_HEADER_LEN + reader.max_pdata_len().max(MAX_CONTROL_PDU_LEN) as usize;
    let mut peer = Peer {
        bytes: connection.bytes,
        pos: 0,
        reads: 0,
        arrival: connection.arrival,
    };
    let mut pdus = 0;
    loop {
        let before = peer.pos;
        match reader.read(&mut peer) {
            Ok(Incoming::PData(pdata)) => {
                for pdv in pdata.pdvs() {
                    if pdv.is_err() {
                        break;
                    }
                }
            }
            Ok(Incoming::Other(_)) => {}
            Err(PduError::Closed) => {
                if peer.pos != len {
                    return Err("closed before the end of the stream".into());
                }
                return Ok(pdus);
            }
            Err(_) => return Ok(pdus),
        }
        pdus += 1;
        if peer.pos < before + PDU_HEADER_LEN {
            return Err(format!("a pdu from {} bytes", peer.pos - before));
        }
        if reader.buffer_capacity() > 2 * limit {
            return Err(format!(
                "buffer of {} bytes for a limit of {limit}",
                reader.buffer_capacity()
            ));
        }
    }
}

#[test]
fn pdu_reader_never_panics_hangs_or_overallocates() {
    check("pdu", 12000, connection(), |connection| {
        // A PDU's body is allocated up to the limit before it is read (the
        // limit is the bound), and Vec's growth may double the buffer.
        let reader_limit = PduReader::new(connection.max_pdata_len)
            .max_pdata_len()
            .max(MAX_CONTROL_PDU_LEN) as usize;
        let bound = Bound {
            per_byte: 8,
            len: connection.bytes.len(),
            fixed: 2 * (PDU_HEADER_LEN + reader_limit) + MIB,
        };
        let verdict = run_case(bound, move || read_all(connection))?;
        verdict.map_err(TestCaseError::fail)?;
        Ok(())
    });
}
