//! Issue 20: what the gateway's own account (here `nobody`), or whoever holds it, tries in
//! order to read, write or stop through usersync what it could not itself (contract §9).
//! Each test runs as root, sets the scene as the attacker would leave it, and checks that
//! nothing is read, sent or written that should not be. Without root a test says it skipped.

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use usersync_sim::Proxy;

use crate::util::*;

const HR_ONLY: &str = "dana@example.com\n";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives the directories `rel` (each, from the first) of the server root to the gateway.
fn gateway_owns(r: &Run, rel: &[&str]) {
    for d in rel {
        let p = r.root().join(d);
        std::fs::create_dir_all(&p).unwrap();
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        chmod(&p, 0o750);
    }
}

/// A root-only file outside the server root.
fn root_only(r: &Run, rel: &str, content: &str) -> PathBuf {
    let p = r.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    chmod(&p, 0o600);
    p
}

/// A simulator whose SALES group is HR's secret membership, and whose STAFF group is ours.
fn hr() -> Run {
    Run::new().group(STAFF, staff_members()).group(SALES, vec![user("h1", Some("dana@example.com"), None, true)])
}

/// The same over TLS, with a proxy that stands in for Microsoft's names (what a config
/// the gateway controls must use), set as `HTTPS_PROXY`.
fn hr_tls() -> (Run, Proxy) {
    let r = Run::new_tls()
        .group(STAFF, staff_members())
        .group(SALES, vec![user("h1", Some("dana@example.com"), None, true)]);
    let proxy = Proxy::redirecting(r.sim.addr()).unwrap();
    let r = r.env("HTTPS_PROXY", &proxy.url());
    (r, proxy)
}

fn token_requests(r: &Run) -> usize {
    r.token_requests()
}

// ---- 1. Symlinks, hard links and renames above the judged file ----

/// The gateway swaps its `config/entraid` for a symlink to a root-owned instance's: that
/// instance's group must not reach the gateway's list, and no lock lands in root's directory.
#[test]
fn a_symlinked_config_entraid_is_not_followed_into_another_instance() {
    if !as_root() {
        return;
    }
    let r = hr().conf("hr", "staff", &format!("group_id = \"{SALES}\"\n"));
    gateway_owns(&r, &["gw", "gw/config"]);
    symlink(r.root().join("hr/config/entraid"), r.root().join("gw/config/entraid")).unwrap();
    let mut r = r.args(&["-i", "gw"]).expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr.contains(
            "is a symlink in a directory that someone else than root controls, and usersync does not follow it"
        ),
        "{}",
        out.stderr
    );
    assert!(!r.root().join("hr/config/entraid/usersync.lock").exists(), "no lock in root's directory");
    assert_eq!(token_requests(&r), 0, "nothing sent");
}

