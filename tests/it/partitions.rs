//! Partitions, devices and the duplicate SOP policies, through real DCMTK
//! clients: isolation between partitions, unknown callers, permissions,
//! per-device association limits, and what happens to a second instance
//! with a known SOP Instance UID under each policy.

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::find::find_scu::{findscu, Model};
use crate::support::archive_state;
use crate::support::corpus::{
    blake3_hex, generate_corpus, single_instance, single_spec, write_instance, CorpusShape,
    InstanceSpec,
};
use crate::support::dcmtk::{self, CALLING_AE, ECHOSCU};
use crate::support::raw::{self, Pdu, Proposal, RawPeer};
use crate::support::server::{free_port, test_dir, Index, Server, BINARY};
use dicom_dictionary_std::tags::STUDY_INSTANCE_UID;
use retrieve_peers::StoreScp;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `echoscu` with a chosen calling AE title.
fn echo_as(addr: SocketAddr, calling_ae: &str, called_ae: &str) -> dcmtk::ToolOutput {
    let mut command = dcmtk::command(ECHOSCU);
    command
        .args([
            "-aet", calling_ae, "-aec", called_ae, "-to", "10", "-ta", "10",
        ])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    dcmtk::run(command, TIMEOUT)
}

#[test]
fn partitions_keep_their_data_apart() {
    let dir = test_dir("partitions");
    let port2 = free_port();
    let server = Server::builder(dir.path())
        .setting(
            "partitions",
            format!(r#"[{{ ae_title = "RESEARCH", port = {port2} }}]"#),
        )
        .start();
    let research: SocketAddr = ([127, 0, 0, 1], port2).into();

    let shape = CorpusShape::uniform(1, 1, 3, (32, 32));
    let main_corpus = generate_corpus(&dir.path().join("a"), 11, shape);
    let research_corpus = generate_corpus(&dir.path().join("b"), 12, shape);
    let a = dcmtk::store(
        server.addr(),
        "IMAGESERVER",
        &[&dir.path().join("a")],
        &[],
        TIMEOUT,
    );
    assert!(a.success(), "{a}");
    let b = dcmtk::store(research, "RESEARCH", &[&dir.path().join("b")], &[], TIMEOUT);
    assert!(b.success(), "{b}");
    // The default partition's AE title is not answered on the other port.
    let wrong = echo_as(research, CALLING_AE, "IMAGESERVER");
    assert!(!wrong.success(), "{wrong}");

    let data = server.archive().data_dir();
    let main_index = server.archive().index_of("IMAGESERVER");
    let research_index = server.archive().index_of("RESEARCH");
    assert_eq!(main_index.counts().instances, 3);
    assert_eq!(research_index.counts().instances, 3);
    for instance in &main_corpus {
        assert!(main_index.instance(&instance.sop_instance_uid).is_some());
        assert!(research_index
            .instance(&instance.sop_instance_uid)
            .is_none());
    }
    for instance in &research_corpus {
        assert!(research_index
            .instance(&instance.sop_instance_uid)
            .is_some());
        assert!(main_index.instance(&instance.sop_instance_uid).is_none());
        let folder = data.join("fs1/RESEARCH").join(&instance.study_date);
        assert!(folder.join(&instance.study_uid).is_dir(), "{folder:?}");
    }
}

/// C-MOVE of one study to `destination` on one association: the final
/// status and its number of pending responses.
fn move_study(
    addr: SocketAddr,
    called_ae: &str,
    study_uid: &str,
    destination: &str,
) -> Option<(u16, usize)> {
    let mut peer = RawPeer::associate(
        addr,
        called_ae,
        &[Proposal::implicit(1, raw::STUDY_ROOT_MOVE)],
    );
    peer.send_message(
        1,
        &raw::c_move_rq(1, raw::STUDY_ROOT_MOVE, destination),
        Some(&raw::study_identifier(study_uid)),
    )
    .expect("send the C-MOVE");
    let status = peer.read_final_status(TIMEOUT);
    peer.release();
    status
}

/// The StudyInstanceUIDs a universal study-level C-FIND answers.
fn studies_found(addr: SocketAddr, called_ae: &str, work: &Path) -> BTreeSet<String> {
    let find = findscu(
        addr,
        called_ae,
        Model::Study,
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
        &[],
        work,
    );
    assert_eq!(find.final_status(), Some(0x0000), "{find}");
    find.column(STUDY_INSTANCE_UID)
        .into_iter()
        .map(|uid| uid.expect("a StudyInstanceUID"))
        .collect()
}

#[test]
fn partitions_are_apart_on_the_wire() {
    let dir = test_dir("partitions-wire");
    let port2 = free_port();
    let dest = StoreScp::start("DEST", &dir.path().join("dest"), false);
    let server = Server::builder(dir.path())
        .setting(
            "partitions",
            format!(r#"[{{ ae_title = "RESEARCH", port = {port2}, unknown_devices_query_retrieve = true }}]"#),
        )
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "DEST", host = "127.0.0.1", port = {0} }},
                    {{ ae_title = "DEST", host = "127.0.0.1", port = {0}, partition = "RESEARCH" }}]"#,
                dest.port
            ),
        )
        .start();
    let research: SocketAddr = ([127, 0, 0, 1], port2).into();
    let shape = CorpusShape::uniform(1, 1, 3, (32, 32));
    let main_corpus = generate_corpus(&dir.path().join("a"), 21, shape);
    let research_corpus = generate_corpus(&dir.path().join("b"), 22, shape);
    let a = dcmtk::store(
        server.addr(),
        "IMAGESERVER",
        &[&dir.path().join("a")],
        &[],
        TIMEOUT,
    );
    assert!(a.success(), "{a}");
    let b = dcmtk::store(research, "RESEARCH", &[&dir.path().join("b")], &[], TIMEOUT);
    assert!(b.success(), "{b}");
    let (main_study, research_study) = (&main_corpus[0].study_uid, &research_corpus[0].study_uid);

    // C-FIND answers each partition's own study only.
    let work = dir.path().join("find");
    assert_eq!(
        studies_found(server.addr(), "IMAGESERVER", &work),
        BTreeSet::from([main_study.clone()])
    );
    assert_eq!(
        studies_found(research, "RESEARCH", &work),
        BTreeSet::from([research_study.clone()])
    );

    // C-MOVE of the other partition's study matches nothing: success with
    // no sub-operation, nothing sent.
    assert_eq!(
        move_study(research, "RESEARCH", main_study, "DEST"),
        Some((0x0000, 0))
    );
    assert_eq!(
        move_study(server.addr(), "IMAGESERVER", research_study, "DEST"),
        Some((0x0000, 0))
    );
    assert!(dest.received().is_empty(), "{:?}", dest.received());

    // Its own study moves: the control.
    let moved = move_study(research, "RESEARCH", research_study, "DEST");
    assert_eq!(moved.map(|m| m.0), Some(0x0000));
    let received: BTreeSet<String> = dest.received().into_keys().collect();
    let expected: BTreeSet<String> = research_corpus
        .iter()
        .map(|i| i.sop_instance_uid.clone())
        .collect();
    assert_eq!(received, expected);
}

