//! The HTTP front-end: DICOMweb (PS3.18) under `/dicom-web` and Prometheus
//! metrics at `/metrics`, beside `scp` over the same services.
//!
//! It runs on a tokio runtime of its own (two workers) and speaks to the
//! services, which block, only through `spawn_blocking`: a handler never
//! blocks the executor. Like the DICOM handlers it never names the index
//! or a path: queries go through `services::find`, retrieves
//! through `services::retrieve`'s streams, uploads through
//! [`Ingest`], series metadata through [`Studies`].
//!
//! - `qido`: QIDO-RS searches (studies, series, instances, nested);
//! - `wado`: WADO-RS retrieve (instances as `multipart/related`,
//!   streamed from the stored files) and metadata;
//! - `rendered`: rendered and thumbnail resources (JPEG, PNG) of studies,
//!   series, instances and frames;
//! - `stow`: STOW-RS uploads through the durable ingest path;
//! - `multipart`: the `multipart/related` framing both directions use;
//! - [`metrics`]: the Prometheus registry and its text exposition;
//! - `api`: the admin API (JSON under `/api`, described by `openapi.json`);
//! - `pages`: the admin pages (server-rendered HTML at `/`);
//! - [`auth`]: users, sessions, CSRF and who may read DICOMweb;
//! - `keep_alive`: connections stay usable after answers given before a
//!   request's body was read (small bodies are read first);
//! - `viewer`: the OHIF viewer at `/viewer/` (`[http] viewer_dir`).
//!
//! The DICOMweb root serves the default partition (the `[dicom]` one).

mod api;
pub mod auth;
mod keep_alive;
pub mod metrics;
mod multipart;
mod pages;
mod qido;
mod rendered;
mod stow;
mod viewer;
mod wado;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;

use crate::config::HttpSettings;
use crate::model::error_chain;
use crate::services::find::Find;
use crate::services::retrieve::Retrieve;
use crate::services::studies::Studies;
use crate::services::{Ingest, Partition};

pub use metrics::Metrics;

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// Its runtime could not be built.
    #[error("cannot start the HTTP runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening socket could not be handed to the runtime.
    #[error("cannot listen for HTTP")]
    Listen(#[source] std::io::Error),
    /// A password could not be hashed, or no random key drawn.
    #[error("cannot hash a password or draw a random key: {0}")]
    Password(String),
}

/// What the HTTP handlers use: the services of the partition they serve.
#[derive(Debug, Clone)]
pub(crate) struct WebServices {
    /// Queries (QIDO-RS).
    pub find: Find,
    /// Instances and their bytes (WADO-RS).
    pub retrieve: Retrieve,
    /// Uploads (STOW-RS).
    pub ingest: Ingest,
    /// Series metadata.
    pub studies: Studies,
    /// The partition served.
    pub partition: Partition,
    /// PN values match case-insensitively (the partition's setting).
    pub pn_case_insensitive: bool,
    /// Most matches a search answers.
    pub max_query_results: u64,
    /// Most bytes a STOW-RS request may carry.
    pub max_upload_bytes: u64,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The operator's use cases (admin API and pages).
    pub admin: crate::services::admin::Admin,
    /// Who may do what (filled in by [`WebServer::start`]).
    pub access: Arc<auth::Access>,
    /// The ATNA trail admin changes and refusals are also sent to.
    pub auditor: crate::audit::Auditor,
}

type Shared = Arc<WebServices>;

/// An error answer: status and a one-line reason (logged, and sent as
/// text).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> Failure {
        Failure {
            status,
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, reason)
    }

    pub(crate) fn not_found(reason: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, reason)
    }

    /// A failure of ours (index, storage): 500, logged with its chain.
    pub(crate) fn internal(what: &str, error: &(dyn std::error::Error + 'static)) -> Failure {
        tracing::warn!(error = %error_chain(error), "{what}");
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, what.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(status = %self.status, reason = %self.reason, "HTTP request refused");
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.reason),
        )
            .into_response()
    }
}

/// Runs blocking service code off the executor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::internal("a request handler failed", &e))?
}

