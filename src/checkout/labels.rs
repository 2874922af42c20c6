//! The hosted page's words in the payment's language (uz, ru, en), as the payer errors of the
//! checkout routes already are.

use crate::domain::{Language, PaymentStatus, ProviderKind};

pub struct Labels {
    pub title: &'static str,
    pub status: &'static str,
    pub provider: &'static str,
    pub card_number: &'static str,
    pub expiry: &'static str,
    pub send_code: &'static str,
    pub sms_code: &'static str,
    pub pay: &'static str,
    pub resend: &'static str,
    pub code_resent: &'static str,
    pub open_link: &'static str,
    pub went_wrong: &'static str,
    pub paid: &'static str,
    pub processing: &'static str,
    pub closed: &'static str,
    pub epay_unreachable: &'static str,
    pub back: &'static str,
}

const UZ: Labels = Labels {
    title: "To'lov",
    status: "Holat",
    provider: "To'lov tizimi",
    card_number: "Karta raqami",
    expiry: "Amal qilish muddati (OO/YY)",
    send_code: "SMS kodni olish",
    sms_code: "SMS kod",
    pay: "To'lash",
    resend: "Kodni qayta yuborish",
    code_resent: "Yangi kod yuborildi.",
    open_link: "Do'kon bergan to'lov havolasini oching.",
    went_wrong: "Xatolik yuz berdi; qaytadan urinib ko'ring.",
    paid: "To'landi.",
    processing: "To'lov ko'rib chiqilmoqda; bu sahifa o'zgarmaydi, natijani do'kondan bilib oling.",
    closed: "Bu to'lovni endi to'lab bo'lmaydi.",
    epay_unreachable: "ePay to'lov sahifasi ochilmadi; qaytadan urinib ko'ring.",
    back: "Do'konga qaytish",
};

const RU: Labels = Labels {
    title: "Платёж",
    status: "Статус",
    provider: "Платёжная система",
    card_number: "Номер карты",
    expiry: "Срок действия (ММ/ГГ)",
    send_code: "Получить SMS-код",
    sms_code: "SMS-код",
    pay: "Оплатить",
    resend: "Отправить код ещё раз",
    code_resent: "Новый код отправлен.",
    open_link: "Откройте ссылку на оплату, которую дал магазин.",
    went_wrong: "Что-то пошло не так; попробуйте ещё раз.",
    paid: "Оплачено.",
    processing: "Платёж обрабатывается; эта страница не изменится, результат уточните в магазине.",
    closed: "Этот платёж больше нельзя оплатить.",
    epay_unreachable: "Страница оплаты ePay недоступна; попробуйте ещё раз.",
    back: "Вернуться в магазин",
};

const EN: Labels = Labels {
    title: "Payment",
    status: "Status",
    provider: "Provider",
    card_number: "Card number",
    expiry: "Expiry (MM/YY)",
    send_code: "Send SMS code",
    sms_code: "SMS code",
    pay: "Pay",
    resend: "Send the code again",
    code_resent: "A new code was sent.",
    open_link: "Open the payment link the shop gave you.",
    went_wrong: "Something went wrong; try again.",
    paid: "Paid.",
    processing: "Processing; this page will not change, check with the shop.",
    closed: "This payment can no longer be paid.",
    epay_unreachable: "ePay's payment page could not be reached; try again.",
    back: "Back to the shop",
};

pub fn labels(lang: Language) -> &'static Labels {
    match lang {
        Language::Uz => &UZ,
        Language::Ru => &RU,
        Language::En => &EN,
    }
}

pub fn provider_name(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Payme => "Payme",
        ProviderKind::Click => "Click",
        ProviderKind::Atmos => "ATMOS",
        ProviderKind::Epay => "Halyk ePay",
    }
}

/// The pay link's text: "Pay with Payme" in the payment's language.
pub fn pay_with(lang: Language, provider: ProviderKind) -> String {
    let name = provider_name(provider);
    match lang {
        Language::Uz => format!("{name} orqali to'lash"),
        Language::Ru => format!("Оплатить через {name}"),
        Language::En => format!("Pay with {name}"),
    }
}

pub fn status_name(lang: Language, status: PaymentStatus) -> &'static str {
    use PaymentStatus::*;
    match (lang, status) {
        (Language::Uz, Pending) => "to'lov kutilmoqda",
        (Language::Uz, Processing) => "ko'rib chiqilmoqda",
        (Language::Uz, Succeeded) => "to'langan",
        (Language::Uz, PartiallyRefunded) => "qisman qaytarilgan",
        (Language::Uz, Refunded) => "qaytarilgan",
        (Language::Uz, Canceled) => "bekor qilingan",
        (Language::Uz, Failed) => "amalga oshmadi",
        (Language::Uz, Expired) => "muddati o'tgan",
        (Language::Ru, Pending) => "ожидает оплаты",
        (Language::Ru, Processing) => "обрабатывается",
        (Language::Ru, Succeeded) => "оплачен",
        (Language::Ru, PartiallyRefunded) => "частично возвращён",
        (Language::Ru, Refunded) => "возвращён",
        (Language::Ru, Canceled) => "отменён",
        (Language::Ru, Failed) => "не прошёл",
        (Language::Ru, Expired) => "истёк",
        (Language::En, Pending) => "awaiting payment",
        (Language::En, Processing) => "processing",
        (Language::En, Succeeded) => "paid",
        (Language::En, PartiallyRefunded) => "partially refunded",
        (Language::En, Refunded) => "refunded",
        (Language::En, Canceled) => "canceled",
        (Language::En, Failed) => "failed",
        (Language::En, Expired) => "expired",
    }
}

/// `template` with each `{L.name}` replaced by the label as HTML text and each `{J.name}` as a
/// JavaScript string literal.
pub fn fill(template: &str, lang: Language) -> String {
    let l = labels(lang);
    let words: [(&str, String); 14] = [
        ("card_number", l.card_number.into()),
        ("expiry", l.expiry.into()),
        ("send_code", l.send_code.into()),
        ("sms_code", l.sms_code.into()),
        ("pay", l.pay.into()),
        ("resend", l.resend.into()),
        ("code_resent", l.code_resent.into()),
        ("pay_epay", pay_with(lang, ProviderKind::Epay)),
        ("open_link", l.open_link.into()),
        ("went_wrong", l.went_wrong.into()),
        ("paid", l.paid.into()),
        ("processing", l.processing.into()),
        ("closed", l.closed.into()),
        ("epay_unreachable", l.epay_unreachable.into()),
    ];
    let mut out = template.to_owned();
    for (name, text) in &words {
        out = out.replace(&format!("{{L.{name}}}"), &super::page::escape(text));
        let js = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        out = out.replace(&format!("{{J.{name}}}"), &js);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_in_every_language() {
        let template = "{L.card_number}{L.expiry}{L.send_code}{L.sms_code}{L.pay}{L.resend}{L.pay_epay}{J.code_resent}\
                        {J.open_link}{J.went_wrong}{J.paid}{J.processing}{J.closed}{J.epay_unreachable}";
        for lang in [Language::Uz, Language::Ru, Language::En] {
            let filled = fill(template, lang);
            assert!(
                !filled.contains("{L.") && !filled.contains("{J."),
                "{filled}"
            );
        }
        assert!(fill("{J.closed}", Language::Uz).starts_with('"'));
        assert_eq!(
            fill("{L.pay_epay}", Language::Ru),
            "Оплатить через Halyk ePay"
        );
    }
}
