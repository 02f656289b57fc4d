//! Directories opened from `/` and judged along their whole path (contract §9): a path is
//! trusted only when no directory on it is controlled by anyone but root or usersync's own
//! user, the way OpenSSH's `StrictModes` checks every directory up to `/`. What is found
//! through a judged directory is opened relative to its descriptor, never by path again, so
//! a directory renamed or swapped for a symlink after the judgement is not followed.
//!
//! A symlink is followed only where nobody else could have placed or swapped it: in a
//! directory whose whole path is trusted (or a root-owned sticky one such as `/tmp`, for a
//! link owned by root or usersync's user). Its target is then judged from the start.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{fstat, openat, readlinkat, statat, AtFlags, FileType, Mode, OFlags, Stat};

use crate::files::trust::{self, Distrust, Trust};

/// More symlinks than this on one path is a loop (Linux's own limit).
const MAX_LINKS: usize = 40;

/// A directory, opened, with the verdict on its whole path.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    trust: Trust,
    /// Others may write it, but it is a sticky directory of root's (or usersync's user's) on
    /// a trusted path: an entry that root or usersync's user owns cannot be swapped here.
    sticky: bool,
}

impl Dir {
    /// The directory `path` (absolute), opened from `/` and judged on the way.
    pub fn open(path: &Path) -> io::Result<Self> {
        if !path.is_absolute() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"));
        }
        Self::root()?.dir(path)
    }

    fn root() -> io::Result<Self> {
        let fd = rustix::fs::open("/", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let st = fstat(&fd)?;
        let sticky = sticky(&st);
        Ok(Self { fd, path: PathBuf::from("/"), trust: trust::judge(&st), sticky })
    }

    /// The directory `rel` beneath this one (an absolute `rel` is walked from `/`); `..`
    /// may not climb above this directory.
    pub fn dir(&self, rel: &Path) -> io::Result<Self> {
        let mut todo: VecDeque<OsString> = VecDeque::new();
        let mut stack = vec![if rel.is_absolute() { Self::root()? } else { self.try_clone()? }];
        push_front(&mut todo, rel)?;
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            let cur = stack.last().ok_or_else(|| io::Error::from(rustix::io::Errno::XDEV))?;
            if name == ".." {
                if stack.len() == 1 {
                    return Err(rustix::io::Errno::XDEV.into());
                }
                stack.pop();
                continue;
            }
            let st = statat(&cur.fd, &name, AtFlags::SYMLINK_NOFOLLOW)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    let target = cur.follow(&name, &st, &mut links)?;
                    if target.is_absolute() {
                        stack = vec![Self::root()?];
                    }
                    push_front(&mut todo, &target)?;
                }
                FileType::Directory => {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let fd = openat(&cur.fd, &name, flags, Mode::empty())?;
                    let st = fstat(&fd)?;
                    let child = Self {
                        path: cur.path.join(&name),
                        trust: cur.entry_trust(&st),
                        sticky: sticky(&st) && cur.keeps(&st),
                        fd,
                    };
                    stack.push(child);
                }
                _ => return Err(rustix::io::Errno::NOTDIR.into()),
            }
        }
        stack.pop().ok_or_else(|| rustix::io::Errno::XDEV.into())
    }

    /// The target of the symlink `name` here, if it may be followed; `ELOOP` if not.
    fn follow(&self, name: &OsStr, link: &Stat, links: &mut usize) -> io::Result<PathBuf> {
        *links += 1;
        if *links > MAX_LINKS || !self.keeps(link) {
            return Err(rustix::io::Errno::LOOP.into());
        }
        let target = readlinkat(&self.fd, name, Vec::new())?;
        Ok(PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(target.into_bytes())))
    }

    /// Whether nobody but root and usersync's user could have placed or swapped the entry
    /// with status `st` here.
    fn keeps(&self, st: &Stat) -> bool {
        self.trust.is_trusted() || (self.sticky && trust::trusted_owner(st.st_uid))
    }

    /// The verdict on an entry with status `st`: its own, if this directory keeps it;
    /// otherwise that of the path, which someone else controls.
    fn entry_trust(&self, st: &Stat) -> Trust {
        if self.keeps(st) {
            trust::judge(st)
        } else {
            match &self.trust {
                Trust::Untrusted(Distrust::Path { .. }) => self.trust.clone(),
                Trust::Untrusted(why) => {
                    Trust::Untrusted(Distrust::Path { dir: self.path.clone(), why: Box::new(why.clone()) })
                }
                // A sticky directory: an entry of someone else's could be anyone's.
                Trust::Trusted => {
                    Trust::Untrusted(Distrust::Path { dir: self.path.clone(), why: Box::new(Distrust::Sticky) })
                }
            }
        }
    }

    /// Opens the file `name` of this directory for reading, without blocking (a FIFO or
    /// device is refused), and judges it: a symlink is followed only as [`Dir::dir`] would,
    /// and a file with more than one name in a directory others control (or in a sticky
    /// one) is refused: it may be a hard link to a file its owner could not read.
    pub fn open_file(&self, name: &OsStr) -> io::Result<(File, Trust)> {
        self.open_file_within(name, 0).map(|(f, t, _)| (f, t))
    }

    fn open_file_within(&self, name: &OsStr, mut links: usize) -> io::Result<(File, Trust, Stat)> {
        let st = statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            let target = self.follow(name, &st, &mut links)?;
            let last = target.file_name().ok_or_else(|| io::Error::from(rustix::io::Errno::ISDIR))?.to_owned();
            let dir = self.dir(trust::parent(&target))?;
            return dir.open_file_within(&last, links);
        }
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(openat(&self.fd, name, flags, Mode::empty())?);
        let st = trust::regular(&file)?;
        if st.st_nlink > 1 && !self.keeps_links() {
            return Err(hard_link(&st));
        }
        let trust = self.entry_trust(&st);
        Ok((file, trust, st))
    }

    /// Whether a second name of a file here can only be root's doing: the directory's path
    /// is trusted and it is not sticky (in a sticky one anybody may link a file of root's
    /// where `fs.protected_hardlinks` is off, and the name then looks like root's).
    #[must_use]
    pub fn keeps_links(&self) -> bool {
        self.trust.is_trusted() && !self.sticky
    }

    /// Reads the file `name` of this directory (at most [`trust::CONFIG_CAP`] bytes) and
    /// judges it, as [`Dir::open_file`].
    pub fn read_file(&self, name: &OsStr) -> io::Result<(Vec<u8>, Trust)> {
        self.read_file_stat(name).map(|(b, t, _)| (b, t))
    }

    /// As [`Dir::read_file`], with the file's status (whose own owner and mode tell who else
    /// may have written it).
    pub fn read_file_stat(&self, name: &OsStr) -> io::Result<(Vec<u8>, Trust, Stat)> {
        let (file, trust, st) = self.open_file_within(name, 0)?;
        Ok((trust::read_capped(file, trust::CONFIG_CAP)?, trust, st))
    }

    /// Opens `rel` beneath this directory with no symlink anywhere on the way, as
    /// `files::resolve::open_beneath`; beneath a directory someone else controls, without
    /// crossing a mount point either.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        if self.trust.is_trusted() {
            crate::files::resolve::open_beneath(&self.fd, rel, flags, mode)
        } else {
            crate::files::resolve::open_beneath_one_fs(&self.fd, rel, flags, mode)
        }
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { fd: self.fd.try_clone()?, path: self.path.clone(), trust: self.trust.clone(), sticky: self.sticky })
    }

    /// The path it was reached by (symlinks resolved), for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verdict on its whole path.
    #[must_use]
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Its status now.
    pub fn stat(&self) -> io::Result<Stat> {
        Ok(fstat(&self.fd)?)
    }

    /// The descriptor, for a caller that keeps only that.
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A directory that others may write but where only an entry's owner may remove or rename
/// it, owned by root or usersync's user.
fn sticky(st: &Stat) -> bool {
    st.st_mode & 0o1000 != 0 && trust::trusted_owner(st.st_uid)
}

