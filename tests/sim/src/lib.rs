//! A local simulator of the Entra ID token endpoint and Microsoft Graph's group
//! member listing, on 127.0.0.1, for usersync's tests, demo and benchmarks.
//!
//! It answers like the real services (same JSON shapes, paging by
//! `@odata.nextLink`, `$select`, AADSTS errors) and can inject faults per page:
//! statuses with `Retry-After`, token revocation, mangled bodies. It records
//! every request so that tests can assert what usersync sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod delta;
mod tls;
pub use tls::{Proxy, TestPki};

/// An app registration the token endpoint accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct App {
    /// Tenant id (GUID or domain), lower case.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// The secret's value.
    pub client_secret: String,
    /// Graph hides user attributes (no `User.Read.All`).
    #[serde(default)]
    pub limited: bool,
    /// A registered certificate (PEM): client assertions signed with its key are accepted.
    #[serde(default)]
    pub certificate: Option<String>,
}

/// The simulated directory: apps and groups.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Directory {
    /// Registered apps.
    pub apps: Vec<App>,
    /// Group id → direct members (full JSON objects with `@odata.type` and `id`).
    pub groups: BTreeMap<String, Vec<Value>>,
    /// Users of the tenant in none of the groups (their changes show in `users/delta`).
    #[serde(default)]
    pub users: Vec<Value>,
}

/// What to do instead of answering normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status, with an optional `Retry-After`, and a body.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header value.
        retry_after: Option<String>,
        /// Body.
        body: String,
    },
    /// Invalidate every token issued so far, then answer normally (so the
    /// request itself gets 401 `InvalidAuthenticationToken`).
    RevokeTokens,
    /// Answer 200 with this raw body.
    Body(String),
    /// Wait this long, then answer normally (a stalled connection).
    Stall(Duration),
    /// Answer normally, but with an `@odata.nextLink` to this (earlier) page: a page loop.
    LoopTo(usize),
    /// A delta reset: `410 Gone` with a `Location` of the initial query.
    Gone,
    /// Answer normally (in a fault list, to reach the request after it).
    Pass,
}

/// A fault on a members page: page `page` (0-based) of any group, the next `times` requests.
#[derive(Clone, Debug)]
pub struct PageFault {
    /// Page index.
    pub page: usize,
    /// How many requests of that page it hits.
    pub times: usize,
    /// What happens.
    pub fault: Fault,
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it arrived.
    pub at: Instant,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path.
    pub path: String,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// Decoded form fields (token requests).
    pub form: HashMap<String, String>,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// `Accept-Encoding` header.
    pub accept_encoding: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Members page index, if a members request.
    pub page: Option<usize>,
}

/// Mutable simulator state.
#[derive(Debug, Default)]
pub struct State {
    /// The directory served.
    pub directory: Directory,
    /// Members per page (`$top` is honoured when smaller).
    pub page_size: usize,
    /// Faults on members pages.
    pub page_faults: Vec<PageFault>,
    /// Faults on the token endpoint, in order, one per request.
    pub token_faults: Vec<Fault>,
    /// Every request.
    pub requests: Vec<Request>,
    /// Delay before every members answer (a slow network).
    pub latency: Duration,
    /// Extra delay before every members answer of one group.
    pub group_latency: HashMap<String, Duration>,
    /// Delay before every `users/delta` answer (a users round stalled past the deadline).
    pub users_delta_latency: Duration,
    /// `users/delta` pages say this `@odata.context` instead (`Some("")`: none at all).
    pub users_delta_context: Option<String>,
    /// Groups that `groups/delta` says are deleted (`@removed` on the group object).
    pub deleted_groups: std::collections::HashSet<String>,
    /// Every Graph answer says the app has used this share of its throttling limit
    /// (`x-ms-throttle-limit-percentage`), as Graph does from 0.8 on.
    pub throttle_limit: Option<String>,
    /// The `x-ms-throttle-priority` of each Graph request, in order (`None`: not sent).
    pub throttle_priorities: Vec<Option<String>>,
    /// `sendMail` requests accepted: (from, JSON body).
    pub sent_mail: Vec<(String, Value)>,
    /// SendGrid `POST /v3/mail/send` bodies accepted.
    pub sendgrid_mail: Vec<Value>,
    /// Statuses the next SendGrid requests answer, one each, before any check (429, 500 …).
    pub sendgrid_faults: Vec<u16>,
    /// The `Authorization` header of every SendGrid request.
    pub sendgrid_auth: Vec<String>,
    /// Requests that came before the `Retry-After` of an earlier answer for the same page.
    pub early_retries: usize,
    /// Seconds the token endpoint's clock is ahead of this host's (judging assertions).
    pub clock_ahead: i64,
    /// `jti`s of the client assertions accepted so far.
    pub assertion_ids: Vec<String>,
    /// Graph requests (plain pages and batches) being answered now.
    pub in_flight: usize,
    /// The most Graph requests answered at once.
    pub max_in_flight: usize,
    /// The number of pages in each `$batch` request, in order.
    pub batch_sizes: Vec<usize>,
    /// Answer every `$batch` request with this status (as a proxy blocking batches would).
    pub batch_status: Option<u16>,
    /// Faults on the next Graph requests of any kind (members pages, delta rounds,
    /// lookups), in order, one per request; before `page_faults` and `delta_faults`.
    pub graph_faults: Vec<Fault>,
    /// Faults on delta and lookup requests, in order, one per request.
    pub delta_faults: Vec<Fault>,
    /// Entries a delta page holds (0: 200).
    pub delta_page_size: usize,
    /// Delta tokens of versions before this are expired (`400 syncStateNotFound`).
    pub expired_before: usize,
    /// Delta rounds start this many versions before their token: the changes come again.
    pub replay: usize,
    /// Every delta round starts with an empty page that carries a nextLink.
    pub empty_delta_pages: bool,
    /// `getByIds` answers Graph's default user set, without `accountEnabled`.
    pub getbyids_ignores_select: bool,
    /// Delta rounds see no change (as when a change has not replicated to the replica that
    /// answers): only a full read sees the directory as it is.
    pub delta_blind: bool,
    /// `/_sim/change` calls so far.
    changes: usize,
    /// The directory may have changed since the last snapshot: set by every mutable use
    /// of [`Sim::state`] and by `/_sim/change`, so that delta requests do not copy a large
    /// directory each time.
    pub(crate) dirty: bool,
    snapshots: Vec<delta::Snapshot>,
    rounds: HashMap<String, Arc<Vec<Value>>>,
    not_before: HashMap<(String, usize), Instant>,
    /// Tokens issued and still valid, with their app.
    tokens: HashMap<String, App>,
    issued: u64,
    base: String,
}

