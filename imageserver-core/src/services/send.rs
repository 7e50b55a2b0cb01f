//! Sending instances to a remote AE: the send plan and retry policy over
//! the toolkit's storage SCU ([`crate::dicom::scu::StoreScu`]), used by
//! C-MOVE sub-operations, auto-routing and study sends.
//!
//! The plan groups instances by SOP class so that each association's
//! presentation contexts fit in 128; the policy reconnects once after an
//! association is lost mid-job, and gives the rest up after a second loss
//! in a row.

use std::ops::ControlFlow;

use tracing::{debug, info, warn};

use crate::dicom::scu::{
    proposals, Destination, Outcome, Outgoing, ScuError, ScuOptions, StoreScu, Tally, MAX_CONTEXTS,
};

/// Associations lost in a row (with nothing stored in between) before the
/// rest of a job is given up.
const MAX_CONSECUTIVE_LOSSES: u32 = 2;

/// What [`send`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Instances stored with status success.
    pub completed: usize,
    /// Instances stored with a warning status.
    pub warning: usize,
    /// Instances not stored.
    pub failed: usize,
    /// The callback stopped the job; the rest was not attempted.
    pub stopped: bool,
    /// Associations opened.
    pub associations: usize,
}

/// Sends `items` to `destination`, reporting every instance's outcome to
/// `on_result` in turn (items are grouped by association, in order within
/// a group: with at most 128 contexts needed, which is the usual case, one
/// association in the given order). `on_result` returning `Break` stops
/// the job between instances (the association is released).
///
/// `Err` only when the first association cannot be established (nothing
/// was reported then): connection refused, rejected, no acceptable
/// context, timeout. A later failure to connect fails the instances it
/// concerns (each reported); an association lost in the middle fails the
/// instance in flight, and the job reconnects once for the rest.
pub fn send<I: Outgoing>(
    destination: &Destination,
    options: &ScuOptions,
    items: &[I],
    on_result: &mut dyn FnMut(&I, &Outcome) -> ControlFlow<()>,
) -> Result<SendSummary, ScuError> {
    let mut summary = SendSummary::default();
    let mut report = |item: &I, outcome: &Outcome, summary: &mut SendSummary| {
        match outcome.tally() {
            Tally::Completed => summary.completed += 1,
            Tally::Warning => summary.warning += 1,
            Tally::Failed => summary.failed += 1,
        }
        if matches!(on_result(item, outcome), ControlFlow::Break(())) {
            summary.stopped = true;
        }
        summary.stopped
    };
    for group in plan(items)? {
        let pairs: Vec<(&str, &str)> = group
            .iter()
            .map(|&i| (items[i].sop_class_uid(), items[i].transfer_syntax_uid()))
            .collect();
        let mut scu: Option<StoreScu> = None;
        let mut losses = 0u32;
        let mut position = 0;
        while position < group.len() {
            let item = &items[group[position]];
            let current = match scu.as_mut() {
                Some(current) => current,
                None => match StoreScu::connect(destination, options, pairs.iter().copied()) {
                    Ok(opened) => {
                        summary.associations += 1;
                        scu.insert(opened)
                    }
                    Err(error) if summary.associations == 0 && reported(&summary) == 0 => {
                        return Err(error)
                    }
                    Err(error) => {
                        warn!(destination = %destination, %error, "cannot open a storage association");
                        let rest = group[position..].iter().map(|&i| &items[i]);
                        if fail_all(rest, &error.to_string(), &mut summary, &mut report) {
                            return Ok(summary);
                        }
                        break;
                    }
                },
            };
            let outcome = match current.store_item(item) {
                Ok(outcome) => {
                    losses = 0;
                    outcome
                }
                Err(error) => {
                    if let Some(lost) = scu.take() {
                        lost.abort();
                    }
                    if !error.is_local() {
                        losses += 1;
                    }
                    warn!(destination = %destination, %error, sop_instance_uid = item.sop_instance_uid(), "storage association lost");
                    if losses >= MAX_CONSECUTIVE_LOSSES {
                        let reason = format!("gave up after losing the association twice: {error}");
                        let rest = group[position..].iter().map(|&i| &items[i]);
                        if fail_all(rest, &reason, &mut summary, &mut report) {
                            return Ok(summary);
                        }
                        break;
                    }
                    Outcome::Failed {
                        reason: error.to_string(),
                    }
                }
            };
            if report(item, &outcome, &mut summary) {
                if let Some(open) = scu.take() {
                    if let Err(error) = open.release() {
                        debug!(destination = %destination, %error, "release after a stop failed");
                    }
                }
                return Ok(summary);
            }
            position += 1;
        }
        if let Some(open) = scu.take() {
            if let Err(error) = open.release() {
                // Every instance was answered already: only worth a log line.
                info!(destination = %destination, %error, "storage association release failed");
            }
        }
    }
    Ok(summary)
}

