//! `usersync-sim`: serves a directory file over the simulated token endpoint and Graph.
//!
//! usage: usersync-sim DIRECTORY.json [--port N] [--url-file FILE]
//! Runs until killed. Prints `listening on http://127.0.0.1:PORT` on stdout.
//! The directory file is read again whenever it changes, so a demo can change
//! the membership between two runs.

use std::io::Write;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut port = 0u16;
    let mut url_file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            "--url-file" => url_file = it.next().cloned(),
            "-h" | "--help" => {
                println!("usage: usersync-sim DIRECTORY.json [--port N] [--url-file FILE]");
                return std::process::ExitCode::SUCCESS;
            }
            other => file = Some(other.to_owned()),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: usersync-sim DIRECTORY.json [--port N] [--url-file FILE]");
        return std::process::ExitCode::from(2);
    };
    let directory = match std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("usersync-sim: {file}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let sim = match usersync_sim::Sim::start_on(directory, port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usersync-sim: cannot listen: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if let Some(f) = url_file {
        let _ = std::fs::write(f, sim.url());
    }
    println!("listening on {}", sim.url());
    let _ = std::io::stdout().flush();
    let mtime = |f: &str| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen = mtime(&file);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = mtime(&file);
        if now != seen {
            seen = now;
            match load(&file) {
                Ok(d) => {
                    sim.state().directory = d;
                    eprintln!("usersync-sim: reloaded {file}");
                }
                Err(e) => eprintln!("usersync-sim: {file}: {e} (keeping the previous directory)"),
            }
        }
    }
}

fn load(file: &str) -> Result<usersync_sim::Directory, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
