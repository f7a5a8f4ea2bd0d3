//! The lean HTTP/1.1 front-end (DESIGN.md §8).
//!
//! Plain-text HTTP/1.1 connections are read here first: the head is parsed in place with
//! `httparse`, run through the same protocol-neutral pipeline as every other front-end
//! (`pipeline::handle_request` on a [`FastRequest`]), and then either
//!
//! - answered directly (`respond`, `redir`, `error`, the 400/404/413/431 replies), or
//! - proxied over a per-thread keep-alive pool of upstream connections, writing the
//!   request head once and streaming bodies with `Content-Length` or chunked framing, or
//! - handed to Pingora's `HttpProxy` with every byte read so far pushed back into the
//!   stream (`Stream::rewind`) whenever the request needs something this path does not do:
//!   HTTP/1.0, `Transfer-Encoding` or `Expect` on the request, upgrades, `request_body`
//!   limits, retries and `lb_try_duration`, TLS, h2c or unix upstreams, failures to reach
//!   the upstream (Pingora then applies retries, passive health and `handle_errors`).
//!
//! Idle keep-alive connections close after 60 s, and a request head must arrive within
//! 30 s of its first byte (slow clients are dropped). Every request head is read and
//! judged here, strictly (400 for what `httparse` refuses, 431 over `max_header_size`,
//! the framing rules of `pipeline::framing_check`); Pingora is lent the connection for
//! one request at a time and gives it back (`handed`). Both paths share routing,
//! header rules, forwarding headers, request IDs, logging and in-flight accounting, and
//! the end-to-end tests run against both (`server::Fronts::lean_h1` turns this one off;
//! the CLI sets it from `DWAAR_FAST_PATH=0`).

pub mod handed;
pub mod request;

use crate::context::{ConnInfo, RequestContext};
use crate::http1::{
    chunk_into, make_room, push_date, push_request_id, status_line, upstream_framing,
    upstream_keepalive, ChunkScanner, Framing, MAX_HEADERS,
};
use crate::lifecycle::{attempt, edit_upstream_request, inflight, Decided, LogParts};
use crate::net::to_pingora;
use crate::pipeline::{Outcome, Reply};
use crate::request::HttpRequest;
use crate::route_table::RouteStore;
use crate::upstream::h1_pool as pool;
use bytes::{Buf, Bytes, BytesMut};
use pingora_core::server::ShutdownWatch;
use pool::UpstreamConn;
use request::FastRequest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client connection's read buffer: most request heads fit in it.
const CLIENT_BUF: usize = 2 * 1024;

/// Serves a connection this path hands over (to Pingora, or to the HTTP/2 front-end
/// for h2c), with the bytes it read pushed back. Pingora serves one request and gives
/// the connection back when it stays open (`handed`).
pub type HandOver = dyn Fn(
        pingora_core::protocols::Stream,
        ConnInfo,
        ShutdownWatch,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<pingora_core::protocols::Stream>> + Send>,
    > + Send
    + Sync;

/// The HTTP/2 connection preface a client with prior knowledge starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection needs from the server.
#[derive(Clone)]
pub struct FastCx {
    pub store: Arc<RouteStore>,
    /// Serves the connections this path hands over (Pingora's `HttpProxy`).
    pub fallback: Arc<HandOver>,
    /// On an h2c port: serves connections that open with the HTTP/2 preface.
    pub h2c: Option<Arc<HandOver>>,
    /// Every request goes to `fallback` once its head is read (`server::Fronts`).
    pub hand_over_all: bool,
    pub shutdown: ShutdownWatch,
}

/// A client connection the lean path serves: plain TCP, TLS after the handshake, or a
/// plain connection Pingora gave back (`handed`).
pub trait LeanIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// What Pingora is given when a request is handed over.
    type Handed: pingora_core::protocols::IO + 'static;
    /// The TCP socket the bytes go to unchanged (`sendfile`), if any.
    fn tcp(&self) -> Option<&TcpStream>;
    /// The connection for Pingora, with `read` (bytes this path read and did not use)
    /// pushed back in front of what comes next.
    fn hand(self, read: &[u8], peer: SocketAddr, local: Option<SocketAddr>) -> Self::Handed;
    /// The connection back from Pingora as this type, or as Pingora's plain stream when
    /// this type cannot hold it (a `TcpStream`).
    fn resume(
        handed: Self::Handed,
    ) -> Result<Self, Box<pingora_core::protocols::l4::stream::Stream>>
    where
        Self: Sized;
}

/// A plain socket for Pingora (`LeanIo::hand`): its own stream type with `read` pushed
/// back in front. Such a stream cannot come back as the socket: `resume` hands it on,
/// and the connection goes on as Pingora's stream (`handed::resume_plain`).
fn hand_plain<S>(
    socket: S,
    read: &[u8],
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> pingora_core::protocols::l4::stream::Stream
where
    S: Into<pingora_core::protocols::l4::stream::Stream> + std::os::fd::AsRawFd,
{
    let mut stream = to_pingora(socket, peer, local);
    stream.rewind(read);
    stream
}

impl LeanIo for TcpStream {
    type Handed = pingora_core::protocols::l4::stream::Stream;

    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn hand(self, read: &[u8], peer: SocketAddr, local: Option<SocketAddr>) -> Self::Handed {
        hand_plain(self, read, peer, local)
    }

    fn resume(handed: Self::Handed) -> Result<Self, Box<Self::Handed>> {
        Err(Box::new(handed))
    }
}

/// A unix socket's connection (`bind unix/...`): no `sendfile` target.
impl LeanIo for tokio::net::UnixStream {
    type Handed = pingora_core::protocols::l4::stream::Stream;

    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    fn hand(self, read: &[u8], peer: SocketAddr, local: Option<SocketAddr>) -> Self::Handed {
        hand_plain(self, read, peer, local)
    }

    fn resume(handed: Self::Handed) -> Result<Self, Box<Self::Handed>> {
        Err(Box::new(handed))
    }
}

/// Serves one plain-text client connection (TCP, or a unix socket's) until it closes
/// or is handed over (to Pingora, or on an h2c port to the HTTP/2 front-end). Not an
/// `async fn`: the set-up is done now and the connection's future is [`serve_conn`]'s
/// own (one layer fewer to poll for every read and write of the connection).
pub fn serve<S: LeanIo>(
    tcp: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    cx: FastCx,
) -> impl std::future::Future<Output = ()> {
    let conn = ConnInfo {
        remote: SocketAddr::new(crate::net::canonical(peer.ip()), peer.port()),
        local_port: local.map(|a| a.port()).unwrap_or(0),
        tls: false,
        tls_policy: 0,
        local_ip: local.map(|a| a.ip()),
        tls_facts: None,
    };
    // The port's settings, read once per connection.
    let settings = port_settings(&cx, &conn);
    if let Some(sock) = tcp.tcp() {
        set_write_timeout(sock, settings.timeouts.write);
    }
    // Most request heads fit; the buffer grows only for larger ones.
    let buf = BytesMut::with_capacity(CLIENT_BUF);
    serve_conn(tcp, (peer, local), conn, cx, settings, buf)
}

/// Serves an HTTP/1.1 connection over TLS (the handshake is done; `conn` says under
/// which policy) until it closes or is handed to Pingora.
pub fn serve_tls<S: LeanIo>(
    io: S,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    conn: ConnInfo,
    cx: FastCx,
) -> impl std::future::Future<Output = ()> {
    let settings = port_settings(&cx, &conn);
    let buf = BytesMut::with_capacity(CLIENT_BUF);
    serve_conn(io, (peer, local), conn, cx, settings, buf)
}

/// What a connection takes from its port's settings, read once when it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    timeouts: crate::route_table::PortTimeouts,
    /// Longest request head read (`max_header_size`, plus room for the request line).
    max_head: usize,
}

