//! `usersync check`: offline validation of every config, `.cfg` key, output
//! path and permission. One line per finding; exit 2 if any is an error.

use std::fmt;
use std::path::Path;

use rustix::fs::Access;

use crate::cli::Cli;
use crate::config::credential::ClientAuth;
use crate::config::entraid::Env;
use crate::config::instance::{self, Loaded};
use crate::config::secret::Unread;
use crate::error::{Hint, Outcome};
use crate::files::trust::Trust;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The run would fail: exit 2.
    Error,
    /// Worth fixing; the run would work.
    Warning,
    /// For information: what usersync makes of a file.
    Note,
}

/// One thing `check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub level: Level,
    /// What, where.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        };
        f.write_str(&crate::error::render_line(level, &self.message, self.hint.as_deref()))
    }
}

fn error(message: String, hint: Option<String>) -> Finding {
    Finding { level: Level::Error, message, hint }
}

fn warning(message: String, hint: &str) -> Finding {
    Finding { level: Level::Warning, message, hint: Some(hint.to_owned()) }
}

/// A file's trust (§9), as a note.
fn trust_note(who: &str, path: &Path, trust: &Trust, untrusted_means: &str) -> Finding {
    let message = match trust {
        Trust::Trusted => format!("{who}{}: trusted", path.display()),
        t @ Trust::Untrusted(_) => format!("{who}{}: {t}; {untrusted_means}", path.display()),
    };
    Finding { level: Level::Note, message, hint: None }
}

/// A note for a credential left unread (see [`Unread`]), and how to check it.
fn unread_note(at: &str, left: &Unread) -> Finding {
    let (message, hint) = left.note();
    Finding { level: Level::Note, message: format!("{at}: {message}"), hint: Some(hint) }
}

fn unread_notes(at: &str, auth: &ClientAuth) -> Vec<Finding> {
    match auth {
        ClientAuth::Unread(left) => left.iter().map(|l| unread_note(at, l)).collect(),
        ClientAuth::Secret(_) | ClientAuth::Certificate(_) => vec![],
    }
}

/// Warn this many days before a credential expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// An expired credential (an error), or one that expires within [`EXPIRY_WARNING_DAYS`].
/// `at` says whose it is: a config, or an alert provider.
fn expiry(at: &str, auth: &ClientAuth, expires: Option<i64>, now: i64) -> Option<Finding> {
    let expires = expires?;
    let (what, hint) = match auth {
        ClientAuth::Certificate(cert) => (
            format!("the certificate `{}`", cert.subject),
            "create a new certificate, upload it under App registrations > the app > Certificates & secrets, and point client_certificate at it (keep the old one until the new one works)",
        ),
        ClientAuth::Secret(_) | ClientAuth::Unread(_) => (
            "the client secret (client_secret_expires)".to_owned(),
            "create a new client secret under App registrations > the app > Certificates & secrets, put it in the config, and update client_secret_expires",
        ),
    };
    let at = format!("{at}: {what}");
    let date = crate::model::date::format(expires);
    let days = (expires - now).div_euclid(86_400);
    if expires <= now {
        Some(error(format!("{at} expired on {date}"), Some(hint.to_owned())))
    } else if days < EXPIRY_WARNING_DAYS {
        Some(warning(format!("{at} expires on {date}, in {days} days"), hint))
    } else {
        None
    }
}

