//! One `.entraidconf` file (contract §2): raw TOML, then one checked `EntraConf`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::credential::{with_credential_keys, App, ClientAuth, CredentialKeys, Credentials, LoadedCredential};
use crate::config::endpoints::{Cloud, Endpoints};
use crate::config::secret::Confine;
pub use crate::config::secret::Env;
use crate::error::{quote, quote_in, ConfigError};
use crate::files::judged::Dir;
use crate::files::trust::{Controllers, Trust};
use crate::model::ids::{ClientId, GroupId, TenantId};
use crate::model::output::{AccessRule, Output};

const HINT_REFERENCE: &str =
    "see /usr/share/doc/usersync/configuration.md, or the commented /usr/share/doc/usersync/examples/example.entraidconf";

with_credential_keys! {
    /// The file as written, before any check. Its defaults are here, once.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct RawEntraConf {
        @credential_keys;
        group_id: Option<String> = None,
        query_filter: String = "mail".into(),
        feeds: Vec<String> = vec!["allowed_senders".into()],
        nested: bool = false,
        access_rule: String = "registration".into(),
        include_disabled: bool = false,
        delta: bool = true,
    }
}

/// A checked `.entraidconf`: everything the rest of the program may rely on.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // one per boolean key of the file
pub struct EntraConf {
    /// The file it came from.
    pub path: PathBuf,
    /// Directory (tenant) id.
    pub tenant: TenantId,
    /// Application (client) id.
    pub client: ClientId,
    /// The client secret or certificate, already read from wherever it lives.
    pub auth: ClientAuth,
    /// The file holding the secret or the private key (this config itself for an
    /// inline `client_secret`).
    pub secret_file: PathBuf,
    /// When the credential expires (Unix seconds): the certificate's end of validity, or
    /// `client_secret_expires` when the admin recorded it.
    pub expires: Option<i64>,
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
    /// Read only what changed (delta queries) when the global `[delta]` allows it.
    pub delta: bool,
    /// The `cloud` key.
    pub cloud: Cloud,
    /// Login and Graph hosts.
    pub endpoints: Endpoints,
    /// Whether the file may set endpoints and name files outside its directory (§9).
    pub trust: Trust,
    /// Its instance, when the config is not root's word: its group is fetched, and its
    /// delta state kept, for it alone, never shared with another instance (a shared state
    /// moves on only when every instance using it succeeded, and the gateway's account can
    /// make its own instance fail for ever).
    pub isolated: Option<String>,
}

/// Where a config was found: its directory (opened and judged), its instance, and the
/// systemd credentials the global config gives that instance (`[credentials]`).
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    /// The config's directory.
    pub dir: &'a Dir,
    /// The instance's name.
    pub instance: &'a str,
    /// The credentials its configs may name when they are not root's word.
    pub credentials: &'a [String],
}

impl EntraConf {
    /// What the token request needs.
    #[must_use]
    pub fn credentials(&self) -> Credentials {
        Credentials {
            token_url: self.endpoints.token_url(self.tenant.as_str()),
            client_id: self.client.to_string(),
            auth: self.auth.clone(),
            scope: self.endpoints.scope(),
        }
    }

    /// Reads, judges and checks the file `name` of the directory `place` says.
    pub fn load(place: &Place<'_>, name: &std::ffi::OsStr, env: &Env) -> Result<Self, ConfigError> {
        let path = place.dir.path().join(name);
        let unreadable = |e: &dyn std::fmt::Display| {
            let hint = if e.to_string().contains("symlink") || e.to_string().contains("hard links") {
                "usersync follows no symlink and reads no second name of a file in a directory that someone else than root controls: put the config itself there"
            } else {
                "check that it is a text file readable by the user usersync runs as"
            };
            ConfigError::new(&path, format!("cannot read: {e}"), hint)
        };
        let (bytes, trust, st) =
            place.dir.read_file_stat(name).map_err(|e| unreadable(&crate::files::resolve::explain(&e)))?;
        let text = String::from_utf8(bytes).map_err(|e| unreadable(&e))?;
        let controllers = Controllers::of(&trust, &st);
        Self::parse_in(&text, &path, env, trust, Some((place, &controllers)))
    }

    /// Parses and checks the text of `path`, a trusted file (for tests).
    pub fn parse(text: &str, path: &Path, env: &Env, trust: Trust) -> Result<Self, ConfigError> {
        Self::parse_in(text, path, env, trust, None)
    }

