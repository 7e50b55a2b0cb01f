//! The operator's use cases, as the admin API (`web/api`) asks them:
//! partitions, devices (with C-ECHO), filesystems and their usage, rules
//! and their dry run, the work queue, studies (search, details, the study
//! operations as work items), the audit log and the cluster's nodes.
//!
//! The same store calls the `imageserver` subcommands make; the answers
//! are JSON documents (the shapes the CLI's `--json` prints), so the API
//! and the pages show the same thing. Every method blocks (index, files,
//! network): an async caller runs it on a blocking thread. A change made
//! here is recorded in the audit log by the caller ([`Admin::record`]),
//! which knows who asked.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::devices::Devices;
use super::Partition;
use crate::audit::xml::rfc3339;
use crate::db::nodes::NodeRecord;
use crate::db::studies::{AuditEntry, AuditFilter};
use crate::db::work::WorkError;
use crate::db::{self, Database};
use crate::dicom::query_keys::parse_matcher;
use crate::dicom::scu::{Destination, ScuOptions, StoreScu, VERIFICATION};
use crate::model::query::{Attribute, Key, Level, Matcher, Query, Root};
use crate::model::requests::StudyRequest;
use crate::model::work::{
    Timestamp, WorkFilter, WorkItem, WorkItemId, WorkKind, WorkPriority, WorkStatus, WorkUid,
};
use crate::model::{AeTitle, DeviceSpec, Uid};
use crate::rules::{dry_run, RuleSet};
use crate::storage::StorageBackend;
use crate::tiering::{self, FilesystemReport};
use crate::workqueue::WorkQueue;

/// Most studies one search answers.
pub const MAX_SEARCH_RESULTS: u64 = 500;
/// Most work items or audit entries one listing answers.
pub const MAX_LIST: usize = 1000;

/// What [`Admin`] is made of (the archive assembles it).
#[derive(Debug)]
pub struct AdminParts {
    /// The index.
    pub index: Arc<dyn Database>,
    /// The files (filesystem usage).
    pub storage: Arc<dyn StorageBackend>,
    /// Each partition with its device registry, the default one first.
    pub partitions: Vec<(Partition, Devices)>,
    /// Where study operations are enqueued.
    pub work_queue: WorkQueue,
    /// The rules StudyProcess applies, if any.
    pub rules: Option<Arc<RuleSet>>,
    /// Heartbeat age after which a node counts as dead.
    pub dead_after: Duration,
}

/// The operator's use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    parts: Arc<AdminParts>,
}

/// Why an operator's request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (a bad UID, value or name).
    #[error("{0}")]
    Invalid(String),
    /// The request does not fit the current state (a work item that is
    /// not failed cannot be retried).
    #[error("{0}")]
    Conflict(String),
    /// The index failed.
    #[error("the index failed while {doing}")]
    Index {
        /// What was being done.
        doing: &'static str,
        /// The failure.
        #[source]
        source: db::Error,
    },
}

impl From<WorkError> for AdminError {
    fn from(error: WorkError) -> AdminError {
        match error {
            e @ WorkError::NotFound { .. } => AdminError::NotFound(e.to_string()),
            e @ WorkError::UnknownStudy { .. } => AdminError::NotFound(e.to_string()),
            e @ WorkError::IllegalTransition { .. } => AdminError::Conflict(e.to_string()),
            WorkError::Db(source) => AdminError::Index {
                doing: "using the work queue",
                source,
            },
            other => AdminError::Invalid(other.to_string()),
        }
    }
}

fn failed_while(doing: &'static str) -> impl FnOnce(db::Error) -> AdminError {
    move |source| AdminError::Index { doing, source }
}

/// A study search: attribute keywords (patient and study level) with
/// C-FIND values (wildcards, date ranges), and a page.
#[derive(Debug, Clone, Default)]
pub struct StudySearch {
    /// `(keyword, value)` pairs, e.g. `("PatientName", "DOE*")`.
    pub keys: Vec<(String, String)>,
    /// Most studies answered (capped at [`MAX_SEARCH_RESULTS`]).
    pub limit: u64,
    /// Studies skipped first.
    pub offset: u64,
}

