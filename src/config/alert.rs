//! `[alert]` of the global config (contract §8): raw TOML, then checked providers.
//! Sending lives in `crate::run::alert`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::credential::{with_credential_keys, App, CredentialKeys, Credentials};
use crate::config::endpoints::parse_endpoint;
use crate::config::secret::{resolve, Env, Secret, Unread};
use crate::error::{quote, ConfigError};
use crate::model::normalize::Email;

/// The scope of a client-credentials token for SMTP AUTH XOAUTH2 in Exchange Online.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

/// `[alert]` as written; its defaults are here (`Default` impls), once.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAlert {
    from: Option<String>,
    to: Vec<String>,
    repeat_hours: u64,
    provider: Vec<RawProvider>,
}

impl Default for RawAlert {
    fn default() -> Self {
        Self { from: None, to: Vec::new(), repeat_hours: 24, provider: Vec::new() }
    }
}

with_credential_keys! {
    /// A `[[alert.provider]]` as written. `port` defaults by `security` (587, or 465 for
    /// `tls`) and `priority` to the provider's position, so both are set when checked.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct RawProvider {
        kind: Option<String> = None,
        priority: Option<i64> = None,
        host: Option<String> = None,
        port: Option<u16> = None,
        security: String = "starttls".into(),
        username: Option<String> = None,
        password: Option<Secret> = None,
        password_file: Option<std::path::PathBuf> = None,
        password_credential: Option<String> = None,
        @credential_keys;
        /// Refused with its own message: a SendGrid key is never written inline.
        api_key: Option<Secret> = None,
        api_key_file: Option<std::path::PathBuf> = None,
        api_key_credential: Option<String> = None,
        api_host: Option<String> = None,
    }
}

/// SendGrid's Web API, unless `api_host` says otherwise.
pub const SENDGRID_API: &str = "https://api.sendgrid.com";

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// STARTTLS, required (port 587).
    StartTls,
    /// Implicit TLS (port 465).
    Tls,
    /// Plain text: loopback or a trusted relay only.
    None,
}

impl Security {
    /// Parses a `security` value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "starttls" => Some(Self::StartTls),
            "tls" => Some(Self::Tls),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The port of a provider that names none: 465 for implicit TLS, 587 otherwise.
    #[must_use]
    pub fn default_port(self) -> u16 {
        if self == Self::Tls {
            465
        } else {
            587
        }
    }
}

/// One way to deliver an alert.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A relay or authenticated SMTP server.
    Smtp {
        /// Host name (also the TLS name).
        host: String,
        /// Port.
        port: u16,
        /// TLS mode.
        security: Security,
        /// AUTH PLAIN/LOGIN user and password.
        auth: Option<(String, Secret)>,
    },
    /// Exchange Online SMTP with XOAUTH2 and a client-credentials token.
    SmtpOauth {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// TLS mode.
        security: Security,
        /// The mailbox the app sends as.
        username: String,
        /// Token request for `OUTLOOK_SCOPE`.
        credentials: Credentials,
    },
    /// Graph `POST /users/{from}/sendMail`.
    Graph {
        /// Token request for `<graph>/.default`.
        credentials: Credentials,
        /// Graph origin.
        graph: String,
    },
    /// SendGrid's Web API, `POST /v3/mail/send`.
    SendGrid {
        /// API origin, `https://api.sendgrid.com` unless set.
        api: String,
        /// The API key (Mail Send permission), from a file or a systemd credential.
        key: Secret,
    },
}

/// A provider and its place in the failover order.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Lower is tried first.
    pub priority: i64,
    /// What it is.
    pub kind: Kind,
    /// When its app credential expires (Unix seconds), if known: a certificate's end of
    /// validity, or `client_secret_expires`.
    pub expires: Option<i64>,
}

impl Provider {
    /// The app credential of an Entra-authenticated provider (`smtp-oauth`, `graph`).
    #[must_use]
    pub fn credentials(&self) -> Option<&Credentials> {
        match &self.kind {
            Kind::SmtpOauth { credentials, .. } | Kind::Graph { credentials, .. } => Some(credentials),
            Kind::Smtp { .. } | Kind::SendGrid { .. } => None,
        }
    }

    /// A short name for reports: `smtp outbound.example.com:587`.
    #[must_use]
    pub fn label(&self) -> String {
        match &self.kind {
            Kind::Smtp { host, port, .. } => format!("smtp {host}:{port}"),
            Kind::SmtpOauth { host, port, .. } => format!("smtp-oauth {host}:{port}"),
            Kind::Graph { graph, .. } => format!("graph {graph}"),
            Kind::SendGrid { api, .. } => format!("sendgrid {api}"),
        }
    }
}

