-- imageserver index, schema version 6: who may replace a stored instance,
-- and the reconcile queue.
--
-- A device replaces a stored instance (duplicate policy 'accept_latest')
-- only with this permission; every other caller gets 'send_success'.
ALTER TABLE device ADD COLUMN allow_replace INTEGER NOT NULL DEFAULT 0;

-- Instances held for a person because their patient identity (PatientID,
-- IssuerOfPatientID, PatientName, PatientBirthDate) conflicts with the
-- stored study they name. The file is kept aside as
-- <study folder>/<series_uid>/<sop_instance_uid>.dup<variant>.dcm on the
-- filesystem recorded here; the patient_* columns are the instance's own
-- identity. A row goes when a person accepts, merges or rejects it (the
-- audit log keeps what was decided).
CREATE TABLE reconcile (
    id                   INTEGER PRIMARY KEY,
    partition_id         INTEGER NOT NULL REFERENCES partition(id) ON DELETE CASCADE,
    sop_instance_uid     TEXT    NOT NULL,
    sop_class_uid        TEXT    NOT NULL,
    transfer_syntax_uid  TEXT    NOT NULL,
    filesystem_id        INTEGER NOT NULL REFERENCES filesystem(id),
    date_folder          TEXT    NOT NULL,
    study_uid            TEXT    NOT NULL,
    series_uid           TEXT    NOT NULL,
    variant              INTEGER NOT NULL,
    file_size            INTEGER NOT NULL,
    digest               TEXT    NOT NULL,
    source_ae            TEXT,
    received_at          INTEGER NOT NULL,
    patient_id           TEXT    NOT NULL,
    issuer_of_patient_id TEXT,
    patient_name         TEXT,
    birth_date           TEXT,
    UNIQUE (partition_id, sop_instance_uid, variant)
) STRICT;
CREATE INDEX reconcile_study_idx ON reconcile (partition_id, study_uid);
