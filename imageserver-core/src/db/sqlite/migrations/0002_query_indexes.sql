-- imageserver index, schema version 2: indexes for C-FIND (db/sqlite/query.rs).
--
-- The study date index also carries modalities_in_study, so that
-- ModalitiesInStudy matching (and any scan of a partition's studies in date
-- order) is answered from the index entries: a study whose modalities do not
-- match is rejected without reading its row. The scan in date order is also
-- the stable order of study-level results, so a capped query stops after
-- its first matches.
DROP INDEX study_date_idx;
CREATE INDEX study_date_idx ON study (partition_id, study_date, modalities_in_study);
