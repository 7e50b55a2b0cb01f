//! Connections stay usable after an answer given before the request's
//! body was read.
//!
//! hyper closes a connection whose request body was left unread when the
//! answer went out, but the answer (a 401 or 403 from [`super::auth`], a
//! handler that takes no body) does not say so. A client that keeps
//! connections alive then sends its next request into a closing socket and
//! gets no answer at all ("connection closed without response"), at
//! random. Two cures, by the body's size:
//!
//! - a body of at most [`READ_FIRST`] bytes (by `Content-Length`: every
//!   admin API call, small STOW uploads) is read before the request is
//!   routed, so nothing is left unread and the connection stays alive;
//! - a larger or chunked body is passed on as it comes; when the answer is
//!   ready before it was read to its end, the answer says
//!   `Connection: close`, so the client knows.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::Failure;

/// Bodies up to this size are read before routing.
const READ_FIRST: u64 = 256 * 1024;

/// The middleware: reads small bodies first, marks the answers that leave
/// a large body unread.
pub(crate) async fn read_small_bodies_first(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match announced_body(&parts.headers) {
        Announced::None => next.run(Request::from_parts(parts, body)).await,
        Announced::Small(length) => match axum::body::to_bytes(body, length).await {
            Ok(bytes) => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
            Err(error) => {
                tracing::debug!(error = %error, "an HTTP request body ended early");
                let mut answer =
                    Failure::bad_request("the request body ended early").into_response();
                close(&mut answer);
                answer
            }
        },
        Announced::Streamed => {
            let finished = Arc::new(AtomicBool::new(false));
            let body = Body::from_stream(Tracked {
                inner: body.into_data_stream(),
                finished: finished.clone(),
            });
            let mut answer = next.run(Request::from_parts(parts, body)).await;
            if !finished.load(Ordering::Acquire) {
                close(&mut answer);
            }
            answer
        }
    }
}

/// What a request's headers say of its body.
enum Announced {
    /// No body (neither `Content-Length` nor `Transfer-Encoding`, or a
    /// length of zero).
    None,
    /// A body of this many bytes, at most [`READ_FIRST`].
    Small(usize),
    /// A larger or chunked body.
    Streamed,
}

fn announced_body(headers: &HeaderMap) -> Announced {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Announced::Streamed;
    }
    let Some(length) = headers.get(header::CONTENT_LENGTH) else {
        return Announced::None;
    };
    // hyper has refused a malformed length already; be safe anyway.
    match length.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
        Some(0) => Announced::None,
        Some(length) if length <= READ_FIRST => Announced::Small(length as usize),
        _ => Announced::Streamed,
    }
}

fn close(answer: &mut Response) {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// A body stream that records when it was read to its end.
struct Tracked {
    inner: BodyDataStream,
    finished: Arc<AtomicBool>,
}

impl Stream for Tracked {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(None) = next {
            self.finished.store(true, Ordering::Release);
        }
        next
    }
}
