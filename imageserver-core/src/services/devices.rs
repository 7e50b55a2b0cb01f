//! Devices: the remote AEs a partition knows, their permissions and limits,
//! and the registration of unknown callers when the partition allows it.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::db::nodes::NodeStore;
use crate::db::{self, IndexStore};
use crate::dicom::scu::ClientTls;
use crate::model::{AeTitle, DeviceSpec, PartitionId};

/// What a caller wants to do, for permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// C-STORE.
    Store,
    /// C-FIND.
    Query,
    /// C-MOVE, C-GET.
    Retrieve,
    /// Replace a stored instance (a C-STORE of a SOP Instance UID already
    /// held, under the `accept_latest` duplicate policy).
    Replace,
}

/// The verdict on a calling AE title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A known device (or an unknown one the partition accepts).
    Admit(Option<DeviceSpec>),
    /// Unknown, and the partition rejects unknown callers.
    Unknown,
    /// A known device calling from an address its host does not have.
    WrongHost {
        /// The host the device is configured with.
        host: String,
        /// Where the call came from (None: not known).
        peer: Option<IpAddr>,
    },
}

/// A partition's rules for who may associate and what unknown callers may
/// do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionRules {
    /// Accept callers that are not known devices (and register them).
    pub accept_unknown: bool,
    /// Unknown callers may query and retrieve too; otherwise they may
    /// only store (and echo).
    pub unknown_may_query_retrieve: bool,
    /// A known device with a host is accepted only from that host's
    /// addresses.
    pub check_hosts: bool,
    /// Most devices a partition may hold before unknown callers are no
    /// longer registered (they are still admitted when it accepts them).
    pub max_registered: u64,
}

/// How long a device host's resolved addresses are trusted before the
/// name is resolved again (a renumbered workstation is let in after this).
const HOST_TTL: Duration = Duration::from_secs(300);

