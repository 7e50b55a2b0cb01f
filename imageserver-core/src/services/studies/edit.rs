//! Edit patient and study attributes in every file and in the index,
//! keeping history (see the crash-safety order of the parent module).

use super::*;

/// One attribute and the value an edit gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditValue {
    /// The attribute.
    pub attribute: EditableAttribute,
    /// The new value ("" empties it).
    pub value: String,
}

impl std::fmt::Display for EditValue {
    /// `Keyword=value`, what [`EditValue::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.attribute.keyword(), self.value)
    }
}

impl EditValue {
    /// Parses `Keyword=value` (e.g. `PatientName=DOE^JANE`).
    pub fn parse(text: &str) -> Result<EditValue, StudyError> {
        let Some((keyword, value)) = text.split_once('=') else {
            return Err(StudyError::InvalidEdit(EditError::NotKeywordValue(
                text.to_string(),
            )));
        };
        let attribute = EditableAttribute::from_keyword(keyword.trim())
            .ok_or_else(|| StudyError::InvalidEdit(EditError::NotEditable(keyword.to_string())))?;
        Ok(EditValue {
            attribute,
            value: value.trim().to_string(),
        })
    }
}

/// Why a requested edit is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// Not of the form `Keyword=value`.
    #[error("{0:?}: expected Keyword=value, e.g. PatientName=DOE^JANE")]
    NotKeywordValue(String),
    /// The keyword names no editable attribute.
    #[error("{0:?} cannot be edited; editable: {list}", list = editable_keywords())]
    NotEditable(String),
    /// No value given.
    #[error("nothing to change: give at least one Keyword=value")]
    NothingToChange,
    /// One attribute given more than once.
    #[error("{0} is given twice")]
    GivenTwice(EditableAttribute),
    /// A value its attribute's VR does not allow.
    #[error("{attribute}={value:?}")]
    Value {
        /// The attribute.
        attribute: EditableAttribute,
        /// The value given (padding trimmed).
        value: String,
        /// The rule it breaks.
        #[source]
        source: EditValueError,
    },
}

