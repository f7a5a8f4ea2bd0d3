//! The TLS side of one compiled config: a rustls `ServerConfig` per site policy, the
//! SNI certificate resolver, and the handshake itself.
//!
//! A handshake reads the ClientHello first (rustls' lazy acceptor), so the site's own
//! policy (protocols, ciphers, curves, ALPN, client certificates) applies from the
//! first byte; TLS-ALPN-01 validations are answered here too. Certificates are looked
//! up per handshake: the site's own files first, then managed certificates (swapped
//! atomically when issued or renewed), exact names before wildcards.

use crate::ca::LocalCa;
use crate::certs::{Cert, CertMap};
use crate::challenge::{ChallengeBoard, ACME_TLS_ALPN};
use arc_swap::ArcSwap;
use dwaar_config::model::SiteTls;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};

/// Finds the certificate for a handshake.
#[derive(Debug)]
pub struct SniResolver {
    pub manual: Arc<CertMap>,
    pub managed: Arc<ArcSwap<CertMap>>,
    /// Issues certificates at handshake time.
    pub on_demand: Option<Arc<LocalCa>>,
    /// Issue for any name (a catch-all `tls internal` site)...
    pub on_demand_all: bool,
    /// ...or for names one label under these (`*.example.localhost` sites).
    pub on_demand_suffixes: Vec<String>,
    /// The certificate of a catch-all site with its own files.
    pub fallback: Option<Arc<Cert>>,
    /// The name to use when the client sent no SNI (`default_sni`, else the local IP
    /// address).
    pub no_sni_name: Option<String>,
    /// `fallback_sni`: the name whose certificate answers a server name that has none.
    pub fallback_sni: Option<String>,
    /// Certificates from `get_certificate` services, consulted first.
    pub external: Option<Arc<crate::cert_source::CertSources>>,
    /// Certificates with a stapled OCSP response, by leaf serial.
    pub staples: Arc<ArcSwap<Staples>>,
}

/// Stapled variants of certificates, by leaf serial number.
pub type Staples = HashMap<Vec<u8>, Arc<CertifiedKey>>;

impl SniResolver {
    pub fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let cert = self.find_cert(name)?;
        let staples = self.staples.load();
        if !staples.is_empty() {
            if let Some(k) = staples.get(&cert.serial) {
                return Some(k.clone());
            }
        }
        Some(cert.key.clone())
    }

    fn find_cert(&self, name: Option<&str>) -> Option<Arc<Cert>> {
        let name = name.or(self.no_sni_name.as_deref());
        if let Some(n) = name {
            if let Some(c) = self.external.as_ref().and_then(|e| e.cached(n)) {
                return Some(c);
            }
            if let Some(c) = self.manual.exact(n) {
                return Some(c.clone());
            }
            let managed = self.managed.load();
            if let Some(c) = managed.exact(n) {
                return Some(c.clone());
            }
            if let Some(c) = self
                .manual
                .wildcard_for(n)
                .or_else(|| managed.wildcard_for(n))
            {
                return Some(c.clone());
            }
            if let Some(f) = self.fallback_sni.as_deref().filter(|f| *f != n) {
                let by_name = self.manual.exact(f).or_else(|| managed.exact(f)).cloned();
                if let Some(c) = by_name {
                    return Some(c);
                }
            }
        }
        if let Some(c) = &self.fallback {
            return Some(c.clone());
        }
        let (ca, n) = (self.on_demand.as_ref()?, name?);
        let allowed = self.on_demand_all
            || n.split_once('.')
                .is_some_and(|(_, parent)| self.on_demand_suffixes.iter().any(|s| s == parent));
        if !allowed {
            return None;
        }
        // Bounded: on-demand certificates live in the managed map, capped by the CA.
        match ca.issue_cached(n, &self.managed) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(name = n, "cannot issue a local certificate: {e}");
                None
            }
        }
    }

    /// A certificate in hand (loaded or managed, exact or wildcard) for `name`.
    pub fn certificate_for(&self, name: &str) -> Option<Arc<Cert>> {
        if let Some(c) = self.manual.get(name) {
            return Some(c.clone());
        }
        self.managed.load().get(name).cloned()
    }

    fn with_no_sni_name(&self, name: String) -> SniResolver {
        SniResolver {
            manual: self.manual.clone(),
            managed: self.managed.clone(),
            on_demand: self.on_demand.clone(),
            on_demand_all: self.on_demand_all,
            on_demand_suffixes: self.on_demand_suffixes.clone(),
            fallback: self.fallback.clone(),
            no_sni_name: Some(name),
            fallback_sni: self.fallback_sni.clone(),
            staples: self.staples.clone(),
            external: self.external.clone(),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        self.find(sni.as_deref())
    }
}

