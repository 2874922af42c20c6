//! Merchant webhooks: outbox rows written with each status change (see `lifecycle`), delivered
//! by the dispatcher with Standard Webhooks signatures and the seed's retry schedule.

pub mod dispatcher;
pub mod signing;