#[test]
fn unknown_callers_permissions_and_device_limits() {
    let dir = test_dir("devices");
    let server = Server::builder(dir.path())
        .dicom_setting("accept_unknown_devices", false)
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "{CALLING_AE}", host = "127.0.0.1", port = 104 }},
                    {{ ae_title = "VIEWONLY", host = "127.0.0.1", port = 104, allow_store = false }},
                    {{ ae_title = "RAWSCU", host = "127.0.0.1", port = 104, max_associations = 1 }}]"#
            ),
        )
        .start();

    // Unknown calling AE title: A-ASSOCIATE-RJ.
    let stranger = echo_as(server.addr(), "STRANGER", "IMAGESERVER");
    assert!(!stranger.success(), "{stranger}");
    assert!(
        stranger.text().contains("Association Rejected"),
        "{stranger}"
    );
    let mut peer = RawPeer::connect(server.addr());
    let reply = peer.request_association(
        "IMAGESERVER",
        "STRANGER",
        &[Proposal::implicit(1, raw::VERIFICATION)],
        raw::CLIENT_MAX_PDU,
    );
    assert_eq!(
        reply,
        Some(raw::REJECT_CALLING_AE),
        "expected A-ASSOCIATE-RJ (permanent, service user, calling AE title not recognised)"
    );
    assert!(echo_as(server.addr(), CALLING_AE, "IMAGESERVER").success());

    // A device without the store permission: refused, nothing stored.
    let file = dir.path().join("one.dcm");
    single_instance(&file, 5, 16, 16);
    let mut storescu = dcmtk::store_command(server.addr(), "IMAGESERVER", &[&file], &[]);
    storescu.args(["-aet", "VIEWONLY"]);
    let refused = dcmtk::run(storescu, TIMEOUT);
    assert_eq!(
        dcmtk::store_responses(&refused.text()),
        ["Unknown Status: 0x124"],
        "storescu without permission was not refused with 0124:\n{refused}"
    );
    let index = server.archive().index();
    assert_eq!(index.counts().instances, 0);

    // At most one association for RAWSCU: a second is rejected until the
    // first is released.
    let first = RawPeer::associate(
        server.addr(),
        "IMAGESERVER",
        &[Proposal::implicit(1, raw::VERIFICATION)],
    );
    let mut second = RawPeer::connect(server.addr());
    let reply = second.request_association(
        "IMAGESERVER",
        "RAWSCU",
        &[Proposal::implicit(1, raw::VERIFICATION)],
        raw::CLIENT_MAX_PDU,
    );
    assert_eq!(
        reply,
        Some(raw::REJECT_LOCAL_LIMIT),
        "expected A-ASSOCIATE-RJ (transient, local limit exceeded)"
    );
    first.release();
    let mut third = RawPeer::connect(server.addr());
    let mut accepted = false;
    // The server notices the release as soon as it reads it; retry briefly.
    for _ in 0..50 {
        let reply = third.request_association(
            "IMAGESERVER",
            "RAWSCU",
            &[Proposal::implicit(1, raw::VERIFICATION)],
            raw::CLIENT_MAX_PDU,
        );
        if matches!(reply, Some(Pdu::AssociateAc { .. })) {
            accepted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        third = RawPeer::connect(server.addr());
    }
    assert!(
        accepted,
        "RAWSCU stayed rejected after releasing its association"
    );
}

