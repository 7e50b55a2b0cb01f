//! Devices: the remote AEs a partition knows, their permissions and limits,
//! and the registration of unknown callers when the partition allows it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::db::{self, IndexStore};
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
}

/// The verdict on a calling AE title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A known device (or an unknown one the partition accepts).
    Admit(Option<DeviceSpec>),
    /// Unknown, and the partition rejects unknown callers.
    Unknown,
}

/// One partition's device registry, cached in memory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: Arc<dyn IndexStore>,
    partition: PartitionId,
    accept_unknown: bool,
    known: RwLock<HashMap<String, DeviceSpec>>,
}

impl Devices {
    /// Loads a partition's devices from the index.
    pub fn load(
        index: Arc<dyn IndexStore>,
        partition: PartitionId,
        accept_unknown: bool,
    ) -> Result<Devices, db::Error> {
        let known = index
            .devices(partition)?
            .into_iter()
            .map(|d| (d.ae_title.as_str().to_string(), d))
            .collect();
        Ok(Devices {
            inner: Arc::new(Inner {
                index,
                partition,
                accept_unknown,
                known: RwLock::new(known),
            }),
        })
    }

    /// The device with this AE title, if known.
    pub fn get(&self, ae_title: &str) -> Option<DeviceSpec> {
        self.inner
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ae_title.trim())
            .cloned()
    }

    /// Whether a caller may associate.
    pub fn admit(&self, calling_ae: &str) -> Admission {
        match self.get(calling_ae) {
            Some(device) => Admission::Admit(Some(device)),
            None if self.inner.accept_unknown => Admission::Admit(None),
            None => Admission::Unknown,
        }
    }

    /// Whether `calling_ae` may perform `operation`. Unknown callers of a
    /// partition that accepts them may do everything (they are registered
    /// with every permission; an administrator narrows them).
    pub fn permits(&self, calling_ae: &str, operation: Operation) -> bool {
        match self.get(calling_ae) {
            Some(device) => match operation {
                Operation::Store => device.allow_store,
                Operation::Query => device.allow_query,
                Operation::Retrieve => device.allow_retrieve,
            },
            None => self.inner.accept_unknown,
        }
    }

    /// Registers an unknown caller seen at `host` (its port is unknown: 0),
    /// so an administrator can see and narrow it.
    pub fn register_unknown(&self, calling_ae: &str, host: &str) -> Result<(), db::Error> {
        let Ok(ae_title) = AeTitle::parse(calling_ae) else {
            return Ok(());
        };
        if self.get(ae_title.as_str()).is_some() {
            return Ok(());
        }
        let spec = DeviceSpec {
            ae_title,
            host: host.to_string(),
            port: 0,
            allow_store: true,
            allow_query: true,
            allow_retrieve: true,
            max_associations: 0,
        };
        self.inner
            .index
            .ensure_device(self.inner.partition, &spec)?;
        tracing::info!(calling_ae, host, "registered an unknown device");
        self.inner
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.ae_title.as_str().to_string(), spec);
        Ok(())
    }
}
