//! The `imageserver serve` binary under test: spawned on a temporary data
//! directory and a free loopback port, its stderr logged to a file that is
//! printed when a test fails, stopped with SIGKILL or SIGTERM and restarted
//! on the same data.
//!
//! The index backend comes from `IMAGESERVER_IT_BACKEND`: `sqlite` (the
//! default: `<data>/index.db`) or `postgres`: every [`Archive`] then gets a
//! database of its own on the server `IMAGESERVER_PG_URL` names (which
//! `scripts/test.sh` starts), passed to the binary with `--db` (and as `db`
//! in the config file), and dropped when the archive's last handle goes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imageserver_core::db::postgres::{self, PgIndex};
use imageserver_core::db::sqlite::SqliteIndex;
use imageserver_core::db::Database;
use imageserver_core::model::{AeTitle, IndexCounts, PartitionId, StoredInstance, Uid};

use super::dcmtk;

/// The server binary cargo built for this test run.
pub const BINARY: &str = env!("CARGO_BIN_EXE_imageserver");
/// The AE title the tests give the server.
pub const SERVER_AE: &str = "IMAGESERVER";

/// How long a server may take to answer its first C-ECHO.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed server may take to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A loopback port for a destination that is meant to stay down for a
/// while (a retry test starts it later, or never): taken below the
/// kernel's ephemeral range (32768–60999), so no other test's
/// [`free_port`] can be handed it while nothing listens on it.
pub fn down_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A fresh temporary directory for one test, named after it.
pub fn test_dir(test_name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("imageserver-it-{test_name}-"))
        .tempdir()
        .expect("create the test directory")
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    root: PathBuf,
    ae_title: String,
    settings: Vec<(String, String)>,
    dicom_settings: Vec<(String, String)>,
    db_url: Option<String>,
}

impl ServerBuilder {
    /// Uses this index URL instead of the selected backend's own (a
    /// PostgreSQL database the test manages itself).
    pub fn db_url(mut self, url: &str) -> ServerBuilder {
        self.db_url = Some(url.to_string());
        self
    }

    /// The server's AE title (default [`SERVER_AE`]).
    pub fn ae_title(mut self, ae_title: &str) -> ServerBuilder {
        self.ae_title = ae_title.to_string();
        self
    }

