//! Payme Merchant API error codes (payme-click.md §1.8) with the localized messages Payme shows
//! the payer. These are JSON-RPC answers, never `ApiError`s.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymeError {
    /// -32300: the request was not a POST.
    NotPost,
    /// -32700: the body is not JSON.
    Parse,
    /// -32600: the envelope or a parameter is missing or has the wrong type.
    InvalidRequest(String),
    /// -32601: unknown method; `data` names it.
    MethodNotFound(String),
    /// -32602: SetFiscalData with a bad `type` or `fiscal_data`.
    InvalidParams(String),
    /// -32504: Basic auth missing or wrong.
    InsufficientPrivilege,
    /// -32400: our own failure (database down, …).
    Internal,
    /// -31001: the amount differs from the order's.
    WrongAmount,
    /// -31003: no transaction with this Payme id.
    TransactionNotFound,
    /// -31007: a performed transaction may not be cancelled (policy).
    CannotCancel,
    /// -31008: the transaction's (or order's) state does not allow the operation.
    CannotPerform,
    /// -31050: no such order; `data` is the account field.
    OrderNotFound(String),
    /// -31051: the order exists but is not awaiting payment (paid, cancelled, expired).
    OrderNotPayable(String),
    /// -31052: the order is being paid by another transaction.
    OrderBusy(String),
    /// -31050 with data "password" / "from": a bad value for a non-account parameter, as the
    /// official template answers it.
    BadField(&'static str),
}

impl PaymeError {
    pub fn code(&self) -> i64 {
        match self {
            PaymeError::NotPost => -32300,
            PaymeError::Parse => -32700,
            PaymeError::InvalidRequest(_) => -32600,
            PaymeError::MethodNotFound(_) => -32601,
            PaymeError::InvalidParams(_) => -32602,
            PaymeError::InsufficientPrivilege => -32504,
            PaymeError::Internal => -32400,
            PaymeError::WrongAmount => -31001,
            PaymeError::TransactionNotFound => -31003,
            PaymeError::CannotCancel => -31007,
            PaymeError::CannotPerform => -31008,
            PaymeError::OrderNotFound(_) | PaymeError::BadField(_) => -31050,
            PaymeError::OrderNotPayable(_) => -31051,
            PaymeError::OrderBusy(_) => -31052,
        }
    }

    /// (ru, uz, en)
    fn texts(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            PaymeError::NotPost => (
                "Метод запроса должен быть POST",
                "So'rov usuli POST bo'lishi kerak",
                "Request method must be POST",
            ),
            PaymeError::Parse => (
                "Ошибка разбора JSON",
                "JSON tahlilida xatolik",
                "JSON parse error",
            ),
            PaymeError::InvalidRequest(_) => {
                ("Неверный запрос", "Noto'g'ri so'rov", "Invalid request")
            }
            PaymeError::MethodNotFound(_) => {
                ("Метод не найден", "Usul topilmadi", "Method not found")
            }
            PaymeError::InvalidParams(_) => (
                "Неверные параметры",
                "Noto'g'ri parametrlar",
                "Invalid parameters",
            ),
            PaymeError::InsufficientPrivilege => (
                "Недостаточно привилегий для выполнения метода",
                "Usulni bajarish uchun huquq yetarli emas",
                "Insufficient privilege to perform this method",
            ),
            PaymeError::Internal => ("Системная ошибка", "Tizim xatosi", "System error"),
            PaymeError::WrongAmount => ("Неверная сумма", "Noto'g'ri summa", "Incorrect amount"),
            PaymeError::TransactionNotFound => (
                "Транзакция не найдена",
                "Tranzaksiya topilmadi",
                "Transaction not found",
            ),
            PaymeError::CannotCancel => (
                "Заказ выполнен. Невозможно отменить транзакцию",
                "Buyurtma bajarilgan. Tranzaksiyani bekor qilib bo'lmaydi",
                "The order is fulfilled. The transaction cannot be cancelled",
            ),
            PaymeError::CannotPerform => (
                "Невозможно выполнить данную операцию",
                "Ushbu amalni bajarib bo'lmaydi",
                "Unable to perform this operation",
            ),
            PaymeError::OrderNotFound(_) => {
                ("Заказ не найден", "Buyurtma topilmadi", "Order not found")
            }
            PaymeError::OrderNotPayable(_) => (
                "Заказ не ожидает оплаты",
                "Buyurtma to'lovni kutmayapti",
                "The order is not awaiting payment",
            ),
            PaymeError::OrderBusy(_) => (
                "Заказ уже оплачивается другой транзакцией",
                "Buyurtma boshqa tranzaksiya orqali to'lanmoqda",
                "The order is being paid by another transaction",
            ),
            PaymeError::BadField(_) => (
                "Неверное значение параметра",
                "Parametr qiymati noto'g'ri",
                "Invalid parameter value",
            ),
        }
    }

    fn data(&self) -> Value {
        match self {
            PaymeError::MethodNotFound(m) => json!(m),
            PaymeError::InvalidRequest(d) | PaymeError::InvalidParams(d) => json!(d),
            PaymeError::OrderNotFound(f)
            | PaymeError::OrderNotPayable(f)
            | PaymeError::OrderBusy(f) => json!(f),
            PaymeError::BadField(f) => json!(f),
            PaymeError::WrongAmount => json!("amount"),
            PaymeError::TransactionNotFound
            | PaymeError::CannotCancel
            | PaymeError::CannotPerform => {
                json!("transaction")
            }
            PaymeError::NotPost
            | PaymeError::Parse
            | PaymeError::InsufficientPrivilege
            | PaymeError::Internal => Value::Null,
        }
    }

    pub fn to_json(&self) -> Value {
        let (ru, uz, en) = self.texts();
        json!({ "code": self.code(), "message": { "ru": ru, "uz": uz, "en": en }, "data": self.data() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_errors_name_the_account_field_and_are_localized() {
        for e in [
            PaymeError::OrderNotFound("order_id".into()),
            PaymeError::OrderNotPayable("order_id".into()),
            PaymeError::OrderBusy("order_id".into()),
        ] {
            let j = e.to_json();
            assert!((-31099..=-31050).contains(&e.code()));
            assert_eq!(j["data"], "order_id");
            for lang in ["ru", "uz", "en"] {
                assert!(
                    j["message"][lang].as_str().is_some_and(|m| !m.is_empty()),
                    "{lang}"
                );
            }
        }
    }

    #[test]
    fn codes_match_the_spec_table() {
        let table = [
            (PaymeError::NotPost, -32300),
            (PaymeError::Parse, -32700),
            (PaymeError::InvalidRequest(String::new()), -32600),
            (PaymeError::MethodNotFound("X".into()), -32601),
            (PaymeError::InsufficientPrivilege, -32504),
            (PaymeError::Internal, -32400),
            (PaymeError::WrongAmount, -31001),
            (PaymeError::TransactionNotFound, -31003),
            (PaymeError::CannotCancel, -31007),
            (PaymeError::CannotPerform, -31008),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{e:?}");
        }
        assert_eq!(
            PaymeError::MethodNotFound("Foo".into()).to_json()["data"],
            "Foo"
        );
    }
}
