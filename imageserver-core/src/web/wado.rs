//! WADO-RS (PS3.18 §10.4) retrieve and metadata, and WADO-URI (§9).
//!
//! - Study, series and instance retrieve answer `multipart/related;
//!   type="application/dicom"`, one part per stored Part 10 file, streamed
//!   from storage through [`crate::services::retrieve`] (a few 64 KiB
//!   chunks in memory at a time, whatever the study's size), in the stored
//!   transfer syntax: an `Accept` asking for another one (other than `*`)
//!   gets 406, since nothing is transcoded.
//! - Series metadata is the file StudyProcess wrote
//!   ([`Studies::series_metadata`]); a series without one yet is encoded
//!   from its files ([`crate::dicom::part10::json`]). Study metadata is its
//!   series' arrays joined; instance metadata is encoded from the file.
//! - WADO-URI (`/wado?requestType=WADO&studyUID&seriesUID&objectUID`)
//!   answers the stored file as `application/dicom`.
//!
//! [`Studies::series_metadata`]: crate::services::studies::Studies::series_metadata

use std::collections::HashMap;
use std::io::Read;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::multipart;
use super::qido::DICOM_JSON;
use super::{blocking, streamed_body, Failure, Shared};
use crate::dicom::part10::json::{encode_instance, BulkPrefix};
use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root};
use crate::model::Uid;
use crate::services::retrieve::RetrieveItem;
use crate::services::studies::StudyError;

/// Bytes read from a stored file per chunk of the answer.
const CHUNK: usize = 64 * 1024;

/// Which entities a request names.
#[derive(Debug, Clone)]
pub(super) struct Target {
    study: Uid,
    series: Option<Uid>,
    instance: Option<Uid>,
}

impl Target {
    /// The entities of a request's path (400 for a value that is no UID).
    pub(super) fn parse(
        study: &str,
        series: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Target, Failure> {
        let uid = |text: &str| {
            Uid::parse(text).map_err(|_| Failure::bad_request(format!("{text:?} is not a UID")))
        };
        Ok(Target {
            study: uid(study)?,
            series: series.map(uid).transpose()?,
            instance: instance.map(uid).transpose()?,
        })
    }

    fn query(&self, services: &Shared) -> Query {
        let single = |attribute, uid: &Uid| Key {
            attribute,
            matcher: Matcher::Single(uid.as_str().to_string()),
        };
        let mut keys = vec![single(Attribute::StudyInstanceUid, &self.study)];
        let mut level = Level::Study;
        if let Some(series) = &self.series {
            keys.push(single(Attribute::SeriesInstanceUid, series));
            level = Level::Series;
        }
        if let Some(instance) = &self.instance {
            keys.push(single(Attribute::SopInstanceUid, instance));
            level = Level::Image;
        }
        Query {
            partition: services.partition.id,
            root: Root::Study,
            level,
            keys,
            pn_case_insensitive: false,
            limit: None,
            offset: 0,
        }
    }

    /// The stored instances named (none: 404), in study, series and
    /// instance order.
    pub(super) fn instances(&self, services: &Shared) -> Result<Vec<RetrieveItem>, Failure> {
        let items = services
            .retrieve
            .instances(&self.query(services))
            .map_err(|e| Failure::internal("the index lookup failed", &e))?;
        if items.is_empty() {
            return Err(Failure::not_found("no such stored instances"));
        }
        Ok(items)
    }
}

/// The transfer syntax an `Accept` header asks for: `None` for the stored
/// one (no parameter, `*`), or the UID asked. A header naming neither
/// `multipart/related` nor a wildcard is refused.
fn accepted_transfer_syntax(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    multipart_transfer_syntax(headers, &["application/dicom"]).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_ACCEPTABLE,
            "only multipart/related; type=\"application/dicom\" is served here",
        )
    })
}

/// The transfer syntax the first acceptable range of an `Accept` header
/// names: a wildcard range, or `multipart/related` whose `type` is absent
/// or one of `part_types`. `Some(None)`: any, or the stored one (no
/// header, no `transfer-syntax`, or `*`); `None`: nothing acceptable.
fn multipart_transfer_syntax(headers: &HeaderMap, part_types: &[&str]) -> Option<Option<String>> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Some(None);
    };
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "*/*" || media == "multipart/*" {
            return Some(None);
        }
        if media != "multipart/related" {
            continue;
        }
        let mut part_type = None;
        let mut syntax = None;
        for param in params {
            if let Some((name, value)) = param.split_once('=') {
                let value = value.trim().trim_matches('"').to_string();
                match name.trim().to_ascii_lowercase().as_str() {
                    "type" => part_type = Some(value),
                    "transfer-syntax" => syntax = Some(value),
                    _ => {}
                }
            }
        }
        if part_type.as_deref().is_none_or(|t| part_types.contains(&t)) {
            return Some(syntax.filter(|s| s != "*"));
        }
    }
    None
}