fn port_settings(cx: &FastCx, conn: &ConnInfo) -> ConnSettings {
    let table = cx.store.load();
    let port = table.port(conn.local_port);
    ConnSettings {
        timeouts: port.map(|p| p.timeouts).unwrap_or_default(),
        max_head: port.map_or(crate::route_table::DEFAULT_MAX_HEADER_SIZE, |p| {
            p.max_header_size()
        }) + crate::pipeline::MAX_URI
            + 32,
    }
}

/// The request loop of one connection (after the h2c preface check on h2c ports).
pub(crate) async fn serve_conn<S: LeanIo>(
    mut tcp: S,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    conn: ConnInfo,
    cx: FastCx,
    settings: ConnSettings,
    mut buf: BytesMut,
) {
    if let Some(h2c) = &cx.h2c {
        let head_timeout = settings.timeouts.read_header.unwrap_or(HEAD_TIMEOUT);
        match read_preface(&mut tcp, &mut buf, head_timeout).await {
            Some(true) => {
                let stream = Box::new(tcp.hand(&buf, peer, local));
                h2c(stream, conn.clone(), cx.shutdown.clone()).await;
                return;
            }
            Some(false) => {}
            None => return,
        }
    }
    // One shutdown receiver per connection, not a clone per request.
    let mut shutdown = cx.shutdown.clone();
    loop {
        match serve_one(&mut tcp, &mut buf, &conn, &cx, &mut shutdown, &settings).await {
            Next::KeepAlive => continue,
            Next::Close => {
                let _ = tcp.shutdown().await;
                return;
            }
            Next::Drop => return,
            Next::HandOver { head_len, body } => {
                // Pingora serves this one request, then the connection comes back with
                // what was read past it.
                let lent = handed::Lent::new(tcp.hand(&[], peer, local), &buf, head_len, body);
                buf.clear();
                let Some(back) =
                    (cx.fallback)(Box::new(lent), conn.clone(), cx.shutdown.clone()).await
                else {
                    return;
                };
                let Some((handed, held)) = handed::take_back::<S::Handed>(back) else {
                    return;
                };
                buf.extend_from_slice(&held);
                match S::resume(handed) {
                    Ok(same) => tcp = same,
                    Err(other) => {
                        // Back as Pingora's stream type: served on by a loop of that type.
                        return handed::resume_plain(
                            *other,
                            (peer, local),
                            conn,
                            cx,
                            settings,
                            buf,
                        )
                        .await;
                    }
                }
            }
        }
    }
}

/// Reads until `buf` shows whether the connection opens with the HTTP/2 preface:
/// `Some(true)` it does, `Some(false)` it is something else (HTTP/1), `None` the client
/// left or stalled.
async fn read_preface<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    timeout: std::time::Duration,
) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        match tokio::time::timeout_at(deadline, tcp.read_buf(buf)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return None,
        }
    }
}

enum Next {
    KeepAlive,
    /// Close after a response (graceful).
    Close,
    /// The connection is broken or the client left.
    Drop,
    /// Lend the connection, with `buf` (starting with a head of `head_len` bytes), to
    /// Pingora for that one request (`handed`).
    HandOver {
        head_len: usize,
        body: handed::BodyEnd,
    },
}

/// How long a keep-alive connection may sit idle between requests (Pingora's default).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a client may take to send a whole request head once it started (slow-loris).
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a client may pause while sending a request body (`read_body`).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// While the server drains, an idle keep-alive connection is closed after this long: a
/// client in the middle of sending its next request still gets it answered (with
/// `Connection: close`), one that went quiet does not hold the shutdown up.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// How reading a request head ended.
enum Head {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    /// The client closed the connection (or left nothing to answer).
    Closed,
    /// Bytes no HTTP/1.1 request head may contain (400).
    Malformed,
    /// Longer than the port's `max_header_size`, or more than `MAX_HEADERS` fields (431).
    TooLarge,
}

