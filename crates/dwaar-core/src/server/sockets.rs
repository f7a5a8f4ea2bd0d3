//! The listening sockets of a server, owned by the top process.
//!
//! Each [`ListenSpec`] gets `K` `SO_REUSEPORT` sockets, one per accepting thread in the
//! whole server (all worker processes together), so the kernel spreads connections with
//! no shared accept lock. The sockets are bound once by the process that owns them and
//! handed out as shares: to worker threads in-process, to worker processes and to the
//! successor of an upgrade over [`super::fdpass`]. Because the owner keeps every socket
//! open, a worker that restarts or stops accepting never resets queued connections.

use crate::route_table::ListenSpec;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

/// A listening socket: TCP, or a unix socket (`bind unix/<path>`).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl Listener {
    /// Another handle on the same kernel socket.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }

    /// A listener of `spec`'s kind around an inherited descriptor.
    fn from_fd(spec: &ListenSpec, fd: OwnedFd) -> std::io::Result<Listener> {
        let l = if unix_path(&spec.addr).is_some() {
            let l = UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Unix(l)
        } else {
            let l = TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Tcp(l)
        };
        Ok(l)
    }
}

/// One listen spec and its sockets.
#[derive(Debug, Clone)]
pub struct Bound {
    pub spec: ListenSpec,
    pub sockets: Arc<Vec<Listener>>,
}

/// Every listener of the server at one moment.
pub type Snapshot = Arc<Vec<Bound>>;

/// Which of `k` sockets the accepting unit `index` of `count` serves: every socket is
/// served by someone whether there are more sockets than units or fewer.
pub fn share(index: usize, count: usize, k: usize) -> Vec<usize> {
    let count = count.max(1);
    if k >= count {
        (index..k).step_by(count).collect()
    } else if k == 0 {
        Vec::new()
    } else {
        vec![index % k]
    }
}

/// The socket address a spec listens on (dual-stack `[::]` when the host allows it).
pub fn socket_addr(spec: &ListenSpec, v6: bool) -> Result<SocketAddr, String> {
    let host = spec.addr.strip_prefix(V6_ONLY).unwrap_or(&spec.addr);
    let text = if host.is_empty() {
        if v6 {
            format!("[::]:{}", spec.port)
        } else {
            format!("0.0.0.0:{}", spec.port)
        }
    } else if host.contains(':') {
        format!("[{}]:{}", host, spec.port)
    } else if host == "localhost" {
        format!("127.0.0.1:{}", spec.port)
    } else {
        format!("{}:{}", host, spec.port)
    };
    text.parse()
        .map_err(|_| format!("invalid listen address {text}"))
}

/// The prefix of a listen address bound IPv6-only (`bind tcp6/::`): an IPv6 wildcard
/// socket that does not also take IPv4 connections.
pub const V6_ONLY: &str = "tcp6/";

/// Whether a listen address is bound IPv6-only.
pub fn v6_only(addr: &str) -> bool {
    addr.starts_with(V6_ONLY)
}

/// Whether this host can listen on IPv6 (dual-stack `[::]`).
pub fn ipv6_available() -> bool {
    TcpListener::bind("[::]:0").is_ok()
}

/// Binds one `SO_REUSEPORT` listening socket (non-blocking); an IPv6 wildcard also takes
/// IPv4 connections unless `only_v6`.
pub fn bind_reuseport(addr: SocketAddr, only_v6: bool) -> std::io::Result<TcpListener> {
    let s = new_listen_socket(addr, only_v6)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn new_listen_socket(addr: SocketAddr, only_v6: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(only_v6)?;
    }
    Ok(s)
}

fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
        }
        _ => e.to_string(),
    };
    format!("cannot listen on {addr}: {why}")
}

/// The path and permission bits of a unix listen address (`unix/<path>|<mode>`).
pub fn unix_path(addr: &str) -> Option<(&std::path::Path, u32)> {
    let rest = addr.strip_prefix("unix/")?;
    let (path, mode) = rest.rsplit_once('|').unwrap_or((rest, "0200"));
    Some((
        std::path::Path::new(path),
        u32::from_str_radix(mode, 8).unwrap_or(0o200),
    ))
}

/// What a spec listens on, for people: `host:port`, or the unix socket's path.
pub fn describe(spec: &ListenSpec, v6: bool) -> String {
    match unix_path(&spec.addr) {
        Some((path, _)) => format!("unix/{}", path.display()),
        None => socket_addr(spec, v6).map_or_else(|e| e, |a| a.to_string()),
    }
}

