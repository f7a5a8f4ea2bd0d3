//! The FastCGI transport (`php_fastcgi`, `reverse_proxy { transport fastcgi }`).
//!
//! A request becomes CGI parameters (Caddy's set: `SCRIPT_FILENAME`, `PATH_INFO`,
//! `DOCUMENT_ROOT`, `HTTPS`, headers as `HTTP_*`, ...), its body is streamed as STDIN
//! records, and the responder's STDOUT is parsed as a CGI response whose body is
//! streamed back as it arrives. Connections are kept (`FCGI_KEEP_CONN`) in a
//! per-thread pool per upstream; upstreams are chosen by the same load balancer as
//! `reverse_proxy`, connection failures count for passive health and are retried on
//! another upstream within `lb_retries`.
//!
//! The exchange is written against the lifecycle's
//! [`crate::lifecycle::downstream::Downstream`], the client side of one
//! request, so every front-end drives the same code: upstream attempts go through
//! [`crate::lifecycle::attempt`] (`lb_retries`, `lb_try_duration`, `lb_try_interval`,
//! in-flight counts for `least_conn`), and the request body is held to
//! `request_body { max_size }`.

pub mod proto;

use crate::context::RequestContext;
use crate::lifecycle::attempt;
use crate::lifecycle::downstream::{body_deadline, recv_chunk, send_body, Downstream};
use crate::request::HttpRequest;
use crate::template::render;
use crate::upstream::{ProxyHandler, UpstreamState};
use bytes::Bytes;
use compact_str::CompactString;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Compiled `transport fastcgi` settings.
#[derive(Debug)]
pub struct FastCgiOpts {
    pub root: Option<dwaar_config::placeholder::Template>,
    pub split: Vec<String>,
    pub env: Vec<(String, dwaar_config::placeholder::Template)>,
    pub resolve_root_symlink: bool,
    pub capture_stderr: bool,
}

impl FastCgiOpts {
    pub fn compile(f: &dwaar_config::model::FastCgi) -> FastCgiOpts {
        FastCgiOpts {
            root: f.root.clone(),
            split: f.split_path.clone(),
            env: f
                .env
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            resolve_root_symlink: f.resolve_root_symlink,
            capture_stderr: f.capture_stderr,
        }
    }
}

/// What happens to a FastCGI response on its way to the client, whatever the
/// front-end: `header_down` and the site's `header` edits, then analytics injection
/// and `encode` through a [`Rewrite`](crate::rewrite::Rewrite). Taken from the context
/// before the exchange, given back after.
struct Shaping {
    /// `header_down`, then the site's immediate and deferred `header` edits.
    edits: [Vec<crate::context::HeaderEdit>; 3],
    analytics: Option<Arc<crate::analytics::SiteAnalytics>>,
    page: Option<Box<crate::analytics::PageFacts>>,
    encode: Option<crate::encode::Negotiated>,
    rewrite: Option<crate::rewrite::Rewrite>,
}

impl std::fmt::Debug for Shaping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shaping")
    }
}

impl Shaping {
    fn take(p: &ProxyHandler, req: &dyn HttpRequest, ctx: &mut RequestContext) -> Shaping {
        let mut down = Vec::with_capacity(p.header_down.len());
        crate::pipeline::render_rules(&p.header_down, req, ctx, &mut down);
        Shaping {
            edits: [down, ctx.resp.immediate.clone(), ctx.resp.deferred.clone()],
            analytics: ctx.site.as_ref().and_then(|s| s.analytics.clone()),
            page: ctx.resp.page.take(),
            encode: ctx.resp.encode.clone(),
            rewrite: None,
        }
    }

    /// Returns the page-view facts (whether the response counted as a page view).
    fn give_back(&mut self, ctx: &mut RequestContext) {
        ctx.resp.page = self.page.take();
    }

    /// Edits the response fields and decides on a rewrite (a HEAD answer gets the same
    /// fields and no body).
    fn head(&mut self, status: u16, fields: &mut Vec<(CompactString, String)>, head_only: bool) {
        crate::pipeline::apply_edits(&self.edits[0], fields);
        crate::pipeline::apply_immediate_to_proxied(&self.edits[1], fields);
        crate::pipeline::apply_edits(&self.edits[2], fields);
        if self.page.is_some() || self.encode.is_some() {
            self.rewrite = crate::rewrite::begin_parts(
                self.analytics.as_deref(),
                self.page.as_deref_mut(),
                self.encode.as_ref(),
                status,
                fields,
            )
            .filter(|_| !head_only);
        }
    }

