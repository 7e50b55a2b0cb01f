//! QIDO-RS (PS3.18 §10.6): searches for studies, series and instances,
//! answered in `application/dicom+json` (PS3.18 F.2).
//!
//! The matching is C-FIND's: query parameters become the same
//! [`Query`] through the same value parser
//! ([`crate::dicom::query_keys::parse_matcher`]) and run through the same
//! use case ([`crate::services::find`]), in the Study Root model.
//!
//! - A parameter names an attribute by keyword (`PatientName`) or tag
//!   (`00100010`); several values are separated by commas or repeated.
//! - `limit` and `offset` page the matches (the partition's
//!   `max_query_results` caps a page; a capped answer carries a
//!   `Warning: 299` header), `includefield` adds attributes (`all`: every
//!   attribute the index holds at the level and above), `fuzzymatching` is
//!   accepted (PN matching follows the partition's case setting either way).
//! - Unknown parameters and attributes of a lower level are ignored, as
//!   PS3.18 asks; `Modality` in a study search matches ModalitiesInStudy,
//!   as other archives read it.
//! - A date range and the paired time (StudyDate and StudyTime, SeriesDate
//!   and SeriesTime) match as one date-time range (PS3.4 C.2.2.2.5), always
//!   ([`combine_date_time`]).
//! - A value that cannot be matched (a malformed date) is a 400.

use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::{json, Map, Value};

use super::{blocking, Failure, Shared};
use crate::dicom::query_keys::{combine_date_time, parse_matcher};
use crate::model::query::{Attribute, Key, Kind, Level, Match, Matcher, Query, Root};
use crate::model::Uid;

/// The media type of the answers.
pub(super) const DICOM_JSON: &str = "application/dicom+json";

use Attribute as A;

/// Returned by default in a study search (PS3.18 Table 10.6.3-3).
const STUDY_DEFAULTS: &[Attribute] = &[
    A::StudyDate,
    A::StudyTime,
    A::AccessionNumber,
    A::ModalitiesInStudy,
    A::ReferringPhysicianName,
    A::PatientName,
    A::PatientId,
    A::PatientBirthDate,
    A::PatientSex,
    A::StudyInstanceUid,
    A::StudyId,
    A::StudyDescription,
    A::NumberOfStudyRelatedSeries,
    A::NumberOfStudyRelatedInstances,
];

/// Returned by default in a series search (PS3.18 Table 10.6.3-4).
const SERIES_DEFAULTS: &[Attribute] = &[
    A::Modality,
    A::SeriesDescription,
    A::SeriesInstanceUid,
    A::SeriesNumber,
    A::SeriesDate,
    A::SeriesTime,
    A::BodyPartExamined,
    A::NumberOfSeriesRelatedInstances,
];

/// Returned by default in an instance search (PS3.18 Table 10.6.3-5).
const INSTANCE_DEFAULTS: &[Attribute] = &[A::SopClassUid, A::SopInstanceUid, A::InstanceNumber];

/// `GET /studies`.
pub(super) async fn studies(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    search(s, Level::Study, None, None, q).await
}

/// `GET /series`.
pub(super) async fn all_series(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    search(s, Level::Series, None, None, q).await
}

/// `GET /instances`.
pub(super) async fn all_instances(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    search(s, Level::Image, None, None, q).await
}

/// `GET /studies/{study}/series`.
pub(super) async fn study_series(
    State(s): State<Shared>,
    Path(study): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    search(s, Level::Series, Some(study), None, q).await
}

/// `GET /studies/{study}/instances`.
pub(super) async fn study_instances(
    State(s): State<Shared>,
    Path(study): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    search(s, Level::Image, Some(study), None, q).await
}

