//! What the payer is told when ATMOS refuses, by ATMOS result code (atmos-epay.md A3; the
//! Uzbek texts follow the seed).

use crate::error::Localized;

pub const OTP_INVALID: Localized = Localized {
    uz: "SMS kod noto'g'ri yoki muddati tugagan. Qaytadan urinib ko'ring.",
    ru: "Неверный или просроченный SMS-код. Попробуйте ещё раз.",
    en: "The SMS code is wrong or has expired. Please try again.",
};

pub const OTP_FORMAT: Localized = Localized {
    uz: "SMS kod 6 ta raqamdan iborat bo'lishi kerak.",
    ru: "SMS-код должен состоять из 6 цифр.",
    en: "The SMS code must be 6 digits.",
};

pub const OTP_CHECK_IN_PROGRESS: Localized = Localized {
    uz: "Oldingi SMS kod hali tekshirilmoqda. Javobini kuting.",
    ru: "Предыдущий SMS-код ещё проверяется. Дождитесь ответа.",
    en: "The previous SMS code is still being checked. Wait for its answer.",
};

pub const OTP_ATTEMPTS_EXCEEDED: Localized = Localized {
    uz: "SMS kod juda ko'p marta noto'g'ri kiritildi. To'lov bekor qilindi.",
    ru: "Слишком много неверных попыток ввода SMS-кода. Платёж отменён.",
    en: "Too many wrong SMS codes. The payment has been cancelled.",
};

pub const SMS_LIMIT_REACHED: Localized = Localized {
    uz: "Bu to'lov uchun juda ko'p SMS kod so'raldi. Oxirgi olingan kodni kiriting.",
    ru: "Для этого платежа запрошено слишком много SMS-кодов. Введите последний полученный код.",
    en: "Too many SMS codes were requested for this payment. Enter the last code you received.",
};

pub const INSUFFICIENT_FUNDS: Localized = Localized {
    uz: "Kartada yetarli mablag' yo'q. Hisobni to'ldiring.",
    ru: "На карте недостаточно средств.",
    en: "The card has insufficient funds.",
};

pub const CARD_REJECTED: Localized = Localized {
    uz: "Karta ma'lumotlari noto'g'ri. Iltimos, qaytadan tekshiring.",
    ru: "Неверные данные карты. Пожалуйста, проверьте ещё раз.",
    en: "The card details are incorrect. Please check them again.",
};

pub const SMS_NOT_CONNECTED: Localized = Localized {
    uz: "SMS xizmati ulanmagan. Bankingizga murojaat qiling.",
    ru: "К карте не подключено SMS-информирование. Обратитесь в банк.",
    en: "SMS notifications are not enabled for this card. Please contact your bank.",
};

/// Pre-apply got no answer in time: ATMOS may still send the SMS.
pub const SMS_MAY_COME: Localized = Localized {
    uz: "Bank javobi kechikmoqda. SMS kod kelsa, uni kiriting; kelmasa, qaytadan urinib ko'ring.",
    ru:
        "Банк отвечает с задержкой. Если SMS-код придёт, введите его; если нет, попробуйте ещё раз.",
    en: "The bank is slow to answer. If an SMS code arrives, enter it; if not, try again.",
};

pub const NO_OTP_PENDING: Localized = Localized {
    uz: "Avval karta ma'lumotlarini kiriting va SMS kodni oling.",
    ru: "Сначала введите данные карты и получите SMS-код.",
    en: "Enter your card details first to receive an SMS code.",
};

pub const CLOSED: Localized = Localized {
    uz: "To'lov muddati tugagan yoki bekor qilingan.",
    ru: "Платёж просрочен или отменён.",
    en: "The payment has expired or was cancelled.",
};

/// ATMOS closed the draft the payer was slow with (ERR-092): that attempt is over, the payment
/// is not.
pub const ATTEMPT_EXPIRED: Localized = Localized {
    uz: "To'lov sessiyasi tugadi. Karta ma'lumotlarini qaytadan kiriting.",
    ru: "Время сессии оплаты истекло. Введите данные карты ещё раз.",
    en: "The payment session timed out. Enter your card again.",
};

