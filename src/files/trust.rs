//! Whose word a config file is (contract §9): a file is trusted when it is owned by root or
//! by the user usersync runs as and no group or other can write it (OpenSSH's
//! `StrictModes`), and so is every directory on its path ([`crate::files::judged`] walks it).
//! Files are judged by `fstat` on the descriptor actually read.

use std::fmt;
use std::io::{self, Read as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, FileType, Stat};

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
        /// Its group.
        gid: u32,
    },
    /// An entry of someone else in a sticky directory that others may write.
    Sticky,
    /// A directory on its path is someone else's to change (see [`crate::files::judged`]).
    Path {
        /// The first such directory.
        dir: PathBuf,
        /// Why that directory is not trusted.
        why: Box<Distrust>,
    },
}

impl Distrust {
    /// How to make the file at `path` trusted, for a hint: chown and chmod the file, or,
    /// when a directory on its path is the reason, that directory too (making the file
    /// alone root's would change nothing).
    #[must_use]
    pub fn fix(&self, path: &Path) -> String {
        let f = path.display();
        match self {
            Self::Path { dir, .. } => {
                let d = dir.display();
                format!("make {d} and the directories beneath it down to the file root's, and the file too (chown root: {d} {f}; chmod go-w {d} {f})")
            }
            _ => format!("make the file root's (chown root: {f}; chmod go-w {f})"),
        }
    }

    /// What is wrong with the file or directory itself, without "untrusted: ".
    fn reason(&self) -> String {
        match self {
            Self::Owner { uid } => format!("owned by uid {uid}, neither root nor usersync's user"),
            Self::Writable { mode, .. } => format!("group or others may write it (mode {mode:04o})"),
            Self::Sticky => "someone else's, in a directory that others may write".into(),
            Self::Path { dir, why } => format!("{} on its path is {}", dir.display(), why.reason()),
        }
    }

    /// The first directory on the path that someone else controls, if that is the reason.
    #[must_use]
    pub fn directory(&self) -> Option<&Path> {
        match self {
            Self::Path { dir, .. } => Some(dir),
            _ => None,
        }
    }
}

/// Whether a file may override what only root should decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Owned by root or usersync's user, writable by neither group nor others, and so is
    /// every directory on its path.
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
            Self::Untrusted(why) => write!(f, "untrusted: {}", why.reason()),
        }
    }
}

/// Everyone who may have written an untrusted file: its own owner or writers, and whoever
/// controls a directory on its path. A file the config names is theirs to use only if every
/// one of them could use it themselves (any of them may have written the config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controllers(Vec<Distrust>);

impl Controllers {
    /// The controllers of a file judged `trust` on its path, whose own status is `own`.
    #[must_use]
    pub fn of(trust: &Trust, own: &Stat) -> Self {
        let mut v = Vec::new();
        if let Trust::Untrusted(why) = trust {
            v.push(why.clone());
        }
        if let Trust::Untrusted(why) = judge(own) {
            if !v.contains(&why) {
                v.push(why);
            }
        }
        Self(v)
    }

    /// Whether every one of them could do what `bits` says (4 read, 2 write, 1 search or
    /// execute, as in a mode's last digit) to a file with status `st`.
    #[must_use]
    pub fn could(&self, st: &Stat, bits: u32) -> bool {
        self.0.iter().all(|why| could(why, st, bits))
    }

    /// The first of them, for messages.
    #[must_use]
    pub fn first(&self) -> Option<&Distrust> {
        self.0.first()
    }
}

/// Whether whoever `why` says may write a file could do `bits` to one with status `st`: as
/// its owner (who may chmod it anyway), through a group that may write it, or as anyone.
fn could(why: &Distrust, st: &Stat, bits: u32) -> bool {
    if st.st_mode & bits != 0 {
        return true;
    }
    match why {
        Distrust::Owner { uid } => st.st_uid == *uid,
        Distrust::Writable { mode, gid } => mode & 0o002 == 0 && st.st_gid == *gid && st.st_mode & (bits << 3) != 0,
        Distrust::Sticky => false,
        Distrust::Path { why, .. } => could(why, st, bits),
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
        Trust::Untrusted(Distrust::Writable { mode, gid: st.st_gid })
    } else {
        Trust::Trusted
    }
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

    #[test]
    fn owner_and_mode_decide() {
        let st = |uid: u32, mode: u32| {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().join("f");
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            let mut st = rustix::fs::stat(&p).unwrap();
            st.st_uid = uid;
            st
        };
        assert_eq!(judge(&st(me(), 0o600)), Trust::Trusted);
        assert!(matches!(judge(&st(me(), 0o664)), Trust::Untrusted(Distrust::Writable { mode: 0o664, .. })));
        assert!(!judge(&st(me(), 0o646)).is_trusted());
        let other = if me() == 4242 { 4243 } else { 4242 };
        assert_eq!(judge(&st(other, 0o600)), Trust::Untrusted(Distrust::Owner { uid: other }));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("envelope.cfg");
        rustix::fs::mknodat(rustix::fs::CWD, &p, FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap();
        let e = crate::files::judged::read(&p).unwrap_err();
        assert!(e.to_string().contains("not a regular file but a FIFO"), "{e}");
    }

    #[test]
    fn a_path_reason_names_the_directory() {
        let why = Distrust::Path { dir: "/server/gw2".into(), why: Box::new(Distrust::Owner { uid: 1001 }) };
        assert_eq!(
            Trust::Untrusted(why).to_string(),
            "untrusted: /server/gw2 on its path is owned by uid 1001, neither root nor usersync's user"
        );
    }

    #[test]
    fn big_files_are_refused() {
        assert_eq!(read_capped(&b"12345"[..], 5).unwrap(), b"12345");
        assert_eq!(read_capped(&b"123456"[..], 5).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
    }
}
