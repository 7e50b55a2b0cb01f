-- imageserver index, schema version 13 (PostgreSQL only): the common ingest
-- batch indexed by a function of small statements. No table changes.
--
-- 0011's one statement (db/postgres/ingest/single.rs) wrote a batch in one
-- round trip, but as ~130 plan nodes (CTEs, hash joins, sub-plans), and
-- PostgreSQL builds and tears down every node on every call, whatever the
-- batch's size: ~0.8 ms for a batch of one instance, over a third of it
-- ExecutorStart. This function takes the same arguments and returns the
-- same rows, but each step is a statement of a row or two (an INSERT … ON
-- CONFLICT of one row, a look-up by a unique key), whose plan PL/pgSQL keeps.
--
-- Same rules as the statement:
-- - What is new is read before any lock is taken: a study or series absent
--   then and present when locked (or the reverse) is reported (`studies_off`,
--   `series_off`), and the caller rolls back and takes the general path.
-- - The locks are taken in the general path's order: patients, study
--   storages, studies, series, instances (each level in the order given:
--   key order), then the appends' (in study order).
-- - A study whose row names another patient, or a series whose modality
--   changes, is not written and not counted (`studies`, `series` fall short).
-- - An instance already indexed is not written and not counted.
-- - A study's state and filesystem are its storage row's as its upsert
--   returns it: the latest version, locked from then on. Its deletions are
--   counted after every storage row is locked, with a snapshot taken then
--   (what 0011's `imageserver_study_deletions` read, in one statement).
-- Arguments, in the statement's order: patients ($1-$7), studies ($8-$23),
-- series ($24-$32), the time ($33), instances ($34-$42), then the appends
-- ($43 the lock base, $44 each item's study (1-based, in the studies'
-- order), $45-$60 0011's `imageserver_append_works` arguments after its
-- studies); $44 NULL appends nothing and returns `appended` 0.
-- 0011's `imageserver_study_deletions`, which this build no longer calls,
-- stays for nodes of the previous version during a rolling upgrade.

