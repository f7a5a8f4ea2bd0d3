//! The validated configuration model: what Dwaar understood from a Dwaarfile.
//!
//! Every value here has been checked (addresses, durations, sizes, regexes, status
//! codes), so the runtime compiles it without further validation. The model is also
//! the JSON that `dwaar adapt` prints and the admin API accepts, so field names are
//! stable. Durations are milliseconds (`*_ms`), sizes are bytes.

use crate::placeholder::Template;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub global: GlobalOptions,
    #[serde(default)]
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalOptions {
    pub debug: bool,
    pub http_port: u16,
    pub https_port: u16,
    pub grace_period_ms: Option<u64>,
    pub shutdown_delay_ms: Option<u64>,
    /// `off` serves sites without a scheme over plain HTTP; `None` = automatic HTTPS.
    pub auto_https: Option<String>,
    pub servers: Vec<ServerOptions>,
    /// Directive order overrides from `order`, applied on top of the default order.
    pub order: Vec<OrderRule>,
    pub admin: AdminOptions,
    /// Worker processes (`workers N`); 1 runs in-process without a supervisor.
    pub workers: u16,
    /// Dwaar's own log (global `log`): where it goes, its format and level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
    /// Global logs that collect sites' access records (`log <name> { include
    /// http.log.access... }`), and Dwaar's own log when it includes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<LogConfig>,
    /// Certificate automation defaults (`email`, `acme_ca`, `local_certs`, `storage`).
    #[serde(default)]
    pub tls: GlobalTls,
    /// Analytics storage settings (`analytics { retention geoip }`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub analytics: GlobalAnalytics,
    /// `default_bind`: the interfaces of sites without a `bind` of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_bind: Vec<String>,
    /// `filesystem <name> local <dir>`: named file systems `fs` can select.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<Filesystem>,
    /// `layer4`: TCP and UDP servers that route connections by their first bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer4: Vec<L4Server>,
}

/// A named file system (`filesystem <name> local <dir>`): a directory that file paths
/// are read under instead of the machine's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub name: String,
    pub root: String,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Global options that shape automatic HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalTls {
    /// ACME account contact (`email`).
    pub email: Option<String>,
    /// ACME directory URL for every managed certificate (`acme_ca`).
    pub acme_ca: Option<String>,
    /// PEM file with the root that signs the ACME server's HTTPS certificate.
    pub acme_ca_root: Option<String>,
    /// Issue every automatic certificate from the local CA (`local_certs`).
    pub local_certs: bool,
    /// Where certificates, keys, ACME accounts and the local CA live
    /// (`storage file_system <path>`); `None` = the user's data directory.
    pub storage: Option<String>,
    /// `acme_eab`: the External Account Binding of every ACME account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab: Option<Eab>,
    /// `ocsp_stapling off`: no OCSP responses are fetched or stapled.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ocsp_stapling_off: bool,
    /// `default_sni`: the server name of handshakes that carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_sni: Option<String>,
    /// `fallback_sni`: the name whose certificate answers names that have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_sni: Option<String>,
    /// `key_type`: the key of certificates Dwaar obtains (`p256` when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// `renew_interval`: how often certificates are checked for renewal (ms); `None`:
    /// continuously (every few seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_interval_ms: Option<u64>,
    /// `ocsp_interval`: the longest time between two OCSP checks of a certificate (ms);
    /// `None`: halfway through each response's validity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_interval_ms: Option<u64>,
    /// `storage_clean_interval`: how often expired certificates are removed from
    /// storage (ms); `None`: daily.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_clean_interval_ms: Option<u64>,
    /// `on_demand_tls`: who may have a certificate issued during its first handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandTls>,
    /// `storage redis { ... }`: state shared by a fleet of instances through Redis
    /// (certificates and locks, distributed rate limits, purges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStorage>,
    /// `acme_dns <provider> ...`: the DNS-01 provider of every ACME issuer without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_dns: Option<DnsProvider>,
    /// `preferred_chains`: which certificate chain to keep from ACME CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_chains: Option<PreferredChains>,
    /// `cert_issuer` lines: the issuers of public names whose site names none, tried
    /// in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cert_issuers: Vec<Issuer>,
}

/// `on_demand_tls { ask <url> interval <d> burst <n> }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandTls {
    /// Asked `GET <url>?domain=<name>` before each issuance; a 2xx answer allows it.
    pub ask: String,
    /// At most `burst` issuances per `interval` (ms); `None`: Dwaar's default
    /// (10 a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// An ACME External Account Binding (RFC 8555 §7.3.4): the CA's key identifier and the
/// HMAC key it gave, base64url-encoded as CAs hand them out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eab {
    pub key_id: String,
    pub mac_key: String,
}

/// How a site gets its certificate and which TLS it speaks (`tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SiteTls {
    /// `None`: automatic (ACME for public names, the local CA for the rest).
    pub issuer: Option<Issuer>,
    /// Further `issuer` lines: tried in order when the ones before fail.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_issuers: Vec<Issuer>,
    /// `tls <cert_file> <key_file>`: a certificate chain and key from PEM files.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Lowest and highest TLS version: `tls1.2` or `tls1.3`.
    pub protocol_min: Option<String>,
    pub protocol_max: Option<String>,
    /// Cipher suites by IANA name, in preference order; empty = the defaults.
    pub ciphers: Vec<String>,
    /// Key exchange groups in preference order; empty = the defaults.
    pub curves: Vec<String>,
    /// ALPN protocols to offer; empty = `h2`, `http/1.1`.
    pub alpn: Vec<String>,
    /// Downstream client certificates (mutual TLS).
    pub client_auth: Option<ClientAuth>,
    /// `key_type`: the key of this site's certificates; `None` = the global one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// `load <dir>...`: directories of PEM files, each a certificate chain and its key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<String>,
    /// `on_demand`: certificates are obtained during the first handshake for a name
    /// (allowed by `on_demand_tls { ask }`), not at start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// `get_certificate http <url>`: services asked for certificates during the
    /// handshake, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub get_certificate: Vec<String>,
}