pub const CLOSED_REFUNDED: Localized = Localized {
    uz: "To'lov bekor qilingan. Kartadan yechilgan mablag' qaytarildi.",
    ru: "Платёж был отменён. Списанные с карты средства возвращены.",
    en: "The payment was cancelled. The amount taken from the card has been returned.",
};

pub const FAILED: Localized = Localized {
    uz: "To'lov amalga oshmadi. Iltimos, qaytadan urinib ko'ring.",
    ru: "Платёж не выполнен. Пожалуйста, попробуйте ещё раз.",
    en: "The payment did not go through. Please try again.",
};

pub const UNAVAILABLE: Localized = Localized {
    uz: "Xatolik yuz berdi. Iltimos, qaytadan urinib ko'ring.",
    ru: "Произошла ошибка. Пожалуйста, попробуйте ещё раз.",
    en: "Something went wrong. Please try again.",
};

/// Classifies by the `ERR-NNN` suffix, which is stable across the code prefixes.
pub fn for_code(code: &str) -> (&'static str, Localized) {
    let suffix = code.rsplit('-').next().unwrap_or("");
    match suffix {
        "044" | "098" => ("otp_invalid", OTP_INVALID),
        "112" => ("insufficient_funds", INSUFFICIENT_FUNDS),
        "009" | "067" => ("card_rejected", CARD_REJECTED),
        "013" => ("sms_not_connected", SMS_NOT_CONNECTED),
        "092" => ("attempt_expired", ATTEMPT_EXPIRED),
        _ => ("payment_failed", FAILED),
    }
}

/// "N attempts left" in the payment's language.
pub fn attempts_left(lang: crate::domain::Language, n: i64) -> String {
    match lang {
        crate::domain::Language::Uz => format!("(qolgan urinishlar: {n})"),
        crate::domain::Language::Ru => format!("(осталось попыток: {n})"),
        crate::domain::Language::En => format!("({n} attempts left)"),
    }
}

/// ATMOS's own failure ("internal error"): the operation may or may not have happened, so it is
/// handled like a timeout, not like a decline.
pub fn is_transient(code: &str) -> bool {
    // STPIMS-ERR-001 (internal error), and the newer envelope's -999999 ("System error").
    code.rsplit('-').next() == Some("001") || code == "-999999"
}

/// Whether a refusal at `apply` means "wrong code, type it again" rather than "attempt over".
pub fn is_wrong_otp(code: &str) -> bool {
    matches!(code.rsplit('-').next(), Some("044" | "098"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A3's table, by the `ERR-NNN` suffix whatever the prefix.
    #[test]
    fn every_code_of_the_table_is_read_as_the_spec_says() {
        let code = |c: &str| for_code(c).0;
        assert_eq!(code("STPIMS-ERR-044"), "otp_invalid");
        assert_eq!(code("STPIMS-ERR-098"), "otp_invalid");
        assert!(is_wrong_otp("STPIMS-ERR-044") && is_wrong_otp("ERR-098"));
        assert!(!is_wrong_otp("STPIMS-ERR-067"));
        assert_eq!(code("STPIMS-ERR-112"), "insufficient_funds");
        assert_eq!(code("STPIMS-ERR-009"), "card_rejected");
        assert_eq!(code("STPIMS-ERR-067"), "card_rejected");
        assert_eq!(code("STPIMS-ERR-092"), "attempt_expired");
        assert!(is_transient("STPIMS-ERR-001"));
        assert!(!is_transient("STPIMS-ERR-112"));
        // Unknown meaning (ERR-004, ERR-133 outside binding, a status code): a plain failure.
        for other in ["STPIMS-ERR-004", "STPIMS-ERR-133", "-999999", ""] {
            assert_eq!(code(other), "payment_failed", "{other}");
            assert!(!is_wrong_otp(other), "{other}");
        }
        assert!(is_transient("-999999"));
        for other in ["STPIMS-ERR-004", "STPIMS-ERR-133", "-5", ""] {
            assert!(!is_transient(other), "{other}");
        }
    }
}
