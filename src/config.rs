//! Typed configuration: `config/default.toml` (compiled in) → optional file (`--config` or
//! `TOLOV_CONFIG`) → environment `TOLOV__SECTION__KEY`. Loaded once, validated before use.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::ProviderKind;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// How far apart instances' clocks may be for leases read by another instance.
const CLOCK_SKEW_SECS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sandbox,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub webhooks: WebhookSettings,
    pub workers: WorkerSettings,
    pub payme: PaymeSettings,
    pub click: ClickSettings,
    pub atmos: AtmosSettings,
    pub epay: EpaySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub public_url: String,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Reverse proxies whose `X-Forwarded-For` is believed (see `api::client_ip`).
    #[serde(deserialize_with = "net_list")]
    pub trusted_proxies: Vec<IpNet>,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`.
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub metrics_token: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(deserialize_with = "secret", serialize_with = "redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(deserialize_with = "secret_list", serialize_with = "mask_list")]
    pub keys: Vec<SecretString>,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub client_secret_key: SecretString,
    pub payment_ttl_minutes: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Run the delivery worker in this process (`serve`).
    pub enabled: bool,
    /// May carry credentials (`https://user:pass@…`): masked when printed.
    #[serde(serialize_with = "redact_plain_url")]
    pub url: String,
    pub poll_interval_ms: u64,
    pub timeout_secs: u64,
    /// Delays after the 1st, 2nd, … failed attempt; after the last one fails a message is dead.
    #[serde(deserialize_with = "secs_list")]
    pub retry_schedule_secs: Vec<u64>,
    /// Delivered messages are deleted this many days after they were created (0: kept for
    /// ever); pending and dead ones stay. The events themselves stay in `payment_events`.
    pub retention_days: u32,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub secret: SecretString,
}

/// The longest delay between two webhook attempts (a week): beyond it a merchant is better
/// served by `GET /v1/events` than by a retry.
pub const MAX_RETRY_DELAY_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Expire open payments past `expires_at` (asking the provider first where it may still pay).
    pub expiry_enabled: bool,
    pub expiry_interval_secs: u64,
    /// Ask providers about payments stuck in `processing`.
    pub reconcile_enabled: bool,
    pub reconcile_interval_secs: u64,
    /// A payment is stuck after this long in `processing` without a change.
    pub reconcile_after_minutes: i64,
}

/// Bounds of one provider's accepted amounts, in minor units.
pub trait AmountLimits {
    fn enabled(&self) -> bool;
    fn min_amount(&self) -> i64;
    fn max_amount(&self) -> i64;
}

