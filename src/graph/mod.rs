//! The thin Microsoft Graph client: tokens, member paging with status checks, retries.

mod batch;
mod delta;
mod error;
mod retry;
mod token;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use url::Url;

pub use batch::MAX_BATCH;
pub use delta::{MembershipRound, UsersRound};
pub use error::FetchError;

use crate::config::credential::{Credentials, Identity};
use crate::config::entraid::EntraConf;
use crate::config::global::HttpConfig;
use crate::model::ids::GroupId;
use crate::model::roster::Roster;

/// Pages fetched ahead of the parser, at most.
const PAGES_AHEAD: usize = 4;

/// Request counters for the run's report.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    retries: AtomicU64,
    /// The highest `x-ms-throttle-limit-percentage` seen, in thousandths.
    throttle: AtomicU64,
}

impl Stats {
    fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// HTTP requests sent (token and Graph), retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Requests that were retries.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Notes the share of its limit Graph says the app has used, if this answer says it
    /// (`x-ms-throttle-limit-percentage`, sent from 0.8 on: 1.0 is where throttling starts).
    fn note_limit(&self, headers: &reqwest::header::HeaderMap) {
        let Some(share) = headers
            .get("x-ms-throttle-limit-percentage")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
        else {
            return;
        };
        // A share is at most a few units: thousandths fit any integer.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let milli = (share.min(1_000.0) * 1000.0).round() as u64;
        if self.throttle.fetch_max(milli, Ordering::Relaxed) < milli {
            tracing::warn!(share, "Graph says this app has used this share of its throttling limit (x-ms-throttle-limit-percentage; at 1.0 it throttles): spread the gateways' runs further apart (RandomizedDelaySec) or lengthen the cadence");
        }
    }
    /// The highest share of its throttling limit Graph said the app had used this run.
    pub fn throttle_limit(&self) -> Option<f64> {
        let milli = self.throttle.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        (milli > 0).then(|| milli as f64 / 1000.0)
    }
}

/// Graph's `x-ms-throttle-priority`: a sync is background work, throttled first when the
/// tenant is busy, before requests a person waits for (documented for the directory, the
/// identity and access service).
const THROTTLE_PRIORITY: (&str, &str) = ("x-ms-throttle-priority", "Low");

/// One group to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupQuery {
    /// Graph origin, e.g. `https://graph.microsoft.com`.
    pub graph: String,
    /// The group.
    pub group: GroupId,
    /// `transitiveMembers` instead of `members`.
    pub nested: bool,
    /// Also select `mobilePhone`.
    pub mobile_phone: bool,
}

impl GroupQuery {
    /// The group query of config `c` alone.
    #[must_use]
    pub fn of(c: &EntraConf) -> Self {
        Self { graph: c.endpoints.graph_base(), group: c.group.clone(), nested: c.nested, mobile_phone: c.mobile_phone }
    }

    /// The first page's URL.
    #[must_use]
    pub fn first_url(&self) -> String {
        let relation = if self.nested { "transitiveMembers" } else { "members" };
        let phone = if self.mobile_phone { ",mobilePhone" } else { "" };
        format!("{}/v1.0/groups/{}/{relation}?$select=id,mail,accountEnabled{phone}&$top=999", self.graph, self.group)
    }
}

/// One HTTP client (one connection pool) and one token cache for the whole run.
pub struct GraphClient {
    /// For `https://`: `HTTPS_PROXY` / `NO_PROXY` honoured.
    http: reqwest::Client,
    /// For `http://` (loopback only), which never goes through a proxy.
    local: reqwest::Client,
    max_retries: u32,
    tokens: Mutex<HashMap<(Identity, String), Arc<token::TokenSlot>>>,
    requests: batch::Requests,
    /// Counters.
    pub stats: Stats,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphErrorInner,
}

#[derive(Deserialize)]
struct GraphErrorInner {
    code: Option<String>,
    message: Option<String>,
}

