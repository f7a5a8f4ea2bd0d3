//! One TCP connection through layer-4 routes: wait for the bytes the matchers need
//! (peeked, so they stay in the kernel for whoever reads next), pick a route, run
//! its handlers.

use super::relay::{self, Io, Moved};
use super::{Facts, Handler, Pick, Proxy, Routes, Throttle, MAX_PREFETCH};
use crate::route_table::RouteStore;
use crate::upstream::UpstreamState;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The client side of a connection.
enum Client {
    /// The accepted socket: matchers peek at it.
    Tcp(TcpStream),
    /// A stream that must be read to be matched (plaintext after `tls`); what was read
    /// for matchers (`Conn::seen`) is replayed to whoever gets it next.
    Stream(Box<dyn Io>),
}

struct Conn {
    client: Client,
    /// Bytes the client has sent that matchers have seen.
    seen: Vec<u8>,
    /// The client sent everything it will send (`seen` is complete).
    eof: bool,
    facts: Facts,
    throttles: Vec<Arc<Throttle>>,
    store: Arc<RouteStore>,
    started: Instant,
    /// The matched routes' labels, for the log.
    route: String,
}

/// Counters for `/metrics`: connections handled at layer 4, those no route took,
/// upstream dials that failed, and bytes each way.
pub static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static UNMATCHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static DIAL_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static BYTES_FROM_CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static BYTES_TO_CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Serves a new TCP connection with `routes`. A dedicated server closes what no route
/// takes; a listener wrapper returns the socket, untouched, for TLS and HTTP.
pub async fn serve(
    tcp: TcpStream,
    (remote, local): (std::net::SocketAddr, std::net::SocketAddr),
    routes: Arc<Routes>,
    dedicated: bool,
    store: Arc<RouteStore>,
) -> Option<TcpStream> {
    let plain = |a: std::net::SocketAddr| {
        std::net::SocketAddr::new(crate::net::canonical(a.ip()), a.port())
    };
    let mut conn = Conn {
        client: Client::Tcp(tcp),
        seen: Vec::new(),
        eof: false,
        facts: Facts {
            remote: plain(remote),
            local: plain(local),
        },
        throttles: Vec::new(),
        store,
        started: Instant::now(),
        route: String::new(),
    };
    let chosen = choose(&routes, &mut conn).await;
    let Ok(Some(i)) = chosen else {
        if chosen.is_ok() {
            UNMATCHED.fetch_add(1, Ordering::Relaxed);
        }
        return match (dedicated, conn.client, chosen) {
            (false, Client::Tcp(tcp), Ok(None)) => Some(tcp),
            _ => None,
        };
    };
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    run(routes.clone(), i, conn).await;
    None
}

/// Waits for the bytes the routes need and picks one; `Err` when the client went
/// quiet for the matching timeout or the connection failed.
async fn choose(routes: &Routes, conn: &mut Conn) -> Result<Option<usize>, ()> {
    let deadline = tokio::time::Instant::now() + routes.matching_timeout;
    loop {
        let complete = conn.eof || conn.seen.len() >= MAX_PREFETCH;
        match routes.pick(&conn.seen, &conn.facts, complete) {
            Pick::Route(i) => return Ok(Some(i)),
            Pick::Nothing => return Ok(None),
            Pick::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, fill(conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(target: "layer4", remote = %conn.facts.remote, "closed while matching: {e}");
                return Err(());
            }
            Err(_) => {
                tracing::debug!(target: "layer4", remote = %conn.facts.remote, "matching timed out");
                return Err(());
            }
        }
    }
}