/// A running simulator; stops when dropped.
pub struct Sim {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

type Shared = Arc<Mutex<State>>;

/// The simulator's state, locked; a mutable use marks the directory as possibly changed.
pub struct StateGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.dirty = true;
        &mut self.0
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sim {
    /// Starts on 127.0.0.1 with an OS-chosen port, in a thread of its own.
    pub fn start(directory: Directory) -> std::io::Result<Self> {
        Self::start_on(directory, 0)
    }

    /// Starts on 127.0.0.1:`port` (0: any free port).
    pub fn start_on(directory: Directory, port: u16) -> std::io::Result<Self> {
        Self::serve(directory, port, None)
    }

    /// Starts with HTTPS, as `https://localhost:PORT`, presenting a certificate of `pki`'s CA.
    pub fn start_tls(directory: Directory, pki: &TestPki) -> std::io::Result<Self> {
        Self::serve(directory, 0, Some(pki.acceptor.clone()))
    }

    /// Starts with HTTPS on 127.0.0.1:`port` (0: any free port), presenting a certificate of
    /// `pki`'s CA.
    pub fn start_tls_on(directory: Directory, port: u16, pki: &TestPki) -> std::io::Result<Self> {
        Self::serve(directory, port, Some(pki.acceptor.clone()))
    }

    /// The base URL its `@odata.nextLink`s and token URLs name, instead of its own address:
    /// `https://graph.microsoft.com` where that name leads here (an `/etc/hosts` entry).
    pub fn set_public_url(&self, url: &str) {
        lock(&self.state).base = url.trim_end_matches('/').to_owned();
    }

    fn serve(directory: Directory, port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (scheme, host) =
            if tls.is_some() { ("https", format!("localhost:{}", addr.port())) } else { ("http", addr.to_string()) };
        let state = Arc::new(Mutex::new(State {
            directory,
            page_size: 999,
            base: format!("{scheme}://{host}"),
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        std::thread::Builder::new().name("usersync-sim".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("usersync-sim: {e}"),
            };
            rt.block_on(async move {
                let Ok(tcp) = tokio::net::TcpListener::from_std(listener) else { return };
                let stopped = async move {
                    let _ = stopped.await;
                };
                let _ = match tls {
                    None => axum::serve(tcp, app).with_graceful_shutdown(stopped).await,
                    Some(acceptor) => {
                        axum::serve(tls::TlsListener { tcp, acceptor }, app).with_graceful_shutdown(stopped).await
                    }
                };
            });
        })?;
        Ok(Self { addr, scheme, state, _stop: stop })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        if self.scheme == "https" {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state, locked: change the directory, add faults, read requests.
    pub fn state(&self) -> StateGuard<'_> {
        StateGuard(lock(&self.state))
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/groups/delta", get(delta_get))
        .route("/v1.0/users/delta", get(delta_get))
        .route("/v1.0/users", get(delta_get))
        .route("/v1.0/directoryObjects/getByIds", post(delta_post))
        .route("/v1.0/groups/{id}/{relation}", get(members))
        .route("/v1.0/$batch", post(batch))
        .route("/v1.0/users/{from}/sendMail", post(send_mail))
        .route("/v3/mail/send", post(sendgrid_send))
        .route("/_sim/token", get(check_token))
        .route("/_sim/change", post(change))
        .fallback(|| async {
            graph_error(404, "UnknownError", "No HTTP resource was found that matches the request URI.")
        })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), throttling))
        .with_state(state)
        .layer(tower_http::compression::CompressionLayer::new().quality(tower_http::CompressionLevel::Fastest))
}

/// Graph's throttling headers: notes each Graph request's priority, and adds the share of
/// the limit used to its answer when the test set one.
async fn throttling(
    AxState(state): AxState<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let graph = req.uri().path().starts_with("/v1.0/");
    if graph {
        let priority = req.headers().get("x-ms-throttle-priority").and_then(|v| v.to_str().ok()).map(str::to_owned);
        lock(&state).throttle_priorities.push(priority);
    }
    let mut resp = next.run(req).await;
    let share = lock(&state).throttle_limit.clone();
    if let (true, Some(v)) = (graph, share.and_then(|s| s.parse().ok())) {
        resp.headers_mut().insert("x-ms-throttle-limit-percentage", v);
    }
    resp
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message, "innerError": {"date": "2026-11-23T12:00:00", "request-id": "00000000-0000-0000-0000-000000000000"}}}),
    )
}

