//! No secret and no access token, in any subcommand, on any path, at any log level.

use crate::util::*;

fn assert_clean(what: &str, out: &Output) {
    for s in [&out.stdout, &out.stderr] {
        assert!(!s.contains(SECRET), "{what}: the client secret leaked:\n{s}");
        assert!(!s.contains("sim-access-token"), "{what}: an access token leaked:\n{s}");
    }
    // Proof that the search above looked at a trace log: its first line.
    assert!(out.stderr.contains(" TRACE usersync starts"), "{what}: trace logging was not on:\n{}", out.stderr);
}

fn traced(r: Run, args: &[&str]) -> Run {
    let mut all = vec!["-vvv"];
    all.extend_from_slice(args);
    r.env("RUST_LOG", "trace").args(&all)
}

#[test]
fn no_subcommand_prints_a_secret_or_token_even_when_failing() {
    let cases: Vec<(&str, Run, Vec<&str>, i32)> = vec![
        ("sync", one_conf(), vec![], 0),
        ("sync json", one_conf(), vec!["--format", "json"], 0),
        ("dry run", one_conf(), vec!["--dry-run"], 0),
        ("test", one_conf(), vec!["test", "-i", "gw", "--show"], 0),
        ("check", one_conf(), vec!["check"], 0),
        ("check error", one_conf().conf("gw", "bad", "group_id = \"x\"\n"), vec!["check"], 2),
        ("config error", one_conf().conf("gw", "bad", &format!("group_id = \"{STAFF}\"\ncolour = 1\n")), vec![], 2),
    ];
    for (what, r, args, code) in cases {
        let mut r = traced(r, &args).expect_exit(code);
        let out = r.run();
        assert_clean(what, &out);
    }
    for (what, args) in [("sync", vec![]), ("test", vec!["test", "-i", "gw"])] {
        let mut r = traced(one_conf(), &args).expect_exit(1);
        r.sim.state().token_faults.push(aad_error(401, "invalid_client", 7_000_215, "Invalid client secret provided."));
        assert_clean(&format!("{what} with a refused secret"), &r.run());
        let mut r = traced(one_conf(), &args).expect_exit(1);
        r.sim.state().page_faults.push(PageFault { page: 0, times: 2, fault: Fault::RevokeTokens });
        assert_clean(&format!("{what} with a rejected token"), &r.run());
    }
}

