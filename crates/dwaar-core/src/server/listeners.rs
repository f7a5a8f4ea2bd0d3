//! Accept loops: each worker thread accepts on its share of the listening sockets.
//!
//! The sockets themselves live in a [`Snapshot`] published through a `watch` channel
//! (see [`super::sockets`]). On a reload each thread starts accept loops for new sockets
//! and stops those of removed ones, leaving the others (and their connections) untouched.

use super::sockets::{share, Listener, Snapshot};
use crate::net::to_pingora;
use crate::route_table::ListenSpec;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::Stream as PStream;
use pingora_core::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The application that serves a connection.
pub type ProxyApp = pingora_proxy::HttpProxy<crate::proxy::DwaarProxy>;

/// The front-ends: Pingora's proxy (for what the lean path hands over), the route store
/// every front-end reads, and which front-end serves what.
#[derive(Clone)]
pub struct Apps {
    pub h1: Arc<ProxyApp>,
    pub store: Arc<crate::route_table::RouteStore>,
    pub fronts: super::Fronts,
}

/// One live connection, counted out when dropped (a panicking task included).
struct Live(Arc<ConnCount>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts live connections so shutdown can wait for them.
#[derive(Default)]
pub struct ConnCount(AtomicUsize);

impl ConnCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Runs the accept loops of worker thread `index` of `count` until shutdown.
pub async fn worker(
    mut sockets: watch::Receiver<Snapshot>,
    shutdown: ShutdownWatch,
    apps: Apps,
    conns: Arc<ConnCount>,
    (index, count): (usize, usize),
) {
    let mut running: HashMap<(ListenSpec, usize), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut shutdown_rx = shutdown.clone();
    loop {
        let snapshot = sockets.borrow_and_update().clone();
        let mut wanted = Vec::new();
        for b in snapshot.iter() {
            for j in share(index, count, b.sockets.len()) {
                wanted.push((b.spec.clone(), j, &b.sockets[j]));
            }
        }
        running.retain(|key, task| {
            let keep = wanted.iter().any(|(s, j, _)| (s, *j) == (&key.0, key.1));
            if !keep {
                task.abort();
            }
            keep
        });
        for (spec, j, socket) in wanted {
            let key = (spec, j);
            if running.contains_key(&key) {
                continue;
            }
            let listener = match socket.try_clone().and_then(|l| match l {
                Listener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Accepting::Tcp),
                Listener::Unix(l) => tokio::net::UnixListener::from_std(l).map(Accepting::Unix),
            }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot accept on {}:{}: {e}", key.0.addr, key.0.port);
                    continue;
                }
            };
            let lean = crate::fast_h1::FastCx {
                store: apps.store.clone(),
                fallback: pingora_hand_over(apps.h1.clone()),
                // h2c connections go to Dwaar's own HTTP/2 front-end.
                h2c: (key.0.h2c && !key.0.tls).then(|| h2_hand_over(apps.store.clone())),
                hand_over_all: apps.fronts.pingora_h1,
                shutdown: shutdown.clone(),
            };
            let listener = match listener {
                Accepting::Tcp(l) => l,
                Accepting::Unix(l) => {
                    let task = tokio::spawn(accept_unix(
                        l,
                        (lean, key.0.port, key.0.proxy_protocol),
                        conns.clone(),
                    ));
                    running.insert(key, task);
                    continue;
                }
            };
            let front = if key.0.tls {
                Front::Tls(
                    apps.h1.clone(),
                    apps.store.clone(),
                    apps.fronts.own_h2,
                    lean,
                )
            } else {
                Front::Fast(lean)
            };
            let layer4 = key
                .0
                .layer4
                .then(|| Arc::new((key.0.addr.clone(), key.0.port)));
            let task = tokio::spawn(accept_loop(
                listener,
                (front, key.0.proxy_protocol, layer4),
                shutdown.clone(),
                conns.clone(),
            ));
            running.insert(key, task);
        }
        drop(snapshot);
        tokio::select! {
            changed = sockets.changed() => if changed.is_err() { break },
            _ = shutdown_rx.changed() => break,
        }
    }
    // Stop accepting; connections already accepted keep running on this thread.
    for (_, task) in running {
        task.abort();
    }
    crate::upstream::h1_pool::clear();
}

