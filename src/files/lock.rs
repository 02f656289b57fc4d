//! One run per instance at a time: an exclusive lock on `config/entraid/usersync.lock`.

use std::fs::File;
use std::path::PathBuf;

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::files::judged::Dir;

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
    #[error("cannot open the lock file {}: {}", .0.display(), crate::files::resolve::explain(.1))]
    Io(PathBuf, #[source] std::io::Error),
}

impl crate::error::Hint for LockError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Held(_) => "another run is still busy with this instance; if none is running (check `systemctl status usersync` or `pgrep usersync`), the lock is released already and the next run proceeds".into(),
            Self::Io(p, e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => format!("usersync never opens its lock through a symlink: remove {} (no run is using it while it is a symlink)", p.display()),
            Self::Io(p, e) if e.kind() == std::io::ErrorKind::InvalidInput => format!("the lock must be a regular file with one name: remove {}", p.display()),
            Self::Io(p, _) => format!("usersync's user must be able to create {}", p.display()),
        })
    }
}

/// Takes the lock of the instance whose `config/entraid/` is `dir` (opened when the
/// instance was loaded, never by path again), without waiting. The lock file is never
/// opened through a symlink, never blocks (a FIFO is refused), and must be a regular file
/// with no other name.
pub fn acquire(dir: &Dir) -> Result<InstanceLock, LockError> {
    acquire_named(dir, LOCK_FILE)
}

/// Takes the lock `name` in `dir`, waiting up to `wait` for another holder to let go.
pub fn wait_for(dir: &Dir, name: &str, wait: std::time::Duration) -> Result<InstanceLock, LockError> {
    let until = std::time::Instant::now() + wait;
    loop {
        match acquire_named(dir, name) {
            Err(LockError::Held(_)) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

fn acquire_named(dir: &Dir, name: &str) -> Result<InstanceLock, LockError> {
    let path = dir.path().join(name);
    let io = |e: std::io::Error| LockError::Io(path.clone(), e);
    let flags = OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(dir, name, flags, Mode::from(0o600)).map_err(|e| io(e.into()))?);
    let st = crate::files::trust::regular(&file).map_err(io)?;
    if st.st_nlink > 1 && !dir.keeps_links() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it has {} hard links, so it may be another file's second name", st.st_nlink),
        )));
    }
    // flock(2), as fs2 took it before: tied to this open file, so it ends with the process
    // however that ends, and a second open of the same file (another run) sees it.
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(InstanceLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held(path)),
        Err(e) => Err(LockError::Io(path, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let t = tempfile::tempdir().unwrap();
        let first = acquire(&Dir::open(t.path()).unwrap()).unwrap();
        assert!(matches!(acquire(&Dir::open(t.path()).unwrap()), Err(LockError::Held(_))));
        drop(first);
        assert!(acquire(&Dir::open(t.path()).unwrap()).is_ok());
    }

    /// The lock is flock(2)'s, the one `fs2` took before and `flock(1)` takes: during an
    /// upgrade, a run of the previous version and one of this version exclude each other.
    #[test]
    fn the_lock_is_the_one_flock_1_sees() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(LOCK_FILE);
        let flock_n =
            || std::process::Command::new("flock").args(["-n", "-E", "75"]).arg(&path).arg("true").status().unwrap();
        let held = acquire(&Dir::open(t.path()).unwrap()).unwrap();
        assert_eq!(flock_n().code(), Some(75), "flock(1) finds it held");
        drop(held);
        assert!(flock_n().success(), "and free once dropped");
        let mut holder = std::process::Command::new("flock")
            .arg(&path)
            .arg("cat")
            .stdout(std::process::Stdio::null())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while acquire(&Dir::open(t.path()).unwrap()).is_ok() {
            assert!(std::time::Instant::now() < until, "flock(1) never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
        assert!(acquire(&Dir::open(t.path()).unwrap()).is_ok());
    }

    #[test]
    fn a_symlink_or_fifo_is_never_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("nologin");
        std::os::unix::fs::symlink(&target, t.path().join(LOCK_FILE)).unwrap();
        let e = acquire(&Dir::open(t.path()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("a symlink is on the way"), "{e}");
        assert!(!target.exists(), "the symlink's target is not created");
        std::fs::remove_file(t.path().join(LOCK_FILE)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join(LOCK_FILE),
            rustix::fs::FileType::Fifo,
            Mode::from(0o600),
            0,
        )
        .unwrap();
        let e = acquire(&Dir::open(t.path()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