/// Reads until `buf` holds a complete request head. Idle and slow clients get
/// `TimedOut`.
async fn read_head<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    shutdown: &mut ShutdownWatch,
    settings: &ConnSettings,
) -> Result<Head, std::io::Error> {
    let timeouts = &settings.timeouts;
    let head_timeout = timeouts.read_header.unwrap_or(HEAD_TIMEOUT);
    let mut deadline = (!buf.is_empty()).then(|| tokio::time::Instant::now() + head_timeout);
    let mut idle_until = tokio::time::Instant::now()
        + if *shutdown.borrow() {
            DRAIN_IDLE
        } else {
            timeouts.idle.unwrap_or(IDLE_TIMEOUT)
        };
    loop {
        if !buf.is_empty() {
            let mut slots = crate::http1::header_slots();
            match crate::http1::parse_request(buf, &mut slots).0 {
                Ok(httparse::Status::Complete(n)) if n <= settings.max_head => {
                    return Ok(Head::Complete(n))
                }
                Ok(httparse::Status::Complete(_)) => return Ok(Head::TooLarge),
                Ok(httparse::Status::Partial)
                    if buf.len() <= settings.max_head && !request_line_too_long(buf) => {}
                Ok(httparse::Status::Partial) => return Ok(Head::TooLarge),
                Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
                Err(_) => return Ok(Head::Malformed),
            }
        }
        make_room(buf, CLIENT_BUF);
        let until = deadline.unwrap_or(idle_until);
        let draining_idle = deadline.is_none() && !*shutdown.borrow();
        tokio::select! {
            r = tokio::time::timeout_at(until, tcp.read_buf(buf)) => match r {
                Ok(Ok(0)) => return Ok(Head::Closed),
                Ok(Ok(_)) => {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            },
            // Shutdown began while this connection was idle: give it a short grace.
            _ = shutdown.changed(), if draining_idle => {
                idle_until = idle_until.min(tokio::time::Instant::now() + DRAIN_IDLE);
            }
        }
    }
}

/// `servers { timeouts { write } }`: the kernel gives up on the connection when sent
/// data (or its zero-window probes) stay unacknowledged that long, which covers a
/// client that stops reading on every write path at once (`TCP_USER_TIMEOUT`).
pub fn set_write_timeout(tcp: &TcpStream, write: Option<std::time::Duration>) {
    if let Some(w) = write {
        let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(w));
    }
}

/// Answers a request this path will not read any further with an empty `status`
/// response, and closes (after draining what the client still sends, so the answer is
/// not lost to a reset).
async fn refuse<S: LeanIo>(tcp: &mut S, status: u16) -> Next {
    let mut out = Vec::with_capacity(128);
    status_line(&mut out, status);
    push_date(&mut out);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
    if tcp.write_all(&out).await.is_ok() {
        linger(tcp).await;
    }
    Next::Drop
}

