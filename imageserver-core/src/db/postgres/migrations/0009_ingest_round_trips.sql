-- imageserver index, schema version 9 (PostgreSQL only): server-side
-- helpers of the ingest hot path, so that a step that took several round
-- trips takes one. No table changes: the SQLite backend does the same work
-- in process and has no counterpart.

-- Appends instances to the study's waiting work item of a kind, or creates
-- the item (see `append_in` in src/db/postgres/work.rs): takes the study's
-- append lock (p_lock, an advisory transaction lock), locks the oldest
-- idle or pending item of the kind, merges schedule, expiry, priority and
-- status into it and adds the instances it lacks; without such an item,
-- inserts one and signals it on p_channel. An item claimed between the
-- read and the update aborts the transaction with a serialization failure
-- (40001), which the caller retries.
CREATE FUNCTION imageserver_append_work(
    p_lock BIGINT, p_study BIGINT, p_partition BIGINT, p_type TEXT, p_status TEXT,
    p_priority BIGINT, p_scheduled BIGINT, p_expires BIGINT, p_payload TEXT, p_channel TEXT,
    p_series TEXT[], p_sops TEXT[], p_failed BOOLEAN[], p_counts BIGINT[],
    p_duplicate BOOLEAN[], p_paths TEXT[],
    OUT item_id BIGINT, OUT created BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT id INTO item_id FROM work_queue
    WHERE study_storage_id = p_study AND partition_id = p_partition AND type = p_type
      AND status IN ('idle', 'pending')
    ORDER BY id LIMIT 1
    FOR UPDATE;
    now_ms := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT;
    IF item_id IS NULL THEN
        INSERT INTO work_queue (partition_id, study_storage_id, type, status, priority,
                                scheduled_time, expiration_time, payload, created_at, updated_at)
        VALUES (p_partition, p_study, p_type, p_status, p_priority,
                COALESCE(p_scheduled, now_ms), p_expires, p_payload, now_ms, now_ms)
        RETURNING id INTO item_id;
        created := TRUE;
    ELSE
        UPDATE work_queue SET
            scheduled_time = GREATEST(scheduled_time, COALESCE(p_scheduled, now_ms)),
            expiration_time = CASE WHEN expiration_time IS NULL OR p_expires IS NULL
                                   THEN NULL ELSE GREATEST(expiration_time, p_expires) END,
            priority = GREATEST(priority, p_priority),
            status = CASE WHEN p_status = 'pending' THEN 'pending' ELSE status END,
            updated_at = now_ms
        WHERE id = item_id AND status IN ('idle', 'pending');
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a work item was claimed while appending'
                USING ERRCODE = 'serialization_failure';
        END IF;
        created := FALSE;
    END IF;
    INSERT INTO work_queue_uid (work_queue_id, series_uid, sop_instance_uid, failed,
                                failure_count, duplicate, relative_path)
    SELECT item_id, t.s, t.o, t.f, t.c, t.d, t.r
    FROM UNNEST(p_series, p_sops, p_failed, p_counts, p_duplicate, p_paths)
         WITH ORDINALITY AS t(s, o, f, c, d, r, n)
    WHERE NOT EXISTS (SELECT 1 FROM work_queue_uid x
                      WHERE x.work_queue_id = item_id AND x.sop_instance_uid = t.o)
    ORDER BY t.n;
    IF created THEN
        PERFORM pg_notify(p_channel, p_type);
    END IF;
END;
$$;
