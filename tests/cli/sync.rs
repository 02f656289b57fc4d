//! A sync run end to end: files, paging, retries, guards, node, lock, report.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use crate::util::*;

#[test]
fn three_files_exact_bytes_from_several_configs_and_a_nested_group() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .group(SALES, vec![user("u5", Some("dave@example.com"), None, true), group(NESTED), user("u1", Some("alice@example.com"), None, true)])
        .group(NESTED, vec![user("u6", Some("Erin@Example.com"), Some("+1 425 555 0109"), true)])
        .conf(
            "gw",
            "staff",
            &format!("group_id = \"{STAFF}\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\n"),
        )
        .conf(
            "gw",
            "sales",
            &format!("group_id = \"{SALES}\"\nnested = true\nfeeds = [\"allowed_senders\", \"access_rules\"]\naccess_rule = \"sms\"\n"),
        )
        // Two groups: their INFO lines come in the order the fetches end.
        .args(&["-q"])
        .expect_exit(0)
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\ndave@example.com\nerin@example.com\n"))
        .expect_file(GSM, Some("alice@example.com +442079460958\n"))
        .expect_file(
            RULES,
            Some("* alice@example.com <reg> - 0\n* carol@example.com <reg> - 0\nalice@example.com * <sms> - 0\ndave@example.com * <sms> - 0\nerin@example.com * <sms> - 0\n"),
        );
    let out = r.run();
    assert!(out.stdout.contains("gw: allowed_senders"), "{}", out.stdout);
    let paths: Vec<String> = r.member_requests().iter().map(|q| q.path.clone()).collect();
    assert!(paths.contains(&format!("/v1.0/groups/{SALES}/transitiveMembers")), "{paths:?}");
    assert!(paths.contains(&format!("/v1.0/groups/{STAFF}/members")), "{paths:?}");
    let staff = r.member_requests().into_iter().find(|q| q.path.contains(STAFF)).unwrap();
    assert_eq!(staff.query.get("$select").map(String::as_str), Some("id,mail,accountEnabled,mobilePhone"));
    assert_eq!(staff.query.get("$top").map(String::as_str), Some("999"));
}

#[test]
fn outputs_no_config_feeds_are_never_touched() {
    one_conf()
        .file(GSM, "hand-made +1234567\n")
        .expect_exit(0)
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"))
        .expect_file(GSM, Some("hand-made +1234567\n"))
        .expect_file(RULES, None)
        .run();
}

#[test]
fn a_relative_server_root_works_and_messages_name_absolute_paths() {
    let r = one_conf().file(SENDERS, "old@example.com\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .current_dir(r.path())
        .env_clear()
        .args(["-c", "usersync.toml", "--server-root", "server"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(r.root().join(SENDERS)).unwrap(), "alice@example.com\ncarol@example.com\n");
    let line = format!("gw: allowed_senders {}: written", r.root().join(SENDERS).display());
    assert!(stdout.contains(&line), "{stdout}");
}

#[test]
fn envelope_and_compose_cfg_move_the_outputs() {
    Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\"]\n"))
        .file("gw/config/envelope.cfg", "# gateway settings\nOTHER=1\nALLOWEDLDAPSENDERFILE = \"lists/senders.txt\"\n")
        .file("gw/config/compose.cfg", "LDAPGSMLISTFILE lists/gsm.txt\n")
        .file("gw/lists/.keep", "")
        .expect_exit(0)
        .expect_file("gw/lists/senders.txt", Some("alice@example.com\ncarol@example.com\n"))
        .expect_file("gw/lists/gsm.txt", Some("alice@example.com +442079460958\n"))
        .expect_file(SENDERS, None)
        .expect_file("gw/config/envelope.cfg", Some("# gateway settings\nOTHER=1\nALLOWEDLDAPSENDERFILE = \"lists/senders.txt\"\n"))
        .run();
}

#[test]
fn pages_through_more_than_three_pages() {
    let mut r = Run::new().group(STAFF, users(9)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    r.sim.state().page_size = 2;
    r = r.expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..9)));
    r.run();
    let pages: Vec<Option<usize>> = r.member_requests().iter().map(|q| q.page).collect();
    assert_eq!(pages, [Some(0), Some(1), Some(2), Some(3), Some(4)]);
}

#[test]
fn a_429_with_retry_after_mid_paging_is_waited_out_and_completes() {
    let mut r = Run::new().group(STAFF, users(7)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        let body = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/graph/graph_throttling_429.json"
        ))
        .unwrap();
        s.page_faults.push(PageFault {
            page: 2,
            times: 1,
            fault: Fault::Status { status: 429, retry_after: Some("1".into()), body },
        });
    }
    r = r.expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..7)));
    let out = r.run();
    let reqs = r.member_requests();
    let p2: Vec<_> = reqs.iter().filter(|q| q.page == Some(2)).collect();
    assert_eq!(p2.len(), 2, "page 2 asked twice");
    assert_eq!(p2[0].status, 429);
    assert!(p2[1].at.duration_since(p2[0].at) >= Duration::from_millis(990), "retried before Retry-After");
    assert!(out.stderr.contains("retrying"), "{}", out.stderr);
}

