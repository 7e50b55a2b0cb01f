//! WADO-RS (PS3.18 §10.4) retrieve and metadata, and WADO-URI (§9).
//!
//! - Study, series and instance retrieve answer `multipart/related;
//!   type="application/dicom"`, one part per stored Part 10 file, streamed
//!   from storage through [`crate::services::retrieve`] (a few 64 KiB
//!   chunks in memory at a time, whatever the study's size), in the stored
//!   transfer syntax, with one exception: an instance stored compressed in
//!   a syntax [`codec`] decodes (RLE Lossless) is decoded in memory into
//!   Explicit (or Implicit) VR Little Endian when the `Accept` asks for
//!   that, or names no transfer syntax (PS3.18 §8.7.3: the default of
//!   `application/dicom` and of frames' `application/octet-stream` is
//!   Explicit VR Little Endian), as the storage SCU does for a peer that
//!   takes only uncompressed data sets. `transfer-syntax=*` answers the
//!   stored bytes; any other syntax than the stored one gets 406, since
//!   nothing else is transcoded (an instance stored uncompressed, or
//!   compressed in a syntax we cannot decode, is served as stored when no
//!   syntax is named).
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
use crate::dicom::codec;
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

/// What an `Accept` header asks of the transfer syntax of the parts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wanted {
    /// Any (`transfer-syntax=*`, a wildcard range): the stored one.
    Stored,
    /// Nothing said (no header, no `transfer-syntax`): PS3.18's default,
    /// Explicit VR Little Endian — a decodable compressed instance is
    /// decoded, anything else served as stored.
    Default,
    /// This transfer syntax.
    Exactly(String),
}

/// The transfer syntaxes in which uncompressed pixel data is the same
/// bytes (little endian, native): a frame request for either is served
/// from either, and a compressed instance is decoded into either.
const NATIVE_LITTLE_ENDIAN: &[&str] = &["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];

/// Explicit VR Little Endian: PS3.18's default transfer syntax.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// How an instance stored in `stored` is answered for `wanted`:
/// `Ok(None)` as stored, `Ok(Some(uid))` decoded into `uid` (a native
/// little endian syntax), `Err` with the reason for a 406.
fn answered_syntax(stored: &str, wanted: &Wanted) -> Result<Option<&'static str>, String> {
    match wanted {
        Wanted::Stored => Ok(None),
        Wanted::Default if codec::can_decode(stored) => Ok(Some(EXPLICIT_LE)),
        Wanted::Default => Ok(None),
        Wanted::Exactly(uid) if uid == stored => Ok(None),
        Wanted::Exactly(uid) if codec::can_decode(stored) => NATIVE_LITTLE_ENDIAN
            .iter()
            .copied()
            .find(|native| native == uid)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "it is stored in {stored}, which is decoded to {} only: ask for either, or \
                     transfer-syntax=*",
                    NATIVE_LITTLE_ENDIAN.join(" or ")
                )
            }),
        Wanted::Exactly(uid) => Err(format!(
            "it is stored in {stored}, not {uid}, and nothing is transcoded: ask for \
             transfer-syntax=*"
        )),
    }
}

/// A stored file read whole (at most its indexed size) and decoded into
/// `to`: the Part 10 file a client that wants native pixels gets.
fn decoded_file(
    reader: &mut dyn Read,
    file_size: u64,
    to: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let mut stored = Vec::new();
    reader
        .take(file_size.saturating_add(1))
        .read_to_end(&mut stored)?;
    if stored.len() as u64 != file_size {
        return Err(std::io::Error::other(format!(
            "the stored file has {} bytes, the index says {file_size}",
            stored.len()
        )));
    }
    codec::decode_to_native(&stored, to).map_err(std::io::Error::other)
}

/// The transfer syntax an `Accept` header asks for. A header naming
/// neither `multipart/related` nor a wildcard is refused.
fn accepted_transfer_syntax(headers: &HeaderMap) -> Result<Wanted, Failure> {
    multipart_transfer_syntax(headers, &["application/dicom"]).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_ACCEPTABLE,
            "only multipart/related; type=\"application/dicom\" is served here",
        )
    })
}

/// The transfer syntax the first acceptable range of an `Accept` header
/// names: a wildcard range (any), or `multipart/related` whose `type` is
/// absent or one of `part_types`. No header, or no `transfer-syntax`
/// parameter: the default; `None`: nothing acceptable.
fn multipart_transfer_syntax(headers: &HeaderMap, part_types: &[&str]) -> Option<Wanted> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Some(Wanted::Default);
    };
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "*/*" || media == "multipart/*" {
            return Some(Wanted::Stored);
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
            return Some(match syntax {
                None => Wanted::Default,
                Some(s) if s == "*" => Wanted::Stored,
                Some(s) => Wanted::Exactly(s),
            });
        }
    }
    None
}

