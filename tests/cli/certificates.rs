//! Certificate credentials against the verifying simulator: the token request carries a
//! JWT-bearer client assertion the simulator checks against the registered certificate.
//! Certificates are made here with rcgen, from the throwaway keys in `tests/fixtures/pki/`.

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;

use crate::util::*;

const SYNCED: &str = "alice@example.com\ncarol@example.com\n";
pub const DAY: i64 = 86_400;

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/pki/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub fn now() -> i64 {
    usersync::model::date::now()
}

/// A self-signed certificate for the fixture key `key` with fixed validity dates
/// (2020-01-01 to 2999-12-31), for the tests where its dates do not matter: its bytes, and
/// so its thumbprint in a golden file, are the same on any day.
pub fn long_lived(key: &str) -> String {
    certificate_valid(key, 1_577_836_800, 32_503_593_600)
}

/// A self-signed certificate for the fixture key `key`, valid from 30 days ago until
/// `not_after` (Unix time, rounded down to the day).
pub fn certificate(key: &str, not_after: i64) -> String {
    certificate_valid(key, now() - 30 * DAY, not_after)
}

/// A self-signed certificate for the fixture key `key`, valid from `not_before` to
/// `not_after` (both rounded down to the day).
fn certificate_valid(key: &str, not_before: i64, not_after: i64) -> String {
    let kp = rcgen::KeyPair::from_pem_and_sign_algo(&fixture(key), &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["usersync-test".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "usersync-test");
    let ymd = |t: i64| {
        let d = usersync::model::date::format(t);
        let n = |r: std::ops::Range<usize>| d[r].parse::<u8>().unwrap();
        rcgen::date_time_ymd(d[..4].parse().unwrap(), n(5..7), n(8..10))
    };
    p.not_before = ymd(not_before);
    p.not_after = ymd(not_after);
    p.self_signed(&kp).unwrap().pem()
}

/// The SHA-256 thumbprint Entra calls `x5t#S256`.
fn thumbprint(cert_pem: &str) -> String {
    let (_, der) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der.contents))
}

/// The SHA-1 thumbprint in hex, as the Entra admin center lists a certificate, computed
/// here by `openssl x509 -fingerprint -sha1` as an operator would.
pub fn portal_thumbprint(dir: &std::path::Path, cert_pem: &str) -> String {
    let f = dir.join("portal.pem");
    std::fs::write(&f, cert_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // `SHA1 Fingerprint=AB:CD:...`
    text.trim().rsplit('=').next().unwrap().replace(':', "")
}

/// `gw` with one config using `app.pem` (certificate + key) from its entraid directory; the
/// simulator has `registered` on the app.
fn cert_run(registered: &str, file: &str, extra: &str) -> Run {
    let r = Run::new().group(STAFF, staff_members());
    r.sim.state().directory.apps[0].certificate = Some(registered.to_owned());
    let r = r.file("gw/config/entraid/app.pem", file);
    std::fs::set_permissions(r.root().join("gw/config/entraid/app.pem"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    r.conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nclient_certificate = \"app.pem\"\n{extra}"))
}

/// The client assertions of every token request the simulator saw.
fn assertions(r: &Run) -> Vec<(std::collections::HashMap<String, String>, String)> {
    r.sim
        .requests()
        .into_iter()
        .filter(|q| q.method == "POST")
        .map(|q| {
            let a = q.form.get("client_assertion").cloned().unwrap_or_default();
            (q.form, a)
        })
        .collect()
}

#[test]
fn a_certificate_signs_a_valid_jwt_bearer_assertion() {
    let cert = long_lived("app-key.pem");
    let mut r = cert_run(&cert, &format!("{cert}{}", fixture("app-key.pem")), "")
        .args(&["-vvv"])
        .expect_exit(0)
        .expect_file(SENDERS, Some(SYNCED));
    let out = r.run();
    let sent = assertions(&r);
    assert_eq!(sent.len(), 1);
    let (form, jwt) = &sent[0];
    assert_eq!(form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert_eq!(form["grant_type"], "client_credentials");
    assert!(!form.contains_key("client_secret"));
    // It parses as a JWT-bearer assertion, with the signature of the certificate's key.
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint(&cert).as_str()));
    let (_, der) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let x509 = der.parse_x509().unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&x509.public_key().subject_public_key.data);
    let token_url = format!("{}/{TENANT}/oauth2/v2.0/token", r.sim.url());
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
    v.set_audience(&[&token_url]);
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v).unwrap().claims;
    assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some(CLIENT), Some(CLIENT)));
    let (iat, nbf, exp) =
        (claims["iat"].as_i64().unwrap(), claims["nbf"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert!((now() - iat).abs() < 60 && nbf <= iat && exp > now() && exp - iat <= 600, "{claims}");
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36));
    // Neither the key nor the assertion is logged, even at -vvv.
    assert!(!out.stderr.contains(jwt.as_str()) && !out.stderr.contains("PRIVATE KEY"), "{}", out.stderr);
    // `usersync test` names the certificate an admin has to find in the portal.
    let sha1 = portal_thumbprint(r.path(), &cert);
    let out = r.args(&["test", "-i", "gw"]).expect_exit(0).run();
    assert_eq!(sha1.len(), 40, "{sha1}");
    let want = format!(
        "credential: certificate `CN=usersync-test`, thumbprint {sha1} (SHA-1, as the Entra admin center lists it), x5t#S256 {}, expires ",
        thumbprint(&cert)
    );
    assert!(out.stdout.contains(&want) && out.stdout.contains("token: ok"), "{}", out.stdout);
}

