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
