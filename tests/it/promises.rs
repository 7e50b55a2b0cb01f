//! Promises of docs/conformance.md that no other test covers: storage as
//! received in every transfer syntax, `check_called_ae = false`, private
//! SOP classes, the nesting limit exactly, and 0211 for an unknown command.

use std::path::Path;
use std::time::Duration;

use crate::support::corpus::{generate_corpus, CorpusShape, Instance, Rng};
use crate::support::dcmtk::{self, STORESCU};
use crate::support::raw::{self, DatasetUids, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};

/// Converts `from` into `to` with a DCMTK tool and its options.
fn convert(tool: &str, options: &[&str], from: &Path, to: &Path) {
    let output = dcmtk::run(
        {
            let mut command = dcmtk::command(tool);
            command.args(options).arg(from).arg(to);
            command
        },
        Duration::from_secs(30),
    );
    assert!(output.success(), "{tool} {options:?}: {output}");
}

/// Each instance is stored as it travelled: the data set bytes of the file
/// equal those of the file storescu sent, in Implicit VR LE, Explicit VR
/// Big Endian, Deflated Explicit VR LE and encapsulated RLE, and the meta
/// group and the index name that syntax. (Every other byte comparison of
/// the suite sends Explicit VR LE.)
#[test]
fn instances_are_stored_byte_for_byte_in_the_syntax_they_arrived_in() {
    let dir = test_dir("as-received");
    let server = Server::start(dir.path());
    let corpus: Vec<Instance> = generate_corpus(
        &dir.path().join("corpus"),
        61,
        CorpusShape::uniform(1, 1, 4, (32, 32)),
    );
    let cases: [(&str, &[&str], &str, &str); 4] = [
        ("dcmconv", &["+ti"], "-xi", "1.2.840.10008.1.2"),
        ("dcmconv", &["+tb"], "-xb", "1.2.840.10008.1.2.2"),
        ("dcmconv", &["+td"], "-xd", "1.2.840.10008.1.2.1.99"),
        ("dcmcrle", &[], "-xr", "1.2.840.10008.1.2.5"),
    ];
    let sent_dir = dir.path().join("sent");
    std::fs::create_dir_all(&sent_dir).unwrap();
    let index = server.archive().index();
    for (instance, (tool, options, propose, syntax)) in corpus.iter().zip(cases) {
        let sent = sent_dir.join(format!("{syntax}.dcm"));
        convert(&format!("/usr/bin/{tool}"), options, &instance.path, &sent);
        let mut command = dcmtk::command(STORESCU);
        command
            .args([
                "-v",
                propose,
                "-R",
                "-aet",
                "ITSCU",
                "-aec",
                server.ae_title(),
            ])
            .args(["-to", "10", "-ta", "10", "-td", "60"])
            .arg(server.addr().ip().to_string())
            .arg(server.addr().port().to_string())
            .arg(&sent);
        let stored = dcmtk::run(command, Duration::from_secs(60));
        assert!(stored.success(), "{syntax}: {stored}");
        let path = server.archive().expected_path(
            &instance.study_date,
            &instance.study_uid,
            &instance.series_uid,
            &instance.sop_instance_uid,
        );
        let meta = crate::support::corpus::file_meta(&path);
        assert_eq!(
            meta.transfer_syntax().trim_end_matches(['\0', ' ']),
            syntax,
            "the stored meta group names the syntax it travelled in"
        );
        let row = index
            .instance(&instance.sop_instance_uid)
            .unwrap_or_else(|| panic!("{syntax}: not indexed"));
        assert_eq!(row.transfer_syntax_uid.as_str(), syntax);
        assert!(
            crate::support::corpus::same_dataset(&path, &sent),
            "the data set stored in {syntax} differs from the one sent"
        );
    }
}

/// With `check_called_ae = false` an association calling any AE title is
/// accepted (the default refuses it: `echo::wrong_called_ae_title_is_rejected`).
#[test]
fn any_called_ae_title_is_accepted_when_the_check_is_off() {
    let dir = test_dir("called-ae-off");
    let server = Server::builder(dir.path())
        .dicom_setting("check_called_ae", false)
        .start();
    let echo = dcmtk::echo(server.addr(), "SOMEONE_ELSE", Duration::from_secs(20));
    assert!(echo.success(), "{echo}");
}

fn uids(rng: &mut Rng, sop_class_uid: &str) -> DatasetUids {
    DatasetUids {
        sop_class_uid: sop_class_uid.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    }
}

