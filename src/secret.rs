//! `Secret`: a string that never shows itself in `Debug` or `Display`, and where
//! secrets come from (inline, a file, or a systemd credential).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

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
}

impl Env {
    /// Reads the process environment.
    #[must_use]
    pub fn from_process() -> Self {
        Self { credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from) }
    }
}

/// Resolves exactly one of `<key>`, `<key>_file`, `<key>_credential` of the config at
/// `path`: the secret and the file it was read from.
pub fn resolve(
    key: &str,
    inline: Option<Secret>,
    file: Option<PathBuf>,
    credential: Option<String>,
    path: &Path,
    env: &Env,
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
        warn_if_world_readable(path);
        (s.expose().to_owned(), path.to_owned())
    } else {
        let file_key = format!("{key}_file");
        let (bytes, source) = read_source(&file_key, file, credential, path, env)?.unwrap_or_default();
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::new(
                path,
                format!("the {key} in {} is not UTF-8 text", source.display()),
                "put the secret itself in the file, as text",
            )
        })?;
        (text, source)
    };
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

/// Reads what the config at `path` names with `file_key` (a path, relative to the config's
/// directory) or with the `_credential` key next to it (a systemd credential name): its
/// bytes and the file they came from. `None` when neither is set; both set is an error.
pub fn read_source(
    file_key: &str,
    file: Option<PathBuf>,
    credential: Option<String>,
    path: &Path,
    env: &Env,
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
            let f = if f.is_relative() { path.parent().unwrap_or(Path::new(".")).join(f) } else { f };
            let bytes = std::fs::read(&f).map_err(|e| {
                ConfigError::new(path, format!("key `{file_key}`: cannot read {}: {e}", f.display()), "check the path (relative paths are taken from the config's directory) and that usersync's user can read it")
            })?;
            warn_if_world_readable(&f);
            Ok(Some((bytes, f)))
        }
        (None, Some(name)) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(ConfigError::new(
                    path,
                    format!("key `{credential_key}`: `{name}` is not a credential name"),
                    "give the name used in the unit's LoadCredential=NAME:PATH",
                ));
            }
            let Some(dir) = &env.credentials_directory else {
                return Err(ConfigError::new(path, format!("key `{credential_key}`: `{name}` is set but $CREDENTIALS_DIRECTORY is not"), format!("run usersync from its systemd unit with LoadCredential={name}:/etc/usersync/credentials/{name}, or use {file_key}")));
            };
            let f = dir.join(&name);
            let bytes = std::fs::read(&f).map_err(|e| {
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

fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(), "file holding a secret is readable by every user; chmod o-r it");
        }
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
