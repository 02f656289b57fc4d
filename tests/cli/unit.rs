//! The shipped systemd unit: under its sandbox, every path usersync writes by default is
//! writable, and new files are private unless usersync says otherwise.

use std::path::{Path, PathBuf};

use usersync::model::output::Output;

use crate::util::*;

/// The values of `key=` in `[Service]` of the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(str::to_owned)).collect()
}

/// The directories a unit with `ProtectSystem=strict` may write.
fn writable(unit: &str) -> Vec<PathBuf> {
    assert_eq!(values(unit, "ProtectSystem"), ["strict"], "the test assumes a read-only file system");
    let mut dirs: Vec<PathBuf> = values(unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace().map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))).collect::<Vec<_>>())
        .collect();
    for d in values(unit, "StateDirectory") {
        dirs.push(Path::new("/var/lib").join(d));
    }
    if values(unit, "PrivateTmp") == ["yes"] {
        dirs.push(PathBuf::from("/tmp"));
    }
    dirs
}

/// The metrics textfile that `config/usersync.toml` documents (commented out there).
fn documented_textfile(toml: &str) -> PathBuf {
    let line = toml.lines().find_map(|l| l.trim().strip_prefix("#textfile = ")).expect("a documented textfile");
    PathBuf::from(line.trim_matches('"'))
}

#[test]
fn every_default_path_usersync_writes_is_writable_under_the_shipped_unit() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/usersync.service")).unwrap();
    let toml = std::fs::read_to_string(format!("{root}/config/usersync.toml")).unwrap();
    let dirs = writable(&unit);
    let config = usersync::config::global::Config::parse("", Path::new("/etc/usersync/usersync.toml")).unwrap();
    let instance = Path::new(usersync::DEFAULT_SERVER_ROOT).join("gw1");
    let mut paths: Vec<PathBuf> = Output::ALL.iter().map(|o| instance.join(o.default_path())).collect();
    paths.push(instance.join(usersync::config::instance::ENTRAID_DIR).join(usersync::files::lock::LOCK_FILE));
    paths.push(config.state_dir.join(usersync::files::state::FILE));
    paths.push(documented_textfile(&toml));
    for p in &paths {
        assert!(
            dirs.iter().any(|d| p.starts_with(d)),
            "{} is read-only under the unit (writable: {dirs:?})",
            p.display()
        );
    }
    assert_eq!(paths.len(), 6);
}

#[test]
fn the_unit_creates_nothing_readable_by_others_by_accident() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/usersync.service")).unwrap();
    assert_eq!(values(&unit, "UMask"), ["0077"], "usersync sets the modes it means with fchmod");
}

/// `setpriv` arguments that give a root process exactly the unit's `CapabilityBoundingSet=`
/// (root's permitted and effective sets are cut to the bounding set at exec), as systemd does.
fn with_the_units_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/usersync.service")).unwrap();
    let caps = values(&unit, "CapabilityBoundingSet");
    assert_eq!(caps.len(), 1, "one CapabilityBoundingSet= line: {caps:?}");
    let mut set = String::from("-all");
    for cap in caps[0].split_whitespace() {
        set.push_str(",+");
        set.push_str(&cap.strip_prefix("CAP_").unwrap().to_lowercase());
    }
    ["setpriv", "--bounding-set", &set, "--inh-caps", "-all", "--no-new-privs"].map(str::to_owned).to_vec()
}

