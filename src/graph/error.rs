//! Why a token request or a member fetch failed, and what the administrator should do.

use crate::config::endpoints::Cloud;
use crate::error::Hint;

/// A fetch that did not complete. Every variant names the URL it concerns.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// The token endpoint refused the client credentials.
    #[error("token request to {url} failed with HTTP {status}: {error}: {description}")]
    Token {
        /// Token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The `AADSTS` number, if the answer had one.
        aadsts: Option<u64>,
        /// OAuth `error`, e.g. `invalid_client`.
        error: String,
        /// First line of `error_description`.
        description: String,
    },
    /// Graph answered with a status that is not retried.
    #[error("{url} answered HTTP {status} {code}: {message}")]
    Graph {
        /// Page URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Graph error code, e.g. `Authorization_RequestDenied`.
        code: String,
        /// Graph error message.
        message: String,
    },
    /// A JSON batch was refused as a whole (Graph answers a batch 200 and each request in
    /// it on its own, so something between this host and Graph refuses batches).
    #[error("{url} answered HTTP {status} {code}: {message}")]
    BatchRefused {
        /// The `$batch` URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Error code, if the answer had one.
        code: String,
        /// Error message.
        message: String,
    },
    /// Throttling, server errors or connection failures went on past `max_retries`.
    #[error("{url} still failed after {attempts} attempts; last: {last}")]
    Exhausted {
        /// URL.
        url: String,
        /// Requests made.
        attempts: u32,
        /// What the last attempt got.
        last: String,
    },
    /// A `Retry-After` asked for a wait longer than usersync is willing to make.
    #[error("{url} asked to retry after {seconds} s, longer than the {limit} s usersync waits")]
    RetryAfterTooLong {
        /// URL.
        url: String,
        /// What the server asked for.
        seconds: u64,
        /// The cap.
        limit: u64,
    },
    /// A 200 answer that is not a members page (no `value` array, not JSON, cut short).
    #[error("{url} returned something that is not a Graph page: {detail}")]
    BadPage {
        /// URL.
        url: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A response body larger than usersync reads.
    #[error("{url} sent a response body larger than {limit} bytes (after decompression); it was not read further")]
    TooLarge {
        /// URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// The token endpoint answered 200 with no usable token.
    #[error("{url} returned no usable access token: {detail}")]
    BadToken {
        /// Token URL.
        url: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A page was rejected with 401 twice, the second time with a fresh token.
    #[error("{url} rejected a freshly renewed access token ({code}: {message})")]
    TokenRejectedTwice {
        /// URL.
        url: String,
        /// Graph error code.
        code: String,
        /// Graph error message.
        message: String,
    },
    /// An `@odata.nextLink` pointing away from the Graph endpoint.
    #[error("{url} returned an @odata.nextLink to {next:?}, which is not on {graph}")]
    ForeignNextLink {
        /// The page that held the link.
        url: String,
        /// The link.
        next: String,
        /// The configured Graph endpoint.
        graph: String,
    },
    /// An `@odata.nextLink` that repeats an earlier page.
    #[error("{url} returned an @odata.nextLink to a page already fetched in this run (page loop)")]
    PageLoop {
        /// The repeated URL.
        url: String,
    },
    /// Users came back without any selected attribute: `User.Read.All` is missing.
    #[error(
        "group {group}: Graph returned {users} users but none with {missing} (the \"limited information\" answer)"
    )]
    LimitedInformation {
        /// The group id.
        group: String,
        /// How many user objects came back.
        users: usize,
        /// The attributes none of them had.
        missing: &'static str,
    },
    /// `groups/delta` says the group itself was deleted (`@removed` on the group).
    #[error("Graph says the group {group} was deleted (@removed on the group in its delta round)")]
    GroupDeleted {
        /// The group's id.
        group: String,
    },
    /// The run's deadline passed before this fetch finished.
    #[error("the run deadline of {seconds} s passed before this group was fetched completely")]
    Deadline {
        /// `[http] deadline_seconds`
        seconds: u64,
    },
    /// The HTTPS client could not be set up (certificates).
    #[error("cannot set up HTTPS: {0}")]
    Tls(String),
    /// A request could not be built from the configured endpoint.
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The client assertion could not be signed with the certificate's key.
    #[error("cannot sign the client assertion: {0}")]
    Signing(String),
    /// The delta state turned out unreadable while it was read (a resync).
    #[error("the delta state {0} is unreadable")]
    StateCorrupt(String),
    /// usersync itself failed (a task stopped, the runtime could not start).
    #[error("internal error: {0}")]
    Internal(String),
}

