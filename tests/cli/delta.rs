//! Incremental sync (delta queries) end to end: after each change, the files a delta run
//! writes equal those a full read of the same directory writes; the state moves on only
//! when every output of the instance was written or found unchanged.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::util::*;

const STAFF_CONF: &str =
    "query_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\n";

/// `gw` syncing `staff_members()` into all three outputs, plus a tenant user (u9, Nina) in
/// no group.
fn staff() -> Run {
    let r =
        Run::new().group(STAFF, staff_members()).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"));
    r.sim.state().directory.users.push(user("u9", Some("Nina@Example.com"), Some("+358 40 9999999"), true));
    r
}

/// The files in `<state_dir>/delta` whose name ends in `.{ext}`.
fn delta_files(r: &Run, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(r.path().join("state/delta"))
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == ext)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The states in `<state_dir>/delta`: their links files (each state's commit point).
fn states(r: &Run) -> Vec<PathBuf> {
    delta_files(r, "links")
}

/// The one state, whole: every file in `<state_dir>/delta`, names and bytes.
fn state(r: &Run) -> Vec<(PathBuf, Vec<u8>)> {
    let s = states(r);
    assert_eq!(s.len(), 1, "{s:?}");
    let mut all: Vec<_> = std::fs::read_dir(r.path().join("state/delta"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    all.sort();
    all
}

/// Every output under the server root: path relative to it → bytes.
fn outputs(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for inst in std::fs::read_dir(root).unwrap() {
        let dir = inst.unwrap().path().join("config");
        for f in std::fs::read_dir(&dir).into_iter().flatten() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|x| x == "txt") {
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A full read of the same directory, into a twin server root with the same configs and
/// delta off, writes exactly the outputs the delta run wrote.
fn assert_same_as_full(r: &Run) {
    let twin = r.path().join("twin");
    let _ = std::fs::remove_dir_all(&twin);
    for inst in std::fs::read_dir(r.root()).unwrap() {
        let inst = inst.unwrap().path();
        let name = inst.file_name().unwrap();
        let entraid = twin.join("server").join(name).join("config/entraid");
        std::fs::create_dir_all(&entraid).unwrap();
        for f in std::fs::read_dir(inst.join("config/entraid")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|x| x == "entraidconf") {
                std::fs::copy(&p, entraid.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let toml = twin.join("usersync.toml");
    std::fs::write(&toml, format!("state_dir = \"{}\"\n[delta]\nenabled = false\n", twin.join("state").display()))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .arg("-c")
        .arg(&toml)
        .arg("--server-root")
        .arg(twin.join("server"))
        .args(["-q", "--force"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the full read failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(outputs(&r.root()), outputs(&twin.join("server")), "delta and full read disagree");
}

/// The reads the JSON report gives for the first instance.
fn reads(stdout: &str) -> Vec<(String, Option<String>, u64)> {
    let v: Value = serde_json::from_str(stdout).expect("one JSON document");
    v["instances"][0]["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["read"].as_str().unwrap().to_owned(),
                r["reason"].as_str().map(str::to_owned),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The Graph requests of the last run (paths), after `since` requests in all.
fn graph_since(r: &Run, since: usize) -> Vec<String> {
    r.sim.requests()[since..].iter().filter(|q| !q.path.ends_with("/token")).map(|q| q.path.clone()).collect()
}

fn edit(r: &Run, f: impl FnOnce(&mut Vec<Value>)) {
    f(r.sim.state().directory.groups.get_mut(STAFF).unwrap());
}

#[test]
fn an_unchanged_hour_costs_two_graph_requests_and_one_token() {
    let mut r = staff().args(&["--format", "json"]);
    let out = r.run();
    assert_eq!(reads(&out.stdout), [("full".into(), Some("first".into()), 3)], "the links, then one page");
    let since = r.sim.requests().len();
    let (before, stamps) = (state(&r), mtimes(&r.path().join("state/delta")));
    let out = r.run();
    assert_eq!(graph_since(&r, since), ["/v1.0/users/delta", "/v1.0/groups/delta"]);
    assert_eq!(r.sim.requests().len() - since, 3, "two Graph requests and a token");
    assert_eq!(reads(&out.stdout), [("delta".into(), None, 2)]);
    assert_eq!(
        (state(&r), mtimes(&r.path().join("state/delta"))),
        (before, stamps),
        "an unchanged run writes no state"
    );
    assert_same_as_full(&r);
}

/// Every file in `dir`: name → modification time.
fn mtimes(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_added_member_is_read_by_id() {
    let mut r = staff();
    r.run();
    let nina = r.sim.state().directory.users.remove(0);
    edit(&r, |m| m.push(nina));
    let since = r.sim.requests().len();
    r = r.expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\nnina@example.com\n"));
    r.run();
    assert_eq!(graph_since(&r, since), ["/v1.0/users/delta", "/v1.0/groups/delta", "/v1.0/directoryObjects/getByIds"]);
    assert_same_as_full(&r);
}

#[test]
fn a_lookup_whose_select_is_ignored_reads_the_users_by_filter() {
    let mut r = staff();
    r.run();
    r.sim.state().getbyids_ignores_select = true;
    let nina = r.sim.state().directory.users.remove(0);
    edit(&r, |m| m.push(nina));
    let since = r.sim.requests().len();
    r = r.expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\nnina@example.com\n"));
    r.run();
    let paths = graph_since(&r, since);
    assert_eq!(paths[2..], ["/v1.0/directoryObjects/getByIds", "/v1.0/users"], "{paths:?}");
    let filter = r.sim.requests().last().unwrap().query["$filter"].clone();
    assert_eq!(filter, "id in ('u9')");
    assert_same_as_full(&r);
}

#[test]
fn a_removed_member_goes() {
    let mut r = staff();
    r.run();
    // Carol leaves the group but stays in the tenant: only the membership round says so.
    let mut carol = None;
    edit(&r, |m| {
        carol = m.iter().position(|u| u["id"] == "u4").map(|i| m.remove(i));
    });
    r.sim.state().directory.users.extend(carol);
    r = r.expect_file(SENDERS, Some("alice@example.com\n"));
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn a_changed_mail_and_a_changed_phone() {
    let mut r = staff();
    r.run();
    edit(&r, |m| {
        m[0]["mail"] = json!("Alice.New@Example.com");
        m[3]["mobilePhone"] = json!("+358 40 1234567");
    });
    r = r
        .expect_file(SENDERS, Some("alice.new@example.com\ncarol@example.com\n"))
        .expect_file(GSM, Some("alice.new@example.com +442079460958\ncarol@example.com +358401234567\n"));
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn a_member_disabled_then_enabled() {
    // Alice is the only one with a phone: without her, gsm_list empties, which a guard refuses.
    let mut r = staff().args(&["--force"]);
    r.run();
    edit(&r, |m| m[0]["accountEnabled"] = json!(false));
    r = r.expect_file(SENDERS, Some("carol@example.com\n"));
    r.run();
    assert_same_as_full(&r);
    edit(&r, |m| m[0]["accountEnabled"] = json!(true));
    r = r.expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn a_deleted_user() {
    // Alice is the only one with a phone: without her, gsm_list empties, which a guard refuses.
    let mut r = staff().args(&["--force"]);
    r.run();
    // Gone from the tenant: from the group, and from users.
    edit(&r, |m| m.retain(|u| u["id"] != "u1"));
    r = r.expect_file(SENDERS, Some("carol@example.com\n"));
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn a_change_outside_the_group_is_ignored_and_counted() {
    let mut r = staff().args(&["--format", "json"]);
    r.run();
    r.sim.state().directory.users[0]["mail"] = json!("nina.new@example.com");
    let since = r.sim.requests().len();
    let out = r.run();
    assert_eq!(graph_since(&r, since), ["/v1.0/users/delta", "/v1.0/groups/delta"], "no lookup");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["reads"][0]["ignored_user_changes"], 1);
    assert_eq!(v["instances"][0]["outputs"][0]["action"], "unchanged");
    assert_same_as_full(&r);
}

#[test]
fn a_replayed_round_is_harmless() {
    let mut r = staff();
    r.run();
    edit(&r, |m| {
        m.retain(|u| u["id"] != "u4");
        m[0]["mail"] = json!("alice.new@example.com");
    });
    r = r.expect_file(SENDERS, Some("alice.new@example.com\n"));
    r.run();
    // The next rounds start one version early: the same changes come again.
    r.sim.state().replay = 1;
    r.run();
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn ragged_rounds_with_empty_pages_and_a_group_repeated_on_each_page() {
    let mut r = Run::new().group(STAFF, users(7)).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"));
    {
        let mut s = r.sim.state();
        s.delta_page_size = 2;
        s.empty_delta_pages = true;
    }
    r.run();
    r.sim.state().directory.groups.insert(STAFF.into(), users(12)[3..].to_vec());
    r = r.expect_file(SENDERS, Some(&sender_lines(3..12)));
    r.run();
    assert_same_as_full(&r);
}

#[test]
fn an_expired_token_and_a_reset_read_in_full_and_are_counted() {
    let prom = "metrics.prom";
    let mut r = staff();
    let textfile = r.path().join(prom);
    r = r.global(&format!("[metrics]\ntextfile = \"{}\"\n", textfile.display())).args(&["--format", "json"]);
    r.run();
    edit(&r, |m| m.retain(|u| u["id"] != "u4"));
    {
        let mut s = r.sim.state();
        s.expired_before = usize::MAX;
    }
    r = r.expect_file(SENDERS, Some("alice@example.com\n"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:syncStateNotFound"));
    r.sim.state().expired_before = 0;
    // A reset (410 Gone) of the group's round: the users round passes first.
    r.sim.state().delta_faults.extend([Fault::Pass, Fault::Gone]);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:gone"));
    // resyncRequired, on the users round.
    r.sim.state().delta_faults.push(Fault::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"code": "resyncRequired", "message": "The delta token is no longer valid."}})
            .to_string(),
    });
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:resyncRequired"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta", "fresh links after a resync");
    let text = std::fs::read_to_string(textfile).unwrap();
    let conf = r.root().join("gw/config/entraid/staff.entraidconf").display().to_string();
    for reason in ["syncStateNotFound", "gone", "resyncRequired"] {
        let line = format!("usersync_delta_resyncs{{instance=\"gw\",config=\"{conf}\",reason=\"{reason}\"}} 1\n");
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert_same_as_full(&r);
}

#[test]
fn a_corrupt_state_reads_in_full() {
    let mut r = staff().args(&["--format", "json"]);
    r.run();
    std::fs::write(&states(&r)[0], b"not a state").unwrap();
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:state-corrupt"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_same_as_full(&r);
}

/// Cuts the member data of the one state in half.
fn cut_member_data(r: &Run) {
    let members = delta_files(r, "members").remove(0);
    let bytes = std::fs::read(&members).unwrap();
    std::fs::write(&members, &bytes[..bytes.len() / 2]).unwrap();
}

/// Member data that does not read (cut short) is no state either: the run that finds out
/// reads in full, whether it needed the members or only their ids.
#[test]
fn corrupt_member_data_reads_in_full() {
    let mut r = staff().args(&["--format", "json"]).ignore_stderr();
    r.run();
    cut_member_data(&r);
    // Carol's phone changes: the members are read, and found cut short.
    edit(&r, |m| m.iter_mut().filter(|u| u["id"] == "u3").for_each(|u| u["mobilePhone"] = json!("+358 40 7777777")));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:state-corrupt"));
    assert_same_as_full(&r);
    let ids = delta_files(&r, "index").remove(0);
    std::fs::write(&ids, b"1234567").unwrap();
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:state-corrupt"), "an index not in whole hashes");
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_same_as_full(&r);
}

/// Member data found unreadable only when a run with nothing new needs it (a list to
/// write again) fails that instance, and takes the state with it: the next run reads in
/// full.
#[test]
fn corrupt_member_data_found_late_fails_once() {
    let mut r = staff().args(&["--format", "json"]).ignore_stderr();
    r.run();
    cut_member_data(&r);
    std::fs::remove_file(r.root().join(SENDERS)).unwrap();
    r = r.expect_exit(1).expect_file(SENDERS, None);
    let out = r.run();
    assert!(out.stdout.contains("the next run reads the group in full"), "{}", out.stdout);
    assert!(states(&r).is_empty(), "the state went with it");
    r = r.expect_exit(0).expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("first"));
    assert_same_as_full(&r);
}

/// Rewrites the state's header as if its last full read were `hours` ago.
fn age_full_read(r: &Run, hours: u64) {
    age_full_read_to(r, |now| now - hours * 3600);
}

/// Rewrites the state's links with its last full read at `at(now)`.
fn age_full_read_to(r: &Run, at: impl FnOnce(u64) -> u64) {
    let path = states(r).remove(0);
    let mut links: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let now = usersync::model::date::now_secs();
    links["full_at"] = json!(at(now));
    std::fs::write(&path, serde_json::to_vec(&links).unwrap()).unwrap();
}

#[test]
fn the_safety_net_reads_in_full_and_counts_the_drift() {
    let prom = "metrics.prom";
    let mut r = staff();
    let textfile = r.path().join(prom);
    r = r
        .global(&format!("[metrics]\ntextfile = \"{}\"\n[delta]\nfull_sync_hours = 6\n", textfile.display()))
        .args(&["--format", "json"]);
    r.run();
    // A change delta does not see (not yet replicated to the replica that answers it).
    r.sim.state().delta_blind = true;
    edit(&r, |m| m[0]["mail"] = json!("alice.new@example.com"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_eq!(r.read(SENDERS).as_deref(), Some("alice@example.com\ncarol@example.com\n"), "delta missed it");
    age_full_read(&r, 7);
    r = r.expect_file(SENDERS, Some("alice.new@example.com\ncarol@example.com\n"));
    let out = r.run();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["reads"][0]["reason"], "safety-net", "{v}");
    assert_eq!(v["instances"][0]["reads"][0]["drift"], 1, "one member drifted");
    let conf = r.root().join("gw/config/entraid/staff.entraidconf").display().to_string();
    let text = std::fs::read_to_string(textfile).unwrap();
    let line = format!("usersync_delta_drift_entries{{instance=\"gw\",config=\"{conf}\"}} 1\n");
    assert!(text.contains(&line), "{text}");
    assert_same_as_full(&r);
}

/// After `break_it` makes the next run fail to commit, the state is as it was; after
/// `fix_it`, a real run sees the same change again and writes it.
fn the_state_stays(setup: impl FnOnce(Run) -> Run, break_it: impl FnOnce(Run) -> Run, fix_it: impl FnOnce(Run) -> Run) {
    let mut r = setup(staff());
    r.run();
    let before = state(&r);
    edit(&r, |m| m.retain(|u| u["id"] != "u4"));
    r = break_it(r);
    r.run();
    assert_eq!(state(&r), before, "the state did not move on");
    r = fix_it(r).expect_exit(0).expect_file(SENDERS, Some("alice@example.com\n"));
    r.run();
    assert_ne!(state(&r), before);
    assert_same_as_full(&r);
}

#[test]
fn a_dry_run_does_not_advance_the_state() {
    the_state_stays(|r| r, |r| r.args(&["--dry-run"]), |r| r.args(&[]));
}

#[test]
fn a_guard_refusal_does_not_advance_the_state() {
    the_state_stays(|r| r.global("[guard]\nmax_removed = 0\n"), |r| r.expect_exit(3), |r| r.args(&["--force"]));
}

#[test]
fn a_failed_write_does_not_advance_the_state() {
    the_state_stays(
        |r| r,
        |r| {
            // A directory where the list is: the instance fails.
            let p = r.root().join(SENDERS);
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
            r.expect_exit(1).expect_file(SENDERS, None)
        },
        |r| {
            std::fs::remove_dir(r.root().join(SENDERS)).unwrap();
            r
        },
    );
}

#[test]
fn a_failed_instance_does_not_advance_the_state() {
    the_state_stays(
        |r| r.global("[http]\nmax_retries = 0\n"),
        |r| {
            // The users round passes; the group's round fails.
            r.sim
                .state()
                .delta_faults
                .extend([Fault::Pass, Fault::Status { status: 503, retry_after: None, body: String::new() }]);
            r.expect_exit(1)
        },
        |r| r,
    );
}

#[test]
fn a_passive_node_does_not_advance_the_state() {
    the_state_stays(|r| r, |r| r.global("[node]\nstatus_command = [\"echo\", \"PASSIVE\"]\n"), |r| r.global(""));
}

#[test]
fn nested_groups_read_in_full_and_keep_no_state() {
    let mut r = Run::new()
        .group(STAFF, vec![group(NESTED)])
        .group(NESTED, staff_members())
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nnested = true\n"))
        .args(&["--format", "json"]);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("nested"));
    let out = r.run();
    assert_eq!(reads(&out.stdout), [("full".into(), Some("nested".into()), 1)]);
    assert!(states(&r).is_empty());
    assert!(r.delta_requests().is_empty());
}

#[test]
fn delta_can_be_turned_off_per_config_and_for_all() {
    let mut r =
        staff().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ndelta = false\n")).args(&["--format", "json"]);
    r.run();
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("disabled"));
    r = r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n")).global("[delta]\nenabled = false\n");
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("disabled"));
    assert!(states(&r).is_empty() && r.delta_requests().is_empty());
}

#[test]
fn two_configs_sharing_one_group_share_one_state_and_one_round() {
    let mut r = staff().conf("gw2", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"));
    r.run();
    edit(&r, |m| m.retain(|u| u["id"] != "u4"));
    let since = r.sim.requests().len();
    r = r
        .expect_file(SENDERS, Some("alice@example.com\n"))
        .expect_file("gw2/config/allowed_senders_ldap.txt", Some("alice@example.com\n"));
    r.run();
    assert_eq!(graph_since(&r, since), ["/v1.0/users/delta", "/v1.0/groups/delta"]);
    assert_eq!(states(&r).len(), 1);
    assert_same_as_full(&r);
}

#[test]
fn a_config_that_changes_its_attributes_starts_afresh() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .args(&["--format", "json"]);
    r.run();
    r = r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("first"), "another key, another state");
    assert_eq!(states(&r).len(), 2);
    assert_same_as_full(&r);
}

#[test]
fn the_state_is_private_and_at_most_twice_the_outputs_it_feeds() {
    // Object ids are random GUIDs, which compress worst; mails are short.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut hex = |n: usize| {
        let mut out = String::new();
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{x:016x}"));
        }
        out.truncate(n);
        out
    };
    let members: Vec<Value> = (0..2000)
        .map(|i| {
            let id = format!("{}-{}-4{}-8{}-{}", hex(8), hex(4), hex(3), hex(3), hex(12));
            user(&id, Some(&format!("user{i}@example.com")), None, true)
        })
        .collect();
    let mut r = Run::new().group(STAFF, members).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    r.run();
    let outputs = std::fs::metadata(r.root().join(SENDERS)).unwrap().len();
    let size = |r: &Run| {
        let files = state(r);
        assert_eq!(files.len(), 3, "links, members, index: {files:?}");
        for (p, _) in &files {
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    };
    let first = size(&r);
    assert!(first <= 2 * outputs, "state {first} bytes, outputs {outputs}");
    r.run();
    let after = size(&r);
    assert!(after <= 2 * outputs, "after a delta run: state {after} bytes, outputs {outputs}");
}

/// A delta run over one-entry pages whose requests are, in order: two users pages (two
/// changed members), two group pages (two joined), one lookup of the two.
fn five_delta_requests() -> Run {
    let mut r = staff().global("[http]\nmax_retries = 2\n").ignore_stderr();
    r.sim.state().delta_page_size = 1;
    r.run();
    r.sim.state().directory.users.push(user("u8", Some("Olli@Example.com"), None, true));
    edit(&r, |m| {
        m[0]["mail"] = json!("alice.new@example.com");
        m[3]["mobilePhone"] = json!("+358 40 7654321");
    });
    r.run(); // u8 is a tenant user before it joins, so the join needs a lookup
    let mut joining: Vec<Value> = r.sim.state().directory.users.drain(..).collect();
    edit(&r, |m| {
        m.append(&mut joining);
        m[0]["mail"] = json!("alice@example.com");
        m[3]["mobilePhone"] = json!("+358 40 1234567");
    });
    r
}

#[test]
fn every_delta_and_lookup_request_gets_the_checks_of_a_members_page() {
    let status = |status: u16, retry_after: Option<&str>, code: &str| Fault::Status {
        status,
        retry_after: retry_after.map(str::to_owned),
        body: json!({"error": {"code": code, "message": code}}).to_string(),
    };
    // Recovered: retried after Retry-After, renewed after a 401.
    let recovered: [(&str, usize, Fault); 3] = [
        ("429 on the second users page", 1, status(429, Some("1"), "TooManyRequests")),
        ("503 on the second group page", 3, status(503, None, "ServiceUnavailable")),
        ("401 on the lookup", 4, Fault::RevokeTokens),
    ];
    for (what, at, fault) in recovered {
        let mut r = five_delta_requests();
        let since = r.sim.requests().len();
        r.sim.state().delta_faults.extend(std::iter::repeat_n(Fault::Pass, at).chain([fault]));
        r.run();
        let seen = &r.sim.requests()[since..];
        let delta: Vec<_> = seen.iter().filter(|q| !q.path.ends_with("/token")).collect();
        assert_eq!(delta.len(), 6, "{what}: five requests and one again: {delta:?}");
        assert_eq!(delta[at].path, delta[at + 1].path, "{what}: the same request again");
        if delta[at].status == 429 {
            assert!(delta[at + 1].at - delta[at].at >= std::time::Duration::from_secs(1), "{what}: Retry-After");
        }
        if delta[at].status == 401 {
            assert_eq!(seen.iter().filter(|q| q.path.ends_with("/token")).count(), 2, "{what}: a new token");
        }
        assert_same_as_full(&r);
    }
    // Failed: the instance fails, naming what and where; nothing moves on.
    let failed: [(&str, usize, Fault, &str); 4] = [
        ("403 on the first group page", 2, status(403, None, "Authorization_RequestDenied"), "403"),
        (
            "a nextLink to another host",
            2,
            Fault::Body(r#"{"value":[],"@odata.nextLink":"https://evil.example/v1.0/x"}"#.into()),
            "is not on",
        ),
        ("a page loop on the users round", 1, Fault::LoopTo(0), "page loop"),
        (
            "a lookup answer over the size cap",
            4,
            Fault::Body(format!("{{\"value\":[]{}}}", " ".repeat(65 << 20))),
            "larger than 67108864 bytes",
        ),
    ];
    for (what, at, fault, detail) in failed {
        let mut r = five_delta_requests();
        let (before, files) = (state(&r), outputs(&r.root()));
        r.sim.state().delta_faults.extend(std::iter::repeat_n(Fault::Pass, at).chain([fault]));
        r = r.expect_exit(1);
        let out = r.run();
        let conf = r.root().join("gw/config/entraid/staff.entraidconf");
        assert!(out.stderr.contains(&format!("instance `gw`, config {}", conf.display())), "{what}: {}", out.stderr);
        assert!(out.stderr.contains(detail) && out.stderr.contains("hint:"), "{what}: {}", out.stderr);
        assert_eq!((state(&r), outputs(&r.root())), (before, files), "{what}: nothing moved on");
        r = r.expect_exit(0);
        r.run();
        assert_same_as_full(&r);
    }
}

/// One change to the directory.
#[derive(Clone, Debug)]
enum Change {
    /// A tenant user outside the group (or a new user) joins.
    Join(usize),
    /// A member leaves the group, staying in the tenant.
    Leave(usize),
    /// A member's mail becomes this (valid or not).
    Mail(usize, String),
    /// A member's phone becomes this, or goes.
    Phone(usize, Option<String>),
    /// A member is disabled or enabled.
    Toggle(usize),
    /// A member is deleted from the tenant.
    Delete(usize),
    /// A user outside the group changes.
    Outside(usize, String),
}

fn change() -> impl proptest::strategy::Strategy<Value = Change> {
    use proptest::prelude::*;
    let mail = prop_oneof!["[a-c]{1,3}@example\\.com", "[A-C]{1,2}@Example\\.COM", Just("not a mail".to_owned())];
    let phone = proptest::option::of(prop_oneof!["\\+358 40 [0-9]{7}", Just("call me".to_owned())]);
    prop_oneof![
        (0..8usize).prop_map(Change::Join),
        (0..8usize).prop_map(Change::Leave),
        ((0..8usize), mail.clone()).prop_map(|(k, m)| Change::Mail(k, m)),
        ((0..8usize), phone).prop_map(|(k, p)| Change::Phone(k, p)),
        (0..8usize).prop_map(Change::Toggle),
        (0..8usize).prop_map(Change::Delete),
        ((0..8usize), mail).prop_map(|(k, m)| Change::Outside(k, m)),
    ]
}

fn apply(run: &Run, change: &Change, fresh: &mut usize) {
    let mut state = run.sim.state();
    let dir = &mut state.directory;
    let members = dir.groups.get_mut(STAFF).unwrap();
    let at = |k: usize, n: usize| (n > 0).then(|| k % n);
    match change {
        Change::Join(k) => {
            let u = if let Some(i) = at(*k, dir.users.len()) {
                dir.users.remove(i)
            } else {
                *fresh += 1;
                let (id, mail) = (format!("new{fresh}"), format!("new{fresh}@example.com"));
                user(&id, Some(&mail), Some("+358 40 1000000"), true)
            };
            dir.groups.get_mut(STAFF).unwrap().push(u);
        }
        Change::Leave(k) => {
            if let Some(i) = at(*k, members.len()) {
                let u = members.remove(i);
                dir.users.push(u);
            }
        }
        Change::Mail(k, m) => {
            if let Some(i) = at(*k, members.len()) {
                members[i]["mail"] = json!(m);
            }
        }
        Change::Phone(k, p) => {
            if let Some(i) = at(*k, members.len()) {
                members[i]["mobilePhone"] = p.as_ref().map_or(Value::Null, |p| json!(p));
            }
        }
        Change::Toggle(k) => {
            if let Some(i) = at(*k, members.len()) {
                let on = members[i]["accountEnabled"].as_bool().unwrap_or(true);
                members[i]["accountEnabled"] = json!(!on);
            }
        }
        Change::Delete(k) => {
            if let Some(i) = at(*k, members.len()) {
                members.remove(i);
            }
        }
        Change::Outside(k, m) => {
            if let Some(i) = at(*k, dir.users.len()) {
                dir.users[i]["mail"] = json!(m);
            }
        }
    }
}

proptest::proptest! {
    // 6 cases in CI (a few seconds); PROPTEST_CASES=100 for a longer look.
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6),
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random sequences of 1 to 10 change batches: after every batch, the files of a delta run
    /// equal those of a full read of the same directory.
    #[test]
    fn after_every_batch_delta_equals_a_full_read(
        batches in proptest::collection::vec(proptest::collection::vec(change(), 1..6), 1..=10)
    ) {
        // Random changes may gut a list: the guards are not what is tested here.
        let mut r = staff().args(&["-q", "--force"]).ignore_stderr();
        r.sim.state().delta_page_size = 3;
        r.run();
        let mut fresh = 0;
        for batch in &batches {
            for change in batch {
                apply(&r, change, &mut fresh);
            }
            r.run();
            assert_same_as_full(&r);
        }
    }
}

// ---- Issue 20: the state never costs a list; clocks; what Graph may send ----

/// `state_dir` cannot take the state (here a file stands where its `delta/` must go): the
/// lists are written all the same, with a warning, and the next run reads in full.
#[test]
fn a_state_dir_that_cannot_take_the_state_costs_no_list() {
    let r = staff();
    std::fs::create_dir_all(r.path().join("state")).unwrap();
    std::fs::write(r.path().join("state/delta"), "not a directory").unwrap();
    let mut r = r
        .args(&["--format", "json"])
        .ignore_stderr()
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("cannot write the delta state; the lists are written all the same"), "{}", out.stderr);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("first"), "the next run reads in full");
}

/// A FIFO where the state should be: read without blocking, taken for a corrupt state (a
/// full read), and removed, so that the run after starts afresh.
#[test]
fn a_fifo_in_place_of_the_state_does_not_hang() {
    let mut r = staff().args(&["--format", "json"]).ignore_stderr();
    r.run();
    let path = states(&r).remove(0);
    std::fs::remove_file(&path).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap();
    let out = r.run_within(std::time::Duration::from_secs(30));
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("resync:state-corrupt"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("first"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_same_as_full(&r);
}

/// An object id with a line break and a tab cannot break the state's lines: such an object
/// is skipped by reason, and the next run reads by delta, not "state-corrupt" for ever.
#[test]
fn a_hostile_object_id_never_corrupts_the_state() {
    let r = staff();
    edit(&r, |m| m.push(user("x\ny\tz", Some("hostile@example.com"), None, true)));
    let mut r = r.args(&["--format", "json"]).expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    let out = r.run();
    assert!(out.stdout.contains("\"invalid-id\": 1"), "{}", out.stdout);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_same_as_full(&r);
}

/// On `users/delta` everything is a user, with or without `@odata.context`: a changed
/// user is applied, never dropped as untyped.
#[test]
fn users_delta_items_are_users_whatever_the_context_says() {
    for context in ["", "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.user)"] {
        let mut r = staff().args(&["--format", "json"]);
        r.run();
        r.sim.state().users_delta_context = Some(context.to_owned());
        edit(&r, |m| m[0]["mail"] = json!("alice.new@example.com"));
        r = r.expect_file(SENDERS, Some("alice.new@example.com\ncarol@example.com\n"));
        let out = r.run();
        assert_eq!(reads(&out.stdout)[0].0, "delta", "{context:?}");
        assert_same_as_full(&r);
    }
}

/// The synced group itself deleted: noticed in the run that sees it, which fails closed
/// with an error naming the group; the list stays as it was.
#[test]
fn a_deleted_group_fails_its_run_naming_the_group() {
    let mut r = staff();
    r.run();
    r.sim.state().deleted_groups.insert(STAFF.into());
    let mut r = r.expect_exit(1).ignore_stderr().expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains(&format!("Graph says the group {STAFF} was deleted")), "{}", out.stderr);
}

/// The local clock runs an hour slow for one run of `-i b`, which then holds the newer
/// users link with the older time. The next run must still see the change `a` missed.
#[test]
fn a_run_with_a_slow_clock_leaves_no_change_unseen() {
    let Some(faketime) = libfaketime() else { return };
    let r = staff().group(SALES, vec![user("s1", Some("sam@example.com"), None, true)]).conf(
        "b",
        "sales",
        &format!("group_id = \"{SALES}\"\n"),
    );
    // Two groups are fetched at once: their log lines come in either order.
    let mut r = r.args(&["--format", "json"]).ignore_stderr();
    r.run();
    edit(&r, |m| m[0]["mail"] = json!("alice.new@example.com"));
    let mut r = r.args(&["-i", "b", "--format", "json"]).env("LD_PRELOAD", &faketime).env("FAKETIME", "-1h");
    r.run();
    let mut r = r
        .args(&["--format", "json"])
        .env("FAKETIME", "+0")
        .expect_file(SENDERS, Some("alice.new@example.com\ncarol@example.com\n"));
    r.run();
    assert_same_as_full(&r);
}

/// libfaketime, if installed (tests/setup does it).
fn libfaketime() -> Option<String> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if found.is_none() {
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime; tests/setup does it)");
    }
    found.map(str::to_owned)
}

/// A last full read in the future (the clock was ahead, and went back): one safety-net read
/// now, not none until the clock catches up.
#[test]
fn a_full_read_stamped_in_the_future_is_due_now() {
    let mut r = staff().args(&["--format", "json"]);
    r.run();
    age_full_read_to(&r, |now| now + 365 * 86_400);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("safety-net"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
}

/// A users round that is still going at the run's deadline fails its groups with the
/// deadline error and its hint, not an internal error.
#[test]
fn a_users_round_past_the_deadline_fails_with_the_deadline() {
    let mut r = staff();
    r.run();
    r.sim.state().users_delta_latency = std::time::Duration::from_secs(8);
    let mut r = r
        .global("[http]\ntimeout_seconds = 30\nmax_retries = 0\ndeadline_seconds = 1\n")
        .expect_exit(1)
        .ignore_stderr();
    let out = r.run();
    assert!(out.stderr.contains("the run deadline of 1 s passed"), "{}", out.stderr);
    assert!(!out.stderr.contains("internal error"), "{}", out.stderr);
}

/// A refusal that outlasts `full_sync_hours` does not make every run a full read: a safety
/// net read and not committed (the instance was refused) is tried again an hour later, and
/// the runs between read by delta, still planning every member. Once the refusal ends, the
/// next safety net is committed.
#[test]
fn a_lasting_refusal_reads_in_full_once_an_hour_not_every_run() {
    let mut r = staff().global("[guard]\nmax_removed = 0\n").args(&["--format", "json"]).ignore_stderr();
    r.run();
    age_full_read(&r, 25);
    edit(&r, |m| m.retain(|u| u["id"] != "u4"));
    r = r.expect_exit(3);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("safety-net"), "the net is due");
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta", "read within the hour, not committed: by delta");
    assert!(out.stdout.contains("\"removed_count\": 1"), "and still refused: {}", out.stdout);
    // An hour later the net is tried again.
    let net = delta_files(&r, "net").remove(0);
    let tried: u64 = std::fs::read_to_string(&net).unwrap().trim().parse().unwrap();
    std::fs::write(&net, (tried - 3600).to_string()).unwrap();
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("safety-net"));
    // The refusal ends (within the hour: by delta), and the state moves on: the net is due
    // again at once, and committed.
    r = r.args(&["--format", "json", "--force"]).expect_exit(0).expect_file(SENDERS, Some("alice@example.com\n"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert!(delta_files(&r, "net").is_empty(), "the note goes with the commit");
    r = r.args(&["--format", "json"]);
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].1.as_deref(), Some("safety-net"));
    let out = r.run();
    assert_eq!(reads(&out.stdout)[0].0, "delta");
    assert_same_as_full(&r);
}

/// Members that changed are patched into the lists: no full plan, which would read every
/// member, yet the lists a full read writes. A list edited by hand meanwhile is not patched:
/// it is planned in full, and put right.
#[test]
fn changes_are_patched_into_the_lists_and_a_list_edited_by_hand_is_planned_in_full() {
    let mut r = staff().args(&["-v"]).ignore_stderr();
    r.run();
    let nina = r.sim.state().directory.users.remove(0);
    edit(&r, |m| {
        m[0]["mail"] = json!("Alice.New@Example.com");
        m.retain(|u| u["id"] != "u4");
        m.push(nina);
    });
    let out = r.run();
    assert!(out.stderr.contains("planned by the changes alone"), "{}", out.stderr);
    assert_same_as_full(&r);
    // A hand edit, then a change: the list is planned in full, and the edit undone.
    let senders = r.root().join(SENDERS);
    let right = std::fs::read_to_string(&senders).unwrap();
    std::fs::write(&senders, format!("{right}mallory@example.com\n")).unwrap();
    edit(&r, |m| m[0]["mail"] = json!("Alice@Example.com"));
    let out = r.run();
    assert!(!out.stderr.contains("planned by the changes alone"), "{}", out.stderr);
    assert!(!std::fs::read_to_string(&senders).unwrap().contains("mallory"));
    assert_same_as_full(&r);
    // And the next change is patched again: a phone, so only gsm_list changes.
    edit(&r, |m| m[0]["mobilePhone"] = json!("+358 40 5555555"));
    let out = r.run();
    assert!(out.stderr.contains("planned by the changes alone"), "{}", out.stderr);
    assert_same_as_full(&r);
    // The lists it left unchanged are remembered as well: the next run plans nothing.
    let out = r.run();
    assert!(out.stderr.contains("nothing changed since the last run: no plan"), "{}", out.stderr);
}
