//! How an app proves itself to Entra ID: a client secret, or a certificate whose key signs
//! a fresh JWT client assertion for every token request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair as _;
use serde::Serialize;

use crate::config::endpoints::{parse_endpoint, Cloud, Endpoints};
use crate::config::secret::{read_source, resolve, warn_if_exposed, Confine, Env, Secret, Unread};
use crate::error::{quote, ConfigError};
use crate::model::ids::{ClientId, TenantId};

/// How long a client assertion is valid. Microsoft's certificate-credentials page sets no
/// maximum; ten minutes is what MSAL signs (`expires_in=600`), long enough for a token
/// request with its retries and a few minutes of clock skew, and short enough that an
/// assertion caught in a log or a proxy is soon worthless. A new one is signed for every
/// request anyway.
pub const ASSERTION_LIFETIME_SECONDS: u64 = 600;

/// What the token request proves the app's identity with.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// `client_secret`.
    Secret(Secret),
    /// `client_assertion`, signed with the certificate's key.
    Certificate(Arc<Certificate>),
    /// Systemd credentials that `usersync check` from a shell leaves unread (only
    /// [`Env::for_check`] makes this); nothing can be sent with it.
    Unread(Vec<Unread>),
}

impl ClientAuth {
    /// One line for `usersync test` and `usersync alert-test`: what the credential is, the
    /// thumbprints an admin finds it by, and when it expires.
    #[must_use]
    pub fn describe(&self, expires: Option<i64>) -> String {
        let expires = expires
            .map_or_else(|| "expiry not recorded".to_owned(), |t| format!("expires {}", crate::model::date::format(t)));
        match self {
            Self::Certificate(c) => format!(
                "certificate `{}`, thumbprint {} (SHA-1, as the Entra admin center lists it), x5t#S256 {}, {expires}",
                c.subject, c.sha1_thumbprint, c.thumbprint
            ),
            Self::Secret(_) => format!("client secret, {expires}"),
            Self::Unread(u) => {
                let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
                format!("systemd credential {} (not read here), {expires}", names.join(", "))
            }
        }
    }

    /// A digest that tells two credentials apart, without holding or showing either.
    fn digest(&self) -> [u8; 32] {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        match self {
            Self::Secret(s) => {
                d.update(b"secret\0");
                d.update(s.expose().as_bytes());
            }
            Self::Certificate(c) => {
                d.update(b"certificate\0");
                d.update(c.thumbprint.as_bytes());
            }
            Self::Unread(u) => {
                d.update(b"unread\0");
                for u in u {
                    d.update(u.name.as_bytes());
                    d.update(b"\0");
                }
            }
        }
        let mut out = [0; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }
}

/// What a token request needs.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub token_url: String,
    /// Application (client) id.
    pub client_id: String,
    /// The client secret or certificate.
    pub auth: ClientAuth,
    /// `{graph}/.default`
    pub scope: String,
}

/// Who asks Entra ID for tokens: the token endpoint (authority and tenant), the client,
/// and its credential (by digest). Configs with equal identities get equal answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    token_url: String,
    client_id: String,
    credential: [u8; 32],
}

impl Credentials {
    /// Who asks.
    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity {
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            credential: self.auth.digest(),
        }
    }

    /// What a cached token is valid for: who asked, and for which scope.
    #[must_use]
    pub fn token_key(&self) -> (Identity, String) {
        (self.identity(), self.scope.clone())
    }
}

/// The JWT signature algorithm of client assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, what Entra recommends.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for older tenants and tools.
    Rs256,
}

impl AssertionAlgorithm {
    /// Parses an `assertion_algorithm` value.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "PS256" => Some(Self::Ps256),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Ps256 => Algorithm::PS256,
            Self::Rs256 => Algorithm::RS256,
        }
    }
}

/// A certificate and its RSA private key, checked to belong together.
pub struct Certificate {
    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER.
    pub thumbprint: String,
    /// The SHA-1 of the certificate's DER in upper-case hex: the thumbprint the Entra admin
    /// center lists under Certificates & secrets.
    pub sha1_thumbprint: String,
    /// The certificate's subject, for messages.
    pub subject: String,
    /// The start of the certificate's validity (Unix seconds).
    pub not_before: i64,
    /// The end of the certificate's validity (Unix seconds).
    pub not_after: i64,
    algorithm: AssertionAlgorithm,
    key: EncodingKey,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("thumbprint", &self.thumbprint)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &"***")
            .finish_non_exhaustive()
    }
}

