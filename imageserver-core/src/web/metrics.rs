//! Prometheus metrics (prometheus-client), exposed in the text format at
//! `GET /metrics`.
//!
//! Counters and histograms move as traffic is served: the HTTP front-end
//! counts its requests and uploads, the DICOM front-end its associations,
//! stores and C-FINDs (through the same [`Metrics`], which the server
//! hands to both). Gauges that describe state (associations open, work
//! items by kind and state) are read when scraped, from sources the
//! composition root sets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{blocking, Failure, Shared};

type Labels = Vec<(&'static str, String)>;

/// What a scrape reads: state, not events.
type Source<T> = Box<dyn Fn() -> T + Send + Sync>;

#[derive(Default)]
struct Sources {
    open_associations: Option<Source<u64>>,
    /// (kind, state, count).
    work_items: Option<Source<Vec<(String, String, u64)>>>,
}

/// The archive's metrics. Shared by both front-ends; cheap to update.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    instances_stored: Family<Labels, Counter>,
    store_seconds: Family<Labels, Histogram>,
    find_seconds: Family<Labels, Histogram>,
    associations: Counter,
    associations_refused: Counter,
    associations_open: Gauge,
    work_items: Family<Labels, Gauge>,
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry with every metric of the archive.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imageserver");
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let instances_stored = Family::<Labels, Counter>::default();
        registry.register(
            "instances_stored",
            "Instances received, by front-end (dicom, stow) and outcome",
            instances_stored.clone(),
        );
        let store_seconds = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "store_seconds",
            "Time from the last byte of an instance to its durable, indexed answer",
            store_seconds.clone(),
        );
        let find_seconds = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "find_seconds",
            "Time to answer a query (C-FIND or QIDO-RS), by front-end",
            find_seconds.clone(),
        );
        let associations = Counter::default();
        registry.register(
            "associations",
            "DICOM associations accepted",
            associations.clone(),
        );
        let associations_refused = Counter::default();
        registry.register(
            "associations_refused",
            "DICOM associations rejected or refused",
            associations_refused.clone(),
        );
        let associations_open = Gauge::default();
        registry.register(
            "associations_open",
            "DICOM associations open now",
            associations_open.clone(),
        );
        let work_items = Family::<Labels, Gauge>::default();
        registry.register(
            "work_items",
            "Work items not completed, by kind and state",
            work_items.clone(),
        );
        Metrics {
            registry,
            http_requests,
            instances_stored,
            store_seconds,
            find_seconds,
            associations,
            associations_refused,
            associations_open,
            work_items,
            sources: Mutex::new(Sources::default()),
        }
    }

    /// One HTTP request answered.
    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// One instance received by `frontend` (`dicom`, `stow`): its outcome
    /// (`inserted`, `duplicate`, …, or a failure's name) and, when it was
    /// stored, how long the store took.
    pub fn instance_stored(&self, frontend: &'static str, outcome: &str, took: Option<Duration>) {
        self.instances_stored
            .get_or_create(&vec![
                ("frontend", frontend.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        if let Some(took) = took {
            self.store_seconds
                .get_or_create(&vec![("frontend", frontend.to_string())])
                .observe(took.as_secs_f64());
        }
    }

    /// One query answered by `frontend` (`dicom`, `qido`).
    pub fn query_answered(&self, frontend: &'static str, took: Duration) {
        self.find_seconds
            .get_or_create(&vec![("frontend", frontend.to_string())])
            .observe(took.as_secs_f64());
    }

    /// An association accepted (`true`) or refused (`false`).
    pub fn association(&self, accepted: bool) {
        if accepted {
            self.associations.inc();
        } else {
            self.associations_refused.inc();
        }
    }

    /// Where a scrape reads the number of associations open.
    pub fn set_open_associations_source(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        self.lock().open_associations = Some(Box::new(source));
    }

    /// Where a scrape reads the work items not completed, as (kind, state,
    /// count).
    pub fn set_work_items_source(
        &self,
        source: impl Fn() -> Vec<(String, String, u64)> + Send + Sync + 'static,
    ) {
        self.lock().work_items = Some(Box::new(source));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The text exposition, after reading the state gauges (blocking: the
    /// work items source reads the index).
    pub fn render(&self) -> String {
        {
            let sources = self.lock();
            if let Some(open) = &sources.open_associations {
                self.associations_open.set(open() as i64);
            }
            if let Some(work) = &sources.work_items {
                self.work_items.clear();
                for (kind, state, count) in work() {
                    self.work_items
                        .get_or_create(&vec![("kind", kind), ("state", state)])
                        .set(count as i64);
                }
            }
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl crate::scp::ScpObserver for Metrics {
    fn association(&self, accepted: bool) {
        Metrics::association(self, accepted);
    }

    fn stored(&self, outcome: &str, took: Option<Duration>) {
        self.instance_stored("dicom", outcome, took);
    }

    fn found(&self, took: Duration) {
        self.query_answered("dicom", took);
    }
}

/// `GET /metrics`.
pub(super) async fn scrape(State(services): State<Shared>) -> Result<impl IntoResponse, Failure> {
    let metrics: Arc<Metrics> = services.metrics.clone();
    let text = blocking(move || Ok(metrics.render())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