    fn parse_in(
        text: &str,
        path: &Path,
        env: &Env,
        trust: Trust,
        place: Option<(&Place<'_>, &Controllers)>,
    ) -> Result<Self, ConfigError> {
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
            ConfigError::new(path, format!("{}{at}", quote_in(&msg.replace("unknown field", "unknown key"))), key_hint)
        })?;
        Self::from_raw(raw, path, env, trust, place)
    }

    #[allow(clippy::too_many_lines)] // one linear check per key
    fn from_raw(
        raw: RawEntraConf,
        path: &Path,
        env: &Env,
        trust: Trust,
        place: Option<(&Place<'_>, &Controllers)>,
    ) -> Result<Self, ConfigError> {
        let bad = |key: &str, msg: String, hint: &str| ConfigError::new(path, format!("key `{key}`: {msg}"), hint);
        let required = |key: &str, v: Option<String>| v.ok_or_else(|| bad(key, "is missing".into(), HINT_REFERENCE));

        // An untrusted file (§9) decides neither where the credential goes nor, below,
        // which files outside its own directory are read: checked before anything is read.
        if !trust.is_trusted() {
            let set =
                [("authority_host", raw.authority_host.is_some()), ("graph_endpoint", raw.graph_endpoint.is_some())];
            if let (Some((key, _)), Trust::Untrusted(why)) = (set.iter().find(|(_, set)| *set), &trust) {
                return Err(bad(
                    key,
                    format!("may only be set in a trusted file, and this one is {trust}"),
                    &format!("{}, or remove {key} and set `cloud`", why.fix(path)),
                ));
            }
        }
        let trust_is_trusted = trust.is_trusted();
        let confine = match (&trust, place) {
            (Trust::Trusted, _) => None,
            (Trust::Untrusted(why), Some((p, controllers))) => {
                Some(Confine { dir: p.dir, why, controllers, instance: p.instance, credentials: p.credentials })
            }
            (Trust::Untrusted(_), None) => {
                return Err(ConfigError::new(path, "an untrusted config read from no directory", HINT_REFERENCE));
            }
        };

        let App { tenant, client, cloud, endpoints, credential } =
            CredentialKeys::from(&raw).app(path, env, confine.as_ref(), crate::model::date::now())?;
        let LoadedCredential { auth, file: secret_file, expires } = credential;
        let group_text = required("group_id", raw.group_id)?;
        let group = GroupId::parse(&group_text).ok_or_else(|| {
            bad(
                "group_id",
                format!("`{}` is not a GUID", quote(&group_text)),
                "copy the group's Object ID from Groups > the group > Overview in the Entra admin center",
            )
        })?;

        let query_filter = raw.query_filter;
        let mut mail = false;
        let mut mobile_phone = false;
        for attr in query_filter.split(',').map(str::trim) {
            match attr.to_ascii_lowercase().as_str() {
                "mail" => mail = true,
                "mobilephone" => mobile_phone = true,
                _ => {
                    return Err(bad(
                        "query_filter",
                        format!("unknown attribute `{}`", quote(attr)),
                        "use \"mail\" or \"mail,mobilePhone\"",
                    ));
                }
            }
        }
        if !mail {
            return Err(bad(
                "query_filter",
                format!("`{}` does not include `mail`", quote(&query_filter)),
                "use \"mail\" or \"mail,mobilePhone\"",
            ));
        }

        let feed_names = raw.feeds;
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
                    format!("unknown output `{}`", quote(f)),
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

        let access_rule = AccessRule::from_name(&raw.access_rule).ok_or_else(|| {
            bad(
                "access_rule",
                format!("unknown style `{}`", quote(&raw.access_rule)),
                "use \"registration\" or \"sms\"",
            )
        })?;

        Ok(Self {
            path: path.to_owned(),
            tenant,
            client,
            auth,
            secret_file,
            expires,
            group,
            mobile_phone,
            feeds,
            nested: raw.nested,
            access_rule,
            include_disabled: raw.include_disabled,
            delta: raw.delta,
            cloud,
            endpoints,
            trust,
            isolated: place.filter(|_| !trust_is_trusted).map(|(p, _)| p.instance.to_owned()),
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
        EntraConf::parse(&format!("{BASE}{extra}"), Path::new("/x/a.entraidconf"), &Env::default(), Trust::Trusted)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.feeds, BTreeSet::from([Output::AllowedSenders]));
        assert!(!c.mobile_phone && !c.nested && !c.include_disabled);
        assert_eq!(c.access_rule, AccessRule::Registration);
        assert_eq!(c.endpoints.graph.as_str(), "https://graph.microsoft.com/");
        assert!(matches!(&c.auth, ClientAuth::Secret(s) if s.expose() == "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    /// The shipped example shows every default as the code has it.
    #[test]
    fn the_example_shows_the_defaults_of_the_code() {
        let example = include_str!("../../config/example.entraidconf");
        let keys = ["nested", "access_rule", "include_disabled", "delta", "cloud", "authority_host", "graph_endpoint"];
        let shown: String = keys.iter().map(|k| crate::config::example::default_line(example, "", k) + "\n").collect();
        let (shown, code) = (parse(&shown).unwrap(), parse("").unwrap());
        let defaults = |c: &EntraConf| {
            format!("{:?}", (c.nested, c.access_rule, c.include_disabled, c.delta, c.cloud, &c.endpoints))
        };
        assert_eq!(defaults(&shown), defaults(&code));
        let algorithm = crate::config::example::default_line(example, "", "assertion_algorithm");
        let algorithm = algorithm.parse::<toml::Table>().unwrap()["assertion_algorithm"].as_str().unwrap().to_owned();
        let algorithm = crate::config::credential::AssertionAlgorithm::from_name(&algorithm);
        assert_eq!(algorithm, Some(crate::config::credential::AssertionAlgorithm::default()));
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
