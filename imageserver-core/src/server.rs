//! The composition root: the only module that names concrete backends.
//!
//! [`Archive::open`] opens the index and storage a configuration describes
//! and registers its partition, filesystems and devices: operator commands
//! (import) use it alone. [`Server::start`] adds the DICOM acceptors and the
//! WorkQueue engine.
//! Embedders that bring their own backends use [`ServerBuilder`].

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::archive::ArchiveRoot;
use crate::audit::event::types;
use crate::audit::{
    Action, AuditError, AuditEvent, Auditor, EventKind, Outcome, Participant, Role,
};
use crate::cluster::{node, Node};
use crate::config::{ConfigError, PartitionSettings, Settings};
use crate::db::{self, Database, IndexStore, QueryStore};
use crate::dicom::assoc::{Acceptor, AcceptorConfig};
use crate::dicom::scu::ClientTls;
use crate::dicom::transport::ServerTls;
use crate::model::PartitionId;
use crate::processors::{self, BuiltinDeps};
use crate::rules::RuleSet;
use crate::scheduler::{
    ArchiveScan, FolderImport, IntegrityScan, ScheduledService, WatermarkCheck,
};
use crate::scp::{DevicePolicy, Dispatcher, ScpOptions};
use crate::services::commit::StudyProcessHook;
use crate::services::devices::{AdmissionRules, Devices};
use crate::services::find::Find;
use crate::services::import::{self, FileOutcome, ImportSummary};
use crate::services::retrieve::Retrieve;
use crate::services::studies::Reconcile;
use crate::services::studies::{Hsm, Restorer, Studies};
use crate::services::{Ingest, IngestLimits, Partition};
use crate::storage::fs::FsStorage;
use crate::storage::placement::{FilesystemStates, Tiered};
use crate::storage::StorageBackend;
use crate::tls::ReloadingServer;
use crate::workqueue::{self, Engine, EngineConfig, Registry, WorkQueue};

/// Why an archive or server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The index URL names an unsupported backend.
    #[error("unsupported index URL {0:?}: expected sqlite:PATH")]
    UnsupportedDb(String),
    /// The index failed.
    #[error(transparent)]
    Db(#[from] db::Error),
    /// A data directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The WorkQueue engine could not start.
    #[error(transparent)]
    WorkQueue(#[from] workqueue::Error),
    /// The HTTP server could not start.
    #[cfg(feature = "web")]
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    /// The audit trail could not start.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A TLS listener's certificate, key or CA bundle does not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A background thread could not be started.
    #[error("cannot start the {name} thread")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the index a URL names: `sqlite:PATH` (or a bare path), or
/// `postgres://user@host:port/database` (also `postgresql://`; pool options
/// as query parameters, see `db::postgres::PgOptions::from_url`).
pub fn open_index(url: &str) -> Result<Arc<dyn Database>, Error> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(crate::db::postgres::PgIndex::connect(url)?));
        #[cfg(not(feature = "postgres"))]
        return Err(Error::UnsupportedDb(format!(
            "{url} (this build has no PostgreSQL backend: feature `postgres`)"
        )));
    }
    let path = if let Some(path) = url.strip_prefix("sqlite:") {
        PathBuf::from(path.trim_start_matches("//"))
    } else if url.contains("://") {
        return Err(Error::UnsupportedDb(url.to_string()));
    } else {
        PathBuf::from(url)
    };
    open_sqlite(&path)
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn Database>, Error> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(Arc::new(crate::db::sqlite::SqliteIndex::open(path)?))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn Database>, Error> {
    Err(Error::UnsupportedDb(format!(
        "sqlite:{} (this build has no SQLite backend: feature `sqlite`)",
        path.display()
    )))
}

/// The least age at which any node removes another writer's temporary
/// file (a dead cluster node's): far beyond any live store's pause.
const MIN_TEMPORARY_AGE: Duration = Duration::from_secs(3600);

/// How long placement waits, after start-up, for the first measurement of
/// the bytes held before a filesystem with a quota counts as full (the
/// measurement takes about a second at 10 M instances).
const UNMEASURED_QUOTA_WAIT: Duration = Duration::from_secs(30);

/// Assembles an archive from parts; defaults to the backends the settings name.
pub struct ServerBuilder {
    settings: Settings,
    index: Option<Arc<dyn Database>>,
    storage: Option<Arc<dyn StorageBackend>>,
    /// Set by [`ServerBuilder::processors`]: used instead of the built-ins.
    processors: Option<Registry>,
    /// Added by [`ServerBuilder::processor`], on top of the rest.
    extra: Vec<(
        crate::model::work::WorkKind,
        workqueue::KindProperties,
        Arc<dyn workqueue::Processor>,
    )>,
    rules: Option<Arc<RuleSet>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("settings", &self.settings)
            .field("processors", &self.processors)
            .field(
                "extra",
                &self.extra.iter().map(|(k, _, _)| k).collect::<Vec<_>>(),
            )
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Starts from validated settings.
    pub fn new(settings: Settings) -> ServerBuilder {
        ServerBuilder {
            settings,
            index: None,
            storage: None,
            processors: None,
            extra: Vec::new(),
            rules: None,
        }
    }

