//! The OHIF viewer (npm's `@ohif/app`, its prebuilt `dist/`) against our
//! DICOMweb root, for real, in Debian's headless Chromium driven by
//! playwright-core (`tests/it/ohif/ohif_check.cjs`); the rendered and
//! thumbnail resources beside it, checked with curl on the same server.
//!
//! `scripts/ohif.sh` fetches the viewer and playwright-core into a cache
//! outside git (`IMAGESERVER_OHIF_CACHE`, default
//! `~/.cache/imageserver-ohif`); the test command runs it first. The
//! viewer is served by our server at `/viewer/` (`[http] viewer_dir`: the
//! cached `dist/`, with our own `app-config.js`), so the test proves the
//! served viewer works: none of its own files may fail to load either.
//!
//! A small CT series (random 12-bit pixels) is C-STORE'd by DCMTK; the
//! study list must show it, the study must open with pixels in its
//! viewport (not one colour) and no error panel, and no DICOMweb request
//! OHIF made may get a 4xx or 5xx. Screenshots are kept (the paths are
//! printed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::cli::BOUND;
use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::dcmtk;
use crate::support::server::{free_port, test_dir, Server};

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/ohif/ohif_check.cjs");
const OHIF_VERSION: &str = "3.13.2";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser session's bound (each wait inside is bounded too).
const BROWSER_BOUND: Duration = Duration::from_secs(240);

/// The cache `scripts/ohif.sh` fills.
fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMAGESERVER_OHIF_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set");
    base.join("imageserver-ohif")
}

/// `curl` a URL: (status, content type, body bytes).
fn get(url: &str, accept: &str, work: &Path) -> (u16, String, Vec<u8>) {
    let body = work.join(format!("body-{}", free_port()));
    let mut command = Command::new("curl");
    command
        .args(["-s", "--max-time", "60", "-H", &format!("Accept: {accept}")])
        .args(["-o"])
        .arg(&body)
        .args(["-w", "%{http_code} %{content_type}", url]);
    let out = dcmtk::run(command, BOUND);
    assert!(out.success(), "curl failed:\n{out}");
    let (status, content_type) = out.stdout.split_once(' ').unwrap_or((&out.stdout, ""));
    let bytes = std::fs::read(&body).unwrap_or_default();
    (status.parse().unwrap_or(0), content_type.to_string(), bytes)
}

/// A PNG's width and height (IHDR).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[1..4], b"PNG", "a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

