//! `usersync test`: a token and the first page of each config of one instance,
//! like the gateway's TEST QUERY. Writes nothing, takes no lock.

use std::fmt::Write as _;

use crate::cli::Cli;
use crate::config::entraid::{EntraConf, Env};
use crate::config::instance;
use crate::error::{escape_controls, ConfigError, Hint, Outcome};
use crate::graph::GraphClient;
use crate::run::start::Stop;

/// Runs the test query; returns the exit code (0: every config answered, 1: one did not).
pub fn run(cli: &Cli, name: &str, entraid: Option<&str>, show: bool) -> Result<u8, Stop> {
    let env = Env::from_process();
    let (config, root) = crate::run::start::setup(cli, &env)?;
    let names = instance::select(&root, &[name.to_owned()])?;
    let inst = instance::load(&root, &names[0], &instance::Context::new(&config, env.clone())).map_err(Stop::Config)?;
    let configs: Vec<&EntraConf> =
        inst.configs.iter().filter(|c| entraid.is_none_or(|e| c.path.file_stem().is_some_and(|s| s == e))).collect();
    if configs.is_empty() {
        return Err(ConfigError::new(
            inst.entraid_dir(),
            format!("no config named `{}.entraidconf`", entraid.unwrap_or_default()),
            "give --entraid the file name without .entraidconf, or leave it out to test every config",
        )
        .in_instance(name)
        .into());
    }
    let client = GraphClient::new(&config.http).map_err(|e| {
        Stop::from(ConfigError::new(
            config.path.clone().unwrap_or_default(),
            e.to_string(),
            e.hint().unwrap_or_default(),
        ))
    })?;
    let rt = crate::run::start::runtime()?;
    let mut outcome = Outcome::Success;
    for c in configs {
        let q = crate::graph::GroupQuery::of(c);
        let relation = if q.nested { "transitiveMembers" } else { "members" };
        // A file name and a certificate's subject are the gateway's words: escaped, so that
        // neither starts a line of its own.
        let path = escape_controls(&c.path.display().to_string());
        let mut out = format!("instance `{}`, config {path}\n", escape_controls(name));
        let _ = writeln!(out, "  tenant {}, group {} ({relation}) at {}", c.tenant, c.group, q.graph);
        let _ = writeln!(out, "  credential: {}", escape_controls(&c.auth.describe(c.expires)));
        match rt.block_on(client.first_page(&c.credentials(), &q)) {
            Ok((roster, more)) => {
                let more = if more { "; more pages follow" } else { "" };
                let _ = writeln!(
                    out,
                    "  token: ok\n  first page: {} objects, {} users, {} would be kept{more}",
                    roster.objects(),
                    roster.user_objects(),
                    roster.kept(c.include_disabled).count()
                );
                let samples: Vec<String> = roster
                    .kept(c.include_disabled)
                    .take(3)
                    .map(|e| if show { e.to_owned() } else { mask(e) })
                    .collect();
                if !samples.is_empty() {
                    let _ = writeln!(out, "  sample: {}", samples.join(", "));
                }
                print!("{out}");
            }
            Err(e) => {
                print!("{out}");
                println!("  failed: see the error on stderr");
                crate::error::print_error(&Prefixed(
                    format!("instance `{name}`, config {}", c.path.display()),
                    &e,
                    e.hint_in(c.cloud),
                ));
                outcome = Outcome::Failed;
            }
        }
    }
    Ok(outcome.code())
}

/// `alice@contoso.com` → `a***@contoso.com`
fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

/// An error with the instance and config in front, and its hint.
#[derive(Debug)]
struct Prefixed<'a, E>(String, &'a E, Option<String>);

impl<E: std::fmt::Display> std::fmt::Display for Prefixed<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl<E: std::error::Error> std::error::Error for Prefixed<'_, E> {}

impl<E> Hint for Prefixed<'_, E> {
    fn hint(&self) -> Option<String> {
        self.2.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks() {
        assert_eq!(super::mask("alice@contoso.com"), "a***@contoso.com");
    }
}
