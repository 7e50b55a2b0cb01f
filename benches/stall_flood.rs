//! Stall-and-flood benchmark (hostile-peers issue): does ingest keep its
//! rate while peers try to starve the archive?
//!
//! An in-process server (`ServerBuilder`, the real acceptor, ingest, group
//! committer and index) receives rounds of DCMTK `storescu` ingest, one
//! association per round, alternating:
//!
//! - **alone**: nothing else is connected;
//! - **under attack**: 8 associations stall mid-C-FIND (a matching
//!   study-level C-FIND, then the first byte of another PDU, then nothing)
//!   and 1,000 idle TCP connections (from 127.0.0.2, another "host") are
//!   open for the whole round.
//!
//! Every round sends a fresh corpus; every C-STORE must be answered with
//! success and indexed (a wrong count prints no rate). The figure is the
//! ratio of the under-attack rate to the alone rate, measured in the same
//! run, interleaved (A B A B …); the issue asks for ≥ 0.8.
//!
//! ```text
//! cargo bench --bench stall_flood                       # 3 rounds of 300 instances each way
//! cargo bench --bench stall_flood -- --rounds 5 --instances 1000 --idle 1000
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run of one
//! small round each way checks it all works.

#[path = "../tests/it/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "../tests/it/support/net.rs"]
mod net;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dicom_ul::pdu::PresentationContextResultReason;
use dicom_ul::ClientAssociationOptions;
use imageserver_core::dicom::dimse::{Command as Dimse, Priority};
use imageserver_core::dicom::pdu;
use imageserver_core::{Config, Server, ServerBuilder};

use corpus::{generate_corpus, CorpusShape};
use net::connect_from;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo bench --bench stall_flood -- [options]
  --rounds N      rounds each way, interleaved (default 3; 1 without --bench)
  --instances K   instances per round (default 300; 20 without --bench)
  --stalled S     associations stalled mid-C-FIND (default 8)
  --idle I        idle TCP connections (default 1000; 50 without --bench)";

const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const STORESCU: &str = "/usr/bin/storescu";

struct Options {
    smoke: bool,
    rounds: usize,
    instances: usize,
    stalled: usize,
    idle: usize,
}

impl Options {
    fn parse() -> Result<Options> {
        let bench = std::env::args().any(|a| a == "--bench");
        let mut options = Options {
            smoke: !bench,
            rounds: if bench { 3 } else { 1 },
            instances: if bench { 300 } else { 20 },
            stalled: 8,
            idle: if bench { 1000 } else { 50 },
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || -> Result<usize> {
                Ok(args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a value"))?
                    .parse()?)
            };
            match arg.as_str() {
                "--bench" => {}
                "--rounds" => options.rounds = value()?,
                "--instances" => options.instances = value()?,
                "--stalled" => options.stalled = value()?,
                "--idle" => options.idle = value()?,
                _ => return Err(format!("unknown argument {arg}\n{USAGE}").into()),
            }
        }
        Ok(options)
    }
}