    /// A piece of the body as it goes out (empty: nothing to send yet).
    fn body(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        match self.rewrite.as_mut() {
            Some(rw) => rw.feed(Some(chunk), false),
            None => Ok(chunk),
        }
    }

    /// What is left to send at the end of the body.
    fn end(&mut self) -> std::io::Result<Bytes> {
        match self.rewrite.as_mut() {
            Some(rw) => rw.feed(None, true),
            None => Ok(Bytes::new()),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    idle_since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<String, Vec<Conn>>> = RefCell::new(HashMap::new());
    /// This thread's sweeper of idle connections is running.
    static SWEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

const POOL_MAX_PER_UPSTREAM: usize = 32;
/// A kept FastCGI connection occupies one of the responder's workers (a php-fpm child)
/// for as long as it is open, and responders usually have few (Debian's php-fpm pool:
/// 5). So idle connections are closed after this long (or the transport's keep-alive,
/// if shorter): busy sites reuse them, and idle threads and processes do not starve the
/// others of workers.
const IDLE_CLOSE: Duration = Duration::from_secs(2);
/// Largest CGI response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest request body of unknown length (HTTP/1 chunked, HTTP/2 or HTTP/3
/// without `Content-Length`) read ahead to learn its length: CGI needs `CONTENT_LENGTH`
/// before the body. Larger ones are refused (413) unless `request_body` says less.
const MAX_UNSIZED_BODY: u64 = 10 * 1024 * 1024;
/// STDERR kept for the log.
const MAX_STDERR: usize = 16 * 1024;

fn checkout(key: &str, idle: Duration) -> Option<Box<dyn Io>> {
    let idle = idle.min(IDLE_CLOSE);
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < idle {
                return Some(c.io);
            }
        }
        None
    })
}

/// Closes this thread's connections idle for [`IDLE_CLOSE`], every half of it, until
/// the pool is empty (one task per thread, started by the first connection kept).
fn sweep_idle() {
    if SWEEPING.with(|s| s.replace(true)) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        SWEEPING.with(|s| s.set(false));
        return;
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(IDLE_CLOSE / 2).await;
            let empty = POOL.with(|p| {
                let mut p = p.borrow_mut();
                p.retain(|_, list| {
                    list.retain(|c| c.idle_since.elapsed() < IDLE_CLOSE);
                    !list.is_empty()
                });
                p.is_empty()
            });
            if empty {
                SWEEPING.with(|s| s.set(false));
                return;
            }
        }
    });
}

fn checkin(key: &str, io: Box<dyn Io>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry(key.to_string()).or_default();
        if list.len() < POOL_MAX_PER_UPSTREAM {
            list.push(Conn {
                io,
                idle_since: Instant::now(),
            });
        }
    });
    sweep_idle();
}

async fn dial(up: &UpstreamState, timeout: Duration) -> std::io::Result<Box<dyn Io>> {
    let connect = async {
        if up.unix {
            let s = tokio::net::UnixStream::connect(&up.dial).await?;
            Ok::<Box<dyn Io>, std::io::Error>(Box::new(s))
        } else {
            let addr = match up.addr() {
                Some(a) => a,
                None => tokio::net::lookup_host(&up.dial)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?,
            };
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as Box<dyn Io>)
        }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timeout"))?
}

/// How the exchange ended, for the access log and the caller.
#[derive(Debug, Default)]
pub struct Exchanged {
    pub status: u16,
    pub body_bytes: u64,
    pub request_bytes: u64,
}

/// The client side of an exchange: the front-end's downstream, the response shaping,
/// and what went through.
struct Client<'d, D: Downstream> {
    down: &'d mut D,
    /// A body of unknown length, read ahead; handed out by `read_body`.
    ahead: Option<Bytes>,
    shape: Shaping,
    head_only: bool,
    max_body: Option<u64>,
    request_bytes: u64,
    body_bytes: u64,
    deadline: tokio::time::Instant,
}

