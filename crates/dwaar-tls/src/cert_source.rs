//! `tls { get_certificate http <url> }`: certificates fetched from a service of the
//! operator's during the handshake, instead of issued by Dwaar.
//!
//! For a server name of such a site, the handshake asks each URL in order with
//! `GET <url>?server_name=<name>&signature_schemes=<hex,...>&cipher_suites=<hex,...>`.
//! A `200` answer holds the PEM certificate chain and its private key; `204 No Content`
//! means "none from me" and the next URL is asked. An answer (certificate or none) is
//! kept for [`FRESH`], so a busy name does not cost a request per handshake;
//! concurrent handshakes for one name make one request. The handshake waits at most
//! [`WAIT`] for the answers.

use crate::certs::Cert;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer is reused.
pub const FRESH: Duration = Duration::from_secs(60);
/// The longest a handshake waits for the certificate services.
pub const WAIT: Duration = Duration::from_secs(10);
/// Names remembered at most (the cache is emptied when it would grow past this).
const MAX_NAMES: usize = 10_000;

struct Cached {
    at: Instant,
    cert: Option<Arc<Cert>>,
}

pub struct CertSources {
    client: crate::https::Client,
    cache: Mutex<HashMap<String, Cached>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for CertSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertSources")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CertSources {
    pub fn new() -> Result<CertSources, String> {
        Ok(CertSources {
            client: crate::https::Client::new(None)?,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate last fetched for `name`, while it is valid.
    pub fn cached(&self, name: &str) -> Option<Arc<Cert>> {
        let cache = lock(&self.cache);
        let c = cache.get(name)?.cert.clone()?;
        (c.not_after > std::time::SystemTime::now()).then_some(c)
    }

    fn fresh(&self, name: &str) -> bool {
        lock(&self.cache)
            .get(name)
            .is_some_and(|c| c.at.elapsed() < FRESH)
    }

    /// Makes the cache's answer for `name` fresh, asking `urls` in order.
    pub async fn refresh(&self, name: &str, urls: &[String], sigs: &str, suites: &str) {
        if self.fresh(name) {
            return;
        }
        let turn = lock(&self.inflight)
            .entry(name.to_string())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        if self.fresh(name) {
            return;
        }
        let cert = match tokio::time::timeout(WAIT, self.ask(name, urls, sigs, suites)).await {
            Ok(c) => c,
            Err(_) => {
                tracing::warn!(
                    name,
                    "the certificate services did not answer within {WAIT:?}"
                );
                None
            }
        };
        lock(&self.inflight).remove(name);
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
        cache.insert(
            name.to_string(),
            Cached {
                at: Instant::now(),
                cert,
            },
        );
    }

    async fn ask(
        &self,
        name: &str,
        urls: &[String],
        sigs: &str,
        suites: &str,
    ) -> Option<Arc<Cert>> {
        use crate::https::uri_encode;
        for url in urls {
            let sep = if url.contains('?') { '&' } else { '?' };
            let full = format!(
                "{url}{sep}server_name={}&signature_schemes={}&cipher_suites={}",
                uri_encode(name, false),
                uri_encode(sigs, false),
                uri_encode(suites, false)
            );
            match self.client.send("GET", &full, &[], Vec::new()).await {
                Ok(r) if r.status == 200 => {
                    let pem = r.text();
                    match Cert::from_pem(&pem, &pem) {
                        Ok(c) => {
                            tracing::debug!(name, url, "certificate from get_certificate");
                            return Some(Arc::new(c));
                        }
                        Err(e) => tracing::warn!(name, url, "unusable certificate: {e}"),
                    }
                }
                Ok(r) if r.status == 204 => {}
                Ok(r) => tracing::warn!(
                    name,
                    url,
                    status = r.status,
                    "get_certificate answered with an error"
                ),
                Err(e) => tracing::warn!(name, url, "get_certificate: {e}"),
            }
        }
        None
    }
}

/// `0403,0804,...`: values of a ClientHello list as Go's `%x` prints them.
pub fn hex_list(values: impl Iterator<Item = u16>) -> String {
    values
        .map(|v| format!("{v:x}"))
        .collect::<Vec<_>>()
        .join(",")
}
