//! Black-box tests: one binary, the real app on a random port, a fresh database per test.

mod bad_input;
mod cli;
mod helpers;
mod ops;
mod payme;
mod payments;
mod store_contract;
