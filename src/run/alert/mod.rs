//! Alert mail when a run fails, and once on recovery (contract §8).
//! Providers are tried in priority order until one delivers; an alert that no
//! provider can deliver is logged and counted, and never changes the exit code.

mod send;

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::alert::AlertConfig;
use crate::config::global::HttpConfig;
use crate::files::state::AlertState;
use crate::run::report::{InstanceOutcome, Report};

/// What a run's outcome calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A failure alert for these (first, or repeated after `repeat_hours`); the others that
    /// recovered in the same run are named in it.
    Failure {
        /// Failing, and due to be told.
        failing: Vec<String>,
        /// Failing before, fine now.
        recovered: Vec<String>,
    },
    /// The first success of these after failures.
    Recovery(Vec<String>),
    /// Nothing to say (or said recently).
    Nothing,
}

/// Whether each instance this run covered is failing (`""` stands for the run itself:
/// stopped before any instance, or not). A passive node's run says nothing; an instance
/// locked by another run is that run's to judge. A run that went through every instance
/// under the server root (`whole_root`) also says that an instance `known` to have failed
/// but no longer there is over: it was removed.
#[must_use]
pub fn statuses(
    report: &Report,
    whole_root: bool,
    known: &std::collections::BTreeMap<String, AlertState>,
) -> std::collections::BTreeMap<String, bool> {
    let mut out = std::collections::BTreeMap::new();
    if report.node.active == Some(false) {
        return out;
    }
    if whole_root && report.errors.is_empty() {
        for name in known.keys().filter(|n| !n.is_empty() && !report.instances.iter().any(|i| &i.name == *n)) {
            out.insert(name.clone(), false);
        }
    }
    out.insert(String::new(), false);
    for e in &report.errors {
        out.insert(e.instance.clone().unwrap_or_default(), true);
    }
    for i in &report.instances {
        match i.outcome {
            InstanceOutcome::Ok | InstanceOutcome::SkippedPassive => {
                out.entry(i.name.clone()).or_insert(false);
            }
            InstanceOutcome::Failed | InstanceOutcome::Refused | InstanceOutcome::ConfigError => {
                out.insert(i.name.clone(), true);
            }
            InstanceOutcome::Locked => {}
        }
    }
    out
}

/// Pure: what to send, given each instance's status this run and what was sent before.
#[must_use]
pub fn decide(
    before: &std::collections::BTreeMap<String, AlertState>,
    now_failing: &std::collections::BTreeMap<String, bool>,
    now: u64,
    repeat: Duration,
) -> Decision {
    let mut failing = Vec::new();
    let mut recovered = Vec::new();
    for (name, &is_failing) in now_failing {
        let state = before.get(name).copied().unwrap_or_default();
        if is_failing {
            let due = state.last_alert.is_none_or(|t| now.saturating_sub(t) >= repeat.as_secs());
            if !state.failing || due {
                failing.push(name.clone());
            }
        } else if state.failing {
            recovered.push(name.clone());
        }
    }
    match (failing.is_empty(), recovered.is_empty()) {
        (false, _) => Decision::Failure { failing, recovered },
        (true, false) => Decision::Recovery(recovered),
        (true, true) => Decision::Nothing,
    }
}

/// The alert state after a run whose statuses are `now_failing`, given `decision` and
/// whether its mail was delivered: an alert that was not delivered is due again next run.
pub fn update(
    states: &mut std::collections::BTreeMap<String, AlertState>,
    now_failing: &std::collections::BTreeMap<String, bool>,
    decision: &Decision,
    delivered: bool,
    now: u64,
) {
    for (name, &is_failing) in now_failing {
        if is_failing {
            states.entry(name.clone()).or_default().failing = true;
        }
    }
    if !delivered {
        return;
    }
    let (told, recovered): (&[String], &[String]) = match decision {
        Decision::Failure { failing, recovered } => (failing, recovered),
        Decision::Recovery(recovered) => (&[], recovered),
        Decision::Nothing => (&[], &[]),
    };
    for name in told {
        states.entry(name.clone()).or_default().last_alert = Some(now);
    }
    for name in recovered {
        states.remove(name);
    }
}

/// A composed alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// This host's name, for subjects.
#[must_use]
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

