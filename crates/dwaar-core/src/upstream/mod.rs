//! Upstreams: per-backend state (health, in-flight requests), the compiled
//! `reverse_proxy` handler, load-balancing selection, peer construction, and the
//! connection pools Dwaar keeps itself: [`h1_pool`] (HTTP/1.1, per thread) and
//! [`h2_pool`] (HTTP/2, shared).
//!
//! `UpstreamState` is shared across route-table generations through the
//! [`UpstreamRegistry`], so a reload keeps health verdicts and connection counts.

pub mod dns;
pub mod dynamic;
pub mod h1_pool;
pub mod h2_pool;
mod health;
pub(crate) mod lb;
pub mod tunnels;

pub use health::{HealthChecker, HealthTarget};

use crate::context::RequestContext;
use crate::request::HttpRequest;
use crate::route_table::{compile_header_ops, HeaderRule};
use dwaar_config::model::{LbPolicy, PassiveHealth, ReverseProxy};
use pingora_core::upstreams::peer::HttpPeer;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since process start (monotonic).
pub fn now_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64
}

/// Live state of one backend address.
#[derive(Debug)]
pub struct UpstreamState {
    /// `host:port` or socket path, as configured.
    pub dial: String,
    /// The address dialled; a host name's is looked up again when its TTL runs out.
    addr: arc_swap::ArcSwapOption<SocketAddr>,
    /// When a host name is due to be looked up again (ms, [`now_ms`]).
    pub next_lookup_ms: AtomicU64,
    /// DNS servers for the host name (`transport http { resolvers }`); else the system's.
    pub resolver: Mutex<Option<Arc<dns::Resolver>>>,
    /// The shortest time between two lookups of the host name (`dns_min_ttl`, ms).
    pub min_ttl_ms: AtomicU64,
    pub unix: bool,
    pub scheme: String,
    /// Requests currently in flight to this upstream.
    pub active: AtomicUsize,
    /// Verdict of active health checks (true until a check fails).
    pub active_healthy: AtomicBool,
    /// Passive health: unhealthy until this instant (ms since start).
    pub down_until_ms: AtomicU64,
    /// New connections opened to this upstream, and the time they took (metrics).
    pub connects: AtomicU64,
    pub connect_us: AtomicU64,
    /// HTTP/2 upstreams: a multiplexed connection has been opened. Until then requests
    /// take turns (`h2_first`) so a burst opens one connection, not one per request.
    pub h2_open: AtomicBool,
    pub h2_first: Arc<tokio::sync::Mutex<()>>,
    failures: Mutex<VecDeque<u64>>,
}

/// Concurrent streams Dwaar opens on one HTTP/2 upstream connection before it opens
/// another (servers usually allow 100 or more).
pub const H2_STREAMS: usize = 100;

impl UpstreamState {
    /// Counts a new connection that took `took` to open.
    pub fn record_connect(&self, took: std::time::Duration) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.connect_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn new(dial: &str, unix: bool, scheme: &str) -> UpstreamState {
        let addr = if unix {
            None
        } else {
            dial.to_socket_addrs().ok().and_then(|mut a| a.next())
        };
        UpstreamState {
            dial: dial.to_string(),
            addr: arc_swap::ArcSwapOption::from(addr.map(Arc::new)),
            // A name that did not resolve now is looked up again at once.
            next_lookup_ms: AtomicU64::new(if addr.is_some() {
                now_ms() + dynamic::MIN_TTL.as_millis() as u64
            } else {
                0
            }),
            resolver: Mutex::new(None),
            min_ttl_ms: AtomicU64::new(dynamic::MIN_TTL.as_millis() as u64),
            unix,
            scheme: scheme.to_string(),
            active: AtomicUsize::new(0),
            active_healthy: AtomicBool::new(true),
            down_until_ms: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_us: AtomicU64::new(0),
            h2_open: AtomicBool::new(false),
            h2_first: Arc::new(tokio::sync::Mutex::new(())),
            failures: Mutex::new(VecDeque::new()),
        }
    }

    /// A state for an address already looked up (placeholder upstreams).
    fn resolved(dial: &str, scheme: &str, addr: SocketAddr) -> UpstreamState {
        let s = UpstreamState::new(&addr.to_string(), false, scheme);
        UpstreamState {
            dial: dial.to_string(),
            ..s
        }
    }

