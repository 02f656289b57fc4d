//! A run in which nothing changed: it plans nothing when the instance's configs, its groups'
//! delta states and its files are as the last run left them, says what a plan would have
//! said, and writes nothing. Anything else (someone's edit of a list, a config change, a
//! list gone, an unreadable memo) is planned as ever.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::util::*;

const STAFF_CONF: &str =
    "query_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\n";

/// What the run logs when it found nothing to plan (at debug level).
const NO_PLAN: &str = "nothing changed since the last run: no plan";

fn staff() -> Run {
    Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"))
        .env("RUST_LOG", "usersync::cmd::sync=debug,warn")
        .ignore_stderr()
}

/// Whether the run planned (it did unless it said it found nothing to plan).
fn planned(out: &Output) -> bool {
    !out.stderr.contains(NO_PLAN)
}

/// Every file under `dir`, recursively: path → (modification time, a hash of its bytes).
fn tree(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                let mut h = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&std::fs::read(e.path()).unwrap(), &mut h);
                out.push((e.path(), meta.modified().unwrap(), std::hash::Hasher::finish(&h)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_unchanged_run_plans_nothing_and_reports_what_a_plan_would() {
    let mut r = staff().args(&["--format", "json"]);
    assert!(planned(&r.run()), "the first run");
    let fast = r.run();
    assert!(!planned(&fast), "{}", fast.stderr);
    // Touching a list moves its ctime: the next run plans, and finds every list equal.
    let senders = r.root().join(SENDERS);
    std::fs::File::options().append(true).open(&senders).unwrap().set_modified(SystemTime::now()).unwrap();
    let slow = r.run();
    assert!(planned(&slow), "{}", slow.stderr);
    assert_eq!(fast.stdout, slow.stdout, "the report is the plan's");
    assert!(!planned(&r.run()), "and the run after that plans nothing again");
}

#[test]
fn an_unchanged_run_writes_nothing() {
    let mut r = staff();
    r.run();
    r.run();
    let (server, state) = (tree(&r.root()), tree(&r.path().join("state")));
    let out = r.run();
    assert!(!planned(&out));
    assert_eq!(tree(&r.root()), server, "no list, no lock file changed");
    assert_eq!(tree(&r.path().join("state")), state, "no state changed");
}

/// The list's owner edits it, keeping its size and setting its mtime back: the ctime
/// still tells, and the run writes the list again.
#[test]
fn an_edit_of_a_list_is_undone_even_with_its_size_and_mtime_kept() {
    let mut r = staff();
    r.run();
    let path = r.root().join(SENDERS);
    let (text, mtime) =
        (std::fs::read_to_string(&path).unwrap(), std::fs::metadata(&path).unwrap().modified().unwrap());
    let forged = text.replace("alice@", "blice@");
    assert!(forged != text && forged.len() == text.len());
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, &forged).unwrap();
    std::fs::File::options().append(true).open(&path).unwrap().set_modified(mtime).unwrap();
    r = r.expect_file(SENDERS, Some(&text));
    let out = r.run();
    assert!(planned(&out));
}

#[test]
fn a_list_removed_is_written_again() {
    let mut r = staff();
    r.run();
    let text = std::fs::read_to_string(r.root().join(GSM)).unwrap();
    std::fs::remove_file(r.root().join(GSM)).unwrap();
    r = r.expect_file(GSM, Some(&text));
    assert!(planned(&r.run()));
}

/// A config change the group does not see (the access rule's style) is planned.
#[test]
fn a_config_change_alone_is_planned() {
    let mut r = staff();
    r.run();
    assert!(!planned(&r.run()));
    let conf = r.root().join("gw/config/entraid/staff.entraidconf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}access_rule = \"sms\"\n")).unwrap();
    assert!(planned(&r.run()));
    assert!(r.read(RULES).unwrap().contains(" * <sms> - 0\n"), "{:?}", r.read(RULES));
}

/// A memo that does not read is no memo: the run plans, and leaves a good one.
#[test]
fn an_unreadable_memo_is_planned_over() {
    let mut r = staff();
    r.run();
    let memos: Vec<PathBuf> =
        std::fs::read_dir(r.path().join("state/instances")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(memos.len(), 1, "{memos:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&memos[0]).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(&memos[0], b"{not json").unwrap();
    assert!(planned(&r.run()));
    assert!(!planned(&r.run()));
}

/// A dry run may use the memo, but never writes one.
#[test]
fn a_dry_run_leaves_no_memo() {
    let mut r = staff().args(&["--dry-run"]);
    r.run();
    assert!(!r.path().join("state/instances").exists());
}

/// In text, a run in which nothing changed is one line on stdout and nothing on stderr
/// (one line in the journal); `-v` gives every config and output, as a run with changes.
#[test]
fn an_unchanged_run_says_one_line() {
    let mut r = Run::new()
        .group(STAFF, staff_members())
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{STAFF_CONF}"))
        .conf("gw2", "staff", &format!("group_id = \"{STAFF}\"\n"));
    let first = r.run();
    assert!(first.stdout.lines().count() > 2, "{}", first.stdout);
    let out = r.run();
    assert_eq!(out.stdout, "unchanged: 2 instances, 4 lists, 3 HTTP requests\n");
    assert_eq!(out.stderr, "");
    r = r.args(&["-v"]).ignore_stderr();
    let out = r.run();
    let conf = r.root().join("gw/config/entraid/staff.entraidconf");
    assert!(
        out.stdout.starts_with(&format!("gw: config {}: delta read, 2 requests\n", conf.display())),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 6, "{}", out.stdout);
}

/// What the memo keeps is each list as the run read or wrote it, not as it is when the run
/// ends: a list edited while the run was busy elsewhere (here, in the node check before its
/// first write) is planned and written again by the next run.
#[test]
fn an_edit_while_the_run_is_busy_is_not_taken_for_its_own() {
    let mut r = staff();
    r.run();
    let gsm = r.root().join(GSM);
    let calls = r.path().join("calls");
    let script = r.path().join("status.sh");
    // Its second call (the check before the first write) edits gsm_list, keeping its size.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho x >> {calls}\nif [ \"$(wc -l < {calls})\" = 2 ]; then sed -i 's/+/=/' {gsm}; fi\necho ACTIVE\n",
            calls = calls.display(),
            gsm = gsm.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut r = r.global(&format!("[node]\nstatus_command = [\"{}\"]\n", script.display()));
    let good = std::fs::read_to_string(&gsm).unwrap();
    // A new member with a mail and no phone: allowed_senders changes, gsm_list does not.
    r.sim.state().directory.groups.get_mut(STAFF).unwrap().push(user("u9", Some("dave@example.com"), None, true));
    r.run();
    let edited = std::fs::read_to_string(&gsm).unwrap();
    assert!(edited != good && edited.len() == good.len(), "the script edited it: {edited}");
    // Nothing changed in Graph since: the next run plans, and puts gsm_list right.
    let out = r.run();
    assert!(planned(&out), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&gsm).unwrap(), good);
}
