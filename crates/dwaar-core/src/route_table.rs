//! `RouteTable`: the compiled, immutable form of a `Config`, and `RouteStore`, the
//! atomically swappable pointer to the current table.
//!
//! Compiling does every expensive thing once: host maps (exact, then `*.wildcard`, then
//! catch-all per port), matcher sets with their regexes, header templates, upstream
//! state shared with previous tables (so health and connection counts survive reloads).
//! A request loads the store exactly once and keeps that `Arc` for its whole life.

use crate::matcher::{build_regex, compile_sets, CompiledSet, PathPattern};
use crate::net::IpNet;
use crate::response_rules::ResponseRules;
use crate::upstream::{HealthTarget, ProxyHandler, UpstreamRegistry};
use arc_swap::ArcSwap;
use compact_str::CompactString;
use dwaar_config::model::{Config, Handler, HeaderOp, HeaderOps, Route, UriOp};
use dwaar_config::placeholder::Template;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

/// A header edit with its value template.
#[derive(Debug)]
pub enum HeaderRule {
    Set(CompactString, Template),
    Add(CompactString, Template),
    Delete(CompactString),
    Default(CompactString, Template),
    Replace {
        name: CompactString,
        re: Arc<Regex>,
        with: Template,
    },
}

#[derive(Debug)]
pub enum UriRule {
    StripPrefix(String),
    StripSuffix(String),
    Replace {
        find: String,
        replace: String,
        limit: Option<u32>,
    },
    PathRegexp {
        re: Regex,
        replace: String,
    },
}

#[derive(Debug)]
pub struct MapRule {
    pub source: Template,
    pub destinations: Vec<CompactString>,
    pub exact: Vec<(String, Vec<Template>)>,
    pub regex: Vec<(Regex, Vec<Template>)>,
    pub defaults: Vec<Template>,
}

/// One compiled handler.
/// One access log of a site and the requests it takes.
#[derive(Debug)]
pub struct SiteLog {
    pub name: Option<String>,
    pub logger: Arc<dwaar_log::Logger>,
    /// Global logs that also take this logger's records (`include`).
    pub forwards: Vec<Arc<dwaar_log::Logger>>,
    /// `hostnames`: only requests for these hosts (lowercase; `*.` prefixes match one
    /// label); empty: every request of the site.
    pub hostnames: Vec<String>,
    /// `no_hostname`: only requests that name this log with `log_name`.
    pub no_hostname: bool,
}

impl SiteLog {
    /// Whether a request for `host` goes to this log (`names`: what `log_name` chose).
    pub fn takes(&self, host: &str, names: Option<&[String]>) -> bool {
        if let Some(names) = names {
            return self.name.as_ref().is_some_and(|n| names.contains(n));
        }
        if self.no_hostname {
            return false;
        }
        self.hostnames.is_empty()
            || self.hostnames.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix)),
                None => h.eq_ignore_ascii_case(host),
            })
    }
}

#[derive(Debug)]
pub enum HandlerRule {
    Proxy(Arc<ProxyHandler>),
    /// `cache`: answer from memory, or note how to fill it.
    Cache(Arc<crate::cache::CacheRule>),
    /// `encode`: negotiate a coding for the response.
    Encode(Arc<crate::encode::EncodeRule>),
    /// `metrics`: this process's Prometheus text.
    Metrics,
    /// `acme_server`: ACME requests under its path prefix.
    AcmeServer(Arc<dwaar_tls::acme_server::AcmeServer>),
    LogSkip,
    /// `log_name`: the site's logs this request goes to.
    LogName(Vec<String>),
    Respond {
        status: Option<u16>,
        body: Option<Template>,
        content_type: Option<&'static str>,
        close: bool,
    },
    Redirect {
        to: Template,
        status: u16,
        html: bool,
    },
    Rewrite(Template),
    Uri(UriRule),
    ResponseHeaders {
        rules: Vec<HeaderRule>,
        deferred: bool,
    },
    RequestHeaders(Vec<HeaderRule>),
    Subroute(Vec<RouteRule>),
    Error {
        status: u16,
        message: Template,
    },
    Abort,
    Vars(Vec<(CompactString, Template)>),
    Map(MapRule),
    /// `request_body`: a size limit, a body that replaces the client's.
    RequestBody {
        max: Option<u64>,
        set: Option<Template>,
    },
    /// `root`: sets `{vars.root}`.
    Root(Template),
    FileServer(Arc<dwaar_config::model::FileServer>),
    TryFiles(Arc<dwaar_config::model::FileMatch>),
    IpFilter(Arc<IpFilterRule>),
    RateLimit(Arc<RateLimitRule>),
    BasicAuth(Arc<BasicAuthRule>),
    ForwardAuth(Arc<ForwardAuthRule>),
    /// `intercept`: the rules for responses the handlers after it write.
    Intercept(Arc<ResponseRules>),
    /// `copy_response`: relay the upstream's answer (with this status, if given).
    CopyResponse(Option<u16>),
    /// `copy_response_headers`: the upstream's fields added to the response.
    CopyResponseHeaders(Arc<CopyHeaders>),
    /// `method`: the request's method from here on.
    Method(CompactString),
    /// `fs`: the file system's name and directory.
    Fs(CompactString, Arc<std::path::Path>),
    /// `templates`: the rule responses are rendered by.
    Templates(Arc<crate::templates::TemplatesRule>),
    /// `tracing`: the span's name and `span_attributes`.
    Tracing {
        span: Template,
        attributes: Vec<(String, Template)>,
    },
    /// `log_append`: a field for the access-log record.
    /// `log_append`: a field, its value, and whether the value is taken at once
    /// (`<field`) or when the record is written.
    LogAppend(CompactString, Template, bool),
}

