//! One `.entraidconf` file (contract §2): raw TOML, then one checked `EntraConf`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::endpoints::{parse_endpoint, Cloud, Endpoints};
use crate::error::ConfigError;
use crate::graph::{Credentials, GroupQuery};
use crate::ids::{ClientId, GroupId, TenantId};
use crate::output::{AccessRule, Output};
pub use crate::secret::Env;
use crate::secret::{resolve, Secret};

const HINT_REFERENCE: &str = "see the `.entraidconf` table in the README, or config/example.entraidconf";

/// The file as written, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntraConf {
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    client_secret_credential: Option<String>,
    group_id: Option<String>,
    query_filter: Option<String>,
    feeds: Option<Vec<String>>,
    nested: Option<bool>,
    access_rule: Option<String>,
    include_disabled: Option<bool>,
    cloud: Option<String>,
    authority_host: Option<String>,
    graph_endpoint: Option<String>,
}

/// A checked `.entraidconf`: everything the rest of the program may rely on.
#[derive(Debug, Clone)]
pub struct EntraConf {
    /// The file it came from.
    pub path: PathBuf,
    /// Directory (tenant) id.
    pub tenant: TenantId,
    /// Application (client) id.
    pub client: ClientId,
    /// The client secret, already read from wherever it lives.
    pub secret: Secret,
    /// The file the secret was read from (this config itself for `client_secret`).
    pub secret_file: PathBuf,
    /// The group whose members are synced.
    pub group: GroupId,
    /// `query_filter` includes `mobilePhone`.
    pub mobile_phone: bool,
    /// The outputs this config contributes to.
    pub feeds: BTreeSet<Output>,
    /// Transitive membership.
    pub nested: bool,
    /// Style of `access_rules` lines.
    pub access_rule: AccessRule,
    /// Keep accounts whose `accountEnabled` is false.
    pub include_disabled: bool,
    /// Login and Graph hosts.
    pub endpoints: Endpoints,
}

impl EntraConf {
    /// What the token request needs.
    #[must_use]
    pub fn credentials(&self) -> Credentials {
        Credentials {
            token_url: self.endpoints.token_url(self.tenant.as_str()),
            client_id: self.client.to_string(),
            secret: self.secret.clone(),
            scope: self.endpoints.scope(),
        }
    }

    /// The group query for this config alone.
    #[must_use]
    pub fn query(&self) -> GroupQuery {
        GroupQuery {
            graph: self.endpoints.graph_base(),
            group: self.group.clone(),
            nested: self.nested,
            mobile_phone: self.mobile_phone,
        }
    }

