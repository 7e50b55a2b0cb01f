//! STOW-RS (PS3.18 §10.5): `POST /studies` with a `multipart/related;
//! type="application/dicom"` body, each part a Part 10 file.
//!
//! Each part streams into ingest as it arrives (its file meta read
//! first, then the data set bytes into the [`IngestWriter`]
//! through a small channel to a blocking thread), through the same durable
//! path as a C-STORE: the answer is sent only once every instance is
//! durable and indexed (group commit) or has failed. While a part waits
//! for its commit the next ones are read and ingested (at most
//! `PARTS_IN_FLIGHT` at once), so the parts of one request join the same
//! commit batches. The answer is the
//! PS3.18 response data set in DICOM JSON: ReferencedSOPSequence (with
//! each instance's RetrieveURL), FailedSOPSequence with FailureReason (the
//! C-STORE status ingest's failure maps to), and the status: 200 when all
//! were stored, 202 when some failed, 409 when none was stored.
//!
//! `POST /studies/{study}` is served the same way; the study in the URL is
//! not checked against the instances' (a later phase may refuse others).
//!
//! [`IngestWriter`]: crate::services::IngestWriter

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::qido::DICOM_JSON;
use super::{multipart, Failure, Shared};
use crate::dicom::part10::read_file_meta;
use crate::model::error_chain;
use crate::services::{IngestError, StoreRequest};

/// FailureReason for a part that is not a Part 10 file (C000: cannot
/// understand).
const CANNOT_UNDERSTAND: u16 = 0xC000;
/// FailureReason when a part cannot be read from the request or ingest
/// could not run (0110: processing failure).
const PROCESSING_FAILURE: u16 = 0x0110;

/// Most parts of one request ingested at once. The body is read on while
/// earlier parts wait for their group commit, so the parts of a request
/// share commit batches instead of paying one batch each, one after the
/// other; the bound keeps a request of thousands of parts from holding as
/// many blocking threads and open files.
const PARTS_IN_FLIGHT: usize = 16;

/// What the request side sends the blocking side of one part.
enum Chunk {
    /// Bytes of the part.
    Data(Bytes),
    /// The part ended as the body says it does. Without it, a closed
    /// channel means the request went away mid-part.
    End,
}

/// The data set bytes of one part, read on the blocking side.
struct PartReader {
    chunks: mpsc::Receiver<io::Result<Chunk>>,
    current: Bytes,
    ended: bool,
}

impl PartReader {
    /// The next bytes of the part (empty once it has ended).
    fn next_chunk(&mut self) -> io::Result<Bytes> {
        if !self.current.is_empty() {
            return Ok(std::mem::take(&mut self.current));
        }
        while !self.ended {
            match self.chunks.blocking_recv() {
                Some(Ok(Chunk::Data(chunk))) if chunk.is_empty() => {}
                Some(Ok(Chunk::Data(chunk))) => return Ok(chunk),
                Some(Ok(Chunk::End)) => self.ended = true,
                Some(Err(error)) => return Err(error),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the request ended in the middle of the part",
                    ))
                }
            }
        }
        Ok(Bytes::new())
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            self.current = self.next_chunk()?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// What became of one part.
enum PartOutcome {
    Stored {
        sop_class_uid: String,
        sop_instance_uid: String,
        study_uid: String,
        series_uid: String,
    },
    Failed {
        sop_class_uid: Option<String>,
        sop_instance_uid: Option<String>,
        reason: u16,
        detail: String,
    },
}

/// Stores one part's bytes (blocking): meta first, then the data set.
fn ingest_part(services: &Shared, mut reader: PartReader) -> PartOutcome {
    let meta = match read_file_meta(&mut reader) {
        Ok(meta) => meta,
        Err(error) => {
            services
                .metrics
                .instance_stored("stow", "refused_data", None);
            return PartOutcome::Failed {
                sop_class_uid: None,
                sop_instance_uid: None,
                reason: CANNOT_UNDERSTAND,
                detail: format!("not a DICOM Part 10 file: {}", error_chain(&error)),
            };
        }
    };
    let sop_class_uid = meta.media_storage_sop_class_uid().to_string();
    let sop_instance_uid = meta.media_storage_sop_instance_uid().to_string();
    let failed = |error: IngestError| {
        services
            .metrics
            .instance_stored("stow", error.outcome_name(), None);
        PartOutcome::Failed {
            sop_class_uid: Some(sop_class_uid.clone()),
            sop_instance_uid: Some(sop_instance_uid.clone()),
            reason: crate::scp::store::status_of(&error).0,
            detail: error_chain(&error),
        }
    };
    let writer = services.ingest.begin(StoreRequest {
        partition: &services.partition,
        sop_class_uid: &sop_class_uid,
        sop_instance_uid: &sop_instance_uid,
        transfer_syntax_uid: meta.transfer_syntax(),
        source_ae: meta.source_application_entity_title(),
        // No caller identity yet (authentication is a later phase).
        may_replace: false,
    });
    let mut writer = match writer {
        Ok(writer) => writer,
        Err(error) => return failed(error),
    };
    // The chunks as they came, into the writer without another copy.
    let copied = loop {
        match reader.next_chunk() {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => writer.write_data(&chunk),
            Err(error) => break Err(error),
        }
    };
    if let Err(error) = copied {
        services.metrics.instance_stored("stow", "failed", None);
        return PartOutcome::Failed {
            sop_class_uid: Some(sop_class_uid),
            sop_instance_uid: Some(sop_instance_uid),
            reason: PROCESSING_FAILURE,
            detail: format!("the part could not be read: {}", error_chain(&error)),
        };
    }
    let started = Instant::now();
    match services.ingest.finish(writer) {
        Ok(outcome) => {
            services.metrics.instance_stored(
                "stow",
                outcome.outcome.name(),
                Some(started.elapsed()),
            );
            PartOutcome::Stored {
                sop_class_uid,
                sop_instance_uid,
                study_uid: outcome.study_uid.to_string(),
                series_uid: outcome.series_uid.to_string(),
            }
        }
        Err(error) => failed(error),
    }
}

