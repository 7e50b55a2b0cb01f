//! Failed logins counted per user and per address: after
//! `MAX_FAILURES` in `FAILURE_WINDOW`, further attempts are refused (429).

use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::Access;

/// Failed logins allowed per user and per address within `FAILURE_WINDOW`.
pub(super) const MAX_FAILURES: u32 = 5;
/// The window failed logins are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most users and addresses whose failures are counted at once.
const FAILURES_MAX_KEYS: usize = 10_000;

impl Access {
    /// What failed logins are counted against: the user, and the caller's
    /// address unless it is a trusted proxy (every user behind it shares
    /// its address).
    pub(super) fn failure_keys(&self, name: &str, peer: Option<SocketAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{name}")];
        if let Some(peer) = peer.filter(|p| !self.proxies.contains(&p.ip())) {
            keys.push(format!("ip:{}", peer.ip()));
        }
        keys
    }

    /// Whether `name` or `peer` failed to log in too often within the
    /// last minute.
    pub(super) fn throttled(&self, name: &str, peer: Option<SocketAddr>) -> bool {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        self.failure_keys(name, peer).iter().any(|key| {
            failures.get(key).is_some_and(|(count, since)| {
                *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW
            })
        })
    }

    /// Counts a failed login of `name` from `peer`.
    pub(super) fn failed(&self, name: &str, peer: Option<SocketAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= FAILURES_MAX_KEYS {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURES_MAX_KEYS {
                failures.clear();
            }
        }
        for key in self.failure_keys(name, peer) {
            let entry = failures.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 = entry.0.saturating_add(1);
        }
    }

    /// Forgets the failures of `name` after a successful login.
    pub(super) fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&format!("user:{name}"));
    }
}
