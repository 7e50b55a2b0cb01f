//! `tests/it/py/flaky_store_scp.py`, a pynetdicom Storage SCP that refuses
//! chosen instances, answers slowly on request and logs every C-STORE and
//! every connection: the destination of the routing and cluster tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::received_by_uid;

/// The pynetdicom Storage SCP.
const FLAKY_SCP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/py/flaky_store_scp.py"
);

/// `flaky_store_scp.py` on a loopback port, killed (by its handle) on drop.
pub struct FlakyScp {
    child: Child,
    /// Where the stored files go (`ROOT/dest`).
    pub dir: PathBuf,
    log: PathBuf,
    output: PathBuf,
}

/// Which instances the SCP refuses, and for how long.
pub enum Refuse<'a> {
    /// The first time each arrives.
    FirstTime(&'a [&'a str]),
    /// Every time.
    Always(&'a [&'a str]),
}

impl FlakyScp {
    /// Starts the SCP as `ae_title` on `port` under `root`, answering the
    /// `warn` instances with 0xB000; waits until it listens.
    pub fn start(
        root: &Path,
        ae_title: &str,
        port: u16,
        refuse: Refuse<'_>,
        warn: &[&str],
    ) -> FlakyScp {
        FlakyScp::start_slow(root, ae_title, port, refuse, warn, Duration::ZERO)
    }

    /// [`FlakyScp::start`], holding every C-STORE `delay` before answering.
    pub fn start_slow(
        root: &Path,
        ae_title: &str,
        port: u16,
        refuse: Refuse<'_>,
        warn: &[&str],
        delay: Duration,
    ) -> FlakyScp {
        let dir = root.join("dest");
        let (mode, refused) = match refuse {
            Refuse::FirstTime(uids) => ("first", uids),
            Refuse::Always(uids) => ("always", uids),
        };
        let refuse_file = root.join("refuse.txt");
        std::fs::write(&refuse_file, lines(refused)).expect("write the refuse list");
        let warn_file = root.join("warn.txt");
        std::fs::write(&warn_file, lines(warn)).expect("write the warn list");
        let log = root.join("dest-stores.log");
        let output = root.join("dest-output.log");
        let out = std::fs::File::create(&output).expect("create the SCP output file");
        let child = Command::new("python3")
            .arg(FLAKY_SCP)
            .args(["--port", &port.to_string(), "--aet", ae_title])
            .arg("--out")
            .arg(&dir)
            .arg("--log")
            .arg(&log)
            .arg("--refuse")
            .arg(&refuse_file)
            .args(["--refuse-mode", mode])
            .arg("--warn")
            .arg(&warn_file)
            .args(["--delay", &delay.as_secs_f64().to_string()])
            .arg("--conn-log")
            .arg(root.join("dest-connections.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the output handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 {FLAKY_SCP}: {e}"));
        let mut scp = FlakyScp {
            child,
            dir,
            log,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let printed = std::fs::read_to_string(&scp.output).unwrap_or_default();
            if printed.lines().any(|l| l == "READY") {
                return scp;
            }
            if let Some(status) = scp.child.try_wait().expect("poll the SCP") {
                panic!("{FLAKY_SCP} exited ({status}) before listening:\n{printed}");
            }
            assert!(
                Instant::now() < deadline,
                "{FLAKY_SCP} did not listen:\n{printed}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every C-STORE so far, in arrival order: SOP Instance UID and the
    /// status answered.
    pub fn stores(&self) -> Vec<(String, u16)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert!(
                    fields.len() == 4 && fields[0] == "STORE",
                    "bad log line {line:?}"
                );
                let status = u16::from_str_radix(fields[3], 16).expect("a hex status");
                (fields[2].to_string(), status)
            })
            .collect()
    }

    /// The most connections the SCP had open at once, over the lines of
    /// its connection log from line `from` on.
    pub fn max_open_connections(&self, from: usize) -> usize {
        self.connection_events()
            .into_iter()
            .skip(from)
            .map(|(_, open)| open)
            .max()
            .unwrap_or(0)
    }

    /// Its connection log: (opened?, connections open after the event).
    pub fn connection_events(&self) -> Vec<(bool, usize)> {
        let path = self.log.with_file_name("dest-connections.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let (event, open) = line.split_once(' ').expect("EVENT COUNT");
                (event == "OPEN", open.parse().expect("a count"))
            })
            .collect()
    }

    /// The stored files by SOP Instance UID (from their meta group).
    pub fn received(&self) -> BTreeMap<String, PathBuf> {
        received_by_uid(&self.dir)
    }
}

impl Drop for FlakyScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "===== {FLAKY_SCP} output =====\n{}\n===== C-STOREs =====\n{}",
                std::fs::read_to_string(&self.output).unwrap_or_default(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn lines(uids: &[&str]) -> String {
    uids.iter().map(|uid| format!("{uid}\n")).collect()
}
