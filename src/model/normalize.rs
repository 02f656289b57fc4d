//! Turns raw directory values into checked `Email` and `Phone` values (contract §4),
//! and names why a member is skipped.

use std::fmt;

/// Why a member (or one of its values) did not become an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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
    /// An object whose id is no directory object id (see `model::ids::is_object_id`).
    InvalidId,
    /// `accountEnabled` is false and `include_disabled` is not set.
    Disabled,
    /// Graph sent no `accountEnabled`, and `include_disabled` is not set: whether the
    /// account is enabled is unknown, so it is not kept.
    EnabledUnknown,
    /// No `mail`.
    NoMail,
    /// A `mail` that is not a plausible address.
    InvalidMail,
    /// A `mail` whose local part (before the `@`) is not ASCII.
    NonAsciiLocalPart,
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
            Self::InvalidId => "invalid-id",
            Self::Disabled => "disabled",
            Self::EnabledUnknown => "enabled-unknown",
            Self::NoMail => "no-mail",
            Self::InvalidMail => "invalid-mail",
            Self::NonAsciiLocalPart => "non-ascii-local-part",
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

/// A lower-cased, plausible, ASCII-only mail address: safe to put on a line of any output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

/// Characters that may never appear in an address we write.
const FORBIDDEN: &str = "<>*\"(),;:[]\\";

/// The ASCII bytes an address may hold: printable, not a space, not `FORBIDDEN`.
const PLAIN: [bool; 128] = {
    let mut t = [false; 128];
    let mut b = b'!';
    while b <= b'~' {
        t[b as usize] = true;
        b += 1;
    }
    let f = FORBIDDEN.as_bytes();
    let mut i = 0;
    while i < f.len() {
        t[f[i] as usize] = false;
        i += 1;
    }
    t
};

fn plain(b: u8) -> bool {
    PLAIN.get(usize::from(b)).copied().unwrap_or(false)
}

impl Email {
    /// Trims and checks: one `@` with text on both sides, no whitespace,
    /// control characters or any of `<>*"(),;:[]\`. The local part must be
    /// ASCII; a non-ASCII domain is converted to punycode (IDNA). The result
    /// is lower-cased and at most 254 bytes.
    pub fn parse(raw: &str) -> Result<Self, SkipReason> {
        let mut out = Vec::new();
        Self::parse_into(raw, &mut out)?;
        // Only ASCII was appended.
        String::from_utf8(out).map(Self).map_err(|_| SkipReason::InvalidMail)
    }

    /// As [`Email::parse`], appending the address to `out` (nothing on an error),
    /// without allocating for the common ASCII address.
    pub fn parse_into(raw: &str, out: &mut Vec<u8>) -> Result<(), SkipReason> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(SkipReason::NoMail);
        }
        if s.len() > 1024 || (!s.is_ascii() && s.chars().any(|c| c.is_whitespace() || c.is_control())) {
            return Err(SkipReason::InvalidMail);
        }
        if s.bytes().any(|b| b.is_ascii() && !plain(b)) {
            return Err(SkipReason::InvalidMail);
        }
        let Some((local, domain)) = s.split_once('@') else { return Err(SkipReason::InvalidMail) };
        if local.is_empty() || domain.is_empty() || domain.contains('@') {
            return Err(SkipReason::InvalidMail);
        }
        if !local.is_ascii() {
            return Err(SkipReason::NonAsciiLocalPart);
        }
        let start = out.len();
        out.extend(local.bytes().map(|b| b.to_ascii_lowercase()));
        out.push(b'@');
        if domain.is_ascii() {
            out.extend(domain.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            let Ok(d) = idna::domain_to_ascii_strict(domain) else {
                out.truncate(start);
                return Err(SkipReason::InvalidMail);
            };
            out.extend_from_slice(d.as_bytes());
        }
        // The local part was checked above; an IDNA domain may not be plain.
        let address = &out[start..];
        if address.len() <= 254 && (domain.is_ascii() || address.iter().all(|b| plain(*b))) {
            Ok(())
        } else {
            out.truncate(start);
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
        let mut out = Vec::new();
        Self::parse_into(raw, &mut out)?;
        String::from_utf8(out).map(Self).map_err(|_| SkipReason::InvalidPhone)
    }

    /// As [`Phone::parse`], appending the number to `out` (nothing on an error).
    pub fn parse_into(raw: &str, out: &mut Vec<u8>) -> Result<(), SkipReason> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(SkipReason::NoPhone);
        }
        let trunk = trunk_at(s);
        let start = out.len();
        for (i, c) in s.char_indices() {
            if trunk.is_some_and(|t| (t..t + 3).contains(&i))
                || matches!(c, ' ' | '\u{a0}' | '-' | '.' | '(' | ')' | '/')
            {
                continue;
            }
            match u8::try_from(c) {
                Ok(b) if b.is_ascii() && out.len() - start <= 21 => out.push(b),
                _ => {
                    out.truncate(start);
                    return Err(SkipReason::InvalidPhone);
                }
            }
        }
        let n = &out[start..];
        let digits = n.strip_prefix(b"+").unwrap_or(n);
        if (5..=20).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) {
            Ok(())
        } else {
            out.truncate(start);
            Err(SkipReason::InvalidPhone)
        }
    }

    /// The number.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a `(0)` trunk prefix starts when it comes right after the `+country` code (1 to 3
/// digits, then optional spaces): `+44 (0)20 …`. A `(0)` anywhere else is kept as a `0`.
fn trunk_at(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let country = b.strip_prefix(b"+")?.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=3).contains(&country) {
        return None;
    }
    let at = 1 + country + b[1 + country..].iter().take_while(|c| **c == b' ').count();
    b[at..].starts_with(b"(0)").then_some(at)
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
        assert_eq!(Email::parse("Jörg@example.com"), Err(SkipReason::NonAsciiLocalPart));
        assert_eq!(Email::parse("jorg@BÜCHER.example").unwrap().as_str(), "jorg@xn--bcher-kva.example");
        assert_eq!(
            Email::parse("a@exa\u{2060}mple.com").unwrap().as_str(),
            "a@example.com",
            "IDNA drops default-ignorables"
        );
        assert_eq!(Email::parse("a@ex_ample.com").unwrap().as_str(), "a@ex_ample.com");
        assert_eq!(Email::parse("a@bü_cher.com"), Err(SkipReason::InvalidMail));
        assert_eq!(Email::parse(&"x".repeat(10_000)), Err(SkipReason::InvalidMail));
        let long = format!("{}@example.com", "a".repeat(242));
        assert_eq!(long.len(), 254);
        assert!(Email::parse(&long).is_ok());
        assert_eq!(Email::parse(&format!("a{long}")), Err(SkipReason::InvalidMail));
    }

    #[test]
    fn phones() {
        assert_eq!(Phone::parse("+44 (0)20 7946 0958").unwrap().as_str(), "+442079460958");
        assert_eq!(Phone::parse("+44(0)20 7946 0958").unwrap().as_str(), "+442079460958");
        // Not right after the country code: the 0 is a digit of the number.
        assert_eq!(Phone::parse("+44 20 (0)7946 0958").unwrap().as_str(), "+4420079460958");
        assert_eq!(Phone::parse("+4420 (0)7946").unwrap().as_str(), "+442007946");
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
