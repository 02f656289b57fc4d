//! Credential and permission problems: golden tests of the exact stderr.
//! Each message names the instance and config file, gives the Azure error
//! code and a `hint:` saying what to do in the Entra admin center.
//! `UPDATE_GOLDEN=1 cargo test` rewrites `tests/fixtures/errors/*.stderr`.

use std::path::PathBuf;

use crate::util::*;

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/graph/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn golden(name: &str, mut r: Run) {
    r = r
        .args(&["-q"])
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/errors").join(format!("{name}.stderr"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        r = r.ignore_stderr();
        let out = r.run();
        std::fs::write(&path, r.placeholders(&out.stderr)).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing; run with UPDATE_GOLDEN=1", path.display()));
    r = r.expect_stderr(&want);
    r.run();
}

fn token_fault(status: u16, body: String) -> Run {
    let r = one_conf();
    r.sim.state().token_faults.push(Fault::Status { status, retry_after: None, body });
    r
}

#[test]
fn aadsts7000215_wrong_secret() {
    golden("aadsts7000215", token_fault(401, sample("observed_token_error_7000215_invalid_secret.json")));
}

#[test]
fn aadsts7000222_expired_secret() {
    golden("aadsts7000222", token_fault(401, sample("observed_token_error_7000222_expired_secret_http401.json")));
}

#[test]
fn aadsts700016_app_not_in_tenant() {
    golden("aadsts700016", token_fault(400, sample("observed_token_error_700016_app_not_found.json")));
}

#[test]
fn aadsts90002_unknown_tenant() {
    golden("aadsts90002", token_fault(400, sample("observed_token_error_90002_tenant_not_found.json")));
}

#[test]
fn aadsts70011_bad_scope() {
    golden("aadsts70011", token_fault(400, sample("token_error_invalid_scope.json")));
}

#[test]
fn aadsts7000112_app_disabled() {
    let r = one_conf();
    r.sim.state().token_faults.push(aad_error(
        401,
        "unauthorized_client",
        7_000_112,
        "Application '66666666-7777-8888-9999-000000000000'(usersync) is disabled.",
    ));
    golden("aadsts7000112", r);
}

#[test]
fn graph_403_authorization_request_denied() {
    let r = one_conf();
    let body = sample("graph_error_authorization_requestdenied.json");
    r.sim.state().page_faults.push(PageFault {
        page: 0,
        times: 1,
        fault: Fault::Status { status: 403, retry_after: None, body },
    });
    golden("graph403", r);
}

#[test]
fn graph_404_request_resource_not_found() {
    golden("graph404", Run::new().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n")));
}

#[test]
fn limited_information_means_user_read_all_is_missing() {
    let r = one_conf();
    r.sim.state().directory.apps[0].limited = true;
    golden("limited-information", r);
}
