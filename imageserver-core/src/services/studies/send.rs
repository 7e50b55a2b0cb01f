//! Send a study to a device (MoveStudy, AutoRoute), with per-instance
//! outcomes for the retry.

use super::*;

/// What [`Studies::send`] did, per instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// The destination, `AE@host:port`.
    pub destination: String,
    /// Stored with status success.
    pub delivered: Vec<Uid>,
    /// Stored with a warning status (not retried).
    pub warnings: Vec<(Uid, String)>,
    /// Not stored, with the reason: what a retry sends again.
    pub failed: Vec<(Uid, String)>,
    /// Asked for, but not an instance of the study (not retried).
    pub missing: Vec<Uid>,
}

impl SendReport {
    /// The UIDs to send again.
    pub fn failed_uids(&self) -> Vec<Uid> {
        self.failed.iter().map(|(uid, _)| uid.clone()).collect()
    }

    /// Whether every instance asked for arrived.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }
}

impl Studies {
    // --------------------------------------------------------------- send

    /// The device of `partition` called `ae_title`, usable as a destination.
    pub fn destination(
        &self,
        partition: &Partition,
        ae_title: &str,
    ) -> Result<DeviceSpec, StudyError> {
        let unknown = || StudyError::UnknownDevice {
            partition: partition.ae_title.to_string(),
            ae_title: ae_title.to_string(),
        };
        let wanted = AeTitle::parse(ae_title).map_err(|_| unknown())?;
        self.db
            .devices(partition.id)?
            .into_iter()
            .find(|d| d.ae_title == wanted && d.port != 0)
            .ok_or_else(unknown)
    }

    /// Sends every instance of a study (or only `only`) to `device` with
    /// the storage SCU, one outcome per instance. Partial failure is not an
    /// error: [`SendReport::failed_uids`] is what a retry sends again; a
    /// destination that cannot be reached fails every instance. Refused
    /// with [`StudyError::DeviceBusy`], before anything is read or sent,
    /// while the device has all the associations its limit allows.
    pub fn send(
        &self,
        partition: &Partition,
        study_uid: &Uid,
        device: &DeviceSpec,
        only: Option<&[Uid]>,
        options: &ScuOptions,
        actor: &str,
    ) -> Result<SendReport, StudyError> {
        let _permit = self
            .sends
            .try_acquire(partition.id, device)
            .ok_or_else(|| StudyError::DeviceBusy {
                ae_title: device.ae_title.to_string(),
                limit: device.max_outgoing_associations,
            })?;
        let (_, filesystem) = self.online_files(partition, study_uid)?;
        let mut instances = self.store().study_instances(partition.id, study_uid)?;
        let mut report = SendReport {
            destination: format!("{}@{}:{}", device.ae_title, device.host, device.port),
            ..SendReport::default()
        };
        if let Some(only) = only {
            let wanted: BTreeSet<&Uid> = only.iter().collect();
            let present: BTreeSet<&Uid> = instances.iter().map(|i| &i.sop_instance_uid).collect();
            report.missing = wanted
                .iter()
                .filter(|uid| !present.contains(**uid))
                .map(|uid| (*uid).clone())
                .collect();
            instances.retain(|i| wanted.contains(&i.sop_instance_uid));
        }
        let items: Vec<OutgoingInstance<'_>> = instances
            .into_iter()
            .map(|stored| OutgoingInstance {
                stored,
                filesystem: &filesystem,
                storage: &*self.storage,
            })
            .collect();
        let destination = Destination {
            ae_title: device.ae_title.to_string(),
            host: device.host.clone(),
            port: device.port,
        };
        // A device configured for TLS gets it whoever asked for the send.
        let mut tls_options;
        let options = match self.device_tls(partition.id, device.ae_title.as_str()) {
            Some(tls) if options.tls.is_none() => {
                tls_options = options.clone();
                tls_options.tls = Some(tls);
                &tls_options
            }
            _ => options,
        };
        let mut answered: BTreeSet<Uid> = BTreeSet::new();
        let result =
            crate::services::send::send(&destination, options, &items, &mut |item, outcome| {
                let uid = item.stored.sop_instance_uid.clone();
                answered.insert(uid.clone());
                match (outcome.tally(), outcome) {
                    (Tally::Completed, _) => report.delivered.push(uid),
                    (Tally::Warning, outcome) => report.warnings.push((uid, outcome.describe())),
                    (Tally::Failed, outcome) => report.failed.push((uid, outcome.describe())),
                }
                ControlFlow::Continue(())
            });
        match result {
            Ok(_) => {
                // Whatever the SCU did not report (it stopped) failed.
                for item in &items {
                    if !answered.contains(&item.stored.sop_instance_uid) {
                        report.failed.push((
                            item.stored.sop_instance_uid.clone(),
                            "not attempted".to_string(),
                        ));
                    }
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for item in &items {
                    if !answered.contains(&item.stored.sop_instance_uid) {
                        report
                            .failed
                            .push((item.stored.sop_instance_uid.clone(), reason.clone()));
                    }
                }
            }
        }
        let audit = AuditEntry::now(
            actor,
            "study.send",
            partition.id,
            study_uid,
            JsonObject::new()
                .string("destination", Some(&report.destination))
                .int("delivered", report.delivered.len() as i128)
                .int("warnings", report.warnings.len() as i128)
                .raw(
                    "failed",
                    &json_strings(report.failed.iter().map(|(uid, _)| uid.as_str())),
                )
                .finish(),
        );
        self.store().record_audit(&audit)?;
        tracing::info!(
            study_uid = %study_uid,
            destination = %report.destination,
            delivered = report.delivered.len(),
            warnings = report.warnings.len(),
            failed = report.failed.len(),
            "study sent"
        );
        Ok(report)
    }
}

/// A stored instance as the storage SCU sends it.
struct OutgoingInstance<'a> {
    stored: StoredInstance,
    filesystem: &'a Filesystem,
    storage: &'a dyn StorageBackend,
}

impl Outgoing for OutgoingInstance<'_> {
    fn sop_class_uid(&self) -> &str {
        self.stored.sop_class_uid.as_str()
    }

    fn sop_instance_uid(&self) -> &str {
        self.stored.sop_instance_uid.as_str()
    }

    fn transfer_syntax_uid(&self) -> &str {
        self.stored.transfer_syntax_uid.as_str()
    }

    fn file_size(&self) -> Option<u64> {
        Some(self.stored.file_size)
    }

    fn open(&self) -> Result<Box<dyn Read + Send + '_>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.storage.open(self.filesystem, &key_of(&self.stored))?)
    }
}