/// Who issues a site's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "module", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // a config value, built once per load
pub enum Issuer {
    /// Dwaar's own local certificate authority.
    Internal,
    Acme(AcmeIssuer),
}

/// An ACME certificate authority (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeIssuer {
    /// Directory URL; `None` = `acme_ca` or Let's Encrypt.
    pub dir: Option<String>,
    /// A second directory to try when the first fails.
    pub test_dir: Option<String>,
    pub email: Option<String>,
    /// PEM file with the root of the CA's own HTTPS certificate.
    pub ca_root: Option<String>,
    pub disable_http_challenge: bool,
    pub disable_tlsalpn_challenge: bool,
    /// External Account Binding for this CA (`eab`); `None` = `acme_eab`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab: Option<Eab>,
    /// `dns <provider> ...`: answer the DNS-01 challenge (and only it) through this
    /// provider; `None` = `acme_dns`, else HTTP-01/TLS-ALPN-01.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProvider>,
    /// How the DNS-01 record is published and checked.
    #[serde(skip_serializing_if = "DnsOptions::is_empty")]
    pub dns_options: DnsOptions,
    /// Which of the CA's certificate chains to keep; `None` = `preferred_chains`,
    /// else the CA's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_chains: Option<PreferredChains>,
}

/// `storage redis { ... }`: how to reach Redis (or Valkey).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStorage {
    /// `host:port` of the server(s): tried in order (standalone), the seed nodes
    /// (`cluster`), or the sentinels (`sentinel`).
    pub addresses: Vec<String>,
    /// Redis Cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Redis Sentinel: the name of the monitored master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    #[serde(default)]
    pub db: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Prefix of every key Dwaar writes (`dwaar` by default).
    pub key_prefix: String,
    /// Connect with TLS (`rediss://`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Connecting (ms); `None`: 2 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout_ms: Option<u64>,
    /// One command (ms); `None`: 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_timeout_ms: Option<u64>,
    /// Where the local copy of stored data lives (serving goes on from it while Redis
    /// is down); `None`: the user's data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_copy: Option<String>,
}

/// `acme_server { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeServerConfig {
    /// The CA's name (`local`, the only one): paths are under `/acme/<ca>/`.
    pub ca: String,
    /// Lifetime of issued certificates (ms); `None`: 12 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<u64>,
    /// Challenge types offered; empty: `http-01`, `tls-alpn-01`, `dns-01`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_wildcard_names: bool,
    /// Names (`*.example.com` covers names under it) and IP ranges that may have
    /// certificates; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ip_ranges: Vec<String>,
    /// Names and IP ranges refused (before `allow` is consulted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ip_ranges: Vec<String>,
    /// DNS servers for validation lookups; empty: the system's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
}

/// `preferred_chains [smallest] { root_common_name ...; any_common_name ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PreferredChains {
    /// The chain with the fewest bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub smallest: bool,
    /// A chain whose root's issuer common name is one of these (in order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub root_common_name: Vec<String>,
    /// A chain with any issuer of one of these common names (in order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_common_name: Vec<String>,
}

/// A DNS provider that publishes ACME DNS-01 TXT records (`dns <provider> ...`).
/// Credentials may be `{env.NAME}`, read from the environment when used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates, signed with TSIG when a key is given (BIND, Knot,
    /// PowerDNS...).
    Rfc2136 {
        /// `host[:port]` of the primary server that accepts updates.
        server: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_name: Option<String>,
        /// `hmac-sha256` (default), `hmac-sha1`, `hmac-sha384` or `hmac-sha512`.
        key_alg: String,
        /// The TSIG secret, base64.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Cloudflare's API v4 with an API token.
    Cloudflare {
        api_token: String,
        /// A token that may read zones, when `api_token` may only edit DNS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone_token: Option<String>,
        /// The API base URL; `None` = `https://api.cloudflare.com/client/v4`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// Amazon Route 53's API, signed with AWS Signature Version 4. Unset credentials
    /// come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    Route53 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_access_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<String>,
        /// `None` = `us-east-1` (Route 53's signing region).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// The hosted zone to edit; `None` = found by the zone's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hosted_zone_id: Option<String>,
        /// The API base URL; `None` = `https://route53.amazonaws.com`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// Any other DNS service: a program run as `<command> [args] present|cleanup
    /// <record-name> <value>`.
    Exec { command: Vec<String> },
}

/// Options of the DNS-01 challenge (`propagation_delay`, `propagation_timeout`,
/// `resolvers`, `dns_ttl`, `dns_challenge_override_domain`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DnsOptions {
    /// Waited after publishing, before checking (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_delay_ms: Option<u64>,
    /// How long the authoritative servers are polled for the record (ms); `Some(0)`:
    /// not checked (`propagation_timeout -1`); `None`: 2 minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_timeout_ms: Option<u64>,
    /// DNS servers (`ip[:port]`) for finding the zone and its authoritative servers;
    /// empty: the system's (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// TTL of the TXT record (s); `None`: 120.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u32>,
    /// The record is published under this name instead of `_acme-challenge.<name>`
    /// (a CNAME delegation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_domain: Option<String>,
}

impl DnsOptions {
    pub fn is_empty(&self) -> bool {
        self == &DnsOptions::default()
    }
}

/// `client_auth`: verifying certificates that clients present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// `request`, `require`, `verify_if_given` or `require_and_verify`.
    pub mode: String,
    /// PEM files with the CAs client certificates must chain to.
    pub trusted_ca_cert_files: Vec<String>,
}

/// The `admin` global option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminOptions {
    /// `host:port` or `unix//path`; `None` when the admin API is off.
    pub listen: Option<String>,
    /// Bearer token required from non-loopback clients. Never serialised.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// Extra origins allowed to call the API from a browser.
    pub origins: Vec<String>,
}

/// Where the admin API listens unless configured otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "localhost:2019";

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            listen: Some(DEFAULT_ADMIN_LISTEN.to_string()),
            token: None,
            origins: Vec::new(),
        }
    }
}

