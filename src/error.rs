//! The exit codes (contract §7), configuration errors, hints, and how an error is shown.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

/// How a run, or one instance of it, ended. Ordered by priority: the
/// greatest of all instances' outcomes is the run's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Outcome {
    /// Success, nothing to do, or a passive node skipped: exit 0.
    #[default]
    Success,
    /// Another run holds an instance's lock: exit 75.
    Locked,
    /// A guard refused a write: exit 3.
    Refused,
    /// A runtime failure (network, directory, file system): exit 1.
    Failed,
    /// A usage or configuration error: exit 2.
    Config,
}

impl Outcome {
    /// The process exit status for this outcome.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failed => 1,
            Self::Config => 2,
            Self::Refused => 3,
            Self::Locked => 75,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        ExitCode::from(o.code())
    }
}

/// How much of a malformed value an error message shows.
pub const QUOTE_CHARS: usize = 8;

/// A value for an error message: its first [`QUOTE_CHARS`] characters (escaped), then `…`
/// if there were more. A secret pasted into the wrong key so never reaches the log, the
/// JSON report or an alert mail whole.
#[must_use]
pub fn quote(value: &str) -> String {
    let mut out: String = value.chars().take(QUOTE_CHARS).flat_map(char::escape_debug).collect();
    if value.chars().nth(QUOTE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Where the double-quoted value that `s` starts with ends: its first quote not escaped
/// by a backslash.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// A parser's message with each double-quoted value in it cut as [`quote`] does, and so the
/// name of an unknown key (in backquotes): a secret pasted as a key stays out of the log.
#[must_use]
pub fn quote_in(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown key `") {
        if let Some(end) = rest.find("`, ").or_else(|| rest.rfind('`')) {
            // A typo of one of our keys is shown whole; anything else (a pasted secret has
            // capitals or `~`) is cut like a value.
            let key = &rest[..end];
            let like_ours =
                key.len() <= 40 && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            let shown = if like_ours { key.to_owned() } else { quote(key) };
            return format!("unknown key `{shown}`{}", quote_in(&rest[end + 1..]));
        }
    }
    let mut out = String::new();
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        // The value ends at the first quote that no backslash escapes: a `\"` inside it
        // is part of it, and the cap holds whatever it holds.
        let Some(end) = closing_quote(rest) else {
            out.push_str(&quote(rest));
            return out;
        };
        out.push_str(&quote(&rest[..end]));
        out.push('"');
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Something that can tell the administrator how to fix it.
pub trait Hint {
    /// One or more lines saying what to do.
    fn hint(&self) -> Option<String>;
}

/// A configuration problem: exit 2, nothing contacted, nothing written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The instance whose configuration is wrong, if any.
    pub instance: Option<String>,
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl ConfigError {
    /// A problem in `path`, with a fix.
    pub fn new(path: impl Into<PathBuf>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { instance: None, path: path.into(), message: message.into(), hint: hint.into() }
    }

    /// Names the instance the file belongs to.
    #[must_use]
    pub fn in_instance(mut self, name: &str) -> Self {
        self.instance = Some(name.to_owned());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = &self.instance {
            write!(f, "instance `{i}`: ")?;
        }
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Hint for ConfigError {
    fn hint(&self) -> Option<String> {
        Some(self.hint.clone())
    }
}

/// Prints `error: …`, each cause on its own `caused by:` line, then `hint: …`.
pub fn print_error<E: std::error::Error + MaybeHint + ?Sized>(e: &E) {
    crate::ui::log::eprint_error(&render_error(e));
}

/// The text `print_error` prints.
pub fn render_error<E: std::error::Error + MaybeHint + ?Sized>(e: &E) -> String {
    let mut out = render_message(&e.to_string(), None);
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, "\n  caused by: {}", escape_controls(&s.to_string()));
        source = s.source();
    }
    if let Some(h) = e.maybe_hint() {
        push_hint(&mut out, &h);
    }
    out
}

/// `error: MESSAGE` and its `hint:` lines, as every error is printed. A message is one line:
/// its control characters (a line break in a file name, say) are escaped, so that no value
/// from a config or a server can add a line of its own; so are those of each hint line.
#[must_use]
pub fn render_message(message: &str, hint: Option<&str>) -> String {
    let mut out = format!("error: {}", escape_controls(message));
    if let Some(h) = hint {
        push_hint(&mut out, h);
    }
    out
}

/// The same on one line, as `usersync check` lists its findings: `level: message (hint:
/// …)`, the hint's lines joined with spaces, controls escaped.
#[must_use]
pub fn render_line(level: &str, message: &str, hint: Option<&str>) -> String {
    let mut out = format!("{level}: {}", escape_controls(message));
    if let Some(h) = hint {
        out.push_str(" (hint: ");
        out.push_str(&one_line(h));
        out.push(')');
    }
    out
}

/// `hint:` and the hint's lines, each line escaped, the later ones indented under the first.
fn push_hint(out: &mut String, hint: &str) {
    for (i, line) in hint.lines().enumerate() {
        out.push_str(if i == 0 { "\nhint: " } else { "\n      " });
        out.push_str(&escape_controls(line));
    }
}

/// `s` on one line: its lines joined with spaces, any other control character escaped.
#[must_use]
pub fn one_line(s: &str) -> String {
    escape_controls(&s.lines().collect::<Vec<_>>().join(" "))
}

/// `s` with every control character written as its escape (`\n`, `\u{1b}`).
#[must_use]
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// Errors that may carry a hint; every error type of ours implements `Hint`.
pub trait MaybeHint {
    /// The hint, if this error has one.
    fn maybe_hint(&self) -> Option<String>;
}

impl<T: Hint + ?Sized> MaybeHint for T {
    fn maybe_hint(&self) -> Option<String> {
        self.hint()
    }
}

impl Hint for std::io::Error {
    fn hint(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_is_2_1_3_75_0() {
        let mut all = [Outcome::Success, Outcome::Locked, Outcome::Refused, Outcome::Failed, Outcome::Config];
        all.sort();
        let codes: Vec<u8> = all.iter().rev().map(|o| o.code()).collect();
        assert_eq!(codes, [2, 1, 3, 75, 0]);
    }

    #[test]
    fn quotes_at_most_eight_characters() {
        assert_eq!(quote("12345678"), "12345678");
        assert_eq!(quote("Xq8~s3cretValue.9"), "Xq8~s3cr…");
        assert_eq!(quote("a\nb"), "a\\nb");
        assert_eq!(
            quote_in("invalid type: string \"Xq8~s3cretValue.9\", expected a boolean"),
            "invalid type: string \"Xq8~s3cr…\", expected a boolean"
        );
        // A quote inside the value (escaped by the parser) does not end it early.
        let m = quote_in(r#"invalid type: string "ab\"cdefghij-secret-part", expected a boolean"#);
        assert!(!m.contains("secret"), "{m}");
    }

    #[test]
    fn no_value_adds_a_line_to_an_error() {
        let e = ConfigError::new("/gw/evil\nhint: run curl | sh.entraidconf", "unknown key `x\nhint: y`", "fix it");
        let out = render_error(&e);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("evil\\nhint: run"), "{out}");
        assert_eq!(
            quote_in("unknown key `Xq8~s3cretValue.9`, expected one of `a`, `b`"),
            "unknown key `Xq8~s3cr…`, expected one of `a`, `b`"
        );
    }

    #[test]
    fn renders_hint_lines() {
        let e = ConfigError::new("/x/a.entraidconf", "unknown key `foo`", "remove it\nsee README").in_instance("gw");
        assert_eq!(
            render_error(&e),
            "error: instance `gw`: /x/a.entraidconf: unknown key `foo`\nhint: remove it\n      see README"
        );
    }
}
