//! The HTTP/3 front-end: QUIC endpoints (quinn) on the UDP side of HTTPS ports that list
//! `h3` in `servers { protocols }`, HTTP/3 (h3) on them, and every request run through
//! the same pipeline as the other front-ends (`respond`, `redir`, files, headers, auth,
//! rate limits, analytics, `encode`, `cache` hits, logs and metrics).
//!
//! Certificates come from the route table current at each handshake (the same store of
//! ACME, internal and manual certificates, chosen by SNI). Proxied requests go to
//! plain HTTP/1.1 upstreams over the lean path's per-thread keep-alive pool, with
//! bodies streamed both ways; other upstream transports answer 502 for now.
//!
//! Limits: at most [`MAX_STREAMS`] concurrent requests per connection, request heads up
//! to 64 KiB, [`IDLE`] without traffic closes a connection, plus the body and flow-control
//! limits of [`crate::streams`] (shared with HTTP/2). Resumed clients
//! may send 0-RTT requests: before the handshake completes only GET, HEAD and OPTIONS
//! are served, anything else gets `425 Too Early` (RFC 8470) and is retried by the
//! client after the handshake.
//!
//! Connection floods: a process keeps at most [`QuicOptions::max_connections`] QUIC
//! connections (default 4,096, about 50 KB each when idle), refusing more; and once [`RETRY_ABOVE`] handshakes are in progress, a client must
//! first prove its address with a stateless Retry, so Initial packets from spoofed
//! addresses cost no connection state.

mod connection;

use crate::route_table::RouteStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent request streams a client may open on one connection.
pub const MAX_STREAMS: u32 = 100;
/// A connection with no traffic for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// Largest request head accepted.
pub const MAX_HEAD: u64 = 64 * 1024;
/// Handshakes in progress above which new clients must validate their address (Retry).
pub const RETRY_ABOVE: usize = 64;
/// How this process runs HTTP/3 (`server::Fronts`; the CLI sets it from the environment).
#[derive(Debug, Clone, Copy)]
pub struct QuicOptions {
    /// Send with UDP segmentation offload where the kernel has it (off only to measure
    /// what it gives).
    pub gso: bool,
    /// The most QUIC connections (handshaking or established) kept; more are refused.
    pub max_connections: usize,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            gso: true,
            max_connections: 4096,
        }
    }
}

/// QUIC connections this process holds (handshaking or established), and of them the
/// handshakes in progress.
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HANDSHAKING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one unit in `counter` for as long as it lives.
struct Counted(&'static std::sync::atomic::AtomicUsize);

impl Counted {
    fn new(counter: &'static std::sync::atomic::AtomicUsize) -> Counted {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Certificates for QUIC handshakes, from the route table current at each handshake.
struct CurrentCerts(Arc<RouteStore>);

impl std::fmt::Debug for CurrentCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCerts")
    }
}

impl rustls::server::ResolvesServerCert for CurrentCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let table = self.0.load();
        let state = &table.tls.as_ref()?.state;
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        state.resolver().find(sni.as_deref())
    }
}

fn server_config(store: Arc<RouteStore>, gso: bool) -> Result<quinn::ServerConfig, String> {
    let provider = Arc::new(dwaar_tls::provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCerts(store)));
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // 0-RTT: resumed clients may send requests before the handshake ends; those are
    // replayable, so only safe methods are served before it ends (others get 425).
    tls.max_early_data_size = u32::MAX;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("QUIC TLS: {e}"))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .enable_segmentation_offload(gso)
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE).map_err(|e| e.to_string())?,
        ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A UDP socket for `addr`, shared by processes and threads (`SO_REUSEPORT`); an IPv6
/// wildcard also takes IPv4 datagrams unless `only_v6`.
fn udp_socket(addr: SocketAddr, only_v6: bool) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(only_v6)?;
    }
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The route store, shutdown signal and options of this process, for [`ensure_started`].
type Service = (
    Arc<RouteStore>,
    tokio::sync::watch::Receiver<bool>,
    QuicOptions,
);
static SERVICE: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Registers the process's route store; the HTTP/3 service starts now if the table has
/// an `h3` port, or with the first reload that adds one ([`ensure_started`]).
pub fn start(
    store: Arc<RouteStore>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    opts: QuicOptions,
) {
    let _ = SERVICE.set((store, shutdown, opts));
    ensure_started();
}