impl Default for GlobalOptions {
    fn default() -> Self {
        GlobalOptions {
            debug: false,
            http_port: 80,
            https_port: 443,
            grace_period_ms: None,
            shutdown_delay_ms: None,
            auto_https: None,
            servers: Vec::new(),
            order: Vec::new(),
            admin: AdminOptions::default(),
            workers: 1,
            log: None,
            access_logs: Vec::new(),
            tls: GlobalTls::default(),
            analytics: GlobalAnalytics::default(),
            default_bind: Vec::new(),
            filesystems: Vec::new(),
            layer4: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRule {
    pub directive: String,
    /// `first`, `last`, `before`, `after`.
    pub position: String,
    pub other: Option<String>,
}

/// Options of the `servers` global block (for one listener address, or all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerOptions {
    /// `:8080` style listener address this block applies to; `None` = every server.
    pub listener: Option<String>,
    pub protocols: Vec<String>,
    pub read_body_timeout_ms: Option<u64>,
    pub read_header_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub trusted_proxies: Vec<String>,
    /// `trusted_proxies_strict`: read client IP headers right to left, skipping trusted
    /// proxies, instead of taking the leftmost address.
    pub trusted_proxies_strict: bool,
    /// `client_ip_headers`: where a trusted proxy puts the client address, in order;
    /// empty means `X-Forwarded-For`.
    pub client_ip_headers: Vec<String>,
    pub max_header_size: Option<u64>,
    /// `listener_wrappers { proxy_protocol { ... } }`.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `listener_wrappers { layer4 { ... } }`: connections a route matches are handled
    /// at layer 4; the others go on to TLS and HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer4: Option<L4Routes>,
    /// `strict_sni_host`: a TLS request's Host must be the name its handshake asked
    /// for (else `421 Misdirected Request`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict_sni_host: bool,
}

/// The PROXY protocol listener wrapper: who may send a header and what the others get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocol {
    /// How long the header may take; `None` = 5 s, `Some(0)` = no limit.
    pub timeout_ms: Option<u64>,
    /// CIDR ranges whose headers are used.
    pub allow: Vec<String>,
    /// CIDR ranges that may not send a header.
    pub deny: Vec<String>,
    /// `ignore` (default), `use`, `reject`, `require` or `skip` for the other peers.
    pub fallback_policy: Option<String>,
}

/// One site block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub addresses: Vec<SiteAddress>,
    /// Interfaces to listen on (`bind`); empty = all interfaces.
    #[serde(default)]
    pub bind: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default)]
    pub error_routes: Vec<Route>,
    /// Access logs of this site (`log` blocks); none: requests are not logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogConfig>,
    /// The site's `tls` directive, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SiteTls>,
    /// First-party analytics (`analytics`); `None` or disabled: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics: Option<SiteAnalytics>,
    /// Some value in the site uses `{http.request.body}`: request bodies are read before
    /// its routes run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reads_body: bool,
}

/// The `cache` directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory for entries (bodies, headers, keys and bookkeeping) in bytes.
    pub max_size: u64,
    /// Freshness for cacheable responses that state none.
    pub ttl_ms: u64,
    /// Largest single response stored.
    pub max_item_size: u64,
    /// Paths (with `*`) to cache; empty: all.
    pub match_path: Vec<String>,
    pub stale_while_revalidate_ms: u64,
    pub stale_if_error_ms: u64,
    /// Extra key parts (placeholders); scheme, host and port are always in the key.
    pub key: Vec<Template>,
    pub methods: Vec<String>,
    /// Requests with any of these headers skip the cache.
    pub bypass_headers: Vec<String>,
    /// The response header naming the outcome (`X-Cache`); `None`: off.
    pub status_header: Option<String>,
    /// How long a request waits for another one fetching the same key.
    pub lock_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: 256 * 1024 * 1024,
            ttl_ms: 0,
            max_item_size: 8 * 1024 * 1024,
            match_path: Vec::new(),
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            key: Vec::new(),
            methods: vec!["GET".into(), "HEAD".into()],
            bypass_headers: Vec::new(),
            status_header: Some("X-Cache".into()),
            lock_timeout_ms: 5000,
        }
    }
}

/// The `encode` directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encode {
    /// Formats in preference order, with an optional level.
    pub formats: Vec<EncodeFormatLevel>,
    /// Responses with a known length below this are sent as they are.
    pub minimum_length: u64,
    /// Content types to compress (`text/*`); empty: the default list.
    pub match_types: Vec<String>,
    /// Statuses (`200`, `2xx`) to compress; empty: any.
    pub match_status: Vec<String>,
}