macro_rules! limits {
    ($t:ty) => {
        impl AmountLimits for $t {
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn min_amount(&self) -> i64 {
                self.min_amount
            }
            fn max_amount(&self) -> i64 {
                self.max_amount
            }
        }
    };
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymeSettings {
    pub enabled: bool,
    #[serde(deserialize_with = "text")]
    pub merchant_id: String,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub key: SecretString,
    pub account_field: String,
    pub checkout_url: String,
    /// Whether Payme may cancel a performed transaction (a refund); false answers -31007.
    pub allow_cancel_after_perform: bool,
    /// Networks Payme calls from; empty = any (sandbox). Others get -32504.
    #[serde(deserialize_with = "net_list")]
    pub allowed_ips: Vec<IpNet>,
    pub min_amount: i64,
    pub max_amount: i64,
}
limits!(PaymeSettings);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClickSettings {
    pub enabled: bool,
    #[serde(deserialize_with = "text")]
    pub service_id: String,
    #[serde(deserialize_with = "text")]
    pub merchant_id: String,
    #[serde(deserialize_with = "text")]
    pub merchant_user_id: String,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub secret_key: SecretString,
    /// Payer-facing payment page (the pay link's base).
    pub pay_url: String,
    /// Click Merchant API base (status, reversal). Empty in sandbox = the built-in simulator.
    pub api_url: String,
    pub min_amount: i64,
    pub max_amount: i64,
}
limits!(ClickSettings);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AtmosSettings {
    pub enabled: bool,
    pub base_url: String,
    #[serde(deserialize_with = "text")]
    pub store_id: String,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub consumer_key: SecretString,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub consumer_secret: SecretString,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub callback_key: SecretString,
    /// Callback signature hash: md5 (the documented default) or sha256.
    pub callback_hash: String,
    /// Networks ATMOS calls back from; empty = any. Others are answered status 0.
    #[serde(deserialize_with = "net_list")]
    pub callback_allowed_ips: Vec<IpNet>,
    /// Wrong SMS codes allowed per payment before it fails.
    pub otp_attempts: u32,
    /// SMS codes (pre-apply and resend calls) one payment may ask ATMOS for.
    pub sms_per_payment: u32,
    /// Send the SMS code to `pay/apply` as a JSON integer instead of a string (A4.3: clients
    /// differ; a code with a leading zero still goes as a string, which an integer would change).
    pub otp_as_integer: bool,
    /// Limit of one ATMOS API call, in seconds.
    pub timeout_secs: u64,
    pub min_amount: i64,
    pub max_amount: i64,
}
limits!(AtmosSettings);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EpaySettings {
    pub enabled: bool,
    pub oauth_url: String,
    pub api_url: String,
    #[serde(deserialize_with = "text")]
    pub client_id: String,
    #[serde(deserialize_with = "secret", serialize_with = "mask")]
    pub client_secret: SecretString,
    #[serde(deserialize_with = "text")]
    pub terminal_id: String,
    /// Scope of tolov's own (general) OAuth token: status, refund, charge, cancel.
    pub scope: String,
    /// Scope of the payment token handed to the payer's browser as the widget's `auth`: the
    /// least it needs (B2: `payment`).
    pub payment_scope: String,
    /// The Halyk payment widget script the payer's page loads.
    pub widget_url: String,
    pub min_amount: i64,
    pub max_amount: i64,
}
limits!(EpaySettings);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Defaults, then `file` (if any), then `TOLOV__…` environment variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, std::env::vars())
    }

    /// [`Settings::load`] with the environment given as `(name, value)` pairs.
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(vec![format!(
                    "config file {} does not exist",
                    file.display()
                )]));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(EnvVars::new(vars));
        // Lossy: a number kept as text above (`016`) still fills a numeric key.
        let settings: Settings = figment.extract_lossy().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults alone (sandbox). Tests start from this and adjust.
    pub fn sandbox_defaults() -> Result<Settings, ConfigError> {
        let s: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .map_err(Box::new)?;
        Ok(s)
    }

    pub fn is_sandbox(&self) -> bool {
        self.mode == Mode::Sandbox
    }

    pub fn limits(&self, provider: ProviderKind) -> &dyn AmountLimits {
        match provider {
            ProviderKind::Payme => &self.payme,
            ProviderKind::Click => &self.click,
            ProviderKind::Atmos => &self.atmos,
            ProviderKind::Epay => &self.epay,
        }
    }

    /// Every problem at once, so an operator fixes the file in one pass.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if url::Url::parse(&self.server.public_url).is_err() {
            errors.push(format!(
                "server.public_url `{}` is not an absolute URL",
                self.server.public_url
            ));
        }
        if self.server.body_limit_bytes == 0 {
            errors.push("server.body_limit_bytes must be positive".to_owned());
        }
        let db = self.database.url.expose_secret();
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            errors.push(
                "database.url must start with postgres://, postgresql:// or sqlite:".to_owned(),
            );
        }
        if self.database.max_connections == 0 {
            errors.push("database.max_connections must be at least 1".to_owned());
        }
        if self.database.min_connections > self.database.max_connections {
            errors.push("database.min_connections exceeds database.max_connections".to_owned());
        }
        if self
            .api
            .keys
            .iter()
            .all(|k| k.expose_secret().trim().is_empty())
        {
            errors.push("api.keys must hold at least one key".to_owned());
        }
        if self.api.payment_ttl_minutes <= 0 {
            errors.push("api.payment_ttl_minutes must be positive".to_owned());
        }
        // A year; far larger values overflow the time arithmetic of every new payment.
        if self.api.payment_ttl_minutes > 525_600 {
            errors.push("api.payment_ttl_minutes must be at most 525600 (a year)".to_owned());
        }
        if self.server.request_timeout_secs == 0 {
            errors.push("server.request_timeout_secs must be at least 1".to_owned());
        }
        if self.webhooks.poll_interval_ms == 0 {
            errors.push("webhooks.poll_interval_ms must be at least 1".to_owned());
        }
        if self.webhooks.retention_days > 3650 {
            errors.push(
                "webhooks.retention_days must be at most 3650 (0 keeps delivered messages)"
                    .to_owned(),
            );
        }
        let schedule = &self.webhooks.retry_schedule_secs;
        if schedule.len() > 20 || schedule.iter().any(|&d| d == 0 || d > MAX_RETRY_DELAY_SECS) {
            errors.push(format!(
                "webhooks.retry_schedule_secs must list at most 20 delays, each between 1 and {MAX_RETRY_DELAY_SECS}"
            ));
        }
        // A POST still running when its claim lapses would be sent again by another worker. The
        // claim starts before the wait for a database connection, and another instance reads it
        // on its own clock: both come off the room a POST has.
        let lease = crate::webhooks::dispatcher::LEASE_SECS.unsigned_abs();
        let room = lease
            .saturating_sub(self.database.acquire_timeout_secs)
            .saturating_sub(CLOCK_SKEW_SECS);
        if self.webhooks.timeout_secs == 0 || self.webhooks.timeout_secs >= room {
            errors.push(format!(
                "webhooks.timeout_secs must be between 1 and {} (the {lease} s delivery claim, less database.acquire_timeout_secs and {CLOCK_SKEW_SECS} s for clocks)",
                room.saturating_sub(1)
            ));
        }
        // A CHANGE_ME placeholder is left to the sandbox/production rules (accepted / refused).
        let webhook_secret = self.webhooks.secret.expose_secret();
        if matches!(
            crate::webhooks::signing::whsec_key(webhook_secret),
            Some(Err(_))
        ) && !webhook_secret.contains("CHANGE_ME")
        {
            errors.push(
                "webhooks.secret starts with whsec_ but the rest is not base64 (Standard Webhooks secrets are whsec_<base64>)"
                    .to_owned(),
            );
        }
        if !self.webhooks.url.is_empty() && url::Url::parse(&self.webhooks.url).is_err() {
            // Not echoed: it may hold credentials.
            errors.push("webhooks.url is not an absolute URL".to_owned());
        }
        if !matches!(self.atmos.callback_hash.as_str(), "md5" | "sha256") {
            errors.push("atmos.callback_hash must be md5 or sha256".to_owned());
        }
        if self.atmos.otp_attempts == 0 {
            errors.push("atmos.otp_attempts must be at least 1".to_owned());
        }
        if self.atmos.sms_per_payment == 0 {
            errors.push("atmos.sms_per_payment must be at least 1".to_owned());
        }
        // A call still running when its request times out is cut off mid-way (and the payer's
        // answer lost), so an ATMOS call must end first.
        let request = self.server.request_timeout_secs;
        if self.atmos.timeout_secs == 0 || self.atmos.timeout_secs >= request {
            errors.push(format!(
                "atmos.timeout_secs must be between 1 and {} (below server.request_timeout_secs)",
                request.saturating_sub(1)
            ));
        }
        for (name, secs) in [
            (
                "workers.expiry_interval_secs",
                self.workers.expiry_interval_secs,
            ),
            (
                "workers.reconcile_interval_secs",
                self.workers.reconcile_interval_secs,
            ),
        ] {
            if secs == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        // Beyond a year the worker's time arithmetic overflows; below 1 it would reconcile
        // payments whose provider is still answering.
        if !(1..=525_600).contains(&self.workers.reconcile_after_minutes) {
            errors.push("workers.reconcile_after_minutes must be between 1 and 525600".to_owned());
        }
        if self.payme.account_field.is_empty()
            || !self
                .payme
                .account_field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            errors.push("payme.account_field must be a non-empty [A-Za-z0-9_] name".to_owned());
        }
        for p in ProviderKind::ALL {
            let l = self.limits(p);
            if l.min_amount() <= 0 || l.max_amount() < l.min_amount() {
                errors.push(format!(
                    "{p}.min_amount must be positive and not above {p}.max_amount"
                ));
            }
        }
        if self.epay.min_amount < crate::providers::epay::MIN_REFUND_MINOR {
            errors.push(format!(
                "epay.min_amount must be at least {} (10 KZT, ePay's smallest refund), so every \
                 payment can be returned",
                crate::providers::epay::MIN_REFUND_MINOR
            ));
        }
        if self.mode == Mode::Production {
            errors.extend(self.production_problems());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    fn production_problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let defaults = match Settings::sandbox_defaults() {
            Ok(d) => d,
            Err(e) => return vec![format!("built-in defaults unreadable: {e}")],
        };
        let default_secrets: Vec<String> = defaults
            .secrets()
            .into_iter()
            .map(|(_, s)| s.expose_secret().to_owned())
            .collect();
        for (name, secret) in self.secrets() {
            let value = secret.expose_secret();
            if default_secrets.iter().any(|d| d == value) {
                errors.push(format!("{name} is a sandbox default; set a real secret"));
            } else if value.contains("CHANGE_ME") {
                errors.push(format!("{name} still holds the CHANGE_ME placeholder"));
            }
        }
        let (p, c, a, e) = (&self.payme, &self.click, &self.atmos, &self.epay);
        let plain = [
            ("database.url", self.database.url.expose_secret()),
            ("server.public_url", self.server.public_url.as_str()),
            ("webhooks.url", self.webhooks.url.as_str()),
            ("payme.merchant_id", p.merchant_id.as_str()),
            ("click.service_id", c.service_id.as_str()),
            ("click.merchant_id", c.merchant_id.as_str()),
            ("click.merchant_user_id", c.merchant_user_id.as_str()),
            ("click.api_url", c.api_url.as_str()),
            ("atmos.base_url", a.base_url.as_str()),
            ("atmos.store_id", a.store_id.as_str()),
            ("epay.oauth_url", e.oauth_url.as_str()),
            ("epay.api_url", e.api_url.as_str()),
            ("epay.client_id", e.client_id.as_str()),
            ("epay.terminal_id", e.terminal_id.as_str()),
        ];
        let metrics_token = self.server.metrics_token.expose_secret();
        for (name, value) in plain
            .into_iter()
            .chain([("server.metrics_token", metrics_token)])
        {
            if value.contains("CHANGE_ME") {
                errors.push(format!("{name} still holds the CHANGE_ME placeholder"));
            }
        }
        let mut require = |enabled: bool, name: &str, value: &str| {
            if enabled && value.trim().is_empty() {
                errors.push(format!("{name} is required when the provider is enabled"));
            }
        };
        require(p.enabled, "payme.merchant_id", &p.merchant_id);
        require(p.enabled, "payme.key", p.key.expose_secret());
        require(c.enabled, "click.service_id", &c.service_id);
        require(c.enabled, "click.merchant_id", &c.merchant_id);
        require(c.enabled, "click.merchant_user_id", &c.merchant_user_id);
        require(c.enabled, "click.secret_key", c.secret_key.expose_secret());
        require(c.enabled, "click.api_url", &c.api_url);
        require(a.enabled, "atmos.base_url", &a.base_url);
        require(a.enabled, "atmos.store_id", &a.store_id);
        require(
            a.enabled,
            "atmos.consumer_key",
            a.consumer_key.expose_secret(),
        );
        require(
            a.enabled,
            "atmos.consumer_secret",
            a.consumer_secret.expose_secret(),
        );
        require(
            a.enabled,
            "atmos.callback_key",
            a.callback_key.expose_secret(),
        );
        require(e.enabled, "epay.oauth_url", &e.oauth_url);
        require(e.enabled, "epay.api_url", &e.api_url);
        require(e.enabled, "epay.client_id", &e.client_id);
        require(
            e.enabled,
            "epay.client_secret",
            e.client_secret.expose_secret(),
        );
        require(e.enabled, "epay.terminal_id", &e.terminal_id);
        if p.enabled && p.checkout_url.contains("test.paycom.uz") {
            errors.push("payme.checkout_url points at the Payme test host".to_owned());
        }
        if e.enabled && e.widget_url.contains("test-epay") {
            errors.push("epay.widget_url points at the ePay test host".to_owned());
        }
        // ATMOS is sent card numbers, every provider tolov's keys, and payers are sent to the
        // checkout pages: none of it in clear text, to a test host or to this machine.
        for (enabled, name, value) in [
            (p.enabled, "payme.checkout_url", &p.checkout_url),
            (c.enabled, "click.api_url", &c.api_url),
            (a.enabled, "atmos.base_url", &a.base_url),
            (e.enabled, "epay.oauth_url", &e.oauth_url),
            (e.enabled, "epay.api_url", &e.api_url),
            (e.enabled, "epay.widget_url", &e.widget_url),
        ] {
            let told = value.trim().is_empty() || errors.iter().any(|m| m.starts_with(name));
            if enabled && !told && !is_live_https(value) {
                errors.push(format!(
                    "{name} must be the provider's live https:// address, not `{}`",
                    scheme_and_host(value)
                ));
            }
        }
        if e.enabled && e.terminal_id == defaults.epay.terminal_id {
            errors.push("epay.terminal_id is ePay's public test terminal".to_owned());
        }
        // An id left at its sandbox value: payers sent to the sandbox merchant (Payme), every
        // call refused (the others).
        let (dp, dc, da, de) = (
            &defaults.payme,
            &defaults.click,
            &defaults.atmos,
            &defaults.epay,
        );
        for (enabled, name, value, default) in [
            (
                p.enabled,
                "payme.merchant_id",
                &p.merchant_id,
                &dp.merchant_id,
            ),
            (c.enabled, "click.service_id", &c.service_id, &dc.service_id),
            (
                c.enabled,
                "click.merchant_id",
                &c.merchant_id,
                &dc.merchant_id,
            ),
            (
                c.enabled,
                "click.merchant_user_id",
                &c.merchant_user_id,
                &dc.merchant_user_id,
            ),
            (a.enabled, "atmos.store_id", &a.store_id, &da.store_id),
            (e.enabled, "epay.client_id", &e.client_id, &de.client_id),
        ] {
            if enabled && value == default {
                errors.push(format!("{name} is a sandbox default; set the real one"));
            }
        }
        // ePay posts its postLink there and payers are sent back there: it must be an https
        // address others can reach.
        match url::Url::parse(&self.server.public_url) {
            Ok(u) if u.scheme() == "https" && !is_local_host(u.host()) => {}
            _ => errors.push(format!(
                "server.public_url `{}` must be the public https:// address of this gateway",
                self.server.public_url
            )),
        }
        // Keys that sign for tolov: an empty or short one lets anyone compute client secrets
        // (and ePay's secret_hash) or forge webhook signatures.
        if self.api.client_secret_key.expose_secret().chars().count() < 32 {
            errors.push(
                "api.client_secret_key must be at least 32 characters (openssl rand -hex 32)"
                    .to_owned(),
            );
        }
        // A merchant API key opens every payment and refund: guessable is not acceptable.
        for (i, k) in self.api.keys.iter().enumerate() {
            if k.expose_secret().chars().count() < 24 {
                errors.push(format!(
                    "api.keys[{i}] must be at least 24 characters (sk_live_ + openssl rand -hex 16)"
                ));
            }
        }
        let webhook_key = crate::webhooks::signing::key_bytes(self.webhooks.secret.expose_secret());
        if webhook_key.len() < 24 {
            errors.push(
                "webhooks.secret must hold at least 24 bytes of key (openssl rand -hex 32, or whsec_<base64>)"
                    .to_owned(),
            );
        }
        errors
    }

    /// Every secret in use with its dotted name, for the production check. A disabled
    /// provider's secrets are used by nothing (enabling it runs the check on them again), so
    /// they may keep their placeholders.
    fn secrets(&self) -> Vec<(String, &SecretString)> {
        let mut v: Vec<(String, &SecretString)> = vec![
            ("api.client_secret_key".into(), &self.api.client_secret_key),
            ("webhooks.secret".into(), &self.webhooks.secret),
        ];
        if self.payme.enabled {
            v.push(("payme.key".into(), &self.payme.key));
        }
        if self.click.enabled {
            v.push(("click.secret_key".into(), &self.click.secret_key));
        }
        if self.atmos.enabled {
            v.extend([
                ("atmos.consumer_key".into(), &self.atmos.consumer_key),
                ("atmos.consumer_secret".into(), &self.atmos.consumer_secret),
                ("atmos.callback_key".into(), &self.atmos.callback_key),
            ]);
        }
        if self.epay.enabled {
            v.push(("epay.client_secret".into(), &self.epay.client_secret));
        }
        for (i, k) in self.api.keys.iter().enumerate() {
            v.push((format!("api.keys[{i}]"), k));
        }
        v
    }

    /// The effective configuration as TOML with every secret masked (`tolov check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `TOLOV__SECTION__KEY` environment variables as figment's `Env::prefixed("TOLOV__").split("__")`
