//! Least privilege (contract §9): usersync runs as root, and trusts nothing that the
//! gateway's own (internet-facing) account can write. Each attack of issue 12 runs as
//! root, with the attacker's files owned by `nobody`; without root a test says it skipped.

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use usersync_sim::Proxy;

use crate::util::*;

const ROOT_ONLY: &str = "root:x:0:0:do not leak\n";
const SYNCED: &str = "alice@example.com\ncarol@example.com\n";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `r` plus a `.cfg` file the gateway's account wrote.
fn untrusted_cfg(r: Run, name: &str, text: &str) -> Run {
    let r = r.file(&format!("gw/config/{name}"), text);
    give_away(&r.root().join(format!("gw/config/{name}")));
    r
}

/// A root-only file outside the server root, which no run may touch.
fn root_only_file(r: &Run, rel: &str) -> std::path::PathBuf {
    let p = r.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, ROOT_ONLY).unwrap();
    chmod(&p, 0o600);
    p
}

#[test]
fn an_untrusted_envelope_cfg_cannot_aim_root_at_any_file() {
    if !as_root() {
        return;
    }
    let r = one_conf();
    let victim = root_only_file(&r, "etc/shadow-like");
    let mut r = untrusted_cfg(r, "envelope.cfg", &format!("ALLOWEDLDAPSENDERFILE={}\n", victim.display()));
    let cfg = r.root().join("gw/config/envelope.cfg");
    r = r.expect_exit(2);
    let out = r.run();
    assert_eq!(
        out.stderr,
        format!(
            "error: instance `gw`: {cfg}: `ALLOWEDLDAPSENDERFILE` names {victim}, which leads out of the instance directory; this file is untrusted: owned by uid 65534, neither root nor usersync's user, so it may only name files beneath {gw} with no symlink on the way\nhint: name a file beneath {gw}; or, if the path is right, make the file root's (chown root: {cfg}; chmod go-w {cfg})\n",
            cfg = cfg.display(),
            victim = victim.display(),
            gw = r.root().join("gw").display(),
        )
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), ROOT_ONLY);
    assert!(r.sim.requests().is_empty(), "a configuration error contacts nothing");
}

#[test]
fn an_untrusted_relative_path_cannot_climb_out_of_the_instance() {
    if !as_root() {
        return;
    }
    let mut r = untrusted_cfg(one_conf(), "compose.cfg", "LDAPGSMLISTFILE=../../somewhere/file\n").conf(
        "gw",
        "sms",
        &format!("group_id = \"{STAFF}\"\nfeeds = [\"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n"),
    );
    let victim = root_only_file(&r, "somewhere/file");
    r = r.expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("`LDAPGSMLISTFILE` names "), "{}", out.stderr);
    assert!(
        out.stderr.contains("/gw/../../somewhere/file, which leads out of the instance directory"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), ROOT_ONLY);
    assert!(r.sim.requests().is_empty());
}