    /// A top-level key of the config file, as a TOML value.
    pub fn setting(mut self, key: &str, toml_value: impl ToString) -> ServerBuilder {
        self.settings
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    /// A key of the config file's `[dicom]` table, as a TOML value.
    pub fn dicom_setting(mut self, key: &str, toml_value: impl ToString) -> ServerBuilder {
        self.dicom_settings
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Spawns the server and waits until it answers C-ECHO.
    pub fn start(self) -> Server {
        let data = self.root.join("data");
        let archive = match &self.db_url {
            Some(url) => Archive::with_db_url(&data, &self.ae_title, url),
            None => Archive::new(&data, &self.ae_title),
        };
        // The tests' DCMTK and pynetdicom callers are unknown devices: let
        // them query and retrieve, unless a test says otherwise (the
        // default, store only, has tests of its own).
        let mut dicom_settings = self.dicom_settings;
        if !dicom_settings
            .iter()
            .any(|(key, _)| key == "unknown_devices_query_retrieve")
        {
            dicom_settings.push(("unknown_devices_query_retrieve".into(), "true".into()));
        }
        let config = {
            let mut text = String::new();
            if let Some(url) = archive.db_url() {
                text.push_str(&format!("db = {url:?}\n"));
            }
            for (key, value) in &self.settings {
                text.push_str(&format!("{key} = {value}\n"));
            }
            text.push_str("[dicom]\n");
            for (key, value) in &dicom_settings {
                text.push_str(&format!("{key} = {value}\n"));
            }
            let path = self.root.join("imageserver.toml");
            std::fs::write(&path, text).expect("write the config file");
            Some(path)
        };
        let mut server = Server {
            archive,
            log: self.root.join("server.log"),
            root: self.root,
            data,
            config,
            ae_title: self.ae_title,
            port: free_port(),
            http_port: free_port(),
            child: None,
            env: Vec::new(),
        };
        server.spawn_on_free_ports();
        server
    }
}

/// The index backend of the integration tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `<data>/index.db`.
    Sqlite,
    /// A database of its own per archive on `IMAGESERVER_PG_URL`.
    Postgres,
}

/// The backend `IMAGESERVER_IT_BACKEND` selects (`sqlite` by default).
pub fn backend() -> Backend {
    match std::env::var("IMAGESERVER_IT_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("IMAGESERVER_IT_BACKEND={other:?}: expected sqlite or postgres"),
    }
}

/// The PostgreSQL server of the tests (`IMAGESERVER_PG_URL`).
pub fn pg_server_url() -> String {
    std::env::var("IMAGESERVER_PG_URL").unwrap_or_else(|_| {
        panic!(
            "IMAGESERVER_PG_URL is not set: run the tests through scripts/test.sh, which starts \
             PostgreSQL"
        )
    })
}

/// A PostgreSQL database of one archive; dropped with its last handle.
#[derive(Debug)]
pub struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates an empty database `it_<pid>_<n>` on `server`.
    pub fn create(server: &str) -> PgDatabase {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "it_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = postgres::create_database(server, &name)
            .unwrap_or_else(|e| panic!("create database {name} on {server}: {e:?}"));
        PgDatabase {
            server: server.to_string(),
            name,
            url,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database and creates it again, empty, under the same name.
    pub fn recreate(&self) {
        postgres::drop_database(&self.server, &self.name)
            .unwrap_or_else(|e| panic!("drop database {}: {e:?}", self.name));
        postgres::create_database(&self.server, &self.name)
            .unwrap_or_else(|e| panic!("create database {} again: {e:?}", self.name));
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = postgres::drop_database(&self.server, &self.name) {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

/// A data directory (`--data`) seen from outside: its layout and index.
#[derive(Debug, Clone)]
pub struct Archive {
    data: PathBuf,
    ae_title: String,
    /// The index URL (None: SQLite in `data`).
    db_url: Option<String>,
    /// The PostgreSQL database this archive created (dropped with it).
    db: Option<Arc<PgDatabase>>,
}

impl Archive {
    /// The archive in `data` for the partition `ae_title`, with an index on
    /// the selected [`backend`] (a new, empty database on PostgreSQL).
    pub fn new(data: &Path, ae_title: &str) -> Archive {
        let db = match backend() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Arc::new(PgDatabase::create(&pg_server_url()))),
        };
        Archive {
            data: data.to_path_buf(),
            ae_title: ae_title.to_string(),
            db_url: db.as_ref().map(|db| db.url().to_string()),
            db,
        }
    }

    /// The archive in `data` indexed in the database `url`, which the caller
    /// manages.
    pub fn with_db_url(data: &Path, ae_title: &str, url: &str) -> Archive {
        Archive {
            data: data.to_path_buf(),
            ae_title: ae_title.to_string(),
            db_url: Some(url.to_string()),
            db: None,
        }
    }

    /// The index URL to pass as `--db` (None: the default SQLite file).
    pub fn db_url(&self) -> Option<&str> {
        self.db_url.as_deref()
    }

    /// `--db URL` for commands run on this archive (empty for SQLite).
    pub fn db_args(&self) -> Vec<String> {
        match self.db_url() {
            Some(url) => vec!["--db".to_string(), url.to_string()],
            None => Vec::new(),
        }
    }

    /// Loses the whole index (the server must be stopped): the SQLite file
    /// and its journal deleted, or the PostgreSQL database dropped and
    /// created again, empty.
    pub fn delete_index(&self) {
        match (&self.db, self.db_url()) {
            (Some(db), _) => db.recreate(),
            (None, None) => {
                for name in ["index.db", "index.db-wal", "index.db-shm"] {
                    match std::fs::remove_file(self.data.join(name)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => panic!("delete {name}: {e}"),
                    }
                }
            }
            (None, Some(url)) => panic!("cannot delete the index {url} the test manages"),
        }
    }

    /// The `--data` directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The tier-1 filesystem root.
    pub fn fs1(&self) -> PathBuf {
        self.data.join("fs1")
    }

    /// Where the contract says an instance lands.
    pub fn expected_path(
        &self,
        study_date: &str,
        study_uid: &str,
        series_uid: &str,
        sop_instance_uid: &str,
    ) -> PathBuf {
        self.fs1()
            .join(&self.ae_title)
            .join(study_date)
            .join(study_uid)
            .join(series_uid)
            .join(format!("{sop_instance_uid}.dcm"))
    }

    /// Runs one read-only SQL statement on the index with the database's own
    /// client (`sqlite3`, `psql`) and returns its rows, one line each with
    /// the columns separated by `|`: for what the typed lookups do not show
    /// (row ids, reception times).
    pub fn sql(&self, statement: &str) -> Vec<String> {
        let output = match self.db_url() {
            Some(url) if url.starts_with("postgres") => Command::new("psql")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(["-d", url, "-c", statement])
                .output(),
            Some(url) => Command::new("sqlite3")
                .args([
                    "-readonly",
                    url.strip_prefix("sqlite:").unwrap_or(url),
                    statement,
                ])
                .output(),
            None => Command::new("sqlite3")
                .arg("-readonly")
                .arg(self.data.join("index.db"))
                .arg(statement)
                .output(),
        }
        .unwrap_or_else(|e| panic!("run the index client for {statement:?}: {e}"));
        assert!(
            output.status.success(),
            "{statement:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("UTF-8 rows")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Opens the index (allowed while the server runs: SQLite WAL readers,
    /// PostgreSQL connections).
    pub fn index(&self) -> Index {
        self.index_of(&self.ae_title)
    }

    /// Opens the index for the partition `ae_title`.
    pub fn index_of(&self, ae_title: &str) -> Index {
        let mut index = match self.db_url() {
            Some(url) if url.starts_with("postgres") => Index::open_url(url, ae_title),
            Some(url) => {
                let path = url.strip_prefix("sqlite:").unwrap_or(url);
                let store = SqliteIndex::open(Path::new(path))
                    .unwrap_or_else(|e| panic!("open the index {path}: {e:?}"));
                Index::with_store(Box::new(store), ae_title)
            }
            None => Index::open(&self.data, ae_title),
        };
        // The database lives as long as any index opened on it.
        index.db = self.db.clone();
        index
    }
}

/// A running (or stopped) `imageserver serve`.
#[derive(Debug)]
pub struct Server {
    root: PathBuf,
    archive: Archive,
    data: PathBuf,
    log: PathBuf,
    config: Option<PathBuf>,
    ae_title: String,
    port: u16,
    /// Its HTTP port (DICOMweb, metrics).
    http_port: u16,
    child: Option<Child>,
    /// Extra environment of the next spawn (fault-injection hooks).
    env: Vec<(String, String)>,
}

impl Server {
    /// Sets (`Some`) or clears (`None`) an environment variable of the
    /// server from its next (re)start on: how a test arms a library's
    /// fault-injection point.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_string(), value.to_string()));
        }
    }

    /// Settings for a server whose files live under `root`/data.
    pub fn builder(root: &Path) -> ServerBuilder {
        ServerBuilder {
            root: root.to_path_buf(),
            ae_title: SERVER_AE.to_string(),
            settings: Vec::new(),
            dicom_settings: Vec::new(),
            db_url: None,
        }
    }

    /// A server with default settings under `root`/data, ready.
    pub fn start(root: &Path) -> Server {
        Server::builder(root).start()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The HTTP server's root URL (`http://127.0.0.1:PORT`).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Its AE title.
    pub fn ae_title(&self) -> &str {
        &self.ae_title
    }

    /// Its data directory.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid()).expect("read the server's VmRSS")
    }

    /// Starts sampling the server's RSS every 50 ms until the sampler is
    /// stopped.
    pub fn sample_rss(&self) -> RssSampler {
        RssSampler::start(self.pid())
    }

    /// SIGKILL, then reap.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
    }

    /// SIGTERM and wait (bounded) for the exit; returns the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(SHUTDOWN_TIMEOUT)
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits (bounded) for the server to exit; SIGKILLs it and fails the
    /// test if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the server is running");
        loop {
            if let Some(status) = child.try_wait().expect("poll the server") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("the server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data, port and settings.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        self.spawn();
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .args(self.archive.db_args())
            .args(["--aet", &self.ae_title, "--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .arg("--data")
            .arg(&self.data)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            // Plain log lines in the log file.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .stdin(Stdio::null());
        command
    }

    /// The first start: ports from [`free_port`] were free a moment ago,
    /// but a test running beside this one may take one before the server
    /// binds it; then the server exits at once ("Address already in use")
    /// and it is started again on other ports (at most four tries).
    fn spawn_on_free_ports(&mut self) {
        for _ in 0..3 {
            let logged = std::fs::metadata(&self.log).map_or(0, |m| m.len());
            match self.try_spawn() {
                Ok(()) => return,
                Err(status) => {
                    let log = std::fs::read(&self.log).unwrap_or_default();
                    let since = String::from_utf8_lossy(&log[(logged as usize).min(log.len())..])
                        .into_owned();
                    if !since.contains("Address already in use") {
                        panic!("the server exited during startup: {status}");
                    }
                    self.port = free_port();
                    self.http_port = free_port();
                }
            }
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!("the server exited during startup: {status}");
        }
    }

    /// Starts the server and waits until it answers; `Err` when it exited
    /// first.
    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let mut command = self.command();
        command
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls C-ECHO until it succeeds (bounded by [`READY_TIMEOUT`]);
    /// `Err` when the server exited first.
    fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("just spawned")
                .try_wait()
                .expect("poll the server")
            {
                self.child = None;
                return Err(status);
            }
            let echo = dcmtk::echo(self.addr(), &self.ae_title, Duration::from_secs(5));
            if echo.success() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer C-ECHO within {READY_TIMEOUT:?}; last echoscu:\n{echo}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== server log ({}), last 64 KiB =====\n{}\n===== end of server log =====",
                self.log.display(),
                tail(&self.log, 64 * 1024)
            );
        }
    }
}

fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples a process's RSS every 50 ms on a thread and keeps the peak.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let thread = {
            let stop = Arc::clone(&stop);
            let peak = Arc::clone(&peak);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peak RSS in bytes.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.peak.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Read access to an archive's index (either backend), for one partition.
pub struct Index {
    store: Box<dyn Database>,
    partition: PartitionId,
    /// Keeps the archive's PostgreSQL database from being dropped.
    db: Option<Arc<PgDatabase>>,
}

impl Index {
    /// Opens `data`/index.db (SQLite) and looks up the partition of `ae_title`.
    pub fn open(data: &Path, ae_title: &str) -> Index {
        let path = data.join("index.db");
        let store = SqliteIndex::open(&path)
            .unwrap_or_else(|e| panic!("open the index {}: {e:?}", path.display()));
        Index::with_store(Box::new(store), ae_title)
    }

    /// Opens a PostgreSQL index and looks up the partition of `ae_title`.
    pub fn open_url(url: &str, ae_title: &str) -> Index {
        let store =
            PgIndex::connect(url).unwrap_or_else(|e| panic!("connect to the index {url}: {e:?}"));
        Index::with_store(Box::new(store), ae_title)
    }

    fn with_store(store: Box<dyn Database>, ae_title: &str) -> Index {
        let partition = store
            .partition(&AeTitle::parse(ae_title).expect("valid AE title"))
            .expect("look up the partition")
            .unwrap_or_else(|| panic!("no partition {ae_title} in the index"));
        Index {
            store,
            partition,
            db: None,
        }
    }

    /// The indexed instance with this SOP Instance UID, if any.
    pub fn instance(&self, sop_instance_uid: &str) -> Option<StoredInstance> {
        let uid = Uid::parse(sop_instance_uid).expect("valid SOP Instance UID");
        self.store
            .instance(self.partition, &uid)
            .expect("look up an instance")
    }

    /// The study's recorded pack (HSM archive), if any.
    pub fn archive_entry(
        &self,
        study_uid: &str,
    ) -> Option<imageserver_core::db::archive::ArchiveEntry> {
        let uid = Uid::parse(study_uid).expect("valid Study Instance UID");
        self.store
            .archive_entry(self.partition, &uid)
            .expect("look up a pack")
    }

    /// The partition's known devices.
    pub fn devices(&self) -> Vec<imageserver_core::model::DeviceSpec> {
        self.store.devices(self.partition).expect("list devices")
    }

    /// Writes a device row as an administrator would, behind the running
    /// server's back.
    pub fn ensure_device(&self, spec: &imageserver_core::model::DeviceSpec) {
        self.store
            .ensure_device(self.partition, spec)
            .expect("write a device")
    }

    /// Patient, study, series and instance counts of the partition.
    pub fn counts(&self) -> IndexCounts {
        self.store.counts(self.partition).expect("count the index")
    }
}
