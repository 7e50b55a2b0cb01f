//! DCMTK command-line tools, called by full path with `TCP_NODELAY=1` (Nagle
//! otherwise dominates loopback timings) and killed after a timeout.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Full paths of the DCMTK tools (pynetdicom ships scripts with the same
/// names that can shadow them on PATH).
pub const ECHOSCU: &str = "/usr/bin/echoscu";
/// See [`ECHOSCU`].
pub const STORESCU: &str = "/usr/bin/storescu";
/// See [`ECHOSCU`].
pub const DCMDUMP: &str = "/usr/bin/dcmdump";

/// The AE title the tests call from.
pub const CALLING_AE: &str = "ITSCU";

/// What a finished (or killed) tool run left.
#[derive(Debug)]
pub struct ToolOutput {
    /// The exit status (`None` when it was killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ToolOutput {
    /// Exited on its own with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// The exit code (None when killed).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|status| status.code())
    }

    /// Killed at the timeout.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Standard output and standard error together (DCMTK's logger writes
    /// to stderr, dcmdump to stdout).
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "exit: {status}")?,
            None => writeln!(f, "exit: killed at the timeout")?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// A `Command` for a DCMTK tool with `TCP_NODELAY=1`.
pub fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("TCP_NODELAY", "1").stdin(Stdio::null());
    command
}

/// Runs `command` to completion, killing it after `timeout`.
pub fn run(mut command: Command, timeout: Duration) -> ToolOutput {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    wait_with_timeout(child, timeout)
}

/// Waits for a spawned child with piped stdout/stderr; kills it (by its
/// handle) once `timeout` has passed.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> ToolOutput {
    let stdout = child.stdout.take().map(drain_in_background);
    let stderr = child.stderr.take().map(drain_in_background);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("poll the child") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let collect = |reader: Option<std::thread::JoinHandle<String>>| {
        reader
            .map(|handle| handle.join().unwrap_or_default())
            .unwrap_or_default()
    };
    ToolOutput {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn drain_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `echoscu -aet ITSCU -aec <called_ae> <host> <port>`.
pub fn echo(addr: SocketAddr, called_ae: &str, timeout: Duration) -> ToolOutput {
    let mut command = command(ECHOSCU);
    command
        .args(["-v", "-aet", CALLING_AE, "-aec", called_ae])
        // Bound every DCMTK wait so a hung server fails the test, not CI.
        .args(["-to", "10", "-ta", "10", "-td", "10"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    run(command, timeout)
}

/// `storescu -v -xe` of the given files or directories (directories are
/// scanned recursively), with extra arguments before the peer.
pub fn store(
    addr: SocketAddr,
    called_ae: &str,
    paths: &[&Path],
    extra_args: &[&str],
    timeout: Duration,
) -> ToolOutput {
    run(store_command(addr, called_ae, paths, extra_args), timeout)
}

/// The `storescu` command line of [`store`], to spawn it yourself.
pub fn store_command(
    addr: SocketAddr,
    called_ae: &str,
    paths: &[&Path],
    extra_args: &[&str],
) -> Command {
    let mut command = command(STORESCU);
    // -xe: propose Explicit VR Little Endian first, the corpus' own syntax,
    // so the data set travels unconverted and can be compared byte for byte.
    command
        .args(["-v", "-xe", "-aet", CALLING_AE, "-aec", called_ae])
        .args(["-to", "10", "-ta", "10", "-td", "120"]);
    if paths.iter().any(|path| path.is_dir()) {
        command.args(["+sd", "+r"]);
    }
    command
        .args(extra_args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(paths);
    command
}

/// The files a `storescu -v` log reports as acknowledged with Success:
/// each `Sending file: X` followed by `Received Store Response (Success)`
/// before the next file.
pub fn acknowledged_files(storescu_log: &str) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let mut current: Option<String> = None;
    for line in storescu_log.lines() {
        if let Some(file) = line.split("Sending file: ").nth(1) {
            current = Some(file.trim().to_string());
        } else if line.contains("Received Store Response (Success)") {
            if let Some(file) = current.take() {
                acknowledged.push(file);
            }
        }
    }
    acknowledged
}

/// What a `storescu -v` log says of each Store Response, in order: the text
/// inside `Received Store Response (…)`, e.g. `Success` or
/// `Unknown Status: 0x124`.
pub fn store_responses(storescu_log: &str) -> Vec<String> {
    storescu_log
        .lines()
        .filter_map(|line| line.split("Received Store Response (").nth(1))
        .map(|rest| rest.strip_suffix(')').unwrap_or(rest).to_string())
        .collect()
}

/// `dcmdump` of a file (meta group included).
pub fn dump(path: &Path) -> ToolOutput {
    let mut command = command(DCMDUMP);
    command.arg("-M").arg(path);
    run(command, Duration::from_secs(30))
}