/// Reports each of `items` failed with `reason`, in turn; true when the
/// callback stopped the job (the items after that one are not reported).
fn fail_all<'a, I: 'a>(
    items: impl IntoIterator<Item = &'a I>,
    reason: &str,
    summary: &mut SendSummary,
    report: &mut impl FnMut(&I, &Outcome, &mut SendSummary) -> bool,
) -> bool {
    items.into_iter().any(|item| {
        let outcome = Outcome::Failed {
            reason: reason.to_string(),
        };
        report(item, &outcome, summary)
    })
}

fn reported(summary: &SendSummary) -> usize {
    summary.completed + summary.warning + summary.failed
}

/// Splits the items into association groups whose contexts fit in 128,
/// by SOP class, keeping the order within each group.
fn plan<I: Outgoing>(items: &[I]) -> Result<Vec<Vec<usize>>, ScuError> {
    // contexts each class needs
    let mut classes: Vec<(&str, Vec<&str>)> = Vec::new();
    for item in items {
        let (class, ts) = (item.sop_class_uid(), item.transfer_syntax_uid());
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, syntaxes)) => {
                if !syntaxes.contains(&ts) {
                    syntaxes.push(ts);
                }
            }
            None => classes.push((class, vec![ts])),
        }
    }
    let mut group_of_class: Vec<(&str, usize)> = Vec::new();
    let (mut groups, mut used) = (0usize, 0usize);
    for (class, syntaxes) in &classes {
        let needed = proposals(syntaxes.iter().map(|ts| (*class, *ts))).len();
        if needed > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(needed));
        }
        if groups == 0 || used + needed > MAX_CONTEXTS {
            groups += 1;
            used = 0;
        }
        used += needed;
        group_of_class.push((class, groups - 1));
    }
    let mut out = vec![Vec::new(); groups];
    for (index, item) in items.iter().enumerate() {
        let group = group_of_class
            .iter()
            .find(|(c, _)| *c == item.sop_class_uid())
            .map(|(_, g)| *g)
            .expect("every class was planned");
        out[group].push(index);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use std::net::Shutdown;
    use std::time::Duration;

    use dicom_ul::pdu::AbortRQSource;
    use dicom_ul::Pdu;

    use crate::dicom::dimse::{Command, Status};
    use crate::dicom::part10::reader::tests::part10;
    use crate::dicom::pdu::{self, Incoming, PduReader};
    use crate::dicom::scu::EXPLICIT_VR_LITTLE_ENDIAN;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    struct Item {
        class: String,
        ts: String,
    }

    impl Outgoing for Item {
        fn sop_class_uid(&self) -> &str {
            &self.class
        }
        fn sop_instance_uid(&self) -> &str {
            "1.2.3"
        }
        fn transfer_syntax_uid(&self) -> &str {
            &self.ts
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Err("not here".into())
        }
    }

    #[test]
    fn many_classes_spread_over_associations() {
        let item = |c: usize| Item {
            class: format!("1.2.3.{c}"),
            ts: EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
        };
        // 2 contexts per class: 64 classes fit one association, 65 do not.
        let items: Vec<Item> = (0..65).map(item).chain([item(0)]).collect();
        let groups = plan(&items).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 65, "class 0 twice + 63 others");
        assert_eq!(groups[1], vec![64]);
        assert_eq!(*groups[0].last().unwrap(), 65, "order kept within a group");
        assert_eq!(plan(&items[..64]).unwrap().len(), 1);
        assert!(plan::<Item>(&[]).unwrap().is_empty());
    }

    /// An instance held in memory.
    struct Mem {
        uid: String,
        bytes: Vec<u8>,
    }

    impl Outgoing for Mem {
        fn sop_class_uid(&self) -> &str {
            CT
        }
        fn sop_instance_uid(&self) -> &str {
            &self.uid
        }
        fn transfer_syntax_uid(&self) -> &str {
            EXPLICIT_VR_LITTLE_ENDIAN
        }
        fn file_size(&self) -> Option<u64> {
            Some(self.bytes.len() as u64)
        }
        fn open(
            &self,
        ) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
            Ok(Box::new(Cursor::new(&self.bytes[..])))
        }
    }

    /// (SOP Instance UID, data set) of each instance a fake SCP stored.
    type Received = Vec<(String, Vec<u8>)>;

    /// What the fake storage SCP does with each C-STORE-RQ, in turn.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Answer(u16),
        Abort,
        Silent,
    }

    /// A storage SCP on loopback that plays `acts` (over as many
    /// associations as it takes) and returns the (instance, data set) pairs
    /// it received completely, once the client released after the last act.
    fn fake_scp(acts: Vec<Act>) -> (std::net::SocketAddr, std::thread::JoinHandle<Received>) {
        use dicom_ul::association::Association;
        use dicom_ul::ServerAssociationOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut acts = acts.into_iter();
            let mut received = Vec::new();
            let mut finished = false;
            while !finished {
                let (socket, _) = listener.accept().unwrap();
                let mut association = ServerAssociationOptions::new()
                    .accept_any()
                    .ae_title("FAKE")
                    .with_abstract_syntax(CT)
                    .establish(socket)
                    .unwrap();
                let peer_max = association.peer_max_pdu_length();
                let mut socket = association.inner_stream().try_clone().unwrap();
                drop(association);
                let mut reader = PduReader::new(0);
                let (mut command, mut data) = (Vec::new(), Vec::new());
                let mut request: Option<Command> = None;
                'pdus: loop {
                    let pdv_list: Vec<(u8, bool, bool, Vec<u8>)> = match reader.read(&mut socket) {
                        Ok(Incoming::PData(p)) => p
                            .pdvs()
                            .map(|v| v.unwrap())
                            .map(|v| (v.pc_id, v.is_command, v.is_last, v.data.to_vec()))
                            .collect(),
                        Ok(Incoming::Other(Pdu::ReleaseRQ)) => {
                            pdu::write_pdu(&mut socket, &Pdu::ReleaseRP).unwrap();
                            finished = acts.len() == 0;
                            break 'pdus;
                        }
                        Ok(_) | Err(_) => break 'pdus,
                    };
                    for (pc_id, is_command, is_last, bytes) in pdv_list {
                        if is_command {
                            command.extend_from_slice(&bytes);
                            if is_last {
                                request = Some(Command::decode(&command).unwrap());
                                command.clear();
                            }
                            continue;
                        }
                        data.extend_from_slice(&bytes);
                        if !is_last {
                            continue;
                        }
                        let rq = request.take().unwrap();
                        match acts.next().expect("an act for every store") {
                            Act::Answer(code) => {
                                received.push((
                                    rq.affected_sop_instance_uid.clone().unwrap(),
                                    std::mem::take(&mut data),
                                ));
                                let rsp = Command::store_rsp(&rq, Status(code));
                                let mut scratch = Vec::new();
                                pdu::write_pdata(
                                    &mut socket,
                                    &mut scratch,
                                    pc_id,
                                    true,
                                    &rsp.encode(),
                                    peer_max,
                                )
                                .unwrap();
                            }
                            Act::Abort => {
                                data.clear();
                                let abort = Pdu::AbortRQ {
                                    source: AbortRQSource::ServiceUser,
                                };
                                let _ = pdu::write_pdu(&mut socket, &abort);
                                let _ = socket.shutdown(Shutdown::Both);
                                break 'pdus;
                            }
                            Act::Silent => {
                                // Never answer: wait for the client to give up.
                                let mut sink = Vec::new();
                                let _ = socket.read_to_end(&mut sink);
                                finished = acts.len() == 0;
                                break 'pdus;
                            }
                        }
                    }
                }
            }
            received
        });
        (addr, handle)
    }

    fn instances(n: usize) -> Vec<Mem> {
        (0..n)
            .map(|i| Mem {
                uid: format!("1.2.3.{i}"),
                bytes: part10(20, &vec![i as u8; 100_000 + i]),
            })
            .collect()
    }

    fn destination(addr: std::net::SocketAddr) -> Destination {
        Destination {
            ae_title: "FAKE".into(),
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    #[test]
    fn send_reports_each_outcome_and_reconnects_after_an_abort() {
        let items = instances(4);
        let (addr, scp) = fake_scp(vec![
            Act::Answer(0x0000),
            Act::Abort,
            Act::Answer(0xB000),
            Act::Answer(0xA700),
        ]);
        let mut options = ScuOptions::new("TESTSCU");
        options.max_pdu_length = 16384;
        let mut seen = Vec::new();
        let summary = send(
            &destination(addr),
            &options,
            &items,
            &mut |item, outcome| {
                seen.push((item.uid.clone(), outcome.tally()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("1.2.3.0".to_string(), Tally::Completed),
                ("1.2.3.1".to_string(), Tally::Failed),
                ("1.2.3.2".to_string(), Tally::Warning),
                ("1.2.3.3".to_string(), Tally::Failed),
            ]
        );
        assert_eq!(
            (summary.completed, summary.warning, summary.failed),
            (1, 1, 2)
        );
        assert_eq!(summary.associations, 2, "one reconnection after the abort");
        let received = scp.join().unwrap();
        assert_eq!(received.len(), 3);
        for (uid, data) in received {
            let item = items.iter().find(|i| i.uid == uid).unwrap();
            assert_eq!(data, item.bytes[164..], "data set of {uid}");
        }
    }

    #[test]
    fn a_silent_peer_times_out_and_a_stop_ends_the_job() {
        let items = instances(3);
        let (addr, scp) = fake_scp(vec![Act::Answer(0x0000), Act::Silent]);
        let mut options = ScuOptions::new("TESTSCU");
        options.response_timeout = Duration::from_millis(300);
        let mut seen = Vec::new();
        let summary = send(&destination(addr), &options, &items, &mut |_, outcome| {
            seen.push(outcome.clone());
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(summary.stopped);
        assert_eq!(seen.len(), 2, "nothing after the stop");
        match &seen[1] {
            Outcome::Failed { reason } => assert!(reason.contains("did not answer"), "{reason}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(scp.join().unwrap().len(), 1);
    }

    #[test]
    fn nothing_listening_is_connection_refused() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let items = instances(1);
        let error = send(
            &destination(addr),
            &ScuOptions::new("TESTSCU"),
            &items,
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(
            matches!(error, ScuError::ConnectionRefused { .. }),
            "{error:?}"
        );
    }
}
