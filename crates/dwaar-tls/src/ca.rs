//! Dwaar's local certificate authority (`tls internal`, `local_certs`).
//!
//! The root key and certificate are created once and kept in storage
//! (`pki/local/root.key` mode 0600, `pki/local/root.crt`); `dwaar trust` installs the
//! root into the system store. Leaf certificates (ECDSA P-256) are short-lived and
//! issued in memory when a config is applied, renewed by the manager, and issued at
//! handshake time for a catch-all `tls internal` site (bounded by [`ON_DEMAND_MAX`]).

use crate::certs::{Cert, CertMap};
use crate::storage::{Secrecy, Storage};
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const ROOT_CERT: &str = "pki/local/root.crt";
pub const ROOT_KEY: &str = "pki/local/root.key";
/// Lifetime of local leaf certificates.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most certificates issued at handshake time that are kept at once.
pub const ON_DEMAND_MAX: usize = 1000;
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    on_demand: Mutex<usize>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCa")
    }
}

impl LocalCa {
    /// Loads the CA from storage, creating it the first time (under a lock, so two
    /// processes starting together agree on one root).
    pub fn load_or_create(storage: &Storage) -> Result<LocalCa, String> {
        if let Some(ca) = Self::load(storage)? {
            return Ok(ca);
        }
        let _lock = storage.lock("local-ca")?;
        if let Some(ca) = Self::load(storage)? {
            return Ok(ca);
        }
        let key = KeyPair::generate().map_err(|e| format!("cannot create the CA key: {e}"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let year = 1970
            + SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() / 31_556_952)
                .unwrap_or(0);
        dn.push(DnType::OrganizationName, "Dwaar Local CA");
        dn.push(DnType::CommonName, format!("Dwaar Local Root {year}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(random_serial());
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + ROOT_LIFETIME).into();
        let cert = p
            .self_signed(&key)
            .map_err(|e| format!("cannot create the CA certificate: {e}"))?;
        storage.write(ROOT_KEY, key.serialize_pem().as_bytes(), Secrecy::Secret)?;
        storage.write(ROOT_CERT, cert.pem().as_bytes(), Secrecy::Public)?;
        tracing::info!(path = %storage.path(ROOT_CERT).display(), "created the local CA root certificate");
        Self::load(storage)?.ok_or_else(|| "the local CA vanished after creation".into())
    }

    fn load(storage: &Storage) -> Result<Option<LocalCa>, String> {
        let (Some(cert), Some(key)) = (storage.read(ROOT_CERT), storage.read(ROOT_KEY)) else {
            return Ok(None);
        };
        let bad = |e: String| {
            format!(
                "the local CA in {} is unreadable ({e}); move it away to create a new one",
                storage.path("pki/local").display()
            )
        };
        let cert = String::from_utf8(cert).map_err(|e| bad(e.to_string()))?;
        let key = String::from_utf8(key).map_err(|e| bad(e.to_string()))?;
        let key = KeyPair::from_pem(&key).map_err(|e| bad(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| bad(e.to_string()))?;
        Ok(Some(LocalCa {
            issuer,
            root_pem: cert,
            on_demand: Mutex::new(0),
        }))
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf for `names` (DNS names, wildcards or IP addresses) with a new key
    /// of type `key`.
    pub fn issue(&self, names: &[String], key: KeyType) -> Result<Cert, String> {
        let key = key.generate()?;
        let mut p = CertificateParams::new(names.to_vec())
            .map_err(|e| format!("cannot issue a certificate for {names:?}: {e}"))?;
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial());
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(600)).into();
        p.not_after = (now + LEAF_LIFETIME).into();
        let leaf = p
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("cannot sign a certificate for {names:?}: {e}"))?;
        let chain = format!("{}{}", leaf.pem(), self.root_pem);
        Cert::from_pem(&chain, &key.serialize_pem())
    }

    /// Signs the key of a CSR (whose signature it checks) for `names` (DNS names or IP
    /// addresses), valid for `lifetime`: the PEM chain, leaf first. The CSR's own
    /// subject and extensions are ignored; what it may have was decided by the caller.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        names: &[String],
        lifetime: Duration,
    ) -> Result<String, String> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| format!("unusable CSR: {e}"))?;
        let mut p = CertificateParams::new(names.to_vec())
            .map_err(|e| format!("cannot issue a certificate for {names:?}: {e}"))?;
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial());
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + lifetime).into();
        csr.params = p;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| format!("cannot sign a certificate for {names:?}: {e}"))?;
        Ok(format!("{}{}", leaf.pem(), self.root_pem))
    }

    /// A certificate for `name` from `managed`, issuing (and remembering) one if needed.
    pub fn issue_cached(
        &self,
        name: &str,
        managed: &ArcSwap<CertMap>,
    ) -> Result<Arc<Cert>, String> {
        if let Some(c) = managed.load().exact(name) {
            return Ok(c.clone());
        }
        if !plausible_name(name) {
            return Err(format!("'{name}' is not a host name"));
        }
        let mut count = self.on_demand.lock().map_err(|_| "poisoned")?;
        if *count >= ON_DEMAND_MAX {
            return Err(format!(
                "{ON_DEMAND_MAX} certificates were already issued on demand; refusing more"
            ));
        }
        let cert = Arc::new(self.issue(&[name.to_string()], KeyType::default())?);
        *count += 1;
        managed.rcu(|m| {
            let mut m = (**m).clone();
            m.insert(cert.clone(), Some(&[name.to_string()]));
            m
        });
        Ok(cert)
    }
}

fn plausible_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':' || b == b'_')
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_issues_verifiable_leaves() {
        crate::install_provider();
        let dir = std::env::temp_dir().join(format!("dwaar-ca-{}", std::process::id()));
        let s = Storage::new(&dir);
        let a = LocalCa::load_or_create(&s).unwrap();
        let b = LocalCa::load_or_create(&s).unwrap();
        assert_eq!(a.root_pem(), b.root_pem(), "the root is created once");
        let leaf = a
            .issue(
                &["localhost".into(), "127.0.0.1".into(), "a.localhost".into()],
                KeyType::P256,
            )
            .unwrap();
        assert!(leaf.covers("localhost") && leaf.covers("127.0.0.1") && leaf.covers("a.localhost"));
        assert!(!leaf.covers("example.com"));
        // The chain verifies against the root with rustls' own verifier.
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut a.root_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        use rustls::client::danger::ServerCertVerifier;
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let chain = &leaf.key.cert;
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "a.localhost"] {
            let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path(ROOT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The kind of key a certificate is made for (`key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    #[default]
    P256,
    P384,
    Rsa2048,
    Rsa4096,
    Ed25519,
}

impl KeyType {
    /// The type a config names (`p256`, `p384`, `rsa2048`, `rsa4096`, `ed25519`).
    pub fn parse(name: &str) -> Option<KeyType> {
        Some(match name {
            "p256" => KeyType::P256,
            "p384" => KeyType::P384,
            "rsa2048" => KeyType::Rsa2048,
            "rsa4096" => KeyType::Rsa4096,
            "ed25519" => KeyType::Ed25519,
            _ => return None,
        })
    }

    /// A new key pair of this type.
    pub fn generate(self) -> Result<KeyPair, String> {
        use rcgen::{RsaKeySize, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
        let key = match self {
            KeyType::P256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            KeyType::P384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => KeyPair::generate_for(&PKCS_ED25519),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyType::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
        };
        key.map_err(|e| format!("cannot create a {self:?} key: {e}"))
    }
}
