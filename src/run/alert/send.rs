//! Delivering one alert through one provider: SMTP (lettre, rustls), SMTP with
//! XOAUTH2, Graph sendMail, or SendGrid's Web API.

use lettre::message::header::{ContentType, MIME_VERSION_1_0};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

use super::Mail;
use crate::config::alert::{AlertConfig, Kind, Provider, Security};
use crate::config::global::HttpConfig;
use crate::error::Hint;
use crate::graph::GraphClient;

/// Sends `mail` through `p`; the error says why not, with a hint.
pub fn send(p: &Provider, cfg: &AlertConfig, http: &HttpConfig, mail: &Mail) -> Result<(), String> {
    match &p.kind {
        Kind::Smtp { host, port, security, auth } => {
            let auth = auth.as_ref().map(|(u, pw)| {
                (Credentials::new(u.clone(), pw.expose().to_owned()), vec![Mechanism::Plain, Mechanism::Login])
            });
            smtp(host, *port, *security, auth, cfg, http, mail, false)
        }
        Kind::SmtpOauth { host, port, security, username, credentials } => {
            let token = runtime_block(http, |client| async move { client.bearer(credentials).await })
                .map_err(|e| format!("{e}; hint: {}", e.hint().unwrap_or_default()))?;
            let auth = Some((Credentials::new(username.clone(), token.expose().to_owned()), vec![Mechanism::Xoauth2]));
            smtp(host, *port, *security, auth, cfg, http, mail, true)
        }
        Kind::Graph { credentials, graph } => {
            let message = serde_json::json!({
                "message": {
                    "subject": mail.subject,
                    "body": {"contentType": "Text", "content": mail.body},
                    "toRecipients": cfg.to.iter().map(|t| serde_json::json!({"emailAddress": {"address": t.as_str()}})).collect::<Vec<_>>(),
                },
                "saveToSentItems": false,
            });
            let from = cfg.from.as_str().to_owned();
            runtime_block(http, |client| async move { client.send_mail(credentials, graph, &from, &message).await })
                .map_err(|e| format!("{e}; hint: {}", graph_mail_hint(&e)))
        }
        Kind::SendGrid { api, key } => sendgrid(api, key, cfg, http, mail),
    }
}

/// `POST {api}/v3/mail/send` (SendGrid's documented v3 body); 202 Accepted is delivered.
/// Not retried: a 429 or 5xx fails over to the next provider at once, which beats an alert
/// waiting out a throttle. Every answer is logged, with the key masked should it echo.
fn sendgrid(
    api: &str,
    key: &crate::config::secret::Secret,
    cfg: &AlertConfig,
    http: &HttpConfig,
    mail: &Mail,
) -> Result<(), String> {
    let url = format!("{api}/v3/mail/send");
    let body = serde_json::json!({
        "personalizations": [{"to": cfg.to.iter().map(|t| serde_json::json!({"email": t.as_str()})).collect::<Vec<_>>()}],
        "from": {"email": cfg.from.as_str()},
        "subject": mail.subject,
        "content": [{"type": "text/plain", "value": mail.body}],
    });
    let answer = runtime_block(http, |client| {
        let url = url.clone();
        async move { client.post_json_once(&url, key, &body).await }
    });
    let mask = |text: &str| text.replace(key.expose(), "***");
    let (status, bytes) = match answer {
        Ok(a) => a,
        Err(e) => {
            let text = match e {
                crate::graph::FetchError::Exhausted { last, .. } => format!("{url}: no answer: {}", mask(&last)),
                e => mask(&e.to_string()),
            };
            tracing::info!(provider = "sendgrid", %url, error = %text, "SendGrid did not answer");
            return Err(format!("{text}; hint: check that this host reaches {api} (HTTPS_PROXY, firewall)"));
        }
    };
    let errors = sendgrid_errors(&bytes);
    let errors = mask(&errors);
    tracing::info!(provider = "sendgrid", %url, status, errors = %errors, "SendGrid answered");
    let hint = match status {
        202 => return Ok(()),
        401 => "SendGrid does not accept this API key (wrong, truncated or revoked): create one with the \"Mail Send\" permission under Settings > API Keys (Restricted Access, Mail Send: Full Access) and put it in api_key_file",
        403 => "the API key needs the \"Mail Send\" permission: create one under Settings > API Keys in SendGrid (Restricted Access, Mail Send: Full Access) and put it in api_key_file",
        400 => "check `from`: SendGrid sends only from a verified sender identity or an authenticated domain",
        _ => "SendGrid throttled (429) or failed (5xx): the next provider is tried",
    };
    Err(format!("{url} answered HTTP {status}: {errors}; hint: {hint}"))
}

