-- imageserver index, schema version 4: the most associations a process
-- opens to a device at once for sends (auto-route, study send); 0: no limit.
ALTER TABLE device ADD COLUMN max_outgoing_associations BIGINT NOT NULL DEFAULT 0;
