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
    loaded: bool,
    hash: [u8; 32],
}

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
                loaded: false,
                hash: config_hash,
            }),
        }
    }

    fn cached(&self) -> Option<[u8; 32]> {
        let c = self.current.read().ok()?;
        c.loaded.then_some(c.hash)
    }

    async fn reload(&self, store: &dyn Store) -> Result<[u8; 32], StoreError> {
        let stored = store.get_setting(SETTING).await?;
        let hash = stored
            .and_then(|s| serde_json::from_str::<StoredKey>(&s).ok())
            .filter(|s| s.replaces_config_sha256 == hex::encode(self.config_hash))
            .and_then(|s| hex::decode(s.key_sha256).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .unwrap_or(self.config_hash);
        if let Ok(mut c) = self.current.write() {
            *c = Current { loaded: true, hash };
        }
        Ok(hash)
    }

    /// Constant-time check of a presented key. A mismatch re-reads the stored key once, so a
    /// ChangePassword answered by another instance is honoured here too.
    pub async fn verify(&self, store: &dyn Store, presented: &str) -> Result<bool, StoreError> {
        let presented = digest(presented);
        if let Some(hash) = self.cached() {
            if bool::from(hash.ct_eq(&presented)) {
                return Ok(true);
            }
        }
        let hash = self.reload(store).await?;
        Ok(hash.ct_eq(&presented).into())
    }

    pub async fn is_current(&self, store: &dyn Store, candidate: &str) -> Result<bool, StoreError> {
        let hash = match self.cached() {
            Some(h) => h,
            None => self.reload(store).await?,
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
            *c = Current { loaded: true, hash };
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