/// The messages of a SendGrid error body (`{"errors": [{"message": …}]}`), or its first
/// bytes when it is something else.
fn sendgrid_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Message>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e.errors.into_iter().filter_map(|m| m.message).collect::<Vec<_>>().join("; "),
        Err(_) => crate::error::escape_controls(&String::from_utf8_lossy(&body[..body.len().min(200)])),
    }
}

fn graph_mail_hint(e: &crate::graph::FetchError) -> String {
    match e {
        crate::graph::FetchError::Graph { status: 403, .. } => {
            "grant the app the Microsoft Graph application permission Mail.Send, with admin consent".into()
        }
        _ => e.hint().unwrap_or_default(),
    }
}

fn runtime_block<T, F, Fut>(http: &HttpConfig, f: F) -> Result<T, crate::graph::FetchError>
where
    F: FnOnce(std::sync::Arc<GraphClient>) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::graph::FetchError>>,
{
    let client = std::sync::Arc::new(GraphClient::new(http)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::graph::FetchError::Internal(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(f(client))
}

#[allow(clippy::too_many_arguments)] // one call site per provider kind
fn smtp(
    host: &str,
    port: u16,
    security: Security,
    auth: Option<(Credentials, Vec<Mechanism>)>,
    cfg: &AlertConfig,
    http: &HttpConfig,
    mail: &Mail,
    oauth: bool,
) -> Result<(), String> {
    let tls = || {
        let mut b = TlsParameters::builder(host.to_owned());
        if let Some((_, pem)) = &http.ca_bundle {
            b = b.add_root_certificate(Certificate::from_pem(pem)?);
        }
        b.build_rustls()
    };
    let tls = match security {
        Security::StartTls => Tls::Required(tls().map_err(|e| smtp_error(&e, oauth))?),
        Security::Tls => Tls::Wrapper(tls().map_err(|e| smtp_error(&e, oauth))?),
        Security::None => Tls::None,
    };
    let mut t = SmtpTransport::builder_dangerous(host).port(port).tls(tls).timeout(Some(http.timeout));
    if let Some((c, m)) = auth {
        t = t.credentials(c).authentication(m);
    }
    let message = message(cfg, mail)?;
    t.build().send(&message).map(|_| ()).map_err(|e| smtp_error(&e, oauth))
}

fn message(cfg: &AlertConfig, mail: &Mail) -> Result<Message, String> {
    let mailbox =
        |e: &crate::model::normalize::Email| e.as_str().parse::<Mailbox>().map_err(|e| format!("bad address: {e}"));
    let now = crate::model::date::since_epoch();
    let domain = cfg.from.as_str().rsplit('@').next().unwrap_or("localhost");
    let mut b = Message::builder()
        .from(mailbox(&cfg.from)?)
        .subject(mail.subject.clone())
        .message_id(Some(format!(
            "<usersync.{}.{}.{}@{domain}>",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id()
        )))
        // RFC 2045 §4: Content-Type and Content-Transfer-Encoding mean something only
        // with MIME-Version; without it spam filters score the mail and some readers show
        // the quoted-printable body raw.
        .header(MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN);
    for t in &cfg.to {
        b = b.to(mailbox(t)?);
    }
    b.body(mail.body.clone()).map_err(|e| format!("cannot build the message: {e}"))
}

fn smtp_error(e: &lettre::transport::smtp::Error, oauth: bool) -> String {
    let code = e.status().map(|c| c.to_string());
    let hint = match code.as_deref() {
        Some("535") if oauth => "Exchange Online refused the token: register the app's service principal in Exchange Online (New-ServicePrincipal) and give it permission on the mailbox (Add-MailboxPermission / SMTP.SendAsApp)",
        Some("535") => "the SMTP server refused the username or password",
        _ if e.is_tls() => "the TLS handshake failed: check the host name, and add the server's CA to [http] ca_bundle if it is private",
        _ => "check host, port and security of this provider, and that this host may reach it",
    };
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    format!("{text}; hint: {hint}")
}