#[test]
fn a_503_past_max_retries_fails_with_exit_1_and_leaves_files_alone() {
    let mut r = Run::new()
        .global("[http]\nmax_retries = 2\n")
        .group(STAFF, users(5))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nfeeds = [\"allowed_senders\", \"access_rules\"]\n"))
        .file(SENDERS, "old@example.com\n");
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        s.page_faults.push(PageFault {
            page: 1,
            times: 100,
            fault: Fault::Status { status: 503, retry_after: Some("0".into()), body: "Service Unavailable".into() },
        });
    }
    r = r.expect_exit(1).expect_file(SENDERS, Some("old@example.com\n")).expect_file(RULES, None);
    let out = r.run();
    assert_eq!(r.member_requests().iter().filter(|q| q.page == Some(1)).count(), 3, "1 try + 2 retries");
    let conf = r.root().join("gw/config/entraid/staff.entraidconf");
    assert!(out.stderr.contains("instance `gw`"), "{}", out.stderr);
    assert!(out.stderr.contains(&conf.display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("3 attempts") && out.stderr.contains("HTTP 503"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}

#[test]
fn a_503_without_retry_after_backs_off_then_recovers() {
    let mut r = Run::new().group(STAFF, users(3)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    r.sim.state().page_faults.push(PageFault {
        page: 0,
        times: 1,
        fault: Fault::Status { status: 504, retry_after: None, body: String::new() },
    });
    r = r.expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..3)));
    r.run();
    let reqs = r.member_requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at.duration_since(reqs[0].at) >= Duration::from_millis(490), "backoff is at least 0.5 s");
}

