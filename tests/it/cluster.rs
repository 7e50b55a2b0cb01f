//! The large deployment on one machine (`deploy/large/cluster.sh`): three
//! nodes on 127.0.0.1-3 behind HAProxy, one PostgreSQL, one shared data
//! path. One cluster serves the whole scenario (starting one costs ~10 s):
//! eight associations through the balancer, C-FIND through each node,
//! C-MOVE through the balancer, kill -9 of a node mid-ingest, and a node
//! drained under load.
//!
//! It runs PostgreSQL of its own, so it runs once, in the PostgreSQL pass
//! of the test command (the SQLite pass skips `cluster::pg_`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::corpus::{self, generate_corpus, CorpusShape, Instance};
use crate::support::dcmtk::{self, CALLING_AE};
use crate::support::raw::{c_store_rq, Proposal, RawPeer};
use crate::support::server::{test_dir, BINARY};
use crate::support::{files_under, received_by_uid};

#[path = "support/retrieve_peers.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod retrieve_peers;
use retrieve_peers::StoreScp;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/large/cluster.sh");
/// The move destination's AE title (a device in every node's configuration).
const DESTINATION: &str = "CLUSTERDEST";
/// How long the dead node's leases hold (`[workqueue] lease_secs`).
const LEASE: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// One association storing slowly (tests/it/py/slow_store_scu.py).
const SLOW_STORE_SCU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/slow_store_scu.py");

/// A running cluster, stopped (by its script, which kills only what it
/// started) when dropped.
struct Cluster {
    dir: PathBuf,
    values: BTreeMap<String, String>,
}

impl Cluster {
    fn start(dir: &Path, extra: &Path) -> Cluster {
        let output = Command::new("bash")
            .args([SCRIPT, "start"])
            .arg(dir)
            .env("IMAGESERVER_BIN", BINARY)
            .env("CLUSTER_EXTRA", extra)
            .env("CLUSTER_LEASE_SECS", LEASE.as_secs().to_string())
            .env("CLUSTER_STUDY_PROCESS_DELAY_SECS", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run cluster.sh start");
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            values: parse_values(&String::from_utf8_lossy(&output.stdout)),
        };
        assert!(
            output.status.success(),
            "cluster.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
    }

    fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("cluster.sh printed no {key}="))
    }

    fn ae(&self) -> &str {
        self.value("AE")
    }

    fn balancer(&self) -> SocketAddr {
        self.value("BALANCER").parse().expect("BALANCER=host:port")
    }

    fn nodes(&self) -> Vec<SocketAddr> {
        self.value("NODES")
            .split(',')
            .map(|a| a.parse().expect("NODES=host:port,..."))
            .collect()
    }

    fn pids(&self) -> Vec<i32> {
        self.value("NODE_PIDS")
            .split(',')
            .map(|p| p.parse().expect("NODE_PIDS=pid,..."))
            .collect()
    }

    fn data(&self) -> PathBuf {
        PathBuf::from(self.value("DATA"))
    }

    fn psql(&self, sql: &str) -> String {
        let output = Command::new("psql")
            .args(["-qtA", self.value("DB"), "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{}.log", node + 1))).unwrap_or_default()
    }

    /// `imageserver nodes --json` through node 1's configuration.
    fn node_states(&self) -> BTreeMap<String, String> {
        let output = Command::new(BINARY)
            .args(["nodes", "--json", "--config"])
            .arg(self.dir.join("node1.toml"))
            .env("IMAGESERVER_LOG", "warn")
            .output()
            .expect("run imageserver nodes");
        assert!(output.status.success(), "imageserver nodes failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let node: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                (
                    node["id"].as_str().unwrap_or_default().to_string(),
                    node["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "stop"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
    }
}

fn parse_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts `command` with its output piped (for [`dcmtk::wait_with_timeout`]).
fn spawn_piped(mut command: Command) -> std::process::Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
}

/// Associations of the test's calling AE title a node's log shows.
fn associations_of(log: &str, calling_ae: &str) -> usize {
    let needle = format!("calling_ae=\"{calling_ae}\"");
    log.lines()
        .filter(|l| l.contains("association established") && l.contains(&needle))
        .count()
}

