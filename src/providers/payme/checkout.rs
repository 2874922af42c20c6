//! The Payme checkout link (payme-click.md §1.11): `<host>/` + base64 of `key=value` pairs joined
//! by `;`. A `;` inside a value would be read as a separator, so such values are refused.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::PaymeSettings;
use crate::domain::NewPayment;
use crate::providers::ProviderError;

pub fn checkout_url(
    settings: &PaymeSettings,
    payment: &NewPayment,
) -> Result<String, ProviderError> {
    let mut params = vec![
        format!("m={}", settings.merchant_id),
        format!("ac.{}={}", settings.account_field, payment.id),
        format!("a={}", payment.amount.minor()),
    ];
    if let Some(url) = &payment.return_url {
        if url.contains(';') {
            return Err(ProviderError::InvalidRequest {
                field: "return_url",
                message: "must not contain ';' (a Payme checkout link cannot carry it)".to_owned(),
            });
        }
        params.push(format!("c={url}"));
    }
    params.push(format!("l={}", payment.language.as_str()));
    Ok(format!(
        "{}/{}",
        settings.checkout_url.trim_end_matches('/'),
        STANDARD.encode(params.join(";"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::{Language, PaymentId, ProviderKind};
    use crate::money::{Currency, Money};

    fn payment(return_url: Option<&str>) -> NewPayment {
        NewPayment {
            id: PaymentId::parse("pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C").expect("id"),
            order_id: "o".into(),
            provider: ProviderKind::Payme,
            amount: Money::from_minor(500, Currency::Uzs).expect("money"),
            description: None,
            return_url: return_url.map(str::to_owned),
            language: Language::Uz,
            metadata: serde_json::json!({}),
            provider_data: serde_json::json!({}),
            client_secret_hash: String::new(),
            expires_at: chrono::Utc::now(),
            created_at: chrono::Utc::now(),
            receipt: None,
        }
    }

    #[test]
    fn matches_the_documented_example_shape() {
        let mut s = Settings::sandbox_defaults().expect("defaults").payme;
        s.merchant_id = "587f72c72cac0d162c722ae2".into();
        s.checkout_url = "https://checkout.paycom.uz".into();
        let url = checkout_url(&s, &payment(Some("https://shop.example/done?x=1"))).expect("url");
        let encoded = url
            .strip_prefix("https://checkout.paycom.uz/")
            .expect("host");
        let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf8");
        assert_eq!(
            decoded,
            "m=587f72c72cac0d162c722ae2;ac.order_id=pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C;a=500;c=https://shop.example/done?x=1;l=uz"
        );
        // The spec's own example, to pin the encoding (standard alphabet, padded).
        assert_eq!(
            STANDARD.encode("m=587f72c72cac0d162c722ae2;ac.order_id=197;a=500"),
            "bT01ODdmNzJjNzJjYWMwZDE2MmM3MjJhZTI7YWMub3JkZXJfaWQ9MTk3O2E9NTAw"
        );
    }

    #[test]
    fn refuses_a_separator_inside_a_value() {
        let s = Settings::sandbox_defaults().expect("defaults").payme;
        assert!(matches!(
            checkout_url(&s, &payment(Some("https://x.example/a;b"))),
            Err(ProviderError::InvalidRequest {
                field: "return_url",
                ..
            })
        ));
        let url = checkout_url(&s, &payment(None)).expect("url");
        assert!(url.starts_with("https://test.paycom.uz/"), "{url}");
    }
}
