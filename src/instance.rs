//! Finds instances under the server root and loads their configs and output paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cfgfile;
use crate::entraidconf::{EntraConf, Env};
use crate::error::ConfigError;
use crate::output::Output;

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
    pub outputs: BTreeMap<Output, PathBuf>,
}

impl Instance {
    /// `<dir>/config/entraid`, where the lock file lives.
    #[must_use]
    pub fn entraid_dir(&self) -> PathBuf {
        self.dir.join(ENTRAID_DIR)
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
    for output in Output::ALL {
        if configs.iter().any(|c| c.feeds.contains(&output)) {
            match output_path(&dir, output) {
                Ok(p) => {
                    outputs.insert(output, p);
                }
                Err(e) => errors.push(e.in_instance(name)),
            }
        }
    }
    if errors.is_empty() {
        Ok(Instance { name: name.to_owned(), dir, configs, outputs })
    } else {
        Err(errors)
    }
}

/// Where `output` goes: the `.cfg` override if set, else the default path.
fn output_path(dir: &Path, output: Output) -> Result<PathBuf, ConfigError> {
    let (cfg, key) = match output {
        Output::AllowedSenders => ("config/envelope.cfg", "ALLOWEDLDAPSENDERFILE"),
        Output::GsmList => ("config/compose.cfg", "LDAPGSMLISTFILE"),
        Output::AccessRules => return Ok(dir.join(output.default_path())),
    };
    let cfg_path = dir.join(cfg);
    let text = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dir.join(output.default_path())),
        Err(e) => {
            return Err(ConfigError::new(
                &cfg_path,
                format!("cannot read: {e}"),
                "make it readable by usersync's user, or remove it to use the default output paths",
            ));
        }
    };
    match cfgfile::lookup(&text, key) {
        None => Ok(dir.join(output.default_path())),
        Some(v) if v.is_empty() || v.ends_with('/') => Err(ConfigError::new(
            &cfg_path,
            format!("`{key}` is set to `{v}`, which is not a file path"),
            format!("set {key} to the list file's path, or remove the line to use {}", output.default_path()),
        )),
        Some(v) => Ok(dir.join(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_overrides_and_defaults() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("config")).unwrap();
        assert_eq!(output_path(t.path(), Output::GsmList).unwrap(), t.path().join("config/gsm_list.txt"));
        std::fs::write(t.path().join("config/envelope.cfg"), "# x\nALLOWEDLDAPSENDERFILE = \"/srv/a.txt\"\n").unwrap();
        assert_eq!(output_path(t.path(), Output::AllowedSenders).unwrap(), PathBuf::from("/srv/a.txt"));
        std::fs::write(t.path().join("config/compose.cfg"), "LDAPGSMLISTFILE lists/g.txt\n").unwrap();
        assert_eq!(output_path(t.path(), Output::GsmList).unwrap(), t.path().join("lists/g.txt"));
    }
}
