//! `usersync-sim`: serves a directory over the simulated token endpoint and Graph.
//!
//! usage: usersync-sim DIRECTORY.json | --members N [--groups K]
//!                     [--port N] [--url-file FILE] [--latency-ms L] [--page-size P]
//!
//! Runs until killed. Prints `listening on http://127.0.0.1:PORT` on stdout. A
//! directory file is read again whenever it changes, so a demo can change the
//! membership between two runs. `--members` generates K groups of N users instead
//! (ids from `usersync_sim::group_id`, app `usersync_sim::bench_app`), for benchmarks.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: usersync-sim DIRECTORY.json | --members N [--groups K] [--port N] [--url-file FILE] [--latency-ms L] [--page-size P]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut url_file = None;
    let (mut port, mut groups, mut members, mut latency_ms, mut page_size) =
        (0u16, 1usize, None::<usize>, 0u64, 999usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || it.next().and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
        match a.as_str() {
            "--port" => port = u16::try_from(num()).unwrap_or(0),
            "--groups" => groups = usize::try_from(num()).unwrap_or(1),
            "--members" => members = usize::try_from(num()).ok(),
            "--latency-ms" => latency_ms = num(),
            "--page-size" => page_size = usize::try_from(num()).unwrap_or(999),
            "--url-file" => url_file = it.next().cloned(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => file = Some(other.to_owned()),
        }
    }
    let directory = match (&file, members) {
        (_, Some(n)) => usersync_sim::generated(groups, n),
        (Some(f), None) => match load(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("usersync-sim: {f}: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sim = match usersync_sim::Sim::start_on(directory, port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usersync-sim: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    {
        let mut s = sim.state();
        s.latency = Duration::from_millis(latency_ms);
        s.page_size = page_size;
    }
    if let Some(f) = url_file {
        let _ = std::fs::write(f, sim.url());
    }
    println!("listening on {}", sim.url());
    let _ = std::io::stdout().flush();
    let watched = file.filter(|_| members.is_none());
    let mtime = |f: &str| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen = watched.as_deref().and_then(mtime);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let Some(f) = watched.as_deref() else { continue };
        let now = mtime(f);
        if now != seen {
            seen = now;
            match load(f) {
                Ok(d) => {
                    sim.state().directory = d;
                    eprintln!("usersync-sim: reloaded {f}");
                }
                Err(e) => eprintln!("usersync-sim: {f}: {e} (keeping the previous directory)"),
            }
        }
    }
}

fn load(file: &str) -> Result<usersync_sim::Directory, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