/// Gets more of what the client sent into `conn.seen`.
async fn fill(conn: &mut Conn) -> std::io::Result<()> {
    match &mut conn.client {
        Client::Tcp(tcp) => {
            let before = conn.seen.len();
            conn.seen.resize(MAX_PREFETCH, 0);
            let mut pause = Duration::from_millis(1);
            loop {
                let n = tcp.peek(&mut conn.seen).await;
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        conn.seen.truncate(before);
                        return Err(e);
                    }
                };
                if n == 0 {
                    conn.seen.truncate(0);
                    conn.eof = true;
                    return Ok(());
                }
                if n > before || n == MAX_PREFETCH {
                    conn.seen.truncate(n);
                    return Ok(());
                }
                // The bytes already there come back at once; wait for new ones.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(25));
            }
        }
        Client::Stream(io) => {
            use tokio::io::AsyncReadExt;
            let before = conn.seen.len();
            conn.seen.resize(MAX_PREFETCH, 0);
            let n = io.read(&mut conn.seen[before..]).await;
            conn.seen.truncate(before + *n.as_ref().unwrap_or(&0));
            if n? == 0 {
                conn.eof = true;
            }
            Ok(())
        }
    }
}

type Step = Pin<Box<dyn Future<Output = Option<Conn>> + Send>>;

/// Runs route `i`'s handlers in order. `Some` hands the connection back (a subroute
/// where no route matched: the caller's next handler gets it).
fn run(routes: Arc<Routes>, i: usize, mut conn: Conn) -> Step {
    Box::pin(async move {
        let route = &routes.routes[i];
        if !route.label.is_empty() {
            if !conn.route.is_empty() {
                conn.route.push_str(" > ");
            }
            conn.route.push_str(&route.label);
        }
        for h in &route.handlers {
            match h {
                Handler::Proxy(p) => {
                    proxy(p, conn, routes.timeouts).await;
                    return None;
                }
                Handler::Close => return None,
                Handler::Echo => {
                    let (client, replay) = into_io(conn.client, conn.seen);
                    let _ = relay::echo(client, &replay, &conn.throttles).await;
                    return None;
                }
                Handler::Tls => conn = terminate(conn).await?,
                Handler::Subroute(sub) => match choose(sub, &mut conn).await {
                    Ok(Some(j)) => conn = run(sub.clone(), j, conn).await?,
                    Ok(None) => {}
                    Err(()) => return None,
                },
                Handler::Throttle(t) => {
                    if let Some(l) = t.latency {
                        tokio::time::sleep(l).await;
                    }
                    conn.throttles.push(t.clone());
                }
                Handler::ProxyProtocol(inbound) => {
                    let Client::Tcp(tcp) = &mut conn.client else {
                        tracing::debug!(target: "layer4", "proxy_protocol after tls: closed");
                        return None;
                    };
                    match crate::proxy_protocol::accept(tcp, conn.facts.remote, inbound).await {
                        Ok(client) => {
                            conn.facts.remote = client;
                            // The header is read; matchers see what follows it.
                            conn.seen.clear();
                        }
                        Err(e) => {
                            crate::metrics::PROXY_PROTOCOL_REFUSED.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(target: "layer4", "connection closed: {e}");
                            return None;
                        }
                    }
                }
            }
        }
        // Handlers that do not end the connection ran out: it ends here.
        None
    })
}

/// The client as one stream, and the bytes it sent that must be replayed.
fn into_io(client: Client, seen: Vec<u8>) -> (Box<dyn Io>, Vec<u8>) {
    match client {
        // Peeked bytes are still in the socket.
        Client::Tcp(tcp) => (Box::new(tcp), Vec::new()),
        Client::Stream(s) => (s, seen),
    }
}

/// `tls`: the handshake with the server's certificates; the plaintext continues.
async fn terminate(conn: Conn) -> Option<Conn> {
    let Client::Tcp(tcp) = conn.client else {
        tracing::debug!(target: "layer4", "tls over tls is not supported: closed");
        return None;
    };
    let tls = conn.store.load().tls.as_ref().map(|c| c.state.clone());
    let Some(tls) = tls else {
        tracing::warn!(target: "layer4", "tls handler: this config has no certificates (no HTTPS site)");
        return None;
    };
    let local_ip = crate::net::canonical(conn.facts.local.ip());
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        tls.accept_without_alpn(tcp, local_ip),
    )
    .await;
    let done = match handshake {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(target: "layer4", "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => return None,
    };
    Some(Conn {
        client: Client::Stream(Box::new(done.stream)),
        seen: Vec::new(),
        eof: false,
        ..conn
    })
}