    /// Runs exactly these work item processors instead of the built-in ones
    /// ([`crate::processors::register_builtin`]); kinds added with
    /// [`ServerBuilder::processor`] still apply on top.
    pub fn processors(mut self, processors: Registry) -> ServerBuilder {
        self.processors = Some(processors);
        self
    }

    /// The rules the built-in StudyProcess applies (default: none).
    pub fn rules(mut self, rules: RuleSet) -> ServerBuilder {
        self.rules = Some(Arc::new(rules));
        self
    }

    /// Adds (or replaces) one kind of work: how an embedding product adds
    /// its own work item type.
    pub fn processor(
        mut self,
        kind: crate::model::work::WorkKind,
        properties: workqueue::KindProperties,
        processor: impl workqueue::Processor + 'static,
    ) -> ServerBuilder {
        self.extra.push((kind, properties, Arc::new(processor)));
        self
    }

    /// Uses this index instead of opening `settings.db_url`.
    pub fn index(mut self, index: Arc<dyn Database>) -> ServerBuilder {
        self.index = Some(index);
        self
    }

    /// Uses this storage backend instead of the filesystem one.
    pub fn storage(mut self, storage: Arc<dyn StorageBackend>) -> ServerBuilder {
        self.storage = Some(storage);
        self
    }

    /// Opens the archive (index, storage, registrations) without listening.
    pub fn open(self) -> Result<Archive, Error> {
        let database = match self.index {
            Some(database) => database,
            None => open_index(&self.settings.db_url)?,
        };
        let index: Arc<dyn IndexStore> = database.clone();
        let query: Arc<dyn QueryStore> = database.clone();
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(FsStorage::new()) as Arc<dyn StorageBackend>);
        // The configuration seeds the index; the index's rows are in force.
        crate::tiering::seed(index.as_ref(), &self.settings.filesystems)?;
        // First use writes each filesystem's identity marker; a root
        // without its recorded marker is refused (and not swept).
        // The bytes held per filesystem (a sum over every study) are
        // measured on a thread: start-up does not wait for them, a quota
        // does (see FilesystemStates::unmeasured).
        let filesystem_states = Arc::new(FilesystemStates::unmeasured(UNMEASURED_QUOTA_WAIT));
        crate::tiering::check_at_start(index.as_ref(), storage.as_ref(), &filesystem_states)?;
        crate::tiering::measure_later(index.clone(), filesystem_states.clone()).map_err(
            |source| Error::Thread {
                name: "filesystem-usage",
                source,
            },
        )?;
        // What a crash (or a dead node) left half-written: no writer will
        // finish it.
        let stale_after = (self.settings.idle_timeout * 4).max(MIN_TEMPORARY_AGE);
        for filesystem in index.filesystems()? {
            if filesystem_states.refusal(filesystem.id).is_some() {
                continue;
            }
            match storage.sweep_temporary(&filesystem, stale_after) {
                Ok(report) if report.removed > 0 => tracing::info!(
                    filesystem = %filesystem.spec.path.display(),
                    removed = report.removed,
                    bytes = report.bytes,
                    kept = report.kept,
                    "temporary files of unfinished stores removed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    filesystem = %filesystem.spec.path.display(),
                    error = %crate::model::error_chain(&e),
                    "cannot sweep temporary files"
                ),
            }
        }
        let mut partitions = Vec::new();
        let mut device_tls = HashMap::new();
        for partition in &self.settings.partitions {
            let id = index.ensure_partition(&partition.spec)?;
            for device in &partition.devices {
                index.ensure_device(id, device)?;
            }
            let devices = Devices::load(
                index.clone(),
                id,
                AdmissionRules {
                    accept_unknown: partition.spec.accept_unknown_devices,
                    unknown_may_query_retrieve: partition.unknown_devices_query_retrieve,
                    check_hosts: partition.check_device_hosts,
                    max_registered: self.settings.max_registered_devices,
                },
            )?;
            let mut tls = HashMap::new();
            for (ae_title, ca) in &partition.device_tls {
                let config = ClientTls(crate::tls::client_config(ca)?);
                device_tls.insert((id, ae_title.clone()), config.clone());
                tls.insert(ae_title.clone(), config);
            }
            let devices = devices.with_tls(tls);
            partitions.push(ArchivePartition {
                partition: Partition {
                    id,
                    ae_title: partition.spec.ae_title.clone(),
                    folder: partition.spec.folder.clone(),
                    duplicate_policy: partition.spec.duplicate_policy,
                },
                settings: partition.clone(),
                devices,
            });
        }
        let device_tls = Arc::new(device_tls);
        // What a crash left of the group commit's open batches: a row
        // durable before its file was whole goes (it was never acknowledged).
        {
            let filesystems: Vec<_> = index
                .filesystems()?
                .into_iter()
                .filter(|f| filesystem_states.refusal(f.id).is_none())
                .collect();
            let known: Vec<Partition> = partitions.iter().map(|p| p.partition.clone()).collect();
            crate::services::journal::recover(
                index.as_ref(),
                storage.as_ref(),
                &Studies::new(database.clone(), storage.clone()),
                &known,
                &filesystems,
            );
        }
        let auditor = match &self.settings.audit {
            Some(settings) => Auditor::start(settings.clone(), database.clone())?,
            None => Auditor::disabled(),
        };
        let placement = Arc::new(Tiered {
            min_free_bytes: self.settings.min_free_bytes,
            states: filesystem_states.clone(),
        });
        let hsm = Hsm::new(
            self.settings.archive.root.clone().map(ArchiveRoot::new),
            placement.clone(),
            self.settings.archive.max_concurrent_restores,
        )
        .in_index(database.clone());
        // The engine's handle, once a server starts one: StudyProcess
        // items are woken and restores run through it.
        let study_process_wake = Arc::new(OnceLock::new());
        let restorer = Restorer::new(
            Studies::new(database.clone(), storage.clone())
                .with_auditor(auditor.clone())
                .with_hsm(hsm.clone()),
            study_process_wake.clone(),
            self.settings.archive.restore_wait,
        );
        let retrieve = Retrieve::new(index.clone(), query.clone(), storage.clone())
            .recording_access(database.clone())
            .restoring(restorer.clone());
        let mut processors = match self.processors {
            Some(processors) => processors,
            None => {
                let mut registry = Registry::new();
                let deps = BuiltinDeps {
                    studies: Studies::new(database.clone(), storage.clone())
                        .with_auditor(auditor.clone())
                        .with_device_tls(device_tls.clone())
                        .with_hsm(hsm.clone()),
                    db: database.clone(),
                    partitions: partitions.iter().map(|p| p.partition.clone()).collect(),
                    rules: self.rules.clone(),
                };
                processors::register_builtin(
                    &mut registry,
                    deps,
                    self.settings.workqueue.study_process_delay,
                );
                registry
            }
        };
        for (kind, properties, processor) in self.extra {
            processors.register_shared(kind, properties, processor);
        }
        // The operator's `[workqueue.kinds.*]`, on every kind that runs.
        self.settings
            .workqueue
            .apply_kind_overrides(&mut processors)?;
        let ingest = Ingest::with_placement(
            index.clone(),
            storage.clone(),
            placement,
            // Only when something runs StudyProcess items.
            processors
                .properties(&crate::model::work::WorkKind::STUDY_PROCESS)
                .map(|properties| StudyProcessHook {
                    delay: self.settings.workqueue.study_process_delay,
                    priority: properties.priority,
                    wake: study_process_wake.clone(),
                }),
        )?
        .with_limits(IngestLimits {
            max_instance_bytes: self.settings.max_instance_bytes,
            max_header_bytes: self.settings.max_header_bytes,
            min_free_bytes: self.settings.min_free_bytes,
        })
        .with_restorer(restorer);
        Ok(Archive {
            auditor,
            device_tls,
            database,
            retrieve,
            settings: self.settings,
            storage,
            ingest,
            partitions,
            processors,
            study_process_wake,
            filesystem_states,
            rules: self.rules,
            hsm,
        })
    }
}

