//! Malformed, lying, slow and too many peers: statuses, closes, limits.
//!
//! Each test runs its cases against one server and then checks that the
//! server still answers C-ECHO. Durations below are failure bounds, never
//! timing assertions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::corpus::Rng;
use crate::support::dcmtk;
use crate::support::raw::{
    self, ct_dataset, ct_dataset_header, ConnectionEnd, DatasetUids, ImplicitLe, Pdu, Proposal,
    RawPeer,
};
use crate::support::server::{test_dir, Server};
use crate::support::{archived_files, assert_no_temp_files, files_under};

/// ARTIM timeout the hostile tests configure, in seconds.
const ARTIM_SECS: u64 = 3;
/// Idle timeout the hostile tests configure, in seconds.
const IDLE_SECS: u64 = 5;
/// How much a hostile input may grow the server's RSS.
const RSS_HEADROOM: u64 = 64 << 20;

/// C-STORE statuses (PS3.4 Annex B, PS3.7 Annex C).
const SUCCESS: u16 = 0x0000;
const IDENTIFIER_MISMATCH: u16 = 0xA900;
const CANNOT_UNDERSTAND: u16 = 0xC000;

/// A server with short ARTIM and idle timeouts.
fn start_hostile_target(root: &Path) -> Server {
    Server::builder(root)
        .dicom_setting("artim_timeout_secs", ARTIM_SECS)
        .dicom_setting("idle_timeout_secs", IDLE_SECS)
        .start()
}

/// The bound within which a misbehaving peer must be disconnected.
fn close_bound(timeout_secs: u64) -> Duration {
    Duration::from_secs(2 * timeout_secs)
}

/// Fails unless the server's peak RSS stayed within [`RSS_HEADROOM`] of idle.
fn assert_rss_within_headroom(idle_rss: u64, peak_rss: u64) {
    assert!(
        peak_rss <= idle_rss + RSS_HEADROOM,
        "server RSS peaked at {} MiB, idle was {} MiB",
        peak_rss >> 20,
        idle_rss >> 20
    );
}

/// Fails unless a C-ECHO succeeds (the server survived the last case).
fn assert_still_answers(server: &Server, after: &str) {
    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
    assert!(echo.success(), "no C-ECHO after {after}:\n{echo}");
}

/// Presentation context 1: CT Image Storage in Implicit VR LE.
fn ct_context() -> Vec<Proposal> {
    vec![Proposal::implicit(1, raw::CT_IMAGE_STORAGE)]
}

fn fresh_uids(rng: &mut Rng) -> DatasetUids {
    DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    }
}

/// Closes and A-ABORT reasons (PS3.8 9.3.8, source 2: service provider).
const ABORT_REASON_UNRECOGNIZED_PDU: u8 = 1;
const ABORT_REASON_UNEXPECTED_PDU: u8 = 2;
const ABORT_REASON_INVALID_PDU_PARAMETER: u8 = 6;

/// Fails unless the server sent exactly one A-ABORT (service provider,
/// `reason`) and closed the connection within two seconds: far less than
/// the timeouts the test sets, so the close is the server's answer to the
/// bad PDU, not a timer firing.
fn expect_abort(peer: &mut RawPeer, reason: u8, case: &str) {
    let ConnectionEnd::Closed { pdus } = peer.expect_closed_within(Duration::from_secs(2));
    assert_eq!(
        pdus,
        [Pdu::Abort { source: 2, reason }],
        "{case}: expected one A-ABORT (source 2, reason {reason})"
    );
}

