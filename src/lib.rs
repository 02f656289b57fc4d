//! usersync keeps a mail gateway's allow-lists equal to Entra ID group membership.
//!
//! Data flows one way: config → fetch → normalise → plan → guard → write → report. The
//! folders are the layers (CONTRIBUTING.md, "Architecture"); each uses only those before it.

// The bottom: values, files, configuration.
pub mod cli;
pub mod config;
pub(crate) mod error;
pub mod files;
pub mod model;
pub(crate) mod ui;
// The core, and Graph.
pub(crate) mod graph;
pub(crate) mod plan;
// A run, its commands, and the entry point.
mod app;
pub(crate) mod cmd;
pub mod run;

pub use app::{run, Error};
pub use run::start::DEFAULT_SERVER_ROOT;