/// `Alt-Svc` announcing HTTP/3, on TLS connections to ports that serve it.
fn push_alt_svc(out: &mut Vec<u8>, ctx: &RequestContext) {
    if let Some(v) = crate::lifecycle::alt_svc(ctx) {
        out.extend_from_slice(b"alt-svc: ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether the request line (complete or not) is already longer than any target the
/// pipeline accepts (`MAX_URI`, plus room for the method and version).
fn request_line_too_long(buf: &[u8]) -> bool {
    let line = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    line > crate::pipeline::MAX_URI + 32
}

/// Whether the request line is well formed but names a version other than HTTP/1.x
/// (`GET / HTTP/2.0` sent to an HTTP/1 port).
fn unsupported_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let v = match version.strip_prefix(b"HTTP/") {
        Some(v) => v,
        None => return false,
    };
    !method.is_empty()
        && !target.is_empty()
        && v.len() == 3
        && v[0].is_ascii_digit()
        && v[1] == b'.'
        && v[2].is_ascii_digit()
        && v[0] != b'1'
}

/// The request's body framing, when this path can forward it.
fn request_body_len(req: &FastRequest) -> Option<u64> {
    match req.header_count("content-length") {
        0 => Some(0),
        1 => {
            let v = req.header_bytes_of("content-length")?;
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 18 {
                return None;
            }
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// Whether the client named this header in `Connection` (it then belongs to its hop only).
fn listed_in_connection(req: &FastRequest, name: &[u8]) -> bool {
    req.any_header_value("connection", &mut |v| {
        v.split(',')
            .any(|t| t.trim().as_bytes().eq_ignore_ascii_case(name))
    })
}

fn wants_close(req: &FastRequest) -> bool {
    req.any_header_value("connection", &mut |v| {
        v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
    })
}

async fn serve_one<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    conn: &ConnInfo,
    cx: &FastCx,
    shutdown: &mut ShutdownWatch,
    settings: &ConnSettings,
) -> Next {
    let timeouts = &settings.timeouts;
    let head_len = match read_head(tcp, buf, shutdown, settings).await {
        Ok(Head::Complete(n)) => n,
        Ok(Head::Closed) | Err(_) => return Next::Drop,
        // A request line naming an HTTP version this port does not speak: 505.
        Ok(_) if unsupported_version(buf) => return refuse(tcp, 505).await,
        // A request target longer than the pipeline's limit, whatever the head's size
        // (it is refused without reading up to the head limit).
        Ok(_) if request_line_too_long(buf) => return refuse(tcp, 414).await,
        Ok(Head::TooLarge) => return refuse(tcp, 431).await,
        // Anything else httparse refuses (a space in the target, obs-fold, bare CR, a
        // bad name): every HTTP/1 head is judged here, never by a more lenient parser.
        Ok(Head::Malformed) => return refuse(tcp, 400).await,
    };
    // Parse again into owned ranges over the frozen head.
    let head = buf.split_to(head_len).freeze();
    // The parser's header array stays in this synchronous helper, out of the
    // connection's future (which lives as long as the connection).
    let Some(mut req) = parse_request(&head) else {
        return refuse(tcp, 400).await;
    };
    // Smuggling defences need the head as sent (Pingora drops Content-Length when
    // Transfer-Encoding is present).
    if let Some(r) = crate::pipeline::framing_check(&req, req.header_count("content-length")) {
        let ctx = RequestContext::default();
        let _ = write_reply(tcp, &req, &ctx, r, true).await;
        return Next::Drop;
    }
    if cx.hand_over_all {
        return hand_back(buf, head, &req);
    }
    // Requests this path leaves to Pingora, decided before anything is consumed.
    let body_len = request_body_len(&req);
    let simple = req.version == http::Version::HTTP_11
        && body_len.is_some()
        && req.header_count("transfer-encoding") == 0
        && req.header_count("expect") == 0
        && req.header_count("upgrade") == 0
        && req.method() != "CONNECT"
        && !req.path().is_empty()
        && req.path().starts_with('/');
    let Some(body_len) = body_len.filter(|_| simple) else {
        return hand_back(buf, head, &req);
    };

    let mut ctx = RequestContext::default();
    let Some(table) =
        crate::lifecycle::start(&cx.store, conn.clone(), req.header("host"), &mut ctx)
    else {
        return hand_back(buf, head, &req);
    };
    // basic_auth and forward_auth answer off the request path; then the pipeline runs
    // again from the request as it arrived.
    let original = table.rerun_checks.then(|| req.clone());
    let outcome = match crate::lifecycle::decide(&table, original.as_ref(), &mut req, &mut ctx) {
        Decided::Ready(o) => o,
        Decided::Checking(checks) => checks.await,
    };
    ctx.table = Some(table);
    let close = wants_close(&req) || inflight::draining();
    match outcome {
        // `{http.request.body}`: Pingora's path reads the body and runs the pipeline again.
        Outcome::NeedsBody => hand_back(buf, head, &req),
        Outcome::Internal(i) => {
            if body_len > i.body_limit() as u64 {
                let _ = write_reply(tcp, &req, &ctx, Reply::status(413), true).await;
                finish_log(&req, &ctx, 413, 0, 0);
                linger(tcp).await;
                return Next::Drop;
            }
            let body_timeout = timeouts.read_body.unwrap_or(BODY_TIMEOUT);
            let Ok(body) = read_small_body(tcp, buf, body_len as usize, body_timeout).await else {
                return Next::Drop;
            };
            ctx.inflight = inflight::Guard::enter();
            let r = crate::analytics::answer(i, body).await;
            let close = close || r.close;
            send_reply(tcp, &req, &ctx, r, close, body_len).await
        }
        Outcome::Reply(mut r) => {
            crate::rewrite::reply(&mut ctx, &mut r);
            ctx.inflight = inflight::Guard::enter();
            // A small body is read and dropped so the connection stays in step. A large
            // or refused one (413) is not read: the answer goes out at once, the
            // connection closes, and what the client still sends is drained briefly so
            // the close does not reset the answer away.
            let skip_body = body_len > MAX_DISCARD || ctx.log.rejected_by.is_some();
            let next = if skip_body {
                match write_reply(tcp, &req, &ctx, r, true).await {
                    Ok((status, sent)) => {
                        finish_log(&req, &ctx, status, 0, sent);
                        linger(tcp).await;
                        Next::Drop
                    }
                    Err(_) => Next::Drop,
                }
            } else {
                let body_timeout = timeouts.read_body.unwrap_or(BODY_TIMEOUT);
                match discard_body(tcp, buf, body_len, body_timeout).await {
                    Ok(()) => {
                        let close = close || r.close || ctx.close;
                        send_reply(tcp, &req, &ctx, r, close, body_len).await
                    }
                    Err(_) => Next::Drop,
                }
            };
            next
        }
        // `decide` settles every check; kept for exhaustiveness.
        Outcome::Check(_) => send_reply(tcp, &req, &ctx, Reply::status(503), true, 0).await,
        Outcome::Abort => {
            finish_log(&req, &ctx, 0, 0, 0);
            Next::Drop
        }
        Outcome::Proxy => {
            // Cache fills, revalidations and bypass marks run on Pingora's path (hits
            // were answered above, here).
            let eligible = ctx.max_body.is_none()
                && ctx.body_set.is_none()
                && ctx.templates().is_none()
                && ctx.cache.is_none()
                && ctx.proxy.as_ref().is_some_and(|p| p.lean);
            if !eligible {
                return hand_back(buf, head, &req);
            }
            ctx.inflight = inflight::Guard::enter();
            let body_timeout = timeouts.read_body.unwrap_or(BODY_TIMEOUT);
            let next = proxy(
                tcp,
                buf,
                (&head, &mut req, &mut ctx),
                body_len,
                close,
                body_timeout,
            )
            .await;
            attempt::release(&mut ctx);
            next
        }
    }
}

fn parse_request(head: &Bytes) -> Option<FastRequest> {
    let mut slots = crate::http1::header_slots();
    let (verdict, parsed) = crate::http1::parse_request(head, &mut slots);
    if !matches!(verdict, Ok(httparse::Status::Complete(_))) {
        return None;
    }
    FastRequest::from_parsed(head.clone(), &parsed)
}

/// Puts the head back in front of whatever else was read, to lend the connection to
/// Pingora for `req` (`handed`).
fn hand_back(buf: &mut BytesMut, head: Bytes, req: &FastRequest) -> Next {
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.extend_from_slice(&head);
    all.extend_from_slice(buf);
    *buf = all;
    let body = if req.header_count("upgrade") > 0 || req.method() == "CONNECT" {
        handed::BodyEnd::Open
    } else if req.header_count("transfer-encoding") > 0 {
        handed::BodyEnd::Chunked(ChunkScanner::default())
    } else {
        handed::BodyEnd::Length(request_body_len(req).unwrap_or(0))
    };
    Next::HandOver {
        head_len: head.len(),
        body,
    }
}

/// Request bodies up to this size are read and dropped to keep a connection after a
/// reply that did not need them.
const MAX_DISCARD: u64 = 64 * 1024;

/// After answering without reading the body: stop writing, then read and drop what the
/// client still sends for a short while (at most 1 MiB or 2 s), so closing the socket
/// with unread data does not reset the connection before the client read the answer.
async fn linger<S: LeanIo>(tcp: &mut S) {
    let _ = tcp.shutdown().await;
    // On the heap: an array here would sit in every connection's future.
    let mut sink = vec![0u8; 16 * 1024];
    let mut left: usize = 1024 * 1024;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while left > 0 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// Reads a body of `len` bytes (already known to be small) that follows the head.
async fn read_small_body<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    len: usize,
    timeout: std::time::Duration,
) -> std::io::Result<Bytes> {
    while buf.len() < len {
        let n = tokio::time::timeout(timeout, tcp.read_buf(buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.split_to(len).freeze())
}

async fn discard_body<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    len: u64,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let mut left = len;
    loop {
        let take = (buf.len() as u64).min(left) as usize;
        buf.advance(take);
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        let n = tokio::time::timeout(timeout, tcp.read_buf(buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Writes a reply, logs the request, and says whether the connection stays open.
async fn send_reply<S: LeanIo>(
    tcp: &mut S,
    req: &FastRequest,
    ctx: &RequestContext,
    r: Reply,
    close: bool,
    read: u64,
) -> Next {
    match write_reply(tcp, req, ctx, r, close).await {
        Ok((status, sent)) => {
            finish_log(req, ctx, status, read, sent);
            if close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(_) => Next::Drop,
    }
}

/// Writes a `Reply` the way the Pingora front-end does; returns (status, body bytes sent).
async fn write_reply<S: LeanIo>(
    tcp: &mut S,
    req: &FastRequest,
    ctx: &RequestContext,
    mut r: Reply,
    close: bool,
) -> std::io::Result<(u16, u64)> {
    let head_only = req.method() == "HEAD";
    let mut out = Vec::with_capacity(256 + r.body.len());
    status_line(&mut out, r.status);
    for (k, v) in &r.headers {
        if k.eq_ignore_ascii_case("x-request-id") && ctx.request_id.is_some() {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    push_request_id(&mut out, ctx);
    push_alt_svc(&mut out, ctx);
    if !r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("date"))
    {
        push_date(&mut out);
    }
    let no_body_status = r.status == 204 || r.status == 304 || r.status < 200;
    let rewrite = r.rewrite.take();
    if !no_body_status {
        if rewrite.is_some() {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(r.body_len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ctx.log.capture_response(|| crate::http1::head_fields(&out));
    let mut sent = 0;
    let with_body = !head_only && !no_body_status;
    if let (Some(mut rw), true) = (rewrite, with_body) {
        // Compressed or edited: chunked pieces as the rewrite gives them.
        let fail = |_| std::io::Error::other("rewriting the reply failed");
        let first = rw
            .feed(Some(std::mem::take(&mut r.body)), false)
            .map_err(fail)?;
        sent += first.len() as u64;
        let mut piece_out = Vec::new();
        chunk_into(&mut out, &first);
        tcp.write_all(&out).await?;
        if let Some(stream) = r.stream.as_mut() {
            while let Some(c) = stream.next_chunk()? {
                let piece = rw.feed(Some(c), false).map_err(fail)?;
                sent += piece.len() as u64;
                piece_out.clear();
                chunk_into(&mut piece_out, &piece);
                tcp.write_all(&piece_out).await?;
            }
        }
        let last = rw.feed(None, true).map_err(fail)?;
        sent += last.len() as u64;
        piece_out.clear();
        chunk_into(&mut piece_out, &last);
        piece_out.extend_from_slice(b"0\r\n\r\n");
        tcp.write_all(&piece_out).await?;
        return Ok((r.status, sent));
    }
    if with_body {
        out.extend_from_slice(&r.body);
        sent = r.body.len() as u64;
    }
    // A file that `sendfile` sends next: the head goes flagged "more follows", so it
    // leaves with the file's first bytes in full segments (the client reads the head
    // and body together) instead of as a small packet of its own.
    let file_follows = with_body
        && r.stream
            .as_ref()
            .and_then(|s| s.as_single_file())
            .is_some_and(|(_, _, len)| len > 0);
    match tcp.tcp().filter(|_| file_follows) {
        Some(sock) => send_more(sock, &out).await?,
        None => tcp.write_all(&out).await?,
    }
    if let (true, Some(stream)) = (with_body, r.stream.as_mut()) {
        if let (Some((file, offset, len)), Some(sock)) = (stream.as_single_file(), tcp.tcp()) {
            sent += send_file(sock, file, offset, len).await?;
        } else {
            while let Some(chunk) = stream.next_chunk()? {
                tcp.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
        }
    }
    Ok((r.status, sent))
}

/// Writes `bytes` with `MSG_MORE`: the kernel holds a partial segment back until the
/// next send without the flag (the `sendfile` that follows; its last page pushes), as
/// nginx's `tcp_nopush` does with a `TCP_CORK` call before and after.
async fn send_more(tcp: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_io(tokio::io::Interest::WRITABLE, || {
            sock.send_with_flags(bytes, nix::libc::MSG_MORE | nix::libc::MSG_NOSIGNAL)
        }) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`: no copy through user
/// space, and the socket's readiness is awaited between calls.
async fn send_file(
    tcp: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<u64> {
    let mut off = offset as i64;
    let end = offset + len;
    while (off as u64) < end {
        let left = (end - off as u64).min(1 << 30) as usize;
        tcp.writable().await?;
        let n = match tcp.try_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(tcp, file, Some(&mut off), left)
                .map_err(std::io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            ));
        }
    }
    Ok(len)
}

fn finish_log(req: &FastRequest, ctx: &RequestContext, status: u16, read: u64, written: u64) {
    crate::lifecycle::finish(ctx, req.method(), (status, read, written), || LogParts {
        request: req,
        method: req.method(),
        path: req.path(),
        query: req.query().unwrap_or(""),
        version: req.version,
        user_agent: req.header_value("user-agent"),
        referer: req.header_value("referer"),
        status,
        bytes_read: read,
        bytes_written: written,
    });
}

async fn proxy<S: LeanIo>(
    tcp: &mut S,
    buf: &mut BytesMut,
    (head, req, ctx): (&Bytes, &mut FastRequest, &mut RequestContext),
    body_len: u64,
    client_close: bool,
    body_timeout: std::time::Duration,
) -> Next {
    let Some(p) = ctx.proxy.clone() else {
        return hand_back(buf, head.clone(), req);
    };
    let Some(up) = p.select(&*req, ctx) else {
        // Nothing available: Pingora's path answers (503, lb_try_duration, handle_errors).
        return hand_back(buf, head.clone(), req);
    };
    let Some(addr) = up.addr() else {
        return hand_back(buf, head.clone(), req);
    };
    attempt::claim(ctx, up);

    // The upstream request head, edited like the Pingora path edits it.
    edit_upstream_request(ctx, req, &p);
    let mut out = Vec::with_capacity(req.head.len() + 256);
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path().as_bytes());
    if let Some(q) = req.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Most requests carry no `Connection` field: then no field is listed in one.
    let has_connection = req.header_count("connection") > 0;
    for h in &req.headers {
        let name = req.name_bytes(h);
        if crate::request::hop_by_hop(name) || (has_connection && listed_in_connection(req, name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(req.value_bytes(h));
        out.extend_from_slice(b"\r\n");
    }
    if !p.transport.keepalive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // Body bytes already read travel with the head.
    let in_buf = (buf.len() as u64).min(body_len) as usize;
    out.extend_from_slice(&buf[..in_buf]);

    // A pooled connection the upstream closed meanwhile fails on first use: try a
    // fresh one then (the request was not processed). Only a request whose whole body
    // was already read can be sent twice.
    let mut left = body_len - in_buf as u64;
    let mut consumed = false;
    let mut attempt = 0;
    let mut interim = Vec::new();
    let (mut upc, resp_head_len) = loop {
        attempt += 1;
        let dial_start = Instant::now();
        let (mut upc, reused) = match pool::checkout(addr, &p.transport, ctx.proxy_client()).await {
            Ok(c) => {
                if !c.1 {
                    if let Some(u) = &ctx.attempt.upstream {
                        u.record_connect(dial_start.elapsed());
                    }
                }
                c
            }
            Err(_) if !consumed => {
                // Nothing was sent: Pingora retries, marks health and answers.
                attempt::release(ctx);
                return hand_back(buf, head.clone(), req);
            }
            Err(_) => return Box::pin(upstream_failed(tcp, req, ctx, 502)).await,
        };
        if !consumed {
            buf.advance(in_buf);
            consumed = true;
        }
        let sent = upc.stream.write_all(&out).await;
        ctx.attempt.sent = Some(Instant::now());
        let retry = reused && attempt == 1 && left == 0;
        if sent.is_ok() {
            // The rest of the body goes before the answer is awaited: the upstream
            // may well want all of it first.
            while left > 0 && !buf.is_empty() {
                let take = (buf.len() as u64).min(left) as usize;
                if upc.stream.write_all(&buf[..take]).await.is_err() {
                    return Box::pin(upstream_failed(tcp, req, ctx, 502)).await;
                }
                buf.advance(take);
                left -= take as u64;
            }
            // The rest in bulk reads through the upstream connection's buffer.
            while left > 0 {
                let scratch = upc.bulk_scratch();
                // A client that stops sending its body is dropped after `read_body`.
                let read = tokio::time::timeout(body_timeout, tcp.read_buf(scratch)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return Next::Drop;
                }
                let take = (scratch.len() as u64).min(left) as usize;
                // What follows the body (a pipelined request) stays the client's.
                buf.extend_from_slice(&scratch[take..]);
                if upc.stream.write_all(&upc.buf[..take]).await.is_err() {
                    return Box::pin(upstream_failed(tcp, req, ctx, 502)).await;
                }
                upc.buf.clear();
                left -= take as u64;
            }
            interim.clear();
            match pool::read_response_head(&mut upc, &p.transport, &mut interim).await {
                Ok(Some(n)) => break (upc, n),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Box::pin(upstream_failed(tcp, req, ctx, 504)).await;
                }
                _ if retry => continue,
                _ => {}
            }
        } else if retry {
            continue;
        }
        // The upstream failed after receiving the request.
        return Box::pin(upstream_failed(tcp, req, ctx, 502)).await;
    };

    // Interim answers (`103 Early Hints`...) go ahead of the final one, as sent.
    for h in &interim {
        if tcp.write_all(&crate::http1::interim_head(h)).await.is_err() {
            return Next::Drop;
        }
    }
    // The response head.
    let rhead = upc.buf.split_to(resp_head_len).freeze();
    let mut shown = None;
    if crate::lifecycle::acts_on_response(&p, ctx) {
        match Box::pin(handle_lean_response(tcp, &rhead, req, ctx, &p)).await {
            Ok(status) => shown = status,
            Err(next) => return next,
        }
    }
    let Some(ResponseHead {
        status,
        framing,
        upstream_keepalive,
        close,
        mut out,
        injection,
    }) = response_head(&rhead, req, ctx, &p, client_close, shown)
    else {
        return Box::pin(upstream_failed(tcp, req, ctx, 502)).await;
    };

    // Body: whatever came with the head first, then streamed.
    let relayed = match injection {
        // Boxed: the rewriting relay's state stays out of every connection's future.
        Some((inj, chunked)) => {
            Box::pin(relay_rewritten(tcp, &mut upc, framing, out, *inj, chunked)).await
        }
        None => relay_body(tcp, &mut upc, framing, &mut out).await,
    };
    let sent = match relayed {
        Ok(n) => n,
        Err(Failure::Client) => {
            finish_log(req, ctx, status, body_len, 0);
            return Next::Drop;
        }
        Err(Failure::Upstream) => {
            // Headers may already be out: the client sees a truncated response.
            ctx.attempt.error = Some("upstream closed mid-response".into());
            finish_log(req, ctx, status, body_len, 0);
            return Next::Drop;
        }
    };
    if upstream_keepalive && p.transport.keepalive && upc.reusable {
        pool::checkin(addr, upc, &p.transport);
    }
    finish_log(req, ctx, status, body_len, sent);
    if close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// The client's response head, built from the upstream's.
struct ResponseHead {
    status: u16,
    framing: Framing,
    upstream_keepalive: bool,
    close: bool,
    out: Vec<u8>,
    /// The body is rewritten (analytics, `encode`); `chunked`: sent to the client chunked.
    /// (Boxed: a rewrite is rare and large, and this head lives in the connection's future.)
    injection: Option<(Box<crate::rewrite::Rewrite>, bool)>,
}

/// Parses the upstream response head and builds the client's, with the same header
/// edits as the Pingora path; `None` when the upstream sent something unusable.
fn response_head(
    rhead: &Bytes,
    req: &FastRequest,
    ctx: &mut RequestContext,
    p: &crate::upstream::ProxyHandler,
    client_close: bool,
    shown: Option<u16>,
) -> Option<ResponseHead> {
    let mut slots = crate::http1::header_slots();
    let (parsed, resp) = crate::http1::parse_response(rhead, &mut slots);
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = resp.code.unwrap_or(502);
    attempt::passive_check(ctx, status);
    let upstream_keepalive = upstream_keepalive(&resp);
    let head_request = req.method() == "HEAD";
    let framing = upstream_framing(&resp, status, head_request)?;
    if (100..200).contains(&status) {
        // Interim responses are rare from plain upstreams; treated as a failure here.
        return None;
    }
    let close = client_close || matches!(framing, Framing::UntilClose);
    // `replace_status`/`copy_response`: what the client is told (the body's framing stays
    // the upstream's).
    let status = shown.unwrap_or(status);

    // The response head for the client, with the same edits as the Pingora path.
    let mut out = Vec::with_capacity(rhead.len() + 128);
    status_line(&mut out, status);
    // A page-view candidate's head is examined (and maybe edited) by analytics, and
    // `encode` looks at every response of its routes.
    let page = (ctx.resp.page.is_some() || ctx.resp.encode.is_some()) && !head_request;
    let edits = !p.header_down.is_empty()
        || !ctx.resp.immediate.is_empty()
        || !ctx.resp.deferred.is_empty()
        || ctx.resp.set_cookie.is_some()
        || page;
    let mut injection = None;
    let keep_te = matches!(framing, Framing::Chunked);
    // With chunked framing a Content-Length is meaningless and a smuggling hazard
    // (RFC 9112 §6.3): it never reaches the client.
    let forward = |name: &str| {
        !(crate::request::hop_by_hop(name.as_bytes())
            && !(keep_te && name.eq_ignore_ascii_case("transfer-encoding")))
            && !name.eq_ignore_ascii_case("x-request-id")
            && !(keep_te && name.eq_ignore_ascii_case("content-length"))
    };
    if edits {
        let mut fields: Vec<(compact_str::CompactString, String)> = resp
            .headers
            .iter()
            .filter(|h| forward(h.name))
            .map(|h| (h.name.into(), crate::http1::field_text(h.value)))
            .collect();
        crate::pipeline::edit_proxied_fields(p, req, ctx, &mut fields);
        if page && !matches!(framing, Framing::None) {
            let had_length = matches!(framing, Framing::Length(_));
            if let Some(inj) = crate::rewrite::begin(ctx, status, &mut fields) {
                // A length that could not be kept: the client gets chunked framing.
                let chunked = had_length
                    && crate::pipeline::ResponseHead::get(&fields, "content-length").is_none();
                if chunked {
                    fields.push(("transfer-encoding".into(), "chunked".into()));
                }
                injection = Some((
                    Box::new(inj),
                    chunked || matches!(framing, Framing::Chunked),
                ));
            }
        }
        for (k, v) in &fields {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    } else {
        for h in resp.headers.iter() {
            if forward(h.name) {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    push_request_id(&mut out, ctx);
    push_alt_svc(&mut out, ctx);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ctx.log.capture_response(|| crate::http1::head_fields(&out));
    Some(ResponseHead {
        status,
        framing,
        upstream_keepalive,
        close,
        out,
        injection,
    })
}

enum Failure {
    Client,
    Upstream,
}

/// Writes a piece of a rewritten body, as a chunk when the client's framing is chunked.
async fn write_piece<S: LeanIo>(
    tcp: &mut S,
    out: &mut Vec<u8>,
    piece: &[u8],
    chunked: bool,
) -> Result<(), Failure> {
    if chunked {
        chunk_into(out, piece);
    } else {
        out.extend_from_slice(piece);
    }
    if !out.is_empty() {
        tcp.write_all(out).await.map_err(|_| Failure::Client)?;
        out.clear();
    }
    Ok(())
}

/// Streams a response body that analytics rewrites: the upstream's framing is read
/// (chunks decoded), each piece goes through the injection, and the client gets the
/// result with a corrected length or chunked framing.
async fn relay_rewritten<S: LeanIo>(
    tcp: &mut S,
    upc: &mut UpstreamConn,
    framing: Framing,
    head_out: Vec<u8>,
    mut inj: crate::rewrite::Rewrite,
    chunked: bool,
) -> Result<u64, Failure> {
    let mut out = head_out;
    let mut sent: u64 = 0;
    let mut data = Vec::with_capacity(16 * 1024);
    let mut dec = ChunkScanner::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        if upc.buf.is_empty() && left > 0 {
            let n = upc.read_more_bulk().await.map_err(|_| Failure::Upstream)?;
            if n == 0 {
                if matches!(framing, Framing::UntilClose) {
                    break;
                }
                return Err(Failure::Upstream);
            }
        }
        data.clear();
        let done = match framing {
            Framing::Chunked => {
                let (used, done) = dec
                    .scan_data(&upc.buf, Some(&mut data))
                    .map_err(|_| Failure::Upstream)?;
                upc.buf.advance(used);
                done
            }
            Framing::Length(_) | Framing::UntilClose => {
                let take = (upc.buf.len() as u64).min(left) as usize;
                data.extend_from_slice(&upc.buf[..take]);
                upc.buf.advance(take);
                if let Framing::Length(_) = framing {
                    left -= take as u64;
                }
                left == 0
            }
            Framing::None => true,
        };
        let piece = inj
            .feed(Some(Bytes::copy_from_slice(&data)), false)
            .map_err(|_| Failure::Upstream)?;
        sent += piece.len() as u64;
        write_piece(tcp, &mut out, &piece, chunked).await?;
        if done {
            break;
        }
    }
    let last = inj.feed(None, true).map_err(|_| Failure::Upstream)?;
    sent += last.len() as u64;
    write_piece(tcp, &mut out, &last, chunked).await?;
    if chunked {
        tcp.write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| Failure::Client)?;
    }
    upc.reusable = !matches!(framing, Framing::UntilClose) && upc.buf.is_empty();
    Ok(sent)
}

/// Streams the response body after `head_out` (the head bytes for the client).
async fn relay_body<S: LeanIo>(
    tcp: &mut S,
    upc: &mut UpstreamConn,
    framing: Framing,
    head_out: &mut Vec<u8>,
) -> Result<u64, Failure> {
    let mut sent: u64 = 0;
    match framing {
        Framing::None => {
            tcp.write_all(head_out).await.map_err(|_| Failure::Client)?;
            upc.reusable = upc.buf.is_empty();
        }
        Framing::Length(mut left) => {
            // Small bodies go out with the head in one write.
            let first = (upc.buf.len() as u64).min(left) as usize;
            head_out.extend_from_slice(&upc.buf[..first]);
            upc.buf.advance(first);
            left -= first as u64;
            sent += first as u64;
            tcp.write_all(head_out).await.map_err(|_| Failure::Client)?;
            while left > 0 {
                upc.buf.clear();
                let read = if left > 4096 {
                    upc.read_more_bulk().await
                } else {
                    upc.read_more().await
                };
                let n = read.map_err(|_| Failure::Upstream)?;
                if n == 0 {
                    return Err(Failure::Upstream);
                }
                let take = (upc.buf.len() as u64).min(left) as usize;
                tcp.write_all(&upc.buf[..take])
                    .await
                    .map_err(|_| Failure::Client)?;
                upc.buf.advance(take);
                left -= take as u64;
                sent += take as u64;
            }
            upc.reusable = upc.buf.is_empty();
        }
        Framing::Chunked => {
            tcp.write_all(head_out).await.map_err(|_| Failure::Client)?;
            let mut dec = ChunkScanner::default();
            loop {
                if upc.buf.is_empty() {
                    let n = upc.read_more_bulk().await.map_err(|_| Failure::Upstream)?;
                    if n == 0 {
                        return Err(Failure::Upstream);
                    }
                }
                let (used, done) = dec.scan(&upc.buf).map_err(|_| Failure::Upstream)?;
                tcp.write_all(&upc.buf[..used])
                    .await
                    .map_err(|_| Failure::Client)?;
                sent += used as u64;
                upc.buf.advance(used);
                if done {
                    break;
                }
            }
            upc.reusable = upc.buf.is_empty();
        }
        Framing::UntilClose => {
            let first = upc.buf.len();
            head_out.extend_from_slice(&upc.buf);
            upc.buf.clear();
            sent += first as u64;
            tcp.write_all(head_out).await.map_err(|_| Failure::Client)?;
            loop {
                let n = upc.read_more_bulk().await.map_err(|_| Failure::Upstream)?;
                if n == 0 {
                    break;
                }
                tcp.write_all(&upc.buf).await.map_err(|_| Failure::Client)?;
                sent += n as u64;
                upc.buf.clear();
            }
            upc.reusable = false;
        }
    }
    Ok(sent)
}

/// An upstream head's fields as owned pairs (for response matchers).
fn owned_fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.name.to_string(), crate::http1::field_text(h.value)))
        .collect()
}

/// `replace_status`, `handle_response` and `intercept` on the lean path. `Ok`: relay
/// the upstream's response, with this status when one is given; `Err`: the routes
/// answered (or aborted) instead, and the upstream connection, with its unread body, is
/// closed.
async fn handle_lean_response<S: LeanIo>(
    tcp: &mut S,
    rhead: &Bytes,
    req: &mut FastRequest,
    ctx: &mut RequestContext,
    p: &crate::upstream::ProxyHandler,
) -> Result<Option<u16>, Next> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let (Ok(_), Some(status)) = (resp.parse(rhead), resp.code) else {
        return Ok(None);
    };
    let fields = owned_fields(resp.headers);
    let reply = match crate::lifecycle::upstream_response(p, status, fields, req, ctx) {
        crate::lifecycle::ResponseHandled::Relay(to) => return Ok(Some(to)),
        crate::lifecycle::ResponseHandled::Abort => {
            attempt::passive_check(ctx, status);
            attempt::release(ctx);
            return Err(Next::Drop);
        }
        crate::lifecycle::ResponseHandled::Answer(reply) => reply,
    };
    attempt::passive_check(ctx, status);
    attempt::release(ctx);
    Err(match write_reply(tcp, req, ctx, reply, true).await {
        Ok((status, sent)) => {
            finish_log(req, ctx, status, 0, sent);
            Next::Close
        }
        Err(_) => Next::Drop,
    })
}

/// The upstream failed after the request was sent: 502, or 504 for a timeout (through
/// `handle_errors` when the site has it), like the Pingora path.
async fn upstream_failed<S: LeanIo>(
    tcp: &mut S,
    req: &mut FastRequest,
    ctx: &mut RequestContext,
    code: u16,
) -> Next {
    attempt::count_failure(ctx);
    ctx.attempt.error = Some(if code == 504 {
        "upstream response timed out".into()
    } else {
        "upstream failed before a complete response head".into()
    });
    let Some(reply) = crate::lifecycle::failure_reply(code, req, ctx) else {
        return Next::Drop;
    };
    match write_reply(tcp, req, ctx, reply, true).await {
        Ok((status, sent)) => {
            finish_log(req, ctx, status, 0, sent);
            Next::Close
        }
        Err(_) => Next::Drop,
    }
}

#[cfg(test)]
mod size_tests {
    /// A connection's future lives as long as the connection: keep it small.
    #[test]
    fn connection_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut buf = bytes::BytesMut::new();
            let cx = super::FastCx {
                store: std::sync::Arc::new(crate::route_table::RouteStore::new(
                    crate::route_table::RouteTable::default(),
                )),
                fallback: std::sync::Arc::new(|_, _, _| Box::pin(async { None })),
                h2c: None,
                hand_over_all: false,
                shutdown: tokio::sync::watch::channel(false).1,
            };
            let mut tcp = client;
            let mut shutdown = cx.shutdown.clone();
            let settings = super::ConnSettings {
                timeouts: crate::route_table::PortTimeouts::default(),
                max_head: 64 * 1024,
            };
            let conn = crate::context::ConnInfo::default();
            let f = super::serve_one(&mut tcp, &mut buf, &conn, &cx, &mut shutdown, &settings);
            let size = std::mem::size_of_val(&f);
            eprintln!("serve_one future: {size} bytes");
            // 3.6 KiB before the rewriting relay and failure answers were boxed.
            assert!(size < 3 * 1024, "serve_one future is {size} bytes");
        });
    }
}
