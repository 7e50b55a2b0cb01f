-- imageserver index, schema version 5: the most associations a process
-- opens to a device at once for sends (auto-route, study send); 0: no limit.
ALTER TABLE device ADD COLUMN max_outgoing_associations INTEGER NOT NULL DEFAULT 0;