#[test]
fn a_separate_pkcs1_key_rs256_and_a_fresh_assertion_for_every_request() {
    let cert = long_lived("app-key.pem");
    let mut r = cert_run(&cert, &cert, "client_key = \"app-key-pkcs1.pem\"\nassertion_algorithm = \"RS256\"\n")
        .file("gw/config/entraid/app-key-pkcs1.pem", &fixture("app-key-pkcs1.pem"));
    // The first token request meets a 503; the retry must sign anew.
    r.sim.state().token_faults.push(Fault::Status { status: 503, retry_after: Some("0".into()), body: String::new() });
    r = r.expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    r.run();
    let sent: Vec<String> = assertions(&r).into_iter().map(|(_, a)| a).collect();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1], "an assertion is never reused");
    let jti = |a: &str| {
        let claims = a.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    assert_ne!(jti(&sent[0]), jti(&sent[1]));
    assert_eq!(jsonwebtoken::decode_header(&sent[1]).unwrap().alg, jsonwebtoken::Algorithm::RS256);
}

#[test]
fn an_unregistered_key_is_aadsts700027_with_a_hint() {
    let registered = long_lived("app-key.pem");
    let ours = long_lived("other-key.pem");
    let mut r = cert_run(&registered, &ours, "client_key = \"other.pem\"\n")
        .file("gw/config/entraid/other.pem", &fixture("other-key.pem"))
        .file(SENDERS, "old@example.com\n")
        .expect_exit(1)
        .expect_file(SENDERS, Some("old@example.com\n"));
    let out = r.run();
    assert!(out.stderr.contains("AADSTS700027"), "{}", out.stderr);
    assert!(out.stderr.contains(&thumbprint(&ours)), "Entra names the key that was used: {}", out.stderr);
    assert!(out.stderr.contains("staff.entraidconf"), "names the config: {}", out.stderr);
    assert!(out.stderr.contains("hint: Entra ID did not accept the client assertion's signature"), "{}", out.stderr);
}

#[test]
fn a_host_clock_far_behind_is_aadsts700024() {
    let cert = long_lived("app-key.pem");
    let mut r =
        cert_run(&cert, &format!("{cert}{}", fixture("app-key.pem")), "").expect_exit(1).expect_file(SENDERS, None);
    r.sim.state().clock_ahead = 3600;
    let out = r.run();
    assert!(
        out.stderr.contains("AADSTS700024") && out.stderr.contains("not within its valid time range"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("clock"), "{}", out.stderr);
}

#[test]
fn certificate_configuration_errors_stop_the_run() {
    let cert = long_lived("app-key.pem");
    for (extra, key_file, want) in [
        ("client_secret = \"x\"\n", None, "both a client secret and a certificate"),
        ("client_key = \"k.pem\"\n", Some(fixture("other-key.pem")), "does not belong to the certificate"),
        ("", None, "no private key was found"),
        ("assertion_algorithm = \"HS256\"\n", None, "unknown algorithm `HS256`"),
        (
            "client_key = \"k.pem\"\n",
            Some("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".into()),
            "encrypted key",
        ),
    ] {
        let mut r = cert_run(&cert, &cert, extra);
        if let Some(k) = &key_file {
            r = r.file("gw/config/entraid/k.pem", k);
        }
        r = r.expect_exit(2).expect_file(SENDERS, None);
        let out = r.run();
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
        assert!(out.stderr.contains("staff.entraidconf") && out.stderr.contains("hint:"), "{}", out.stderr);
        assert_eq!(r.token_requests(), 0, "nothing contacted");
    }
}

#[test]
fn a_certificate_from_a_systemd_credential() {
    let cert = long_lived("app-key.pem");
    let r = Run::new().group(STAFF, staff_members());
    r.sim.state().directory.apps[0].certificate = Some(cert.clone());
    let creds = r.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("gw-cert"), format!("{cert}{}", fixture("app-key.pem"))).unwrap();
    let mut r = r
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nclient_certificate_credential = \"gw-cert\"\n"))
        .env("CREDENTIALS_DIRECTORY", &creds.display().to_string())
        .expect_exit(0)
        .expect_file(SENDERS, Some(SYNCED));
    r.run();
}