#[test]
fn a_symlinked_output_is_neither_read_nor_written() {
    if !as_root() {
        return;
    }
    let mut r = one_conf();
    let secret = root_only_file(&r, "etc/secret-list");
    let link = r.root().join(SENDERS);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(&secret, &link).unwrap();
    give_away(&link);
    // The dry run used to print the target's lines as `removed`.
    r = r.args(&["--dry-run", "--format", "json"]).expect_exit(1);
    let out = r.run();
    assert!(!out.stdout.contains("do not leak") && !out.stderr.contains("do not leak"), "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["outcome"], "failed");
    let message = v["instances"][0]["errors"][0]["message"].as_str().unwrap();
    assert_eq!(message, format!("instance `gw`: cannot use {}: a symlink is on the way", link.display()));
    r = r.args(&[]).expect_exit(1);
    let out = r.run();
    assert!(out.stderr.contains("usersync never writes through a symlink"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), ROOT_ONLY);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn a_symlinked_directory_named_by_an_untrusted_cfg_is_refused_and_a_trusted_cfg_keeps_it() {
    if !as_root() {
        return;
    }
    let mut r = untrusted_cfg(one_conf(), "envelope.cfg", "ALLOWEDLDAPSENDERFILE=lists/allowed.txt\n");
    let etc = r.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let lists = r.root().join("gw/lists");
    symlink(&etc, &lists).unwrap();
    give_away(&lists);
    r = r.expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("lists/allowed.txt, which has a symlink on the way"), "{}", out.stderr);
    assert!(!etc.join("allowed.txt").exists());
    // The same line in a root-owned envelope.cfg: the admin's choice, as before.
    let cfg = r.root().join("gw/config/envelope.cfg");
    std::os::unix::fs::lchown(&cfg, Some(0), Some(0)).unwrap();
    chmod(&cfg, 0o644);
    r = r.expect_exit(0);
    r.run();
    assert_eq!(std::fs::read_to_string(etc.join("allowed.txt")).unwrap(), SYNCED);
}

#[test]
fn a_trusted_cfg_keeps_absolute_paths_outside_the_instance() {
    let mut r = one_conf();
    let lists = r.path().join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    r = r.file("gw/config/envelope.cfg", &format!("ALLOWEDLDAPSENDERFILE={}/senders.txt\n", lists.display()));
    chmod(&r.root().join("gw/config/envelope.cfg"), 0o644);
    r = r.expect_exit(0);
    r.run();
    assert_eq!(std::fs::read_to_string(lists.join("senders.txt")).unwrap(), SYNCED);
    assert_eq!(std::fs::metadata(lists.join("senders.txt")).unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn a_fifo_at_an_output_fails_its_instance_without_blocking_and_the_others_go_on() {
    let mut r = one_conf().conf("gw2", "staff", &format!("group_id = \"{STAFF}\"\n"));
    let fifo = r.root().join(SENDERS);
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
    for _ in 0..2 {
        // Not 75 the second time: the first run released its lock.
        r = r.expect_exit(1);
        let out = r.run_within(Duration::from_secs(30));
        assert!(
            out.stderr
                .contains(&format!("error: instance `gw`: cannot use {}: it exists but is a FIFO", fifo.display())),
            "{}",
            out.stderr
        );
        assert_eq!(r.read("gw2/config/allowed_senders_ldap.txt").as_deref(), Some(SYNCED));
    }
}

#[test]
fn a_symlink_at_the_lock_creates_nothing() {
    if !as_root() {
        return;
    }
    let mut r = one_conf();
    let nologin = r.path().join("nologin");
    let lock = r.root().join("gw/config/entraid/usersync.lock");
    symlink(&nologin, &lock).unwrap();
    give_away(&lock);
    r = r.expect_exit(1).expect_file(SENDERS, None);
    let out = r.run();
    assert_eq!(
        out.stderr,
        format!(
            "error: instance `gw`: cannot open the lock file {lock}: a symlink is on the way\nhint: usersync never opens its lock through a symlink: remove {lock} (no run is using it while it is a symlink)\n",
            lock = lock.display()
        )
    );
    assert!(!nologin.exists(), "the symlink's target was not created");
    assert!(r.sim.requests().is_empty(), "an instance without its lock is not fetched");
}

#[test]
fn an_untrusted_entraidconf_cannot_send_another_instances_secret_elsewhere() {
    if !as_root() {
        return;
    }
    let mut r = Run::new().group(STAFF, staff_members());
    let other = r.path().join("etc-usersync/other.secret");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, SECRET).unwrap();
    chmod(&other, 0o600);
    r = r.conf("gw", "evil", &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"{}\"\n", other.display()));
    let conf = r.root().join("gw/config/entraid/evil.entraidconf");
    give_away(&conf);
    r = r.expect_exit(2);
    let out = r.run();
    assert_eq!(
        out.stderr,
        format!(
            "error: instance `gw`: {c}: key `authority_host`: may only be set in a trusted file, and this one is untrusted: owned by uid 65534, neither root nor usersync's user\nhint: make the file root's (chown root: {c}; chmod go-w {c}), or remove authority_host and set `cloud`\n",
            c = conf.display()
        )
    );
    assert!(r.sim.requests().is_empty(), "nothing contacted");
}

#[test]
fn an_untrusted_entraidconf_reads_only_files_beneath_its_directory() {
    if !as_root() {
        return;
    }
    let mut r = Run::new();
    let other = root_only_file(&r, "etc-usersync/other.secret");
    r = r.file("gw/config/entraid/in-here.secret", SECRET).conf_no_endpoints(
        "gw",
        "a",
        &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"{}\"\n", other.display()),
    );
    let conf = r.root().join("gw/config/entraid/a.entraidconf");
    give_away(&conf);
    r = r.expect_exit(2);
    let out = r.run();
    assert!(
        out.stderr.contains(&format!(
            "{}: key `client_secret_file`: {} is not beneath the config's directory; this config is untrusted: owned by uid 65534, neither root nor usersync's user, so it may only name files beneath {} with no symlink on the way that whoever may change it could read anyway; nothing was read",
            conf.display(),
            other.display(),
            conf.parent().unwrap().display()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was read"), "{}", out.stderr);
    // A symlink in its own directory to the same file: refused too.
    symlink(&other, r.root().join("gw/config/entraid/link.secret")).unwrap();
    std::fs::write(&conf, format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\ngroup_id = \"{STAFF}\"\nclient_secret_file = \"link.secret\"\n")).unwrap();
    give_away(&conf);
    let out = r.run();
    assert!(
        out.stderr.contains("link.secret is reached through a symlink (a symlink is on the way)"),
        "{}",
        out.stderr
    );
}

/// An untrusted config cannot name the simulator, but may use `cloud`: a proxy that sends
/// every CONNECT to the TLS simulator (whose test certificate names Microsoft's hosts)
/// stands in for Microsoft. What such a config may do still works: a secret file beneath
/// its directory, and a systemd credential by name.
#[test]
fn an_untrusted_entraidconf_still_syncs_within_its_rights() {
    if !as_root() {
        return;
    }
    let r = Run::new_tls().group(STAFF, staff_members());
    let proxy = Proxy::redirecting(r.sim.addr()).unwrap();
    let creds = r.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("gw-staff"), SECRET).unwrap();
    // Root gives the instance its systemd credential in the global config.
    let global = std::fs::read_to_string(r.path().join("usersync.toml")).unwrap();
    let r = r.global(&format!("{global}[credentials]\ngw = [\"gw-staff\"]\n"));
    let mut r = r
        .file("gw/config/entraid/staff.secret", SECRET)
        .conf_no_endpoints("gw", "a", &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"staff.secret\"\n"))
        .conf_no_endpoints("gw", "b", &format!("group_id = \"{STAFF}\"\nclient_secret_credential = \"gw-staff\"\n"))
        .env("HTTPS_PROXY", &proxy.url())
        .env("CREDENTIALS_DIRECTORY", &creds.display().to_string());
    for f in ["a.entraidconf", "b.entraidconf", "staff.secret"] {
        give_away(&r.root().join("gw/config/entraid").join(f));
    }
    r = r.expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
    let connects = proxy.connects();
    assert!(connects.contains(&"login.microsoftonline.com:443".to_owned()), "{connects:?}");
    assert!(connects.contains(&"graph.microsoft.com:443".to_owned()), "{connects:?}");
}