/// A partition of an opened archive: identity, settings and devices.
#[derive(Debug, Clone)]
pub struct ArchivePartition {
    /// The partition as the services see it.
    pub partition: Partition,
    /// Its validated settings.
    pub settings: PartitionSettings,
    /// Its device registry.
    pub(crate) devices: Devices,
}

/// An opened archive: index, storage and services, not yet on the network.
///
/// Its parts are reached through methods, so that what an embedder holds
/// is the archive's interface, not its wiring.
#[derive(Debug)]
pub struct Archive {
    settings: Settings,
    /// The index; its query and work-queue sides are views of it.
    database: Arc<dyn Database>,
    retrieve: Retrieve,
    storage: Arc<dyn StorageBackend>,
    ingest: Ingest,
    /// The default (`[dicom]`) partition first.
    partitions: Vec<ArchivePartition>,
    processors: Registry,
    /// Where ingest finds the engine to wake for the StudyProcess items
    /// it schedules (set by [`Server::start_on`]).
    study_process_wake: Arc<OnceLock<WorkQueue>>,
    /// The audit trail (disabled unless `[audit]` enables it).
    auditor: Auditor,
    /// Devices reached over TLS: (partition, AE title) → TLS.
    device_tls: Arc<HashMap<(PartitionId, String), ClientTls>>,
    /// What placement knows of each filesystem (markers, bytes held),
    /// refreshed by the server's [`crate::tiering::Monitor`].
    filesystem_states: Arc<FilesystemStates>,
    /// The rules StudyProcess applies (for the admin API's dry run).
    rules: Option<Arc<RuleSet>>,
    /// The HSM archive's root, restore placement and limit.
    hsm: Hsm,
}

