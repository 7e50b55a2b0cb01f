//! Peers that send more than a store may cost: an instance beyond the
//! largest accepted, a stream that eats the free space a filesystem must
//! keep, a huge element before Pixel Data. Each fails while it streams,
//! leaves no temporary file and costs no memory in proportion.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::assert_no_temp_files;
use crate::support::corpus::Rng;
use crate::support::raw::{self, ct_dataset_header, DatasetUids, Proposal, RawPeer};
use crate::support::server::{test_dir, Server};

/// Data set bytes per P-DATA-TF: well below the server's largest PDU.
const FRAGMENT: usize = 64 * 1024;
/// How far above its idle RSS the server may grow while refusing.
const RSS_HEADROOM: u64 = 64 << 20;

fn ct_uids(rng: &mut Rng) -> DatasetUids {
    DatasetUids {
        sop_class_uid: raw::CT_IMAGE_STORAGE.to_string(),
        sop_instance_uid: rng.uid(),
        study_uid: rng.uid(),
        series_uid: rng.uid(),
    }
}

/// Sends a C-STORE whose data set is `head`, then `fill` bytes of 0x5A
/// generated as they are sent (never held whole), then `tail`, and returns
/// the response status (`None` if the association ended instead).
fn stream_store(
    server: &Server,
    uids: &DatasetUids,
    head: &[u8],
    fill: u64,
    tail: &[u8],
) -> Option<u16> {
    let context = [Proposal::implicit(1, raw::CT_IMAGE_STORAGE)];
    let mut peer = RawPeer::associate(server.addr(), server.ae_title(), &context);
    let command = raw::c_store_rq(1, &uids.sop_class_uid, &uids.sop_instance_uid);
    peer.send_pdv(1, true, true, &command).ok()?;
    peer.send_pdv(1, false, false, head).ok()?;
    let chunk = vec![0x5A; FRAGMENT];
    let mut left = fill;
    while left > 0 {
        let n = left.min(FRAGMENT as u64);
        left -= n;
        peer.send_pdv(1, false, false, &chunk[..n as usize]).ok()?;
    }
    peer.send_pdv(1, false, true, tail).ok()?;
    let status = peer.read_status(Duration::from_secs(60));
    peer.release();
    status
}

/// A CT data set's elements and the header of a Pixel Data element
/// claiming `pixel_len` bytes (which the caller streams after it).
fn ct_head(uids: &DatasetUids, pixel_len: u32) -> Vec<u8> {
    ct_dataset_header(uids)
        .header_only(0x7FE0, 0x0010, pixel_len)
        .build()
}

/// A store beyond `max_instance_size_mb` fails with A700 (out of
/// resources) and nothing of it stays on disk; the association goes on.
#[test]
fn an_instance_beyond_the_size_limit_is_refused_and_leaves_no_file() {
    let dir = test_dir("sizes-instance");
    let server = Server::builder(dir.path())
        .dicom_setting("max_instance_size_mb", 8)
        .dicom_setting("max_header_size_mb", 1)
        .start();
    let mut rng = Rng::new(101);
    let uids = ct_uids(&mut rng);
    let pixel_len: u32 = 32 << 20;
    let status = stream_store(
        &server,
        &uids,
        &ct_head(&uids, pixel_len),
        pixel_len.into(),
        &[],
    );
    assert_eq!(status, Some(0xA700), "a 32 MiB store over an 8 MiB limit");
    assert!(server
        .archive()
        .index()
        .instance(&uids.sop_instance_uid)
        .is_none());
    assert_no_temp_files(server.archive(), "a store beyond the size limit");

    // Within the limit the same server stores.
    let small = ct_uids(&mut rng);
    let status = stream_store(&server, &small, &ct_head(&small, 1 << 20), 1 << 20, &[]);
    assert_eq!(status, Some(0x0000), "a 1 MiB store under the 8 MiB limit");
}