/// The multipart answer streaming `items`' stored files.
fn retrieve_response(
    services: &Shared,
    items: Vec<RetrieveItem>,
    wanted: Option<String>,
) -> Result<Response, Failure> {
    if let Some(wanted) = &wanted {
        if let Some(other) = items
            .iter()
            .find(|i| i.transfer_syntax_uid.as_str() != wanted)
        {
            return Err(Failure::new(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "{} is stored in {}, and nothing is transcoded: ask for transfer-syntax=*",
                    other.sop_instance_uid, other.transfer_syntax_uid
                ),
            ));
        }
    }
    let boundary = multipart::new_boundary();
    let content_type = multipart::content_type(&boundary, "application/dicom");
    let retrieve = services.retrieve.clone();
    let body = streamed_body(move |send| {
        let mut buffer = vec![0u8; CHUNK];
        for item in &items {
            let mut reader = retrieve.open(item).map_err(std::io::Error::other)?;
            let part_type = format!(
                "application/dicom; transfer-syntax={}",
                item.transfer_syntax_uid
            );
            if !send(multipart::part_header(
                &boundary,
                &part_type,
                Some(item.file_size),
            )) {
                return Ok(());
            }
            loop {
                let n = reader.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                if !send(Bytes::copy_from_slice(&buffer[..n])) {
                    return Ok(());
                }
            }
            if !send(Bytes::from_static(multipart::PART_END)) {
                return Ok(());
            }
        }
        send(multipart::close(&boundary));
        Ok(())
    });
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn retrieve(
    services: Shared,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    instance: Option<String>,
) -> Result<Response, Failure> {
    let wanted = accepted_transfer_syntax(&headers)?;
    let target = Target::parse(&study, series.as_deref(), instance.as_deref())?;
    let worker = services.clone();
    let items = blocking(move || target.instances(&worker)).await?;
    retrieve_response(&services, items, wanted)
}

/// `GET /studies/{study}`.
pub(super) async fn study(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(study): Path<String>,
) -> Result<Response, Failure> {
    retrieve(s, headers, study, None, None).await
}

/// `GET /studies/{study}/series/{series}`.
pub(super) async fn series(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, Failure> {
    retrieve(s, headers, study, Some(series), None).await
}

/// `GET /studies/{study}/series/{series}/instances/{instance}`.
pub(super) async fn instance(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance)): Path<(String, String, String)>,
) -> Result<Response, Failure> {
    retrieve(s, headers, study, Some(series), Some(instance)).await
}

/// The DICOM JSON objects of `items` encoded from their files, in
/// instance number order, joined into an array's inner text.
fn encode_from_files(
    services: &Shared,
    items: &[RetrieveItem],
    study: &Uid,
) -> Result<Vec<u8>, Failure> {
    let mut objects = Vec::with_capacity(items.len());
    for item in items {
        let reader = services
            .retrieve
            .open(item)
            .map_err(|e| Failure::internal("cannot open a stored instance", &e))?;
        let bulk = BulkPrefix::new(study, &item.series_uid, &item.sop_instance_uid);
        match encode_instance(reader, &bulk) {
            Ok(object) => objects.push((
                object.instance_number(),
                item.sop_instance_uid.clone(),
                object,
            )),
            Err(error) => tracing::warn!(
                sop_instance_uid = %item.sop_instance_uid,
                error = %crate::model::error_chain(&error),
                "an instance left out of metadata: its file does not parse"
            ),
        }
    }
    objects.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
    let mut out = Vec::new();
    for (i, (_, _, object)) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, object)
            .map_err(|e| Failure::internal("cannot encode metadata", &e))?;
    }
    Ok(out)
}

/// The inner text (without the brackets) of a series' metadata array:
/// StudyProcess's file, or encoded from the files when there is none yet.
fn series_metadata_inner(
    services: &Shared,
    study: &Uid,
    series: &Uid,
    items: &[RetrieveItem],
) -> Result<Vec<u8>, Failure> {
    match services
        .studies
        .series_metadata(&services.partition, study, series)
    {
        Ok(Some(bytes)) => {
            let text = bytes.trim_ascii();
            let inner = text
                .strip_prefix(b"[")
                .and_then(|t| t.strip_suffix(b"]"))
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a series metadata file is not a JSON array",
                    )
                })?;
            Ok(inner.to_vec())
        }
        Ok(None) => encode_from_files(services, items, study),
        Err(StudyError::UnknownStudy { .. }) => Err(Failure::not_found("no such study")),
        Err(error) => Err(Failure::internal("cannot read series metadata", &error)),
    }
}