/// Starts the HTTP/3 service on a thread of its own once some table has an `h3` port
/// (a process without HTTP/3 keeps no thread for it). The service binds the table's
/// ports and follows later tables: a reload that adds or removes `h3` ports binds or
/// closes their endpoints within a second. Errors (a port that cannot be bound) are
/// logged; HTTPS over TCP is unaffected.
pub fn ensure_started() {
    let Some((store, shutdown, opts)) = SERVICE.get() else {
        return;
    };
    if store.load().h3.is_empty() || STARTED.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let (store, shutdown, opts) = (store.clone(), shutdown.clone(), *opts);
    let spawned = std::thread::Builder::new()
        .name("dwaar-h3".into())
        .spawn(move || {
            // HTTP/3 requests count for graceful shutdown and idle trimming too.
            crate::lifecycle::inflight::register_thread();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("HTTP/3: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(store, shutdown, opts));
        });
    if let Err(e) = spawned {
        tracing::error!("HTTP/3: cannot start its thread: {e}");
    }
}

/// Binds one endpoint.
fn endpoint(
    addr: &str,
    port: u16,
    v6: bool,
    config: &quinn::ServerConfig,
) -> Option<quinn::Endpoint> {
    let only_v6 = crate::server::sockets::v6_only(addr);
    let addr = addr
        .strip_prefix(crate::server::sockets::V6_ONLY)
        .unwrap_or(addr);
    let ip = if addr.is_empty() {
        if v6 { "::" } else { "0.0.0.0" }.to_string()
    } else {
        addr.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        tracing::error!("HTTP/3: bad address {addr}");
        return None;
    };
    let sa = SocketAddr::new(ip, port);
    let socket = match udp_socket(sa, only_v6) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("HTTP/3: cannot bind UDP {sa}: {e}");
            return None;
        }
    };
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config.clone()),
        socket,
        runtime,
    ) {
        Ok(ep) => {
            tracing::info!(address = %sa, "HTTP/3 listening");
            Some(ep)
        }
        Err(e) => {
            tracing::error!("HTTP/3 on {sa}: {e}");
            None
        }
    }
}

/// Accepts connections on `ep` until it is closed.
async fn accept_loop(
    ep: quinn::Endpoint,
    port: u16,
    store: Arc<RouteStore>,
    max_connections: usize,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(incoming) = ep.accept().await {
        if LIVE.load(Relaxed) >= max_connections {
            incoming.refuse();
            continue;
        }
        if HANDSHAKING.load(Relaxed) >= RETRY_ABOVE
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        let live = Counted::new(&LIVE);
        let handshaking = Counted::new(&HANDSHAKING);
        let store = store.clone();
        tokio::spawn(async move {
            let _live = live;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("QUIC connection refused: {e}");
                    return;
                }
            };
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    // Until the handshake completes, requests may be replays.
                    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let flag = done.clone();
                    tokio::spawn(async move {
                        accepted.await;
                        drop(handshaking);
                        flag.store(true, std::sync::atomic::Ordering::Release);
                    });
                    connection::serve_connection(conn, port, store, Some(done)).await
                }
                Err(connecting) => {
                    let done = connecting.await;
                    drop(handshaking);
                    match done {
                        Ok(conn) => connection::serve_connection(conn, port, store, None).await,
                        Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
                    }
                }
            }
        });
    }
}

async fn run(
    store: Arc<RouteStore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    opts: QuicOptions,
) {
    let config = match server_config(store.clone(), opts.gso) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("HTTP/3 disabled: {e}");
            return;
        }
    };
    let v6 = crate::server::sockets::ipv6_available();
    let mut bound: std::collections::HashMap<(String, u16), quinn::Endpoint> =
        std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<Vec<(String, u16)>> = None;
    loop {
        // The current table's HTTP/3 ports: bind the new ones, close the dropped ones
        // (a port that failed to bind is tried again when the ports change).
        let wanted = store.load().h3.clone();
        if last.as_ref() == Some(&wanted) {
            tokio::select! {
                _ = tick.tick() => continue,
                _ = shutdown.changed() => break,
            }
        }
        last = Some(wanted.clone());
        bound.retain(|k, ep| {
            let keep = wanted.contains(k);
            if !keep {
                ep.close(quinn::VarInt::from_u32(0), b"port removed");
            }
            keep
        });
        for (addr, port) in wanted {
            if bound.contains_key(&(addr.clone(), port)) {
                continue;
            }
            if let Some(ep) = endpoint(&addr, port, v6, &config) {
                tokio::spawn(accept_loop(
                    ep.clone(),
                    port,
                    store.clone(),
                    opts.max_connections,
                ));
                bound.insert((addr, port), ep);
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
    for ep in bound.values() {
        ep.close(quinn::VarInt::from_u32(0), b"shutting down");
    }
}
