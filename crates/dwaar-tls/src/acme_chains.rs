//! `preferred_chains`: choosing among the certificate chains an ACME CA offers.
//!
//! A CA may offer the same certificate under several chains (to different roots, for
//! old clients). It sends the others as `Link: <url>;rel="alternate"` headers on the
//! certificate download. The ACME client's HTTP layer is wrapped ([`Recording`]) to
//! note those links and the latest `Replay-Nonce`; the alternates are then fetched with
//! POST-as-GET requests signed by the account key (ES256 JWS, RFC 8555 §6.3), and the
//! chain the operator prefers is kept: the smallest, or one whose root (or any issuer)
//! has a given common name. Without a match the CA's default chain stays.

use bytes::Bytes;
use dwaar_config::model::PreferredChains;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// What the HTTP layer saw: alternate chain links by certificate URL, and the latest
/// nonce by host.
#[derive(Default)]
struct Seen {
    alternates: HashMap<String, Vec<String>>,
    nonces: HashMap<String, String>,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: std::sync::OnceLock<Mutex<Seen>> = std::sync::OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Seen> {
    seen().lock().unwrap_or_else(|p| p.into_inner())
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_string()
}

/// An ACME HTTP client that notes alternate-chain links and nonces.
pub struct Recording<C>(pub C);

impl<C: HttpClient> HttpClient for Recording<C> {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        let fut = self.0.request(req);
        Box::pin(async move {
            let rsp = fut.await?;
            note(&url, &rsp.parts.headers);
            Ok(rsp)
        })
    }
}

fn note(url: &str, headers: &http::HeaderMap) {
    let links: Vec<String> = headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|l| l.contains("rel=\"alternate\""))
        .filter_map(|l| {
            let (_, rest) = l.split_once('<')?;
            Some(rest.split_once('>')?.0.to_string())
        })
        .collect();
    let nonce = headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = lock();
    if !links.is_empty() {
        if s.alternates.len() > 1000 {
            s.alternates.clear();
        }
        s.alternates.insert(url.to_string(), links);
    }
    if let Some(n) = nonce {
        s.nonces.insert(host_of(url), n);
    }
}

/// The alternate chain URLs the CA listed with the certificate at `cert_url`.
pub fn alternates(cert_url: &str) -> Vec<String> {
    lock().alternates.remove(cert_url).unwrap_or_default()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// POST-as-GET of `url` signed with the account (`kid`, P-256 PKCS#8 `key`).
async fn post_as_get(
    client: &crate::https::Client,
    url: &str,
    kid: &str,
    key: &ring::signature::EcdsaKeyPair,
) -> Result<String, String> {
    for _ in 0..3 {
        let nonce = lock()
            .nonces
            .remove(&host_of(url))
            .ok_or("no ACME nonce at hand")?;
        let protected = serde_json::json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url});
        let protected = b64(protected.to_string().as_bytes());
        let signing_input = format!("{protected}.");
        let sig = key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| "cannot sign the request")?;
        let body = serde_json::json!({"protected": protected, "payload": "", "signature": b64(sig.as_ref())});
        let r = client
            .send(
                "POST",
                url,
                &[("content-type", "application/jose+json")],
                body.to_string().into_bytes(),
            )
            .await?;
        note(url, &r.headers);
        if r.status == 200 {
            return Ok(String::from_utf8_lossy(&r.body).into_owned());
        }
        let text = String::from_utf8_lossy(&r.body).into_owned();
        if !text.contains("badNonce") {
            return Err(format!("HTTP {}: {text}", r.status));
        }
    }
    Err("the CA kept refusing nonces".into())
}

/// The common names of each certificate's issuer in a PEM chain, leaf first.
fn issuer_names(pem: &str) -> Vec<String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
            let cn = c
                .issuer()
                .iter_common_name()
                .next()
                .and_then(|n| n.as_str().ok())
                .map(str::to_string);
            cn
        })
        .collect()
}

/// The chain `prefs` chooses among `chains` (the CA's default first); `None` to keep
/// the default.
pub fn choose<'a>(prefs: &PreferredChains, chains: &'a [String]) -> Option<&'a String> {
    if prefs.smallest {
        return chains.iter().min_by_key(|c| c.len());
    }
    for want in &prefs.root_common_name {
        if let Some(c) = chains
            .iter()
            .find(|c| issuer_names(c).last().is_some_and(|r| r == want))
        {
            return Some(c);
        }
    }
    for want in &prefs.any_common_name {
        if let Some(c) = chains
            .iter()
            .find(|c| issuer_names(c).iter().any(|n| n == want))
        {
            return Some(c);
        }
    }
    None
}

/// Fetches the alternates of the certificate at `cert_url` and returns the preferred
/// chain when it is not the default one.
pub async fn preferred(
    prefs: &PreferredChains,
    default: &str,
    cert_url: &str,
    account_id: &str,
    account_key_pkcs8: &[u8],
    client: &crate::https::Client,
) -> Result<Option<String>, String> {
    let urls = alternates(cert_url);
    if urls.is_empty() {
        return Ok(None);
    }
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        account_key_pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|_| "the ACME account key is not a P-256 key")?;
    let mut chains = vec![default.to_string()];
    for u in &urls {
        chains.push(post_as_get(client, u, account_id, &key).await?);
    }
    Ok(choose(prefs, &chains)
        .filter(|c| c.as_str() != default)
        .cloned())
}