/// One site's TLS settings, built.
#[derive(Debug)]
pub struct Policy {
    /// Stable identity of the settings (survives reloads that do not change them).
    pub id: u64,
    pub config: Arc<ServerConfig>,
    pub client_auth: bool,
    /// `get_certificate` URLs of the site.
    cert_sources: Vec<String>,
    resolver: Arc<SniResolver>,
}

/// What one handshake produced.
#[derive(Debug)]
pub struct Handshaken<IO> {
    pub stream: tokio_rustls::server::TlsStream<IO>,
    pub sni: Option<String>,
    pub policy: u64,
}

/// Shared, long-lived pieces every compiled state uses.
#[derive(Debug, Clone)]
pub struct Shared {
    pub managed: Arc<ArcSwap<CertMap>>,
    pub staples: Arc<ArcSwap<Staples>>,
    pub challenges: Arc<ChallengeBoard>,
    pub tickets: Arc<dyn rustls::server::ProducesTickets>,
    pub sessions: Arc<dyn rustls::server::StoresServerSessions>,
    pub handshakes: Arc<HandshakeCounts>,
}

/// Completed handshakes since start, by kind (for metrics).
#[derive(Debug, Default)]
pub struct HandshakeCounts {
    pub full: std::sync::atomic::AtomicU64,
    pub resumed: std::sync::atomic::AtomicU64,
}

/// The TLS state of one compiled config.
#[derive(Debug)]
pub struct TlsState {
    exact: HashMap<String, Arc<Policy>>,
    wildcard: HashMap<String, Arc<Policy>>,
    fallback: Arc<Policy>,
    challenges: Arc<ChallengeBoard>,
    handshakes: Arc<HandshakeCounts>,
    /// Variants of policies for clients that send no SNI, by local address.
    no_sni: Mutex<HashMap<(u64, IpAddr), Arc<ServerConfig>>>,
    /// `default_sni`: the server name assumed when a client sends none.
    default_sni: Option<String>,
    on_demand_issuer: Option<Arc<crate::on_demand::OnDemand>>,
}

/// Sites as `(hosts, settings)`; an empty host list is a catch-all site.
pub struct StateInput<'a> {
    pub sites: Vec<(Vec<String>, &'a SiteTls)>,
    pub manual: CertMap,
    pub fallback_cert: Option<Arc<Cert>>,
    pub on_demand: Option<Arc<LocalCa>>,
    pub on_demand_all: bool,
    pub on_demand_suffixes: Vec<String>,
    /// ALPN when a site does not choose (`servers { protocols }`).
    pub default_alpn: Vec<Vec<u8>>,
    /// `default_sni` and `fallback_sni`.
    pub default_sni: Option<String>,
    pub fallback_sni: Option<String>,
    /// Sites with `tls { on_demand }` and how their certificates are obtained.
    pub on_demand_issuer: Option<Arc<crate::on_demand::OnDemand>>,
}

