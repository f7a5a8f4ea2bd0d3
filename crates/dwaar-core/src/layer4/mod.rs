//! Layer 4: TCP and UDP connections routed by what their first bytes say, as
//! caddy-l4 does it (the `layer4` global option and the `layer4` listener wrapper).
//!
//! A route's matchers look at the bytes a client has sent so far (peeked from the
//! kernel, so a route that passes the connection on relays them untouched); the first
//! route that matches runs its handlers in order (`proxy_protocol`, `throttle`, `tls`,
//! `subroute`, then `proxy`, `echo` or `close`). [`connection`] drives a TCP
//! connection, [`relay`] moves its bytes (`splice(2)` between plain sockets), [`udp`]
//! keeps per-client UDP sessions.

pub mod connection;
pub mod relay;
pub mod udp;

use crate::matcher::PathPattern;
use crate::net::IpNet;
use crate::upstream::{HealthTarget, TransportOpts, UpstreamRegistry, UpstreamState};
use dwaar_config::model::{
    Config, L4Handler, L4Matcher, L4Proxy, L4Routes, L4Throttle, LbPolicy, PassiveHealth,
};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most bytes matchers may look at before they must decide.
pub const MAX_PREFETCH: usize = 16 * 1024;

/// The layer-4 part of a route table.
#[derive(Default)]
pub struct Layer4 {
    /// Dedicated TCP servers by listen address (`""` for every interface) and port.
    pub tcp: HashMap<(String, u16), Arc<Routes>>,
    /// UDP servers: the socket address and its routes.
    pub udp: Vec<(std::net::SocketAddr, Arc<Routes>)>,
    /// `listener_wrappers { layer4 }` of HTTP sites' ports.
    pub wrappers: HashMap<u16, Arc<Routes>>,
}

impl std::fmt::Debug for Layer4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer4")
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.len())
            .field("wrappers", &self.wrappers.len())
            .finish()
    }
}

/// Compiled routes of a server, subroute or wrapper.
pub struct Routes {
    pub matching_timeout: Duration,
    /// Limits on the relays of this level's `proxy` handlers.
    pub timeouts: relay::Timeouts,
    pub routes: Vec<Route>,
}

pub struct Route {
    /// Any set (all when empty); a set matches when all its matchers do.
    pub sets: Vec<Vec<Matcher>>,
    pub handlers: Vec<Handler>,
    /// The route's matcher names, for logs (`@a @b`, or empty).
    pub label: String,
}

pub enum Matcher {
    Tls {
        sni: Vec<String>,
        alpn: Vec<Vec<u8>>,
    },
    Http {
        hosts: Vec<String>,
        paths: Vec<PathPattern>,
        methods: Vec<String>,
    },
    Ssh,
    Postgres {
        users: Vec<String>,
        databases: Vec<String>,
        clients: Vec<String>,
    },
    ProxyProtocol,
    RemoteIp(Vec<IpNet>),
    LocalIp(Vec<IpNet>),
    Not(Vec<Matcher>),
}

pub enum Handler {
    Proxy(Arc<Proxy>),
    Tls,
    Subroute(Arc<Routes>),
    Throttle(Arc<Throttle>),
    ProxyProtocol(Arc<crate::proxy_protocol::Inbound>),
    Close,
    Echo,
}

/// A compiled `proxy` handler.
pub struct Proxy {
    pub upstreams: Vec<Arc<UpstreamState>>,
    pub policy: LbPolicy,
    pub rr: AtomicUsize,
    pub try_duration: Duration,
    pub try_interval: Duration,
    pub dial_timeout: Duration,
    pub passive: Option<PassiveHealth>,
    pub max_connections: Option<usize>,
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// Token buckets of a `throttle` handler: one per connection (made when it starts)
/// and one shared by all.
pub struct Throttle {
    pub per_conn: Option<(f64, f64)>,
    pub total: Option<Mutex<Bucket>>,
    pub latency: Option<Duration>,
}

/// A token bucket: `rate` bytes per second, up to `burst` saved.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes `n` bytes' tokens; returns how long to wait before they may be sent.
    pub fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What compiling layer-4 servers adds to the table's upstream lists.
pub struct Collected<'a> {
    pub registry: &'a UpstreamRegistry,
    pub health: &'a mut Vec<HealthTarget>,
    pub upstreams: &'a mut Vec<Arc<UpstreamState>>,
}