/// A token-endpoint error in Entra ID's shape.
impl Fault {
    /// The HTTP status it answers with.
    fn status(&self) -> u16 {
        match self {
            Self::Status { status, .. } => *status,
            _ => 200,
        }
    }
}

pub fn aad_error(status: u16, error: &str, code: u64, text: &str) -> Fault {
    Fault::Status {
        status,
        retry_after: None,
        body: json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-11-23 12:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-11-23 12:00:00Z",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })
        .to_string(),
    }
}

fn fault_response(f: &Fault) -> Response {
    match f {
        Fault::Status { status, retry_after, body } => {
            let mut r = json_response(*status, &Value::Null);
            *r.body_mut() = body.clone().into();
            if let Some(ra) = retry_after {
                if let Ok(v) = ra.parse() {
                    r.headers_mut().insert("retry-after", v);
                }
            }
            r
        }
        Fault::Body(b) => (StatusCode::OK, [("content-type", "application/json")], b.clone()).into_response(),
        Fault::RevokeTokens | Fault::Stall(_) | Fault::LoopTo(_) | Fault::Gone | Fault::Pass => {
            graph_error(500, "SimulatorBug", "this fault is handled before answering")
        }
    }
}

async fn token(
    AxState(state): AxState<Shared>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = lock(&state);
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (status, resp) = if s.token_faults.is_empty() {
        let tenant = tenant.to_ascii_lowercase();
        let app = s.directory.apps.iter().find(|a| a.tenant == tenant && a.client_id == field("client_id")).cloned();
        let known_tenant = s.directory.apps.iter().any(|a| a.tenant == tenant);
        if field("grant_type") != "client_credentials" {
            (
                400,
                fault_response(&aad_error(
                    400,
                    "unsupported_grant_type",
                    70003,
                    "The app requested an unsupported grant type.",
                )),
            )
        } else if !known_tenant {
            (400, fault_response(&aad_error(400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found."))))
        } else if let Some(app) = app {
            let assertion = if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
                let url = format!("{}/{tenant}/oauth2/v2.0/token", s.base);
                Some(verify_assertion(&app, &form, &url, s.clock_ahead, &s.assertion_ids))
            } else {
                None
            };
            if let Some(Err(f)) = assertion {
                (f.status(), fault_response(&f))
            } else if assertion.is_none() && app.client_secret != field("client_secret") {
                (401, fault_response(&aad_error(401, "invalid_client", 7_000_215, "Invalid client secret provided.")))
            } else if !field("scope").ends_with("/.default") {
                (
                    400,
                    fault_response(&aad_error(
                        400,
                        "invalid_scope",
                        70011,
                        "The provided value for the input parameter 'scope' is not valid.",
                    )),
                )
            } else {
                if let Some(Ok(jti)) = assertion {
                    s.assertion_ids.push(jti);
                }
                s.issued += 1;
                let t =
                    format!("sim-access-token-{}-{:x}", s.issued, Instant::now().elapsed().as_nanos() ^ 0x5eed_cafe);
                s.tokens.insert(t.clone(), app);
                (
                    200,
                    json_response(
                        200,
                        &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t}),
                    ),
                )
            }
        } else {
            (
                400,
                fault_response(&aad_error(
                    400,
                    "unauthorized_client",
                    700_016,
                    "Application was not found in the directory.",
                )),
            )
        }
    } else {
        let f = s.token_faults.remove(0);
        let status = match &f {
            Fault::Status { status, .. } => *status,
            _ => 200,
        };
        (status, fault_response(&f))
    };
    s.requests.push(Request {
        at: Instant::now(),
        method: "POST",
        path: format!("/{tenant}/oauth2/v2.0/token"),
        query: HashMap::new(),
        form,
        authorization: None,
        accept_encoding: None,
        status,
        page: None,
    });
    resp
}