/// Binds a unix socket at `path` with permission bits `mode`. A socket file left by an
/// earlier run is replaced; any other file at the path is an error.
///
/// The socket is bound under a temporary name next to `path`, given its mode, and then
/// renamed into place: nobody can connect to it with the umask's permissions in between,
/// and a stale socket file is swapped out in one step rather than removed first.
fn bind_unix(path: &std::path::Path, mode: u32) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let why = |e: std::io::Error| format!("cannot listen on unix/{}: {e}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "cannot listen on unix/{}: the path exists and is not a socket",
                path.display()
            ))
        }
        _ => {}
    }
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let bound = UnixListener::bind(&staging).and_then(|l| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
        l.set_nonblocking(true)?;
        std::fs::rename(&staging, path)?;
        Ok(l)
    });
    if bound.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    bound.map_err(why)
}

/// The temporary name a unix socket is bound under before it is renamed to `path`:
/// the same directory (so the rename is atomic), unique to this process and call.
fn staging_path(path: &std::path::Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(".dwaar-{}-{n}.sock", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => std::path::PathBuf::from(name),
    }
}

/// Binds `k` sockets for `spec` (one for a unix socket, which every accepting thread
/// shares). A plain exclusive bind comes first so that a port held by another program
/// is reported instead of silently shared through `SO_REUSEPORT`.
pub fn bind_spec(spec: &ListenSpec, k: usize, v6: bool) -> Result<Vec<Listener>, String> {
    if let Some((path, mode)) = unix_path(&spec.addr) {
        return Ok(vec![Listener::Unix(bind_unix(path, mode)?)]);
    }
    let addr = socket_addr(spec, v6)?;
    let only_v6 = v6_only(&spec.addr);
    let probe = new_listen_socket(addr, only_v6)
        .and_then(|s| s.bind(&addr.into()).and_then(|()| s.listen(1)));
    probe.map_err(|e| bind_error(addr, &e))?;
    (0..k.max(1))
        .map(|_| {
            bind_reuseport(addr, only_v6)
                .map(Listener::Tcp)
                .map_err(|e| bind_error(addr, &e))
        })
        .collect()
}

/// The snapshot for `specs`: sockets of specs already in `current` are kept (same
/// kernel sockets, no connection disturbed); new specs are bound with `k` sockets.
/// Nothing changes when any bind fails.
pub fn prepare(
    current: &[Bound],
    specs: &[ListenSpec],
    k: usize,
    v6: bool,
) -> Result<Snapshot, String> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        // Match on the socket address: a protocol change re-tags the same sockets.
        match current
            .iter()
            .find(|b| b.spec.addr == spec.addr && b.spec.port == spec.port)
        {
            Some(b) => out.push(Bound {
                spec: spec.clone(),
                sockets: b.sockets.clone(),
            }),
            None => out.push(Bound {
                spec: spec.clone(),
                sockets: Arc::new(bind_spec(spec, k, v6)?),
            }),
        }
    }
    Ok(Arc::new(out))
}

/// The wire form of a snapshot share: specs and how many descriptors follow for each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedSpec {
    pub spec: ListenSpec,
    pub count: usize,
}

/// The descriptors and wire description of the share `index` of `count` of a snapshot.
pub fn export<'a>(
    snapshot: &'a [Bound],
    index: usize,
    count: usize,
) -> (Vec<SharedSpec>, Vec<BorrowedFd<'a>>) {
    let mut specs = Vec::with_capacity(snapshot.len());
    let mut fds = Vec::new();
    for b in snapshot {
        let picked = share(index, count, b.sockets.len());
        specs.push(SharedSpec {
            spec: b.spec.clone(),
            count: picked.len(),
        });
        fds.extend(picked.into_iter().map(|j| b.sockets[j].as_fd()));
    }
    (specs, fds)
}

/// Rebuilds a snapshot from a wire description and the descriptors that came with it.
pub fn import(specs: Vec<SharedSpec>, fds: Vec<OwnedFd>) -> Result<Snapshot, String> {
    let total: usize = specs.iter().map(|s| s.count).sum();
    if total != fds.len() {
        return Err(format!(
            "listener handoff mismatch: {total} sockets described, {} received",
            fds.len()
        ));
    }
    let mut fds = fds.into_iter();
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let sockets = fds
            .by_ref()
            .take(s.count)
            .map(|fd| Listener::from_fd(&s.spec, fd))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("inherited socket: {e}"))?;
        out.push(Bound {
            spec: s.spec,
            sockets: Arc::new(sockets),
        });
    }
    Ok(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn every_socket_is_served() {
        for k in 1..9 {
            for count in 1..9 {
                let mut seen = vec![false; k];
                for i in 0..count {
                    let s = share(i, count, k);
                    assert!(!s.is_empty(), "unit {i}/{count} idle with {k} sockets");
                    for j in s {
                        seen[j] = true;
                    }
                }
                assert!(seen.iter().all(|x| *x), "k={k} count={count}");
            }
        }
    }
}
