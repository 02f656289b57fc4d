//! The line formats of the three outputs (contract §1), and reading a current file back.

use std::borrow::Cow;

use crate::normalize::{Email, Phone};
use crate::output::AccessRule;

/// `allowed_senders`: `user@example.com`
#[must_use]
pub fn allowed_sender(mail: &Email) -> String {
    mail.as_str().to_owned()
}

/// `gsm_list`: `user@example.com +358401234567`
#[must_use]
pub fn gsm_entry(mail: &Email, phone: &Phone) -> String {
    format!("{} {}", mail.as_str(), phone.as_str())
}

/// `access_rules`: `* user@example.com <reg> - 0` or `user@example.com * <sms> - 0`
#[must_use]
pub fn access_rule(mail: &Email, style: AccessRule) -> String {
    match style {
        AccessRule::Registration => format!("* {} <reg> - 0", mail.as_str()),
        AccessRule::Sms => format!("{} * <sms> - 0", mail.as_str()),
    }
}

/// The bytes of an output from sorted, deduplicated lines: one a line, `\n` after each.
#[must_use]
pub fn file_content(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The entries of a current file, sorted and deduplicated: its non-empty lines
/// (a trailing `\r` dropped), borrowed from `bytes` where they are UTF-8.
#[must_use]
pub fn current_entries(bytes: &[u8]) -> Vec<Cow<'_, str>> {
    let mut v: Vec<Cow<'_, str>> = bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(String::from_utf8_lossy)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let m = Email::parse("User@Example.com").unwrap();
        let p = Phone::parse("+358 40 1234567").unwrap();
        assert_eq!(allowed_sender(&m), "user@example.com");
        assert_eq!(gsm_entry(&m, &p), "user@example.com +358401234567");
        assert_eq!(access_rule(&m, AccessRule::Registration), "* user@example.com <reg> - 0");
        assert_eq!(access_rule(&m, AccessRule::Sms), "user@example.com * <sms> - 0");
    }

    #[test]
    fn content_round_trips() {
        let lines: Vec<String> = ["B@x", "a@x", "b@x"].iter().map(|s| (*s).to_owned()).collect();
        let c = file_content(&lines);
        assert_eq!(c, b"B@x\na@x\nb@x\n");
        assert_eq!(current_entries(&c), lines);
        assert_eq!(current_entries(b"b@x\r\n\n  \na@x\nb@x"), ["a@x", "b@x"]);
        assert!(file_content(&[]).is_empty());
    }
}
