-- imageserver index, schema version 8: the cluster's nodes and named
-- leases (version 7 belongs to another change of the same release).
--
-- One row per node (a `serve` process), keyed by its node id, which is
-- stable for its configuration and host: a restarted node takes its row
-- back. `state` is what the node was asked to be ('active', 'draining',
-- 'stopped'); whether it is still alive is read from `heartbeat_at` (ms
-- since the epoch, renewed every few seconds). `addresses` are the
-- comma-separated host:port it accepts associations on; `processor_id` the
-- identity its work queue engine claims items under (work_queue.processor_id).
CREATE TABLE node (
    id            TEXT    PRIMARY KEY,
    host          TEXT    NOT NULL,
    addresses     TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    processor_id  TEXT,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'draining', 'stopped')),
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
);

-- Named leases: work that runs on one node at a time (periodic jobs). A
-- holder renews its lease before `expires_at` (ms since the epoch); anyone
-- takes a lease that has expired.
CREATE TABLE cluster_lease (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Versions the nodes poll to learn that something they cache changed on
-- another node: 'devices' counts the statements that wrote the device
-- table (triggers below), so a node reloads its device caches when the
-- number moves.
CREATE TABLE cluster_version (
    name     TEXT    PRIMARY KEY,
    version  INTEGER NOT NULL
);
INSERT INTO cluster_version (name, version) VALUES ('devices', 0);
CREATE TRIGGER device_version_insert AFTER INSERT ON device BEGIN
    UPDATE cluster_version SET version = version + 1 WHERE name = 'devices';
END;
CREATE TRIGGER device_version_update AFTER UPDATE ON device BEGIN
    UPDATE cluster_version SET version = version + 1 WHERE name = 'devices';
END;
CREATE TRIGGER device_version_delete AFTER DELETE ON device BEGIN
    UPDATE cluster_version SET version = version + 1 WHERE name = 'devices';
END;
