//! Fiscal receipt lines a merchant may attach to a payment. Uzbek online sales are fiscalised
//! per item (IKPU product code, package code, VAT); Payme takes them as the `detail` of its
//! CheckPerformTransaction answer (payme-click.md §1.6) and prints the receipt from them.
//! Amounts are minor units (tiyin) like every other amount in tolov.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// 0 = sale (the only type tolov sends).
    #[serde(default)]
    pub receipt_type: i64,
    /// 1–100 lines.
    pub items: Vec<ReceiptItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<ReceiptShipping>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptItem {
    pub title: String,
    /// Price of one unit, minor units.
    pub price: i64,
    pub count: i64,
    /// IKPU (MXIK) product code: 17 digits.
    pub code: String,
    /// Package code from the IKPU catalogue.
    pub package_code: String,
    /// 0–100.
    pub vat_percent: i64,
    /// Discount on the whole line, minor units.
    #[serde(default)]
    pub discount: i64,
    /// Unit-of-measure code from the IKPU catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptShipping {
    pub title: String,
    /// Minor units.
    pub price: i64,
}

const MAX_ITEMS: usize = 100;
const MAX_TITLE: usize = 256;

fn title_problem(title: &str) -> Option<&'static str> {
    let len = title.chars().count();
    if title.trim().is_empty() {
        Some("must not be empty")
    } else if len > MAX_TITLE {
        Some("must be at most 256 characters")
    } else if title.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

impl Receipt {
    /// Every field that is wrong, as (field path, message), e.g. `receipt.items[2].code`.
    /// Totals are not recomputed against the payment's amount: how Payme sums price, count
    /// and discount is not verified here, and a wrong guess would refuse valid receipts.
    pub fn problems(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        if self.receipt_type != 0 {
            out.push(("receipt.receipt_type".to_owned(), "must be 0 (sale)"));
        }
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            out.push(("receipt.items".to_owned(), "must hold 1 to 100 lines"));
        }
        for (i, item) in self.items.iter().enumerate() {
            let at = |name: &str| format!("receipt.items[{i}].{name}");
            if let Some(m) = title_problem(&item.title) {
                out.push((at("title"), m));
            }
            if item.price < 0 {
                out.push((at("price"), "must not be negative"));
            }
            if item.count < 1 {
                out.push((at("count"), "must be at least 1"));
            }
            if item.code.len() != 17 || !item.code.bytes().all(|b| b.is_ascii_digit()) {
                out.push((at("code"), "must be a 17-digit IKPU code"));
            }
            if item.package_code.is_empty()
                || item.package_code.len() > 20
                || !item.package_code.bytes().all(|b| b.is_ascii_digit())
            {
                out.push((at("package_code"), "must be 1 to 20 digits"));
            }
            if !(0..=100).contains(&item.vat_percent) {
                out.push((at("vat_percent"), "must be 0 to 100"));
            }
            match item.price.checked_mul(item.count) {
                None => out.push((at("price"), "price × count is too large")),
                Some(line) if item.discount < 0 || item.discount > line => {
                    out.push((at("discount"), "must be between 0 and price × count"))
                }
                Some(_) => {}
            }
            if item.units.is_some_and(|u| u < 0) {
                out.push((at("units"), "must not be negative"));
            }
        }
        if let Some(s) = &self.shipping {
            if let Some(m) = title_problem(&s.title) {
                out.push(("receipt.shipping.title".to_owned(), m));
            }
            if s.price < 0 {
                out.push(("receipt.shipping.price".to_owned(), "must not be negative"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> ReceiptItem {
        ReceiptItem {
            title: "Чай зелёный".into(),
            price: 50_000,
            count: 3,
            code: "10899002001000000".into(),
            package_code: "1495186".into(),
            vat_percent: 12,
            discount: 0,
            units: None,
        }
    }

    #[test]
    fn a_well_formed_receipt_has_no_problems() {
        let r = Receipt {
            receipt_type: 0,
            items: vec![item()],
            shipping: Some(ReceiptShipping {
                title: "Доставка".into(),
                price: 10_000,
            }),
        };
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut bad = item();
        bad.title = " ".into();
        bad.price = -1;
        bad.count = 0;
        bad.code = "1089900200100000".into();
        bad.package_code = "14a".into();
        bad.vat_percent = 101;
        bad.discount = -5;
        bad.units = Some(-1);
        let r = Receipt {
            receipt_type: 1,
            items: vec![item(), bad],
            shipping: Some(ReceiptShipping {
                title: String::new(),
                price: -1,
            }),
        };
        let fields: Vec<String> = r.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "receipt.receipt_type",
                "receipt.items[1].title",
                "receipt.items[1].price",
                "receipt.items[1].count",
                "receipt.items[1].code",
                "receipt.items[1].package_code",
                "receipt.items[1].vat_percent",
                "receipt.items[1].discount",
                "receipt.items[1].units",
                "receipt.shipping.title",
                "receipt.shipping.price",
            ]
        );
    }

    #[test]
    fn discounts_stay_within_the_line_and_counts_cannot_overflow() {
        let mut d = item();
        d.discount = d.price * d.count;
        assert!(Receipt {
            receipt_type: 0,
            items: vec![d.clone()],
            shipping: None
        }
        .problems()
        .is_empty());
        d.discount += 1;
        assert_eq!(
            Receipt {
                receipt_type: 0,
                items: vec![d],
                shipping: None
            }
            .problems()
            .len(),
            1
        );
        let mut huge = item();
        huge.price = i64::MAX;
        huge.count = 2;
        assert_eq!(
            Receipt {
                receipt_type: 0,
                items: vec![huge],
                shipping: None
            }
            .problems()[0]
                .0,
            "receipt.items[0].price"
        );
        assert_eq!(
            Receipt {
                receipt_type: 0,
                items: vec![],
                shipping: None
            }
            .problems()[0]
                .0,
            "receipt.items"
        );
    }
}