/// One partition's device registry, cached in memory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: Arc<dyn IndexStore>,
    partition: PartitionId,
    rules: AdmissionRules,
    known: RwLock<HashMap<String, DeviceSpec>>,
    /// Devices reached over TLS, by AE title.
    tls: HashMap<String, ClientTls>,
    /// Device hosts resolved to addresses, with when.
    hosts: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl Devices {
    /// Loads a partition's devices from the index, admitted by `rules`.
    /// Their hosts are resolved now, so that a name that does not resolve
    /// is reported at start.
    pub fn load(
        index: Arc<dyn IndexStore>,
        partition: PartitionId,
        rules: AdmissionRules,
    ) -> Result<Devices, db::Error> {
        let known = index
            .devices(partition)?
            .into_iter()
            .map(|d| (d.ae_title.as_str().to_string(), d))
            .collect();
        let devices = Devices {
            inner: Arc::new(Inner {
                index,
                partition,
                rules,
                known: RwLock::new(known),
                tls: HashMap::new(),
                hosts: Mutex::new(HashMap::new()),
            }),
        };
        if rules.check_hosts {
            let hosts: Vec<(String, String)> = devices
                .inner
                .known
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|d| !d.host.is_empty())
                .map(|d| (d.ae_title.as_str().to_string(), d.host.clone()))
                .collect();
            for (ae_title, host) in hosts {
                if devices.addresses(&host).is_empty() {
                    tracing::warn!(%ae_title, %host, "the device's host does not resolve: its associations will be rejected until it does");
                }
            }
        }
        Ok(devices)
    }

    /// The addresses of `host`, resolved at most every [`HOST_TTL`] (an
    /// empty list when it does not resolve).
    fn addresses(&self, host: &str) -> Vec<IpAddr> {
        if let Ok(address) = host.parse::<IpAddr>() {
            return vec![address];
        }
        let hosts = || self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, addresses)) = hosts().get(host) {
            if at.elapsed() < HOST_TTL {
                return addresses.clone();
            }
        }
        // Resolved without the lock: a slow name server delays this
        // caller's admission, not every other caller's.
        let addresses: Vec<IpAddr> = match (host, 0u16).to_socket_addrs() {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(error) => {
                tracing::warn!(%host, %error, "cannot resolve a device's host");
                Vec::new()
            }
        };
        hosts().insert(host.to_string(), (Instant::now(), addresses.clone()));
        addresses
    }

    /// Reads every device of the partition from the index again, replacing
    /// the cache (the cluster's heartbeat calls it when the device table
    /// changed elsewhere).
    pub fn reload(&self) -> Result<(), db::Error> {
        let known: HashMap<String, DeviceSpec> = self
            .inner
            .index
            .devices(self.inner.partition)?
            .into_iter()
            .map(|d| (d.ae_title.as_str().to_string(), d))
            .collect();
        *self.inner.known.write().unwrap_or_else(|p| p.into_inner()) = known;
        Ok(())
    }

    /// The same registry with the TLS configuration of the devices
    /// reached over TLS (by AE title); called right after [`Devices::load`],
    /// before the registry is shared.
    pub fn with_tls(mut self, tls: HashMap<String, ClientTls>) -> Devices {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.tls = tls,
            None => tracing::warn!("device TLS settings given to a shared registry: ignored"),
        }
        self
    }

    /// The TLS configuration for associations to `ae_title`, when the
    /// device is reached over TLS.
    pub fn tls_for(&self, ae_title: &str) -> Option<ClientTls> {
        self.inner.tls.get(ae_title.trim()).cloned()
    }

    /// The device with this AE title, if known: from the cache, else from
    /// the index (a device an administrator or another node added since
    /// this node loaded its devices), which then joins the cache.
    pub fn get(&self, ae_title: &str) -> Option<DeviceSpec> {
        let ae_title = ae_title.trim();
        if let Some(device) = self.cached(ae_title) {
            return Some(device);
        }
        let parsed = AeTitle::parse(ae_title).ok()?;
        match self.inner.index.device(self.inner.partition, &parsed) {
            Ok(Some(device)) => Some(self.remember(device)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(calling_ae = ae_title, error = %crate::model::error_chain(&error), "cannot look up a device");
                None
            }
        }
    }

    fn cached(&self, ae_title: &str) -> Option<DeviceSpec> {
        self.inner
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ae_title)
            .cloned()
    }

    fn remember(&self, device: DeviceSpec) -> DeviceSpec {
        self.inner
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.ae_title.as_str().to_string(), device.clone());
        device
    }

    /// Whether a caller calling from `peer` may associate: a known device
    /// with a host only from one of its host's addresses (when the
    /// partition checks hosts), an unknown one when the partition accepts
    /// unknown callers.
    pub fn admit(&self, calling_ae: &str, peer: Option<IpAddr>) -> Admission {
        match self.get(calling_ae) {
            Some(device) if self.inner.rules.check_hosts && !device.host.is_empty() => {
                let from_its_host = peer.is_some_and(|peer| {
                    self.addresses(&device.host)
                        .iter()
                        .any(|address| same_address(*address, peer))
                });
                if from_its_host {
                    Admission::Admit(Some(device))
                } else {
                    Admission::WrongHost {
                        host: device.host,
                        peer,
                    }
                }
            }
            Some(device) => Admission::Admit(Some(device)),
            None if self.inner.rules.accept_unknown => Admission::Admit(None),
            None => Admission::Unknown,
        }
    }

    /// Whether `calling_ae` may perform `operation`. Unknown callers of a
    /// partition that accepts them may store, and query and retrieve only
    /// when the partition allows it (they are registered with those
    /// permissions; an administrator widens or narrows them); never
    /// replace: only a device an administrator granted `allow_replace` may.
    pub fn permits(&self, calling_ae: &str, operation: Operation) -> bool {
        match self.get(calling_ae) {
            Some(device) => match operation {
                Operation::Store => device.allow_store,
                Operation::Query => device.allow_query,
                Operation::Retrieve => device.allow_retrieve,
                Operation::Replace => device.allow_replace,
            },
            None => {
                let rules = &self.inner.rules;
                rules.accept_unknown
                    && match operation {
                        Operation::Store => true,
                        Operation::Query | Operation::Retrieve => rules.unknown_may_query_retrieve,
                        Operation::Replace => false,
                    }
            }
        }
    }

    /// Registers an unknown caller seen at `host` (its port is unknown: 0),
    /// so an administrator can see and narrow it. A device of that AE
    /// title already in the index (another node's registration, an
    /// administrator's row) is taken as it is, never overwritten; once the
    /// partition holds `max_registered` devices nobody more is registered.
    pub fn register_unknown(&self, calling_ae: &str, host: &str) -> Result<(), db::Error> {
        let Ok(ae_title) = AeTitle::parse(calling_ae) else {
            return Ok(());
        };
        if self.cached(ae_title.as_str()).is_some() {
            return Ok(());
        }
        let spec = DeviceSpec {
            ae_title,
            host: host.to_string(),
            port: 0,
            allow_store: true,
            allow_query: self.inner.rules.unknown_may_query_retrieve,
            allow_retrieve: self.inner.rules.unknown_may_query_retrieve,
            allow_replace: false,
            max_associations: 0,
            max_outgoing_associations: 0,
        };
        match self.inner.index.register_device(
            self.inner.partition,
            &spec,
            self.inner.rules.max_registered,
        )? {
            Some(stored) => {
                if stored == spec {
                    tracing::info!(calling_ae, host, "registered an unknown device");
                }
                self.remember(stored);
            }
            None => tracing::warn!(
                calling_ae,
                host,
                max = self.inner.rules.max_registered,
                "not registering an unknown device: the partition holds the most devices allowed"
            ),
        }
        Ok(())
    }
}

