//! End-to-end tests: the real `usersync` binary against the Graph simulator on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alerts;
mod attacks;
mod batching;
mod certificates;
mod delta;
mod errors;
mod faults;
mod layers;
mod metrics;
mod network;
mod review_attacks;
mod secrets;
mod security;
mod sync;
mod unchanged;
mod unit;
mod util;
