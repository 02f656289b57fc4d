//! The Prometheus node-exporter textfile written after every real run (`[metrics] textfile`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::files::state::State;
use crate::run::report::{InstanceOutcome, Report};

/// What the textfile is made from.
pub struct RunFacts<'a> {
    /// The run's report.
    pub report: &'a Report,
    /// The state after this run.
    pub state: &'a State,
    /// Unix time at the end of the run.
    pub now: f64,
    /// How long the run took.
    pub duration: f64,
    /// An alert was due and no provider delivered it.
    pub alert_failed: bool,
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.out, "{name}{labels} {value}");
        self
    }
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// When each credential of a known expiry expires.
#[allow(clippy::cast_precision_loss)] // Unix times far below 2^52
fn credentials(m: &mut Family<'_>, r: &Report) {
    m.head(
        "usersync_credential_expiry_timestamp_seconds",
        "gauge",
        "Unix time a config's or an alert provider's client certificate (or recorded client secret) expires.",
    );
    for c in &r.credentials {
        let config = c.config.display().to_string();
        let owner = match (&c.instance, &c.provider) {
            (_, Some(provider)) => ("provider", provider.as_str()),
            (Some(instance), None) => ("instance", instance.as_str()),
            (None, None) => continue,
        };
        m.sample("usersync_credential_expiry_timestamp_seconds", &[owner, ("config", &config)], c.expires as f64);
    }
}

/// The last run's Graph figures: requests, retries, and how close to throttling the app is.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn graph_families(m: &mut Family<'_>, r: &crate::run::report::Report) {
    // Gauges: each run writes its own count; a counter would have to keep growing.
    m.head(
        "usersync_last_run_graph_requests",
        "gauge",
        "HTTP requests to Entra ID and Graph in the last run, retries included (a JSON batch counts once).",
    )
    .sample("usersync_last_run_graph_requests", &[], r.graph_requests as f64);
    m.head("usersync_last_run_graph_retries", "gauge", "Retried requests in the last run.").sample(
        "usersync_last_run_graph_retries",
        &[],
        r.graph_retries as f64,
    );
    m.head(
        "usersync_graph_throttle_limit_ratio",
        "gauge",
        "The highest share of its throttling limit Graph said the app had used in the last run (x-ms-throttle-limit-percentage, sent from 0.8 on; 1 is where throttling starts); 0 when Graph said nothing.",
    )
    .sample("usersync_graph_throttle_limit_ratio", &[], r.graph_throttle_limit.unwrap_or(0.0));
}

/// The textfile's content.
#[must_use]
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
pub fn render(f: &RunFacts<'_>) -> String {
    let r = f.report;
    let mut text = String::new();
    let mut m = Family { out: &mut text };
    m.head("usersync_last_run_timestamp_seconds", "gauge", "Unix time the last run ended.").sample(
        "usersync_last_run_timestamp_seconds",
        &[],
        f.now,
    );
    m.head(
        "usersync_last_run_exit_code",
        "gauge",
        "Exit code of the last run (0 ok, 1 failure, 2 config, 3 guard, 75 locked).",
    )
    .sample("usersync_last_run_exit_code", &[], f64::from(r.exit_code));
    m.head("usersync_run_duration_seconds", "gauge", "How long the last run took.").sample(
        "usersync_run_duration_seconds",
        &[],
        f.duration,
    );
    if r.node.active.is_some() || !r.node.checked {
        m.head("usersync_node_active", "gauge", "1 if this node was active (or has no node check) in the last run.")
            .sample("usersync_node_active", &[], if r.node.active == Some(false) { 0.0 } else { 1.0 });
    }
    graph_families(&mut m, r);

    delta_families(&mut m, f.state);
    m.head(
        "usersync_alert_delivery_failed",
        "gauge",
        "1 if the last run had an alert to send and no provider delivered it.",
    )
    .sample("usersync_alert_delivery_failed", &[], if f.alert_failed { 1.0 } else { 0.0 });
    m.head("usersync_last_success_timestamp_seconds", "gauge", "Unix time of the instance's last successful sync.");
    for (instance, t) in &f.state.last_success {
        m.sample("usersync_last_success_timestamp_seconds", &[("instance", instance)], *t as f64);
    }
    // Instances this run did not reach (a passive node, a config error) are not up.
    let mut up: BTreeMap<&str, bool> = f.state.last_success.keys().map(|i| (i.as_str(), false)).collect();
    for i in &r.instances {
        up.insert(&i.name, i.outcome == InstanceOutcome::Ok);
    }
    if r.node.active == Some(false) && !r.dry_run {
        up.clear();
    }
    m.head("usersync_instance_up", "gauge", "1 if the instance's last run succeeded.");
    for (instance, ok) in &up {
        m.sample("usersync_instance_up", &[("instance", instance)], if *ok { 1.0 } else { 0.0 });
    }
    m.head("usersync_guard_refused", "gauge", "1 if a guard refused the instance's write in the last run.");
    for i in &r.instances {
        m.sample(
            "usersync_guard_refused",
            &[("instance", &i.name)],
            if i.outcome == InstanceOutcome::Refused { 1.0 } else { 0.0 },
        );
    }
    let outputs = || r.instances.iter().flat_map(|i| i.outputs.iter().map(move |o| (i.name.as_str(), o)));
    for (name, help, value) in [
        ("usersync_entries", "Entries in the output after the last run.", 0),
        ("usersync_last_added", "Entries the last run added to the output.", 1),
        ("usersync_last_removed", "Entries the last run removed from the output.", 2),
    ] {
        m.head(name, "gauge", help);
        for (instance, o) in outputs() {
            let written = matches!(o.action, crate::run::report::Action::Written);
            let v = match value {
                0 => {
                    if written || matches!(o.action, crate::run::report::Action::Unchanged) {
                        o.after
                    } else {
                        o.before
                    }
                }
                1 if written => Some(o.added_count),
                2 if written => Some(o.removed_count),
                _ => Some(0),
            };
            if let Some(v) = v {
                m.sample(name, &[("instance", instance), ("output", o.output.name())], v as f64);
            }
        }
    }
    credentials(&mut m, r);
    m.head("usersync_skipped_entries", "gauge", "Members the last run skipped, by reason.");
    for i in &r.instances {
        for (reason, n) in &i.skipped {
            m.sample("usersync_skipped_entries", &[("instance", &i.name), ("reason", reason.name())], *n as f64);
        }
    }
    text
}
/// The delta families, from what `state_dir` keeps.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn delta_families(m: &mut Family<'_>, state: &State) {
    // Kept in state_dir, so a real counter: it only grows.
    m.head(
        "usersync_delta_resyncs",
        "counter",
        "Times a config's delta links were found no good and its group read in full, by reason.",
    );
    for (instance, configs) in &state.delta_resyncs {
        for (config, reasons) in configs {
            for (reason, n) in reasons {
                m.sample(
                    "usersync_delta_resyncs",
                    &[("instance", instance), ("config", config), ("reason", reason)],
                    *n as f64,
                );
            }
        }
    }
    m.head(
        "usersync_delta_drift_entries",
        "gauge",
        "Members the delta state had wrong at the config's last safety-net full read.",
    );
    for (instance, configs) in &state.delta_drift {
        for (config, n) in configs {
            m.sample("usersync_delta_drift_entries", &[("instance", instance), ("config", config)], *n as f64);
        }
    }
}
