//! The audit trail (IHE ATNA): DICOM audit messages (PS3.15 A.5) about
//! what the archive does, kept in the index's `audit_log` (action
//! `atna.<event>`) and sent to an audit record repository over syslog.
//!
//! - [`event`]: the event model ([`AuditEvent`]) and the per-study tally
//!   of an operation ([`TransferTally`]);
//! - [`xml`]: the DICOM audit message XML;
//! - [`syslog`]: RFC 5424 messages over UDP, TCP or TLS (RFC 5425);
//! - [`spool`]: the on-disk queue of messages not yet sent.
//!
//! [`Auditor::record`] never blocks its caller: events go through a
//! bounded channel to one thread, which writes the index row, spools the
//! message, sends what is spooled and deletes what was sent, retrying with
//! backoff while the repository is unreachable. When the channel is full
//! the event is dropped and counted (a warning at most every 10 s).

pub mod event;
pub mod spool;
pub mod syslog;
pub mod xml;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, RecvTimeoutError, TrySendError};
use tracing::{debug, info, warn};

use crate::db::studies::{AuditEntry, StudyStore};
use crate::model::Uid;

pub use event::{
    Action, AuditEvent, EventKind, Outcome, Participant, ParticipantObject, Role, TransferTally,
};
pub use syslog::Repository;
pub use xml::AuditSource;

/// Events waiting for the audit thread before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// First wait after a failed send; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between sends to an unreachable repository.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the spool is looked at when nothing happens (other
/// processes' leftovers).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long the thread keeps sending once the last handle is gone.
const FINAL_FLUSH: Duration = Duration::from_secs(3);
/// Least time between two warnings about dropped events.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Most events handled between two sends.
const MAX_EVENTS_PER_TURN: usize = 1000;

/// The audit settings (`[audit]`, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Where messages are sent; None: kept in the index only.
    pub repository: Option<Repository>,
    /// CA bundle a `tls://` repository is verified against.
    pub tls_ca_file: Option<PathBuf>,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// AuditSourceIdentification.
    pub source: AuditSource,
    /// Events waiting before new ones are dropped.
    pub queue_capacity: usize,
}

/// Why the auditor could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool directory could not be created.
    #[error("cannot create the audit spool {path}")]
    Spool {
        /// The directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The audit thread could not be started.
    #[error("cannot start the audit thread")]
    Thread(#[source] std::io::Error),
    /// The `tls://` repository's CA bundle does not load.
    #[error("audit repository CA bundle")]
    Tls(#[source] crate::tls::TlsError),
}

/// The handle events are recorded through. Cheap to clone; a disabled
/// auditor ([`Auditor::disabled`]) ignores everything.
#[derive(Debug, Clone, Default)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    sender: Option<channel::Sender<AuditEvent>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    source: AuditSource,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread after a last bounded send.
        self.sender = None;
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            tracing::debug!("audit trail: the last handle is gone, sending what is spooled");
            let _ = thread.join();
        }
    }
}

impl Auditor {
    /// An auditor that records nothing.
    pub fn disabled() -> Auditor {
        Auditor { inner: None }
    }