/// Pingora's `HttpProxy` serving one request the lean path hands over; the connection
/// goes back to the lean path when it stays open (`fast_h1::handed`).
fn pingora_hand_over(app: Arc<ProxyApp>) -> Arc<crate::fast_h1::HandOver> {
    use pingora_core::apps::HttpServerApp;
    Arc::new(move |stream: PStream, _conn, shutdown: ShutdownWatch| {
        let app = app.clone();
        Box::pin(async move {
            let mut session = pingora_core::protocols::http::ServerSession::new_http1(stream);
            // As Pingora's own HTTP/1 loop: no keep-alive once shutdown began.
            session.set_keepalive((!*shutdown.borrow()).then_some(60));
            let reused = app.process_new_http(session, &shutdown).await?;
            Some(reused.consume().0)
        })
    })
}

/// Dwaar's HTTP/2 front-end serving h2c connections (prior knowledge) that the lean
/// path recognised by their preface.
fn h2_hand_over(store: Arc<crate::route_table::RouteStore>) -> Arc<crate::fast_h1::HandOver> {
    Arc::new(
        move |stream: PStream, conn: crate::context::ConnInfo, shutdown: ShutdownWatch| {
            let store = store.clone();
            Box::pin(async move {
                let idle = store
                    .load()
                    .port(conn.local_port)
                    .and_then(|p| p.timeouts.idle);
                crate::streams::h2::serve_connection(stream, conn, store, shutdown, idle).await;
                None
            })
        },
    )
}

/// A listening socket being accepted on.
enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The address a connection over a unix socket has for matchers, limits and logs: the
/// loopback address (port 0), and the site's port as its local address.
fn unix_addresses(port: u16) -> (SocketAddr, SocketAddr) {
    let lo = std::net::Ipv4Addr::LOCALHOST;
    (SocketAddr::from((lo, 0)), SocketAddr::from((lo, port)))
}

/// Accepts on a unix socket; its connections speak plain HTTP (the lean path, Pingora
/// for what it hands over, HTTP/2 with prior knowledge on h2c ports).
async fn accept_unix(
    listener: tokio::net::UnixListener,
    (cx, port, read_proxy_header): (crate::fast_h1::FastCx, u16, bool),
    conns: Arc<ConnCount>,
) {
    let (origin, local) = unix_addresses(port);
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let conns = conns.clone();
        conns.0.fetch_add(1, Ordering::AcqRel);
        let cx = cx.clone();
        tokio::spawn(async move {
            let _live = Live(conns);
            let mut peer = origin;
            if read_proxy_header {
                match proxy_header(&mut stream, peer, Some(local), &cx.store).await {
                    Some(client) => peer = client,
                    None => return,
                }
            }
            crate::fast_h1::serve(stream, peer, Some(local), cx).await;
        });
    }
}