const EXIT_MEANING: [(u8, &str); 5] = [
    (0, "success"),
    (1, "a runtime failure"),
    (2, "a configuration error"),
    (3, "a guard refused a write"),
    (75, "an instance was locked by another run"),
];

/// The failure or recovery message for `report`.
#[must_use]
pub fn compose(decision: &Decision, report: &Report, host: &str, repeat: Duration) -> Mail {
    let meaning = EXIT_MEANING.iter().find(|(c, _)| *c == report.exit_code).map_or("unknown", |(_, m)| m);
    let troubled: Vec<String> = report
        .instances
        .iter()
        .filter(|i| i.outcome != InstanceOutcome::Ok)
        .map(|i| format!("{} {}", crate::error::escape_controls(&i.name), i.outcome))
        .collect();
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| if n.is_empty() { "the run".to_owned() } else { crate::error::escape_controls(n) })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let subject = match decision {
        Decision::Recovery(recovered) => format!("[usersync] {host}: recovered: {}", list(recovered)),
        _ if troubled.is_empty() => format!("[usersync] {host}: {meaning} (exit {})", report.exit_code),
        _ => format!("[usersync] {host}: {} (exit {})", troubled.join(", "), report.exit_code),
    };
    let mut body = String::new();
    let _ = writeln!(body, "usersync on {host} finished with exit code {} ({meaning}).\n", report.exit_code);
    for e in &report.errors {
        let _ = writeln!(body, "{}\n", crate::error::render_message(&e.message, e.hint.as_deref()));
    }
    for i in &report.instances {
        let _ = writeln!(body, "instance {}: {}", crate::error::escape_controls(&i.name), i.outcome);
        for e in &i.errors {
            for line in crate::error::render_message(&e.message, e.hint.as_deref()).lines() {
                let _ = writeln!(body, "  {line}");
            }
        }
        for o in &i.outputs {
            let counts = match (o.before, o.after) {
                (Some(b), Some(a)) => format!(" ({b} -> {a} entries, +{} -{})", o.added_count, o.removed_count),
                _ => String::new(),
            };
            let _ = writeln!(
                body,
                "  {} {}: {:?}{counts}",
                o.output,
                crate::error::escape_controls(&o.path.display().to_string()),
                o.action
            );
        }
        body.push('\n');
    }
    if let Decision::Recovery(recovered) = decision {
        let _ = writeln!(body, "The failure reported earlier is over for {}.", list(recovered));
    } else {
        if let Decision::Failure { recovered, .. } = decision {
            if !recovered.is_empty() {
                let _ = writeln!(body, "Recovered since the last alert: {}.\n", list(recovered));
            }
        }
        let _ =
            writeln!(body, "While this goes on, this alert is repeated at most every {} h.", repeat.as_secs() / 3600);
    }
    Mail { subject, body }
}

/// What happened to one provider.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The provider's label.
    pub provider: String,
    /// `Ok` if delivered, else why not (with a hint where there is one).
    pub result: Result<(), String>,
}

/// Tries the providers in order until one delivers (`all = false`), or every one (`all = true`).
pub fn deliver(cfg: &AlertConfig, http: &HttpConfig, mail: &Mail, all: bool) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for p in &cfg.providers {
        let result = send::send(p, cfg, http, mail);
        match &result {
            Ok(()) => tracing::info!(provider = %p.label(), subject = %mail.subject, "alert delivered"),
            Err(e) => tracing::warn!(provider = %p.label(), error = %e, "alert not delivered by this provider"),
        }
        let delivered = result.is_ok();
        attempts.push(Attempt { provider: p.label(), result });
        if delivered && !all {
            break;
        }
    }
    attempts
}

