//! Click SHOP-API requests: form fields kept as the raw strings Click sent, and the md5 signature
//! over them (payme-click.md §2.3). Nothing is re-formatted before hashing: "1000.00" is hashed
//! as "1000.00".

use std::collections::BTreeMap;

use crate::api::auth::same_secret;
use md5::{Digest, Md5};

/// The decoded form of one request. A field sent twice makes the request garbled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form(BTreeMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Option<Form> {
        let mut fields = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            if fields.insert(k.into_owned(), v.into_owned()).is_some() {
                return None;
            }
        }
        Some(Form(fields))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        let v = self.get(name)?;
        // Digits with an optional leading minus: no "+1", no " 1", no "1.0".
        let digits = v.strip_prefix('-').unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

/// md5 hex of the concatenated raw values, in the spec's order; `merchant_prepare_id` only for
/// Complete (action 1).
pub fn expected_sign(form: &Form, secret: &str) -> String {
    let f = |n: &str| form.get(n).unwrap_or("");
    let mut h = Md5::new();
    h.update(f("click_trans_id"));
    h.update(f("service_id"));
    h.update(secret);
    h.update(f("merchant_trans_id"));
    if f("action") == "1" {
        h.update(f("merchant_prepare_id"));
    }
    h.update(f("amount"));
    h.update(f("action"));
    h.update(f("sign_time"));
    hex::encode(h.finalize())
}

/// Constant-time comparison of the digests (hex case does not matter: same bytes).
pub fn sign_matches(form: &Form, secret: &str) -> bool {
    let Some(given) = form.get("sign_string").and_then(|s| hex::decode(s).ok()) else {
        return false;
    };
    let expected = hex::decode(expected_sign(form, secret)).unwrap_or_default();
    same_secret(&given, &expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Form::parse(body.as_bytes()).expect("form")
    }

    #[test]
    fn prepare_sign_follows_the_documented_order() {
        let f = form(&[
            ("click_trans_id", "123"),
            ("service_id", "10001"),
            ("merchant_trans_id", "pay_1"),
            ("amount", "1000.00"),
            ("action", "0"),
            ("sign_time", "2026-11-23 10:00:00"),
        ]);
        let manual = hex::encode(Md5::digest(
            "12310001secretpay_11000.0002026-11-23 10:00:00",
        ));
        assert_eq!(expected_sign(&f, "secret"), manual);
    }

    #[test]
    fn complete_sign_includes_merchant_prepare_id() {
        let f = form(&[
            ("click_trans_id", "123"),
            ("service_id", "10001"),
            ("merchant_trans_id", "pay_1"),
            ("merchant_prepare_id", "77"),
            ("amount", "1000"),
            ("action", "1"),
            ("sign_time", "2026-11-23 10:00:00"),
        ]);
        let manual = hex::encode(Md5::digest("12310001secretpay_177100012026-11-23 10:00:00"));
        assert_eq!(expected_sign(&f, "secret"), manual);
    }

    #[test]
    fn sign_compares_digests_not_text() {
        let mut pairs = vec![
            ("click_trans_id", "1"),
            ("service_id", "2"),
            ("amount", "3"),
            ("action", "0"),
            ("sign_time", "t"),
        ];
        let good = expected_sign(&form(&pairs), "k");
        let upper = good.to_uppercase();
        pairs.push(("sign_string", &upper));
        assert!(
            sign_matches(&form(&pairs), "k"),
            "hex case is not part of the digest"
        );
        assert!(!sign_matches(&form(&pairs), "other-key"));
        pairs.pop();
        pairs.push(("sign_string", "not-hex"));
        assert!(!sign_matches(&form(&pairs), "k"));
        pairs.pop();
        assert!(!sign_matches(&form(&pairs), "k"), "missing sign");
    }

    #[test]
    fn duplicate_fields_and_loose_integers_are_refused() {
        assert!(Form::parse(b"a=1&a=2").is_none());
        let f = form(&[
            ("x", "+1"),
            ("y", " 1"),
            ("z", "-5017"),
            ("w", "1.0"),
            ("v", ""),
        ]);
        assert_eq!(
            (f.int("x"), f.int("y"), f.int("z"), f.int("w"), f.int("v")),
            (None, None, Some(-5017), None, None)
        );
    }
}