/// Which work items to list.
#[derive(Debug, Clone, Default)]
pub struct WorkListing {
    /// Only these statuses (`failed`, `pending`, ...).
    pub statuses: Vec<String>,
    /// Only these kinds (`move_study`, ...).
    pub kinds: Vec<String>,
    /// Only items on this study.
    pub study_uid: Option<String>,
    /// At most this many (capped at [`MAX_LIST`]).
    pub limit: usize,
}

/// A device as an operator sets it.
#[derive(Debug, Clone)]
pub struct DeviceChange {
    /// Host name or address.
    pub host: String,
    /// DICOM port.
    pub port: u16,
    /// May store to us.
    pub allow_store: bool,
    /// May query us.
    pub allow_query: bool,
    /// May retrieve from us.
    pub allow_retrieve: bool,
    /// May replace stored instances (`accept_latest`).
    pub allow_replace: bool,
    /// Most associations at once from it (0: no limit).
    pub max_associations: u32,
    /// Most associations at once to it for sends (0: no limit).
    pub max_outgoing_associations: u32,
}

/// A study operation an operator asks for.
#[derive(Debug, Clone)]
pub enum StudyOperation {
    /// Delete it (rows with an audit record, then files).
    Delete {
        /// Why (required).
        reason: String,
    },
    /// Change patient/study attributes (`Keyword=value`).
    Edit {
        /// The changes.
        values: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Rebuild its rows from its files.
    Reprocess,
    /// Send it (or some instances) to a device.
    Send {
        /// The device's AE title.
        destination: String,
        /// Only these SOP Instance UIDs (none: every instance).
        instances: Vec<String>,
    },
}

impl StudyOperation {
    /// Its audit log action (`admin.study.delete`, ...).
    pub fn action(&self) -> &'static str {
        match self {
            StudyOperation::Delete { .. } => "admin.study.delete",
            StudyOperation::Edit { .. } => "admin.study.edit",
            StudyOperation::Reprocess => "admin.study.reprocess",
            StudyOperation::Send { .. } => "admin.study.send",
        }
    }
}

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(
        Value::Null,
        |t| json!({ "ms": t.as_millis(), "utc": t.to_string() }),
    )
}

/// A work item as JSON (the `workqueue show --json` shape).
pub fn work_item_json(item: &WorkItem, with_uids: bool) -> Value {
    let payload: Value =
        serde_json::from_str(&item.payload).unwrap_or(Value::String(item.payload.clone()));
    let mut value = json!({
        "id": item.id.0,
        "type": item.kind.as_str(),
        "status": item.status.as_str(),
        "priority": item.priority.as_str(),
        "partition": item.partition.0,
        "study_uid": item.study_uid().map(|u| u.as_str()),
        "scheduled_at": time(Some(item.scheduled_at)),
        "expires_at": time(item.expires_at),
        "failure_count": item.failure_count,
        "failure_description": item.failure_description,
        "attempt": item.attempt,
        "processor_id": item.processor_id,
        "lease_expires_at": time(item.lease_expires_at),
        "created_at": time(Some(item.created_at)),
        "updated_at": time(Some(item.updated_at)),
        "payload": payload,
        "instances": item.uid_count,
    });
    if with_uids {
        value["uids"] = item
            .uids
            .iter()
            .map(|u| {
                json!({
                    "series_uid": u.series_uid.as_str(),
                    "sop_instance_uid": u.sop_instance_uid.as_str(),
                    "failed": u.failed,
                    "failure_count": u.failure_count,
                })
            })
            .collect();
    }
    value
}

fn device_json(device: &DeviceSpec) -> Value {
    json!({
        "ae_title": device.ae_title.as_str(),
        "host": device.host,
        "port": device.port,
        "allow_store": device.allow_store,
        "allow_query": device.allow_query,
        "allow_retrieve": device.allow_retrieve,
        "allow_replace": device.allow_replace,
        "max_associations": device.max_associations,
        "max_outgoing_associations": device.max_outgoing_associations,
    })
}