#[test]
fn check_warns_before_a_certificate_expires_and_fails_after() {
    let soon = certificate("app-key.pem", now() + 10 * DAY);
    let mut r = cert_run(&soon, &format!("{soon}{}", fixture("app-key.pem")), "").args(&["check"]).expect_exit(0);
    let out = r.run();
    let line = out.stdout.lines().chain(out.stderr.lines()).find(|l| l.contains("expires on")).unwrap_or_else(|| {
        panic!("no expiry warning\n{}\n{}", out.stdout, out.stderr);
    });
    assert!(
        line.contains("warning") && line.contains("usersync-test") && line.contains("in 9 days")
            || line.contains("in 10 days"),
        "{line}"
    );

    let later = certificate("app-key.pem", now() + 90 * DAY);
    let mut r = cert_run(&later, &format!("{later}{}", fixture("app-key.pem")), "").args(&["check"]).expect_exit(0);
    let out = r.run();
    assert!(!out.stdout.contains("expires") && !out.stderr.contains("expires"), "{}{}", out.stdout, out.stderr);
    // A key others can read is a warning, as a secret is.
    std::fs::set_permissions(r.root().join("gw/config/entraid/app.pem"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let out = r.expect_exit(0).run();
    assert!(out.stdout.contains("app.pem holds a private key and is readable by group or others"), "{}", out.stdout);

    let past = certificate("app-key.pem", now() - 2 * DAY);
    let mut r = cert_run(&past, &format!("{past}{}", fixture("app-key.pem")), "").args(&["check"]).expect_exit(2);
    let out = r.run();
    assert!(format!("{}{}", out.stdout, out.stderr).contains("expired on"), "{}{}", out.stdout, out.stderr);
    assert_eq!(r.token_requests(), 0);

    // A secret's expiry, when the admin records it.
    let date = usersync::model::date::format(now() + 5 * DAY);
    let mut r = one_conf()
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\nclient_secret_expires = \"{date}\"\n"))
        .args(&["check"])
        .expect_exit(0);
    let out = r.run();
    assert!(
        format!("{}{}", out.stdout, out.stderr)
            .contains(&format!("the client secret (client_secret_expires) expires on {date}")),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn the_textfile_exports_credential_expiry() {
    let not_after = now() + 200 * DAY;
    let cert = certificate("app-key.pem", not_after);
    let prom = "usersync.prom";
    let r = cert_run(&cert, &format!("{cert}{}", fixture("app-key.pem")), "");
    let textfile = r.path().join(prom);
    let mut r = r
        .conf("gw", "sales", &format!("group_id = \"{SALES}\"\nclient_secret_expires = \"2027-05-01\"\n"))
        .group(SALES, vec![])
        .global(&format!("[metrics]\ntextfile = \"{}\"\n", textfile.display()))
        // Two groups: their INFO lines come in the order the fetches end.
        .args(&["--force", "-q"])
        .expect_exit(0);
    r.run();
    let text = std::fs::read_to_string(textfile).unwrap();
    let line = |config: &str| {
        text.lines()
            .find(|l| l.starts_with("usersync_credential_expiry_timestamp_seconds{") && l.contains(config))
            .unwrap_or_else(|| panic!("no expiry for {config}:\n{text}"))
            .to_owned()
    };
    let cert_line = line("staff.entraidconf");
    assert!(cert_line.contains("instance=\"gw\""), "{cert_line}");
    let value: i64 = cert_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, not_after - not_after.rem_euclid(DAY), "midnight UTC of the certificate's last day");
    assert!(line("sales.entraidconf").ends_with(" 1809129600"), "{text}");
}

#[test]
fn an_unknown_tenant_in_the_global_cloud_suggests_a_national_cloud() {
    let unknown = "contoso.onmicrosoft.us";
    let mut r =
        one_conf().conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ntenant_id = \"{unknown}\"\n")).expect_exit(1);
    let out = r.run();
    assert!(out.stderr.contains("AADSTS90002"), "{}", out.stderr);
    assert!(out.stderr.contains("this tenant may be in a national cloud: set `cloud`"), "{}", out.stderr);

    let mut r = one_conf()
        .conf("gw", "staff", &format!("group_id = \"{STAFF}\"\ntenant_id = \"{unknown}\"\ncloud = \"usgov\"\n"))
        .expect_exit(1);
    let out = r.run();
    assert!(out.stderr.contains("AADSTS90002") && !out.stderr.contains("national cloud"), "{}", out.stderr);
}