/// C-FIND, C-MOVE and C-GET of one study by `calling_ae` on one
/// association: each final status and its number of pending responses.
fn query_and_retrieve_as(
    server: &Server,
    calling_ae: &str,
    study_uid: &str,
) -> [Option<(u16, usize)>; 3] {
    let contexts = [
        Proposal::implicit(1, raw::STUDY_ROOT_FIND),
        Proposal::implicit(3, raw::STUDY_ROOT_MOVE),
        Proposal::implicit(5, raw::STUDY_ROOT_GET),
    ];
    let mut peer = RawPeer::associate_as(server.addr(), "IMAGESERVER", calling_ae, &contexts);
    let identifier = raw::study_identifier(study_uid);
    let mut ask = |context: u8, command: Vec<u8>| {
        peer.send_message(context, &command, Some(&identifier))
            .expect("send the request");
        peer.read_final_status(TIMEOUT)
    };
    let find = ask(1, raw::c_find_rq(1, raw::STUDY_ROOT_FIND));
    // An unknown destination: A801 once the request is allowed.
    let moved = ask(3, raw::c_move_rq(2, raw::STUDY_ROOT_MOVE, "NOWHERE"));
    // No storage context with the SCP role: the one sub-operation fails.
    let got = ask(5, raw::c_get_rq(3, raw::STUDY_ROOT_GET));
    peer.release();
    [find, moved, got]
}

