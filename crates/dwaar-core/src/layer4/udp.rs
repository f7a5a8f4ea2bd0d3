//! Layer-4 UDP servers: each client address is a session with its own connected
//! socket to the upstream its route chose, ended after the idle timeout.
//!
//! Sessions are bounded in number ([`MAX_SESSIONS`] per socket); a datagram from a
//! new client beyond that is dropped. Datagrams are read into one buffer per socket
//! and per session reader, never one per datagram. Each process binds its own
//! `SO_REUSEPORT` socket per address; the kernel sends a client's datagrams to the
//! same socket, so its session lives in one place. Reloads keep sockets whose
//! address stays (new sessions see the new routes) and close removed ones.

use super::{Facts, Handler, Routes};
use crate::route_table::RouteStore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Most live sessions per listening socket.
pub const MAX_SESSIONS: usize = 4096;
/// A session without datagrams either way for this long ends (Caddy-l4's default).
pub const IDLE: Duration = Duration::from_secs(30);
/// The largest datagram.
const DATAGRAM: usize = 65_535;

/// Sessions opened and datagrams dropped (no route, no upstream, too many sessions).
pub static SESSIONS: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

type Service = (Arc<RouteStore>, tokio::sync::watch::Receiver<bool>);
static SERVICE: std::sync::OnceLock<Service> = std::sync::OnceLock::new();
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Registers the process's route store; the UDP service starts now if the table has a
/// UDP server, or with the first reload that adds one ([`ensure_started`]).
pub fn start(store: Arc<RouteStore>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = SERVICE.set((store, shutdown));
    ensure_started();
}