/// Why a certificate or key cannot be used, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: &'static str,
    /// It is about the key (so, when the key has its own file, about that file).
    pub in_key: bool,
}

impl CertificateError {
    fn new(message: impl Into<String>, hint: &'static str) -> Self {
        Self { message: message.into(), hint, in_key: false }
    }

    fn in_key(self) -> Self {
        Self { in_key: true, ..self }
    }
}

const CONVERT: &str = "give a PEM file with the certificate (`-----BEGIN CERTIFICATE-----`) and an unencrypted RSA key (`-----BEGIN PRIVATE KEY-----` or `-----BEGIN RSA PRIVATE KEY-----`); from a .pfx: openssl pkcs12 -in app.pfx -nodes -out app.pem";

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Certificate {
    /// Reads the certificate from `certificate_pem` and the key from `key_pem`, or from
    /// `certificate_pem` too when no separate key is given.
    pub fn from_pem(
        certificate_pem: &[u8],
        key_pem: Option<&[u8]>,
        algorithm: AssertionAlgorithm,
    ) -> Result<Self, CertificateError> {
        let blocks = pem_blocks(certificate_pem)?;
        let cert = blocks
            .iter()
            .find(|b| b.label == "CERTIFICATE")
            .ok_or_else(|| CertificateError::new("holds no `-----BEGIN CERTIFICATE-----` block", CONVERT))?;
        let key_blocks = match key_pem {
            Some(k) => pem_blocks(k).map_err(CertificateError::in_key)?,
            None => blocks.clone(),
        };
        let x509 = parse_certificate(&cert.contents)?;
        let key = private_key(&key_blocks).map_err(CertificateError::in_key)?;
        let spki = &x509.public_key().subject_public_key.data;
        if key.public_key.as_slice() != spki.as_ref() {
            return Err(CertificateError::new(
                "the private key does not belong to the certificate",
                "give the key that was created with this certificate (compare `openssl x509 -noout -modulus` with `openssl rsa -noout -modulus`)",
            )
            .in_key());
        }
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert.contents);
        Ok(Self {
            thumbprint: URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &cert.contents)),
            sha1_thumbprint: crate::model::ids::hex(sha1.as_ref()).to_ascii_uppercase(),
            subject: x509.subject().to_string(),
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
            algorithm,
            key: key.encoding,
        })
    }

    /// A new client assertion for `client_id` at the token endpoint `token_url`, valid
    /// from now for [`ASSERTION_LIFETIME_SECONDS`]. Never reuse one.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<Secret, jsonwebtoken::errors::Error> {
        let now = crate::model::date::now_secs();
        let mut header = Header::new(self.algorithm.jwt());
        header.typ = Some("JWT".into());
        header.x5t_s256 = Some(self.thumbprint.clone());
        let claims = Claims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid_v4(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECONDS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map(Secret::new)
    }
}