/// The checked `[alert]`.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Sender.
    pub from: Email,
    /// Recipients, lower-cased and deduplicated.
    pub to: Vec<Email>,
    /// A failure that goes on is repeated at most this often.
    pub repeat: Duration,
    /// Providers in priority order.
    pub providers: Vec<Provider>,
    /// Systemd credentials that `check` from a shell left unread, and the provider of each;
    /// a provider whose password or API key is one of them is checked up to it and left
    /// out of `providers`. Empty whenever the credentials are read.
    pub unread: Vec<(String, Unread)>,
}

impl AlertConfig {
    #[allow(clippy::too_many_lines)] // one linear check per key
    pub(crate) fn from_raw(raw: RawAlert, file: &Path, env: &Env) -> Result<Self, ConfigError> {
        let bad =
            |key: &str, msg: String, hint: &str| ConfigError::new(file, format!("key `alert.{key}`: {msg}"), hint);
        let addr = |key: &str, v: &str| {
            Email::parse(v).map_err(|_| {
                bad(
                    key,
                    format!("`{}` is not a mail address", quote(v)),
                    "write a plain address such as admin@example.com",
                )
            })
        };
        let from = addr("from", raw.from.as_deref().unwrap_or_default())?;
        let mut to = Vec::new();
        for t in raw.to {
            let e = addr("to", &t)?;
            if !to.contains(&e) {
                to.push(e);
            }
        }
        if to.is_empty() {
            return Err(bad(
                "to",
                "has no recipient".into(),
                "list at least one address, e.g. to = [\"admin@example.com\"]",
            ));
        }
        if raw.provider.is_empty() {
            return Err(bad(
                "provider",
                "no [[alert.provider]] is configured".into(),
                "add at least one [[alert.provider]] (smtp, smtp-oauth, graph or sendgrid); see the commented [alert] in /etc/usersync/usersync.toml",
            ));
        }
        let mut providers = Vec::new();
        let mut unread = Vec::new();
        for (i, p) in raw.provider.into_iter().enumerate() {
            let n = i + 1;
            let this = |kind: &str| format!("[[alert.provider]] {n} ({kind})");
            let pbad = |key: &str, msg: String, hint: &str| bad(&format!("provider[{n}].{key}"), msg, hint);
            let kind = p.kind.clone().unwrap_or_default();
            let security = Security::from_name(&p.security).ok_or_else(|| {
                pbad(
                    "security",
                    format!("unknown mode `{}`", quote(&p.security)),
                    "use \"starttls\", \"tls\" or \"none\"",
                )
            })?;
            let default_port = security.default_port();
            let host = || {
                p.host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| pbad("host", "is missing".into(), "give the SMTP server's host name"))
            };
            // An error of this provider's app or credential, with the provider named.
            let named = |e: ConfigError| ConfigError { message: format!("[[alert.provider]] {n}: {}", e.message), ..e };
            let secret = |key: &str, inline: &Option<Secret>, f: &Option<std::path::PathBuf>, cred: &Option<String>| {
                resolve(key, inline.clone(), f.clone(), cred.clone(), file, env, None).map(|(s, _)| s).map_err(named)
            };
            let mut expires = None;
            // An Entra app (smtp-oauth, graph): the same keys and checker as a `.entraidconf`.
            let mut app = |scope: Option<&str>| -> Result<(Credentials, String), ConfigError> {
                let App { tenant, client, endpoints, credential, .. } =
                    CredentialKeys::from(&p).app(file, env, None, crate::model::date::now()).map_err(named)?;
                expires = credential.expires;
                let credentials = Credentials {
                    token_url: endpoints.token_url(tenant.as_str()),
                    client_id: client.to_string(),
                    auth: credential.auth,
                    scope: scope.map_or_else(|| endpoints.scope(), str::to_owned),
                };
                Ok((credentials, endpoints.graph_base()))
            };
            let loopback = |h: &str| crate::config::endpoints::is_loopback(&url::Host::Domain(h));
            let kind = match kind.as_str() {
                "smtp" => {
                    let host = host()?;
                    let auth = match p.username.clone() {
                        None => None,
                        Some(u) => {
                            if security == Security::None && !loopback(&host) {
                                return Err(pbad(
                                    "security",
                                    "\"none\" with a username would send the password in clear text".into(),
                                    "use \"starttls\" or \"tls\", or drop the username for a trusted relay",
                                ));
                            }
                            if let Some(left) = env.unread("password_credential", p.password_credential.as_ref()) {
                                unread.push((this("smtp"), left));
                                continue;
                            }
                            let pw = secret("password", &p.password, &p.password_file, &p.password_credential)?;
                            Some((u, pw))
                        }
                    };
                    Kind::Smtp { port: p.port.unwrap_or(default_port), host, security, auth }
                }
                "smtp-oauth" => {
                    let host = host()?;
                    if security == Security::None && !loopback(&host) {
                        return Err(pbad(
                            "security",
                            "\"none\" would send the access token in clear text".into(),
                            "use \"starttls\" (port 587) or \"tls\" (port 465)",
                        ));
                    }
                    let username = p.username.clone().ok_or_else(|| {
                        pbad("username", "is missing".into(), "the mailbox the app may send as (SMTP.SendAsApp)")
                    })?;
                    let (credentials, _) = app(Some(OUTLOOK_SCOPE))?;
                    Kind::SmtpOauth { port: p.port.unwrap_or(default_port), host, security, username, credentials }
                }
                "graph" => {
                    let (credentials, graph) = app(None)?;
                    Kind::Graph { credentials, graph }
                }
                "sendgrid" => {
                    if p.api_key.is_some() {
                        return Err(pbad(
                            "api_key",
                            "an API key is never written inline".into(),
                            "put the key in a file only root can read (chmod 0600) and name it with api_key_file, or use api_key_credential under systemd",
                        ));
                    }
                    if p.api_key_file.is_none() && p.api_key_credential.is_none() {
                        return Err(pbad(
                            "api_key_file",
                            "is missing".into(),
                            "name the file holding the SendGrid API key (api_key_file), or its systemd credential (api_key_credential)",
                        ));
                    }
                    let api = parse_endpoint(p.api_host.as_deref().unwrap_or(SENDGRID_API))
                        .map_err(|m| pbad("api_host", m, "use an https:// host such as https://api.sendgrid.com (http:// is accepted for 127.0.0.1, [::1] and localhost only), or remove the key"))?
                        .as_str()
                        .trim_end_matches('/')
                        .to_owned();
                    if let Some(left) = env.unread("api_key_credential", p.api_key_credential.as_ref()) {
                        unread.push((this("sendgrid"), left));
                        continue;
                    }
                    let key = secret("api_key", &None, &p.api_key_file, &p.api_key_credential)?;
                    Kind::SendGrid { api, key }
                }
                other => {
                    return Err(pbad(
                        "kind",
                        format!("unknown kind `{}`", quote(other)),
                        "use \"smtp\", \"smtp-oauth\", \"graph\" or \"sendgrid\"",
                    ))
                }
            };
            providers.push(Provider {
                priority: p.priority.unwrap_or(i64::try_from(n).unwrap_or(i64::MAX)),
                kind,
                expires,
            });
        }
        providers.sort_by_key(|p| p.priority);
        Ok(Self { from, to, repeat: Duration::from_secs(raw.repeat_hours.max(1) * 3600), providers, unread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::credential::AssertionAlgorithm;

    /// The `[alert]` of the shipped `/etc/usersync/usersync.toml` shows every default as the
    /// code has it (each provider key as the first provider that shows it).
    #[test]
    fn the_example_shows_the_defaults_of_the_code() {
        let example = include_str!("../../config/usersync.toml");
        let shown = |section: &str, key: &str| -> toml::Value {
            let line = crate::config::example::default_line(example, section, key);
            line.parse::<toml::Table>().unwrap().remove(key).unwrap()
        };
        let provider = "[alert.provider]";
        let raw = RawProvider::default();
        assert_eq!(shown("alert", "repeat_hours").as_integer(), i64::try_from(RawAlert::default().repeat_hours).ok());
        assert_eq!(shown(provider, "security").as_str(), Some(raw.security.as_str()));
        let port = Security::from_name(&raw.security).unwrap().default_port();
        assert_eq!(shown(provider, "port").as_integer(), Some(i64::from(port)));
        assert_eq!(shown(provider, "api_host").as_str(), Some(SENDGRID_API));
        let algorithm = shown(provider, "assertion_algorithm");
        assert_eq!(AssertionAlgorithm::from_name(algorithm.as_str().unwrap()), Some(AssertionAlgorithm::default()));
    }
}