/// A compiled `copy_response_headers`: lowercase names, at most one list non-empty.
#[derive(Debug)]
pub struct CopyHeaders {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl CopyHeaders {
    /// Whether the upstream field `name` is copied. Framing and hop-by-hop fields
    /// never are: the response they described is not the one sent.
    pub fn copies(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        !crate::request::hop_by_hop(lower.as_bytes())
            && lower != "content-length"
            && if self.include.is_empty() {
                !self.exclude.contains(&lower)
            } else {
                self.include.contains(&lower)
            }
    }
}

/// A compiled `forward_auth`.
#[derive(Debug)]
pub struct ForwardAuthRule {
    /// Distinguishes rules in the marker of a second pipeline run.
    pub id: u64,
    pub addr: String,
    pub uri: Template,
    pub copy: Vec<(String, String)>,
    pub header_up: Vec<HeaderRule>,
}

/// A compiled `basic_auth`.
#[derive(Debug)]
pub struct BasicAuthRule {
    pub realm: String,
    /// `WWW-Authenticate` value.
    pub challenge: String,
    pub users: HashMap<String, String>,
    /// What an unknown user's password is checked against: a dummy hash of the
    /// accounts' highest bcrypt cost ([`crate::auth::unknown_user`]).
    pub unknown: String,
}

/// A compiled `ip_filter`.
#[derive(Debug)]
pub struct IpFilterRule {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub default_allow: bool,
}

/// A compiled `rate_limit`: its zone (shared by name, kept across reloads while its
/// limits stay the same) and the key template.
#[derive(Debug)]
pub struct RateLimitRule {
    pub zone: Arc<crate::security::Zone>,
    pub key: Template,
    /// `distributed`: decided with the fleet (the local zone then serves while Redis
    /// cannot be asked).
    pub fleet: Option<FleetLimit>,
}

/// A rate limit shared by the fleet.
#[derive(Debug)]
pub enum FleetLimit {
    Exact {
        fleet: Arc<dwaar_fleet::Fleet>,
        zone: String,
    },
    Approximate(Arc<dwaar_fleet::limit::Approximate>),
}

#[derive(Debug)]
pub struct RouteRule {
    pub matchers: Vec<CompiledSet>,
    /// Bit of the exclusive group this route belongs to.
    pub group_bit: Option<u64>,
    pub handlers: Vec<HandlerRule>,
}

/// The routes of one site block.
#[derive(Debug)]
pub struct SiteRoutes {
    pub name: String,
    /// Path prefix from the site address (`example.com/api`).
    pub path: Option<PathPattern>,
    pub routes: Vec<RouteRule>,
    pub error_routes: Vec<RouteRule>,
    /// The site's access logs (`log` blocks); empty: not logged.
    pub logs: Vec<SiteLog>,
    /// First-party analytics (`analytics`).
    pub analytics: Option<Arc<crate::analytics::SiteAnalytics>>,
    /// Request counters, shared with earlier tables that had the same site.
    pub metrics: Arc<crate::metrics::SiteMetrics>,
    /// `{http.request.body}` is used: bodies are read before the routes run.
    pub reads_body: bool,
}

/// Long-lived state that compiled tables share across reloads: upstream pools and
/// health, and log writers (open files and connections).
#[derive(Default)]
pub struct Registries {
    pub upstreams: UpstreamRegistry,
    /// `None` where nothing is served (the supervisor only validates configs).
    pub logs: Option<dwaar_log::LogRegistry>,
    /// Certificates and TLS policies; `None` where TLS is only validated.
    pub tls: Option<Arc<dwaar_tls::TlsManager>>,
    /// Rate-limit zones by name.
    pub rate_zones: std::sync::Mutex<HashMap<String, Arc<crate::security::Zone>>>,
    /// `cache` stores by site and position.
    pub caches: std::sync::Mutex<HashMap<String, Arc<crate::cache::Store>>>,
    /// The analytics collector, started by the first table with an `analytics` site;
    /// `None` where nothing is served.
    pub analytics: Option<std::sync::Mutex<Option<Arc<dwaar_analytics::Collector>>>>,
}

impl Registries {
    /// For a process that serves requests.
    /// `leader`: this process obtains and renews certificates (standalone server,
    /// supervisor); workers only load what the leader stores.
    pub fn serving(leader: bool) -> Registries {
        Registries {
            upstreams: UpstreamRegistry::default(),
            logs: Some(dwaar_log::LogRegistry::default()),
            tls: Some(dwaar_tls::TlsManager::new(leader)),
            rate_zones: Default::default(),
            caches: Default::default(),
            analytics: Some(Default::default()),
        }
    }

    /// The collector for `db`, started on first use, with `settings` applied.
    fn collector(
        &self,
        db: &std::path::Path,
        settings: dwaar_analytics::Settings,
    ) -> Result<Option<Arc<dwaar_analytics::Collector>>, String> {
        let Some(slot) = &self.analytics else {
            return Ok(None);
        };
        let mut g = slot
            .lock()
            .map_err(|_| "analytics state poisoned".to_string())?;
        if let Some(c) = g.as_ref() {
            if c.db_path() != db {
                tracing::warn!(
                    "analytics storage moved to {}; it takes effect after a restart",
                    db.display()
                );
            }
            c.configure(settings);
            return Ok(Some(c.clone()));
        }
        let c = dwaar_analytics::Collector::start(db, settings)
            .map_err(|e| format!("analytics storage: {e}"))?;
        *g = Some(c.clone());
        Ok(Some(c))
    }

    /// Writes what the analytics collector holds and stops it (shutdown).
    pub fn flush_analytics(&self) {
        if let Some(c) = self.analytics.as_ref().and_then(|s| s.lock().ok()?.clone()) {
            c.shutdown();
        }
    }

    /// Starts keeping `table`'s certificates valid (after it was swapped in).
    pub fn activate_tls(&self, table: &RouteTable) {
        if let Some(m) = &self.tls {
            match &table.tls {
                Some(c) => m.activate(&c.wanted),
                None => m.activate(&Arc::new(dwaar_tls::manager::Wanted::default())),
            }
        }
    }

