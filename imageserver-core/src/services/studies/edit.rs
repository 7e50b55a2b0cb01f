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
            return Err(StudyError::InvalidEdit(format!(
                "{text:?}: expected Keyword=value, e.g. PatientName=DOE^JANE"
            )));
        };
        let attribute = EditableAttribute::from_keyword(keyword.trim()).ok_or_else(|| {
            StudyError::InvalidEdit(format!(
                "{keyword:?} cannot be edited; editable: {}",
                EditableAttribute::ALL
                    .iter()
                    .map(|a| a.keyword())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(EditValue {
            attribute,
            value: value.trim().to_string(),
        })
    }
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
                        .map_err(|reason| StudyError::File {
                            sop_instance_uid: instance.sop_instance_uid.clone(),
                            reason,
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
            let file_error = |reason: String| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                reason,
            };
            let mut source = files::HashingReader::new(self.storage.open(&filesystem, &key)?);
            let head = splice::read_head(&mut source).map_err(file_error)?;
            if splice::holds(&head.header, &targets) {
                let (file_size, digest) = source.finish().map_err(|e| file_error(e.to_string()))?;
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
            {
                let mut back = writer.read_back()?;
                let header = splice::verify(&mut back, &targets).map_err(file_error)?;
                let sop =
                    part10::header::text(&header, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
                if sop.as_deref() != Some(instance.sop_instance_uid.as_str()) {
                    return Err(file_error(
                        "the edited file names another SOP instance".to_string(),
                    ));
                }
            }
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
            let head = splice::read_head(&mut source).map_err(|reason| StudyError::File {
                sop_instance_uid: instance.sop_instance_uid.clone(),
                reason,
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
        return Err(StudyError::InvalidEdit(
            "nothing to change: give at least one Keyword=value".to_string(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for v in values {
        if !seen.insert(v.attribute) {
            return Err(StudyError::InvalidEdit(format!(
                "{} is given twice",
                v.attribute
            )));
        }
        let value = v.value.trim_matches([' ', '\0']);
        check_value(v.attribute, value).map_err(|reason| {
            StudyError::InvalidEdit(format!("{}={value:?}: {reason}", v.attribute))
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
fn check_value(attribute: EditableAttribute, value: &str) -> Result<(), String> {
    if value.contains('\\') {
        return Err("a single value is expected (no backslash)".to_string());
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed".to_string());
    }
    let chars = value.chars().count();
    let (ok, rule) = match attribute.vr() {
        "DA" => (
            value.is_empty() || value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()),
            "a date is YYYYMMDD",
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
                "a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF",
            )
        }
        "CS" => (
            chars <= 16
                && value.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'
                }),
            "a code string is at most 16 of A-Z 0-9 space _",
        ),
        "SH" => (chars <= 16, "at most 16 characters"),
        "LO" => (chars <= 64, "at most 64 characters"),
        "PN" => (
            value.split('=').count() <= 3 && value.split('=').all(|g| g.chars().count() <= 64),
            "a person name has at most 3 groups of 64 characters",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(rule.to_string())
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
        assert!(validate_values(&twice).is_err());
        assert!(validate_values(&[]).is_err());
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
