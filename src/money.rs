//! Exact money: `i64` minor units (tiyin for UZS, tiyn for KZT) and conversion to and from
//! the decimal strings providers put on the wire ("1000.00" soums). No floating point anywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Currency {
    #[serde(rename = "UZS")]
    Uzs,
    #[serde(rename = "KZT")]
    Kzt,
}

impl Currency {
    pub fn code(self) -> &'static str {
        match self {
            Currency::Uzs => "UZS",
            Currency::Kzt => "KZT",
        }
    }

    /// Digits after the decimal point in the major unit. Both currencies have 100 minor units.
    pub fn exponent(self) -> u32 {
        match self {
            Currency::Uzs | Currency::Kzt => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "UZS" => Ok(Currency::Uzs),
            "KZT" => Ok(Currency::Kzt),
            other => Err(MoneyError::UnknownCurrency(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must not be negative")]
    Negative,
    #[error("amount is too large")]
    Overflow,
    #[error("amount has more than {0} decimal places")]
    TooManyDecimals(u32),
    #[error("amount is not a plain decimal number")]
    Malformed,
    #[error("unknown currency `{0}`")]
    UnknownCurrency(String),
    #[error("currencies differ: {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
}

/// An amount of money in minor units. Never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn from_minor(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Money { minor, currency })
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    /// Parses a provider's major-unit decimal string exactly: "1000", "1000.0" and "1000.00"
    /// are all 100000 minor units. Signs, exponents, spaces, more decimals than the currency
    /// has, and values that overflow `i64` are rejected rather than rounded.
    pub fn parse_major(s: &str, currency: Currency) -> Result<Self, MoneyError> {
        let exp = currency.exponent();
        if s.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        let (int_part, frac_part) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) {
            return Err(MoneyError::Malformed);
        }
        let frac = match frac_part {
            None => "",
            Some(f) if all_digits(f) => f,
            Some(_) => return Err(MoneyError::Malformed),
        };
        // Even "10.000" is refused: more digits than the currency has means the sender is not
        // speaking this currency's format, and guessing is how money goes wrong.
        let significant = frac;
        if significant.len() > exp as usize {
            return Err(MoneyError::TooManyDecimals(exp));
        }
        let scale = 10i64.pow(exp);
        let int_value: i64 = int_part.parse().map_err(|_| MoneyError::Overflow)?;
        let mut frac_value: i64 = 0;
        for (i, b) in significant.bytes().enumerate() {
            frac_value += i64::from(b - b'0') * 10i64.pow(exp - 1 - i as u32);
        }
        let minor = int_value
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_value))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, currency })
    }

    /// Major units with exactly the currency's decimals: 100000 tiyin → "1000.00".
    pub fn to_major_string(self) -> String {
        let scale = 10i64.pow(self.currency.exponent());
        format!(
            "{}.{:0width$}",
            self.minor / scale,
            self.minor % scale,
            width = self.currency.exponent() as usize
        )
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Money::from_minor(minor, self.currency)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_major_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uzs(s: &str) -> Result<i64, MoneyError> {
        Money::parse_major(s, Currency::Uzs).map(Money::minor)
    }

    #[test]
    fn equal_decimal_spellings_are_the_same_amount() {
        assert_eq!(uzs("1000"), Ok(100_000));
        assert_eq!(uzs("1000.0"), Ok(100_000));
        assert_eq!(uzs("1000.00"), Ok(100_000));
        assert_eq!(uzs("0.01"), Ok(1));
        assert_eq!(uzs("12.2"), Ok(1220));
        assert_eq!(uzs("0"), Ok(0));
        assert_eq!(uzs("007.50"), Ok(750));
    }

    #[test]
    fn rejects_what_would_need_rounding_or_guessing() {
        assert_eq!(uzs("10.001"), Err(MoneyError::TooManyDecimals(2)));
        assert_eq!(uzs("10.000"), Err(MoneyError::TooManyDecimals(2)));
        assert_eq!(uzs("-1"), Err(MoneyError::Negative));
        assert_eq!(uzs("-0.01"), Err(MoneyError::Negative));
        for bad in [
            "1e3", "1E3", "+1", " 1", "1 ", "", ".5", "5.", "1.2.3", "0x10", "1,00", "NaN", "inf",
            "١٢",
        ] {
            assert_eq!(uzs(bad), Err(MoneyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert_eq!(uzs("92233720368547758.07"), Ok(i64::MAX));
        assert_eq!(uzs("92233720368547758.08"), Err(MoneyError::Overflow));
        assert_eq!(uzs("99999999999999999999999"), Err(MoneyError::Overflow));
    }

    #[test]
    fn formats_with_exactly_two_decimals() {
        let m = |v| Money::from_minor(v, Currency::Kzt).map(Money::to_major_string);
        assert_eq!(m(100_000), Ok("1000.00".to_owned()));
        assert_eq!(m(1), Ok("0.01".to_owned()));
        assert_eq!(m(1220), Ok("12.20".to_owned()));
        assert_eq!(m(0), Ok("0.00".to_owned()));
        assert_eq!(m(i64::MAX), Ok("92233720368547758.07".to_owned()));
    }

    #[test]
    fn round_trips_every_small_amount() {
        for v in 0..5000 {
            let s = Money::from_minor(v, Currency::Uzs).map(Money::to_major_string);
            let back = s.and_then(|s| uzs(&s));
            assert_eq!(back, Ok(v));
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Money::from_minor(100, Currency::Uzs).expect("valid");
        let b = Money::from_minor(30, Currency::Uzs).expect("valid");
        let k = Money::from_minor(30, Currency::Kzt).expect("valid");
        assert_eq!(a.checked_sub(b).map(Money::minor), Ok(70));
        assert_eq!(b.checked_sub(a), Err(MoneyError::Negative));
        assert_eq!(a.checked_add(b).map(Money::minor), Ok(130));
        assert!(matches!(
            a.checked_add(k),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        let max = Money::from_minor(i64::MAX, Currency::Uzs).expect("valid");
        assert_eq!(max.checked_add(a), Err(MoneyError::Overflow));
        assert_eq!(
            Money::from_minor(-1, Currency::Uzs),
            Err(MoneyError::Negative)
        );
    }

    #[test]
    fn currency_codes_parse_strictly() {
        assert_eq!("UZS".parse::<Currency>(), Ok(Currency::Uzs));
        assert_eq!("KZT".parse::<Currency>(), Ok(Currency::Kzt));
        assert!("uzs".parse::<Currency>().is_err());
        assert!("USD".parse::<Currency>().is_err());
    }
}
