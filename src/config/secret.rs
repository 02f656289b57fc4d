//! `Secret`: a string that never shows itself in `Debug` or `Display`, and where
//! secrets come from (inline, a file, or a systemd credential).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::files::judged::{self, Dir};
use crate::files::resolve;
use crate::files::trust::{self, Controllers, Distrust, Trust};

/// A client secret or an access token. Printing it in any way gives `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What loading needs from the environment, passed in so that loading stays testable.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd's `LoadCredential=`.
    pub credentials_directory: Option<PathBuf>,
    /// Without `$CREDENTIALS_DIRECTORY`, a credential name is left unread (see `Unread`)
    /// instead of being an error: `usersync check` from a shell, where only the unit can
    /// read what its `LoadCredential=` names.
    pub leave_credentials_unread: bool,
}

impl Env {
    /// Reads the process environment: a credential name needs `$CREDENTIALS_DIRECTORY`.
    #[must_use]
    pub fn from_process() -> Self {
        Self {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            leave_credentials_unread: false,
        }
    }

    /// As [`Env::from_process`], but for an offline check: without `$CREDENTIALS_DIRECTORY`
    /// (a shell, not the unit), credential names are checked and left unread.
    #[must_use]
    pub fn for_check() -> Self {
        Self { leave_credentials_unread: true, ..Self::from_process() }
    }

    /// `key = "name"` as a credential left unread here, or `None` when it is to be read
    /// (or is no valid name, which reading then reports).
    #[must_use]
    pub fn unread(&self, key: &str, name: Option<&String>) -> Option<Unread> {
        let name = name.filter(|n| valid_credential_name(n))?;
        (self.leave_credentials_unread && self.credentials_directory.is_none())
            .then(|| Unread { key: key.to_owned(), name: name.clone() })
    }
}

/// A systemd credential that `usersync check`, run from a shell, does not read: only the
/// unit has `$CREDENTIALS_DIRECTORY`. Everything else of its config is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    /// The key that names it, such as `client_secret_credential`.
    pub key: String,
    /// The credential's name in `LoadCredential=NAME:PATH`.
    pub name: String,
}

impl Unread {
    /// A note for `check`: what was not read, and how to check it as the unit sees it.
    #[must_use]
    pub fn note(&self) -> (String, String) {
        let n = &self.name;
        (
            format!("key `{}`: the systemd credential `{n}` is read only under the unit (LoadCredential=, $CREDENTIALS_DIRECTORY), so this shell did not read it; everything else was checked", self.key),
            format!("to check it as the unit sees it: systemd-run --pipe --wait -p LoadCredential={n}:/etc/usersync/credentials/{n} usersync check"),
        )
    }
}

/// Whether `name` can be a credential's name: one path component.
fn valid_credential_name(name: &str) -> bool {
    !(name.is_empty() || name.contains('/') || name == "." || name == "..")
}

/// Resolves exactly one of `<key>`, `<key>_file`, `<key>_credential` of the config at
/// `path`: the secret and the file it was read from. `confine`: see [`read_source`].
pub fn resolve(
    key: &str,
    inline: Option<Secret>,
    file: Option<PathBuf>,
    credential: Option<String>,
    path: &Path,
    env: &Env,
    confine: Option<&Confine<'_>>,
) -> Result<(Secret, PathBuf), ConfigError> {
    let one_of = format!("set exactly one of {key}, {key}_file, {key}_credential");
    let given = usize::from(inline.is_some()) + usize::from(file.is_some()) + usize::from(credential.is_some());
    if given != 1 {
        let what = if given == 0 {
            format!("no {key} is configured")
        } else {
            format!("more than one of {key}, {key}_file, {key}_credential is set")
        };
        return Err(ConfigError::new(path, what, one_of));
    }
    let (value, source) = if let Some(s) = inline {
        (s.expose().to_owned(), path.to_owned())
    } else {
        let file_key = format!("{key}_file");
        let (bytes, source) = read_source(&file_key, file, credential, path, env, confine)?.unwrap_or_default();
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::new(
                path,
                format!("the {key} in {} is not UTF-8 text", source.display()),
                "put the secret itself in the file, as text",
            )
        })?;
        (text, source)
    };
    if !env.credentials_directory.as_deref().is_some_and(|d| source.starts_with(d)) {
        let what = match key {
            "password" => "a password",
            "api_key" => "an API key",
            _ => "a client secret",
        };
        warn_if_exposed(&source, what);
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::new(
            path,
            format!("the {key} from {} is empty", source.display()),
            "put the secret itself in the file (for a client secret: its Value, not its Secret ID, from Certificates & secrets in the Entra admin center)",
        ));
    }
    Ok((Secret::new(value.to_owned()), source))
}