#[test]
fn an_expired_token_mid_paging_is_renewed_once_and_the_page_asked_again() {
    let mut r = Run::new().group(STAFF, users(7)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    {
        let mut s = r.sim.state();
        s.page_size = 2;
        s.page_faults.push(PageFault { page: 2, times: 1, fault: Fault::RevokeTokens });
    }
    r = r.expect_exit(0).expect_file(SENDERS, Some(&sender_lines(0..7)));
    r.run();
    assert_eq!(r.token_requests(), 2);
    let statuses: Vec<(Option<usize>, u16)> = r.member_requests().iter().map(|q| (q.page, q.status)).collect();
    assert_eq!(statuses, [(Some(0), 200), (Some(1), 200), (Some(2), 401), (Some(2), 200), (Some(3), 200)]);
}

#[test]
fn a_page_rejected_again_with_a_fresh_token_fails() {
    let mut r = one_conf().file(SENDERS, "old@example.com\n");
    r.sim.state().page_faults.push(PageFault { page: 0, times: 2, fault: Fault::RevokeTokens });
    r = r.expect_exit(1).expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert_eq!(r.token_requests(), 2);
    assert!(out.stderr.contains("rejected a freshly renewed access token"), "{}", out.stderr);
}

#[test]
fn the_guard_refuses_to_gut_a_list_until_forced() {
    let current = sender_lines(0..30);
    let mut r = Run::new()
        .group(STAFF, users(10))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nfeeds = [\"allowed_senders\", \"access_rules\"]\n"))
        .file(SENDERS, &current)
        .expect_exit(3)
        .expect_file(SENDERS, Some(&current))
        .expect_file(RULES, None);
    let out = r.run();
    let path = r.root().join(SENDERS);
    assert!(
        out.stderr
            .contains(&format!("refusing to write {}: it would go from 30 to 10 entries (20 removed)", path.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    let rules: String = sender_lines(0..10).lines().map(|l| format!("* {l} <reg> - 0\n")).collect::<Vec<_>>().concat();
    r = r
        .args(&["--force"])
        .expect_exit(0)
        .expect_file(SENDERS, Some(&sender_lines(0..10)))
        .expect_file(RULES, Some(&rules));
    r.run();
}

#[test]
fn the_guard_refuses_to_empty_a_list_and_honours_max_removed() {
    Run::new()
        .group(STAFF, vec![])
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .file(SENDERS, "last@example.com\n")
        .expect_exit(3)
        .expect_file(SENDERS, Some("last@example.com\n"))
        .run();
    Run::new()
        .global("[guard]\nmax_removed = 3\nmax_removed_percent = 100\n")
        .group(STAFF, users(10))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .file(SENDERS, &sender_lines(0..14))
        .expect_exit(3)
        .expect_file(SENDERS, Some(&sender_lines(0..14)))
        .run();
}

#[test]
fn a_passive_node_contacts_nothing_and_writes_nothing() {
    let mut r = one_conf()
        .global("[node]\nstatus_command = [\"/bin/echo\", \"PASSIVE\"]\n")
        .file(SENDERS, "old@example.com\n")
        .expect_exit(0)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(r.sim.requests().is_empty());
    assert!(out.stdout.contains("node is passive"), "{}", out.stdout);
    // --ignore-node-status skips the check
    r = r
        .args(&["--ignore-node-status"])
        .expect_exit(0)
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
}

#[test]
fn an_active_node_syncs_and_a_dry_run_on_a_passive_one_says_what_a_real_run_would_do() {
    one_conf()
        .global("[node]\nstatus_command = [\"/bin/echo\", \"  ACTIVE FAKE \"]\n")
        .expect_exit(0)
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"))
        .run();
    let mut r = one_conf()
        .global("[node]\nstatus_command = [\"/bin/echo\", \"PASSIVE\"]\n")
        .args(&["--dry-run"])
        .expect_exit(0)
        .expect_file(SENDERS, None);
    let out = r.run();
    assert!(out.stdout.contains("a real run would write nothing"), "{}", out.stdout);
    assert!(out.stdout.contains("+ alice@example.com"), "{}", out.stdout);
}

#[test]
fn a_failing_node_status_command_is_exit_1_with_nothing_written() {
    let mut r = one_conf()
        .global("[node]\nstatus_command = [\"/bin/sh\", \"-c\", \"echo broken >&2; exit 4\"]\n")
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(r.sim.requests().is_empty());
    assert!(out.stderr.contains("node status command `/bin/sh -c echo broken >&2; exit 4` exited"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}

#[test]
fn the_node_is_checked_again_right_before_the_first_write() {
    let mut r = one_conf().file(SENDERS, "old@example.com\n");
    let flag = r.path().join("asked-once");
    r = r
        .global(&format!(
            "[node]\nstatus_command = [\"/bin/sh\", \"-c\", \"if [ -e {0} ]; then echo PASSIVE; else touch {0}; echo ACTIVE; fi\"]\n",
            flag.display()
        ))
        .args(&["--format", "json"])
        .expect_exit(0)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["outputs"][0]["action"], "skipped-passive", "{v:#}");
    assert!(!r.member_requests().is_empty(), "it fetched while active");
}

#[test]
fn a_held_lock_skips_the_instance_with_exit_75() {
    let mut r = one_conf()
        .group(SALES, users(2))
        .conf("other", "sales", &format!("group_id = \"{SALES}\"\n"))
        .file(SENDERS, "old@example.com\n");
    let _held = usersync::files::lock::acquire(
        &usersync::files::judged::Dir::open(&r.root().join("gw/config/entraid")).unwrap(),
    )
    .unwrap();
    r = r
        .expect_exit(75)
        .expect_file(SENDERS, Some("old@example.com\n"))
        .expect_file("other/config/allowed_senders_ldap.txt", Some(&sender_lines(0..2)));
    let out = r.run();
    assert!(out.stderr.contains("another run holds the instance's lock: skipped"), "{}", out.stderr);
    assert!(!out.stderr.contains("error"), "a notice, not an error: {}", out.stderr);
    assert!(r.member_requests().iter().all(|q| !q.path.contains(STAFF)), "the locked instance's group is not fetched");
}

/// A lock held for longer than a run may last is a hung run: the instance fails (exit 1,
/// and an alert), saying so, once runs have found it held that long; a run that gets the
/// lock forgets it.
#[test]
fn a_lock_held_past_the_run_deadline_fails_the_instance() {
    let mut r = one_conf()
        .global("[http]\ndeadline_seconds = 600\n")
        .file(SENDERS, "old@example.com\n")
        .expect_file(SENDERS, Some("old@example.com\n"))
        .expect_exit(75);
    let held = usersync::files::lock::acquire(
        &usersync::files::judged::Dir::open(&r.root().join("gw/config/entraid")).unwrap(),
    )
    .unwrap();
    r.run();
    let state_file = r.path().join("state/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let since = state["locked_since"]["gw"].as_u64().expect("the first run that found it held says when");
    state["locked_since"]["gw"] = json!(since - 600 - 61);
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    r = r.expect_exit(1);
    let out = r.run();
    assert!(
        out.stderr.contains("usersync.lock has been held by another run for 11 minutes, longer than a run may last ([http] deadline_seconds = 600)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: a usersync run is hung"), "{}", out.stderr);
    // A passive node runs nothing: the time goes, and the next run that finds the lock
    // held starts counting again (a notice).
    let passive = r.path().join("state/state.json");
    r = r
        .global("[http]\ndeadline_seconds = 600\n[node]\nstatus_command = [\"/bin/echo\", \"PASSIVE\"]\n")
        .expect_exit(0);
    r.run();
    let state: Value = serde_json::from_slice(&std::fs::read(&passive).unwrap()).unwrap();
    assert_eq!(state["locked_since"], json!({}), "forgotten on a passive node");
    r = r.global("[http]\ndeadline_seconds = 600\n").expect_exit(75);
    r.run();
    drop(held);
    r = r.expect_exit(0).expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    let state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["locked_since"], json!({}), "forgotten once a run had the lock");
}

#[test]
fn an_unchanged_file_is_not_rewritten_and_keeps_its_mtime() {
    let mut r = one_conf().expect_exit(0);
    r.run();
    let p = r.root().join(SENDERS);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    let ino = std::fs::metadata(&p).unwrap().ino();
    r = r.args(&["--format", "json"]).expect_exit(0);
    let out = r.run();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.modified().unwrap(), old);
    assert_eq!(m.ino(), ino);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["outputs"][0]["action"], "unchanged");
}

#[test]
fn a_current_file_that_cannot_be_read_fails_its_instance_naming_it() {
    let mut r = one_conf().expect_exit(1);
    std::fs::create_dir_all(r.root().join(SENDERS)).unwrap();
    let out = r.run();
    assert!(out.stderr.contains("allowed_senders_ldap.txt: it exists but is a directory"), "{}", out.stderr);
    assert!(r.root().join(SENDERS).is_dir());
}

#[test]
fn a_rewrite_keeps_the_old_files_mode_and_owner() {
    let mut r = one_conf().file(SENDERS, "old@example.com\n");
    let p = r.root().join(SENDERS);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = std::fs::metadata(&p).unwrap().uid() == 0;
    if root {
        std::os::unix::fs::chown(&p, Some(1234), Some(2345)).unwrap();
    }
    r = r.expect_exit(0).expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    if root {
        assert_eq!((m.uid(), m.gid()), (1234, 2345));
    } else {
        eprintln!("not root: owner change not tested");
    }
    let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".usersync-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_first_file_written_as_root_belongs_to_its_directorys_owner() {
    if !as_root() {
        return;
    }
    // The directory is the gateway's, so the config found through it is untrusted: it
    // reaches Microsoft's names, which the redirecting proxy stands in for.
    let r = Run::new_tls().group(STAFF, staff_members());
    let proxy = usersync_sim::Proxy::redirecting(r.sim.addr()).unwrap();
    let mut r = r
        .conf_no_endpoints("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .env("HTTPS_PROXY", &proxy.url())
        .expect_exit(0);
    std::os::unix::fs::chown(r.root().join("gw/config"), Some(1234), Some(2345)).unwrap();
    r.run();
    let m = std::fs::metadata(r.root().join(SENDERS)).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 2345));
}

#[test]
fn a_dry_run_prints_the_changes_and_writes_nothing() {
    let mut r = one_conf()
        .file(SENDERS, "alice@example.com\ngone@example.com\n")
        .args(&["--dry-run"])
        .expect_exit(0)
        .expect_file(SENDERS, Some("alice@example.com\ngone@example.com\n"));
    let out = r.run();
    let (path, conf) = (r.root().join(SENDERS), r.root().join("gw/config/entraid/staff.entraidconf"));
    assert_eq!(
        out.stdout,
        format!("gw: config {}: full read (first), 1 request\ngw: allowed_senders {}: dry-run (2 -> 2 entries, +1 -1; skipped: 1 device, 1 disabled, 1 no-mail)\n+ carol@example.com\n- gone@example.com\n", conf.display(), path.display())
    );
    assert!(!r.root().join("gw/config/entraid/usersync.lock").exists(), "a dry run takes no lock");
    assert!(!r.path().join("state/delta").exists(), "a dry run keeps no delta state");
}

#[test]
fn json_report_has_paths_counts_changes_skips_and_actions() {
    let mut r = one_conf().file(SENDERS, "gone@example.com\n").args(&["--format", "json"]).expect_exit(0);
    let out = r.run();
    let v: Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["dry_run"], false);
    let o = &v["instances"][0]["outputs"][0];
    assert_eq!(v["instances"][0]["name"], "gw");
    assert_eq!(o["output"], "allowed_senders");
    assert_eq!(o["path"], r.root().join(SENDERS).display().to_string());
    assert_eq!((o["before"].as_u64(), o["after"].as_u64()), (Some(1), Some(2)));
    assert_eq!(o["added"], json!(["alice@example.com", "carol@example.com"]));
    assert_eq!(o["removed"], json!(["gone@example.com"]));
    assert_eq!(o["skipped"], json!({"device": 1, "disabled": 1, "no-mail": 1}));
    assert_eq!(o["action"], "written");
    assert!(v["graph_requests"].as_u64().unwrap() >= 2);
}

