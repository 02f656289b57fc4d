//! Logging: `tracing` to stderr, level from `-v`/`-q`, `RUST_LOG` honoured; on a terminal
//! the log goes around the progress lines, never through them.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Crates whose trace output could include protocol frames; capped at `info`
/// unless `RUST_LOG` names them, so a trace log never shows a header value.
const NOISY: [&str; 5] = ["h2", "hyper", "hyper_util", "rustls", "reqwest"];

/// Stderr, through [`crate::progress::write_stderr`]: a log line is written above the
/// progress lines instead of tearing them.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::write_stderr(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the subscriber, and the progress lines when stderr is a terminal and `-q` is not
/// given. Call once.
pub fn init(verbose: u8, quiet: bool) {
    let terminal = std::io::stderr().is_terminal();
    if terminal && !quiet {
        crate::progress::enable();
    }
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
        .with_writer(|| Stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(terminal)
        .try_init();
}