/// Where a config that is not root's word (contract §9) may take its secrets from: files
/// beneath its own directory that whoever may change the config could read anyway, and the
/// systemd credentials that the global config gives its instance. Anything else would lend
/// it a secret that root keeps from that account.
#[derive(Clone, Copy, Debug)]
pub struct Confine<'a> {
    /// The config's directory, opened and judged.
    pub dir: &'a Dir,
    /// Why the config is untrusted, for messages.
    pub why: &'a Distrust,
    /// Everyone who may have written the config: the files it names must be theirs to use.
    pub controllers: &'a Controllers,
    /// Its instance.
    pub instance: &'a str,
    /// The credentials `[credentials]` of the global config gives the instance.
    pub credentials: &'a [String],
}

impl Confine<'_> {
    /// An error unless the credential `name` is the instance's (the check happens before
    /// anything is read, so that nothing is sent with a borrowed credential).
    pub fn credential(&self, path: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
        if self.credentials.iter().any(|c| c == name) {
            return Ok(());
        }
        let i = self.instance;
        Err(ConfigError::new(
            path,
            format!("key `{key}`: the credential `{name}` is not given to instance `{i}` in the global configuration ([credentials]), and this config is {}, so it may use only its instance's credentials; nothing was sent with it", Trust::Untrusted(self.why.clone())),
            format!("if `{name}` is meant for `{i}`, add it in /etc/usersync/usersync.toml: [credentials] {i} = [\"{name}\"]; or {}", self.why.fix(path)),
        ))
    }
}

/// Reads what the config at `path` names with `file_key` (a path, relative to the config's
/// directory) or with the `_credential` key next to it (a systemd credential name): its
/// bytes and the file they came from. `None` when neither is set; both set is an error.
/// With `confine` (a config that is not root's word), the file must lie beneath its
/// directory with no symlink on the way and be readable anyway by whoever may change the
/// config, and a credential must be its instance's; nothing is read otherwise. Files are
/// read without blocking, judged along their whole path, must be regular files, and are
/// capped.
pub fn read_source(
    file_key: &str,
    file: Option<PathBuf>,
    credential: Option<String>,
    path: &Path,
    env: &Env,
    confine: Option<&Confine<'_>>,
) -> Result<Option<(Vec<u8>, PathBuf)>, ConfigError> {
    let base = file_key.strip_suffix("_file").unwrap_or(file_key);
    let credential_key = format!("{base}_credential");
    match (file, credential) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ConfigError::new(
            path,
            format!("both {file_key} and {credential_key} are set"),
            format!("keep one of {file_key} and {credential_key}"),
        )),
        (Some(f), None) => {
            let f = judged::absolute(&trust::parent(path).join(f));
            let bytes = match confine {
                None => judged::read(&f).map(|(b, _)| b),
                Some(c) => read_beneath(c, &f).map_err(|(what, hint)| {
                    ConfigError::new(
                        path,
                        format!("key `{file_key}`: {} {what}; this config is {}, so it may only name files beneath {} with no symlink on the way that whoever may change it could read anyway; nothing was read", f.display(), Trust::Untrusted(c.why.clone()), c.dir.path().display()),
                        format!("{hint}; or {}", c.why.fix(path)),
                    )
                })?,
            }
            .map_err(|e| {
                ConfigError::new(path, format!("key `{file_key}`: cannot read {}: {}", f.display(), resolve::explain(&e)), "check the path (relative paths are taken from the config's directory) and that usersync's user can read it")
            })?;
            Ok(Some((bytes, f)))
        }
        (None, Some(name)) => {
            if !valid_credential_name(&name) {
                return Err(ConfigError::new(
                    path,
                    format!("key `{credential_key}`: `{name}` is not a credential name"),
                    "give the name used in the unit's LoadCredential=NAME:PATH",
                ));
            }
            if let Some(c) = confine {
                c.credential(path, &credential_key, &name)?;
            }
            let Some(dir) = &env.credentials_directory else {
                return Err(ConfigError::new(path, format!("key `{credential_key}`: `{name}` is set but $CREDENTIALS_DIRECTORY is not"), format!("run usersync from its systemd unit with LoadCredential={name}:/etc/usersync/credentials/{name}, or use {file_key}")));
            };
            let f = judged::absolute(&dir.join(&name));
            let bytes = judged::read(&f).map(|(b, _)| b).map_err(|e| {
                ConfigError::new(
                    path,
                    format!("key `{credential_key}`: cannot read {}: {e}", f.display()),
                    format!("add LoadCredential={name}:/path/to/file to the unit"),
                )
            })?;
            Ok(Some((bytes, f)))
        }
    }
}

