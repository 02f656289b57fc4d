//! TLS with the system's roots plus `[http] ca_bundle`, `HTTPS_PROXY`/`NO_PROXY`,
//! and the three ways to give the client secret.

use std::io::{Read, Write};

use usersync_sim::Proxy;

use crate::util::*;

fn tls_staff() -> Run {
    Run::new_tls().group(STAFF, staff_members()).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"))
}

const SYNCED: &str = "alice@example.com\ncarol@example.com\n";

#[test]
fn https_with_the_ca_bundle_syncs() {
    let mut r = tls_staff().expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
    assert!(r.sim.url().starts_with("https://localhost:"));
    assert_eq!(r.member_requests().len(), 1);
}

#[test]
fn https_without_the_ca_bundle_refuses_the_unknown_certificate() {
    let mut r = tls_staff().global("[http]\nmax_retries = 0\n").expect_exit(1).expect_file(SENDERS, None);
    let out = r.run();
    assert!(out.stderr.contains("UnknownIssuer") || out.stderr.contains("certificate"), "{}", out.stderr);
    assert!(r.sim.requests().is_empty(), "nothing reached the server");
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    let proxy = Proxy::start().unwrap();
    let mut r = tls_staff().env("HTTPS_PROXY", &proxy.url()).expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
    let port = r.sim.url().rsplit(':').next().unwrap().to_owned();
    let connects = proxy.connects();
    assert!(!connects.is_empty() && connects.iter().all(|c| *c == format!("localhost:{port}")), "{connects:?}");
    std::fs::remove_file(r.root().join(SENDERS)).unwrap();
    let before = proxy.connects().len();
    r = r.env("NO_PROXY", "localhost").expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
    assert_eq!(proxy.connects().len(), before, "NO_PROXY=localhost bypasses the proxy");
}

#[test]
fn client_secret_file_relative_to_the_config() {
    let r = Run::new()
        .group(STAFF, staff_members())
        .file("gw/config/entraid/secrets/staff", &format!("{SECRET}\n"))
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"secrets/staff\"\n"));
    std::fs::set_permissions(
        r.root().join("gw/config/entraid/secrets/staff"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    r.expect_exit(0).expect_file(SENDERS, Some(SYNCED)).run();
}

#[test]
fn client_secret_credential_from_systemd() {
    let r = Run::new().group(STAFF, staff_members()).conf(
        "gw",
        "staff",
        &format!("group_id = \"{STAFF}\"\nclient_secret_credential = \"gw-staff\"\n"),
    );
    let creds = r.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("gw-staff"), SECRET).unwrap();
    let mut r = r.expect_exit(2);
    let out = r.run();
    assert!(
        out.stderr.contains("$CREDENTIALS_DIRECTORY is not") && out.stderr.contains("LoadCredential=gw-staff:"),
        "{}",
        out.stderr
    );
    r = r.env("CREDENTIALS_DIRECTORY", &creds.display().to_string()).expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
}

#[test]
fn pages_are_asked_for_gzip_and_the_simulator_compresses_them() {
    let mut r = one_conf().expect_exit(0);
    r.run();
    let pages = r.member_requests();
    assert!(!pages.is_empty());
    for p in &pages {
        assert!(p.accept_encoding.as_deref().is_some_and(|a| a.contains("gzip")), "{p:?}");
    }
    // The simulator, like Graph, compresses when asked to.
    let addr = r.sim.url().trim_start_matches("http://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "GET /v1.0/groups/{STAFF}/members HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let head =
        String::from_utf8_lossy(&answer[..answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
}