/// reads them, except that a value it would turn into a number or boolean spelled differently
/// (`012345`, `+7`, `1e5`) stays text: an id or a secret must not lose its leading zeros.
struct EnvVars(Vec<(String, Value)>);

impl EnvVars {
    const PREFIX: &'static str = "TOLOV__";

    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let entries = vars
            .into_iter()
            .filter_map(|(name, raw)| {
                let rest = name
                    .get(..Self::PREFIX.len())
                    .filter(|p| p.eq_ignore_ascii_case(Self::PREFIX))
                    .map(|_| &name[Self::PREFIX.len()..])?;
                let key = rest
                    .split("__")
                    .filter(|part| !part.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join(".");
                (!key.is_empty()).then(|| (key, env_value(&raw)))
            })
            .collect();
        EnvVars(entries)
    }
}

/// figment's reading of an environment value, unless that would change how it is spelled.
fn env_value(raw: &str) -> Value {
    let parsed: Value = match raw.parse() {
        Ok(v) => v,
        Err(never) => match never {},
    };
    let respelled = match &parsed {
        Value::Num(_, n) => n
            .to_u128()
            .map(|u| u.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string())),
        Value::Bool(_, b) => Some(b.to_string()),
        _ => None,
    };
    match respelled {
        Some(text) if text != raw.trim() => Value::from(raw.to_owned()),
        _ => parsed,
    }
}

