//! Black-box tests: one binary, the real app on a random port, a fresh database per test.

#[macro_use]
mod helpers;

mod atmos;
mod bad_input;
mod cli;
mod click;
mod click_api;
mod epay;
mod epay_more;
mod ops;
mod payme;
mod payments;
mod store_contract;
mod webhooks;
mod workers;
