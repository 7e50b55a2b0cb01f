//! The composition root: the only module that names concrete backends.
//!
//! [`Archive::open`] opens the index and storage a configuration describes
//! and registers its partition, filesystems and devices: operator commands
//! (import) use it alone. [`Server::start`] adds the DICOM acceptor.
//! Embedders that bring their own backends use [`ServerBuilder`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Settings};
use crate::db::sqlite::SqliteIndex;
use crate::db::{self, IndexStore};
use crate::dicom::assoc::{Acceptor, AcceptorConfig};
use crate::dicom::scp::Dispatcher;
use crate::services::{Ingest, Partition};
use crate::storage::fs::FsStorage;
use crate::storage::StorageBackend;

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

/// Opens the index a URL names: `sqlite:PATH` (or a bare path).
pub fn open_index(url: &str) -> Result<Arc<dyn IndexStore>, Error> {
    let path = if let Some(path) = url.strip_prefix("sqlite:") {
        PathBuf::from(path.trim_start_matches("//"))
    } else if url.contains("://") {
        return Err(Error::UnsupportedDb(url.to_string()));
    } else {
        PathBuf::from(url)
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(Arc::new(SqliteIndex::open(&path)?))
}

/// Assembles an archive from parts; defaults to the backends the settings name.
#[derive(Debug)]
pub struct ServerBuilder {
    settings: Settings,
    index: Option<Arc<dyn IndexStore>>,
    storage: Option<Arc<dyn StorageBackend>>,
}

impl ServerBuilder {
    /// Starts from validated settings.
    pub fn new(settings: Settings) -> ServerBuilder {
        ServerBuilder {
            settings,
            index: None,
            storage: None,
        }
    }

    /// Uses this index instead of opening `settings.db_url`.
    pub fn index(mut self, index: Arc<dyn IndexStore>) -> ServerBuilder {
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
        let index = match self.index {
            Some(index) => index,
            None => open_index(&self.settings.db_url)?,
        };
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(FsStorage::new()) as Arc<dyn StorageBackend>);
        for fs in &self.settings.filesystems {
            std::fs::create_dir_all(&fs.path).map_err(|source| Error::CreateDir {
                path: fs.path.clone(),
                source,
            })?;
            index.ensure_filesystem(fs)?;
        }
        let partition_id = index.ensure_partition(&self.settings.partition)?;
        for device in &self.settings.devices {
            index.ensure_device(partition_id, device)?;
        }
        let ingest = Ingest::new(index.clone(), storage.clone(), self.settings.min_free_bytes)?;
        Ok(Archive {
            partition: Partition {
                id: partition_id,
                ae_title: self.settings.partition.ae_title.clone(),
                folder: self.settings.partition.folder.clone(),
            },
            settings: self.settings,
            index,
            storage,
            ingest,
        })
    }
}

/// An opened archive: index, storage and services, not yet on the network.
#[derive(Debug)]
pub struct Archive {
    /// The settings it was opened with.
    pub settings: Settings,
    /// The index.
    pub index: Arc<dyn IndexStore>,
    /// The storage backend.
    pub storage: Arc<dyn StorageBackend>,
    /// The ingest service.
    pub ingest: Ingest,
    /// The partition of the settings.
    pub partition: Partition,
}

impl Archive {
    /// Opens the archive the settings describe with the default backends.
    pub fn open(settings: Settings) -> Result<Archive, Error> {
        ServerBuilder::new(settings).open()
    }
}

/// A running server: the archive plus its DICOM acceptor.
#[derive(Debug)]
pub struct Server {
    archive: Archive,
    acceptor: Acceptor,
}

impl Server {
    /// Binds the configured address and starts accepting associations.
    pub fn start(archive: Archive) -> Result<Server, Error> {
        let address = format!("{}:{}", archive.settings.bind, archive.settings.port);
        let listener = TcpListener::bind(&address).map_err(|source| Error::Bind {
            address: address.clone(),
            source,
        })?;
        Server::start_on(archive, listener)
    }

    /// Starts accepting on a listener the caller bound (tests bind port 0).
    pub fn start_on(archive: Archive, listener: TcpListener) -> Result<Server, Error> {
        let settings = &archive.settings;
        let config = AcceptorConfig {
            ae_title: settings.partition.ae_title.as_str().to_string(),
            check_called_ae: settings.check_called_ae,
            max_associations: settings.max_associations,
            max_pdu_length: settings.max_pdu_length,
            artim_timeout: settings.artim_timeout,
            idle_timeout: settings.idle_timeout,
            extra_sop_classes: settings.private_sop_classes.clone(),
        };
        let dispatcher = Dispatcher {
            ingest: archive.ingest.clone(),
            partition: archive.partition.clone(),
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let acceptor = Acceptor::start(listener, config, dispatcher)
            .map_err(|source| Error::Bind { address, source })?;
        Ok(Server { archive, acceptor })
    }

    /// The address associations are accepted on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.acceptor.local_addr()
    }

    /// The archive behind the server.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Stops accepting, lets messages in flight finish (at most `grace`),
    /// then commits what is queued and returns.
    pub fn shutdown(self, grace: Duration) {
        self.acceptor.shutdown(grace);
        // Dropping the archive drops the last ingest handle: the group
        // committer drains its queue and its thread is joined.
        drop(self.archive);
    }
}
