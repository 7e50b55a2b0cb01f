//! A 200 MiB instance in 4 KiB PDUs stays within a memory bound.

use std::time::Duration;

use crate::support::corpus::single_instance;
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::server::{test_dir, Server};
use crate::support::{archived_files, assert_archived};

/// 10240 × 10240 × 16 bits = 200 MiB of pixel data.
const SIDE: u16 = 10240;
/// How far above its idle RSS the server may grow while receiving.
const RSS_HEADROOM: u64 = 64 << 20;

#[test]
fn a_200_mib_instance_streams_within_a_memory_bound() {
    let dir = test_dir("large");
    let source = single_instance(&dir.path().join("large.dcm"), 200, SIDE, SIDE);
    assert!(
        source.file_size > 200 << 20,
        "the instance is {} bytes",
        source.file_size
    );
    let server = Server::start(dir.path());
    let idle_rss = server.rss_bytes();

    let sampler = server.sample_rss();
    let storescu = dcmtk::store(
        server.addr(),
        server.ae_title(),
        &[&source.path],
        &["--max-send-pdu", "4096"],
        Duration::from_secs(300),
    );
    let peak_rss = sampler.stop();

    eprintln!(
        "large: server RSS idle {} MiB, peak {} MiB",
        idle_rss >> 20,
        peak_rss >> 20
    );
    assert!(storescu.success(), "storescu failed:\n{storescu}");
    assert_eq!(
        dcmtk::acknowledged_files(&storescu.text()).len(),
        1,
        "{storescu}"
    );
    assert!(
        peak_rss <= idle_rss + RSS_HEADROOM,
        "server RSS peaked at {} MiB, idle was {} MiB (bound: idle + {} MiB)",
        peak_rss >> 20,
        idle_rss >> 20,
        RSS_HEADROOM >> 20
    );
    assert_archived(
        server.archive(),
        &server.archive().index(),
        &source,
        Some(CALLING_AE),
    );
    assert_eq!(archived_files(server.archive()).len(), 1);

    // Free the disk early: the 200 MiB source and its stored copy.
    std::fs::remove_file(&source.path).expect("remove the source instance");
}
