//! Where the admin API listens: a TCP address or a unix socket (`unix//path`, mode 0600).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The admin listening socket.
pub enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// An accepted admin connection.
pub trait AdminStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AdminStream for T {}

/// A bound socket before the runtime adopts it (also the form handed to an upgrade).
pub enum BoundAdmin {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl BoundAdmin {
    /// Binds `addr` (`host:port` or `unix//path`).
    pub fn bind(addr: &str) -> Result<BoundAdmin, String> {
        if let Some(path) = addr.strip_prefix("unix/") {
            let path = PathBuf::from(path);
            // A socket file left by a process that is gone is replaced; a live one is not.
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(format!(
                        "admin socket {} is in use by another process",
                        path.display()
                    ));
                }
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot replace admin socket {}: {e}", path.display()))?;
            }
            let l = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| format!("cannot listen on admin socket {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict admin socket {}: {e}", path.display()))?;
            return Ok(BoundAdmin::Unix(l, path));
        }
        // `tcp/` is accepted as in Caddy; `:port` (no host) means every interface, where
        // remote clients still need the admin token.
        let given = addr.strip_prefix("tcp/").unwrap_or(addr);
        let resolved = match given.strip_prefix(':') {
            Some(port) => std::net::ToSocketAddrs::to_socket_addrs(&format!("[::]:{port}"))
                .or_else(|_| std::net::ToSocketAddrs::to_socket_addrs(&format!("0.0.0.0:{port}"))),
            None => std::net::ToSocketAddrs::to_socket_addrs(given),
        };
        let addrs: Vec<SocketAddr> = resolved
            .map_err(|e| format!("invalid admin address '{addr}': {e}"))?
            .collect();
        // `localhost` resolves to both families; prefer IPv4 like most clients try first.
        let pick = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("admin address '{addr}' resolves to nothing"))?;
        let l = std::net::TcpListener::bind(pick).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("cannot listen on admin address {pick}: address already in use (another dwaar? set 'admin' in the global options or DWAAR_ADMIN)")
            } else {
                format!("cannot listen on admin address {pick}: {e}")
            }
        })?;
        Ok(BoundAdmin::Tcp(l))
    }

    /// The descriptor, for a listener handoff.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            BoundAdmin::Tcp(l) => l.as_fd(),
            BoundAdmin::Unix(l, _) => l.as_fd(),
        }
    }

    /// Adopts a descriptor received in a handoff; `unix_path` tells which kind it is.
    pub fn from_fd(fd: OwnedFd, unix_path: Option<PathBuf>) -> BoundAdmin {
        match unix_path {
            Some(p) => BoundAdmin::Unix(std::os::unix::net::UnixListener::from(fd), p),
            None => BoundAdmin::Tcp(std::net::TcpListener::from(fd)),
        }
    }

    pub fn unix_path(&self) -> Option<PathBuf> {
        match self {
            BoundAdmin::Tcp(_) => None,
            BoundAdmin::Unix(_, p) => Some(p.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            BoundAdmin::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            BoundAdmin::Unix(_, p) => format!("unix/{}", p.display()),
        }
    }

    /// Hands the socket to the runtime (must be called inside one). Duplicates the
    /// descriptor so the bound socket can still be passed on in an upgrade.
    pub fn listen(&self) -> std::io::Result<AdminListener> {
        match self {
            BoundAdmin::Tcp(l) => {
                let l = l.try_clone()?;
                l.set_nonblocking(true)?;
                Ok(AdminListener::Tcp(tokio::net::TcpListener::from_std(l)?))
            }
            BoundAdmin::Unix(l, p) => {
                let l = l.try_clone()?;
                l.set_nonblocking(true)?;
                Ok(AdminListener::Unix(
                    tokio::net::UnixListener::from_std(l)?,
                    p.clone(),
                ))
            }
        }
    }
}

impl AdminListener {
    pub async fn accept(&self) -> std::io::Result<(Box<dyn AdminStream>, Peer)> {
        match self {
            AdminListener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                Ok((Box::new(s), Peer::Tcp(a)))
            }
            AdminListener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), Peer::Unix))
            }
        }
    }

    /// The TCP port (for the Host and Origin checks).
    pub fn port(&self) -> Option<u16> {
        match self {
            AdminListener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            AdminListener::Unix(..) => None,
        }
    }
}
