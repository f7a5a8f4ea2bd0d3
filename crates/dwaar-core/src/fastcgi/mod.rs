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
//! The exchange is written against [`Downstream`], the client side of one request,
//! so any front-end can drive it.

pub mod proto;

use crate::context::RequestContext;
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
/// before the exchange (the client lends it to the FastCGI client), given back after.
pub struct Shaping {
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
    pub fn take(p: &ProxyHandler, req: &dyn HttpRequest, ctx: &mut RequestContext) -> Shaping {
        let mut down = Vec::with_capacity(p.header_down.len());
        crate::pipeline::render_rules(&p.header_down, req, ctx, &mut down);
        Shaping {
            edits: [down, ctx.resp_immediate.clone(), ctx.resp_deferred.clone()],
            analytics: ctx.site.as_ref().and_then(|s| s.analytics.clone()),
            page: ctx.page.take(),
            encode: ctx.encode.clone(),
            rewrite: None,
        }
    }

    /// Returns the page-view facts (whether the response counted as a page view).
    pub fn give_back(&mut self, ctx: &mut RequestContext) {
        ctx.page = self.page.take();
    }

    /// Edits the response fields and decides on a rewrite (a HEAD answer gets the same
    /// fields and no body); returns the body length to announce (`None`: not known).
    pub fn head(
        &mut self,
        status: u16,
        fields: &mut Vec<(CompactString, String)>,
        head_only: bool,
    ) -> Option<u64> {
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
        crate::pipeline::ResponseHead::get(fields, "content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// A piece of the body as it goes out (empty: nothing to send yet).
    pub fn body(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        match self.rewrite.as_mut() {
            Some(rw) => rw.feed(Some(chunk), false),
            None => Ok(chunk),
        }
    }

    /// What is left to send at the end of the body.
    pub fn end(&mut self) -> std::io::Result<Bytes> {
        match self.rewrite.as_mut() {
            Some(rw) => rw.feed(None, true),
            None => Ok(Bytes::new()),
        }
    }
}

/// The client side of one request, as a FastCGI exchange needs it.
#[async_trait::async_trait]
pub trait Downstream: Send {
    /// The next piece of the request body; `None` at its end.
    async fn read_body(&mut self) -> std::io::Result<Option<Bytes>>;
    /// Sends the response head (a `Content-Length` from the responder is among the
    /// fields).
    async fn write_head(
        &mut self,
        status: u16,
        headers: Vec<(CompactString, String)>,
    ) -> std::io::Result<()>;
    async fn write_body(&mut self, chunk: Bytes) -> std::io::Result<()>;
    async fn finish(&mut self) -> std::io::Result<()>;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    idle_since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<String, Vec<Conn>>> = RefCell::new(HashMap::new());
}

const POOL_MAX_PER_UPSTREAM: usize = 32;
/// Largest CGI response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// STDERR kept for the log.
const MAX_STDERR: usize = 16 * 1024;

fn checkout(key: &str, idle: Duration) -> Option<Box<dyn Io>> {
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
    })
}