fn editable_keywords() -> String {
    EditableAttribute::ALL
        .iter()
        .map(|a| a.keyword())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PS3.5 6.2 rule a value breaks (editable VRs, single values only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditValueError {
    /// A backslash: more than one value.
    #[error("a single value is expected (no backslash)")]
    MultipleValues,
    /// Control characters.
    #[error("control characters are not allowed")]
    ControlCharacters,
    /// Not a DA value.
    #[error("a date is YYYYMMDD")]
    Date,
    /// Not a TM value.
    #[error("a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF")]
    Time,
    /// Not a CS value.
    #[error("a code string is at most 16 of A-Z 0-9 space _")]
    CodeString,
    /// Longer than its VR allows (SH, LO): at most this many characters.
    #[error("at most {0} characters")]
    TooLong(usize),
    /// Not a PN value.
    #[error("a person name has at most 3 groups of 64 characters")]
    PersonName,
}

/// What [`Studies::edit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditOutcome {
    /// The edit is complete (now, or resumed from an interrupted run).
    Edited {
        /// The completed edit (history entry).
        edit: EditRecord,
        /// Files rewritten by this run.
        files_rewritten: u64,
        /// Files that already held the new values (an earlier run).
        files_already_edited: u64,
        /// Other studies of the same patient: patient-level changes also
        /// show in their query answers (their files are not rewritten).
        other_studies_of_patient: u64,
    },
    /// The index already holds these values and no edit is pending.
    Unchanged,
}

impl Studies {
    // --------------------------------------------------------------- edit

    /// Edits patient/study attributes of a study in every file and in the
    /// index, keeping history (see the module documentation for the order).
    /// A pending edit of the study with the same values is resumed; one
    /// with other values is [`StudyError::EditPending`].
    pub fn edit(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        values: &[EditValue],
        actor: &str,
        reason: &str,
    ) -> Result<EditOutcome, StudyError> {
        let targets = validate_values(values)?;
        let edit = match self.store().pending_edit(partition.id, study_uid)? {
            Some(pending) if same_targets(&pending, &targets) => pending,
            Some(pending) => return Err(StudyError::EditPending(Box::new(pending))),
            None => {
                let record = self.online_study(partition, study_uid)?;
                let changes: Vec<AttributeChange> = targets
                    .iter()
                    .filter_map(|t| {
                        let attribute = editable(t)?;
                        Some(AttributeChange {
                            attribute,
                            old_value: attribute.value_in(&record).map(str::to_string),
                            new_value: t.value.clone(),
                        })
                    })
                    .collect();
                if changes
                    .iter()
                    .all(|c| c.old_value.as_deref() == index_text(&c.new_value))
                    && self.files_hold(partition, study_uid, &targets)?
                {
                    // An earlier run may have completed the edit and been
                    // interrupted before writing the metadata again.
                    if !self.has_series_metadata(partition, study_uid)? {
                        self.write_series_metadata(partition, study_uid)?;
                    }
                    return Ok(EditOutcome::Unchanged);
                }
                // Every file must be able to take the values before anything
                // is recorded or written.
                let filesystem = self.filesystem(
                    record
                        .location
                        .as_ref()
                        .map(|l| l.filesystem)
                        .ok_or_else(|| StudyError::Nearline(study_uid.clone()))?,
                )?;
                for instance in self.store().study_instances(partition.id, study_uid)? {
                    let mut source = self.storage.open(&filesystem, &key_of(&instance))?;
                    let head = splice::read_head(&mut source)
                        .and_then(|head| splice::check(&head, &targets).map(|()| head))
                        .map_err(|source| StudyError::File {
                            sop_instance_uid: instance.sop_instance_uid.clone(),
                            source: Box::new(source),
                        })?;
                    drop(head);
                }
                let edit =
                    self.store()
                        .begin_edit(partition.id, study_uid, &changes, actor, reason)?;
                if !same_targets(&edit, &targets) {
                    return Err(StudyError::EditPending(Box::new(edit)));
                }
                edit
            }
        };

        // No metadata with old values survives an interruption from here on.
        self.drop_series_metadata(partition, study_uid)?;
        let (_, filesystem) = self.online_files(partition, study_uid)?;
        let mut facts = Vec::new();
        let mut pending = PendingSync::default();
        let (mut rewritten, mut already) = (0u64, 0u64);
        for instance in self.store().study_instances(partition.id, study_uid)? {
            let key = key_of(&instance);
            let file_error = |source: splice::SpliceError| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                source: Box::new(source),
            };
            let mut source = files::HashingReader::new(self.storage.open(&filesystem, &key)?);
            let head = splice::read_head(&mut source).map_err(file_error)?;
            if splice::holds(&head.header, &targets) {
                let (file_size, digest) = source
                    .finish()
                    .map_err(|e| file_error(splice::SpliceError::Read(e)))?;
                facts.push(FileFacts {
                    sop_instance_uid: instance.sop_instance_uid.clone(),
                    file_size,
                    digest,
                });
                already += 1;
                continue;
            }
            let mut writer = self.storage.begin_write(&filesystem)?;
            let (file_size, digest) =
                splice::write_edited(&head, &targets, &mut source, &mut writer)
                    .map_err(file_error)?;
            drop(source);
            splice::verify(
                &mut writer.read_back()?,
                &targets,
                instance.sop_instance_uid.as_str(),
            )
            .map_err(file_error)?;
            pending.merge(writer.persist(&key)?);
            facts.push(FileFacts {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                file_size,
                digest,
            });
            rewritten += 1;
        }
        // Every rename durable before the index says so.
        self.storage.sync(pending)?;
        let changes_json = {
            let mut json = String::from("[");
            for (i, c) in edit.changes.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(
                    &JsonObject::new()
                        .string("attribute", Some(c.attribute.keyword()))
                        .string("old", c.old_value.as_deref())
                        .string("new", Some(&c.new_value))
                        .finish(),
                );
            }
            json.push(']');
            json
        };
        let audit = AuditEntry::now(
            actor,
            "study.edit",
            partition.id,
            study_uid,
            JsonObject::new()
                .int("edit", i128::from(edit.id))
                .string("reason", Some(&edit.reason))
                .raw("changes", &changes_json)
                .int("instances", facts.len() as i128)
                .finish(),
        );
        self.store().complete_edit(&edit, &facts, &audit)?;
        if self.auditor.is_enabled() {
            let patient = self.patient_for_audit(partition, study_uid);
            let (kind, action) = (
                crate::audit::EventKind::InstancesAccessed,
                crate::audit::Action::Update,
            );
            self.audit_study(kind, action, partition, study_uid, actor, patient.as_ref());
            if edit.changes.iter().any(|c| {
                matches!(
                    c.attribute,
                    EditableAttribute::PatientName
                        | EditableAttribute::PatientId
                        | EditableAttribute::IssuerOfPatientId
                        | EditableAttribute::PatientBirthDate
                        | EditableAttribute::PatientSex
                )
            }) {
                let kind = crate::audit::EventKind::PatientRecord;
                self.audit_study(kind, action, partition, study_uid, actor, patient.as_ref());
            }
        }
        let completed = self
            .store()
            .edit_history(partition.id, study_uid)?
            .into_iter()
            .find(|e| e.id == edit.id)
            .unwrap_or(edit);
        let other_studies_of_patient = self
            .store()
            .study(partition.id, study_uid)?
            .map(|r| r.patient_num_studies.saturating_sub(1))
            .unwrap_or(0);
        self.write_series_metadata(partition, study_uid)?;
        tracing::info!(
            study_uid = %study_uid,
            edit = completed.id,
            rewritten,
            already,
            actor,
            "study edited"
        );
        Ok(EditOutcome::Edited {
            edit: completed,
            files_rewritten: rewritten,
            files_already_edited: already,
            other_studies_of_patient,
        })
    }

    /// Whether every file of the study already carries `targets` (the
    /// index may agree with an edit while a file received after it does
    /// not).
    fn files_hold(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        targets: &[Target],
    ) -> Result<bool, StudyError> {
        let instances = self.store().study_instances(partition.id, study_uid)?;
        self.first_not_holding(&instances, targets)
            .map(|found| found.is_none())
    }

    /// The first of `instances` whose file does not carry `targets`.
    fn first_not_holding<'a>(
        &self,
        instances: &'a [StoredInstance],
        targets: &[Target],
    ) -> Result<Option<&'a StoredInstance>, StudyError> {
        let mut filesystems: BTreeMap<FilesystemId, Filesystem> = BTreeMap::new();
        for instance in instances {
            let id = instance.location.filesystem;
            let filesystem = match filesystems.entry(id) {
                std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::btree_map::Entry::Vacant(new) => new.insert(self.filesystem(id)?),
            };
            let mut source = self.storage.open(filesystem, &key_of(instance))?;
            let head = splice::read_head(&mut source).map_err(|source| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                source: Box::new(source),
            })?;
            if !splice::holds(&head.header, targets) {
                return Ok(Some(instance));
            }
        }
        Ok(None)
    }

    /// The values of the study's completed edits (the latest value of each
    /// attribute), when one of the `arrived` instances does not carry
    /// them: an instance received after an edit, or while it ran, keeps the
    /// values its sender gave it (and its arrival may have put them back in
    /// the index rows). Applying the values again with [`Studies::edit`]
    /// brings files and rows in line. `None`: the study has no completed
    /// edit, or every arrived instance still in the study carries its values.
    pub fn edits_missing_from(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        arrived: &[Uid],
    ) -> Result<Option<Vec<EditValue>>, StudyError> {
        if arrived.is_empty() {
            return Ok(None);
        }
        let mut latest: BTreeMap<EditableAttribute, String> = BTreeMap::new();
        for edit in self.store().edit_history(partition.id, study_uid)? {
            if edit.status == EditStatus::Completed {
                for change in edit.changes {
                    latest.insert(change.attribute, change.new_value);
                }
            }
        }
        if latest.is_empty() {
            return Ok(None);
        }
        let values: Vec<EditValue> = latest
            .into_iter()
            .map(|(attribute, value)| EditValue { attribute, value })
            .collect();
        let targets = validate_values(&values)?;
        let mut instances = Vec::new();
        for sop in arrived {
            match self.db.instance(partition.id, sop)? {
                Some(stored) if stored.location.study_uid == *study_uid => instances.push(stored),
                // Deleted or moved on since: nothing to bring in line.
                _ => {}
            }
        }
        Ok(self
            .first_not_holding(&instances, &targets)?
            .map(|_| values))
    }
}