impl GraphClient {
    /// Builds the client: rustls with the system's roots plus `ca_bundle`,
    /// `HTTPS_PROXY`/`NO_PROXY` honoured except for plain `http://`, no redirects followed.
    pub fn new(cfg: &HttpConfig) -> Result<Self, FetchError> {
        let builder = || -> Result<reqwest::ClientBuilder, FetchError> {
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(cfg.timeout)
                .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(30)))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("usersync/", env!("CARGO_PKG_VERSION")));
            if let Some((_, pem)) = &cfg.ca_bundle {
                for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| FetchError::Tls(e.to_string()))? {
                    b = b.add_root_certificate(cert);
                }
            }
            Ok(b)
        };
        let build = |b: reqwest::ClientBuilder| b.build().map_err(|e| FetchError::Tls(e.to_string()));
        Ok(Self {
            http: build(builder()?)?,
            local: build(builder()?.no_proxy())?,
            max_retries: cfg.max_retries,
            tokens: Mutex::default(),
            requests: batch::Requests::new(cfg.max_concurrency),
            stats: Stats::default(),
        })
    }

    /// Every member of the group, following `@odata.nextLink` to the end, normalised
    /// page by page. Any page that is not a 200 with a `value` array fails the whole fetch.
    ///
    /// This task only fetches (it reads each page's `@odata.nextLink` from the keys before
    /// `value`); a blocking thread parses and sorts the pages it hands over, a few pages
    /// behind, so the next request never waits for a parse.
    ///
    /// With `keep`, every member also goes into a new delta state, and the drift from the
    /// old one is counted.
    pub async fn members(
        &self,
        cred: &Credentials,
        q: &GroupQuery,
        keep: Option<Keep>,
        line: &crate::ui::progress::Line,
    ) -> Result<FullRead, FetchError> {
        let origin = Url::parse(&q.graph).map_err(|e| FetchError::Request(format!("{}: {e}", q.graph)))?;
        let mut url = q.first_url();
        let mut seen = HashSet::from([url.clone()]);
        let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(PAGES_AHEAD);
        let phones = q.mobile_phone;
        let line = line.clone();
        let group = q.group.to_string();
        let parser = tokio::task::spawn_blocking(move || {
            let mut roster = Roster::new(phones);
            let mut keep = keep;
            let mut pages = 0u64;
            while let Some((url, body)) = pages_rx.blocking_recv() {
                read_page(&mut roster, keep.as_mut(), url, &body)?;
                pages += 1;
                line.page(pages, roster.objects() as u64);
            }
            roster.finish();
            let (state, drift) = match keep {
                None => (None, None),
                Some(k) => {
                    let drift = k.before.map(|b| k.drift + b.len() as u64);
                    let path = k.writer.path().to_owned();
                    let staged = match k.failed {
                        Some(e) => Err(e),
                        None => k.writer.finish().map_err(|e| e.to_string()),
                    };
                    match staged {
                        Ok(s) => (Some(s), drift),
                        // The roster is whole: the list is written all the same.
                        Err(e) => {
                            crate::files::delta_state::abandon(&path, &group, &e);
                            (None, drift)
                        }
                    }
                }
            };
            Ok::<_, FetchError>(FullRead { roster, pages, state, drift })
        });
        let fetched = async {
            loop {
                let body = self.page(cred, &q.graph, &url).await?;
                let next = crate::model::page::next_link(&body)
                    .map_err(|e| FetchError::BadPage { url: url.clone(), detail: e.to_string() })?;
                if let Some(n) = &next {
                    if !same_origin(&origin, n) {
                        return Err(FetchError::ForeignNextLink { url, next: n.clone(), graph: q.graph.clone() });
                    }
                    if !seen.insert(n.clone()) {
                        return Err(FetchError::PageLoop { url });
                    }
                }
                // The parser stopped: its error says why.
                if pages_tx.send((url, body)).await.is_err() {
                    return Ok(());
                }
                match next {
                    Some(n) => url = n,
                    None => return Ok(()),
                }
            }
        };
        let fetched = fetched.await;
        drop(pages_tx);
        let parsed = parser.await.map_err(|e| FetchError::Internal(format!("the page parser stopped: {e}")))?;
        fetched?;
        let read = parsed?;
        if let Some(missing) = read.roster.limited() {
            let (group, users) = (q.group.to_string(), read.roster.user_objects());
            return Err(FetchError::LimitedInformation { group, users, missing });
        }
        let (pages, objects) = (read.pages, read.roster.objects());
        tracing::info!(group = %q.group, nested = q.nested, pages, objects, "fetched group members");
        Ok(read)
    }

    /// The client for `url`: a plain `http://` request (which endpoints allow for loopback
    /// addresses only) never goes through a proxy, which would see its token in clear.
    /// HTTPS is tunnelled, so it follows `HTTPS_PROXY` / `NO_PROXY` wherever it goes.
    fn http(&self, url: &str) -> &reqwest::Client {
        if Url::parse(url).is_ok_and(|u| u.scheme() == "http") {
            &self.local
        } else {
            &self.http
        }
    }

    /// An app-only access token for `cred` (for SMTP XOAUTH2).
    pub async fn bearer(&self, cred: &Credentials) -> Result<crate::config::secret::Secret, FetchError> {
        self.token(cred, None).await
    }

    /// `POST {graph}/v1.0/users/{from}/sendMail` with `message` (Graph answers 202).
    pub async fn send_mail(
        &self,
        cred: &Credentials,
        graph: &str,
        from: &str,
        message: &serde_json::Value,
    ) -> Result<(), FetchError> {
        let mut url = Url::parse(graph).map_err(|e| FetchError::Request(format!("{graph}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| FetchError::Request(format!("{graph} cannot take a path")))?
            .extend(["v1.0", "users", from, "sendMail"]);
        let url = url.to_string();
        let body = serde_json::to_vec(message).map_err(|e| FetchError::Internal(e.to_string()))?;
        let token = self.token(cred, None).await?;
        let a = self
            .try_send(&url, || {
                Ok(self
                    .http(&url)
                    .post(&url)
                    .bearer_auth(token.expose())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()))
            })
            .await?;
        if a.status.is_success() {
            return Ok(());
        }
        Err(graph_error(&url, &a))
    }

    /// One `POST` of `body` (JSON) to `url` with `key` as its bearer, for an alert
    /// provider's web API, where failing over beats waiting: not retried. The proxy, TLS,
    /// timeout and size rules of every request apply. The status and body of the answer,
    /// whatever the status; no answer is [`FetchError::Exhausted`] after one attempt.
    pub async fn post_json_once(
        &self,
        url: &str,
        key: &crate::config::secret::Secret,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        let body = serde_json::to_vec(body).map_err(|e| FetchError::Internal(e.to_string()))?;
        let request = self
            .http(url)
            .post(url)
            .bearer_auth(key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.stats.count_request();
        match retry::attempt(request).await {
            Ok(a) => Ok((a.status.as_u16(), a.body)),
            Err(retry::Failure::Fatal(e)) => Err(e),
            Err(retry::Failure::Transient(last)) => {
                Err(FetchError::Exhausted { url: url.to_owned(), attempts: 1, last })
            }
        }
    }

    /// Only the first page of the group (for `usersync test`), and whether more follow.
    pub async fn first_page(&self, cred: &Credentials, q: &GroupQuery) -> Result<(Roster, bool), FetchError> {
        let url = q.first_url();
        let body = self.page(cred, &q.graph, &url).await?;
        let mut roster = Roster::new(q.mobile_phone);
        let next = read_page(&mut roster, None, url, &body)?;
        roster.finish();
        Ok((roster, next.is_some()))
    }

    /// One page's body (alone or in a JSON batch, with retries); renews the token once
    /// if Graph says it is invalid.
    async fn page(&self, cred: &Credentials, graph: &str, url: &str) -> Result<Vec<u8>, FetchError> {
        self.renewing(
            cred,
            url,
            |token| async move { self.with_retries(url, || self.get_page(graph, url, &token)).await },
        )
        .await
    }

    /// The body of a `POST` of JSON `body` to `url` (with retries), checked as a page is.
    async fn post_page(&self, cred: &Credentials, url: &str, body: &[u8]) -> Result<Vec<u8>, FetchError> {
        self.renewing(cred, url, |token| async move {
            self.try_send(url, || {
                Ok(self
                    .http(url)
                    .post(url)
                    .bearer_auth(token.expose())
                    .header(THROTTLE_PRIORITY.0, THROTTLE_PRIORITY.1)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec()))
            })
            .await
        })
        .await
    }

    /// Sends with a valid token until the answer is a 200, whose body it returns; a 401
    /// `InvalidAuthenticationToken` renews the token once, any other answer fails.
    async fn renewing<F, Fut>(&self, cred: &Credentials, url: &str, send: F) -> Result<Vec<u8>, FetchError>
    where
        F: Fn(crate::config::secret::Secret) -> Fut,
        Fut: std::future::Future<Output = Result<retry::Answer, FetchError>>,
    {
        let mut token = self.token(cred, None).await?;
        let mut renewed = false;
        loop {
            let a = send(token.clone()).await?;
            if a.status == reqwest::StatusCode::OK {
                return Ok(a.body);
            }
            match graph_error(url, &a) {
                FetchError::Graph { status: 401, code, message, .. } if code == "InvalidAuthenticationToken" => {
                    if renewed {
                        return Err(FetchError::TokenRejectedTwice { url: url.to_owned(), code, message });
                    }
                    token = self.token(cred, Some(&token)).await?;
                    renewed = true;
                }
                e => return Err(e),
            }
        }
    }
}

/// What a full read keeps besides the roster: a new delta state, and the digests of the old
/// one's members, to count how far it had drifted.
pub struct Keep {
    /// The new state.
    pub writer: crate::files::delta_state::Writer,
    /// Keep phones.
    pub phones: bool,
    /// The old state's members: a digest of the id → a digest of the record; taken out as
    /// they are met again.
    pub before: Option<HashMap<u64, u64>>,
    /// Members met so far that the old state did not have, or had otherwise.
    pub drift: u64,
    /// The first error writing the state (then nothing more is written to it).
    pub failed: Option<String>,
}

impl Keep {
    /// Adds a member; `mail` is its mail as the roster normalised it.
    fn push(&mut self, m: &crate::model::page::MemberView<'_>, mail: Option<&[u8]>) {
        let written = if let Some(before) = &mut self.before {
            // The roster skipped it as well.
            let Some(r) = crate::files::delta_state::Record::of(m, self.phones) else { return };
            self.drift += u64::from(before.remove(&r.id_digest()) != Some(r.digest()));
            self.failed.is_none().then(|| self.writer.push(&r))
        } else {
            self.failed.is_none().then(|| self.writer.push_member(m, self.phones, mail).map(|_| ()))
        };
        if let Some(Err(e)) = written {
            self.failed = Some(e.to_string());
        }
    }
}

/// A full read: the members, the pages read, and what `Keep` kept.
pub struct FullRead {
    /// The members.
    pub roster: Roster,
    /// Pages read.
    pub pages: u64,
    /// The new delta state, staged.
    pub state: Option<crate::files::delta_state::Commit>,
    /// Members that differ from the old state (either way), when there was one.
    pub drift: Option<u64>,
}

/// Adds the members of one page (from `url`) to `roster`, and to `keep`; returns the
/// page's `@odata.nextLink`.
fn read_page(
    roster: &mut Roster,
    mut keep: Option<&mut Keep>,
    url: String,
    body: &[u8],
) -> Result<Option<String>, FetchError> {
    let next = crate::model::page::visit(body, |m| {
        let mail = roster.push(&m);
        if let Some(k) = keep.as_deref_mut() {
            k.push(&m, mail);
        }
    })
    .map_err(|e| FetchError::BadPage { url, detail: e.to_string() })?;
    roster.end_page();
    Ok(next)
}

/// Graph's `{"error": {"code", "message"}}` of an answer that is not a success, or the
/// start of its body.
fn graph_error(url: &str, a: &retry::Answer) -> FetchError {
    let (code, message) = serde_json::from_slice::<GraphErrorBody>(&a.body).map_or_else(
        |_| (String::new(), String::from_utf8_lossy(&a.body).chars().take(200).collect()),
        |b| (b.error.code.unwrap_or_default(), b.error.message.unwrap_or_default()),
    );
    FetchError::Graph { url: url.to_owned(), status: a.status.as_u16(), code, message }
}

fn same_origin(origin: &Url, link: &str) -> bool {
    Url::parse(link).is_ok_and(|u| {
        u.scheme() == origin.scheme()
            && u.host() == origin.host()
            && u.port_or_known_default() == origin.port_or_known_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_url_selects_and_pages_by_999() {
        let q = GroupQuery {
            graph: "https://graph.microsoft.com".into(),
            group: GroupId::parse("02bd9fd6-8f93-4758-87c3-1fb73740a315").unwrap(),
            nested: true,
            mobile_phone: true,
        };
        assert_eq!(
            q.first_url(),
            "https://graph.microsoft.com/v1.0/groups/02bd9fd6-8f93-4758-87c3-1fb73740a315/transitiveMembers?$select=id,mail,accountEnabled,mobilePhone&$top=999"
        );
    }

    #[test]
    fn next_links_stay_on_the_graph_host() {
        let o = Url::parse("https://graph.microsoft.com").unwrap();
        assert!(same_origin(&o, "https://graph.microsoft.com/v1.0/groups/x/members?$skiptoken=1"));
        assert!(same_origin(&o, "https://graph.microsoft.com:443/v1.0/x"));
        assert!(!same_origin(&o, "http://graph.microsoft.com/v1.0/x"));
        assert!(!same_origin(&o, "https://evil.example/v1.0/x"));
        assert!(!same_origin(&o, "not a url"));
    }

    #[test]
    fn every_graph_sample_parses_or_is_an_error_body() {
        let dir = format!("{}/tests/fixtures/graph", env!("CARGO_MANIFEST_DIR"));
        let mut pages = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let body = std::fs::read(&p).unwrap();
            if name.contains("error")
                || name.contains("429")
                || name.starts_with("token_")
                || name.starts_with("observed_")
            {
                if name.starts_with("graph_") {
                    serde_json::from_slice::<GraphErrorBody>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                assert!(crate::model::page::parse(&body).is_err(), "{name} is not a page");
            } else {
                crate::model::page::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
                pages += 1;
            }
        }
        assert!(pages >= 15, "{pages}");
    }
}
