//! Reading the current output files and replacing them atomically (contract §5.5).

use std::fmt;
use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Hint;

/// Prefix of our temporary files, so that they are recognisable (and never `*.txt`):
/// `.usersync-<output file name>.<random>.tmp`.
pub const TEMP_PREFIX: &str = ".usersync-";

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn temp_prefix(path: &Path) -> String {
    format!("{TEMP_PREFIX}{}.", path.file_name().unwrap_or_default().to_string_lossy())
}

/// Removes temp files a killed run left next to `path`; returns how many.
/// Call only while holding the instance's lock.
pub fn clean_stale_temps(path: &Path) -> io::Result<usize> {
    let dir = dir_of(path);
    let prefix = temp_prefix(path);
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
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
        write!(f, "cannot {} {}: {}", self.action, self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {}

impl Hint for WriteError {
    fn hint(&self) -> Option<String> {
        let dir = self.path.parent().unwrap_or(Path::new("/")).display().to_string();
        Some(match self.source.kind() {
            io::ErrorKind::NotFound => format!("the directory {dir} does not exist: create it, or fix ALLOWEDLDAPSENDERFILE / LDAPGSMLISTFILE in the instance's envelope.cfg / compose.cfg"),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!("usersync's user cannot write in {dir}: run it as the files' owner or root, and under systemd list the directory in ReadWritePaths="),
            io::ErrorKind::StorageFull => format!("the file system holding {dir} is full: free space; the old file was left intact"),
            _ => format!("check the file system holding {dir}; the old file was left intact"),
        })
    }
}

fn err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError { path: path.to_owned(), action, source }
}

/// The current bytes of `path`, or `None` if it does not exist.
pub fn read_current(path: &Path) -> Result<Option<Vec<u8>>, WriteError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path, "read")(e)),
    }
}

/// Whether `same` finds the current file at `path` (streamed through a buffer) already
/// right; false when there is no file.
pub fn unchanged(path: &Path, same: impl FnOnce(io::BufReader<File>) -> io::Result<bool>) -> Result<bool, WriteError> {
    match File::open(path) {
        Ok(f) => same(io::BufReader::with_capacity(1 << 16, f)).map_err(err(path, "read")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err(path, "read")(e)),
    }
}

/// Replaces `path` with `content`: a temp file in the same directory, fsync,
/// the old file's mode and owner, rename, directory fsync. A reader sees
/// the old file or the new one, never a mix. A new file gets mode 0666 less
/// the umask and, when written by root, its directory's owner and group.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |w| w.write_all(content))
}

/// As [`write_atomic`], with the content streamed by `fill` through a buffer.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<&mut File>) -> io::Result<()>,
) -> Result<(), WriteError> {
    let dir = dir_of(path);
    let old = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(path, "inspect")(e)),
    };
    // A new file gets 0666 less the umask, as a shell redirection would.
    let mode = old.as_ref().map_or(0o666, |m| m.mode() & 0o7777);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err(path, "create a temporary file next to"))?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        fill(&mut w).map_err(err(path, "write the new"))?;
        w.flush().map_err(err(path, "write the new"))?;
    }
    let f = tmp.as_file();
    let ours = f.metadata().map_err(err(path, "inspect the new"))?;
    let owner = match &old {
        Some(m) => {
            f.set_permissions(Permissions::from_mode(mode)).map_err(err(path, "set the mode of the new"))?;
            Some((m.uid(), m.gid()))
        }
        // A first file, written as root, belongs to whoever owns its directory,
        // so that the gateway can read it (under systemd the umask is 0027).
        None if ours.uid() == 0 => {
            let d = std::fs::metadata(dir).map_err(err(path, "inspect the directory of"))?;
            Some((d.uid(), d.gid()))
        }
        None => None,
    };
    if let Some((uid, gid)) = owner.filter(|o| *o != (ours.uid(), ours.gid())) {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(err(path, "keep the owner of"))?;
    }
    f.sync_all().map_err(err(path, "fsync the new"))?;
    tmp.persist(path).map_err(|e| err(path, "rename the new file over")(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(path, "fsync the directory of"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_keeps_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("list.txt");
        write_atomic(&p, b"a\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a\n");
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"b\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"b\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
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
            std::fs::write(t.path().join(name), "x").unwrap();
        }
        assert_eq!(clean_stale_temps(&p).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".usersync-other.txt.x.tmp", "list.txt.tmp"]);
    }

    #[test]
    fn missing_directory_is_an_error_with_a_hint() {
        let e = write_atomic(Path::new("/nonexistent-usersync/x.txt"), b"").unwrap_err();
        assert!(e.hint().unwrap().contains("does not exist"));
    }
}