/// A filesystem's report as JSON (the `filesystem list --json` shape).
pub fn filesystem_json(report: &FilesystemReport) -> Value {
    let fs = &report.filesystem;
    json!({
        "id": fs.id.0,
        "path": fs.spec.path.display().to_string(),
        "tier": fs.spec.tier.0,
        "enabled": fs.enabled,
        "read_only": fs.spec.read_only,
        "write_only": fs.spec.write_only,
        "high_watermark": fs.spec.high_watermark,
        "low_watermark": fs.spec.low_watermark,
        "capacity_mb": fs.spec.capacity_mb,
        "description": fs.spec.description,
        "marker": fs.marker,
        "marker_state": report.marker.word(),
        "refused": report.marker.refusal(),
        "held_bytes": report.held_bytes,
        "total_bytes": report.usage.map(|u| u.total_bytes),
        "available_bytes": report.usage.map(|u| u.available_bytes),
        "used_percent": report.used_percent(),
        "above_high_watermark": report.used_percent().map(|p| p >= fs.spec.high_watermark),
    })
}

/// An audit log entry as JSON (the `audit --json` shape).
pub fn audit_json(entry: &AuditEntry) -> Value {
    let details: Value = serde_json::from_str(&entry.details)
        .unwrap_or_else(|_| Value::String(entry.details.clone()));
    json!({
        "at_ms": entry.at_ms,
        "at": rfc3339(entry.at_ms),
        "actor": entry.actor,
        "action": entry.action,
        "partition_id": entry.partition.map(|p| p.0),
        "study_uid": entry.study_uid.as_ref().map(Uid::as_str),
        "details": details,
    })
}

fn match_json(found: &crate::model::query::Match) -> Value {
    let mut object = serde_json::Map::new();
    for (attribute, value) in &found.values {
        object.insert(
            attribute.keyword().to_string(),
            value
                .as_ref()
                .map_or(Value::Null, |v| Value::String(v.clone())),
        );
    }
    Value::Object(object)
}

/// The patient and study attributes a study search answers.
const STUDY_COLUMNS: &[Attribute] = &[
    Attribute::PatientName,
    Attribute::PatientId,
    Attribute::PatientBirthDate,
    Attribute::PatientSex,
    Attribute::StudyDate,
    Attribute::StudyTime,
    Attribute::AccessionNumber,
    Attribute::ModalitiesInStudy,
    Attribute::StudyDescription,
    Attribute::StudyInstanceUid,
    Attribute::NumberOfStudyRelatedSeries,
    Attribute::NumberOfStudyRelatedInstances,
];

/// The series attributes study details list.
const SERIES_COLUMNS: &[Attribute] = &[
    Attribute::SeriesInstanceUid,
    Attribute::Modality,
    Attribute::SeriesNumber,
    Attribute::SeriesDescription,
    Attribute::NumberOfSeriesRelatedInstances,
];

impl Admin {
    /// The use cases over `parts`.
    pub fn new(parts: AdminParts) -> Admin {
        Admin {
            parts: Arc::new(parts),
        }
    }

    /// The partition answering to `ae_title` (None: the default one).
    fn partition(&self, ae_title: Option<&str>) -> Result<&(Partition, Devices), AdminError> {
        match ae_title.map(str::trim).filter(|a| !a.is_empty()) {
            None => Ok(&self.parts.partitions[0]),
            Some(ae) => self
                .parts
                .partitions
                .iter()
                .find(|(p, _)| p.ae_title.as_str() == ae)
                .ok_or_else(|| AdminError::NotFound(format!("no partition {ae:?}"))),
        }
    }

    fn study_uid(text: &str) -> Result<Uid, AdminError> {
        Uid::parse(text.trim())
            .map_err(|_| AdminError::Invalid(format!("{text:?} is not a valid UID")))
    }

