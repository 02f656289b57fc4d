//! The line formats of the three outputs (contract §1), and reading a current file back.

use crate::model::output::{AccessRule, Output};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::normalize::{Email, Phone};

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
}