#[test]
fn query_and_retrieve_need_their_permissions() {
    let dir = test_dir("qr-permissions");
    let server = Server::builder(dir.path())
        .dicom_setting("accept_unknown_devices", false)
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "{CALLING_AE}", host = "127.0.0.1", port = 104 }},
                    {{ ae_title = "NOQUERY", host = "127.0.0.1", port = 104, allow_query = false }},
                    {{ ae_title = "NORETRIEVE", host = "127.0.0.1", port = 104, allow_retrieve = false }}]"#
            ),
        )
        .start();
    let file = dir.path().join("one.dcm");
    let instance = single_instance(&file, 9, 16, 16);
    let stored = dcmtk::store(server.addr(), "IMAGESERVER", &[&file], &[], TIMEOUT);
    assert!(stored.success(), "{stored}");

    let refused = Some((0x0124, 0));
    let [find, moved, got] = query_and_retrieve_as(&server, "NOQUERY", &instance.study_uid);
    assert_eq!(find, refused, "C-FIND without the query permission");
    assert_eq!(
        moved,
        Some((0xA801, 0)),
        "C-MOVE with the retrieve permission"
    );
    assert_eq!(
        got.map(|g| g.0),
        Some(0xA702),
        "C-GET with the retrieve permission"
    );
    let [find, moved, got] = query_and_retrieve_as(&server, "NORETRIEVE", &instance.study_uid);
    assert_eq!(find, Some((0x0000, 1)), "C-FIND with the query permission");
    assert_eq!(moved, refused, "C-MOVE without the retrieve permission");
    assert_eq!(got, refused, "C-GET without the retrieve permission");
}

/// A known device with a host is accepted only from that host: another
/// caller using its AE title is rejected like an unknown one. Unknown
/// callers (accepted by default) may store, not query or retrieve.
#[test]
fn devices_are_bound_to_their_hosts_and_strangers_only_store() {
    let dir = test_dir("hosts");
    let server = Server::builder(dir.path())
        .dicom_setting("unknown_devices_query_retrieve", false)
        .setting(
            "devices",
            r#"[{ ae_title = "WS2", host = "127.0.0.2", port = 104 },
                { ae_title = "WSLOCAL", host = "localhost", port = 104 }]"#,
        )
        .start();
    let verification = [Proposal::implicit(1, raw::VERIFICATION)];
    let from = |local: &str, calling: &str| {
        let mut peer = RawPeer::connect_from(local.parse().unwrap(), server.addr());
        peer.request_association("IMAGESERVER", calling, &verification, raw::CLIENT_MAX_PDU)
    };
    assert_eq!(
        from("127.0.0.1", "WS2"),
        Some(raw::REJECT_CALLING_AE),
        "WS2 called from 127.0.0.1, not its host"
    );
    assert!(
        matches!(from("127.0.0.2", "WS2"), Some(Pdu::AssociateAc { .. })),
        "WS2 from its own host"
    );
    assert!(matches!(
        from("127.0.0.1", "WSLOCAL"),
        Some(Pdu::AssociateAc { .. })
    ));
    assert_eq!(from("127.0.0.3", "WSLOCAL"), Some(raw::REJECT_CALLING_AE));
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("the server log");
    assert!(
        log.contains("the device calls from an address its host does not have"),
        "the rejection says why"
    );

    // An unknown caller stores, and is refused queries and retrieves.
    let file = dir.path().join("one.dcm");
    let instance = single_instance(&file, 12, 16, 16);
    let mut storescu = dcmtk::store_command(server.addr(), "IMAGESERVER", &[&file], &[]);
    storescu.args(["-aet", "STRANGER"]);
    let stored = dcmtk::run(storescu, TIMEOUT);
    assert_eq!(
        dcmtk::store_responses(&stored.text()),
        ["Success"],
        "{stored}"
    );
    let refused = Some((0x0124, 0));
    let [find, moved, got] = query_and_retrieve_as(&server, "STRANGER", &instance.study_uid);
    assert_eq!(find, refused, "C-FIND of an unknown caller");
    assert_eq!(moved, refused, "C-MOVE of an unknown caller");
    assert_eq!(got, refused, "C-GET of an unknown caller");
}

