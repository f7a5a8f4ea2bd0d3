//! The HTTPS client of Dwaar's certificate automation: the ACME CA, DNS providers'
//! APIs. Servers are verified against the system's roots, or against one PEM root when
//! a test or private CA needs it; `http://` URLs are allowed for local services.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;

pub type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A connector trusting `ca_root` (a PEM file) or else the system's roots.
pub fn connector(ca_root: Option<&str>) -> Result<Connector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_root {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read CA root {path}: {e}"))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| format!("{path}: invalid PEM: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{path}: unusable root: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("{path}: no certificate found"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system root certificates found to verify servers".into());
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crate::provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build())
}

/// A small JSON/XML API client.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(ca_root: Option<&str>) -> Result<Client, String> {
        Ok(Client {
            inner:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(connector(ca_root)?),
        })
    }

    /// Sends one request and reads the whole answer, within 30 seconds.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| format!("{method} {url}: no answer within 30s"))?
            .map_err(|e| format!("{method} {url}: {e}"))
    }
}

/// Percent-encodes everything but `A-Za-z0-9-_.~` (RFC 3986's unreserved characters,
/// as AWS Signature Version 4 requires too); `/` is kept in paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