impl<D: Downstream> Client<'_, D> {
    async fn read_body(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.ahead.is_some() {
            return Ok(self.ahead.take().filter(|b| !b.is_empty()));
        }
        match recv_chunk(self.down, self.deadline).await {
            Ok(Some(b)) => {
                self.request_bytes += b.len() as u64;
                if self.max_body.is_some_and(|max| self.request_bytes > max) {
                    return Err(Failure::TooLarge);
                }
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(()) => Err(Failure::Client),
        }
    }

    /// Reads a body of unknown length ahead (within `max_body` or [`MAX_UNSIZED_BODY`]);
    /// returns its length.
    async fn read_ahead(&mut self) -> Result<u64, Failure> {
        let limit = self
            .max_body
            .unwrap_or(MAX_UNSIZED_BODY)
            .min(MAX_UNSIZED_BODY);
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = self.read_body().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let len = body.len() as u64;
        self.ahead = Some(body.freeze());
        Ok(len)
    }

    async fn write_head(
        &mut self,
        status: u16,
        mut fields: Vec<(CompactString, String)>,
        ctx: &RequestContext,
    ) -> Result<(), Failure> {
        self.shape.head(status, &mut fields, self.head_only);
        ctx.log.capture_response(|| fields.clone());
        self.down
            .send_head(status, fields, ctx, false)
            .await
            .map_err(|_| Failure::After("the client went away".into()))
    }

    async fn write_body(&mut self, chunk: Bytes) -> Result<(), Failure> {
        if self.head_only {
            return Ok(());
        }
        let fail = |e: String| Failure::After(e);
        let chunk = self.shape.body(chunk).map_err(|e| fail(e.to_string()))?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.body_bytes += chunk.len() as u64;
        send_body(self.down, chunk)
            .await
            .map_err(|_| fail("the client stopped reading".into()))
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        let fail = |e: String| Failure::After(e);
        let last = self.shape.end().map_err(|e| fail(e.to_string()))?;
        if !last.is_empty() && !self.head_only {
            self.body_bytes += last.len() as u64;
            let _ = send_body(self.down, last).await;
        }
        self.down
            .finish()
            .await
            .map_err(|_| fail("the client went away".into()))
    }
}

/// Runs the request through `proxy`'s FastCGI upstreams, writing the answer to `down`.
/// Errors before the response head was sent are returned as a status for the caller to
/// answer (413, 502, 503, 504) with the request body bytes read so far.
pub async fn run<D: Downstream>(
    proxy: &ProxyHandler,
    opts: &FastCgiOpts,
    req: &(dyn HttpRequest + Sync),
    ctx: &mut RequestContext,
    down: &mut D,
    head_only: bool,
) -> Result<Exchanged, (u16, u64)> {
    let mut client = Client {
        down,
        ahead: None,
        shape: Shaping::take(proxy, req, ctx),
        head_only,
        max_body: ctx.max_body,
        request_bytes: 0,
        body_bytes: 0,
        deadline: body_deadline(),
    };
    let length = match req.header("content-length") {
        Some(_) => None,
        None => match client.read_ahead().await {
            Ok(n) => Some(n),
            Err(f) => {
                client.shape.give_back(ctx);
                let code = if matches!(f, Failure::TooLarge) {
                    413
                } else {
                    400
                };
                return Err((code, client.request_bytes));
            }
        },
    };
    let params = params(opts, req, ctx, length);
    let encoded = proto::pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let result = attempts(proxy, &encoded, opts, req, ctx, &mut client).await;
    client.shape.give_back(ctx);
    attempt::release(ctx);
    match result {
        Ok(status) => Ok(Exchanged {
            status,
            body_bytes: client.body_bytes,
            request_bytes: client.request_bytes,
        }),
        Err(code) => Err((code, client.request_bytes)),
    }
}