impl Default for Encode {
    fn default() -> Self {
        Encode {
            formats: Vec::new(),
            minimum_length: 512,
            match_types: Vec::new(),
            match_status: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodeFormat {
    Gzip,
    Zstd,
    Br,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeFormatLevel {
    pub format: EncodeFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
}

/// A site's `analytics` directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteAnalytics {
    pub enabled: bool,
    /// Paths (with `*` wildcards) that get no script and count no page views.
    pub exclude_paths: Vec<String>,
    /// Honour Do-Not-Track and Global Privacy Control (default on).
    pub respect_dnt: bool,
    /// Share of page views that get the script, in parts per thousand.
    pub sample_permille: u16,
    /// Where the site serves its own dashboard (`dashboard /stats`).
    pub dashboard: Option<String>,
}

impl Default for SiteAnalytics {
    fn default() -> Self {
        SiteAnalytics {
            enabled: true,
            exclude_paths: Vec::new(),
            respect_dnt: true,
            sample_permille: 1000,
            dashboard: None,
        }
    }
}

/// The global `analytics` option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalAnalytics {
    /// Days the daily rollups are kept.
    pub retention_days: u32,
    /// How often each process writes its counts to the store.
    pub flush_interval_ms: u64,
    /// An IP-range-to-country CSV file.
    pub geoip: Option<String>,
}

impl Default for GlobalAnalytics {
    fn default() -> Self {
        GlobalAnalytics {
            retention_days: 400,
            flush_interval_ms: 2000,
            geoip: None,
        }
    }
}

/// A `log` block: where records go and how they look.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub output: LogOutput,
    /// The encoder (with `format filter`, the one it wraps).
    pub format: LogFormat,
    pub level: LogLevel,
    /// Keep only this many leading bits of IP addresses (IPv4, IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_ip: Option<(u8, u8)>,
    /// `log <name>`: the logger's name (`http.log.access.<name>` in records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `format filter`: edits of the record's fields, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FieldFilter>,
    /// `hostnames`: the log takes requests for these hosts only (default: all of the
    /// site's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// `no_hostname`: the log takes only requests that name it with `log_name`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_hostname: bool,
    /// Encoder options (`format json|console|transform { ... }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderOptions>,
    /// `format transform`'s template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformTemplate>,
    /// `sampling`: of the records of one level within each interval, the first `first`
    /// are written, then every `thereafter`-th.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<LogSampling>,
    /// Global logs: the logger names (`http.log.access.<name>`) whose records this log
    /// takes, and those it leaves out (the longest matching prefix decides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl LogConfig {
    /// Whether this global log takes the records of the logger named `logger` (Caddy's
    /// rule: the longest `include` or `exclude` entry that is the name or a dotted
    /// prefix of it decides; without `include`, everything not excluded).
    pub fn takes_logger(&self, logger: &str) -> bool {
        let matches = |entry: &String| {
            logger == entry
                || logger
                    .strip_prefix(entry.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        let best = |list: &[String]| list.iter().filter(|e| matches(e)).map(String::len).max();
        match (best(&self.include), best(&self.exclude)) {
            (Some(i), Some(e)) => i > e,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.include.is_empty(),
        }
    }
}

/// A log's `sampling` block (Caddy's defaults: 1 s, 100, 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSampling {
    pub interval_ms: u64,
    pub first: u64,
    pub thereafter: u64,
}

/// Caddy's encoder options: key names and how times, durations and levels are written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_key: Option<String>,
    /// `unix_seconds_float` (default), `unix_milli_float`, `unix_nano`, `iso8601`,
    /// `rfc3339`, `rfc3339_nano`, `wall`, `wall_milli`, `wall_nano`, `common_log`, or
    /// a Go layout such as `2006-01-02 15:04:05` ([`crate::time_layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_format: Option<String>,
    /// `time_local`: times written as text are in the machine's zone (`TZ`), not UTC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_local: bool,
    /// `seconds` (default, also `s`), `ms`, `nano` (also `ns`) or `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_format: Option<String>,
    /// `lower` (default), `upper` or `color`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_format: Option<String>,
    /// What ends each record (default a newline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_ending: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            output: LogOutput::Stderr,
            format: LogFormat::Json,
            level: LogLevel::Info,
            mask_ip: None,
            name: None,
            filters: Vec::new(),
            hostnames: Vec::new(),
            no_hostname: false,
            encoder: None,
            transform: None,
            sampling: None,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// One field filter of `format filter`: `request>headers>Authorization delete`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldFilter {
    /// The field's path, `>`-separated (`request>remote_ip`).
    pub field: String,
    pub action: FilterAction,
}

/// What a field filter does to its field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterAction {
    Delete,
    Replace {
        value: String,
    },
    /// Keeps the leading bits of addresses.
    IpMask {
        ipv4: u8,
        ipv6: u8,
    },
    /// Edits the query string of a URI.
    Query {
        actions: Vec<KeyAction>,
    },
    /// Edits the cookies of a `Cookie` / `Set-Cookie` field.
    Cookie {
        actions: Vec<KeyAction>,
    },
    Regexp {
        pattern: String,
        replacement: String,
    },
    /// The first 4 bytes of the value's SHA-256, in hex.
    Hash,
    Rename {
        name: String,
    },
}

/// One step of a `query` or `cookie` filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAction {
    /// `delete`, `replace` or `hash`.
    pub op: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Where log records are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LogOutput {
    Stdout,
    Stderr,
    Discard,
    File {
        path: String,
        /// Roll when the file would grow past this many bytes; 0 = never roll.
        roll_size: u64,
        /// Rolled files to keep (0 = no limit by count).
        roll_keep: u32,
        /// Delete rolled files older than this (0 = no limit by age).
        roll_keep_for_ms: u64,
        /// File mode of new log files.
        mode: u32,
    },
    Net {
        /// `host:port` or `unix//path`.
        address: String,
        dial_timeout_ms: u64,
        /// Start even if the address cannot be reached yet.
        soft_start: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Console,
    /// nginx's `combined` line (a Dwaar extension), for the tools nginx logs feed.
    Combined,
    /// `format transform`: a line from a template over the JSON record's fields (the
    /// transform-encoder plugin's format; [`LogConfig::transform`] holds it).
    Transform,
}

/// `format transform [<template>] { placeholder <text>; unescape_strings }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformTemplate {
    /// `{request>remote_ip}`-style fields (`a:b` tries each), `{common_log}`, and text.
    pub template: String,
    /// Written for a field that is missing or empty (default `-`).
    pub placeholder: String,
    /// Strings written as they are rather than JSON-escaped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unescape_strings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// A site address such as `http://example.com:8080`, `*.example.com` or `:443`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteAddress {
    /// `http` or `https` when written; `None` when implied.
    pub scheme: Option<String>,
    /// Lowercase host; empty for a catch-all (`:8080`). May start with `*.`.
    pub host: String,
    /// The port to listen on (implied from the scheme, or `http_port` when absent).
    pub port: u16,
    /// Path prefix written after the host (`example.com/api`), if any.
    #[serde(default)]
    pub path: Option<String>,
}

/// A list of matcher sets (any may match) guarding a list of handlers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Matcher sets OR'd together; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<MatcherSet>,
    /// Routes sharing a group are mutually exclusive: only the first that matches runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub handlers: Vec<Handler>,
}

