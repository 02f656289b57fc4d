//! Small run state in `state_dir` (`state.json`): when each instance last synced successfully.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What usersync remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Instance → Unix time of its last successful sync.
    #[serde(default)]
    pub last_success: BTreeMap<String, u64>,
    /// What the alerts said so far, per instance (and `""` for a run stopped before any
    /// instance: the global config, the node check): an instance recovers only by its own
    /// success, never because another one synced.
    #[serde(default)]
    pub alerts: BTreeMap<String, AlertState>,
    /// Instance → config → reason → how many times its group's delta links were found no
    /// good, since the state began (a counter).
    #[serde(default)]
    pub delta_resyncs: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Instance → config → the members the delta state had wrong at the last safety-net read.
    #[serde(default)]
    pub delta_drift: BTreeMap<String, BTreeMap<String, u64>>,
    /// Output path → its sizes after each write, as (Unix time, entries), oldest first: the
    /// window guard's memory (see `plan::guard::Window`).
    #[serde(default)]
    pub sizes: BTreeMap<String, Vec<(u64, u64)>>,
    /// Instance → since when runs have found its lock held by another run (Unix time).
    #[serde(default)]
    pub locked_since: BTreeMap<String, u64>,
}

/// Alert state: is a failure going on, and when was it last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// The last run that said anything ended in exit 1, 2 or 3.
    pub failing: bool,
    /// When a failure alert was last delivered.
    pub last_alert: Option<u64>,
}

/// The state file's name in `state_dir`.
pub const FILE: &str = "state.json";

fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The lock that makes load, alert and save one step across concurrent runs.
const LOCK: &str = "state.lock";

/// How long a run waits for another one's load-alert-save step (which may be sending mail).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl State {
    /// Reads the state; a missing or unreadable file is an empty state (logged). The file is
    /// read as an output is: never through a symlink, never blocking on a FIFO, capped.
    #[must_use]
    pub fn load(dir: &Path) -> Self {
        let path = file(dir);
        match crate::files::judged::read(&path) {
            Ok((b, _)) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "run state unreadable; starting afresh");
                Self::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %crate::files::resolve::explain(&e), "run state unreadable; starting afresh");
                Self::default()
            }
        }
    }

    /// Writes the state atomically (a new file only readable by its owner), creating `dir`
    /// (mode 0750) if needed.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::files::write::write_file(&file(dir), 0o600, &json).map_err(|e| e.source)
    }

    /// Loads the state, lets `f` change it, and saves it when `f` says it changed, under a
    /// lock that other runs take too, so that none loses another's update. If the lock
    /// cannot be had, `f` still runs on the state as read, and nothing is saved (logged).
    pub fn update<T>(dir: &Path, f: impl FnOnce(&mut Self) -> (bool, T)) -> (Self, T) {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir);
        let lock = crate::files::judged::Dir::open(&crate::files::judged::absolute(dir))
            .map_err(|e| e.to_string())
            .and_then(|d| crate::files::lock::wait_for(&d, LOCK, LOCK_WAIT).map_err(|e| e.to_string()));
        let mut state = Self::load(dir);
        let (changed, out) = f(&mut state);
        match lock {
            Ok(_held) if changed => {
                if let Err(e) = state.save(dir) {
                    tracing::warn!(state_dir = %dir.display(), error = %e, "cannot save the run state; check state_dir");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(state_dir = %dir.display(), error = %e, "cannot lock the run state; it was not saved");
            }
        }
        (state, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_garbage() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        assert_eq!(State::load(&dir), State::default());
        let s = State { last_success: BTreeMap::from([("gw".into(), 42)]), ..State::default() };
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir), s);
        std::fs::write(dir.join("state.json"), "{").unwrap();
        assert_eq!(State::load(&dir), State::default());
    }
}
