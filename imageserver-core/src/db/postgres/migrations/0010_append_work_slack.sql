-- imageserver index, schema version 10 (PostgreSQL only): appending to a
-- study's waiting work item writes the item's row only when the append
-- changes it. No table changes.
--
-- A study arriving batch after batch used to move its StudyProcess item on
-- every batch (the schedule is the quiet period after the latest batch): a
-- new row version and, the schedule being indexed, new entries in all five
-- of work_queue's indexes, per batch. With a slack (p_slack, milliseconds;
-- see `NewWorkItem::slack`), an item scheduled before p_scheduled moves to
-- p_scheduled + p_slack, and one scheduled at or after p_scheduled stays:
-- the item still runs no earlier than the latest batch asked, at most the
-- slack later, and moves once per slack. Expiry, priority and status merge
-- as before; the row is updated only when one of them changes.
--
-- The sixteen-argument function of 0009 stays (PostgreSQL tells the two
-- apart by their arguments), so a node of the previous version still
-- running beside an upgraded one keeps appending.
CREATE FUNCTION imageserver_append_work(
    p_lock BIGINT, p_study BIGINT, p_partition BIGINT, p_type TEXT, p_status TEXT,
    p_priority BIGINT, p_scheduled BIGINT, p_expires BIGINT, p_payload TEXT, p_channel TEXT,
    p_slack BIGINT,
    p_series TEXT[], p_sops TEXT[], p_failed BOOLEAN[], p_counts BIGINT[],
    p_duplicate BOOLEAN[], p_paths TEXT[],
    OUT item_id BIGINT, OUT created BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT;
    due BIGINT;
    old_scheduled BIGINT;
    old_expires BIGINT;
    old_priority BIGINT;
    old_status TEXT;
    new_scheduled BIGINT;
    new_expires BIGINT;
    new_priority BIGINT;
    new_status TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    -- Locked: no claim can change it until this transaction ends.
    SELECT id, scheduled_time, expiration_time, priority, status
      INTO item_id, old_scheduled, old_expires, old_priority, old_status
    FROM work_queue
    WHERE study_storage_id = p_study AND partition_id = p_partition AND type = p_type
      AND status IN ('idle', 'pending')
    ORDER BY id LIMIT 1
    FOR UPDATE;
    now_ms := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT;
    due := COALESCE(p_scheduled, now_ms);
    IF item_id IS NULL THEN
        INSERT INTO work_queue (partition_id, study_storage_id, type, status, priority,
                                scheduled_time, expiration_time, payload, created_at, updated_at)
        VALUES (p_partition, p_study, p_type, p_status, p_priority,
                due + p_slack, p_expires, p_payload, now_ms, now_ms)
        RETURNING id INTO item_id;
        created := TRUE;
    ELSE
        new_scheduled := CASE WHEN old_scheduled < due THEN due + p_slack
                              ELSE old_scheduled END;
        new_expires := CASE WHEN old_expires IS NULL OR p_expires IS NULL THEN NULL
                            ELSE GREATEST(old_expires, p_expires) END;
        new_priority := GREATEST(old_priority, p_priority);
        new_status := CASE WHEN p_status = 'pending' THEN 'pending' ELSE old_status END;
        IF new_scheduled IS DISTINCT FROM old_scheduled
           OR new_expires IS DISTINCT FROM old_expires
           OR new_priority IS DISTINCT FROM old_priority
           OR new_status IS DISTINCT FROM old_status THEN
            UPDATE work_queue SET
                scheduled_time = new_scheduled, expiration_time = new_expires,
                priority = new_priority, status = new_status, updated_at = now_ms
            WHERE id = item_id;
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