/// Declares a table as written (a `Raw…` struct) that holds an app's keys among its own:
/// each own key with its default, and where `@credential_keys;` stands (serde names the keys
/// in that order when it refuses an unknown one) the app's `tenant_id`, `client_id`, its
/// credential keys, and `cloud`, `authority_host`, `graph_endpoint`, with their defaults.
/// Makes its `Default`, and `CredentialKeys::from(&raw)`. The one declaration of those keys,
/// for `.entraidconf` and `[[alert.provider]]` alike: serde's `flatten` does not combine
/// with `deny_unknown_fields`.
macro_rules! with_credential_keys {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$a_meta:meta])* $a:ident : $a_ty:ty = $a_default:expr, )*
            @credential_keys;
            $( $(#[$b_meta:meta])* $b:ident : $b_ty:ty = $b_default:expr, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$a_meta])* $a: $a_ty, )*
            /// `tenant_id`
            pub(crate) tenant_id: Option<String>,
            /// `client_id`
            pub(crate) client_id: Option<String>,
            /// `client_secret`: the secret itself.
            pub(crate) client_secret: Option<$crate::config::secret::Secret>,
            /// `client_secret_file`
            pub(crate) client_secret_file: Option<std::path::PathBuf>,
            /// `client_secret_credential`
            pub(crate) client_secret_credential: Option<String>,
            /// `client_secret_expires`
            pub(crate) client_secret_expires: Option<String>,
            /// `client_certificate`
            pub(crate) client_certificate: Option<std::path::PathBuf>,
            /// `client_certificate_credential`
            pub(crate) client_certificate_credential: Option<String>,
            /// `client_key`
            pub(crate) client_key: Option<std::path::PathBuf>,
            /// `client_key_credential`
            pub(crate) client_key_credential: Option<String>,
            /// `assertion_algorithm`
            pub(crate) assertion_algorithm: Option<String>,
            /// `cloud`
            pub(crate) cloud: String,
            /// `authority_host`
            pub(crate) authority_host: Option<String>,
            /// `graph_endpoint`
            pub(crate) graph_endpoint: Option<String>,
            $( $(#[$b_meta])* $b: $b_ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $( $a: $a_default, )*
                    tenant_id: None,
                    client_id: None,
                    client_secret: None,
                    client_secret_file: None,
                    client_secret_credential: None,
                    client_secret_expires: None,
                    client_certificate: None,
                    client_certificate_credential: None,
                    client_key: None,
                    client_key_credential: None,
                    assertion_algorithm: None,
                    cloud: "global".into(),
                    authority_host: None,
                    graph_endpoint: None,
                    $( $b: $b_default, )*
                }
            }
        }

        impl From<&$name> for $crate::config::credential::CredentialKeys {
            fn from(raw: &$name) -> Self {
                Self {
                    tenant_id: raw.tenant_id.clone(),
                    client_id: raw.client_id.clone(),
                    client_secret: raw.client_secret.clone(),
                    client_secret_file: raw.client_secret_file.clone(),
                    client_secret_credential: raw.client_secret_credential.clone(),
                    client_secret_expires: raw.client_secret_expires.clone(),
                    client_certificate: raw.client_certificate.clone(),
                    client_certificate_credential: raw.client_certificate_credential.clone(),
                    client_key: raw.client_key.clone(),
                    client_key_credential: raw.client_key_credential.clone(),
                    assertion_algorithm: raw.assertion_algorithm.clone(),
                    cloud: raw.cloud.clone(),
                    authority_host: raw.authority_host.clone(),
                    graph_endpoint: raw.graph_endpoint.clone(),
                }
            }
        }
    };
}
pub(crate) use with_credential_keys;

with_credential_keys! {
    /// An app's keys as written, in a `.entraidconf` or an `[[alert.provider]]`: one set of
    /// keys, checked by one [`CredentialKeys::app`].
    #[derive(Debug)]
    pub struct CredentialKeys {
        @credential_keys;
    }
}

/// A credential read and checked.
#[derive(Debug, Clone)]
pub struct LoadedCredential {
    /// The secret or certificate.
    pub auth: ClientAuth,
    /// The file holding the secret or the private key (the config itself for an inline
    /// secret).
    pub file: PathBuf,
    /// When it expires (Unix seconds): the certificate's end of validity, or
    /// `client_secret_expires` when recorded.
    pub expires: Option<i64>,
}

/// An app checked: who it is, where it asks, and how it proves itself.
#[derive(Debug, Clone)]
pub struct App {
    /// Directory (tenant) id.
    pub tenant: TenantId,
    /// Application (client) id.
    pub client: ClientId,
    /// The `cloud` key.
    pub cloud: Cloud,
    /// Login and Graph hosts: the cloud's, or `authority_host` / `graph_endpoint`.
    pub endpoints: Endpoints,
    /// The secret or certificate, read.
    pub credential: LoadedCredential,
}