/// `GET /studies/{study}/series/{series}/instances`.
pub(super) async fn series_instances(
    State(s): State<Shared>,
    Path((study, series)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    search(s, Level::Image, Some(study), Some(series), q).await
}

async fn search(
    services: Shared,
    level: Level,
    study: Option<String>,
    series: Option<String>,
    raw_query: Option<String>,
) -> Response {
    let started = Instant::now();
    let request = match parse_request(&services, level, study, series, raw_query.as_deref()) {
        Ok(request) => request,
        Err(failure) => return failure.into_response(),
    };
    let worker = services.clone();
    let answer = blocking(move || {
        let mut matches = Vec::new();
        for page in worker.find.pages(request.query.clone()) {
            let page = page.map_err(|e| Failure::internal("the index query failed", &e))?;
            matches.extend(page);
        }
        Ok(matches)
    })
    .await;
    let mut matches = match answer {
        Ok(matches) => matches,
        Err(failure) => return failure.into_response(),
    };
    let capped = matches.len() as u64 > request.limit;
    matches.truncate(request.limit as usize);
    services.metrics.query_answered("qido", started.elapsed());
    let body: Vec<Value> = matches
        .iter()
        .map(|m| encode_match(m, &request.returned))
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    if capped && request.capped_by_server {
        headers.insert(
            header::WARNING,
            HeaderValue::from_static("299 imageserver \"There are additional results\""),
        );
    }
    (headers, Value::Array(body).to_string()).into_response()
}

/// A search ready to run.
#[derive(Debug)]
struct SearchRequest {
    query: Query,
    /// The attributes every match returns, in this order.
    returned: Vec<Attribute>,
    /// Matches wanted.
    limit: u64,
    /// The limit is the server's cap, not the client's.
    capped_by_server: bool,
}

/// The attribute a query parameter names (keyword or `GGGGEEEE` tag).
fn attribute_named(name: &str) -> Option<Attribute> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let group = u16::from_str_radix(&name[..4], 16).ok()?;
        let element = u16::from_str_radix(&name[4..], 16).ok()?;
        return Attribute::from_tag((group, element));
    }
    Attribute::ALL
        .iter()
        .copied()
        .find(|a| a.keyword().eq_ignore_ascii_case(name))
}

fn parse_request(
    services: &Shared,
    level: Level,
    study: Option<String>,
    series: Option<String>,
    raw_query: Option<&str>,
) -> Result<SearchRequest, Failure> {
    let mut values: Vec<(Attribute, Vec<String>)> = Vec::new();
    let mut returned: Vec<Attribute> = Vec::new();
    let mut limit: Option<u64> = None;
    let mut offset: u64 = 0;
    let parse_number = |name: &str, value: &str| {
        value
            .trim()
            .parse::<u64>()
            .map_err(|_| Failure::bad_request(format!("{name}={value:?} is not a number")))
    };
    let visible = |a: Attribute| a.level_in(Root::Study) <= level;
    for (name, value) in form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "limit" => limit = Some(parse_number("limit", &value)?),
            "offset" => offset = parse_number("offset", &value)?,
            "fuzzymatching" => {}
            "includefield" => {
                for field in value.split(',').map(str::trim) {
                    if field == "all" {
                        returned.extend(Attribute::ALL.iter().copied().filter(|a| visible(*a)));
                    } else if let Some(a) = attribute_named(field).filter(|a| visible(*a)) {
                        returned.push(a);
                    }
                }
            }
            name => {
                let attribute = match attribute_named(name) {
                    Some(A::Modality) if level == Level::Study => A::ModalitiesInStudy,
                    Some(a) if visible(a) => a,
                    // Unknown or of a lower level: ignored (PS3.18 §8.3.4).
                    _ => continue,
                };
                let parts = value.split(',').map(|v| v.trim().to_string());
                match values.iter_mut().find(|(a, _)| *a == attribute) {
                    Some((_, existing)) => existing.extend(parts),
                    None => values.push((attribute, parts.collect())),
                }
            }
        }
    }
    let uid = |text: String, what: &str| {
        Uid::parse(&text)
            .map(|u| u.as_str().to_string())
            .map_err(|_| Failure::bad_request(format!("{what} {text:?} is not a UID")))
    };
    let mut keys = Vec::new();
    if let Some(study) = study {
        values.retain(|(a, _)| *a != A::StudyInstanceUid);
        keys.push(Key {
            attribute: A::StudyInstanceUid,
            matcher: Matcher::Single(uid(study, "study")?),
        });
    }
    if let Some(series) = series {
        values.retain(|(a, _)| *a != A::SeriesInstanceUid);
        keys.push(Key {
            attribute: A::SeriesInstanceUid,
            matcher: Matcher::Single(uid(series, "series")?),
        });
    }
    for (attribute, given) in values {
        let (matcher, _) =
            parse_matcher(attribute, &given).map_err(|e| Failure::bad_request(e.to_string()))?;
        keys.push(Key { attribute, matcher });
    }
    // PS3.18 8.3.4.6.2: a date and a time key match as one date-time range.
    combine_date_time(&mut keys);
    // What every answer holds: the level's defaults (and, for a search not
    // nested in a study, the levels above), the keys and the fields asked.
    let mut defaults: Vec<Attribute> = match level {
        Level::Study | Level::Patient => STUDY_DEFAULTS.to_vec(),
        Level::Series => SERIES_DEFAULTS.to_vec(),
        Level::Image => INSTANCE_DEFAULTS.to_vec(),
    };
    if level == Level::Series && !keys.iter().any(|k| k.attribute == A::StudyInstanceUid) {
        defaults.extend_from_slice(STUDY_DEFAULTS);
    }
    if level == Level::Image {
        if !keys.iter().any(|k| k.attribute == A::StudyInstanceUid) {
            defaults.extend_from_slice(STUDY_DEFAULTS);
        }
        if !keys.iter().any(|k| k.attribute == A::SeriesInstanceUid) {
            defaults.extend_from_slice(SERIES_DEFAULTS);
        }
    }
    defaults.extend(keys.iter().map(|k| k.attribute));
    defaults.extend(returned);
    defaults.extend([A::StudyInstanceUid]);
    if level >= Level::Series {
        defaults.push(A::SeriesInstanceUid);
    }
    let mut returned_all = Vec::new();
    for a in defaults {
        if !returned_all.contains(&a) {
            returned_all.push(a);
        }
    }
    for a in &returned_all {
        if !keys.iter().any(|k| k.attribute == *a) {
            keys.push(Key {
                attribute: *a,
                matcher: Matcher::Universal,
            });
        }
    }
    let cap = services.max_query_results;
    let (limit, capped_by_server) = match limit {
        Some(limit) if limit <= cap => (limit, false),
        _ => (cap, true),
    };
    returned_all.sort_by_key(|a| a.tag());
    Ok(SearchRequest {
        query: Query {
            partition: services.partition.id,
            root: Root::Study,
            level,
            keys,
            pn_case_insensitive: services.pn_case_insensitive,
            limit: Some(limit),
            offset,
        },
        returned: returned_all,
        limit,
        capped_by_server,
    })
}

