//! Reading the current output files and replacing them atomically (contract §5.5, §9).
//!
//! An output is reached through its directory, opened once ([`Target::at`], judged from `/`,
//! or [`Target::beneath`] an instance): every read,
//! temp file, rename and fsync after that is relative to that descriptor, so a directory
//! swapped for a symlink after the check is not followed. The file itself is never opened
//! through a symlink, must be a regular file, and is read with a cap.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{fchmod, fchown, fstat, openat, renameat, statat, unlinkat, AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::Hint;
use crate::files::judged::{self, Dir};
use crate::files::resolve;
use crate::files::trust;

/// Prefix of our temporary files, so that they are recognisable (and never `*.txt`):
/// `.usersync-<output file name>.<random>.tmp`.
pub const TEMP_PREFIX: &str = ".usersync-";

/// A current output larger than this fails its instance rather than being read.
pub const READ_CAP: u64 = 1 << 30;

/// The mode of a new output file, whatever the umask: the gateway's group may read it.
pub const NEW_OUTPUT_MODE: u32 = 0o640;

fn temp_prefix(name: &OsStr) -> String {
    format!("{TEMP_PREFIX}{}.", name.to_string_lossy())
}

/// A file-system failure on an output.
#[derive(Debug)]
pub struct WriteError {
    /// The output file.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// The OS error.
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}: {}", self.action, self.path.display(), resolve::explain(&self.source))
    }
}

impl std::error::Error for WriteError {}

impl Hint for WriteError {
    fn hint(&self) -> Option<String> {
        let dir = trust::parent(&self.path).display().to_string();
        let errno = self.source.raw_os_error();
        Some(if errno == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            format!("usersync never writes through a symlink: replace the symlink on the way to {} with the real directory or file, or (for a path outside the instance) set the path in a root-owned envelope.cfg / compose.cfg", self.path.display())
        } else if errno == Some(rustix::io::Errno::PERM.raw_os_error()) {
            // EPERM, unlike EACCES, is not about ReadWritePaths= or file modes: the kernel
            // wants a capability or the file has an attribute that forbids the change.
            match self.action {
                "keep the owner of" => "giving the new file the old file's owner needs CAP_CHOWN: run usersync as root, and under systemd keep CAP_CHOWN in the unit's CapabilityBoundingSet=".into(),
                _ => format!("the kernel refused this even though the directory is writable: check for an immutable or append-only attribute (lsattr -d {dir}; lsattr {}), and that the unit's CapabilityBoundingSet= still holds CAP_CHOWN and CAP_DAC_OVERRIDE", self.path.display()),
            }
        } else if errno == Some(rustix::io::Errno::XDEV.raw_os_error()) {
            "an output must lie beneath its instance directory unless a root-owned envelope.cfg / compose.cfg names it"
                .into()
        } else {
            match self.source.kind() {
                io::ErrorKind::InvalidInput => format!("an output must be a regular file: move {} away, and the next run creates it", self.path.display()),
                io::ErrorKind::FileTooLarge => format!("this is no list usersync wrote: move {} away, or fix ALLOWEDLDAPSENDERFILE / LDAPGSMLISTFILE", self.path.display()),
                io::ErrorKind::NotFound => format!("the directory {dir} does not exist: create it, or fix ALLOWEDLDAPSENDERFILE / LDAPGSMLISTFILE in the instance's envelope.cfg / compose.cfg"),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!("usersync's user cannot write in {dir}: run it as the files' owner or root, and under systemd list the directory in ReadWritePaths="),
                io::ErrorKind::StorageFull => format!("the file system holding {dir} is full: free space; the old file was left intact"),
                _ => format!("check the file system holding {dir}; the old file was left intact"),
            }
        })
    }
}

/// Files and directories that usersync itself reads, locks or keeps state in, by device
/// and inode: no output may be one of them, nor lie in one of them (contract §9), however
/// a path names it.
#[derive(Debug, Default, Clone)]
pub struct Ours {
    files: HashSet<(u64, u64)>,
    dirs: HashSet<(u64, u64)>,
}

