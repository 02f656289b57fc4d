//! Finds instances under the server root and loads their configs and output paths, through
//! directories opened and judged along their whole path ([`crate::files::judged`]): the lock,
//! configs, secrets and outputs are all opened relative to those descriptors afterwards.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::cfgfile;
use crate::config::entraid::{EntraConf, Env, Place};
use crate::config::global::Config;
use crate::error::ConfigError;
use crate::files::judged::Dir;
use crate::files::trust::{Controllers, Trust};
use crate::files::write::{Ours, Target, WriteError};
use crate::model::output::Output;

/// The directory under an instance holding its `.entraidconf` files.
pub const ENTRAID_DIR: &str = "config/entraid";

/// What loading an instance needs besides the instance: the environment, `[credentials]`,
/// and the files that are usersync's own.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where systemd credentials are.
    pub env: Env,
    /// `[credentials]` of the global config.
    pub credentials: BTreeMap<String, Vec<String>>,
    /// Files and directories usersync reads or keeps state in (the global config, its CA
    /// bundle, the state directory); each instance adds its own.
    pub ours: Ours,
}

impl Context {
    /// The context of a run with the global `config`.
    #[must_use]
    pub fn new(config: &Config, env: Env) -> Self {
        let mut ours = Ours::default();
        if let Some(p) = &config.path {
            ours.add_file_at(p);
        }
        if let Some(ca) = &config.http.ca_bundle {
            ours.add_file_at(&ca.0);
        }
        ours.add_dir_at(&config.state_dir);
        ours.add_dir_at(&config.state_dir.join("delta"));
        ours.add_dir_at(&config.state_dir.join("instances"));
        Self { env, credentials: config.credentials.clone(), ours }
    }
}

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

/// An instance as loaded from the file system: its directories stay open, and every later
/// open (lock, outputs) goes through them, never through the path again.
#[derive(Debug)]
pub struct Loaded {
    /// What it is.
    pub instance: Instance,
    /// The instance directory, opened and judged.
    pub handle: Dir,
    /// Its `config/entraid`, opened and judged: configs and the lock are opened through it.
    pub entraid: Dir,
    /// What no output of it may be: usersync's own files and this instance's.
    pub ours: Arc<Ours>,
}

impl std::ops::Deref for Loaded {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.instance
    }
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
}

impl Loaded {
    /// Opens the directory of `output`'s file, as [`OutputPath::confined`] says; an error if
    /// it is, or lies in a directory of, what usersync itself reads, locks or keeps.
    pub fn target(&self, output: &OutputPath) -> Result<Target, WriteError> {
        let t = if output.confined { Target::beneath(&self.handle, &output.path)? } else { Target::at(&output.path)? };
        t.never(&self.ours)
    }
}

/// The server root, opened and judged.
fn open_root(root: &Path) -> Result<Dir, ConfigError> {
    Dir::open(root).map_err(|e| {
        ConfigError::new(root, format!("cannot read the server root: {}", crate::files::resolve::explain(&e)), "set --server-root, USERSYNC_SERVER_ROOT or server_root in usersync.toml to the directory holding the instances")
    })
}

/// Names of the instances under `root`: directories with at least one `*.entraidconf`.
pub fn discover(root: &Path) -> Result<Vec<String>, ConfigError> {
    let dir = open_root(root)?;
    let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| {
        ConfigError::new(root, format!("cannot read the server root: {e}"), "check that usersync's user may list it")
    })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if name == "." || name == ".." {
            continue;
        }
        let entraid = dir.dir(Path::new(&name)).and_then(|d| d.dir(Path::new(ENTRAID_DIR)));
        if entraid.is_ok_and(|d| !config_files(&d).is_empty()) {
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
                "create an instance's config/entraid/<name>.entraidconf (see /usr/share/doc/usersync/examples/example.entraidconf), or point --server-root at the right directory",
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

/// The `*.entraidconf` entries of an instance's opened `config/entraid`, sorted: anything
/// but a directory (a symlink is refused when it is read, with its reason).
fn config_files(entraid: &Dir) -> Vec<String> {
    let Ok(entries) = rustix::fs::Dir::read_from(entraid) else { return vec![] };
    let mut files: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type() != rustix::fs::FileType::Directory)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "entraidconf"))
        .collect();
    files.sort();
    files
}

/// Opens `rel` beneath the instance's directory, with its reason in words on failure.
fn open_dir(base: &Dir, rel: &str, instance: &str) -> Result<Dir, ConfigError> {
    base.dir(Path::new(rel)).map_err(|e| {
        let path = base.path().join(rel);
        let symlink = e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error());
        if e.kind() == std::io::ErrorKind::NotFound && rel != "config" {
            // The instance, or its config/entraid, is not there.
            let entraid = if rel == ENTRAID_DIR { path.clone() } else { path.join(ENTRAID_DIR) };
            return no_configs(&entraid, instance);
        }
        let (what, hint) = if symlink {
            ("is a symlink in a directory that someone else than root controls, and usersync does not follow it".to_owned(),
             format!("replace {} with the real directory", path.display()))
        } else {
            (format!("cannot be opened: {}", crate::files::resolve::explain(&e)),
             "check the name given to -i, or create config/entraid/<name>.entraidconf (see /usr/share/doc/usersync/examples/example.entraidconf)".to_owned())
        };
        ConfigError::new(&path, what, hint).in_instance(instance)
    })
}