/// Matchers that must all match (AND).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Matcher {
    /// Any of these path patterns (`/exact`, `/prefix/*`, `*.suffix`, `*mid*`).
    Path(Vec<String>),
    PathRegexp {
        name: Option<String>,
        pattern: String,
    },
    Host(Vec<String>),
    Method(Vec<String>),
    /// Each field must match one of its values; an empty list means "absent".
    Header(Vec<FieldMatch>),
    HeaderRegexp {
        name: Option<String>,
        field: String,
        pattern: String,
    },
    Query(Vec<FieldMatch>),
    /// `http`, `https`, `grpc`, `http/1.1`, `http/2`, `http/3`.
    Protocol(String),
    RemoteIp(Vec<String>),
    ClientIp(Vec<String>),
    /// The set inside must NOT match.
    Not(Box<MatcherSet>),
    /// Only in `handle_errors <codes>`: the error status is one of these (`404`, `5xx`).
    ErrorStatus(Vec<String>),
    /// `file`: one of the candidate files exists under the root.
    File(FileMatch),
    /// `bot`: the User-Agent looks like a crawler, scanner or script.
    Bot,
    /// `vars`: matches when some key (a variable name, or a placeholder in braces) has
    /// one of its values (placeholders allowed in the values, never expanded in what a
    /// variable holds). Several keys in one matcher are alternatives, as in Caddy.
    Vars(Vec<VarsMatch>),
    /// `vars_regexp [name] <key> <regexp>`: the key's value matches; captures go to
    /// `{re.name.N}`.
    VarsRegexp {
        name: Option<String>,
        key: String,
        pattern: String,
    },
    /// `expression`: a CEL expression (Caddy's dialect, rewritten to plain CEL).
    Expression(Box<ExpressionMatch>),
}

/// A compiled `expression` matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionMatch {
    /// The expression as written.
    pub source: String,
    /// Plain CEL: placeholders became `dwaar_ph<N>`, matcher calls `dwaar_m<N>`.
    pub program: String,
    /// The placeholder names, by `N`.
    pub placeholders: Vec<String>,
    /// The matcher calls, by `N`.
    pub matchers: Vec<MatcherSet>,
}

/// One key of a `vars` matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarsMatch {
    /// A variable name (`vars`, `map` outputs) or a placeholder such as `{path}`.
    pub key: String,
    pub values: Vec<Template>,
}

/// The `file` matcher (and `try_files`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    /// `None`: the site's `root` (`{http.vars.root}`), else the working directory.
    pub root: Option<Template>,
    /// Candidates (`{path}` when empty); a trailing `/` means a directory.
    pub try_files: Vec<Template>,
    /// `first_exist`, `smallest_size`, `largest_size` or `most_recently_modified`.
    pub try_policy: String,
    /// Split the path after these substrings (`.php`): the rest is `PATH_INFO`.
    pub split_path: Vec<String>,
    /// `try_files ... =404`: the error when no candidate exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_status: Option<u16>,
}

/// `file_server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub root: Option<Template>,
    /// Globs of files never served or listed (relative to the root, or a file name).
    pub hide: Vec<String>,
    pub index: Vec<String>,
    /// Directory listings, when on.
    pub browse: Option<Browse>,
    /// Sidecar encodings to look for, in preference order (`br`, `zstd`, `gzip`).
    pub precompressed: Vec<String>,
    /// Answer with this status instead of 200 (error pages).
    pub status: Option<u16>,
    pub disable_canonical_uris: bool,
    /// A missing file passes the request on instead of answering 404.
    pub pass_thru: bool,
    /// `fs <name>`: the file system's directory this file server reads under (else the
    /// one `fs` selected for the request, else the machine's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Filesystem>,
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            root: None,
            hide: Vec::new(),
            index: vec!["index.html".into(), "index.txt".into()],
            browse: None,
            precompressed: Vec::new(),
            status: None,
            disable_canonical_uris: false,
            pass_thru: false,
            fs: None,
        }
    }
}

/// `browse` in `file_server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Browse {
    /// A template file for the listing page (the built-in page when `None`).
    pub template: Option<String>,
}

/// The FastCGI transport (`php_fastcgi`, `transport fastcgi`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FastCgi {
    pub root: Option<Template>,
    pub split_path: Vec<String>,
    pub env: Vec<VarAssign>,
    pub resolve_root_symlink: bool,
    pub capture_stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMatch {
    pub field: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "handler", rename_all = "snake_case", deny_unknown_fields)]
