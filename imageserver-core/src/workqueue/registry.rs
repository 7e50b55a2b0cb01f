//! Which processor runs which kind: the embedding seam for new work types.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{KindProperties, Processor};
use crate::model::work::WorkKind;

/// The kinds an engine runs, each with its properties and processor.
/// Cheap to clone (processors are shared).
///
/// An embedding product adds its own kind with one call, without touching
/// the engine; registering a kind again replaces it, so a product can also
/// swap a built-in processor for its own. Items of kinds no engine has
/// registered stay queued.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<WorkKind, Registration>,
}

/// One registered kind.
#[derive(Clone)]
pub(super) struct Registration {
    pub(super) properties: KindProperties,
    pub(super) processor: Arc<dyn Processor>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.kinds.iter().map(|(k, r)| (k.as_str(), &r.properties)))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers (or replaces) `kind`.
    pub fn register(
        &mut self,
        kind: WorkKind,
        properties: KindProperties,
        processor: impl Processor + 'static,
    ) -> &mut Registry {
        self.register_shared(kind, properties, Arc::new(processor))
    }

    /// Registers (or replaces) `kind` with a shared processor.
    pub fn register_shared(
        &mut self,
        kind: WorkKind,
        properties: KindProperties,
        processor: Arc<dyn Processor>,
    ) -> &mut Registry {
        self.kinds.insert(
            kind,
            Registration {
                properties,
                processor,
            },
        );
        self
    }

    /// The properties of a registered kind.
    pub fn properties(&self, kind: &WorkKind) -> Option<&KindProperties> {
        self.kinds.get(kind).map(|r| &r.properties)
    }

    /// The properties of a registered kind, to change them (the
    /// configuration's per-kind overrides).
    pub fn properties_mut(&mut self, kind: &WorkKind) -> Option<&mut KindProperties> {
        self.kinds.get_mut(kind).map(|r| &mut r.properties)
    }

    /// The registered kinds, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &WorkKind> {
        self.kinds.keys()
    }

    /// True when no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    pub(super) fn get(&self, kind: &WorkKind) -> Option<&Registration> {
        self.kinds.get(kind)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&WorkKind, &Registration)> {
        self.kinds.iter()
    }
}
