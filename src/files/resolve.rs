//! Opening a path beneath a directory without following any symlink on the way: Linux's
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or, where the kernel refuses
//! it, a walk of `O_NOFOLLOW` opens one component at a time.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{openat, openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// `path` as a path relative to `base` with no `.` or `..` left, if it stays beneath
/// `base`: a relative `path` is taken from `base`; an absolute one must start with
/// `base` (as written, or with its symlinks resolved). `None` when it leaves `base`.
/// Purely lexical; that no component is a symlink is checked when it is opened.
#[must_use]
pub fn beneath(base: &Path, path: &Path) -> Option<PathBuf> {
    let rel = if path.is_absolute() {
        match path.strip_prefix(base) {
            Ok(r) => r.to_path_buf(),
            Err(_) => path.strip_prefix(std::fs::canonicalize(base).ok()?).ok()?.to_path_buf(),
        }
    } else {
        path.to_path_buf()
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            // `a/..` is `.` only when `a` is no symlink, which opening checks anyway.
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Opens `rel` (relative, without `..`: see [`beneath`]) beneath the directory `dir`,
/// following no symlink, not even in the last component. An empty `rel` is `dir` itself.
/// A symlink on the way fails with `ELOOP`, a path leaving `dir` with `EXDEV`.
pub fn open_beneath(dir: impl AsFd, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    beneath_fd(dir.as_fd(), rel, flags, mode, false)
}

/// As [`open_beneath`], and no mount point may be crossed either (`EXDEV`): beneath a
/// directory someone else controls, a mount point is something they cannot move away, and
/// so a way into another instance's files.
pub fn open_beneath_one_fs(dir: impl AsFd, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    beneath_fd(dir.as_fd(), rel, flags, mode, true)
}

fn beneath_fd(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode, one_fs: bool) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    if one_fs {
        resolve |= ResolveFlags::NO_XDEV;
    }
    let r = match openat2(dir, rel, flags, mode, resolve) {
        // Kernels before 5.6 lack it; seccomp filters may refuse it.
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
            return walk_fs(dir, rel, flags, mode, one_fs)
        }
        r => r,
    };
    r.map_err(|e| symlink_at_end(dir, rel, e))
}

/// `O_DIRECTORY | O_NOFOLLOW` stops on a symlink in the last component with `ENOTDIR`:
/// say it was a symlink (`ELOOP`) when it was one.
fn symlink_at_end(dir: BorrowedFd<'_>, rel: &Path, e: rustix::io::Errno) -> io::Error {
    if e != rustix::io::Errno::NOTDIR {
        return e.into();
    }
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { return e.into() };
    let flags = OFlags::PATH | OFlags::DIRECTORY;
    match beneath_fd(dir, parent, flags, Mode::empty(), false) {
        Ok(p) if is_symlink(&p, name) => rustix::io::Errno::LOOP.into(),
        _ => e.into(),
    }
}

/// [`walk_fs`] across file systems, as the tests compare it with `openat2`.
#[cfg(test)]
fn walk(dir: impl AsFd, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    walk_fs(dir, rel, flags, mode, false)
}

/// [`open_beneath`] without `openat2`: each directory on the way is opened with
/// `O_NOFOLLOW`, relative to the one before; with `one_fs`, every step must stay on `dir`'s
/// file system (`EXDEV`).
fn walk_fs(dir: impl AsFd, rel: &Path, flags: OFlags, mode: Mode, one_fs: bool) -> io::Result<OwnedFd> {
    let dev = rustix::fs::fstat(&dir)?.st_dev;
    let same_fs = |fd: &OwnedFd| -> io::Result<()> {
        if one_fs && rustix::fs::fstat(fd)?.st_dev != dev {
            return Err(rustix::io::Errno::XDEV.into());
        }
        Ok(())
    };
    let mut names: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from(rustix::io::Errno::XDEV)),
        }
    }
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let Some((last, dirs)) = names.split_last() else {
        return openat(&dir, ".", flags, mode).map_err(io::Error::from);
    };
    let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = openat(&dir, ".", step, Mode::empty())?;
    for name in dirs {
        cur = match openat(&cur, *name, step, Mode::empty()) {
            Ok(fd) => {
                same_fs(&fd)?;
                fd
            }
            // `O_PATH | O_NOFOLLOW` stops on a symlink with ENOTDIR: say it was one.
            Err(e) if e == rustix::io::Errno::NOTDIR && is_symlink(&cur, name) => {
                return Err(io::Error::from(rustix::io::Errno::LOOP))
            }
            Err(e) => return Err(e.into()),
        };
    }
    let fd = openat(&cur, *last, flags, mode).map_err(|e| {
        if e == rustix::io::Errno::NOTDIR && is_symlink(&cur, last) {
            io::Error::from(rustix::io::Errno::LOOP)
        } else {
            io::Error::from(e)
        }
    })?;
    same_fs(&fd)?;
    Ok(fd)
}

