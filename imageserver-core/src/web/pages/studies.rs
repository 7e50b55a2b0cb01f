//! `/`: study search with paging and thumbnails; `/studies/{uid}`: a
//! study's details (series, instances, where it is stored, its history)
//! and its operations.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::{csrf_field, esc, failed, page, show, url};
use crate::services::admin::{StudyOperation, StudySearch};
use crate::web::api::{change, run};
use crate::web::auth::Identity;
use crate::web::Shared;

/// Studies per page.
const PAGE: u64 = 25;

/// The search form's fields: (keyword, label).
const FIELDS: &[(&str, &str)] = &[
    ("PatientName", "Patient name"),
    ("PatientID", "Patient ID"),
    ("AccessionNumber", "Accession"),
    ("StudyDate", "Study date (YYYYMMDD[-YYYYMMDD])"),
    ("ModalitiesInStudy", "Modality"),
    ("StudyDescription", "Description"),
];

/// `GET /`.
pub(super) async fn search(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let value = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
            .to_string()
    };
    let page_number: u64 = value("page").parse().unwrap_or(0);
    let keys: Vec<(String, String)> = FIELDS
        .iter()
        .map(|(k, _)| (k.to_string(), value(k)))
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let search = StudySearch {
        keys: keys.clone(),
        limit: PAGE + 1,
        offset: page_number * PAGE,
    };
    let found = match run(&s, move |a| a.search_studies(None, &search)).await {
        Ok(found) => found,
        Err(e) => return failed(Some(&identity), e),
    };
    let more = found.len() as u64 > PAGE;
    let mut body = String::from("<form class=\"search\" method=\"get\" action=\"/\">");
    for (key, label) in FIELDS {
        body.push_str(&format!(
            "<label>{}<input name=\"{}\" value=\"{}\"></label>",
            esc(label),
            esc(key),
            esc(&value(key))
        ));
    }
    body.push_str("<button type=\"submit\">Search</button></form>");
    body.push_str("<p class=\"note\">Wildcards <code>*</code> and <code>?</code> as in C-FIND; a date range as <code>20240101-20240131</code>.</p>");
    body.push_str("<div class=\"scroll\"><table id=\"studies\"><thead><tr><th></th><th>Patient</th><th>Patient ID</th><th>Date</th><th>Modality</th><th class=\"hide-narrow\">Accession</th><th>Description</th><th>Series</th><th>Instances</th></tr></thead><tbody>");
    for study in found.iter().take(PAGE as usize) {
        let uid = study["StudyInstanceUID"].as_str().unwrap_or_default();
        let link = format!("/studies/{}", url(uid));
        body.push_str(&format!(
            "<tr class=\"study\"><td><a href=\"{link}\"><img class=\"thumb\" loading=\"lazy\" alt=\"\" src=\"/dicom-web/studies/{thumb}/thumbnail\" onerror=\"this.style.visibility='hidden'\"></a></td>\
<td><a href=\"{link}\">{name}</a></td><td>{pid}</td><td>{date}</td><td>{modality}</td><td class=\"hide-narrow\">{acc}</td><td class=\"wrap\">{desc}</td><td>{series}</td><td>{instances}</td></tr>",
            link = esc(&link),
            thumb = esc(&url(uid)),
            name = show(&study["PatientName"]),
            pid = show(&study["PatientID"]),
            date = show(&study["StudyDate"]),
            modality = show(&study["ModalitiesInStudy"]),
            acc = show(&study["AccessionNumber"]),
            desc = show(&study["StudyDescription"]),
            series = show(&study["NumberOfStudyRelatedSeries"]),
            instances = show(&study["NumberOfStudyRelatedInstances"]),
        ));
    }
    if found.is_empty() {
        body.push_str("<tr><td colspan=\"9\">No study matches.</td></tr>");
    }
    body.push_str("</tbody></table></div><div class=\"paging\">");
    let query_of = |page: u64| {
        let mut q: Vec<String> = keys
            .iter()
            .map(|(k, v)| format!("{}={}", url(k), url(v)))
            .collect();
        q.push(format!("page={page}"));
        format!("/?{}", q.join("&"))
    };
    if page_number > 0 {
        body.push_str(&format!(
            "<a href=\"{}\" rel=\"prev\">← Previous</a>",
            esc(&query_of(page_number - 1))
        ));
    }
    body.push_str(&format!("<span>Page {}</span>", page_number + 1));
    if more {
        body.push_str(&format!(
            "<a href=\"{}\" rel=\"next\">Next →</a>",
            esc(&query_of(page_number + 1))
        ));
    }
    body.push_str("</div>");
    page("Studies", Some(&identity), &body)
}

