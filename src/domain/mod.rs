//! What a payment is, independent of HTTP, SQL and providers.

pub mod ids;
pub mod payment;
pub mod receipt;
pub mod status;

pub use ids::{EventId, PaymentId, RefundId, TransactionId};
pub use payment::*;
pub use receipt::{Receipt, ReceiptItem, ReceiptShipping};
pub use status::{transition, PaymentStatus, TransitionError};