impl CredentialKeys {
    /// Checks the app's keys in the config at `path` and reads its credential, at the time
    /// `now` (Unix seconds): the ids and hosts first, then [`CredentialKeys::load`]. The one
    /// checker of these keys, for `.entraidconf` and `[[alert.provider]]` alike.
    pub fn app(self, path: &Path, env: &Env, confine: Option<&Confine<'_>>, now: i64) -> Result<App, ConfigError> {
        let bad = |key: &str, msg: String, hint: &str| ConfigError::new(path, format!("key `{key}`: {msg}"), hint);
        let tenant_hint = "copy the Directory (tenant) ID from the app's Overview page in the Entra admin center";
        let client_hint = "copy the Application (client) ID from the app's Overview page in the Entra admin center";
        let tenant_text =
            self.tenant_id.as_deref().ok_or_else(|| bad("tenant_id", "is missing".into(), tenant_hint))?;
        let tenant = TenantId::parse(tenant_text).ok_or_else(|| {
            bad("tenant_id", format!("`{}` is neither a GUID nor a domain name", quote(tenant_text)), tenant_hint)
        })?;
        let client_text =
            self.client_id.as_deref().ok_or_else(|| bad("client_id", "is missing".into(), client_hint))?;
        let client = ClientId::parse(client_text)
            .ok_or_else(|| bad("client_id", format!("`{}` is not a GUID", quote(client_text)), client_hint))?;
        let cloud = Cloud::from_name(&self.cloud).ok_or_else(|| {
            bad(
                "cloud",
                format!("unknown cloud `{}`", quote(&self.cloud)),
                "use \"global\", \"usgov\", \"usgov-dod\" or \"china\"",
            )
        })?;
        let endpoint = |key: &str, v: Option<&str>, default: &str| {
            parse_endpoint(v.unwrap_or(default)).map_err(|m| {
                bad(key, m, "use an https:// host such as https://graph.microsoft.com (http:// is accepted for 127.0.0.1, [::1] and localhost only), or remove the key and set `cloud`")
            })
        };
        let endpoints = Endpoints {
            authority: endpoint("authority_host", self.authority_host.as_deref(), cloud.authority_host())?,
            graph: endpoint("graph_endpoint", self.graph_endpoint.as_deref(), cloud.graph_endpoint())?,
        };
        let credential = self.load(path, env, confine, now)?;
        Ok(App { tenant, client, cloud, endpoints, credential })
    }

    /// Reads and checks the credential of the config at `path`, at the time `now` (Unix
    /// seconds): a secret, or a certificate (the two exclude each other) whose key belongs
    /// to it and which is valid now. `confine`: see [`read_source`].
    fn load(
        self,
        path: &Path,
        env: &Env,
        confine: Option<&Confine<'_>>,
        now: i64,
    ) -> Result<LoadedCredential, ConfigError> {
        let certificate_given = self.client_certificate.is_some()
            || self.client_certificate_credential.is_some()
            || self.client_key.is_some()
            || self.client_key_credential.is_some()
            || self.assertion_algorithm.is_some();
        let secret_given = self.client_secret.is_some()
            || self.client_secret_file.is_some()
            || self.client_secret_credential.is_some();
        if certificate_given && (secret_given || self.client_secret_expires.is_some()) {
            return Err(ConfigError::new(
                path,
                "both a client secret and a certificate are configured",
                "keep either the client_secret* keys or the client_certificate / client_key keys",
            ));
        }
        let named = [
            ("client_secret_credential", &self.client_secret_credential),
            ("client_certificate_credential", &self.client_certificate_credential),
            ("client_key_credential", &self.client_key_credential),
        ];
        // A borrowed credential is an error before anything is read, even by `check`.
        if let Some(c) = confine {
            for (key, name) in named.iter().filter_map(|(k, n)| Some((k, n.as_deref()?))) {
                c.credential(path, key, name)?;
            }
        }
        let unread: Vec<Unread> = named.into_iter().filter_map(|(key, name)| env.unread(key, name.as_ref())).collect();
        if !unread.is_empty() {
            if let Some(a) = self.assertion_algorithm.as_deref().filter(|a| AssertionAlgorithm::from_name(a).is_none())
            {
                return Err(unknown_algorithm(path, a));
            }
            let expires = self.secret_expires(path)?;
            return Ok(LoadedCredential { auth: ClientAuth::Unread(unread), file: path.to_owned(), expires });
        }
        if certificate_given {
            let (cert, file) = self.certificate(path, env, confine, now)?;
            let expires = Some(cert.not_after);
            return Ok(LoadedCredential { auth: ClientAuth::Certificate(Arc::new(cert)), file, expires });
        }
        if !secret_given {
            return Err(ConfigError::new(
                path,
                "no client credential is configured",
                "set client_certificate (recommended) or client_secret, client_secret_file or client_secret_credential",
            ));
        }
        let expires = self.secret_expires(path)?;
        let (secret, file) = resolve(
            "client_secret",
            self.client_secret,
            self.client_secret_file,
            self.client_secret_credential,
            path,
            env,
            confine,
        )?;
        Ok(LoadedCredential { auth: ClientAuth::Secret(secret), file, expires })
    }