#[test]
fn a_group_writable_root_owned_entraidconf_is_refused() {
    let mut r = one_conf();
    let conf = r.root().join("gw/config/entraid/staff.entraidconf");
    chmod(&conf, 0o660);
    r = r.expect_exit(2).expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr.contains("key `authority_host`: may only be set in a trusted file, and this one is untrusted: group or others may write it (mode 0660)"),
        "{}",
        out.stderr
    );
    assert!(r.sim.requests().is_empty());
}

#[test]
fn an_untrusted_global_config_is_a_configuration_error() {
    let mut r = one_conf();
    let toml = r.path().join("usersync.toml");
    chmod(&toml, 0o666);
    r = r.expect_exit(2).expect_file(SENDERS, None);
    let out = r.run();
    assert_eq!(
        out.stderr,
        format!(
            "error: {t}: the global configuration is untrusted: group or others may write it (mode 0666); it decides where usersync writes and what it runs as root, so it must be trusted\nhint: chown root: {t}; chmod go-w {t}\n",
            t = toml.display()
        )
    );
}

#[test]
fn set_id_bits_are_dropped_and_a_first_list_is_0640_whatever_the_umask() {
    let mut r = one_conf()
        .conf(
            "gw",
            "sms",
            &format!("group_id = \"{STAFF}\"\nfeeds = [\"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n"),
        )
        .file(SENDERS, "old@example.com\n");
    let senders = r.root().join(SENDERS);
    chmod(&senders, 0o6644);
    // Under cron root's umask is 022: the phone numbers must still not be world-readable.
    let mut cmd = std::process::Command::new("sh");
    let inner = r.command();
    cmd.env_clear().envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    cmd.arg("-c").arg("umask 022; exec \"$@\"").arg("sh").arg(inner.get_program()).args(inner.get_args());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.read(SENDERS).as_deref(), Some(SYNCED));
    assert_eq!(std::fs::metadata(&senders).unwrap().mode() & 0o7777, 0o644, "the set-id bits are gone");
    assert_eq!(std::fs::metadata(r.root().join(GSM)).unwrap().mode() & 0o7777, 0o640);
    r = r.expect_exit(0);
    r.run();
}