#[test]
fn a_config_error_is_exit_2_naming_file_and_key_and_contacts_nothing() {
    let mut r = one_conf()
        .conf("gw", "typo", &format!("group_id = \"{STAFF}\"\ninclude_disabld = true\n"))
        .expect_exit(2)
        .expect_file(SENDERS, None);
    let out = r.run();
    let file = r.root().join("gw/config/entraid/typo.entraidconf");
    assert!(
        out.stderr.contains(&format!("error: instance `gw`: {}: unknown key `include_disabld`", file.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(r.sim.requests().is_empty());
}

#[test]
fn every_config_error_is_exit_2_even_beside_runtime_failures() {
    // One instance's configuration error is that instance's: the others are synced (the
    // gateway's account, which may write an instance's configs, never stops another's list).
    let mut r = one_conf()
        .conf("broken", "x", &format!("group_id = \"{STAFF}\"\nfeeds = [\"gsm_list\"]\n"))
        .expect_exit(2)
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"))
        .expect_file("broken/config/gsm_list.txt", None);
    let out = r.run();
    assert!(out.stderr.contains("`gsm_list` needs phone numbers"), "{}", out.stderr);
    assert!(out.stdout.contains("broken: config-error"), "{}", out.stdout);
    let mut r = Run::new().args(&["-i", "missing"]).expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("not an instance"), "{}", out.stderr);
    let mut r = Run::new().expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("no instance here"), "{}", out.stderr);
    let mut r = one_conf().global("[gaurd]\n").expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("unknown key `gaurd`"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "text mode prints no result: {}", out.stdout);
    r = r.args(&["--format", "json"]).expect_exit(2);
    let out = r.run();
    let v: Value = serde_json::from_str(&out.stdout).expect("one JSON document even on a config error");
    assert_eq!(v["exit_code"], 2);
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("unknown key `gaurd`"), "{v:#}");
    assert!(v["errors"][0]["hint"].is_string(), "{v:#}");
}

#[test]
fn an_http_endpoint_that_is_not_loopback_is_refused() {
    let mut r = Run::new()
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ngraph_endpoint = \"http://graph.example.com\"\n"))
        .expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("key `graph_endpoint`"), "{}", out.stderr);
    assert!(out.stderr.contains("not a loopback address"), "{}", out.stderr);
}

#[test]
fn a_next_link_to_another_host_is_refused() {
    let mut r = one_conf().file(SENDERS, "old@example.com\n");
    r.sim.state().page_faults.push(PageFault {
        page: 0,
        times: 1,
        fault: Fault::Body(r#"{"value":[],"@odata.nextLink":"https://evil.example/v1.0/steal"}"#.into()),
    });
    r = r.expect_exit(1).expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("evil.example") && out.stderr.contains("is not on"), "{}", out.stderr);
}