/// Checks a JWT-bearer client assertion as Entra ID does: the key (`x5t#S256` of the
/// registered certificate, which must not have expired), the signature, `aud` (the exact
/// token URL), `iss` = `sub` =
/// the client id, the time range (at most 10 minutes) and a fresh `jti`. Gives the `jti`,
/// or the error Entra ID answers.
fn verify_assertion(
    app: &App,
    form: &HashMap<String, String>,
    token_url: &str,
    clock_ahead: i64,
    seen: &[String],
) -> Result<String, Fault> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let invalid = |why: &str| {
        aad_error(400, "invalid_client", 50027, &format!("JWT token is invalid or malformed. [Reason - {why}]"))
    };
    let bad_signature = |why: &str| {
        aad_error(
            401,
            "invalid_client",
            700_027,
            &format!("Client assertion failed signature validation. [Reason - {why}]"),
        )
    };
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err(invalid("client_assertion_type is not jwt-bearer"));
    }
    if form.contains_key("client_secret") {
        return Err(invalid("both client_secret and client_assertion were sent"));
    }
    let jwt = form.get("client_assertion").map(String::as_str).unwrap_or_default();
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| invalid(&format!("the assertion is not a JWT: {e}")))?;
    if !matches!(header.alg, Algorithm::PS256 | Algorithm::RS256) || header.typ.as_deref() != Some("JWT") {
        return Err(invalid("alg must be PS256 or RS256 and typ JWT"));
    }
    let Some(pem) = &app.certificate else { return Err(bad_signature("The key was not found.")) };
    let (_, cert) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad_signature("bad certificate"))?;
    let thumbprint = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ring::digest::digest(&ring::digest::SHA256, &cert.contents),
    );
    if header.x5t_s256.as_deref() != Some(thumbprint.as_str()) {
        return Err(bad_signature(&format!(
            "The key was not found., Thumbprint of key used by client: '{}'",
            header.x5t_s256.unwrap_or_default()
        )));
    }
    let x509 = cert.parse_x509().map_err(|_| bad_signature("bad certificate"))?;
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs())
            .unwrap_or(i64::MAX)
            + clock_ahead;
    // Entra keeps an expired certificate on the app, and answers this for it.
    if x509.validity().not_after.timestamp() < now {
        return Err(bad_signature(&format!(
            "The key used is expired., Thumbprint of key used by client: '{}'",
            header.x5t_s256.unwrap_or_default()
        )));
    }
    let key = DecodingKey::from_rsa_der(&x509.public_key().subject_public_key.data);
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v)
        .map_err(|_| bad_signature("The signature does not match the registered certificate."))?
        .claims;
    let number = |k: &str| claims.get(k).and_then(Value::as_i64);
    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    if text("aud") != token_url {
        return Err(invalid(&format!("aud '{}' is not the token endpoint '{token_url}'", text("aud"))));
    }
    if text("iss") != app.client_id || text("sub") != app.client_id {
        return Err(invalid("iss and sub must be the client id"));
    }
    let (Some(exp), Some(nbf)) = (number("exp"), number("nbf").or(number("iat"))) else {
        return Err(invalid("exp and nbf are required"));
    };
    if exp <= now || nbf > now + 60 {
        return Err(aad_error(401, "invalid_client", 700_024, "Client assertion is not within its valid time range."));
    }
    if exp - nbf > 600 {
        return Err(invalid("the assertion is valid for more than 10 minutes"));
    }
    let jti = text("jti");
    if jti.is_empty() || seen.contains(&jti) {
        return Err(invalid("jti is missing or was used before"));
    }
    Ok(jti)
}

/// `GET /_sim/token?t=TOKEN`: 200 if the simulator issued TOKEN and it is still valid
/// (lets the SMTP test server check XOAUTH2 bearer tokens).
async fn check_token(AxState(state): AxState<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let valid = q.get("t").is_some_and(|t| lock(&state).tokens.contains_key(t));
    let status = if valid { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    status.into_response()
}

/// `POST /v1.0/users/{from}/sendMail`: records the message, answers 202 like Graph.
async fn send_mail(
    AxState(state): AxState<Shared>,
    Path(from): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = lock(&state);
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|a| a.strip_prefix("Bearer "));
    if !token.is_some_and(|t| s.tokens.contains_key(t)) {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) if v["message"]["toRecipients"].is_array() => {
            s.sent_mail.push((from, v));
            StatusCode::ACCEPTED.into_response()
        }
        _ => graph_error(400, "ErrorInvalidRequest", "The message is not valid."),
    }
}

/// The SendGrid API key the simulator accepts for Mail Send.
pub const SENDGRID_KEY: &str = "SG.sim-mail-send.3c1d9a0e7b5f4e2a8d6c";
/// A valid SendGrid key without the Mail Send permission (answered 403).
pub const SENDGRID_READ_ONLY_KEY: &str = "SG.sim-read-only.9f8e7d6c5b4a3f2e1d0c";

/// A SendGrid error answer: `{"errors": [{"message", "field", "help"}]}`.
fn sendgrid_error(status: u16, message: &str, field: Option<&str>) -> Response {
    json_response(status, &json!({"errors": [{"message": message, "field": field, "help": null}]}))
}

