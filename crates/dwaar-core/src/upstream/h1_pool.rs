//! Upstream HTTP/1.1 connections that own their read buffers: per-thread keep-alive
//! pools of plain-TCP connections for the lean path and the stream front-ends, and
//! one-off TLS and unix-socket connections ([`connect_direct`]).
//!
//! Each worker thread keeps its own idle connections (no locks); a connection is taken
//! LIFO, checked for a close or stray bytes from the upstream before reuse, and returned
//! only when its response ended cleanly. A connection's buffer is reused across the
//! requests it carries; bodies leave it as `Bytes` split off it.

use crate::http1::HeadEnd;
use crate::upstream::TransportOpts;
use bytes::BytesMut;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Idle connections kept per upstream and thread.
const MAX_IDLE: usize = 1024;
/// An upstream connection's read buffer: a typical response head and small body fit.
const UPSTREAM_BUF: usize = 4 * 1024;
/// Read size while a body streams through.
const BULK_READ: usize = 16 * 1024;
/// Idle connections older than this are not reused unless the transport says otherwise.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// The transport under an upstream connection.
pub enum UpStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(tokio::net::UnixStream),
}

impl tokio::io::AsyncRead for UpStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            UpStream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            UpStream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            UpStream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            UpStream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An upstream connection and its read buffer (reused across requests).
pub struct UpstreamConn {
    pub stream: UpStream,
    pub buf: BytesMut,
    /// The last response ended exactly at the end of what was read.
    pub reusable: bool,
    /// `transport http { read_timeout }` of the request using it: the longest wait for
    /// each read (the head as a whole is bounded by `read_response_head`); `None` waits
    /// as long as the upstream takes.
    pub read_timeout: Option<Duration>,
    /// It may serve another client later (not when it began with a PROXY protocol
    /// header naming this one).
    pub shareable: bool,
}

impl UpstreamConn {
    /// Reads more bytes into `buf` (a response head or a small body); 0 at end of stream.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        crate::http1::make_room(&mut self.buf, UPSTREAM_BUF);
        self.timed_read().await
    }

    /// One read into `buf`, bounded by `read_timeout` (a trickling or silent upstream
    /// is cut off, mid-body too).
    async fn timed_read(&mut self) -> std::io::Result<usize> {
        match self.read_timeout {
            Some(d) if !d.is_zero() => tokio::time::timeout(d, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
            _ => self.stream.read_buf(&mut self.buf).await,
        }
    }

    /// The connection's (empty) buffer with room for a bulk read, lent out while a
    /// request body streams through to the upstream: nothing is read from the upstream
    /// before the body has been sent, and the buffer is already sized for bodies, so a
    /// client connection's small buffer need not grow for an upload.
    pub fn bulk_scratch(&mut self) -> &mut BytesMut {
        self.buf.clear();
        crate::http1::make_room(&mut self.buf, BULK_READ);
        &mut self.buf
    }

    /// Like [`read_more`](Self::read_more), in larger reads: for streaming a body through.
    pub async fn read_more_bulk(&mut self) -> std::io::Result<usize> {
        crate::http1::make_room(&mut self.buf, BULK_READ);
        self.timed_read().await
    }
}

/// This thread's idle connections by upstream, and how many there are in all.
#[derive(Default)]
struct Idle {
    /// Keyed by configured upstream addresses, never by what clients send: a fast
    /// hash (no DoS resistance needed) instead of SipHash, two lookups per request.
    by_addr: rustc_hash::FxHashMap<SocketAddr, Vec<(UpstreamConn, Instant)>>,
    total: usize,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// An idle connection to `addr`, or a new one. The flag says whether it was reused.
/// With `transport http { proxy_protocol }` the connection is new, starts with a header
/// naming `client`, and is never pooled (it speaks for that client only).
pub async fn checkout(
    addr: SocketAddr,
    t: &TransportOpts,
    client: SocketAddr,
) -> std::io::Result<(UpstreamConn, bool)> {
    let max_idle = t.idle.unwrap_or(DEFAULT_IDLE);
    while t.proxy_protocol.is_none() {
        let candidate = IDLE.with_borrow_mut(|m| {
            let c = m.by_addr.get_mut(&addr).and_then(Vec::pop);
            m.total -= usize::from(c.is_some());
            c
        });
        let Some((c, since)) = candidate else { break };
        if since.elapsed() > max_idle {
            continue;
        }
        // A readable idle connection was closed by the upstream (or sent junk).
        let mut probe = [0u8; 1];
        let UpStream::Tcp(tcp) = &c.stream else {
            continue;
        };
        match tcp.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut c = c;
                c.read_timeout = t.read_body;
                return Ok((c, true));
            }
            _ => continue,
        }
    }
    let dial = if t.dial.is_zero() {
        Duration::from_secs(10)
    } else {
        t.dial
    };
    let mut stream = tokio::time::timeout(dial, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    t.socket.apply(&stream);
    let shareable = send_proxy_header(&mut stream, t, client, addr).await?;
    Ok((
        UpstreamConn {
            stream: UpStream::Tcp(stream),
            buf: BytesMut::with_capacity(UPSTREAM_BUF),
            reusable: false,
            read_timeout: t.read_body,
            shareable,
        },
        false,
    ))
}