    /// The address to dial (none for unix sockets, or a name that did not resolve).
    #[inline]
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        self.addr.store(addr.map(Arc::new));
    }

    /// Looks a host name up again now (a reload: the new config sees current DNS).
    pub fn resolve_again(&self) {
        if self.unix || dynamic::host_name(&self.dial).is_none() {
            return;
        }
        if let Some(a) = self.dial.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            self.set_addr(Some(a));
        }
    }

    pub fn healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Failures counted within the last `window_ms` (`{http.reverse_proxy.upstream.fails}`).
    pub fn recent_failures(&self, window_ms: u64) -> usize {
        let now = now_ms();
        self.failures
            .lock()
            .map_or(0, |q| q.iter().filter(|&&t| t + window_ms > now).count())
    }

    /// Counts a failure for passive health checking.
    pub fn record_failure(&self, p: &PassiveHealth) {
        if p.fail_duration_ms == 0 {
            return;
        }
        let now = now_ms();
        let Ok(mut q) = self.failures.lock() else {
            return;
        };
        while q.front().is_some_and(|&t| t + p.fail_duration_ms <= now) {
            q.pop_front();
        }
        q.push_back(now);
        let max = p.max_fails.max(1) as usize;
        if q.len() >= max {
            // Down until enough of the counted failures have expired.
            let pivot = q[q.len() - max];
            self.down_until_ms
                .store(pivot + p.fail_duration_ms, Ordering::Relaxed);
        }
    }
}

/// Backend state shared by every route table that names the same upstream.
#[derive(Default)]
pub struct UpstreamRegistry {
    map: Mutex<HashMap<(String, bool, String), Weak<UpstreamState>>>,
}

impl std::fmt::Debug for UpstreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamRegistry")
    }
}

impl UpstreamRegistry {
    pub fn get(&self, dial: &str, unix: bool, scheme: &str) -> Arc<UpstreamState> {
        let key = (dial.to_string(), unix, scheme.to_string());
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            // A reload looks host names up again instead of keeping the old address.
            s.resolve_again();
            return s;
        }
        let s = Arc::new(UpstreamState::new(dial, unix, scheme));
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&s));
        s
    }
}

/// Transport settings turned into peer options.
#[derive(Debug, Clone)]
pub struct TransportOpts {
    pub dial: Duration,
    /// Waiting for the response head (`read_timeout`, else `response_header_timeout`).
    pub read: Option<Duration>,
    /// Each read of the response body (`read_timeout` only).
    pub read_body: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
    pub keepalive: bool,
    pub tls: bool,
    pub sni: Option<String>,
    pub insecure: bool,
    pub h2c: bool,
    pub h2: bool,
    /// Trusted roots replacing the system store (`tls_trusted_ca_certs`).
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// The same roots as DER, for connections Dwaar makes itself (HTTP/2 and HTTP/3 front-ends).
    pub ca_der: Arc<Vec<Vec<u8>>>,
    /// The TLS client settings for those connections (HTTP/1.1 and HTTP/2 ALPN),
    /// built on first use.
    pub client_tls: Arc<std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>>,
    pub client_tls_h2: Arc<std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>>,
    /// `proxy_protocol v1|v2`: every connection starts with a header naming the client
    /// (and serves that client only).
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// `max_response_header`: the largest response head accepted from an upstream.
    pub max_response_header: Option<usize>,
    /// Options of every upstream socket (`keepalive_interval`, `read_buffer`,
    /// `write_buffer`).
    pub socket: SocketOpts,
    /// `tls_client_auth`: the certificate presented to TLS upstreams.
    pub client_cert: Option<Arc<ClientCert>>,
    /// `max_conns_per_host`: an upstream with this many requests in flight is skipped.
    pub max_conns: Option<usize>,
    /// `keepalive_idle_conns`: idle connections kept over all upstreams, per thread.
    pub idle_total: Option<usize>,
    /// `keepalive_idle_conns_per_host`: idle connections kept per upstream, per thread.
    pub idle_per_host: Option<usize>,
    /// `expect_continue_timeout`: how long a request with `Expect: 100-continue` waits
    /// for the upstream's `100 Continue` before its body is sent anyway.
    pub expect_continue: Option<Duration>,
}

impl TransportOpts {
    /// Plain TCP with a dial timeout and nothing else (layer-4 health probes).
    pub fn plain_tcp(dial: Duration) -> TransportOpts {
        TransportOpts {
            dial,
            read: None,
            read_body: None,
            write: None,
            idle: None,
            keepalive: false,
            tls: false,
            sni: None,
            insecure: false,
            h2c: false,
            h2: false,
            ca: None,
            ca_der: Arc::default(),
            client_tls: Arc::default(),
            client_tls_h2: Arc::default(),
            proxy_protocol: None,
            max_response_header: None,
            socket: SocketOpts::default(),
            client_cert: None,
            max_conns: None,
            idle_total: None,
            idle_per_host: None,
            expect_continue: None,
        }
    }

