//! Finds instances under the server root and loads their configs and output paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cfgfile;
use crate::entraidconf::{EntraConf, Env};
use crate::error::ConfigError;
use crate::output::Output;
use crate::trust::{self, Trust};
use crate::write::{Target, WriteError};

/// The directory under an instance holding its `.entraidconf` files.
pub const ENTRAID_DIR: &str = "config/entraid";

/// One gateway instance with its checked configs.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Directory name under the server root.
    pub name: String,
    /// `<server-root>/<name>`
    pub dir: PathBuf,
    /// Its configs, sorted by file name.
    pub configs: Vec<EntraConf>,
    /// Where each output that some config feeds is written.
    pub outputs: BTreeMap<Output, OutputPath>,
    /// The `envelope.cfg` / `compose.cfg` files read, and whether each is trusted.
    pub cfg_files: Vec<(PathBuf, Trust)>,
}

/// Where an output is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath {
    /// The path.
    pub path: PathBuf,
    /// It must lie beneath the instance directory with no symlink on the way: a default
    /// path, or one from an untrusted `.cfg`. Only a trusted `.cfg` may name others.
    pub confined: bool,
}

impl Instance {
    /// `<dir>/config/entraid`, where the lock file lives.
    #[must_use]
    pub fn entraid_dir(&self) -> PathBuf {
        self.dir.join(ENTRAID_DIR)
    }

    /// Opens the directory of `output`'s file, as [`OutputPath::confined`] says.
    pub fn target(&self, output: &OutputPath) -> Result<Target, WriteError> {
        Target::open(&output.path, output.confined.then_some(self.dir.as_path()))
    }
}

/// Names of the instances under `root`: directories with at least one `*.entraidconf`.
pub fn discover(root: &Path) -> Result<Vec<String>, ConfigError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        ConfigError::new(root, format!("cannot read the server root: {e}"), "set --server-root, USERSYNC_SERVER_ROOT or server_root in usersync.toml to the directory holding the instances")
    })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.path().is_dir() {
            continue;
        }
        if !config_files(&entry.path().join(ENTRAID_DIR)).is_empty() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The instances a run covers: `names` (checked, sorted, deduplicated), or
/// every instance under `root` when `names` is empty (then at least one).
pub fn select(root: &Path, names: &[String]) -> Result<Vec<String>, ConfigError> {
    if names.is_empty() {
        let found = discover(root)?;
        if found.is_empty() {
            return Err(ConfigError::new(
                root,
                "no instance here: no <instance>/config/entraid/*.entraidconf",
                "create an instance's config/entraid/<name>.entraidconf (see config/example.entraidconf), or point --server-root at the right directory",
            ));
        }
        return Ok(found);
    }
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains('/') || *n == "." || *n == "..") {
        return Err(ConfigError::new(
            root,
            format!("`{bad}` is not an instance name"),
            "give the name of a directory under the server root",
        ));
    }
    Ok(names)
}

/// The `*.entraidconf` files of one instance directory, sorted.
fn config_files(entraid: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(entraid)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "entraidconf") && p.is_file())
        .collect();
    files.sort();
    files
}

/// Loads instance `name` under `root`; every problem found is returned, not just the first.
pub fn load(root: &Path, name: &str, env: &Env) -> Result<Instance, Vec<ConfigError>> {
    let dir = root.join(name);
    let files = config_files(&dir.join(ENTRAID_DIR));
    if files.is_empty() {
        return Err(vec![ConfigError::new(
            dir.join(ENTRAID_DIR),
            "no *.entraidconf file here, so this is not an instance",
            "check the name given to -i, or create config/entraid/<name>.entraidconf (see config/example.entraidconf)",
        )
        .in_instance(name)]);
    }
    let mut errors = Vec::new();
    let mut configs = Vec::new();
    for f in &files {
        match EntraConf::load(f, env) {
            Ok(c) => configs.push(c),
            Err(e) => errors.push(e.in_instance(name)),
        }
    }
    let mut outputs = BTreeMap::new();
    let mut cfg_files = Vec::new();
    for output in Output::ALL {
        if configs.iter().any(|c| c.feeds.contains(&output)) {
            match output_path(&dir, output, &mut cfg_files) {
                Ok(p) => {
                    outputs.insert(output, p);
                }
                Err(e) => errors.push(e.in_instance(name)),
            }
        }
    }
    let mut seen: BTreeMap<PathBuf, Output> = BTreeMap::new();
    for (output, p) in &outputs {
        if let Some(first) = seen.insert(same_file(&p.path), *output) {
            errors.push(
                ConfigError::new(
                    &p.path,
                    format!("both {first} and {output} would be written to this file"),
                    "give each output its own file in envelope.cfg (ALLOWEDLDAPSENDERFILE) / compose.cfg (LDAPGSMLISTFILE)",
                )
                .in_instance(name),
            );
        }
    }
    if errors.is_empty() {
        Ok(Instance { name: name.to_owned(), dir, configs, outputs, cfg_files })
    } else {
        Err(errors)
    }
}

/// What `path` names, for telling whether two outputs are one file: its directory with `..`
/// and symlinks resolved (when it exists), and its name.
fn same_file(path: &Path) -> PathBuf {
    let dir = trust::parent(path);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.join(path.file_name().unwrap_or_default())
}