const PERMISSIONS: &str = "in the Entra admin center, open App registrations > the app > API permissions, add the Microsoft Graph application permissions GroupMember.Read.All and User.Read.All, then click \"Grant admin consent\"";

impl FetchError {
    /// Entra ID does not know the tenant (AADSTS90002, or 90038: it is in another cloud).
    #[must_use]
    pub fn is_unknown_tenant(&self) -> bool {
        matches!(self, Self::Token { aadsts: Some(90_002 | 90_038), .. })
    }

    /// Graph says the delta link can no longer be used, and why: a full read starts over.
    /// `400 syncStateNotFound` (the token expired), `400`/`410 resyncRequired`, and
    /// `410 Gone` (a reset; its `Location` is the initial query, which a full read redoes).
    #[must_use]
    pub fn resync_reason(&self) -> Option<&'static str> {
        match self {
            Self::Graph { status: 400, code, .. } if code == "syncStateNotFound" => Some("syncStateNotFound"),
            Self::Graph { status: 400 | 410, code, .. } if code == "resyncRequired" => Some("resyncRequired"),
            Self::Graph { status: 410, .. } => Some("gone"),
            Self::StateCorrupt(_) => Some("state-corrupt"),
            _ => None,
        }
    }

    /// How to fix this error of a config in `cloud`: the error's own hint, and for an
    /// unknown tenant while `cloud` is global, the likely reason.
    #[must_use]
    pub fn hint_in(&self, cloud: Cloud) -> Option<String> {
        let hint = self.hint();
        if cloud == Cloud::Global && self.is_unknown_tenant() {
            let national =
                "this tenant may be in a national cloud: set `cloud` (\"usgov\", \"usgov-dod\" or \"china\")";
            return Some(hint.map_or_else(|| national.to_owned(), |h| format!("{h}; {national}")));
        }
        hint
    }
}

