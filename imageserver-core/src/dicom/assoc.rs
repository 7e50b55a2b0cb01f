//! The association acceptor: one listener per partition, one thread per
//! association.
//!
//! We read every PDU ourselves with [`PduReader`], which refuses oversized
//! PDUs before allocating and lets every PDU carry a deadline, so that a
//! slow or idle peer only ever costs its own thread; the A-ASSOCIATE-RQ is
//! answered by `negotiate` (dicom-ul's PDU codec, our
//! negotiation: it works over plain and TLS transports alike):
//!
//! - the whole A-ASSOCIATE-RQ must arrive within the ARTIM timeout (checked
//!   with `peek` before dicom-ul reads it, so a trickling peer cannot hold
//!   the negotiation open);
//! - every later PDU must arrive completely within the idle timeout;
//! - beyond `max_associations` a new caller gets A-ASSOCIATE-RJ (transient,
//!   local limit exceeded).
//!
//! Shutdown: the listener stops accepting; associations waiting between
//! messages are aborted at once; those in the middle of a message finish it
//! (a store in flight is completed and answered) and are aborted after.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, UserIdentity,
};
use dicom_ul::Pdu;
use tracing::{debug, info, info_span, warn};

use super::deadline::DeadlineReader;
use super::link::Link;
use super::negotiate::{self, AcceptOptions};
use super::pdu::{self, Incoming, PduError, PduReader, Pdv};
pub use super::pending::raise_descriptor_limit;
use super::pending::{Outcome, PendingLimits, PendingStage, Refusal};
use super::sop_classes;
use super::transport::{ServerTls, Transport};

/// Who may associate: decided above the protocol layer (the archive's
/// devices), asked by the acceptor.
pub trait AccessPolicy: Send + Sync {
    /// Whether a caller with this AE title, calling from `peer` (None when
    /// the socket cannot tell), may associate at all. The policy logs why
    /// it refuses.
    fn admit(&self, calling_ae: &str, peer: Option<IpAddr>) -> bool;
    /// Most associations this caller may hold open at once (0: no limit).
    fn max_associations(&self, calling_ae: &str) -> u32;
    /// An association of this caller, from `peer`, was established.
    fn established(&self, calling_ae: &str, peer: Option<SocketAddr>);
    /// Whether the caller's User Identity (PS3.7 D.3.3.7; None when it
    /// sent none) is accepted; checked after [`AccessPolicy::admit`]. The
    /// policy logs and records why it refuses. Default: anyone.
    fn check_user(
        &self,
        _calling_ae: &str,
        _peer: Option<IpAddr>,
        _user: Option<&UserIdentity>,
    ) -> bool {
        true
    }
    /// A TLS handshake with `peer` failed (a plain-text caller on the TLS
    /// port, a refused or missing client certificate): the connection is
    /// closed. Default: nothing beyond the acceptor's log line.
    fn handshake_failed(&self, _peer: SocketAddr, _reason: &str) {}
}

/// What serves the messages of each association.
pub trait HandlerFactory: Send + Sync {
    /// The message handler of a new association, answering through `link`.
    fn handler(&self, link: Link) -> Box<dyn MessageHandler + '_>;
}

/// One association's message state: fed every PDV in order.
pub trait MessageHandler {
    /// Handles one PDV; responses go out through the handler's link.
    fn on_pdv(&mut self, pdv: Pdv<'_>) -> MessageOutcome;
    /// Whether a message is partly received.
    fn in_message(&self) -> bool;
}

/// What the association loop should do after a PDV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The message goes on.
    Continue,
    /// A message was completed and answered.
    Done,
    /// A protocol violation: abort the association.
    Abort(String),
}

/// Stack of an association thread.
const ASSOCIATION_STACK: usize = 8 * 1024 * 1024;

/// Settings of one acceptor (one partition's AE title and port).
#[derive(Debug, Clone)]
pub struct AcceptorConfig {
    /// The AE title we answer to.
    pub ae_title: String,
    /// Reject callers that call another AE title.
    pub check_called_ae: bool,
    /// Most associations open at once; beyond it callers are rejected.
    pub max_associations: usize,
    /// Most connections waiting for their A-ASSOCIATE-RQ at once; beyond
    /// it new connections are closed at once.
    pub max_pending: usize,
    /// Most connections from one remote address waiting for their
    /// A-ASSOCIATE-RQ at once (0: no limit).
    pub max_pending_per_address: usize,
    /// The largest P-DATA PDU we accept (our maximum length, 4 KiB–16 MiB).
    pub max_pdu_length: u32,
    /// Time for a caller to send its whole A-ASSOCIATE-RQ.
    pub artim_timeout: Duration,
    /// Time an association may stay silent (and the longest one PDU may
    /// take to arrive) before it is aborted.
    pub idle_timeout: Duration,
    /// Private storage SOP classes accepted besides the standard ones.
    pub extra_sop_classes: Vec<String>,
}