/// Where `output` goes: the `.cfg` override if set, else the default path. Each `.cfg`
/// read is added to `read` with its trust.
fn output_path(dir: &Path, output: Output, read: &mut Vec<(PathBuf, Trust)>) -> Result<OutputPath, ConfigError> {
    let default = OutputPath { path: dir.join(output.default_path()), confined: true };
    let (cfg, key) = match output {
        Output::AllowedSenders => ("config/envelope.cfg", "ALLOWEDLDAPSENDERFILE"),
        Output::GsmList => ("config/compose.cfg", "LDAPGSMLISTFILE"),
        Output::AccessRules => return confined(dir, default, None),
    };
    let cfg_path = dir.join(cfg);
    let (text, trust) = match trust::read(&cfg_path).and_then(|(b, t)| {
        String::from_utf8(b).map(|s| (s, t)).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return confined(dir, default, None),
        Err(e) => {
            return Err(ConfigError::new(
                &cfg_path,
                format!("cannot read: {e}"),
                "make it a readable text file, or remove it to use the default output paths",
            ));
        }
    };
    read.push((cfg_path.clone(), trust.clone()));
    match cfgfile::lookup(&text, key) {
        None => confined(dir, default, None),
        Some(v) if v.is_empty() || v.ends_with('/') => Err(ConfigError::new(
            &cfg_path,
            format!("`{key}` is set to `{}`, which is not a file path", crate::error::quote(&v)),
            format!("set {key} to the list file's path, or remove the line to use {}", output.default_path()),
        )),
        Some(v) if trust.is_trusted() => Ok(OutputPath { path: dir.join(v), confined: false }),
        Some(v) => {
            let p = OutputPath { path: dir.join(&v), confined: true };
            confined(dir, p, Some((&cfg_path, key, &trust)))
        }
    }
}

/// Checks that a confined output lies beneath `dir` with no symlink on the way. `from`
/// names the untrusted `.cfg` that set it (otherwise it is a default path). A missing
/// directory is no configuration error: the write reports it.
fn confined(dir: &Path, p: OutputPath, from: Option<(&Path, &str, &Trust)>) -> Result<OutputPath, ConfigError> {
    let Err(e) = Target::open(&p.path, Some(dir)) else { return Ok(p) };
    let errno = e.source.raw_os_error();
    let escapes = errno == Some(rustix::io::Errno::XDEV.raw_os_error());
    if !escapes && errno != Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return Ok(p);
    }
    let what = if escapes { "leads out of the instance directory" } else { "has a symlink on the way" };
    Err(match from {
        Some((cfg, key, trust)) => {
            let f = cfg.display();
            ConfigError::new(
                cfg,
                format!("`{key}` names {}, which {what}; this file is {trust}, so it may only name files beneath {} with no symlink on the way", p.path.display(), dir.display()),
                format!("name a file beneath {}; or, if the path is right, make the file root's: chown root: {f}; chmod go-w {f}", dir.display()),
            )
        }
        None => ConfigError::new(
            &p.path,
            format!("the default path of this output {what}"),
            format!("replace the symlink under {} with the real directory, or name the file in a root-owned envelope.cfg / compose.cfg", dir.display()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(dir: &Path, o: Output) -> Result<PathBuf, ConfigError> {
        output_path(dir, o, &mut Vec::new()).map(|p| p.path)
    }

    #[test]
    fn cfg_overrides_and_defaults() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("config")).unwrap();
        assert_eq!(path(t.path(), Output::GsmList).unwrap(), t.path().join("config/gsm_list.txt"));
        std::fs::write(t.path().join("config/envelope.cfg"), "# x\nALLOWEDLDAPSENDERFILE = \"/srv/a.txt\"\n").unwrap();
        assert_eq!(path(t.path(), Output::AllowedSenders).unwrap(), PathBuf::from("/srv/a.txt"));
        std::fs::write(t.path().join("config/compose.cfg"), "LDAPGSMLISTFILE lists/g.txt\n").unwrap();
        assert_eq!(path(t.path(), Output::GsmList).unwrap(), t.path().join("lists/g.txt"));
    }

    #[test]
    fn an_untrusted_cfg_names_only_files_beneath_the_instance() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("config")).unwrap();
        let cfg = t.path().join("config/envelope.cfg");
        let write = |v: &str| {
            std::fs::write(&cfg, format!("ALLOWEDLDAPSENDERFILE={v}\n")).unwrap();
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
        };
        write("/srv/a.txt");
        assert!(path(t.path(), Output::AllowedSenders).unwrap_err().message.contains("leads out of the instance"));
        write("../../etc/a.txt");
        assert!(path(t.path(), Output::AllowedSenders).is_err());
        write(&t.path().join("config/a.txt").display().to_string());
        assert_eq!(path(t.path(), Output::AllowedSenders).unwrap(), t.path().join("config/a.txt"));
        std::os::unix::fs::symlink("/etc", t.path().join("lists")).unwrap();
        write("lists/a.txt");
        let e = path(t.path(), Output::AllowedSenders).unwrap_err();
        assert!(e.message.contains("has a symlink on the way"), "{e}");
        assert!(e.hint.contains("chown root:"), "{e:?}");
    }
}
