//! Many groups at once: at most `[http] max_concurrency` requests in flight, pages of
//! different groups sent together as JSON batches, and every page of a batch still
//! checked, retried and renewed on its own.

use std::time::Duration;

use usersync_sim::{Fault, PageFault};

use crate::util::*;

/// `n` instances `gw0`… each syncing its own group of the same 25 users, 10 a page.
fn groups(n: usize, concurrency: usize) -> Run {
    let mut r =
        Run::new().global(&format!("[http]\ntimeout_seconds = 10\nmax_retries = 3\nmax_concurrency = {concurrency}\n"));
    for k in 0..n {
        let id = format!("00000000-0000-4000-8000-{k:012}");
        r = r.group(&id, users(25)).conf(&format!("gw{k}"), "staff", &format!("group_id = \"{id}\"\n"));
    }
    r.sim.state().page_size = 10;
    r
}

fn senders(k: usize) -> String {
    format!("gw{k}/config/allowed_senders_ldap.txt")
}

fn expect_all_synced(mut r: Run, n: usize) -> Run {
    for k in 0..n {
        r = r.expect_file(&senders(k), Some(&sender_lines(0..25)));
    }
    r
}

#[test]
fn pages_of_many_groups_travel_in_batches_within_max_concurrency() {
    let r = groups(8, 2);
    r.sim.state().latency = Duration::from_millis(50);
    // Many groups at once: `-q`, as their INFO lines come in the order the fetches end.
    let mut r = expect_all_synced(r.args(&["-q"]).expect_exit(0), 8);
    r.run();
    let s = r.sim.state();
    assert!(s.max_in_flight <= 2, "{} requests at once", s.max_in_flight);
    assert!(s.batch_sizes.iter().any(|&n| n > 1), "no batch: {:?}", s.batch_sizes);
    assert!(s.batch_sizes.iter().all(|&n| n <= 20), "{:?}", s.batch_sizes);
    drop(s);
    // Every page of every group was asked for exactly once, batched or not.
    let pages = r.member_requests();
    assert_eq!(pages.len(), 8 * 3, "{pages:?}");
    assert_eq!(r.token_requests(), 1);
}

#[test]
fn a_throttled_page_in_a_batch_waits_for_its_retry_after_and_the_run_completes() {
    let r = groups(4, 1);
    r.sim.state().latency = Duration::from_millis(20);
    r.sim.state().page_faults.push(PageFault {
        page: 1,
        times: 2,
        fault: Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
            body: r#"{"error":{"code":"TooManyRequests","message":"Too many requests"}}"#.into(),
        },
    });
    let mut r = expect_all_synced(r.args(&["-q"]).expect_exit(0), 4);
    r.run();
    let s = r.sim.state();
    assert_eq!(s.early_retries, 0, "a retry came before its Retry-After");
    assert!(s.batch_sizes.iter().any(|&n| n > 1), "no batch: {:?}", s.batch_sizes);
    drop(s);
    assert_eq!(r.member_requests().iter().filter(|q| q.status == 429).count(), 2);
}

#[test]
fn a_token_rejected_inside_a_batch_is_renewed_once_for_all_its_pages() {
    let r = groups(4, 1);
    r.sim.state().latency = Duration::from_millis(20);
    r.sim.state().page_faults.push(PageFault { page: 1, times: 1, fault: Fault::RevokeTokens });
    let mut r = expect_all_synced(r.args(&["-q"]).expect_exit(0), 4);
    r.run();
    assert_eq!(r.token_requests(), 2, "one renewal for the whole batch");
    assert!(r.member_requests().iter().any(|q| q.status == 401));
}

#[test]
fn a_page_failing_inside_a_batch_fails_only_its_instance() {
    let r = groups(3, 1);
    r.sim.state().latency = Duration::from_millis(20);
    // gw3's group does not exist: its first page is a 404 inside a batch.
    let missing = "00000000-0000-4000-8000-000000000099";
    let r = r.conf("gw3", "staff", &format!("group_id = \"{missing}\"\n"));
    let mut r = expect_all_synced(r.args(&["-q"]).expect_exit(1), 3).expect_file(&senders(3), None);
    let out = r.run();
    assert!(out.stderr.contains("gw3") && out.stderr.contains("404"), "{}", out.stderr);
    assert!(out.stderr.contains(missing), "the error names the page: {}", out.stderr);
    assert!(r.sim.state().batch_sizes.iter().any(|&n| n > 1));
}

#[test]
fn a_refused_batch_fails_its_instances_naming_the_batch_not_a_page() {
    let r = groups(3, 1);
    r.sim.state().latency = Duration::from_millis(100);
    r.sim.state().batch_status = Some(403);
    // Which groups' pages went alone depends on timing, and so does stderr.
    let mut r = r.expect_exit(1).ignore_stderr();
    let out = r.run();
    assert!(out.stderr.contains("/v1.0/$batch answered HTTP 403"), "{}", out.stderr);
    assert!(out.stderr.contains("hint: something between this host and Graph refuses JSON batches"), "{}", out.stderr);
    assert!(!out.stderr.contains("Grant admin consent"), "a refused batch is no missing permission");
    // A group whose pages all happened to go alone may be written, but only whole.
    let written: Vec<_> = (0..3).filter_map(|k| r.read(&senders(k))).collect();
    assert!(written.len() < 3 && written.iter().all(|w| *w == sender_lines(0..25)), "{written:?}");
}
