//! tolov: one payment gateway for Payme, Click, ATMOS and Halyk ePay.
#![forbid(unsafe_code)]

pub mod api;
pub mod checkout;
pub mod config;
pub mod domain;
pub mod error;
pub mod lifecycle;
pub mod money;
pub mod oauth;
pub mod providers;
pub mod sandbox;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod workers;