/// Checks the requested values (one per attribute, each valid for its VR)
/// and returns them as rewrite targets in tag order.
pub(super) fn validate_values(values: &[EditValue]) -> Result<Vec<Target>, StudyError> {
    if values.is_empty() {
        return Err(StudyError::InvalidEdit(EditError::NothingToChange));
    }
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for v in values {
        if !seen.insert(v.attribute) {
            return Err(StudyError::InvalidEdit(EditError::GivenTwice(v.attribute)));
        }
        let value = v.value.trim_matches([' ', '\0']);
        check_value(v.attribute, value).map_err(|source| {
            StudyError::InvalidEdit(EditError::Value {
                attribute: v.attribute,
                value: value.to_string(),
                source,
            })
        })?;
        targets.push(Target {
            attribute: attribute(v.attribute),
            value: value.to_string(),
        });
    }
    targets.sort_by_key(|t| t.attribute.tag);
    Ok(targets)
}

/// PS3.5 6.2 value rules of the editable VRs (single values only).
fn check_value(attribute: EditableAttribute, value: &str) -> Result<(), EditValueError> {
    if value.contains('\\') {
        return Err(EditValueError::MultipleValues);
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(EditValueError::ControlCharacters);
    }
    let chars = value.chars().count();
    let (ok, broken) = match attribute.vr() {
        "DA" => (
            value.is_empty() || value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()),
            EditValueError::Date,
        ),
        "TM" => {
            let (hms, fraction) = value.split_once('.').unwrap_or((value, ""));
            (
                value.is_empty()
                    || (matches!(hms.len(), 2 | 4 | 6)
                        && hms.bytes().all(|b| b.is_ascii_digit())
                        && fraction.len() <= 6
                        && fraction.bytes().all(|b| b.is_ascii_digit())
                        && (fraction.is_empty() || hms.len() == 6)),
                EditValueError::Time,
            )
        }
        "CS" => (
            chars <= 16
                && value.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'
                }),
            EditValueError::CodeString,
        ),
        "SH" => (chars <= 16, EditValueError::TooLong(16)),
        "LO" => (chars <= 64, EditValueError::TooLong(64)),
        "PN" => (
            value.split('=').count() <= 3 && value.split('=').all(|g| g.chars().count() <= 64),
            EditValueError::PersonName,
        ),
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(broken)
    }
}