impl Hint for FetchError {
    fn hint(&self) -> Option<String> {
        let h = match self {
            // Entra gives 700027 both for a key it does not know and for one whose registered
            // certificate has expired; only the reason in the description tells them apart.
            Self::Token { aadsts: Some(700_027), description, .. } if description.to_ascii_lowercase().contains("key used is expired") => "the certificate registered on the app has expired in Entra ID: create a new certificate, upload it under App registrations > the app > Certificates & secrets, and point client_certificate at it (and check this host's clock: timedatectl)".into(),
            Self::Token { aadsts: Some(code), .. } => match code {
                7_000_215 => "the client secret is wrong: paste the secret's Value (not its Secret ID) from App registrations > the app > Certificates & secrets".into(),
                7_000_222 => "the client secret has expired: create a new one under App registrations > the app > Certificates & secrets and put its Value in the config".into(),
                700_027 => "Entra ID did not accept the client assertion's signature: upload this certificate (the public part, a .cer or .pem) under App registrations > the app > Certificates & secrets, and check that client_key belongs to it".into(),
                700_024 => "the client assertion is outside its valid time range: check this host's clock (timedatectl; NTP must be synchronised)".into(),
                700_016 => "the application (client_id) is not found in this tenant: check client_id and tenant_id, and that the app is registered (or consented) in that tenant".into(),
                90_002 | 90_038 => "the tenant is unknown here: check tenant_id".into(),
                70_011 => "the scope was refused: check graph_endpoint / cloud; the scope is <graph endpoint>/.default".into(),
                7_000_112 => "the application is disabled: enable it under Enterprise applications > the app > Properties".into(),
                _ => format!("look up AADSTS{code} at https://login.microsoftonline.com/error?code={code}"),
            },
            Self::Token { .. } => "check tenant_id, client_id and the client secret or certificate in the config".into(),
            Self::Graph { status: 403, .. } => PERMISSIONS.into(),
            Self::Graph { status: 404, .. } => "the group was not found: check group_id (the group's Object ID under Groups > the group > Overview) and tenant_id".into(),
            Self::Graph { status: 400, .. } => "Graph refused the request; check group_id and query_filter".into(),
            Self::Graph { status: 401, .. } | Self::TokenRejectedTwice { .. } => format!("the access token is not accepted by Graph; check `cloud` / graph_endpoint match the tenant's cloud, and {PERMISSIONS}"),
            Self::Graph { .. } => "Microsoft Graph failed; try again later and check https://status.cloud.microsoft".into(),
            Self::BatchRefused { .. } => "something between this host and Graph refuses JSON batches: allow POST /v1.0/$batch, or set [http] max_concurrency to at least the number of groups, and pages never share a request".into(),
            Self::Exhausted { .. } | Self::RetryAfterTooLong { .. } => "Graph or the network is failing or throttling; the files were left as they were. Check connectivity (and HTTPS_PROXY) from this host; the next run will try again, or raise [http] max_retries".into(),
            Self::BadPage { .. } | Self::ForeignNextLink { .. } | Self::PageLoop { .. } | Self::TooLarge { .. } => "the answer could not be trusted, so nothing was written; check for a proxy rewriting responses, then retry".into(),
            Self::BadToken { .. } => "check authority_host / cloud: the token endpoint did not behave like Entra ID".into(),
            Self::LimitedInformation { .. } => format!("the app lacks User.Read.All, so Graph hides the users' attributes; {PERMISSIONS}"),
            Self::GroupDeleted { .. } => "nothing of the instances that use it was written: restore the group in the Entra admin center (Groups > Deleted groups), or point group_id at the group that replaces it".into(),
            Self::Deadline { .. } => "Graph is slow or throttling hard; nothing of this instance was written and the next run tries again. If runs are legitimately this long, raise [http] deadline_seconds".into(),
            Self::Tls(_) => "check [http] ca_bundle and the system's certificate store (ca-certificates)".into(),
            Self::Request(_) => "check graph_endpoint / authority_host (or `cloud`) in the config".into(),
            Self::Signing(_) => "check client_key: an unencrypted RSA key that belongs to client_certificate".into(),
            Self::StateCorrupt(_) => "the next run reads the group in full and writes a new state".into(),
            Self::Internal(_) => "nothing was written; run again with -vv, and report the log if it happens again".into(),
        };
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_tenant_in_the_global_cloud_hints_at_national_clouds() {
        let token = |code| FetchError::Token {
            url: "https://login.microsoftonline.com/t/oauth2/v2.0/token".into(),
            status: 400,
            aadsts: Some(code),
            error: "invalid_request".into(),
            description: String::new(),
        };
        let national = "this tenant may be in a national cloud: set `cloud`";
        for code in [90_002, 90_038] {
            assert!(token(code).hint_in(Cloud::Global).unwrap().contains(national), "{code}");
            assert!(!token(code).hint_in(Cloud::China).unwrap().contains(national));
        }
        assert!(!token(7_000_215).hint_in(Cloud::Global).unwrap().contains(national));
    }

    /// Entra's 700027 for an expired key is not "upload this certificate".
    #[test]
    fn an_expired_key_has_its_own_hint() {
        let token = |description: &str| FetchError::Token {
            url: "https://login.microsoftonline.com/t/oauth2/v2.0/token".into(),
            status: 401,
            aadsts: Some(700_027),
            error: "invalid_client".into(),
            description: description.into(),
        };
        let expired = token("AADSTS700027: Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: 'AB12']").hint().unwrap();
        assert!(expired.contains("has expired") && !expired.contains("upload this certificate"), "{expired}");
        let unknown = token("AADSTS700027: [Reason - The key was not found.]").hint().unwrap();
        assert!(unknown.contains("upload this certificate"), "{unknown}");
    }

    /// Only a TLS problem points at the CA bundle.
    #[test]
    fn each_local_failure_hints_at_its_own_cause() {
        let hint = |e: FetchError| e.hint().unwrap_or_default();
        assert!(hint(FetchError::Tls("bad PEM".into())).contains("ca_bundle"));
        for e in [
            FetchError::Request("relative URL without a base".into()),
            FetchError::Signing("InvalidRsaKey".into()),
            FetchError::Internal("the page parser stopped".into()),
        ] {
            let (text, h) = (e.to_string(), hint(e));
            assert!(!h.contains("ca_bundle"), "{text}: {h}");
        }
        assert!(hint(FetchError::Request(String::new())).contains("graph_endpoint"));
        assert!(hint(FetchError::Signing(String::new())).contains("client_key"));
    }
}
