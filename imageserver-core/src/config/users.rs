//! `[[users]]`: the people and systems that may identify themselves in a
//! DICOM association (User Identity negotiation, PS3.7 D.3.3.7), each
//! with an Argon2 hash of its passcode (never the passcode itself).

use std::collections::HashMap;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};
use serde::Deserialize;

use super::ConfigError;

/// One `[[users]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The username a caller sends.
    pub username: String,
    /// The passcode's Argon2 hash in PHC form (`$argon2id$v=19$…`), as
    /// `imageserver user hash-password` prints it. Absent: the username alone
    /// identifies (identity type 1); a passcode sent is then refused.
    #[serde(default)]
    pub passcode_hash: Option<String>,
}

/// The validated users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_name: HashMap<String, Option<String>>,
}

impl Users {
    /// Checks every entry: unique non-empty usernames, hashes that parse.
    pub(super) fn validate(entries: &[UserConfig]) -> Result<Users, ConfigError> {
        let mut by_name = HashMap::new();
        for entry in entries {
            let name = entry.username.trim();
            if name.is_empty() {
                return Err(ConfigError::invalid("users.username", "must not be empty"));
            }
            if let Some(hash) = &entry.passcode_hash {
                PasswordHash::new(hash).map_err(|e| {
                    ConfigError::invalid(
                        format!("users.{name}.passcode_hash"),
                        format!("not an Argon2 PHC string: {e}"),
                    )
                })?;
            }
            if by_name
                .insert(name.to_string(), entry.passcode_hash.clone())
                .is_some()
            {
                return Err(ConfigError::invalid(
                    "users.username",
                    format!("{name:?} appears twice"),
                ));
            }
        }
        Ok(Users { by_name })
    }

    /// Whether no user is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `username` (with `passcode`, identity type 2) is a
    /// configured user. A user with a passcode hash must send the
    /// passcode; one without must not.
    pub fn verify(&self, username: &str, passcode: Option<&[u8]>) -> bool {
        match (self.by_name.get(username.trim()), passcode) {
            (Some(None), None) => true,
            (Some(Some(hash)), Some(passcode)) => PasswordHash::new(hash)
                .is_ok_and(|hash| Argon2::default().verify_password(passcode, &hash).is_ok()),
            _ => false,
        }
    }
}

/// The Argon2id hash (PHC string, random salt) of `passcode`, for a
/// `[[users]]` entry.
pub fn hash_passcode(passcode: &[u8]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use std::io::Read;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let salt = SaltString::encode_b64(&random).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(passcode, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passcodes_are_checked_against_their_hash() {
        let hash = hash_passcode(b"secret").unwrap();
        let users = Users::validate(&[
            UserConfig {
                username: "alice".into(),
                passcode_hash: Some(hash),
            },
            UserConfig {
                username: "robot".into(),
                passcode_hash: None,
            },
        ])
        .unwrap();
        assert!(users.verify("alice", Some(b"secret")));
        assert!(!users.verify("alice", Some(b"Secret")));
        assert!(!users.verify("alice", None));
        assert!(users.verify("robot", None));
        assert!(!users.verify("robot", Some(b"x")));
        assert!(!users.verify("mallory", None));
        assert!(Users::validate(&[UserConfig {
            username: "bob".into(),
            passcode_hash: Some("plain".into()),
        }])
        .is_err());
    }
}