#[test]
fn an_expired_or_not_yet_valid_certificate_fails_its_config_before_anything_is_sent() {
    let day = |t: i64| usersync::model::date::format(t);
    let (start, end) = (now() - 40 * DAY, now() - 3 * DAY);
    let expired = certificate_valid("app-key.pem", start, end);
    let (later, later_end) = (now() + 5 * DAY, now() + 400 * DAY);
    let future = certificate_valid("app-key.pem", later, later_end);
    let cause = [
        (&expired, format!("expired on {} (valid from {} to {})", day(end), day(start), day(end)), "create a new certificate, upload it under App registrations > the app > Certificates & secrets, and point client_certificate at it"),
        (&future, format!("is not valid yet (valid from {} to {})", day(later), day(later_end)), "check this host's clock (timedatectl; NTP must be synchronised), or use the certificate from its first day"),
    ];
    for (cert, what, hint) in cause {
        let mut r = cert_run(cert, &format!("{cert}{}", fixture("app-key.pem")), "")
            .file(SENDERS, "old@example.com\n")
            .expect_exit(2)
            .expect_file(SENDERS, Some("old@example.com\n"));
        let dir = "{root}/gw/config/entraid";
        r = r.expect_stderr(&format!(
            "error: instance `gw`: {dir}/staff.entraidconf: {dir}/app.pem: the certificate `CN=usersync-test` {what}; nothing was sent with it\nhint: {hint}\n"
        ));
        r.run();
        assert_eq!(r.sim.requests().len(), 0, "nothing sent");
    }
}

#[test]
fn entras_answer_for_an_expired_key_has_its_own_hint() {
    // Valid here for one more day; Entra's clock is two days ahead, so for it the
    // registered certificate has expired.
    let cert = certificate("app-key.pem", now() + DAY);
    // The thumbprint in Entra's answer changes with every certificate made.
    let mut r = cert_run(&cert, &format!("{cert}{}", fixture("app-key.pem")), "")
        .expect_exit(1)
        .expect_file(SENDERS, None)
        .ignore_stderr();
    r.sim.state().clock_ahead = 2 * DAY;
    let out = r.run();
    assert!(out.stderr.contains("AADSTS700027") && out.stderr.contains("The key used is expired"), "{}", out.stderr);
    assert!(
        out.stderr.contains("hint: the certificate registered on the app has expired in Entra ID"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("upload this certificate (the public part"), "{}", out.stderr);
}

#[test]
fn only_a_file_holding_a_key_is_warned_about_its_mode() {
    let cert = long_lived("app-key.pem");
    let r =
        cert_run(&cert, &cert, "client_key = \"app.key\"\n").file("gw/config/entraid/app.key", &fixture("app-key.pem"));
    let (cert_file, key_file) =
        (r.root().join("gw/config/entraid/app.pem"), r.root().join("gw/config/entraid/app.key"));
    let mode = |f: &std::path::Path, m: u32| std::fs::set_permissions(f, std::fs::Permissions::from_mode(m)).unwrap();
    // A certificate is public: world-readable is fine.
    mode(&cert_file, 0o644);
    mode(&key_file, 0o600);
    let mut r = r.expect_exit(0).expect_file(SENDERS, Some(SYNCED));
    let out = r.run();
    assert!(!out.stderr.contains("readable by group or others"), "{}", out.stderr);
    let mut r = r.args(&["check"]);
    let out = r.run();
    assert!(!out.stdout.contains("readable by group or others"), "{}", out.stdout);
    // The key is not.
    mode(&key_file, 0o640);
    let out = r.run();
    let want = format!("{} holds a private key and is readable by group or others (mode 0640)", key_file.display());
    assert!(out.stdout.contains(&want) && !out.stdout.contains("app.pem holds"), "{}", out.stdout);
    let mut r = r.args(&["--force"]);
    let out = r.run();
    assert!(out.stderr.contains(&want), "a run warns too: {}", out.stderr);
}
