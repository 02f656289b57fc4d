//! usersync keeps a mail gateway's allow-lists equal to Entra ID group membership.
//!
//! Data flows one way: config → fetch → normalise → plan → guard → write → report.

pub mod alert;
pub mod cfgfile;
pub mod check;
pub mod cli;
pub mod config;
pub mod credential;
pub mod date;
pub mod endpoints;
pub mod entraidconf;
pub mod error;
mod generate;
pub mod graph;
pub mod guard;
pub mod ids;
pub mod instance;
pub mod lock;
mod log;
pub mod metrics;
pub mod node;
pub mod normalize;
pub mod output;
pub mod plan;
pub mod render;
pub mod report;
pub mod resolve;
pub mod roster;
mod run;
pub mod secret;
pub mod state;
mod testquery;
pub mod trust;
pub mod write;

pub use run::{run, DEFAULT_SERVER_ROOT};
