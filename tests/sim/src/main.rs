//! `usersync-sim`: serves a directory over the simulated token endpoint and Graph.
//!
//! usage: usersync-sim DIRECTORY.json | --members N [--groups K]
//!                     [--port N] [--url-file FILE] [--latency-ms L] [--page-size P]
//!                     [--tls [--ca-file FILE]] [--public-url URL]
//!
//! Runs until killed. Prints `listening on URL` on stdout (`http://127.0.0.1:PORT`, or the
//! `--public-url`), and writes URL to `--url-file`. A directory file is read again whenever
//! it changes, so a demo can change the membership between two runs. `--members` generates
//! K groups of N users instead (ids from `usersync_sim::group_id`, app
//! `usersync_sim::bench_app`), for benchmarks.
//!
//! `--tls` serves HTTPS with a fresh throwaway CA (written to `--ca-file`), whose leaf
//! certificate also names `login.microsoftonline.com` and `graph.microsoft.com`. With those
//! names mapped to 127.0.0.1, `--port 443 --public-url https://graph.microsoft.com` (the
//! base of its nextLinks and token URLs) stands in for Microsoft at its real names.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: usersync-sim DIRECTORY.json | --members N [--groups K] [--port N] [--url-file FILE] [--latency-ms L] [--page-size P] [--tls [--ca-file FILE]] [--public-url URL]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut url_file = None;
    let (mut tls, mut ca_file, mut public_url) = (false, None, None);
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
            "--tls" => tls = true,
            "--ca-file" => ca_file = it.next().cloned(),
            "--public-url" => public_url = it.next().cloned(),
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
    if ca_file.is_some() && !tls {
        eprintln!("usersync-sim: --ca-file needs --tls");
        return ExitCode::from(2);
    }
    let started = if tls {
        usersync_sim::TestPki::new().map_err(|e| format!("cannot make a CA: {e}")).and_then(|pki| {
            if let Some(f) = &ca_file {
                std::fs::write(f, &pki.ca_pem).map_err(|e| format!("{f}: {e}"))?;
            }
            usersync_sim::Sim::start_tls_on(directory, port, &pki).map_err(|e| format!("cannot listen: {e}"))
        })
    } else {
        usersync_sim::Sim::start_on(directory, port).map_err(|e| format!("cannot listen: {e}"))
    };
    let sim = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usersync-sim: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(u) = &public_url {
        sim.set_public_url(u);
    }
    let url = public_url.unwrap_or_else(|| sim.url());
    {
        let mut s = sim.state();
        s.latency = Duration::from_millis(latency_ms);
        s.page_size = page_size;
    }
    if let Some(f) = url_file {
        let _ = std::fs::write(f, &url);
    }
    println!("listening on {url}");
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