/// Writes the PROXY protocol header `t` asks for (naming `client`, bound for
/// `destination`) on a fresh connection; returns whether the connection may be shared
/// by other clients (it may not once it carries a header).
pub(crate) async fn send_proxy_header<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    t: &TransportOpts,
    client: SocketAddr,
    destination: SocketAddr,
) -> std::io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    let Some(version) = t.proxy_protocol else {
        return Ok(true);
    };
    let header = crate::proxy_protocol::encode(version, client, destination);
    stream.write_all(&header).await?;
    Ok(false)
}

/// Closes this thread's idle upstream connections (shutdown: they may be connections to
/// this very server, which would otherwise wait for them to go away).
pub fn clear() {
    IDLE.with_borrow_mut(|m| *m = Idle::default());
}

/// Returns a connection whose response ended cleanly (plain TCP ones are kept, within
/// `keepalive_idle_conns` and `keepalive_idle_conns_per_host`).
pub fn checkin(addr: SocketAddr, mut c: UpstreamConn, t: &TransportOpts) {
    if crate::lifecycle::inflight::draining()
        || !c.shareable
        || !matches!(c.stream, UpStream::Tcp(_))
    {
        return;
    }
    c.buf.clear();
    // A buffer that grew for a large head or body goes back to the usual size.
    if c.buf.capacity() > 2 * UPSTREAM_BUF {
        c.buf = BytesMut::with_capacity(UPSTREAM_BUF);
    }
    c.reusable = false;
    let per_host = t.idle_per_host.unwrap_or(MAX_IDLE).min(MAX_IDLE);
    let total = t.idle_total.unwrap_or(usize::MAX);
    IDLE.with_borrow_mut(|m| {
        if m.total >= total {
            return;
        }
        let v = m.by_addr.entry(addr).or_default();
        if v.len() < per_host {
            v.push((c, Instant::now()));
            m.total += 1;
        }
    });
}

/// Reads until `c.buf` starts with a complete response head; its length, or `None`
/// when the upstream closed or sent something that is not a response. The head's
/// fields are not parsed here (the caller parses it once, and answers 502 when it is
/// malformed).
/// Interim responses (`1xx` but `101`: `103 Early Hints`, `102 Processing`...) are taken
/// off the connection first and left in `interim` for the client. An upstream that sends
/// more than [`MAX_INTERIM`] of them gets `Ok(None)`.
pub async fn read_response_head(
    c: &mut UpstreamConn,
    t: &TransportOpts,
    interim: &mut Vec<bytes::Bytes>,
) -> std::io::Result<Option<usize>> {
    let limit = t.response_head_limit();
    let read = async {
        loop {
            if !c.buf.is_empty() {
                // Only the end is found here; the head is parsed once, by its user.
                match crate::http1::find_response_head(&c.buf) {
                    HeadEnd::Complete { len, status }
                        if len <= limit
                            && status.is_some_and(|s| (100..200).contains(&s) && s != 101) =>
                    {
                        if interim.len() == MAX_INTERIM {
                            return Ok(None);
                        }
                        interim.push(c.buf.split_to(len).freeze());
                        continue;
                    }
                    HeadEnd::Complete { len, .. } if len <= limit => return Ok(Some(len)),
                    HeadEnd::Partial if c.buf.len() < limit => {}
                    _ => return Ok(None),
                }
            }
            if c.read_more().await? == 0 {
                return Ok(None);
            }
        }
    };
    match t.read {
        Some(d) if !d.is_zero() => tokio::time::timeout(d, read)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
        _ => read.await,
    }
}