impl Ours {
    /// The file with status `st` is ours.
    pub fn add_file(&mut self, st: &Stat) {
        self.files.insert(id(st));
    }

    /// The file at `path` is ours, if it exists.
    pub fn add_file_at(&mut self, path: &Path) {
        if let Ok(st) = rustix::fs::stat(path) {
            self.add_file(&st);
        }
    }

    /// Nothing in the directory with status `st` may be an output.
    pub fn add_dir(&mut self, st: &Stat) {
        self.dirs.insert(id(st));
    }

    /// The directory at `path` is ours, if it exists.
    pub fn add_dir_at(&mut self, path: &Path) {
        if let Ok(st) = rustix::fs::stat(path) {
            self.add_dir(&st);
        }
    }

    fn has_file(&self, st: &Stat) -> bool {
        self.files.contains(&id(st))
    }

    fn has_dir(&self, st: &Stat) -> bool {
        self.dirs.contains(&id(st))
    }
}

fn id(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// An output file, reached through its opened directory.
#[derive(Debug)]
pub struct Target {
    dir: File,
    name: OsString,
    path: PathBuf,
    ours: Arc<Ours>,
    /// Only root could have given the current file a second name here (see
    /// [`Dir::keeps_links`]): one is no trick then (a hard-link backup, say).
    links_ok: bool,
    /// The status of the file as this run last read it (taken on the open descriptor,
    /// before the read) or wrote it (after the rename): what the run knows the content of.
    seen: std::sync::Mutex<Option<Stat>>,
}

impl Target {
    /// The file at `path` (absolute), its directory opened from `/` and judged on the way:
    /// a symlink is followed only where nobody but root could have placed it (see
    /// [`crate::files::judged`]). The file itself is never followed.
    pub fn at(path: &Path) -> Result<Self, WriteError> {
        let fail = |source| WriteError { path: path.to_owned(), action: "open the directory of", source };
        let name = file_name(path).map_err(fail)?;
        let dir = Dir::open(trust::parent(&judged::absolute(path))).map_err(fail)?;
        let links_ok = dir.keeps_links();
        Ok(Self {
            dir: File::from(dir.into_fd()),
            name,
            path: path.to_owned(),
            ours: Arc::default(),
            links_ok,
            seen: std::sync::Mutex::default(),
        })
    }

    /// The file at `path`, which must lie beneath `base` with no symlink on the way.
    pub fn beneath(base: &Dir, path: &Path) -> Result<Self, WriteError> {
        let fail = |source| WriteError { path: path.to_owned(), action: "open the directory of", source };
        let name = file_name(path).map_err(fail)?;
        let rel = resolve::beneath(base.path(), path).ok_or_else(|| fail(rustix::io::Errno::XDEV.into()))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = File::from(base.open_beneath(trust::parent(&rel), flags, Mode::empty()).map_err(fail)?);
        let st = fstat(&dir).map_err(|e| fail(e.into()))?;
        let links_ok = base.keeps_links() && trust::judge(&st).is_trusted() && st.st_mode & 0o1000 == 0;
        Ok(Self { dir, name, path: path.to_owned(), ours: Arc::default(), links_ok, seen: std::sync::Mutex::default() })
    }

    /// From now on the target refuses to be, or to lie in, any of `ours`; an error if it
    /// does now.
    pub fn never(mut self, ours: &Arc<Ours>) -> Result<Self, WriteError> {
        self.ours = Arc::clone(ours);
        let st = fstat(&self.dir).map_err(|e| self.err("inspect the directory of")(e.into()))?;
        if self.ours.has_dir(&st) {
            return Err(self.err("use")(io::Error::new(io::ErrorKind::InvalidInput, OURS_DIR)));
        }
        self.inspect()?;
        Ok(self)
    }

    /// Removes the file (not what a symlink there points to).
    pub fn remove(&self) -> Result<(), WriteError> {
        unlinkat(&self.dir, &self.name, AtFlags::empty()).map_err(|e| self.err("remove")(e.into()))
    }

    /// The status of the directory the file is in.
    pub fn dir_stat(&self) -> Result<Stat, WriteError> {
        fstat(&self.dir).map_err(|e| self.err("inspect the directory of")(e.into()))
    }

    /// The output's path, for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, action: &'static str) -> impl FnOnce(io::Error) -> WriteError + '_ {
        move |source| WriteError { path: self.path.clone(), action, source }
    }

    /// The status of the current file, `None` if there is none; an error if it is not a
    /// regular file (a symlink, FIFO, device, directory …) or is larger than [`READ_CAP`].
    pub fn inspect(&self) -> Result<Option<Stat>, WriteError> {
        match statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => check_current(&st, &self.ours, self.links_ok).map(Some).map_err(self.err("use")),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(self.err("inspect")(e.into())),
        }
    }

    /// The current file opened for reading, `None` if there is none. Checked before
    /// opening (so a FIFO or device is never opened) and after.
    fn open_current(&self) -> Result<Option<File>, WriteError> {
        self.set_seen(None);
        if self.inspect()?.is_none() {
            return Ok(None);
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        match openat(&self.dir, &self.name, flags, Mode::empty()) {
            Ok(fd) => {
                let f = File::from(fd);
                let st = fstat(&f).map_err(|e| self.err("inspect")(e.into()))?;
                check_current(&st, &self.ours, self.links_ok).map_err(self.err("use"))?;
                self.set_seen(Some(st));
                Ok(Some(f))
            }
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(self.err("read")(e.into())),
        }
    }

    fn set_seen(&self, st: Option<Stat>) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = st;
        }
    }

    /// The file's status when this run last opened it to read (before reading) or renamed
    /// its new content into place (after the rename); `None` if it did neither, or there
    /// was no file. Whatever changed the file since then changed its ctime.
    pub fn seen(&self) -> Option<Stat> {
        self.seen.lock().ok().and_then(|s| *s)
    }

    /// The current bytes, or `None` if there is no file.
    pub fn read_current(&self) -> Result<Option<Vec<u8>>, WriteError> {
        match self.open_current()? {
            None => Ok(None),
            Some(f) => trust::read_capped(f, READ_CAP).map(Some).map_err(self.err("read")),
        }
    }

    /// The current file, streamed through a buffer (at most [`READ_CAP`] bytes), or `None`
    /// if there is no file.
    pub fn stream(&self) -> Result<Option<io::BufReader<io::Take<File>>>, WriteError> {
        Ok(self.open_current()?.map(|f| io::BufReader::with_capacity(1 << 16, f.take(READ_CAP))))
    }

    /// Removes temp files a killed run left next to the file, modified at least `min_age`
    /// ago; returns how many. With no minimum age, call only under a lock that keeps every
    /// other writer of the file away.
    pub fn clean_stale_temps(&self, min_age: std::time::Duration) -> io::Result<usize> {
        let now = crate::model::date::since_epoch();
        let prefix = temp_prefix(&self.name);
        let mut removed = 0;
        for entry in rustix::fs::Dir::read_from(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if !(name.starts_with(prefix.as_bytes()) && name.ends_with(b".tmp")) {
                continue;
            }
            let name = OsStr::from_bytes(name);
            let st = statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let age = now.saturating_sub(std::time::Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0)));
            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && age >= min_age {
                unlinkat(&self.dir, name, AtFlags::empty())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Replaces the file with what `fill` writes: a temp file in the same directory, fsync,
    /// the old file's mode (masked to `0o777`) and owner, rename, directory fsync. A reader
    /// sees the old file or the new one, never a mix. A new file gets `new_mode` whatever
    /// the umask and, when written by root, its directory's owner and group.
    pub fn write_with(
        &self,
        new_mode: u32,
        fill: impl FnOnce(&mut io::BufWriter<&mut File>) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        let old = self.inspect()?;
        let mode = old.as_ref().map_or(new_mode, |st| st.st_mode) & 0o777;
        let (mut tmp, tmp_name) = self.create_temp()?;
        let done = self.fill_and_rename(&mut tmp, &tmp_name, mode, old.as_ref(), fill);
        if done.is_err() {
            // Nothing else may be left behind; the error that matters is the first one.
            let _ = unlinkat(&self.dir, &tmp_name, AtFlags::empty());
        }
        done
    }

    fn create_temp(&self) -> Result<(File, OsString), WriteError> {
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let prefix = temp_prefix(&self.name);
        let mut tries = 0;
        loop {
            let name = OsString::from(format!("{prefix}{:016x}.tmp", fastrand::u64(..)));
            match openat(&self.dir, &name, flags, Mode::from(0o600)) {
                Ok(fd) => return Ok((File::from(fd), name)),
                Err(e) if e == rustix::io::Errno::EXIST && tries < 16 => tries += 1,
                Err(e) => return Err(self.err("create a temporary file next to")(e.into())),
            }
        }
    }

    fn fill_and_rename(
        &self,
        tmp: &mut File,
        tmp_name: &OsStr,
        mode: u32,
        old: Option<&Stat>,
        fill: impl FnOnce(&mut io::BufWriter<&mut File>) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        {
            let mut w = io::BufWriter::with_capacity(1 << 16, &mut *tmp);
            fill(&mut w).map_err(self.err("write the new"))?;
            w.flush().map_err(self.err("write the new"))?;
        }
        let ours = fstat(&*tmp).map_err(|e| self.err("inspect the new")(e.into()))?;
        let owner = match old {
            Some(st) => Some((st.st_uid, st.st_gid)),
            // A first file, written as root, belongs to whoever owns its directory, so
            // that the gateway can read it.
            None if ours.st_uid == 0 => {
                let d = fstat(&self.dir).map_err(|e| self.err("inspect the directory of")(e.into()))?;
                Some((d.st_uid, d.st_gid))
            }
            None => None,
        };
        // The mode first, while the file is still ours: changing the mode of a file that
        // another user owns needs CAP_FOWNER, which the shipped unit does not grant. A
        // chown after it keeps the mode (it clears only set-id bits, and `mode` has none).
        fchmod(&*tmp, Mode::from(mode)).map_err(|e| self.err("set the mode of the new")(e.into()))?;
        if let Some((uid, gid)) = owner.filter(|o| *o != (ours.st_uid, ours.st_gid)) {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            fchown(&*tmp, Some(uid), Some(gid)).map_err(|e| self.err("keep the owner of")(e.into()))?;
        }
        tmp.sync_all().map_err(self.err("fsync the new"))?;
        self.set_seen(None);
        renameat(&self.dir, tmp_name, &self.dir, &self.name)
            .map_err(|e| self.err("rename the new file over")(e.into()))?;
        self.set_seen(fstat(&*tmp).ok());
        rustix::fs::fsync(self.dir.as_fd()).map_err(|e| self.err("fsync the directory of")(e.into()))?;
        Ok(())
    }
}