impl Archive {
    /// Opens the archive the settings describe with the default backends.
    pub fn open(settings: Settings) -> Result<Archive, Error> {
        ServerBuilder::new(settings).open()
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The partitions, the default (`[dicom]`) one first.
    pub fn partitions(&self) -> &[ArchivePartition] {
        &self.partitions
    }

    /// The default partition.
    pub fn default_partition(&self) -> &ArchivePartition {
        &self.partitions[0]
    }

    /// The partition answering to `ae_title`.
    pub fn partition(&self, ae_title: &str) -> Option<&ArchivePartition> {
        self.partitions
            .iter()
            .find(|p| p.partition.ae_title.as_str() == ae_title.trim())
    }

    /// The index (the database seam), for reads an operator or embedder
    /// makes beside the services.
    pub fn index(&self) -> &Arc<dyn Database> {
        &self.database
    }

    /// The storage backend (the file seam).
    pub fn storage(&self) -> &Arc<dyn StorageBackend> {
        &self.storage
    }

    /// The study operations (delete, edit, reprocess, send, check) run in
    /// this process, without the work queue's study locks; a running
    /// archive takes them through [`Archive::work_queue`] and
    /// [`crate::processors::StudyRequest`] instead.
    pub fn studies(&self) -> Studies {
        Studies::new(self.database.clone(), self.storage.clone())
            .with_auditor(self.auditor.clone())
            .with_device_tls(self.device_tls.clone())
            .with_hsm(self.hsm.clone())
    }

    /// The audit trail: where an embedder records events of its own.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// Records Application Activity (PS3.15 A.5.3.1): this process, as
    /// the partitions' AE titles, started or stopped.
    fn audit_activity(&self, type_code: crate::audit::event::Code) {
        if !self.auditor.is_enabled() {
            return;
        }
        let titles: Vec<&str> = self
            .partitions
            .iter()
            .map(|p| p.partition.ae_title.as_str())
            .collect();
        let application = Participant {
            user_id: format!("imageserver@{}", std::process::id()),
            alternative_user_id: Some(format!("AETITLES={}", titles.join(";"))),
            user_name: None,
            requestor: false,
            network_access_point: None,
            role: Some(Role::Application),
        };
        self.auditor.record(
            AuditEvent::new(
                EventKind::ApplicationActivity,
                Action::Execute,
                Outcome::Success,
            )
            .type_code(type_code)
            .participant(application),
        );
    }

    /// The reconcile queue: instances held because their patient identity
    /// conflicted with their study, and a person's decisions about them.
    pub fn reconcile(&self) -> Reconcile {
        Reconcile::new(self.studies(), self.ingest.clone())
    }

    /// Imports Part 10 files into a partition through ingest (the same
    /// checks and durability as a C-STORE); `on_file` sees each outcome.
    pub fn import_files(
        &self,
        partition: &Partition,
        files: &[PathBuf],
        on_file: &mut dyn FnMut(&std::path::Path, &FileOutcome),
    ) -> ImportSummary {
        import::import_files(&self.ingest, partition, files, on_file)
    }

    /// A work queue handle without an engine (operator commands): items
    /// enqueued through it run on whichever engine shares the database.
    pub fn work_queue(&self) -> WorkQueue {
        WorkQueue::detached(self.database.clone(), self.processors.clone())
    }

    /// The work item kinds this archive runs.
    pub fn processors(&self) -> &Registry {
        &self.processors
    }

    /// The operator's use cases (what the admin API and the CLI ask):
    /// devices, filesystems, rules, work queue, studies, audit, nodes.
    pub fn admin(&self) -> crate::services::admin::Admin {
        crate::services::admin::Admin::new(crate::services::admin::AdminParts {
            index: self.database.clone(),
            storage: self.storage.clone(),
            partitions: self
                .partitions
                .iter()
                .map(|p| (p.partition.clone(), p.devices.clone()))
                .collect(),
            work_queue: self.work_queue(),
            rules: self.rules.clone(),
            dead_after: self.settings.node.dead_after,
        })
    }

    /// The scheduled services (`[services]`), enqueuing through `queue`:
    /// what a server's scheduler runs and `imageserver service run` names.
    pub fn scheduled_services(&self, queue: WorkQueue) -> Vec<Arc<dyn ScheduledService>> {
        let settings = &self.settings;
        let partitions: Vec<Partition> = self
            .partitions
            .iter()
            .map(|p| p.partition.clone())
            .collect();
        let mut services: Vec<Arc<dyn ScheduledService>> = vec![
            Arc::new(WatermarkCheck {
                db: self.database.clone(),
                storage: self.storage.clone(),
                watermarks: crate::tiering::Watermarks {
                    db: self.database.clone(),
                    queue: queue.clone(),
                    batch: settings.migration_batch,
                    stuck: Default::default(),
                },
                interval: Some(settings.filesystem_refresh),
            }),
            Arc::new(ArchiveScan {
                db: self.database.clone(),
                queue: queue.clone(),
                partitions: partitions.clone(),
                settings: settings.archive.clone(),
                interval: settings.services.archive_scan,
            }),
            Arc::new(IntegrityScan {
                db: self.database.clone(),
                studies: self.studies(),
                queue: queue.clone(),
                partitions: partitions.clone(),
                digest_studies: settings.services.integrity_digest_studies,
                settle: settings.services.integrity_settle,
                interval: settings.services.integrity_scan,
                cursor: Default::default(),
            }),
        ];
        if let Some(folder) = &settings.services.import_folder {
            services.push(Arc::new(FolderImport {
                folder: folder.clone(),
                ingest: self.ingest.clone(),
                partitions,
                interval: settings.services.folder_import,
            }));
        }
        services
    }
}

/// Descriptors kept free for everything but connections: index
/// connections, files being written and read, the engine's sends.
const DESCRIPTOR_RESERVE: u64 = 512;

/// Raises the soft descriptor limit to the hard one and says so when the
/// listeners' bounds (waiting connections and associations, per listener)
/// could still exhaust it: a flood then fails accepts, not stores.
fn check_descriptor_budget(settings: &Settings, listeners: usize) {
    let per_listener = (settings.max_pending_associations + settings.max_associations) as u64;
    // An association may hold a second socket (C-MOVE sub-operations).
    let needed =
        listeners as u64 * (per_listener + settings.max_associations as u64) + DESCRIPTOR_RESERVE;
    match crate::dicom::assoc::raise_descriptor_limit() {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what the connection bounds may use: \
             lower max_pending_associations / max_associations or raise the limit"
        ),
        Ok(limit) => tracing::debug!(limit, needed, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}

/// A partition's listening sockets (at least one).
#[derive(Debug)]
pub struct PartitionListeners {
    /// The plain DICOM listener.
    pub plain: Option<TcpListener>,
    /// The TLS listener (the partition's `tls` must be configured).
    pub tls: Option<TcpListener>,
}

/// A running server: the archive plus one DICOM acceptor per partition.
#[derive(Debug)]
pub struct Server {
    archive: Archive,
    /// Each partition's first listener: plain, or TLS when TLS only.
    acceptors: Vec<Acceptor>,
    /// TLS listeners beside a plain one.
    tls_acceptors: Vec<Acceptor>,
    /// The WorkQueue engine (None with `[workqueue] threads = 0`).
    engine: Option<Engine>,
    /// This process's row in the cluster's node table, and its heartbeat.
    node: Node,
    /// The HTTP server (`[http]`), once started.
    #[cfg(feature = "web")]
    web: Option<crate::web::WebServer>,
    /// The metrics both front-ends update.
    #[cfg(feature = "web")]
    metrics: Arc<crate::web::Metrics>,
    /// Re-reads the filesystems (rows, markers, usage) while it runs.
    filesystems: Option<crate::tiering::Monitor>,
    /// Runs the scheduled services this node holds the lease of.
    scheduler: Option<crate::scheduler::Scheduler>,
}

impl Server {
    /// Binds each partition's port on the configured address and starts
    /// accepting associations.
    pub fn start(archive: Archive) -> Result<Server, Error> {
        let mut listeners = Vec::new();
        let bind = |port: u16| {
            let address = format!("{}:{}", archive.settings.bind, port);
            TcpListener::bind(&address).map_err(|source| Error::Bind {
                address: address.clone(),
                source,
            })
        };
        for partition in &archive.partitions {
            let tls = partition.settings.tls.as_ref();
            listeners.push(PartitionListeners {
                plain: match tls {
                    Some(tls) if tls.tls_only => None,
                    _ => Some(bind(partition.settings.spec.port)?),
                },
                tls: tls.map(|tls| bind(tls.port)).transpose()?,
            });
        }
        #[cfg(feature = "web")]
        let http =
            match &archive.settings.http {
                http if http.enabled => Some(TcpListener::bind(http.address).map_err(
                    |source| Error::Bind {
                        address: http.address.to_string(),
                        source,
                    },
                )?),
                _ => None,
            };
        #[allow(unused_mut)]
        let mut server = Server::start_with(archive, listeners)?;
        #[cfg(feature = "web")]
        if let Some(listener) = http {
            server.start_http_on(listener)?;
        }
        Ok(server)
    }

    /// Starts the HTTP server (DICOMweb for the default partition,
    /// metrics) on a listener the caller bound.
    #[cfg(feature = "web")]
    pub fn start_http_on(&mut self, listener: TcpListener) -> Result<(), Error> {
        let archive = &self.archive;
        let partition = archive.default_partition();
        let services = crate::web::WebServices {
            find: Find::new(archive.database.clone()),
            retrieve: archive.retrieve.clone(),
            ingest: archive.ingest.clone(),
            studies: archive.studies(),
            partition: partition.partition.clone(),
            pn_case_insensitive: partition.settings.spec.pn_case_insensitive,
            max_query_results: partition.settings.max_query_results,
            max_upload_bytes: archive.settings.http.max_upload_bytes,
            metrics: self.metrics.clone(),
            admin: archive.admin(),
            access: Arc::new(crate::web::auth::Access::new(&archive.settings.http)?),
            auditor: archive.auditor().clone(),
        };
        let web = crate::web::WebServer::start(listener, services, &archive.settings.http)?;
        self.web = Some(web);
        Ok(())
    }

    /// Where the HTTP server listens, when it runs.
    #[cfg(feature = "web")]
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().map(crate::web::WebServer::local_addr)
    }

    /// The metrics both front-ends update (exposed at `/metrics`).
    #[cfg(feature = "web")]
    pub fn metrics(&self) -> &Arc<crate::web::Metrics> {
        &self.metrics
    }

    /// Starts accepting on listeners the caller bound, one per partition in
    /// order (tests bind port 0); plain only.
    pub fn start_on(archive: Archive, listeners: Vec<TcpListener>) -> Result<Server, Error> {
        let listeners = listeners
            .into_iter()
            .map(|plain| PartitionListeners {
                plain: Some(plain),
                tls: None,
            })
            .collect();
        Server::start_with(archive, listeners)
    }

    /// Starts accepting on each partition's listeners, bound by the caller,
    /// in partition order.
    pub fn start_with(
        archive: Archive,
        listeners: Vec<PartitionListeners>,
    ) -> Result<Server, Error> {
        let settings = &archive.settings;
        let processor_id = workqueue::default_processor_id();
        let engine = match settings.workqueue.engine.threads {
            0 => None,
            _ => Some(Engine::start(
                archive.database.clone(),
                archive.processors.clone(),
                EngineConfig {
                    processor_id: processor_id.clone(),
                    ..settings.workqueue.engine.clone()
                },
            )?),
        };
        if let Some(engine) = &engine {
            let _ = archive.study_process_wake.set(engine.handle());
        }
        check_descriptor_budget(settings, archive.partitions.len());
        #[cfg(feature = "web")]
        let metrics = Arc::new(crate::web::Metrics::new());
        #[cfg(feature = "web")]
        let observer: Option<Arc<dyn crate::scp::ScpObserver>> = Some(metrics.clone());
        #[cfg(not(feature = "web"))]
        let observer: Option<Arc<dyn crate::scp::ScpObserver>> = None;
        let refreshed = archive.ingest.clone();
        let filesystems = crate::tiering::Monitor::start(
            archive.database.clone(),
            archive.storage.clone(),
            archive.filesystem_states.clone(),
            settings.filesystem_refresh,
            // The watermark service runs under the scheduler (one node).
            None,
            Box::new(move || {
                if let Err(e) = refreshed.refresh_filesystems() {
                    tracing::warn!(error = %crate::model::error_chain(&e), "cannot re-read the filesystems");
                }
            }),
        )
        .map_err(|source| Error::Thread {
            name: "filesystems",
            source,
        })?;
        let mut acceptors = Vec::new();
        let mut tls_acceptors = Vec::new();
        for (partition, listeners) in archive.partitions.iter().zip(listeners) {
            let config = AcceptorConfig {
                ae_title: partition.partition.ae_title.as_str().to_string(),
                check_called_ae: settings.check_called_ae,
                max_associations: settings.max_associations,
                max_pending: settings.max_pending_associations,
                max_pending_per_address: settings.max_pending_per_address,
                max_pdu_length: settings.max_pdu_length,
                artim_timeout: settings.artim_timeout,
                idle_timeout: settings.idle_timeout,
                extra_sop_classes: settings.private_sop_classes.clone(),
            };
            let dispatcher = Dispatcher {
                ingest: archive.ingest.clone(),
                find: Find::new(archive.database.clone()),
                retrieve: archive.retrieve.clone(),
                devices: partition.devices.clone(),
                partition: partition.partition.clone(),
                options: ScpOptions {
                    pn_case_insensitive: partition.settings.spec.pn_case_insensitive,
                    max_query_results: partition.settings.max_query_results,
                    max_echoed_unknown_keys: settings.max_echoed_unknown_keys,
                },
                observer: observer.clone(),
                auditor: archive.auditor.clone(),
            };
            let policy = Arc::new(DevicePolicy {
                devices: partition.devices.clone(),
                observer: observer.clone(),
                auditor: archive.auditor.clone(),
                partition: partition.partition.clone(),
                users: settings.users.clone(),
                require_user_identity: partition.settings.require_user_identity,
            });
            let dispatcher = Arc::new(dispatcher);
            let start = |listener: TcpListener, tls: Option<Arc<dyn ServerTls>>| {
                let address = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                Acceptor::start(
                    listener,
                    config.clone(),
                    tls,
                    policy.clone(),
                    dispatcher.clone(),
                )
                .map_err(|source| Error::Bind { address, source })
            };
            let tls_source = match &partition.settings.tls {
                Some(tls) => {
                    Some(Arc::new(ReloadingServer::new(tls.files.clone())?) as Arc<dyn ServerTls>)
                }
                None => None,
            };
            match (listeners.plain, listeners.tls, tls_source) {
                (Some(plain), tls, source) => {
                    acceptors.push(start(plain, None)?);
                    if let (Some(tls), Some(source)) = (tls, source) {
                        tls_acceptors.push(start(tls, Some(source))?);
                    }
                }
                (None, Some(tls), Some(source)) => acceptors.push(start(tls, Some(source))?),
                _ => {
                    return Err(Error::Bind {
                        address: partition.partition.ae_title.as_str().to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "a partition needs a plain or a TLS listener",
                        ),
                    })
                }
            }
        }
        #[cfg(feature = "web")]
        let metrics = {
            let probes: Vec<_> = acceptors
                .iter()
                .chain(&tls_acceptors)
                .map(Acceptor::open_associations_probe)
                .collect();
            metrics.set_open_associations_source(move || probes.iter().map(|p| p() as u64).sum());
            let queue = match &engine {
                Some(engine) => engine.handle(),
                None => archive.work_queue(),
            };
            metrics.set_work_items_source(move || work_item_counts(&queue));
            metrics
        };
        let node = start_node(&archive, &acceptors, engine.as_ref().map(|_| processor_id))?;
        let scheduler = if settings.services.enabled {
            let queue = match &engine {
                Some(engine) => engine.handle(),
                None => archive.work_queue(),
            };
            Some(
                crate::scheduler::Scheduler::start(
                    archive.scheduled_services(queue),
                    archive.database.clone(),
                    node.id().to_string(),
                )
                .map_err(|source| Error::Thread {
                    name: "scheduler",
                    source,
                })?,
            )
        } else {
            None
        };
        archive.audit_activity(types::APPLICATION_START);
        Ok(Server {
            archive,
            acceptors,
            tls_acceptors,
            engine,
            node,
            #[cfg(feature = "web")]
            web: None,
            #[cfg(feature = "web")]
            metrics,
            filesystems: Some(filesystems),
            scheduler,
        })
    }