async fn dial(up: &UpstreamState, timeout: Duration) -> std::io::Result<Box<dyn Io>> {
    let connect = async {
        if up.unix {
            let s = tokio::net::UnixStream::connect(&up.dial).await?;
            Ok::<Box<dyn Io>, std::io::Error>(Box::new(s))
        } else {
            let addr = match up.addr {
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

/// Runs the request through `proxy`'s FastCGI upstreams. Errors before the response
/// head was sent are returned as a status for the caller to answer (502, 503, 504).
pub async fn run(
    proxy: &ProxyHandler,
    opts: &FastCgiOpts,
    req: &(dyn HttpRequest + Sync),
    ctx: &mut RequestContext,
    down: &mut dyn Downstream,
) -> Result<Exchanged, u16> {
    let params = params(opts, req, ctx);
    let encoded = proto::pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut attempts = 0u32;
    loop {
        let Some(i) = proxy.select(req, ctx) else {
            ctx.upstream_failure = crate::context::UpstreamFailure::NoneAvailable;
            return Err(503);
        };
        let up = proxy.upstreams[i].clone();
        ctx.tried.push(i);
        ctx.upstream = Some(up.clone());
        ctx.upstream_start = Some(Instant::now());
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
            None => match dial(&up, proxy.transport.dial).await {
                Ok(io) => io,
                Err(e) => {
                    if let Some(passive) = &proxy.passive {
                        up.record_failure(passive);
                    }
                    ctx.upstream_error = Some(CompactString::new(e.to_string()));
                    attempts += 1;
                    if attempts <= proxy.retries && ctx.tried.len() < proxy.upstreams.len() {
                        continue;
                    }
                    ctx.upstream_failure = if e.kind() == std::io::ErrorKind::TimedOut {
                        crate::context::UpstreamFailure::Timeout
                    } else {
                        crate::context::UpstreamFailure::Connect
                    };
                    return Err(if e.kind() == std::io::ErrorKind::TimedOut {
                        504
                    } else {
                        502
                    });
                }
            },
        };
        match exchange(io, &encoded, proxy, opts, ctx, down).await {
            Ok((done, io)) => {
                if let Some(io) = io.filter(|_| proxy.transport.keepalive) {
                    checkin(&key, io);
                }
                return Ok(done);
            }
            // A kept connection the responder had closed: try once more on a new one.
            Err(Failure::Stale) if !fresh => continue,
            Err(Failure::Stale) => return Err(502),
            Err(Failure::Before(e)) => {
                ctx.upstream_error = Some(CompactString::new(e));
                return Err(502);
            }
            Err(Failure::Timeout) => {
                ctx.upstream_failure = crate::context::UpstreamFailure::Timeout;
                return Err(504);
            }
            // The head was sent: nothing can be answered any more.
            Err(Failure::After(e)) => {
                ctx.upstream_error = Some(CompactString::new(e));
                return Ok(Exchanged {
                    status: 0,
                    ..Default::default()
                });
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

async fn exchange(
    mut io: Box<dyn Io>,
    params: &[u8],
    proxy: &ProxyHandler,
    opts: &FastCgiOpts,
    ctx: &mut RequestContext,
    down: &mut dyn Downstream,
) -> Result<(Exchanged, Option<Box<dyn Io>>), Failure> {
    let (read_t, write_t) = (proxy.transport.read, proxy.transport.write);
    let mut out = Vec::with_capacity(params.len() + 64);
    proto::begin_request(&mut out);
    proto::stream(&mut out, proto::PARAMS, params);
    proto::record(&mut out, proto::PARAMS, &[]);
    let mut request_bytes = 0u64;
    // The body: read from the client, written as STDIN records.
    loop {
        let chunk = down
            .read_body()
            .await
            .map_err(|e| Failure::Before(format!("reading the request body: {e}")))?;
        let Some(chunk) = chunk else { break };
        request_bytes += chunk.len() as u64;
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
    let mut body_bytes = 0u64;
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
                    down.write_head(status, headers)
                        .await
                        .map_err(|e| Failure::After(e.to_string()))?;
                    head_sent = true;
                    let rest = Bytes::copy_from_slice(&head[body_start..]);
                    head = Vec::new();
                    if !rest.is_empty() {
                        body_bytes += rest.len() as u64;
                        down.write_body(rest)
                            .await
                            .map_err(|e| Failure::After(e.to_string()))?;
                    }
                } else if head.len() > MAX_HEAD {
                    return Err(Failure::Before(
                        "the responder's header is too large".into(),
                    ));
                }
            }
            proto::STDOUT if !data.is_empty() => {
                body_bytes += data.len() as u64;
                down.write_body(Bytes::copy_from_slice(data))
                    .await
                    .map_err(|e| Failure::After(e.to_string()))?;
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
        down.write_head(status, headers)
            .await
            .map_err(|e| Failure::After(e.to_string()))?;
    }
    down.finish()
        .await
        .map_err(|e| Failure::After(e.to_string()))?;
    if !stderr.is_empty() && opts.capture_stderr {
        let text = String::from_utf8_lossy(&stderr);
        if status >= 400 {
            tracing::error!(upstream = %ctx.upstream.as_ref().map(|u| u.dial.as_str()).unwrap_or(""), "fastcgi stderr: {}", text.trim_end());
        } else {
            tracing::warn!(upstream = %ctx.upstream.as_ref().map(|u| u.dial.as_str()).unwrap_or(""), "fastcgi stderr: {}", text.trim_end());
        }
    }
    Ok((
        Exchanged {
            status,
            body_bytes,
            request_bytes,
        },
        keep.then_some(io),
    ))
}

/// Where the CGI head ends: (end of headers, start of body).
fn head_end(b: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, i + 4));
    }
    b.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2))
}

type Head = (u16, Vec<(CompactString, String)>, Option<u64>);

/// Parses CGI response headers (RFC 3875 §6): `Status`, `Location`, the rest as HTTP.
fn parse_cgi_head(head: &[u8]) -> Result<Head, String> {
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

/// The CGI parameters for a request (Caddy's set).
pub fn params(
    opts: &FastCgiOpts,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
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
    let content_length = req.header("content-length").unwrap_or("").to_string();
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
