-- imageserver index, schema version 3: claiming work (db/postgres/work.rs),
-- as SQLite's 0004_work_queue_claim.sql.
ALTER TABLE work_queue ADD COLUMN study_lock TEXT COLLATE "C" NOT NULL DEFAULT 'write';
CREATE INDEX work_queue_ready_idx ON work_queue (priority DESC, scheduled_time, id)
    WHERE status IN ('pending', 'idle');
DROP INDEX work_queue_uid_item_idx;
CREATE INDEX work_queue_uid_sop_idx ON work_queue_uid (work_queue_id, sop_instance_uid);
