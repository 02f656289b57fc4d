//! App-only access tokens (`OAuth2` client credentials), one per (authority, tenant, client) a run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{FetchError, GraphClient};
use crate::config::credential::{ClientAuth, Credentials};
use crate::config::secret::Secret;

/// Renew a cached token this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(120);

/// A cached token.
#[derive(Clone)]
pub(super) struct AccessToken {
    pub value: Secret,
    expires: Instant,
}

/// The cache entry for one credential: locked while a token is being fetched,
/// so that concurrent fetches share one token request.
#[derive(Default)]
pub(super) struct TokenSlot(tokio::sync::Mutex<Option<AccessToken>>);

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<Secret>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct AadError {
    error: Option<String>,
    error_description: Option<String>,
    error_codes: Option<Vec<u64>>,
}

impl GraphClient {
    /// A valid token for `cred`; `rejected` is a token Graph has just refused,
    /// which forces a renewal unless another task already renewed it.
    pub(super) async fn token(&self, cred: &Credentials, rejected: Option<&Secret>) -> Result<Secret, FetchError> {
        let slot = {
            let mut slots = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(slots.entry(cred.token_key()).or_default())
        };
        let mut cached = slot.0.lock().await;
        if let Some(t) = cached.as_ref() {
            let fresh = t.expires > Instant::now() + EXPIRY_MARGIN;
            if fresh && rejected != Some(&t.value) {
                return Ok(t.value.clone());
            }
        }
        if rejected.is_some() {
            tracing::info!(token_url = %cred.token_url, "access token rejected by Graph; renewing it");
        }
        let t = self.request_token(cred).await?;
        let value = t.value.clone();
        *cached = Some(t);
        Ok(value)
    }

    async fn request_token(&self, cred: &Credentials) -> Result<AccessToken, FetchError> {
        let url = &cred.token_url;
        tracing::debug!(token_url = %url, client_id = %cred.client_id, "requesting an access token");
        // Built for every attempt: a certificate signs a new assertion each time.
        let form = || {
            let mut f = vec![
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", cred.client_id.clone()),
                ("scope", cred.scope.clone()),
            ];
            match &cred.auth {
                ClientAuth::Secret(s) => f.push(("client_secret", s.expose().to_owned())),
                ClientAuth::Certificate(c) => {
                    let a = c.assertion(&cred.client_id, url).map_err(|e| FetchError::Signing(e.to_string()))?;
                    f.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                    f.push(("client_assertion", a.expose().to_owned()));
                }
                // Only `check` leaves a credential unread, and it sends nothing.
                ClientAuth::Unread(_) => return Err(FetchError::Internal("a credential was not read".into())),
            }
            Ok(f)
        };
        let answer = self.try_send(url, || form().map(|f| self.http(url).post(url).form(&f))).await?;
        let started = Instant::now();
        if !answer.status.is_success() {
            let e: AadError = serde_json::from_slice(&answer.body).unwrap_or_default();
            let description = e.error_description.unwrap_or_default();
            let aadsts = e.error_codes.and_then(|c| c.first().copied()).or_else(|| aadsts_in(&description));
            return Err(FetchError::Token {
                url: url.clone(),
                status: answer.status.as_u16(),
                aadsts,
                error: e.error.unwrap_or_else(|| "no OAuth error in the answer".into()),
                description: description.lines().next().unwrap_or_default().trim().to_owned(),
            });
        }
        let t: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| FetchError::BadToken { url: url.clone(), detail: e.to_string() })?;
        let value = t
            .access_token
            .filter(|v| !v.expose().is_empty())
            .ok_or_else(|| FetchError::BadToken { url: url.clone(), detail: "no access_token".into() })?;
        let secs = match t.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599);
        Ok(AccessToken { value, expires: started + Duration::from_secs(secs) })
    }
}

/// The number in `AADSTS7000215: …`.
fn aadsts_in(description: &str) -> Option<u64> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/graph/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The same app asking for two scopes (Graph, and Exchange Online for SMTP) gets two
    /// tokens: a token for one audience is no good for the other.
    #[test]
    fn the_token_cache_keeps_one_token_per_scope() {
        let app = usersync_sim::bench_app();
        let sim = usersync_sim::Sim::start(usersync_sim::Directory { apps: vec![app.clone()], ..Default::default() })
            .unwrap();
        let client = GraphClient::new(&crate::config::global::HttpConfig::default()).unwrap();
        let cred = |scope: &str| Credentials {
            token_url: format!("{}/{}/oauth2/v2.0/token", sim.url(), app.tenant),
            client_id: app.client_id.clone(),
            auth: ClientAuth::Secret(Secret::new(app.client_secret.clone())),
            scope: scope.to_owned(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (graph, outlook) = (cred(&format!("{}/.default", sim.url())), cred(crate::config::alert::OUTLOOK_SCOPE));
        let (a, b, a2) = rt.block_on(async {
            (
                client.token(&graph, None).await.unwrap(),
                client.token(&outlook, None).await.unwrap(),
                client.token(&graph, None).await.unwrap(),
            )
        });
        assert_ne!(a, b, "another scope, another token");
        assert_eq!(a, a2, "the same scope, the cached token");
        let scopes: Vec<String> =
            sim.requests().iter().map(|r| r.form.get("scope").cloned().unwrap_or_default()).collect();
        assert_eq!(scopes, [graph.scope.clone(), outlook.scope.clone()]);
    }

    #[test]
    fn token_samples_parse() {
        for f in ["token_success.json", "token_success_graph_auth_v2_service.json"] {
            let t: TokenAnswer = serde_json::from_slice(&sample(f)).unwrap();
            assert!(t.access_token.is_some());
            assert_eq!(t.expires_in.and_then(|v| v.as_u64()), Some(3599));
        }
    }

    #[test]
    fn error_samples_give_their_aadsts_code() {
        for (f, code) in [
            ("observed_token_error_700016_app_not_found.json", 700_016),
            ("observed_token_error_7000215_invalid_secret.json", 7_000_215),
            ("observed_token_error_7000222_expired_secret_http401.json", 7_000_222),
            ("observed_token_error_90002_tenant_not_found.json", 90_002),
            ("token_error_invalid_scope.json", 70_011),
            ("token_error_reference_sample.json", 70_011),
        ] {
            let e: AadError = serde_json::from_slice(&sample(f)).unwrap();
            let d = e.error_description.unwrap_or_default();
            assert_eq!(e.error_codes.and_then(|c| c.first().copied()).or_else(|| aadsts_in(&d)), Some(code), "{f}");
            assert_eq!(aadsts_in(&d), Some(code), "{f}");
        }
    }
}
