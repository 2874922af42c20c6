//! Prefixed identifiers: `pay_01J...` tells a reader (and a log search) what it names.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, ulid::Ulid::new()))
            }

            /// Accepts only what [`Self::generate`] could have produced, so a malformed id
            /// from a URL or a provider is rejected before it reaches the database.
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                // Only the canonical spelling: the ulid parser also accepts lowercase and
                // silently wraps values above the 128-bit range.
                let parsed = rest.parse::<ulid::Ulid>().ok()?;
                (parsed.to_string() == rest).then(|| Self(s.to_owned()))
            }

            /// For values read back from our own database.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

prefixed_id!(PaymentId, "pay_");
prefixed_id!(TransactionId, "txn_");
prefixed_id!(RefundId, "ref_");
prefixed_id!(EventId, "evt_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = PaymentId::generate();
        assert!(id.as_str().starts_with("pay_"));
        assert_eq!(PaymentId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn malformed_ids_are_rejected() {
        let good = PaymentId::generate();
        let ulid_part = &good.as_str()[4..];
        for bad in [
            String::new(),
            "pay_".to_owned(),
            ulid_part.to_owned(),
            format!("ref_{ulid_part}"),
            format!("pay_{ulid_part}x"),
            "pay_' OR 1=1 --".to_owned(),
            "pay_ZZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            format!("pay_{}", ulid_part.to_lowercase()),
        ] {
            assert_eq!(PaymentId::parse(&bad), None, "{bad:?}");
        }
    }
}
