//! Feeds arbitrary bytes to every parser of untrusted or hand-written input:
//! a Graph members page, an `.entraidconf`, `usersync.toml` and a gateway `.cfg`.
//! None may panic, hang or add a line to an output.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use usersync::config::entraid::{EntraConf, Env};

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = usersync::model::page::parse(data) {
        for m in &page.members {
            if let Some(usersync::model::page::Text::Str(s)) = &m.mail {
                if let Ok(e) = usersync::model::normalize::Email::parse(s) {
                    assert!(!e.as_str().contains(['\n', '\r', ' ', '*', '<', '>']));
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // Keys that name files are not followed: the fuzzer must not read /dev/zero.
        let names_a_file = ["_file", "ca_bundle", "client_certificate", "client_key"].iter().any(|k| text.contains(k));
        if !names_a_file {
            let _ = EntraConf::parse(text, Path::new("fuzz.entraidconf"), &Env::default(), usersync::files::trust::Trust::Trusted);
            let _ = usersync::config::global::Config::parse(text, Path::new("usersync.toml"));
        }
        if let Some(v) = usersync::config::cfgfile::lookup(text, "ALLOWEDLDAPSENDERFILE") {
            assert!(!v.contains('\n'));
        }
    }
});
