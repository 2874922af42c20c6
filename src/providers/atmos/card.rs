//! Card input from the payer's browser, checked before anything reaches ATMOS (the seed's
//! rules): 16 digits, UZCARD 8600 or HUMO 9860, Luhn, expiry MM/YY not in the past (sent to
//! ATMOS as YYMM). The card data itself is never stored or logged; only the masked PAN is.

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CardType {
    Uzcard,
    Humo,
}

pub use crate::error::Localized;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardProblem {
    Number,
    Brand,
    Expiry,
    Expired,
}

impl CardProblem {
    pub fn code(self) -> &'static str {
        match self {
            CardProblem::Number => "card_invalid",
            CardProblem::Brand => "card_not_supported",
            CardProblem::Expiry => "card_expiry_invalid",
            CardProblem::Expired => "card_expired",
        }
    }

    pub fn message(self) -> Localized {
        match self {
            CardProblem::Number => Localized {
                uz: "Karta ma'lumotlari noto'g'ri. Iltimos, qaytadan tekshiring.",
                ru: "Неверные данные карты. Пожалуйста, проверьте ещё раз.",
                en: "The card details are incorrect. Please check them again.",
            },
            CardProblem::Brand => Localized {
                uz: "Faqat UzCard (8600...) yoki Humo (9860...) kartalari qabul qilinadi",
                ru: "Принимаются только карты UzCard (8600...) или Humo (9860...)",
                en: "Only UzCard (8600...) or Humo (9860...) cards are accepted",
            },
            CardProblem::Expiry => Localized {
                uz: "Kartaning amal qilish muddati noto'g'ri kiritilgan (OO/YY).",
                ru: "Срок действия карты введён неверно (ММ/ГГ).",
                en: "The card's expiry date is not valid (MM/YY).",
            },
            CardProblem::Expired => Localized {
                uz: "Kartaning amal qilish muddati tugagan",
                ru: "Срок действия карты истёк",
                en: "The card has expired",
            },
        }
    }
}

/// A card that passed the checks, in the forms ATMOS and our records need.
#[derive(Clone)]
pub struct Card {
    pub number: String,
    /// YYMM, as ATMOS wants it.
    pub expiry_yymm: String,
    pub card_type: CardType,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Card({})", self.masked())
    }
}

impl Card {
    /// `8600 **** **** 1234`: all that is ever kept.
    pub fn masked(&self) -> String {
        format!("{} **** **** {}", &self.number[..4], &self.number[12..])
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub fn parse(number: &str, expiry: &str, now: DateTime<Utc>) -> Result<Card, CardProblem> {
    let cleaned: String = number.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if cleaned.len() != 16 || !cleaned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardProblem::Number);
    }
    let card_type = if cleaned.starts_with("8600") {
        CardType::Uzcard
    } else if cleaned.starts_with("9860") {
        CardType::Humo
    } else {
        return Err(CardProblem::Brand);
    };
    let digits: Vec<u8> = cleaned.bytes().map(|b| b - b'0').collect();
    if !luhn(&digits) {
        return Err(CardProblem::Number);
    }
    let (mm, yy) = expiry.trim().split_once('/').ok_or(CardProblem::Expiry)?;
    let two_digits = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (month, year) = match (two_digits(mm), two_digits(yy)) {
        (Some(m), Some(y)) if (1..=12).contains(&m) => (m, 2000 + y as i32),
        _ => return Err(CardProblem::Expiry),
    };
    // A card is valid through the last day of its expiry month.
    if (year, month) < (now.year(), now.month()) {
        return Err(CardProblem::Expired);
    }
    Ok(Card {
        expiry_yymm: format!("{yy}{mm}"),
        number: cleaned,
        card_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn accepts_uzcard_and_humo_and_converts_the_expiry() {
        let c = parse("8600 4907 4431 3347", "10/28", now()).expect("uzcard");
        assert_eq!(
            (c.expiry_yymm.as_str(), c.card_type),
            ("2810", CardType::Uzcard)
        );
        assert_eq!(c.masked(), "8600 **** **** 3347");
        assert!(
            !format!("{c:?}").contains("4907"),
            "Debug never shows the PAN"
        );
        let h = parse("9860090101431907", "11/26", now()).expect("humo, current month still valid");
        assert_eq!(h.card_type, CardType::Humo);
    }

    #[test]
    fn refuses_bad_numbers_brands_and_expiries() {
        let e = |n: &str, x: &str| parse(n, x, now()).err();
        assert_eq!(
            e("8600490744313348", "10/28"),
            Some(CardProblem::Number),
            "Luhn"
        );
        assert_eq!(
            e("860049074431334", "10/28"),
            Some(CardProblem::Number),
            "15 digits"
        );
        assert_eq!(
            e("86004907443133470", "10/28"),
            Some(CardProblem::Number),
            "17 digits"
        );
        assert_eq!(e("8600abcd44313347", "10/28"), Some(CardProblem::Number));
        assert_eq!(
            e("4111111111111111", "10/28"),
            Some(CardProblem::Brand),
            "Visa"
        );
        assert_eq!(e("8600490744313347", "13/28"), Some(CardProblem::Expiry));
        assert_eq!(e("8600490744313347", "00/28"), Some(CardProblem::Expiry));
        assert_eq!(e("8600490744313347", "1028"), Some(CardProblem::Expiry));
        assert_eq!(e("8600490744313347", "1/28"), Some(CardProblem::Expiry));
        assert_eq!(e("8600490744313347", "10/2028"), Some(CardProblem::Expiry));
        assert_eq!(e("8600490744313347", "10/26"), Some(CardProblem::Expired));
        for p in [
            CardProblem::Number,
            CardProblem::Brand,
            CardProblem::Expiry,
            CardProblem::Expired,
        ] {
            let m = p.message();
            assert!(!m.uz.is_empty() && !m.ru.is_empty() && !m.en.is_empty());
        }
    }
}