/// The routes.
fn router(services: Shared, settings: &HttpSettings) -> Router {
    let cors = Arc::new(settings.cors_origins.clone());
    let dicom_web = Router::new()
        .route("/studies", get(qido::studies).post(stow::store))
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
        .route(
            "/studies/{study}",
            get(wado::study).post(stow::store_in_study),
        )
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route("/studies/{study}/series/{series}", get(wado::series))
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}",
            get(wado::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            get(wado::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/bulk/{*path}",
            get(wado::bulk),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            get(wado::frames),
        )
        .route("/studies/{study}/rendered", get(rendered::study))
        .route("/studies/{study}/thumbnail", get(rendered::study_thumbnail))
        .route(
            "/studies/{study}/series/{series}/rendered",
            get(rendered::series),
        )
        .route(
            "/studies/{study}/series/{series}/thumbnail",
            get(rendered::series_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            get(rendered::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            get(rendered::instance_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            get(rendered::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
            get(rendered::frame_thumbnail),
        );
    let mut app = Router::new();
    if let Some(dist) = &settings.viewer_dir {
        app = app.merge(viewer::router(dist));
    }
    app.nest("/dicom-web", dicom_web)
        .route("/metrics", get(metrics::scrape))
        .route("/wado", get(wado::wado_uri))
        .nest("/api", api::router())
        .merge(pages::router())
        .fallback(|| async { Failure::not_found("no such resource") })
        .layer(middleware::from_fn_with_state(
            services.clone(),
            auth::guard,
        ))
        .layer(middleware::from_fn_with_state(services.clone(), observe))
        .layer(middleware::from_fn_with_state(cors, cross_origin))
        .layer(middleware::from_fn(keep_alive::read_small_bodies_first))
        .with_state(services)
}

/// Counts each request by route and status, and logs failures.
async fn observe(State(services): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    services
        .metrics
        .http_request(method.as_str(), &route, status.as_u16());
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "HTTP request failed");
    }
    response
}

/// CORS (configured origins): answers preflights and adds the headers.
async fn cross_origin(
    State(origins): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = origin.filter(|o| {
        origins
            .iter()
            .any(|allowed| allowed == "*" || allowed == o.trim_end_matches('/'))
    });
    let Some(origin) = allowed else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Accept, Content-Type, Authorization"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

/// The running HTTP server.
#[derive(Debug)]
pub struct WebServer {
    runtime: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl WebServer {
    /// Starts serving `services` on `listener` (already bound).
    pub(crate) fn start(
        listener: std::net::TcpListener,
        services: WebServices,
        settings: &HttpSettings,
    ) -> Result<WebServer, WebError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(64)
            .thread_name("http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(WebError::Runtime)?;
        listener.set_nonblocking(true).map_err(WebError::Listen)?;
        let local_addr = listener.local_addr().map_err(WebError::Listen)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(WebError::Listen)?
        };
        let app = router(Arc::new(services), settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = runtime.spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
            if let Err(error) = served {
                tracing::warn!(error = %error, "the HTTP server stopped");
            }
        });
        tracing::info!(address = %local_addr, viewer = settings.viewer_dir.is_some(), "HTTP server listening (DICOMweb at /dicom-web, admin pages at /, admin API at /api, the OHIF viewer at /viewer/ when configured)");
        Ok(WebServer {
            runtime,
            stop: Some(stop),
            serving,
            local_addr,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish (at most `grace`),
    /// then drops the rest.
    pub fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let serving = self.serving;
        let finished = self
            .runtime
            .block_on(async { tokio::time::timeout(grace, serving).await.is_ok() });
        if !finished {
            tracing::warn!("HTTP requests still running at shutdown were dropped");
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// A streamed body fed by blocking code: chunks sent into a small channel
/// (back-pressure: at most a few chunks in memory) by `produce`, which
/// runs on the blocking pool and stops when the client goes away.
pub(crate) fn streamed_body(
    produce: impl FnOnce(&mut dyn FnMut(bytes::Bytes) -> bool) -> Result<(), std::io::Error>
        + Send
        + 'static,
) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk: bytes::Bytes| sender.blocking_send(Ok(chunk)).is_ok();
        if let Err(error) = produce(&mut send) {
            tracing::warn!(error = %error_chain(&error), "a streamed HTTP response failed midway");
            let _ = sender.blocking_send(Err(error));
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Body::from_stream(stream)
}