    /// TLS client settings for upstream connections Dwaar opens itself: the configured
    /// roots or the system's, no verification with `tls_insecure_skip_verify`, ALPN
    /// `http/1.1`.
    pub fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.client_tls
            .get_or_init(|| self.build_client_tls(b"http/1.1"))
            .clone()
    }

    /// [`client_tls`](Self::client_tls) offering `h2` (HTTP/2 over TLS upstreams).
    pub fn client_tls_h2(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.client_tls_h2
            .get_or_init(|| self.build_client_tls(b"h2"))
            .clone()
    }

    fn build_client_tls(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
        {
            {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?;
                let mut cfg = if self.insecure {
                    self.with_client_cert(
                        builder
                            .dangerous()
                            // `tls_insecure_skip_verify`: any certificate (signed
                            // handshakes still checked).
                            .with_custom_certificate_verifier(Arc::new(
                                dwaar_tls::verify::AnyServerCert {
                                    provider,
                                    check_signatures: true,
                                },
                            )),
                    )?
                } else {
                    let mut roots = rustls::RootCertStore::empty();
                    if self.ca_der.is_empty() {
                        for c in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(c);
                        }
                    } else {
                        for der in self.ca_der.iter() {
                            roots
                                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    self.with_client_cert(builder.with_root_certificates(roots))?
                };
                cfg.alpn_protocols = vec![alpn.to_vec()];
                Ok(Arc::new(cfg))
            }
        }
    }

    /// The largest upstream response head accepted (`max_response_header`, else 64 KiB).
    pub fn response_head_limit(&self) -> usize {
        self.max_response_header.unwrap_or(crate::http1::MAX_HEAD)
    }

    /// Whether a connection may serve another request: keep-alive on and some idle
    /// connection may be kept.
    pub fn reuses_connections(&self) -> bool {
        self.keepalive && self.idle_total != Some(0) && self.idle_per_host != Some(0)
    }

    /// Finishes a client config with the `tls_client_auth` certificate, if any.
    fn with_client_cert(
        &self,
        builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    ) -> Result<rustls::ClientConfig, String> {
        match &self.client_cert {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .map_err(|e| format!("tls_client_auth: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    /// The name to verify an upstream's certificate for: `tls_server_name`, else the
    /// upstream's host, else the request's.
    pub fn server_name(
        &self,
        dial: &str,
        host: &str,
    ) -> Result<rustls::pki_types::ServerName<'static>, String> {
        let from_dial = dial.rsplit_once(':').map_or(dial, |(h, _)| h);
        let name =
            self.sni
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(if from_dial.is_empty() {
                    host
                } else {
                    from_dial
                });
        rustls::pki_types::ServerName::try_from(name.trim_matches(['[', ']']).to_string())
            .map_err(|e| e.to_string())
    }

    /// HTTP/2 to the upstream (h2c, or h2 over TLS): requests share connections.
    pub fn multiplexed(&self) -> bool {
        (self.h2c && !self.tls) || (self.h2 && self.tls)
    }
}

/// A client certificate for TLS upstreams (`tls_client_auth`), in the forms both the
/// stream front-ends' rustls and Pingora take.
pub struct ClientCert {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    /// For Pingora's connector.
    pingora: Arc<pingora_core::utils::tls::CertKey>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert({} certificates)", self.chain.len())
    }
}

impl ClientCert {
    /// Reads the PEM certificate chain and private key; both must be there and parse.
    fn load(cert_file: &str, key_file: &str) -> Result<ClientCert, String> {
        let read = |f: &str| {
            std::fs::read(f).map_err(|e| format!("tls_client_auth: cannot read {f}: {e}"))
        };
        let cert_pem = read(cert_file)?;
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls_client_auth: {cert_file}: {e}"))?;
        if chain.is_empty() {
            return Err(format!(
                "tls_client_auth: {cert_file} holds no PEM certificate"
            ));
        }
        let key_pem = read(key_file)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| format!("tls_client_auth: {key_file}: {e}"))?
            .ok_or_else(|| format!("tls_client_auth: {key_file} holds no PEM private key"))?;
        let pingora = Arc::new(pingora_core::utils::tls::CertKey::new(
            chain.iter().map(|c| c.to_vec()).collect(),
            key.secret_der().to_vec(),
        ));
        Ok(ClientCert {
            chain,
            key,
            pingora,
        })
    }
}

/// Reads PEM files of trusted upstream CAs; every certificate must parse.
fn load_trusted_cas(
    files: &[String],
) -> Result<(Arc<pingora_core::protocols::tls::CaType>, Vec<Vec<u8>>), String> {
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    let mut certs = Vec::new();
    let mut ders = Vec::new();
    for f in files {
        let data =
            std::fs::read(f).map_err(|e| format!("tls_trusted_ca_certs: cannot read {f}: {e}"))?;
        let mut reader = std::io::BufReader::new(data.as_slice());
        let mut found = 0;
        for item in rustls_pemfile::certs(&mut reader) {
            let der = item.map_err(|e| format!("tls_trusted_ca_certs: {f}: {e}"))?;
            if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
                return Err(format!(
                    "tls_trusted_ca_certs: {f} holds a certificate that does not parse"
                ));
            }
            ders.push(der.to_vec());
            certs.push(WrappedX509::new(der.to_vec(), parse_x509));
            found += 1;
        }
        if found == 0 {
            return Err(format!(
                "tls_trusted_ca_certs: {f} holds no PEM certificate"
            ));
        }
    }
    Ok((Arc::from(certs.into_boxed_slice()), ders))
}

