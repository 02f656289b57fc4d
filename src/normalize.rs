//! Turns raw directory values into checked `Email` and `Phone` values (contract §4),
//! and names why a member is skipped.

use std::fmt;

/// Why a member (or one of its values) did not become an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// A nested group object (its members come with `nested = true`).
    Group,
    /// A device.
    Device,
    /// An organisational contact.
    Contact,
    /// A service principal.
    ServicePrincipal,
    /// Some other directory object type.
    OtherObject,
    /// An object without `@odata.type`.
    UntypedObject,
    /// `accountEnabled` is false and `include_disabled` is not set.
    Disabled,
    /// No `mail`.
    NoMail,
    /// A `mail` that is not a plausible address.
    InvalidMail,
    /// No `mobilePhone` (for `gsm_list`).
    NoPhone,
    /// A `mobilePhone` that is not a plausible number.
    InvalidPhone,
}

impl SkipReason {
    /// The name used in reports and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Device => "device",
            Self::Contact => "contact",
            Self::ServicePrincipal => "service-principal",
            Self::OtherObject => "other-object",
            Self::UntypedObject => "untyped-object",
            Self::Disabled => "disabled",
            Self::NoMail => "no-mail",
            Self::InvalidMail => "invalid-mail",
            Self::NoPhone => "no-phone",
            Self::InvalidPhone => "invalid-phone",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A lower-cased, plausible mail address: safe to put on a line of any output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Trims, lower-cases and checks: one `@` with text on both sides, no
    /// whitespace, control characters or any of `<>*"(),;:[]\`, at most 254 bytes.
    pub fn parse(raw: &str) -> Result<Self, SkipReason> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(SkipReason::NoMail);
        }
        let ok = s.len() <= 254
            && s.matches('@').count() == 1
            && !s.starts_with('@')
            && !s.ends_with('@')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control() || "<>*\"(),;:[]\\".contains(c));
        if ok {
            Ok(Self(s))
        } else {
            Err(SkipReason::InvalidMail)
        }
    }

    /// The address.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A normalised phone number: `+` optional, then 5 to 20 ASCII digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

impl Phone {
    /// Drops a `(0)` trunk digit after a `+country` code, removes spaces,
    /// `-`, `.`, `(`, `)` and `/`, then checks the result.
    pub fn parse(raw: &str) -> Result<Self, SkipReason> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(SkipReason::NoPhone);
        }
        let without_trunk = if s.starts_with('+') { s.replacen("(0)", "", 1) } else { s.to_owned() };
        let n: String =
            without_trunk.chars().filter(|c| !matches!(c, ' ' | '\u{a0}' | '-' | '.' | '(' | ')' | '/')).collect();
        let digits = n.strip_prefix('+').unwrap_or(&n);
        if (5..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(n))
        } else {
            Err(SkipReason::InvalidPhone)
        }
    }

    /// The number.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A directory value made safe for a log line: escaped, and cut to 120 characters.
#[must_use]
pub fn escape_for_log(raw: &str) -> String {
    let mut out: String = raw.chars().take(120).flat_map(char::escape_debug).collect();
    if raw.chars().nth(120).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(Email::parse("  AdeleV@Contoso.COM ").unwrap().as_str(), "adelev@contoso.com");
        assert_eq!(Email::parse(""), Err(SkipReason::NoMail));
        assert_eq!(Email::parse("   "), Err(SkipReason::NoMail));
        for bad in [
            "a@b@c",
            "nobody",
            "@x",
            "x@",
            "a b@x",
            "a@x\nb@y",
            "a\r@x",
            "a\0@x",
            "* a@x <reg> - 0",
            "<a@x>",
            "a@x;b@y",
            "\"a\"@x",
            "a(b)@x",
            "a,b@x",
            "a:b@x",
            "a[b]@x",
            "a\\b@x",
            "a\u{2028}b@x",
        ] {
            assert_eq!(Email::parse(bad), Err(SkipReason::InvalidMail), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(242));
        assert_eq!(long.len(), 254);
        assert!(Email::parse(&long).is_ok());
        assert_eq!(Email::parse(&format!("a{long}")), Err(SkipReason::InvalidMail));
    }

    #[test]
    fn phones() {
        assert_eq!(Phone::parse("+44 (0)20 7946 0958").unwrap().as_str(), "+442079460958");
        assert_eq!(Phone::parse("040-123 1234").unwrap().as_str(), "0401231234");
        assert_eq!(Phone::parse("+358 40 123.4567").unwrap().as_str(), "+358401234567");
        assert_eq!(Phone::parse("(040) 123/1234").unwrap().as_str(), "0401231234");
        assert_eq!(Phone::parse(""), Err(SkipReason::NoPhone));
        for bad in ["1234", "+123456789012345678901", "+358 40\n123", "++35840", "0401a", "040 * <sms>", "+4 4"] {
            assert_eq!(Phone::parse(bad), Err(SkipReason::InvalidPhone), "{bad:?}");
        }
        assert_eq!(Phone::parse("12345").unwrap().as_str(), "12345");
    }

    #[test]
    fn log_escaping() {
        assert_eq!(escape_for_log("a\nb\u{1b}"), "a\\nb\\u{1b}");
        assert!(escape_for_log(&"x".repeat(10_000)).len() < 130);
    }
}
