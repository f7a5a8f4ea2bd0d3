//! Upgraded connections (WebSocket and other `101 Switching Protocols` tunnels) of one
//! `reverse_proxy`, for `stream_timeout` and `stream_close_delay`.
//!
//! Pingora relays a tunnel's bytes; Dwaar keeps a duplicate of the upstream socket's
//! descriptor (taken when [`Dial`](super::Dial) connects) and ends the tunnel by shutting
//! that socket down: both relay directions then see the end of the stream, the client's
//! connection is closed after it, and the backend sees its connection end. Holding the
//! duplicate means the shutdown can never reach a recycled descriptor.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a dial leaves its duplicate of the upstream socket for the request that asked.
pub type SocketSlot = Arc<Mutex<Option<OwnedFd>>>;

/// The live tunnels of one `reverse_proxy`.
#[derive(Debug, Default)]
pub struct Tunnels {
    /// `stream_timeout`: a tunnel is closed this long after it opened.
    pub timeout: Option<Duration>,
    /// `stream_close_delay`: tunnels are closed this long after their config is
    /// replaced (or the server starts stopping); `None`: they run on.
    pub close_delay: Option<Duration>,
    live: Mutex<HashMap<u64, OwnedFd>>,
    next: AtomicU64,
}

/// A tracked tunnel; dropping it (when the request ends) forgets the tunnel.
#[derive(Debug)]
pub struct TunnelGuard {
    set: Arc<Tunnels>,
    id: u64,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        if let Ok(mut live) = self.set.live.lock() {
            live.remove(&self.id);
        }
    }
}

impl Tunnels {
    pub fn new(timeout: Option<Duration>, close_delay: Option<Duration>) -> Option<Arc<Tunnels>> {
        (timeout.is_some() || close_delay.is_some()).then(|| {
            Arc::new(Tunnels {
                timeout,
                close_delay,
                ..Default::default()
            })
        })
    }

    /// Tracks a tunnel that just opened over the upstream socket `fd` (a duplicate).
    pub fn track(self: &Arc<Self>, fd: OwnedFd) -> TunnelGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, fd);
        }
        let timer = self.timeout.and_then(|t| {
            let set = self.clone();
            let rt = tokio::runtime::Handle::try_current().ok()?;
            Some(rt.spawn(async move {
                tokio::time::sleep(t).await;
                set.close(id);
            }))
        });
        TunnelGuard {
            set: self.clone(),
            id,
            timer,
        }
    }

    /// How many tunnels are open.
    pub fn len(&self) -> usize {
        self.live.lock().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close(&self, id: u64) {
        let fd = self.live.lock().ok().and_then(|mut l| l.remove(&id));
        if let Some(fd) = fd {
            shut(&fd);
        }
    }

    /// Closes every open tunnel.
    pub fn close_all(&self) {
        let all: Vec<OwnedFd> = match self.live.lock() {
            Ok(mut l) => l.drain().map(|(_, fd)| fd).collect(),
            Err(_) => Vec::new(),
        };
        for fd in &all {
            shut(fd);
        }
    }
}

fn shut(fd: &OwnedFd) {
    let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Both);
}

/// The config holding `sets` is being replaced (or the server is stopping): each set
/// with a `stream_close_delay` closes its tunnels after that delay.
pub fn unloaded(sets: &[Arc<Tunnels>]) {
    for set in sets {
        let Some(delay) = set.close_delay else {
            continue;
        };
        if set.is_empty() {
            continue;
        }
        let set = set.clone();
        let spawned = std::thread::Builder::new()
            .name("dwaar-tunnels".into())
            .spawn(move || {
                std::thread::sleep(delay);
                set.close_all();
            });
        if let Err(e) = spawned {
            tracing::warn!("stream_close_delay: cannot start its timer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        (a, b)
    }

    #[test]
    fn closing_shuts_the_socket_and_dropping_the_guard_forgets_it() {
        let set = Tunnels::new(None, Some(Duration::from_millis(1))).expect("set");
        let (ours, mut theirs) = pair();
        let guard = set.track(OwnedFd::from(ours.try_clone().expect("dup")));
        assert_eq!(set.len(), 1);
        set.close_all();
        let mut buf = [0u8; 1];
        assert_eq!(
            theirs.read(&mut buf).expect("read"),
            0,
            "the peer sees the end"
        );
        drop(guard);
        assert!(set.is_empty());
        let (ours, _theirs) = pair();
        let guard = set.track(OwnedFd::from(ours));
        drop(guard);
        assert!(set.is_empty(), "a finished tunnel is forgotten");
        assert!(Tunnels::new(None, None).is_none());
    }
}
