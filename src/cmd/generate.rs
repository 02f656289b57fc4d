//! The man page and shell completions, generated from the clap definitions
//! (`usersync --generate man|complete-bash|complete-zsh|complete-fish`).

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, Generate};

/// Sections clap does not know about (contract §7, files).
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
success, nothing to do, or passive node skipped
.TP
.B 1
a runtime failure in at least one instance (network, directory, file system)
.TP
.B 2
usage or configuration error (nothing contacted, nothing written)
.TP
.B 3
a guard refused a write
.TP
.B 75
another run holds an instance's lock
.PP
When several apply: 2, then 1, then 3, then 75.
.SH FILES
.TP
.I /etc/usersync/usersync.toml
global configuration (optional)
.TP
.I <server-root>/<instance>/config/entraid/*.entraidconf
one Entra ID query each
.TP
.I /usr/share/doc/usersync/guide.md
the guide: migrating from the cron scripts, scheduling, incremental sync, monitoring,
troubleshooting by error message
.TP
.I /usr/share/doc/usersync/configuration.md
every key of every file, one table per file
.TP
.I /usr/share/doc/usersync/security.md
the trust model
.TP
.I /usr/share/doc/usersync/examples/
commented examples of every file an administrator writes, and a cron.d file
.SH "SEE ALSO"
.I /usr/share/doc/usersync/README.md
(installing, the first instance),
.I /usr/share/doc/usersync/behaviour.md
(the behaviour reference)
"#;

/// Writes `what` to stdout.
pub fn print(what: Generate) -> io::Result<()> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    match what {
        Generate::Man => {
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.write_all(MAN_EXTRA.as_bytes())?;
        }
        Generate::CompleteBash => clap_complete::generate(Shell::Bash, &mut cmd, "usersync", &mut out),
        Generate::CompleteZsh => clap_complete::generate(Shell::Zsh, &mut cmd, "usersync", &mut out),
        Generate::CompleteFish => clap_complete::generate(Shell::Fish, &mut cmd, "usersync", &mut out),
    }
    out.flush()
}