/// Whether two addresses are the same host: an IPv4 address equals its
/// IPv4-mapped IPv6 form (a dual-stack listener reports callers so).
fn same_address(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |address: IpAddr| match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// The limits on the associations opened to devices for sends
/// ([`DeviceSpec::max_outgoing_associations`]; 0: no limit). Cheap to
/// clone; clones share the counts. [`SendLimits::in_index`] makes them
/// hold across every process sharing the index (a cluster): each open
/// association then holds one of the device's numbered slots, a named
/// lease in the index renewed while it is open and expiring when its
/// holder dies.
#[derive(Clone, Default)]
pub struct SendLimits {
    open: Arc<std::sync::Mutex<HashMap<(PartitionId, AeTitle), u32>>>,
    cluster: Option<Arc<dyn NodeStore>>,
}

impl std::fmt::Debug for SendLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendLimits")
            .field("cluster_wide", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

/// How long a slot's lease holds without renewal (renewed every third of
/// it while the association or the restore runs).
const SEND_SLOT_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

impl SendLimits {
    /// Limits that hold across every process sharing `index`.
    pub fn in_index(index: Arc<dyn NodeStore>) -> SendLimits {
        SendLimits {
            open: Arc::default(),
            cluster: Some(index),
        }
    }

    /// A permit to open one association to `device`, or `None` when the
    /// device's limit is reached (in this process, or, for limits
    /// [`SendLimits::in_index`], in the cluster). The permit is given back
    /// when dropped.
    pub fn try_acquire(&self, partition: PartitionId, device: &DeviceSpec) -> Option<SendPermit> {
        let key = (partition, device.ae_title.clone());
        let limit = device.max_outgoing_associations;
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(key.clone()).or_insert(0);
            if limit != 0 && *count >= limit {
                return None;
            }
            *count += 1;
        }
        let mut permit = SendPermit {
            limits: self.clone(),
            key,
            slot: None,
        };
        if let (Some(index), true) = (&self.cluster, limit != 0) {
            // Dropping the permit without a slot gives the count back.
            permit.slot = Some(ClusterSlot::take(index, partition, device)?);
        }
        Some(permit)
    }

    /// Associations open to a device now.
    #[cfg(test)]
    fn open(&self, partition: PartitionId, ae_title: &AeTitle) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&(partition, ae_title.clone()))
            .copied()
            .unwrap_or(0)
    }
}

/// One association's share of a device's send limit (see [`SendLimits`]).
#[derive(Debug)]
pub struct SendPermit {
    limits: SendLimits,
    key: (PartitionId, AeTitle),
    slot: Option<ClusterSlot>,
}

/// A slot held in the index (a named lease: a send's to a device, a
/// restore's), renewed by a thread of its own until dropped, then
/// released; it expires when its holder dies.
pub(crate) struct ClusterSlot {
    index: Arc<dyn NodeStore>,
    name: String,
    holder: String,
    stop: Option<crossbeam::channel::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSlot")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl ClusterSlot {
    /// Takes a free slot of the device's `max_outgoing_associations`, or
    /// None when every slot is held (or the index cannot be asked).
    fn take(
        index: &Arc<dyn NodeStore>,
        partition: PartitionId,
        device: &DeviceSpec,
    ) -> Option<ClusterSlot> {
        let names = (0..device.max_outgoing_associations)
            .map(|slot| format!("send:{}:{}:{slot}", partition.0, device.ae_title));
        ClusterSlot::take_named(index, names, "send")
    }

    /// Takes the first free lease of `names`, or None when every one is
    /// held (or the index cannot be asked: logged, the caller waits).
    /// `what` names the slot's use in the log.
    pub(crate) fn take_named(
        index: &Arc<dyn NodeStore>,
        names: impl IntoIterator<Item = String>,
        what: &str,
    ) -> Option<ClusterSlot> {
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let holder = format!(
            "{}:{}:{}",
            crate::cluster::node::host_name(),
            std::process::id(),
            SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        for name in names {
            match index.take_lease(&name, &holder, SEND_SLOT_LEASE) {
                Ok(true) => return Some(ClusterSlot::renewed(index.clone(), name, holder)),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(slot = %name, error = %crate::model::error_chain(&error), "cannot take a {what} slot: it waits");
                    return None;
                }
            }
        }
        None
    }

