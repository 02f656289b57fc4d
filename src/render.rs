//! The line formats of the three outputs (contract §1), and reading a current file back.

use crate::output::{AccessRule, Output};

/// Appends the line of `output` for a checked address and phone (no `\n`):
/// - `allowed_senders`: `user@example.com`
/// - `gsm_list`: `user@example.com +358401234567`
/// - `access_rules`: `* user@example.com <reg> - 0` or `user@example.com * <sms> - 0`
pub fn line(out: &mut Vec<u8>, output: Output, style: AccessRule, mail: &[u8], phone: &[u8]) {
    match (output, style) {
        (Output::AllowedSenders, _) => out.extend_from_slice(mail),
        (Output::GsmList, _) => {
            out.extend_from_slice(mail);
            out.push(b' ');
            out.extend_from_slice(phone);
        }
        (Output::AccessRules, AccessRule::Registration) => {
            out.extend_from_slice(b"* ");
            out.extend_from_slice(mail);
            out.extend_from_slice(b" <reg> - 0");
        }
        (Output::AccessRules, AccessRule::Sms) => {
            out.extend_from_slice(mail);
            out.extend_from_slice(b" * <sms> - 0");
        }
    }
}

/// The entries of a current file, sorted and deduplicated: its non-empty lines
/// (a trailing `\r` dropped), borrowed from `bytes`.
#[must_use]
pub fn current_entries(bytes: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    // Files usersync wrote are sorted already.
    if !v.is_sorted() {
        v.sort_unstable();
    }
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{Email, Phone};

    fn render(output: Output, style: AccessRule) -> String {
        let m = Email::parse("User@Example.com").unwrap();
        let p = Phone::parse("+358 40 1234567").unwrap();
        let mut out = Vec::new();
        line(&mut out, output, style, m.as_str().as_bytes(), p.as_str().as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats() {
        assert_eq!(render(Output::AllowedSenders, AccessRule::Registration), "user@example.com");
        assert_eq!(render(Output::GsmList, AccessRule::Sms), "user@example.com +358401234567");
        assert_eq!(render(Output::AccessRules, AccessRule::Registration), "* user@example.com <reg> - 0");
        assert_eq!(render(Output::AccessRules, AccessRule::Sms), "user@example.com * <sms> - 0");
    }

    #[test]
    fn current_entries_are_sorted_unique_and_non_blank() {
        fn e<'a>(v: &[&'a str]) -> Vec<&'a [u8]> {
            v.iter().map(|s| s.as_bytes()).collect()
        }
        assert_eq!(current_entries(b"B@x\na@x\nb@x\n"), e(&["B@x", "a@x", "b@x"]));
        assert_eq!(current_entries(b"b@x\r\n\n  \na@x\nb@x"), e(&["a@x", "b@x"]));
        assert!(current_entries(b"").is_empty());
    }
}