#[test]
fn unknown_callers_are_registered_when_accepted() {
    let dir = test_dir("register");
    let server = Server::start(dir.path());
    assert!(echo_as(server.addr(), "NEWMODALITY", "IMAGESERVER").success());
    let index = server.archive().index();
    let devices = index.devices();
    assert!(
        devices.iter().any(|d| d.ae_title.as_str() == "NEWMODALITY"),
        "{devices:?}"
    );
}

/// Stores an instance, then a different instance with the same UIDs (and
/// patient), under `policy`, from a device allowed to replace (the
/// permission `accept_latest` needs); returns the second storescu output,
/// the index and which of the two is stored.
fn store_twice(policy: &str) -> (dcmtk::ToolOutput, Index, String, String, tempfile::TempDir) {
    let dir = test_dir(&format!("duplicates-{policy}"));
    let server = Server::builder(dir.path())
        .dicom_setting("duplicate_policy", format!("{policy:?}"))
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "{}", host = "127.0.0.1", port = 104, allow_replace = true }}]"#,
                dcmtk::CALLING_AE
            ),
        )
        .start();
    let first = dir.path().join("first.dcm");
    let original = single_instance(&first, 21, 32, 32);
    let second = dir.path().join("second.dcm");
    write_instance(
        &second,
        &InstanceSpec {
            pixel_seed: 99,
            ..single_spec(21, 32, 32)
        },
    );
    let stored = dcmtk::store(server.addr(), "IMAGESERVER", &[&first], &[], TIMEOUT);
    assert!(stored.success(), "{stored}");
    let again = dcmtk::store(server.addr(), "IMAGESERVER", &[&second], &[], TIMEOUT);
    let index = server.archive().index();
    let path = server.archive().expected_path(
        &original.study_date,
        &original.study_uid,
        &original.series_uid,
        &original.sop_instance_uid,
    );
    assert!(path.is_file());
    let stored_digest = blake3_hex(&path);
    assert_eq!(
        index
            .instance(&original.sop_instance_uid)
            .expect("indexed")
            .digest,
        stored_digest,
        "index and file disagree"
    );
    let second_dataset_digest = dataset_digest(&second);
    let stored_dataset_digest = dataset_digest(&path);
    let which = if stored_dataset_digest == second_dataset_digest {
        "second".to_string()
    } else {
        "first".to_string()
    };
    (again, index, which, original.sop_instance_uid, dir)
}

fn dataset_digest(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    let offset = crate::support::corpus::dataset_offset(path) as usize;
    blake3::hash(&bytes[offset..]).to_hex().to_string()
}

#[test]
fn duplicate_policy_accept_latest_replaces() {
    let (again, index, kept, _, _dir) = store_twice("accept_latest");
    assert!(again.success(), "{again}");
    assert_eq!(kept, "second");
    assert_eq!(index.counts().instances, 1);
}

#[test]
fn duplicate_policy_send_success_keeps_the_first() {
    let (again, index, kept, _, _dir) = store_twice("send_success");
    assert!(again.success(), "{again}");
    assert_eq!(dcmtk::acknowledged_files(&again.text()).len(), 1);
    assert_eq!(kept, "first");
    assert_eq!(index.counts().instances, 1);
}

#[test]
fn duplicate_policy_reject_refuses_the_second() {
    let (again, index, kept, _, _dir) = store_twice("reject");
    assert!(
        dcmtk::acknowledged_files(&again.text()).is_empty(),
        "a rejected duplicate was acknowledged:\n{again}"
    );
    assert_eq!(
        dcmtk::store_responses(&again.text()),
        ["Unknown Status: 0x111"],
        "{again}"
    );
    assert_eq!(kept, "first");
    assert_eq!(index.counts().instances, 1);
}

#[test]
fn duplicate_policy_compare_keeps_both_for_a_person() {
    let (again, index, kept, sop_instance_uid, dir) = store_twice("compare");
    assert!(again.success(), "{again}");
    assert_eq!(kept, "first");
    assert_eq!(index.counts().instances, 1);
    let listed = Command::new(BINARY)
        .args(["duplicates", "--json", "--config"])
        .arg(dir.path().join("imageserver.toml"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .expect("run imageserver duplicates");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&sop_instance_uid), "{text}");
    let aside = crate::support::files_under(&dir.path().join("data/fs1"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".dup"))
        .count();
    assert_eq!(aside, 1, "the kept-aside copy is not on disk");
}

