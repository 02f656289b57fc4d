//! Logging: `tracing` to stderr, level from `-v`/`-q`, `RUST_LOG` honoured; on a terminal
//! the log goes around the progress lines, never through them.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Crates whose trace output could include protocol frames; capped at `info`
/// unless `RUST_LOG` names them, so a trace log never shows a header value.
const NOISY: [&str; 5] = ["h2", "hyper", "hyper_util", "rustls", "reqwest"];

/// Stderr, through [`crate::ui::progress::write_stderr`]: a log line is written above the
/// progress lines instead of tearing them.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::ui::progress::write_stderr(&one_line(buf)).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Where stderr is journald's (systemd sets `JOURNAL_STREAM` to its device and inode),
/// each event starts with its syslog level, `<3>` … `<7>`, which journald takes for the
/// line's priority: `journalctl -p warning` finds warnings. `info` is `notice` (5): a
/// list written is worth keeping when the unit's `LogLevelMax=notice` drops systemd's
/// own start and stop lines.
struct Journal;

/// One event's writer: its level's prefix, written before the event (which the `fmt`
/// layer writes in one piece).
struct Prefixed(&'static [u8]);

impl std::io::Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut line = Vec::with_capacity(self.0.len() + buf.len());
        line.extend_from_slice(self.0);
        line.extend_from_slice(&one_line(buf));
        std::io::stderr().write_all(&line).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Journal {
    type Writer = Prefixed;

    fn make_writer(&'a self) -> Prefixed {
        Prefixed(b"<5>")
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Prefixed {
        Prefixed(match *meta.level() {
            tracing::Level::ERROR => b"<3>",
            tracing::Level::WARN => b"<4>",
            tracing::Level::INFO => b"<5>",
            _ => b"<7>",
        })
    }
}

/// An event as one line: a line break or NUL inside it (a value from Graph or a file name,
/// say) written as its escape, so that no value starts a line of its own, which journald
/// would read a `<0>` priority from. The `fmt` layer writes an event in one piece, ending
/// in its one `\n`.
fn one_line(buf: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    if !body.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return std::borrow::Cow::Borrowed(buf);
    }
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(b),
        }
    }
    if body.len() < buf.len() {
        out.push(b'\n');
    }
    std::borrow::Cow::Owned(out)
}

/// Prints an error's text (`error: …`, `caused by: …`, `hint: …`, already escaped) on
/// stderr; under the journal each of its lines at priority `err`, so that `journalctl -p
/// warning` finds it (the unit's `SyslogLevel=` is notice).
pub fn eprint_error(text: &str) {
    if to_journal() {
        let mut out = String::with_capacity(text.len() + 16);
        for line in text.lines() {
            out.push_str("<3>");
            out.push_str(line);
            out.push('\n');
        }
        eprint!("{out}");
    } else {
        eprintln!("{text}");
    }
}

/// Whether stderr is the journal stream `JOURNAL_STREAM` names (`<device>:<inode>`), found
/// out once.
fn to_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(stderr_is_journal)
}

fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else { return false };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// Installs the subscriber, and the progress lines when stderr is a terminal and `-q` is not
/// given. Call once.
pub fn init(verbose: u8, quiet: bool) {
    let terminal = std::io::stderr().is_terminal();
    if terminal && !quiet {
        crate::ui::progress::enable();
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
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(terminal);
    // The journal stamps every line itself.
    let _ = if to_journal() {
        fmt.without_time().with_writer(Journal).try_init()
    } else {
        fmt.with_writer(|| Stderr).try_init()
    };
}