/// A Sec@GW gateway's instances belong to the gateway's account, not root: under the unit's
/// capabilities (not full root) usersync keeps the owner and mode of an existing list and
/// gives a first list the directory's owner and 0640. The instance's own configs are the
/// account's too, so they reach Microsoft's names (the redirecting proxy stands in).
#[test]
fn gateway_owned_lists_are_written_with_the_units_capabilities_only() {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    if !as_root() {
        return;
    }
    let r = Run::new_tls().group(STAFF, staff_members());
    let proxy = usersync_sim::Proxy::redirecting(r.sim.addr()).unwrap();
    let conf = format!("group_id = \"{STAFF}\"\n");
    let r = r
        .conf_no_endpoints("gw", "staff", &conf)
        .conf_no_endpoints("gw4", "staff", &conf)
        .file(SENDERS, "stale@example.com\n")
        .env("HTTPS_PROXY", &proxy.url());
    for instance in ["gw", "gw4"] {
        for dir in ["", "/config", "/config/entraid"] {
            let d = r.root().join(format!("{instance}{dir}"));
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
            chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        chown(r.root().join(format!("{instance}/config/entraid/staff.entraidconf")), Some(NOBODY), Some(NOBODY))
            .unwrap();
    }
    let senders = r.root().join(SENDERS);
    std::fs::set_permissions(&senders, std::fs::Permissions::from_mode(0o640)).unwrap();
    chown(&senders, Some(NOBODY), Some(NOBODY)).unwrap();
    let caps = with_the_units_capabilities();
    let mut r = r
        .wrapped_in(&caps.iter().map(String::as_str).collect::<Vec<_>>())
        .expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"))
        .expect_file("gw4/config/allowed_senders_ldap.txt", Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    for list in [senders, r.root().join("gw4/config/allowed_senders_ldap.txt")] {
        let m = std::fs::metadata(&list).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (NOBODY, NOBODY, 0o640), "{}", list.display());
    }
}

/// Under the journal (its stream in `JOURNAL_STREAM`, as systemd sets it), every log event
/// starts with its syslog priority and no time stamp (the journal has its own): warnings
/// are `<4>`, a list written is `<5>` (notice, which the unit's `LogLevelMax=notice`
/// keeps), and debug lines are `<7>`. Elsewhere, none of that.
#[test]
fn under_the_journal_each_log_line_carries_its_priority() {
    use std::os::unix::fs::MetadataExt;
    let mut r = one_conf().args(&["-v"]).ignore_stderr();
    r.sim.state().directory.groups.get_mut(STAFF).unwrap().push(user("u7", Some("bad mail@example.com"), None, true));
    r.run();
    let log = r.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    std::fs::write(r.root().join(SENDERS), "someone@example.com\n").unwrap();
    let out =
        r.command().env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())).stderr(file).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('<')), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<4> WARN skipped an invalid directory value")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<5> INFO written instance=gw")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<7>DEBUG ")), "{text}");
    // Not the journal's stream: plain lines.
    let out = r.command().env("JOURNAL_STREAM", "1:2").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.is_empty() && text.lines().all(|l| !l.starts_with('<')), "{text}");
}

/// Under the journal, an error is `<3>` on each of its lines (the unit's `SyslogLevel=` is
/// notice: `journalctl -p warning` must find it), and no value, from Graph or a file name,
/// starts a line of its own, which journald would read a priority from.
#[test]
fn under_the_journal_errors_are_err_and_no_value_starts_a_line() {
    use std::os::unix::fs::MetadataExt;
    let mut r = one_conf().ignore_stderr();
    r.run();
    let journal = |r: &Run, name: &str| {
        let log = r.path().join(name);
        let file = std::fs::File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let out =
            r.command().env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())).stderr(file).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), std::fs::read_to_string(&log).unwrap())
    };
    let alone = |text: &str| text.lines().all(|l| !l.contains("EMERGENCY") || !l.starts_with("<0>"));
    // A hostile Graph: an error message with a line of its own.
    r.sim.state().delta_faults.push(Fault::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"code": "resyncRequired", "message": "gone\n<0>EMERGENCY\r\n\u{0}x"}}).to_string(),
    });
    let (code, stdout, log) = journal(&r, "journal-graph");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')) && alone(&log), "{log}");
    assert!(log.contains(r"gone\n<0>EMERGENCY"), "the message is kept, escaped: {log}");
    assert!(alone(&stdout), "{stdout}");
    // A file name with a line break, in a config that does not parse: the instance's error.
    std::fs::write(r.root().join("gw/config/entraid/bad\n<0>EMERGENCY.entraidconf"), "nonsense").unwrap();
    let (code, stdout, log) = journal(&r, "journal-config");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')) && alone(&log), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<3>error: ")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<3>hint: ")), "{log}");
    assert!(log.contains(r"bad\n<0>EMERGENCY.entraidconf"), "the name, escaped: {log}");
    assert!(alone(&stdout), "{stdout}");
}