pub enum Handler {
    ReverseProxy(Box<ReverseProxy>),
    /// `encode`: compress responses the client accepts compressed.
    Encode(Box<Encode>),
    /// `cache`: answer from memory what the origin allows to be reused.
    Cache(Box<CacheConfig>),
    /// `metrics`: the process's Prometheus metrics.
    Metrics,
    /// `acme_server`: an ACME CA issuing from the local CA.
    AcmeServer(Box<AcmeServerConfig>),
    /// `log_skip` / `skip_log`: the request is left out of the access log.
    LogSkip,
    /// `log_name <names...>`: the request goes to the site's logs of these names only.
    LogName {
        names: Vec<String>,
    },
    StaticResponse {
        /// `None`: 200, or the error's status inside `handle_errors`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Template>,
        #[serde(default)]
        close: bool,
    },
    Redirect {
        to: Template,
        status: u16,
        /// `html` mode: a 200 page with a meta refresh instead of a Location header.
        #[serde(default)]
        html: bool,
    },
    Rewrite {
        uri: Template,
    },
    Uri(UriOp),
    /// Response header edits (`header`).
    Headers(HeaderOps),
    /// Request header edits (`request_header`).
    RequestHeaders(HeaderOps),
    /// A nested list of routes (`handle`, `handle_path`, `route`).
    Subroute {
        routes: Vec<Route>,
    },
    Error {
        status: u16,
        #[serde(default)]
        message: Template,
    },
    Abort,
    Vars {
        values: Vec<VarAssign>,
    },
    Map(MapHandler),
    RequestBody {
        /// `max_size`: larger bodies are refused (413).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_size: Option<u64>,
        /// `set`: the body the upstream gets instead of the client's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        set: Option<Template>,
    },
    /// `root`: where file handlers look (`{http.vars.root}`).
    Root {
        path: Template,
    },
    FileServer(Box<FileServer>),
    /// `try_files`: rewrite to the first candidate that exists.
    TryFiles(FileMatch),
    IpFilter(IpFilter),
    RateLimit(RateLimit),
    BasicAuth(BasicAuth),
    ForwardAuth(ForwardAuth),
    /// `copy_response [<status>]`, only in a `reverse_proxy`'s `handle_response` routes:
    /// relay the upstream's answer after all (its status replaced when given).
    CopyResponse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// `copy_response_headers { include|exclude <fields> }`, only in a `reverse_proxy`'s
    /// `handle_response` routes: the upstream's fields added to the response.
    CopyResponseHeaders {
        /// Only these fields (lowercase); empty: all but `exclude`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        include: Vec<String>,
        /// Every field but these (lowercase).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    /// `intercept`: act on the responses the handlers after it write.
    Intercept(Box<ResponseHandling>),
    /// `fs <name>`: file paths of this request (`file_server`, `try_files`, the `file`
    /// matcher) are read under the named file system's directory `root`.
    Fs {
        name: String,
        root: String,
    },
    /// `tracing`: the request becomes an OpenTelemetry span named `span` (W3C trace
    /// context taken from and passed on in `traceparent`), exported over OTLP.
    Tracing {
        span: Template,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attributes: Vec<(String, Template)>,
    },
    /// `templates`: responses whose `Content-Type` holds one of `mime` are run as Go
    /// templates (delimiters `between`, files read under `root`, default the site's
    /// `root`).
    Templates {
        mime: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        between: Option<(String, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<Template>,
    },
    /// `method`: the request's method from here on (uppercase).
    Method {
        method: String,
    },
    /// `log_append <field> <value>`: a field added to the request's access-log record,
    /// its value taken when the record is written (`<field`: when the directive runs).
    LogAppend {
        field: String,
        value: Template,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        early: bool,
    },
}

/// What acts on a response before the client sees it: a `reverse_proxy`'s on its
/// upstream's answers, an `intercept`'s on what the handlers after it write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHandling {
    /// Named response matchers (`@name status 5xx`, `@name header X-Foo *`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_matchers: Vec<ResponseMatcher>,
    /// `replace_status [@matcher] <code>`, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_status: Vec<ReplaceStatus>,
    /// `handle_response [@matcher] { ... }`: routes run instead of relaying a matching
    /// response; first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handle_response: Vec<HandleResponse>,
}

impl ResponseHandling {
    pub fn is_empty(&self) -> bool {
        self.response_matchers.is_empty()
            && self.replace_status.is_empty()
            && self.handle_response.is_empty()
    }
}

/// `forward_auth`: ask an authentication service about each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuth {
    /// `host:port` of the service.
    pub upstream: String,
    /// The path (and query) asked for; the original URI by default.
    pub uri: Template,
    /// Response fields copied into the request on success: (from, to).
    pub copy_headers: Vec<(String, String)>,
    #[serde(default)]
    pub header_up: HeaderOps,
}

/// `basic_auth`: HTTP Basic authentication against bcrypt hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub realm: String,
    /// Usernames and their bcrypt hashes (`$2a$`/`$2b$`/`$2y$`).
    pub users: Vec<BasicUser>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicUser {
    pub name: String,
    /// Serialised: worker processes receive the config as JSON.
    pub hash: String,
}

/// `ip_filter`: allow or deny by the client's address (after `trusted_proxies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilter {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// For addresses in neither list.
    pub default_allow: bool,
}

/// `rate_limit`: at most `events` (+ `burst`) per sliding `window` per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Directives naming the same zone share its counters.
    pub zone: String,
    pub key: Template,
    pub events: u32,
    pub window_ms: u64,
    #[serde(default)]
    pub burst: u32,
    /// `distributed exact|approximate [<sync_interval>]`: counted across the fleet
    /// through `storage redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<Distributed>,
}

