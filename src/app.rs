//! The program: logging, then the command the command line asks for, and the
//! top-level error that decides the exit code of a command that stopped early.

use std::io;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::{print_error, render_message, Hint, Outcome};
use crate::run::start::Stop;
use crate::ui::log::eprint_error;

/// Why usersync stopped before any instance was synced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration, the node check or the runtime.
    #[error(transparent)]
    Stop(#[from] Stop),
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// What `--generate` prints could not be written (exit 1).
    #[error("cannot write to standard output")]
    Output(#[source] io::Error),
}

impl Error {
    /// The outcome (and so the exit code) this error stands for.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Stop(s) => s.outcome(),
            Self::Usage(_) => Outcome::Config,
            Self::Output(_) => Outcome::Failed,
        }
    }

    /// Prints the error, its causes and its hints on stderr, once.
    pub fn print(&self) {
        match self {
            Self::Stop(s) => s.print(),
            Self::Usage(m) => eprint_error(&render_message(m, Some("see usersync --help"))),
            Self::Output(_) => print_error(self),
        }
    }
}

impl Hint for Error {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Output(_) => Some("standard output is closed or full: redirect it to a file with room".into()),
            Self::Stop(_) | Self::Usage(_) => None,
        }
    }
}

/// Runs usersync as `cli` asks; the exit code follows the behaviour reference (§7).
pub fn run(cli: &Cli) -> Result<ExitCode, Error> {
    crate::ui::log::init(cli.verbose, cli.quiet);
    tracing::trace!(version = crate::cli::VERSION, command = ?cli.command, instances = ?cli.instances, dry_run = cli.dry_run, "usersync starts");
    if let Some(option) = cli.misplaced_sync_option() {
        return Err(Error::Usage(format!("{option} belongs to a sync, not to a subcommand")));
    }
    if let Some(what) = cli.generate {
        return crate::cmd::generate::print(what).map(|()| ExitCode::SUCCESS).map_err(Error::Output);
    }
    match &cli.command {
        None => Ok(crate::cmd::sync::run(cli)?),
        Some(Command::Test { instance, entraid, show }) => {
            Ok(crate::cmd::test_query::run(cli, instance, entraid.as_deref(), *show).map(ExitCode::from)?)
        }
        Some(Command::Check { instances }) => Ok(crate::cmd::check::run(cli, instances).into()),
        Some(Command::AlertTest) => Ok(crate::cmd::alert_test::run(cli).map(ExitCode::from)?),
    }
}