#[test]
fn no_secret_or_token_appears_at_trace_level() {
    for extra in [vec!["--format", "json"], vec!["-vv"], vec!["--dry-run"]] {
        let mut r = one_conf().env("RUST_LOG", "trace").args(&extra).expect_exit(0);
        let out = r.run();
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("TRACE") || out.stderr.contains("DEBUG"), "trace logging is on");
        assert!(!all.contains(SECRET), "secret leaked:\n{all}");
        assert!(!all.contains("sim-access-token"), "token leaked:\n{all}");
    }
    // and not on failure either
    let mut r = one_conf().env("RUST_LOG", "trace").expect_exit(1);
    r.sim.state().token_faults.push(aad_error(401, "invalid_client", 7_000_215, "Invalid client secret provided."));
    let out = r.run();
    assert!(!format!("{}{}", out.stdout, out.stderr).contains(SECRET));
    assert!(out.stderr.contains("AADSTS7000215") || out.stderr.contains("Invalid client secret"), "{}", out.stderr);
    assert!(out.stderr.contains("Certificates & secrets"), "{}", out.stderr);
}

#[test]
fn an_instance_is_written_only_when_every_config_fetched_completely() {
    let mut r = one_conf()
        .conf("gw", "other", &format!("group_id = \"{SALES}\"\nfeeds = [\"access_rules\"]\n"))
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"))
        .expect_file(RULES, None);
    let out = r.run();
    assert!(out.stderr.contains("Request_ResourceNotFound"), "{}", out.stderr);
    assert!(out.stderr.contains("group_id"), "{}", out.stderr);
    assert!(out.stderr.contains("other.entraidconf"), "{}", out.stderr);
}

#[test]
fn a_group_named_by_several_configs_is_fetched_once_with_one_token() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "a", &format!("group_id = \"{STAFF}\"\n"))
        .conf(
            "gw",
            "b",
            &format!("group_id = \"{STAFF}\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"gsm_list\"]\n"),
        )
        .conf("gw2", "c", &format!("group_id = \"{STAFF}\"\nfeeds = [\"access_rules\"]\n"))
        .expect_exit(0)
        .expect_file(GSM, Some("alice@example.com +442079460958\n"))
        .expect_file(
            "gw2/config/gsm_auth_auto.txt",
            Some("* alice@example.com <reg> - 0\n* carol@example.com <reg> - 0\n"),
        );
    r.run();
    assert_eq!(r.member_requests().len(), 1);
    assert_eq!(r.token_requests(), 1);
}

/// The same group through another config whose secret is wrong: that config fails with its
/// own error, and the other's fetch does not hide it.
#[test]
fn a_shared_group_is_fetched_per_credential_so_a_broken_secret_is_not_masked() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "broken", &format!("group_id = \"{STAFF}\"\nclient_secret = \"not-the-secret\"\n"))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .args(&["-q"])
        .expect_exit(1)
        .expect_file(SENDERS, None);
    let out = r.run();
    let broken = r.root().join("gw/config/entraid/broken.entraidconf");
    assert_eq!(
        out.stderr,
        format!(
            "error: instance `gw`, config {}: token request to {}/{TENANT}/oauth2/v2.0/token failed with HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided.\nhint: the client secret is wrong: paste the secret's Value (not its Secret ID) from App registrations > the app > Certificates & secrets\n",
            broken.display(),
            r.sim.url()
        )
    );
    assert_eq!(r.token_requests(), 2, "one token per credential");
    assert_eq!(r.member_requests().len(), 1, "only the good credential reached Graph");
}

/// The same group through a second app that lacks User.Read.All: that config fails with
/// the permission hint, although the first app could read the group.
#[test]
fn a_shared_group_is_fetched_per_app_so_a_missing_permission_is_not_masked() {
    const OTHER: &str = "77777777-7777-8888-9999-000000000000";
    let mut r = Run::new().group(STAFF, staff_members());
    r.sim.state().directory.apps.push(usersync_sim::App {
        tenant: TENANT.into(),
        client_id: OTHER.into(),
        client_secret: SECRET.into(),
        limited: true,
        certificate: None,
    });
    r = r
        .conf("gw", "a", &format!("group_id = \"{STAFF}\"\n"))
        .conf("gw", "b", &format!("group_id = \"{STAFF}\"\nclient_id = \"{OTHER}\"\n"))
        .args(&["-q"])
        .expect_exit(1)
        .expect_file(SENDERS, None);
    let out = r.run();
    let b = r.root().join("gw/config/entraid/b.entraidconf");
    assert!(
        out.stderr.starts_with(&format!(
            "error: instance `gw`, config {}: group {STAFF}: Graph returned 4 users but none with mail, mobilePhone or accountEnabled",
            b.display()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{}", out.stderr);
    assert_eq!((r.token_requests(), r.member_requests().len()), (2, 2));
}

#[test]
fn users_without_any_attribute_mean_a_missing_permission_not_an_empty_list() {
    let mut r = one_conf().file(SENDERS, "old@example.com\n");
    r.sim.state().directory.apps[0].limited = true;
    r = r.expect_exit(1).expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("limited information"), "{}", out.stderr);
    assert!(out.stderr.contains("User.Read.All"), "{}", out.stderr);
}

#[test]
fn a_403_names_the_permissions_to_grant() {
    let mut r = one_conf();
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/graph/graph_error_authorization_requestdenied.json"
    ))
    .unwrap();
    r.sim.state().page_faults.push(PageFault {
        page: 0,
        times: 1,
        fault: Fault::Status { status: 403, retry_after: None, body },
    });
    r = r.expect_exit(1);
    let out = r.run();
    assert!(out.stderr.contains("Authorization_RequestDenied"), "{}", out.stderr);
    assert!(out.stderr.contains("GroupMember.Read.All") && out.stderr.contains("admin consent"), "{}", out.stderr);
}