#[test]
fn malformed_pdus_close_the_connection() {
    let dir = test_dir("bad-pdus");
    // Timers far beyond the two seconds each case may take.
    let server = Server::builder(dir.path())
        .dicom_setting("artim_timeout_secs", 60)
        .dicom_setting("idle_timeout_secs", 60)
        .start();
    let idle_rss = server.rss_bytes();
    let sampler = server.sample_rss();

    // An HTTP request instead of an A-ASSOCIATE-RQ.
    let mut peer = RawPeer::connect(server.addr());
    let _ = peer.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    expect_abort(&mut peer, ABORT_REASON_UNEXPECTED_PDU, "an HTTP request");
    assert_still_answers(&server, "an HTTP request");

    // Random bytes, starting with a byte that is no PDU type.
    let mut rng = Rng::new(99);
    let mut garbage: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    garbage[0] = 0xA5;
    let mut peer = RawPeer::connect(server.addr());
    let _ = peer.send(&garbage);
    expect_abort(&mut peer, ABORT_REASON_UNEXPECTED_PDU, "random bytes");
    assert_still_answers(&server, "random bytes");

    // P-DATA-TF before any association.
    let mut peer = RawPeer::connect(server.addr());
    let _ = peer.send(&raw::p_data_tf(1, true, true, &raw::c_echo_rq(1)));
    expect_abort(
        &mut peer,
        ABORT_REASON_UNEXPECTED_PDU,
        "P-DATA before association",
    );
    assert_still_answers(&server, "P-DATA before association");

    // An A-ASSOCIATE-RQ whose PDU length claims 4 GiB, followed by 64 KiB.
    let mut peer = RawPeer::connect(server.addr());
    let _ = peer.send(&[raw::pdu_type::ASSOCIATE_RQ, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    let _ = peer.send(&[0u8; 64 * 1024]);
    expect_abort(
        &mut peer,
        ABORT_REASON_INVALID_PDU_PARAMETER,
        "a 4 GiB A-ASSOCIATE-RQ",
    );
    assert_still_answers(&server, "a 4 GiB A-ASSOCIATE-RQ");

    // A P-DATA-TF claiming 4 GiB on an established association.
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &ct_context());
    let _ = peer.send(&[raw::pdu_type::P_DATA_TF, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    let _ = peer.send(&[0u8; 64 * 1024]);
    expect_abort(
        &mut peer,
        ABORT_REASON_INVALID_PDU_PARAMETER,
        "a 4 GiB P-DATA-TF",
    );
    assert_still_answers(&server, "a 4 GiB P-DATA-TF");

    // An unknown PDU type on an established association.
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &ct_context());
    let _ = peer.send(&[0x42, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
    expect_abort(
        &mut peer,
        ABORT_REASON_UNRECOGNIZED_PDU,
        "an unknown PDU type",
    );
    assert_still_answers(&server, "an unknown PDU type");

    assert_rss_within_headroom(idle_rss, sampler.stop());
    assert!(
        archived_files(server.archive()).is_empty(),
        "files were archived"
    );
    assert_no_temp_files(server.archive(), "the malformed PDUs");
}

/// One hostile C-STORE: the command's UIDs, the data set sent, the status
/// expected.
struct StoreCase {
    name: &'static str,
    sop_class_uid: String,
    sop_instance_uid: String,
    dataset: Vec<u8>,
    expected_status: u16,
}

/// Stores a positive control (a data set the server must take) and returns
/// where it must be.
fn store_control(
    server: &Server,
    context: &[Proposal],
    uids: &DatasetUids,
    dataset: &[u8],
) -> PathBuf {
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), context);
    let status = peer.c_store(1, &uids.sop_class_uid, &uids.sop_instance_uid, dataset);
    assert_eq!(status, Some(SUCCESS), "the control instance was not stored");
    peer.release();
    let path = server.archive().expected_path(
        raw::CT_DATASET_STUDY_DATE,
        &uids.study_uid,
        &uids.series_uid,
        &uids.sop_instance_uid,
    );
    assert!(path.is_file(), "control not at {}", path.display());
    path
}

/// Stores each case on a fresh association with `context`, expects its
/// status, checks the server still answers after each, and that its memory
/// stayed within [`RSS_HEADROOM`] of idle throughout.
fn run_store_cases(server: &Server, context: &[Proposal], cases: &[StoreCase]) {
    let idle_rss = server.rss_bytes();
    let sampler = server.sample_rss();
    for case in cases {
        let mut peer = RawPeer::associate(server.addr(), server.ae_title(), context);
        let status = peer.c_store(
            1,
            &case.sop_class_uid,
            &case.sop_instance_uid,
            &case.dataset,
        );
        assert_eq!(
            status,
            Some(case.expected_status),
            "case {:?}: expected status {:04X}, got {:04X?}",
            case.name,
            case.expected_status,
            status
        );
        peer.release();
        assert_still_answers(server, case.name);
    }
    assert_rss_within_headroom(idle_rss, sampler.stop());
}

#[test]
fn malformed_data_sets_get_failure_statuses_and_write_nothing() {
    let dir = test_dir("bad-datasets");
    let server = start_hostile_target(dir.path());
    let mut rng = Rng::new(1234);
    let escape_target = dir.path().join("escaped");
    let files_before: BTreeSet<PathBuf> = files_under(dir.path()).into_iter().collect();
    // Traversal targets next to the test directory, in the temp dir root.
    let outside = [
        std::env::temp_dir().join("x"),
        std::env::temp_dir().join("x.dcm"),
    ];
    let outside_before: Vec<bool> = outside.iter().map(|path| path.exists()).collect();

    // Positive control: the hand-made data set itself is fine.
    let control = fresh_uids(&mut rng);
    let control_path = store_control(&server, &ct_context(), &control, &ct_dataset(&control));

    // A Study Date that is a path trick is stored under 00000000.
    let undated = fresh_uids(&mut rng);
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &ct_context());
    let status = peer.c_store(
        1,
        &undated.sop_class_uid,
        &undated.sop_instance_uid,
        &raw::ct_dataset_dated(&undated, "../../.."),
    );
    assert_eq!(status, Some(SUCCESS), "a hostile Study Date was refused");
    peer.release();
    let undated_path = server.archive().expected_path(
        "00000000",
        &undated.study_uid,
        &undated.series_uid,
        &undated.sop_instance_uid,
    );
    assert!(
        undated_path.is_file(),
        "the instance with a hostile Study Date is not at {}",
        undated_path.display()
    );

    let cases = hostile_store_cases(&mut rng, &escape_target);
    run_store_cases(&server, &ct_context(), &cases);

    // Nothing but the two controls was archived, and nothing appeared
    // outside the data directory's own files.
    let mut expected_files = vec![control_path, undated_path];
    expected_files.sort();
    assert_eq!(archived_files(server.archive()), expected_files);
    assert_eq!(
        server.archive().index().counts().instances,
        2,
        "indexed instances"
    );
    // The filesystem's `.tmp` is checked too: a failed store must remove
    // its temporary file.
    assert_no_temp_files(server.archive(), "the hostile stores");
    let data = server.archive().data_dir().to_path_buf();
    let unexpected: Vec<PathBuf> = files_under(dir.path())
        .into_iter()
        .filter(|path| !files_before.contains(path))
        .filter(|path| !expected_files.contains(path))
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            !(path.parent() == Some(data.as_path()) && name.starts_with("index.db"))
        })
        .filter(|path| path.file_name().and_then(|n| n.to_str()) != Some("server.log"))
        // The group commit's journal of open batches (in a filesystem's
        // `.tmp`; its entries are checked by `commit_crash`).
        .filter(|path| {
            !(path.extension().is_some_and(|e| e == "journal")
                && path.parent().and_then(|p| p.file_name()) == Some(".tmp".as_ref()))
        })
        // Nor its empty files made ahead of need (`support::temp_entries`).
        .filter(|path| !crate::support::is_empty_spare(path))
        .collect();
    assert!(unexpected.is_empty(), "unexpected files: {unexpected:#?}");
    assert!(
        !escape_target.exists(),
        "{} was created",
        escape_target.display()
    );
    assert!(!dir.path().join("x").exists() && !data.join("x").exists());
    for (path, existed) in outside.iter().zip(outside_before) {
        assert!(existed || !path.exists(), "{} was created", path.display());
    }
}

