//! Moving a layer-4 connection's bytes both ways until both sides are done.
//!
//! Between two plain TCP sockets bytes go through a pipe with `splice(2)` and never
//! enter user space; otherwise (TLS, throttling) each direction reuses one buffer.
//! An end of stream from one side is passed on as a half-close to the other, and
//! the relay ends when both directions have, when nothing moved for the idle timeout,
//! or at the total one.

use super::{Bucket, Throttle};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client stream of any kind.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long a relay may last: without a byte moving (`idle_timeout`), and in all
/// (`stream_timeout`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub total: Option<Duration>,
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub from_client: u64,
    pub to_client: u64,
}

/// Buffer size of each direction of a buffered relay.
const BUFFER: usize = 16 * 1024;
/// Most bytes one `splice` moves (the pipe's default capacity).
const PIPE: usize = 64 * 1024;

/// When the last byte moved, for the idle timeout (ms since the relay started).
struct Activity {
    start: std::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves when the relay must end: nothing moved for the idle timeout, or the
    /// total one ran out (never without either).
    async fn ended(&self, limits: Timeouts) {
        let total = async {
            match limits.total {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = total => {}
            _ = self.idle(limits.idle) => {}
        }
    }

    async fn idle(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.start.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

/// Relays between two plain TCP sockets through pipes (`splice(2)`), falling back to
/// buffers if the kernel refuses pipes.
pub async fn splice(client: TcpStream, upstream: TcpStream, limits: Timeouts) -> Moved {
    let pipes = (new_pipe(), new_pipe());
    let (Ok(up_pipe), Ok(down_pipe)) = pipes else {
        return copy(Box::new(client), upstream, &[], &[], limits).await;
    };
    let activity = Activity::new();
    let (from_client, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        tokio::join!(
            splice_one(&client, &upstream, &up_pipe, &from_client, &activity),
            splice_one(&upstream, &client, &down_pipe, &to_client, &activity),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = activity.ended(limits) => {}
    }
    Moved {
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    }
}

fn new_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// One direction: socket to pipe, pipe to socket, until the reader's end of stream
/// (passed on as a half-close) or an error.
async fn splice_one(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_r, pipe_w): &(OwnedFd, OwnedFd),
    count: &AtomicU64,
    activity: &Activity,
) {
    use nix::fcntl::SpliceFFlags;
    use tokio::io::Interest;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let nix_err = std::io::Error::from;
    loop {
        let n = loop {
            if from.readable().await.is_err() {
                return shut(to);
            }
            let r = from.try_io(Interest::READABLE, || {
                nix::fcntl::splice(from.as_fd(), None, pipe_w.as_fd(), None, PIPE, flags)
                    .map_err(nix_err)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return shut(to),
            }
        };
        if n == 0 {
            return shut(to);
        }
        let mut left = n;
        while left > 0 {
            if to.writable().await.is_err() {
                return;
            }
            let r = to.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags)
                    .map_err(nix_err)
            });
            match r {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Passes an end of stream on: no more writes to `to`.
fn shut(to: &TcpStream) {
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
}

/// Relays through buffers; `replay` (what the client sent while routes were matched)
/// goes to the upstream first; the client's bytes are read as the throttles allow.
pub async fn copy(
    client: Box<dyn Io>,
    upstream: TcpStream,
    replay: &[u8],
    throttles: &[Arc<Throttle>],
    limits: Timeouts,
) -> Moved {
    let activity = Activity::new();
    let (from_client, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = upstream.into_split();
    let mut pace = Pace::new(throttles);
    let up = async {
        if !replay.is_empty() {
            if up_w.write_all(replay).await.is_err() {
                return;
            }
            from_client.fetch_add(replay.len() as u64, Ordering::Relaxed);
        }
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match client_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if up_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
            from_client.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
            pace.after_read(n).await;
        }
        let _ = up_w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
            to_client.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
        }
        let _ = client_w.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = activity.ended(limits) => {}
    }
    Moved {
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    }
}

/// `echo`: writes back what the client sends (after `replay`) until it stops, reading
/// as the throttles allow.
pub async fn echo(
    mut client: Box<dyn Io>,
    replay: &[u8],
    throttles: &[Arc<Throttle>],
) -> std::io::Result<()> {
    client.write_all(replay).await?;
    let mut pace = Pace::new(throttles);
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return client.shutdown().await;
        }
        client.write_all(&buf[..n]).await?;
        pace.after_read(n).await;
    }
}

/// The `throttle` limits on reading one connection's client: its own buckets and the
/// handlers' shared ones.
struct Pace<'a> {
    own: Vec<Bucket>,
    shared: &'a [Arc<Throttle>],
}

impl<'a> Pace<'a> {
    fn new(throttles: &'a [Arc<Throttle>]) -> Pace<'a> {
        Pace {
            own: throttles
                .iter()
                .filter_map(|t| t.per_conn.map(|(r, b)| Bucket::new(r, b)))
                .collect(),
            shared: throttles,
        }
    }

    /// Waits until `n` more bytes read are within every limit.
    async fn after_read(&mut self, n: usize) {
        let mut wait = Duration::ZERO;
        for b in &mut self.own {
            wait = wait.max(b.take(n));
        }
        for t in self.shared {
            if let Some(Ok(mut b)) = t.total.as_ref().map(|m| m.lock()) {
                wait = wait.max(b.take(n));
            }
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
