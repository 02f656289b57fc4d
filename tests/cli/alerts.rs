//! Alert mail (contract §8) through a real SMTP server (aiosmtpd) with STARTTLS,
//! implicit TLS, AUTH and XOAUTH2, and through Graph sendMail; failover,
//! repeat suppression, recovery and `usersync alert-test`.

use crate::util::*;
use std::fmt::Write as _;

const SMTP_PASSWORD: &str = "smtp-Pa55word!";

/// A failing sync (the group answers 503 once, no retries) of instance `gw`.
fn failing() -> Run {
    let r = one_conf();
    r.fail_once(503);
    r
}

fn alert_config(r: &Run, providers: &str, extra: &str) -> String {
    let dir = r.path();
    format!(
        "{extra}[http]\nmax_retries = 0\nca_bundle = \"{}\"\n\n[alert]\nfrom = \"usersync@gw.example\"\nto = [\"Admin@Example.com\", \"admin@example.com\", \"ops@example.com\"]\nrepeat_hours = 24\n{providers}",
        dir.join("ca.pem").display()
    )
}

fn smtp_provider(priority: u32, port: u16, security: &str, auth: bool) -> String {
    let mut p = format!("\n[[alert.provider]]\nkind = \"smtp\"\npriority = {priority}\nhost = \"localhost\"\nport = {port}\nsecurity = \"{security}\"\n");
    if auth {
        p.push_str("username = \"alerts\"\npassword = \"");
        p.push_str(SMTP_PASSWORD);
        p.push_str("\"\n");
    }
    p
}