/// `POST /v3/mail/send` as SendGrid's v3 Web API answers it: the key first, then the
/// body's documented shape (`personalizations[].to[].email`, `from.email`, `subject`,
/// `content[]` with `text/plain` first); 202 and an empty body when it is sent.
async fn sendgrid_send(AxState(state): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut s = lock(&state);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    s.sendgrid_auth.push(auth.clone());
    if !s.sendgrid_faults.is_empty() {
        let status = s.sendgrid_faults.remove(0);
        return sendgrid_error(status, "simulated failure", None);
    }
    match auth.strip_prefix("Bearer ") {
        Some(SENDGRID_KEY) => {}
        Some(SENDGRID_READ_ONLY_KEY) => return sendgrid_error(403, "access forbidden", None),
        _ => return sendgrid_error(401, "The provided authorization grant is invalid, expired, or revoked", None),
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return sendgrid_error(400, "Bad Request", None);
    };
    let address = |a: &Value| a["email"].as_str().is_some_and(|e| e.contains('@') && !e.contains(char::is_whitespace));
    let personalizations = v["personalizations"].as_array().filter(|p| !p.is_empty());
    let Some(personalizations) = personalizations else {
        return sendgrid_error(
            400,
            "The personalizations field is required and must have at least one personalization.",
            Some("personalizations"),
        );
    };
    for p in personalizations {
        let to = p["to"].as_array().filter(|t| !t.is_empty());
        if !to.is_some_and(|t| t.iter().all(address)) {
            return sendgrid_error(
                400,
                "Each personalization needs a to array of email objects.",
                Some("personalizations.0.to"),
            );
        }
    }
    if !address(&v["from"]) {
        return sendgrid_error(400, "The from object must be provided for every email send.", Some("from"));
    }
    if v["subject"].as_str().is_none_or(str::is_empty) {
        return sendgrid_error(400, "The subject is required.", Some("subject"));
    }
    let content = v["content"].as_array().filter(|c| !c.is_empty());
    let plain_first = content.is_some_and(|c| {
        c[0]["type"] == "text/plain" && c.iter().all(|p| p["type"].is_string() && p["value"].is_string())
    });
    if !plain_first {
        return sendgrid_error(400, "The content value must be a string, with text/plain first.", Some("content"));
    }
    s.sendgrid_mail.push(v);
    StatusCode::ACCEPTED.into_response()
}

