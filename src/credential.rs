//! How an app proves itself to Entra ID: a client secret, or a certificate whose key signs
//! a fresh JWT client assertion for every token request.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair as _;
use serde::Serialize;

use crate::secret::Secret;

/// How long a client assertion is valid (Entra accepts at most 10 minutes).
pub const ASSERTION_LIFETIME_SECONDS: u64 = 600;

/// What the token request proves the app's identity with.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// `client_secret`.
    Secret(Secret),
    /// `client_assertion`, signed with the certificate's key.
    Certificate(Arc<Certificate>),
}

impl ClientAuth {
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
    /// The certificate's subject, for messages.
    pub subject: String,
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
        Ok(Self {
            thumbprint: URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &cert.contents)),
            subject: x509.subject().to_string(),
            not_after: x509.validity().not_after.timestamp(),
            algorithm,
            key: key.encoding,
        })
    }

    /// A new client assertion for `client_id` at the token endpoint `token_url`, valid
    /// from now for [`ASSERTION_LIFETIME_SECONDS`]. Never reuse one.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<Secret, jsonwebtoken::errors::Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
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
    let h = b.iter().fold(String::with_capacity(32), |mut h, x| {
        use std::fmt::Write as _;
        let _ = write!(h, "{x:02x}");
        h
    });
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