impl TlsState {
    pub fn build(input: StateInput<'_>, shared: Shared) -> Result<TlsState, String> {
        let external = match input
            .sites
            .iter()
            .any(|(_, t)| !t.get_certificate.is_empty())
        {
            true => Some(Arc::new(crate::cert_source::CertSources::new()?)),
            false => None,
        };
        let resolver = Arc::new(SniResolver {
            manual: Arc::new(input.manual),
            managed: shared.managed.clone(),
            on_demand: input.on_demand,
            on_demand_all: input.on_demand_all,
            on_demand_suffixes: input.on_demand_suffixes,
            fallback: input.fallback_cert,
            no_sni_name: input.default_sni.clone(),
            fallback_sni: input.fallback_sni,
            staples: shared.staples.clone(),
            external: external.clone(),
        });
        let mut built: HashMap<u64, Arc<Policy>> = HashMap::new();
        let mut policy_for = |tls: &SiteTls| -> Result<Arc<Policy>, String> {
            let id = policy_id(tls);
            if let Some(p) = built.get(&id) {
                return Ok(p.clone());
            }
            let config = server_config(tls, resolver.clone(), &input.default_alpn, &shared)?;
            let p = Arc::new(Policy {
                id,
                config,
                client_auth: tls.client_auth.is_some(),
                cert_sources: tls.get_certificate.clone(),
                resolver: resolver.clone(),
            });
            built.insert(id, p.clone());
            Ok(p)
        };
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut fallback = None;
        for (hosts, tls) in &input.sites {
            let p = policy_for(tls)?;
            if hosts.is_empty() && fallback.is_none() {
                fallback = Some(p.clone());
            }
            for h in hosts {
                match h.strip_prefix("*.") {
                    Some(s) => wildcard.entry(s.to_string()).or_insert_with(|| p.clone()),
                    None => exact.entry(h.clone()).or_insert_with(|| p.clone()),
                };
            }
        }
        let fallback = match fallback {
            Some(f) => f,
            None => policy_for(&SiteTls::default())?,
        };
        Ok(TlsState {
            exact,
            wildcard,
            fallback,
            challenges: shared.challenges.clone(),
            handshakes: shared.handshakes.clone(),
            no_sni: Mutex::new(HashMap::new()),
            default_sni: input.default_sni,
            on_demand_issuer: input.on_demand_issuer,
        })
    }

    /// The certificate resolver every policy of this state shares (HTTP/3 handshakes,
    /// which have one TLS 1.3 configuration for all sites, use it directly).
    pub fn resolver(&self) -> Arc<SniResolver> {
        self.fallback.resolver.clone()
    }

    /// The policy for a server name (exact, then wildcard, then the fallback).
    pub fn policy(&self, sni: Option<&str>) -> &Arc<Policy> {
        let Some(n) = sni else {
            return &self.fallback;
        };
        if let Some(p) = self.exact.get(n) {
            return p;
        }
        n.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.fallback)
    }

    /// Whether a site's host requires client certificates, and under which policy.
    pub fn client_auth_policy(&self, host: &str) -> Option<u64> {
        let p = self.policy(Some(host));
        p.client_auth.then_some(p.id)
    }

    /// Performs the server side of a TLS handshake. `Ok(None)`: the connection was an
    /// ACME TLS-ALPN-01 validation and has been answered.
    pub async fn accept<IO>(
        &self,
        io: IO,
        local_ip: IpAddr,
    ) -> std::io::Result<Option<Handshaken<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_with(io, local_ip, true).await
    }

    /// [`TlsState::accept`] for a stream that is not HTTP (layer 4's `tls` handler):
    /// no ALPN protocol is offered, so the client keeps to whatever it speaks.
    pub async fn accept_without_alpn<IO>(
        &self,
        io: IO,
        local_ip: IpAddr,
    ) -> std::io::Result<Option<Handshaken<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_with(io, local_ip, false).await
    }

    async fn accept_with<IO>(
        &self,
        io: IO,
        local_ip: IpAddr,
        alpn: bool,
    ) -> std::io::Result<Option<Handshaken<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = acceptor.await?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        let acme_only = hello
            .alpn()
            .map(|mut a| a.all(|p| p == ACME_TLS_ALPN))
            .unwrap_or(false)
            && hello.alpn().is_some_and(|mut a| a.next().is_some());
        if acme_only {
            let name = sni.clone().unwrap_or_default();
            let Some(config) = self.challenges.tls_alpn_config(&name) else {
                return Err(std::io::Error::other(format!(
                    "TLS-ALPN-01 handshake for '{name}' with no challenge pending"
                )));
            };
            let mut s = start.into_stream(config).await?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
            return Ok(None);
        }
        if let (Some(od), Some(name)) = (&self.on_demand_issuer, sni.as_deref()) {
            // Boxed: only configs with on-demand sites carry issuance in the handshake.
            Box::pin(self.on_demand(od, name)).await?;
        }
        // Without SNI, `default_sni` names the site (its resolver already falls back
        // to that name); else the certificate is the one of the local address.
        let policy = self.policy(sni.as_deref().or(self.default_sni.as_deref()));
        if let (Some(ext), false, Some(name)) = (
            &self.fallback.resolver.external,
            policy.cert_sources.is_empty(),
            sni.as_deref().or(self.default_sni.as_deref()),
        ) {
            use crate::cert_source::hex_list;
            let sigs = hex_list(hello.signature_schemes().iter().map(|s| u16::from(*s)));
            let suites = hex_list(hello.cipher_suites().iter().map(|s| u16::from(*s)));
            Box::pin(ext.refresh(name, &policy.cert_sources, &sigs, &suites)).await;
        }
        let mut config = match (&sni, &self.default_sni) {
            (Some(_), _) | (None, Some(_)) => policy.config.clone(),
            (None, None) => self.no_sni_config(policy, local_ip),
        };
        if !alpn {
            let mut plain = (*config).clone();
            plain.alpn_protocols.clear();
            config = Arc::new(plain);
        }
        let stream = start.into_stream(config).await?;
        let kind = stream.get_ref().1.handshake_kind();
        let counter = match kind {
            Some(rustls::HandshakeKind::Resumed) => &self.handshakes.resumed,
            _ => &self.handshakes.full,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Handshaken {
            stream,
            sni,
            policy: policy.id,
        }))
    }

    /// A name of an on-demand site without a current certificate gets one now (the
    /// handshake waits, at most `on_demand::WAIT`); one due for renewal is renewed in
    /// the background while the current one serves.
    async fn on_demand(
        &self,
        od: &Arc<crate::on_demand::OnDemand>,
        name: &str,
    ) -> std::io::Result<()> {
        let Some(site) = od.site_for(name) else {
            return Ok(());
        };
        match self.fallback.resolver.certificate_for(name) {
            Some(c) if !c.needs_renewal(std::time::SystemTime::now()) => Ok(()),
            Some(_) => {
                let (od, name, site) = (od.clone(), name.to_string(), site.clone());
                tokio::spawn(async move {
                    let _ = od.obtain(&name, &site).await;
                });
                Ok(())
            }
            None => match tokio::time::timeout(crate::on_demand::WAIT, od.obtain(name, site)).await
            {
                Ok(r) => r.map_err(std::io::Error::other),
                Err(_) => Err(std::io::Error::other(format!(
                    "no certificate for {name} within {:?}",
                    crate::on_demand::WAIT
                ))),
            },
        }
    }

    fn no_sni_config(&self, policy: &Policy, ip: IpAddr) -> Arc<ServerConfig> {
        let Ok(mut cache) = self.no_sni.lock() else {
            return policy.config.clone();
        };
        if cache.len() > 64 {
            cache.clear();
        }
        cache
            .entry((policy.id, ip))
            .or_insert_with(|| {
                let mut c = (*policy.config).clone();
                c.cert_resolver = Arc::new(policy.resolver.with_no_sni_name(ip.to_string()));
                Arc::new(c)
            })
            .clone()
    }
}

