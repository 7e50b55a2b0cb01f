-- imageserver index, schema version 3: study edits (db/sqlite/studies.rs).
--
-- A study edit is recorded *before* any file is rewritten (status
-- 'pending', with the target values), so that an edit interrupted half-way
-- is resumed with the same values; it becomes 'completed' in the same
-- transaction that updates the patient/study rows. 'abandoned' marks a
-- pending edit whose study was deleted. Rows are kept: they are the edit
-- history (who, when, why, old and new values). No foreign key to study:
-- the history outlives the rows it mentions.
CREATE TABLE study_edit (
    id           INTEGER PRIMARY KEY,
    partition_id INTEGER NOT NULL REFERENCES partition(id),
    study_uid    TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    reason       TEXT    NOT NULL DEFAULT '',
    -- 'pending' | 'completed' | 'abandoned'
    status       TEXT    NOT NULL DEFAULT 'pending',
    requested_at INTEGER NOT NULL,
    completed_at INTEGER
) STRICT;
CREATE INDEX study_edit_study_idx ON study_edit (partition_id, study_uid);
-- At most one pending edit per study.
CREATE UNIQUE INDEX study_edit_pending_idx ON study_edit (partition_id, study_uid)
    WHERE status = 'pending';

-- One row per attribute an edit changes: the DICOM keyword, the value the
-- index held before (NULL: absent) and the value written.
CREATE TABLE study_edit_change (
    edit_id   INTEGER NOT NULL REFERENCES study_edit(id) ON DELETE CASCADE,
    attribute TEXT    NOT NULL,
    old_value TEXT,
    new_value TEXT    NOT NULL,
    PRIMARY KEY (edit_id, attribute)
) STRICT;
