//! `usersync alert-test`: one test message through every `[alert]` provider in turn,
//! one line each.

use crate::cli::Cli;
use crate::error::{one_line, ConfigError};
use crate::run::alert::{deliver, hostname, Mail};
use crate::run::start::Stop;

/// Sends the test message; the exit code is 0 if at least one provider delivered, 1 if
/// none did.
pub fn run(cli: &Cli) -> Result<u8, Stop> {
    let (config, _) = crate::run::start::setup(cli, &crate::config::secret::Env::from_process())?;
    let Some(alert) = &config.alert else {
        return Err(ConfigError::new(
            config.path.clone().unwrap_or_else(|| crate::config::global::DEFAULT_PATH.into()),
            "no [alert] table, so there is nothing to test",
            "add [alert] with from, to and at least one [[alert.provider]] (see the commented [alert] in /etc/usersync/usersync.toml)",
        )
        .into());
    };
    let host = hostname();
    let mail = Mail {
        subject: format!("[usersync] {host}: test message"),
        body: format!(
            "This is a test of usersync's alert mail from {host}, sent by `usersync alert-test` through each provider in turn.\n"
        ),
    };
    let attempts = deliver(alert, &config.http, &mail, true);
    for (i, (a, p)) in attempts.iter().zip(&alert.providers).enumerate() {
        match &a.result {
            Ok(()) => println!("provider {} ({}): delivered", i + 1, a.provider),
            Err(e) => println!("provider {} ({}): failed: {}", i + 1, a.provider, one_line(e)),
        }
        if let Some(c) = p.credentials() {
            println!("  credential: {}", c.auth.describe(p.expires));
        }
    }
    Ok(u8::from(!attempts.iter().any(|a| a.result.is_ok())))
}
