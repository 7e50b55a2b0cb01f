//! DIMSE command decoding ([`Command::decode`]): any bytes give a command
//! or an error, within a bound proportional to their length; a command we
//! encode decodes to itself.

use proptest::collection::vec;
use proptest::prelude::*;

use super::mutate::{arbitrary_bytes, mutated, Encoded, Field};
use super::{check, run_case, Bound, MIB};
use crate::dicom::dimse::{Command, CommandField, Priority, Status};

/// Command fields: the ones we serve, and any code.
fn field() -> impl Strategy<Value = CommandField> {
    prop_oneof![
        prop::sample::select(
            &[
                0x0001u16, 0x8001, 0x0020, 0x8020, 0x0021, 0x8021, 0x0010, 0x8010, 0x0030, 0x8030,
                0x0FFF
            ][..]
        ),
        any::<u16>(),
    ]
    .prop_map(CommandField::from_code)
}

fn uid() -> impl Strategy<Value = String> {
    "[1-9][0-9]{0,3}(\\.[0-9]{1,8}){0,7}"
}

/// Text without padding at either end, as decode returns it.
fn ae() -> impl Strategy<Value = String> {
    "[A-Z0-9_]([A-Z0-9_ ]{0,14}[A-Z0-9_])?"
}

fn comment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9.:()]([A-Za-z0-9.:() ]{0,62}[A-Za-z0-9.:()])?"
}

/// A command as we would send or receive it.
fn command() -> impl Strategy<Value = Command> {
    (
        (
            field(),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            prop::option::of(uid()),
            prop::option::of(uid()),
            prop::option::of(uid()),
            prop::option::of(prop_oneof![
                Just(Priority::Low),
                Just(Priority::Medium),
                Just(Priority::High)
            ]),
            any::<bool>(),
        ),
        (
            prop::option::of(any::<u16>().prop_map(Status)),
            prop::option::of(comment()),
            prop::option::of(vec(any::<u32>(), 0..4)),
            prop::option::of(ae()),
            prop::option::of(ae()),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
        ),
    )
        .prop_map(|(a, b)| {
            let mut c = Command::new(a.0);
            c.message_id = a.1;
            c.message_id_being_responded_to = a.2;
            c.affected_sop_class_uid = a.3;
            c.affected_sop_instance_uid = a.4;
            c.requested_sop_class_uid = a.5;
            c.priority = a.6;
            c.has_dataset = a.7;
            c.status = b.0;
            c.error_comment = b.1;
            c.offending_element = b.2;
            c.move_destination = b.3;
            c.move_originator_ae_title = b.4;
            c.move_originator_message_id = b.5;
            c.remaining_suboperations = b.6;
            c.completed_suboperations = b.7;
            c.failed_suboperations = b.8;
            c.warning_suboperations = b.9;
            c
        })
}

/// The encoded command with the places of its element lengths.
fn encoded(command: &Command) -> Encoded {
    let bytes = command.encode();
    let mut fields = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        fields.push(Field {
            at: at + 4,
            width: 4,
            big_endian: false,
        });
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        at += 8 + len as usize;
    }
    Encoded { bytes, fields }
}

#[derive(Debug, Clone)]
enum Case {
    /// A valid command: it must decode to itself.
    RoundTrip(Command),
    /// Anything else: a command or an error.
    Bytes(Vec<u8>),
}

fn case() -> BoxedStrategy<Case> {
    prop_oneof![
        1 => command().prop_map(Case::RoundTrip),
        4 => mutated(command().prop_map(|c| encoded(&c))).prop_map(Case::Bytes),
        2 => arbitrary_bytes().prop_map(Case::Bytes),
    ]
    .boxed()
}

#[test]
fn command_decoding_never_panics_hangs_or_overallocates() {
    check("command", 15000, case(), |case| {
        let bytes = match &case {
            Case::RoundTrip(c) => c.encode(),
            Case::Bytes(b) => b.clone(),
        };
        let bound = Bound {
            per_byte: 8,
            len: bytes.len(),
            fixed: MIB,
        };
        let decoded = run_case(bound, move || {
            Command::decode(&bytes).map_err(|e| e.to_string())
        })?;
        if let Case::RoundTrip(command) = case {
            prop_assert_eq!(decoded, Ok(command));
        }
        Ok(())
    });
}