#[test]
fn a_malformed_value_is_quoted_by_its_first_8_characters_only() {
    let pasted = "Xq8~s3cretValue.9AbCdEfGh";
    let smtp = Smtp::start(&[]);
    let mut r = Run::new()
        .global(&format!(
            "[http]\ntimeout_seconds = 10\nmax_retries = 0\n[alert]\nfrom = \"usersync@gw.example\"\nto = [\"admin@example.com\"]\n[[alert.provider]]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
            smtp.port
        ))
        .conf("gw", "staff", &format!("client_id = \"{pasted}\"\ngroup_id = \"{STAFF}\"\n"))
        .args(&["--format", "json", "-vv"])
        .expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("key `client_id`: `Xq8~s3cr…` is not a GUID"), "{}", out.stderr);
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "the configuration error was alerted");
    for (what, text) in [("stderr", &out.stderr), ("the JSON report", &out.stdout), ("the alert mail", &mails[0].0)] {
        assert!(!text.contains("s3cretValue"), "{what} holds the pasted value:\n{text}");
    }
    assert!(out.stdout.contains("`Xq8~s3cr…` is not a GUID"), "{}", out.stdout);
}

#[test]
fn users_without_account_enabled_are_skipped_unless_include_disabled() {
    let bare = |id: &str, mail: &str| json!({"@odata.type": "#microsoft.graph.user", "id": id, "mail": mail});
    let some = vec![user("u1", Some("alice@example.com"), None, true), bare("u2", "eve@example.com")];
    let mut r = Run::new().group(STAFF, some).conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    r = r.args(&["--format", "json"]).expect_exit(0).expect_file(SENDERS, Some("alice@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("skipped a user Graph sent without accountEnabled"), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["outputs"][0]["skipped"]["enabled-unknown"], 1, "{v}");
    r = r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ninclude_disabled = true\n"));
    r = r.args(&[]).expect_exit(0).expect_file(SENDERS, Some("alice@example.com\neve@example.com\n"));
    r.run();
    // None of the users with a mail has it: the app cannot see it (User.Read.All missing).
    let none = vec![bare("u1", "alice@example.com"), bare("u2", "eve@example.com")];
    r.sim.state().directory.groups.insert(STAFF.into(), none);
    r = r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n"));
    r = r.expect_exit(1).expect_file(SENDERS, Some("alice@example.com\neve@example.com\n"));
    let out = r.run();
    assert!(
        out.stderr.contains("Graph returned 2 users but none with accountEnabled (the \"limited information\" answer)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("User.Read.All"), "{}", out.stderr);
}

#[test]
fn a_response_body_is_capped_after_decompression() {
    // 65 MiB of whitespace in a valid page: gzip makes it about 64 KiB on the wire.
    let body = format!("{{\"value\":[]{}}}", " ".repeat(65 << 20));
    let mut r = one_conf();
    r.sim.state().page_faults.push(PageFault { page: 0, times: 1, fault: Fault::Body(body) });
    r = r.expect_exit(1).expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr
            .contains("sent a response body larger than 67108864 bytes (after decompression); it was not read further"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_plain_http_loopback_request_never_goes_through_a_proxy() {
    // The proxy only tunnels CONNECT: a plain request sent to it would fail.
    let proxy = Proxy::start().unwrap();
    let mut r = one_conf()
        .env("HTTP_PROXY", &proxy.url())
        .env("ALL_PROXY", &proxy.url())
        .expect_exit(0)
        .expect_file(SENDERS, Some(SYNCED));
    r.run();
    assert!(proxy.connects().is_empty());
    assert!(!r.sim.requests().is_empty());
}

#[test]
fn smtp_oauth_needs_tls_to_any_host_but_loopback() {
    let mut r = one_conf().global(&format!(
        "[alert]\nfrom = \"a@gw.example\"\nto = [\"b@example.com\"]\n[[alert.provider]]\nkind = \"smtp-oauth\"\nhost = \"smtp.office365.com\"\nsecurity = \"none\"\nusername = \"a@gw.example\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\n"
    ))
    .expect_exit(2)
    .expect_file(SENDERS, None);
    let out = r.run();
    assert!(
        out.stderr.contains("key `alert.provider[1].security`: \"none\" would send the access token in clear text"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failed_metrics_write_is_an_error_in_the_log_but_not_in_the_exit_code() {
    let mut r = one_conf()
        .global("[metrics]\ntextfile = \"/nonexistent-usersync/usersync.prom\"\n")
        .expect_exit(0)
        .expect_file(SENDERS, Some(SYNCED));
    let out = r.run();
    assert!(out.stderr.contains("ERROR cannot write the metrics textfile; the sync itself is done"), "{}", out.stderr);
    let prom = r.path().join("usersync.prom");
    let mut r = r.global(&format!("[metrics]\ntextfile = \"{}\"\n", prom.display())).expect_exit(0);
    r.run();
    assert_eq!(std::fs::metadata(&prom).unwrap().mode() & 0o7777, 0o644, "node-exporter must read it");
}

#[test]
fn a_current_output_over_1_gib_fails_its_instance_unread() {
    let mut r = one_conf();
    let big = r.root().join(SENDERS);
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    // Sparse: no disk is used.
    std::fs::File::create(&big).unwrap().set_len((1 << 30) + 1).unwrap();
    r = r.expect_exit(1);
    let out = r.run();
    assert!(
        out.stderr.contains(&format!("cannot use {}: it is larger than 1073741824 bytes", big.display())),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::metadata(&big).unwrap().len(), (1 << 30) + 1);
}

#[test]
fn check_reports_each_files_trust_and_each_unsafe_output() {
    if !as_root() {
        return;
    }
    let r = one_conf()
        .conf("gw", "sms", &format!("group_id = \"{STAFF}\"\nfeeds = [\"gsm_list\", \"access_rules\"]\nquery_filter = \"mail,mobilePhone\"\n"))
        .file("gw/config/compose.cfg", "LDAPGSMLISTFILE=config/gsm_list.txt\n")
        .file(GSM, "old@example.com +35840111111\n");
    give_away(&r.root().join("gw/config/compose.cfg"));
    chmod(&r.root().join(GSM), 0o6644);
    let fifo = r.root().join(RULES);
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
    let link = r.root().join(SENDERS);
    symlink(r.path().join("elsewhere"), &link).unwrap();
    let lock = r.root().join("gw/config/entraid/usersync.lock");
    symlink(r.path().join("nologin"), &lock).unwrap();
    let mut r = r.args(&["check"]).expect_exit(2);
    let out = r.run();
    let (root, gw) = (r.path().display().to_string(), r.root().join("gw").display().to_string());
    assert_eq!(
        out.stdout,
        format!(
            "note: {root}/usersync.toml: trusted
note: instance `gw`: {gw}/config/entraid/sms.entraidconf: trusted
note: instance `gw`: {gw}/config/entraid/staff.entraidconf: trusted
note: instance `gw`: {gw}/config/compose.cfg: untrusted: owned by uid 65534, neither root nor usersync's user; the output paths it names must lie beneath the instance directory
error: instance `gw`: the lock {gw}/config/entraid/usersync.lock is not a regular file but a symlink (hint: remove {gw}/config/entraid/usersync.lock; usersync creates it)
error: instance `gw`: output allowed_senders {gw}/config/allowed_senders_ldap.txt: cannot use {gw}/config/allowed_senders_ldap.txt: a symlink is on the way (hint: usersync never writes through a symlink: replace the symlink on the way to {gw}/config/allowed_senders_ldap.txt with the real directory or file, or (for a path outside the instance) set the path in a root-owned envelope.cfg / compose.cfg)
warning: instance `gw`: output gsm_list {gw}/config/gsm_list.txt: its mode 6644 has set-id or sticky bits, which the next write drops (hint: chmod 0644 {gw}/config/gsm_list.txt)
error: instance `gw`: output access_rules {gw}/config/gsm_auth_auto.txt: cannot use {gw}/config/gsm_auth_auto.txt: it exists but is a FIFO (hint: an output must be a regular file: move {gw}/config/gsm_auth_auto.txt away, and the next run creates it)
check: 3 errors, 1 warnings
"
        )
    );
}

#[test]
fn two_outputs_in_one_file_are_a_configuration_error() {
    for path in ["config/allowed_senders_ldap.txt", "lists/../config/allowed_senders_ldap.txt"] {
        let mut r = one_conf()
            .conf(
                "gw",
                "sms",
                &format!("group_id = \"{STAFF}\"\nfeeds = [\"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n"),
            )
            .file("gw/config/compose.cfg", &format!("LDAPGSMLISTFILE={path}\n"))
            .file("gw/lists/.keep", "")
            .expect_exit(2)
            .expect_file(SENDERS, None);
        let out = r.run();
        assert!(
            // A trusted .cfg's path is taken as written, `..` lexically.
            out.stderr.contains(
                "gw/config/allowed_senders_ldap.txt: both allowed_senders and gsm_list would be written to this file"
            ),
            "{path}: {}",
            out.stderr
        );
    }
}

/// Owners are named through NSS (`getpwuid_r`), not by reading /etc/passwd: a gateway user
/// known only to LDAP or SSSD raises no "no user name" warning. `libnss_wrapper` stands in
/// for such a name service.
#[test]
fn check_names_owners_through_nss() {
    let Some(wrapper) = ["/usr/lib/x86_64-linux-gnu/libnss_wrapper.so", "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: libnss_wrapper is not installed (apt-get install libnss-wrapper; tests/setup does it)");
        return;
    };
    if !as_root() {
        return;
    }
    let r = one_conf().file(SENDERS, "old@example.com\n");
    std::os::unix::fs::chown(r.root().join(SENDERS), Some(4242), Some(4242)).unwrap();
    let (passwd, group) = (r.path().join("passwd"), r.path().join("group"));
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\ngateway:x:4242:4242:gw:/nonexistent:/usr/sbin/nologin\n")
        .unwrap();
    std::fs::write(&group, "root:x:0:\ngateway:x:4242:\n").unwrap();
    let warning =
        format!("output allowed_senders {}: its owner, uid 4242, has no user name", r.root().join(SENDERS).display());
    let mut r = r.args(&["check"]).expect_exit(0);
    let out = r.run();
    assert!(out.stdout.contains(&warning), "without the name service, uid 4242 has no name:\n{}", out.stdout);
    let mut r = r
        .env("LD_PRELOAD", wrapper)
        .env("NSS_WRAPPER_PASSWD", &passwd.display().to_string())
        .env("NSS_WRAPPER_GROUP", &group.display().to_string())
        .expect_exit(0);
    let out = r.run();
    assert!(!out.stdout.contains("has no user name"), "{}", out.stdout);
}