/// How a `rate_limit` zone is shared by the instances of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distributed {
    /// One atomic Redis script per decision.
    Exact,
    /// Local counts, merged with the fleet's every `sync_interval_ms`.
    Approximate { sync_interval_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", deny_unknown_fields)]
pub enum UriOp {
    StripPrefix {
        prefix: String,
    },
    StripSuffix {
        suffix: String,
    },
    Replace {
        find: String,
        replace: String,
        limit: Option<u32>,
    },
    PathRegexp {
        pattern: String,
        replace: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    pub ops: Vec<HeaderOp>,
    /// Apply after the response is produced (upstream headers included).
    pub deferred: bool,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", deny_unknown_fields)]
pub enum HeaderOp {
    Set {
        name: String,
        value: Template,
    },
    Add {
        name: String,
        value: Template,
    },
    Delete {
        name: String,
    },
    /// Set only when the header is absent (`?Name value`).
    Default {
        name: String,
        value: Template,
    },
    /// Substring (or regex) replacement in every value of the field.
    Replace {
        name: String,
        search: String,
        replace: Template,
        regex: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarAssign {
    pub name: String,
    pub value: Template,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapHandler {
    pub source: Template,
    pub destinations: Vec<String>,
    pub mappings: Vec<MapEntry>,
    pub defaults: Vec<Template>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    /// Exact input, or a regex when `regex` is set (`~pattern` in the Dwaarfile).
    pub input: String,
    #[serde(default)]
    pub regex: bool,
    pub outputs: Vec<Template>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseProxy {
    pub upstreams: Vec<Upstream>,
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub health: HealthChecks,
    #[serde(default)]
    pub header_up: HeaderOps,
    #[serde(default)]
    pub header_down: HeaderOps,
    /// `-1` flushes every write immediately; `None` = default buffering.
    #[serde(default)]
    pub flush_interval_ms: Option<i64>,
    /// `stream_timeout`: upgraded connections (WebSocket...) are closed this long after
    /// they open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u64>,
    /// `stream_close_delay`: upgraded connections are closed this long after their config
    /// is replaced or the server starts stopping; `None`: they run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_close_delay_ms: Option<u64>,
    #[serde(default)]
    pub transport: Transport,
    /// `dynamic a|srv`: upstreams looked up in DNS and refreshed while serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicUpstreams>,
    /// Response matchers, `replace_status` and `handle_response` on upstream answers.
    #[serde(default, skip_serializing_if = "ResponseHandling::is_empty")]
    pub responses: ResponseHandling,
    /// `request_buffers`: up to this many bytes of a request body are read before the
    /// request goes upstream (`u64::MAX`: `unlimited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_buffers: Option<u64>,
    /// `response_buffers`: up to this many bytes of a response body are read from the
    /// upstream before the response goes to the client (`u64::MAX`: `unlimited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_buffers: Option<u64>,
}

/// One `handle_response` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleResponse {
    /// A response matcher's name; `None`: every response.
    pub matcher: Option<String>,
    pub routes: Vec<Route>,
}

/// A response matcher of `reverse_proxy`: every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMatcher {
    pub name: String,
    /// Codes (`404`) or classes (`5xx`); any of them.
    #[serde(default)]
    pub status: Vec<String>,
    /// Fields that must be present (no values) or have one of the values (`*` at either
    /// end is a wildcard).
    #[serde(default)]
    pub headers: Vec<FieldMatch>,
}

/// `replace_status`: the status the client sees for matching upstream responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceStatus {
    /// A response matcher's name; `None`: every response.
    pub matcher: Option<String>,
    pub status: u16,
}

/// `dynamic a <name> <port>` or `dynamic srv <name>`: the upstream set comes from DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicUpstreams {
    /// `a` (A/AAAA records of `name`, each address with `port`) or `srv` (the SRV
    /// records of `name`, each target's addresses with its port).
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub port: Option<u16>,
    /// How often the records are looked up again.
    pub refresh_ms: u64,
    /// DNS servers to ask (`ip[:port]`); empty: the system's.
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// Overrides the transport's `dial_timeout` for these upstreams.
    #[serde(default)]
    pub dial_timeout_ms: Option<u64>,
    /// `versions ipv4 ipv6` of `dynamic a` (default both).
    #[serde(default)]
    pub versions: Vec<String>,
}

/// One backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `http`, `https` or `h2c`.
    pub scheme: String,
    /// `host:port` to dial, or a unix socket path when `unix` is set.
    pub dial: String,
    #[serde(default)]
    pub unix: bool,
    /// `dial` holds placeholders, filled in for each request
    /// (`{http.request.header.X-Backend}`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placeholder: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    pub policy: LbPolicy,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub try_duration_ms: u64,
    #[serde(default = "default_try_interval")]
    pub try_interval_ms: u64,
    /// `lb_retry_match`: requests that may be retried after an upstream received them
    /// (any set matching); empty: `GET` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_match: Vec<MatcherSet>,
}

fn default_try_interval() -> u64 {
    250
}

impl Default for LoadBalancing {
    fn default() -> Self {
        LoadBalancing {
            policy: LbPolicy::Random,
            retries: 0,
            try_duration_ms: 0,
            try_interval_ms: default_try_interval(),
            retry_match: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", deny_unknown_fields)]
pub enum LbPolicy {
    Random,
    RandomChoose {
        choose: u32,
    },
    RoundRobin,
    LeastConn,
    First,
    IpHash,
    ClientIpHash,
    UriHash,
    /// One weight per upstream, in order; a weight of 0 takes the upstream out.
    WeightedRoundRobin {
        weights: Vec<u32>,
    },
    /// By the value of a header; without it, the `fallback` (default random).
    Header {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Box<LbPolicy>>,
    },
    /// Sticky by cookie; a request without the cookie gets the `fallback`'s choice
    /// (default random) and the cookie.
    Cookie {
        name: String,
        secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Box<LbPolicy>>,
    },
    /// By the value of a query parameter; without it, the `fallback` (default random).
    Query {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Box<LbPolicy>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HealthChecks {
    pub active: Option<ActiveHealth>,
    pub passive: Option<PassiveHealth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    pub uri: String,
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// `200`, or a class like `2xx`.
    pub expect_status: Option<String>,
    pub expect_body: Option<String>,
    pub headers: Vec<FieldMatch>,
    /// `health_method` (default `GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `health_request_body`, sent with its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// `health_passes`: consecutive passes before an unhealthy upstream is healthy again.
    #[serde(default = "one")]
    pub passes: u32,
    /// `health_fails`: consecutive failures before a healthy upstream is unhealthy.
    #[serde(default = "one")]
    pub fails: u32,
    /// `health_follow_redirects`: follow 3xx answers (up to 10) and judge the last one.
    #[serde(default)]
    pub follow_redirects: bool,
    /// `health_upstream host:port`: probe this address instead of the upstream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl Default for ActiveHealth {
    /// Caddy's defaults: probe every 30 s, 5 s to answer, one result changes the
    /// verdict; an empty URI makes the probe a TCP connect.
    fn default() -> Self {
        ActiveHealth {
            uri: String::new(),
            port: None,
            interval_ms: 30_000,
            timeout_ms: 5_000,
            expect_status: None,
            expect_body: None,
            headers: Vec::new(),
            method: None,
            request_body: None,
            passes: 1,
            fails: 1,
            follow_redirects: false,
            upstream: None,
        }
    }
}

impl Default for PassiveHealth {
    /// Off until `fail_duration` is set; one failure is enough once it is.
    fn default() -> Self {
        PassiveHealth {
            fail_duration_ms: 0,
            max_fails: 1,
            unhealthy_status: Vec::new(),
            unhealthy_latency_ms: None,
            unhealthy_request_count: None,
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    pub fail_duration_ms: u64,
    pub max_fails: u32,
    pub unhealthy_status: Vec<String>,
    pub unhealthy_latency_ms: Option<u64>,
    pub unhealthy_request_count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transport {
    pub dial_timeout_ms: u64,
    pub response_header_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    /// Idle keep-alive time; `None` = keep-alive off.
    pub keepalive_ms: Option<u64>,
    /// Most idle kept-alive connections over all upstreams of this proxy (per worker
    /// thread); `None`: Dwaar's default bound.
    pub keepalive_idle_conns: Option<u32>,
    /// Most idle kept-alive connections to one upstream (per worker thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_idle_conns_per_host: Option<u32>,
    pub tls: bool,
    pub tls_server_name: Option<String>,
    pub tls_insecure_skip_verify: bool,
    pub tls_trusted_ca_certs: Vec<String>,
    pub versions: Vec<String>,
    /// `tls_client_auth <cert_file> <key_file>`: the client certificate (PEM chain and
    /// key) Dwaar presents to TLS upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_auth: Option<(String, String)>,
    /// `max_response_header`: the largest upstream response head accepted (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_header: Option<u64>,
    /// `keepalive_interval`: TCP keep-alive probes on upstream connections this often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_ms: Option<u64>,
    /// `read_buffer`: the receive buffer of upstream sockets (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_buffer: Option<u64>,
    /// `write_buffer`: the send buffer of upstream sockets (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_buffer: Option<u64>,
    /// `max_conns_per_host`: most requests in flight to one upstream (0: no limit).
    #[serde(default)]
    pub max_conns_per_host: u32,
    /// `dns_min_ttl`: host-name upstreams are looked up again after their record's TTL,
    /// but not sooner than this (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_min_ttl_ms: Option<u64>,
    /// `resolvers <ip>...`: DNS servers for upstream host names (default: the system's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// `proxy_protocol v1|v2`: send a PROXY protocol header naming the client first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// Speak FastCGI to the upstreams instead of HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastcgi: Option<FastCgi>,
    /// `expect_continue_timeout`: a request with `Expect: 100-continue` waits this long
    /// for the upstream's `100 Continue` before its body is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_continue_timeout_ms: Option<u64>,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            dial_timeout_ms: 3000,
            response_header_timeout_ms: None,
            read_timeout_ms: None,
            write_timeout_ms: None,
            keepalive_ms: Some(120_000),
            keepalive_idle_conns: None,
            keepalive_idle_conns_per_host: None,
            tls: false,
            tls_server_name: None,
            tls_insecure_skip_verify: false,
            tls_trusted_ca_certs: Vec::new(),
            versions: vec!["1.1".into()],
            tls_client_auth: None,
            keepalive_interval_ms: None,
            read_buffer: None,
            write_buffer: None,
            max_response_header: None,
            max_conns_per_host: 0,
            dns_min_ttl_ms: None,
            resolvers: Vec::new(),
            proxy_protocol: None,
            fastcgi: None,
            expect_continue_timeout_ms: None,
        }
    }
}

/// One server of the `layer4` global option: its addresses and routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Server {
    pub listen: Vec<L4Address>,
    pub routes: L4Routes,
}

/// A layer-4 listener address (`:5432`, `127.0.0.1:6000`, `udp/:5353`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Address {
    #[serde(default)]
    pub udp: bool,
    /// Empty: every interface.
    pub host: String,
    pub port: u16,
}

/// Routes tried in order; the first whose matchers accept the connection handles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Routes {
    /// How long matchers may wait for the bytes they need (default 3 s).
    pub matching_timeout_ms: u64,
    /// UDP: a client's session ends after this long without a datagram either way
    /// (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// TCP: a proxied connection is closed this long after it was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u64>,
    pub routes: Vec<L4Route>,
}

/// `route [@a @b] { handlers }`: any of the named sets (all if none) selects it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Route {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<L4MatcherSet>,
    pub handlers: Vec<L4Handler>,
}

/// A named layer-4 matcher set: every matcher must accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4MatcherSet {
    pub name: String,
    pub matchers: Vec<L4Matcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum L4Matcher {
    /// A TLS ClientHello; with server names (`*.example.com` wildcards) and ALPN
    /// protocols when given (each list: any of them).
    Tls {
        sni: Vec<String>,
        alpn: Vec<String>,
    },
    /// An HTTP/1.x request (or HTTP/2 preface); hosts, path patterns and methods
    /// as the HTTP matchers (each list: any of them).
    Http {
        hosts: Vec<String>,
        paths: Vec<String>,
        methods: Vec<String>,
    },
    /// An SSH client's identification line.
    Ssh,
    /// A PostgreSQL client's first message; with users, databases or client
    /// (`application_name`) names when given.
    Postgres {
        users: Vec<String>,
        databases: Vec<String>,
        clients: Vec<String>,
    },
    /// A PROXY protocol header (v1 or v2).
    ProxyProtocol,
    RemoteIp(Vec<String>),
    LocalIp(Vec<String>),
    /// None of these matchers accepts.
    Not(Vec<L4Matcher>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum L4Handler {
    Proxy(Box<L4Proxy>),
    /// Terminates TLS with the server's certificates; later handlers see plaintext.
    Tls,
    Subroute(L4Routes),
    Throttle(L4Throttle),
    /// Reads a PROXY protocol header; the address in it is the client's from then on.
    ProxyProtocol(ProxyProtocol),
    Close,
    Echo,
}

/// `proxy`: relays the connection to one of the upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Proxy {
    pub upstreams: Vec<L4Upstream>,
    pub policy: LbPolicy,
    /// How long to keep trying other upstreams when dials fail (0: one try).
    #[serde(default)]
    pub try_duration_ms: u64,
    #[serde(default = "default_try_interval")]
    pub try_interval_ms: u64,
    pub dial_timeout_ms: u64,
    /// Active checks: a TCP connect (UDP upstreams are not probed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ActiveHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealth>,
    /// An upstream with this many connections open is not chosen (`unhealthy_connection_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `v1` or `v2`: the PROXY header sent to the upstream first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
}

/// One layer-4 upstream: `host:port` over TCP, or UDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Upstream {
    pub dial: String,
    #[serde(default)]
    pub udp: bool,
}

/// `throttle`: limits on how fast the client's bytes are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct L4Throttle {
    /// Per connection (bytes per second; burst in bytes).
    pub read_bytes_per_second: Option<u64>,
    pub read_burst_size: Option<u64>,
    /// Shared by every connection through this handler.
    pub total_read_bytes_per_second: Option<u64>,
    pub total_read_burst_size: Option<u64>,
    /// A delay before the connection goes on.
    pub latency_ms: Option<u64>,
}