#[test]
fn exit_codes_follow_the_priority_2_1_3_75() {
    // 1 (fetch failure in one instance) beats 3 (guard in another)
    let mut r = Run::new()
        .group(STAFF, vec![])
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .file(SENDERS, "keep@example.com\n")
        .conf("bad", "x", &format!("group_id = \"{SALES}\"\n"))
        .expect_exit(1)
        .expect_file(SENDERS, Some("keep@example.com\n"));
    r.run();
    // 3 beats 75
    let mut r = Run::new()
        .group(STAFF, vec![])
        .group(SALES, users(1))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .file(SENDERS, "keep@example.com\n")
        .conf("other", "x", &format!("group_id = \"{SALES}\"\n"))
        .expect_exit(3);
    let _held = usersync::files::lock::acquire(
        &usersync::files::judged::Dir::open(&r.root().join("other/config/entraid")).unwrap(),
    )
    .unwrap();
    r.run();
}

#[test]
fn one_instance_can_be_chosen_with_dash_i() {
    let mut r = one_conf()
        .group(SALES, users(1))
        .conf("other", "x", &format!("group_id = \"{SALES}\"\n"))
        .args(&["-i", "other"])
        .expect_exit(0)
        .expect_file(SENDERS, None)
        .expect_file("other/config/allowed_senders_ldap.txt", Some(&sender_lines(0..1)));
    r.run();
}

#[test]
fn the_shipped_examples_are_valid() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut r = Run::new().file(
        "gw/config/entraid/example.entraidconf",
        &std::fs::read_to_string(repo.join("config/example.entraidconf")).unwrap(),
    );
    // The example points at a secret file that does not exist here, which must be the only complaint.
    r = r.global(&std::fs::read_to_string(repo.join("config/usersync.toml")).unwrap()).expect_exit(2);
    let out = r.run();
    assert!(
        out.stderr.contains("key `client_secret_file`: cannot read /etc/usersync/secrets/gw1-staff"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("error:").count(), 1, "{}", out.stderr);
    for cfg in ["envelope.cfg.example", "compose.cfg.example"] {
        let text = std::fs::read_to_string(repo.join("config").join(cfg)).unwrap();
        let key = if cfg.starts_with("envelope") { "ALLOWEDLDAPSENDERFILE" } else { "LDAPGSMLISTFILE" };
        assert!(
            usersync::config::cfgfile::lookup(&text, key).is_some_and(|v| v.starts_with("/server/gw1/config/")),
            "{cfg}"
        );
    }
}

#[test]
fn connection_failures_are_retried_then_fail_with_exit_1() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut r = Run::new()
        .global("[http]\nmax_retries = 1\n")
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nauthority_host = \"http://127.0.0.1:{port}\"\n"))
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("still failed after 2 attempts"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("http://127.0.0.1:{port}/{TENANT}/oauth2/v2.0/token")), "{}", out.stderr);
}

