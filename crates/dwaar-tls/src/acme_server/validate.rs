//! Validating an ACME challenge of Dwaar's ACME server: HTTP-01 (a GET on port 80),
//! TLS-ALPN-01 (a handshake on port 443 offering `acme-tls/1`, RFC 8737) and DNS-01
//! (the `_acme-challenge` TXT record). Names resolve through the configured resolvers,
//! else the system's. One attempt, each step bounded by a timeout.

use crate::dns::{lookup::Resolvers, wire};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

pub struct Job {
    /// `http-01`, `tls-alpn-01` or `dns-01`.
    pub kind: String,
    /// The DNS name (wildcards without `*.`) or IP address validated.
    pub identifier: String,
    pub token: String,
    pub key_auth: String,
    pub resolvers: Vec<String>,
}

fn digest(data: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data.as_bytes())
        .as_ref()
        .to_vec()
}

impl Job {
    pub async fn run(self) -> Result<(), String> {
        match self.kind.as_str() {
            "http-01" => self.http01().await,
            "tls-alpn-01" => self.tls_alpn01().await,
            "dns-01" => self.dns01().await,
            other => Err(format!("unknown challenge type {other}")),
        }
    }

    async fn addresses(&self, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = self.identifier.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut out = Vec::new();
        if self.resolvers.is_empty() {
            let found = tokio::time::timeout(
                STEP,
                tokio::net::lookup_host((self.identifier.as_str(), port)),
            )
            .await
            .map_err(|_| format!("resolving {} timed out", self.identifier))?
            .map_err(|e| format!("cannot resolve {}: {e}", self.identifier))?;
            out.extend(found);
        } else {
            let res = Resolvers::new(&self.resolvers);
            for qtype in [wire::A, wire::AAAA] {
                if let Ok(m) = res.ask(&self.identifier, qtype).await {
                    out.extend(m.answers.iter().filter_map(|r| match r.data {
                        wire::Data::Addr(ip) => Some(SocketAddr::new(ip, port)),
                        _ => None,
                    }));
                }
            }
        }
        if out.is_empty() {
            return Err(format!("{} has no address", self.identifier));
        }
        Ok(out)
    }

    async fn http01(&self) -> Result<(), String> {
        let mut last = String::new();
        for addr in self.addresses(80).await? {
            match self.http01_at(addr).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn http01_at(&self, addr: SocketAddr) -> Result<(), String> {
        let host = match self.identifier.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.identifier.clone(),
        };
        let req = format!(
            "GET /.well-known/acme-challenge/{} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Dwaar ACME server\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.token
        );
        let body = tokio::time::timeout(STEP, async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            (&mut s).take(64 * 1024).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|_| format!("{addr}: no answer within {STEP:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&body) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return Err(format!("{addr}: not an HTTP response")),
        };
        if resp.code != Some(200) {
            return Err(format!(
                "{addr}: HTTP-01 answered with status {:?}",
                resp.code
            ));
        }
        let got = String::from_utf8_lossy(&body[head..]);
        if got.trim() != self.key_auth {
            return Err(format!(
                "{addr}: the HTTP-01 answer is not the key authorization"
            ));
        }
        Ok(())
    }

    async fn tls_alpn01(&self) -> Result<(), String> {
        let mut last = String::new();
        for addr in self.addresses(443).await? {
            match self.tls_alpn01_at(addr).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn tls_alpn01_at(&self, addr: SocketAddr) -> Result<(), String> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(crate::provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            // The certificate's contents are what counts, not its issuer.
            .with_custom_certificate_verifier(Arc::new(crate::verify::AnyServerCert {
                provider: Arc::new(crate::provider()),
                check_signatures: false,
            }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(self.identifier.clone())
            .map_err(|_| format!("'{}' cannot be a TLS server name", self.identifier))?;
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let stream = tokio::time::timeout(STEP, async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            conn.connect(name, tcp).await
        })
        .await
        .map_err(|_| format!("{addr}: no handshake within {STEP:?}"))?
        .map_err(|e| format!("{addr}: TLS-ALPN-01 handshake: {e}"))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(b"acme-tls/1") {
            return Err(format!("{addr}: the server did not choose acme-tls/1"));
        }
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{addr}: no certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|_| format!("{addr}: the certificate does not parse"))?;
        let names_ok = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value.general_names.iter().any(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        d.eq_ignore_ascii_case(&self.identifier)
                    }
                    _ => false,
                })
            });
        if !names_ok {
            return Err(format!(
                "{addr}: the certificate does not name {}",
                self.identifier
            ));
        }
        // id-pe-acmeIdentifier: an OCTET STRING of the key authorization's SHA-256.
        let mut want = vec![0x04, 0x20];
        want.extend(digest(&self.key_auth));
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .ok_or_else(|| format!("{addr}: the certificate has no acmeIdentifier"))?;
        if !ext.critical || ext.value != want.as_slice() {
            return Err(format!("{addr}: the acmeIdentifier does not match"));
        }
        Ok(())
    }

    async fn dns01(&self) -> Result<(), String> {
        let want = super::jws::b64(&digest(&self.key_auth));
        let name = format!("_acme-challenge.{}", self.identifier);
        let res = Resolvers::new(&self.resolvers);
        let m = res.ask(&name, wire::TXT).await?;
        if m.answers
            .iter()
            .any(|r| r.rtype == wire::TXT && r.data == wire::Data::Txt(want.clone()))
        {
            Ok(())
        } else {
            Err(format!("no TXT record at {name} holds the expected value"))
        }
    }
}