    /// Records a change an operator made (who, what, on which study) in
    /// the audit log. Synchronous: the change is answered only once its
    /// record is in the index.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        partition: Option<&str>,
        study_uid: Option<&str>,
        details: &Value,
    ) -> Result<(), AdminError> {
        let partition = match partition {
            Some(ae) => Some(self.partition(Some(ae))?.0.id),
            None => None,
        };
        let entry = AuditEntry {
            at_ms: db::studies::now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            partition,
            study_uid: study_uid.and_then(|u| Uid::parse(u).ok()),
            details: details.to_string(),
        };
        self.parts
            .index
            .record_audit(&entry)
            .map_err(failed_while("recording an audit entry"))
    }

    // ------------------------------------------------------- partitions

    /// The partitions, the default one first.
    pub fn partitions(&self) -> Vec<Value> {
        self.parts
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (p, _))| {
                json!({
                    "ae_title": p.ae_title.as_str(),
                    "id": p.id.0,
                    "folder": p.folder.as_str(),
                    "default": i == 0,
                })
            })
            .collect()
    }

    // ---------------------------------------------------------- devices

    /// The devices of a partition.
    pub fn devices(&self, partition: Option<&str>) -> Result<Vec<Value>, AdminError> {
        let (p, _) = self.partition(partition)?;
        let devices = self
            .parts
            .index
            .devices(p.id)
            .map_err(failed_while("listing devices"))?;
        Ok(devices.iter().map(device_json).collect())
    }

    /// One device of a partition.
    pub fn device(&self, partition: Option<&str>, ae_title: &str) -> Result<Value, AdminError> {
        let (p, _) = self.partition(partition)?;
        let ae = Self::ae(ae_title)?;
        self.parts
            .index
            .device(p.id, &ae)
            .map_err(failed_while("reading a device"))?
            .map(|d| device_json(&d))
            .ok_or_else(|| AdminError::NotFound(format!("no device {ae_title:?}")))
    }

    fn ae(text: &str) -> Result<AeTitle, AdminError> {
        AeTitle::parse(text.trim())
            .map_err(|e| AdminError::Invalid(format!("{text:?} is not an AE title: {e}")))
    }

    /// Creates or changes a device; every node sees it at its next
    /// heartbeat, this one at once. Returns whether it was new.
    pub fn put_device(
        &self,
        partition: Option<&str>,
        ae_title: &str,
        change: &DeviceChange,
    ) -> Result<bool, AdminError> {
        let (p, devices) = self.partition(partition)?;
        let ae = Self::ae(ae_title)?;
        if change.host.trim().is_empty() || change.port == 0 {
            return Err(AdminError::Invalid(
                "a device needs a host and a port (1-65535)".into(),
            ));
        }
        let existed = self
            .parts
            .index
            .device(p.id, &ae)
            .map_err(failed_while("reading a device"))?
            .is_some();
        let spec = DeviceSpec {
            ae_title: ae,
            host: change.host.trim().to_string(),
            port: change.port,
            allow_store: change.allow_store,
            allow_query: change.allow_query,
            allow_retrieve: change.allow_retrieve,
            allow_replace: change.allow_replace,
            max_associations: change.max_associations,
            max_outgoing_associations: change.max_outgoing_associations,
        };
        self.parts
            .index
            .ensure_device(p.id, &spec)
            .map_err(failed_while("writing a device"))?;
        devices
            .reload()
            .map_err(failed_while("reloading the devices"))?;
        Ok(!existed)
    }

    /// Removes a device.
    pub fn delete_device(&self, partition: Option<&str>, ae_title: &str) -> Result<(), AdminError> {
        let (p, devices) = self.partition(partition)?;
        let ae = Self::ae(ae_title)?;
        let deleted = self
            .parts
            .index
            .delete_device(p.id, &ae)
            .map_err(failed_while("deleting a device"))?;
        if !deleted {
            return Err(AdminError::NotFound(format!("no device {ae_title:?}")));
        }
        devices
            .reload()
            .map_err(failed_while("reloading the devices"))?;
        Ok(())
    }

    /// C-ECHO to a device, as the partition's AE title: whether it
    /// answered Success, its status or why it could not be reached, and
    /// how long it took.
    pub fn echo(&self, partition: Option<&str>, ae_title: &str) -> Result<Value, AdminError> {
        let (p, _) = self.partition(partition)?;
        let ae = Self::ae(ae_title)?;
        let device = self
            .parts
            .index
            .device(p.id, &ae)
            .map_err(failed_while("reading a device"))?
            .ok_or_else(|| AdminError::NotFound(format!("no device {ae_title:?}")))?;
        if device.port == 0 || device.host.is_empty() {
            return Err(AdminError::Invalid(format!(
                "device {ae_title:?} has no address (registered when it called us)"
            )));
        }
        let mut options = ScuOptions::new(p.ae_title.as_str());
        options.connect_timeout = Duration::from_secs(5);
        options.response_timeout = Duration::from_secs(10);
        let destination = Destination {
            ae_title: device.ae_title.as_str().to_string(),
            host: device.host.clone(),
            port: device.port,
        };
        let started = Instant::now();
        let outcome = StoreScu::connect(
            &destination,
            &options,
            [(VERIFICATION, crate::dicom::scu::IMPLICIT_VR_LITTLE_ENDIAN)],
        )
        .and_then(|mut scu| {
            let status = scu.echo();
            let _ = scu.release();
            status
        });
        let elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome {
            Ok(status) => json!({
                "ok": status.0 == 0,
                "status": format!("{:04X}", status.0),
                "error": Value::Null,
                "elapsed_ms": elapsed_ms,
            }),
            Err(error) => json!({
                "ok": false,
                "status": Value::Null,
                "error": crate::model::error_chain(&error),
                "elapsed_ms": elapsed_ms,
            }),
        })
    }

    // ------------------------------------------------------ filesystems

    /// Every filesystem with its usage against its watermarks (measured
    /// now).
    pub fn filesystems(&self) -> Result<Vec<Value>, AdminError> {
        let reports = tiering::refresh(
            self.parts.index.as_ref(),
            self.parts.storage.as_ref(),
            None,
            false,
        )
        .map_err(failed_while("reading the filesystems"))?;
        Ok(reports.iter().map(filesystem_json).collect())
    }

    // ------------------------------------------------------------ rules

    /// The rules StudyProcess applies.
    pub fn rules(&self) -> Vec<Value> {
        let Some(rules) = &self.parts.rules else {
            return Vec::new();
        };
        rules
            .rules
            .iter()
            .map(|rule| {
                json!({
                    "name": rule.name,
                    "description": rule.description,
                    "partition": rule.partition.as_ref().map(|p| p.as_str()),
                    "enabled": rule.enabled,
                    "actions": rule.actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    /// What the rules would do with a stored study, and why. Nothing is
    /// changed.
    pub fn rules_dry_run(
        &self,
        partition: Option<&str>,
        study_uid: &str,
    ) -> Result<Value, AdminError> {
        let (p, _) = self.partition(partition)?;
        let uid = Self::study_uid(study_uid)?;
        let index = &*self.parts.index;
        let facts = dry_run::study_facts(index, index, p.id, &uid)
            .map_err(failed_while("reading the study's facts"))?
            .ok_or_else(|| AdminError::NotFound(format!("no study {uid}")))?;
        let empty = RuleSet::default();
        let rules = self.parts.rules.as_deref().unwrap_or(&empty);
        let evaluation = rules.evaluate(&p.ae_title, &facts, Timestamp::now().as_millis());
        let results: Vec<Value> = evaluation
            .results
            .iter()
            .map(|r| {
                json!({
                    "rule": r.rule.name,
                    "matched": r.matched,
                    "reasons": r.reasons,
                    "actions": r.actions.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "study_uid": uid.as_str(),
            "partition": p.ae_title.as_str(),
            "results": results,
            "text": dry_run::render(&evaluation, &facts),
        }))
    }

    // ------------------------------------------------------- work queue

    /// Work items, oldest first.
    pub fn work_items(&self, listing: &WorkListing) -> Result<Vec<Value>, AdminError> {
        let statuses = listing
            .statuses
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                WorkStatus::parse(s.trim()).ok_or_else(|| {
                    AdminError::Invalid(format!(
                        "unknown status {s:?}: expected idle, pending, in_progress, completed or failed"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = listing
            .kinds
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| WorkKind::new(k.trim()).map_err(|e| AdminError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let study_uid = listing
            .study_uid
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(Self::study_uid)
            .transpose()?;
        let limit = match listing.limit {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let items = self.parts.work_queue.store().list(&WorkFilter {
            statuses,
            kinds,
            partition: None,
            study_uid,
            limit: Some(limit),
        })?;
        Ok(items.iter().map(|i| work_item_json(i, false)).collect())
    }

    /// One work item with its instances.
    pub fn work_item(&self, id: i64) -> Result<Value, AdminError> {
        let id = WorkItemId(id);
        let item = self
            .parts
            .work_queue
            .store()
            .get(id)?
            .ok_or(WorkError::NotFound { id })?;
        Ok(work_item_json(&item, true))
    }

    /// Makes a failed item pending again.
    pub fn retry_work_item(&self, id: i64) -> Result<(), AdminError> {
        Ok(self.parts.work_queue.store().retry(WorkItemId(id))?)
    }

    /// Deletes an item (not while it runs).
    pub fn delete_work_item(&self, id: i64) -> Result<(), AdminError> {
        Ok(self.parts.work_queue.store().delete(WorkItemId(id))?)
    }

    /// Changes an item's priority (`low`, `medium`, `high`, `stat`).
    pub fn reprioritise_work_item(&self, id: i64, priority: &str) -> Result<(), AdminError> {
        let priority = WorkPriority::parse(priority.trim()).ok_or_else(|| {
            AdminError::Invalid(format!(
                "unknown priority {priority:?}: expected low, medium, high or stat"
            ))
        })?;
        Ok(self
            .parts
            .work_queue
            .store()
            .reprioritise(WorkItemId(id), priority)?)
    }

    /// Postpones an item by `seconds` from now (0: due now).
    pub fn postpone_work_item(&self, id: i64, seconds: u64) -> Result<Value, AdminError> {
        if seconds > 366 * 86_400 {
            return Err(AdminError::Invalid("at most a year".into()));
        }
        let at = Timestamp::now().after(Duration::from_secs(seconds));
        self.parts
            .work_queue
            .store()
            .reschedule(WorkItemId(id), at)?;
        Ok(time(Some(at)))
    }

    // ---------------------------------------------------------- studies

    /// Studies matching the search, with their patient and study
    /// attributes (keys the study level does not know are refused).
    pub fn search_studies(
        &self,
        partition: Option<&str>,
        search: &StudySearch,
    ) -> Result<Vec<Value>, AdminError> {
        let (p, _) = self.partition(partition)?;
        let mut keys: Vec<Key> = Vec::new();
        for (keyword, value) in &search.keys {
            let attribute = Attribute::ALL
                .iter()
                .copied()
                .find(|a| {
                    a.keyword().eq_ignore_ascii_case(keyword)
                        && matches!(a.level(), Level::Patient | Level::Study)
                })
                .ok_or_else(|| {
                    AdminError::Invalid(format!("{keyword:?} is not a patient or study attribute"))
                })?;
            if value.trim().is_empty() {
                continue;
            }
            let (matcher, _) = parse_matcher(attribute, &[value.trim().to_string()])
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            keys.retain(|k| k.attribute != attribute);
            keys.push(Key { attribute, matcher });
        }
        for attribute in STUDY_COLUMNS {
            if !keys.iter().any(|k| k.attribute == *attribute) {
                keys.push(Key {
                    attribute: *attribute,
                    matcher: Matcher::Universal,
                });
            }
        }
        let limit = match search.limit {
            0 => 50,
            n => n.min(MAX_SEARCH_RESULTS),
        };
        let query = Query {
            partition: p.id,
            root: Root::Study,
            level: Level::Study,
            keys,
            pn_case_insensitive: true,
            limit: Some(limit),
            offset: search.offset,
        };
        let mut found = Vec::new();
        self.parts
            .index
            .find(&query, &mut |m| {
                found.push(match_json(&m));
                ControlFlow::Continue(())
            })
            .map_err(failed_while("searching studies"))?;
        Ok(found)
    }

    /// A study: its attributes, series, instances, where it is stored, its
    /// edits, audit log and work items.
    pub fn study(&self, partition: Option<&str>, study_uid: &str) -> Result<Value, AdminError> {
        let (p, _) = self.partition(partition)?;
        let uid = Self::study_uid(study_uid)?;
        let index = &self.parts.index;
        let record = index
            .study(p.id, &uid)
            .map_err(failed_while("reading the study"))?
            .ok_or_else(|| {
                AdminError::NotFound(format!("no study {uid} in partition {}", p.ae_title))
            })?;
        let mut series_keys = vec![Key {
            attribute: Attribute::StudyInstanceUid,
            matcher: Matcher::Single(uid.as_str().to_string()),
        }];
        series_keys.extend(SERIES_COLUMNS.iter().map(|a| Key {
            attribute: *a,
            matcher: Matcher::Universal,
        }));
        let mut series = Vec::new();
        index
            .find(
                &Query {
                    partition: p.id,
                    root: Root::Study,
                    level: Level::Series,
                    keys: series_keys,
                    pn_case_insensitive: false,
                    limit: Some(10_000),
                    offset: 0,
                },
                &mut |m| {
                    series.push(match_json(&m));
                    ControlFlow::Continue(())
                },
            )
            .map_err(failed_while("listing the study's series"))?;
        let instances = index
            .study_instances(p.id, &uid)
            .map_err(failed_while("listing the study's instances"))?;
        let filesystems = index
            .filesystems()
            .map_err(failed_while("reading the filesystems"))?;
        let location = record.location.as_ref().map(|l| {
            let fs = filesystems.iter().find(|f| f.id == l.filesystem);
            json!({
                "filesystem_id": l.filesystem.0,
                "filesystem_path": fs.map(|f| f.spec.path.display().to_string()),
                "tier": fs.map(|f| f.spec.tier.0),
                "folder": format!("{}/{}/{}", l.partition_folder.as_str(), l.date_folder, uid.as_str()),
            })
        });
        let edits = index
            .edit_history(p.id, &uid)
            .map_err(failed_while("reading the study's edits"))?;
        let audit = index
            .audit_log(p.id, &uid)
            .map_err(failed_while("reading the study's audit log"))?;
        let work = self.parts.work_queue.store().list(&WorkFilter {
            study_uid: Some(uid.clone()),
            limit: Some(MAX_LIST),
            ..WorkFilter::default()
        })?;
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        Ok(json!({
            "study_uid": uid.as_str(),
            "partition": p.ae_title.as_str(),
            "patient": {
                "patient_id": record.patient.patient_id,
                "issuer_of_patient_id": opt(&record.patient.issuer_of_patient_id),
                "patient_name": opt(&record.patient.patient_name),
                "birth_date": opt(&record.patient.birth_date),
                "sex": opt(&record.patient.sex),
            },
            "study": {
                "study_date": opt(&record.study.study_date),
                "study_time": opt(&record.study.study_time),
                "accession_number": opt(&record.study.accession_number),
                "study_id": opt(&record.study.study_id),
                "study_description": opt(&record.study.study_description),
                "referring_physician_name": opt(&record.study.referring_physician_name),
                "modalities_in_study": record.modalities_in_study,
            },
            "num_series": record.num_series,
            "num_instances": record.num_instances,
            "size_bytes": record.size_bytes,
            "received_at": rfc3339(record.received_at_ms),
            "updated_at": rfc3339(record.updated_at_ms),
            "location": location,
            "series": series,
            "instances": instances.iter().map(|i| json!({
                "series_uid": i.series_uid.as_str(),
                "sop_instance_uid": i.sop_instance_uid.as_str(),
                "sop_class_uid": i.sop_class_uid.as_str(),
                "transfer_syntax_uid": i.transfer_syntax_uid.as_str(),
                "file_size": i.file_size,
            })).collect::<Vec<_>>(),
            "edits": edits.iter().map(|e| json!({
                "id": e.id,
                "status": e.status.as_str(),
                "actor": e.actor,
                "reason": e.reason,
                "requested_at": rfc3339(e.requested_at_ms),
                "changes": e.changes.iter().map(|c| json!({
                    "attribute": c.attribute.to_string(),
                    "old_value": c.old_value,
                    "new_value": c.new_value,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "audit": audit.iter().map(audit_json).collect::<Vec<_>>(),
            "work_items": work.iter().map(|i| work_item_json(i, false)).collect::<Vec<_>>(),
        }))
    }

    /// Enqueues a study operation for the engine (which runs it under the
    /// study's lock, with retries); returns the work item's id.
    pub fn study_operation(
        &self,
        partition: Option<&str>,
        study_uid: &str,
        operation: &StudyOperation,
        actor: &str,
    ) -> Result<i64, AdminError> {
        let (p, _) = self.partition(partition)?;
        let uid = Self::study_uid(study_uid)?;
        let request = match operation {
            StudyOperation::Delete { reason } => {
                if reason.trim().is_empty() {
                    return Err(AdminError::Invalid(
                        "a deletion needs a reason (the audit log keeps it)".into(),
                    ));
                }
                StudyRequest::Delete {
                    actor: actor.to_string(),
                    reason: reason.trim().to_string(),
                }
            }
            StudyOperation::Edit { values, reason } => {
                if values.is_empty() {
                    return Err(AdminError::Invalid("an edit needs values".into()));
                }
                for value in values {
                    crate::services::studies::EditValue::parse(value)
                        .map_err(|e| AdminError::Invalid(e.to_string()))?;
                }
                StudyRequest::Edit {
                    actor: actor.to_string(),
                    reason: reason.clone(),
                    values: values.clone(),
                }
            }
            StudyOperation::Reprocess => StudyRequest::Reprocess {
                actor: actor.to_string(),
            },
            StudyOperation::Send {
                destination,
                instances,
            } => {
                let ae = Self::ae(destination)?;
                let known = self
                    .parts
                    .index
                    .device(p.id, &ae)
                    .map_err(failed_while("reading a device"))?
                    .filter(|d| d.port != 0);
                if known.is_none() {
                    return Err(AdminError::NotFound(format!(
                        "no device {destination:?} with an address in partition {}",
                        p.ae_title
                    )));
                }
                let mut uids = Vec::new();
                if !instances.is_empty() {
                    let series: BTreeMap<Uid, Uid> = self
                        .parts
                        .index
                        .study_instances(p.id, &uid)
                        .map_err(failed_while("listing the study's instances"))?
                        .into_iter()
                        .map(|i| (i.sop_instance_uid, i.series_uid))
                        .collect();
                    for sop in instances {
                        let sop = Self::study_uid(sop)?;
                        let series = series.get(&sop).ok_or_else(|| {
                            AdminError::Invalid(format!("{sop} is not an instance of study {uid}"))
                        })?;
                        uids.push(WorkUid::new(series.clone(), sop));
                    }
                }
                StudyRequest::Send {
                    destination: ae.as_str().to_string(),
                    instances: uids,
                }
            }
        };
        let id = self
            .parts
            .work_queue
            .enqueue(request.work_item(p.id, uid))?;
        Ok(id.0)
    }

    // ------------------------------------------------------------ audit

    /// Audit entries, oldest first: since a time (ms since the epoch), of
    /// an action (`atna.query`, `admin.study.delete`, ...), about a study.
    pub fn audit(
        &self,
        since_ms: Option<i64>,
        action: Option<&str>,
        study_uid: Option<&str>,
        limit: u64,
    ) -> Result<Vec<Value>, AdminError> {
        let study_uid = study_uid
            .filter(|s| !s.trim().is_empty())
            .map(Self::study_uid)
            .transpose()?;
        let entries = self
            .parts
            .index
            .audit_entries(&AuditFilter {
                since_ms,
                action: action
                    .filter(|a| !a.trim().is_empty())
                    .map(|a| a.trim().to_string()),
                study_uid,
                limit: match limit {
                    0 => MAX_LIST as u64,
                    n => n.min(MAX_LIST as u64),
                },
            })
            .map_err(failed_while("reading the audit log"))?;
        Ok(entries.iter().map(audit_json).collect())
    }

    // ------------------------------------------------------------ nodes

    /// The cluster's nodes (one for a single server): state by heartbeat
    /// age, addresses, the work items each holds.
    pub fn nodes(&self) -> Result<Vec<Value>, AdminError> {
        let nodes: Vec<NodeRecord> = self
            .parts
            .index
            .nodes()
            .map_err(failed_while("listing nodes"))?;
        let running = self.parts.work_queue.store().list(&WorkFilter {
            statuses: vec![WorkStatus::InProgress],
            limit: Some(MAX_LIST),
            ..WorkFilter::default()
        })?;
        Ok(nodes
            .iter()
            .map(|node| {
                let held: Vec<Value> = running
                    .iter()
                    .filter(|i| {
                        i.processor_id.is_some()
                            && i.processor_id == node.registration.processor_id
                    })
                    .map(|i| {
                        json!({
                            "id": i.id.0,
                            "type": i.kind.as_str(),
                            "study_uid": i.study_uid().map(|u| u.as_str()),
                            "attempt": i.attempt,
                        })
                    })
                    .collect();
                json!({
                    "id": node.registration.id,
                    "state": node.liveness(self.parts.dead_after).as_str(),
                    "requested_state": node.state.as_str(),
                    "host": node.registration.host,
                    "addresses": node.registration.addresses,
                    "version": node.registration.version,
                    "pid": node.registration.pid,
                    "started_at": rfc3339(node.started_at_ms),
                    "heartbeat_age_ms": u64::try_from(node.heartbeat_age.as_millis()).unwrap_or(u64::MAX),
                    "work_items": held,
                })
            })
            .collect())
    }
}
