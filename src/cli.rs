//! The command line (contract §4).

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

/// Keeps a mail gateway's allow-lists equal to Entra ID group membership.
///
/// Reads every instance's config/entraid/*.entraidconf under the server root,
/// fetches the groups' members from Microsoft Graph and atomically rewrites
/// `allowed_senders_ldap.txt`, `gsm_list.txt` and `gsm_auth_auto.txt`.
#[derive(Debug, Clone, Parser)]
#[allow(clippy::struct_excessive_bools)] // command-line flags are bools
#[command(name = "usersync", version = VERSION, about, long_about, help_expected = true)]
pub struct Cli {
    /// `test` or `check`; none: sync
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Sync only this instance (a directory under the server root); repeat for more [default: every instance]
    #[arg(short = 'i', long = "instance", value_name = "NAME")]
    pub instances: Vec<String>,

    /// Fetch and compare, print the changes (`+ entry` / `- entry` per output), write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Write even when a guard refuses (a list would become empty or lose too many entries)
    #[arg(long)]
    pub force: bool,

    /// Do not run the [node] status command; act as the active node
    #[arg(long)]
    pub ignore_node_status: bool,

    /// Directory holding the instances [default: `server_root` from the config, else /server]
    #[arg(long, global = true, env = "USERSYNC_SERVER_ROOT", value_name = "DIR")]
    pub server_root: Option<PathBuf>,

    /// Global configuration file [default: /etc/usersync/usersync.toml, optional]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Format of the result on stdout
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// More log output on stderr: -v debug, -vv trace (`RUST_LOG` overrides)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr (`RUST_LOG` overrides)
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Print a man page or a shell completion script on stdout, for packaging
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    pub generate: Option<Generate>,
}

/// The version and the git commit it was built from, e.g. `0.1.0 (3f2a9c1e0b)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("USERSYNC_GIT_COMMIT"), ")");

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// The man page, usersync(1), in roff
    Man,
    /// bash completions
    CompleteBash,
    /// zsh completions
    CompleteZsh,
    /// fish completions
    CompleteFish,
}

impl Cli {
    /// Sync-only options given together with a subcommand, if any.
    #[must_use]
    pub fn misplaced_sync_option(&self) -> Option<&'static str> {
        self.command.as_ref()?;
        [
            (!self.instances.is_empty(), "-i before the subcommand"),
            (self.dry_run, "--dry-run"),
            (self.force, "--force"),
            (self.ignore_node_status, "--ignore-node-status"),
            (self.generate.is_some(), "--generate"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

/// What to do instead of a sync.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Get a token and the first page of each config of one instance, like the gateway's TEST QUERY; writes nothing
    Test {
        /// The instance to test
        #[arg(short = 'i', long = "instance", value_name = "NAME")]
        instance: String,
        /// Only this config: the file name of its .entraidconf, without the extension
        #[arg(long, value_name = "NAME")]
        entraid: Option<String>,
        /// Show sample addresses in full instead of masked (a***@contoso.com)
        #[arg(long)]
        show: bool,
    },
    /// Send a test message through each [alert] provider in turn and report each result
    AlertTest,
    /// Validate every config, .cfg key, output path and permission without touching the network
    Check {
        /// Check only this instance; repeat for more [default: every instance]
        #[arg(short = 'i', long = "instance", value_name = "NAME")]
        instances: Vec<String>,
    },
}

/// Result format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per output, plus `+`/`-` lines on a dry run
    Text,
    /// One JSON document
    Json,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