/// Runs the check, prints the findings, and returns the outcome (exit 0 or 2).
#[must_use]
pub fn run(cli: &Cli, names: &[String]) -> Outcome {
    let findings = findings(cli, names);
    for f in &findings {
        println!("{f}");
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    let warnings = findings.iter().filter(|f| f.level == Level::Warning).count();
    println!("check: {errors} errors, {warnings} warnings");
    if errors > 0 {
        Outcome::Config
    } else {
        Outcome::Success
    }
}

fn findings(cli: &Cli, names: &[String]) -> Vec<Finding> {
    // From a shell, what the unit's LoadCredential= names is checked by name, not read.
    let env = Env::for_check();
    let (config, root) = match crate::run::start::setup(cli, &env) {
        Ok(x) => x,
        Err(e) => return e.reports().into_iter().map(|r| error(r.message, r.hint)).collect(),
    };
    let mut out = Vec::new();
    if let Some(p) = &config.path {
        out.push(trust_note("", p, &Trust::Trusted, ""));
        for provider in config.alert.iter().flat_map(|a| &a.providers) {
            let Some(credentials) = provider.credentials() else { continue };
            let at = format!("{}, [[alert.provider]] {}", p.display(), provider.label());
            out.extend(unread_notes(&at, &credentials.auth));
            out.extend(expiry(&at, &credentials.auth, provider.expires, crate::model::date::now()));
        }
        for (provider, left) in config.alert.iter().flat_map(|a| &a.unread) {
            out.push(unread_note(&format!("{}, {provider}", p.display()), left));
        }
    }
    let names = match instance::select(&root, names) {
        Ok(n) => n,
        Err(e) => return vec![error(e.to_string(), e.hint())],
    };
    let ctx = instance::Context::new(&config, env);
    for name in &names {
        match instance::load(&root, name, &ctx) {
            Ok(inst) => check_instance(&inst, &mut out),
            Err(errors) => out.extend(errors.into_iter().map(|e| error(e.to_string(), e.hint()))),
        }
    }
    out
}

fn check_instance(inst: &Loaded, out: &mut Vec<Finding>) {
    let who = format!("instance `{}`", inst.name);
    let now = crate::model::date::now();
    let at = format!("{who}: ");
    for c in &inst.configs {
        out.push(trust_note(
            &at,
            &c.path,
            &c.trust,
            "it may not set authority_host or graph_endpoint, and the files it names must lie beneath its directory",
        ));
        out.extend(unread_notes(&format!("{who}, config {}", c.path.display()), &c.auth));
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|d| c.secret_file.starts_with(d));
        if c.secret_file != c.path && !credential {
            if let Ok((_, t)) = crate::files::judged::open(&c.secret_file) {
                out.push(trust_note(&at, &c.secret_file, &t, "someone else than root can change the credential"));
            }
        }
    }
    for (p, t) in &inst.cfg_files {
        out.push(trust_note(&at, p, t, "the output paths it names must lie beneath the instance directory"));
    }
    for c in &inst.configs {
        let holds = match c.auth {
            ClientAuth::Certificate(_) => Some("a private key"),
            ClientAuth::Secret(_) => Some("a client secret"),
            // Nothing of it was read here, and the unit's credentials are private to it.
            ClientAuth::Unread(_) => None,
        };
        if let Some((message, hint)) = holds.and_then(|h| crate::config::secret::exposure(&c.secret_file, h)) {
            out.push(warning(format!("{who}: {message}"), &hint));
        }
        if let Some(finding) = expiry(&format!("{who}, config {}", c.path.display()), &c.auth, c.expires, now) {
            out.push(finding);
        }
    }
    let entraid = inst.entraid_dir();
    if rustix::fs::access(&entraid, Access::WRITE_OK).is_err() {
        out.push(error(
            format!("{who}: {} is not writable by this user, so the run lock cannot be taken", entraid.display()),
            Some("run usersync as root or as the owner of the instance".into()),
        ));
    }
    let lock = entraid.join(crate::files::lock::LOCK_FILE);
    if let Ok(m) = std::fs::symlink_metadata(&lock) {
        if !m.is_file() {
            out.push(error(
                format!("{who}: the lock {} is not a regular file but {}", lock.display(), kind_of(&m)),
                Some(format!("remove {}; usersync creates it", lock.display())),
            ));
        }
    }
    for (output, place) in &inst.outputs {
        let path = &place.path;
        let at = format!("{who}: output {output} {}", path.display());
        let target = match inst.target(place) {
            Ok(t) => t,
            Err(e) => {
                out.push(error(format!("{at}: {e}"), e.hint()));
                continue;
            }
        };
        let dir = crate::files::trust::parent(path);
        if rustix::fs::access(dir, Access::WRITE_OK).is_err() {
            out.push(error(
                format!("{at}: the directory {} is not writable by this user", dir.display()),
                Some(
                    "run usersync as root or as the directory's owner; under systemd list it in ReadWritePaths=".into(),
                ),
            ));
        }
        match target.inspect() {
            Err(e) => out.push(error(format!("{at}: {e}"), e.hint())),
            Ok(Some(st)) if st.st_mode & 0o7000 != 0 => out.push(warning(
                format!(
                    "{at}: its mode {:04o} has set-id or sticky bits, which the next write drops",
                    st.st_mode & 0o7777
                ),
                &format!("chmod {:04o} {}", st.st_mode & 0o777, path.display()),
            )),
            Ok(Some(st)) if user_name(st.st_uid).is_none() => out.push(warning(
                format!("{at}: its owner, uid {}, has no user name on this host", st.st_uid),
                "chown it to the gateway's user; usersync keeps the owner it finds",
            )),
            Ok(_) => {}
        }
    }
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a special file"
    }
}

/// The name of `uid`, through the system's name services (`getpwuid_r`): local users,
/// and LDAP, SSSD or systemd ones alike.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_has_a_name() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
    }
}