fn merge_dict(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, old)), Value::Dict(_, new)) => merge_dict(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("`TOLOV__` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.0 {
            if let Value::Dict(_, nested) = figment::util::nest(key, value.clone()) {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Environment values that look like numbers arrive as numbers (`TOLOV__CLICK__SERVICE_ID=12345`);
/// identifiers and secrets are text whatever they look like.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Int(i64),
    Uint(u64),
}

impl TextOrNumber {
    /// Surrounding whitespace dropped: no provider id or key has any, and one read from a file
    /// often ends in a newline.
    fn into_string(self) -> String {
        match self {
            TextOrNumber::Text(s) => s.trim().to_owned(),
            TextOrNumber::Int(n) => n.to_string(),
            TextOrNumber::Uint(n) => n.to_string(),
        }
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(TextOrNumber::deserialize(d)?.into_string())
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    Ok(SecretString::from(
        TextOrNumber::deserialize(d)?.into_string(),
    ))
}

/// Networks (`185.234.113.0/28`) or single addresses, as a TOML array or `a,b,c`.
fn net_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    text_list(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not an IP address or network (CIDR)"
                    ))
                })
        })
        .collect()
}

fn secs_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    text_list(d)?
        .iter()
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                serde::de::Error::custom(format!("`{s}` is not a whole number of seconds"))
            })
        })
        .collect()
}

