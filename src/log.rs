//! Logging: `tracing` to stderr, level from `-v`/`-q`, `RUST_LOG` honoured.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Crates whose trace output could include protocol frames; capped at `info`
/// unless `RUST_LOG` names them, so a trace log never shows a header value.
const NOISY: [&str; 5] = ["h2", "hyper", "hyper_util", "rustls", "reqwest"];

/// Installs the subscriber. Call once.
pub fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "usersync=info,warn",
        (false, 1) => "usersync=debug,info",
        (false, _) => "usersync=trace,debug",
    };
    let spec = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| default.to_owned());
    let mut directives = spec.clone();
    for c in NOISY {
        if !spec.contains(c) {
            let _ = write!(directives, ",{c}=info");
        }
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