/// One `.entraidconf` in the gateway's directory is a symlink to a root-only config (with
/// its inline secret and group): it is not read at all.
#[test]
fn a_symlinked_entraidconf_in_the_gateways_directory_is_not_read() {
    if !as_root() {
        return;
    }
    let r = hr();
    let secret = root_only(
        &r,
        "etc/hr.entraidconf",
        &format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\ngroup_id = \"{SALES}\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    symlink(&secret, r.root().join("gw/config/entraid/hr.entraidconf")).unwrap();
    let mut r = r.args(&["-i", "gw"]).expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    assert!(out.stderr.contains("hr.entraidconf: cannot read: a symlink is on the way"), "{}", out.stderr);
    assert_eq!(token_requests(&r), 0);
}

/// A hard link to a root-only config, made in the gateway's directory (possible wherever
/// `fs.protected_hardlinks` is off), is a second name of root's file: not read.
#[test]
fn a_hard_link_to_a_root_only_config_is_not_read() {
    if !as_root() {
        return;
    }
    let r = hr();
    let secret = root_only(
        &r,
        "server/etc/hr.entraidconf",
        &format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\ngroup_id = \"{SALES}\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    std::fs::hard_link(&secret, r.root().join("gw/config/entraid/hr.entraidconf")).unwrap();
    let mut r = r.args(&["-i", "gw"]).expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    assert!(out.stderr.contains("it has 2 hard links"), "{}", out.stderr);
    assert_eq!(token_requests(&r), 0);
}

/// A config root wrote, found through a directory the gateway controls, is untrusted: the
/// gateway could have put it there or could swap it any time.
#[test]
fn a_root_owned_config_in_the_gateways_directory_is_untrusted() {
    if !as_root() {
        return;
    }
    let r = hr().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    gateway_owns(&r, &["gw"]);
    let mut r = r.expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    let gw = r.root().join("gw");
    assert!(
        out.stderr.contains(&format!(
            "key `authority_host`: may only be set in a trusted file, and this one is untrusted: {} on its path is owned by uid 65534",
            gw.display()
        )),
        "{}",
        out.stderr
    );
    assert!(r.sim.requests().is_empty());
    // `check` names the directory the gateway controls, offline.
    let mut r = r.args(&["check"]);
    let out = r.run();
    assert!(
        out.stdout.contains(&format!("untrusted: {} on its path is owned by uid 65534", gw.display())),
        "{}",
        out.stdout
    );
}

/// While runs go on, the gateway keeps swapping its `config/entraid` for a symlink to a
/// root-owned directory and back. Whatever the timing, root creates nothing there.
#[test]
fn swapping_config_entraid_during_runs_never_makes_root_create_files_elsewhere() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = hr_tls();
    let r = r.conf_no_endpoints("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    chown(r.root().join("gw/config/entraid/staff.entraidconf"), Some(NOBODY), Some(NOBODY)).unwrap();
    let victim = r.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let entraid = r.root().join("gw/config/entraid");
    let real = r.root().join("gw/config/entraid.real");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, entraid, real, victim) = (stop.clone(), entraid.clone(), real.clone(), victim.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&entraid, &real);
                let _ = symlink(&victim, &entraid);
                std::thread::sleep(Duration::from_micros(300));
                let _ = std::fs::remove_file(&entraid);
                let _ = std::fs::rename(&real, &entraid);
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let r = r.args(&["-i", "gw"]).ignore_stderr();
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(4) && runs < 60 {
        let out = r.command().output().unwrap();
        assert!([0, 1, 2].contains(&out.status.code().unwrap_or(-1)), "{out:?}");
        runs += 1;
        let left: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
        assert!(left.is_empty(), "run {runs} created {left:?} in the directory the symlink pointed at");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(runs >= 10, "only {runs} runs");
}

// ---- 2. Borrowed secrets ----

/// A config the gateway controls names another instance's systemd credential: refused
/// before anything is sent with it.
#[test]
fn an_untrusted_config_cannot_borrow_another_instances_credential() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = hr_tls();
    let creds = r.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("hr-app"), SECRET).unwrap();
    let global = std::fs::read_to_string(r.path().join("usersync.toml")).unwrap();
    let r = r
        .global(&format!("{global}[credentials]\nhr = [\"hr-app\"]\n"))
        .conf_no_endpoints("gw", "x", &format!("group_id = \"{SALES}\"\nclient_secret_credential = \"hr-app\"\n"))
        .env("CREDENTIALS_DIRECTORY", &creds.display().to_string());
    give_away(&r.root().join("gw/config/entraid/x.entraidconf"));
    let mut r = r.expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr.contains("key `client_secret_credential`: the credential `hr-app` is not given to instance `gw`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was sent with it"), "{}", out.stderr);
    assert_eq!(token_requests(&r), 0);
    // `check` says the same, offline.
    let mut r = r.args(&["check"]).ignore_stderr();
    let out = r.run();
    assert!(out.stdout.contains("the credential `hr-app` is not given to instance `gw`"), "{}", out.stdout);
}