/// Lists come from TOML as arrays and from the environment as `a,b,c`; blanks are dropped.
fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<TextOrNumber>),
        One(TextOrNumber),
    }
    let items: Vec<String> = match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v.into_iter().map(TextOrNumber::into_string).collect(),
        OneOrMany::One(s) => s.into_string().split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(text_list(d)?.into_iter().map(SecretString::from).collect())
}

fn mask_value(secret: &SecretString) -> String {
    if secret.expose_secret().is_empty() {
        String::new()
    } else {
        "********".to_owned()
    }
}

fn mask<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_value(secret))
}

fn mask_list<S: Serializer>(secrets: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(secrets.iter().map(mask_value))
}

/// Keeps the scheme, host and database of a URL visible and hides any password.
fn redact_url<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    redact_plain_url(secret.expose_secret(), s)
}

fn redact_plain_url<S: Serializer>(raw: &str, s: S) -> Result<S::Ok, S::Error> {
    const MASK: &str = "********";
    if raw.is_empty() {
        return s.serialize_str(raw);
    }
    let Ok(mut u) = url::Url::parse(raw) else {
        // Unparsable (a password with `/` or `#`): nothing of it can be shown safely.
        return s.serialize_str(MASK);
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    // libpq and sqlx also take the password as a query parameter.
    if u.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    s.serialize_str(u.as_str())
}

/// `scheme://host[:port]` of an address, for messages: credentials in its user part or query
/// never reach the log.
fn scheme_and_host(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            (None, _) => format!("{}:", u.scheme()),
        },
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// An https address of a public host that is not named as a test or development one
/// (`test-partner.atmos.uz`, `testoauth.homebank.kz`, `dev-checkout.atmos.uz`).
fn is_live_https(value: &str) -> bool {
    let Ok(u) = url::Url::parse(value) else {
        return false;
    };
    let test_named = match u.host() {
        Some(url::Host::Domain(d)) => d
            .to_ascii_lowercase()
            .split('.')
            .any(|label| label.starts_with("test") || label.starts_with("dev-")),
        _ => false,
    };
    u.scheme() == "https" && !is_local_host(u.host()) && !test_named
}

/// A host the internet cannot reach: localhost or a name without a dot, a loopback,
/// unspecified, private, link-local or shared (CGNAT) address.
fn is_local_host(host: Option<url::Host<&str>>) -> bool {
    match host {
        None => true,
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || !d.contains('.')
        }
        Some(url::Host::Ipv4(ip)) => {
            let cgnat = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_private()
                || ip.is_link_local()
                || cgnat
        }
        Some(url::Host::Ipv6(ip)) => {
            let first = ip.segments()[0];
            let unique_local = (first & 0xfe00) == 0xfc00;
            let link_local = (first & 0xffc0) == 0xfe80;
            ip.is_loopback() || ip.is_unspecified() || unique_local || link_local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> Settings {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.mode = Mode::Production;
        s
    }

    #[test]
    fn defaults_are_a_valid_sandbox() {
        let s = Settings::sandbox_defaults().expect("defaults parse");
        assert_eq!(s.mode, Mode::Sandbox);
        s.validate().expect("sandbox defaults validate");
    }

    #[test]
    fn values_that_would_break_at_run_time_are_refused() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.server.request_timeout_secs = 0;
        s.webhooks.poll_interval_ms = 0;
        s.webhooks.timeout_secs = 60;
        s.webhooks.retry_schedule_secs = vec![60, 0];
        s.webhooks.retention_days = 4000;
        s.api.payment_ttl_minutes = 10_000_000_000;
        s.webhooks.secret = SecretString::from("whsec_not base64!");
        s.atmos.sms_per_payment = 0;
        s.atmos.timeout_secs = 0;
        s.workers.expiry_interval_secs = 0;
        s.workers.reconcile_interval_secs = 0;
        s.workers.reconcile_after_minutes = -5;
        let text = s.validate().expect_err("must refuse").to_string();
        for expected in [
            "atmos.sms_per_payment must be at least 1",
            "atmos.timeout_secs must be between 1 and",
            "workers.expiry_interval_secs must be at least 1",
            "workers.reconcile_interval_secs must be at least 1",
            "workers.reconcile_after_minutes must be between 1 and 525600",
            "server.request_timeout_secs must be at least 1",
            "webhooks.poll_interval_ms must be at least 1",
            "webhooks.timeout_secs must be between 1 and 39",
            "webhooks.retry_schedule_secs must list at most 20 delays, each between 1 and 604800",
            "webhooks.retention_days must be at most 3650",
            "api.payment_ttl_minutes must be at most 525600",
            "webhooks.secret starts with whsec_ but the rest is not base64",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
    }

    #[test]
    fn provider_calls_must_end_before_the_request_does() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.server.request_timeout_secs = 30;
        s.atmos.timeout_secs = 30;
        s.workers.reconcile_after_minutes = i64::MAX;
        let text = s.validate().expect_err("must refuse").to_string();
        assert!(
            text.contains("atmos.timeout_secs must be between 1 and 29"),
            "{text}"
        );
        assert!(
            text.contains("workers.reconcile_after_minutes must be between 1 and 525600"),
            "{text}"
        );
        s.atmos.timeout_secs = 29;
        s.workers.reconcile_after_minutes = 15;
        s.validate().expect("accepted");
    }

    #[test]
    fn the_shipped_placeholders_pass_in_sandbox_and_fail_in_production() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.webhooks.secret = SecretString::from("whsec_CHANGE_ME");
        s.validate()
            .expect("sandbox accepts .env.example's placeholder");
        s.mode = Mode::Production;
        let text = s.validate().expect_err("must refuse").to_string();
        assert!(
            text.contains("webhooks.secret still holds the CHANGE_ME placeholder"),
            "{text}"
        );
    }

    #[test]
    fn production_refuses_guessable_signing_keys_and_epay_test_hosts() {
        let mut s = production();
        s.api.client_secret_key = SecretString::from("");
        s.webhooks.secret = SecretString::from("whsec_");
        s.epay.enabled = true;
        s.api.keys = vec![
            SecretString::from("sk_live_".to_owned() + &"a".repeat(24)),
            SecretString::from("k"),
        ];
        let text = s.validate().expect_err("must refuse").to_string();
        assert!(!text.contains("api.keys[0] must be"), "{text}");
        for expected in [
            "api.keys[1] must be at least 24 characters",
            "api.client_secret_key must be at least 32 characters",
            "webhooks.secret must hold at least 24 bytes of key",
            "epay.widget_url points at the ePay test host",
            "epay.terminal_id is ePay's public test terminal",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
    }

    #[test]
    fn production_refuses_every_sandbox_secret() {
        let err = production().validate().expect_err("must refuse");
        let text = err.to_string();
        for name in [
            "api.keys[0]",
            "api.client_secret_key",
            "webhooks.secret",
            "payme.key",
            "click.secret_key",
            "atmos.consumer_key",
            "atmos.consumer_secret",
            "atmos.callback_key",
            "epay.client_secret",
        ] {
            assert!(
                text.contains(&format!("{name} is a sandbox default")),
                "{name}: {text}"
            );
        }
        assert!(text.contains("atmos.base_url is required"), "{text}");
        assert!(
            text.contains("payme.checkout_url points at the Payme test host"),
            "{text}"
        );
    }

    /// The values every production test starts from: real-looking secrets and ids, Payme and
    /// Click enabled, ATMOS and ePay off.
    fn real_production() -> Settings {
        let mut s = production();
        s.server.public_url = "https://pay.example.uz".into();
        s.api.keys = vec![SecretString::from("sk_live_".to_owned() + &"x".repeat(24))];
        s.api.client_secret_key = SecretString::from("k1".repeat(16));
        s.webhooks.secret = SecretString::from("k2".repeat(12));
        s.payme.key = SecretString::from("k3");
        s.payme.merchant_id = "5e730e8e0b852a417aa49ceb".into();
        s.payme.checkout_url = "https://checkout.paycom.uz".into();
        s.click.secret_key = SecretString::from("k4");
        s.click.api_url = "https://api.click.uz/v2/merchant".into();
        (
            s.click.service_id,
            s.click.merchant_id,
            s.click.merchant_user_id,
        ) = ("41001".into(), "52001".into(), "63001".into());
        s.atmos.enabled = false;
        s.epay.enabled = false;
        s.atmos.consumer_key = SecretString::from("k5");
        s.atmos.consumer_secret = SecretString::from("k6");
        s.atmos.callback_key = SecretString::from("k7");
        s.epay.client_secret = SecretString::from("k8");
        s
    }

    /// ePay's postLink, the return links and the hosted page are built from `public_url`:
    /// in production it must be an https address others can reach.
    #[test]
    fn production_needs_a_public_https_address() {
        for bad in [
            "http://pay.example.uz",
            "https://localhost:8080",
            "https://127.0.0.1",
            "https://[::1]:8443",
            "https://0.0.0.0",
            "https://10.0.0.5",
            "https://192.168.1.2",
            "https://100.64.0.1",
            "https://169.254.1.1",
            "https://[fd00::1]",
            "https://tolov",
        ] {
            let mut s = real_production();
            s.server.public_url = bad.into();
            let text = s.validate().expect_err(bad).to_string();
            assert!(text.contains("server.public_url"), "{bad}: {text}");
        }
        real_production()
            .validate()
            .expect("https on a public name");
    }

    /// A provider id left at its sandbox value would send payers to the sandbox merchant
    /// (Payme) or have every call refused (Click, ATMOS, ePay).
    #[test]
    fn production_refuses_sandbox_provider_ids() {
        let defaults = Settings::sandbox_defaults().expect("defaults");
        type Set = fn(&mut Settings, &Settings);
        let cases: [(&str, Set); 4] = [
            ("payme.merchant_id", |s, d| {
                s.payme.merchant_id = d.payme.merchant_id.clone()
            }),
            ("click.service_id", |s, d| {
                s.click.service_id = d.click.service_id.clone()
            }),
            ("click.merchant_id", |s, d| {
                s.click.merchant_id = d.click.merchant_id.clone()
            }),
            ("click.merchant_user_id", |s, d| {
                s.click.merchant_user_id = d.click.merchant_user_id.clone()
            }),
        ];
        for (name, set) in cases {
            let mut s = real_production();
            set(&mut s, &defaults);
            let text = s.validate().expect_err(name).to_string();
            assert!(
                text.contains(&format!("{name} is a sandbox default")),
                "{text}"
            );
        }
        let mut s = real_production();
        s.atmos.enabled = true;
        s.atmos.base_url = "https://partner.atmos.uz".into();
        let text = s.validate().expect_err("atmos store").to_string();
        assert!(
            text.contains("atmos.store_id is a sandbox default"),
            "{text}"
        );
        s.atmos.store_id = "7001".into();
        s.validate().expect("atmos with its own store");
        // A provider that is off may keep its sandbox ids.
        let mut s = real_production();
        s.click.enabled = false;
        s.click.service_id = defaults.click.service_id.clone();
        s.validate().expect("click off");
    }

    #[test]
    fn production_with_real_values_starts() {
        let mut s = real_production();
        s.validate().expect("valid production config");
        s.payme.key = SecretString::from("");
        let text = s.validate().expect_err("missing payme key").to_string();
        assert!(text.contains("payme.key is required"), "{text}");
        s.payme.key = SecretString::from("CHANGE_ME");
        let text = s.validate().expect_err("placeholder").to_string();
        assert!(
            text.contains("payme.key still holds the CHANGE_ME placeholder"),
            "{text}"
        );
    }

    /// ATMOS receives card numbers and every provider receives tolov's keys: in production
    /// those calls go over https to the provider's live host, never to a test host or this
    /// machine (where only a simulator could answer).
    #[test]
    fn production_sends_provider_calls_over_https_to_live_hosts() {
        let live = |s: &mut Settings| {
            s.atmos.enabled = true;
            s.atmos.base_url = "https://partner.atmos.uz".into();
            s.atmos.store_id = "7001".into();
            s.epay.enabled = true;
            s.epay.oauth_url = "https://epay-oauth.homebank.kz/oauth2/token".into();
            s.epay.api_url = "https://epay-api.homebank.kz".into();
            s.epay.widget_url = "https://epay.homebank.kz/payform/payment-api.js".into();
            s.epay.client_id = "shop-42".into();
            s.epay.terminal_id = "00000000-0000-4000-8000-00000000aa42".into();
        };
        let mut ok = real_production();
        live(&mut ok);
        ok.validate().expect("live https hosts");
        type Set = fn(&mut Settings);
        let cases: [(&str, Set); 8] = [
            ("click.api_url", |s| {
                s.click.api_url = "http://api.click.uz/v2/merchant".into()
            }),
            ("atmos.base_url", |s| {
                s.atmos.base_url = "http://partner.atmos.uz".into()
            }),
            ("atmos.base_url", |s| {
                s.atmos.base_url = "https://test-partner.atmos.uz".into()
            }),
            ("atmos.base_url", |s| {
                s.atmos.base_url = "https://127.0.0.1:8080/sandbox/atmos".into()
            }),
            ("epay.oauth_url", |s| {
                s.epay.oauth_url = "https://testoauth.homebank.kz/epay2/oauth2/token".into()
            }),
            ("epay.api_url", |s| {
                s.epay.api_url = "https://test-epay-api.epayment.kz".into()
            }),
            ("epay.api_url", |s| s.epay.api_url = "not a url".into()),
            ("payme.checkout_url", |s| {
                s.payme.checkout_url = "http://checkout.paycom.uz".into()
            }),
        ];
        for (name, set) in cases {
            let mut s = real_production();
            live(&mut s);
            set(&mut s);
            let text = s.validate().expect_err(name).to_string();
            assert!(
                text.contains(&format!(
                    "{name} must be the provider's live https:// address"
                )),
                "{name}: {text}"
            );
        }
        // The address is named by scheme and host only: credentials in it stay out of the log.
        let mut s = real_production();
        s.click.api_url = "http://user:hunter2@api.click.uz/v2/merchant?token=s3cret".into();
        let text = s.validate().expect_err("plain http").to_string();
        assert!(text.contains("not `http://api.click.uz`"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        // A disabled provider's address is not used, so it is not judged.
        let mut s = real_production();
        s.atmos.base_url = "http://127.0.0.1:1".into();
        s.validate().expect("ATMOS is off");
    }

    #[test]
    fn masked_output_never_shows_secrets() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.database.url = SecretString::from("postgres://tolov:hunter2@db:5432/tolov");
        let out = s.to_masked_toml();
        for secret in [
            "hunter2",
            "sandbox-payme-key",
            "sandbox-click-secret",
            "sk_test_tolov_sandbox",
            "sandbox-client-secret-key",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(
            out.contains("postgres://tolov:********@db:5432/tolov"),
            "{out}"
        );
        assert!(out.contains("account_field = \"order_id\""), "{out}");
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.webhooks.url = "https://hooks:s3cret@shop.example/tolov".into();
        let out = s.to_masked_toml();
        assert!(!out.contains("s3cret"), "{out}");
        assert!(
            out.contains("https://hooks:********@shop.example/tolov"),
            "{out}"
        );
        // libpq and sqlx also take the password as a query parameter, and a password with a
        // `/` or `#` makes the URL unparsable: neither is printed.
        for (url, shown) in [
            (
                "postgres://tolov@db/tolov?sslmode=require&password=hunter2",
                "postgres://tolov@db/tolov?sslmode=require&password=********",
            ),
            ("postgres://tolov:hun/ter#2@db/tolov", "********"),
        ] {
            let mut s = Settings::sandbox_defaults().expect("defaults parse");
            s.database.url = SecretString::from(url);
            let out = s.to_masked_toml();
            assert!(!out.contains("hunter2") && !out.contains("ter#2"), "{out}");
            assert!(out.contains(&format!("url = \"{shown}\"")), "{out}");
        }
    }

    #[test]
    fn numeric_looking_ids_and_secrets_are_text() {
        let s: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(
                "[click]\nservice_id = 12345\nsecret_key = 987\n[api]\nkeys = [1, \"k\"]\n",
            ))
            .extract()
            .expect("numbers accepted");
        assert_eq!(s.click.service_id, "12345");
        assert_eq!(s.click.secret_key.expose_secret(), "987");
        let keys: Vec<&str> = s.api.keys.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, ["1", "k"]);
    }

    #[test]
    fn secrets_and_ids_read_from_files_lose_surrounding_whitespace() {
        // A key pasted or read from a secrets file often ends in a newline (§1.2: Payme's own
        // template trims its key); kept, it would refuse every call as a wrong key.
        let s: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(
                "[payme]\nkey = \"k3y-from-file\\n\"\nmerchant_id = \" m1 \"\n",
            ))
            .extract()
            .expect("parse");
        assert_eq!(s.payme.key.expose_secret(), "k3y-from-file");
        assert_eq!(s.payme.merchant_id, "m1");
    }

    #[test]
    fn environment_values_keep_their_spelling() {
        let vars = [
            ("TOLOV__CLICK__SERVICE_ID", "012345"),
            ("TOLOV__CLICK__SECRET_KEY", "00987"),
            ("TOLOV__PAYME__KEY", "1e5"),
            ("TOLOV__PAYME__MERCHANT_ID", "12345"),
            ("tolov__atmos__store_id", "+7"),
            ("TOLOV__API__KEYS", "007,k"),
            ("TOLOV__DATABASE__MAX_CONNECTIONS", "016"),
            ("TOLOV__WEBHOOKS__ENABLED", "false"),
            ("OTHER__PAYME__KEY", "not ours"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let s = Settings::load_from(None, vars).expect("environment accepted");
        assert_eq!(s.click.service_id, "012345");
        assert_eq!(s.click.secret_key.expose_secret(), "00987");
        assert_eq!(s.payme.key.expose_secret(), "1e5");
        assert_eq!(s.payme.merchant_id, "12345");
        assert_eq!(s.atmos.store_id, "+7");
        let keys: Vec<&str> = s.api.keys.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, ["007", "k"]);
        assert_eq!(s.database.max_connections, 16);
        assert!(!s.webhooks.enabled);
    }

    #[test]
    fn production_refuses_placeholders_in_plain_values_too() {
        let mut s = production();
        s.payme.merchant_id = "CHANGE_ME_payme_merchant_id".into();
        s.database.url = SecretString::from("postgres://tolov:CHANGE_ME@db/tolov");
        s.server.metrics_token = SecretString::from("CHANGE_ME_metrics_token");
        let text = s.validate().expect_err("placeholders").to_string();
        assert!(
            text.contains("server.metrics_token still holds the CHANGE_ME placeholder"),
            "{text}"
        );
        assert!(
            text.contains("payme.merchant_id still holds the CHANGE_ME placeholder"),
            "{text}"
        );
        assert!(
            text.contains("database.url still holds the CHANGE_ME placeholder"),
            "{text}"
        );
    }

    #[test]
    fn secret_lists_accept_comma_separated_strings() {
        #[derive(Deserialize)]
        struct K {
            #[serde(deserialize_with = "secret_list")]
            keys: Vec<SecretString>,
        }
        let k: K = serde_json::from_str(r#"{"keys":"a, b,,c"}"#).expect("parse");
        let got: Vec<&str> = k.keys.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn the_retry_schedule_reads_from_the_environment_as_a_list() {
        let vars = |v: &str| {
            vec![(
                "TOLOV__WEBHOOKS__RETRY_SCHEDULE_SECS".to_owned(),
                v.to_owned(),
            )]
        };
        let s = Settings::load_from(None, vars("5, 30,600")).expect("list");
        assert_eq!(s.webhooks.retry_schedule_secs, [5, 30, 600]);
        let s = Settings::load_from(None, vars("45")).expect("one delay");
        assert_eq!(s.webhooks.retry_schedule_secs, [45]);
        let text = Settings::load_from(None, vars("5,soon"))
            .expect_err("not a number")
            .to_string();
        assert!(
            text.contains("`soon` is not a whole number of seconds"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_are_reported_together() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.server.public_url = "not a url".into();
        s.database.max_connections = 0;
        s.payme.account_field = "order id;".into();
        s.click.min_amount = 0;
        let text = s.validate().expect_err("invalid").to_string();
        assert!(text.contains("server.public_url"), "{text}");
        assert!(text.contains("database.max_connections"), "{text}");
        assert!(text.contains("payme.account_field"), "{text}");
        assert!(text.contains("click.min_amount"), "{text}");
    }

    /// B3: ePay refunds nothing under 10 KZT; a smaller payment could never be returned (not
    /// by the merchant, nor when it lands after a cancel).
    #[test]
    fn epay_payments_start_at_its_smallest_refund() {
        let mut s = Settings::sandbox_defaults().expect("defaults parse");
        s.epay.min_amount = 999;
        let text = s.validate().expect_err("invalid").to_string();
        assert!(
            text.contains("epay.min_amount must be at least 1000"),
            "{text}"
        );
        s.epay.min_amount = 1000;
        assert!(s.validate().is_ok());
    }

    /// config/production.example.toml, filled in as its first line says, starts in production:
    /// the providers it disables need no secrets of their own.
    #[test]
    fn the_production_example_passes_once_filled_in() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        let text = std::fs::read_to_string(&path).expect("example");
        let mut section = String::new();
        let filled: Vec<String> = text
            .lines()
            .map(|line| {
                if let Some(name) = line.strip_prefix('[') {
                    section = name.trim_end_matches(']').to_owned();
                }
                let Some((key, _)) = line.split_once(" = ") else {
                    return line.to_owned();
                };
                if !line.contains("CHANGE_ME") {
                    return line.to_owned();
                }
                let value = match (section.as_str(), key) {
                    ("database", "url") => "\"postgres://tolov:s3cret@db:5432/tolov\"".to_owned(),
                    ("api", "keys") => format!("[\"sk_live_{}\"]", "a".repeat(24)),
                    ("payme", "merchant_id") => "\"5e730e8e0b852a417aa49ceb\"".to_owned(),
                    ("click", "service_id") => "\"41001\"".to_owned(),
                    ("click", "merchant_id") => "\"52001\"".to_owned(),
                    ("click", "merchant_user_id") => "\"63001\"".to_owned(),
                    (s, k) => format!("\"{s}-{k}-{}\"", "r".repeat(40)),
                };
                format!("{key} = {value}")
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("production.toml");
        std::fs::write(&file, filled.join("\n")).expect("write");
        let settings = Settings::load_from(Some(&file), Vec::new()).expect("filled-in example");
        assert_eq!(settings.mode, Mode::Production);
        // The check still covers what is enabled.
        let unfilled = Settings::load_from(Some(&path), Vec::new())
            .expect_err("placeholders")
            .to_string();
        assert!(unfilled.contains("payme.key"), "{unfilled}");
        assert!(!unfilled.contains("atmos."), "{unfilled}");
    }
}
