//! The `usersync` binary: parse the command line, run, print a fatal error once.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = usersync::cli::Cli::parse();
    match usersync::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            e.print();
            e.outcome().into()
        }
    }
}