    /// Every `cache` store of this process.
    pub fn cache_stores(&self) -> Vec<Arc<crate::cache::Store>> {
        self.caches
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Flushes pending log records (shutdown).
    pub fn flush_logs(&self, timeout: std::time::Duration) {
        if let Some(l) = &self.logs {
            l.flush_all(timeout);
        }
    }
}

/// Sites reachable through one port.
#[derive(Debug, Default)]
pub struct PortSites {
    /// Built from the config only (clients look up, never insert): a fast hash.
    pub exact: rustc_hash::FxHashMap<CompactString, Vec<Arc<SiteRoutes>>>,
    /// `(".example.com", site)` for `*.example.com`.
    pub wildcard: Vec<(String, Arc<SiteRoutes>)>,
    pub catch_all: Vec<Arc<SiteRoutes>>,
    /// Who may say who the client is (`trusted_proxies`, `client_ip_headers`,
    /// `trusted_proxies_strict`).
    pub client_ip: crate::net::ClientIpRule,
    /// `listener_wrappers { proxy_protocol }`: read on this port's TCP listeners.
    pub proxy_protocol: Option<Arc<crate::proxy_protocol::Inbound>>,
    /// `servers { max_header_size }`; see [`PortSites::max_header_size`].
    pub max_header_size: Option<usize>,
    /// `servers { strict_sni_host }`: TLS requests whose Host is not their SNI get 421.
    pub strict_sni_host: bool,
    pub timeouts: PortTimeouts,
}

/// The request header limit when `max_header_size` is not set: 32 KiB of fields, in
/// line with nginx's defaults (four 8 KiB buffers) rather than Go's 1 MB, so an
/// over-long head is refused (431) instead of forwarded to a backend with smaller limits.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;

/// `servers { timeouts { ... } }` for one port; `None` keeps the front-end's default.
#[derive(Debug, Default, Clone, Copy)]
pub struct PortTimeouts {
    /// From the first byte of a request head to its end (slow-loris defence).
    pub read_header: Option<std::time::Duration>,
    /// Between reads of a request body.
    pub read_body: Option<std::time::Duration>,
    /// Between writes of a response.
    pub write: Option<std::time::Duration>,
    /// Between requests on a keep-alive connection.
    pub idle: Option<std::time::Duration>,
}

impl PortSites {
    /// The most bytes of header fields a request on this port may carry.
    pub fn max_header_size(&self) -> usize {
        self.max_header_size.unwrap_or(DEFAULT_MAX_HEADER_SIZE)
    }

    /// Finds the site for `host` (lowercase, no port) and a decoded lowercase path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<SiteRoutes>> {
        let pick = |list: &'_ [Arc<SiteRoutes>]| -> Option<usize> {
            list.iter()
                .position(|s| s.path.as_ref().map(|p| p.matches(path)).unwrap_or(true))
        };
        if let Some(list) = self.exact.get(host) {
            if let Some(i) = pick(list) {
                return list.get(i);
            }
        }
        for (suffix, site) in &self.wildcard {
            if host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && !host[..host.len() - suffix.len()].contains('.')
                && site.path.as_ref().map(|p| p.matches(path)).unwrap_or(true)
            {
                return Some(site);
            }
        }
        pick(&self.catch_all).and_then(|i| self.catch_all.get(i))
    }
}

/// Whether a listen address is a unix socket (`unix/<path>|<mode>`).
pub fn is_unix(addr: &str) -> bool {
    addr.starts_with("unix/")
}

/// A socket the server must listen on.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ListenSpec {
    pub addr: String,
    pub port: u16,
    pub h2c: bool,
    /// An HTTPS port: connections start with a TLS handshake.
    #[serde(default)]
    pub tls: bool,
    /// Connections may start with a PROXY protocol header (the port's policy decides).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Connections go through layer-4 routes first: a `layer4` server's port, or a
    /// site port with a `layer4` listener wrapper.
    #[serde(default)]
    pub layer4: bool,
}

/// The compiled configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub ports: rustc_hash::FxHashMap<u16, PortSites>,
    pub listeners: Vec<ListenSpec>,
    pub health_targets: Vec<HealthTarget>,
    /// `dynamic` upstream sets, refreshed by the health-check service.
    pub dynamic: Vec<Arc<crate::upstream::dynamic::Dynamic>>,
    pub grace_period_ms: Option<u64>,
    /// Handshake state of the HTTPS ports and the certificates to manage.
    pub tls: Option<dwaar_tls::manager::Compiled>,
    /// ACME HTTP-01 answers, served on plain-HTTP ports.
    pub challenges: Option<Arc<dwaar_tls::challenge::ChallengeBoard>>,
    /// Some site requires client certificates: requests check that the connection's
    /// TLS policy is the one of the site they address.
    pub client_auth: bool,
    /// Some route may ask for a check off the request path (`basic_auth`,
    /// `forward_auth`, a `cache` wait): front-ends keep the original request for a
    /// second pipeline run after it.
    pub rerun_checks: bool,
    /// Sites with analytics and where their numbers are stored (for the admin API).
    pub analytics: Option<AnalyticsInfo>,
    /// Every upstream the table's reverse proxies use (for metrics).
    pub upstreams: Vec<Arc<crate::upstream::UpstreamState>>,
    /// The tunnel sets of proxies with a `stream_close_delay` (closed after it when this
    /// config is replaced or the server stops).
    pub tunnels: Vec<Arc<crate::upstream::tunnels::Tunnels>>,
    /// Every `cache` store the table uses (stats, purges, metrics).
    pub cache_stores: Vec<Arc<crate::cache::Store>>,
    /// `layer4` servers and listener wrappers.
    pub layer4: crate::layer4::Layer4,
    /// HTTPS ports that also serve HTTP/3 (`servers { protocols ... h3 }`): (address, port).
    pub h3: Vec<(String, u16)>,
    /// The `Alt-Svc` value announcing HTTP/3, by port (made once per table).
    pub alt_svc: Vec<(u16, http::HeaderValue)>,
}

/// What the admin API needs to answer analytics queries.
#[derive(Debug, Clone)]
pub struct AnalyticsInfo {
    pub db: std::path::PathBuf,
    pub sites: Vec<String>,
    pub collector: Option<Arc<dwaar_analytics::Collector>>,
}

/// The analytics database of a config: `<storage>/analytics/analytics.db`.
pub fn analytics_db(config: &Config) -> std::path::PathBuf {
    dwaar_tls::storage::Storage::for_config(&config.global.tls).path("analytics/analytics.db")
}

