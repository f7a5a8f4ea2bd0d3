//! Certificates in memory: a rustls `CertifiedKey` plus the facts Dwaar needs about it
//! (the names it covers, its validity window), and the map that SNI lookups search.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate chain with its key, ready to serve.
#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// DNS names (lowercase, wildcards as `*.example.com`) and IP addresses it covers.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number (raw bytes): the key of its OCSP staple.
    pub serial: Vec<u8>,
    /// Where to ask about revocation, if the certificate says.
    pub ocsp_url: Option<String>,
    /// The chain and key as PEM, for storage.
    pub chain_pem: String,
    pub key_pem: String,
}

impl Cert {
    /// Parses a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Cert, String> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid certificate PEM: {e}"))?;
        let Some(leaf) = chain.first() else {
            return Err("no certificate found in the PEM data".into());
        };
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| format!("invalid private key PEM: {e}"))?
            .ok_or("no private key found in the PEM data")?;
        let (names, not_before, not_after) = leaf_facts(leaf)?;
        let serial = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.raw_serial().to_vec())
            .unwrap_or_default();
        let ocsp_url = crate::ocsp::responder_url(leaf);
        let provider = crate::provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("unsupported private key: {e}"))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| format!("the private key does not belong to the certificate ({e})"))?;
        Ok(Cert {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
            serial,
            ocsp_url,
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// Reads `tls <cert_file> <key_file>`.
    pub fn from_files(cert_file: &str, key_file: &str) -> Result<Cert, String> {
        let chain = std::fs::read_to_string(cert_file)
            .map_err(|e| format!("cannot read certificate file {cert_file}: {e}"))?;
        let key = std::fs::read_to_string(key_file)
            .map_err(|e| format!("cannot read key file {key_file}: {e}"))?;
        Cert::from_pem(&chain, &key).map_err(|e| format!("{cert_file}: {e}"))
    }

    /// Whether it is time to renew: less than a third of the lifetime is left.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// When a third of the lifetime remains.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after - life / 3
    }

    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, name))
    }
}

/// Names and validity of a DER certificate.
pub fn leaf_facts(der: &[u8]) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        names,
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// Whether certificate name `pattern` (maybe `*.example.com`) covers `name`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// Certificates by the names they cover: exact names first, then wildcards.
#[derive(Debug, Default, Clone)]
pub struct CertMap {
    exact: HashMap<String, Arc<Cert>>,
    /// `example.com` for a `*.example.com` certificate.
    wildcard: HashMap<String, Arc<Cert>>,
}

impl CertMap {
    /// Adds `cert` under each of its names (or under `names` when given).
    pub fn insert(&mut self, cert: Arc<Cert>, names: Option<&[String]>) {
        let names = names.unwrap_or(&cert.names);
        for n in names {
            match n.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_string(), cert.clone()),
                None => self.exact.insert(n.clone(), cert.clone()),
            };
        }
    }

    /// The certificate stored under exactly `name` (`*.example.com` for a wildcard).
    pub fn exact(&self, name: &str) -> Option<&Arc<Cert>> {
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.get(suffix),
            None => self.exact.get(name),
        }
    }

    pub fn wildcard_for(&self, name: &str) -> Option<&Arc<Cert>> {
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// Exact name first, then a wildcard covering it.
    pub fn get(&self, name: &str) -> Option<&Arc<Cert>> {
        self.exact(name).or_else(|| self.wildcard_for(name))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (String, &Arc<Cert>)> {
        self.exact
            .iter()
            .map(|(n, c)| (n.clone(), c))
            .chain(self.wildcard.iter().map(|(n, c)| (format!("*.{n}"), c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(name_matches("example.com", "example.com"));
    }
}
