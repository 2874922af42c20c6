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
    /// When a key that did not match last made it read again.
    mismatch_reload_at: Option<DateTime<Utc>>,
    hash: [u8; 32],
}

/// At most one read of the stored key per this long for presented keys that do not match, so
/// a caller trying keys cannot make every request a database read.
const MISMATCH_RELOAD_EVERY: chrono::Duration = chrono::Duration::seconds(1);

/// How long a read of the stored key is trusted. ChangePassword may be answered by another
/// instance: within this time a rotated-out key can still pass here, after it the key is read
/// again. A presented key that does not match is always checked against a fresh read, so the
/// new key works everywhere at once.
const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(5);

pub struct PaymeKey {
    configured: SecretString,
    config_hash: [u8; 32],
    current: RwLock<Current>,
    /// The key this process's ChangePassword set, in memory only: the sandbox payer plays Payme,
    /// which knows the key it sent. After a restart only its digest is left.
    set_here: RwLock<Option<SecretString>>,
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
            configured: configured.clone(),
            config_hash,
            current: RwLock::new(Current {
                loaded_at: None,
                mismatch_reload_at: None,
                hash: config_hash,
            }),
            set_here: RwLock::new(None),
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
            c.loaded_at = Some(now);
            c.hash = hash;
        }
        Ok(hash)
    }

    /// Constant-time check of a presented key against a fresh copy of the current one (see
    /// [`FRESH_FOR`]); a mismatch re-reads it (at most once per [`MISMATCH_RELOAD_EVERY`]),
    /// so a ChangePassword answered by another instance is honoured here too. A read that
    /// fails is an error (-32400, retry) only for the key last known to be right; any other
    /// key is refused (-32504) without telling its caller about the database.
    pub async fn verify(
        &self,
        store: &dyn Store,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let presented = digest(presented);
        let (known, mismatch_reload_at) = match self.current.read() {
            Ok(c) => (c.hash, c.mismatch_reload_at),
            Err(_) => (self.config_hash, None),
        };
        let is_known: bool = known.ct_eq(&presented).into();
        if self.cached(now).is_some() {
            if is_known {
                return Ok(true);
            }
            if mismatch_reload_at.is_some_and(|at| at <= now && now - at < MISMATCH_RELOAD_EVERY) {
                return Ok(false);
            }
            if let Ok(mut c) = self.current.write() {
                c.mismatch_reload_at = Some(now);
            }
        }
        match self.reload(store, now).await {
            Ok(hash) => Ok(hash.ct_eq(&presented).into()),
            Err(e) if is_known => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "payme key could not be read; an unknown key is refused");
                Ok(false)
            }
        }
    }

    /// Whether `presented` is the key this instance last knew to be right, without a read:
    /// when the read cannot finish in time, only that caller is told to retry (-32400).
    pub fn is_last_known(&self, presented: &str) -> bool {
        let known = match self.current.read() {
            Ok(c) => c.hash,
            Err(_) => self.config_hash,
        };
        known.ct_eq(&digest(presented)).into()
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
            c.loaded_at = Some(now);
            c.hash = hash;
        }
        if let Ok(mut k) = self.set_here.write() {
            *k = Some(SecretString::from(new_key.to_owned()));
        }
        Ok(())
    }

    /// The key a caller playing Payme presents (the sandbox payer): the configured one while it
    /// is current, else the one this process's ChangePassword set; `None` when the current key
    /// is known here only by its digest (changed before a restart, or by another instance).
    pub async fn presentable(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> Result<Option<SecretString>, StoreError> {
        let current = match self.cached(now) {
            Some(h) => h,
            None => self.reload(store, now).await?,
        };
        let set_here = self.set_here.read().ok().and_then(|k| k.clone());
        Ok([Some(self.configured.clone()), set_here]
            .into_iter()
            .flatten()
            .find(|k| bool::from(digest(k.expose_secret()).ct_eq(&current))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!("Basic {}", STANDARD.encode(s))
    }

    /// Wrong keys make at most one read of the stored key per second: a key changed by another
    /// instance meanwhile is seen once that second is over (and at once without wrong keys).
    #[tokio::test]
    async fn wrong_keys_read_the_stored_key_at_most_once_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let settings = crate::config::Settings::sandbox_defaults()
            .expect("defaults")
            .database;
        let store = crate::store::SqliteStore::connect(&url, &settings)
            .await
            .expect("store");
        let old = SecretString::from("old-key");
        let (here, elsewhere, quiet) = (
            PaymeKey::new(&old),
            PaymeKey::new(&old),
            PaymeKey::new(&old),
        );
        let t0 = Utc::now();
        let ms = chrono::Duration::milliseconds;
        assert!(here.verify(&store, "old-key", t0).await.expect("read"));
        assert!(quiet.verify(&store, "old-key", t0).await.expect("read"));
        assert!(!here.verify(&store, "guess-1", t0).await.expect("read"));
        elsewhere
            .change(&store, "new-key", t0 + ms(100))
            .await
            .expect("change");
        assert!(
            !here
                .verify(&store, "new-key", t0 + ms(500))
                .await
                .expect("read"),
            "not read again within the second"
        );
        assert!(here
            .verify(&store, "new-key", t0 + ms(1000))
            .await
            .expect("read"));
        // An instance no wrong key was tried on sees the new key at once.
        assert!(quiet
            .verify(&store, "new-key", t0 + ms(200))
            .await
            .expect("read"));
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