/// Waits (bounded) until `done` holds; panics with `what` otherwise.
fn wait_until(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every instance indexed exactly once and its stored data set
/// byte-identical to the one sent.
fn assert_stored_once(cluster: &Cluster, instances: &[Instance], phase: &str) {
    let uids: BTreeSet<&str> = instances
        .iter()
        .map(|i| i.sop_instance_uid.as_str())
        .collect();
    let rows = cluster.psql("SELECT sop_instance_uid FROM instance");
    let mut indexed: BTreeMap<&str, usize> = BTreeMap::new();
    for uid in rows.lines() {
        *indexed.entry(uid).or_default() += 1;
    }
    for uid in &uids {
        assert_eq!(
            indexed.get(uid),
            Some(&1),
            "{phase}: instance {uid} indexed once ({} rows, {} instances sent)",
            indexed.len(),
            uids.len()
        );
    }
    let stored: BTreeMap<String, PathBuf> = files_under(&cluster.data())
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "dcm")
                && !p.to_string_lossy().contains(".dup")
                && !p.components().any(|c| c.as_os_str() == ".tmp")
        })
        .map(|p| {
            let uid = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            (uid, p)
        })
        .collect();
    for instance in instances {
        let path = stored
            .get(&instance.sop_instance_uid)
            .unwrap_or_else(|| panic!("no file for {}", instance.sop_instance_uid));
        assert!(
            corpus::same_dataset(path, &instance.path),
            "stored {} differs from the source",
            instance.sop_instance_uid
        );
    }
}