/// The hostile C-STOREs: truncations, length lies, mismatches, path tricks.
fn hostile_store_cases(rng: &mut Rng, escape_target: &Path) -> Vec<StoreCase> {
    let mut cases = Vec::new();
    let mut case = |name, uids: &DatasetUids, dataset: Vec<u8>, expected_status| {
        cases.push(StoreCase {
            name,
            sop_class_uid: uids.sop_class_uid.clone(),
            sop_instance_uid: uids.sop_instance_uid.clone(),
            dataset,
            expected_status,
        });
    };

    // Cut short in the middle of the header; the last fragment is flagged.
    let uids = fresh_uids(rng);
    let whole = ct_dataset(&uids);
    case(
        "truncated data set",
        &uids,
        whole[..whole.len() / 3].to_vec(),
        CANNOT_UNDERSTAND,
    );

    // Pixel data claims 1 MB; 128 bytes follow.
    let uids = fresh_uids(rng);
    let dataset = ct_dataset_header(&uids)
        .header_only(0x7FE0, 0x0010, 1_000_000)
        .bytes(&[0x22; 128])
        .build();
    case(
        "element length beyond the data",
        &uids,
        dataset,
        CANNOT_UNDERSTAND,
    );

    // A header element claims almost 4 GiB in the middle of the data set.
    let uids = fresh_uids(rng);
    let dataset = raw::ImplicitLe::new()
        .uid(0x0008, 0x0016, &uids.sop_class_uid)
        .uid(0x0008, 0x0018, &uids.sop_instance_uid)
        .header_only(0x0010, 0x0010, 0xFFFF_FFF0)
        .bytes(b"HOSTILE^PEER")
        .uid(0x0020, 0x000D, &uids.study_uid)
        .uid(0x0020, 0x000E, &uids.series_uid)
        .build();
    case("a 4 GiB element length", &uids, dataset, CANNOT_UNDERSTAND);

    // 20,000 nested undefined-length sequences after a valid header: once
    // overflowed the parser's stack and aborted the whole server.
    let uids = fresh_uids(rng);
    let mut nested = raw::ImplicitLe::new();
    for _ in 0..20_000 {
        nested = nested.header_only(0x0008, 0x1140, 0xFFFF_FFFF).header_only(
            0xFFFE,
            0xE000,
            0xFFFF_FFFF,
        );
    }
    for _ in 0..20_000 {
        nested = nested
            .header_only(0xFFFE, 0xE00D, 0)
            .header_only(0xFFFE, 0xE0DD, 0);
    }
    let mut dataset = ct_dataset_header(&uids).build();
    dataset.extend(nested.build());
    case("20,000 nested sequences", &uids, dataset, CANNOT_UNDERSTAND);

    // 20,000 nested *defined-length* sequences: in Implicit VR the parser
    // takes (0008,1140) for a sequence from the dictionary and recurses,
    // so the walker must follow them rather than skip their values.
    let uids = fresh_uids(rng);
    let mut nested = raw::ImplicitLe::new().uid(0x0008, 0x1155, "1.2").build();
    for _ in 0..20_000 {
        let item = raw::ImplicitLe::new()
            .header_only(0xFFFE, 0xE000, nested.len() as u32)
            .bytes(&nested)
            .build();
        nested = raw::ImplicitLe::new()
            .header_only(0x0008, 0x1140, item.len() as u32)
            .bytes(&item)
            .build();
    }
    let mut dataset = ct_dataset_header(&uids).build();
    dataset.extend(nested);
    case(
        "20,000 nested defined-length sequences",
        &uids,
        dataset,
        CANNOT_UNDERSTAND,
    );

    // The data set names another SOP instance than the command.
    let uids = fresh_uids(rng);
    let other = DatasetUids {
        sop_instance_uid: rng.uid(),
        ..uids.clone()
    };
    case(
        "SOP Instance UID mismatch",
        &uids,
        ct_dataset(&other),
        IDENTIFIER_MISMATCH,
    );

    // The data set names another SOP class (MR) than the command (CT).
    let uids = fresh_uids(rng);
    let other = DatasetUids {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".to_string(),
        ..uids.clone()
    };
    case(
        "SOP Class UID mismatch",
        &uids,
        ct_dataset(&other),
        IDENTIFIER_MISMATCH,
    );

    // Path tricks in every UID that becomes a path component.
    let traversal = "1.2.3/../../x".to_string();
    let absolute = format!(
        "1.2.3/../../../../../../../../../../../..{}",
        escape_target.display()
    );
    let too_long = format!("1.2.{}", "3".repeat(196));
    for (name, hostile) in [
        ("SOP Instance UID with ../", &traversal),
        ("SOP Instance UID with an absolute escape", &absolute),
        ("200-character SOP Instance UID", &too_long),
    ] {
        let uids = DatasetUids {
            sop_instance_uid: hostile.clone(),
            ..fresh_uids(rng)
        };
        case(name, &uids, ct_dataset(&uids), CANNOT_UNDERSTAND);
    }
    for (name, hostile) in [
        ("Study Instance UID with ../", &traversal),
        ("200-character Study Instance UID", &too_long),
    ] {
        let uids = DatasetUids {
            study_uid: hostile.clone(),
            ..fresh_uids(rng)
        };
        case(name, &uids, ct_dataset(&uids), CANNOT_UNDERSTAND);
    }
    for (name, hostile) in [
        ("Series Instance UID with ../", &traversal),
        ("Series Instance UID with an absolute escape", &absolute),
    ] {
        let uids = DatasetUids {
            series_uid: hostile.clone(),
            ..fresh_uids(rng)
        };
        case(name, &uids, ct_dataset(&uids), CANNOT_UNDERSTAND);
    }
    cases
}