/// A stable identity for a site's TLS settings.
pub fn policy_id(tls: &SiteTls) -> u64 {
    use std::hash::{Hash, Hasher};
    // FNV-like and deterministic across processes (DefaultHasher's keys are fixed too,
    // but its algorithm is not promised; this one is ours).
    let text = serde_json::to_string(tls).unwrap_or_default();
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    text.hash(&mut h);
    h.finish() | 1
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn server_config(
    tls: &SiteTls,
    resolver: Arc<SniResolver>,
    default_alpn: &[Vec<u8>],
    shared: &Shared,
) -> Result<Arc<ServerConfig>, String> {
    let mut provider = crate::provider();
    if !tls.ciphers.is_empty() {
        let wanted: Vec<_> = tls
            .ciphers
            .iter()
            .filter_map(|n| {
                provider
                    .cipher_suites
                    .iter()
                    .find(|s| suite_name(s.suite()) == *n)
                    .copied()
            })
            .collect();
        provider.cipher_suites = wanted;
    } else {
        // AES-128-GCM first (as Go, and so Caddy, prefers where AES is in hardware):
        // its SHA-256 key schedule and ten AES rounds cost less than AES-256-GCM's
        // SHA-384 and fourteen, for the same practical security.
        provider
            .cipher_suites
            .sort_by_key(|s| suite_rank(s.suite()));
    }
    if !tls.curves.is_empty() {
        let wanted: Vec<_> = tls
            .curves
            .iter()
            .filter_map(|n| {
                provider
                    .kx_groups
                    .iter()
                    .find(|g| curve_name(g.name()) == Some(n.as_str()))
                    .copied()
            })
            .collect();
        provider.kx_groups = wanted;
    }
    let min = tls.protocol_min.as_deref().unwrap_or("tls1.2");
    let max = tls.protocol_max.as_deref().unwrap_or("tls1.3");
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= "tls1.2" && max >= "tls1.2" {
        versions.push(&rustls::version::TLS12);
    }
    if max >= "tls1.3" {
        versions.push(&rustls::version::TLS13);
    }
    // TLS 1.2 needs a TLS 1.2 suite; say so instead of failing every handshake.
    let has12 = provider
        .cipher_suites
        .iter()
        .any(|s| s.version() == &rustls::version::TLS12);
    let has13 = provider
        .cipher_suites
        .iter()
        .any(|s| s.version() == &rustls::version::TLS13);
    versions.retain(|v| {
        (v.version == rustls::ProtocolVersion::TLSv1_2 && has12)
            || (v.version == rustls::ProtocolVersion::TLSv1_3 && has13)
    });
    if versions.is_empty() {
        return Err("the chosen TLS protocols and cipher suites have nothing in common".into());
    }
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("invalid TLS settings: {e}"))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if tls.alpn.is_empty() {
        default_alpn.to_vec()
    } else {
        tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
    };
    // The server's order decides (the `ciphers` list, else the default above), as in
    // Caddy, instead of the client's.
    config.ignore_client_order = true;
    config.ticketer = shared.tickets.clone();
    config.session_storage = shared.sessions.clone();
    Ok(Arc::new(config))
}