/// An `acme_server` issuing from the local CA in `storage`.
fn acme_server(
    c: &dwaar_config::model::AcmeServerConfig,
    storage: &dwaar_config::model::GlobalTls,
) -> Result<dwaar_tls::acme_server::AcmeServer, String> {
    use dwaar_tls::acme_server::{NameRules, Settings};
    let storage = dwaar_tls::storage::Storage::for_config(storage);
    let ca = Arc::new(dwaar_tls::ca::LocalCa::load_or_create(&storage)?);
    let ranges = |list: &[String]| {
        list.iter()
            .filter_map(|r| {
                let (ip, bits) = r.split_once('/').unwrap_or((r, ""));
                let ip: std::net::IpAddr = ip.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                Some((ip, bits.parse().unwrap_or(max)))
            })
            .collect()
    };
    let settings = Settings {
        ca: c.ca.clone(),
        lifetime: std::time::Duration::from_millis(c.lifetime_ms.unwrap_or(12 * 3600 * 1000)),
        challenges: if c.challenges.is_empty() {
            vec!["http-01".into(), "tls-alpn-01".into(), "dns-01".into()]
        } else {
            c.challenges.clone()
        },
        allow_wildcard_names: c.allow_wildcard_names,
        allow: NameRules {
            domains: c.allow_domains.clone(),
            ip_ranges: ranges(&c.allow_ip_ranges),
        },
        deny: NameRules {
            domains: c.deny_domains.clone(),
            ip_ranges: ranges(&c.deny_ip_ranges),
        },
        resolvers: c.resolvers.clone(),
    };
    dwaar_tls::acme_server::AcmeServer::new(settings, ca, storage)
}

/// The labels of the config's sites with analytics on.
pub fn analytics_sites(config: &Config) -> Vec<String> {
    config
        .sites
        .iter()
        .filter(|s| s.analytics.as_ref().is_some_and(|a| a.enabled))
        .map(analytics_label)
        .collect()
}

/// The name a site's numbers are kept under: its first address's host (`:port` for a
/// catch-all).
fn analytics_label(site: &dwaar_config::model::Site) -> String {
    site.addresses
        .first()
        .map(|a| {
            if a.host.is_empty() {
                format!(":{}", a.port)
            } else {
                a.host.clone()
            }
        })
        .unwrap_or_default()
}

impl RouteTable {
    pub fn port(&self, port: u16) -> Option<&PortSites> {
        self.ports.get(&port)
    }