    /// `client_secret_expires`, checked.
    fn secret_expires(&self, path: &Path) -> Result<Option<i64>, ConfigError> {
        self.client_secret_expires
            .as_deref()
            .map(|d| {
                crate::model::date::parse(d).ok_or_else(|| {
                    ConfigError::new(
                        path,
                        format!("key `client_secret_expires`: `{}` is not a date like 2027-05-01", quote(d)),
                        "copy the Expires date of the secret from App registrations > the app > Certificates & secrets, as YYYY-MM-DD",
                    )
                })
            })
            .transpose()
    }

    /// The certificate and key named, and the file holding the private key.
    fn certificate(
        self,
        path: &Path,
        env: &Env,
        confine: Option<&Confine<'_>>,
        now: i64,
    ) -> Result<(Certificate, PathBuf), ConfigError> {
        let algorithm = match self.assertion_algorithm.as_deref() {
            None => AssertionAlgorithm::default(),
            Some(a) => AssertionAlgorithm::from_name(a).ok_or_else(|| unknown_algorithm(path, a))?,
        };
        let (cert_pem, cert_file) = read_source(
            "client_certificate",
            self.client_certificate,
            self.client_certificate_credential,
            path,
            env,
            confine,
        )?
        .ok_or_else(|| {
            ConfigError::new(
                path,
                "client_key is set but no certificate",
                "set client_certificate (or client_certificate_credential) to the PEM file of the certificate uploaded to the app registration",
            )
        })?;
        let key = read_source("client_key", self.client_key, self.client_key_credential, path, env, confine)?;
        // Only the file that holds the key is secret: a certificate on its own is public.
        let key_file = key.as_ref().map_or_else(|| cert_file.clone(), |(_, f)| f.clone());
        if !env.credentials_directory.as_deref().is_some_and(|d| key_file.starts_with(d)) {
            warn_if_exposed(&key_file, "a private key");
        }
        let c = Certificate::from_pem(&cert_pem, key.as_ref().map(|(k, _)| k.as_slice()), algorithm).map_err(|e| {
            let from = key.as_ref().filter(|_| e.in_key).map_or(&cert_file, |(_, f)| f);
            ConfigError::new(path, format!("{}: {}", from.display(), e.message), e.hint)
        })?;
        let (from, to) = (crate::model::date::format(c.not_before), crate::model::date::format(c.not_after));
        let valid = format!("valid from {from} to {to}");
        if now > c.not_after {
            return Err(ConfigError::new(
                path,
                format!("{}: the certificate `{}` expired on {to} ({valid}); nothing was sent with it", cert_file.display(), c.subject),
                "create a new certificate, upload it under App registrations > the app > Certificates & secrets, and point client_certificate at it",
            ));
        }
        if now < c.not_before {
            return Err(ConfigError::new(
                path,
                format!("{}: the certificate `{}` is not valid yet ({valid}); nothing was sent with it", cert_file.display(), c.subject),
                "check this host's clock (timedatectl; NTP must be synchronised), or use the certificate from its first day",
            ));
        }
        Ok((c, key_file))
    }
}

fn unknown_algorithm(path: &Path, a: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("key `assertion_algorithm`: unknown algorithm `{}`", quote(a)),
        "use \"PS256\" (the default) or \"RS256\"",
    )
}

#[derive(Clone)]
struct Block {
    label: String,
    contents: Vec<u8>,
}

fn pem_blocks(pem: &[u8]) -> Result<Vec<Block>, CertificateError> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map(|b| b.map(|p| Block { label: p.label, contents: p.contents }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::new(format!("is not valid PEM: {e}"), CONVERT))
}

fn parse_certificate(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, CertificateError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| CertificateError::new(format!("the certificate cannot be read: {e}"), CONVERT))
}

struct PrivateKey {
    encoding: EncodingKey,
    public_key: Vec<u8>,
}