fn tls_server(r: &Run, mode: &str, extra: &[&str]) -> Smtp {
    let (cert, key) = (r.path().join("cert.pem"), r.path().join("key.pem"));
    let mut args = vec!["--tls", mode, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    Smtp::start(&args)
}

fn assert_no_secret(texts: &[&str]) {
    for t in texts {
        for s in [SECRET, SMTP_PASSWORD, "sim-access-token"] {
            assert!(!t.contains(s), "{s} leaked into:\n{t}");
        }
    }
}

#[test]
fn smtp_starttls_with_auth_delivers_a_failure_alert() {
    let r = failing();
    write_pki(r.path());
    let smtp = tls_server(&r, "starttls", &["--user", "alerts", "--password", SMTP_PASSWORD]);
    let cfg = alert_config(&r, &smtp_provider(1, smtp.port, "starttls", true), "");
    let mut r = r.global(&cfg).env("RUST_LOG", "debug").expect_exit(1);
    let out = r.run();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{}", out.stderr);
    let (eml, meta) = &msgs[0];
    assert_eq!(meta["auth"], "alerts");
    assert_eq!(meta["rcpt_tos"], json!(["admin@example.com", "ops@example.com"]), "lower-cased, deduplicated");
    assert!(eml.contains("Subject: [usersync] ") && eml.contains(": gw failed (exit 1)"), "{eml}");
    assert!(eml.contains("Message-ID: <usersync."), "{eml}");
    assert!(eml.contains("Content-Type: text/plain"), "{eml}");
    assert!(eml.contains("HTTP 503") && eml.contains("hint:"), "{eml}");
    assert_no_secret(&[eml, &out.stderr, &out.stdout]);
    let mime = smtp.parsed(1);
    assert_eq!(mime["mime_version"], "1.0", "{mime}");
    assert_eq!((mime["content_type"].as_str(), mime["charset"].as_str()), (Some("text/plain"), Some("utf-8")));
    let body = mime["body"].as_str().unwrap();
    assert!(body.contains("HTTP 503") && body.contains("hint:"), "the decoded body: {body}");
}

#[test]
fn implicit_tls_delivers() {
    let r = failing();
    write_pki(r.path());
    let smtp = tls_server(&r, "implicit", &[]);
    let cfg = alert_config(&r, &smtp_provider(1, smtp.port, "tls", false), "");
    r.global(&cfg).expect_exit(1).run();
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn smtp_oauth_authenticates_with_a_token_from_entra() {
    let r = failing();
    write_pki(r.path());
    let smtp = tls_server(&r, "starttls", &["--xoauth2-url", &r.sim.url()]);
    let provider = format!(
        "\n[[alert.provider]]\nkind = \"smtp-oauth\"\nhost = \"localhost\"\nport = {}\nusername = \"alerts@contoso.example\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\nauthority_host = \"{}\"\n",
        smtp.port,
        r.sim.url()
    );
    let cfg = alert_config(&r, &provider, "");
    let mut r = r.global(&cfg).env("RUST_LOG", "trace").expect_exit(1);
    let out = r.run();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{}", out.stderr);
    assert_eq!(msgs[0].1["auth"], "alerts@contoso.example");
    let scopes: Vec<String> = r.sim.requests().iter().filter_map(|q| q.form.get("scope").cloned()).collect();
    assert!(scopes.contains(&"https://outlook.office365.com/.default".to_owned()), "{scopes:?}");
    assert_no_secret(&[&msgs[0].0, &out.stderr]);
    assert_eq!(smtp.parsed(1)["mime_version"], "1.0");
}

#[test]
fn graph_send_mail_delivers() {
    let r = failing();
    write_pki(r.path());
    let provider = format!(
        "\n[[alert.provider]]\nkind = \"graph\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\nauthority_host = \"{0}\"\ngraph_endpoint = \"{0}\"\n",
        r.sim.url()
    );
    let cfg = alert_config(&r, &provider, "");
    let mut r = r.global(&cfg).expect_exit(1);
    r.run();
    let sent = r.sim.state().sent_mail.clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "usersync@gw.example");
    let m = &sent[0].1["message"];
    assert!(m["subject"].as_str().unwrap().ends_with(": gw failed (exit 1)"));
    assert_eq!(m["body"]["contentType"], "Text");
    assert_eq!(m["toRecipients"][1]["emailAddress"]["address"], "ops@example.com");
    assert_no_secret(&[&m.to_string()]);
}

#[test]
fn failover_when_the_first_provider_refuses_the_connection_or_the_login() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for first in ["refuses the connection", "rejects the login"] {
        let r = failing();
        write_pki(r.path());
        let bad = tls_server(&r, "starttls", &["--reject-auth"]);
        let good = tls_server(&r, "starttls", &[]);
        let p1 = if first == "refuses the connection" {
            smtp_provider(1, closed, "starttls", true)
        } else {
            smtp_provider(1, bad.port, "starttls", true)
        };
        let cfg = alert_config(&r, &format!("{p1}{}", smtp_provider(2, good.port, "starttls", false)), "");
        let mut r = r.global(&cfg).expect_exit(1);
        let out = r.run();
        assert_eq!(good.messages().len(), 1, "{first}: {}", out.stderr);
        assert!(out.stderr.contains("alert not delivered by this provider"), "{first}: {}", out.stderr);
        if first == "rejects the login" {
            assert!(out.stderr.contains("535") || out.stderr.contains("refused the username"), "{}", out.stderr);
        }
    }
}

#[test]
fn all_providers_down_leaves_the_exit_code_and_is_logged_and_counted() {
    let r = failing();
    write_pki(r.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom = r.path().join("usersync.prom");
    let cfg = alert_config(
        &r,
        &smtp_provider(1, closed, "starttls", false),
        &format!("[metrics]\ntextfile = \"{}\"\n", prom.display()),
    );
    let mut r = r.global(&cfg).expect_exit(1);
    let out = r.run();
    assert!(out.stderr.contains("no alert provider could deliver the alert"), "{}", out.stderr);
    assert!(std::fs::read_to_string(prom).unwrap().contains("usersync_alert_delivery_failed 1"));
}

#[test]
fn a_failure_that_goes_on_is_not_repeated_and_recovery_is_sent_once() {
    let r = failing();
    write_pki(r.path());
    let smtp = Smtp::start(&[]);
    let cfg = alert_config(&r, &smtp_provider(1, smtp.port, "none", false), "");
    let mut r = r.global(&cfg).expect_exit(1);
    r.run();
    assert_eq!(smtp.messages().len(), 1);
    r.fail_once(503);
    r = r.expect_exit(1);
    r.run();
    assert_eq!(smtp.messages().len(), 1, "inside repeat_hours: no second alert");
    r = r.expect_exit(0);
    r.run();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[1].0.contains(": recovered: gw"), "{}", msgs[1].0);
    r = r.expect_exit(0);
    r.run();
    assert_eq!(smtp.messages().len(), 2, "recovery is sent once");
}

