//! Passwords: argon2 verification (slow by design, run off the executor)
//! and the short-lived cache of verified Basic credentials.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

use super::{hash_password, Access};
use crate::config::Role;

/// How long a verified Basic credential is believed without argon2.
const BASIC_REMEMBERED: Duration = Duration::from_secs(60);
/// Most Basic credentials remembered at once (all forgotten beyond).
const BASIC_REMEMBERED_MAX: usize = 1024;

impl Access {
    /// Checks a name and password (argon2, slow by design: call it off the
    /// executor); the user's role when they match.
    pub(super) fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let user = self.users.iter().find(|u| u.name == name);
        let hash = match user.and_then(|u| u.password_hash.as_deref()) {
            Some(hash) => hash,
            None => self
                .dummy_hash
                .get_or_init(|| hash_password("not a password of anyone").unwrap_or_default()),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let matched = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        match user {
            Some(u) if matched && u.password_hash.is_some() => Some(u.role),
            _ => None,
        }
    }

    pub(super) fn credentials_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(b"basic\0");
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(password.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// The role of a Basic credential verified less than a minute ago.
    pub(super) fn remembered(&self, name: &str, password: &str) -> Option<Role> {
        let key = self.credentials_key(name, password);
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match remembered.get(&key) {
            Some((held, until)) if *until > Instant::now() && held == name => {
                self.users.iter().find(|u| u.name == name).map(|u| u.role)
            }
            Some(_) => {
                remembered.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Checks a Basic credential: remembered, else argon2 (slow: call it
    /// off the executor), remembered when it matches.
    pub(super) fn verify_basic(&self, name: &str, password: &str) -> Option<Role> {
        if let Some(role) = self.remembered(name, password) {
            return Some(role);
        }
        let role = self.verify(name, password)?;
        let key = self.credentials_key(name, password);
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= BASIC_REMEMBERED_MAX {
            let now = Instant::now();
            remembered.retain(|_, (_, until)| *until > now);
            if remembered.len() >= BASIC_REMEMBERED_MAX {
                remembered.clear();
            }
        }
        remembered.insert(key, (name.to_string(), Instant::now() + BASIC_REMEMBERED));
        Some(role)
    }
}
