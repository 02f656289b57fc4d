//! One run per instance at a time: an exclusive lock on `config/entraid/usersync.lock`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// The lock file's name inside the instance's `config/entraid/`.
pub const LOCK_FILE: &str = "usersync.lock";

/// Held while the instance is synced; released when dropped (or the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another usersync holds it.
    #[error("{} is held by another usersync run; instance skipped", .0.display())]
    Held(PathBuf),
    /// The lock file could not be opened.
    #[error("cannot open the lock file {}: {}", .0.display(), .1)]
    Io(PathBuf, #[source] std::io::Error),
}

impl crate::error::Hint for LockError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Held(_) => "another run is still busy with this instance; if none is running (check `systemctl status usersync` or `pgrep usersync`), the lock is released already and the next run proceeds".into(),
            Self::Io(p, _) => format!("usersync's user must be able to create {}", p.display()),
        })
    }
}

/// Takes the lock of the instance whose `config/entraid/` is `dir`, without waiting.
pub fn acquire(dir: &Path) -> Result<InstanceLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LockError::Io(path.clone(), e))?;
    match file.try_lock_exclusive() {
        Ok(()) => Ok(InstanceLock { _file: file }),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => Err(LockError::Held(path)),
        Err(e) => Err(LockError::Io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let t = tempfile::tempdir().unwrap();
        let first = acquire(t.path()).unwrap();
        assert!(matches!(acquire(t.path()), Err(LockError::Held(_))));
        drop(first);
        assert!(acquire(t.path()).is_ok());
    }
}