    /// The address of the default partition's listener.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.acceptors[0].local_addr()
    }

    /// The TLS listener addresses beside plain ones, in partition order.
    pub fn tls_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.tls_acceptors
            .iter()
            .map(Acceptor::local_addr)
            .collect()
    }

    /// The listener addresses, one per partition in order.
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.acceptors.iter().map(Acceptor::local_addr).collect()
    }

    /// The work queue: enqueues wake this server's engine at once.
    pub fn work_queue(&self) -> WorkQueue {
        match &self.engine {
            Some(engine) => engine.handle(),
            None => self.archive.work_queue(),
        }
    }

    /// The archive behind the server.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// This process as a node of the cluster.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Whether an operator asked this node to drain
    /// (`imageserver nodes drain`): the caller then calls [`Server::drain`].
    pub fn drain_requested(&self) -> bool {
        self.node.drain_requested()
    }

    /// Leaves the cluster without failing an association (`[node]`):
    /// marks the node draining; for `drain_grace` refuses the balancer's
    /// health check while still accepting, so the balancer takes the node
    /// out of its pool; then closes the listeners and lets the open
    /// associations end by themselves and the running work items finish
    /// (at most `drain_timeout`), gives the work items' leases back, and
    /// shuts down as [`Server::shutdown`] does with `grace`.
    pub fn drain(self, grace: Duration) {
        let settings = self.archive.settings.node.clone();
        self.node.set_state(crate::db::nodes::NodeState::Draining);
        tracing::info!(
            node = %self.node.id(),
            grace_secs = settings.drain_grace.as_secs(),
            "draining: health checks refused, associations still accepted"
        );
        for acceptor in self.acceptors.iter().chain(&self.tls_acceptors) {
            acceptor.refuse_caller(settings.health_check_ae.as_deref());
        }
        std::thread::sleep(settings.drain_grace);
        tracing::info!(
            timeout_secs = settings.drain_timeout.as_secs(),
            "draining: listeners closed; waiting for open associations and work items"
        );
        for acceptor in self.acceptors.iter().chain(&self.tls_acceptors) {
            acceptor.stop_listening();
        }
        let timeout = settings.drain_timeout;
        std::thread::scope(|scope| {
            for acceptor in self.acceptors.iter().chain(&self.tls_acceptors) {
                scope.spawn(move || {
                    if !acceptor.wait_idle(timeout) && !timeout.is_zero() {
                        tracing::warn!(
                            open = acceptor.open_associations(),
                            "drain timeout: associations still open are cut off"
                        );
                    }
                });
            }
        });
        self.shutdown(grace.max(timeout));
    }

    /// Stops accepting and claiming work, lets messages and work items in
    /// flight finish (at most `grace`), then commits what is queued, marks
    /// the node stopped and returns.
    pub fn shutdown(mut self, grace: Duration) {
        drop(self.scheduler.take());
        drop(self.filesystems.take());
        #[cfg(feature = "web")]
        let web = self.web;
        std::thread::scope(|scope| {
            #[cfg(feature = "web")]
            if let Some(web) = web {
                scope.spawn(move || web.shutdown(grace));
            }
            for acceptor in self.acceptors.into_iter().chain(self.tls_acceptors) {
                scope.spawn(move || acceptor.shutdown(grace));
            }
            if let Some(engine) = self.engine {
                scope.spawn(move || engine.shutdown(grace));
            }
        });
        self.archive.audit_activity(types::APPLICATION_STOP);
        // Dropping the archive drops the last ingest handle: the group
        // committer drains its queue and its thread is joined; the last
        // auditor handle too: the audit thread sends what it can (a few
        // seconds at most), leaves the rest spooled, and is joined.
        drop(self.archive);
        self.node.stop();
    }
}