fn client_verifier(
    ca: &dwaar_config::model::ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let verifies = ca.mode == "verify_if_given" || ca.mode == "require_and_verify";
    if !verifies {
        return Ok(Arc::new(crate::verify::UnverifiedClientCerts {
            mandatory: ca.mode == "require",
            provider,
        }));
    }
    let mut roots = rustls::RootCertStore::empty();
    for f in &ca.trusted_ca_cert_files {
        let pem = std::fs::read(f).map_err(|e| format!("cannot read client CA file {f}: {e}"))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            let c = c.map_err(|e| format!("{f}: invalid PEM: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("{f}: not a usable CA certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{f}: no certificate found"));
        }
    }
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = if ca.mode == "verify_if_given" {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build()
        .map_err(|e| format!("cannot build the client certificate verifier: {e}"))
}

/// The IANA name of a cipher suite as the config writes it.
/// The default preference among cipher suites, Go's for machines with AES instructions:
/// AES-128-GCM, AES-256-GCM, then ChaCha20-Poly1305 (the sort is stable, so each TLS
/// version's suites keep the provider's order otherwise).
fn suite_rank(s: rustls::CipherSuite) -> u8 {
    let name = suite_name(s);
    if name.contains("AES_128_GCM") {
        0
    } else if name.contains("AES_256_GCM") {
        1
    } else {
        2
    }
}

fn suite_name(s: rustls::CipherSuite) -> String {
    let n = format!("{s:?}");
    n.strip_prefix("TLS13_")
        .map(|r| format!("TLS_{r}"))
        .unwrap_or(n)
}

fn curve_name(g: rustls::NamedGroup) -> Option<&'static str> {
    match g {
        rustls::NamedGroup::X25519 => Some("x25519"),
        rustls::NamedGroup::secp256r1 => Some("secp256r1"),
        rustls::NamedGroup::secp384r1 => Some("secp384r1"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_order_prefers_aes_128_then_aes_256_then_chacha() {
        let mut suites = crate::provider().cipher_suites;
        suites.sort_by_key(|s| suite_rank(s.suite()));
        let tls13: Vec<String> = suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .map(|s| suite_name(s.suite()))
            .collect();
        assert_eq!(
            tls13,
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"
            ]
        );
    }

    #[test]
    fn every_configurable_cipher_exists() {
        let p = crate::provider();
        for c in dwaar_config::compile::TLS_CIPHERS {
            assert!(
                p.cipher_suites.iter().any(|s| suite_name(s.suite()) == *c),
                "{c} is accepted by the config but not implemented"
            );
        }
        for c in dwaar_config::compile::TLS_CURVES {
            assert!(
                p.kx_groups.iter().any(|g| curve_name(g.name()) == Some(*c)),
                "{c} is accepted by the config but not implemented"
            );
        }
    }
}