impl Layer4 {
    pub fn compile(config: &Config, cx: &mut Collected<'_>) -> Result<Layer4, String> {
        let mut out = Layer4::default();
        for server in &config.global.layer4 {
            let routes = Arc::new(compile_routes(&server.routes, cx)?);
            for a in &server.listen {
                if a.udp {
                    let ip: std::net::IpAddr = match a.host.as_str() {
                        "" => std::net::Ipv6Addr::UNSPECIFIED.into(),
                        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
                        h => h.parse().map_err(|_| format!("layer4: bad address {h}"))?,
                    };
                    out.udp
                        .push((std::net::SocketAddr::new(ip, a.port), routes.clone()));
                } else {
                    out.tcp.insert((a.host.clone(), a.port), routes.clone());
                }
            }
        }
        for s in &config.global.servers {
            if let (Some(l4), Some(port)) = (&s.layer4, s.listener.as_deref()) {
                let port = port
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .ok_or_else(|| format!("layer4 wrapper: bad listener {port}"))?;
                out.wrappers.insert(port, Arc::new(compile_routes(l4, cx)?));
            }
        }
        Ok(out)
    }

    /// The dedicated server of a TCP listener, or the wrapper of an HTTP port.
    pub fn for_listener(&self, addr: &str, port: u16) -> Option<(&Arc<Routes>, bool)> {
        if let Some(r) = self.tcp.get(&(addr.to_string(), port)) {
            return Some((r, true));
        }
        self.wrappers.get(&port).map(|r| (r, false))
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.wrappers.is_empty()
    }
}

fn compile_routes(r: &L4Routes, cx: &mut Collected<'_>) -> Result<Routes, String> {
    let mut routes = Vec::with_capacity(r.routes.len());
    for route in &r.routes {
        let sets = route
            .matchers
            .iter()
            .map(|s| s.matchers.iter().map(compile_matcher).collect())
            .collect::<Result<Vec<Vec<Matcher>>, String>>()?;
        let handlers = route
            .handlers
            .iter()
            .map(|h| compile_handler(h, cx))
            .collect::<Result<Vec<_>, _>>()?;
        let label = route
            .matchers
            .iter()
            .map(|s| format!("@{}", s.name))
            .collect::<Vec<_>>()
            .join(" ");
        routes.push(Route {
            sets,
            handlers,
            label,
        });
    }
    Ok(Routes {
        matching_timeout: Duration::from_millis(r.matching_timeout_ms),
        timeouts: relay::Timeouts {
            idle: r.idle_timeout_ms.map(Duration::from_millis),
            total: r.stream_timeout_ms.map(Duration::from_millis),
        },
        routes,
    })
}