fn no_configs(entraid: &Path, instance: &str) -> ConfigError {
    ConfigError::new(
        entraid,
        "no *.entraidconf file here, so this is not an instance",
        "check the name given to -i, or create config/entraid/<name>.entraidconf (see /usr/share/doc/usersync/examples/example.entraidconf)",
    )
    .in_instance(instance)
}

/// Loads instance `name` under `root`; every problem found is returned, not just the first.
pub fn load(root: &Path, name: &str, ctx: &Context) -> Result<Loaded, Vec<ConfigError>> {
    let root_dir = open_root(root).map_err(|e| vec![e])?;
    let handle = open_dir(&root_dir, name, name).map_err(|e| vec![e])?;
    let entraid = open_dir(&handle, ENTRAID_DIR, name).map_err(|e| vec![e])?;
    let dir = handle.path().to_path_buf();
    let files = config_files(&entraid);
    if files.is_empty() {
        return Err(vec![no_configs(&dir.join(ENTRAID_DIR), name)]);
    }
    let credentials = ctx.credentials.get(name).map_or(&[][..], Vec::as_slice);
    let place = Place { dir: &entraid, instance: name, credentials };
    let mut ours = ctx.ours.clone();
    if let Ok(st) = entraid.stat() {
        ours.add_dir(&st);
    }
    let mut errors = Vec::new();
    let mut configs = Vec::new();
    for f in &files {
        match EntraConf::load(&place, OsStr::new(f), &ctx.env) {
            Ok(c) => {
                ours.add_file_at(&c.path);
                ours.add_file_at(&c.secret_file);
                configs.push(c);
            }
            Err(e) => errors.push(e.in_instance(name)),
        }
    }
    let mut outputs = BTreeMap::new();
    let mut cfg_files = Vec::new();
    let config = open_dir(&handle, "config", name).ok();
    for output in Output::ALL {
        if configs.iter().any(|c| c.feeds.contains(&output)) {
            match output_path(&handle, config.as_ref(), output, &mut cfg_files) {
                Ok(p) => {
                    outputs.insert(output, p);
                }
                Err(e) => errors.push(e.in_instance(name)),
            }
        }
    }
    for (p, _) in &cfg_files {
        ours.add_file_at(p);
    }
    let ours = Arc::new(ours);
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
        if let Err(e) = not_ours(&handle, p, &ours) {
            errors.push(e.in_instance(name));
        }
    }
    if errors.is_empty() {
        Ok(Loaded {
            instance: Instance { name: name.to_owned(), dir, configs, outputs, cfg_files },
            handle,
            entraid,
            ours,
        })
    } else {
        Err(errors)
    }
}

/// An error if the output at `p` is, or lies in a directory of, a file usersync itself
/// reads, locks or keeps (contract §9): writing there would cost the instance its configs
/// or lock. A missing directory is no configuration error: the write reports it.
fn not_ours(handle: &Dir, p: &OutputPath, ours: &Arc<Ours>) -> Result<(), ConfigError> {
    let t = if p.confined { Target::beneath(handle, &p.path) } else { Target::at(&p.path) };
    let Ok(t) = t else { return Ok(()) };
    match t.never(ours) {
        Err(e) if e.source.kind() == std::io::ErrorKind::InvalidInput && e.source.to_string().contains("usersync") => {
            Err(ConfigError::new(
                &p.path,
                format!("this output {}", e.source),
                "name a list file of its own in envelope.cfg (ALLOWEDLDAPSENDERFILE) / compose.cfg (LDAPGSMLISTFILE): never a config, secret, .cfg, lock or state file, nor a file in config/entraid or the state directory",
            ))
        }
        _ => Ok(()),
    }
}

/// What `path` names, for telling whether two outputs are one file: its directory with `..`
/// and symlinks resolved (when it exists), and its name.
fn same_file(path: &Path) -> PathBuf {
    let dir = crate::files::trust::parent(path);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.join(path.file_name().unwrap_or_default())
}