/// A run and `usersync check` use one rule: a file holding a secret that group or others
/// may read is warned about (a run used to warn only when every user could read it).
#[test]
fn a_group_readable_secret_file_is_warned_about_by_a_run_as_by_check() {
    let r = Run::new().group(STAFF, staff_members()).file("gw/config/entraid/staff.secret", SECRET).conf(
        "gw",
        "staff",
        &format!("group_id = \"{STAFF}\"\nclient_secret_file = \"staff.secret\"\n"),
    );
    let secret = r.root().join("gw/config/entraid/staff.secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let warning = format!("{} holds a client secret and is readable by group or others (mode 0640)", secret.display());
    let mut r = r.expect_exit(0);
    let out = r.run();
    assert!(out.stderr.contains(&format!("WARN {warning}; hint: chmod 600 {}", secret.display())), "{}", out.stderr);
    r = r.args(&["check"]).expect_exit(0);
    let out = r.run();
    assert!(
        out.stdout.contains(&format!("warning: instance `gw`: {warning} (hint: chmod 600 {})", secret.display())),
        "{}",
        out.stdout
    );
}

/// Systemd credentials (`LoadCredential=`) exist only under the unit. `usersync check` from
/// a shell checks everything else, says which credentials it left unread and how to check
/// them as the unit sees them, and exits 2 only for real errors; a run, and a check under
/// the unit (`$CREDENTIALS_DIRECTORY` set), read them.
#[test]
fn check_from_a_shell_leaves_the_units_credentials_unread_and_checks_the_rest() {
    let creds = tempfile::tempdir().unwrap();
    let conf = format!("group_id = \"{STAFF}\"\nclient_secret_credential = \"gw-staff\"\n");
    let r = Run::new().group(STAFF, staff_members()).conf("gw", "staff", &conf);
    let toml = format!(
        "state_dir = \"{}\"\n[http]\ntimeout_seconds = 10\n[alert]\nfrom = \"usersync@gw.example.com\"\nto = [\"admin@example.com\"]\n\
         [[alert.provider]]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"none\"\nusername = \"alerts\"\npassword_credential = \"smtp-password\"\n\
         [[alert.provider]]\nkind = \"graph\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret_credential = \"alert-app\"\n\
         [[alert.provider]]\nkind = \"sendgrid\"\napi_key_credential = \"sendgrid-key\"\n",
        r.path().join("state").display()
    );
    let mut r = r.global(&toml).args(&["check"]).expect_exit(0);
    let out = r.run();
    let conf_file = r.root().join("gw/config/entraid/staff.entraidconf");
    let toml = r.path().join("usersync.toml");
    let note = |at: String, key: &str, name: &str| {
        format!("note: {at}: key `{key}`: the systemd credential `{name}` is read only under the unit (LoadCredential=, $CREDENTIALS_DIRECTORY), so this shell did not read it; everything else was checked (hint: to check it as the unit sees it: systemd-run --pipe --wait -p LoadCredential={name}:/etc/usersync/credentials/{name} usersync check)")
    };
    for want in [
        note(format!("instance `gw`, config {}", conf_file.display()), "client_secret_credential", "gw-staff"),
        note(format!("{}, [[alert.provider]] 1 (smtp)", toml.display()), "password_credential", "smtp-password"),
        note(
            format!("{}, [[alert.provider]] graph https://graph.microsoft.com", toml.display()),
            "client_secret_credential",
            "alert-app",
        ),
        note(format!("{}, [[alert.provider]] 3 (sendgrid)", toml.display()), "api_key_credential", "sendgrid-key"),
        "check: 0 errors, 0 warnings".to_owned(),
    ] {
        assert!(out.stdout.contains(&want), "missing: {want}\n--- stdout\n{}", out.stdout);
    }

    // Everything else is still checked: a real error is exit 2.
    let bad = format!("group_id = \"{STAFF}\"\nclient_secret_credential = \"gw-staff\"\nfeeds = [\"gsm_list\"]\n");
    let mut r = r.conf("gw", "staff", &bad).expect_exit(2);
    let out = r.run();
    assert!(
        out.stdout.contains("`gsm_list` needs phone numbers") && out.stdout.contains("check: 1 errors"),
        "{}",
        out.stdout
    );

    // Under the unit the credentials are read: missing ones are errors, present ones pass.
    let r = r.conf("gw", "staff", &conf);
    let mut r = r.env("CREDENTIALS_DIRECTORY", &creds.path().display().to_string()).expect_exit(2);
    let out = r.run();
    assert!(out.stdout.contains("cannot read") && !out.stdout.contains("did not read"), "{}", out.stdout);
    for (name, value) in
        [("gw-staff", SECRET), ("smtp-password", "pw"), ("alert-app", SECRET), ("sendgrid-key", "SG.x")]
    {
        std::fs::write(creds.path().join(name), value).unwrap();
    }
    r = r.expect_exit(0);
    let out = r.run();
    assert!(!out.stdout.contains("did not read"), "{}", out.stdout);

    // A run reads them, and without them it is still a configuration error.
    let mut r = r.args(&[]).ignore_stderr().expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    let mut r = Run::new().group(STAFF, staff_members()).conf("gw", "staff", &conf).expect_exit(2);
    let out = r.run();
    assert!(out.stderr.contains("`gw-staff` is set but $CREDENTIALS_DIRECTORY is not"), "{}", out.stderr);
}