fn main() {
    if let Err(error) = run() {
        eprintln!("stall_flood bench: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    if !Path::new(STORESCU).exists() {
        return Err(format!("{STORESCU} is missing (apt-get install dcmtk)").into());
    }
    let tmp = tempfile::Builder::new()
        .prefix("imageserver-bench-stall-flood-")
        .tempdir_in(std::env::var_os("BENCH_TMPDIR").unwrap_or_else(|| "/tmp".into()))?;
    let data = tmp.path().join("data");
    // Timers far beyond the run: nothing the attackers hold is released by
    // a timeout while it is measured.
    let toml = format!(
        // The stalling callers are unknown devices: let them query.
        "data_dir = {:?}\n[dicom]\nartim_timeout_secs = 3600\nidle_timeout_secs = 3600\nunknown_devices_query_retrieve = true\n",
        data.display().to_string()
    );
    let settings = Config::from_toml(&toml)?.validate()?;
    let ae = settings.partitions[0].spec.ae_title.as_str().to_string();
    let archive = ServerBuilder::new(settings).open()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = Server::start_on(archive, vec![listener])?;
    let address = server.local_addr();
    let partition = server.archive().default_partition().partition.id;
    let index = server.archive().index().clone();

    let mut sent = 0u64;
    let mut alone = Vec::new();
    let mut attacked = Vec::new();
    let mut held_idle = Vec::new();
    for round in 0..options.rounds * 2 {
        let under_attack = round % 2 == 1;
        let corpus_dir = tmp.path().join(format!("corpus-{round}"));
        let corpus = generate_corpus(
            &corpus_dir,
            1000 + round as u64,
            CorpusShape::uniform(options.instances.div_ceil(10), 1, 10, (64, 64)),
        );
        let attack = if under_attack {
            Some(Attack::start(address, &ae, &options)?)
        } else {
            None
        };
        let started = Instant::now();
        let status = Command::new(STORESCU)
            .args([
                "-aet", "BENCH", "-aec", &ae, "-to", "60", "-ta", "60", "-td", "600",
            ])
            .args(["+sd", "+r"])
            .arg(address.ip().to_string())
            .arg(address.port().to_string())
            .arg(&corpus_dir)
            .status()?;
        let elapsed = started.elapsed();
        if let Some(attack) = attack {
            held_idle.push(attack.idle_still_open());
            attack.check_stalled()?;
        }
        if !status.success() {
            return Err(format!("round {round}: storescu failed ({status})").into());
        }
        sent += corpus.len() as u64;
        let indexed = index.counts(partition)?.instances;
        if indexed != sent {
            return Err(format!(
                "round {round}: {indexed} instances indexed after {sent} were acknowledged: no rate"
            )
            .into());
        }
        let rate = corpus.len() as f64 / elapsed.as_secs_f64();
        println!(
            "round {round:>2} {:<12} {:>5} instances in {:>7.2} s: {rate:>8.1} instances/s",
            if under_attack {
                "under attack"
            } else {
                "alone"
            },
            corpus.len(),
            elapsed.as_secs_f64()
        );
        if under_attack {
            attacked.push(rate);
        } else {
            alone.push(rate);
        }
    }
    server.shutdown(Duration::from_secs(5));

    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    let ratio = mean(&attacked) / mean(&alone);
    println!();
    println!(
        "ingest alone {:.1}/s, under attack {:.1}/s ({} stalled C-FINDs, {} idle connections \
         opened, {:?} still open at the end of each attacked round): ratio {ratio:.2} \
         (target >= 0.80)",
        mean(&alone),
        mean(&attacked),
        options.stalled,
        options.idle,
        held_idle
    );
    if options.smoke && !ratio.is_finite() {
        return Err("the smoke run measured no rate".into());
    }
    Ok(())
}

/// The attackers of one round: stalled C-FIND associations and idle
/// connections, held until dropped.
struct Attack {
    stalled: Vec<TcpStream>,
    idle: Vec<TcpStream>,
}

impl Attack {
    fn start(address: SocketAddr, ae: &str, options: &Options) -> Result<Attack> {
        let stalled = (0..options.stalled)
            .map(|_| stall_a_find(address, ae))
            .collect::<Result<Vec<_>>>()?;
        let flooder = Ipv4Addr::new(127, 0, 0, 2);
        let idle = (0..options.idle)
            .map(|_| connect_from(flooder, address))
            .collect::<std::io::Result<Vec<_>>>()?;
        // Let the server take them all in before ingest starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Attack { stalled, idle })
    }

    /// How many idle connections the server has not closed (it keeps at
    /// most its per-address bound).
    fn idle_still_open(&self) -> usize {
        self.idle
            .iter()
            .filter(|socket| {
                let _ = socket.set_nonblocking(true);
                let mut byte = [0u8; 1];
                matches!(socket.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    }

    /// The stalled associations must still be open: a server that
    /// released them by a timer did not withstand the stall.
    fn check_stalled(&self) -> Result<()> {
        for (i, socket) in self.stalled.iter().enumerate() {
            socket.set_nonblocking(true)?;
            let mut byte = [0u8; 1];
            match socket.peek(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A first match may have been written before the stray byte.
                Ok(n) if n > 0 => {}
                other => return Err(format!("stalled C-FIND {i} was released: {other:?}").into()),
            }
        }
        Ok(())
    }
}

/// An association that sends a study-level C-FIND matching every study,
/// then the first byte of another PDU, and nothing more.
fn stall_a_find(address: SocketAddr, ae: &str) -> Result<TcpStream> {
    let mut association = ClientAssociationOptions::new()
        .calling_ae_title("STALLER")
        .called_ae_title(ae.to_string())
        .with_presentation_context(STUDY_ROOT_FIND, vec![IMPLICIT_VR_LE])
        .connection_timeout(Duration::from_secs(10))
        .establish(address)
        .map_err(|e| format!("stalling association: {e}"))?;
    let pc_id = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .ok_or("Study Root FIND refused")?;
    let peer_max_pdu = association.acceptor_max_pdu_length();
    let mut socket = association.inner_stream().try_clone()?;
    drop(association);
    let command = Dimse::find_rq(1, STUDY_ROOT_FIND, Priority::Medium).encode();
    // QueryRetrieveLevel = STUDY, StudyInstanceUID universal (Implicit VR LE).
    let mut identifier = Vec::new();
    identifier.extend_from_slice(&[0x08, 0x00, 0x52, 0x00, 6, 0, 0, 0]);
    identifier.extend_from_slice(b"STUDY ");
    identifier.extend_from_slice(&[0x20, 0x00, 0x0D, 0x00, 0, 0, 0, 0]);
    let mut scratch = Vec::new();
    pdu::write_pdata(
        &mut socket,
        &mut scratch,
        pc_id,
        true,
        &command,
        peer_max_pdu,
    )?;
    pdu::write_pdata(
        &mut socket,
        &mut scratch,
        pc_id,
        false,
        &identifier,
        peer_max_pdu,
    )?;
    // The PDU type of a P-DATA-TF, and not one byte more.
    socket.write_all(&[0x04])?;
    Ok(socket)
}
