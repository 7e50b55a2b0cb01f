//! DICOM TLS (PS3.15 B.1/B.9), User Identity negotiation and syslog over
//! TLS through the real binary, one server for every scenario:
//!
//! - the default partition has a TLS listener with mutual authentication:
//!   DCMTK `echoscu`, `storescu`, `findscu` and `movescu` with a client
//!   certificate store, query and retrieve over it; a client without a
//!   certificate, one whose certificate the CA did not sign, and a
//!   plain-text client are refused, each audited;
//! - the C-MOVE destination is a DCMTK `storescp` that speaks TLS only
//!   (a device with `tls = true`): the instances reach it over TLS;
//! - a second partition has a TLS listener without client certificates
//!   and requires a User Identity: a known user with the right passcode is
//!   accepted, a wrong passcode or none refused (and audited);
//! - the audit repository is a syslog receiver over TLS (RFC 5425)
//!   verified against the test CA: the messages arrive through it.
//!
//! Certificates are made by the test with the `openssl` command, never
//! committed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::corpus::{generate_corpus, CorpusShape};
use crate::support::dcmtk::{self, ToolOutput, CALLING_AE, ECHOSCU, STORESCU};
use crate::support::server::{free_port, test_dir, Server, BINARY};

const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/py/syslog_receiver.py"
);
const MOVE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/tls_move.py");
const USER_ECHO_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/user_echo.py");
const FINDSCU: &str = "/usr/bin/findscu";
const STORESCP: &str = "/usr/bin/storescp";
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an audit message may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(60);

