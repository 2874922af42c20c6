//! The payment status machine. Every status change in tolov goes through [`transition`];
//! anything it does not allow is a conflict, never a silent overwrite.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Processing,
    Succeeded,
    PartiallyRefunded,
    Refunded,
    Canceled,
    Failed,
    Expired,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 8] = [
        PaymentStatus::Pending,
        PaymentStatus::Processing,
        PaymentStatus::Succeeded,
        PaymentStatus::PartiallyRefunded,
        PaymentStatus::Refunded,
        PaymentStatus::Canceled,
        PaymentStatus::Failed,
        PaymentStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Processing => "processing",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Expired => "expired",
        }
    }

    /// Still waiting for money: the payer can pay, the merchant can cancel, the clock can expire it.
    pub fn is_open(self) -> bool {
        matches!(self, PaymentStatus::Pending | PaymentStatus::Processing)
    }

    /// Ended without money: canceled, expired or failed.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            PaymentStatus::Canceled | PaymentStatus::Expired | PaymentStatus::Failed
        )
    }

    /// Money was captured (and possibly partly or fully returned since).
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        )
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payment status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for PaymentStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PaymentStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a payment cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
}

/// The one place that decides which status changes exist.
///
/// * `pending → processing`: a provider attempt started (Payme Create, Click prepare, OTP sent).
/// * `processing → pending`: that attempt ended without money (Payme state -1, Click cancel,
///   declined card); the payment stays payable by a new attempt.
/// * `pending → succeeded`: providers such as ePay report a capture with no visible attempt first.
/// * `expired → succeeded`: the provider took the money after our deadline (a late postLink
///   confirmed by status check). Money moved, so the record must say so.
/// * `partially_refunded → partially_refunded`: a second partial refund.
pub fn transition(
    from: PaymentStatus,
    to: PaymentStatus,
) -> Result<PaymentStatus, TransitionError> {
    use PaymentStatus::*;
    let allowed = match from {
        Pending => matches!(to, Processing | Succeeded | Canceled | Failed | Expired),
        Processing => matches!(to, Pending | Succeeded | Canceled | Failed | Expired),
        Succeeded => matches!(to, PartiallyRefunded | Refunded),
        PartiallyRefunded => matches!(to, PartiallyRefunded | Refunded),
        Expired => matches!(to, Succeeded),
        Refunded | Canceled | Failed => false,
    };
    if allowed {
        Ok(to)
    } else {
        Err(TransitionError { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::PaymentStatus::*;
    use super::*;

    const ALLOWED: &[(PaymentStatus, PaymentStatus)] = &[
        (Pending, Processing),
        (Pending, Succeeded),
        (Pending, Canceled),
        (Pending, Failed),
        (Pending, Expired),
        (Processing, Pending),
        (Processing, Succeeded),
        (Processing, Canceled),
        (Processing, Failed),
        (Processing, Expired),
        (Succeeded, PartiallyRefunded),
        (Succeeded, Refunded),
        (PartiallyRefunded, PartiallyRefunded),
        (PartiallyRefunded, Refunded),
        (Expired, Succeeded),
    ];

    #[test]
    fn every_pair_is_allowed_exactly_when_listed() {
        let mut checked = 0;
        for from in PaymentStatus::ALL {
            for to in PaymentStatus::ALL {
                let expected = ALLOWED.contains(&(from, to));
                let got = transition(from, to);
                if expected {
                    assert_eq!(got, Ok(to), "{from} -> {to} should be allowed");
                } else {
                    assert_eq!(
                        got,
                        Err(TransitionError { from, to }),
                        "{from} -> {to} should be refused"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Refunded, Canceled, Failed] {
            for to in PaymentStatus::ALL {
                assert!(transition(from, to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn money_never_goes_back_to_unpaid() {
        for from in [Succeeded, PartiallyRefunded, Refunded] {
            for to in [Pending, Processing, Canceled, Failed, Expired] {
                assert!(transition(from, to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn status_strings_round_trip() {
        for st in PaymentStatus::ALL {
            assert_eq!(st.as_str().parse::<PaymentStatus>(), Ok(st));
            let json = serde_json::to_string(&st).expect("serialize");
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert!("PENDING".parse::<PaymentStatus>().is_err());
    }
}