/// The error for a file with other names in a directory someone else controls.
fn hard_link(st: &Stat) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it has {} hard links, in a directory that someone else than root controls", st.st_nlink),
    )
}

/// Puts the components of `p` in front of `todo`; `.` is dropped, `..` kept.
fn push_front(todo: &mut VecDeque<OsString>, p: &Path) -> io::Result<()> {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push_front(n.to_owned()),
            Component::ParentDir => todo.push_front("..".into()),
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return Err(rustix::io::Errno::XDEV.into()),
        }
    }
    Ok(())
}

/// Opens the file at `path` (absolute) for reading, judged along its whole path.
pub fn open(path: &Path) -> io::Result<(File, Trust)> {
    let name = path.file_name().ok_or_else(|| io::Error::from(rustix::io::Errno::ISDIR))?;
    Dir::open(trust::parent(&absolute(path)))?.open_file(name)
}

/// Reads the file at `path` (at most [`trust::CONFIG_CAP`] bytes), judged along its path.
pub fn read(path: &Path) -> io::Result<(Vec<u8>, Trust)> {
    let (file, trust) = open(path)?;
    Ok((trust::read_capped(file, trust::CONFIG_CAP)?, trust))
}

/// `path` made absolute from the working directory, as messages and walks need it.
#[must_use]
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn a_trusted_path_in_a_sticky_directory_is_trusted() {
        // tempdir() lies in /tmp: root's, world-writable and sticky.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), "x").unwrap();
        chmod(&t.path().join("a/b/f"), 0o600);
        let d = Dir::open(&t.path().join("a/b")).unwrap();
        assert_eq!(d.trust(), &Trust::Trusted);
        assert_eq!(d.read_file(OsStr::new("f")).unwrap(), (b"x".to_vec(), Trust::Trusted));
    }

    #[test]
    fn a_directory_others_may_write_makes_everything_beneath_it_untrusted() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("gw/config")).unwrap();
        std::fs::write(t.path().join("gw/config/a"), "x").unwrap();
        chmod(&t.path().join("gw/config/a"), 0o600);
        chmod(&t.path().join("gw"), 0o777);
        let d = Dir::open(&t.path().join("gw/config")).unwrap();
        let (_, trust) = d.read_file(OsStr::new("a")).unwrap();
        assert!(trust.to_string().contains(&format!("{} on its path", t.path().join("gw").display())), "{trust}");
    }

    #[test]
    fn symlinks_are_followed_only_where_nobody_else_could_swap_them() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (other, gw) = (t.path().join("other"), t.path().join("gw"));
        std::fs::create_dir_all(other.join("entraid")).unwrap();
        std::fs::write(other.join("entraid/x"), "secret").unwrap();
        std::fs::create_dir_all(gw.join("config")).unwrap();
        symlink(other.join("entraid"), gw.join("config/entraid")).unwrap();
        symlink(other.join("entraid/x"), gw.join("config/y")).unwrap();
        // Root's directory: the links are root's word.
        assert!(Dir::open(&gw.join("config/entraid")).is_ok());
        assert!(Dir::open(&gw.join("config")).unwrap().read_file(OsStr::new("y")).is_ok());
        // The gateway's directory: never followed.
        chown(&gw, Some(65534), Some(65534)).unwrap();
        let e = Dir::open(&gw.join("config/entraid")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::LOOP.raw_os_error()));
        let e = Dir::open(&gw.join("config")).unwrap().read_file(OsStr::new("y")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::LOOP.raw_os_error()));
    }

    #[test]
    fn a_hard_link_in_a_directory_others_control_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("gw")).unwrap();
        std::fs::write(t.path().join("secret"), "x").unwrap();
        std::fs::hard_link(t.path().join("secret"), t.path().join("gw/a.entraidconf")).unwrap();
        let d = Dir::open(&t.path().join("gw")).unwrap();
        assert!(d.read_file(OsStr::new("a.entraidconf")).is_ok(), "a trusted directory: root's own link");
        chmod(&t.path().join("gw"), 0o777);
        let d = Dir::open(&t.path().join("gw")).unwrap();
        let e = d.read_file(OsStr::new("a.entraidconf")).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
    }

    #[test]
    fn dot_dot_cannot_climb_above_the_start() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let a = Dir::open(&t.path().join("a")).unwrap();
        assert!(a.dir(Path::new("b/..")).is_ok());
        assert_eq!(a.dir(Path::new("..")).unwrap_err().raw_os_error(), Some(rustix::io::Errno::XDEV.raw_os_error()));
    }
}
