//! Whose word a config file is (contract §9): a file is trusted when it is owned by root or
//! by the user usersync runs as and no group or other can write it (OpenSSH's
//! `StrictModes`). Files are judged by `fstat` on the descriptor actually read.

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{fstat, openat, statat, AtFlags, FileType, Mode, OFlags, Stat};

/// Config files are small: a bigger one is refused rather than read.
pub const CONFIG_CAP: u64 = 1 << 20;

/// Why a file is not trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distrust {
    /// Owned by someone else than root and usersync's own user.
    Owner {
        /// The owner.
        uid: u32,
    },
    /// Group or others may write it.
    Writable {
        /// Its permission bits.
        mode: u32,
    },
    /// It is a symlink in a directory that someone else may write (so the link could be
    /// swapped for another one).
    Symlink,
}

/// Whether a file may override what only root should decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Owned by root or usersync's user, writable by neither group nor others.
    Trusted,
    /// Anything else.
    Untrusted(Distrust),
}

impl Trust {
    /// Is it trusted?
    #[must_use]
    pub fn is_trusted(&self) -> bool {
        matches!(self, Self::Trusted)
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trusted => f.write_str("trusted"),
            Self::Untrusted(Distrust::Owner { uid }) => {
                write!(f, "untrusted: owned by uid {uid}, neither root nor usersync's user")
            }
            Self::Untrusted(Distrust::Writable { mode }) => {
                write!(f, "untrusted: group or others may write it (mode {mode:04o})")
            }
            Self::Untrusted(Distrust::Symlink) => {
                f.write_str("untrusted: a symlink in a directory that others may write")
            }
        }
    }
}

/// The user usersync runs as.
#[must_use]
pub fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Is `uid` root or usersync's own user?
#[must_use]
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == me()
}

/// The verdict on a file or directory with status `st`.
#[must_use]
pub fn judge(st: &Stat) -> Trust {
    let mode = st.st_mode & 0o7777;
    if !trusted_owner(st.st_uid) {
        Trust::Untrusted(Distrust::Owner { uid: st.st_uid })
    } else if mode & 0o022 != 0 {
        Trust::Untrusted(Distrust::Writable { mode })
    } else {
        Trust::Trusted
    }
}

/// Opens a config file for reading, never blocking (a FIFO or device is refused), and
/// judges the file opened. A symlink is followed; it keeps the target's trust only when
/// it lies in a trusted directory, where nobody else could have placed or swapped it.
pub fn open(path: &Path) -> io::Result<(File, Trust)> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let (file, link) = match rustix::fs::open(path, flags | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => (File::from(fd), None),
        Err(e) if e == rustix::io::Errno::LOOP => {
            let dir =
                rustix::fs::open(parent(path), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            let name = path.file_name().unwrap_or_default();
            let link = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let safe = judge(&fstat(&dir)?).is_trusted() && trusted_owner(link.st_uid);
            (File::from(openat(&dir, name, flags, Mode::empty())?), Some(safe))
        }
        Err(e) => return Err(e.into()),
    };
    let st = regular(&file)?;
    let trust = match link {
        Some(false) => Trust::Untrusted(Distrust::Symlink),
        _ => judge(&st),
    };
    Ok((file, trust))
}

/// Reads a config file (at most [`CONFIG_CAP`] bytes) and judges it, as [`open`].
pub fn read(path: &Path) -> io::Result<(Vec<u8>, Trust)> {
    let (file, trust) = open(path)?;
    Ok((read_capped(file, CONFIG_CAP)?, trust))
}

/// Everything `file` holds, or an error if that is more than `cap` bytes.
pub fn read_capped(file: impl io::Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("it is larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// The status of an opened file, which must be a regular file.
pub fn regular(fd: impl AsFd) -> io::Result<Stat> {
    let st = fstat(fd)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(st),
        t => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it is not a regular file but {}", kind(t)))),
    }
}

/// "a FIFO", "a directory", … for messages.
#[must_use]
pub fn kind(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// The directory holding `path` (`.` for a bare file name).
#[must_use]
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn owner_and_mode_decide() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.entraidconf");
        std::fs::write(&p, "x = 1\n").unwrap();
        chmod(&p, 0o600);
        assert_eq!(read(&p).unwrap(), (b"x = 1\n".to_vec(), Trust::Trusted));
        chmod(&p, 0o664);
        assert_eq!(read(&p).unwrap().1, Trust::Untrusted(Distrust::Writable { mode: 0o664 }));
        chmod(&p, 0o646);
        assert!(!read(&p).unwrap().1.is_trusted());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("envelope.cfg");
        rustix::fs::mknodat(rustix::fs::CWD, &p, FileType::Fifo, Mode::from(0o600), 0).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.to_string().contains("not a regular file but a FIFO"), "{e}");
    }

    #[test]
    fn a_symlink_is_trusted_only_in_a_trusted_directory() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target.toml");
        std::fs::write(&target, "").unwrap();
        chmod(&target, 0o644);
        let link = t.path().join("link.toml");
        symlink(&target, &link).unwrap();
        chmod(t.path(), 0o755);
        assert_eq!(read(&link).unwrap().1, Trust::Trusted);
        chmod(t.path(), 0o777);
        assert_eq!(read(&link).unwrap().1, Trust::Untrusted(Distrust::Symlink));
        chmod(t.path(), 0o755);
    }

    #[test]
    fn big_files_are_refused() {
        assert_eq!(read_capped(&b"12345"[..], 5).unwrap(), b"12345");
        assert_eq!(read_capped(&b"123456"[..], 5).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
    }
}