    fn renewed(index: Arc<dyn NodeStore>, name: String, holder: String) -> ClusterSlot {
        let (stop, stopped) = crossbeam::channel::bounded::<()>(0);
        let (renew_index, renew_name, renew_holder) = (index.clone(), name.clone(), holder.clone());
        let renewer = std::thread::Builder::new()
            .name("cluster-slot".into())
            .spawn(move || loop {
                match stopped.recv_timeout(SEND_SLOT_LEASE / 3) {
                    Err(crossbeam::channel::RecvTimeoutError::Timeout) => {
                        match renew_index.take_lease(&renew_name, &renew_holder, SEND_SLOT_LEASE) {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(slot = %renew_name, "slot lost: another holder took it"),
                            Err(error) => tracing::warn!(slot = %renew_name, error = %crate::model::error_chain(&error), "cannot renew a slot"),
                        }
                    }
                    _ => return,
                }
            })
            .ok();
        ClusterSlot {
            index,
            name,
            holder,
            stop: Some(stop),
            renewer,
        }
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if let Err(error) = self.index.release_lease(&self.name, &self.holder) {
            tracing::warn!(slot = %self.name, error = %crate::model::error_chain(&error), "cannot release a slot: it expires");
        }
    }
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod send_limit_tests {
    use super::*;

    fn device(limit: u32) -> DeviceSpec {
        DeviceSpec {
            ae_title: AeTitle::parse("DEST").unwrap(),
            host: "127.0.0.1".into(),
            port: 104,
            allow_store: true,
            allow_query: true,
            allow_retrieve: true,
            allow_replace: false,
            max_associations: 0,
            max_outgoing_associations: limit,
        }
    }

    #[test]
    fn permits_are_counted_per_device_and_given_back_on_drop() {
        let limits = SendLimits::default();
        let (p1, p2) = (PartitionId(1), PartitionId(2));
        let two = device(2);
        let a = limits.try_acquire(p1, &two).expect("first");
        let b = limits.clone().try_acquire(p1, &two).expect("second");
        assert!(limits.try_acquire(p1, &two).is_none(), "the limit holds");
        // Another partition's device of the same AE title counts apart.
        let other = limits.try_acquire(p2, &two).expect("other partition");
        assert_eq!(limits.open(p1, &two.ae_title), 2);
        drop(a);
        let c = limits.try_acquire(p1, &two).expect("a permit came back");
        drop((b, c, other));
        assert_eq!(limits.open(p1, &two.ae_title), 0);
        // No limit.
        let unlimited = device(0);
        let many: Vec<_> = (0..50)
            .map(|_| limits.try_acquire(p1, &unlimited).expect("no limit"))
            .collect();
        assert_eq!(limits.open(p1, &unlimited.ae_title), 50);
        drop(many);
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod admission_tests {
    use super::*;
    use crate::db::fixtures::partition_spec;
    use crate::db::sqlite::SqliteIndex;

    fn device(ae_title: &str, host: &str) -> DeviceSpec {
        DeviceSpec {
            ae_title: AeTitle::parse(ae_title).unwrap(),
            host: host.into(),
            port: 104,
            allow_store: true,
            allow_query: true,
            allow_retrieve: true,
            allow_replace: false,
            max_associations: 0,
            max_outgoing_associations: 0,
        }
    }

    const RULES: AdmissionRules = AdmissionRules {
        accept_unknown: true,
        unknown_may_query_retrieve: false,
        check_hosts: true,
        max_registered: 100,
    };

    /// A partition holding devices bound to 127.0.0.2, to `localhost`, to
    /// a name that does not resolve, and one without a host.
    fn partition_with(rules: AdmissionRules) -> (tempfile::TempDir, Arc<SqliteIndex>, Devices) {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SqliteIndex::open(&dir.path().join("index.db")).unwrap());
        let partition = index.ensure_partition(&partition_spec("HOSTS")).unwrap();
        for spec in [
            device("BOUND", "127.0.0.2"),
            device("LOCAL", "localhost"),
            device("NOWHERE", "no-such-host.invalid"),
            device("ANYWHERE", ""),
        ] {
            index.ensure_device(partition, &spec).unwrap();
        }
        let devices = Devices::load(index.clone(), partition, rules).unwrap();
        (dir, index, devices)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn admitted(admission: Admission) -> bool {
        matches!(admission, Admission::Admit(_))
    }

    #[test]
    fn known_devices_are_admitted_only_from_their_host() {
        let (_dir, _index, devices) = partition_with(RULES);
        assert!(admitted(devices.admit("BOUND", ip("127.0.0.2"))));
        assert!(admitted(devices.admit("BOUND", ip("::ffff:127.0.0.2"))));
        assert_eq!(
            devices.admit("BOUND", ip("127.0.0.1")),
            Admission::WrongHost {
                host: "127.0.0.2".into(),
                peer: ip("127.0.0.1"),
            }
        );
        assert!(
            !admitted(devices.admit("BOUND", None)),
            "no address, no entry"
        );
        assert!(admitted(devices.admit("LOCAL", ip("127.0.0.1"))));
        assert!(!admitted(devices.admit("LOCAL", ip("127.0.0.3"))));
        assert!(
            !admitted(devices.admit("NOWHERE", ip("127.0.0.1"))),
            "a host that does not resolve admits nobody"
        );
        assert!(admitted(devices.admit("ANYWHERE", ip("10.9.8.7"))));
        // Unknown callers: by the partition's setting.
        assert_eq!(
            devices.admit("STRANGER", ip("10.9.8.7")),
            Admission::Admit(None)
        );

        let (_dir, _index, unchecked) = partition_with(AdmissionRules {
            check_hosts: false,
            ..RULES
        });
        assert!(admitted(unchecked.admit("BOUND", ip("127.0.0.1"))));
        let (_dir, _index, closed) = partition_with(AdmissionRules {
            accept_unknown: false,
            ..RULES
        });
        assert_eq!(
            closed.admit("STRANGER", ip("127.0.0.1")),
            Admission::Unknown
        );
    }

    #[test]
    fn unknown_callers_store_but_query_and_retrieve_only_when_allowed() {
        let (_dir, index, devices) = partition_with(RULES);
        assert!(devices.permits("STRANGER", Operation::Store));
        assert!(!devices.permits("STRANGER", Operation::Query));
        assert!(!devices.permits("STRANGER", Operation::Retrieve));
        assert!(!devices.permits("STRANGER", Operation::Replace));
        devices.register_unknown("STRANGER", "10.9.8.7").unwrap();
        let registered = index
            .device(
                devices.inner.partition,
                &AeTitle::parse("STRANGER").unwrap(),
            )
            .unwrap()
            .expect("registered");
        assert!(registered.allow_store);
        assert!(!registered.allow_query && !registered.allow_retrieve);
        assert!(
            !devices.permits("STRANGER", Operation::Query),
            "once registered too"
        );

        let (_dir, _index, open) = devices_with_open_queries();
        assert!(open.permits("OTHER", Operation::Query));
        assert!(open.permits("OTHER", Operation::Retrieve));
        assert!(!open.permits("OTHER", Operation::Replace));
    }

    fn devices_with_open_queries() -> (tempfile::TempDir, Arc<SqliteIndex>, Devices) {
        partition_with(AdmissionRules {
            unknown_may_query_retrieve: true,
            ..RULES
        })
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod cluster_send_limit_tests {
    use super::*;
    use crate::db::sqlite::SqliteIndex;

    /// Two processes' limits over one index (two nodes): the device's
    /// limit holds across them, and a slot given back is free for either.
    #[test]
    fn the_limit_holds_across_limits_sharing_an_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index: Arc<dyn NodeStore> =
            Arc::new(SqliteIndex::open(&dir.path().join("index.db")).expect("open"));
        let (node_a, node_b) = (
            SendLimits::in_index(index.clone()),
            SendLimits::in_index(index),
        );
        let device = DeviceSpec {
            ae_title: AeTitle::parse("DEST").unwrap(),
            host: "127.0.0.1".into(),
            port: 104,
            allow_store: true,
            allow_query: true,
            allow_retrieve: true,
            allow_replace: false,
            max_associations: 0,
            max_outgoing_associations: 2,
        };
        let p = PartitionId(1);
        let a = node_a.try_acquire(p, &device).expect("a first slot");
        let b = node_b.try_acquire(p, &device).expect("a second slot");
        assert!(node_a.try_acquire(p, &device).is_none(), "both slots held");
        assert!(node_b.try_acquire(p, &device).is_none(), "on either node");
        assert!(
            node_b.try_acquire(PartitionId(2), &device).is_some(),
            "another partition's device counts apart"
        );
        drop(a);
        let c = node_b
            .try_acquire(p, &device)
            .expect("the slot node A gave back");
        assert!(node_a.try_acquire(p, &device).is_none());
        drop((b, c));
        assert!(node_a.try_acquire(p, &device).is_some());
    }
}
