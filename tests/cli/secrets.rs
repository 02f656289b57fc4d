//! No secret and no access token, in any subcommand, on any path, at any log level.

use crate::util::*;

fn assert_clean(what: &str, out: &Output) {
    for s in [&out.stdout, &out.stderr] {
        assert!(!s.contains(SECRET), "{what}: the client secret leaked:\n{s}");
        assert!(!s.contains("sim-access-token"), "{what}: an access token leaked:\n{s}");
    }
    assert!(
        out.stderr.contains("TRACE")
            || out.stderr.contains("DEBUG")
            || out.stderr.contains("error")
            || out.stdout.contains("check:"),
        "{what}: trace logging is on"
    );
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