fn row(cells: &[String]) -> String {
    let mut out = String::from("<tr>");
    for cell in cells {
        out.push_str(&format!("<td>{cell}</td>"));
    }
    out.push_str("</tr>");
    out
}

fn table(id: &str, headers: &[&str], rows: &[String]) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table id=\"{}\"><thead><tr>",
        esc(id)
    );
    for h in headers {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        out.push_str(&format!(
            "<tr><td colspan=\"{}\">None.</td></tr>",
            headers.len()
        ));
    }
    for r in rows {
        out.push_str(r);
    }
    out.push_str("</tbody></table></div>");
    out
}

/// `GET /studies/{uid}`.
pub(super) async fn details(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
) -> Response {
    let uid = study.clone();
    let found = match run(&s, move |a| {
        let study = a.study(None, &uid)?;
        let devices = a.devices(None)?;
        Ok((study, devices))
    })
    .await
    {
        Ok(found) => found,
        Err(e) => return failed(Some(&identity), e),
    };
    let (d, devices) = found;
    let mut body = String::new();
    let location = &d["location"];
    body.push_str(&format!(
        "<dl class=\"facts\" id=\"facts\"><dt>Patient</dt><dd>{}</dd><dt>Patient ID</dt><dd>{}</dd>\
<dt>Birth date</dt><dd>{}</dd><dt>Study date</dt><dd>{} {}</dd><dt>Accession</dt><dd>{}</dd>\
<dt>Description</dt><dd>{}</dd><dt>Modalities</dt><dd>{}</dd><dt>Study UID</dt><dd>{}</dd>\
<dt>Series / instances</dt><dd>{} / {} ({} bytes)</dd><dt>Stored on</dt><dd id=\"location\">{}</dd>\
<dt>Received</dt><dd>{}</dd></dl>",
        show(&d["patient"]["patient_name"]),
        show(&d["patient"]["patient_id"]),
        show(&d["patient"]["birth_date"]),
        show(&d["study"]["study_date"]),
        show(&d["study"]["study_time"]),
        show(&d["study"]["accession_number"]),
        show(&d["study"]["study_description"]),
        show(&d["study"]["modalities_in_study"]),
        show(&d["study_uid"]),
        show(&d["num_series"]),
        show(&d["num_instances"]),
        show(&d["size_bytes"]),
        if location.is_null() {
            "nearline (no online copy)".to_string()
        } else {
            format!(
                "filesystem {} <code>{}</code> (tier {}), folder <code>{}</code>",
                show(&location["filesystem_id"]),
                show(&location["filesystem_path"]),
                show(&location["tier"]),
                show(&location["folder"])
            )
        },
        show(&d["received_at"]),
    ));
    if identity.role == crate::config::Role::Admin {
        let csrf = csrf_field(&identity);
        let action = format!("/studies/{}/operation", url(&study));
        let options: String = devices
            .iter()
            .filter(|d| d["port"].as_u64().unwrap_or(0) > 0)
            .map(|d| format!("<option>{}</option>", show(&d["ae_title"])))
            .collect();
        body.push_str(&format!(
            "<div class=\"actions\">\
<form method=\"post\" action=\"{a}\" id=\"send-form\">{csrf}<input type=\"hidden\" name=\"op\" value=\"send\"><label>Send to<select name=\"destination\">{options}</select></label><button>Send</button></form>\
<form method=\"post\" action=\"{a}\">{csrf}<input type=\"hidden\" name=\"op\" value=\"reprocess\"><button class=\"quiet\">Reprocess</button></form>\
<form method=\"post\" action=\"{a}\">{csrf}<input type=\"hidden\" name=\"op\" value=\"delete\"><label>Reason<input name=\"reason\" required></label><button class=\"danger\">Delete study</button></form>\
</div>",
            a = esc(&action),
        ));
    }
    body.push_str("<h2>Series</h2>");
    let series: Vec<String> = d["series"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|se| {
            row(&[
                show(&se["SeriesNumber"]),
                show(&se["Modality"]),
                show(&se["SeriesDescription"]),
                show(&se["NumberOfSeriesRelatedInstances"]),
                format!("<code>{}</code>", show(&se["SeriesInstanceUID"])),
            ])
        })
        .collect();
    body.push_str(&table(
        "series",
        &[
            "Number",
            "Modality",
            "Description",
            "Instances",
            "Series UID",
        ],
        &series,
    ));
    body.push_str("<h2>Instances</h2>");
    let instances: Vec<String> = d["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            row(&[
                format!("<code>{}</code>", show(&i["sop_instance_uid"])),
                format!("<code>{}</code>", show(&i["series_uid"])),
                show(&i["transfer_syntax_uid"]),
                show(&i["file_size"]),
            ])
        })
        .collect();
    body.push_str(&table(
        "instances",
        &["SOP Instance UID", "Series", "Transfer syntax", "Bytes"],
        &instances,
    ));
    body.push_str("<h2>History</h2>");
    let mut history: Vec<(String, String)> = Vec::new();
    for e in d["audit"].as_array().map(Vec::as_slice).unwrap_or_default() {
        history.push((
            e["at"].as_str().unwrap_or_default().to_string(),
            row(&[
                show(&e["at"]),
                show(&e["action"]),
                show(&e["actor"]),
                format!("<span class=\"wrap\">{}</span>", show(&e["details"])),
            ]),
        ));
    }
    for w in d["work_items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        history.push((
            w["created_at"]["utc"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            row(&[
                show(&w["created_at"]["utc"]),
                format!(
                    "work item <a href=\"/work?study={}\">{}</a> {}",
                    esc(&url(&study)),
                    show(&w["id"]),
                    show(&w["type"])
                ),
                format!(
                    "<span class=\"status {s}\">{s}</span>",
                    s = show(&w["status"])
                ),
                show(&w["failure_description"]),
            ]),
        ));
    }
    history.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<String> = history.into_iter().map(|(_, r)| r).collect();
    body.push_str(&table(
        "history",
        &["When", "What", "Who / status", "Details"],
        &rows,
    ));
    let title = format!(
        "Study {}",
        d["patient"]["patient_name"].as_str().unwrap_or_default()
    );
    page(&title, Some(&identity), &body)
}

/// `POST /studies/{uid}/operation` (form: op = send | reprocess | delete).
pub(super) async fn operate(
    State(s): State<Shared>,
    Extension(identity): Extension<Identity>,
    Path(study): Path<String>,
    body: Bytes,
) -> Response {
    let field = |key: &str| {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let operation = match field("op").as_str() {
        "send" => StudyOperation::Send {
            destination: field("destination"),
            instances: Vec::new(),
        },
        "reprocess" => StudyOperation::Reprocess,
        "delete" => StudyOperation::Delete {
            reason: field("reason"),
        },
        other => {
            return failed(
                Some(&identity),
                crate::services::admin::AdminError::Invalid(format!("unknown operation {other:?}"))
                    .into(),
            )
        }
    };
    let details: Value = json!({ "op": field("op"), "destination": field("destination"), "reason": field("reason"), "from": "pages" });
    let actor = identity.actor();
    let (uid, op) = (study.clone(), operation.clone());
    match change(
        &s,
        &identity,
        operation.action(),
        None,
        Some(study.clone()),
        details,
        move |a| a.study_operation(None, &uid, &op, &actor),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!("/work?study={}", url(&study))).into_response(),
        Err(e) => failed(Some(&identity), e),
    }
}
