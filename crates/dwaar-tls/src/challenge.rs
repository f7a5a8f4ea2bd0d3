//! ACME challenge answers being validated right now.
//!
//! The process that talks to the CA publishes each answer in memory and in storage;
//! processes that only serve traffic (workers, an upgraded successor) find it in
//! storage. Lookups happen only for requests under `/.well-known/acme-challenge/` and
//! handshakes offering the `acme-tls/1` protocol, so ordinary traffic never pays.

use crate::storage::{safe_name, Secrecy, Storage};
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The path prefix of HTTP-01 challenge requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
pub struct ChallengeBoard {
    http: Mutex<HashMap<String, String>>,
    tls_alpn: Mutex<HashMap<String, Arc<ServerConfig>>>,
    /// Where other processes publish answers.
    storage: ArcSwap<Option<Storage>>,
}

impl ChallengeBoard {
    pub fn set_storage(&self, storage: Storage) {
        self.storage.store(Arc::new(Some(storage)));
    }

    /// Publishes an HTTP-01 answer.
    pub fn put_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
        if let Some(s) = &**self.storage.load() {
            let _ = s.write(
                &format!("challenges/http/{}", safe_name(token)),
                key_authorization.as_bytes(),
                Secrecy::Public,
            );
        }
    }

    pub fn remove_http(&self, token: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.remove(token);
        }
        if let Some(s) = &**self.storage.load() {
            s.remove(&format!("challenges/http/{}", safe_name(token)));
        }
    }

    /// The key authorisation for an HTTP-01 `token`, if one is being validated.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        // ACME tokens are base64url of at least 128 bits (RFC 8555 §8.1): anything else
        // is not looked up, so scanners of the path cost no storage (or Redis) read.
        let plausible = token.len() >= 22
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plausible {
            return None;
        }
        if let Some(v) = self.http.lock().ok().and_then(|m| m.get(token).cloned()) {
            return Some(v);
        }
        let s = self.storage.load();
        let s = (**s).as_ref()?;
        let data = s.read(&format!("challenges/http/{}", safe_name(token)))?;
        String::from_utf8(data).ok()
    }

    /// Publishes a TLS-ALPN-01 certificate (PEM chain and key) for `name`.
    pub fn put_tls_alpn(&self, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let config = alpn_config(cert_pem, key_pem)?;
        if let Ok(mut m) = self.tls_alpn.lock() {
            m.insert(name.to_string(), config);
        }
        if let Some(s) = &**self.storage.load() {
            let base = format!("challenges/tls-alpn/{}", safe_name(name));
            s.write(&format!("{base}.key"), key_pem.as_bytes(), Secrecy::Secret)?;
            s.write(&format!("{base}.crt"), cert_pem.as_bytes(), Secrecy::Public)?;
        }
        Ok(())
    }

    pub fn remove_tls_alpn(&self, name: &str) {
        if let Ok(mut m) = self.tls_alpn.lock() {
            m.remove(name);
        }
        if let Some(s) = &**self.storage.load() {
            let base = format!("challenges/tls-alpn/{}", safe_name(name));
            s.remove(&format!("{base}.crt"));
            s.remove(&format!("{base}.key"));
        }
    }

    /// The server config answering a TLS-ALPN-01 validation for `name`.
    pub fn tls_alpn_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        if let Some(c) = self.tls_alpn.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Some(c);
        }
        let s = self.storage.load();
        let s = (**s).as_ref()?;
        let base = format!("challenges/tls-alpn/{}", safe_name(name));
        let cert = String::from_utf8(s.read(&format!("{base}.crt"))?).ok()?;
        let key = String::from_utf8(s.read(&format!("{base}.key"))?).ok()?;
        alpn_config(&cert, &key).ok()
    }
}

fn alpn_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    // Not `Cert::from_pem`: its key check parses the certificate with webpki, which
    // rejects the critical acmeIdentifier extension this certificate exists to carry.
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid challenge certificate: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("invalid challenge key: {e}"))?
        .ok_or("no challenge key")?;
    let signing = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported challenge key: {e}"))?;
    let key = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
    let mut config = ServerConfig::builder_with_provider(Arc::new(crate::provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_tokens_are_answered() {
        let b = ChallengeBoard::default();
        let token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
        b.put_http(token, "key-authorization");
        b.put_http("short", "x");
        assert_eq!(b.http_answer(token).as_deref(), Some("key-authorization"));
        assert_eq!(b.http_answer("short"), None);
        assert_eq!(b.http_answer("../../etc/passwd-aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(b.http_answer(""), None);
    }
}
