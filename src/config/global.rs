//! The global configuration file (contract §3): raw TOML, then one checked `Config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::alert::{self, AlertConfig};
use crate::config::secret::Env;
use crate::error::{quote, quote_in, ConfigError};
use crate::files::trust::Trust;

/// Where the global config lives when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/usersync/usersync.toml";
const HINT_REFERENCE: &str =
    "see /usr/share/doc/usersync/configuration.md, or the defaults commented in /etc/usersync/usersync.toml";

/// The file as written. Every default of the file is here (`Default` impls), once.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    server_root: Option<PathBuf>,
    state_dir: PathBuf,
    node: Option<RawNode>,
    guard: RawGuard,
    http: RawHttp,
    metrics: RawMetrics,
    delta: RawDelta,
    alert: Option<alert::RawAlert>,
    credentials: BTreeMap<String, Vec<String>>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            server_root: None,
            state_dir: PathBuf::from("/var/lib/usersync"),
            node: None,
            guard: RawGuard::default(),
            http: RawHttp::default(),
            metrics: RawMetrics::default(),
            delta: RawDelta::default(),
            alert: None,
            credentials: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDelta {
    enabled: bool,
    full_sync_hours: u64,
}

impl Default for RawDelta {
    fn default() -> Self {
        Self { enabled: true, full_sync_hours: 24 }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawMetrics {
    textfile: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNode {
    status_command: Vec<String>,
    active_states: Vec<String>,
}

impl Default for RawNode {
    fn default() -> Self {
        Self { status_command: Vec::new(), active_states: vec!["ACTIVE".into(), "ACTIVE FAKE".into()] }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawGuard {
    max_removed: u64,
    max_removed_percent: u64,
    window_hours: u64,
}

impl Default for RawGuard {
    fn default() -> Self {
        Self { max_removed: 500, max_removed_percent: 50, window_hours: 24 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHttp {
    timeout_seconds: u64,
    max_retries: u32,
    deadline_seconds: u64,
    max_concurrency: usize,
    ca_bundle: Option<PathBuf>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self { timeout_seconds: 60, max_retries: 6, deadline_seconds: 1500, max_concurrency: 4, ca_bundle: None }
    }
}

/// The checked global configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// `server_root`, if the file sets it.
    pub server_root: Option<PathBuf>,
    /// Small run state (alert suppression, later delta tokens).
    pub state_dir: PathBuf,
    /// Active/passive node check; `None` means a single, always active node.
    pub node: Option<NodeConfig>,
    /// Removal limits.
    pub guard: GuardConfig,
    /// HTTP client settings.
    pub http: HttpConfig,
    /// Prometheus textfile to write after every real run.
    pub metrics_textfile: Option<PathBuf>,
    /// Incremental reads.
    pub delta: DeltaConfig,
    /// Alert mail.
    pub alert: Option<AlertConfig>,
    /// `[credentials]`: per instance, the systemd credentials (`LoadCredential=` names) that
    /// its configs may use when they are not root's word (contract §9).
    pub credentials: BTreeMap<String, Vec<String>>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Program and arguments printing the node's state.
    pub status_command: Vec<String>,
    /// Trimmed outputs that mean "this node is active".
    pub active_states: Vec<String>,
}

/// `[delta]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaConfig {
    /// Read only what changed, where a config allows it.
    pub enabled: bool,
    /// A full read runs anyway when the last one is older than this.
    pub full_sync: Duration,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        let r = RawDelta::default();
        Self { enabled: r.enabled, full_sync: Duration::from_secs(r.full_sync_hours * 3600) }
    }
}

/// `[guard]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Refuse to remove more entries than this from one output.
    pub max_removed: u64,
    /// … or more than this share (percent) of its current entries.
    pub max_removed_percent: u64,
    /// The same limits hold for what an output lost since this long ago (the size it had at
    /// the start of the window), so that many small runs cannot drain it; zero: off.
    pub window: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let r = RawGuard::default();
        Self {
            max_removed: r.max_removed,
            max_removed_percent: r.max_removed_percent,
            window: Duration::from_secs(r.window_hours * 3600),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of 429/503/504 and connection failures.
    pub max_retries: u32,
    /// All of a run's fetches must finish within this.
    pub deadline: Duration,
    /// HTTP requests to Graph in flight at once (each may be a batch of pages).
    pub max_concurrency: usize,
    /// Extra trusted roots (PEM), already read.
    pub ca_bundle: Option<(PathBuf, Vec<u8>)>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let r = RawHttp::default();
        Self {
            timeout: Duration::from_secs(r.timeout_seconds),
            max_retries: r.max_retries,
            deadline: Duration::from_secs(r.deadline_seconds),
            max_concurrency: r.max_concurrency,
            ca_bundle: None,
        }
    }
}

impl Config {
    /// Loads `explicit`, or the default path if it exists, or all defaults; `env` says
    /// where the alert providers' systemd credentials are (or that `check` leaves them).
    pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Self, ConfigError> {
        let path = explicit.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_path_buf);
        let read = crate::files::judged::read(&crate::files::judged::absolute(&path)).and_then(|(b, t)| {
            String::from_utf8(b).map(|s| (s, t)).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        match read {
            Ok((text, Trust::Trusted)) => Self::parse_with(&text, &path, env),
            Ok((_, t)) => {
                let f = path.display();
                Err(ConfigError::new(
                    &path,
                    format!("the global configuration is {t}; it decides where usersync writes and what it runs as root, so it must be trusted"),
                    format!("chown root: {f}; chmod go-w {f}"),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Self::from_raw(RawConfig::default(), None, env)
            }
            Err(e) => Err(ConfigError::new(
                &path,
                format!("cannot read the configuration file: {e}"),
                "check the path given to --config, or leave --config out to use /etc/usersync/usersync.toml (optional)",
            )),
        }
    }

    /// Parses and checks the text of `path`, in the process's environment.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, &Env::from_process())
    }

    fn parse_with(text: &str, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line =
                e.span().map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
            ConfigError::new(
                path,
                format!("{}{line}", quote_in(&e.message().replace("unknown field", "unknown key"))),
                HINT_REFERENCE,
            )
        })?;
        Self::from_raw(raw, Some(path), env)
    }

    #[allow(clippy::too_many_lines)] // one linear check per key
    fn from_raw(raw: RawConfig, path: Option<&Path>, env: &Env) -> Result<Self, ConfigError> {
        let file = path.unwrap_or(Path::new(DEFAULT_PATH));
        let bad = |key: &str, msg: String, hint: &str| ConfigError::new(file, format!("key `{key}`: {msg}"), hint);

        let absolute = |key: &str, p: PathBuf| {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(bad(
                    key,
                    format!("`{}` is not an absolute path", quote(&p.to_string_lossy())),
                    "use an absolute path",
                ))
            }
        };
        let server_root = raw.server_root.map(|p| absolute("server_root", p)).transpose()?;
        let state_dir = absolute("state_dir", raw.state_dir)?;

        let node = match raw.node {
            None => None,
            Some(n) => {
                if n.status_command.first().is_none_or(String::is_empty) {
                    return Err(bad("node.status_command", "is missing or empty".into(), "give the program and its arguments, e.g. [\"/opt/Sec@GW/bin/get_status.sh\", \"/opt/Sec@GW\"], or remove [node] on a single node"));
                }
                if n.active_states.is_empty() {
                    return Err(bad(
                        "node.active_states",
                        "is empty, so no node could ever be active".into(),
                        "list the states that mean active, e.g. [\"ACTIVE\", \"ACTIVE FAKE\"]",
                    ));
                }
                Some(NodeConfig { status_command: n.status_command, active_states: n.active_states })
            }
        };

        let g = raw.guard;
        if g.max_removed_percent > 100 {
            return Err(bad(
                "guard.max_removed_percent",
                format!("{} is more than 100", g.max_removed_percent),
                "use a percentage from 0 to 100",
            ));
        }
        let guard = GuardConfig {
            max_removed: g.max_removed,
            max_removed_percent: g.max_removed_percent,
            window: Duration::from_secs(g.window_hours.saturating_mul(3600)),
        };

        let (h, default) = (raw.http, RawHttp::default());
        let at_least_1 = |key: &str, v: u64, default: u64| {
            if v == 0 {
                Err(bad(key, "must be at least 1".into(), &format!("the default is {default}")))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        let timeout = at_least_1("http.timeout_seconds", h.timeout_seconds, default.timeout_seconds)?;
        let deadline = at_least_1("http.deadline_seconds", h.deadline_seconds, default.deadline_seconds)?;
        if h.max_concurrency == 0 || h.max_concurrency > 64 {
            return Err(bad(
                "http.max_concurrency",
                format!("{} is not from 1 to 64", h.max_concurrency),
                &format!("the default is {}", default.max_concurrency),
            ));
        }
        let ca_bundle = match h.ca_bundle {
            None => None,
            Some(ca) => {
                let bytes =
                    crate::files::judged::read(&crate::files::judged::absolute(&ca)).map(|(b, _)| b).map_err(|e| {
                        bad(
                            "http.ca_bundle",
                            format!("cannot read {}: {e}", ca.display()),
                            "point it at a readable PEM file of extra root certificates, or remove it",
                        )
                    })?;
                if reqwest::Certificate::from_pem_bundle(&bytes).map_or(true, |c| c.is_empty()) {
                    return Err(bad(
                        "http.ca_bundle",
                        format!("{} holds no PEM certificate", ca.display()),
                        "point it at a PEM file (-----BEGIN CERTIFICATE-----)",
                    ));
                }
                Some((ca, bytes))
            }
        };
        let http =
            HttpConfig { timeout, max_retries: h.max_retries, deadline, max_concurrency: h.max_concurrency, ca_bundle };

        let metrics_textfile = raw.metrics.textfile.map(|p| absolute("metrics.textfile", p)).transpose()?;
        if raw.delta.full_sync_hours == 0 {
            return Err(bad(
                "delta.full_sync_hours",
                "must be at least 1".into(),
                &format!(
                    "the default is {}; to read in full every run, set [delta] enabled = false",
                    RawDelta::default().full_sync_hours
                ),
            ));
        }
        let delta = DeltaConfig {
            enabled: raw.delta.enabled,
            full_sync: Duration::from_secs(raw.delta.full_sync_hours.saturating_mul(3600)),
        };
        let alert = raw.alert.map(|a| AlertConfig::from_raw(a, file, env)).transpose()?;
        for (instance, names) in &raw.credentials {
            if instance.is_empty() || instance.contains('/') || instance == "." || instance == ".." {
                return Err(bad(
                    "credentials",
                    format!("`{}` is not an instance name", quote(instance)),
                    "use the name of an instance's directory under the server root",
                ));
            }
            if let Some(n) = names.iter().find(|n| n.is_empty() || n.contains('/') || *n == "." || *n == "..") {
                return Err(bad(
                    &format!("credentials.{instance}"),
                    format!("`{}` is not a credential name", quote(n)),
                    "give the NAME of the unit's LoadCredential=NAME:PATH",
                ));
            }
        }
        Ok(Self {
            path: path.map(Path::to_path_buf),
            server_root,
            state_dir,
            node,
            guard,
            http,
            metrics_textfile,
            delta,
            alert,
            credentials: raw.credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/usersync/usersync.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.guard,
            GuardConfig { max_removed: 500, max_removed_percent: 50, window: Duration::from_secs(24 * 3600) }
        );
        assert_eq!(c.http.max_retries, 6);
        assert!(c.node.is_none());
        let c = parse("[node]\nstatus_command = [\"/bin/true\"]\n").unwrap();
        assert_eq!(c.node.unwrap().active_states, ["ACTIVE", "ACTIVE FAKE"]);
    }

    /// The shipped `/etc/usersync/usersync.toml` shows every default as the code has it.
    #[test]
    fn the_example_shows_the_defaults_of_the_code() {
        let example = include_str!("../../config/usersync.toml");
        let keys: &[(&str, &[&str])] = &[
            ("", &["server_root", "state_dir"]),
            ("guard", &["max_removed", "max_removed_percent", "window_hours"]),
            ("http", &["timeout_seconds", "max_retries", "deadline_seconds", "max_concurrency"]),
            ("delta", &["enabled", "full_sync_hours"]),
        ];
        let mut text = String::new();
        for (section, keys) in keys {
            if !section.is_empty() {
                text += &["[", section, "]\n"].concat();
            }
            for key in *keys {
                text.push_str(&crate::config::example::default_line(example, section, key));
                text.push('\n');
            }
        }
        let (shown, code) = (parse(&text).unwrap(), parse("").unwrap());
        assert_eq!(shown.server_root.as_deref(), Some(Path::new(crate::run::start::DEFAULT_SERVER_ROOT)));
        assert_eq!(shown.state_dir, code.state_dir);
        assert_eq!(shown.guard, code.guard);
        assert_eq!(shown.delta, code.delta);
        let http = |h: &HttpConfig| (h.timeout, h.max_retries, h.deadline, h.max_concurrency);
        assert_eq!(http(&shown.http), http(&code.http));
        // [node] active_states, given a command (the example's is only an example).
        let node = format!(
            "[node]\nstatus_command = [\"/bin/true\"]\n{}\n",
            crate::config::example::default_line(example, "node", "active_states")
        );
        assert_eq!(
            parse(&node).unwrap().node.unwrap().active_states,
            parse("[node]\nstatus_command = [\"/bin/true\"]\n").unwrap().node.unwrap().active_states
        );
    }

    #[test]
    fn unknown_keys_and_sections() {
        assert!(parse("[guard]\nmax_remove = 1\n").unwrap_err().message.contains("unknown key `max_remove`"));
        assert!(parse("[alert]\nfrom = \"a@b\"\n").unwrap_err().message.contains("alert.to"));
        let a = parse("[alert]\nfrom = \"u@gw.example\"\nto = [\"A@x.example\", \"a@x.example\"]\n[[alert.provider]]\nkind = \"smtp\"\nhost = \"relay.example\"\nsecurity = \"none\"\n")
            .unwrap()
            .alert
            .unwrap();
        assert_eq!(a.to.len(), 1, "lower-cased and deduplicated");
        assert!(parse("[alert]\nfrom = \"u@gw.example\"\nto = [\"not an address\"]\n")
            .unwrap_err()
            .message
            .contains("not a mail address"));
        assert!(parse("[metrics]\ntextfile = \"/x.prom\"\n").unwrap().metrics_textfile.is_some());
        assert!(parse("[metrics]\ntextfile = \"x.prom\"\n").is_err());
        assert!(parse("server_root = \"rel\"\n").is_err());
    }
}