/// The multipart answer streaming `items`' stored files (decoded ones
/// read, decoded and sent one at a time).
fn retrieve_response(
    services: &Shared,
    items: Vec<RetrieveItem>,
    wanted: Wanted,
) -> Result<Response, Failure> {
    let mut answered = Vec::with_capacity(items.len());
    for item in &items {
        match answered_syntax(item.transfer_syntax_uid.as_str(), &wanted) {
            Ok(syntax) => answered.push(syntax),
            Err(reason) => {
                return Err(Failure::new(
                    StatusCode::NOT_ACCEPTABLE,
                    format!("{}: {reason}", item.sop_instance_uid),
                ))
            }
        }
    }
    let boundary = multipart::new_boundary();
    let content_type = multipart::content_type(&boundary, "application/dicom");
    let retrieve = services.retrieve.clone();
    let body = streamed_body(move |send| {
        let mut buffer = vec![0u8; CHUNK];
        for (item, decode_to) in items.iter().zip(answered) {
            let mut reader = retrieve.open(item).map_err(std::io::Error::other)?;
            if let Some(to) = decode_to {
                let decoded = decoded_file(&mut reader, item.file_size, to)?;
                let part_type = format!("application/dicom; transfer-syntax={to}");
                if !send(multipart::part_header(
                    &boundary,
                    &part_type,
                    Some(decoded.len() as u64),
                )) || !send(Bytes::from(decoded))
                    || !send(Bytes::from_static(multipart::PART_END))
                {
                    return Ok(());
                }
                continue;
            }
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
/// are the same bytes), or decoded to native pixels for a request that
/// names a native little endian syntax or none (the instance decoded once
/// in memory, see the module's doc).
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
    let (answered, decode_to) = match &wanted {
        Wanted::Exactly(uid) if native && NATIVE_LITTLE_ENDIAN.contains(&uid.as_str()) => {
            (uid.clone(), None)
        }
        _ => match answered_syntax(&stored, &wanted) {
            Ok(None) => (stored.clone(), None),
            Ok(Some(to)) => (to.to_string(), Some(to)),
            Err(reason) => {
                return Err(Failure::new(
                    StatusCode::NOT_ACCEPTABLE,
                    format!("frames of {}: {reason}", item.sop_instance_uid),
                ))
            }
        },
    };
    // The last frame asked must exist before the answer starts; a
    // decoded instance is decoded here, once.
    let retrieve = services.retrieve.clone();
    let probe = item.clone();
    let last = numbers.iter().copied().max().unwrap_or(1);
    let decoded: Option<std::sync::Arc<Vec<u8>>> = blocking(move || {
        let mut reader = retrieve
            .open(&probe)
            .map_err(|e| Failure::internal("cannot open a stored instance", &e))?;
        let decoded = match decode_to {
            Some(to) => Some(std::sync::Arc::new(
                decoded_file(&mut reader, probe.file_size, to)
                    .map_err(|e| Failure::internal("cannot decode the stored instance", &e))?,
            )),
            None => None,
        };
        let reader: Box<dyn Read + Send> = match &decoded {
            Some(bytes) => Box::new(ArcCursor::new(bytes.clone())),
            None => reader,
        };
        use crate::dicom::part10::bulk::{write_frame, BulkError};
        match write_frame(reader, last, &mut std::io::sink()) {
            Ok(_) => Ok(decoded),
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
            let reader: Box<dyn Read + Send> = match &decoded {
                Some(bytes) => Box::new(ArcCursor::new(bytes.clone())),
                None => retrieve.open(&item).map_err(std::io::Error::other)?,
            };
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

/// A reader over shared bytes (a decoded instance read once per frame).
struct ArcCursor {
    bytes: std::sync::Arc<Vec<u8>>,
    at: usize,
}

impl ArcCursor {
    fn new(bytes: std::sync::Arc<Vec<u8>>) -> ArcCursor {
        ArcCursor { bytes, at: 0 }
    }
}

impl Read for ArcCursor {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.bytes[self.at.min(self.bytes.len())..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// The transfer syntax a frame request's `Accept` names.
fn frame_transfer_syntax(headers: &HeaderMap) -> Result<Wanted, Failure> {
    multipart_transfer_syntax(headers, &["application/octet-stream", "*/*"]).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_ACCEPTABLE,
            "frames are served as multipart/related; type=\"application/octet-stream\"",
        )
    })
}