/// One connection counted against its upstream while it lasts.
struct Active(Arc<UpstreamState>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Dials an upstream as the proxy's policy, health and `lb_try_duration` say.
async fn dial(p: &Proxy, facts: &Facts) -> Result<(TcpStream, Active), String> {
    let start = Instant::now();
    loop {
        let avail: Vec<usize> = (0..p.upstreams.len())
            .filter(|&i| {
                let u = &p.upstreams[i];
                u.healthy()
                    && p.max_connections
                        .is_none_or(|max| u.active.load(Ordering::Relaxed) < max)
            })
            .collect();
        let pick = crate::upstream::lb::choose_by_connection(
            &p.policy,
            &p.upstreams,
            &p.rr,
            crate::net::canonical(facts.remote.ip()),
            &avail,
        );
        let err = match pick.map(|i| p.upstreams[i].clone()) {
            None => "no upstream available".to_string(),
            Some(u) => match u.addr() {
                None => format!("{}: address not resolved", u.dial),
                Some(addr) => {
                    let t0 = Instant::now();
                    match tokio::time::timeout(p.dial_timeout, TcpStream::connect(addr)).await {
                        Ok(Ok(s)) => {
                            u.record_connect(t0.elapsed());
                            let _ = s.set_nodelay(true);
                            u.active.fetch_add(1, Ordering::Relaxed);
                            return Ok((s, Active(u)));
                        }
                        Ok(Err(e)) => {
                            if let Some(ph) = &p.passive {
                                u.record_failure(ph);
                            }
                            format!("{}: {e}", u.dial)
                        }
                        Err(_) => {
                            if let Some(ph) = &p.passive {
                                u.record_failure(ph);
                            }
                            format!("{}: dial timed out", u.dial)
                        }
                    }
                }
            },
        };
        if start.elapsed() + p.try_interval >= p.try_duration {
            return Err(err);
        }
        tokio::time::sleep(p.try_interval).await;
    }
}

async fn proxy(p: &Proxy, conn: Conn, limits: relay::Timeouts) {
    let (mut upstream, active) = match dial(p, &conn.facts).await {
        Ok(u) => u,
        Err(e) => {
            DIAL_FAILURES.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "layer4", remote = %conn.facts.remote, route = %conn.route, "proxy: {e}");
            return;
        }
    };
    if let Some(v) = p.proxy_protocol {
        use tokio::io::AsyncWriteExt;
        let header = crate::proxy_protocol::encode(v, conn.facts.remote, conn.facts.local);
        if upstream.write_all(&header).await.is_err() {
            return;
        }
    }
    let moved = match conn.client {
        Client::Tcp(tcp) if conn.throttles.is_empty() => relay::splice(tcp, upstream, limits).await,
        client => {
            let (client, replay) = into_io(client, conn.seen);
            relay::copy(client, upstream, &replay, &conn.throttles, limits).await
        }
    };
    record(
        &conn.facts,
        &conn.route,
        &active.0.dial,
        conn.started,
        moved,
    );
}

/// Counts and logs a finished relay: bytes each way, duration, upstream, route.
fn record(facts: &Facts, route: &str, upstream: &str, started: Instant, moved: Moved) {
    BYTES_FROM_CLIENTS.fetch_add(moved.from_client, Ordering::Relaxed);
    BYTES_TO_CLIENTS.fetch_add(moved.to_client, Ordering::Relaxed);
    tracing::info!(
        target: "layer4",
        remote = %facts.remote,
        local = %facts.local,
        route,
        upstream,
        bytes_read = moved.from_client,
        bytes_written = moved.to_client,
        duration = started.elapsed().as_secs_f64(),
        "connection proxied"
    );
}
