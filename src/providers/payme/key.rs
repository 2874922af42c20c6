//! The Payme cash-desk key that authenticates Payme's calls (`Authorization: Basic
//! base64("Paycom:<key>")`). ChangePassword replaces it; the replacement survives restarts as a
//! SHA-256 digest in the `settings` table (never the key itself, never logged).

use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

const SETTING: &str = "payme.key";
pub const LOGIN: &str = "Paycom";

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What the settings row holds. `replaces_config_sha256` ties the change to the configured key
/// it replaced: if an operator later configures a new key, the configuration wins again.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    key_sha256: String,
    replaces_config_sha256: String,
}

struct Current {
    /// When the stored key was last read; `None` before the first read.
    loaded_at: Option<DateTime<Utc>>,
    hash: [u8; 32],
}

/// How long a read of the stored key is trusted. ChangePassword may be answered by another
/// instance: within this time a rotated-out key can still pass here, after it the key is read
/// again. A presented key that does not match is always checked against a fresh read, so the
/// new key works everywhere at once.
const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(5);

pub struct PaymeKey {
    config_hash: [u8; 32],
    current: RwLock<Current>,
}

/// The key inside a Payme `Authorization` header, if the header is well-formed with login Paycom.
pub fn key_from_header(header: Option<&str>) -> Option<String> {
    let value = header?.trim();
    let (scheme, credentials) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (login, key) = decoded.split_once(':')?;
    (login == LOGIN).then(|| key.to_owned())
}

impl PaymeKey {
    pub fn new(configured: &SecretString) -> Self {
        let config_hash = digest(configured.expose_secret());
        PaymeKey {
            config_hash,
            current: RwLock::new(Current {
                loaded_at: None,
                hash: config_hash,
            }),
        }
    }

    /// The cached hash, if it was read less than [`FRESH_FOR`] before `now`.
    fn cached(&self, now: DateTime<Utc>) -> Option<[u8; 32]> {
        let c = self.current.read().ok()?;
        let at = c.loaded_at?;
        (now - at < FRESH_FOR && at <= now).then_some(c.hash)
    }

    async fn reload(&self, store: &dyn Store, now: DateTime<Utc>) -> Result<[u8; 32], StoreError> {
        let stored = store.get_setting(SETTING).await?;
        let hash = stored
            .and_then(|s| serde_json::from_str::<StoredKey>(&s).ok())
            .filter(|s| s.replaces_config_sha256 == hex::encode(self.config_hash))
            .and_then(|s| hex::decode(s.key_sha256).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .unwrap_or(self.config_hash);
        if let Ok(mut c) = self.current.write() {
            *c = Current {
                loaded_at: Some(now),
                hash,
            };
        }
        Ok(hash)
    }

    /// Constant-time check of a presented key against a fresh copy of the current one (see
    /// [`FRESH_FOR`]); a mismatch re-reads it once, so a ChangePassword answered by another
    /// instance is honoured here too.
    pub async fn verify(
        &self,
        store: &dyn Store,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let presented = digest(presented);
        if let Some(hash) = self.cached(now) {
            if bool::from(hash.ct_eq(&presented)) {
                return Ok(true);
            }
        }
        let hash = self.reload(store, now).await?;
        Ok(hash.ct_eq(&presented).into())
    }

    pub async fn is_current(
        &self,
        store: &dyn Store,
        candidate: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let hash = match self.cached(now) {
            Some(h) => h,
            None => self.reload(store, now).await?,
        };
        Ok(hash.ct_eq(&digest(candidate)).into())
    }

    pub async fn change(
        &self,
        store: &dyn Store,
        new_key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let hash = digest(new_key);
        let stored = StoredKey {
            key_sha256: hex::encode(hash),
            replaces_config_sha256: hex::encode(self.config_hash),
        };
        let value =
            serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        store.put_setting(SETTING, &value, now).await?;
        if let Ok(mut c) = self.current.write() {
            *c = Current {
                loaded_at: Some(now),
                hash,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!("Basic {}", STANDARD.encode(s))
    }

    #[test]
    fn header_must_be_basic_with_login_paycom() {
        assert_eq!(
            key_from_header(Some(&basic("Paycom:k3y"))).as_deref(),
            Some("k3y")
        );
        assert_eq!(
            key_from_header(Some(&format!(
                "  basic   {}  ",
                STANDARD.encode("Paycom:a:b")
            )))
            .as_deref(),
            Some("a:b")
        );
        assert_eq!(key_from_header(Some(&basic("paycom:k3y"))), None);
        assert_eq!(key_from_header(Some(&basic("k3y"))), None);
        assert_eq!(key_from_header(Some("Bearer abc")), None);
        assert_eq!(key_from_header(Some("Basic !!!notbase64")), None);
        assert_eq!(key_from_header(Some("Basic")), None);
        assert_eq!(key_from_header(None), None);
    }
}
