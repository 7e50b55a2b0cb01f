-- imageserver index, schema version 1: the whole product's tables.
--
-- Conventions (the PostgreSQL backend mirrors them):
-- * Every time stamp (created_at, received_at, scheduled_time, lease_expires_at,
--   ...) is an INTEGER of milliseconds since the Unix epoch, UTC.
-- * DICOM date and time attributes (study_date, series_time, birth_date, ...)
--   are TEXT exactly as received (DA `YYYYMMDD`, TM `HHMMSS.FFFFFF`), trimmed,
--   NULL when absent: DA strings sort chronologically, so range matching is a
--   string range.
-- * Booleans are INTEGER 0/1.
-- * Enumerations (states, statuses, policies) are TEXT without CHECK
--   constraints, so that a later version can add values without rebuilding a
--   table; the Rust enums are the authority.
-- * A missing issuer of patient ID is stored as '' (not NULL) so that the
--   UNIQUE constraint over it holds.
-- * Tables are STRICT: a value of the wrong type is an error, not a surprise.

CREATE TABLE partition (
    id                  INTEGER PRIMARY KEY,
    ae_title            TEXT    NOT NULL UNIQUE,
    -- Folder under each filesystem root; two partitions never share one.
    folder              TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    description         TEXT    NOT NULL DEFAULT '',
    -- DICOM port of the partition's listener (NULL: the server's default).
    port                INTEGER,
    accept_any_device   INTEGER NOT NULL DEFAULT 1,
    -- 'send_success' | 'reject' | 'compare' | 'accept_latest'
    duplicate_policy    TEXT    NOT NULL DEFAULT 'accept_latest',
    pn_case_insensitive INTEGER NOT NULL DEFAULT 1,
    enabled             INTEGER NOT NULL DEFAULT 1,
    created_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE filesystem (
    id             INTEGER PRIMARY KEY,
    path           TEXT    NOT NULL UNIQUE,
    tier           INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 255),
    -- Percentages of the filesystem's capacity.
    high_watermark REAL    NOT NULL,
    low_watermark  REAL    NOT NULL,
    read_only      INTEGER NOT NULL DEFAULT 0,
    write_only     INTEGER NOT NULL DEFAULT 0,
    enabled        INTEGER NOT NULL DEFAULT 1,
    description    TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE TABLE device (
    id               INTEGER PRIMARY KEY,
    partition_id     INTEGER NOT NULL REFERENCES partition(id) ON DELETE CASCADE,
    ae_title         TEXT    NOT NULL,
    host             TEXT    NOT NULL,
    port             INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    allow_store      INTEGER NOT NULL DEFAULT 1,
    allow_query      INTEGER NOT NULL DEFAULT 1,
    allow_retrieve   INTEGER NOT NULL DEFAULT 1,
    allow_autoroute  INTEGER NOT NULL DEFAULT 1,
    -- 0: no limit.
    max_associations INTEGER NOT NULL DEFAULT 0,
    description      TEXT    NOT NULL DEFAULT '',
    enabled          INTEGER NOT NULL DEFAULT 1,
    last_seen        INTEGER,
    UNIQUE (partition_id, ae_title)
) STRICT;

-- The study-level counters (num_*) of patient, study and series are kept by
-- the index on every insert; C-FIND answers "number of related" from them.

CREATE TABLE patient (
    id                   INTEGER PRIMARY KEY,
    partition_id         INTEGER NOT NULL REFERENCES partition(id),
    patient_id           TEXT    NOT NULL,
    issuer_of_patient_id TEXT    NOT NULL DEFAULT '',
    patient_name         TEXT,
    birth_date           TEXT,
    sex                  TEXT,
    num_studies          INTEGER NOT NULL DEFAULT 0,
    num_series           INTEGER NOT NULL DEFAULT 0,
    num_instances        INTEGER NOT NULL DEFAULT 0,
    -- Also the (partition_id, patient_id) lookup index.
    UNIQUE (partition_id, patient_id, issuer_of_patient_id)
) STRICT;
-- Name matching (prefix LIKE) is case-insensitive by default (the partition's
-- pn_case_insensitive): a NOCASE index serves it.
CREATE INDEX patient_name_idx ON patient (partition_id, patient_name COLLATE NOCASE);