/// Registers this process as a node and starts its heartbeat; when it sees
/// another node dead, the journals of open batches and the temporary files
/// that node left are handled (journals only of a process of this host: a
/// process elsewhere cannot be told dead by its PID).
fn start_node(
    archive: &Archive,
    acceptors: &[Acceptor],
    processor_id: Option<String>,
) -> Result<Node, Error> {
    let settings = &archive.settings.node;
    let addresses: Vec<String> = acceptors
        .iter()
        .map(|a| a.local_addr().to_string())
        .collect();
    let id = match &settings.id {
        Some(id) => id.clone(),
        None => node::default_node_id(&acceptors[0].local_addr()),
    };
    let registration = crate::db::nodes::NodeRegistration {
        id,
        host: node::host_name(),
        addresses,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        processor_id,
    };
    let index = archive.database.clone();
    let storage = archive.storage.clone();
    let studies = Studies::new(archive.database.clone(), archive.storage.clone());
    let known: Vec<Partition> = archive
        .partitions
        .iter()
        .map(|p| p.partition.clone())
        .collect();
    let stale_after = (archive.settings.idle_timeout * 4).max(MIN_TEMPORARY_AGE);
    let on_dead = Box::new(move |dead: &crate::db::nodes::NodeRecord| {
        let Ok(filesystems) = index.filesystems() else {
            return;
        };
        // The group commit's open batches of a dead process of this host,
        // as at start-up: a row durable before its file was whole goes.
        crate::services::journal::recover(
            index.as_ref(),
            storage.as_ref(),
            &studies,
            &known,
            &filesystems,
        );
        for filesystem in filesystems {
            match storage.sweep_temporary(&filesystem, stale_after) {
                Ok(report) => tracing::info!(
                    node = %dead.registration.id,
                    filesystem = %filesystem.spec.path.display(),
                    removed = report.removed,
                    kept = report.kept,
                    "temporary files swept after a node died"
                ),
                Err(e) => tracing::warn!(
                    filesystem = %filesystem.spec.path.display(),
                    error = %crate::model::error_chain(&e),
                    "cannot sweep temporary files"
                ),
            }
        }
    });
    let devices: Vec<Devices> = archive
        .partitions
        .iter()
        .map(|p| p.devices.clone())
        .collect();
    let on_devices_changed = Box::new(move || {
        for partition in &devices {
            if let Err(e) = partition.reload() {
                tracing::warn!(error = %crate::model::error_chain(&e), "cannot reload the devices");
            }
        }
    });
    Ok(Node::start(
        archive.database.clone(),
        registration,
        settings,
        node::NodeHooks {
            on_dead,
            on_devices_changed,
        },
    )?)
}

/// Work items not completed, counted by kind and state (a metrics scrape:
/// at most [`WORK_ITEMS_SCRAPED`] items read).
#[cfg(feature = "web")]
fn work_item_counts(queue: &WorkQueue) -> Vec<(String, String, u64)> {
    use crate::model::work::{WorkFilter, WorkStatus};
    let filter = WorkFilter {
        statuses: WorkStatus::ALL
            .into_iter()
            .filter(|s| *s != WorkStatus::Completed)
            .collect(),
        limit: Some(WORK_ITEMS_SCRAPED),
        ..WorkFilter::default()
    };
    let items = match queue.list(&filter) {
        Ok(items) => items,
        Err(error) => {
            tracing::warn!(error = %crate::model::error_chain(&error), "cannot count work items for metrics");
            return Vec::new();
        }
    };
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for item in items {
        *counts
            .entry((
                item.kind.as_str().to_string(),
                item.status.as_str().to_string(),
            ))
            .or_default() += 1;
    }
    counts.into_iter().map(|((k, s), n)| (k, s, n)).collect()
}

/// Most work items a metrics scrape reads.
#[cfg(feature = "web")]
const WORK_ITEMS_SCRAPED: usize = 100_000;
