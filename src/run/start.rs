//! What every command starts from (the global config, the server root, the async
//! runtime) and the errors that stop a command before it reaches any instance.

use std::path::PathBuf;

use crate::cli::Cli;
use crate::config::global::Config;
use crate::config::secret::Env;
use crate::error::{print_error, ConfigError, Hint, Outcome};
use crate::run::node::NodeError;
use crate::run::report::ErrorReport;

/// Where instances live when nothing else says.
pub const DEFAULT_SERVER_ROOT: &str = "/server";

/// Why a command stopped before it reached any instance.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// One or more configuration errors (exit 2).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// The node-status command could not tell whether this node is active (exit 1).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The async runtime could not start (exit 1).
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<ConfigError> for Stop {
    fn from(e: ConfigError) -> Self {
        Self::Config(vec![e])
    }
}

impl Stop {
    /// The outcome (and so the exit code) this stands for.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Config(_) => Outcome::Config,
            Self::Node(_) | Self::Runtime(_) => Outcome::Failed,
        }
    }

    /// The error as report entries (message and hint each).
    #[must_use]
    pub fn reports(&self) -> Vec<ErrorReport> {
        let one = |message: String, hint: Option<String>| ErrorReport { message, hint, instance: None };
        match self {
            Self::Config(errors) => errors
                .iter()
                .map(|e| ErrorReport { instance: e.instance.clone(), ..one(e.to_string(), e.hint()) })
                .collect(),
            Self::Node(e) => vec![one(e.to_string(), e.hint())],
            Self::Runtime(e) => vec![one(self.to_string(), e.hint())],
        }
    }

    /// Prints the error, its causes and its hints on stderr, once.
    pub fn print(&self) {
        match self {
            Self::Config(errors) => errors.iter().for_each(print_error),
            Self::Node(e) => print_error(e),
            Self::Runtime(e) => print_error(e),
        }
    }
}

/// The global config and the server root, as the command line and the environment say;
/// `env` says where systemd credentials are (or that `check` leaves them unread).
pub fn setup(cli: &Cli, env: &Env) -> Result<(Config, PathBuf), Stop> {
    let config = Config::load(cli.config.as_deref(), env)?;
    let root = cli
        .server_root
        .clone()
        .or_else(|| config.server_root.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_ROOT));
    // Absolute from here on: outputs are opened beneath their instance's directory, and
    // messages name paths that mean the same from any working directory.
    let root = std::path::absolute(&root).unwrap_or(root);
    Ok((config, root))
}

/// The async runtime for network work.
pub fn runtime() -> Result<tokio::runtime::Runtime, Stop> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(Stop::Runtime)
}