#[test]
fn alert_test_reports_each_provider() {
    let r = one_conf();
    write_pki(r.path());
    let good = tls_server(&r, "starttls", &[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = alert_config(
        &r,
        &format!("{}{}", smtp_provider(1, closed, "starttls", false), smtp_provider(2, good.port, "starttls", false)),
        "",
    );
    let mut r = r.global(&cfg).args(&["alert-test"]).expect_exit(0);
    let out = r.run();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with(&format!("provider 1 (smtp localhost:{closed}): failed: ")), "{}", lines[0]);
    assert!(lines[0].contains("hint:"), "{}", lines[0]);
    assert_eq!(lines[1], format!("provider 2 (smtp localhost:{}): delivered", good.port));
    assert!(good.messages()[0].0.contains(": test message"));
    assert!(r.sim.requests().is_empty(), "alert-test does not sync");
    drop(good);
    r = r.expect_exit(1);
    r.run();
}

#[test]
fn a_535_to_smtp_oauth_names_the_exchange_online_causes() {
    let r = one_conf();
    write_pki(r.path());
    // The server checks tokens with a simulator that is not there: every token is refused.
    let smtp = tls_server(&r, "starttls", &["--xoauth2-url", "http://127.0.0.1:9"]);
    let provider = format!(
        "\n[[alert.provider]]\nkind = \"smtp-oauth\"\nhost = \"localhost\"\nport = {}\nusername = \"alerts@contoso.example\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\nauthority_host = \"{}\"\n",
        smtp.port,
        r.sim.url()
    );
    let cfg = alert_config(&r, &provider, "");
    let mut r = r.global(&cfg).args(&["alert-test"]).expect_exit(1);
    let out = r.run();
    assert!(out.stdout.contains("535") && out.stdout.contains("New-ServicePrincipal"), "{}", out.stdout);
    assert!(out.stdout.contains("Add-MailboxPermission"), "{}", out.stdout);
    assert_no_secret(&[&out.stdout, &out.stderr]);
}

/// A `sendgrid` provider against the simulator, its key in a 0600 file.
fn sendgrid_provider(r: &Run, priority: u32, key: &str) -> String {
    let file = r.path().join(format!("sendgrid-{priority}.key"));
    std::fs::write(&file, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!(
        "\n[[alert.provider]]\nkind = \"sendgrid\"\npriority = {priority}\napi_key_file = \"{}\"\napi_host = \"{}\"\n",
        file.display(),
        r.sim.url()
    )
}

fn assert_no_key(texts: &[&str]) {
    for t in texts {
        for key in [SENDGRID_KEY, SENDGRID_READ_ONLY_KEY, "sim-mail-send", "sim-read-only"] {
            assert!(!t.contains(key), "the SendGrid key leaked into:\n{t}");
        }
    }
}

#[test]
fn sendgrid_delivers_the_documented_body_and_no_log_holds_the_key() {
    for verbosity in [&["-vvv"][..], &[]] {
        let r = failing();
        write_pki(r.path());
        let cfg = alert_config(&r, &sendgrid_provider(&r, 1, SENDGRID_KEY), "");
        let mut r = r.global(&cfg).args(verbosity).expect_exit(1).ignore_stderr();
        if verbosity.is_empty() {
            // Every crate's trace, hyper and reqwest included.
            r = r.env("RUST_LOG", "trace");
        }
        let out = r.run();
        let s = r.sim.state();
        assert_eq!(s.sendgrid_mail.len(), 1, "{}", out.stderr);
        let m = &s.sendgrid_mail[0];
        assert_eq!(
            m["personalizations"][0]["to"],
            json!([{"email": "admin@example.com"}, {"email": "ops@example.com"}])
        );
        assert_eq!(m["from"], json!({"email": "usersync@gw.example"}));
        assert!(m["subject"].as_str().unwrap().ends_with(": gw failed (exit 1)"), "{m}");
        assert_eq!(m["content"][0]["type"], "text/plain");
        assert!(m["content"][0]["value"].as_str().unwrap().contains("HTTP 503"), "{m}");
        assert_eq!(s.sendgrid_auth, [format!("Bearer {SENDGRID_KEY}")], "one request: 202 is delivered");
        assert!(out.stderr.contains("SendGrid answered") && out.stderr.contains("status=202"), "{}", out.stderr);
        assert!(out.stderr.contains("alert delivered"), "{}", out.stderr);
        assert_no_key(&[&out.stderr, &out.stdout]);
    }
}

#[test]
fn a_sendgrid_key_without_mail_send_or_a_wrong_one_says_which_permission() {
    let cases = [
        ("SG.not-a-key-of-this-account", 401, "hint: SendGrid does not accept this API key"),
        (SENDGRID_READ_ONLY_KEY, 403, "hint: the API key needs the \"Mail Send\" permission"),
    ];
    for (key, status, hint) in cases {
        let r = one_conf();
        write_pki(r.path());
        let cfg = alert_config(&r, &sendgrid_provider(&r, 1, key), "");
        let mut r = r.global(&cfg).args(&["alert-test", "-vvv"]).expect_exit(1).ignore_stderr();
        let out = r.run();
        let line = out.stdout.lines().next().unwrap_or_default();
        let prefix = format!(
            "provider 1 (sendgrid {}): failed: {}/v3/mail/send answered HTTP {status}",
            r.sim.url(),
            r.sim.url()
        );
        assert!(line.starts_with(&prefix), "{line}");
        assert!(line.contains(hint) && line.contains("\"Mail Send\""), "{line}");
        assert!(r.sim.state().sendgrid_mail.is_empty());
        assert_no_key(&[&out.stderr, &out.stdout]);
        assert!(!out.stderr.contains(key) && !out.stdout.contains(key));
    }
}

#[test]
fn sendgrid_fails_over_to_smtp_and_smtp_to_sendgrid() {
    // SendGrid throttled, or failing: the SMTP relay after it delivers, at once.
    for status in [429, 500] {
        let r = failing();
        write_pki(r.path());
        let smtp = Smtp::start(&[]);
        let providers =
            format!("{}{}", sendgrid_provider(&r, 1, SENDGRID_KEY), smtp_provider(2, smtp.port, "none", false));
        let cfg = alert_config(&r, &providers, "");
        let mut r = r.global(&cfg).expect_exit(1).ignore_stderr();
        r.sim.state().sendgrid_faults.push(status);
        let started = std::time::Instant::now();
        let out = r.run();
        assert_eq!(smtp.messages().len(), 1, "{status}: {}", out.stderr);
        assert_eq!(r.sim.state().sendgrid_auth.len(), 1, "{status}: no retry, the next provider instead");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no waiting out a throttle");
        assert!(out.stderr.contains(&format!("answered HTTP {status}")), "{}", out.stderr);
        assert_no_key(&[&out.stderr]);
    }
    // The relay down: SendGrid after it delivers.
    let r = failing();
    write_pki(r.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let providers = format!("{}{}", smtp_provider(1, closed, "none", false), sendgrid_provider(&r, 2, SENDGRID_KEY));
    let cfg = alert_config(&r, &providers, "");
    let mut r = r.global(&cfg).expect_exit(1).ignore_stderr();
    let out = r.run();
    assert_eq!(r.sim.state().sendgrid_mail.len(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("alert not delivered by this provider"), "{}", out.stderr);
}

#[test]
fn a_sendgrid_key_is_never_inline_and_must_be_given() {
    let cases = [
        ("api_key = \"SG.inline\"\n", "key `alert.provider[1].api_key`: an API key is never written inline"),
        ("", "key `alert.provider[1].api_key_file`: is missing"),
        ("api_key_file = \"/nonexistent/sendgrid.key\"\n", "/nonexistent/sendgrid.key"),
        (
            "api_key_file = \"/etc/hostname\"\napi_host = \"http://sendgrid.example\"\n",
            "uses http:// for a host that is not a loopback address",
        ),
    ];
    for (keys, message) in cases {
        let r = one_conf();
        write_pki(r.path());
        let cfg = alert_config(&r, &format!("\n[[alert.provider]]\nkind = \"sendgrid\"\n{keys}"), "");
        let mut r = r.global(&cfg).expect_exit(2).ignore_stderr();
        let out = r.run();
        assert!(out.stderr.contains(message) && out.stderr.contains("hint:"), "{keys}: {}", out.stderr);
        assert!(!out.stderr.contains("SG.inline"), "{}", out.stderr);
        assert!(r.sim.requests().is_empty(), "nothing contacted");
    }
}

/// An Entra app provider (`smtp-oauth` or `graph`) of the simulator's app, authenticated
/// by the certificate in `app.pem` (next to usersync.toml, mode 0600) with `extra` keys.
fn certificate_provider(r: &Run, kind: &str, smtp_port: Option<u16>, pem: &str, extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = r.path().join("app.pem");
    std::fs::write(&file, pem).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let smtp = smtp_port.map_or_else(String::new, |port| {
        format!("host = \"localhost\"\nport = {port}\nusername = \"alerts@contoso.example\"\n")
    });
    format!(
        "\n[[alert.provider]]\nkind = \"{kind}\"\n{smtp}tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_certificate = \"app.pem\"\n{extra}authority_host = \"{0}\"\ngraph_endpoint = \"{0}\"\n",
        r.sim.url()
    )
}

/// The token requests the simulator saw: their scope and client assertion.
fn assertion_scopes(r: &Run) -> Vec<(String, String)> {
    r.sim
        .requests()
        .into_iter()
        .filter(|q| q.form.contains_key("grant_type"))
        .map(|q| {
            (
                q.form.get("scope").cloned().unwrap_or_default(),
                q.form.get("client_assertion").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn smtp_oauth_and_graph_authenticate_with_a_certificate() {
    use crate::certificates::{fixture, long_lived};
    let cert = long_lived("app-key.pem");
    // smtp-oauth: certificate and key in one file, PS256.
    let r = failing();
    write_pki(r.path());
    r.sim.state().directory.apps[0].certificate = Some(cert.clone());
    let smtp = tls_server(&r, "starttls", &["--xoauth2-url", &r.sim.url()]);
    let provider =
        certificate_provider(&r, "smtp-oauth", Some(smtp.port), &format!("{cert}{}", fixture("app-key.pem")), "");
    let cfg = alert_config(&r, &provider, "");
    let mut r = r.global(&cfg).env("RUST_LOG", "trace").expect_exit(1).ignore_stderr();
    let out = r.run();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{}", out.stderr);
    assert_eq!(msgs[0].1["auth"], "alerts@contoso.example");
    let outlook: Vec<String> = assertion_scopes(&r)
        .into_iter()
        .filter(|(scope, _)| scope == "https://outlook.office365.com/.default")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(outlook.len(), 1, "one token for Exchange Online");
    let header = jsonwebtoken::decode_header(&outlook[0]).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256, "the simulator verified it; it is signed as configured");
    assert!(!out.stderr.contains(&outlook[0]) && !out.stderr.contains("PRIVATE KEY"), "{}", out.stderr);

    // graph: a separate PKCS#1 key, RS256.
    let r = failing();
    write_pki(r.path());
    r.sim.state().directory.apps[0].certificate = Some(cert.clone());
    std::fs::write(r.path().join("app.key"), fixture("app-key-pkcs1.pem")).unwrap();
    let provider =
        certificate_provider(&r, "graph", None, &cert, "client_key = \"app.key\"\nassertion_algorithm = \"RS256\"\n");
    let cfg = alert_config(&r, &provider, "");
    let mut r = r.global(&cfg).expect_exit(1).ignore_stderr();
    r.run();
    assert_eq!(r.sim.state().sent_mail.len(), 1);
    let graph: Vec<(String, String)> = assertion_scopes(&r).into_iter().filter(|(_, a)| !a.is_empty()).collect();
    assert!(graph.iter().all(|(_, a)| jsonwebtoken::decode_header(a).unwrap().alg == jsonwebtoken::Algorithm::RS256));
    assert!(graph.iter().any(|(scope, _)| scope == &format!("{}/.default", r.sim.url())), "{graph:?}");

    // alert-test shows the certificate by the thumbprints the portal and the JWT use.
    let mut r = r.args(&["alert-test"]).expect_exit(0);
    let out = r.run();
    let sha1 = crate::certificates::portal_thumbprint(r.path(), &cert);
    assert!(
        out.stdout.contains(&format!("  credential: certificate `CN=usersync-test`, thumbprint {sha1} (SHA-1")),
        "{}",
        out.stdout
    );
}

/// A provider's app keys go through the checker of a `.entraidconf`'s: the same message
/// and the same hint, with the provider named.
#[test]
fn a_providers_app_keys_are_checked_like_a_configs() {
    let cases = [
        ("tenant_id = \"tenant!\"\n", "key `tenant_id`: `tenant!` is neither a GUID nor a domain name"),
        ("client_id = \"nope\"\n", "key `client_id`: `nope` is not a GUID"),
        ("cloud = \"mars\"\n", "key `cloud`: unknown cloud `mars`"),
        (
            "graph_endpoint = \"http://graph.example.com\"\n",
            "key `graph_endpoint`: `http://g…` uses http:// for a host that is not a loopback address",
        ),
    ];
    // The error line that names `want`, from its `key`, and the hint after it.
    let error_and_hint = |stderr: &str, want: &str| -> (String, String) {
        let mut lines = stderr.lines().skip_while(|l| !l.contains(want));
        let error = lines.next().unwrap_or_else(|| panic!("no `{want}` in {stderr}"));
        let hint = lines.next().unwrap_or_default().to_owned();
        (error[error.find("key `").unwrap()..].to_owned(), hint)
    };
    for (keys, want) in cases {
        let mut conf =
            Run::new().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\n{keys}")).expect_exit(2).ignore_stderr();
        let from_conf = error_and_hint(&conf.run().stderr, want);

        let r = one_conf();
        write_pki(r.path());
        let set = |key: &str| keys.starts_with(&format!("{key} ="));
        let mut provider = "\n[[alert.provider]]\nkind = \"graph\"\n".to_owned();
        for (key, value) in [
            ("tenant_id", TENANT),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("authority_host", r.sim.url().as_str()),
            ("graph_endpoint", r.sim.url().as_str()),
        ] {
            if !set(key) {
                let _ = writeln!(provider, "{key} = \"{value}\"");
            }
        }
        provider.push_str(keys);
        let cfg = alert_config(&r, &provider, "");
        let mut r = r.global(&cfg).expect_exit(2).ignore_stderr();
        let out = r.run();
        assert!(out.stderr.contains(&format!("[[alert.provider]] 1: {want}")), "{keys}: {}", out.stderr);
        assert_eq!(error_and_hint(&out.stderr, want), from_conf, "{keys}");
        assert!(from_conf.1.starts_with("hint: "), "{keys}: {from_conf:?}");
        assert!(r.sim.requests().is_empty(), "nothing contacted");
    }
}

#[test]
fn a_providers_certificate_is_checked_like_a_configs() {
    use crate::certificates::{certificate, fixture, long_lived, now, DAY};
    let cert = long_lived("app-key.pem");
    let expired = certificate("app-key.pem", now() - 2 * DAY);
    for (pem, extra, want) in [
        (
            format!("{cert}{}", fixture("app-key.pem")),
            format!("client_secret = \"{SECRET}\"\n"),
            "[[alert.provider]] 1: both a client secret and a certificate are configured",
        ),
        (
            cert.clone(),
            "client_key = \"other.key\"\n".to_owned(),
            "other.key: the private key does not belong to the certificate",
        ),
        (
            format!("{expired}{}", fixture("app-key.pem")),
            String::new(),
            "app.pem: the certificate `CN=usersync-test` expired on",
        ),
    ] {
        let r = one_conf();
        write_pki(r.path());
        std::fs::write(r.path().join("other.key"), fixture("other-key.pem")).unwrap();
        let provider = certificate_provider(&r, "graph", None, &pem, &extra);
        let cfg = alert_config(&r, &provider, "");
        let mut r = r.global(&cfg).expect_exit(2).ignore_stderr().expect_file(SENDERS, None);
        let out = r.run();
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
        assert!(out.stderr.contains("usersync.toml") && out.stderr.contains("hint:"), "{}", out.stderr);
        assert!(r.sim.requests().is_empty(), "nothing contacted");
    }
}

#[test]
fn check_and_the_textfile_follow_a_providers_certificate_expiry() {
    use crate::certificates::{certificate, fixture, now, DAY};
    let not_after = now() + 10 * DAY;
    let cert = certificate("app-key.pem", not_after);
    let r = one_conf();
    write_pki(r.path());
    r.sim.state().directory.apps[0].certificate = Some(cert.clone());
    let provider = certificate_provider(&r, "graph", None, &format!("{cert}{}", fixture("app-key.pem")), "");
    let textfile = r.path().join("usersync.prom");
    let cfg = alert_config(&r, &provider, &format!("[metrics]\ntextfile = \"{}\"\n", textfile.display()));
    let mut r = r.global(&cfg).args(&["check"]).expect_exit(0).ignore_stderr();
    let out = r.run();
    let toml = r.path().join("usersync.toml");
    let label = format!("graph {}", r.sim.url());
    let line = out.stdout.lines().find(|l| l.contains("expires on")).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.starts_with("warning: ")
            && line.contains(&format!(
                "{}, [[alert.provider]] {label}: the certificate `CN=usersync-test` expires on",
                toml.display()
            )),
        "{line}"
    );

    let mut r = r.args(&[]).expect_file(SENDERS, Some("alice@example.com\ncarol@example.com\n"));
    r.run();
    let text = std::fs::read_to_string(&textfile).unwrap();
    let want = format!(
        "usersync_credential_expiry_timestamp_seconds{{provider=\"{label}\",config=\"{}\"}} {}",
        toml.display(),
        not_after - not_after.rem_euclid(DAY)
    );
    assert!(text.lines().any(|l| l == want), "{want}\n{text}");
}

/// Alert state is per instance: a run of a healthy instance says nothing about another that
/// still fails; only that instance's own success is its recovery.
#[test]
fn an_instance_recovers_only_by_its_own_success() {
    let r = one_conf()
        .group(SALES, vec![user("s1", Some("sam@example.com"), None, true)])
        .conf("ok", "sales", &format!("group_id = \"{SALES}\"\n"))
        .conf("bad", "gone", "group_id = \"0b0f1c3e-0000-4000-8000-00000000dead\"\n");
    write_pki(r.path());
    let smtp = Smtp::start(&[]);
    let cfg = alert_config(&r, &smtp_provider(1, smtp.port, "none", false), "");
    let mut r = r.global(&cfg).args(&["-i", "bad", "-i", "gw"]).expect_exit(1).ignore_stderr();
    r.run();
    assert_eq!(smtp.messages().len(), 1, "bad fails");
    let mut r = r.args(&["-i", "ok"]).expect_exit(0);
    r.run();
    assert_eq!(smtp.messages().len(), 1, "ok syncing is no recovery of bad");
    std::fs::remove_file(r.root().join("bad/config/entraid/gone.entraidconf")).unwrap();
    let mut r = r.conf("bad", "sales", &format!("group_id = \"{SALES}\"\n")).args(&["-i", "bad"]);
    r.run();
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[1].0.contains(": recovered: bad"), "{}", msgs[1].0);
}

/// Two runs of different instances end together: each one's alert state survives the
/// other's save (one lock spans load, alert and save).
#[test]
fn concurrent_runs_lose_no_alert_state() {
    for round in 0..8 {
        let r = one_conf().conf("a", "x", "group_id = \"0b0f1c3e-0000-4000-8000-00000000000a\"\n").conf(
            "b",
            "x",
            "group_id = \"0b0f1c3e-0000-4000-8000-00000000000b\"\n",
        );
        write_pki(r.path());
        let smtp = Smtp::start(&[]);
        let cfg = alert_config(&r, &smtp_provider(1, smtp.port, "none", false), "");
        let r = r.global(&cfg);
        let children: Vec<_> = ["a", "b"]
            .iter()
            .map(|i| {
                let mut c = r.command();
                c.args(["-i", i]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                c.spawn().unwrap()
            })
            .collect();
        for mut c in children {
            assert_eq!(c.wait().unwrap().code(), Some(1));
        }
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(r.path().join("state/state.json")).unwrap()).unwrap();
        for i in ["a", "b"] {
            assert_eq!(state["alerts"][i]["failing"], true, "round {round}: {i} lost: {state}");
        }
        assert_eq!(smtp.messages().len(), 2, "round {round}");
    }
}
