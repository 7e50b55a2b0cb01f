//! `/viewer/`: a prebuilt OHIF viewer (`[http] viewer_dir`, `@ohif/app`'s
//! `dist/`) served by us, same origin as `/dicom-web`, so it needs no CORS.
//!
//! The package is built to live at the site's root (`PUBLIC_URL` `/`):
//! its `index.html` and webpack runtimes name `/...` paths. They are
//! rewritten as served (never on disk) to `/viewer/...`; `app-config.js`
//! is ours (one DICOMweb data source, this server's `/dicom-web`,
//! `routerBasename: '/viewer'`); any path under `/viewer/` that names no
//! file is `index.html` (the viewer's client-side routes).

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::{blocking, Failure};
use crate::services::static_files::StaticFiles;

/// Where the viewer is served.
const BASE: &str = "/viewer";
/// Webpack's public path as the package is built, and as we serve it.
const RUNTIME_PATH: (&str, &str) = (
    "__webpack_require__.p = \"/\";",
    "__webpack_require__.p = \"/viewer/\";",
);

/// The viewer's configuration: one DICOMweb data source, our root on the
/// page's own origin.
const APP_CONFIG: &str = r#"// Written by imageserver: the DICOMweb data source is this server.
window.config = {
  routerBasename: '/viewer',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'imageserver',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'imageserver',
      configuration: {
        friendlyName: 'imageserver',
        name: 'imageserver',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"#;

/// The `/viewer` routes over `dist` (a folder holding `index.html`).
pub(crate) fn router<S: Clone + Send + Sync + 'static>(dist: &Path) -> Router<S> {
    Router::new()
        .route(BASE, get(|| async { Redirect::permanent("/viewer/") }))
        .route("/viewer/", get(index))
        .route("/viewer/app-config.js", get(app_config))
        .route("/viewer/{*path}", get(file))
        .with_state(Arc::new(StaticFiles::new(dist)))
}

async fn app_config() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CONFIG,
    )
        .into_response()
}

async fn index(State(files): State<Arc<StaticFiles>>) -> Response {
    serve(files, None).await
}

async fn file(
    State(files): State<Arc<StaticFiles>>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    serve(files, Some(path)).await
}

/// The file `path` names under the root (None: `index.html`), rewritten
/// if it names root paths; `index.html` for a path naming no file.
async fn serve(files: Arc<StaticFiles>, path: Option<String>) -> Response {
    let answer = blocking(move || {
        files
            .read_or(path.as_deref(), "index.html")
            .map_err(|e| Failure::internal("cannot read the viewer's files", &e))
    })
    .await;
    let (file, bytes) = match answer {
        Ok(found) => found,
        Err(failure) => return failure.into_response(),
    };
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = match extension.as_str() {
        "html" => rebase_html(&String::from_utf8_lossy(&bytes)).into_bytes(),
        "js" => rebase_runtime(bytes),
        _ => bytes,
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&extension)),
    );
    if extension == "html" {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// `index.html` with its root paths under `/viewer/`.
fn rebase_html(html: &str) -> String {
    html.replace("window.PUBLIC_URL=\"/\"", "window.PUBLIC_URL=\"/viewer/\"")
        .replace("src=\"/", "src=\"/viewer/")
        .replace("href=\"/", "href=\"/viewer/")
}

/// A webpack bundle with its public path under `/viewer/`.
fn rebase_runtime(bytes: Vec<u8>) -> Vec<u8> {
    let (from, to) = (RUNTIME_PATH.0.as_bytes(), RUNTIME_PATH.1.as_bytes());
    let find = |haystack: &[u8]| haystack.windows(from.len()).position(|w| w == from);
    if find(&bytes).is_none() {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut rest = &bytes[..];
    while let Some(at) = find(rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn content_type(extension: &str) -> &'static str {
    match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "xml" => "application/xml",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_paths_move_under_viewer() {
        let html = r#"<script>window.PUBLIC_URL="/"</script><link href="/assets/a.png"><script src="/app.js"></script><a href="https://x/">"#;
        assert_eq!(
            rebase_html(html),
            r#"<script>window.PUBLIC_URL="/viewer/"</script><link href="/viewer/assets/a.png"><script src="/viewer/app.js"></script><a href="https://x/">"#
        );
        let js = b"a;__webpack_require__.p = \"/\";b".to_vec();
        assert_eq!(
            rebase_runtime(js),
            b"a;__webpack_require__.p = \"/viewer/\";b".to_vec()
        );
        assert_eq!(rebase_runtime(b"plain".to_vec()), b"plain".to_vec());
    }
}