/// A 200 MiB private element before Pixel Data is refused (C000) from its
/// header on: the server neither keeps it nor parses it into memory.
#[test]
fn a_huge_element_before_pixel_data_is_refused_without_costing_memory() {
    let dir = test_dir("sizes-header");
    let server = Server::builder(dir.path())
        .dicom_setting("max_header_size_mb", 4)
        .start();
    let mut rng = Rng::new(102);
    let uids = ct_uids(&mut rng);
    let private_len: u32 = 200 << 20;
    // A valid CT data set with a private (0009,1010) of 200 MiB between
    // its group 0008 and group 0010 elements.
    let head = raw::ImplicitLe::new()
        .uid(0x0008, 0x0016, &uids.sop_class_uid)
        .uid(0x0008, 0x0018, &uids.sop_instance_uid)
        .text(0x0008, 0x0060, "CT")
        .header_only(0x0009, 0x1010, private_len)
        .build();
    let tail = raw::ImplicitLe::new()
        .text(0x0010, 0x0020, "RAWPID")
        .uid(0x0020, 0x000D, &uids.study_uid)
        .uid(0x0020, 0x000E, &uids.series_uid)
        .header_only(0x7FE0, 0x0010, 128)
        .bytes(&[0x11; 128])
        .build();
    let idle_rss = server.rss_bytes();
    let sampler = server.sample_rss();
    let status = stream_store(&server, &uids, &head, private_len.into(), &tail);
    let peak_rss = sampler.stop();
    eprintln!(
        "sizes-header: server RSS idle {} MiB, peak {} MiB",
        idle_rss >> 20,
        peak_rss >> 20
    );
    assert_eq!(status, Some(0xC000), "a 200 MiB element before Pixel Data");
    assert!(
        peak_rss <= idle_rss + RSS_HEADROOM,
        "server RSS peaked at {} MiB, idle was {} MiB (bound: idle + {} MiB)",
        peak_rss >> 20,
        idle_rss >> 20,
        RSS_HEADROOM >> 20
    );
    assert_no_temp_files(server.archive(), "a header beyond the limit");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `path`; `None` where mounting is not
    /// allowed (not root), except in CI, where that fails the test.
    fn mount(path: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create the mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run this test as root (it mounts a tmpfs)"
            );
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// A server whose one filesystem is `tmpfs`, keeping `min_free_mb` free.
fn server_on(dir: &Path, tmpfs: &Tmpfs, min_free_mb: u64) -> Server {
    Server::builder(dir)
        .setting("min_free_space_mb", min_free_mb)
        .setting(
            "filesystems",
            format!("[{{ path = {:?} }}]", tmpfs.path.display().to_string()),
        )
        .start()
}

/// Streams a CT of `pixel_mib` MiB of pixel data; returns its status after
/// checking that a refused one left no temporary file and no row.
fn store_on(server: &Server, tmpfs: &Tmpfs, rng: &mut Rng, pixel_mib: u32) -> Option<u16> {
    let uids = ct_uids(rng);
    let pixel_len: u32 = pixel_mib << 20;
    let status = stream_store(
        server,
        &uids,
        &ct_head(&uids, pixel_len),
        pixel_len.into(),
        &[],
    );
    if status != Some(0x0000) {
        let left: Vec<_> = std::fs::read_dir(tmpfs.path.join(".tmp"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| !crate::support::is_empty_spare(p))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        assert!(server
            .archive()
            .index()
            .instance(&uids.sop_instance_uid)
            .is_none());
    }
    status
}

/// On a 160 MiB filesystem that must keep 64 MiB free, a 150 MiB store
/// passes the check at its start (160 MiB free) and fails (A700) once it
/// has eaten into the 64 MiB, its temporary file removed: the free space
/// is measured while the data set streams, not only when it begins.
#[test]
fn a_store_that_crosses_the_free_space_floor_fails_midway() {
    let dir = test_dir("sizes-free-space");
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("fs"), 160) else {
        return;
    };
    let server = server_on(dir.path(), &tmpfs, 64);
    let mut rng = Rng::new(103);
    assert_eq!(
        store_on(&server, &tmpfs, &mut rng, 150),
        Some(0xA700),
        "150 MiB into 160 MiB keeping 64 MiB"
    );
    // The server (and its files on the tmpfs) goes before the unmount.
    drop(server);
    drop(tmpfs);
}

/// A really full filesystem (no free-space floor to stop the store first):
/// the write fails with ENOSPC, the store is answered A700 and leaves no
/// temporary file, and once that space is given back the next store
/// succeeds — one full disk costs one store.
#[test]
fn a_full_filesystem_fails_the_store_with_a700_and_the_next_one_succeeds() {
    let dir = test_dir("sizes-full");
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("fs"), 16) else {
        return;
    };
    let server = server_on(dir.path(), &tmpfs, 0);
    let mut rng = Rng::new(104);
    assert_eq!(
        store_on(&server, &tmpfs, &mut rng, 32),
        Some(0xA700),
        "32 MiB into a 16 MiB filesystem"
    );
    assert_eq!(
        store_on(&server, &tmpfs, &mut rng, 1),
        Some(0x0000),
        "a store that fits, after the full one"
    );
    drop(server);
    drop(tmpfs);
}