/// Options of an upstream socket, set on every connection Dwaar or Pingora opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOpts {
    /// `keepalive_interval`: TCP keep-alive probes this often.
    pub keepalive: Option<Duration>,
    /// `read_buffer`: the kernel's receive buffer (`SO_RCVBUF`).
    pub recv_buf: Option<usize>,
    /// `write_buffer`: the kernel's send buffer (`SO_SNDBUF`).
    pub send_buf: Option<usize>,
}

impl SocketOpts {
    /// Applies the options, and `TCP_NODELAY`, to a connected upstream socket.
    pub fn apply(&self, tcp: &tokio::net::TcpStream) {
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(tcp);
        if let Some(d) = self.keepalive {
            let ka = socket2::TcpKeepalive::new().with_time(d).with_interval(d);
            let _ = sock.set_tcp_keepalive(&ka);
        }
        self.apply_buffers(&sock);
    }

    /// Sets the buffer sizes (before connecting, so the TCP window starts right).
    pub fn apply_buffers(&self, sock: &socket2::SockRef<'_>) {
        if let Some(n) = self.recv_buf {
            let _ = sock.set_recv_buffer_size(n);
        }
        if let Some(n) = self.send_buf {
            let _ = sock.set_send_buffer_size(n);
        }
    }

    fn sets_buffers(&self) -> bool {
        self.recv_buf.is_some() || self.send_buf.is_some()
    }
}

/// How a request remembers an upstream it already tried (the state's address: stable
/// while the request holds it, and independent of the set's order).
pub fn tried_id(u: &Arc<UpstreamState>) -> usize {
    Arc::as_ptr(u) as usize
}

/// The upstreams of a handler at one moment.
pub enum Current<'a> {
    Static(&'a [Arc<UpstreamState>]),
    Dynamic(arc_swap::Guard<Arc<Vec<Arc<UpstreamState>>>>),
    Rendered(Vec<Arc<UpstreamState>>),
}

/// Placeholder addresses remembered per handler before the memory is cleared.
const MAX_RENDERED: usize = 1024;

/// The address of `dial` (`host:port`): parsed, or looked up on the blocking pool.
async fn lookup(dial: &str) -> Option<SocketAddr> {
    if let Ok(a) = dial.parse::<SocketAddr>() {
        return Some(a);
    }
    tokio::net::lookup_host(dial).await.ok()?.next()
}

impl std::ops::Deref for Current<'_> {
    type Target = [Arc<UpstreamState>];
    fn deref(&self) -> &Self::Target {
        match self {
            Current::Static(s) => s,
            Current::Dynamic(d) => d.as_slice(),
            Current::Rendered(v) => v.as_slice(),
        }
    }
}

