-- imageserver index, schema version 11 (PostgreSQL only): a study's
-- deletions, read with a snapshot of their own. No table changes.
--
-- Ingest indexes the common batch (new instances, nothing to recount) in one
-- statement: patients, study storages, studies, series and instances
-- upserted with their counters, and the StudyProcess item appended
-- (db/postgres/ingest/single.rs). One statement has one snapshot, taken
-- before it waits for the study storage rows' locks; a deletion committed
-- while it waited would be invisible to it. This function, VOLATILE and in
-- PL/pgSQL, reads with a snapshot taken when it is called: called for a study
-- after the statement locked the study's storage row, it sees every deletion
-- committed before that lock, as the separate statement of the general path
-- does (the same reads as `db::sql::STUDY_DELETIONS`).
CREATE FUNCTION imageserver_study_deletions(
    p_partition BIGINT, p_study_uid TEXT,
    OUT deleting BOOLEAN, OUT deletions BIGINT, OUT filesystem BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT EXISTS (SELECT 1 FROM study_storage
                   WHERE partition_id = p_partition AND study_uid = p_study_uid
                     AND state = 'deleting'),
           (SELECT COUNT(*) FROM audit_log
            WHERE partition_id = p_partition AND study_uid = p_study_uid
              AND action = 'study.delete'),
           (SELECT filesystem_id FROM study_storage
            WHERE partition_id = p_partition AND study_uid = p_study_uid)
      INTO deleting, deletions, filesystem;
END;
$$;

-- Appending to several studies' waiting work items in one call: the
-- one-statement batch appends its follow-up items (one per study) with it,
-- where one call per item cost a round trip each. Item i (1-based) appends
-- to study storage row p_studies[i] under the advisory lock
-- p_lock_base | p_studies[i], with the rules of 0010's function; the
-- items are taken in the order given (the callers' one lock order: study
-- UID). The instances of all items come in one set of arrays, p_items[j]
-- naming the item of instance j. Returns each item's id and whether it was
-- created, in the order given.
CREATE FUNCTION imageserver_append_works(
    p_lock_base BIGINT, p_studies BIGINT[], p_partitions BIGINT[], p_types TEXT[],
    p_statuses TEXT[], p_priorities BIGINT[], p_scheduled BIGINT[], p_expires BIGINT[],
    p_payloads TEXT[], p_channel TEXT, p_slacks BIGINT[],
    p_items BIGINT[], p_series TEXT[], p_sops TEXT[], p_failed BOOLEAN[], p_counts BIGINT[],
    p_duplicate BOOLEAN[], p_paths TEXT[])
RETURNS TABLE (item_id BIGINT, created BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids BIGINT[] := '{}';
    v_made BOOLEAN[] := '{}';
    v_id BIGINT;
    i INT;
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
    FOR i IN 1 .. COALESCE(array_length(p_studies, 1), 0) LOOP
        PERFORM pg_advisory_xact_lock(p_lock_base | p_studies[i]);
        -- Locked: no claim can change it until this transaction ends.
        v_id := NULL;
        SELECT w.id, w.scheduled_time, w.expiration_time, w.priority, w.status
          INTO v_id, old_scheduled, old_expires, old_priority, old_status
        FROM work_queue w
        WHERE w.study_storage_id = p_studies[i] AND w.partition_id = p_partitions[i]
          AND w.type = p_types[i] AND w.status IN ('idle', 'pending')
        ORDER BY w.id LIMIT 1
        FOR UPDATE;
        now_ms := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT;
        due := COALESCE(p_scheduled[i], now_ms);
        IF v_id IS NULL THEN
            INSERT INTO work_queue (partition_id, study_storage_id, type, status, priority,
                                    scheduled_time, expiration_time, payload, created_at,
                                    updated_at)
            VALUES (p_partitions[i], p_studies[i], p_types[i], p_statuses[i], p_priorities[i],
                    due + p_slacks[i], p_expires[i], p_payloads[i], now_ms, now_ms)
            RETURNING id INTO v_id;
            v_made := v_made || TRUE;
        ELSE
            new_scheduled := CASE WHEN old_scheduled < due THEN due + p_slacks[i]
                                  ELSE old_scheduled END;
            new_expires := CASE WHEN old_expires IS NULL OR p_expires[i] IS NULL THEN NULL
                                ELSE GREATEST(old_expires, p_expires[i]) END;
            new_priority := GREATEST(old_priority, p_priorities[i]);
            new_status := CASE WHEN p_statuses[i] = 'pending' THEN 'pending'
                               ELSE old_status END;
            IF new_scheduled IS DISTINCT FROM old_scheduled
               OR new_expires IS DISTINCT FROM old_expires
               OR new_priority IS DISTINCT FROM old_priority
               OR new_status IS DISTINCT FROM old_status THEN
                UPDATE work_queue SET
                    scheduled_time = new_scheduled, expiration_time = new_expires,
                    priority = new_priority, status = new_status, updated_at = now_ms
                WHERE id = v_id;
            END IF;
            v_made := v_made || FALSE;
        END IF;
        v_ids := v_ids || v_id;
    END LOOP;
    INSERT INTO work_queue_uid (work_queue_id, series_uid, sop_instance_uid, failed,
                                failure_count, duplicate, relative_path)
    SELECT v_ids[t.k], t.s, t.o, t.f, t.c, t.d, t.r
    FROM UNNEST(p_items, p_series, p_sops, p_failed, p_counts, p_duplicate, p_paths)
         WITH ORDINALITY AS t(k, s, o, f, c, d, r, n)
    WHERE NOT EXISTS (SELECT 1 FROM work_queue_uid x
                      WHERE x.work_queue_id = v_ids[t.k] AND x.sop_instance_uid = t.o)
    ORDER BY t.n;
    FOR i IN 1 .. COALESCE(array_length(v_ids, 1), 0) LOOP
        IF v_made[i] THEN
            PERFORM pg_notify(p_channel, p_types[i]);
        END IF;
        item_id := v_ids[i];
        created := v_made[i];
        RETURN NEXT;
    END LOOP;
END;
$$;

-- 0010's function, now one item of the above: the rules live in one place.
CREATE OR REPLACE FUNCTION imageserver_append_work(
    p_lock BIGINT, p_study BIGINT, p_partition BIGINT, p_type TEXT, p_status TEXT,
    p_priority BIGINT, p_scheduled BIGINT, p_expires BIGINT, p_payload TEXT, p_channel TEXT,
    p_slack BIGINT,
    p_series TEXT[], p_sops TEXT[], p_failed BOOLEAN[], p_counts BIGINT[],
    p_duplicate BOOLEAN[], p_paths TEXT[],
    OUT item_id BIGINT, OUT created BOOLEAN)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT w.item_id, w.created INTO item_id, created
    FROM imageserver_append_works(
        p_lock, ARRAY[p_study], ARRAY[p_partition], ARRAY[p_type], ARRAY[p_status],
        ARRAY[p_priority], ARRAY[p_scheduled], ARRAY[p_expires], ARRAY[p_payload], p_channel,
        ARRAY[p_slack], array_fill(1::BIGINT, ARRAY[COALESCE(array_length(p_sops, 1), 0)]),
        p_series, p_sops, p_failed, p_counts, p_duplicate, p_paths) w;
END;
$$;
