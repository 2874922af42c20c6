//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`. A secret written `whsec_<base64>` is used as the
//! bytes it encodes (the Standard Webhooks convention); any other secret as its UTF-8 bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key a `whsec_<base64>` secret encodes: `None` for a secret without the prefix,
/// `Some(Err)` when the rest is not base64.
pub fn whsec_key(secret: &str) -> Option<Result<Vec<u8>, base64::DecodeError>> {
    secret.strip_prefix("whsec_").map(|b| STANDARD.decode(b))
}

pub fn key_bytes(secret: &str) -> Vec<u8> {
    match whsec_key(secret) {
        Some(Ok(key)) => key,
        _ => secret.as_bytes().to_vec(),
    }
}

pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes(secret))
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// What a merchant's receiver does: recompute and compare in constant time, and refuse old
/// timestamps (replays). `header` may hold several space-separated signatures.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> bool {
    if (now - timestamp).abs() > tolerance_secs {
        return false;
    }
    let expected = sign(secret, id, timestamp, body);
    header
        .split(' ')
        .any(|candidate| crate::api::auth::same_secret(candidate.as_bytes(), expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's verification example (value computed independently with Python's hmac).
    #[test]
    fn readme_example_signature() {
        let body = br#"{"id":"evt_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C","type":"payment.succeeded"}"#;
        let sig = sign(
            "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==",
            "evt_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C",
            1_795_430_000,
            body,
        );
        assert_eq!(sig, "v1,mwyl3hzCGPd4kvKZfQTOWYHevvF96wj00aYwVPl2FdM=");
        assert!(verify(
            "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==",
            "evt_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C",
            1_795_430_000,
            body,
            &sig,
            1_795_430_100,
            300
        ));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let s = sign("k", "id", 10, b"{}");
        assert!(verify("k", "id", 10, b"{}", &s, 10, 300));
        assert!(!verify("k", "id", 10, b"{ }", &s, 10, 300));
        assert!(!verify("k", "id2", 10, b"{}", &s, 10, 300));
        assert!(!verify("other", "id", 10, b"{}", &s, 10, 300));
        assert!(!verify("k", "id", 10, b"{}", &s, 1000, 300), "too old");
        assert!(
            verify("k", "id", 10, b"{}", &format!("v1,bogus {s}"), 10, 300),
            "one of several"
        );
    }

    #[test]
    fn whsec_secrets_are_base64_keys() {
        assert_eq!(
            key_bytes("whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="),
            b"sandbox-webhook-secret".to_vec()
        );
        assert_eq!(key_bytes("plain"), b"plain".to_vec());
    }
}
