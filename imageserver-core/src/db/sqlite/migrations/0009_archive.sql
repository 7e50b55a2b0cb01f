-- imageserver index, schema version 9: the HSM archive.
--
-- archive_root: each archive root directory the archive has packed
-- studies into, with the identity marker written into it at first use
-- (`.imageserver-archive`); a root whose marker differs (an unmounted
-- share) is never written to or read from.
CREATE TABLE archive_root (
    id      INTEGER PRIMARY KEY,
    path    TEXT    NOT NULL UNIQUE,
    marker  TEXT    NOT NULL
) STRICT;

-- archive_entry: a study's pack (one tar file: a manifest with every
-- instance's BLAKE3 digest, then the instance files), fsync'd before the
-- row is written. `path` is the pack's absolute path, `size_bytes` and
-- `digest` (BLAKE3, hex) the pack's own, `instances` and `instance_bytes`
-- what it holds (a study that changed since no longer matches them), and
-- `date_folder` the study folder a restore recreates.
CREATE TABLE archive_entry (
    id              INTEGER PRIMARY KEY,
    partition_id    INTEGER NOT NULL REFERENCES partition(id),
    study_uid       TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    date_folder     TEXT    NOT NULL,
    size_bytes      INTEGER NOT NULL,
    digest          TEXT    NOT NULL,
    instances       INTEGER NOT NULL,
    instance_bytes  INTEGER NOT NULL,
    archived_at     INTEGER NOT NULL,
    UNIQUE (partition_id, study_uid)
) STRICT;