/// After a real run: decide, send, update `states` (per instance). Returns `true` if an
/// alert was due and no provider delivered it.
pub fn after_run(
    cfg: &AlertConfig,
    http: &HttpConfig,
    report: &Report,
    states: &mut std::collections::BTreeMap<String, AlertState>,
    now: u64,
    whole_root: bool,
) -> bool {
    let now_failing = statuses(report, whole_root, states);
    let decision = decide(states, &now_failing, now, cfg.repeat);
    if decision == Decision::Nothing {
        update(states, &now_failing, &decision, true, now);
        return false;
    }
    let mail = compose(&decision, report, &hostname(), cfg.repeat);
    let delivered = deliver(cfg, http, &mail, false).iter().any(|a| a.result.is_ok());
    update(states, &now_failing, &decision, delivered, now);
    if !delivered {
        tracing::error!(subject = %mail.subject, "no alert provider could deliver the alert; see the warnings above");
    }
    !delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn decisions_are_per_instance() {
        use std::collections::BTreeMap;
        let of = |v: &[(&str, bool)]| v.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect::<BTreeMap<_, _>>();
        let failing = AlertState { failing: true, last_alert: Some(1_000) };
        let none = BTreeMap::new();
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            decide(&none, &of(&[("a", true)]), 2_000, DAY),
            Decision::Failure { failing: names(&["a"]), recovered: vec![] }
        );
        assert_eq!(decide(&none, &of(&[("a", false)]), 2_000, DAY), Decision::Nothing);
        let a_failing = BTreeMap::from([("a".to_owned(), failing)]);
        assert_eq!(decide(&a_failing, &of(&[("a", true)]), 2_000, DAY), Decision::Nothing, "inside repeat_hours");
        assert!(matches!(decide(&a_failing, &of(&[("a", true)]), 1_000 + 86_400, DAY), Decision::Failure { .. }));
        assert_eq!(decide(&a_failing, &of(&[("a", false)]), 2_000, DAY), Decision::Recovery(names(&["a"])));
        // Another instance syncing says nothing about `a`.
        assert_eq!(decide(&a_failing, &of(&[("", false), ("b", false)]), 2_000, DAY), Decision::Nothing);
        let undelivered = BTreeMap::from([("a".to_owned(), AlertState { failing: true, last_alert: None })]);
        assert!(matches!(decide(&undelivered, &of(&[("a", true)]), 2_000, DAY), Decision::Failure { .. }));
        // The state follows what was delivered.
        let mut st = BTreeMap::new();
        let d = decide(&st, &of(&[("a", true)]), 5, DAY);
        update(&mut st, &of(&[("a", true)]), &d, false, 5);
        assert_eq!(st["a"], AlertState { failing: true, last_alert: None }, "not delivered: due again");
        update(&mut st, &of(&[("a", true)]), &d, true, 6);
        assert_eq!(st["a"], AlertState { failing: true, last_alert: Some(6) });
        let d = decide(&st, &of(&[("a", false)]), 7, DAY);
        update(&mut st, &of(&[("a", false)]), &d, true, 7);
        assert!(st.is_empty());
    }

    #[test]
    fn a_removed_instance_recovers_only_in_a_run_over_the_whole_root() {
        use std::collections::BTreeMap;
        let known = BTreeMap::from([("gone".to_owned(), AlertState { failing: true, last_alert: Some(1) })]);
        let report = Report::default();
        assert_eq!(statuses(&report, true, &known).get("gone"), Some(&false), "not under the root any more");
        assert_eq!(statuses(&report, false, &known).get("gone"), None, "-i: the others are not this run's to judge");
        let fatal = Report {
            errors: vec![crate::run::report::ErrorReport { message: "x".into(), hint: None, instance: None }],
            ..Report::default()
        };
        assert_eq!(statuses(&fatal, true, &known).get("gone"), None, "a run stopped early saw no instance");
    }

    #[test]
    fn compose_escapes_and_names_everything() {
        let mut r = Report { exit_code: 1, ..Report::default() };
        r.instances.push(crate::run::report::InstanceReport {
            name: "gw\u{1b}1".into(),
            outcome: InstanceOutcome::Failed,
            reads: vec![],
            locked_since: None,
            outputs: vec![],
            skipped: std::collections::BTreeMap::new(),
            errors: vec![crate::run::report::ErrorReport {
                message: "boom\r\nX-Injected: 1".into(),
                hint: Some("fix it".into()),
                instance: None,
            }],
        });
        let m = compose(&Decision::Failure { failing: vec!["gw\u{1b}1".into()], recovered: vec![] }, &r, "gw01", DAY);
        assert_eq!(m.subject, "[usersync] gw01: gw\\u{1b}1 failed (exit 1)");
        // A message is one line: no value adds a line (or a header) of its own.
        assert!(m.body.contains("boom\\r\\nX-Injected: 1") && m.body.contains("hint: fix it"), "{}", m.body);
        assert!(!m.body.lines().any(|l| l.starts_with("X-Injected")), "{}", m.body);
        assert!(m.body.contains("at most every 24 h"));
    }
}