    /// Reads and checks one file.
    pub fn load(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path,
                format!("cannot read: {e}"),
                "check that the file exists and is readable by the user usersync runs as",
            )
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses and checks the text of `path`.
    pub fn parse(text: &str, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let raw: RawEntraConf = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            let key_hint = if msg.starts_with("unknown field") {
                format!("remove or correct that key; {HINT_REFERENCE}")
            } else {
                format!("fix the TOML syntax; {HINT_REFERENCE}")
            };
            ConfigError::new(path, format!("{}{at}", msg.replace("unknown field", "unknown key")), key_hint)
        })?;
        Self::from_raw(raw, path, env)
    }

    #[allow(clippy::too_many_lines)] // one linear check per key
    fn from_raw(raw: RawEntraConf, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let bad = |key: &str, msg: String, hint: &str| ConfigError::new(path, format!("key `{key}`: {msg}"), hint);
        let required = |key: &str, v: Option<String>| v.ok_or_else(|| bad(key, "is missing".into(), HINT_REFERENCE));

        let tenant_text = required("tenant_id", raw.tenant_id)?;
        let tenant = TenantId::parse(&tenant_text).ok_or_else(|| {
            bad(
                "tenant_id",
                format!("`{tenant_text}` is neither a GUID nor a domain name"),
                "copy the Directory (tenant) ID from the app's Overview page in the Entra admin center",
            )
        })?;
        let client_text = required("client_id", raw.client_id)?;
        let client = ClientId::parse(&client_text).ok_or_else(|| {
            bad(
                "client_id",
                format!("`{client_text}` is not a GUID"),
                "copy the Application (client) ID from the app's Overview page in the Entra admin center",
            )
        })?;
        let group_text = required("group_id", raw.group_id)?;
        let group = GroupId::parse(&group_text).ok_or_else(|| {
            bad(
                "group_id",
                format!("`{group_text}` is not a GUID"),
                "copy the group's Object ID from Groups > the group > Overview in the Entra admin center",
            )
        })?;

        let (secret, secret_file) = resolve(
            "client_secret",
            raw.client_secret,
            raw.client_secret_file,
            raw.client_secret_credential,
            path,
            env,
        )?;

        let query_filter = raw.query_filter.unwrap_or_else(|| "mail".into());
        let mut mail = false;
        let mut mobile_phone = false;
        for attr in query_filter.split(',').map(str::trim) {
            match attr.to_ascii_lowercase().as_str() {
                "mail" => mail = true,
                "mobilephone" => mobile_phone = true,
                _ => {
                    return Err(bad(
                        "query_filter",
                        format!("unknown attribute `{attr}`"),
                        "use \"mail\" or \"mail,mobilePhone\"",
                    ));
                }
            }
        }
        if !mail {
            return Err(bad(
                "query_filter",
                format!("`{query_filter}` does not include `mail`"),
                "use \"mail\" or \"mail,mobilePhone\"",
            ));
        }

        let feed_names = raw.feeds.unwrap_or_else(|| vec!["allowed_senders".into()]);
        if feed_names.is_empty() {
            return Err(bad(
                "feeds",
                "is empty".into(),
                "list at least one of \"allowed_senders\", \"gsm_list\", \"access_rules\"",
            ));
        }
        let mut feeds = BTreeSet::new();
        for f in &feed_names {
            feeds.insert(Output::from_name(f).ok_or_else(|| {
                bad(
                    "feeds",
                    format!("unknown output `{f}`"),
                    "use \"allowed_senders\", \"gsm_list\" or \"access_rules\"",
                )
            })?);
        }
        if feeds.contains(&Output::GsmList) && !mobile_phone {
            return Err(bad(
                "feeds",
                "`gsm_list` needs phone numbers, but `query_filter` does not include `mobilePhone`".into(),
                "set query_filter = \"mail,mobilePhone\"",
            ));
        }

        let access_rule = match raw.access_rule {
            None => AccessRule::default(),
            Some(s) => AccessRule::from_name(&s)
                .ok_or_else(|| bad("access_rule", format!("unknown style `{s}`"), "use \"registration\" or \"sms\""))?,
        };

        let cloud = match raw.cloud {
            None => Cloud::Global,
            Some(s) => Cloud::from_name(&s).ok_or_else(|| {
                bad("cloud", format!("unknown cloud `{s}`"), "use \"global\", \"usgov\", \"usgov-dod\" or \"china\"")
            })?,
        };
        let endpoint = |key: &str, v: Option<String>, default: &str| {
            parse_endpoint(v.as_deref().unwrap_or(default)).map_err(|m| {
                bad(key, m, "use an https:// host such as https://graph.microsoft.com (http:// is accepted for 127.0.0.1, [::1] and localhost only), or remove the key and set `cloud`")
            })
        };
        let endpoints = Endpoints {
            authority: endpoint("authority_host", raw.authority_host, cloud.authority_host())?,
            graph: endpoint("graph_endpoint", raw.graph_endpoint, cloud.graph_endpoint())?,
        };

        Ok(Self {
            path: path.to_owned(),
            tenant,
            client,
            secret,
            secret_file,
            group,
            mobile_phone,
            feeds,
            nested: raw.nested.unwrap_or(false),
            access_rule,
            include_disabled: raw.include_disabled.unwrap_or(false),
            endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
tenant_id = "11111111-2222-3333-4444-555555555555"
client_id = "66666666-7777-8888-9999-000000000000"
client_secret = "s3cret"
group_id = "02bd9fd6-8f93-4758-87c3-1fb73740a315"
"#;

    fn parse(extra: &str) -> Result<EntraConf, ConfigError> {
        EntraConf::parse(&format!("{BASE}{extra}"), Path::new("/x/a.entraidconf"), &Env::default())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.feeds, BTreeSet::from([Output::AllowedSenders]));
        assert!(!c.mobile_phone && !c.nested && !c.include_disabled);
        assert_eq!(c.access_rule, AccessRule::Registration);
        assert_eq!(c.endpoints.graph.as_str(), "https://graph.microsoft.com/");
        assert_eq!(c.secret.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("colour = 1\n").unwrap_err();
        assert!(e.message.contains("unknown key `colour`"), "{e}");
        assert!(e.message.contains("line 6"), "{e}");
    }

    #[test]
    fn gsm_list_needs_mobile_phone() {
        let e = parse("feeds = [\"gsm_list\"]\n").unwrap_err();
        assert!(e.message.contains("mobilePhone"), "{e}");
        assert!(parse("feeds = [\"gsm_list\"]\nquery_filter = \"mail, mobilePhone\"\n").is_ok());
    }

    #[test]
    fn secrets_are_exclusive() {
        let e = parse("client_secret_file = \"x\"\n").unwrap_err();
        assert!(e.message.contains("more than one"), "{e}");
    }

    #[test]
    fn http_non_loopback_refused() {
        let e = parse("graph_endpoint = \"http://graph.example.com\"\n").unwrap_err();
        assert!(e.message.contains("graph_endpoint"), "{e}");
    }
}
