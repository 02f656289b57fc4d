//! The Prometheus textfile after successful, failed, refused and passive runs,
//! read back with a real text-format parser.

#![allow(clippy::float_cmp)] // the values are small integers and timestamps, exact in f64

use std::collections::HashMap;

use prometheus_parse::{Scrape, Value as Sample};

use crate::util::*;

fn with_metrics(r: Run, extra: &str) -> Run {
    let prom = r.path().join("usersync.prom");
    r.global(&format!("[metrics]\ntextfile = \"{}\"\n[http]\nmax_retries = 0\n{extra}", prom.display()))
}

/// `name{label=value,…}` → value, for every sample; and a check that every family has HELP and TYPE.
fn scrape(r: &Run) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(r.path().join("usersync.prom")).expect("textfile written");
    let s = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid text format");
    // A counter must only grow: only what state_dir keeps across runs may be one. Every
    // other value is the last run's, which a counter would reset each run.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter")) {
        assert_eq!(line, "# TYPE usersync_delta_resyncs counter", "only a kept count may be a counter:\n{text}");
    }
    let mut out = HashMap::new();
    for sample in &s.samples {
        assert!(text.contains(&format!("# HELP {} ", sample.metric)), "{} has no HELP", sample.metric);
        assert!(text.contains(&format!("# TYPE {} ", sample.metric)), "{} has no TYPE", sample.metric);
        let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let (Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v)) = sample.value else {
            panic!("unexpected type")
        };
        out.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), v);
    }
    out
}

#[test]
fn a_successful_run_then_a_failed_one() {
    let mut r = with_metrics(one_conf(), "").expect_exit(0);
    r.run();
    let m = scrape(&r);
    assert_eq!(m["usersync_last_run_exit_code{}"], 0.0);
    assert_eq!(m["usersync_node_active{}"], 1.0);
    assert_eq!(m["usersync_instance_up{instance=gw}"], 1.0);
    assert_eq!(m["usersync_guard_refused{instance=gw}"], 0.0);
    assert_eq!(m["usersync_entries{instance=gw,output=allowed_senders}"], 2.0);
    assert_eq!(m["usersync_last_added{instance=gw,output=allowed_senders}"], 2.0);
    assert_eq!(m["usersync_last_removed{instance=gw,output=allowed_senders}"], 0.0);
    assert_eq!(m["usersync_skipped_entries{instance=gw,reason=no-mail}"], 1.0);
    assert_eq!(m["usersync_skipped_entries{instance=gw,reason=disabled}"], 1.0);
    assert_eq!(m["usersync_skipped_entries{instance=gw,reason=device}"], 1.0);
    // A token, the two delta links a first run takes before its full read, one page.
    assert_eq!(m["usersync_last_run_graph_requests{}"], 4.0);
    assert_eq!(m["usersync_last_run_graph_retries{}"], 0.0);
    assert!(m["usersync_run_duration_seconds{}"] > 0.0);
    let success = m["usersync_last_success_timestamp_seconds{instance=gw}"];
    assert!((success - m["usersync_last_run_timestamp_seconds{}"]).abs() < 2.0);

    r.fail_once(503);
    r = r.expect_exit(1);
    r.run();
    let m = scrape(&r);
    assert_eq!(m["usersync_last_run_exit_code{}"], 1.0);
    assert_eq!(m["usersync_instance_up{instance=gw}"], 0.0);
    assert_eq!(m["usersync_last_success_timestamp_seconds{instance=gw}"], success, "kept from the state");
    assert!(!m.contains_key("usersync_entries{instance=gw,output=allowed_senders}"), "unknown after a failed fetch");
}

#[test]
fn a_guard_refusal_is_visible() {
    let mut r = with_metrics(one_conf(), "").file(SENDERS, "last@example.com\n");
    r.sim.state().directory.groups.insert(STAFF.into(), vec![]);
    r = r.expect_exit(3);
    r.run();
    let m = scrape(&r);
    assert_eq!(m["usersync_guard_refused{instance=gw}"], 1.0);
    assert_eq!(m["usersync_instance_up{instance=gw}"], 0.0);
    assert_eq!(m["usersync_entries{instance=gw,output=allowed_senders}"], 1.0, "the file keeps its entry");
    assert_eq!(m["usersync_last_run_exit_code{}"], 3.0);
}

#[test]
fn a_passive_run_and_a_config_error_still_write_the_textfile() {
    let mut r = with_metrics(one_conf(), "").expect_exit(0);
    r.run();
    let mut r = with_metrics(r, "[node]\nstatus_command = [\"/bin/echo\", \"PASSIVE\"]\n").expect_exit(0);
    r.run();
    let m = scrape(&r);
    assert_eq!(m["usersync_node_active{}"], 0.0);
    assert!(m.contains_key("usersync_last_success_timestamp_seconds{instance=gw}"));
    assert!(!m.contains_key("usersync_instance_up{instance=gw}"), "a passive node says nothing of instances");
    let mut r = with_metrics(r, "").conf("gw", "broken", "colour = 1\n").expect_exit(2);
    r.run();
    let m = scrape(&r);
    assert_eq!(m["usersync_last_run_exit_code{}"], 2.0);
    assert_eq!(m["usersync_instance_up{instance=gw}"], 0.0);
}

#[test]
fn a_dry_run_leaves_the_textfile_alone() {
    let mut r = with_metrics(one_conf(), "").args(&["--dry-run"]).expect_exit(0);
    r.run();
    assert!(!r.path().join("usersync.prom").exists());
}

/// Every Graph request asks to be throttled first (`x-ms-throttle-priority: Low`: a sync is
/// background work); when Graph says the app has used 0.9 of its limit, the run says so and
/// the textfile exports it.
#[test]
fn graph_throttling_signals_go_both_ways() {
    let mut r = with_metrics(one_conf(), "").ignore_stderr();
    r.run();
    assert_eq!(scrape(&r)["usersync_graph_throttle_limit_ratio{}"], 0.0);
    let sent = r.sim.state().throttle_priorities.clone();
    assert!(!sent.is_empty() && sent.iter().all(|p| p.as_deref() == Some("Low")), "{sent:?}");
    r.sim.state().throttle_limit = Some("0.9".into());
    let out = r.run();
    assert!(out.stderr.contains("Graph says this app has used this share of its throttling limit"), "{}", out.stderr);
    assert!(out.stderr.contains("share=0.9"), "{}", out.stderr);
    assert_eq!(scrape(&r)["usersync_graph_throttle_limit_ratio{}"], 0.9);
}