fn private_key(blocks: &[Block]) -> Result<PrivateKey, CertificateError> {
    let unusable = |what: &str| {
        CertificateError::new(
            format!("holds {what}"),
            "Entra ID client assertions need an unencrypted RSA key of 2048 bits or more; decrypt it with `openssl pkey -in key.pem -out key-plain.pem` and keep that file readable by root only",
        )
    };
    for b in blocks {
        let pair = match b.label.as_str() {
            "RSA PRIVATE KEY" => ring::rsa::KeyPair::from_der(&b.contents),
            "PRIVATE KEY" => ring::rsa::KeyPair::from_pkcs8(&b.contents),
            "ENCRYPTED PRIVATE KEY" => return Err(unusable("an encrypted key")),
            "EC PRIVATE KEY" => return Err(unusable("an EC key")),
            _ => continue,
        };
        let pair = pair.map_err(|e| unusable(&format!("a key that cannot be used for RS256/PS256 ({e})")))?;
        // jsonwebtoken signs with ring from the PKCS#1 key; a PKCS#8 PEM block is unwrapped by it.
        let pem = format!(
            "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n",
            b.label,
            base64::engine::general_purpose::STANDARD.encode(&b.contents)
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| unusable(&format!("a key jsonwebtoken cannot read ({e})")))?;
        return Ok(PrivateKey { encoding, public_key: pair.public_key().as_ref().to_vec() });
    }
    Err(CertificateError::new(
        "no private key was found",
        "put the key in the certificate's PEM file, or name it with client_key / client_key_credential",
    ))
}

/// A random (version 4) UUID for `jti`.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // Only uniqueness matters for `jti`.
        b = std::array::from_fn(|_| fastrand::u8(..));
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::model::ids::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/pki/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// A self-signed certificate for the fixture key `key`.
    fn certificate(key: &str) -> String {
        let kp = rcgen::KeyPair::from_pem_and_sign_algo(&fixture(key), &rcgen::PKCS_RSA_SHA256).unwrap();
        rcgen::CertificateParams::new(vec!["usersync-test".into()]).unwrap().self_signed(&kp).unwrap().pem()
    }

    #[test]
    fn signs_a_verifiable_assertion_with_the_thumbprint() {
        let cert = certificate("app-key.pem");
        for (key, alg, jwt_alg) in [
            (None, AssertionAlgorithm::Ps256, Algorithm::PS256),
            (Some(fixture("app-key-pkcs1.pem")), AssertionAlgorithm::Rs256, Algorithm::RS256),
        ] {
            let combined = format!("{cert}{}", fixture("app-key.pem"));
            let pem = if key.is_some() { cert.clone() } else { combined };
            let c = Certificate::from_pem(pem.as_bytes(), key.as_deref().map(str::as_bytes), alg).unwrap();
            let (_, der) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
            let want = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der.contents));
            assert_eq!(c.thumbprint, want);
            assert!(!format!("{c:?}").contains("BEGIN"), "the key never prints");
            let jwt = c
                .assertion("66666666-7777-8888-9999-000000000000", "https://login.example/t/oauth2/v2.0/token")
                .unwrap();
            assert_ne!(
                jwt.expose(),
                c.assertion("66666666-7777-8888-9999-000000000000", "https://login.example/t/oauth2/v2.0/token")
                    .unwrap()
                    .expose(),
                "fresh every time"
            );
            let header = jsonwebtoken::decode_header(jwt.expose()).unwrap();
            assert_eq!(
                (header.alg, header.typ.as_deref(), header.x5t_s256.as_deref()),
                (jwt_alg, Some("JWT"), Some(want.as_str()))
            );
            let x509 = der.parse_x509().unwrap();
            let key = jsonwebtoken::DecodingKey::from_rsa_der(&x509.public_key().subject_public_key.data);
            let mut v = jsonwebtoken::Validation::new(jwt_alg);
            v.set_audience(&["https://login.example/t/oauth2/v2.0/token"]);
            let claims = jsonwebtoken::decode::<serde_json::Value>(jwt.expose(), &key, &v).unwrap().claims;
            assert_eq!(claims["iss"], claims["sub"]);
            assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 600);
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let e = Certificate::from_pem(
            certificate("app-key.pem").as_bytes(),
            Some(fixture("other-key.pem").as_bytes()),
            AssertionAlgorithm::Ps256,
        )
        .unwrap_err();
        assert!(e.message.contains("does not belong"), "{e:?}");
        let e =
            Certificate::from_pem(certificate("app-key.pem").as_bytes(), None, AssertionAlgorithm::Ps256).unwrap_err();
        assert!(e.message.contains("no private key"), "{e:?}");
    }

    #[test]
    fn pem_without_certificate_or_key_is_explained() {
        let e = Certificate::from_pem(b"nothing here", None, AssertionAlgorithm::Ps256).unwrap_err();
        assert!(e.message.contains("BEGIN CERTIFICATE"), "{e:?}");
    }
}
