-- imageserver index, schema version 4: claiming work (db/sqlite/work.rs).
--
-- * study_lock: how the item locks its study while it runs ('read' |
--   'write'), recorded at claim time from the claimer's kind properties. A
--   study is locked by the in-progress items on it whose lease has not
--   expired, so a dead node's lock goes with its lease (study_storage's
--   lock_write/lock_read_count are not used for work items).
-- * work_queue_ready_idx: the claim walks waiting items in claim order
--   (priority first, then scheduled time) without sorting the queue.
ALTER TABLE work_queue ADD COLUMN study_lock TEXT NOT NULL DEFAULT 'write';
CREATE INDEX work_queue_ready_idx ON work_queue (priority DESC, scheduled_time, id)
    WHERE status IN ('pending', 'idle');
-- The instances of an item, and whether one is listed already (appending);
-- replaces the index on work_queue_id alone.
DROP INDEX work_queue_uid_item_idx;
CREATE INDEX work_queue_uid_sop_idx ON work_queue_uid (work_queue_id, sop_instance_uid);
