//! Connections the lean path lends to Pingora for one request.
//!
//! Every HTTP/1 request head, on every connection, is read and judged by the lean path
//! (`fast_h1`); a request it leaves to Pingora is lent with the bytes read so far, inside
//! [`Lent`], which lets Pingora read exactly that one request: its head, then its body
//! as framed (`Content-Length` bytes, or chunked framing checked by Dwaar's strict
//! [`ChunkScanner`]). Bytes past the request are held back, and when Pingora gives the
//! connection back they go to the lean path with it, which reads the next head. So the
//! strict HTTP/1 rules are decided once, by one parser: a lenient parser never reads a
//! head a strict one refused, pipelined requests after a lent one are answered in order,
//! and chunked framing the scanner refuses ends Pingora's read with a [`BadChunk`] error,
//! answered with 400 (`proxy::fail_to_proxy`). An upgrade or `CONNECT` lends the
//! connection for good: after the head, everything passes.

use crate::http1::{BadChunk, ChunkScanner};
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN, IO,
};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the body of a lent request ends.
#[derive(Debug)]
pub enum BodyEnd {
    /// After this many bytes (`Content-Length`, 0 without a body).
    Length(u64),
    /// Where its chunked framing ends.
    Chunked(ChunkScanner),
    /// Never: an upgrade or `CONNECT`, the connection is Pingora's from now on.
    Open,
}

/// Most bytes held back past a lent request (a client pipelining more than this waits
/// until Pingora is done).
const MAX_HELD: usize = 64 * 1024;

/// A connection lent to Pingora for one request; see the module docs.
#[derive(Debug)]
pub struct Lent<T> {
    inner: T,
    /// Bytes read from the connection and not yet given to Pingora, in order: first the
    /// lean path's buffer, later whatever arrives past the request.
    held: BytesMut,
    /// Bytes of the request head still to give before the body starts.
    head_left: usize,
    body: BodyEnd,
    /// The whole request was given.
    ended: bool,
    /// The chunked framing failed; the next read reports it.
    failed: bool,
}

impl<T> Lent<T> {
    /// Lends `inner` for the request at the start of `read` (bytes the lean path read
    /// and did not use), whose head is `head_len` bytes.
    pub fn new(inner: T, read: &[u8], head_len: usize, body: BodyEnd) -> Lent<T> {
        Lent {
            inner,
            held: BytesMut::from(read),
            head_left: head_len,
            ended: false,
            body,
            failed: false,
        }
    }

    /// The connection, and the bytes read past the request (the next request's start).
    pub fn into_parts(self) -> (T, BytesMut) {
        (self.inner, self.held)
    }

    /// How many of `bytes` (next in the stream) still belong to the request.
    fn belongs(&mut self, bytes: &[u8]) -> usize {
        if self.ended {
            return 0;
        }
        let head = self.head_left.min(bytes.len());
        self.head_left -= head;
        let rest = &bytes[head..];
        if self.head_left > 0 {
            return head;
        }
        let body = match &mut self.body {
            BodyEnd::Open => rest.len(),
            BodyEnd::Length(left) => {
                let take = (*left).min(rest.len() as u64);
                *left -= take;
                self.ended = *left == 0;
                take as usize
            }
            BodyEnd::Chunked(_) if rest.is_empty() => 0,
            BodyEnd::Chunked(scanner) => match scanner.scan(rest) {
                Ok((used, done)) => {
                    self.ended = done;
                    used
                }
                Err(BadChunk) => {
                    // Pingora gets the head (so it goes on to read the body); the
                    // failure is its next read.
                    self.failed = true;
                    self.ended = true;
                    0
                }
            },
        };
        head + body
    }
}

fn bad_chunk() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, BadChunk)
}

