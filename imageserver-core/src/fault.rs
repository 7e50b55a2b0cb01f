//! Fault injection for the crash tests: named points where an operation
//! pauses so that a test can kill -9 the process there.
//!
//! Each [`FaultPoints`] reads its environment variable once (the first
//! time one of its points is passed) into a `OnceLock`; after that, passing
//! a point costs one comparison when the variable is set and a load when it
//! is not, so the points may sit on the ingest path. When the variable
//! equals a point's step name, the operation logs "fault injection: …
//! pauses here" and sleeps for ten minutes, or until the file that
//! [`RESUME_ENV`] names exists (for a test that lets the operation go on
//! after doing something meanwhile). Never set in production.

use std::sync::OnceLock;
use std::time::Duration;

/// How long a point pauses: longer than any test waits before its kill.
const PAUSE: Duration = Duration::from_secs(600);

/// A file whose appearance ends a pause early: the operation goes on.
pub const RESUME_ENV: &str = "IMAGESERVER_FAULT_RESUME_FILE";

/// The fault points of one operation, switched by one environment variable
/// naming the step to pause at.
#[derive(Debug)]
pub struct FaultPoints {
    /// The environment variable.
    env: &'static str,
    /// The operation, as the log line names it.
    what: &'static str,
    /// The variable's value, read once.
    step: OnceLock<Option<String>>,
}

impl FaultPoints {
    /// Points switched by `env`; `what` names the operation in the log.
    pub const fn new(env: &'static str, what: &'static str) -> FaultPoints {
        FaultPoints {
            env,
            what,
            step: OnceLock::new(),
        }
    }

    /// The environment variable that names the step to pause at.
    pub fn env(&self) -> &'static str {
        self.env
    }

    /// Pauses here (ten minutes, or until the [`RESUME_ENV`] file exists)
    /// when the variable names `step`.
    pub fn pass(&self, step: &str) {
        let chosen = self.step.get_or_init(|| std::env::var(self.env).ok());
        if chosen.as_deref() == Some(step) {
            tracing::warn!(step, "fault injection: {} pauses here", self.what);
            let resume = std::env::var_os(RESUME_ENV).map(std::path::PathBuf::from);
            let deadline = std::time::Instant::now() + PAUSE;
            while std::time::Instant::now() < deadline
                && !resume.as_ref().is_some_and(|file| file.exists())
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            tracing::warn!(step, "fault injection: {} goes on", self.what);
        }
    }
}

/// A migration's steps: `copied-one`, `copied`, `switched`, `removed-one`
/// (`services::studies::migrate`).
/// The variable of [`MIGRATION`].
pub const MIGRATION_ENV: &str = "IMAGESERVER_FAULT_PAUSE_MIGRATION_AT";

/// See [`MIGRATION_ENV`].
pub static MIGRATION: FaultPoints = FaultPoints::new(MIGRATION_ENV, "the migration");

/// A compression's steps: `written-one` (the first recoded file written and
/// verified, not yet renamed), `swapped-one` (renamed over its original
/// inside the recording transaction, not yet committed), `recorded` (the
/// first batch recorded).
/// The variable of [`COMPRESSION`].
pub const COMPRESSION_ENV: &str = "IMAGESERVER_FAULT_PAUSE_COMPRESSION_AT";

/// See [`COMPRESSION_ENV`].
pub static COMPRESSION: FaultPoints = FaultPoints::new(COMPRESSION_ENV, "the compression");

/// Archive, purge and restore steps: `archive-packed`, `purge-switched`,
/// `purge-removed-one`, `restore-unpacked-one`, `restore-verified`,
/// `restore-switched`.
/// The variable of [`ARCHIVE`].
pub const ARCHIVE_ENV: &str = "IMAGESERVER_FAULT_PAUSE_ARCHIVE_AT";

/// See [`ARCHIVE_ENV`].
pub static ARCHIVE: FaultPoints = FaultPoints::new(ARCHIVE_ENV, "the archive operation");

/// The group commit's window (`services::commit`): `queued` (an
/// instance handed to the committer, its data not yet synced; its file in
/// place only if its batch's journal is already durable), `journaled` (a
/// batch's open-batch journal durable and its files in place, its index
/// transaction not begun), `indexed` (the index transaction committed, the file and
/// directory syncs not yet waited for), `synced` (everything durable, the
/// writers not yet answered).
/// The variable of [`COMMIT`].
pub const COMMIT_ENV: &str = "IMAGESERVER_FAULT_PAUSE_COMMIT_AT";

/// See [`COMMIT_ENV`].
pub static COMMIT: FaultPoints = FaultPoints::new(COMMIT_ENV, "the group commit");

/// A reprocess's step: `listed` (the study's files listed and read, its
/// rows not yet replaced; `services::studies::reprocess`).
/// The variable of [`REPROCESS`].
pub const REPROCESS_ENV: &str = "IMAGESERVER_FAULT_PAUSE_REPROCESS_AT";

/// See [`REPROCESS_ENV`].
pub static REPROCESS: FaultPoints = FaultPoints::new(REPROCESS_ENV, "the reprocess");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_variable_never_pauses() {
        static POINTS: FaultPoints =
            FaultPoints::new("IMAGESERVER_FAULT_PAUSE_NEVER_SET_IN_TESTS", "a test");
        POINTS.pass("anything");
        assert_eq!(POINTS.step.get(), Some(&None));
        assert_eq!(POINTS.env(), "IMAGESERVER_FAULT_PAUSE_NEVER_SET_IN_TESTS");
    }
}