/// Starts the UDP service on a thread of its own once some table has a UDP server (a
/// process without one keeps no thread for it).
pub fn ensure_started() {
    let Some((store, shutdown)) = SERVICE.get() else {
        return;
    };
    if store.load().layer4.udp.is_empty() || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let (store, shutdown) = (store.clone(), shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("dwaar-l4-udp".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run(store, shutdown)),
                Err(e) => tracing::error!(target: "layer4", "UDP: no runtime: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(target: "layer4", "UDP: cannot start its thread: {e}");
    }
}

/// Binds and serves the UDP servers of whatever table is current until `shutdown`,
/// checking for reloads once a second.
async fn run(store: Arc<RouteStore>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut running: HashMap<SocketAddr, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let table = store.load();
        let wanted: Vec<SocketAddr> = table.layer4.udp.iter().map(|(a, _)| *a).collect();
        running.retain(|addr, task| {
            let keep = wanted.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(sock) => {
                    tracing::info!(target: "layer4", address = %addr, "layer4 UDP listening");
                    running.insert(
                        addr,
                        tokio::spawn(serve(Arc::new(sock), addr, store.clone())),
                    );
                }
                Err(e) => tracing::error!(target: "layer4", "cannot listen on udp/{addr}: {e}"),
            }
        }
        drop(table);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    match bind_one(addr) {
        // No IPv6 on this host: the wildcard is IPv4's.
        Err(_) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            bind_one((std::net::Ipv4Addr::UNSPECIFIED, addr.port()).into())
        }
        other => other,
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// One client's session: the socket connected to its upstream.
struct Session {
    upstream: Arc<UdpSocket>,
    last_ms: Arc<AtomicU64>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

fn clock() -> u64 {
    crate::upstream::now_ms()
}

/// Reads datagrams from clients and forwards each to its session's upstream.
async fn serve(sock: Arc<UdpSocket>, local: SocketAddr, store: Arc<RouteStore>) {
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(target: "layer4", "udp receive: {e}");
                continue;
            }
        };
        // `client` as received (IPv4-mapped on a dual-stack socket) is where replies
        // go; matchers and hashing see the plain address.
        let existing = sessions.lock().ok().and_then(|m| {
            m.get(&client).map(|s| {
                s.last_ms.store(clock(), Ordering::Relaxed);
                s.upstream.clone()
            })
        });
        let upstream = match existing {
            Some(u) => u,
            None => match open(&sock, client, local, &store, &sessions).await {
                Some(u) => u,
                None => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        // A new socket is not known to be writable until the reactor has seen it, so
        // this awaits (at once, unless the socket buffer is full).
        if upstream.send(&buf[..n]).await.is_ok() {
            super::connection::BYTES_FROM_CLIENTS.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A new session for `client`: its route's upstream, dialled (connected) now, and a
/// task that returns the upstream's datagrams until the session goes idle.
async fn open(
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    local: SocketAddr,
    store: &RouteStore,
    sessions: &Sessions,
) -> Option<Arc<UdpSocket>> {
    if sessions.lock().ok()?.len() >= MAX_SESSIONS {
        return None;
    }
    let table = store.load();
    let routes = table
        .layer4
        .udp
        .iter()
        .find(|(a, _)| *a == local)
        .map(|(_, r)| r.clone())?;
    drop(table);
    let facts = Facts {
        remote: SocketAddr::new(crate::net::canonical(client.ip()), client.port()),
        local,
    };
    let proxy = choose(&routes, &facts)?;
    let avail: Vec<usize> = (0..proxy.upstreams.len())
        .filter(|&i| proxy.upstreams[i].healthy())
        .collect();
    let i = crate::upstream::lb::choose_by_connection(
        &proxy.policy,
        &proxy.upstreams,
        &proxy.rr,
        facts.remote.ip(),
        &avail,
    )?;
    let target = proxy.upstreams[i].clone();
    let addr = target.addr()?;
    let bind_addr: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let up = UdpSocket::bind(bind_addr).await.ok()?;
    if up.connect(addr).await.is_err() {
        if let Some(p) = &proxy.passive {
            target.record_failure(p);
        }
        return None;
    }
    let up = Arc::new(up);
    let last_ms = Arc::new(AtomicU64::new(clock()));
    sessions.lock().ok()?.insert(
        client,
        Session {
            upstream: up.clone(),
            last_ms: last_ms.clone(),
        },
    );
    SESSIONS.fetch_add(1, Ordering::Relaxed);
    target.active.fetch_add(1, Ordering::Relaxed);
    let idle = routes.timeouts.idle.unwrap_or(IDLE);
    let (sock, sessions, up2) = (sock.clone(), sessions.clone(), up.clone());
    tokio::spawn(async move {
        returns(&up2, &sock, client, &last_ms, idle).await;
        if let Ok(mut m) = sessions.lock() {
            m.remove(&client);
        }
        target.active.fetch_sub(1, Ordering::Relaxed);
    });
    Some(up)
}

/// The first route whose matchers take the client, if it proxies.
fn choose(routes: &Routes, facts: &Facts) -> Option<Arc<super::Proxy>> {
    let super::Pick::Route(i) = routes.pick(&[], facts, true) else {
        return None;
    };
    for h in &routes.routes[i].handlers {
        match h {
            Handler::Proxy(p) => return Some(p.clone()),
            Handler::Subroute(sub) => {
                if let Some(p) = choose(sub, facts) {
                    return Some(p);
                }
            }
            // close, echo (not over UDP sessions): the datagram is dropped.
            _ => return None,
        }
    }
    None
}

/// Sends the upstream's datagrams back to the client until the session is idle.
async fn returns(
    up: &UdpSocket,
    sock: &UdpSocket,
    client: SocketAddr,
    last_ms: &AtomicU64,
    idle: Duration,
) {
    loop {
        let since = clock().saturating_sub(last_ms.load(Ordering::Relaxed));
        let left = idle.saturating_sub(Duration::from_millis(since));
        if left.is_zero() {
            return;
        }
        match tokio::time::timeout(left, up.readable()).await {
            Err(_) => continue,
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
        match forward(up, sock, client) {
            Ok(n) => {
                last_ms.store(clock(), Ordering::Relaxed);
                super::connection::BYTES_TO_CLIENTS.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // ECONNREFUSED from an ICMP error: the upstream is not there.
            Err(_) => return,
        }
    }
}

/// Moves one datagram from the upstream to the client. The buffer lives on the stack
/// of this call only, so a waiting session holds none.
fn forward(up: &UdpSocket, sock: &UdpSocket, client: SocketAddr) -> std::io::Result<usize> {
    let mut buf = [0u8; DATAGRAM];
    let n = up.try_recv(&mut buf)?;
    // A full socket buffer drops the datagram, as the network may.
    let _ = sock.try_send_to(&buf[..n], client);
    Ok(n)
}
