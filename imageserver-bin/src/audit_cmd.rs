//! `imageserver audit`: the audit trail kept in the index (the ATNA
//! messages, `atna.*`, and the study operations' own entries), filtered
//! by time, action and study.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use imageserver_core::audit::xml::rfc3339;
use imageserver_core::db::studies::AuditFilter;
use imageserver_core::{open_index, Uid};

use crate::workqueue_cmd::{parse_duration, parse_utc};
use crate::{load_config, ArchiveArgs};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Only entries since TIME: a UTC time (`YYYY-MM-DD HH:MM[:SS]`) or an
    /// age (90s, 10m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only entries of this action: `atna.query`, `study.delete`, … (a
    /// name without a dot means `atna.<name>`, e.g. `query`,
    /// `instances-transferred`, `security-alert`).
    #[arg(long, value_name = "A")]
    action: Option<String>,
    /// Only entries about this study.
    #[arg(long, value_name = "UID")]
    study: Option<String>,
    /// At most this many entries (the oldest that match).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    limit: u64,
    /// Print one JSON object per line (details parsed) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the audit entries the flags select, oldest first.
pub fn audit(args: AuditArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let url = config.db_url();
    let index = open_index(&url).with_context(|| {
        format!(
            "cannot open the index database {}",
            imageserver_core::db::redact_url(&url)
        )
    })?;
    let since_ms = match args.since.as_deref() {
        None => None,
        Some(text) => Some(match parse_duration(text) {
            Ok(age) => {
                imageserver_core::db::studies::now_ms()
                    - i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
            }
            Err(_) => parse_utc(text)?.as_millis(),
        }),
    };
    let action = args.action.map(|a| {
        if a.contains('.') {
            a
        } else {
            format!("atna.{a}")
        }
    });
    let study_uid = args
        .study
        .as_deref()
        .map(|s| Uid::parse(s).with_context(|| format!("--study {s:?}")))
        .transpose()?;
    let entries = index.audit_entries(&AuditFilter {
        since_ms,
        action,
        study_uid,
        limit: args.limit,
    })?;
    let mut out = std::io::stdout().lock();
    for entry in &entries {
        if args.json {
            let line = imageserver_core::services::admin::audit_json(entry);
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{}  {:<28} {:<20} {}",
                rfc3339(entry.at_ms),
                entry.action,
                entry.actor,
                entry.study_uid.as_ref().map_or("-", Uid::as_str),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
