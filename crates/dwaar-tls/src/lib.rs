//! Dwaar's TLS: everything between a TCP connection and an HTTP session on an HTTPS
//! port, and everything that keeps certificates valid.
//!
//! - [`plan`]: which names need certificates from which issuer (Caddy's automatic HTTPS rules).
//! - [`state`]: one compiled config's site policies (rustls `ServerConfig`s), the SNI
//!   resolver and the handshake (including TLS-ALPN-01 answers).
//! - [`manager`]: the long-lived owner of managed certificates: loads them from
//!   storage, issues from the local CA or ACME, renews, and swaps them in atomically.
//! - [`acme`]: the RFC 8555 client flow (HTTP-01 and TLS-ALPN-01) on `instant-acme`.
//! - [`dns`]: the DNS-01 challenge: providers (RFC 2136, Cloudflare, Route 53, exec),
//!   zone lookup and the propagation check.
//! - [`acme_server`]: Dwaar as an ACME CA (`acme_server`), issuing from the local CA.
//! - [`ocsp`]: stapling OCSP responses fetched in the background.
//! - [`tickets`]: session-ticket keys shared by all processes of a server, rotated.
//! - [`ca`], [`storage`], [`challenge`], [`certs`], [`verify`]: the pieces.
//!
//! The crate knows nothing of Pingora or HTTP: `dwaar-core` hands it sockets and gets
//! back TLS streams.

pub mod acme;
pub mod acme_chains;
pub mod acme_server;
pub mod ca;
pub mod cert_source;
pub mod certs;
pub mod challenge;
pub mod dns;
pub mod http1;
pub mod https;
pub mod manager;
pub mod ocsp;
pub mod on_demand;
pub mod plan;
pub mod state;
pub mod storage;
pub mod tickets;
pub mod trust;
pub mod verify;

pub use manager::TlsManager;
pub use state::TlsState;

/// The crypto provider every TLS config uses: aws-lc-rs, whose X25519 and SHA-2 are
/// assembly (ring's X25519 is portable C). Measured end to end the change was within
/// run noise (BENCHMARKS.md, 2026-12-04): a handshake's CPU is mostly elsewhere.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Installs the provider as the process default, for libraries that build configs
/// themselves.
pub fn install_provider() {
    let _ = provider().install_default();
}