/// Whether `e` (as Pingora reports a failed request) was caused by [`Lent`]
/// refusing the body's framing.
pub fn is_bad_chunk(e: &pingora_error::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    while let Some(c) = cause {
        if c.downcast_ref::<BadChunk>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<BadChunk>()) {
                return true;
            }
        }
        // Pingora nests its errors (boxed) and does not expose them as `source`.
        if let Some(p) = c.downcast_ref::<pingora_error::Error>() {
            return is_bad_chunk(p);
        }
        if let Some(p) = c.downcast_ref::<Box<pingora_error::Error>>() {
            return is_bad_chunk(p);
        }
        cause = c.source();
    }
    false
}

impl<T: AsyncRead + Unpin> AsyncRead for Lent<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.failed && this.head_left == 0 {
                return Poll::Ready(Err(bad_chunk()));
            }
            if !this.held.is_empty() && !this.ended {
                let mut held = std::mem::take(&mut this.held);
                let n = held.len().min(buf.remaining());
                let give = this.belongs(&held[..n]);
                buf.put_slice(&held[..give]);
                held.advance(give);
                this.held = held;
                if give > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.ended && !matches!(this.body, BodyEnd::Open) {
                // Past the request: keep what arrives for the lean path, and report
                // only the client closing.
                if this.held.len() >= MAX_HELD {
                    return Poll::Pending;
                }
                let mut spare = [0u8; 4096];
                let mut rb = ReadBuf::new(&mut spare);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => {
                        this.held.extend_from_slice(rb.filled());
                        continue;
                    }
                    other => return other,
                }
            }
            let before = buf.filled().len();
            return match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let read = buf.filled().len() - before;
                    let give = this.belongs(&buf.filled()[before..]);
                    this.held.extend_from_slice(&buf.filled()[before + give..]);
                    buf.set_filled(before + give);
                    if give == 0 && read > 0 {
                        continue;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            };
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Lent<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl<T: Shutdown + Send> Shutdown for Lent<T> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl<T: UniqueID> UniqueID for Lent<T> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<T: Ssl> Ssl for Lent<T> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<T: GetTimingDigest> GetTimingDigest for Lent<T> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl<T: GetProxyDigest> GetProxyDigest for Lent<T> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl<T: GetSocketDigest> GetSocketDigest for Lent<T> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

// Peeking is only used for the h2c preface, which the lean path checked already.
#[async_trait]
impl<T: Send> Peek for Lent<T> {}

/// A plain-text connection after it came back from Pingora: Pingora's stream type, read
/// and written by the lean path like the `TcpStream` it started as (without `sendfile`).
impl super::LeanIo for L4Stream {
    type Handed = L4Stream;

    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    fn hand(mut self, read: &[u8], _peer: SocketAddr, _local: Option<SocketAddr>) -> L4Stream {
        self.rewind(read);
        self
    }

    fn resume(handed: L4Stream) -> Result<Self, Box<L4Stream>> {
        Ok(handed)
    }
}

/// Serves on a plain connection Pingora gave back as its own stream type. Boxed: few
/// connections are ever lent, and the loop it runs may lend this one again.
pub(super) fn resume_plain(
    stream: L4Stream,
    addrs: (SocketAddr, Option<SocketAddr>),
    conn: crate::context::ConnInfo,
    cx: super::FastCx,
    settings: super::ConnSettings,
    buf: BytesMut,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(super::serve_conn(stream, addrs, conn, cx, settings, buf))
}