fn compile_matcher(m: &L4Matcher) -> Result<Matcher, String> {
    let nets = |list: &[String]| -> Result<Vec<IpNet>, String> {
        list.iter().map(|c| IpNet::parse(c)).collect()
    };
    Ok(match m {
        L4Matcher::Tls { sni, alpn } => Matcher::Tls {
            sni: sni.clone(),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        },
        L4Matcher::Http {
            hosts,
            paths,
            methods,
        } => Matcher::Http {
            hosts: hosts.clone(),
            paths: paths.iter().map(|p| PathPattern::new(p)).collect(),
            methods: methods.clone(),
        },
        L4Matcher::Ssh => Matcher::Ssh,
        L4Matcher::Postgres {
            users,
            databases,
            clients,
        } => Matcher::Postgres {
            users: users.clone(),
            databases: databases.clone(),
            clients: clients.clone(),
        },
        L4Matcher::ProxyProtocol => Matcher::ProxyProtocol,
        L4Matcher::RemoteIp(l) => Matcher::RemoteIp(nets(l)?),
        L4Matcher::LocalIp(l) => Matcher::LocalIp(nets(l)?),
        L4Matcher::Not(inner) => Matcher::Not(
            inner
                .iter()
                .map(compile_matcher)
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn compile_handler(h: &L4Handler, cx: &mut Collected<'_>) -> Result<Handler, String> {
    Ok(match h {
        L4Handler::Proxy(p) => Handler::Proxy(Arc::new(compile_proxy(p, cx))),
        L4Handler::Tls => Handler::Tls,
        L4Handler::Subroute(r) => Handler::Subroute(Arc::new(compile_routes(r, cx)?)),
        L4Handler::Throttle(t) => Handler::Throttle(Arc::new(compile_throttle(t))),
        L4Handler::ProxyProtocol(pp) => {
            Handler::ProxyProtocol(Arc::new(crate::proxy_protocol::Inbound::compile(pp)?))
        }
        L4Handler::Close => Handler::Close,
        L4Handler::Echo => Handler::Echo,
    })
}

fn compile_proxy(p: &L4Proxy, cx: &mut Collected<'_>) -> Proxy {
    let scheme = if p.upstreams.first().is_some_and(|u| u.udp) {
        "udp"
    } else {
        "tcp"
    };
    let upstreams: Vec<Arc<UpstreamState>> = p
        .upstreams
        .iter()
        .map(|u| cx.registry.get(&u.dial, false, scheme))
        .collect();
    for u in &upstreams {
        if !cx.upstreams.iter().any(|x| Arc::ptr_eq(x, u)) {
            cx.upstreams.push(u.clone());
        }
        if let Some(active) = &p.health {
            // An empty URI makes the probe a TCP connect.
            let transport = TransportOpts::plain_tcp(Duration::from_millis(p.dial_timeout_ms));
            cx.health
                .push(HealthTarget::new(u.clone(), active.clone(), transport));
        }
    }
    Proxy {
        upstreams,
        policy: p.policy.clone(),
        rr: AtomicUsize::new(0),
        try_duration: Duration::from_millis(p.try_duration_ms),
        try_interval: Duration::from_millis(p.try_interval_ms),
        dial_timeout: Duration::from_millis(p.dial_timeout_ms),
        passive: p.passive.clone(),
        max_connections: p.max_connections.map(|n| n as usize),
        proxy_protocol: match p.proxy_protocol.as_deref() {
            Some("v1") => Some(crate::proxy_protocol::Version::V1),
            Some("v2") => Some(crate::proxy_protocol::Version::V2),
            _ => None,
        },
    }
}

fn compile_throttle(t: &L4Throttle) -> Throttle {
    let pair = |rate: Option<u64>, burst: Option<u64>| {
        rate.map(|r| (r as f64, burst.unwrap_or(r).max(1) as f64))
    };
    Throttle {
        per_conn: pair(t.read_bytes_per_second, t.read_burst_size),
        total: pair(t.total_read_bytes_per_second, t.total_read_burst_size)
            .map(|(r, b)| Mutex::new(Bucket::new(r, b))),
        latency: t.latency_ms.map(Duration::from_millis),
    }
}

/// A matcher's answer on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
    /// More bytes could change the answer.
    More,
}

impl From<bool> for Verdict {
    fn from(b: bool) -> Verdict {
        if b {
            Verdict::Yes
        } else {
            Verdict::No
        }
    }
}

/// What matchers know of a connection besides its bytes.
pub struct Facts {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
}

impl Route {
    /// Whether the route takes a connection that has sent `data` so far.
    pub fn verdict(&self, data: &[u8], facts: &Facts) -> Verdict {
        if self.sets.is_empty() {
            return Verdict::Yes;
        }
        let mut more = false;
        for set in &self.sets {
            match all(set, data, facts) {
                Verdict::Yes => return Verdict::Yes,
                Verdict::More => more = true,
                Verdict::No => {}
            }
        }
        if more {
            Verdict::More
        } else {
            Verdict::No
        }
    }
}

/// Every matcher of a set.
fn all(set: &[Matcher], data: &[u8], facts: &Facts) -> Verdict {
    let mut more = false;
    for m in set {
        match m.verdict(data, facts) {
            Verdict::No => return Verdict::No,
            Verdict::More => more = true,
            Verdict::Yes => {}
        }
    }
    if more {
        Verdict::More
    } else {
        Verdict::Yes
    }
}

/// `*.example.com` matches one label in front of `example.com`; others are exact.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.ends_with(suffix)
                && !host[..host.len() - suffix.len()].contains('.')
        }
        None => pattern == host,
    }
}