/// Why an output may not lie in a directory of ours.
const OURS_DIR: &str = "it would lie in a directory where usersync keeps its configs, lock or state";

/// An existing output must be a regular file no larger than [`READ_CAP`], none of `ours`,
/// and, unless `links_ok`, with no other name (where someone else controls the directory,
/// a hard link could be another file's, which usersync would read and whose owner it would
/// give the new list).
fn check_current(st: &Stat, ours: &Ours, links_ok: bool) -> io::Result<Stat> {
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        let e = if t == FileType::Symlink {
            io::Error::from(rustix::io::Errno::LOOP)
        } else {
            io::Error::new(io::ErrorKind::InvalidInput, format!("it exists but is {}", trust::kind(t)))
        };
        return Err(e);
    }
    if st.st_nlink > 1 && !links_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it has {} hard links, so it may be another file's second name", st.st_nlink),
        ));
    }
    if ours.has_file(st) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is a file usersync itself reads or locks"));
    }
    if u64::try_from(st.st_size).unwrap_or(0) > READ_CAP {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("it is larger than {READ_CAP} bytes")));
    }
    Ok(*st)
}

/// A new version of a file, written next to it but not yet in its place: [`Staged::commit`]
/// puts it there atomically; dropped uncommitted, it is removed. For state that may only
/// move on once something else succeeded.
#[derive(Debug)]
pub struct Staged {
    target: Target,
    tmp: OsString,
    file: File,
    mode: u32,
    committed: bool,
}