    /// Compiles a validated config. Errors here are environment problems (an upstream
    /// CA file that cannot be read), reported with the offending value.
    pub fn compile(config: &Config, registries: &Registries) -> Result<RouteTable, String> {
        let registry = &registries.upstreams;
        let mut table = RouteTable {
            grace_period_ms: config.global.grace_period_ms,
            ..Default::default()
        };
        let mut cx = Cx {
            registry,
            zones: &registries.rate_zones,
            rerun_checks: false,
            caches: &registries.caches,
            cache_site: String::new(),
            cache_count: 0,
            stores: Vec::new(),
            health: Vec::new(),
            dynamic: Vec::new(),
            upstreams: Vec::new(),
            tunnels: Vec::new(),
            storage: &config.global.tls,
        };
        let mut listeners = std::collections::BTreeSet::new();
        if let Some(m) = &registries.tls {
            table.tls = m.compile(config)?;
            table.challenges = Some(m.challenges().clone());
        } else {
            // Validation only: plan errors still fail the config.
            dwaar_tls::plan::Plan::new(config)?;
        }
        let wants_analytics = config
            .sites
            .iter()
            .any(|s| s.analytics.as_ref().is_some_and(|a| a.enabled));
        let collector = if wants_analytics {
            if registries.analytics.is_some() {
                // The fleet's dashboards merge every instance's rollups.
                let fleet = match &config.global.tls.redis {
                    Some(r) => Some(dwaar_fleet::fleet(r)?),
                    None => None,
                };
                dwaar_analytics::store::set_fleet(fleet);
            }
            let g = &config.global.analytics;
            let geoip = match &g.geoip {
                Some(p) => Some(Arc::new(
                    dwaar_analytics::geo::GeoDb::load(std::path::Path::new(p))
                        .map_err(|e| format!("analytics geoip: {e}"))?,
                )),
                None => None,
            };
            let db = analytics_db(config);
            let c = registries.collector(
                &db,
                dwaar_analytics::Settings {
                    retention_days: g.retention_days,
                    flush: std::time::Duration::from_millis(g.flush_interval_ms),
                    geoip,
                },
            )?;
            table.analytics = Some(AnalyticsInfo {
                db,
                sites: Vec::new(),
                collector: c.clone(),
            });
            c
        } else {
            None
        };
        table.client_auth = config
            .sites
            .iter()
            .any(|s| s.tls.as_ref().is_some_and(|t| t.client_auth.is_some()));
        for site in &config.sites {
            let name = site
                .addresses
                .iter()
                .map(|a| format!("{}{}:{}", a.host, a.path.as_deref().unwrap_or(""), a.port))
                .collect::<Vec<_>>()
                .join(", ");
            let mut groups = HashMap::new();
            cx.cache_site = analytics_label(site);
            cx.cache_count = 0;
            let routes = compile_routes(&site.routes, &mut cx, &mut groups)?;
            let error_routes = compile_routes(&site.error_routes, &mut cx, &mut groups)?;
            let path = site
                .addresses
                .iter()
                .find_map(|a| a.path.as_deref())
                .map(|p| {
                    if p.ends_with('*') {
                        PathPattern::new(p)
                    } else {
                        PathPattern::new(&format!("{p}*"))
                    }
                });
            let mut logs = Vec::with_capacity(site.logs.len());
            if let Some(registry) = &registries.logs {
                for c in &site.logs {
                    // Global logs that collect this logger's records: each is written
                    // in that log's own output and format, under this logger's name.
                    let logger_name = match &c.name {
                        Some(n) => format!("http.log.access.{n}"),
                        None => "http.log.access".to_string(),
                    };
                    let mut forwards = Vec::new();
                    for g in config
                        .global
                        .access_logs
                        .iter()
                        .filter(|g| g.takes_logger(&logger_name))
                    {
                        forwards.push(registry.logger(&dwaar_config::model::LogConfig {
                            name: c.name.clone(),
                            include: Vec::new(),
                            exclude: Vec::new(),
                            ..g.clone()
                        })?);
                    }
                    logs.push(SiteLog {
                        name: c.name.clone(),
                        logger: registry.logger(c)?,
                        forwards,
                        hostnames: c.hostnames.clone(),
                        no_hostname: c.no_hostname,
                    });
                }
            }
            let analytics = match (&site.analytics, &mut table.analytics) {
                (Some(a), Some(info)) if a.enabled => {
                    let label = analytics_label(site);
                    info.sites.push(label.clone());
                    Some(Arc::new(crate::analytics::SiteAnalytics::new(
                        &label,
                        a,
                        info.db.clone(),
                        collector.clone(),
                    )))
                }
                _ => None,
            };
            let metrics = crate::metrics::SiteMetrics::for_label(&analytics_label(site));
            let compiled = Arc::new(SiteRoutes {
                name,
                path,
                routes,
                error_routes,
                logs,
                analytics,
                metrics,
                reads_body: site.reads_body,
            });
            for a in &site.addresses {
                let port = table.ports.entry(a.port).or_default();
                if a.host.is_empty() {
                    port.catch_all.push(compiled.clone());
                } else if let Some(suffix) = a.host.strip_prefix('*') {
                    port.wildcard.push((suffix.to_string(), compiled.clone()));
                } else {
                    port.exact
                        .entry(CompactString::new(&a.host))
                        .or_default()
                        .push(compiled.clone());
                }
                let server = server_options(config, a.port);
                let tls = a.scheme.as_deref() == Some("https");
                let h2c = !tls
                    && server
                        .map(|s| s.protocols.iter().any(|p| p == "h2c"))
                        .unwrap_or(false);
                if tls && server.is_some_and(|s| s.protocols.iter().any(|p| p == "h3")) {
                    let addrs: Vec<String> = if site.bind.is_empty() {
                        vec![String::new()]
                    } else {
                        site.bind.clone()
                    };
                    for addr in addrs.into_iter().filter(|a| !is_unix(a)) {
                        if !table.h3.iter().any(|h| h.0 == addr && h.1 == a.port) {
                            table.h3.push((addr, a.port));
                        }
                    }
                }
                if site.bind.is_empty() {
                    listeners.insert(ListenSpec {
                        addr: String::new(),
                        port: a.port,
                        h2c,
                        tls,
                        proxy_protocol: false,
                        layer4: false,
                    });
                } else {
                    for b in &site.bind {
                        listeners.insert(ListenSpec {
                            addr: b.clone(),
                            port: a.port,
                            h2c,
                            tls,
                            proxy_protocol: false,
                            layer4: false,
                        });
                    }
                }
            }
        }
        https_redirects(config, &mut table, &mut listeners, &mut cx)?;
        // `servers` options, for every port (the redirect port included).
        for (number, port) in table.ports.iter_mut() {
            if let Some(s) = server_options(config, *number) {
                apply_server_options(port, s)?;
            }
        }
        table.layer4 = crate::layer4::Layer4::compile(
            config,
            &mut crate::layer4::Collected {
                registry,
                health: &mut cx.health,
                upstreams: &mut cx.upstreams,
            },
        )?;
        for (addr, port) in table.layer4.tcp.keys() {
            if table.ports.contains_key(port) {
                return Err(format!(
                    "layer4 listens on port {port}, where sites are served (the HTTP port \
                     takes HTTPS redirects): give it another port, or route on the sites' \
                     port with servers :{port} {{ listener_wrappers {{ layer4 {{ ... }} }} }}"
                ));
            }
            listeners.insert(ListenSpec {
                addr: addr.clone(),
                port: *port,
                h2c: false,
                tls: false,
                proxy_protocol: false,
                layer4: true,
            });
        }
        let listeners: std::collections::BTreeSet<ListenSpec> = listeners
            .into_iter()
            .map(|mut l| {
                l.proxy_protocol = table
                    .ports
                    .get(&l.port)
                    .is_some_and(|p| p.proxy_protocol.is_some());
                l.layer4 |= table.layer4.wrappers.contains_key(&l.port);
                l
            })
            .collect();
        // Specific hosts before catch-alls; longer wildcard suffixes first.
        for p in table.ports.values_mut() {
            p.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        }
        // An all-interfaces listener on a port covers specific binds on the same port.
        let wildcard_ports: Vec<u16> = listeners
            .iter()
            .filter(|l| l.addr.is_empty())
            .map(|l| l.port)
            .collect();
        table.listeners = listeners
            .into_iter()
            .filter(|l| l.addr.is_empty() || is_unix(&l.addr) || !wildcard_ports.contains(&l.port))
            .collect();
        table.health_targets = cx.health;
        table.dynamic = cx.dynamic;
        table.upstreams = cx.upstreams;
        table.tunnels = cx.tunnels;
        table.cache_stores = cx.stores;
        table.rerun_checks = cx.rerun_checks;
        for (_, port) in &table.h3 {
            if !table.alt_svc.iter().any(|(p, _)| p == port) {
                if let Ok(v) = http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")) {
                    table.alt_svc.push((*port, v));
                }
            }
        }
        Ok(table)
    }
}

/// The `servers` block for `port`: the one naming it (`servers :443`), else the one
/// without a listener address.
fn server_options(config: &Config, port: u16) -> Option<&dwaar_config::model::ServerOptions> {
    let servers = &config.global.servers;
    servers
        .iter()
        .find(|s| s.listener.as_deref().and_then(listener_port) == Some(port))
        .or_else(|| servers.iter().find(|s| s.listener.is_none()))
}

/// The port a `servers <listener>` block names: `:8080`, `127.0.0.1:8080`,
/// `[::1]:8080`, `tcp/...`. Dwaar's server options are per port, so a host in the
/// listener address does not narrow them further.
fn listener_port(listener: &str) -> Option<u16> {
    let l = listener.strip_prefix("tcp/").unwrap_or(listener);
    l.rsplit_once(':').map_or(l, |(_, p)| p).parse().ok()
}