/// A compiled `reverse_proxy`.
#[derive(Debug)]
pub struct ProxyHandler {
    /// The upstreams written in the config (empty with `dynamic`).
    pub upstreams: Vec<Arc<UpstreamState>>,
    /// `dynamic a|srv`: the set comes from DNS (see [`ProxyHandler::current`]).
    pub dynamic: Option<Arc<dynamic::Dynamic>>,
    /// `stream_timeout` / `stream_close_delay`: the upgraded connections to watch.
    pub tunnels: Option<Arc<tunnels::Tunnels>>,
    /// `replace_status` and `handle_response` on the upstream's answers (the routes are
    /// compiled with the site's, filled in by the route table).
    pub responses: crate::response_rules::ResponseRules,
    /// Upstream addresses with placeholders, filled in per request (scheme, template).
    pub templates: Vec<(String, dwaar_config::placeholder::Template)>,
    /// The states of addresses filled in so far (passive health and in-flight counts
    /// carry over between requests naming the same address); bounded.
    rendered_states: Mutex<HashMap<String, Arc<UpstreamState>>>,
    pub policy: LbPolicy,
    pub rr: AtomicUsize,
    pub retries: u32,
    /// `lb_retry_match`: which requests may be sent again after an upstream had them
    /// (`None`: `GET` only).
    pub retry_match: Option<Vec<crate::matcher::CompiledSet>>,
    pub try_duration: Duration,
    pub try_interval: Duration,
    pub passive: Option<PassiveHealth>,
    pub active: Option<dwaar_config::model::ActiveHealth>,
    pub header_up: Vec<HeaderRule>,
    pub header_down: Vec<HeaderRule>,
    pub flush_interval_ms: Option<i64>,
    pub transport: TransportOpts,
    /// Speak FastCGI to the upstreams (`transport fastcgi`).
    pub fastcgi: Option<Arc<crate::fastcgi::FastCgiOpts>>,
    /// `request_buffers`: up to this many bytes of a request body are read before the
    /// request goes upstream (`usize::MAX`: no bound).
    pub request_buffers: Option<usize>,
    /// `response_buffers`: up to this many bytes of a response body are read before the
    /// response goes to the client.
    pub response_buffers: Option<usize>,
    /// Decided when the route table is compiled: the lean HTTP/1 path proxies for this
    /// handler itself (plain HTTP/1.1 over TCP to resolved addresses, no retries);
    /// otherwise it hands the request to Pingora, which does the rest.
    pub lean: bool,
}