#[test]
fn ohif_viewer_opens_a_ct_study_and_rendered_resources_answer() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh does)"
    );
    let cache = cache();
    let dist = cache.join(format!("ohif-app-{OHIF_VERSION}")).join("dist");
    let node_modules = cache.join("node_modules");
    assert!(
        dist.join("index.html").exists() && node_modules.join("playwright-core").exists(),
        "the OHIF viewer or playwright-core is missing from {}: run scripts/ohif.sh (scripts/test.sh does)",
        cache.display()
    );

    let dir = test_dir("ohif");
    let corpus_dir = dir.path().join("corpus");
    let corpus = generate_corpus(&corpus_dir, 1601, CorpusShape::uniform(1, 1, 4, (64, 64)));
    let server = Server::builder(dir.path())
        .setting("http", format!("{{ viewer_dir = {dist:?} }}"))
        .start();
    let stored = dcmtk::store(server.addr(), server.ae_title(), &[&corpus_dir], &[], BOUND);
    assert!(stored.success(), "storescu failed:\n{stored}");
    let study = &corpus[0];
    let dicom_web = format!("{}/dicom-web", server.http_url());

    // Rendered and thumbnail resources, at every level.
    let work = dir.path().join("http");
    std::fs::create_dir_all(&work).expect("work folder");
    let instance = format!(
        "{dicom_web}/studies/{}/series/{}/instances/{}",
        study.study_uid, study.series_uid, study.sop_instance_uid
    );
    let (status, kind, jpeg) = get(&format!("{instance}/rendered"), "image/jpeg", &work);
    assert_eq!((status, kind.as_str()), (200, "image/jpeg"));
    assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF], "a JPEG");
    let (status, kind, png) = get(
        &format!("{instance}/frames/1/rendered?viewport=128,128"),
        "image/png",
        &work,
    );
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    assert_eq!(png_size(&png), (128, 128), "fitted to the viewport");
    for level in [
        format!("{dicom_web}/studies/{}", study.study_uid),
        format!(
            "{dicom_web}/studies/{}/series/{}",
            study.study_uid, study.series_uid
        ),
        instance.clone(),
        format!("{instance}/frames/1"),
    ] {
        let (status, kind, png) = get(&format!("{level}/thumbnail"), "image/png", &work);
        assert_eq!((status, kind.as_str()), (200, "image/png"), "{level}");
        assert_eq!(
            png_size(&png),
            (64, 64),
            "{level}: a thumbnail is never enlarged"
        );
    }
    let (status, kind, body) = get(
        &format!("{dicom_web}/studies/{}/rendered", study.study_uid),
        "multipart/related; type=\"image/jpeg\"",
        &work,
    );
    assert_eq!(status, 200);
    assert!(kind.starts_with("multipart/related"), "{kind}");
    let parts = body.windows(3).filter(|w| w == &[0xFF, 0xD8, 0xFF]).count();
    assert!(
        parts >= corpus.len(),
        "one JPEG per instance, {parts} found"
    );
    let (status, _, _) = get(&format!("{instance}/rendered"), "image/gif", &work);
    assert_eq!(status, 406);
    let (status, _, _) = get(&format!("{instance}/frames/2/rendered"), "image/png", &work);
    assert_eq!(status, 404, "no frame 2");

    // The served viewer: our configuration, its root paths under /viewer/,
    // a client-side route answered by its index.html.
    let viewer = format!("{}/viewer", server.http_url());
    let (status, kind, config) = get(&format!("{viewer}/app-config.js"), "*/*", &work);
    let config = String::from_utf8_lossy(&config);
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/javascript"), "{kind}");
    assert!(
        config.contains("routerBasename: '/viewer'") && config.contains("'/dicom-web'"),
        "{config}"
    );
    let (status, _, index) = get(
        &format!("{viewer}/viewer?StudyInstanceUIDs=1.2"),
        "*/*",
        &work,
    );
    let index = String::from_utf8_lossy(&index);
    assert_eq!(status, 200);
    assert!(
        index.contains("src=\"/viewer/app-config.js\"") && !index.contains("src=\"/app"),
        "index.html rebased under /viewer/: {index}"
    );

    // OHIF, for real.
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    // OHIF lists the patient name as "TEST, PATIENT0 SEED1601".
    let patient_id = "SEED1601";
    let mut command = Command::new("node");
    command
        .arg(DRIVER)
        .args([&viewer, &dicom_web, &study.study_uid, patient_id])
        .arg(&shots)
        .env("NODE_PATH", &node_modules);
    let out = dcmtk::run(command, BROWSER_BOUND);
    let found: Value = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the browser driver:\n{out}"));
    let kept = dir.keep();
    println!("OHIF screenshots: {}", kept.join("screenshots").display());
    println!("OHIF's DICOMweb requests: {}", found["dicomweb_requests"]);
    let what = serde_json::to_string_pretty(&found).unwrap_or_default();
    assert_eq!(found["stage"], "done", "{what}");
    assert_eq!(
        found["list_ok"], true,
        "the study list shows our study: {what}"
    );
    assert_eq!(
        found["dicomweb_failures"],
        serde_json::json!([]),
        "no DICOMweb request of OHIF failed: {what}"
    );
    assert!(
        found["viewport_colours"].as_u64().unwrap_or(0) > 1,
        "the viewport renders pixels: {what}"
    );
    assert_eq!(found["error_panel"], Value::Null, "no error panel: {what}");
    assert_eq!(
        found["viewer_failures"],
        serde_json::json!([]),
        "every file of the viewer we serve loaded: {what}"
    );
    let requests = found["dicomweb_requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        requests
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("/frames/"))),
        "OHIF fetched frames through WADO-RS: {what}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("/thumbnail"))),
        "OHIF's thumbnails are our thumbnail resources: {what}"
    );
}