/// The test's certificates (PEM files under one directory).
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, a client
/// certificate (CN=ITSCU) signed by it, and a self-signed rogue client.
fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=imageserver test CA",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let leaf = |name: &str, subject: &str, extensions: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        let mut request = vec!["req", "-subj", subject, "-keyout"];
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        request.push(&key);
        request.extend(["-out", &csr]);
        request.extend(ec);
        openssl(dir, &request);
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    };
    leaf(
        "server",
        "/CN=imageserver test server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    );
    leaf(
        "client",
        "/O=Test Hospital/CN=ITSCU",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    );
    let mut rogue = vec!["req", "-x509", "-days", "2", "-subj", "/CN=rogue"];
    rogue.extend(ec);
    rogue.extend(["-keyout", "rogue.key", "-out", "rogue.pem"]);
    openssl(dir, &rogue);
    Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        rogue_cert: dir.join("rogue.pem"),
        rogue_key: dir.join("rogue.key"),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// DCMTK TLS options: a client certificate (or anonymous), the CA.
fn tls_args(pki: &Pki, client: Option<(&Path, &Path)>) -> Vec<String> {
    let mut args: Vec<String> = match client {
        Some((key, cert)) => vec!["+tls".into(), path(key).into(), path(cert).into()],
        None => vec!["+tla".into()],
    };
    args.extend(["+cf".into(), path(&pki.ca).into()]);
    args
}

fn echo(port: u16, called: &str, extra: &[String]) -> ToolOutput {
    let mut command = dcmtk::command(ECHOSCU);
    command
        .args(["-aet", CALLING_AE, "-aec", called, "-to", "10", "-ta", "10"])
        .args(extra)
        .args(["127.0.0.1", &port.to_string()]);
    dcmtk::run(command, TOOL_TIMEOUT)
}

/// The syslog receiver with its TLS port, killed by its pid when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, pki: &Pki, tls_port: u16) -> Receiver {
        let out = dir.join("syslog.jsonl");
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .args(["--udp-port", &free_port().to_string()])
            .args(["--tcp-port", &free_port().to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .args([
                "--cert",
                path(&pki.server_cert),
                "--key",
                path(&pki.server_key),
            ])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the syslog receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the receiver's ready line");
        assert_eq!(line.trim(), "ready", "the syslog receiver did not start");
        Receiver { child, out }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits (bounded) until a message over TLS satisfies `wanted`.
    fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let messages = self.messages();
            if messages
                .iter()
                .any(|m| m["transport"] == "tls" && wanted(m))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received over TLS within {ARRIVAL:?}; got:\n{}",
                messages
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DCMTK `storescp` that accepts TLS only (server certificate from the
/// test CA; client certificates verified when presented).
struct TlsStoreScp {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsStoreScp {
    fn start(dir: &Path, pki: &Pki) -> TlsStoreScp {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = dcmtk::command(STORESCP)
            .args(["-v", "-aet", "TLSDEST", "-od", path(dir)])
            .args(["+tls", path(&pki.server_key), path(&pki.server_cert)])
            .args(["-vc", "+cf", path(&pki.ca)])
            .arg(port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start storescp");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsStoreScp {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(Result::ok).count())
            .unwrap_or(0)
    }
}

impl Drop for TlsStoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", path(p))
}

#[test]
fn tls_mutual_auth_user_identity_and_syslog_over_tls() {
    let dir = test_dir("tls");
    let pki = make_pki(&dir.path().join("pki"));
    let syslog_port = free_port();
    let receiver = Receiver::start(dir.path(), &pki, syslog_port);
    let destination = TlsStoreScp::start(&dir.path().join("tlsdest"), &pki);
    let tls_port = free_port();
    let open_port = free_port();
    let open_tls_port = free_port();

    // The passcode's hash, as an administrator makes it.
    let mut child = Command::new(BINARY)
        .args(["user", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("imageserver user hash-password");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-passcode\n")
        .unwrap();
    let hashed = child.wait_with_output().unwrap();
    assert!(hashed.status.success());
    let hash = String::from_utf8(hashed.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2"), "{hash}");

    let server = Server::builder(dir.path())
        .setting(
            "users",
            format!(r#"[{{ username = "alice", passcode_hash = {hash:?} }}]"#),
        )
        .setting(
            "devices",
            format!(
                r#"[{{ ae_title = "TLSDEST", host = "127.0.0.1", port = {}, tls = true, tls_ca_file = {} }}]"#,
                destination.port,
                toml_path(&pki.ca)
            ),
        )
        .setting(
            "partitions",
            format!(
                r#"[{{ ae_title = "OPEN", port = {open_port}, require_user_identity = true, unknown_devices_query_retrieve = true, tls = {{ port = {open_tls_port}, certificate = {}, private_key = {} }} }}]"#,
                toml_path(&pki.server_cert),
                toml_path(&pki.server_key)
            ),
        )
        .setting(
            "audit",
            format!(
                r#"{{ enabled = true, repository = "tls://127.0.0.1:{syslog_port}", tls_ca_file = {} }}"#,
                toml_path(&pki.ca)
            ),
        )
        .dicom_setting(
            "tls",
            format!(
                "{{ port = {tls_port}, certificate = {}, private_key = {}, client_ca = {} }}",
                toml_path(&pki.server_cert),
                toml_path(&pki.server_key),
                toml_path(&pki.ca)
            ),
        )
        .start();
    let called = server.ae_title().to_string();
    let client = tls_args(&pki, Some((&pki.client_key, &pki.client_cert)));

    // Mutual TLS: echo, store, query, retrieve.
    let out = echo(tls_port, &called, &client);
    assert!(out.success(), "echoscu over TLS:\n{out}");
    let corpus = dir.path().join("corpus");
    let instances = generate_corpus(&corpus, 11, CorpusShape::uniform(1, 1, 2, (16, 16)));
    let study = instances[0].study_uid.clone();
    let mut store = dcmtk::command(STORESCU);
    store
        .args([
            "-v", "-xe", "-aet", CALLING_AE, "-aec", &called, "+sd", "+r",
        ])
        .args(&client)
        .args(["127.0.0.1", &tls_port.to_string()])
        .arg(&corpus);
    let out = dcmtk::run(store, TOOL_TIMEOUT);
    assert!(out.success(), "storescu over TLS:\n{out}");
    assert_eq!(
        dcmtk::acknowledged_files(&out.text()).len(),
        instances.len()
    );
    let mut find = dcmtk::command(FINDSCU);
    find.args(["-v", "-S", "-aet", CALLING_AE, "-aec", &called])
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])
        .args(&client)
        .args(["127.0.0.1", &tls_port.to_string()]);
    let out = dcmtk::run(find, TOOL_TIMEOUT);
    assert!(out.success(), "findscu over TLS:\n{out}");
    assert!(out.text().contains(&study), "the study not found:\n{out}");
    // DCMTK's movescu has no TLS: pynetdicom with the same certificate.
    let mut retrieve = Command::new("python3");
    retrieve
        .arg(MOVE_SCRIPT)
        .args([
            "127.0.0.1",
            &tls_port.to_string(),
            &called,
            CALLING_AE,
            "TLSDEST",
            &study,
        ])
        .args([path(&pki.ca), path(&pki.client_cert), path(&pki.client_key)]);
    let out = dcmtk::run(retrieve, TOOL_TIMEOUT);
    assert!(out.success(), "movescu over TLS:\n{out}");
    // The destination speaks TLS only: what it holds came over TLS.
    assert_eq!(
        destination.received(),
        instances.len(),
        "C-MOVE over TLS to TLSDEST:\n{out}"
    );
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains(r#"tls_subject="O=Test Hospital, CN=ITSCU""#),
        "the client certificate's subject is not on the association"
    );

    // Refused on the mutual TLS port: no client certificate, one the CA
    // did not sign, plain text.
    let out = echo(tls_port, &called, &tls_args(&pki, None));
    assert!(
        !out.success(),
        "a client without a certificate was accepted:\n{out}"
    );
    let rogue = tls_args(&pki, Some((&pki.rogue_key, &pki.rogue_cert)));
    let out = echo(tls_port, &called, &rogue);
    assert!(!out.success(), "a rogue certificate was accepted:\n{out}");
    let out = echo(tls_port, &called, &[]);
    assert!(
        !out.success(),
        "a plain-text client was accepted on the TLS port:\n{out}"
    );

    // User Identity on the second partition's TLS port (no client
    // certificate asked for there), with pynetdicom: Debian's echoscu has
    // no user identity options.
    let user_echo = |port: u16, user: Option<&str>| {
        let mut command = Command::new("python3");
        command
            .arg(USER_ECHO_SCRIPT)
            .args(["127.0.0.1", &port.to_string(), "OPEN", path(&pki.ca)]);
        if let Some(passcode) = user {
            command.args(["alice", passcode]);
        }
        dcmtk::run(command, TOOL_TIMEOUT)
    };
    let out = user_echo(open_tls_port, Some("s3cret-passcode"));
    assert!(out.success(), "alice with her passcode was refused:\n{out}");
    assert!(
        out.stdout.contains("server response"),
        "no User Identity server response though one was asked for:\n{out}"
    );
    let out = user_echo(open_tls_port, Some("wrong"));
    assert!(
        !out.success() && out.stdout.contains("rejected"),
        "a wrong passcode was not rejected:\n{out}"
    );
    // Once in many runs pynetdicom reported the connection dropped ("not
    // established") though the server had logged its A-ASSOCIATE-RJ (sent,
    // then close_notify, then a wait for the caller's close): never
    // accepted, and the rejection must reach the caller in one of three tries.
    let mut outs = Vec::new();
    for _ in 0..3 {
        let out = user_echo(open_tls_port, None);
        assert!(
            !out.success(),
            "no user identity was accepted where one is required:\n{out}"
        );
        let rejected = out.stdout.contains("rejected");
        outs.push(out);
        if rejected {
            break;
        }
    }
    assert!(
        outs.last()
            .is_some_and(|out| out.stdout.contains("rejected")),
        "the rejection of a caller without user identity never arrived:\n{}",
        outs.iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = echo(open_port, "OPEN", &[]);
    assert!(
        !out.success(),
        "no user identity was accepted on the plain port:\n{out}"
    );

    // The audit trail reached the repository over TLS: the store, the
    // refused handshakes (Security Alert, Node Authentication) and the
    // refused user (User Authentication, Login, minor failure).
    // The store's audit message names the caller by its certificate.
    receiver.wait_for(
        "DICOM Instances Transferred with the certificate's subject",
        |m| {
            m["event_id"] == "110104"
                && m["participants"].as_array().unwrap().iter().any(|p| {
                    p["user_id"] == CALLING_AE && p["user_name"] == "O=Test Hospital, CN=ITSCU"
                })
        },
    );
    receiver.wait_for("Security Alert for a failed handshake", |m| {
        m["event_id"] == "110113" && m["event_type"] == "110126"
    });
    receiver.wait_for("User Authentication failure", |m| {
        m["event_id"] == "110114" && m["event_type"] == "110122" && m["outcome"] == "4"
    });
    let handshake_alerts = receiver
        .messages()
        .iter()
        .filter(|m| m["event_id"] == "110113" && m["event_type"] == "110126")
        .count();
    assert!(handshake_alerts >= 3, "{handshake_alerts} handshake alerts");
    drop(server);
}
