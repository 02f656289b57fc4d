//! Checked identifiers from the configuration (tenant, client and group ids), and the hex
//! form ids and digests are written in.

use std::fmt;

/// Whether `s` can be a directory object's id: Graph's are GUIDs; accepted are 1 to 64
/// ASCII letters, digits, `-`, `_` and `.`. Anything else (a line break, a tab) is a
/// hostile value: it never reaches a list or the delta state.
#[must_use]
pub fn is_object_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` is a GUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[must_use]
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Is `s` a DNS name such as `contoso.onmicrosoft.com`?
fn is_domain(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text, safe to put in a URL path.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// Directory (tenant) id: a GUID or a verified domain name, lower-cased.
    TenantId
);
id_type!(
    /// Application (client) id: a GUID, lower-cased.
    ClientId
);
id_type!(
    /// Object id of an Entra ID group: a GUID, lower-cased.
    GroupId
);

impl TenantId {
    /// Accepts a GUID or a domain name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        (is_guid(&s) || is_domain(&s)).then_some(Self(s))
    }
}

impl ClientId {
    /// Accepts a GUID.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        is_guid(&s).then_some(Self(s))
    }
}

impl GroupId {
    /// Accepts a GUID.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        is_guid(&s).then_some(Self(s))
    }
}

/// `bytes` in lower-case hex: digests in file names, random ids.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut h, b| {
        use std::fmt::Write as _;
        let _ = write!(h, "{b:02x}");
        h
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_domains() {
        assert!(GroupId::parse("02BD9FD6-8F93-4758-87C3-1FB73740A315").is_some());
        assert!(GroupId::parse("02bd9fd6-8f93-4758-87c3-1fb73740a31").is_none());
        assert!(GroupId::parse("../../users").is_none());
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_some());
        assert!(TenantId::parse("contoso/..").is_none());
        assert!(TenantId::parse("common").is_none());
        assert!(ClientId::parse("contoso.com").is_none());
    }
}