/// Root keeps a 0600 secret for its own config beneath the instance; a config the gateway
/// may edit names that file with a group of its choosing. It may not use it.
#[test]
fn an_untrusted_config_cannot_borrow_a_root_only_secret_file_beneath_it() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = hr_tls();
    let r = r.file("gw/config/entraid/staff.secret", SECRET).conf_no_endpoints(
        "gw",
        "evil",
        &format!("group_id = \"{SALES}\"\nclient_secret_file = \"staff.secret\"\n"),
    );
    chmod(&r.root().join("gw/config/entraid/staff.secret"), 0o600);
    give_away(&r.root().join("gw/config/entraid/evil.entraidconf"));
    let mut r = r.expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr.contains("so it is not a secret of whoever may change this config (a borrowed secret)"),
        "{}",
        out.stderr
    );
    assert_eq!(token_requests(&r), 0);
    let mut r = r.args(&["check"]).ignore_stderr();
    let out = r.run();
    assert!(out.stdout.contains("(a borrowed secret)"), "{}", out.stdout);
    // Given to the gateway's account, the file is its own secret: it syncs.
    chown(r.root().join("gw/config/entraid/staff.secret"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut r = r.args(&[]).expect_exit(0).expect_file(SENDERS, Some(HR_ONLY));
    r.run();
}

// ---- 3. Outputs over usersync's own files ----

/// A `.cfg` the gateway may edit names, as the list, a config, the lock, or the `.cfg`
/// itself: refused before anything is written, and the file stays as it was.
#[test]
fn an_untrusted_cfg_cannot_make_root_overwrite_a_config_or_the_lock() {
    if !as_root() {
        return;
    }
    for target in ["config/entraid/staff.entraidconf", "config/entraid/usersync.lock", "config/envelope.cfg"] {
        let r = hr().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
        let conf = std::fs::read_to_string(r.root().join("gw/config/entraid/staff.entraidconf")).unwrap();
        let r = r.file("gw/config/envelope.cfg", &format!("ALLOWEDLDAPSENDERFILE={target}\n"));
        give_away(&r.root().join("gw/config/envelope.cfg"));
        let mut r = r.expect_exit(2).ignore_stderr();
        let out = r.run();
        assert!(
            out.stderr
                .contains("this output it would lie in a directory where usersync keeps its configs, lock or state")
                || out.stderr.contains("this output it is a file usersync itself reads or locks")
                || out.stderr.contains("which whoever may change this file could not write themselves"),
            "{target}: {}",
            out.stderr
        );
        assert_eq!(r.read("gw/config/entraid/staff.entraidconf").as_deref(), Some(conf.as_str()), "{target}");
        let mut r = r.args(&["check"]);
        let out = r.run();
        assert!(out.stdout.contains("usersync"), "{target}: check reports it: {}", out.stdout);
    }
}

/// Not even root's own `.cfg` makes an output of a file in the state directory: the delta
/// state, or what each instance's lists were last written from.
#[test]
fn a_trusted_cfg_cannot_name_a_file_of_the_state() {
    let mut r = hr().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n")).ignore_stderr();
    r.run();
    for sub in ["delta", "instances"] {
        let target = r.path().join("state").join(sub).join("x.txt");
        r = r.file("gw/config/envelope.cfg", &format!("ALLOWEDLDAPSENDERFILE={}\n", target.display())).expect_exit(2);
        let out = r.run();
        assert!(out.stderr.contains("where usersync keeps its configs, lock or state"), "{sub}: {}", out.stderr);
        assert!(!target.exists(), "{sub}");
    }
}

/// The same where the gateway's account owns the whole instance, so that it could write
/// those files itself: usersync still never writes its own configs, `.cfg` or lock.
#[test]
fn a_gateway_owned_cfg_cannot_make_an_output_of_usersyncs_own_files() {
    if !as_root() {
        return;
    }
    for target in ["config/entraid/staff.entraidconf", "config/entraid/usersync.lock", "config/envelope.cfg"] {
        let (r, _proxy) = hr_tls();
        let r = r
            .conf_no_endpoints("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
            .file("gw/config/envelope.cfg", &format!("ALLOWEDLDAPSENDERFILE={target}\n"));
        gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
        for f in ["config/entraid/staff.entraidconf", "config/envelope.cfg"] {
            give_away(&r.root().join("gw").join(f));
        }
        let conf = std::fs::read_to_string(r.root().join("gw/config/entraid/staff.entraidconf")).unwrap();
        let mut r = r.expect_exit(2).ignore_stderr();
        let out = r.run();
        assert!(out.stderr.contains("this output it"), "{target}: {}", out.stderr);
        assert_eq!(r.read("gw/config/entraid/staff.entraidconf").as_deref(), Some(conf.as_str()), "{target}");
        assert_eq!(token_requests(&r), 0, "{target}");
    }
}

/// Even a root-owned `.cfg`'s path is not followed through a symlink the gateway placed in
/// a directory it owns: root never writes into the symlink's target.
#[test]
fn a_trusted_cfgs_path_is_not_followed_through_a_symlink_the_gateway_placed() {
    if !as_root() {
        return;
    }
    let r = hr()
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
        .file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=lists/out/allowed.txt\n");
    gateway_owns(&r, &["gw/lists"]);
    let victim = r.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    symlink(&victim, r.root().join("gw/lists/out")).unwrap();
    let mut r = r.expect_exit(1).ignore_stderr();
    let out = r.run();
    assert!(out.stderr.contains("usersync never writes through a symlink"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "nothing written into the symlink's target");
}

/// An output that is a second name (hard link) of a root-only file, made where the gateway
/// controls the directory (possible wherever `fs.protected_hardlinks` is off), is neither
/// read (a dry run would list its lines as removed entries) nor replaced. In root's own
/// directory a second name is root's doing (a hard-link backup), and allowed.
#[test]
fn a_hard_linked_output_is_neither_read_nor_replaced() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = hr_tls();
    let r = r.conf_no_endpoints("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    let shadow = root_only(&r, "server/etc/shadow", "root:$6$do-not-leak@example.com\n");
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    give_away(&r.root().join("gw/config/entraid/staff.entraidconf"));
    std::fs::hard_link(&shadow, r.root().join(SENDERS)).unwrap();
    let mut r = r.args(&["--dry-run"]).expect_exit(1).ignore_stderr();
    let out = r.run();
    assert!(
        !out.stdout.contains("do-not-leak") && !out.stderr.contains("do-not-leak"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("it has 2 hard links"), "{}", out.stderr);
    let mut r = r.args(&[]);
    r.run();
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:$6$do-not-leak@example.com\n");
}

// ---- 7. Smaller, found on review ----

/// A value that holds a `"` is still quoted by its first 8 characters only: the rest of a
/// secret typed into the wrong key never reaches the log.
#[test]
fn a_quoted_value_holding_a_quote_is_still_cut_at_8_characters() {
    let r = hr().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ninclude_disabled = 'ab\"cdefgh-secret-rest'\n"));
    let mut r = r.expect_exit(2).ignore_stderr();
    let out = r.run();
    assert!(out.stderr.contains("invalid type: string"), "{}", out.stderr);
    assert!(!out.stderr.contains("secret-rest") && !out.stderr.contains("h-secret"), "{}", out.stderr);
}