-- Where a study's files live. Created by the study's first instance, which
-- fixes its filesystem and date folder; later instances follow it. Also the
-- per-study lock and work-queue state of the WorkQueue engine.
CREATE TABLE study_storage (
    id              INTEGER PRIMARY KEY,
    partition_id    INTEGER NOT NULL REFERENCES partition(id),
    study_uid       TEXT    NOT NULL,
    -- NULL while the study has no online copy (nearline: purged after archive).
    filesystem_id   INTEGER REFERENCES filesystem(id),
    -- `YYYYMMDD` or `00000000`.
    date_folder     TEXT    NOT NULL,
    -- 'idle' | 'processing' | 'migrating' | 'archiving' | 'restoring' | 'deleting' | 'editing' | 'nearline' ...
    state           TEXT    NOT NULL DEFAULT 'idle',
    -- 1 while a work item holds the study's write lock.
    lock_write      INTEGER NOT NULL DEFAULT 0,
    lock_read_count INTEGER NOT NULL DEFAULT 0 CHECK (lock_read_count >= 0),
    -- Summary of the study's queued work: 'idle' | 'scheduled' | 'in_progress' | 'failed' ...
    queue_state     TEXT    NOT NULL DEFAULT 'idle',
    last_accessed   INTEGER,
    created_at      INTEGER NOT NULL,
    UNIQUE (partition_id, study_uid)
) STRICT;
CREATE INDEX study_storage_filesystem_idx ON study_storage (filesystem_id);

CREATE TABLE study (
    id                       INTEGER PRIMARY KEY,
    partition_id             INTEGER NOT NULL REFERENCES partition(id),
    patient_fk               INTEGER NOT NULL REFERENCES patient(id),
    study_storage_id         INTEGER NOT NULL REFERENCES study_storage(id),
    study_uid                TEXT    NOT NULL,
    study_date               TEXT,
    study_time               TEXT,
    accession_number         TEXT,
    study_id                 TEXT,
    study_description        TEXT,
    referring_physician_name TEXT,
    specific_character_set   TEXT,
    -- Distinct values, sorted, joined with '\' ('' when none).
    modalities_in_study      TEXT    NOT NULL DEFAULT '',
    sop_classes_in_study     TEXT    NOT NULL DEFAULT '',
    num_series               INTEGER NOT NULL DEFAULT 0,
    num_instances            INTEGER NOT NULL DEFAULT 0,
    size_bytes               INTEGER NOT NULL DEFAULT 0,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    UNIQUE (partition_id, study_uid)
) STRICT;
CREATE INDEX study_date_idx ON study (partition_id, study_date);
CREATE INDEX study_accession_idx ON study (partition_id, accession_number);
CREATE INDEX study_patient_idx ON study (patient_fk);
CREATE INDEX study_storage_idx ON study (study_storage_id);

CREATE TABLE series (
    id                 INTEGER PRIMARY KEY,
    study_fk           INTEGER NOT NULL REFERENCES study(id),
    series_uid         TEXT    NOT NULL,
    modality           TEXT,
    series_number      INTEGER,
    series_description TEXT,
    body_part_examined TEXT,
    series_date        TEXT,
    series_time        TEXT,
    num_instances      INTEGER NOT NULL DEFAULT 0,
    -- Also the series-of-a-study index.
    UNIQUE (study_fk, series_uid)
) STRICT;
CREATE INDEX series_uid_idx ON series (series_uid);
-- ModalitiesInStudy matching: studies having a series of a modality.
CREATE INDEX series_modality_idx ON series (modality, study_fk);