/// Where `output` goes: the `.cfg` override if set, else the default path. Each `.cfg`
/// read (through the instance's opened `config`) is added to `read` with its trust.
fn output_path(
    handle: &Dir,
    config: Option<&Dir>,
    output: Output,
    read: &mut Vec<(PathBuf, Trust)>,
) -> Result<OutputPath, ConfigError> {
    let dir = handle.path();
    let default = OutputPath { path: dir.join(output.default_path()), confined: true };
    let (cfg, key) = match output {
        Output::AllowedSenders => ("envelope.cfg", "ALLOWEDLDAPSENDERFILE"),
        Output::GsmList => ("compose.cfg", "LDAPGSMLISTFILE"),
        Output::AccessRules => return confined(handle, default, None),
    };
    let cfg_path = dir.join("config").join(cfg);
    let Some(config) = config else { return confined(handle, default, None) };
    let (text, trust, st) = match config.read_file_stat(OsStr::new(cfg)).and_then(|(b, t, st)| {
        String::from_utf8(b).map(|s| (s, t, st)).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return confined(handle, default, None),
        Err(e) => {
            return Err(ConfigError::new(
                &cfg_path,
                format!("cannot read: {}", crate::files::resolve::explain(&e)),
                "make it a readable text file (not a symlink or second name in a directory someone else than root controls), or remove it to use the default output paths",
            ));
        }
    };
    read.push((cfg_path.clone(), trust.clone()));
    match cfgfile::lookup(&text, key) {
        None => confined(handle, default, None),
        Some(v) if v.is_empty() || v.ends_with('/') => Err(ConfigError::new(
            &cfg_path,
            format!("`{key}` is set to `{}`, which is not a file path", crate::error::quote(&v)),
            format!("set {key} to the list file's path, or remove the line to use {}", output.default_path()),
        )),
        // Root's word: the path as written, judged from `/` when it is opened.
        Some(v) if trust.is_trusted() => Ok(OutputPath { path: lexical(&dir.join(v)), confined: false }),
        Some(v) => {
            let p = OutputPath { path: dir.join(&v), confined: true };
            let p = confined(handle, p, Some((&cfg_path, key, &trust)))?;
            // A default path is written with or without the `.cfg`.
            let default = Output::ALL.iter().any(|o| same_file(&p.path) == same_file(&dir.join(o.default_path())));
            if default {
                Ok(p)
            } else {
                writable_by(handle, p, &cfg_path, key, &Controllers::of(&trust, &st))
            }
        }
    }
}

/// `p` with `.` and `..` taken out lexically (as the gateway's own tools read the path).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// An output an untrusted `.cfg` names must be one whoever may change the `.cfg` could
/// write themselves (the file, or its directory): root writes nothing for them that they
/// could not. A missing directory is no configuration error: the write reports it.
fn writable_by(
    handle: &Dir,
    p: OutputPath,
    cfg: &Path,
    key: &str,
    controllers: &Controllers,
) -> Result<OutputPath, ConfigError> {
    let Ok(t) = Target::beneath(handle, &p.path) else { return Ok(p) };
    let dir_ok = t.dir_stat().is_ok_and(|st| controllers.could(&st, 0o2) && controllers.could(&st, 0o1));
    let file_ok = matches!(t.inspect(), Ok(Some(st)) if controllers.could(&st, 0o2));
    if dir_ok || file_ok {
        return Ok(p);
    }
    let f = cfg.display();
    Err(ConfigError::new(
        cfg,
        format!("`{key}` names {}, which whoever may change this file could not write themselves; root writes nothing for them that they could not", p.path.display()),
        format!("name a list file in a directory that the file's owner may write; or, if the path is right, make {f} and every directory above it root's"),
    ))
}

/// Checks that a confined output lies beneath the instance with no symlink on the way.
/// `from` names the untrusted `.cfg` that set it (otherwise it is a default path). A missing
/// directory is no configuration error: the write reports it.
fn confined(handle: &Dir, p: OutputPath, from: Option<(&Path, &str, &Trust)>) -> Result<OutputPath, ConfigError> {
    let dir = handle.path();
    let Err(e) = Target::beneath(handle, &p.path) else { return Ok(p) };
    let errno = e.source.raw_os_error();
    let escapes = errno == Some(rustix::io::Errno::XDEV.raw_os_error());
    if !escapes && errno != Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return Ok(p);
    }
    let what = if escapes { "leads out of the instance directory" } else { "has a symlink on the way" };
    Err(match from {
        Some((cfg, key, trust)) => {
            let fix = match trust {
                Trust::Untrusted(why) => why.fix(cfg),
                Trust::Trusted => String::new(),
            };
            ConfigError::new(
                cfg,
                format!("`{key}` names {}, which {what}; this file is {trust}, so it may only name files beneath {} with no symlink on the way", p.path.display(), dir.display()),
                format!("name a file beneath {}; or, if the path is right, {fix}", dir.display()),
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
        let handle = Dir::open(dir).unwrap();
        let config = handle.dir(Path::new("config")).ok();
        output_path(&handle, config.as_ref(), o, &mut Vec::new()).map(|p| p.path)
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
        // Beneath the instance, but in a directory whoever may change the .cfg (anyone,
        // here) could not write themselves: refused; the default path is fine.
        write(&t.path().join("config/a.txt").display().to_string());
        let e = path(t.path(), Output::AllowedSenders).unwrap_err();
        assert!(e.message.contains("could not write themselves"), "{e}");
        write("config/allowed_senders_ldap.txt");
        assert_eq!(path(t.path(), Output::AllowedSenders).unwrap(), t.path().join("config/allowed_senders_ldap.txt"));
        std::os::unix::fs::symlink("/etc", t.path().join("lists")).unwrap();
        write("lists/a.txt");
        let e = path(t.path(), Output::AllowedSenders).unwrap_err();
        assert!(e.message.contains("has a symlink on the way"), "{e}");
        assert!(e.hint.contains("chown root:"), "{e:?}");
    }
}
