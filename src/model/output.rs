//! The three output files an instance can have, and the two access-rule styles.

use std::fmt;

/// One of the gateway's list files (contract §1); the `feeds` value names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// `allowed_senders_ldap.txt`: who may send secure mail.
    AllowedSenders,
    /// `gsm_list.txt`: `mail phone` pairs for SMS authentication.
    GsmList,
    /// `gsm_auth_auto.txt`: access rules.
    AccessRules,
}

impl Output {
    /// Every output, in report order.
    pub const ALL: [Output; 3] = [Output::AllowedSenders, Output::GsmList, Output::AccessRules];

    /// The `feeds` value that names this output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AllowedSenders => "allowed_senders",
            Self::GsmList => "gsm_list",
            Self::AccessRules => "access_rules",
        }
    }

    /// Parses a `feeds` value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }

    /// Path relative to the instance directory when no `.cfg` key overrides it.
    #[must_use]
    pub fn default_path(self) -> &'static str {
        match self {
            Self::AllowedSenders => "config/allowed_senders_ldap.txt",
            Self::GsmList => "config/gsm_list.txt",
            Self::AccessRules => "config/gsm_auth_auto.txt",
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Line style of the `access_rules` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessRule {
    /// `* user@example.com <reg> - 0`
    Registration,
    /// `user@example.com * <sms> - 0`
    Sms,
}

impl AccessRule {
    /// Parses an `access_rule` value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "registration" => Some(Self::Registration),
            "sms" => Some(Self::Sms),
            _ => None,
        }
    }
}