/// Deflated Explicit VR Little Endian (PS3.5 A.5).
const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// Presentation context 1: CT Image Storage offered only deflated, so the
/// server has to take the deflated data set or refuse the context.
fn deflated_ct_context() -> Vec<Proposal> {
    vec![Proposal {
        id: 1,
        abstract_syntax: raw::CT_IMAGE_STORAGE.to_string(),
        transfer_syntaxes: vec![DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.to_string()],
    }]
}

/// Appends one Explicit VR Little Endian element (value padded to even
/// length with `pad`).
fn explicit_element(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8], pad: u8) {
    const SHORT: [&[u8; 2]; 8] = [b"CS", b"DA", b"LO", b"PN", b"SH", b"UI", b"US", b"TM"];
    let len = value.len() + value.len() % 2;
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(vr);
    if SHORT.contains(&vr) {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// The header of [`ct_dataset`] in Explicit VR Little Endian, up to (not
/// including) Pixel Data.
fn explicit_ct_header(uids: &DatasetUids) -> Vec<u8> {
    let mut out = Vec::new();
    type Text<'a> = ((u16, u16), &'a [u8; 2], &'a str, u8);
    let text: [Text; 8] = [
        ((0x0008, 0x0016), b"UI", &uids.sop_class_uid, 0),
        ((0x0008, 0x0018), b"UI", &uids.sop_instance_uid, 0),
        ((0x0008, 0x0020), b"DA", raw::CT_DATASET_STUDY_DATE, b' '),
        ((0x0008, 0x0060), b"CS", "CT", b' '),
        ((0x0010, 0x0010), b"PN", "HOSTILE^PEER", b' '),
        ((0x0010, 0x0020), b"LO", "RAWPID", b' '),
        ((0x0020, 0x000D), b"UI", &uids.study_uid, 0),
        ((0x0020, 0x000E), b"UI", &uids.series_uid, 0),
    ];
    for (tag, vr, value, pad) in text {
        explicit_element(&mut out, tag, vr, value.as_bytes(), pad);
    }
    for (tag, value) in [
        ((0x0028, 0x0002), 1u16),
        ((0x0028, 0x0010), 8),
        ((0x0028, 0x0011), 8),
    ] {
        explicit_element(&mut out, tag, b"US", &value.to_le_bytes(), 0);
    }
    out
}

/// A raw deflate stream of `bytes`, as Deflated Explicit VR LE sends it.
fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("deflate");
    encoder.finish().expect("deflate")
}

#[test]
fn deflated_data_sets_are_checked_before_they_are_parsed() {
    let dir = test_dir("bad-deflated");
    let server = start_hostile_target(dir.path());
    let mut rng = Rng::new(4321);

    // Positive control: a deflated CT is stored, byte for byte.
    let control = fresh_uids(&mut rng);
    let mut plain = explicit_ct_header(&control);
    explicit_element(&mut plain, (0x7FE0, 0x0010), b"OW", &[0x11; 128], 0);
    let control_dataset = deflate(&plain);
    let control_path = store_control(&server, &deflated_ct_context(), &control, &control_dataset);
    let stored = std::fs::read(&control_path).expect("the deflated control file");
    assert!(
        stored.ends_with(&control_dataset),
        "stored data set differs"
    );

    let mut cases: Vec<(&str, DatasetUids, Vec<u8>)> = Vec::new();
    // ~1 KB on the wire that inflates to 20,000 nested sequences: aborted
    // the whole server through a stack overflow in the header parser.
    let uids = fresh_uids(&mut rng);
    let mut nested = explicit_ct_header(&uids);
    let open: Vec<u8> = [
        &[
            0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ][..],
        &[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF][..],
    ]
    .concat();
    let close: Vec<u8> = [
        &[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0][..],
        &[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0][..],
    ]
    .concat();
    nested.extend(open.repeat(20_000));
    nested.extend(close.repeat(20_000));
    let bomb = deflate(&nested);
    assert!(
        bomb.len() < 4096,
        "the nesting bomb is {} bytes",
        bomb.len()
    );
    cases.push(("20,000 nested sequences, deflated", uids, bomb));
    // An element claiming 0xFFFFFFF0 bytes, 16 present: once made the
    // parser allocate and zero-fill 4 GiB.
    let uids = fresh_uids(&mut rng);
    let mut lie = explicit_ct_header(&uids);
    lie.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
    lie.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    lie.extend_from_slice(&[0; 16]);
    cases.push(("a 4 GiB element length, deflated", uids, deflate(&lie)));
    // A deflate stream cut short.
    let uids = fresh_uids(&mut rng);
    let mut whole = explicit_ct_header(&uids);
    explicit_element(&mut whole, (0x7FE0, 0x0010), b"OW", &[0x11; 4096], 0);
    let whole = deflate(&whole);
    cases.push((
        "a truncated deflate stream",
        uids,
        whole[..whole.len() - 5].to_vec(),
    ));
    // Not a deflate stream at all.
    let uids = fresh_uids(&mut rng);
    cases.push(("bytes that do not inflate", uids, vec![0xFF; 512]));

    let cases: Vec<StoreCase> = cases
        .into_iter()
        .map(|(name, uids, dataset)| StoreCase {
            name,
            sop_class_uid: uids.sop_class_uid,
            sop_instance_uid: uids.sop_instance_uid,
            dataset,
            expected_status: CANNOT_UNDERSTAND,
        })
        .collect();
    run_store_cases(&server, &deflated_ct_context(), &cases);
    assert_eq!(archived_files(server.archive()), vec![control_path]);
    assert_eq!(server.archive().index().counts().instances, 1);
    assert_no_temp_files(server.archive(), "the hostile deflated stores");
}

#[test]
fn fifty_idle_associations_do_not_block_a_new_peer() {
    let dir = test_dir("idle-associations");
    let server = Server::builder(dir.path())
        .dicom_setting("max_associations", 64)
        .dicom_setting("idle_timeout_secs", 120)
        .start();

    let idle_peers: Vec<RawPeer> = (0..50)
        .map(|_| RawPeer::associate(server.addr(), server.ae_title(), &ct_context()))
        .collect();

    let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
    assert!(
        echo.success(),
        "echoscu failed with 50 idle associations open:\n{echo}"
    );
    drop(idle_peers);
    assert_still_answers(&server, "closing 50 idle associations");
}

#[test]
fn slow_and_silent_peers_are_cut_off() {
    let dir = test_dir("slow-peers");
    let server = start_hostile_target(dir.path());
    let addr = server.addr();
    let called_ae = server.ae_title().to_string();

    std::thread::scope(|scope| {
        // An A-ASSOCIATE-RQ at one byte per second: ARTIM must end it.
        let slow_request = scope.spawn(|| {
            let mut peer = RawPeer::connect(addr);
            let request = raw::associate_rq(&called_ae, "SLOWSCU", &ct_context(), 16384);
            trickle_until_closed(&mut peer, &request, close_bound(ARTIM_SECS))
        });
        // Associated, then silent: the idle timeout must end it.
        let silent = scope.spawn(|| {
            let mut peer = RawPeer::associate(addr, &called_ae, &ct_context());
            peer.expect_closed_within(close_bound(IDLE_SECS))
        });
        // Associated, then a C-ECHO-RQ at one byte per second.
        let slow_message = scope.spawn(|| {
            let mut peer = RawPeer::associate(addr, &called_ae, &ct_context());
            let request = raw::p_data_tf(1, true, true, &raw::c_echo_rq(1));
            trickle_until_closed(&mut peer, &request, close_bound(IDLE_SECS))
        });
        for (name, handle) in [
            ("slow A-ASSOCIATE-RQ", slow_request),
            ("silent association", silent),
            ("slow P-DATA-TF", slow_message),
        ] {
            if let Err(panic) = handle.join() {
                panic!("{name}: {}", panic_message(&panic));
            }
        }
    });
    assert_still_answers(&server, "slow peers");
}

/// Sends `bytes` one per second, watching for the server to close; panics
/// if the connection is still open after `bound`.
fn trickle_until_closed(peer: &mut RawPeer, bytes: &[u8], bound: Duration) -> ConnectionEnd {
    let started = Instant::now();
    let mut pdus = Vec::new();
    let mut remaining = bytes.iter();
    while started.elapsed() < bound {
        if let Some(byte) = remaining.next() {
            if peer.send(&[*byte]).is_err() {
                return ConnectionEnd::Closed { pdus };
            }
        }
        match peer.read_pdu(Duration::from_secs(1)) {
            Ok(None) => return ConnectionEnd::Closed { pdus },
            Ok(Some(pdu)) => pdus.push(pdu),
            Err(e) if raw::is_timeout(&e) => {}
            Err(_) => return ConnectionEnd::Closed { pdus },
        }
    }
    panic!(
        "the server kept a one-byte-per-second peer for more than {bound:?} (PDUs seen: {pdus:?})"
    )
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".to_string())
}

#[test]
fn association_limit_rejects_the_extra_peer() {
    const LIMIT: usize = 5;
    let dir = test_dir("association-limit");
    let server = Server::builder(dir.path())
        .dicom_setting("max_associations", LIMIT)
        .dicom_setting("idle_timeout_secs", 120)
        .start();

    // The readiness echo's slot may take a moment to be given back.
    let mut open: Vec<RawPeer> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.len() < LIMIT {
        assert!(
            Instant::now() < deadline,
            "only {} of {LIMIT} associations accepted",
            open.len()
        );
        let mut peer = RawPeer::connect(server.addr());
        match peer.request_association(server.ae_title(), "RAWSCU", &ct_context(), 16384) {
            Some(Pdu::AssociateAc { .. }) => open.push(peer),
            Some(rejected @ Pdu::AssociateRj { .. }) => {
                assert_eq!(rejected, raw::REJECT_LOCAL_LIMIT, "while filling the slots");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!(
                "unexpected reply to association {}: {other:?}",
                open.len() + 1
            ),
        }
    }

    let mut extra = RawPeer::connect(server.addr());
    let reply = extra.request_association(server.ae_title(), "RAWSCU", &ct_context(), 16384);
    assert_eq!(
        reply,
        Some(raw::REJECT_LOCAL_LIMIT),
        "association {} of {LIMIT}: expected A-ASSOCIATE-RJ (transient, local limit exceeded)",
        LIMIT + 1
    );

    open.pop().expect("five are open").release();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let echo = dcmtk::echo(server.addr(), server.ae_title(), Duration::from_secs(10));
        if echo.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no C-ECHO after freeing a slot:\n{echo}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(open);
}

/// A fresh UID of exactly `len` characters (a random root, then nines).
fn uid_of_len(rng: &mut Rng, len: usize) -> String {
    let root = rng.uid();
    assert!(root.len() + 2 <= len, "{root} is too long for {len}");
    format!("{root}.{}", "9".repeat(len - root.len() - 1))
}

/// An Implicit VR LE data set without its top-level element `tag` (the
/// hand-made ones have no sequences).
fn without_element(mut dataset: &[u8], tag: (u16, u16)) -> Vec<u8> {
    let mut out = Vec::with_capacity(dataset.len());
    let mut removed = false;
    while dataset.len() >= 8 {
        let group = u16::from_le_bytes([dataset[0], dataset[1]]);
        let element = u16::from_le_bytes([dataset[2], dataset[3]]);
        let len = u32::from_le_bytes(dataset[4..8].try_into().expect("four bytes")) as usize;
        let (whole, rest) = dataset.split_at(8 + len);
        if (group, element) == tag {
            removed = true;
        } else {
            out.extend_from_slice(whole);
        }
        dataset = rest;
    }
    assert!(removed, "no element {tag:04X?} to remove");
    out
}

/// UIDs of 64 characters are taken; 65 characters, or a missing Study,
/// Series or SOP Instance UID in the data set, get C000 and store nothing.
#[test]
fn uids_of_64_characters_are_taken_and_missing_or_longer_ones_refused() {
    let dir = test_dir("uid-limits");
    let server = start_hostile_target(dir.path());
    let mut rng = Rng::new(6464);

    let longest = DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: uid_of_len(&mut rng, 64),
        study_uid: uid_of_len(&mut rng, 64),
        series_uid: uid_of_len(&mut rng, 64),
    };
    let control_path = store_control(&server, &ct_context(), &longest, &ct_dataset(&longest));
    let index = server.archive().index();
    let stored = index
        .instance(&longest.sop_instance_uid)
        .expect("the 64-character SOP Instance UID is indexed");
    assert_eq!(stored.location.study_uid.as_str(), longest.study_uid);
    assert_eq!(stored.series_uid.as_str(), longest.series_uid);

    let mut cases = Vec::new();
    let mut case = |name, uids: DatasetUids, dataset: Vec<u8>| {
        cases.push(StoreCase {
            name,
            sop_class_uid: uids.sop_class_uid,
            sop_instance_uid: uids.sop_instance_uid,
            dataset,
            expected_status: CANNOT_UNDERSTAND,
        });
    };
    let mut uids = fresh_uids(&mut rng);
    uids.sop_instance_uid = uid_of_len(&mut rng, 65);
    case(
        "65-character SOP Instance UID",
        uids.clone(),
        ct_dataset(&uids),
    );
    let mut uids = fresh_uids(&mut rng);
    uids.study_uid = uid_of_len(&mut rng, 65);
    case(
        "65-character Study Instance UID",
        uids.clone(),
        ct_dataset(&uids),
    );
    let mut uids = fresh_uids(&mut rng);
    uids.series_uid = uid_of_len(&mut rng, 65);
    case(
        "65-character Series Instance UID",
        uids.clone(),
        ct_dataset(&uids),
    );
    for (name, tag) in [
        ("no Study Instance UID", (0x0020, 0x000D)),
        ("no Series Instance UID", (0x0020, 0x000E)),
        ("no SOP Instance UID in the data set", (0x0008, 0x0018)),
    ] {
        let uids = fresh_uids(&mut rng);
        let dataset = without_element(&ct_dataset(&uids), tag);
        case(name, uids, dataset);
    }
    run_store_cases(&server, &ct_context(), &cases);

    assert_eq!(archived_files(server.archive()), vec![control_path]);
    assert_eq!(server.archive().index().counts().instances, 1);
    assert_no_temp_files(server.archive(), "the refused UIDs");
}

/// A CT data set whose PatientID is `patient_id`.
fn ct_dataset_of_patient(uids: &DatasetUids, patient_id: &str) -> Vec<u8> {
    ImplicitLe::new()
        .uid(0x0008, 0x0016, &uids.sop_class_uid)
        .uid(0x0008, 0x0018, &uids.sop_instance_uid)
        .text(0x0008, 0x0020, raw::CT_DATASET_STUDY_DATE)
        .text(0x0008, 0x0060, "CT")
        .text(0x0010, 0x0010, "HOSTILE^PEER")
        .text(0x0010, 0x0020, patient_id)
        .uid(0x0020, 0x000D, &uids.study_uid)
        .uid(0x0020, 0x000E, &uids.series_uid)
        .us(0x0028, 0x0002, 1)
        .text(0x0028, 0x0004, "MONOCHROME2")
        .us(0x0028, 0x0010, 8)
        .us(0x0028, 0x0011, 8)
        .us(0x0028, 0x0100, 16)
        .us(0x0028, 0x0101, 16)
        .us(0x0028, 0x0102, 15)
        .us(0x0028, 0x0103, 0)
        .header_only(0x7FE0, 0x0010, 128)
        .bytes(&[0x11; 128])
        .build()
}

/// A store whose PatientID is ~3 KB (past LO's 64 characters, and past
/// PostgreSQL's btree row limit) among concurrent good stores: it alone
/// fails (C000); every other store of its group commits is acknowledged.
#[test]
fn an_over_long_patient_id_fails_alone_among_concurrent_stores() {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 15;
    let dir = test_dir("long-patient-id");
    let server = start_hostile_target(dir.path());
    let mut rng = Rng::new(3000);
    let good: Vec<Vec<DatasetUids>> = (0..THREADS)
        .map(|_| (0..PER_THREAD).map(|_| fresh_uids(&mut rng)).collect())
        .collect();
    let bad: Vec<DatasetUids> = (0..PER_THREAD).map(|_| fresh_uids(&mut rng)).collect();
    let long_id = "L".repeat(3000);
    std::thread::scope(|scope| {
        for uids in &good {
            let server = &server;
            scope.spawn(move || {
                let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &ct_context());
                for (n, u) in uids.iter().enumerate() {
                    let status = peer.c_store(
                        1,
                        &u.sop_class_uid,
                        &u.sop_instance_uid,
                        &ct_dataset_of_patient(u, &format!("GOOD{n}")),
                    );
                    assert_eq!(status, Some(SUCCESS), "good store {n}");
                }
                peer.release();
            });
        }
        let (server, long_id) = (&server, &long_id);
        let bad = &bad;
        scope.spawn(move || {
            let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &ct_context());
            for (n, u) in bad.iter().enumerate() {
                let status = peer.c_store(
                    1,
                    &u.sop_class_uid,
                    &u.sop_instance_uid,
                    &ct_dataset_of_patient(u, long_id),
                );
                assert_eq!(status, Some(CANNOT_UNDERSTAND), "over-long PatientID {n}");
            }
            peer.release();
        });
    });
    let index = server.archive().index();
    for u in good.iter().flatten() {
        assert!(
            index.instance(&u.sop_instance_uid).is_some(),
            "{} acknowledged but not indexed",
            u.sop_instance_uid
        );
    }
    for u in &bad {
        assert!(index.instance(&u.sop_instance_uid).is_none());
    }
    assert_eq!(index.counts().instances, (THREADS * PER_THREAD) as u64);
    assert_no_temp_files(server.archive(), "the over-long PatientIDs");
}