fn any_or_empty<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

impl Matcher {
    pub fn verdict(&self, data: &[u8], facts: &Facts) -> Verdict {
        use crate::sniff::{self, Parse};
        fn from<T>(p: Parse<T>, f: impl FnOnce(T) -> bool) -> Verdict {
            match p {
                Parse::Done(v) => f(v).into(),
                Parse::NeedMore => Verdict::More,
                Parse::No => Verdict::No,
            }
        }
        match self {
            Matcher::Tls { sni, alpn } => from(sniff::client_hello(data), |h| {
                let name = h.server_name.as_deref().unwrap_or("");
                any_or_empty(sni, |p| host_matches(p, name))
                    && any_or_empty(alpn, |a| h.alpn.iter().any(|offered| offered == a))
            }),
            Matcher::Http {
                hosts,
                paths,
                methods,
            } => from(sniff::http_request(data), |h| {
                let path = h.target.split(['?', '#']).next().unwrap_or("");
                let host = h.host.as_deref().unwrap_or("");
                any_or_empty(hosts, |p| host_matches(p, host))
                    && any_or_empty(paths, |p| p.matches(&path.to_ascii_lowercase()))
                    && any_or_empty(methods, |m| *m == h.method)
            }),
            Matcher::Ssh => from(sniff::ssh(data), |()| true),
            Matcher::Postgres {
                users,
                databases,
                clients,
            } => from(sniff::postgres(data), |p| {
                let filtered = !(users.is_empty() && databases.is_empty() && clients.is_empty());
                match p {
                    sniff::Postgres::Startup { params, .. } => {
                        let get = |k: &str| {
                            params
                                .iter()
                                .find(|(key, _)| key == k)
                                .map(|(_, v)| v.as_str())
                        };
                        let user = get("user").unwrap_or("");
                        // The database defaults to the user's name.
                        let db = get("database").unwrap_or(user);
                        let client = get("application_name").unwrap_or("");
                        any_or_empty(users, |u| u == user)
                            && any_or_empty(databases, |d| d == db)
                            && any_or_empty(clients, |c| c == client)
                    }
                    // SSL and GSS requests and cancels carry no names.
                    _ => !filtered,
                }
            }),
            Matcher::ProxyProtocol => match crate::proxy_protocol::parse(data) {
                Ok(crate::proxy_protocol::Parsed::Incomplete) => Verdict::More,
                Ok(crate::proxy_protocol::Parsed::Header(..)) => Verdict::Yes,
                _ => Verdict::No,
            },
            Matcher::RemoteIp(nets) => {
                let ip = crate::net::canonical(facts.remote.ip());
                nets.iter().any(|n| n.contains(ip)).into()
            }
            Matcher::LocalIp(nets) => {
                let ip = crate::net::canonical(facts.local.ip());
                nets.iter().any(|n| n.contains(ip)).into()
            }
            Matcher::Not(inner) => match all(inner, data, facts) {
                Verdict::Yes => Verdict::No,
                Verdict::No => Verdict::Yes,
                Verdict::More => Verdict::More,
            },
        }
    }
}

/// What the routes make of the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This route (an index into [`Routes::routes`]) takes the connection.
    Route(usize),
    /// No route does.
    Nothing,
    /// A route before any that matches needs more bytes to decide.
    NeedMore,
}

impl Routes {
    /// The first route that takes the connection (`complete`: no more bytes are
    /// coming, so "more" means no).
    pub fn pick(&self, data: &[u8], facts: &Facts, complete: bool) -> Pick {
        for (i, r) in self.routes.iter().enumerate() {
            match r.verdict(data, facts) {
                Verdict::Yes => return Pick::Route(i),
                Verdict::No => {}
                Verdict::More if complete => {}
                Verdict::More => return Pick::NeedMore,
            }
        }
        Pick::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn wildcards_take_one_label() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("example.com", "example.com"));
    }
}