/// A configured size in bytes as a buffer bound (`u64::MAX`, "unlimited", stays unbounded).
fn saturating_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl ProxyHandler {
    pub fn compile(rp: &ReverseProxy, registry: &UpstreamRegistry) -> Result<ProxyHandler, String> {
        let t = &rp.transport;
        let (ca, ca_der) = if t.tls_trusted_ca_certs.is_empty() {
            (None, Vec::new())
        } else {
            let (ca, der) = load_trusted_cas(&t.tls_trusted_ca_certs)?;
            (Some(ca), der)
        };
        let resolver = if t.resolvers.is_empty() {
            None
        } else {
            Some(Arc::new(dns::Resolver::new(&t.resolvers)?))
        };
        let upstreams: Vec<Arc<UpstreamState>> = rp
            .upstreams
            .iter()
            .filter(|u| !u.placeholder)
            .map(|u| registry.get(&u.dial, u.unix, &u.scheme))
            .collect();
        let templates = rp
            .upstreams
            .iter()
            .filter(|u| u.placeholder)
            .map(|u| {
                (
                    u.scheme.clone(),
                    dwaar_config::placeholder::Template::parse(&u.dial),
                )
            })
            .collect();
        for u in &upstreams {
            if let Some(ms) = t.dns_min_ttl_ms {
                u.min_ttl_ms.store(ms, Ordering::Relaxed);
            }
            if let Some(r) = &resolver {
                if dynamic::host_name(&u.dial).is_some() {
                    if let Ok(mut slot) = u.resolver.lock() {
                        *slot = Some(r.clone());
                    }
                    u.next_lookup_ms.store(0, Ordering::Relaxed);
                }
            }
        }
        let ms = |v: u64| Duration::from_millis(v);
        let dynamic = match &rp.dynamic {
            Some(d) => Some(dynamic::Dynamic::new(
                d,
                if t.tls { "https" } else { "http" },
            )?),
            None => None,
        };
        let dial_override = rp.dynamic.as_ref().and_then(|d| d.dial_timeout_ms);
        let mut handler = ProxyHandler {
            upstreams,
            dynamic,
            responses: crate::response_rules::ResponseRules::default(),
            tunnels: tunnels::Tunnels::new(
                rp.stream_timeout_ms.map(ms),
                rp.stream_close_delay_ms.map(ms),
            ),
            templates,
            rendered_states: Mutex::new(HashMap::new()),
            policy: rp.load_balancing.policy.clone(),
            rr: AtomicUsize::new(0),
            retries: rp.load_balancing.retries,
            retry_match: if rp.load_balancing.retry_match.is_empty() {
                None
            } else {
                Some(crate::matcher::compile_sets(
                    &rp.load_balancing.retry_match,
                )?)
            },
            try_duration: ms(rp.load_balancing.try_duration_ms),
            try_interval: ms(rp.load_balancing.try_interval_ms),
            passive: rp.health.passive.clone(),
            active: rp.health.active.clone(),
            header_up: compile_header_ops(&rp.header_up)?,
            header_down: compile_header_ops(&rp.header_down)?,
            flush_interval_ms: rp.flush_interval_ms,
            fastcgi: t
                .fastcgi
                .as_ref()
                .map(|f| Arc::new(crate::fastcgi::FastCgiOpts::compile(f))),
            transport: TransportOpts {
                dial: ms(dial_override.unwrap_or(t.dial_timeout_ms).max(1)),
                read: t.read_timeout_ms.or(t.response_header_timeout_ms).map(ms),
                read_body: t.read_timeout_ms.map(ms),
                write: t.write_timeout_ms.map(ms),
                idle: t.keepalive_ms.map(ms),
                keepalive: t.keepalive_ms.is_some(),
                tls: t.tls || rp.upstreams.iter().any(|u| u.scheme == "https"),
                sni: t.tls_server_name.clone(),
                insecure: t.tls_insecure_skip_verify,
                h2c: rp.upstreams.iter().any(|u| u.scheme == "h2c")
                    || t.versions.iter().any(|v| v == "h2c"),
                h2: t.versions.iter().any(|v| v == "2"),
                ca,
                ca_der: Arc::new(ca_der),
                client_tls: Default::default(),
                client_tls_h2: Default::default(),
                max_conns: (t.max_conns_per_host > 0).then_some(t.max_conns_per_host as usize),
                socket: SocketOpts {
                    keepalive: t.keepalive_interval_ms.map(ms),
                    recv_buf: t.read_buffer.map(|n| n as usize),
                    send_buf: t.write_buffer.map(|n| n as usize),
                },
                max_response_header: t.max_response_header.map(|v| v as usize),
                client_cert: match &t.tls_client_auth {
                    Some((cert, key)) => Some(Arc::new(ClientCert::load(cert, key)?)),
                    None => None,
                },
                idle_total: t.keepalive_idle_conns.map(|n| n as usize),
                idle_per_host: t.keepalive_idle_conns_per_host.map(|n| n as usize),
                expect_continue: t.expect_continue_timeout_ms.map(ms),
                proxy_protocol: match t.proxy_protocol.as_deref() {
                    Some("v1") => Some(crate::proxy_protocol::Version::V1),
                    Some("v2") => Some(crate::proxy_protocol::Version::V2),
                    _ => None,
                },
            },
            request_buffers: rp.request_buffers.map(saturating_usize),
            response_buffers: rp.response_buffers.map(saturating_usize),
            lean: false,
        };
        handler.lean = handler.lean_eligible();
        if let (Some(d), Some(a)) = (&handler.dynamic, &handler.active) {
            d.set_health(a.clone(), handler.transport.clone());
        }
        Ok(handler)
    }

    /// Whether this handler's requests are proxied by the shared exchange code
    /// ([`crate::lifecycle::exchange`]) on every front-end but the lean path: FastCGI, and the
    /// body buffering options (`request_buffers`, `response_buffers`).
    pub fn shared_exchange(&self) -> bool {
        self.fastcgi.is_some() || self.request_buffers.is_some() || self.response_buffers.is_some()
    }

    fn lean_eligible(&self) -> bool {
        let t = &self.transport;
        !self.shared_exchange()
            && self.templates.is_empty()
            && !t.tls
            && !t.h2c
            && !t.h2
            && self.retries == 0
            && self.try_duration.is_zero()
            && (self.dynamic.is_some()
                || self.upstreams.iter().all(|u| {
                    !u.unix
                        && (u.addr().is_some() || dynamic::host_name(&u.dial).is_some())
                        && (u.scheme.is_empty() || u.scheme == "http")
                }))
    }

    pub fn health_targets(&self) -> Vec<HealthTarget> {
        match &self.active {
            Some(a) => self
                .upstreams
                .iter()
                .map(|u| HealthTarget::new(u.clone(), a.clone(), self.transport.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The upstreams to choose from for this request: the configured list, the
    /// `dynamic` set's current members (one atomic load), or with placeholder
    /// addresses the configured ones and those filled in for it.
    pub fn current(&self, ctx: &RequestContext) -> Current<'_> {
        if !self.templates.is_empty() {
            let mut all = self.upstreams.clone();
            all.extend(ctx.attempt.rendered.iter().cloned());
            return Current::Rendered(all);
        }
        match &self.dynamic {
            Some(d) => Current::Dynamic(d.current()),
            None => Current::Static(&self.upstreams),
        }
    }

    /// Fills in the placeholder addresses for this request (once): each rendered
    /// `host[:port]` becomes an upstream, its name looked up without blocking. Empty
    /// or unresolvable results are left out.
    pub async fn render_upstreams(&self, req: &(dyn HttpRequest + Sync), ctx: &mut RequestContext) {
        if self.templates.is_empty() || !ctx.attempt.rendered.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for (scheme, t) in &self.templates {
            let text = crate::template::render(t, req, ctx).trim().to_string();
            if text.is_empty() || text.contains(['/', ' ', '{']) {
                continue;
            }
            let default_port = if scheme == "https" { 443 } else { 80 };
            let dial = if text.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok()
            }) || text.starts_with('[') && text.contains("]:")
            {
                text
            } else if text.contains(':') && !text.starts_with('[') {
                format!("[{text}]:{default_port}")
            } else {
                format!("{text}:{default_port}")
            };
            let known = self
                .rendered_states
                .lock()
                .ok()
                .and_then(|m| m.get(&dial).cloned());
            let state = match known {
                Some(s) => s,
                None => {
                    let Some(addr) = lookup(&dial).await else {
                        continue;
                    };
                    let s = Arc::new(UpstreamState::resolved(&dial, scheme, addr));
                    if let Ok(mut m) = self.rendered_states.lock() {
                        if m.len() >= MAX_RENDERED {
                            m.clear();
                        }
                        m.insert(dial, s.clone());
                    }
                    s
                }
            };
            if !out
                .iter()
                .any(|u: &Arc<UpstreamState>| Arc::ptr_eq(u, &state))
            {
                out.push(state);
            }
        }
        ctx.attempt.rendered = out;
    }

    fn available(&self, u: &Arc<UpstreamState>, ctx: &RequestContext) -> bool {
        if ctx.attempt.tried.contains(&tried_id(u)) || !u.healthy() {
            return false;
        }
        if let Some(max) = self.transport.max_conns {
            if u.active.load(Ordering::Relaxed) >= max {
                return false;
            }
        }
        match self
            .passive
            .as_ref()
            .and_then(|p| p.unhealthy_request_count)
        {
            Some(limit) => u.active.load(Ordering::Relaxed) < limit as usize,
            None => true,
        }
    }

    /// Whether `req` may go to another upstream after one received it and failed
    /// (Caddy's rule: `GET`, or what `lb_retry_match` matches).
    pub fn retry_after_sent(&self, req: &dyn HttpRequest, ctx: &mut RequestContext) -> bool {
        match &self.retry_match {
            None => req.method() == "GET",
            Some(sets) => sets.iter().any(|s| s.matches(req, ctx)),
        }
    }

    /// Whether some untried, healthy upstream is only at its `max_conns_per_host`.
    pub fn busy_only(&self, ctx: &RequestContext) -> bool {
        let Some(max) = self.transport.max_conns else {
            return false;
        };
        self.current(ctx).iter().any(|u| {
            !ctx.attempt.tried.contains(&tried_id(u))
                && u.healthy()
                && u.active.load(Ordering::Relaxed) >= max
        })
    }

    /// Picks an upstream by the load-balancing policy, skipping unhealthy and already
    /// tried ones.
    pub fn select(
        &self,
        req: &dyn HttpRequest,
        ctx: &mut RequestContext,
    ) -> Option<Arc<UpstreamState>> {
        lb::select(self, req, ctx)
    }

    /// Whether another attempt is allowed after `attempts` tries started at `start`.
    pub fn may_retry(&self, attempts: u32, start: Instant) -> bool {
        if attempts <= self.retries {
            return true;
        }
        !self.try_duration.is_zero() && start.elapsed() < self.try_duration
    }

    /// Builds the Pingora peer for upstream `i`; `client` is named in the PROXY protocol
    /// header when the transport sends one.
    /// `keep`: an upgrade request of a proxy that watches its tunnels; the dial leaves a
    /// duplicate of the new upstream socket there (and the connection is never pooled).
    pub fn peer(
        &self,
        u: &UpstreamState,
        host: &str,
        client: std::net::SocketAddr,
        keep: Option<tunnels::SocketSlot>,
    ) -> Option<HttpPeer> {
        let t = &self.transport;
        let sni = t.sni.clone().unwrap_or_else(|| {
            if u.unix {
                host.to_string()
            } else {
                u.dial
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                    .unwrap_or_default()
            }
        });
        let mut peer = if u.unix {
            HttpPeer::new_uds(&u.dial, t.tls, sni).ok()?
        } else {
            let addr = match u.addr() {
                Some(a) => a,
                None => u.dial.to_socket_addrs().ok()?.next()?,
            };
            HttpPeer::new(addr, t.tls, sni)
        };
        let o = &mut peer.options;
        o.connection_timeout = Some(t.dial);
        o.read_timeout = t.read;
        o.write_timeout = t.write;
        // Pingora's own pool is shared by the process; a limit of 0 idle connections
        // still means none are kept.
        o.idle_timeout = if t.reuses_connections() {
            t.idle
        } else {
            Some(Duration::ZERO)
        };
        if let Some(ca) = &t.ca {
            o.ca = Some(ca.clone());
        }
        if let Some(c) = &t.client_cert {
            peer.client_cert_key = Some(c.pingora.clone());
        }
        if t.socket.sets_buffers() {
            let socket = t.socket;
            o.upstream_tcp_sock_tweak_hook = Some(Arc::new(move |s: &tokio::net::TcpSocket| {
                socket.apply_buffers(&socket2::SockRef::from(s));
                Ok(())
            }));
        }
        if let Some(every) = t.socket.keepalive {
            o.tcp_keepalive = Some(pingora_core::protocols::l4::ext::TcpKeepalive {
                idle: every,
                interval: every,
                count: 9,
                #[cfg(target_os = "linux")]
                user_timeout: Duration::ZERO,
            });
        }
        if t.insecure {
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        if t.proxy_protocol.is_some() || keep.is_some() {
            // Dwaar's own dial: a PROXY header first, or a socket to watch. Such a
            // connection is never pooled, nor taken from the pool.
            o.custom_l4 = Some(Arc::new(Dial {
                header: t.proxy_protocol.map(|v| (v, client)),
                keep,
                timeout: t.dial,
                socket: t.socket,
            }));
            o.idle_timeout = Some(Duration::ZERO);
            static OWN: AtomicUsize = AtomicUsize::new(1);
            peer.group_key = OWN.fetch_add(1, Ordering::Relaxed) as u64;
        }
        if t.h2c && !t.tls {
            o.set_http_version(2, 2);
            o.max_h2_streams = H2_STREAMS;
        } else if t.h2 && t.tls {
            o.set_http_version(2, 1);
            o.max_h2_streams = H2_STREAMS;
        } else {
            o.set_http_version(1, 1);
        }
        Some(peer)
    }
}

/// Dwaar's dial for Pingora: the connection, then the PROXY protocol header naming the
/// client when the transport sends one, then (in Pingora) TLS and HTTP; a duplicate of
/// the socket is left in `keep` for tunnels to watch.
#[derive(Debug)]
struct Dial {
    header: Option<(crate::proxy_protocol::Version, std::net::SocketAddr)>,
    keep: Option<tunnels::SocketSlot>,
    timeout: Duration,
    socket: SocketOpts,
}

impl Dial {
    /// Leaves a duplicate of the new socket in `keep`, when asked to.
    fn keep_duplicate(&self, socket: &impl std::os::fd::AsFd) -> pingora_error::Result<()> {
        use pingora_error::{ErrorType, OrErr};
        if let Some(slot) = &self.keep {
            let dup = socket
                .as_fd()
                .try_clone_to_owned()
                .or_err(ErrorType::ConnectError, "duplicating the upstream socket")?;
            if let Ok(mut s) = slot.lock() {
                *s = Some(dup);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl pingora_core::connectors::L4Connect for Dial {
    async fn connect(
        &self,
        addr: &pingora_core::protocols::l4::socket::SocketAddr,
    ) -> pingora_error::Result<pingora_core::protocols::l4::stream::Stream> {
        use pingora_core::protocols::l4::socket::SocketAddr as PAddr;
        use pingora_error::{ErrorType, OrErr};
        use tokio::io::AsyncWriteExt;
        let timeout = if self.timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            self.timeout
        };
        let (stream, destination): (pingora_core::protocols::l4::stream::Stream, _) = match addr {
            PAddr::Inet(a) => {
                let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a))
                    .await
                    .or_err(ErrorType::ConnectTimedout, "connecting to the upstream")?
                    .or_err(ErrorType::ConnectError, "connecting to the upstream")?;
                self.socket.apply(&tcp);
                self.keep_duplicate(&tcp)?;
                (tcp.into(), *a)
            }
            PAddr::Unix(path) => {
                let Some(path) = path.as_pathname() else {
                    return Err(pingora_error::Error::explain(
                        ErrorType::ConnectError,
                        "unnamed unix socket",
                    ));
                };
                let unix = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .or_err(ErrorType::ConnectTimedout, "connecting to the upstream")?
                    .or_err(ErrorType::ConnectError, "connecting to the upstream")?;
                self.keep_duplicate(&unix)?;
                (unix.into(), std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            }
        };
        let mut stream = stream;
        if let Some((version, client)) = self.header {
            let header = crate::proxy_protocol::encode(version, client, destination);
            stream
                .write_all(&header)
                .await
                .or_err(ErrorType::WriteError, "sending the PROXY protocol header")?;
        }
        Ok(stream)
    }
}
