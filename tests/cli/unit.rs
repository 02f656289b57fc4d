//! The shipped systemd unit: under its sandbox, every path usersync writes by default is
//! writable, and new files are private unless usersync says otherwise.

use std::path::{Path, PathBuf};

use usersync::output::Output;

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
    let config = usersync::config::Config::parse("", Path::new("/etc/usersync/usersync.toml")).unwrap();
    let instance = Path::new(usersync::DEFAULT_SERVER_ROOT).join("gw1");
    let mut paths: Vec<PathBuf> = Output::ALL.iter().map(|o| instance.join(o.default_path())).collect();
    paths.push(instance.join(usersync::instance::ENTRAID_DIR).join(usersync::lock::LOCK_FILE));
    paths.push(config.state_dir.join(usersync::state::FILE));
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