fn json_array(parts: &[Vec<u8>]) -> Response {
    let mut body = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + 2);
    body.push(b'[');
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(part);
    }
    body.push(b']');
    ([(header::CONTENT_TYPE, DICOM_JSON)], body).into_response()
}

/// `GET /studies/{study}/metadata`: every series' metadata, joined.
pub(super) async fn study_metadata(
    State(services): State<Shared>,
    Path(study): Path<String>,
) -> Result<Response, Failure> {
    let target = Target::parse(&study, None, None)?;
    let parts = blocking(move || {
        let items = target.instances(&services)?;
        let mut by_series: Vec<(Uid, Vec<RetrieveItem>)> = Vec::new();
        for item in items {
            match by_series.iter_mut().find(|(s, _)| *s == item.series_uid) {
                Some((_, list)) => list.push(item),
                None => by_series.push((item.series_uid.clone(), vec![item])),
            }
        }
        by_series
            .iter()
            .map(|(series, items)| series_metadata_inner(&services, &target.study, series, items))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(json_array(&parts))
}

/// `GET /studies/{study}/series/{series}/metadata`.
pub(super) async fn series_metadata(
    State(services): State<Shared>,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let target = Target::parse(&study, Some(&series), None)?;
    let part = blocking(move || {
        let items = target.instances(&services)?;
        let series = target.series.as_ref().unwrap_or(&items[0].series_uid);
        series_metadata_inner(&services, &target.study, series, &items)
    })
    .await?;
    Ok(json_array(&[part]))
}

/// `GET /studies/{study}/series/{series}/instances/{instance}/metadata`.
pub(super) async fn instance_metadata(
    State(services): State<Shared>,
    Path((study, series, instance)): Path<(String, String, String)>,
) -> Result<Response, Failure> {
    let target = Target::parse(&study, Some(&series), Some(&instance))?;
    let part = blocking(move || {
        let items = target.instances(&services)?;
        encode_from_files(&services, &items, &target.study)
    })
    .await?;
    Ok(json_array(&[part]))
}

/// `GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`
/// (WADO-URI, PS3.18 §9): the stored file, `application/dicom` only.
pub(super) async fn wado_uri(
    State(services): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| params.get(name).map(String::as_str);
    if param("requestType") != Some("WADO") {
        return Err(Failure::bad_request("requestType=WADO is required"));
    }
    match param("contentType") {
        Some("application/dicom") => {}
        other => {
            return Err(Failure::new(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "contentType {:?} is not served: only application/dicom",
                    other.unwrap_or("image/jpeg (the default)")
                ),
            ))
        }
    }
    let (Some(study), Some(series), Some(object)) =
        (param("studyUID"), param("seriesUID"), param("objectUID"))
    else {
        return Err(Failure::bad_request(
            "studyUID, seriesUID and objectUID are required",
        ));
    };
    let target = Target::parse(study, Some(series), Some(object))?;
    let retrieve = services.retrieve.clone();
    let worker = services.clone();
    let item = blocking(move || Ok(target.instances(&worker)?.swap_remove(0))).await?;
    let size = item.file_size;
    let body: Body = streamed_body(move |send| {
        let mut reader = retrieve.open(&item).map_err(std::io::Error::other)?;
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 || !send(Bytes::copy_from_slice(&buffer[..n])) {
                return Ok(());
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/dicom".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Passes written bytes on as chunks of a streamed answer.
struct ChunkSink<'a> {
    send: &'a mut dyn FnMut(Bytes) -> bool,
}

impl std::io::Write for ChunkSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        if (self.send)(Bytes::copy_from_slice(bytes)) {
            Ok(bytes.len())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            ))
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The one stored instance a bulk data or frame request names.
async fn one_instance(
    services: &Shared,
    study: &str,
    series: &str,
    instance: &str,
) -> Result<RetrieveItem, Failure> {
    let target = Target::parse(study, Some(series), Some(instance))?;
    let worker = services.clone();
    blocking(move || Ok(target.instances(&worker)?.swap_remove(0))).await
}

/// The transfer syntaxes in which uncompressed pixel data is the same
/// bytes (little endian, native): a frame request for either is served
/// from either.
const NATIVE_LITTLE_ENDIAN: &[&str] = &["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];

/// `GET …/instances/{instance}/bulk/{path}`: the value a `BulkDataURI`
/// of the metadata names, as one `application/octet-stream` part.
pub(super) async fn bulk(
    State(services): State<Shared>,
    Path((study, series, instance, path)): Path<(String, String, String, String)>,
) -> Result<Response, Failure> {
    let path = crate::dicom::part10::bulk::BulkPath::parse(&path)
        .ok_or_else(|| Failure::not_found(format!("{path:?} is not a bulk data path")))?;
    let item = one_instance(&services, &study, &series, &instance).await?;
    // Find the value before answering: a path naming nothing is a 404,
    // not an empty part.
    let retrieve = services.retrieve.clone();
    let probe = item.clone();
    let probe_path = path.clone();
    blocking(move || {
        let reader = retrieve
            .open(&probe)
            .map_err(|e| Failure::internal("cannot open a stored instance", &e))?;
        match crate::dicom::part10::bulk::write_bulk(reader, &probe_path, &mut std::io::sink()) {
            Ok(()) => Ok(()),
            Err(crate::dicom::part10::bulk::BulkError::NotFound(reason)) => {
                Err(Failure::not_found(reason))
            }
            Err(e) => Err(Failure::internal("cannot read the bulk value", &e)),
        }
    })
    .await?;
    let boundary = multipart::new_boundary();
    let content_type = multipart::content_type(&boundary, "application/octet-stream");
    let retrieve = services.retrieve.clone();
    let body = streamed_body(move |send| {
        let reader = retrieve.open(&item).map_err(std::io::Error::other)?;
        let part_type = format!(
            "application/octet-stream; transfer-syntax={}",
            item.transfer_syntax_uid
        );
        if !send(multipart::part_header(&boundary, &part_type, None)) {
            return Ok(());
        }
        crate::dicom::part10::bulk::write_bulk(reader, &path, &mut ChunkSink { send })
            .map_err(std::io::Error::other)?;
        if send(Bytes::from_static(multipart::PART_END)) {
            send(multipart::close(&boundary));
        }
        Ok(())
    });
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET …/instances/{instance}/frames/{list}`: the frames (from 1, comma
/// separated), one `application/octet-stream` part each, in the stored
/// transfer syntax (uncompressed frames in either little endian syntax
/// are the same bytes).
pub(super) async fn frames(
    State(services): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
) -> Result<Response, Failure> {
    let numbers: Vec<u32> = list
        .split(',')
        .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n > 0))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Failure::bad_request(format!("{list:?} is not a list of frame numbers")))?;
    if numbers.len() > 4096 {
        return Err(Failure::bad_request("more than 4096 frames asked at once"));
    }
    let wanted = frame_transfer_syntax(&headers)?;
    let item = one_instance(&services, &study, &series, &instance).await?;
    let stored = item.transfer_syntax_uid.as_str().to_string();
    let native = NATIVE_LITTLE_ENDIAN.contains(&stored.as_str());
    let answered = match &wanted {
        None => stored.clone(),
        Some(uid) if *uid == stored => stored.clone(),
        Some(uid) if native && NATIVE_LITTLE_ENDIAN.contains(&uid.as_str()) => uid.clone(),
        Some(uid) => {
            return Err(Failure::new(
                StatusCode::NOT_ACCEPTABLE,
                format!("frames are stored in {stored}, not {uid}, and nothing is transcoded"),
            ))
        }
    };
    // The last frame asked must exist before the answer starts.
    let retrieve = services.retrieve.clone();
    let probe = item.clone();
    let last = numbers.iter().copied().max().unwrap_or(1);
    blocking(move || {
        let reader = retrieve
            .open(&probe)
            .map_err(|e| Failure::internal("cannot open a stored instance", &e))?;
        use crate::dicom::part10::bulk::{write_frame, BulkError};
        match write_frame(reader, last, &mut std::io::sink()) {
            Ok(_) => Ok(()),
            Err(BulkError::NotFound(reason)) => Err(Failure::not_found(reason)),
            Err(BulkError::Unsupported(reason)) => {
                Err(Failure::new(StatusCode::NOT_ACCEPTABLE, reason))
            }
            Err(e) => Err(Failure::internal("cannot read the frame", &e)),
        }
    })
    .await?;
    let boundary = multipart::new_boundary();
    let content_type = multipart::content_type(&boundary, "application/octet-stream");
    let retrieve = services.retrieve.clone();
    let body = streamed_body(move |send| {
        let part_type = format!("application/octet-stream; transfer-syntax={answered}");
        for number in numbers {
            let reader = retrieve.open(&item).map_err(std::io::Error::other)?;
            if !send(multipart::part_header(&boundary, &part_type, None)) {
                return Ok(());
            }
            crate::dicom::part10::bulk::write_frame(reader, number, &mut ChunkSink { send })
                .map_err(std::io::Error::other)?;
            if !send(Bytes::from_static(multipart::PART_END)) {
                return Ok(());
            }
        }
        send(multipart::close(&boundary));
        Ok(())
    });
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The transfer syntax a frame request's `Accept` names (`None`: any,
/// or the stored one).
fn frame_transfer_syntax(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    multipart_transfer_syntax(headers, &["application/octet-stream", "*/*"]).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_ACCEPTABLE,
            "frames are served as multipart/related; type=\"application/octet-stream\"",
        )
    })
}