/// An editable attribute as the splice in `dicom::part10` knows it.
fn attribute(attribute: EditableAttribute) -> splice::Attribute {
    splice::Attribute {
        tag: attribute.tag(),
        vr: attribute.vr(),
        keyword: attribute.keyword(),
    }
}

/// The editable attribute a target was made from.
fn editable(target: &Target) -> Option<EditableAttribute> {
    EditableAttribute::ALL
        .into_iter()
        .find(|a| a.tag() == target.attribute.tag)
}

fn same_targets(edit: &EditRecord, targets: &[Target]) -> bool {
    let recorded: BTreeSet<(splice::Attribute, &str)> = edit
        .changes
        .iter()
        .map(|c| (attribute(c.attribute), c.new_value.as_str()))
        .collect();
    let wanted: BTreeSet<(splice::Attribute, &str)> = targets
        .iter()
        .map(|t| (t.attribute, t.value.as_str()))
        .collect();
    recorded == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_values_are_parsed_and_checked() {
        let v = EditValue::parse("PatientName=DOE^JANE").unwrap();
        assert_eq!(v.attribute, EditableAttribute::PatientName);
        assert_eq!(v.value, "DOE^JANE");
        assert!(EditValue::parse("Modality=CT").is_err());
        assert!(EditValue::parse("PatientName").is_err());
        let cases = [
            ("StudyDate=20240101", true),
            ("StudyDate=2024-01-01", false),
            ("StudyDate=", true),
            ("StudyTime=1015", true),
            ("StudyTime=101500.123", true),
            ("StudyTime=10150", false),
            ("PatientSex=F", true),
            ("PatientSex=female", false),
            ("AccessionNumber=12345678901234567", false),
            ("StudyDescription=A\\B", false),
            ("PatientName=DOE^JANE", true),
        ];
        for (text, ok) in cases {
            let value = EditValue::parse(text).unwrap();
            assert_eq!(validate_values(&[value]).is_ok(), ok, "{text}");
        }
        let twice = [
            EditValue::parse("PatientName=A").unwrap(),
            EditValue::parse("PatientName=B").unwrap(),
        ];
        assert!(matches!(
            validate_values(&twice),
            Err(StudyError::InvalidEdit(EditError::GivenTwice(
                EditableAttribute::PatientName
            )))
        ));
        assert!(matches!(
            validate_values(&[]),
            Err(StudyError::InvalidEdit(EditError::NothingToChange))
        ));
        // What a caller prints: each cause once.
        let bad = EditValue::parse("StudyDate=2024-01-01").unwrap();
        let err = validate_values(&[bad]).unwrap_err();
        assert!(matches!(
            &err,
            StudyError::InvalidEdit(EditError::Value {
                source: EditValueError::Date,
                ..
            })
        ));
        assert_eq!(
            crate::model::error_chain(&err),
            "invalid edit: StudyDate=\"2024-01-01\": a date is YYYYMMDD"
        );
        assert_eq!(
            crate::model::error_chain(&EditValue::parse("PatientName").unwrap_err()),
            "invalid edit: \"PatientName\": expected Keyword=value, e.g. PatientName=DOE^JANE"
        );
        let sorted = validate_values(&[
            EditValue::parse("PatientName=A").unwrap(),
            EditValue::parse("StudyDescription=B").unwrap(),
        ])
        .unwrap();
        assert_eq!(
            sorted[0].attribute,
            attribute(EditableAttribute::StudyDescription)
        );
    }
}