CREATE TABLE instance (
    id                  INTEGER PRIMARY KEY,
    -- Denormalised from the study so that the SOP Instance UID lookup is one
    -- index probe.
    partition_id        INTEGER NOT NULL REFERENCES partition(id),
    series_fk           INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid    TEXT    NOT NULL,
    sop_class_uid       TEXT    NOT NULL,
    instance_number     INTEGER,
    transfer_syntax_uid TEXT    NOT NULL,
    file_size           INTEGER NOT NULL CHECK (file_size >= 0),
    -- BLAKE3 of the stored file, lowercase hex.
    digest              TEXT    NOT NULL,
    source_ae           TEXT,
    received_at         INTEGER NOT NULL,
    UNIQUE (partition_id, sop_instance_uid)
) STRICT;
CREATE INDEX instance_series_idx ON instance (series_fk);

CREATE TABLE work_queue (
    id                  INTEGER PRIMARY KEY,
    partition_id        INTEGER NOT NULL REFERENCES partition(id),
    -- The study the item works on (NULL for items bound to no study).
    study_storage_id    INTEGER REFERENCES study_storage(id),
    -- 'study_process' | 'auto_route' | 'delete_study' | 'migrate_study' | ... or a product's own type.
    type                TEXT    NOT NULL,
    -- 'idle' | 'pending' | 'in_progress' | 'completed' | 'failed'
    status              TEXT    NOT NULL DEFAULT 'pending',
    -- Higher runs first.
    priority            INTEGER NOT NULL DEFAULT 0,
    scheduled_time      INTEGER NOT NULL,
    expiration_time     INTEGER,
    failure_count       INTEGER NOT NULL DEFAULT 0,
    failure_description TEXT,
    -- The node/worker holding the claim, and until when (a lease).
    processor_id        TEXT,
    lease_expires_at    INTEGER,
    attempt             INTEGER NOT NULL DEFAULT 0,
    -- Per-type properties, JSON.
    payload             TEXT    NOT NULL DEFAULT '{}',
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;
CREATE INDEX work_queue_claim_idx ON work_queue (status, scheduled_time, priority);
-- Taking over items whose lease expired.
CREATE INDEX work_queue_lease_idx ON work_queue (status, lease_expires_at);
CREATE INDEX work_queue_study_idx ON work_queue (study_storage_id);

CREATE TABLE work_queue_uid (
    id               INTEGER PRIMARY KEY,
    work_queue_id    INTEGER NOT NULL REFERENCES work_queue(id) ON DELETE CASCADE,
    series_uid       TEXT    NOT NULL,
    sop_instance_uid TEXT    NOT NULL,
    failed           INTEGER NOT NULL DEFAULT 0,
    failure_count    INTEGER NOT NULL DEFAULT 0,
    -- A duplicate kept for review (duplicate policy 'compare') and where its
    -- file waits, relative to the study folder.
    duplicate        INTEGER NOT NULL DEFAULT 0,
    relative_path    TEXT
) STRICT;
CREATE INDEX work_queue_uid_item_idx ON work_queue_uid (work_queue_id);

-- Instances received for a SOP Instance UID already held, kept aside under
-- the 'compare' duplicate policy until a person reconciles them. The file is
-- <study folder>/<series_uid>/<sop_instance_uid>.dup<variant>.dcm on the
-- filesystem of the study location recorded here.
CREATE TABLE duplicate (
    id               INTEGER PRIMARY KEY,
    partition_id     INTEGER NOT NULL REFERENCES partition(id) ON DELETE CASCADE,
    sop_instance_uid TEXT    NOT NULL,
    filesystem_id    INTEGER NOT NULL REFERENCES filesystem(id),
    date_folder      TEXT    NOT NULL,
    study_uid        TEXT    NOT NULL,
    series_uid       TEXT    NOT NULL,
    variant          INTEGER NOT NULL,
    file_size        INTEGER NOT NULL,
    digest           TEXT    NOT NULL,
    source_ae        TEXT,
    received_at      INTEGER NOT NULL,
    UNIQUE (partition_id, sop_instance_uid, variant)
) STRICT;

-- Who stored, queried, retrieved, deleted what. No foreign keys: the log
-- outlives the rows it mentions.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    partition_id INTEGER,
    study_uid    TEXT,
    -- JSON.
    details      TEXT
) STRICT;
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_study_idx ON audit_log (study_uid);

-- Locks of the DB-locked scheduled services: a lease held by one node.
CREATE TABLE service_lock (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
