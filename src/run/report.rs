//! What a run did, per instance and output: text or one JSON document on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::Format;
use crate::error::{escape_controls, Outcome};
use crate::model::normalize::SkipReason;
use crate::model::output::Output;
use crate::plan::OutputPlan;

/// What was done to an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Replaced with new content.
    Written,
    /// Content would not change; the file was not touched.
    Unchanged,
    /// A dry run: it would be written.
    DryRun,
    /// A guard refused the instance's write.
    Refused,
    /// The fetch or the write failed.
    Failed,
    /// The node turned passive before the write.
    SkippedPassive,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Unchanged => "unchanged",
            Self::DryRun => "dry-run",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::SkippedPassive => "skipped-passive",
        }
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceOutcome {
    /// Synced (or, in a dry run, would be).
    Ok,
    /// A fetch, a read or a write failed.
    Failed,
    /// A guard refused its write.
    Refused,
    /// Another run holds its lock.
    Locked,
    /// The node turned passive before its write.
    SkippedPassive,
    /// Its configuration is wrong: nothing of it was contacted or written (the other
    /// instances go on: one instance's config, which the gateway's account may write, never
    /// stops another's list).
    ConfigError,
}

impl InstanceOutcome {
    /// How it counts towards the exit code.
    #[must_use]
    pub fn exit(self) -> Outcome {
        match self {
            Self::Ok | Self::SkippedPassive => Outcome::Success,
            Self::Failed => Outcome::Failed,
            Self::Refused => Outcome::Refused,
            Self::Locked => Outcome::Locked,
            Self::ConfigError => Outcome::Config,
        }
    }

    /// Its name in reports.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::Locked => "locked",
            Self::SkippedPassive => "skipped-passive",
            Self::ConfigError => "config-error",
        }
    }
}

impl std::fmt::Display for InstanceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// One output of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    /// Which output (`feeds` name).
    pub output: Output,
    /// Its path.
    pub path: PathBuf,
    /// Entries before (absent if unknown).
    pub before: Option<usize>,
    /// Entries after (absent if nothing was planned).
    pub after: Option<usize>,
    /// How many entries were (or would be) added.
    pub added_count: usize,
    /// How many entries were (or would be) removed.
    pub removed_count: usize,
    /// The entries added; listed in a dry run and in JSON only.
    pub added: Vec<String>,
    /// The entries removed; listed in a dry run and in JSON only.
    pub removed: Vec<String>,
    /// Members skipped, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// What was done.
    pub action: Action,
}

impl OutputReport {
    /// From a plan (consumed: its entries move here, its content is dropped) and the action taken.
    #[must_use]
    pub fn planned(p: OutputPlan, action: Action) -> Self {
        Self {
            output: p.output,
            path: p.path,
            before: Some(p.before),
            after: Some(p.after),
            added_count: p.added,
            removed_count: p.removed,
            added: p.changes.added,
            removed: p.changes.removed,
            skipped: p.skipped,
            action,
        }
    }

    /// An output nothing could be planned for.
    #[must_use]
    pub fn unplanned(output: Output, path: PathBuf, action: Action) -> Self {
        Self {
            output,
            path,
            before: None,
            after: None,
            added_count: 0,
            removed_count: 0,
            added: vec![],
            removed: vec![],
            skipped: BTreeMap::new(),
            action,
        }
    }
}

/// An error, as the report carries it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    /// The message.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The instance it belongs to, if one (for the alert state; not in the JSON report).
    #[serde(skip)]
    pub instance: Option<String>,
}

/// One instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    /// Directory name.
    pub name: String,
    /// How it ended.
    pub outcome: InstanceOutcome,
    /// Its outputs.
    pub outputs: Vec<OutputReport>,
    /// Members skipped, by reason, counted once per config (not per output).
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Its errors.
    pub errors: Vec<ErrorReport>,
    /// How each config's group was read.
    pub reads: Vec<ReadReport>,
    /// Its lock was held by another run, as runs found it since this time (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_since: Option<u64>,
}

/// How one config's group was read.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// The `.entraidconf` file.
    pub config: PathBuf,
    /// `full` or `delta`.
    pub read: &'static str,
    /// Why in full: `first`, `resync:<reason>`, `safety-net`, `disabled` or `nested`.
    pub reason: Option<String>,
    /// Graph requests made for the group (a users round counts for each group of its app).
    pub requests: u64,
    /// A safety-net read: members the delta state had wrong.
    pub drift: Option<u64>,
    /// A delta read: users of the app that changed outside its synced groups (ignored).
    pub ignored_user_changes: Option<u64>,
}