-- A study summary (`\`-joined distinct values, sorted byte-wise, empty
-- values dropped: SQLite's and the general path's `joined`) with `p_add`'s
-- values added. Nothing new (the common case) returns the row's value as
-- it is, without a query.
CREATE FUNCTION imageserver_summary_merge(p_old TEXT, p_add TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF string_to_array(p_add, '\') <@ string_to_array(p_old, '\') THEN
        RETURN p_old;
    END IF;
    RETURN (SELECT COALESCE(string_agg(v, '\' ORDER BY v), '')
            FROM (SELECT DISTINCT v COLLATE "C" AS v
                  FROM unnest(string_to_array(p_old, '\') || string_to_array(p_add, '\')) AS v
                  WHERE v <> '') m);
END;
$$;

CREATE FUNCTION imageserver_ingest(
    pa_partition BIGINT[], pa_patient_id TEXT[], pa_issuer TEXT[], pa_name TEXT[],
    pa_birth TEXT[], pa_sex TEXT[], pa_instances BIGINT[],
    st_partition BIGINT[], st_uid TEXT[], st_patient BIGINT[], st_filesystem BIGINT[],
    st_folder TEXT[], st_date TEXT[], st_time TEXT[], st_accession TEXT[], st_id TEXT[],
    st_description TEXT[], st_referring TEXT[], st_charset TEXT[], st_instances BIGINT[],
    st_size BIGINT[], st_classes TEXT[], st_modalities TEXT[],
    se_study BIGINT[], se_uid TEXT[], se_modality TEXT[], se_number INT4[],
    se_description TEXT[], se_body_part TEXT[], se_date TEXT[], se_time TEXT[],
    se_instances BIGINT[],
    p_now BIGINT,
    in_partition BIGINT[], in_series BIGINT[], in_uid TEXT[], in_class TEXT[],
    in_number INT4[], in_syntax TEXT[], in_size BIGINT[], in_digest TEXT[], in_source TEXT[],
    ap_lock_base BIGINT, ap_study BIGINT[], ap_partitions BIGINT[], ap_types TEXT[],
    ap_statuses TEXT[], ap_priorities BIGINT[], ap_scheduled BIGINT[], ap_expires BIGINT[],
    ap_payloads TEXT[], ap_channel TEXT, ap_slacks BIGINT[],
    ap_items BIGINT[], ap_series TEXT[], ap_sops TEXT[], ap_failed BOOLEAN[],
    ap_counts BIGINT[], ap_duplicate BOOLEAN[], ap_paths TEXT[])
RETURNS TABLE (id BIGINT, partition_id BIGINT, study_uid TEXT, filesystem_id BIGINT,
               date_folder TEXT, deleting BOOLEAN, deletions BIGINT,
               patients BIGINT, studies BIGINT, studies_off BIGINT, series BIGINT,
               series_off BIGINT, instances BIGINT, appended BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_pa INT := COALESCE(array_length(pa_partition, 1), 0);
    n_st INT := COALESCE(array_length(st_partition, 1), 0);
    n_se INT := COALESCE(array_length(se_study, 1), 0);
    n_in INT := COALESCE(array_length(in_partition, 1), 0);
    -- Per study: its row's id when the look-up ran (NULL: new), its new
    -- series, its storage row, its row once written (NULL: not written).
    st_old BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_st]);
    st_new_series BIGINT[] := array_fill(0::BIGINT, ARRAY[n_st]);
    ss_id BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_st]);
    ss_fs BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_st]);
    ss_folder TEXT[] := array_fill(NULL::TEXT, ARRAY[n_st]);
    ss_deleting BOOLEAN[] := array_fill(FALSE, ARRAY[n_st]);
    st_row BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_st]);
    -- Per series: whether it was there when looked up; its row once written.
    se_existed BOOLEAN[] := array_fill(FALSE, ARRAY[n_se]);
    se_row BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_se]);
    pa_row BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n_pa]);
    v_id BIGINT;
    v_inserted BOOLEAN;
    v_fs BIGINT;
    v_folder TEXT;
    v_deleting BOOLEAN;
    v_studies BIGINT;
    v_series BIGINT;
    c_patients BIGINT := 0;
    c_studies BIGINT := 0;
    c_studies_off BIGINT := 0;
    c_series BIGINT := 0;
    c_series_off BIGINT := 0;
    c_instances BIGINT := 0;
    c_appended BIGINT := 0;
    i INT;
    j INT;
BEGIN
    -- What is new, before any lock.
    FOR i IN 1 .. n_st LOOP
        SELECT s.id INTO v_id FROM study s
        WHERE s.partition_id = st_partition[i] AND s.study_uid = st_uid[i];
        st_old[i] := v_id;
    END LOOP;
    FOR j IN 1 .. n_se LOOP
        i := se_study[j];
        IF st_old[i] IS NOT NULL THEN
            se_existed[j] := EXISTS (SELECT 1 FROM series x
                                     WHERE x.study_fk = st_old[i] AND x.series_uid = se_uid[j]);
        END IF;
        IF NOT se_existed[j] THEN
            st_new_series[i] := st_new_series[i] + 1;
        END IF;
    END LOOP;

    FOR j IN 1 .. n_pa LOOP
        v_studies := 0;
        v_series := 0;
        FOR i IN 1 .. n_st LOOP
            IF st_patient[i] = j THEN
                IF st_old[i] IS NULL THEN
                    v_studies := v_studies + 1;
                END IF;
                v_series := v_series + st_new_series[i];
            END IF;
        END LOOP;
        INSERT INTO patient AS p
            (partition_id, patient_id, issuer_of_patient_id, patient_name, birth_date, sex,
             num_studies, num_series, num_instances)
        VALUES (pa_partition[j], pa_patient_id[j], pa_issuer[j], pa_name[j], pa_birth[j],
                pa_sex[j], v_studies, v_series, pa_instances[j])
        ON CONFLICT (partition_id, patient_id, issuer_of_patient_id) DO UPDATE SET
            patient_name = COALESCE(excluded.patient_name, p.patient_name),
            birth_date = COALESCE(excluded.birth_date, p.birth_date),
            sex = COALESCE(excluded.sex, p.sex),
            num_studies = p.num_studies + excluded.num_studies,
            num_series = p.num_series + excluded.num_series,
            num_instances = p.num_instances + excluded.num_instances
        RETURNING p.id INTO v_id;
        pa_row[j] := v_id;
        c_patients := c_patients + 1;
    END LOOP;

    FOR i IN 1 .. n_st LOOP
        INSERT INTO study_storage AS s (partition_id, study_uid, filesystem_id, date_folder, created_at)
        VALUES (st_partition[i], st_uid[i], st_filesystem[i], st_folder[i], p_now)
        ON CONFLICT (partition_id, study_uid) DO UPDATE
        SET filesystem_id = COALESCE(s.filesystem_id, excluded.filesystem_id),
            date_folder = CASE WHEN s.filesystem_id IS NULL THEN excluded.date_folder
                               ELSE s.date_folder END
        RETURNING s.id, s.filesystem_id, s.date_folder, s.state = 'deleting'
            INTO v_id, v_fs, v_folder, v_deleting;
        ss_id[i] := v_id;
        ss_fs[i] := v_fs;
        ss_folder[i] := v_folder;
        ss_deleting[i] := v_deleting;
    END LOOP;

    FOR i IN 1 .. n_st LOOP
        v_id := NULL;
        INSERT INTO study AS s
            (partition_id, patient_fk, study_storage_id, study_uid, study_date, study_time,
             accession_number, study_id, study_description, referring_physician_name,
             specific_character_set, modalities_in_study, sop_classes_in_study, num_series,
             num_instances, size_bytes, created_at, updated_at)
        VALUES (st_partition[i], pa_row[st_patient[i]], ss_id[i], st_uid[i], st_date[i],
                st_time[i], st_accession[i], st_id[i], st_description[i], st_referring[i],
                st_charset[i], st_modalities[i], st_classes[i], st_new_series[i],
                st_instances[i], st_size[i], p_now, p_now)
        ON CONFLICT (partition_id, study_uid) DO UPDATE SET
            study_date = COALESCE(excluded.study_date, s.study_date),
            study_time = COALESCE(excluded.study_time, s.study_time),
            accession_number = COALESCE(excluded.accession_number, s.accession_number),
            study_id = COALESCE(excluded.study_id, s.study_id),
            study_description = COALESCE(excluded.study_description, s.study_description),
            referring_physician_name =
                COALESCE(excluded.referring_physician_name, s.referring_physician_name),
            specific_character_set =
                COALESCE(excluded.specific_character_set, s.specific_character_set),
            modalities_in_study =
                imageserver_summary_merge(s.modalities_in_study, excluded.modalities_in_study),
            sop_classes_in_study =
                imageserver_summary_merge(s.sop_classes_in_study, excluded.sop_classes_in_study),
            num_series = s.num_series + excluded.num_series,
            num_instances = s.num_instances + excluded.num_instances,
            size_bytes = s.size_bytes + excluded.size_bytes,
            updated_at = excluded.updated_at
        WHERE s.patient_fk = excluded.patient_fk
        RETURNING s.id, (s.xmax = 0) INTO v_id, v_inserted;
        IF v_id IS NOT NULL THEN
            st_row[i] := v_id;
            c_studies := c_studies + 1;
            IF v_inserted <> (st_old[i] IS NULL) THEN
                c_studies_off := c_studies_off + 1;
            END IF;
        END IF;
    END LOOP;

    FOR j IN 1 .. n_se LOOP
        CONTINUE WHEN st_row[se_study[j]] IS NULL;
        v_id := NULL;
        INSERT INTO series AS s
            (study_fk, series_uid, modality, series_number, series_description,
             body_part_examined, series_date, series_time, num_instances)
        VALUES (st_row[se_study[j]], se_uid[j], se_modality[j], se_number[j],
                se_description[j], se_body_part[j], se_date[j], se_time[j], se_instances[j])
        ON CONFLICT (study_fk, series_uid) DO UPDATE SET
            modality = COALESCE(excluded.modality, s.modality),
            series_number = COALESCE(excluded.series_number, s.series_number),
            series_description = COALESCE(excluded.series_description, s.series_description),
            body_part_examined = COALESCE(excluded.body_part_examined, s.body_part_examined),
            series_date = COALESCE(excluded.series_date, s.series_date),
            series_time = COALESCE(excluded.series_time, s.series_time),
            num_instances = s.num_instances + excluded.num_instances
        WHERE s.modality IS NULL OR excluded.modality IS NULL OR s.modality = excluded.modality
        RETURNING s.id, (s.xmax = 0) INTO v_id, v_inserted;
        IF v_id IS NOT NULL THEN
            se_row[j] := v_id;
            c_series := c_series + 1;
            IF v_inserted = se_existed[j] THEN
                c_series_off := c_series_off + 1;
            END IF;
        END IF;
    END LOOP;

    FOR j IN 1 .. n_in LOOP
        CONTINUE WHEN se_row[in_series[j]] IS NULL;
        INSERT INTO instance
            (partition_id, series_fk, sop_instance_uid, sop_class_uid, instance_number,
             transfer_syntax_uid, file_size, digest, source_ae, received_at)
        VALUES (in_partition[j], se_row[in_series[j]], in_uid[j], in_class[j], in_number[j],
                in_syntax[j], in_size[j], in_digest[j], in_source[j], p_now)
        ON CONFLICT (partition_id, sop_instance_uid) DO NOTHING;
        IF FOUND THEN
            c_instances := c_instances + 1;
        END IF;
    END LOOP;

    IF ap_study IS NOT NULL THEN
        SELECT COUNT(*) INTO c_appended
        FROM imageserver_append_works(
            ap_lock_base,
            ARRAY(SELECT ss_id[a.study_n] FROM UNNEST(ap_study) WITH ORDINALITY AS a(study_n, k)
                  ORDER BY a.k),
            ap_partitions, ap_types, ap_statuses, ap_priorities, ap_scheduled, ap_expires,
            ap_payloads, ap_channel, ap_slacks, ap_items, ap_series, ap_sops, ap_failed,
            ap_counts, ap_duplicate, ap_paths);
    END IF;

    FOR i IN 1 .. n_st LOOP
        id := ss_id[i];
        partition_id := st_partition[i];
        study_uid := st_uid[i];
        filesystem_id := ss_fs[i];
        date_folder := ss_folder[i];
        deleting := ss_deleting[i];
        -- Counted now: a snapshot taken after every storage row was locked.
        SELECT COUNT(*) INTO deletions FROM audit_log a
        WHERE a.partition_id = st_partition[i] AND a.study_uid = st_uid[i]
          AND a.action = 'study.delete';
        patients := c_patients;
        studies := c_studies;
        studies_off := c_studies_off;
        series := c_series;
        series_off := c_series_off;
        instances := c_instances;
        appended := c_appended;
        RETURN NEXT;
    END LOOP;
END;
$$;
