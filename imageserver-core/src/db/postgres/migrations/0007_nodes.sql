-- imageserver index, schema version 7: the cluster's nodes and named
-- leases (see the SQLite migration 0008 for the meaning; version 6 belongs
-- to another change of the same release).
CREATE TABLE node (
    id            TEXT COLLATE "C" PRIMARY KEY,
    host          TEXT COLLATE "C" NOT NULL,
    addresses     TEXT COLLATE "C" NOT NULL,
    version       TEXT COLLATE "C" NOT NULL,
    pid           BIGINT NOT NULL,
    processor_id  TEXT COLLATE "C",
    state         TEXT COLLATE "C" NOT NULL CHECK (state IN ('active', 'draining', 'stopped')),
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

CREATE TABLE cluster_lease (
    name        TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE cluster_version (
    name     TEXT COLLATE "C" PRIMARY KEY,
    version  BIGINT NOT NULL
);
INSERT INTO cluster_version (name, version) VALUES ('devices', 0);
CREATE FUNCTION bump_devices_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cluster_version SET version = version + 1 WHERE name = 'devices';
    RETURN NULL;
END
$$;
CREATE TRIGGER device_version AFTER INSERT OR UPDATE OR DELETE ON device
    FOR EACH STATEMENT EXECUTE FUNCTION bump_devices_version();
