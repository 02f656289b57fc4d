//! TLS for the simulator, with a throwaway CA, and a loopback CONNECT proxy
//! that records what went through it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A CA and a server certificate for `localhost`, 127.0.0.1 (and the global cloud's login
/// and Graph hosts) signed by it.
pub struct TestPki {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// The leaf certificate (`localhost`, 127.0.0.1), PEM, for other test servers.
    pub cert_pem: String,
    /// The leaf's private key, PEM.
    pub key_pem: String,
    /// Server config presenting the leaf certificate.
    pub acceptor: TlsAcceptor,
}

impl TestPki {
    /// Makes a fresh CA and leaf.
    pub fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "usersync test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        // Also the global cloud's hosts, so that a redirecting proxy (`Proxy::redirecting`)
        // can stand in for Microsoft: a client trusting only this CA reaches the simulator.
        let names = ["localhost", "127.0.0.1", "login.microsoftonline.com", "graph.microsoft.com"];
        let mut leaf = CertificateParams::new(names.map(str::to_owned).to_vec())?;
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A TCP listener that completes a TLS handshake for each connection.
pub struct TlsListener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that does not trust our CA fails here; keep serving others.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A loopback HTTP CONNECT proxy (what `HTTPS_PROXY` points at); stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Proxy {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub fn start() -> std::io::Result<Self> {
        Self::start_to(None)
    }

    /// A proxy that tunnels every CONNECT to `to`, whatever host it names: with the
    /// simulator's TLS address there, `https://login.microsoftonline.com` and
    /// `https://graph.microsoft.com` are the simulator.
    pub fn redirecting(to: SocketAddr) -> std::io::Result<Self> {
        Self::start_to(Some(to))
    }

    fn start_to(to: Option<SocketAddr>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&connects);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("usersync-proxy".into()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            if let Ok((client, _)) = accepted {
                                tokio::spawn(tunnel(client, Arc::clone(&seen), to));
                            }
                        }
                    }
                }
            });
        })?;
        Ok(Self { addr, connects, _stop: stop })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `host:port` of every CONNECT so far.
    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

async fn tunnel(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>, to: Option<SocketAddr>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let Some(target) = text.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next()).map(str::to_owned)
    else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    if let Ok(mut c) = seen.lock() {
        c.push(target.clone());
    }
    let upstream = match to {
        Some(a) => TcpStream::connect(a).await,
        None => TcpStream::connect(&target).await,
    };
    let Ok(mut upstream) = upstream else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}
