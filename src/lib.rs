//! usersync keeps a mail gateway's allow-lists equal to Entra ID group membership.
//!
//! Data flows one way: config → fetch → normalise → plan → guard → write → report.

pub mod alert;
mod alert_test;
mod app;
pub mod cfgfile;
pub mod check;
pub mod cli;
pub mod config;
pub mod credential;
pub mod date;
pub mod delta_state;
pub mod endpoints;
pub mod entraidconf;
pub mod error;
pub mod fetch;
mod generate;
pub mod graph;
pub mod guard;
pub mod ids;
pub mod instance;
pub mod judged;
pub mod lock;
mod log;
pub mod memo;
pub mod metrics;
pub mod node;
pub mod normalize;
pub mod output;
pub mod page;
pub mod patch;
pub mod plan;
pub mod progress;
pub mod render;
pub mod report;
pub mod resolve;
pub mod roster;
pub mod secret;
pub mod start;
pub mod state;
mod sync;
mod testquery;
pub mod trust;
pub mod write;

pub use app::{run, Error};
pub use start::DEFAULT_SERVER_ROOT;