fn is_symlink(dir: impl AsFd, name: &OsStr) -> bool {
    statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink)
}

/// Says what an error of [`open_beneath`] means, in words for a message.
#[must_use]
pub fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(c) if c == rustix::io::Errno::LOOP.raw_os_error() => "a symlink is on the way".into(),
        Some(c) if c == rustix::io::Errno::XDEV.raw_os_error() => {
            "it leads out of the directory (or across a mount point)".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn beneath_is_lexical_and_refuses_escapes() {
        let b = Path::new("/server/gw");
        assert_eq!(beneath(b, Path::new("config/x.txt")), Some(PathBuf::from("config/x.txt")));
        assert_eq!(beneath(b, Path::new("./lists/../config/x.txt")), Some(PathBuf::from("config/x.txt")));
        assert_eq!(beneath(b, Path::new("/server/gw/lists/x.txt")), Some(PathBuf::from("lists/x.txt")));
        assert_eq!(beneath(b, Path::new("../../somewhere/file")), None);
        assert_eq!(beneath(b, Path::new("lists/../../other/x")), None);
        assert_eq!(beneath(b, Path::new("/etc/passwd")), None);
        assert_eq!(beneath(b, Path::new("/server/gwx/a")), None, "a prefix of a name is not a parent");
    }

    /// `open_beneath` by both routes: the kernel's `openat2` and the walk.
    fn both(dir: &Path, rel: &str) -> [io::Result<OwnedFd>; 2] {
        let d = std::fs::File::open(dir).unwrap();
        let f = OFlags::RDONLY | OFlags::DIRECTORY;
        [open_beneath(&d, Path::new(rel), f, Mode::empty()), walk(&d, Path::new(rel), f, Mode::empty())]
    }

    fn errno(r: &io::Result<OwnedFd>) -> Option<i32> {
        r.as_ref().err().and_then(io::Error::raw_os_error)
    }

    #[test]
    fn symlinks_in_the_middle_and_at_the_end_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("gw/config/lists")).unwrap();
        std::fs::create_dir_all(t.path().join("elsewhere/sub")).unwrap();
        symlink(t.path().join("elsewhere"), t.path().join("gw/config/link")).unwrap();
        symlink("lists", t.path().join("gw/config/inside")).unwrap();
        let gw = t.path().join("gw");
        for r in both(&gw, "config/lists") {
            assert!(r.is_ok(), "{r:?}");
        }
        for r in both(&gw, "") {
            assert!(r.is_ok(), "the directory itself");
        }
        let loop_ = Some(rustix::io::Errno::LOOP.raw_os_error());
        for rel in ["config/link/sub", "config/link", "config/inside"] {
            for r in both(&gw, rel) {
                assert_eq!(errno(&r), loop_, "{rel}");
            }
        }
        for r in both(&gw, "config/../../elsewhere") {
            assert!(r.is_err(), "leaving the directory");
        }
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_opening_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let gw = t.path().join("gw");
        std::fs::create_dir_all(gw.join("lists")).unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        let d = std::fs::File::open(&gw).unwrap();
        let lists = open_beneath(&d, Path::new("lists"), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // The attacker swaps the checked directory for a symlink to another one.
        std::fs::rename(gw.join("lists"), gw.join("lists.old")).unwrap();
        symlink(t.path().join("etc"), gw.join("lists")).unwrap();
        let f = openat(&lists, "x.txt", OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW, Mode::from(0o600)).unwrap();
        drop(f);
        assert!(gw.join("lists.old/x.txt").exists(), "written in the directory that was checked");
        assert!(!t.path().join("etc/x.txt").exists(), "not through the symlink");
        for r in both(&gw, "lists") {
            assert_eq!(errno(&r), Some(rustix::io::Errno::LOOP.raw_os_error()), "opened anew, the symlink is refused");
        }
    }
}