fn select(obj: &Value, fields: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    let is_user = obj["@odata.type"] == "#microsoft.graph.user";
    for k in ["@odata.type", "id"] {
        if let Some(v) = obj.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    for f in fields {
        match obj.get(*f) {
            Some(v) => {
                out.insert((*f).into(), v.clone());
            }
            None if is_user => {
                out.insert((*f).into(), Value::Null);
            }
            None => {}
        }
    }
    Value::Object(out)
}

fn transitive(dir: &Directory, id: &str, seen: &mut HashSet<String>, out: &mut Vec<Value>) {
    for m in dir.groups.get(id).into_iter().flatten() {
        let mid = m["id"].as_str().unwrap_or_default().to_owned();
        if !seen.insert(mid.clone()) {
            continue;
        }
        out.push(m.clone());
        if m["@odata.type"] == "#microsoft.graph.group" {
            transitive(dir, &mid, seen, out);
        }
    }
}

async fn members(
    AxState(state): AxState<Shared>,
    Path((id, relation)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let _counted = InFlight::new(&state);
    member_page(&state, id, relation, q, headers).await
}

async fn delta_get(
    AxState(state): AxState<Shared>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let _counted = InFlight::new(&state);
    delta_request(&state, "GET", uri.path().to_owned(), q, headers, String::new()).await
}

async fn delta_post(
    AxState(state): AxState<Shared>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let _counted = InFlight::new(&state);
    delta_request(&state, "POST", uri.path().to_owned(), q, headers, body).await
}

/// A delta or lookup request, asked for alone or in a batch.
async fn delta_request(
    state: &Shared,
    method: &'static str,
    path: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (authorization, accept_encoding) = (header("authorization"), header("accept-encoding"));
    let delay = {
        let s = lock(state);
        s.latency + if path.ends_with("/users/delta") { s.users_delta_latency } else { Duration::ZERO }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = lock(state);
    let app = authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).and_then(|t| s.tokens.get(t)).cloned();
    let (status, resp) = match app {
        None => (401, graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")),
        Some(app) => {
            // Graph's links name the host it was reached as (a proxy may have routed it).
            let scheme = s.base.split("://").next().unwrap_or("http").to_owned();
            let base = header("host").map_or_else(|| s.base.clone(), |h| format!("{scheme}://{h}"));
            delta::answer(&mut s, &base, &path, &q, &body, &app)
        }
    };
    s.requests.push(Request {
        at: Instant::now(),
        method,
        path,
        query: q,
        form: HashMap::new(),
        authorization,
        accept_encoding,
        status,
        page: None,
    });
    resp
}

/// Counts a Graph request in `State::in_flight` while it is being answered.
struct InFlight(Shared);

impl InFlight {
    fn new(state: &Shared) -> Self {
        let mut s = lock(state);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

/// One members page, asked for alone or in a batch.
async fn member_page(
    state: &Shared,
    id: String,
    relation: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (authorization, accept_encoding) = (header("authorization"), header("accept-encoding"));
    let page: usize =
        q.get("$skiptoken").and_then(|t| t.strip_prefix("page-")).and_then(|n| n.parse().ok()).unwrap_or(0);
    let delay = {
        let mut s = lock(state);
        let stall =
            s.page_faults.iter().position(|f| f.page == page && f.times > 0 && matches!(f.fault, Fault::Stall(_)));
        let extra = stall.map_or(Duration::ZERO, |i| {
            s.page_faults[i].times -= 1;
            match s.page_faults[i].fault {
                Fault::Stall(d) => d,
                _ => Duration::ZERO,
            }
        });
        s.latency + extra + s.group_latency.get(&id).copied().unwrap_or_default()
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = lock(state);
    let (status, resp) = answer_members(&mut s, &id, &relation, &q, authorization.as_deref(), page);
    s.requests.push(Request {
        at: Instant::now(),
        method: "GET",
        path: format!("/v1.0/groups/{id}/{relation}"),
        query: q,
        form: HashMap::new(),
        authorization,
        accept_encoding,
        status,
        page: Some(page),
    });
    resp
}

#[derive(Deserialize)]
struct BatchRequest {
    requests: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: String,
    method: String,
    url: String,
}

/// `POST /v1.0/$batch`: JSON batching as Graph does it: at most 20 requests, run at
/// once (so a batch takes as long as its slowest page), each answered with its own
/// status, headers and body. Only members pages are understood.
async fn batch(AxState(state): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let _counted = InFlight::new(&state);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Ok(b) = serde_json::from_str::<BatchRequest>(&body) else {
        return graph_error(400, "BadRequest", "Invalid batch payload format.");
    };
    let ids: HashSet<&str> = b.requests.iter().map(|r| r.id.as_str()).collect();
    let valid = !b.requests.is_empty() && b.requests.len() <= 20 && ids.len() == b.requests.len();
    let refused = lock(&state).batch_status;
    let status = refused.unwrap_or(if valid { 200 } else { 400 });
    {
        let mut s = lock(&state);
        s.batch_sizes.push(b.requests.len());
        s.requests.push(Request {
            at: Instant::now(),
            method: "POST",
            path: "/v1.0/$batch".into(),
            query: HashMap::new(),
            form: HashMap::new(),
            authorization: authorization.clone(),
            accept_encoding: headers.get("accept-encoding").and_then(|v| v.to_str().ok()).map(str::to_owned),
            status,
            page: None,
        });
    }
    if let Some(status) = refused {
        return graph_error(status, "Forbidden", "Blocked by policy.");
    }
    if status != 200 {
        return graph_error(400, "BadRequest", "A batch holds 1 to 20 requests with unique ids.");
    }
    let mut set = tokio::task::JoinSet::new();
    for r in b.requests {
        let state = Arc::clone(&state);
        let mut item_headers = HeaderMap::new();
        for name in ["authorization", "accept-encoding", "host"] {
            if let Some(v) = headers.get(name) {
                item_headers.insert(name, v.clone());
            }
        }
        set.spawn(async move {
            let target = reqwest::Url::parse(&format!("http://graph/v1.0/{}", r.url.trim_start_matches('/'))).ok();
            let parts: Option<Vec<String>> =
                target.as_ref().and_then(|u| u.path_segments()).map(|p| p.map(str::to_owned).collect());
            let q: HashMap<String, String> = target.iter().flat_map(|u| u.query_pairs().into_owned()).collect();
            let resp = match parts.as_deref() {
                Some([v, groups, id, relation]) if r.method == "GET" && v == "v1.0" && groups == "groups" => {
                    member_page(&state, id.clone(), relation.clone(), q, item_headers).await
                }
                Some([v, ..]) if r.method == "GET" && v == "v1.0" => {
                    let path = format!("/{}", parts.as_deref().unwrap_or_default().join("/"));
                    delta_request(&state, "GET", path, q, item_headers, String::new()).await
                }
                _ => graph_error(400, "BadRequest", "The simulator batches only GET requests."),
            };
            let (head, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let headers: serde_json::Map<String, Value> = head
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), json!(v.to_str().ok()?))))
                .collect();
            // The body goes in as it is (JSON), or as a string when it is not JSON.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let body = serde_json::value::RawValue::from_string(text.clone())
                .unwrap_or_else(|_| serde_json::value::to_raw_value(&text).unwrap_or_default());
            let head = json!({"id": r.id, "status": head.status.as_u16(), "headers": headers});
            ItemAnswer { head, body }
        });
    }
    let mut answers = Vec::new();
    while let Some(a) = set.join_next().await {
        answers.extend(a);
    }
    // Graph answers in no particular order; the simulator, in the order the items finished.
    let mut out = String::from(r#"{"responses":["#);
    for (i, a) in answers.iter().enumerate() {
        let head = a.head.to_string();
        out.push_str(if i == 0 { "" } else { "," });
        out.push_str(&head[..head.len() - 1]);
        out.push_str(r#","body":"#);
        out.push_str(a.body.get());
        out.push('}');
    }
    out.push_str("]}");
    (StatusCode::OK, [("content-type", "application/json")], out).into_response()
}

struct ItemAnswer {
    /// `id`, `status` and `headers`.
    head: Value,
    body: Box<serde_json::value::RawValue>,
}

fn answer_members(
    s: &mut State,
    id: &str,
    relation: &str,
    q: &HashMap<String, String>,
    authorization: Option<&str>,
    page: usize,
) -> (u16, Response) {
    let now = Instant::now();
    let key = (id.to_owned(), page);
    if s.not_before.get(&key).is_some_and(|t| now < *t) {
        s.early_retries += 1;
    }
    let mut loop_to = None;
    let due = s.page_faults.iter().position(|f| f.page == page && f.times > 0 && !matches!(f.fault, Fault::Stall(_)));
    let next = if s.graph_faults.is_empty() {
        due.map(|i| {
            s.page_faults[i].times -= 1;
            s.page_faults[i].fault.clone()
        })
    } else {
        Some(s.graph_faults.remove(0))
    };
    if let Some(fault) = next.filter(|f| !matches!(f, Fault::Pass)) {
        match fault {
            Fault::RevokeTokens => s.tokens.clear(),
            Fault::LoopTo(p) => loop_to = Some(p),
            _ => {
                let status = match &fault {
                    Fault::Status { status, retry_after, .. } => {
                        if let Some(secs) = retry_after.as_deref().and_then(|r| r.parse::<f64>().ok()) {
                            s.not_before.insert(key, now + Duration::from_secs_f64(secs.max(0.0)));
                        }
                        *status
                    }
                    _ => 200,
                };
                return (status, fault_response(&fault));
            }
        }
    }
    let app = authorization.and_then(|a| a.strip_prefix("Bearer ")).and_then(|t| s.tokens.get(t)).cloned();
    let Some(app) = app else {
        return (401, graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."));
    };
    let nested = match relation {
        "members" => false,
        "transitiveMembers" => true,
        _ => return (400, graph_error(400, "BadRequest", "Unsupported relation")),
    };
    if !s.directory.groups.contains_key(id) {
        return (
            404,
            graph_error(
                404,
                "Request_ResourceNotFound",
                &format!(
                    "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
                ),
            ),
        );
    }
    let mut transitive_members = Vec::new();
    let all: &[Value] = if nested {
        transitive(&s.directory, id, &mut HashSet::new(), &mut transitive_members);
        &transitive_members
    } else {
        &s.directory.groups[id]
    };
    let select_text = q.get("$select").cloned().unwrap_or_default();
    let fields: Vec<&str> = select_text.split(',').filter(|f| !f.is_empty() && *f != "id").collect();
    let top = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(100).min(999);
    let size = top.min(s.page_size).max(1);
    let chunk: Vec<Value> = all
        .iter()
        .skip(page * size)
        .take(size)
        .map(|m| {
            let v = select(m, &fields);
            if app.limited && m["@odata.type"] == "#microsoft.graph.user" {
                json!({"@odata.type": "#microsoft.graph.user", "id": m["id"]})
            } else {
                v
            }
        })
        .collect();
    let mut body = json!({"@odata.context": format!("{}/v1.0/$metadata#directoryObjects", s.base), "value": chunk});
    let next = loop_to.or_else(|| ((page + 1) * size < all.len()).then_some(page + 1));
    if let Some(next) = next {
        body["@odata.nextLink"] = json!(format!(
            "{}/v1.0/groups/{id}/{relation}?$select={select_text}&$top={top}&$skiptoken=page-{next}",
            s.base
        ));
    }
    (200, json_response(200, &body))
}

/// `POST /_sim/change?count=N`: N changes to the first group, for benchmarks: 60% mail
/// changes of members, 20% tenant users joining (their attributes unchanged, so a delta
/// reader must look them up), 20% members leaving (staying in the tenant).
async fn change(AxState(state): AxState<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let count: usize = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut s = lock(&state);
    s.changes += 1;
    let round = s.changes;
    s.dirty = true;
    let dir = &mut s.directory;
    let Some(group) = dir.groups.keys().next().cloned() else { return graph_error(404, "NoGroup", "no group") };
    let (joins, leaves) = (count / 5, count / 5);
    let mails = count - joins - leaves;
    let members = dir.groups.entry(group).or_default();
    let n = members.len().max(1);
    for k in 0..mails {
        let i = (k * 7919 + round * 104_729) % n;
        if let Some(m) = members.get_mut(i) {
            m["mail"] = json!(format!("changed.{round}.{k}@example.com"));
        }
    }
    let mut left = Vec::new();
    for _ in 0..leaves.min(members.len()) {
        left.push(members.remove(0));
    }
    for _ in 0..joins.min(dir.users.len()) {
        members.push(dir.users.remove(0));
    }
    dir.users.extend(left);
    json_response(200, &json!({"changed": mails, "joined": joins, "left": leaves}))
}

/// A user object as Graph stores it.
pub fn user(id: &str, mail: Option<&str>, mobile: Option<&str>, enabled: bool) -> Value {
    let mut u = json!({"@odata.type": "#microsoft.graph.user", "id": id, "displayName": id, "accountEnabled": enabled});
    if let Some(m) = mail {
        u["mail"] = json!(m);
    }
    if let Some(p) = mobile {
        u["mobilePhone"] = json!(p);
    }
    u
}

/// A nested group object.
pub fn group(id: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.group", "id": id, "displayName": id, "mail": format!("{id}@groups.example")})
}

/// A device object.
pub fn device(id: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.device", "id": id, "accountEnabled": true})
}

/// A directory of `groups` generated groups (ids from `group_id(k)`) of `members`
/// enabled users each, with mail and phone, for benchmarks; the app is `bench_app()`.
#[must_use]
pub fn generated(groups: usize, members: usize) -> Directory {
    let mut d = Directory { apps: vec![bench_app()], groups: BTreeMap::new(), users: Vec::new() };
    for g in 0..groups {
        // Graph pages in object-id order, which is no order of the addresses:
        // number the addresses by a permutation of the page order.
        let n = members.max(1) as u64;
        let users = (0..members)
            .map(|i| {
                let k = (i as u64).wrapping_mul(2_654_435_761) % n;
                user(
                    &format!("{g:04}-{i:08}"),
                    Some(&format!("User.{g}.{k:08}@Example.com")),
                    Some(&format!("+358 40 {k:08}")),
                    true,
                )
            })
            .collect();
        d.groups.insert(group_id(g), users);
    }
    // Users of the tenant in no group, for `/_sim/change` to let join.
    d.users = (0..1000)
        .map(|i| user(&format!("spare-{i:08}"), Some(&format!("Spare.{i}@Example.com")), Some("+358 50 1234567"), true))
        .collect();
    d
}

/// The id of generated group `k`.
#[must_use]
pub fn group_id(k: usize) -> String {
    format!("00000000-0000-4000-8000-{k:012}")
}

/// The app generated directories accept.
#[must_use]
pub fn bench_app() -> App {
    App {
        tenant: "11111111-2222-3333-4444-555555555555".into(),
        client_id: "66666666-7777-8888-9999-000000000000".into(),
        client_secret: "bench-secret".into(),
        limited: false,
        certificate: None,
    }
}

/// Waits until `f` holds or `timeout` passes; for tests that poll the request log.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const URL: &str = "http://127.0.0.1:1/t/oauth2/v2.0/token";

    fn key(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../fixtures/pki/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn app() -> App {
        let kp = rcgen::KeyPair::from_pem_and_sign_algo(&key("app-key.pem"), &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["t".into()]).unwrap().self_signed(&kp).unwrap();
        App {
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: String::new(),
            limited: false,
            certificate: Some(cert.pem()),
        }
    }

    /// An assertion with the registered certificate's thumbprint, signed by `signer`.
    fn assertion(app: &App, signer: &str, aud: &str) -> HashMap<String, String> {
        let (_, der) = x509_parser::pem::parse_x509_pem(app.certificate.as_ref().unwrap().as_bytes()).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
        h.typ = Some("JWT".into());
        h.x5t_s256 = Some(base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ring::digest::digest(&ring::digest::SHA256, &der.contents),
        ));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"aud": aud, "iss": "c", "sub": "c", "jti": "j1", "nbf": now, "iat": now, "exp": now + 600});
        let jwt = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(key(signer).as_bytes()).unwrap(),
        )
        .unwrap();
        HashMap::from([
            ("client_assertion_type".into(), "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
            ("client_assertion".into(), jwt),
        ])
    }

    fn code(r: Result<String, Fault>) -> u64 {
        match r {
            Ok(_) => 0,
            Err(Fault::Status { body, .. }) => {
                serde_json::from_str::<Value>(&body).unwrap()["error_codes"][0].as_u64().unwrap()
            }
            Err(_) => u64::MAX,
        }
    }

    #[test]
    fn verifying_mode_checks_signature_audience_time_and_replay() {
        let app = app();
        assert_eq!(code(verify_assertion(&app, &assertion(&app, "app-key.pem", URL), URL, 0, &[])), 0);
        assert_eq!(
            code(verify_assertion(&app, &assertion(&app, "other-key.pem", URL), URL, 0, &[])),
            700_027,
            "bad signature"
        );
        assert_eq!(
            code(verify_assertion(&app, &assertion(&app, "app-key.pem", "https://elsewhere/"), URL, 0, &[])),
            50027
        );
        assert_eq!(
            code(verify_assertion(&app, &assertion(&app, "app-key.pem", URL), URL, 601, &[])),
            700_024,
            "expired"
        );
        assert_eq!(
            code(verify_assertion(&app, &assertion(&app, "app-key.pem", URL), URL, 0, &["j1".into()])),
            50027,
            "replayed"
        );
    }
}
