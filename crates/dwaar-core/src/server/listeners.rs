//! Listening sockets and accept loops.
//!
//! Every worker thread binds its own `SO_REUSEPORT` socket for each [`ListenSpec`], so the
//! kernel spreads connections across threads with no shared accept lock. The set of
//! specs is published through a `watch` channel: on a reload each thread opens the new
//! listeners and closes the removed ones, leaving the others (and their connections)
//! untouched.

use crate::route_table::ListenSpec;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The socket address a spec listens on (dual-stack `[::]` when the host allows it).
pub fn socket_addr(spec: &ListenSpec, v6: bool) -> Result<SocketAddr, String> {
    let text = if spec.addr.is_empty() {
        if v6 {
            format!("[::]:{}", spec.port)
        } else {
            format!("0.0.0.0:{}", spec.port)
        }
    } else if spec.addr.contains(':') {
        format!("[{}]:{}", spec.addr, spec.port)
    } else if spec.addr == "localhost" {
        format!("127.0.0.1:{}", spec.port)
    } else {
        format!("{}:{}", spec.addr, spec.port)
    };
    text.parse()
        .map_err(|_| format!("invalid listen address {text}"))
}

/// Whether this host can listen on IPv6 (dual-stack `[::]`).
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::]:0").is_ok()
}

/// Binds a `SO_REUSEPORT` listening socket.
pub fn bind_reuseport(addr: SocketAddr, listen: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if listen {
        s.listen(4096)?;
    }
    Ok(s.into())
}

/// Checks that every spec can be bound by a plain (exclusive) bind, so a port held by
/// another program is reported instead of silently shared. Only for ports this
/// process does not already listen on; nothing is left bound.
pub fn probe(specs: &[ListenSpec], v6: bool) -> Result<(), String> {
    for spec in specs {
        let addr = socket_addr(spec, v6)?;
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                        .to_string()
                }
                _ => e.to_string(),
            };
            return Err(format!("cannot listen on {addr}: {why}"));
        }
    }
    Ok(())
}

/// The application that serves a connection.
pub type ProxyApp = pingora_proxy::HttpProxy<crate::proxy::DwaarProxy>;

/// The two proxy applications: HTTP/1 only, and HTTP/1 + h2c prior knowledge.
#[derive(Clone)]
pub struct Apps {
    pub h1: Arc<ProxyApp>,
    pub h2c: Arc<ProxyApp>,
}

/// Counts live connections so shutdown can wait for them.
#[derive(Default)]
pub struct ConnCount(AtomicUsize);

impl ConnCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Runs one worker thread's listeners until shutdown.
pub async fn worker(
    mut specs: watch::Receiver<Arc<Vec<ListenSpec>>>,
    shutdown: ShutdownWatch,
    apps: Apps,
    conns: Arc<ConnCount>,
    v6: bool,
) {
    let mut running: HashMap<ListenSpec, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut shutdown_rx = shutdown.clone();
    loop {
        let wanted = specs.borrow_and_update().clone();
        running.retain(|spec, task| {
            let keep = wanted.contains(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for spec in wanted.iter() {
            if running.contains_key(spec) {
                continue;
            }
            let listener = socket_addr(spec, v6).and_then(|a| {
                bind_reuseport(a, true).map_err(|e| format!("cannot listen on {a}: {e}"))
            });
            let listener = match listener
                .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string()))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            let app = if spec.h2c {
                apps.h2c.clone()
            } else {
                apps.h1.clone()
            };
            let task = tokio::spawn(accept_loop(listener, app, shutdown.clone(), conns.clone()));
            running.insert(spec.clone(), task);
        }
        tokio::select! {
            changed = specs.changed() => if changed.is_err() { break },
            _ = shutdown_rx.changed() => break,
        }
    }
    // Stop accepting; connections already accepted keep running on this thread.
    for (_, task) in running {
        task.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Arc<ProxyApp>,
    shutdown: ShutdownWatch,
    conns: Arc<ConnCount>,
) {
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let fd = tcp.as_raw_fd();
        let mut stream: Stream = tcp.into();
        // The addresses are known from accept(): no getpeername/getsockname later.
        let digest = SocketDigest::from_raw_fd(fd);
        let _ = digest.peer_addr.set(Some(PSocketAddr::Inet(peer)));
        let _ = digest.local_addr.set(local.map(PSocketAddr::Inet));
        stream.set_socket_digest(digest);
        let app = app.clone();
        let shutdown = shutdown.clone();
        let conns = conns.clone();
        conns.0.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let mut next = app.process_new(Box::new(stream), &shutdown).await;
            while let Some(s) = next {
                next = app.process_new(s, &shutdown).await;
            }
            conns.0.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
