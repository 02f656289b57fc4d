//! Alert mail when a run fails, and once on recovery (contract §8).
//! Providers are tried in priority order until one delivers; an alert that no
//! provider can deliver is logged and counted, and never changes the exit code.

mod send;

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::alert::AlertConfig;
use crate::config::HttpConfig;
use crate::report::{InstanceOutcome, Report};
use crate::state::AlertState;

/// What a run's outcome calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A failure alert (first, or repeated after `repeat_hours`).
    Failure,
    /// The first success after failures.
    Recovery,
    /// Nothing to say (or said recently).
    Nothing,
}

/// Pure: what to send for a run that ended with `exit`, given what was sent before.
#[must_use]
pub fn decide(state: &AlertState, exit: u8, now: u64, repeat: Duration) -> Decision {
    match exit {
        1..=3 => {
            let due = state.last_alert.is_none_or(|t| now.saturating_sub(t) >= repeat.as_secs());
            if !state.failing || due {
                Decision::Failure
            } else {
                Decision::Nothing
            }
        }
        0 if state.failing => Decision::Recovery,
        _ => Decision::Nothing,
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

/// Control characters in text from the directory or a server, made visible.
#[must_use]
pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_control() && c != '\n' { c.escape_debug().collect::<Vec<_>>() } else { vec![c] })
        .collect()
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
pub fn compose(decision: Decision, report: &Report, host: &str, repeat: Duration) -> Mail {
    let meaning = EXIT_MEANING.iter().find(|(c, _)| *c == report.exit_code).map_or("unknown", |(_, m)| m);
    let troubled: Vec<String> = report
        .instances
        .iter()
        .filter(|i| i.outcome != InstanceOutcome::Ok)
        .map(|i| format!("{} {}", clean(&i.name), i.outcome))
        .collect();
    let subject = match decision {
        Decision::Recovery => format!("[usersync] {host}: recovered, all instances synced"),
        _ if troubled.is_empty() => format!("[usersync] {host}: {meaning} (exit {})", report.exit_code),
        _ => format!("[usersync] {host}: {} (exit {})", troubled.join(", "), report.exit_code),
    };
    let mut body = String::new();
    let _ = writeln!(body, "usersync on {host} finished with exit code {} ({meaning}).\n", report.exit_code);
    for e in &report.errors {
        let _ = writeln!(body, "error: {}", clean(&e.message));
        if let Some(h) = &e.hint {
            let _ = writeln!(body, "hint: {}", clean(h));
        }
        body.push('\n');
    }
    for i in &report.instances {
        let _ = writeln!(body, "instance {}: {}", clean(&i.name), i.outcome);
        for e in &i.errors {
            let _ = writeln!(body, "  error: {}", clean(&e.message));
            if let Some(h) = &e.hint {
                let _ = writeln!(body, "  hint: {}", clean(h));
            }
        }
        for o in &i.outputs {
            let counts = match (o.before, o.after) {
                (Some(b), Some(a)) => format!(" ({b} -> {a} entries, +{} -{})", o.added_count, o.removed_count),
                _ => String::new(),
            };
            let _ = writeln!(body, "  {} {}: {:?}{counts}", o.output, clean(&o.path.display().to_string()), o.action);
        }
        body.push('\n');
    }
    match decision {
        Decision::Recovery => body.push_str("The failure reported earlier is over.\n"),
        _ => {
            let _ = writeln!(
                body,
                "While this goes on, this alert is repeated at most every {} h.",
                repeat.as_secs() / 3600
            );
        }
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

/// After a real run: decide, send, update `state`. Returns `true` if an alert
/// was due and no provider delivered it.
pub fn after_run(cfg: &AlertConfig, http: &HttpConfig, report: &Report, state: &mut AlertState, now: u64) -> bool {
    // A passive node's run says nothing about the sync.
    if report.node.active == Some(false) {
        return false;
    }
    let decision = decide(state, report.exit_code, now, cfg.repeat);
    if report.exit_code != 0 && report.exit_code != 75 {
        state.failing = true;
    }
    if decision == Decision::Nothing {
        return false;
    }
    let mail = compose(decision, report, &hostname(), cfg.repeat);
    let delivered = deliver(cfg, http, &mail, false).iter().any(|a| a.result.is_ok());
    if !delivered {
        tracing::error!(subject = %mail.subject, "no alert provider could deliver the alert; see the warnings above");
        return true;
    }
    match decision {
        Decision::Failure => state.last_alert = Some(now),
        Decision::Recovery => *state = AlertState::default(),
        Decision::Nothing => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn decisions() {
        let ok = AlertState::default();
        let failing = AlertState { failing: true, last_alert: Some(1_000) };
        assert_eq!(decide(&ok, 1, 2_000, DAY), Decision::Failure);
        assert_eq!(decide(&ok, 3, 2_000, DAY), Decision::Failure);
        assert_eq!(decide(&ok, 0, 2_000, DAY), Decision::Nothing);
        assert_eq!(decide(&ok, 75, 2_000, DAY), Decision::Nothing);
        assert_eq!(decide(&failing, 1, 2_000, DAY), Decision::Nothing, "inside repeat_hours");
        assert_eq!(decide(&failing, 2, 1_000 + 86_400, DAY), Decision::Failure, "repeated after repeat_hours");
        assert_eq!(decide(&failing, 0, 2_000, DAY), Decision::Recovery);
        let undelivered = AlertState { failing: true, last_alert: None };
        assert_eq!(decide(&undelivered, 1, 2_000, DAY), Decision::Failure, "an undelivered alert is tried again");
    }

    #[test]
    fn compose_escapes_and_names_everything() {
        let mut r = Report { exit_code: 1, ..Report::default() };
        r.instances.push(crate::report::InstanceReport {
            name: "gw\u{1b}1".into(),
            outcome: InstanceOutcome::Failed,
            reads: vec![],
            outputs: vec![],
            skipped: std::collections::BTreeMap::new(),
            errors: vec![crate::report::ErrorReport {
                message: "boom\r\nX-Injected: 1".into(),
                hint: Some("fix it".into()),
            }],
        });
        let m = compose(Decision::Failure, &r, "gw01", DAY);
        assert_eq!(m.subject, "[usersync] gw01: gw\\u{1b}1 failed (exit 1)");
        assert!(m.body.contains("boom\\r\nX-Injected: 1") && m.body.contains("hint: fix it"), "{}", m.body);
        assert!(m.body.contains("at most every 24 h"));
    }
}