/// Reads `f` if it lies beneath the confined config's directory with no symlink on the way,
/// has no other name, and whoever may change the config could read it anyway. The outer
/// error says why it may not be read (and how to fix it); the inner one is an ordinary
/// read failure.
fn read_beneath(c: &Confine<'_>, f: &Path) -> Result<std::io::Result<Vec<u8>>, (String, String)> {
    use rustix::fs::{Mode, OFlags};
    let dir = c.dir.path();
    let rel = resolve::beneath(dir, f).ok_or_else(|| {
        ("is not beneath the config's directory".to_owned(), format!("move the file into {}", dir.display()))
    })?;
    // Every directory on the way must be one they could pass through themselves.
    let mut dir = PathBuf::new();
    for part in trust::parent(&rel).components() {
        dir.push(part);
        let Ok(fd) = c.dir.open_beneath(&dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) else { break };
        if rustix::fs::fstat(&fd).is_ok_and(|st| !c.controllers.could(&st, 0o1)) {
            return Err((
                format!("lies in {}, which whoever may change this config could not enter (a borrowed secret)", c.dir.path().join(&dir).display()),
                "keep the config's secrets where its owner may read them, or give the instance a systemd credential in [credentials] of /etc/usersync/usersync.toml".to_owned(),
            ));
        }
    }
    let file = match c.dir.open_beneath(&rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::LOOP.raw_os_error() || c == rustix::io::Errno::XDEV.raw_os_error()) =>
        {
            return Err((
                format!("is reached through a symlink ({})", resolve::explain(&e)),
                "name the real file, placed in the config's directory".to_owned(),
            ));
        }
        Err(e) => return Ok(Err(e)),
    };
    let st = match trust::regular(&file) {
        Ok(st) => st,
        Err(e) => return Ok(Err(e)),
    };
    if st.st_nlink > 1 {
        return Err((
            format!("has {} hard links (it may be another file's second name)", st.st_nlink),
            format!("remove the other names of {}, or put a copy there", f.display()),
        ));
    }
    if !c.controllers.could(&st, 0o4) {
        return Err((
            format!("is owned by uid {} with mode {:04o}, so it is not a secret of whoever may change this config (a borrowed secret)", st.st_uid, st.st_mode & 0o7777),
            "give the file to the config's owner (chown it to that user), or give the instance a systemd credential in [credentials] of /etc/usersync/usersync.toml".to_owned(),
        ));
    }
    Ok(trust::read_capped(file, trust::CONFIG_CAP))
}

/// Whether group or others may read `path`, which holds `holds` (a client secret, a
/// password, a private key): the warning that both a run (in its log) and `usersync check`
/// give, and its fix.
#[must_use]
pub fn exposure(path: &Path, holds: &str) -> Option<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        (
            format!("{} holds {holds} and is readable by group or others (mode {mode:04o})", path.display()),
            format!("chmod 600 {}", path.display()),
        )
    })
}

/// Logs [`exposure`]'s warning, if any.
pub fn warn_if_exposed(path: &Path, holds: &str) {
    if let Some((message, hint)) = exposure(path, holds) {
        tracing::warn!("{message}; hint: {hint}");
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?} {s:#?}"), "*** *** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