/// A large instance's index read begins once its header is whole, while its
/// pixel data still arrives (half a megabyte comes in several PDUs): what
/// that read finds decides as a read after the last byte would. Under
/// `reject`, the same instance sent again is acknowledged unchanged, and one
/// with the same UIDs but other pixels is refused, the stored one kept.
#[test]
fn a_large_instance_sent_again_is_recognised_while_it_arrives() {
    let dir = test_dir("large-resend");
    let server = Server::builder(dir.path())
        .dicom_setting("duplicate_policy", "\"reject\"")
        .start();
    let first = dir.path().join("first.dcm");
    single_instance(&first, 24, 512, 512);
    assert!(std::fs::metadata(&first).expect("written").len() > 512 * 1024);
    let stored = dcmtk::store(server.addr(), "IMAGESERVER", &[&first], &[], TIMEOUT);
    assert!(stored.success(), "{stored}");
    let before = archive_state(server.archive());
    assert_eq!(before.rows.len(), 1, "{before:#?}");

    let again = dcmtk::store(server.addr(), "IMAGESERVER", &[&first], &[], TIMEOUT);
    assert_eq!(
        dcmtk::store_responses(&again.text()),
        ["Success"],
        "{again}"
    );
    assert_eq!(
        archive_state(server.archive()),
        before,
        "the resend changed the archive"
    );

    let other = dir.path().join("other.dcm");
    write_instance(
        &other,
        &InstanceSpec {
            pixel_seed: 7,
            ..single_spec(24, 512, 512)
        },
    );
    let refused = dcmtk::store(server.addr(), "IMAGESERVER", &[&other], &[], TIMEOUT);
    assert_eq!(
        dcmtk::store_responses(&refused.text()),
        ["Unknown Status: 0x111"],
        "{refused}"
    );
    assert_eq!(
        archive_state(server.archive()),
        before,
        "a refused duplicate changed the archive"
    );
}

/// "A byte-identical resend is always acknowledged without change", under
/// every duplicate policy: Success, the same file, the same index row,
/// nothing kept aside, nothing for a person to reconcile.
#[test]
fn an_identical_resend_is_acknowledged_unchanged_under_every_policy() {
    for policy in ["reject", "compare", "send_success", "accept_latest"] {
        let dir = test_dir(&format!("resend-{policy}"));
        let server = Server::builder(dir.path())
            .dicom_setting("duplicate_policy", format!("{policy:?}"))
            .start();
        let file = dir.path().join("one.dcm");
        single_instance(&file, 23, 32, 32);
        let first = dcmtk::store(server.addr(), "IMAGESERVER", &[&file], &[], TIMEOUT);
        assert!(first.success(), "{policy}: {first}");
        let before = archive_state(server.archive());
        assert_eq!(before.files.len(), 1, "{policy}: {before:#?}");
        assert_eq!(before.rows.len(), 1, "{policy}: {before:#?}");

        let again = dcmtk::store(server.addr(), "IMAGESERVER", &[&file], &[], TIMEOUT);
        assert!(again.success(), "{policy}: {again}");
        assert_eq!(
            dcmtk::store_responses(&again.text()),
            ["Success"],
            "{policy}: {again}"
        );
        assert_eq!(
            archive_state(server.archive()),
            before,
            "{policy}: the resend changed the archive"
        );
        let listed = Command::new(BINARY)
            .args(["duplicates", "--json", "--config"])
            .arg(dir.path().join("imageserver.toml"))
            .arg("--data")
            .arg(dir.path().join("data"))
            .output()
            .expect("run imageserver duplicates");
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.status.success(), "{policy}: {text}");
        assert_eq!(text.trim(), "", "{policy}: a duplicate was recorded");
    }
}