/// The StudyInstanceUID and instance count lines of a findscu run.
fn find_answers(addr: SocketAddr, ae: &str) -> Vec<String> {
    let mut command = dcmtk::command("/usr/bin/findscu");
    command
        .args(["-v", "-S", "-aet", CALLING_AE, "-aec", ae])
        .args(["-to", "10", "-ta", "10", "-td", "60"])
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])
        .args(["-k", "PatientID", "-k", "NumberOfStudyRelatedInstances"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    let output = dcmtk::run(command, CLIENT_TIMEOUT);
    assert!(output.success(), "findscu through {addr}:\n{output}");
    let mut answers: Vec<String> = output
        .text()
        .lines()
        .filter(|l| {
            l.contains("(0020,000d)") || l.contains("(0020,1208)") || l.contains("(0010,0020)")
        })
        // The request's own identifier, echoed in the log.
        .filter(|l| !l.contains("no value available"))
        .map(|l| {
            l.trim_start_matches(['I', 'W', ':', ' '])
                .trim()
                .to_string()
        })
        .collect();
    answers.sort();
    answers
}

/// Whether a study-level C-FIND through `addr` is refused (0124, not
/// authorised) rather than answered.
fn find_refused(addr: SocketAddr, ae: &str) -> bool {
    let mut command = dcmtk::command("/usr/bin/findscu");
    command
        .args(["-v", "-S", "-aet", CALLING_AE, "-aec", ae])
        .args(["-to", "10", "-ta", "10", "-td", "60"])
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    let output = dcmtk::run(command, CLIENT_TIMEOUT);
    let text = output.text();
    text.contains("Status: 0x124") || text.contains("Refused")
}

#[test]
fn pg_cluster_behind_haproxy_stores_finds_moves_survives_kill_and_drains() {
    let dir = test_dir("cluster");
    let root = dir.path();
    let destination = StoreScp::start(DESTINATION, &root.join("dest"), false);
    let extra = root.join("extra.toml");
    std::fs::write(
        &extra,
        format!(
            // The move destination, and the test's calling AE as a known
            // device (unknown callers may only store): it calls from
            // 127.0.0.1, directly and through HAProxy alike.
            "[[devices]]\nae_title = \"{DESTINATION}\"\nhost = \"127.0.0.1\"\nport = {}\n\
             [[devices]]\nae_title = \"{CALLING_AE}\"\nhost = \"127.0.0.1\"\nport = 104\n",
            destination.port
        ),
    )
    .expect("write the extra configuration");
    let started = Instant::now();
    let cluster = Cluster::start(&root.join("cluster"), &extra);
    let ae = cluster.ae().to_string();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3);
    let states = cluster.node_states();
    assert_eq!(
        states.values().filter(|s| *s == "active").count(),
        3,
        "{states:?}"
    );
    eprintln!("cluster: started in {:?}", started.elapsed());

    // 1. Eight associations through the balancer, one study each.
    let corpus_dir = root.join("corpus");
    let instances = generate_corpus(&corpus_dir, 1201, CorpusShape::uniform(8, 1, 6, (64, 64)));
    let senders: Vec<_> = (0..8)
        .map(|study| {
            let path = corpus_dir.join(format!("study{study}"));
            let command = dcmtk::store_command(cluster.balancer(), &ae, &[&path], &[]);
            let child = { command }
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn storescu");
            child
        })
        .collect();
    for child in senders {
        let output = dcmtk::wait_with_timeout(child, CLIENT_TIMEOUT);
        assert!(output.success(), "storescu through the balancer:\n{output}");
    }
    assert_stored_once(&cluster, &instances, "eight associations");
    let spread: Vec<usize> = (0..3)
        .map(|n| associations_of(&cluster.log(n), CALLING_AE))
        .collect();
    assert_eq!(
        spread.iter().sum::<usize>(),
        8,
        "associations per node {spread:?}"
    );
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "eight associations all went to one node: {spread:?}"
    );
    eprintln!("cluster: 8 associations spread over the nodes as {spread:?}");

    // 2. C-FIND through each node: the same answers.
    let answers: Vec<Vec<String>> = nodes.iter().map(|node| find_answers(*node, &ae)).collect();
    assert_eq!(
        answers[0]
            .iter()
            .filter(|l| l.contains("(0020,000d)"))
            .count(),
        8,
        "eight studies: {:?}",
        answers[0]
    );
    assert_eq!(answers[0], answers[1], "node 1 and node 2 answer alike");
    assert_eq!(answers[0], answers[2], "node 1 and node 3 answer alike");

    // 2b. A device changed in the index is used by every node without a
    // restart: the test's AE loses its query permission, then gets it back.
    let set_query = |allowed: bool| {
        cluster.psql(&format!(
            "UPDATE device SET allow_query = {allowed} WHERE ae_title = '{CALLING_AE}'"
        ));
    };
    set_query(false);
    for node in &nodes {
        wait_until(
            Duration::from_secs(15),
            "the query permission withdrawn on every node",
            || find_refused(*node, &ae),
        );
    }
    set_query(true);
    for node in &nodes {
        wait_until(
            Duration::from_secs(15),
            "the query permission back on every node",
            || !find_refused(*node, &ae),
        );
    }

    // 3. C-MOVE through the balancer: byte-identical data at the destination.
    let moved_study = &instances[0].study_uid;
    let run = retrieve_peers::movescu(
        cluster.balancer(),
        &ae,
        DESTINATION,
        false,
        &[
            "QueryRetrieveLevel=STUDY".to_string(),
            format!("StudyInstanceUID={moved_study}"),
        ],
    );
    assert_eq!(run.status, Some(0), "C-MOVE through the balancer: {run:?}");
    let received = received_by_uid(&destination.dir);
    let expected: Vec<&Instance> = instances
        .iter()
        .filter(|i| &i.study_uid == moved_study)
        .collect();
    assert_eq!(received.len(), expected.len(), "instances moved");
    for instance in expected {
        let path = &received[&instance.sop_instance_uid];
        assert!(
            corpus::same_dataset(path, &instance.path),
            "moved {} differs",
            instance.sop_instance_uid
        );
    }

    // 4. kill -9 a node mid-ingest: a half-sent store leaves a temporary
    // file of the victim; senders whose association it held re-send
    // through the balancer.
    let victim = 0;
    let victim_pid = cluster.pids()[victim];
    let part_prefix = format!("-{victim_pid}-");
    let mut half = RawPeer::associate(
        nodes[victim],
        &ae,
        &[Proposal::implicit(1, corpus::CT_IMAGE_STORAGE)],
    );
    half.send_pdv(
        1,
        true,
        true,
        &c_store_rq(
            1,
            corpus::CT_IMAGE_STORAGE,
            "1.2.826.0.1.3680043.9.7433.99.1",
        ),
    )
    .expect("send the command");
    half.send_pdv(1, false, false, &[0u8; 4096])
        .expect("send half a data set");
    let temporary = || -> Vec<PathBuf> {
        files_under(&cluster.data().join(".tmp"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&part_prefix))
            .collect()
    };
    wait_until(
        Duration::from_secs(10),
        "the half-sent store's temporary file",
        || !temporary().is_empty(),
    );
    let second_dir = root.join("corpus2");
    let second = generate_corpus(
        &second_dir,
        1202,
        CorpusShape::uniform(6, 1, 30, (128, 128)),
    );
    let spawn = |study: usize| {
        let path = second_dir.join(format!("study{study}"));
        dcmtk::store_command(cluster.balancer(), &ae, &[&path], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn storescu")
    };
    let senders: Vec<_> = (0..6).map(spawn).collect();
    // Kill once the victim has acknowledged stores of this load.
    let before = associations_of(&cluster.log(victim), CALLING_AE);
    wait_until(
        Duration::from_secs(60),
        "an association of the load on the victim",
        || associations_of(&cluster.log(victim), CALLING_AE) > before,
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the node's pid (cluster.sh started it).
    assert_eq!(
        unsafe { libc::kill(victim_pid, libc::SIGKILL) },
        0,
        "kill -9 the node"
    );
    let killed_at = Instant::now();
    drop(half);
    let mut resent = 0;
    let mut attempts = Vec::new();
    for (study, child) in senders.into_iter().enumerate() {
        let mut output = dcmtk::wait_with_timeout(child, CLIENT_TIMEOUT);
        let mut sends = 1;
        // A sender whose association died with the node, or that got any
        // store refused, sends the study again through the balancer (which
        // no longer picks the dead node) until every instance is
        // acknowledged, as a modality does; a study sent whole at the
        // first attempt is never sent again, so an instance acknowledged
        // then lost still fails the check below.
        while !output.success() || dcmtk::acknowledged_files(&output.text()).len() < 30 {
            assert!(
                sends <= 3,
                "study {study}: not every instance acknowledged after {sends} sends:\n{output}"
            );
            if sends == 1 {
                resent += 1;
            }
            sends += 1;
            output = dcmtk::wait_with_timeout(spawn(study), CLIENT_TIMEOUT);
        }
        attempts.push(sends);
    }
    eprintln!(
        "cluster: kill -9 of node{}: {resent} of 6 senders re-sent (sends per study {attempts:?})",
        victim + 1
    );
    let mut all = instances.clone();
    all.extend(second.iter().cloned());
    assert_stored_once(&cluster, &all, "after kill -9 and re-sends");
    // The others see the node dead and remove its temporary files.
    wait_until(
        Duration::from_secs(30),
        "the dead node's temporary files removed",
        || temporary().is_empty(),
    );
    wait_until(Duration::from_secs(30), "the node listed dead", || {
        cluster.node_states().get("node1").map(String::as_str) == Some("dead")
    });
    // Its work items (and everyone's) finish within the lease timeout.
    wait_until(
        LEASE * 3,
        "every work item completed after the kill",
        || {
            cluster.psql("SELECT COUNT(*) FROM work_queue WHERE status <> 'completed'") == "0"
                && cluster.psql("SELECT COUNT(DISTINCT study_storage_id) FROM work_queue") != "0"
        },
    );
    eprintln!(
        "cluster: work finished {:?} after the kill",
        killed_at.elapsed()
    );

    // 5. Drain node 2 under load: no association fails, it exits 0.
    let third_dir = root.join("corpus3");
    let third = generate_corpus(&third_dir, 1203, CorpusShape::uniform(6, 1, 8, (64, 64)));
    let files: Vec<PathBuf> = third.iter().map(|i| i.path.clone()).collect();
    // An association held on node 2 itself across the drain: it must end
    // by itself, not be cut off.
    let slow_dir = root.join("corpus4");
    let slow = generate_corpus(&slow_dir, 1204, CorpusShape::uniform(1, 1, 12, (64, 64)));
    let mut slow_sender = Command::new("python3");
    slow_sender
        .arg(SLOW_STORE_SCU)
        .args([nodes[1].ip().to_string(), nodes[1].port().to_string()])
        .args([ae.as_str(), "0.5"])
        .args(slow.iter().map(|i| &i.path));
    let slow_sender = spawn_piped(slow_sender);
    let load = std::thread::scope(|scope| {
        let senders: Vec<_> = files
            .chunks(12)
            .map(|chunk| {
                let ae = &ae;
                let balancer = cluster.balancer();
                scope.spawn(move || {
                    // One association per file: new associations keep
                    // arriving while the node drains.
                    for file in chunk {
                        let output = dcmtk::store(balancer, ae, &[file], &[], CLIENT_TIMEOUT);
                        if !output.success() {
                            return Err(output.to_string());
                        }
                        std::thread::sleep(Duration::from_millis(400));
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let drain = Command::new(BINARY)
            .args(["nodes", "drain", "node2", "--config"])
            .arg(cluster.dir.join("node1.toml"))
            .env("IMAGESERVER_LOG", "warn")
            .output()
            .expect("run imageserver nodes drain");
        assert!(drain.status.success(), "nodes drain failed");
        senders
            .into_iter()
            .map(|s| s.join().expect("a sender thread"))
            .collect::<Vec<_>>()
    });
    for outcome in load {
        if let Err(output) = outcome {
            panic!("an association failed while node 2 drained:\n{output}");
        }
    }
    let slow_output = dcmtk::wait_with_timeout(slow_sender, CLIENT_TIMEOUT);
    assert!(
        slow_output.success(),
        "the association open on node 2 during its drain failed:\n{slow_output}"
    );
    let exit = cluster.dir.join("node2.exit");
    wait_until(
        Duration::from_secs(60),
        "node 2 exits after draining",
        || exit.exists(),
    );
    assert_eq!(
        std::fs::read_to_string(&exit).unwrap_or_default().trim(),
        "0",
        "node 2's exit status"
    );
    assert_eq!(
        cluster.node_states().get("node2").map(String::as_str),
        Some("stopped")
    );
    all.extend(third);
    all.extend(slow);
    assert_stored_once(&cluster, &all, "after the drain");
    eprintln!("cluster: scenario done in {:?}", started.elapsed());
}