/// Who serves a listener's connections.
enum Front {
    Fast(crate::fast_h1::FastCx),
    /// An HTTPS port: the handshake (with the current config's TLS state), then by
    /// ALPN Dwaar's HTTP/2 front-end (when the flag says so) or Pingora's, and for
    /// HTTP/1.1 the lean path.
    Tls(
        Arc<ProxyApp>,
        Arc<crate::route_table::RouteStore>,
        bool,
        crate::fast_h1::FastCx,
    ),
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What serves a TLS connection once the handshake is done: Dwaar's HTTP/2 front-end
/// for `h2`, Pingora for HTTP/1.1.
struct TlsFronts {
    app: Arc<ProxyApp>,
    store: Arc<crate::route_table::RouteStore>,
    /// The port's idle timeout, if set.
    idle: Option<std::time::Duration>,
    /// `h2` connections are served by [`crate::streams::h2`] (else by Pingora).
    own_h2: bool,
    /// Serves HTTP/1.1 connections.
    lean: crate::fast_h1::FastCx,
}

async fn serve_tls(
    stream: Stream,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    fronts: TlsFronts,
    tls: Arc<dwaar_tls::TlsState>,
    shutdown: ShutdownWatch,
) {
    let ip = local
        .map(|a| crate::net::canonical(a.ip()))
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    use crate::metrics::{Handshake, TLS_HANDSHAKES};
    let count = |h: Handshake| {
        TLS_HANDSHAKES[h as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    let done = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream, ip)).await {
        Ok(Ok(Some(h))) => {
            count(Handshake::Ok);
            h
        }
        Ok(Ok(None)) => return, // an ACME TLS-ALPN-01 validation, answered
        Ok(Err(e)) => {
            count(Handshake::Failed);
            tracing::debug!("TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            count(Handshake::TimedOut);
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let done_h2 = done.stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let facts = Arc::new(crate::context::TlsFacts::of(done.stream.get_ref().1));
    if fronts.own_h2 && done_h2 {
        let conn = crate::context::ConnInfo {
            remote: SocketAddr::new(crate::net::canonical(peer.ip()), peer.port()),
            local_port: local.map(|l| l.port()).unwrap_or(0),
            tls: true,
            tls_policy: done.policy,
            local_ip: local.map(|l| l.ip()),
            tls_facts: Some(facts),
        };
        // Inline: HTTP/2's state is about the size of HTTP/1.1's, so boxing it would add
        // a second allocation to every HTTP/2 connection (+6 KB measured) for nothing.
        crate::streams::h2::serve_connection(
            done.stream,
            conn,
            fronts.store,
            shutdown,
            fronts.idle,
        )
        .await;
        return;
    }
    let addrs = local.map(|l| (peer, l));
    let conn = super::tls_conn::TlsConn::new(done.stream, done.policy, facts.clone(), addrs);
    let info = crate::context::ConnInfo {
        remote: SocketAddr::new(crate::net::canonical(peer.ip()), peer.port()),
        local_port: local.map(|l| l.port()).unwrap_or(0),
        tls: true,
        tls_policy: done.policy,
        local_ip: local.map(|l| l.ip()),
        tls_facts: Some(facts),
    };
    if done_h2 {
        // Pingora's HTTP/2 session (`own_h2` off).
        let app = fronts.app;
        // Boxed: Pingora's session is the largest state of all, and every connection's
        // task is as large as its largest state.
        Box::pin(async move {
            let mut next = app.process_new(Box::new(conn), &shutdown).await;
            while let Some(s) = next {
                next = app.process_new(s, &shutdown).await;
            }
        })
        .await;
        return;
    }
    crate::fast_h1::serve_tls(conn, (peer, local), info, fronts.lean).await;
}

/// Runs a connection through the layer-4 routes of its listener (`spec`: address and
/// port) first; the socket comes back, untouched, when they leave it to HTTP.
async fn layer4_first(
    tcp: tokio::net::TcpStream,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    spec: &(String, u16),
    store: &Arc<crate::route_table::RouteStore>,
) -> Option<tokio::net::TcpStream> {
    let found = store
        .load()
        .layer4
        .for_listener(&spec.0, spec.1)
        .map(|(routes, dedicated)| (routes.clone(), dedicated));
    let Some((routes, dedicated)) = found else {
        return Some(tcp);
    };
    let local = match local {
        Some(l) => l,
        None => tcp.local_addr().ok()?,
    };
    crate::layer4::connection::serve(tcp, (peer, local), routes, dedicated, store.clone()).await
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    (front, read_proxy_header, layer4): (Front, bool, Option<Arc<(String, u16)>>),
    shutdown: ShutdownWatch,
    conns: Arc<ConnCount>,
) {
    let local = listener.local_addr().ok();
    loop {
        let (mut tcp, mut peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conns = conns.clone();
        conns.0.fetch_add(1, Ordering::AcqRel);
        match &front {
            Front::Fast(cx) => {
                let cx = cx.clone();
                // The connection's own address when the listener is a wildcard one
                // (`{http.request.local}`): one getsockname per connection.
                let local = match local {
                    Some(l) if l.ip().is_unspecified() => tcp.local_addr().ok().or(local),
                    other => other,
                };
                let layer4 = layer4.clone();
                tokio::spawn(async move {
                    // Counted out even when the connection's task panics.
                    let _live = Live(conns);
                    if read_proxy_header {
                        match Box::pin(proxy_header(&mut tcp, peer, local, &cx.store)).await {
                            Some(client) => peer = client,
                            None => return,
                        }
                    }
                    if let Some(spec) = &layer4 {
                        match Box::pin(layer4_first(tcp, (peer, local), spec, &cx.store)).await {
                            Some(t) => tcp = t,
                            None => return,
                        }
                    }
                    crate::fast_h1::serve(tcp, peer, local, cx).await;
                });
            }
            Front::Tls(app, store, own_h2, lean) => {
                // The connection's own address (not the listener's wildcard one): a
                // client that sends no SNI gets the certificate of the IP it dialled.
                // One getsockname is nothing next to a handshake.
                let local = tcp.local_addr().ok().or(local);
                let (app, store, shutdown) = (app.clone(), store.clone(), shutdown.clone());
                let (own_h2, lean) = (*own_h2, lean.clone());
                let layer4 = layer4.clone();
                tokio::spawn(async move {
                    let _live = Live(conns);
                    if read_proxy_header {
                        match Box::pin(proxy_header(&mut tcp, peer, local, &store)).await {
                            Some(client) => peer = client,
                            None => return,
                        }
                    }
                    if let Some(spec) = &layer4 {
                        match Box::pin(layer4_first(tcp, (peer, local), spec, &store)).await {
                            Some(t) => tcp = t,
                            None => return,
                        }
                    }
                    // One route-table load per connection: TLS state and timeouts.
                    let table = store.load();
                    let Some(tls) = table.tls.as_ref().map(|c| c.state.clone()) else {
                        return;
                    };
                    let timeouts = local
                        .and_then(|l| table.port(l.port()).map(|p| p.timeouts))
                        .unwrap_or_default();
                    drop(table);
                    crate::fast_h1::set_write_timeout(&tcp, timeouts.write);
                    let stream = to_pingora(tcp, peer, local);
                    let fronts = TlsFronts {
                        app,
                        store,
                        idle: timeouts.idle,
                        own_h2,
                        lean,
                    };
                    serve_tls(stream, (peer, local), fronts, tls, shutdown).await;
                });
            }
        }
    }
}

/// Reads the PROXY protocol header of a new connection as its port's policy says and
/// returns the client address to use from now on (the one in the header when the peer
/// may set it), or `None` when the connection must be closed.
async fn proxy_header<S>(
    tcp: &mut S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    store: &crate::route_table::RouteStore,
) -> Option<SocketAddr>
where
    S: crate::proxy_protocol::PeekStream + tokio::io::AsyncRead + Unpin,
{
    let inbound = local.and_then(|l| {
        store
            .load()
            .port(l.port())
            .and_then(|p| p.proxy_protocol.clone())
    });
    // The port dropped the wrapper in a reload this loop has not seen yet.
    let Some(inbound) = inbound else {
        return Some(peer);
    };
    match crate::proxy_protocol::accept(tcp, peer, &inbound).await {
        Ok(client) => Some(client),
        Err(e) => {
            crate::metrics::PROXY_PROTOCOL_REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("connection closed: {e}");
            None
        }
    }
}