impl Staged {
    /// A temporary file next to `path` (its directory as the path names it), to be filled
    /// through [`Staged::file`]; it gets `mode` on commit.
    pub fn create(path: &Path, mode: u32) -> Result<Self, WriteError> {
        let target = Target::at(path)?;
        target.inspect()?;
        let (file, tmp) = target.create_temp()?;
        Ok(Self { target, tmp, file, mode, committed: false })
    }

    /// The file to write the new content to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file as written so far, opened again to read (by its temporary name, in the
    /// directory opened when it was created; never through a symlink).
    pub fn read_back(&self) -> Result<File, WriteError> {
        let t = &self.target;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        openat(&t.dir, &self.tmp, flags, Mode::empty()).map(File::from).map_err(|e| t.err("read the new")(e.into()))
    }

    /// fsync, the mode, rename over the old file, directory fsync.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let t = &self.target;
        fchmod(&self.file, Mode::from(self.mode & 0o777)).map_err(|e| t.err("set the mode of the new")(e.into()))?;
        self.file.sync_all().map_err(t.err("fsync the new"))?;
        renameat(&t.dir, &self.tmp, &t.dir, &t.name).map_err(|e| t.err("rename the new file over")(e.into()))?;
        self.committed = true;
        rustix::fs::fsync(t.dir.as_fd()).map_err(|e| t.err("fsync the directory of")(e.into()))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Nothing of an uncommitted version may stay; there is nobody to tell.
            let _ = unlinkat(&self.target.dir, &self.tmp, AtFlags::empty());
        }
    }
}