/// A running acceptor. [`Acceptor::shutdown`] stops it.
pub struct Acceptor {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

struct Shared {
    config: AcceptorConfig,
    options: AcceptOptions,
    /// TLS listener: where each handshake's configuration comes from.
    tls: Option<Arc<dyn ServerTls>>,
    policy: Arc<dyn AccessPolicy>,
    handlers: Arc<dyn HandlerFactory>,
    stopping: AtomicBool,
    /// Draining: the listener is to be closed (connections already taken
    /// in are still served).
    closing: AtomicBool,
    /// Connections in the pre-negotiation stage (the accept thread's count).
    waiting: AtomicUsize,
    /// A calling AE title answered with A-ASSOCIATE-RJ (transient) before
    /// negotiation: the balancer's health check while the node drains.
    refused_caller: Mutex<Option<String>>,
    next_id: AtomicU64,
    /// Open associations per calling AE title (device limits).
    per_caller: Arc<Mutex<HashMap<String, u32>>>,
    /// Open associations: a handle to their socket and whether they are in
    /// the middle of a message.
    live: Mutex<HashMap<u64, Live>>,
}

struct Live {
    /// The TCP socket under the association (TLS or not), to shut down.
    socket: TcpStream,
    busy: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Whether a caller may take the SCP role for a SOP class: storage classes
/// (it receives C-GET sub-operations); other role requests are left out of
/// the answer (the default roles).
fn role_selectable(uid: &str, extra_storage: &[String]) -> bool {
    sop_classes::is_storage(uid) || extra_storage.iter().any(|c| c == uid)
}

impl Acceptor {
    /// Starts accepting on `listener` (bound by the caller) in a thread:
    /// `policy` says who may associate, `handlers` serves each
    /// association's messages. With `tls`, every connection is TLS (the
    /// configuration asked for at each handshake).
    pub fn start(
        listener: TcpListener,
        config: AcceptorConfig,
        tls: Option<Arc<dyn ServerTls>>,
        policy: Arc<dyn AccessPolicy>,
        handlers: Arc<dyn HandlerFactory>,
    ) -> io::Result<Acceptor> {
        let local_addr = listener.local_addr()?;
        let per_caller = Arc::new(Mutex::new(HashMap::new()));
        let abstract_syntaxes: HashSet<String> = std::iter::once(sop_classes::VERIFICATION)
            .chain(sop_classes::QUERY_RETRIEVE.iter().copied())
            .chain(sop_classes::STORAGE.iter().copied())
            .map(String::from)
            .chain(config.extra_sop_classes.iter().cloned())
            .collect();
        let options = AcceptOptions {
            max_pdu_length: config.max_pdu_length,
            abstract_syntaxes,
            role_selectable,
            extra_storage: config.extra_sop_classes.clone(),
        };
        let tls_listener = tls.is_some();
        let shared = Arc::new(Shared {
            per_caller,
            config,
            options,
            tls,
            policy,
            handlers,
            stopping: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            refused_caller: Mutex::new(None),
            next_id: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("accept-{}", local_addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))?;
        info!(%local_addr, ae_title = %shared.config.ae_title, tls = tls_listener, "accepting associations");
        Ok(Acceptor {
            local_addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the acceptor listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Associations open now.
    pub fn open_associations(&self) -> usize {
        lock(&self.shared.live).len()
    }

    /// Answers associations called by `calling_ae` with A-ASSOCIATE-RJ
    /// (transient) from now on, everything else as before (None: none
    /// refused). A draining node refuses the balancer's health check this
    /// way, so the balancer stops sending it associations while the
    /// listener still accepts those already on their way.
    pub fn refuse_caller(&self, calling_ae: Option<&str>) {
        *lock(&self.shared.refused_caller) = calling_ae.map(|ae| ae.trim().to_string());
    }

    /// Closes the listener (new connections are refused by the operating
    /// system), and keeps serving the connections already taken in: those
    /// still sending their A-ASSOCIATE-RQ and the open associations.
    pub fn stop_listening(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
    }

    /// Waits until no association is open and no connection waits to
    /// negotiate (after [`Acceptor::stop_listening`]), at most `timeout`;
    /// returns whether it got there.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            reap_finished(&self.shared);
            let idle = lock(&self.shared.live).is_empty()
                && self.shared.waiting.load(Ordering::SeqCst) == 0;
            if idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads [`Acceptor::open_associations`] later, from elsewhere (a
    /// metrics scrape); 0 once the acceptor is gone. The probe holds no
    /// strong reference: whoever keeps it (the metrics, which the handlers
    /// report to) must not keep the acceptor's handlers alive in a cycle.
    pub fn open_associations_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || {
            shared
                .upgrade()
                .map_or(0, |shared| lock(&shared.live).len())
        }
    }

    /// Stops accepting, aborts idle associations, lets messages in flight
    /// finish (waiting at most `grace`), and returns when all are closed.
    pub fn shutdown(mut self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own (refused
        // at once when the listener is closed already).
        if !self.shared.closing.load(Ordering::SeqCst) {
            let _ = TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1));
        }
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        let deadline = Instant::now() + grace;
        loop {
            let threads: Vec<JoinHandle<()>> = {
                let mut live = lock(&self.shared.live);
                for association in live.values() {
                    if !association.busy.load(Ordering::SeqCst) {
                        let _ = association.socket.shutdown(Shutdown::Both);
                    }
                }
                let finished: Vec<u64> = live
                    .iter()
                    .filter(|(_, a)| a.thread.as_ref().is_none_or(|t| t.is_finished()))
                    .map(|(id, _)| *id)
                    .collect();
                finished
                    .into_iter()
                    .filter_map(|id| live.remove(&id).and_then(|mut a| a.thread.take()))
                    .collect()
            };
            for thread in threads {
                let _ = thread.join();
            }
            if lock(&self.shared.live).is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let live = lock(&self.shared.live);
                warn!(
                    open = live.len(),
                    "shutdown grace over: aborting associations"
                );
                for association in live.values() {
                    let _ = association.socket.shutdown(Shutdown::Both);
                }
                drop(live);
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    if let Err(error) = listener.set_nonblocking(true) {
        warn!(%error, "cannot make the listener non-blocking: not accepting");
        return;
    }
    let mut stage = PendingStage::new(PendingLimits {
        max_pending: shared.config.max_pending,
        max_per_address: shared.config.max_pending_per_address,
        artim: shared.config.artim_timeout,
    });
    let mut refusals = RefusalLog::default();
    let mut listener = Some(listener);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            // Dropping the stage closes the connections still waiting.
            return;
        }
        if listener.is_some() && shared.closing.load(Ordering::SeqCst) {
            listener = None;
            info!(
                waiting = stage.len(),
                "listener closed: serving the connections taken in"
            );
        }
        let (acceptable, outcomes) = stage.poll(listener.as_ref(), Duration::from_millis(100));
        for outcome in outcomes {
            match outcome {
                Outcome::Ready {
                    socket,
                    peer,
                    calling_ae,
                } => start_association(&shared, socket, peer, calling_ae),
                Outcome::Failed {
                    mut socket,
                    peer,
                    abort,
                    reason,
                    handshake,
                } => {
                    match abort {
                        _ if handshake => {
                            warn!(%peer, %reason, "TLS handshake failed: connection closed");
                            shared.policy.handshake_failed(peer, &reason);
                        }
                        Some(abort) => {
                            warn!(%peer, %reason, "association aborted before negotiation");
                            let _ = socket.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
                            let _ = pdu::write_pdu(&mut socket, &abort_pdu(abort));
                        }
                        None => debug!(%peer, %reason, "connection closed before negotiation"),
                    }
                    let _ = socket.shutdown(Shutdown::Both);
                }
            }
        }
        shared.waiting.store(stage.len(), Ordering::SeqCst);
        let Some(listener) = listener.as_ref().filter(|_| acceptable) else {
            continue;
        };
        // Everything queued on the listener, each taken in or closed at once.
        loop {
            match listener.accept() {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let tls = shared.tls.as_ref().map(|tls| tls.server_config());
                    let admitted = stage.admit(socket, peer, tls);
                    shared.waiting.store(stage.len(), Ordering::SeqCst);
                    match admitted {
                        Ok(None) => {}
                        Ok(Some((evicted, evicted_peer))) => {
                            let _ = evicted.shutdown(Shutdown::Both);
                            refusals.note(evicted_peer, Refusal::Evicted, stage.len());
                        }
                        Err(refusal) => refusals.note(peer, refusal, stage.len()),
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving what is open.
                    warn!(%error, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}

/// How long writing an A-ASSOCIATE-RJ or A-ABORT to a fresh connection may
/// take: a peer that does not read does not hold the accept thread.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Refused connections, logged at most once a second (a flood must not
/// flood the log too).
#[derive(Default)]
struct RefusalLog {
    since: Option<Instant>,
    count: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, refusal: Refusal, waiting: usize) {
        self.count += 1;
        let now = Instant::now();
        if self
            .since
            .is_some_and(|since| now.duration_since(since) < Duration::from_secs(1))
        {
            return;
        }
        warn!(
            %peer,
            reason = refusal.describe(),
            waiting,
            refused = self.count,
            "connections closed without negotiation (counted since the last such line)"
        );
        self.since = Some(now);
        self.count = 0;
    }
}

/// A connection whose A-ASSOCIATE-RQ has arrived: rejected at once when the
/// listener is at its association limit, otherwise served on a thread of
/// its own.
fn start_association(
    shared: &Arc<Shared>,
    socket: Transport,
    peer: SocketAddr,
    calling_ae: String,
) {
    reap_finished(shared);
    let refused = lock(&shared.refused_caller)
        .as_deref()
        .is_some_and(|ae| ae == calling_ae);
    if refused {
        debug!(%peer, calling_ae, "association rejected: draining, the health check fails");
        reject_local_limit(socket, shared.config.max_pdu_length);
        return;
    }
    if lock(&shared.live).len() >= shared.config.max_associations {
        warn!(%peer, calling_ae, max = shared.config.max_associations, "association rejected: too many open associations");
        reject_local_limit(socket, shared.config.max_pdu_length);
        return;
    }
    let Ok(handle) = socket.tcp().try_clone() else {
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let busy = Arc::new(AtomicBool::new(false));
    let thread_shared = shared.clone();
    let thread_busy = busy.clone();
    let mut live = lock(&shared.live);
    let spawned = std::thread::Builder::new()
        .name(format!("assoc-{id}"))
        // Headroom for dicom-object's recursive parsing of nested
        // sequences (depth is also bounded before parsing).
        .stack_size(ASSOCIATION_STACK)
        .spawn(move || {
            let span = info_span!(
                "association",
                assoc_id = id,
                peer = %peer,
                calling_ae = tracing::field::Empty,
                tls_subject = tracing::field::Empty
            );
            let _entered = span.enter();
            serve_association(socket, calling_ae, &thread_shared, &thread_busy, &span);
            lock(&thread_shared.live).remove(&id);
        });
    match spawned {
        Ok(thread) => {
            live.insert(
                id,
                Live {
                    socket: handle,
                    busy,
                    thread: Some(thread),
                },
            );
        }
        Err(error) => warn!(%error, "cannot start an association thread"),
    }
}

fn reap_finished(shared: &Shared) {
    let mut live = lock(&shared.live);
    live.retain(|_, a| a.thread.as_ref().is_some_and(|t| !t.is_finished()));
}

fn abort_pdu(reason: AbortRQServiceProviderReason) -> Pdu {
    Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(reason),
    }
}

/// Consumes the queued A-ASSOCIATE-RQ and answers A-ASSOCIATE-RJ
/// (transient, local limit exceeded).
fn reject_local_limit(mut socket: Transport, max_pdu_length: u32) {
    let _ = socket.set_read_timeout(Some(CONTROL_WRITE_TIMEOUT));
    let _ = socket.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
    let mut reader = PduReader::new(max_pdu_length);
    let _ = reader.read(&mut socket);
    let reply = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let _ = pdu::write_pdu(&mut socket, &reply);
    let _ = socket.shutdown(Shutdown::Both);
}

/// Counts an association against its calling AE title while it lives.
struct CallerSlot {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    calling_ae: String,
}

impl CallerSlot {
    /// Counts one more association of `calling_ae`, unless `limit` (0: none)
    /// is reached.
    fn try_take(
        counts: &Arc<Mutex<HashMap<String, u32>>>,
        calling_ae: &str,
        limit: u32,
    ) -> Option<CallerSlot> {
        let mut map = lock(counts);
        let open = map.entry(calling_ae.to_string()).or_insert(0);
        if limit > 0 && *open >= limit {
            return None;
        }
        *open += 1;
        Some(CallerSlot {
            counts: counts.clone(),
            calling_ae: calling_ae.to_string(),
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.calling_ae) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.calling_ae);
            }
        }
    }
}

fn serve_association(
    mut socket: Transport,
    requested_by: String,
    shared: &Shared,
    busy: &AtomicBool,
    span: &tracing::Span,
) {
    let peer = socket.peer_addr().ok();
    // The per-device limit is checked and counted before negotiating, so a
    // caller cannot slip a second association in while the first is being
    // accepted.
    let limit = shared.policy.max_associations(&requested_by);
    let Some(_caller_slot) = CallerSlot::try_take(&shared.per_caller, &requested_by, limit) else {
        warn!(calling_ae = %requested_by, limit, "association rejected: the device's association limit is reached");
        // PS3.8 has no reason for a per-caller limit; "local limit exceeded"
        // (transient) tells the caller to retry later.
        reject_local_limit(socket, shared.config.max_pdu_length);
        return;
    };
    let tls_subject = socket.peer_subject();
    if let Some(subject) = &tls_subject {
        span.record("tls_subject", subject.as_str());
    }
    let _ = socket.set_write_timeout(Some(Duration::from_secs(60)));
    let mut reader = PduReader::new(shared.config.max_pdu_length);
    let request = {
        let mut timed = DeadlineReader::new(
            &mut socket,
            Instant::now() + shared.config.artim_timeout,
            "ARTIM timeout passed",
        );
        match reader.read(&mut timed) {
            Ok(Incoming::Other(Pdu::AssociationRQ(request))) => request,
            Ok(_) => {
                warn!("association not established: the first PDU is not an A-ASSOCIATE-RQ");
                let _ = pdu::write_pdu(
                    &mut socket,
                    &abort_pdu(AbortRQServiceProviderReason::UnexpectedPdu),
                );
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            Err(error) => {
                warn!(error = %crate::model::error_chain(&error), "association not established");
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
        }
    };
    let ip = peer.map(|p| p.ip());
    let access = Box::new(|calling: &str, called: &str, user: Option<&UserIdentity>| {
        if shared.config.check_called_ae && shared.config.ae_title.trim() != called {
            warn!(
                called_ae = called,
                calling_ae = calling,
                "association rejected: called AE title not ours"
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        // The access policy sees the caller's address (devices bound to hosts).
        if !shared.policy.admit(calling, ip) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if !shared.policy.check_user(calling, ip, user) {
            return Err(AssociationRJServiceUserReason::NoReasonGiven);
        }
        Ok(())
    });
    let negotiated = match negotiate::answer(request, &shared.options, access) {
        Ok((accept, negotiated)) => {
            if let Err(error) = pdu::write_pdu(&mut socket, &Pdu::AssociationAC(accept)) {
                warn!(error = %crate::model::error_chain(&error), "association not established: cannot answer");
                return;
            }
            negotiated
        }
        Err(reject) => {
            let _ = pdu::write_pdu(&mut socket, &Pdu::AssociationRJ(reject));
            info!("association rejected");
            close_after_reply(socket);
            return;
        }
    };
    let calling_ae = negotiated.calling_ae.clone();
    span.record("calling_ae", calling_ae.as_str());
    shared.policy.established(&calling_ae, peer);
    let contexts: HashMap<u8, (String, String)> = negotiated
        .contexts
        .into_iter()
        .map(|(id, abstract_syntax, transfer_syntax)| (id, (abstract_syntax, transfer_syntax)))
        .collect();
    info!(
        accepted_contexts = contexts.len(),
        peer_max_pdu = negotiated.peer_max_pdu,
        tls = socket.is_tls(),
        "association established"
    );
    let link_socket = match socket.try_clone() {
        Ok(clone) => clone,
        Err(error) => {
            warn!(%error, "cannot clone the association socket");
            return;
        }
    };
    let link = Link::new(
        link_socket,
        &calling_ae,
        contexts,
        negotiated.scp_roles,
        negotiated.peer_max_pdu,
        shared.config.max_pdu_length,
        shared.config.idle_timeout,
    )
    .with_combined_date_time(negotiated.combined_date_time);
    let socket = &mut socket;
    let mut reader = PduReader::new(shared.config.max_pdu_length);
    let mut session = shared.handlers.handler(link);
    loop {
        let mut timed = DeadlineReader::new(
            socket,
            Instant::now() + shared.config.idle_timeout,
            "PDU deadline passed",
        );
        let incoming = reader.read(&mut timed);
        let socket_ref = timed.into_socket();
        match incoming {
            Ok(Incoming::PData(data)) => {
                busy.store(true, Ordering::SeqCst);
                let mut outcome = MessageOutcome::Continue;
                for pdv in data.pdvs() {
                    match pdv {
                        Ok(pdv) => {
                            outcome = session.on_pdv(pdv);
                            if !matches!(outcome, MessageOutcome::Continue | MessageOutcome::Done) {
                                break;
                            }
                        }
                        Err(error) => {
                            outcome = MessageOutcome::Abort(format!("malformed P-DATA: {error}"));
                            break;
                        }
                    }
                }
                match outcome {
                    MessageOutcome::Abort(reason) => {
                        warn!(%reason, "aborting association");
                        let _ = pdu::write_pdu(
                            socket_ref,
                            &abort_pdu(AbortRQServiceProviderReason::InvalidPduParameter),
                        );
                        let _ = socket_ref.shutdown(Shutdown::Both);
                        return;
                    }
                    MessageOutcome::Done if !session.in_message() => {
                        busy.store(false, Ordering::SeqCst);
                        if shared.stopping.load(Ordering::SeqCst) {
                            info!("server stopping: aborting association after its last message");
                            let _ = pdu::write_pdu(
                                socket_ref,
                                &abort_pdu(AbortRQServiceProviderReason::ReasonNotSpecified),
                            );
                            let _ = socket_ref.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    _ => {}
                }
            }
            Ok(Incoming::Other(Pdu::ReleaseRQ)) => {
                let _ = pdu::write_pdu(socket_ref, &Pdu::ReleaseRP);
                let _ = socket_ref.shutdown(Shutdown::Both);
                info!("association released");
                return;
            }
            Ok(Incoming::Other(Pdu::AbortRQ { source })) => {
                info!(?source, "association aborted by the peer");
                let _ = socket_ref.shutdown(Shutdown::Both);
                return;
            }
            Ok(Incoming::Other(other)) => {
                warn!(pdu = ?pdu_kind(&other), "unexpected PDU: aborting association");
                let _ = pdu::write_pdu(
                    socket_ref,
                    &abort_pdu(AbortRQServiceProviderReason::UnexpectedPdu),
                );
                let _ = socket_ref.shutdown(Shutdown::Both);
                return;
            }
            Err(PduError::Closed) => {
                if session.in_message() {
                    warn!("peer closed the connection in the middle of a message");
                } else if shared.stopping.load(Ordering::SeqCst) {
                    info!("association closed for shutdown");
                } else {
                    info!("peer closed the connection");
                }
                return;
            }
            Err(PduError::Io(error))
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                warn!(
                    timeout_s = shared.config.idle_timeout.as_secs(),
                    "idle timeout: aborting association"
                );
                let _ = pdu::write_pdu(
                    socket_ref,
                    &abort_pdu(AbortRQServiceProviderReason::ReasonNotSpecified),
                );
                let _ = socket_ref.shutdown(Shutdown::Both);
                return;
            }
            Err(error) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    info!("association closed for shutdown");
                    return;
                }
                warn!(error = %crate::model::error_chain(&error), "bad PDU: aborting association");
                let reason = match error {
                    PduError::TooLarge { .. } => AbortRQServiceProviderReason::InvalidPduParameter,
                    PduError::UnknownType(_) => AbortRQServiceProviderReason::UnrecognizedPdu,
                    _ => AbortRQServiceProviderReason::ReasonNotSpecified,
                };
                let _ = pdu::write_pdu(socket_ref, &abort_pdu(reason));
                let _ = socket_ref.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// After an A-ASSOCIATE-RJ: our side closed for writing, then the peer's
/// close awaited (PS3.8 9.1.5: the requestor closes; at most
/// [`CONTROL_WRITE_TIMEOUT`], a few KiB read), so that closing never
/// resets a connection whose peer has not read the rejection yet.
fn close_after_reply(mut socket: Transport) {
    let _ = socket.shutdown(Shutdown::Write);
    let deadline = Instant::now() + CONTROL_WRITE_TIMEOUT;
    let mut sink = [0u8; 1024];
    for _ in 0..16 {
        let mut timed = DeadlineReader::new(&mut socket, deadline, "closing");
        match io::Read::read(&mut timed, &mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

fn pdu_kind(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        _ => "unknown",
    }
}