fn apply_server_options(
    port: &mut PortSites,
    s: &dwaar_config::model::ServerOptions,
) -> Result<(), String> {
    let nets = |list: &[String]| -> Result<Vec<IpNet>, String> {
        list.iter().map(|c| IpNet::parse(c)).collect()
    };
    port.client_ip = crate::net::ClientIpRule {
        trusted: nets(&s.trusted_proxies)?,
        headers: s
            .client_ip_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        strict: s.trusted_proxies_strict,
    };
    port.max_header_size = s.max_header_size.map(|v| v as usize);
    port.strict_sni_host = s.strict_sni_host;
    let ms = |v: Option<u64>| v.map(std::time::Duration::from_millis);
    port.timeouts = PortTimeouts {
        read_header: ms(s.read_header_timeout_ms),
        read_body: ms(s.read_body_timeout_ms),
        write: ms(s.write_timeout_ms),
        idle: ms(s.idle_timeout_ms),
    };
    if let Some(pp) = &s.proxy_protocol {
        port.proxy_protocol = Some(Arc::new(crate::proxy_protocol::Inbound::compile(pp)?));
    }
    Ok(())
}

/// Caddy's automatic redirects: each HTTPS host also answers on the HTTP port with a
/// 308 to its HTTPS address (which is also where ACME HTTP-01 challenges arrive),
/// unless an explicit `http://` site serves that host.
fn https_redirects(
    config: &Config,
    table: &mut RouteTable,
    listeners: &mut std::collections::BTreeSet<ListenSpec>,
    cx: &mut Cx<'_>,
) -> Result<(), String> {
    let g = &config.global;
    if matches!(g.auto_https.as_deref(), Some("off")) {
        return Ok(());
    }
    let redirect = !matches!(g.auto_https.as_deref(), Some("disable_redirects"));
    let acme = table.tls.as_ref().is_some_and(|c| {
        c.wanted
            .names
            .iter()
            .any(|m| matches!(m.issuer, dwaar_tls::plan::IssuerSpec::Acme(_)))
    });
    let mut binds: Vec<Vec<String>> = Vec::new();
    let mut hosts: Vec<(String, u16)> = Vec::new();
    for site in &config.sites {
        for a in &site.addresses {
            // A catch-all on-demand site gets a catch-all redirect (and the port
            // that answers its HTTP-01 challenges).
            let on_demand = site.tls.as_ref().is_some_and(|t| t.on_demand);
            if a.scheme.as_deref() == Some("https") && (!a.host.is_empty() || on_demand) {
                hosts.push((a.host.clone(), a.port));
                binds.push(site.bind.clone());
            }
        }
    }
    if hosts.is_empty() || !(redirect || acme) {
        return Ok(());
    }
    let port = table.ports.entry(g.http_port).or_default();
    for (host, https_port) in &hosts {
        let taken = port.exact.contains_key(host.as_str())
            || (host.is_empty() && !port.catch_all.is_empty())
            || host
                .strip_prefix('*')
                .is_some_and(|s| port.wildcard.iter().any(|(w, _)| w == s));
        if taken || !redirect {
            continue;
        }
        let target = if *https_port == 443 {
            "https://{host}{uri}".to_string()
        } else {
            format!("https://{{host}}:{https_port}{{uri}}")
        };
        let route = dwaar_config::model::Route {
            matchers: Vec::new(),
            group: None,
            handlers: vec![dwaar_config::model::Handler::Redirect {
                to: dwaar_config::placeholder::Template::parse(&target),
                status: 308,
                html: false,
            }],
        };
        let routes = compile_routes(&[route], cx, &mut HashMap::new())?;
        let site = Arc::new(SiteRoutes {
            name: format!("{host}:{} (redirect to HTTPS)", g.http_port),
            path: None,
            routes,
            error_routes: Vec::new(),
            logs: Vec::new(),
            analytics: None,
            metrics: crate::metrics::SiteMetrics::for_label(&format!("{host} (redirect)")),
            reads_body: false,
        });
        match host.strip_prefix('*') {
            _ if host.is_empty() => port.catch_all.push(site),
            Some(suffix) => port.wildcard.push((suffix.to_string(), site)),
            None => port
                .exact
                .entry(CompactString::new(host))
                .or_default()
                .push(site),
        }
    }
    // The HTTP port listens where the HTTPS sites do.
    if binds.iter().any(|b| b.is_empty()) {
        listeners.insert(ListenSpec {
            addr: String::new(),
            port: g.http_port,
            h2c: false,
            tls: false,
            proxy_protocol: false,
            layer4: false,
        });
    } else {
        for b in binds.iter().flatten() {
            listeners.insert(ListenSpec {
                addr: b.clone(),
                port: g.http_port,
                h2c: false,
                tls: false,
                proxy_protocol: false,
                layer4: false,
            });
        }
    }
    Ok(())
}

struct Cx<'a> {
    registry: &'a UpstreamRegistry,
    zones: &'a std::sync::Mutex<HashMap<String, Arc<crate::security::Zone>>>,
    /// A handler that may ask for a check off the request path was compiled.
    rerun_checks: bool,
    caches: &'a std::sync::Mutex<HashMap<String, Arc<crate::cache::Store>>>,
    /// The site being compiled and its `cache` directives so far (cache store names).
    cache_site: String,
    cache_count: usize,
    stores: Vec<Arc<crate::cache::Store>>,
    health: Vec<HealthTarget>,
    upstreams: Vec<Arc<crate::upstream::UpstreamState>>,
    dynamic: Vec<Arc<crate::upstream::dynamic::Dynamic>>,
    tunnels: Vec<Arc<crate::upstream::tunnels::Tunnels>>,
    /// `storage`: where the local CA (and `acme_server`'s objects) live.
    storage: &'a dwaar_config::model::GlobalTls,
}

fn compile_routes(
    routes: &[Route],
    cx: &mut Cx<'_>,
    groups: &mut HashMap<String, u64>,
) -> Result<Vec<RouteRule>, String> {
    routes
        .iter()
        .map(|r| compile_route(r, cx, groups))
        .collect()
}