/// The attempt loop: an upstream by the load balancer, a kept or new connection, the
/// exchange; connection failures are retried like every other transport's.
async fn attempts<D: Downstream>(
    proxy: &ProxyHandler,
    encoded: &[u8],
    opts: &FastCgiOpts,
    req: &(dyn HttpRequest + Sync),
    ctx: &mut RequestContext,
    client: &mut Client<'_, D>,
) -> Result<u16, u16> {
    loop {
        let Some(up) = attempt::pick(proxy, req, ctx).await else {
            return Err(503);
        };
        let key = up.dial.clone();
        let idle = proxy.transport.idle.unwrap_or(Duration::from_secs(120));
        let reused = if proxy.transport.keepalive {
            checkout(&key, idle)
        } else {
            None
        };
        let fresh = reused.is_none();
        let io = match reused {
            Some(io) => io,
            None => {
                let dial_start = Instant::now();
                match dial(&up, proxy.transport.dial).await {
                    Ok(io) => {
                        up.record_connect(dial_start.elapsed());
                        io
                    }
                    Err(e) => {
                        let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                        ctx.attempt.error = Some(CompactString::new(e.to_string()));
                        if attempt::connect_failed(proxy, ctx, timed_out) {
                            continue;
                        }
                        return Err(if timed_out { 504 } else { 502 });
                    }
                }
            }
        };
        ctx.attempt.sent = Some(Instant::now());
        match exchange(io, encoded, proxy, opts, ctx, client).await {
            Ok((status, io)) => {
                if let Some(io) = io.filter(|_| proxy.transport.keepalive) {
                    checkin(&key, io);
                }
                return Ok(status);
            }
            // A kept connection the responder had closed: try once more on a new one
            // (it never saw the request, so this is not an attempt of its own).
            Err(Failure::Stale) if !fresh && client.request_bytes == 0 => {
                ctx.attempt.count -= 1;
                ctx.attempt.tried.pop();
                attempt::release(ctx);
                continue;
            }
            Err(Failure::Stale) => {
                attempt::count_failure(ctx);
                return Err(502);
            }
            Err(Failure::Before(e)) => {
                attempt::count_failure(ctx);
                ctx.attempt.error = Some(CompactString::new(e));
                return Err(502);
            }
            Err(Failure::TooLarge) => return Err(413),
            Err(Failure::Client) => return Ok(0),
            Err(Failure::Timeout) => {
                attempt::count_failure(ctx);
                ctx.attempt.failure = crate::context::UpstreamFailure::Timeout;
                return Err(504);
            }
            // The head was sent: nothing can be answered any more.
            Err(Failure::After(e)) => {
                ctx.attempt.error = Some(CompactString::new(e));
                return Ok(0);
            }
        }
    }
}

enum Failure {
    /// Nothing was read from a reused connection: it was closed while idle.
    Stale,
    /// Failed before the response head went out.
    Before(String),
    Timeout,
    /// Failed after the head went out.
    After(String),
    /// The request body outgrew `request_body { max_size }`.
    TooLarge,
    /// The client stopped sending its body (or left).
    Client,
}

async fn with_timeout<T>(
    t: Option<Duration>,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match t {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))?,
        None => f.await,
    }
}

async fn exchange<D: Downstream>(
    mut io: Box<dyn Io>,
    params: &[u8],
    proxy: &ProxyHandler,
    opts: &FastCgiOpts,
    ctx: &mut RequestContext,
    down: &mut Client<'_, D>,
) -> Result<(u16, Option<Box<dyn Io>>), Failure> {
    let (read_t, write_t) = (proxy.transport.read, proxy.transport.write);
    let mut out = Vec::with_capacity(params.len() + 64);
    proto::begin_request(&mut out);
    proto::stream(&mut out, proto::PARAMS, params);
    proto::record(&mut out, proto::PARAMS, &[]);
    // The body: read from the client, written as STDIN records.
    loop {
        let Some(chunk) = down.read_body().await? else {
            break;
        };
        proto::stream(&mut out, proto::STDIN, &chunk);
        if out.len() >= 64 * 1024 {
            with_timeout(write_t, io.write_all(&out))
                .await
                .map_err(|e| Failure::Before(e.to_string()))?;
            out.clear();
        }
    }
    proto::record(&mut out, proto::STDIN, &[]);
    with_timeout(write_t, io.write_all(&out))
        .await
        .map_err(|e| Failure::Before(e.to_string()))?;

    let mut head: Vec<u8> = Vec::new();
    let mut head_sent = false;
    let mut status = 0u16;
    let mut stderr: Vec<u8> = Vec::new();
    let mut got_any = false;
    let mut content = vec![0u8; 8192];
    let fail = |sent: bool, e: String| {
        if sent {
            Failure::After(e)
        } else {
            Failure::Before(e)
        }
    };
    let keep = loop {
        let mut h = [0u8; 8];
        match with_timeout(read_t, io.read_exact(&mut h)).await {
            Ok(_) => {}
            Err(e) if !got_any && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Failure::Stale)
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !head_sent => {
                return Err(Failure::Timeout)
            }
            Err(e) => return Err(fail(head_sent, format!("reading from the responder: {e}"))),
        }
        got_any = true;
        let Some(hdr) = proto::parse_header(&h) else {
            return Err(fail(head_sent, "not a FastCGI record".into()));
        };
        let total = hdr.content_len + hdr.padding;
        if content.len() < total {
            content.resize(total, 0);
        }
        with_timeout(read_t, io.read_exact(&mut content[..total]))
            .await
            .map_err(|e| fail(head_sent, format!("reading from the responder: {e}")))?;
        let data = &content[..hdr.content_len];
        if hdr.request_id != proto::REQUEST_ID {
            continue;
        }
        match hdr.kind {
            proto::STDOUT if !head_sent => {
                head.extend_from_slice(data);
                if let Some((end, body_start)) = head_end(&head) {
                    let (st, headers, _) = parse_cgi_head(&head[..end]).map_err(Failure::Before)?;
                    status = st;
                    down.write_head(status, headers, ctx).await?;
                    head_sent = true;
                    let rest = Bytes::copy_from_slice(&head[body_start..]);
                    head = Vec::new();
                    if !rest.is_empty() {
                        down.write_body(rest).await?;
                    }
                } else if head.len() > MAX_HEAD {
                    return Err(Failure::Before(
                        "the responder's header is too large".into(),
                    ));
                }
            }
            proto::STDOUT if !data.is_empty() => {
                down.write_body(Bytes::copy_from_slice(data)).await?;
            }
            proto::STDERR => {
                let room = MAX_STDERR.saturating_sub(stderr.len());
                stderr.extend_from_slice(&data[..data.len().min(room)]);
            }
            proto::END_REQUEST => {
                // protocolStatus 0: request complete; the connection stays usable.
                break data.get(4).copied() == Some(0);
            }
            _ => {}
        }
    };
    if !head_sent {
        // No blank line: whatever came is the head of an empty response.
        let (st, mut headers, _) = parse_cgi_head(&head).map_err(Failure::Before)?;
        status = st;
        crate::pipeline::ResponseHead::set(&mut headers, "content-length", "0");
        down.write_head(status, headers, ctx).await?;
    }
    down.finish().await?;
    if !stderr.is_empty() && opts.capture_stderr {
        let text = String::from_utf8_lossy(&stderr);
        if status >= 400 {
            tracing::error!(upstream = %ctx.attempt.upstream.as_ref().map(|u| u.dial.as_str()).unwrap_or(""), "fastcgi stderr: {}", text.trim_end());
        } else {
            tracing::warn!(upstream = %ctx.attempt.upstream.as_ref().map(|u| u.dial.as_str()).unwrap_or(""), "fastcgi stderr: {}", text.trim_end());
        }
    }
    Ok((status, keep.then_some(io)))
}