/// Takes back the connection Pingora returned after serving one request: the type the
/// lean path lent, and the bytes read past the request. `None` (the connection is
/// closed) unless Pingora read exactly the whole request: a body left partly unread
/// would be taken for the next head, and an upgrade that did not happen may have let
/// Pingora read past the request.
pub fn take_back<H: IO + 'static>(back: pingora_core::protocols::Stream) -> Option<(H, BytesMut)> {
    let lent = back.into_any().downcast::<Lent<H>>().ok()?;
    if !lent.ended || lent.failed || matches!(lent.body, BodyEnd::Open) {
        return None;
    }
    Some(lent.into_parts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads what Pingora would get, in reads of three bytes, with the connection
    /// sending `more` after `first` (the lean path's buffer).
    async fn lend(
        first: &[u8],
        more: &'static [u8],
        head: usize,
        body: BodyEnd,
    ) -> (std::io::Result<Vec<u8>>, Vec<u8>) {
        let mut s = Lent::new(more, first, head, body);
        let mut out = Vec::new();
        let mut b = [0u8; 3];
        let r = loop {
            match tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut b)).await {
                Ok(Ok(0)) | Err(_) => break Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&b[..n]),
                Ok(Err(e)) => break Err(e),
            }
        };
        let (_, held) = s.into_parts();
        (r, held.to_vec())
    }

    #[tokio::test]
    async fn one_request_is_lent_and_the_rest_held_back() {
        // A chunked body split between the buffer and the socket; the next request is
        // held back.
        let (got, held) = lend(
            b"HEAD\r\n2;a\r\nab\r\n0\r",
            b"\n\r\nGET /next",
            6,
            BodyEnd::Chunked(ChunkScanner::default()),
        )
        .await;
        assert_eq!(got.ok(), Some(b"HEAD\r\n2;a\r\nab\r\n0\r\n\r\n".to_vec()));
        assert_eq!(held, b"GET /next");
        // Content-Length.
        let (got, held) = lend(b"HEAD\r\nabcGET", b" /x", 6, BodyEnd::Length(3)).await;
        assert_eq!(got.ok(), Some(b"HEAD\r\nabc".to_vec()));
        assert_eq!(held, b"GET /x");
        // An upgrade passes everything.
        let (got, held) = lend(b"HEAD\r\nws", b" frames", 6, BodyEnd::Open).await;
        assert_eq!(got.ok(), Some(b"HEAD\r\nws frames".to_vec()));
        assert!(held.is_empty());
    }

    #[tokio::test]
    async fn bad_chunked_framing_fails_the_read_after_the_head() {
        let (got, _) = lend(
            b"HEAD\r\n2;a\nab\n0\n\n",
            b"",
            6,
            BodyEnd::Chunked(ChunkScanner::default()),
        )
        .await;
        let e = got.err();
        assert!(e.is_some_and(|e| e.get_ref().is_some_and(|i| i.is::<BadChunk>())));
    }

    /// Pingora gives a connection back only after reading its request whole: one lent
    /// for a request it left unread, or for an upgrade, is closed instead of taken back.
    #[tokio::test]
    async fn only_a_request_read_whole_is_taken_back() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut streams = Vec::new();
        for _ in 0..3 {
            let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (server, _) = l.accept().await.expect("accept");
            streams.push((L4Stream::from(server), _client));
        }
        let head: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut it = streams.into_iter();
        // Read whole: taken back with what followed.
        let (s, _c1) = it.next().expect("stream");
        let mut lent = Lent::new(s, &[head, b"NEXT"].concat(), head.len(), BodyEnd::Length(0));
        let mut buf = [0u8; 64];
        let n = lent.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], head);
        let back = take_back::<L4Stream>(Box::new(lent));
        assert_eq!(back.map(|(_, held)| held.to_vec()), Some(b"NEXT".to_vec()));
        // Its body never read: closed.
        let (s, _c2) = it.next().expect("stream");
        let mut lent = Lent::new(s, head, head.len(), BodyEnd::Length(10));
        let _ = lent.read(&mut buf).await.expect("read");
        assert!(take_back::<L4Stream>(Box::new(lent)).is_none());
        // An upgrade: closed.
        let (s, _c3) = it.next().expect("stream");
        let mut lent = Lent::new(s, head, head.len(), BodyEnd::Open);
        let _ = lent.read(&mut buf).await.expect("read");
        assert!(take_back::<L4Stream>(Box::new(lent)).is_none());
    }
}
