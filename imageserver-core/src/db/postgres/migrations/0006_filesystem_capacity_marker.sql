-- imageserver index, schema version 6: filesystems at run time.
-- capacity_mb: a quota below what the volume reports (NULL: the volume's
-- own size); usage is then the bytes of the studies the index holds there.
-- marker: the identity written into the filesystem's root when it was
-- first used (NULL until then); a path without it is never written to.
ALTER TABLE filesystem ADD COLUMN capacity_mb BIGINT CHECK (capacity_mb > 0);
ALTER TABLE filesystem ADD COLUMN marker TEXT COLLATE "C";