/// Replaces the file at `path` (its directory taken as the path names it) with `content`,
/// atomically as [`Target::write_with`]; a new file gets `new_mode`.
pub fn write_file(path: &Path, new_mode: u32, content: &[u8]) -> Result<(), WriteError> {
    Target::at(path)?.write_with(new_mode, |w| w.write_all(content))
}

fn file_name(path: &Path) -> io::Result<OsString> {
    path.file_name().map(OsStr::to_owned).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "it names no file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn target(p: &Path) -> Target {
        Target::at(p).unwrap()
    }

    #[test]
    fn replaces_keeps_the_mode_masked_and_creates_new_files_0640() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("list.txt");
        // Whatever the umask, a new output is 0640.
        let old = rustix::process::umask(Mode::from(0o000));
        target(&p).write_with(NEW_OUTPUT_MODE, |w| w.write_all(b"a\n")).unwrap();
        rustix::process::umask(old);
        assert_eq!(std::fs::read(&p).unwrap(), b"a\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6644)).unwrap();
        write_file(&p, 0o600, b"b\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"b\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o644, "set-id bits are not kept");
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
    }

    #[test]
    fn stale_temps_of_this_output_only_are_cleaned() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("list.txt");
        for name in
            [".usersync-list.txt.abc.tmp", ".usersync-list.txt.def.tmp", ".usersync-other.txt.x.tmp", "list.txt.tmp"]
        {
            // The age is set here, by this process's clock, not left to the file system's:
            // the two differ when the test runs with its clock shifted (tests/clock-shift).
            let f = File::create(t.path().join(name)).unwrap();
            f.set_modified(std::time::SystemTime::now()).unwrap();
        }
        symlink("/etc/passwd", t.path().join(".usersync-list.txt.link.tmp")).unwrap();
        assert_eq!(target(&p).clean_stale_temps(std::time::Duration::from_secs(60)).unwrap(), 0, "too young");
        assert_eq!(target(&p).clean_stale_temps(std::time::Duration::ZERO).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".usersync-list.txt.link.tmp", ".usersync-other.txt.x.tmp", "list.txt.tmp"]);
    }

    #[test]
    fn a_staged_file_replaces_the_old_one_only_when_committed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state");
        std::fs::write(&p, "old").unwrap();
        let mut s = Staged::create(&p, 0o600).unwrap();
        s.file().write_all(b"new").unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "the uncommitted temp file is gone");
        let mut s = Staged::create(&p, 0o600).unwrap();
        s.file().write_all(b"new").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn eperm_hints_name_the_capability_not_read_write_paths() {
        let e = |action| WriteError {
            path: "/server/gw/config/x.txt".into(),
            action,
            source: rustix::io::Errno::PERM.into(),
        };
        let chown = e("keep the owner of").hint().unwrap();
        assert!(chown.contains("CAP_CHOWN") && !chown.contains("ReadWritePaths"), "{chown}");
        let rename = e("rename the new file over").hint().unwrap();
        assert!(rename.contains("lsattr") && !rename.contains("ReadWritePaths"), "{rename}");
        let denied = WriteError { source: rustix::io::Errno::ACCESS.into(), ..e("create a temporary file next to") };
        assert!(denied.hint().unwrap().contains("ReadWritePaths="));
    }

    #[test]
    fn missing_directory_is_an_error_with_a_hint() {
        let e = write_file(Path::new("/nonexistent-usersync/x.txt"), 0o600, b"").unwrap_err();
        assert!(e.hint().unwrap().contains("does not exist"));
    }

    #[test]
    fn symlinks_fifos_and_directories_are_never_read_or_written() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("secret"), "root only\n").unwrap();
        symlink(t.path().join("secret"), t.path().join("link.txt")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, t.path().join("fifo.txt"), FileType::Fifo, Mode::from(0o600), 0).unwrap();
        std::fs::create_dir(t.path().join("dir.txt")).unwrap();
        for (name, says) in
            [("link.txt", "a symlink is on the way"), ("fifo.txt", "a FIFO"), ("dir.txt", "a directory")]
        {
            let tg = target(&t.path().join(name));
            let e = tg.read_current().unwrap_err();
            assert!(e.to_string().contains(says), "{name}: {e}");
            assert!(tg.write_with(0o640, |w| w.write_all(b"x\n")).is_err(), "{name}");
        }
        assert_eq!(std::fs::read_to_string(t.path().join("secret")).unwrap(), "root only\n");
        assert!(std::fs::symlink_metadata(t.path().join("link.txt")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn confined_outputs_refuse_symlinked_directories_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let gw = t.path().join("gw");
        std::fs::create_dir_all(gw.join("config")).unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        symlink(t.path().join("etc"), gw.join("lists")).unwrap();
        let base = Dir::open(&gw).unwrap();
        assert!(Target::beneath(&base, &gw.join("config/a.txt")).is_ok());
        assert!(Target::at(&gw.join("lists/a.txt")).is_ok(), "a root-owned symlink in root's directory is followed");
        let e = Target::beneath(&base, &gw.join("lists/a.txt")).unwrap_err();
        assert!(e.to_string().contains("a symlink is on the way"), "{e}");
        let e = Target::beneath(&base, &gw.join("../etc/a.txt")).unwrap_err();
        assert!(e.to_string().contains("leads out of the directory"), "{e}");
    }
}
