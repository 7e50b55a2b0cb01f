//! Integration tests: the `imageserver` binary driven by real DCMTK clients
//! and a hostile raw client, checked through its files and its index.

// Spawning the server, DCMTK wrappers, the raw client and the corpus.
mod support;

// C-ECHO, and association rejection on a wrong called AE title.
mod echo;
// C-STORE of a generated corpus: index rows, digests, byte-identical data sets.
mod store;
// A 200 MiB instance in 4 KiB PDUs stays within a memory bound.
mod large;
// kill -9 during ingest: every acknowledged instance survives the restart.
mod durability;
// kill -9 at every step of the group commit's window: the journal of open batches and recovery.
mod commit_crash;
// Malformed, lying, slow and too many peers: statuses, closes, limits.
mod bad_input;
// Peers that hold resources to starve others: stalled C-FINDs vs ingest.
mod hostile;
// Size limits: an instance too large, free space eaten mid-store, a huge header.
mod sizes;
// `imageserver import` of a folder with a bad file in it.
mod import;
// SIGTERM during a transfer: clean exit, nothing acknowledged is lost.
mod shutdown;
// Partitions, devices and their permissions, duplicate SOP policies.
mod partitions;
// C-FIND: every matching rule, statuses, character sets, cancel and caps, via findscu and pynetdicom.
mod find;
// C-MOVE (movescu → storescp) and C-GET (getscu, pynetdicom): levels, counts, cancel, roles, failures.
mod retrieve;
// Orthanc, a real archive, queries and retrieves from us through its REST API.
mod orthanc;
// PostgreSQL only: the database stopping under load, and migrate-db from SQLite.
mod postgres;
// Study delete, edit, reprocess, integrity check and send, and the rules dry run, via the CLI.
mod studies;
// WorkQueue: exactly-once claiming, failures and retries, study locks, engines in two processes, kill -9 takeover, the operator CLI.
mod workqueue;
// Built-in processors via a running server: queued send with retries, queued delete, StudyProcess after ingest.
mod processors;
// Reprocess racing ingest: instances stored between its listing and its rewrite keep their rows.
mod reprocess;
// Partial send failures: a destination refusing some instances once or forever; only what failed is sent again.
mod routing;
// Series metadata (DICOM JSON) written by StudyProcess, checked with pydicom; edit, reprocess, import and delete around it.
mod metadata;
// Conformance promises no other test covers: storage as received in every
// syntax, check_called_ae = false, private SOP classes, 0211.
mod promises;
// Who may replace a stored instance (allow_replace), and the reconcile queue for conflicting patient identities.
mod replace;
// The large deployment (deploy/large/cluster.sh): three nodes behind HAProxy; spread, C-FIND per node, C-MOVE, kill -9, drain.
mod cluster;
// DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) and /metrics, driven by dicomweb-client beside DCMTK.
mod web;
mod web_admin;
// The ATNA audit trail: messages of a store, query, move, delete and refusal at a syslog receiver, spooled while it is down.
mod audit;
// Filesystems and tiers at run time: placement by watermark, quotas, A700 with a reserve, the filesystem CLI, identity markers.
mod tiering;
// migrate_study under kill -9 at each step: one complete location, nothing left behind, byte-identical retrieves.
mod tiering_migrate;
// DICOM TLS with and without client certificates, C-MOVE to a TLS device, User Identity, syslog over TLS.
mod tls;
// Query leniency (study-level Modality) and combined date-time matching: findscu, pynetdicom with extended negotiation, dicomweb-client.
mod query_leniency;
// The OHIF viewer (npm @ohif/app) in headless Chromium against our DICOMweb root; rendered and thumbnail resources.
mod ohif;
// The HSM archive: archive, purge to nearline, restore by C-MOVE and by a new instance, kill -9 mid-way.
mod archive;
// Scheduled services: folder import (a broken file set aside), archive scan, integrity scan, watermark purge.
mod services;
// Lossless compression (RLE): DCMTK decodes it, C-MOVE/C-GET to uncompressed-only peers get the original pixels, kill -9 at each step.
mod compress;
// Reinventory: a lost index (SQLite file, PostgreSQL database) rebuilt from a filesystem's files answers C-FIND and C-MOVE as before.
mod reinventory;