/// A client credential whose expiry is known: a config's, or an alert provider's.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialReport {
    /// The instance, for a `.entraidconf`'s credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The file that sets it: the `.entraidconf`, or `usersync.toml` for an alert provider.
    pub config: PathBuf,
    /// The alert provider (`smtp-oauth smtp.office365.com:587`), for a provider's credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `certificate` or `secret`.
    pub kind: &'static str,
    /// Unix time it expires.
    pub expires: i64,
}

/// The node check.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NodeReport {
    /// A status command ran.
    pub checked: bool,
    /// Its verdict, if it gave one.
    pub active: Option<bool>,
    /// Its trimmed output.
    pub state: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `--dry-run` was given.
    pub dry_run: bool,
    /// The process exit code.
    pub exit_code: u8,
    /// The node check.
    pub node: NodeReport,
    /// HTTP requests sent (token and Graph, retries included).
    pub graph_requests: u64,
    /// Of which retries.
    pub graph_retries: u64,
    /// The highest share of its throttling limit Graph said the app had used
    /// (`x-ms-throttle-limit-percentage`; Graph sends it from 0.8 on), if it said so.
    pub graph_throttle_limit: Option<f64>,
    /// Per instance.
    pub instances: Vec<InstanceReport>,
    /// Client credentials with a known expiry.
    pub credentials: Vec<CredentialReport>,
    /// Errors that stopped the run before any instance (configuration, node check).
    pub errors: Vec<ErrorReport>,
}

impl Report {
    /// The report as it goes to stdout. In text, a real run in which nothing changed and
    /// nothing failed is one line, unless `detail` (`-v`) asks for every config and output.
    #[must_use]
    pub fn render(&self, format: Format, detail: bool) -> String {
        match format {
            Format::Json => serde_json::to_string_pretty(self).map(|s| s + "\n").unwrap_or_default(),
            Format::Text if !detail && self.nothing_changed() => self.summary(),
            Format::Text => self.text(),
        }
    }

    /// A real run on an active node where every instance ended `ok` with every output
    /// unchanged.
    fn nothing_changed(&self) -> bool {
        !self.dry_run
            && self.errors.is_empty()
            && self.node.active != Some(false)
            && !self.instances.is_empty()
            && self.instances.iter().all(|i| {
                i.outcome == InstanceOutcome::Ok
                    && i.errors.is_empty()
                    && i.outputs.iter().all(|o| o.action == Action::Unchanged)
            })
    }

    /// `unchanged: 2 instances, 6 lists, 5 HTTP requests` (token requests included)
    fn summary(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let lists = self.instances.iter().map(|i| i.outputs.len()).sum();
        format!(
            "unchanged: {}, {}, {}\n",
            plural(self.instances.len(), "instance", "instances"),
            plural(lists, "list", "lists"),
            plural(usize::try_from(self.graph_requests).unwrap_or(usize::MAX), "HTTP request", "HTTP requests"),
        )
    }

    fn text(&self) -> String {
        let mut s = String::new();
        if self.node.active == Some(false) {
            let state = self.node.state.as_deref().unwrap_or_default().escape_debug().to_string();
            if self.dry_run {
                let _ = writeln!(s, "node is passive (`{state}`): a real run would write nothing");
            } else {
                let _ = writeln!(s, "node is passive (`{state}`): nothing contacted, nothing written");
            }
        }
        for i in &self.instances {
            if i.outputs.is_empty() {
                let _ = writeln!(s, "{}: {}", escape_controls(&i.name), i.outcome);
            }
            for r in &i.reads {
                let (name, config) = (escape_controls(&i.name), escape_controls(&r.config.display().to_string()));
                let _ = write!(s, "{name}: config {config}: {} read", r.read);
                if let Some(reason) = &r.reason {
                    let _ = write!(s, " ({reason})");
                }
                let _ = write!(s, ", {} request{}", r.requests, if r.requests == 1 { "" } else { "s" });
                if let Some(d) = r.drift {
                    let _ = write!(s, ", {d} members drifted");
                }
                s.push('\n');
            }
            for o in &i.outputs {
                let (name, path) = (escape_controls(&i.name), escape_controls(&o.path.display().to_string()));
                let _ = write!(s, "{name}: {} {path}: {}", o.output, o.action.word());
                if let (Some(b), Some(a)) = (o.before, o.after) {
                    let _ = write!(s, " ({b} -> {a} entries, +{} -{}", o.added_count, o.removed_count);
                    if !o.skipped.is_empty() {
                        let parts: Vec<String> = o.skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
                        let _ = write!(s, "; skipped: {}", parts.join(", "));
                    }
                    s.push(')');
                }
                s.push('\n');
                if self.dry_run {
                    for a in &o.added {
                        let _ = writeln!(s, "+ {a}");
                    }
                    for r in &o.removed {
                        let _ = writeln!(s, "- {r}");
                    }
                }
            }
        }
        s
    }
}
