//! A blocking HTTPS client for tests: one request per connection over rustls, with the
//! handshake facts (ALPN, version, cipher, the server's chain) exposed for assertions.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// How to connect.
#[derive(Clone, Default)]
pub struct TlsOpts {
    /// PEM roots the server chain must verify against; empty = accept any chain.
    pub roots_pem: Vec<u8>,
    /// ALPN protocols to offer (default: `http/1.1`).
    pub alpn: Vec<&'static str>,
    /// A client certificate chain and key (PEM files).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Only TLS 1.2 (`Some(12)`) or only TLS 1.3 (`Some(13)`).
    pub version: Option<u8>,
    /// Send no SNI (as when connecting to an IP address).
    pub no_sni: bool,
}

impl TlsOpts {
    pub fn trusting(pem: impl AsRef<[u8]>) -> TlsOpts {
        TlsOpts {
            roots_pem: pem.as_ref().to_vec(),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub alpn: Option<String>,
    pub version: String,
    pub cipher: String,
    /// The server's chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The handshake resumed an earlier session (a ticket or a cached session id).
    pub resumed: bool,
}

impl TlsResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The leaf certificate's serial number as lowercase hex (from `openssl`'s point
    /// of view: the DER bytes of the integer).
    pub fn leaf_serial(&self) -> String {
        crate::tls::serial_hex(self.chain.first().map(|c| &c[..]).unwrap_or(&[]))
    }
}

/// A completed TLS connection to 127.0.0.1:`port` (for tests that write by hand).
pub fn connect(
    port: u16,
    sni: &str,
    opts: &TlsOpts,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let config = client_config(opts)?;
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends `GET path` with `Host: host` to 127.0.0.1:`port`, using `sni` as the server
/// name. Errors are handshake or I/O failures (a refused client certificate, an
/// unknown name, an untrusted chain).
pub fn get(
    port: u16,
    sni: &str,
    host: &str,
    path: &str,
    opts: &TlsOpts,
) -> std::io::Result<TlsResponse> {
    get_with(&Client::new(opts)?, port, sni, host, path)
}

/// A client configuration kept across connections: it remembers the sessions servers
/// offer (tickets), so later connections to the same name try to resume them.
#[derive(Clone)]
pub struct Client {
    config: Arc<rustls::ClientConfig>,
    no_sni: bool,
}

impl Client {
    pub fn new(opts: &TlsOpts) -> std::io::Result<Client> {
        Ok(Client {
            config: Arc::new(client_config(opts)?),
            no_sni: opts.no_sni,
        })
    }
}

/// [`get`] with a kept [`Client`].
pub fn get_with(
    client: &Client,
    port: u16,
    sni: &str,
    host: &str,
    path: &str,
) -> std::io::Result<TlsResponse> {
    let config = client.config.clone();
    let name = if client.no_sni {
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
    } else {
        ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?
    };
    let mut conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Complete the handshake first, so handshake failures are reported as such.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // Servers may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let conn = &tls.conn;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let version = format!("{:?}", conn.protocol_version());
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(std::io::Error::other(format!(
                "bad response: {:?}",
                String::from_utf8_lossy(&raw)
            )))
        }
    };
    Ok(TlsResponse {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&raw[head_len..]).into_owned(),
        alpn,
        version,
        cipher,
        chain,
        resumed,
    })
}

fn client_config(opts: &TlsOpts) -> std::io::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match opts.version {
        Some(12) => vec![&rustls::version::TLS12],
        Some(13) => vec![&rustls::version::TLS13],
        _ => vec![&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(std::io::Error::other)?;
    let builder = if opts.roots_pem.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut opts.roots_pem.as_slice()) {
            roots.add(c?).map_err(std::io::Error::other)?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &opts.client_cert {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
                .ok_or_else(|| std::io::Error::other("no key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(std::io::Error::other)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if opts.alpn.is_empty() {
        vec![b"http/1.1".to_vec()]
    } else {
        opts.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    Ok(config)
}

/// Accepts any server certificate (for tests that look at what was served, and for
/// `benchmarks/loadgen`, which measures the server rather than its chain).
#[derive(Debug)]
pub struct AnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The serial number of a DER certificate, hex (by walking the DER: SEQUENCE {
/// SEQUENCE { \[0\] version, INTEGER serial ... } }).
pub fn serial_hex(der: &[u8]) -> String {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let walk = || -> Option<String> {
        let (_, h, _) = header(der)?; // Certificate
        let tbs = &der[h..];
        let (_, h, _) = header(tbs)?; // TBSCertificate
        let mut rest = &tbs[h..];
        let (tag, h, len) = header(rest)?;
        if tag == 0xa0 {
            rest = &rest[h + len..];
        }
        let (tag, h, len) = header(rest)?;
        (tag == 0x02).then(|| {
            rest[h..h + len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    };
    walk().unwrap_or_default()
}

/// The DNS names a DER certificate's text form mentions (via `openssl x509`).
pub fn cert_text(der: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(der);
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