/// The parts whose ingest is still running: their index among the
/// request's outcomes and their task, oldest first.
type Running = VecDeque<(usize, tokio::task::JoinHandle<PartOutcome>)>;

/// Waits for the oldest part still being ingested and records its
/// outcome; `false` when none is left.
async fn settle_oldest(
    running: &mut Running,
    outcomes: &mut [Option<PartOutcome>],
) -> Result<bool, Failure> {
    let Some((index, ingesting)) = running.pop_front() else {
        return Ok(false);
    };
    let outcome = ingesting
        .await
        .map_err(|e| Failure::internal("an upload handler failed", &e))?;
    outcomes[index] = Some(outcome);
    Ok(true)
}

/// `POST /studies`.
pub(super) async fn store(
    State(services): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    stow(services, headers, body).await
}

/// `POST /studies/{study}`.
pub(super) async fn store_in_study(
    State(services): State<Shared>,
    Path(_study): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    stow(services, headers, body).await
}

async fn stow(services: Shared, headers: HeaderMap, body: Body) -> Result<Response, Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some((boundary, part_type)) = multipart::parse_content_type(content_type) else {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected multipart/related; type=\"application/dicom\" with a boundary",
        ));
    };
    if part_type
        .as_deref()
        .is_some_and(|t| t != "application/dicom")
    {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("parts of type {part_type:?} are not stored: only application/dicom"),
        ));
    }
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(services.max_upload_bytes));
    let mut parts =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    // Each part's outcome in request order: known at once (refused before
    // ingest) or from its ingest, still running while later parts are read.
    let mut outcomes: Vec<Option<PartOutcome>> = Vec::new();
    let mut running = Running::new();
    loop {
        let mut field = match parts.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) if outcomes.is_empty() => {
                return Err(Failure::bad_request(format!(
                    "unreadable multipart body: {error}"
                )));
            }
            Err(error) => {
                outcomes.push(Some(PartOutcome::Failed {
                    sop_class_uid: None,
                    sop_instance_uid: None,
                    reason: PROCESSING_FAILURE,
                    detail: format!("the rest of the body is unreadable: {error}"),
                }));
                break;
            }
        };
        if let Some(media) = field.content_type() {
            if media.essence_str() != "application/dicom" {
                outcomes.push(Some(PartOutcome::Failed {
                    sop_class_uid: None,
                    sop_instance_uid: None,
                    reason: CANNOT_UNDERSTAND,
                    detail: format!("a part of type {media} is not a DICOM file"),
                }));
                continue;
            }
        }
        if running.len() == PARTS_IN_FLIGHT {
            settle_oldest(&mut running, &mut outcomes).await?;
        }
        let (sender, chunks) = mpsc::channel(8);
        let worker = services.clone();
        let ingesting = tokio::task::spawn_blocking(move || {
            ingest_part(
                &worker,
                PartReader {
                    chunks,
                    current: Bytes::new(),
                    ended: false,
                },
            )
        });
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if sender.send(Ok(Chunk::Data(chunk))).await.is_err() {
                        // Ingest stopped reading (refused early): drain.
                        while let Ok(Some(_)) = field.chunk().await {}
                        break;
                    }
                }
                Ok(None) => {
                    let _ = sender.send(Ok(Chunk::End)).await;
                    break;
                }
                Err(error) => {
                    let _ = sender.send(Err(io::Error::other(error.to_string()))).await;
                    break;
                }
            }
        }
        drop(sender);
        running.push_back((outcomes.len(), ingesting));
        outcomes.push(None);
    }
    // Every part answered only once all are durable or failed.
    while settle_oldest(&mut running, &mut outcomes).await? {}
    let outcomes: Vec<PartOutcome> = outcomes.into_iter().flatten().collect();
    if outcomes.is_empty() {
        return Err(Failure::bad_request("the request holds no part"));
    }
    Ok(response(&outcomes))
}

/// The PS3.18 store response data set and its status.
fn response(outcomes: &[PartOutcome]) -> Response {
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    for outcome in outcomes {
        match outcome {
            PartOutcome::Stored {
                sop_class_uid,
                sop_instance_uid,
                study_uid,
                series_uid,
            } => referenced.push(json!({
                "00081150": {"vr": "UI", "Value": [sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [format!(
                    "studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}"
                )]},
            })),
            PartOutcome::Failed {
                sop_class_uid,
                sop_instance_uid,
                reason,
                detail,
            } => {
                tracing::info!(
                    sop_instance_uid = sop_instance_uid.as_deref().unwrap_or("?"),
                    reason = format!("{reason:04X}"),
                    detail,
                    "STOW-RS instance not stored"
                );
                let uid = |value: &Option<String>| match value {
                    Some(v) => json!({"vr": "UI", "Value": [v]}),
                    None => json!({"vr": "UI"}),
                };
                failed.push(json!({
                    "00081150": uid(sop_class_uid),
                    "00081155": uid(sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [reason]},
                }));
            }
        }
    }
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (_, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        (true, false) => StatusCode::CONFLICT,
    };
    let mut object = serde_json::Map::new();
    if !failed.is_empty() {
        object.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    if !referenced.is_empty() {
        object.insert("00081199".into(), json!({"vr": "SQ", "Value": referenced}));
    }
    (
        status,
        [(header::CONTENT_TYPE, DICOM_JSON)],
        Value::Object(object).to_string(),
    )
        .into_response()
}