/// What an upstream made of a request head sent with `Expect: 100-continue`.
pub enum Continue {
    /// `100 Continue`, or no word within the wait: the body goes.
    Go,
    /// A final answer (or a failure, which reading the head reports): no body.
    Answered,
}

/// `expect_continue_timeout`: waits up to `wait` for the upstream's `100 Continue`
/// (taken from the buffer) or its final answer (left in it for
/// [`read_response_head`]); other interim responses are collected into `interim`.
pub async fn await_continue(
    c: &mut UpstreamConn,
    wait: Duration,
    interim: &mut Vec<bytes::Bytes>,
) -> Continue {
    let look = async {
        loop {
            if !c.buf.is_empty() {
                // As in `read_response_head`: only the end and the status are looked
                // at; a malformed final head is refused when it is parsed.
                let parsed = match crate::http1::find_response_head(&c.buf) {
                    HeadEnd::Complete { len, status } => Some((len, status.unwrap_or(0))),
                    HeadEnd::Partial if c.buf.len() < 64 * 1024 => None,
                    _ => return Continue::Answered,
                };
                if let Some((n, code)) = parsed {
                    if code == 100 {
                        let _ = c.buf.split_to(n);
                        return Continue::Go;
                    }
                    if (102..200).contains(&code) && interim.len() < MAX_INTERIM {
                        interim.push(c.buf.split_to(n).freeze());
                        continue;
                    }
                    return Continue::Answered;
                }
            }
            match c.read_more().await {
                Ok(n) if n > 0 => {}
                _ => return Continue::Answered,
            }
        }
    };
    // Like Go's transport (Caddy): no word in time, the body goes anyway.
    tokio::time::timeout(wait, look)
        .await
        .unwrap_or(Continue::Go)
}

/// The most interim (`1xx`) responses accepted before a final one.
pub const MAX_INTERIM: usize = 16;

/// A new, unpooled connection to `u` over TLS (with the transport's roots, SNI and
/// verification settings) or a unix socket, or plain TCP: for the HTTP/2 and HTTP/3 front-ends.
pub async fn connect_direct(
    u: &crate::upstream::UpstreamState,
    t: &TransportOpts,
    host: &str,
    client: SocketAddr,
) -> std::io::Result<UpstreamConn> {
    let dial = if t.dial.is_zero() {
        Duration::from_secs(10)
    } else {
        t.dial
    };
    let timed = |e: tokio::time::error::Elapsed| {
        let _ = e;
        std::io::Error::from(std::io::ErrorKind::TimedOut)
    };
    let shareable;
    let stream = if u.unix {
        let mut unix = tokio::time::timeout(dial, tokio::net::UnixStream::connect(&u.dial))
            .await
            .map_err(timed)??;
        // A unix socket has no IP destination: the header names the unspecified one.
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        shareable = send_proxy_header(&mut unix, t, client, nowhere).await?;
        UpStream::Unix(unix)
    } else {
        let addr = u
            .addr()
            .ok_or_else(|| std::io::Error::other("the upstream address did not resolve"))?;
        let mut tcp = tokio::time::timeout(dial, TcpStream::connect(addr))
            .await
            .map_err(timed)??;
        t.socket.apply(&tcp);
        // The header goes first, before any TLS.
        shareable = send_proxy_header(&mut tcp, t, client, addr).await?;
        if t.tls {
            let cfg = t.client_tls().map_err(std::io::Error::other)?;
            let server_name = t
                .server_name(&u.dial, host)
                .map_err(std::io::Error::other)?;
            let tls = tokio::time::timeout(
                dial,
                tokio_rustls::TlsConnector::from(cfg).connect(server_name, tcp),
            )
            .await
            .map_err(timed)??;
            UpStream::Tls(Box::new(tls))
        } else {
            UpStream::Tcp(tcp)
        }
    };
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::with_capacity(UPSTREAM_BUF),
        reusable: false,
        read_timeout: t.read_body,
        shareable,
    })
}