fn compile_route(
    r: &Route,
    cx: &mut Cx<'_>,
    groups: &mut HashMap<String, u64>,
) -> Result<RouteRule, String> {
    let group_bit = match &r.group {
        Some(g) => {
            let next = groups.len() as u32;
            let bit = *groups
                .entry(g.clone())
                .or_insert_with(|| 1u64.checked_shl(next).unwrap_or(0));
            if bit == 0 {
                return Err("more than 64 exclusive route groups in one site".into());
            }
            Some(bit)
        }
        None => None,
    };
    let mut handlers = Vec::with_capacity(r.handlers.len());
    for h in &r.handlers {
        handlers.push(compile_handler(h, cx, groups)?);
    }
    Ok(RouteRule {
        matchers: compile_sets(&r.matchers)?,
        group_bit,
        handlers,
    })
}

pub fn compile_header_ops(ops: &HeaderOps) -> Result<Vec<HeaderRule>, String> {
    ops.ops
        .iter()
        .map(|op| {
            Ok(match op {
                HeaderOp::Set { name, value } => {
                    HeaderRule::Set(name.as_str().into(), value.clone())
                }
                HeaderOp::Add { name, value } => {
                    HeaderRule::Add(name.as_str().into(), value.clone())
                }
                HeaderOp::Delete { name } => HeaderRule::Delete(name.as_str().into()),
                HeaderOp::Default { name, value } => {
                    HeaderRule::Default(name.as_str().into(), value.clone())
                }
                HeaderOp::Replace {
                    name,
                    search,
                    replace,
                    regex,
                } => {
                    let pattern = if *regex {
                        search.clone()
                    } else {
                        regex::escape(search)
                    };
                    HeaderRule::Replace {
                        name: name.as_str().into(),
                        re: Arc::new(build_regex(&pattern)?),
                        with: replace.clone(),
                    }
                }
            })
        })
        .collect()
}

fn content_type_for(body: &str) -> &'static str {
    let t = body.trim();
    let jsonish = t.len() > 2
        && ((t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']')));
    if jsonish && serde_json::from_str::<serde_json::Value>(t).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