#[test]
fn hostile_directory_values_add_no_line_and_are_reported_by_reason() {
    let long = format!("{}@x.com", "h".repeat(10_000));
    let u = |id: &str, mail: &str, phone: &str| {
        format!(
            r##"{{"@odata.type":"#microsoft.graph.user","id":"{id}","mail":{mail},"mobilePhone":{phone},"accountEnabled":true}}"##
        )
    };
    let members = [
        u("good", r#""Good@Example.com""#, r#""+358401234567""#),
        u("newline", r#""a@x.com\n* evil@x.com <reg> - 0""#, r#""+358 40\n1""#),
        u("cr", r#""b\r@x.com""#, "null"),
        u("nul", r#""c\u0000@x.com""#, "null"),
        u("space", r#""d e@x.com""#, "null"),
        u("star", r#""*@x.com""#, "null"),
        u("angle", r#""<f@x.com>""#, "null"),
        u("rule", r#""* g@x.com <reg> - 0""#, "null"),
        u("long", &format!("\"{long}\""), "null"),
        u("surrogate", r#""i\ud800@x.com""#, r#""\udc00""#),
        u("nonascii", r#""jörg@x.com""#, "null"),
        u("idn", r#""k@BÜCHER.example""#, r#""+358 40 (0) 1""#),
        u("phone", r#""ph@x.com""#, r#""+358 40 1\n* ph2@x.com <reg> - 0""#),
    ];
    let body = format!(r#"{{"value":[{}]}}"#, members.join(","));
    let mut r = Run::new()
        .group(STAFF, vec![])
        .conf(
            "gw",
            "staff",
            &format!("group_id = \"{STAFF}\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\n"),
        )
        .args(&["--format", "json"])
        .expect_exit(0)
        .expect_file(SENDERS, Some("good@example.com\nk@xn--bcher-kva.example\nph@x.com\n"))
        .expect_file(GSM, Some("good@example.com +358401234567\nk@xn--bcher-kva.example +3584001\n"))
        .expect_file(RULES, Some("* good@example.com <reg> - 0\n* k@xn--bcher-kva.example <reg> - 0\n* ph@x.com <reg> - 0\n"));
    r.sim.state().page_faults.push(PageFault { page: 0, times: 1, fault: Fault::Body(body) });
    let out = r.run();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["outputs"][0]["skipped"], json!({"invalid-mail": 9, "non-ascii-local-part": 1}));
    assert_eq!(
        v["instances"][0]["outputs"][1]["skipped"],
        json!({"invalid-mail": 9, "non-ascii-local-part": 1, "invalid-phone": 1})
    );
    for (id, shown) in [
        ("newline", r"a@x.com\n* evil@x.com <reg> - 0"),
        ("cr", r"b\r@x.com"),
        ("nul", r"c\0@x.com"),
        ("surrogate", r#"\"i\\ud800@x.com\""#),
        ("phone", r"+358 40 1\n* ph2@x.com <reg> - 0"),
    ] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&format!("id={id} ")))
            .unwrap_or_else(|| panic!("no warning for {id}:\n{}", out.stderr));
        assert!(line.contains("WARN") && line.contains(shown), "{id}: {line}");
    }
    assert!(!out.stderr.contains(&"h".repeat(200)), "a 10,000-character value is cut in the log");
}

#[test]
fn test_subcommand_fetches_one_page_per_config_and_writes_nothing() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .group(SALES, users(5))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .conf("gw", "sales", &format!("group_id = \"{SALES}\"\nnested = true\n"))
        .args(&["test", "-i", "gw"])
        .expect_exit(0)
        .expect_file(SENDERS, None);
    r.sim.state().page_size = 2;
    let out = r.run();
    let root = r.root();
    assert_eq!(
        out.stdout,
        format!(
            "instance `gw`, config {root}/gw/config/entraid/sales.entraidconf\n  tenant {TENANT}, group {SALES} (transitiveMembers) at {sim}\n  credential: client secret, expiry not recorded\n  token: ok\n  first page: 2 objects, 2 users, 2 would be kept; more pages follow\n  sample: u***@example.com, u***@example.com\n\
             instance `gw`, config {root}/gw/config/entraid/staff.entraidconf\n  tenant {TENANT}, group {STAFF} (members) at {sim}\n  credential: client secret, expiry not recorded\n  token: ok\n  first page: 2 objects, 2 users, 1 would be kept; more pages follow\n  sample: a***@example.com\n",
            root = root.display(),
            sim = r.sim.url()
        )
    );
    assert_eq!(r.member_requests().len(), 2, "one page per config");
    r = r.args(&["test", "-i", "gw", "--entraid", "staff", "--show"]).expect_exit(0);
    let out = r.run();
    assert!(out.stdout.contains("sample: alice@example.com\n") && !out.stdout.contains("sales"), "{}", out.stdout);
}

#[test]
fn test_subcommand_reports_a_failing_config_with_exit_1() {
    let mut r = one_conf().args(&["test", "-i", "gw"]).expect_exit(1);
    r.sim.state().token_faults.push(aad_error(
        401,
        "invalid_client",
        7_000_222,
        "The provided client secret keys are expired.",
    ));
    let out = r.run();
    assert!(out.stdout.contains("failed: see the error on stderr"), "{}", out.stdout);
    assert!(
        out.stderr.contains("error: instance `gw`, config ") && out.stderr.contains("AADSTS7000222"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: the client secret has expired"), "{}", out.stderr);
    let mut r = one_conf().args(&["test", "-i", "gw", "--entraid", "nope"]).expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("no config named `nope.entraidconf`"), "{}", out.stderr);
}

#[test]
fn global_options_go_before_or_after_the_subcommand() {
    let r = one_conf();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .env_clear()
        .args(["test", "-i", "gw", "--server-root"])
        .arg(r.root())
        .arg("-c")
        .arg(r.path().join("usersync.toml"))
        .args(["-q", "--format", "text"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["--dry-run", "test", "-i", "gw"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "sync flags do not mix with a subcommand");
}

/// `check` lists one finding a line: a file name with a line break in it stays on its line.
#[test]
fn check_findings_stay_one_line_each() {
    let mut r = Run::new().conf("gw", "x\nnote: all good", "group_id = \"nope\"\n").args(&["check"]).expect_exit(2);
    let out = r.run();
    assert!(out.stdout.contains("x\\nnote: all good.entraidconf: key `group_id`"), "{}", out.stdout);
    assert!(!out.stdout.lines().any(|l| l.starts_with("note: all good")), "{}", out.stdout);
}

/// `usersync test` prints a config's file name escaped too.
#[test]
fn test_prints_a_file_name_on_its_line() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "x\nnote: all good", &format!("group_id = \"{STAFF}\"\n"))
        .args(&["test", "-i", "gw"])
        .expect_exit(0);
    let out = r.run();
    assert!(out.stdout.contains("x\\nnote: all good.entraidconf\n"), "{}", out.stdout);
    assert!(!out.stdout.lines().any(|l| l.starts_with("note: all good")), "{}", out.stdout);
}

#[test]
fn check_finds_config_path_and_permission_problems_offline() {
    let mut r = one_conf().args(&["check"]).expect_exit(0);
    let out = r.run();
    assert_eq!(
        out.stdout,
        format!(
            "note: {}: trusted\nnote: instance `gw`: {}: trusted\ncheck: 0 errors, 0 warnings\n",
            r.path().join("usersync.toml").display(),
            r.root().join("gw/config/entraid/staff.entraidconf").display()
        )
    );
    let secret = r.root().join("gw/config/entraid/secret");
    r = r
        .conf("gw", "filed", &format!("group_id = \"{SALES}\"\nclient_secret_file = \"secret\"\nfeeds = [\"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n"))
        .file("gw/config/entraid/secret", &format!("{SECRET}\n"))
        .file("gw/config/compose.cfg", "LDAPGSMLISTFILE=/nonexistent-usersync/gsm.txt\n")
        .conf("bad", "x", "group_id = \"nope\"\n")
        .args(&["check"])
        .expect_exit(2);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = r.run();
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(out.stdout.contains(&format!("note: instance `gw`: {}: trusted\n", secret.display())), "{}", out.stdout);
    assert!(
        lines[0].starts_with("error: instance `bad`: ") && lines[0].contains("key `group_id`: `nope` is not a GUID"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        format!("warning: instance `gw`: {} holds a client secret and is readable by group or others (mode 0644) (hint: chmod 600 {})", secret.display(), secret.display())
    );
    assert!(lines[2].starts_with("error: instance `gw`: output gsm_list /nonexistent-usersync/gsm.txt: cannot open the directory of /nonexistent-usersync/gsm.txt: No such file or directory"), "{}", lines[2]);
    assert!(lines[2].ends_with("(hint: the directory /nonexistent-usersync does not exist: create it, or fix ALLOWEDLDAPSENDERFILE / LDAPGSMLISTFILE in the instance's envelope.cfg / compose.cfg)"), "{}", lines[2]);
    assert_eq!(lines[3], "check: 2 errors, 1 warnings");
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    assert!(r.sim.requests().is_empty(), "check needs no network");
}

#[test]
fn a_generate_that_cannot_write_says_so() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["--generate", "man"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot write to standard output\n  caused by: No space left on device (os error 28)\nhint: standard output is closed or full: redirect it to a file with room\n"
    );
}

/// Progress on a terminal: a live line per group with its pages and members, replaced by a
/// summary; log lines go above it, whole. Never on a pipe.
#[test]
fn a_terminal_shows_live_progress_and_a_pipe_does_not() {
    let r = Run::new().group(STAFF, users(6000));
    // Seven pages of 999 at 150 ms each: about a second, long enough to watch.
    r.sim.state().latency = std::time::Duration::from_millis(150);
    let mut r = r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n")).args(&["--dry-run"]);
    let screen = r.run_in_terminal();
    let escapes = regex::Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").unwrap();
    let plain = escapes.replace_all(&screen, "");
    // What the terminal showed, each redraw and each line on its own.
    let frames: Vec<&str> = plain.split(['\r', '\n']).map(str::trim_end).filter(|f| !f.is_empty()).collect();
    let summary = frames
        .iter()
        .position(|f| f.starts_with("✓ gw/staff group 02bd9fd6…: 6,000 members, 7 requests (full read, first) in "))
        .unwrap_or_else(|| panic!("no summary line\n{}", frames.join("\n")));
    let counts = regex::Regex::new(r"^. gw/staff group 02bd9fd6…: (\d+) pages?, ([\d,]+) members \(\d+s\)$").unwrap();
    let mut pages: Vec<u32> =
        frames[..summary].iter().filter_map(|f| counts.captures(f)).map(|c| c[1].parse().unwrap()).collect();
    pages.dedup();
    assert!(pages.len() >= 2 && pages.windows(2).all(|w| w[0] < w[1]), "live page counts {pages:?}");
    // The log line is written above the progress line, never into it.
    let log = frames.iter().find(|f| f.contains("fetched group members")).unwrap();
    assert!(log.contains(" INFO fetched group members group=02bd9fd6-8f93-4758-87c3-1fb73740a315"), "{log}");
    assert!(regex::Regex::new(r"^\d{4}-\d\d-\d\dT").unwrap().is_match(log), "a torn log line: {log}");
    // The report on stdout starts on its own line after the summary.
    assert!(frames[summary + 1].starts_with("gw: config "), "{}", frames[summary + 1]);

    // A pipe (cron, the unit, these tests): exactly the log of before, nothing drawn.
    let mut r = r.expect_stderr(&format!(
        "{{time}}  INFO fetched group members group={STAFF} nested=false pages=7 objects=6000\n"
    ));
    let out = r.run();
    assert!(!out.stderr.contains('\r') && !out.stderr.contains('\u{1b}') && !out.stderr.contains('✓'));
}

/// At 30 runs an hour, 100 removals a run pass every per-run check, yet empty a 3,000-entry
/// list within the hour. The window guard refuses once the list has lost more than
/// `max_removed` since the start of the window, names both figures, and `--force` makes the
/// list as it is the window's new start.
#[test]
fn a_steady_drain_passes_each_run_but_not_the_window() {
    let mut r = Run::new()
        .group(STAFF, users(3000))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .ignore_stderr()
        .expect_file(SENDERS, Some(&sender_lines(0..3000)));
    r.run();
    let drain = |r: &Run| {
        r.sim.state().directory.groups.get_mut(STAFF).unwrap().drain(..100);
    };
    for run in 1..=5 {
        drain(&r);
        r = r.expect_file(SENDERS, Some(&sender_lines(run * 100..3000)));
        r.run();
    }
    // 500 lost in the window so far: the limit. 100 more would make 600.
    drain(&r);
    r = r.expect_exit(3).expect_file(SENDERS, Some(&sender_lines(500..3000)));
    let out = r.run();
    let path = r.root().join(SENDERS);
    assert!(
        out.stderr.contains(&format!("refusing to write {}: it would go from 2500 to 2400 entries (100 removed), and from 3000 to 2400 (600 lost) since the start of the window, more than max_removed = 500 within [guard] window_hours = 24", path.display())),
        "{}",
        out.stderr
    );
    let mut r = r.args(&["--force"]).expect_exit(0).expect_file(SENDERS, Some(&sender_lines(600..3000)));
    r.run();
    // The window starts over at 2,400: the next 100 pass.
    drain(&r);
    let mut r = r.args(&[]).expect_file(SENDERS, Some(&sender_lines(700..3000)));
    r.run();
}