/// The VR of an attribute, from the standard dictionary.
fn vr_of(attribute: Attribute) -> String {
    let (group, element) = attribute.tag();
    StandardDataDictionary
        .by_tag(Tag(group, element))
        .map_or("UN", |entry| entry.vr().relaxed().to_string())
        .to_string()
}

/// One match as a DICOM JSON object (PS3.18 F.2): every returned
/// attribute, empty ones with their VR alone.
pub(super) fn encode_match(found: &Match, returned: &[Attribute]) -> Value {
    let mut object = Map::new();
    for attribute in returned {
        let (group, element) = attribute.tag();
        let vr = vr_of(*attribute);
        let mut entry = Map::new();
        entry.insert("vr".into(), json!(vr));
        if let Some(value) = found.get(*attribute).filter(|v| !v.is_empty()) {
            let values: Vec<Value> = value
                .split('\\')
                .map(|v| match attribute.kind() {
                    Kind::PersonName => json!({ "Alphabetic": v }),
                    Kind::Integer | Kind::Count => v
                        .trim()
                        .parse::<i64>()
                        .map_or_else(|_| json!(v), |n| json!(n)),
                    _ => json!(v),
                })
                .collect();
            entry.insert("Value".into(), Value::Array(values));
        }
        object.insert(format!("{group:04X}{element:04X}"), Value::Object(entry));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_name_attributes_by_keyword_or_tag() {
        assert_eq!(attribute_named("PatientName"), Some(A::PatientName));
        assert_eq!(attribute_named("00100010"), Some(A::PatientName));
        assert_eq!(attribute_named("0020000d"), Some(A::StudyInstanceUid));
        assert_eq!(attribute_named("NoSuchKeyword"), None);
    }

    #[test]
    fn matches_encode_as_dicom_json() {
        let found = Match {
            values: vec![
                (A::PatientName, Some("Doe^John".into())),
                (A::ModalitiesInStudy, Some("CT\\MR".into())),
                (A::NumberOfStudyRelatedInstances, Some("3".into())),
                (A::StudyDescription, None),
            ],
        };
        let object = encode_match(
            &found,
            &[
                A::PatientName,
                A::ModalitiesInStudy,
                A::NumberOfStudyRelatedInstances,
                A::StudyDescription,
            ],
        );
        assert_eq!(
            object,
            json!({
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
                "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
                "00201208": {"vr": "IS", "Value": [3]},
                "00081030": {"vr": "LO"},
            })
        );
    }
}