fn compile_handler(
    h: &Handler,
    cx: &mut Cx<'_>,
    groups: &mut HashMap<String, u64>,
) -> Result<HandlerRule, String> {
    Ok(match h {
        Handler::ReverseProxy(rp) => {
            let mut handler = ProxyHandler::compile(rp, cx.registry)?;
            handler.responses = ResponseRules::compile(&rp.responses, &mut |routes| {
                compile_routes(routes, cx, groups)
            })?;
            let handler = Arc::new(handler);
            if let Some(t) = handler.tunnels.as_ref().filter(|t| t.close_delay.is_some()) {
                cx.tunnels.push(t.clone());
            }
            for t in handler.health_targets() {
                if !cx.health.iter().any(|e| e.same_as(&t)) {
                    cx.health.push(t);
                }
            }
            for u in &handler.upstreams {
                if !cx.upstreams.iter().any(|x| Arc::ptr_eq(x, u)) {
                    cx.upstreams.push(u.clone());
                }
            }
            if let Some(d) = &handler.dynamic {
                cx.dynamic.push(d.clone());
            }
            HandlerRule::Proxy(handler)
        }
        Handler::StaticResponse {
            status,
            body,
            close,
        } => {
            let content_type = match body {
                Some(b) if !b.raw().is_empty() => Some(content_type_for(b.raw())),
                _ => None,
            };
            HandlerRule::Respond {
                status: *status,
                body: body.clone(),
                content_type,
                close: *close,
            }
        }
        Handler::Redirect { to, status, html } => HandlerRule::Redirect {
            to: to.clone(),
            status: *status,
            html: *html,
        },
        Handler::Rewrite { uri } => HandlerRule::Rewrite(uri.clone()),
        Handler::Uri(op) => HandlerRule::Uri(match op {
            UriOp::StripPrefix { prefix } => UriRule::StripPrefix(prefix.clone()),
            UriOp::StripSuffix { suffix } => UriRule::StripSuffix(suffix.clone()),
            UriOp::Replace {
                find,
                replace,
                limit,
            } => UriRule::Replace {
                find: find.clone(),
                replace: replace.clone(),
                limit: *limit,
            },
            UriOp::PathRegexp { pattern, replace } => UriRule::PathRegexp {
                re: build_regex(pattern)?,
                replace: replace.clone(),
            },
        }),
        Handler::Headers(ops) => HandlerRule::ResponseHeaders {
            rules: compile_header_ops(ops)?,
            deferred: ops.deferred,
        },
        Handler::RequestHeaders(ops) => HandlerRule::RequestHeaders(compile_header_ops(ops)?),
        Handler::Subroute { routes } => HandlerRule::Subroute(compile_routes(routes, cx, groups)?),
        Handler::Error { status, message } => HandlerRule::Error {
            status: *status,
            message: message.clone(),
        },
        Handler::Abort => HandlerRule::Abort,
        Handler::Metrics => HandlerRule::Metrics,
        Handler::AcmeServer(c) => HandlerRule::AcmeServer(Arc::new(acme_server(c, cx.storage)?)),
        Handler::Cache(c) => {
            cx.rerun_checks = true;
            cx.cache_count += 1;
            // Stores outlive reloads: the same site's n-th `cache` of the same size.
            let name = format!("{}#{}#{}", cx.cache_site, cx.cache_count, c.max_size);
            let store = cx
                .caches
                .lock()
                .map_err(|_| "cache state poisoned".to_string())?
                .entry(name)
                .or_insert_with(|| Arc::new(crate::cache::Store::new(c.max_size)))
                .clone();
            if !cx.stores.iter().any(|s| Arc::ptr_eq(s, &store)) {
                cx.stores.push(store.clone());
            }
            HandlerRule::Cache(Arc::new(crate::cache::CacheRule::compile(c, store)))
        }
        Handler::Encode(e) => HandlerRule::Encode(Arc::new(crate::encode::EncodeRule::compile(e))),
        Handler::LogSkip => HandlerRule::LogSkip,
        Handler::LogName { names } => HandlerRule::LogName(names.clone()),
        Handler::Vars { values } => HandlerRule::Vars(
            values
                .iter()
                .map(|v| (CompactString::new(&v.name), v.value.clone()))
                .collect(),
        ),
        Handler::Map(m) => {
            let mut exact = Vec::new();
            let mut regex = Vec::new();
            for e in &m.mappings {
                if e.regex {
                    regex.push((build_regex(&e.input)?, e.outputs.clone()));
                } else {
                    exact.push((e.input.clone(), e.outputs.clone()));
                }
            }
            HandlerRule::Map(MapRule {
                source: m.source.clone(),
                destinations: m
                    .destinations
                    .iter()
                    .map(|d| CompactString::new(d))
                    .collect(),
                exact,
                regex,
                defaults: m.defaults.clone(),
            })
        }
        Handler::RequestBody { max_size, set } => HandlerRule::RequestBody {
            max: *max_size,
            set: set.clone(),
        },
        Handler::Intercept(ic) => {
            HandlerRule::Intercept(Arc::new(ResponseRules::compile(ic, &mut |routes| {
                compile_routes(routes, cx, groups)
            })?))
        }
        Handler::CopyResponse { status } => HandlerRule::CopyResponse(*status),
        Handler::Method { method } => HandlerRule::Method(CompactString::new(method)),
        Handler::Fs { name, root } => HandlerRule::Fs(
            CompactString::new(name),
            Arc::from(std::path::Path::new(root)),
        ),
        Handler::Templates {
            mime,
            between,
            root,
        } => HandlerRule::Templates(Arc::new(crate::templates::TemplatesRule {
            mime: mime.clone(),
            between: between.clone(),
            root: root.clone(),
        })),
        Handler::Tracing { span, attributes } => HandlerRule::Tracing {
            span: span.clone(),
            attributes: attributes.clone(),
        },
        Handler::LogAppend {
            field,
            value,
            early,
        } => HandlerRule::LogAppend(CompactString::new(field), value.clone(), *early),
        Handler::CopyResponseHeaders { include, exclude } => {
            HandlerRule::CopyResponseHeaders(Arc::new(CopyHeaders {
                include: include.clone(),
                exclude: exclude.clone(),
            }))
        }
        Handler::Root { path } => HandlerRule::Root(path.clone()),
        Handler::FileServer(fs) => HandlerRule::FileServer(Arc::new((**fs).clone())),
        Handler::TryFiles(fm) => HandlerRule::TryFiles(Arc::new(fm.clone())),
        Handler::ForwardAuth(f) => {
            cx.rerun_checks = true;
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            HandlerRule::ForwardAuth(Arc::new(ForwardAuthRule {
                id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                addr: f.upstream.clone(),
                uri: f.uri.clone(),
                copy: f.copy_headers.clone(),
                header_up: compile_header_ops(&f.header_up)?,
            }))
        }
        Handler::BasicAuth(b) => {
            cx.rerun_checks = true;
            HandlerRule::BasicAuth(Arc::new(BasicAuthRule {
                realm: b.realm.clone(),
                challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", b.realm),
                users: b
                    .users
                    .iter()
                    .map(|u| (u.name.clone(), u.hash.clone()))
                    .collect(),
                unknown: crate::auth::unknown_user(b.users.iter().map(|u| u.hash.as_str())),
            }))
        }
        Handler::IpFilter(f) => {
            let nets = |l: &[String]| -> Result<Vec<IpNet>, String> {
                l.iter().map(|c| IpNet::parse(c)).collect()
            };
            HandlerRule::IpFilter(Arc::new(IpFilterRule {
                allow: nets(&f.allow)?,
                deny: nets(&f.deny)?,
                default_allow: f.default_allow,
            }))
        }
        Handler::RateLimit(r) => {
            let mut zones = cx
                .zones
                .lock()
                .map_err(|_| "rate-limit zones are poisoned")?;
            let same = |z: &crate::security::Zone| {
                z.events == r.events && z.window_ms == r.window_ms && z.burst == r.burst
            };
            let zone = match zones.get(&r.zone) {
                Some(z) if same(z) => z.clone(),
                _ => {
                    let z = Arc::new(crate::security::Zone::new(r.events, r.window_ms, r.burst));
                    zones.insert(r.zone.clone(), z.clone());
                    z
                }
            };
            let fleet = match (&r.distributed, &cx.storage.redis) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err("a distributed rate_limit needs storage redis".into())
                }
                (Some(mode), Some(redis)) => {
                    let fleet = dwaar_fleet::fleet(redis)?;
                    let limit = u64::from(r.events) + u64::from(r.burst);
                    Some(match mode {
                        dwaar_config::model::Distributed::Exact => {
                            // Decided off the request path, then the pipeline reruns.
                            cx.rerun_checks = true;
                            FleetLimit::Exact {
                                fleet,
                                zone: r.zone.clone(),
                            }
                        }
                        dwaar_config::model::Distributed::Approximate { sync_interval_ms } => {
                            // Kept across reloads while the zone's settings stay.
                            let name =
                                format!("{}#{limit}#{}#{sync_interval_ms}", r.zone, r.window_ms);
                            let mut approx = APPROXIMATE
                                .lock()
                                .map_err(|_| "rate-limit zones are poisoned")?;
                            let a = approx
                                .entry(name)
                                .or_insert_with(|| {
                                    dwaar_fleet::limit::Approximate::start(
                                        fleet.clone(),
                                        &r.zone,
                                        limit,
                                        r.window_ms,
                                        std::time::Duration::from_millis(*sync_interval_ms),
                                    )
                                })
                                .clone();
                            FleetLimit::Approximate(a)
                        }
                    })
                }
            };
            HandlerRule::RateLimit(Arc::new(RateLimitRule {
                zone,
                key: r.key.clone(),
                fleet,
            }))
        }
    })
}

/// Approximate fleet zones by name and settings (each has a sync thread).
static APPROXIMATE: std::sync::Mutex<
    std::collections::BTreeMap<String, Arc<dwaar_fleet::limit::Approximate>>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The current route table, swapped atomically on reload.
pub struct RouteStore {
    current: ArcSwap<RouteTable>,
}

impl RouteStore {
    pub fn new(table: RouteTable) -> Self {
        RouteStore {
            current: ArcSwap::from_pointee(table),
        }
    }

    /// The one load a request makes.
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Serves `table` from now on; the tunnels of the config it replaces get their
    /// `stream_close_delay`.
    pub fn swap(&self, table: RouteTable) {
        let old = self.current.swap(Arc::new(table));
        crate::upstream::tunnels::unloaded(&old.tunnels);
    }
}
