//! Where to get tokens and members: the national clouds and explicit hosts.

use std::net::IpAddr;
use url::{Host, Url};

/// A Microsoft cloud, which fixes the login and Graph hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    /// Microsoft Entra global service.
    Global,
    /// Microsoft Graph for US Government L4.
    UsGov,
    /// Microsoft Graph for US Government L5 (`DoD`).
    UsGovDod,
    /// Microsoft Graph operated by 21Vianet in China.
    China,
}

impl Cloud {
    /// Parses a `cloud` value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "global" => Some(Self::Global),
            "usgov" => Some(Self::UsGov),
            "usgov-dod" => Some(Self::UsGovDod),
            "china" => Some(Self::China),
            _ => None,
        }
    }

    /// The Entra ID login host.
    #[must_use]
    pub fn authority_host(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::UsGov | Self::UsGovDod => "https://login.microsoftonline.us",
            Self::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The Microsoft Graph host.
    #[must_use]
    pub fn graph_endpoint(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::UsGov => "https://graph.microsoft.us",
            Self::UsGovDod => "https://dod-graph.microsoft.us",
            Self::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
}

/// The two base URLs one config talks to, both checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// e.g. `https://login.microsoftonline.com`, without a trailing slash.
    pub authority: Url,
    /// e.g. `https://graph.microsoft.com`, without a trailing slash.
    pub graph: Url,
}

impl Endpoints {
    /// `{authority}/{tenant}/oauth2/v2.0/token`
    #[must_use]
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", origin(&self.authority))
    }

    /// `{graph}/.default`, the client-credentials scope.
    #[must_use]
    pub fn scope(&self) -> String {
        format!("{}/.default", origin(&self.graph))
    }

    /// The Graph origin, e.g. `https://graph.microsoft.com`.
    #[must_use]
    pub fn graph_base(&self) -> String {
        origin(&self.graph)
    }
}

fn origin(u: &Url) -> String {
    u.as_str().trim_end_matches('/').to_owned()
}

/// Is this host a loopback address (or `localhost`)?
#[must_use]
pub fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(a) => a.is_loopback(),
        Host::Ipv6(a) => a.is_loopback(),
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost") || d.parse::<IpAddr>().is_ok_and(|a| a.is_loopback()),
    }
}

/// Checks an `authority_host` / `graph_endpoint` value: a bare host or an
/// `https://` URL with no path, query or credentials; `http://` only for loopback.
pub fn parse_endpoint(value: &str) -> Result<Url, String> {
    let text = value.trim();
    let value = crate::error::quote(text);
    let value = value.as_str();
    let text = if text.contains("://") { text.to_owned() } else { format!("https://{text}") };
    let url = Url::parse(&text).map_err(|e| format!("`{value}` is not a host or URL ({e})"))?;
    let host = url.host().ok_or_else(|| format!("`{value}` has no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{value}` must not carry credentials"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{value}` must be a host only, without a path or query"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&host) => Ok(url),
        "http" => Err(format!(
            "`{value}` uses http:// for a host that is not a loopback address; tokens and member lists would cross the network unencrypted"
        )),
        other => Err(format!("`{value}` uses the unsupported scheme `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_map_to_the_documented_hosts() {
        let e = |c: Cloud| (c.authority_host(), c.graph_endpoint());
        assert_eq!(e(Cloud::Global), ("https://login.microsoftonline.com", "https://graph.microsoft.com"));
        assert_eq!(e(Cloud::UsGov), ("https://login.microsoftonline.us", "https://graph.microsoft.us"));
        assert_eq!(e(Cloud::UsGovDod), ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"));
        assert_eq!(e(Cloud::China), ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"));
    }

    /// Token endpoint and `.default` scope per cloud, as in Microsoft's "national cloud
    /// deployments" page (learn.microsoft.com/graph/deployments): the scope must use the
    /// cloud's own Graph host.
    #[test]
    fn clouds_give_their_token_url_and_scope() {
        for (name, token, scope) in [
            ("global", "https://login.microsoftonline.com/t/oauth2/v2.0/token", "https://graph.microsoft.com/.default"),
            ("usgov", "https://login.microsoftonline.us/t/oauth2/v2.0/token", "https://graph.microsoft.us/.default"),
            (
                "usgov-dod",
                "https://login.microsoftonline.us/t/oauth2/v2.0/token",
                "https://dod-graph.microsoft.us/.default",
            ),
            (
                "china",
                "https://login.chinacloudapi.cn/t/oauth2/v2.0/token",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
        ] {
            let c = Cloud::from_name(name).unwrap_or_else(|| unreachable!("{name}"));
            let e = Endpoints {
                authority: parse_endpoint(c.authority_host()).unwrap_or_else(|e| unreachable!("{e}")),
                graph: parse_endpoint(c.graph_endpoint()).unwrap_or_else(|e| unreachable!("{e}")),
            };
            assert_eq!((e.token_url("t").as_str(), e.scope().as_str()), (token, scope), "{name}");
        }
    }

    #[test]
    fn http_only_on_loopback() {
        assert!(parse_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(parse_endpoint("http://127.9.9.9").is_ok());
        assert!(parse_endpoint("http://[::1]:9").is_ok());
        assert!(parse_endpoint("http://localhost:9").is_ok());
        assert!(parse_endpoint("http://10.0.0.1").is_err());
        assert!(parse_endpoint("http://graph.microsoft.com").is_err());
        assert!(parse_endpoint("graph.microsoft.us").is_ok());
        assert!(parse_endpoint("https://x.example/path").is_err());
        assert!(parse_endpoint("ftp://x.example").is_err());
    }

    #[test]
    fn urls() {
        let e = Endpoints {
            authority: parse_endpoint("https://login.microsoftonline.com/").unwrap_or_else(|e| unreachable!("{e}")),
            graph: parse_endpoint("http://127.0.0.1:1").unwrap_or_else(|e| unreachable!("{e}")),
        };
        assert_eq!(e.token_url("t"), "https://login.microsoftonline.com/t/oauth2/v2.0/token");
        assert_eq!(e.scope(), "http://127.0.0.1:1/.default");
    }
}