    /// Starts the audit thread: rows go to `store`, messages to the
    /// settings' repository through the spool.
    pub fn start(
        settings: AuditSettings,
        store: Arc<dyn StudyStore>,
    ) -> Result<Auditor, AuditError> {
        let spool =
            spool::Spool::open(&settings.spool_dir).map_err(|source| AuditError::Spool {
                path: settings.spool_dir.clone(),
                source,
            })?;
        let tls = settings
            .tls_ca_file
            .as_deref()
            .map(crate::tls::client_config)
            .transpose()
            .map_err(AuditError::Tls)?;
        let (sender, receiver) = channel::bounded(settings.queue_capacity.max(1));
        let source = settings.source.clone();
        let worker = Worker {
            receiver,
            store,
            spool,
            sender: settings
                .repository
                .clone()
                .map(|repository| syslog::Sender::new(repository, tls)),
            repository: settings.repository,
            source: settings.source,
            hostname: hostname(),
            backoff: MIN_BACKOFF,
            next_try: Instant::now(),
            failing_since: None,
        };
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || worker.run())
            .map_err(AuditError::Thread)?;
        Ok(Auditor {
            inner: Some(Arc::new(Inner {
                sender: Some(sender),
                thread: Mutex::new(Some(thread)),
                source,
                dropped: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            })),
        })
    }

    /// Whether events are recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The audit source, when enabled.
    pub fn source(&self) -> Option<&AuditSource> {
        self.inner.as_ref().map(|i| &i.source)
    }

    /// Hands an event to the audit thread without waiting: when its queue
    /// is full the event is dropped and counted.
    pub fn record(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else { return };
        let Some(sender) = &inner.sender else { return };
        match sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) => {
                let dropped = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = inner.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY) {
                    *last = Some(Instant::now());
                    warn!(
                        dropped,
                        event = event.kind.action(),
                        "audit queue full: audit events dropped"
                    );
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The audit thread's state.
struct Worker {
    receiver: channel::Receiver<AuditEvent>,
    store: Arc<dyn StudyStore>,
    spool: spool::Spool,
    repository: Option<Repository>,
    sender: Option<syslog::Sender>,
    source: AuditSource,
    hostname: String,
    backoff: Duration,
    next_try: Instant,
    failing_since: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let wait = self
                .next_try
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
                .min(IDLE_POLL);
            match self.receiver.recv_timeout(wait) {
                Ok(event) => {
                    self.take(event);
                    for _ in 1..MAX_EVENTS_PER_TURN {
                        match self.receiver.try_recv() {
                            Ok(event) => self.take(event),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= self.next_try {
                self.send_spooled(None);
            }
        }
        // The last handle is gone: a last try, bounded in time.
        self.next_try = Instant::now();
        self.send_spooled(Some(Instant::now() + FINAL_FLUSH));
    }

    /// Spools the event's message, then writes its index row (a slow index
    /// delays neither the spool nor the sends).
    fn take(&mut self, event: AuditEvent) {
        let message = xml::audit_message(&event, &self.source);
        if self.repository.is_some() {
            let framed = syslog::message(event.at_ms, &self.hostname, &message);
            if let Err(error) = self.spool.put(event.at_ms, &framed) {
                warn!(%error, spool = %self.spool.dir().display(), "cannot spool an audit message: it is lost");
            }
        }
        let entry = AuditEntry {
            at_ms: event.at_ms,
            actor: event.actor().to_string(),
            action: event.kind.action().to_string(),
            partition: event.partition,
            study_uid: event.study_uid().and_then(|u| Uid::parse(u).ok()),
            details: details(&event, &message),
        };
        if let Err(error) = self.store.record_audit(&entry) {
            warn!(error = %crate::model::error_chain(&error), action = entry.action, "cannot record an audit event in the index");
        }
    }

    /// Sends what is spooled, oldest first, until done, a failure, or
    /// `deadline`.
    fn send_spooled(&mut self, deadline: Option<Instant>) {
        let Some(sender) = &mut self.sender else {
            return;
        };
        let files = match self.spool.pending() {
            Ok(files) => files,
            Err(error) => {
                warn!(%error, "cannot read the audit spool");
                self.next_try = Instant::now() + MAX_BACKOFF;
                return;
            }
        };
        let mut sent = 0usize;
        for file in &files {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let message = match std::fs::read(file) {
                Ok(message) => message,
                // Another process adopted it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    warn!(%error, file = %file.display(), "cannot read a spooled audit message");
                    continue;
                }
            };
            match sender.send(&message) {
                Ok(()) => {
                    sent += 1;
                    if let Err(error) = std::fs::remove_file(file) {
                        if error.kind() != std::io::ErrorKind::NotFound {
                            warn!(%error, file = %file.display(), "cannot remove a sent audit message");
                        }
                    }
                }
                Err(syslog::SyslogError::TooLong(len)) => {
                    warn!(len, file = %file.display(), "audit message too long for UDP: dropped");
                    let _ = std::fs::remove_file(file);
                }
                Err(error) => {
                    if self.failing_since.is_none() {
                        warn!(error = %crate::model::error_chain(&error), waiting = files.len() - sent, "audit repository unreachable: messages stay spooled");
                        self.failing_since = Some(Instant::now());
                    } else {
                        debug!(error = %error, "audit repository still unreachable");
                    }
                    self.next_try = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            }
        }
        if let Some(since) = self.failing_since.take() {
            info!(
                sent,
                unreachable_secs = since.elapsed().as_secs(),
                "audit repository reachable again: spooled messages sent"
            );
        }
        self.backoff = MIN_BACKOFF;
        self.next_try = Instant::now() + IDLE_POLL;
    }
}

/// The `audit_log` details of an event: its codes, participants and
/// objects as JSON, and the whole message (`message`).
fn details(event: &AuditEvent, message: &str) -> String {
    use serde_json::{json, Value};
    let participants: Vec<Value> = event
        .participants
        .iter()
        .map(|p| {
            json!({
                "user_id": p.user_id,
                "requestor": p.requestor,
                "address": p.network_access_point,
                "role": p.role.map(|r| r.code().code),
            })
        })
        .collect();
    let objects: Vec<Value> = event
        .objects
        .iter()
        .map(|o| match o {
            ParticipantObject::Study { uid, sop_classes } => {
                json!({"study": uid, "sop_classes": sop_classes})
            }
            ParticipantObject::Patient { id, .. } => json!({"patient": id}),
            ParticipantObject::Query { sop_class_uid, .. } => json!({"query": sop_class_uid}),
        })
        .collect();
    json!({
        "event_id": event.kind.code().code,
        "event": event.kind.code().meaning,
        "event_type": event.type_code.as_ref().map(|c| c.code),
        "action": event.action.letter(),
        "outcome": event.outcome.value(),
        "outcome_description": event.outcome_description,
        "participants": participants,
        "objects": objects,
        "message": message,
    })
    .to_string()
}