/// A private storage SOP class listed in `private_sop_classes` is
/// negotiated and stored; one not listed is refused at negotiation.
#[test]
fn configured_private_sop_classes_are_stored_and_others_refused() {
    const PRIVATE: &str = "1.3.6.1.4.1.55555.1.1";
    const UNLISTED: &str = "1.3.6.1.4.1.55555.1.2";
    let dir = test_dir("private-sop");
    let server = Server::builder(dir.path())
        .dicom_setting("private_sop_classes", format!("[{PRIVATE:?}]"))
        .start();
    let mut rng = Rng::new(62);
    let private = uids(&mut rng, PRIVATE);
    let mut peer = RawPeer::associate(
        server.addr(),
        server.ae_title(),
        &[Proposal::implicit(1, PRIVATE)],
    );
    let status = peer.c_store(
        1,
        PRIVATE,
        &private.sop_instance_uid,
        &raw::ct_dataset(&private),
    );
    peer.release();
    assert_eq!(status, Some(0x0000), "a store of the listed private class");
    let stored = server
        .archive()
        .index()
        .instance(&private.sop_instance_uid)
        .expect("indexed");
    assert_eq!(stored.sop_class_uid.as_str(), PRIVATE);

    let mut peer = RawPeer::connect(server.addr());
    match peer.request_association(
        server.ae_title(),
        "RAWSCU",
        &[Proposal::implicit(1, UNLISTED)],
        raw::CLIENT_MAX_PDU,
    ) {
        Some(raw::Pdu::AssociateAc { contexts, .. }) => assert!(
            contexts.iter().all(|c| c.id != 1 || c.result != 0),
            "the unlisted class was accepted: {contexts:?}"
        ),
        other => panic!("expected an A-ASSOCIATE-AC with the context refused: {other:?}"),
    }
}

/// An unknown DIMSE command on an accepted context is answered 0211
/// (unrecognized operation) and the association goes on.
#[test]
fn an_unknown_command_is_answered_0211() {
    let dir = test_dir("unknown-command");
    let server = Server::start(dir.path());
    let mut peer = RawPeer::associate(
        server.addr(),
        server.ae_title(),
        &[Proposal::implicit(1, raw::VERIFICATION)],
    );
    // A command set of an unknown command field (0x0FF1), no data set.
    let command = raw::ImplicitLe::new()
        .uid(0x0000, 0x0002, raw::VERIFICATION)
        .us(0x0000, 0x0100, 0x0FF1)
        .us(0x0000, 0x0110, 7)
        .us(0x0000, 0x0800, 0x0101)
        .build();
    peer.send_message(1, &command, None)
        .expect("send the command");
    assert_eq!(
        peer.read_status(Duration::from_secs(10)),
        Some(0x0211),
        "an unknown command"
    );
    // Still served: a C-ECHO on the same association.
    peer.send_message(1, &raw::c_echo_rq(8), None)
        .expect("send C-ECHO");
    assert_eq!(peer.read_status(Duration::from_secs(10)), Some(0x0000));
    peer.release();
}

/// A data set whose sequences nest `depth` levels (undefined lengths).
fn nested_ct(uids: &DatasetUids, depth: usize) -> Vec<u8> {
    let mut nested = raw::ImplicitLe::new();
    for _ in 0..depth {
        nested = nested.header_only(0x0008, 0x1140, 0xFFFF_FFFF).header_only(
            0xFFFE,
            0xE000,
            0xFFFF_FFFF,
        );
    }
    for _ in 0..depth {
        nested = nested
            .header_only(0xFFFE, 0xE00D, 0)
            .header_only(0xFFFE, 0xE0DD, 0);
    }
    let mut dataset = raw::ct_dataset_header(uids).build();
    dataset.extend(nested.build());
    dataset
}

/// Sequences nested exactly as deep as the limit (32 levels) are stored;
/// one level more is refused with C000 and nothing is written.
#[test]
fn nesting_exactly_at_the_limit_is_stored_and_one_deeper_refused() {
    let dir = test_dir("nesting-limit");
    let server = Server::start(dir.path());
    let mut rng = Rng::new(63);
    for (depth, expected) in [(32, 0x0000), (33, 0xC000)] {
        let uids = uids(&mut rng, raw::CT_IMAGE_STORAGE);
        let mut peer = RawPeer::associate(
            server.addr(),
            server.ae_title(),
            &[Proposal::implicit(1, raw::CT_IMAGE_STORAGE)],
        );
        let status = peer.c_store(
            1,
            raw::CT_IMAGE_STORAGE,
            &uids.sop_instance_uid,
            &nested_ct(&uids, depth),
        );
        peer.release();
        assert_eq!(status, Some(expected), "{depth} levels");
        assert_eq!(
            server
                .archive()
                .index()
                .instance(&uids.sop_instance_uid)
                .is_some(),
            expected == 0x0000,
            "{depth} levels indexed"
        );
    }
}