/// Where the CGI head ends: (end of headers, start of body).
pub fn head_end(b: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, i + 4));
    }
    b.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2))
}

/// A CGI response head: status, fields, `Content-Length`.
pub type Head = (u16, Vec<(CompactString, String)>, Option<u64>);

/// Parses CGI response headers (RFC 3875 §6): `Status`, `Location`, the rest as HTTP.
pub fn parse_cgi_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut status = None;
    let mut headers: Vec<(CompactString, String)> = Vec::new();
    let mut length = None;
    let mut location = false;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!(
                "malformed header line from the responder: {line:?}"
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.bytes().any(|b| !(b.is_ascii_graphic()) || b == b':') {
            return Err(format!("invalid header name from the responder: {k:?}"));
        }
        let lower = k.to_ascii_lowercase();
        match lower.as_str() {
            "status" => {
                status = v.get(..3).and_then(|c| c.parse::<u16>().ok());
                continue;
            }
            "content-length" => length = v.parse::<u64>().ok(),
            "location" => location = true,
            // Hop-by-hop: framing is Dwaar's business.
            "transfer-encoding" | "connection" | "keep-alive" => continue,
            _ => {}
        }
        headers.push((
            CompactString::new(&lower),
            crate::request::sanitize_header_value(v).into_owned(),
        ));
    }
    let status = status
        .filter(|s| (100..1000).contains(s))
        .unwrap_or(if location { 302 } else { 200 });
    Ok((status, headers, length))
}

/// The CGI parameters for a request (Caddy's set). `body_len`: the length of a body
/// that came without `Content-Length` (read ahead).
pub fn params(
    opts: &FastCgiOpts,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    body_len: Option<u64>,
) -> Vec<(String, String)> {
    let root = crate::files::root_for(opts.root.as_ref(), req, ctx);
    let root = if opts.resolve_root_symlink {
        std::fs::canonicalize(&root).unwrap_or(root)
    } else {
        std::path::absolute(&root).unwrap_or(root)
    };
    let root = root.to_string_lossy().trim_end_matches('/').to_string();
    let path = crate::template::percent_decode(req.path()).into_owned();
    // SCRIPT_NAME is the path up to and including the split delimiter; the rest is
    // PATH_INFO (or what the file matcher left over).
    let (script_name, mut path_info) = if opts.split.is_empty() {
        (String::new(), path.clone())
    } else {
        let (s, rest) = crate::files::split_path(&path, &opts.split);
        (s.to_string(), rest.to_string())
    };
    if path_info.is_empty() {
        if let Some(r) = ctx.var("file_match.remainder") {
            path_info = r.to_string();
        }
    }
    let script_name = if script_name.is_empty() || script_name.starts_with('/') {
        script_name
    } else {
        format!("/{script_name}")
    };
    let orig = ctx
        .orig_uri
        .clone()
        .unwrap_or_else(|| crate::request::join_path_query(req.path(), req.query()));
    let host_header = req.header("host").unwrap_or(&ctx.host);
    let default_port = if ctx.conn.tls { "443" } else { "80" };
    let (server_name, port) = match host_header.rsplit_once(':') {
        // `[::1]:8080` or `host:8080`, but not the bare `[::1]`.
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.to_string(),
            )
        }
        _ => (
            host_header
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            default_port.to_string(),
        ),
    };
    let method = req.method();
    let content_length = match (req.header("content-length"), body_len) {
        (Some(v), _) => v.to_string(),
        (None, Some(n)) => n.to_string(),
        (None, None) => String::new(),
    };
    let content_length = match method {
        "HEAD" | "OPTIONS" => "0".to_string(),
        _ if content_length.is_empty() && method == "GET" => "0".to_string(),
        _ => content_length,
    };
    let content_type = match req.header("content-type") {
        Some(t) => t.to_string(),
        None if !matches!(method, "GET" | "HEAD" | "OPTIONS") => {
            "application/x-www-form-urlencoded".to_string()
        }
        None => String::new(),
    };
    let proto = match req.version() {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    let remote = ctx.conn.remote;
    let mut p: Vec<(String, String)> = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            format!("Dwaar/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("SERVER_PROTOCOL".into(), proto.into()),
        ("SERVER_NAME".into(), server_name),
        ("SERVER_PORT".into(), port),
        ("REQUEST_METHOD".into(), method.into()),
        ("REQUEST_SCHEME".into(), ctx.scheme().into()),
        ("REQUEST_URI".into(), orig),
        ("QUERY_STRING".into(), req.query().unwrap_or("").into()),
        ("DOCUMENT_ROOT".into(), root.clone()),
        ("DOCUMENT_URI".into(), script_name.clone()),
        ("SCRIPT_NAME".into(), script_name.clone()),
        ("SCRIPT_FILENAME".into(), format!("{root}{script_name}")),
        ("PATH_INFO".into(), path_info.clone()),
        ("REMOTE_ADDR".into(), remote.ip().to_string()),
        ("REMOTE_HOST".into(), remote.ip().to_string()),
        ("REMOTE_PORT".into(), remote.port().to_string()),
        (
            "REMOTE_USER".into(),
            ctx.var("http.auth.user.id").unwrap_or("").into(),
        ),
        ("AUTH_TYPE".into(), String::new()),
        ("REMOTE_IDENT".into(), String::new()),
        ("CONTENT_LENGTH".into(), content_length),
        ("CONTENT_TYPE".into(), content_type),
    ];
    if !path_info.is_empty() {
        p.push(("PATH_TRANSLATED".into(), format!("{root}{path_info}")));
    }
    if ctx.conn.tls {
        p.push(("HTTPS".into(), "on".into()));
    }
    for (k, t) in &opts.env {
        let v = render(t, req, ctx).into_owned();
        match p.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => p.push((k.clone(), v)),
        }
    }
    // Request headers as HTTP_*; `Proxy` is dropped (httpoxy), as are hop-by-hop ones.
    let mut seen: Vec<String> = Vec::new();
    for name in req.header_names() {
        let lower = name.to_ascii_lowercase();
        if crate::request::hop_by_hop(lower.as_bytes())
            || matches!(lower.as_str(), "proxy" | "proxy-authorization")
            || seen.contains(&lower)
        {
            continue;
        }
        let mut values = Vec::new();
        req.any_header_value(&lower, &mut |v| {
            values.push(v.to_string());
            false
        });
        let key = format!("HTTP_{}", lower.to_ascii_uppercase().replace('-', "_"));
        p.push((key, values.join(", ")));
        seen.push(lower);
    }
    p
}
