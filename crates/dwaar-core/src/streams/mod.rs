//! Requests that arrive as streams of a multiplexed connection: HTTP/2 (our own
//! front-end over TLS, [`h2`]) and HTTP/3 ([`crate::quic`]). Each stream becomes a
//! protocol-neutral request for the pipeline, and its outcome goes back out through the
//! [`Exchange`] trait, which is all that differs between the two protocols: proxying to
//! HTTP/1.1 (pooled), h2c/h2 (multiplexed, [`h2_pool`]) and FastCGI upstreams, replies,
//! body rewrites, logs and metrics are shared.
//!
//! Limits: a request body pausing longer than [`BODY_PAUSE`] or lasting longer than
//! [`BODY_DEADLINE`] is abandoned; a client whose flow control stays shut for
//! [`SEND_WAIT`] loses the response.

pub mod h2;
pub mod h2_pool;

use crate::context::{ConnInfo, RequestContext};
use crate::fast_h1::pool;
use crate::fast_h1::{ChunkScanner, Framing};
use crate::pipeline::{handle_request, normalize_host, Outcome, Reply, ResponseHead};
use crate::proxy::{
    count_upstream, edit_upstream_request, log_request, passive_check, release_upstream, LogParts,
};
use crate::route_table::RouteStore;
use bytes::{Buf, Bytes, BytesMut};
use compact_str::CompactString;
use pingora_http::RequestHeader;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request body may pause.
pub const BODY_PAUSE: Duration = Duration::from_secs(60);
/// How long sending may wait for the client's flow control to open.
pub const SEND_WAIT: Duration = Duration::from_secs(60);
/// The longest a request body may take as a whole.
pub const BODY_DEADLINE: Duration = Duration::from_secs(600);

/// One request stream of a multiplexed connection, as the shared serving code uses it.
pub trait Exchange: Send {
    /// The protocol version of its requests (access logs, the pipeline's request).
    const VERSION: http::Version;
    /// The next piece of the request body; `Ok(None)` at its end.
    fn recv_data(&mut self) -> impl Future<Output = Result<Option<Bytes>, ()>> + Send;
    /// Sends the response head; the body follows with `send_data`, then `finish` or
    /// `send_trailers`.
    fn send_response(
        &mut self,
        head: http::Response<()>,
    ) -> impl Future<Output = Result<(), ()>> + Send;
    /// Sends body bytes, waiting for the client's flow control.
    fn send_data(&mut self, data: Bytes) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the response with trailers.
    fn send_trailers(
        &mut self,
        trailers: http::HeaderMap,
    ) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the response.
    fn finish(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// Abandons the stream: `refused` when nothing of the request was processed (the
    /// client may retry it), otherwise as an internal error (a truncated response).
    fn abort(&mut self, refused: bool);
}

/// The request as the pipeline sees it (Pingora's header type implements `HttpRequest`).
fn to_request_header(req: &http::Request<()>, version: http::Version) -> Option<RequestHeader> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut h = RequestHeader::build(
        req.method().clone(),
        pq.as_bytes(),
        Some(req.headers().len() + 1),
    )
    .ok()?;
    h.set_version(version);
    if let Some(a) = req.uri().authority() {
        if !req.headers().contains_key(http::header::HOST) {
            h.insert_header(http::header::HOST, a.as_str()).ok()?;
        }
    }
    for (k, v) in req.headers() {
        h.append_header(k.clone(), v.clone()).ok()?;
    }
    Some(h)
}

/// Serves one request of a multiplexed connection through the pipeline.
pub async fn serve_request<S: Exchange>(
    req: http::Request<()>,
    mut stream: S,
    conn: ConnInfo,
    store: &RouteStore,
) {
    // Counted for graceful shutdown like the other front-ends' requests.
    let counted = crate::server::inflight::enter();
    serve_counted(req, &mut stream, conn, store).await;
    if counted {
        crate::server::inflight::exit();
    }
}

async fn serve_counted<S: Exchange>(
    req: http::Request<()>,
    stream: &mut S,
    conn: ConnInfo,
    store: &RouteStore,
) {
    let start = Instant::now();
    let Some(original) = to_request_header(&req, S::VERSION) else {
        reply_status(stream, 400).await;
        return;
    };
    let head_only = original.method == http::Method::HEAD;
    let host = original
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(normalize_host)
        .unwrap_or(Some(CompactString::default()));
    let Some(host) = host else {
        reply_status(stream, 400).await;
        return;
    };
    let table = store.load();
    // Kept only when some handler may ask to run the pipeline again.
    let rerun = table.rerun_checks.then(|| original.clone());
    let mut header = original;
    let mut ctx = RequestContext {
        start: Some(start),
        conn,
        host,
        ..RequestContext::default()
    };
    let outcome = handle_request(&table, &mut header, &mut ctx);
    // Checks (auth, a cache wait) run boxed, only when the pipeline asked for one.
    let outcome = if matches!(outcome, Outcome::Check(_)) {
        Box::pin(crate::proxy::settle_checks(
            &table,
            outcome,
            rerun.as_ref(),
            &mut header,
            &mut ctx,
        ))
        .await
    } else {
        outcome
    };
    ctx.table = Some(table);
    let (status, read, written) = match outcome {
        Outcome::Reply(mut r) => {
            crate::rewrite::reply(&mut ctx, &mut r);
            let status = r.status;
            let sent = send_reply(stream, r, &ctx, head_only).await.unwrap_or(0);
            (status, 0, sent)
        }
        Outcome::Internal(i) => {
            let limit = i.body_limit();
            match read_body(stream, limit).await {
                Some(body) => {
                    let n = body.len() as u64;
                    let r = crate::analytics::answer(i, body).await;
                    let status = r.status;
                    let sent = send_reply(stream, r, &ctx, head_only).await.unwrap_or(0);
                    (status, n, sent)
                }
                None => {
                    let sent = send_reply(stream, Reply::status(413), &ctx, head_only)
                        .await
                        .unwrap_or(0);
                    (413, 0, sent)
                }
            }
        }
        Outcome::Abort | Outcome::Check(_) => {
            stream.abort(true);
            (0, 0, 0)
        }
        Outcome::Proxy => {
            // `request_body { max_size }`: a declared length over it is refused before
            // anything is sent; a body that grows past it is cut off while streaming.
            let declared = header
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if ctx.max_body.zip(declared).is_some_and(|(max, n)| n > max) {
                fail(stream, &mut header, &mut ctx, head_only, 413).await
            } else {
                proxy(stream, &mut header, &mut ctx, head_only).await
            }
        }
    };
    release_upstream(&mut ctx);
    crate::metrics::observe(&ctx, header.method.as_str(), status, read, written);
    crate::analytics::record(&ctx, status, written);
    if crate::proxy::is_logged(&ctx) {
        log_request(
            &ctx,
            LogParts {
                method: header.method.as_str(),
                path: header.uri.path(),
                query: header.uri.query().unwrap_or(""),
                version: S::VERSION,
                user_agent: header.headers.get(http::header::USER_AGENT).cloned(),
                referer: header.headers.get(http::header::REFERER).cloned(),
                status,
                bytes_read: read,
                bytes_written: written,
            },
        );
    }
}

/// Reads a request body of at most `limit` bytes (`None`: longer, or the client stalled).
async fn read_body<S: Exchange>(stream: &mut S, limit: usize) -> Option<Bytes> {
    let mut body = BytesMut::new();
    let deadline = body_deadline();
    loop {
        match recv_chunk(stream, deadline).await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body.freeze()),
            Err(()) => return None,
        }
    }
}

/// Fields that belong to one HTTP/1 hop and never appear in HTTP/2 or HTTP/3.
fn connection_specific(name: &str) -> bool {
    crate::request::hop_by_hop(name.as_bytes()) || name.eq_ignore_ascii_case("host")
}

/// The response head for the client, from the fields the pipeline settled on (taken,
/// not copied: each value's text becomes the field's bytes). A field that is not valid
/// in HTTP/2 or HTTP/3 is left out rather than failing the response. `alt_svc`: the
/// response announces HTTP/3 when the port serves it (HTTP/2 responses).
fn response_head(
    status: u16,
    fields: Vec<(CompactString, String)>,
    ctx: &RequestContext,
    alt_svc: bool,
) -> http::Response<()> {
    let mut head = http::Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let map = head.headers_mut();
    map.reserve(fields.len() + 2);
    for (k, v) in fields {
        if connection_specific(&k) || k.eq_ignore_ascii_case("x-request-id") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_maybe_shared(Bytes::from(v)),
        ) {
            map.append(name, value);
        }
    }
    if let Some(id) = ctx.request_id {
        let mut buf = [0u8; 36];
        // Unique per response: never indexed in the HPACK/QPACK table, where each new
        // value would only push out fields that do repeat.
        if let Ok(mut v) = http::HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            v.set_sensitive(true);
            map.insert(http::header::HeaderName::from_static("x-request-id"), v);
        }
    }
    if alt_svc {
        if let Some(v) = crate::quic::alt_svc(ctx) {
            map.insert(http::header::ALT_SVC, v);
        }
    }
    head
}

/// Answers with an empty `status` response (400 for a request that cannot be read, 425
/// for a replayable one).
pub async fn reply_status<S: Exchange>(stream: &mut S, status: u16) {
    let _ = send_reply(
        stream,
        Reply::status(status),
        &RequestContext::default(),
        false,
    )
    .await;
}

/// Sends a reply Dwaar built; returns the body bytes sent.
async fn send_reply<S: Exchange>(
    stream: &mut S,
    mut r: Reply,
    ctx: &RequestContext,
    head_only: bool,
) -> Result<u64, ()> {
    let no_body = r.status == 204 || r.status == 304 || r.status < 200;
    let rewrite = r.rewrite.take();
    if !no_body && rewrite.is_none() {
        let len = r.body_len().to_string();
        ResponseHead::set(&mut r.headers, "content-length", &len);
    }
    stream
        .send_response(response_head(
            r.status,
            std::mem::take(&mut r.headers),
            ctx,
            S::VERSION != http::Version::HTTP_3,
        ))
        .await?;
    let mut sent = 0u64;
    if !head_only && !no_body {
        let mut rewrite = rewrite;
        let out = |b: Bytes,
                   end: bool,
                   rw: &mut Option<Box<crate::rewrite::Rewrite>>|
         -> Result<Bytes, ()> {
            match rw.as_mut() {
                Some(rw) => rw.feed(Some(b), end).map_err(|_| ()),
                None => Ok(b),
            }
        };
        let first = out(std::mem::take(&mut r.body), false, &mut rewrite)?;
        if !first.is_empty() {
            sent += first.len() as u64;
            send_body(stream, first).await?;
        }
        if let Some(s) = r.stream.as_mut() {
            while let Some(c) = s.next_chunk().map_err(|_| ())? {
                let piece = out(c, false, &mut rewrite)?;
                if !piece.is_empty() {
                    sent += piece.len() as u64;
                    send_body(stream, piece).await?;
                }
            }
        }
        if let Some(rw) = rewrite.as_mut() {
            let last = rw.feed(None, true).map_err(|_| ())?;
            if !last.is_empty() {
                sent += last.len() as u64;
                send_body(stream, last).await?;
            }
        }
    }
    stream.finish().await?;
    Ok(sent)
}

/// The next piece of the request body: `Ok(None)` at its end, `Err` when the client
/// paused longer than [`BODY_PAUSE`], passed `deadline`, or the stream failed.
async fn recv_chunk<S: Exchange>(
    stream: &mut S,
    deadline: tokio::time::Instant,
) -> Result<Option<Bytes>, ()> {
    let until = deadline.min(tokio::time::Instant::now() + BODY_PAUSE);
    match tokio::time::timeout_at(until, stream.recv_data()).await {
        Ok(r) => r,
        Err(_) => Err(()),
    }
}

fn body_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + BODY_DEADLINE
}

/// Sends body bytes, waiting at most [`SEND_WAIT`] for the client's flow control to let
/// them through.
async fn send_body<S: Exchange>(stream: &mut S, b: Bytes) -> Result<(), ()> {
    match tokio::time::timeout(SEND_WAIT, stream.send_data(b)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends a proxied response's head after the shared edits; returns the body's rewrite
/// (`None` when the client went away).
async fn send_proxied_head<S: Exchange>(
    stream: &mut S,
    req: &RequestHeader,
    ctx: &mut RequestContext,
    p: &crate::upstream::ProxyHandler,
    status: u16,
    mut fields: Vec<(CompactString, String)>,
    head_only: bool,
) -> Option<Option<crate::rewrite::Rewrite>> {
    crate::pipeline::edit_proxied_fields(p, req, ctx, &mut fields);
    let rewrite = if head_only {
        None
    } else {
        crate::rewrite::begin(ctx, status, &mut fields)
    };
    stream
        .send_response(response_head(
            status,
            fields,
            ctx,
            S::VERSION != http::Version::HTTP_3,
        ))
        .await
        .ok()
        .map(|_| rewrite)
}

/// Sends one piece of a proxied body through its rewrite, counting what went out.
async fn relay_piece<S: Exchange>(
    stream: &mut S,
    rewrite: &mut Option<crate::rewrite::Rewrite>,
    chunk: Bytes,
    sent: &mut u64,
) -> Result<(), ()> {
    let piece = match rewrite.as_mut() {
        Some(rw) => rw.feed(Some(chunk), false).map_err(|_| ())?,
        None => chunk,
    };
    if piece.is_empty() {
        return Ok(());
    }
    *sent += piece.len() as u64;
    send_body(stream, piece).await
}

/// Sends what the rewrite still holds at the end of a proxied body.
async fn relay_end<S: Exchange>(
    stream: &mut S,
    rewrite: &mut Option<crate::rewrite::Rewrite>,
    sent: &mut u64,
) {
    if let Some(Ok(last)) = rewrite.as_mut().map(|rw| rw.feed(None, true)) {
        if !last.is_empty() {
            *sent += last.len() as u64;
            let _ = send_body(stream, last).await;
        }
    }
}

/// Answers a proxying failure (`handle_errors` when the site has it, else an empty
/// `code` reply).
async fn fail<S: Exchange>(
    stream: &mut S,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
    code: u16,
) -> (u16, u64, u64) {
    let message = match code {
        413 => "request body too large",
        503 => "no upstream available",
        504 => "upstream timed out",
        _ => "bad gateway",
    };
    if code >= 502 && ctx.upstream_error.is_none() {
        ctx.upstream_error = Some(message.into());
    }
    // `handle_errors` routes answer as they do on the other front-ends.
    let Some(mut r) = crate::pipeline::proxy_error_reply(code, message.into(), req, ctx) else {
        stream.abort(false);
        return (code, 0, 0);
    };
    crate::rewrite::reply(ctx, &mut r);
    let status = r.status;
    let sent = send_reply(stream, r, ctx, head_only).await.unwrap_or(0);
    (status, 0, sent)
}

/// An HTTP/1.1 upstream's response head, as the stream front-ends forward it.
struct UpstreamHead {
    status: u16,
    framing: Framing,
    keepalive: bool,
    fields: Vec<(CompactString, String)>,
}

/// Parses an HTTP/1.1 upstream's response head; `None` when it is not one to forward.
/// (Synchronous, so the parser's header array stays out of the request's future.)
fn parse_upstream_head(rhead: &[u8], head_only: bool) -> Option<UpstreamHead> {
    let mut hs = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut hs);
    if !matches!(resp.parse(rhead), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = resp.code.unwrap_or(502);
    let framing = crate::fast_h1::upstream_framing(&resp, status, head_only)?;
    let keepalive = crate::fast_h1::upstream_keepalive(&resp);
    let fields = resp
        .headers
        .iter()
        .filter(|h| !crate::request::hop_by_hop(h.name.as_bytes()))
        .map(|h| (h.name.into(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Some(UpstreamHead {
        status,
        framing,
        keepalive,
        fields,
    })
}

/// Proxies to a plain HTTP/1.1 upstream over the keep-alive pool; returns
/// (status, request body bytes, response body bytes).
async fn proxy<S: Exchange>(
    stream: &mut S,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
) -> (u16, u64, u64) {
    let Some(p) = ctx.proxy.clone() else {
        return fail(stream, req, ctx, head_only, 502).await;
    };
    // Boxed: their states stay out of every request's future (most upstreams are
    // plain HTTP/1.1).
    if let Some(opts) = p.fastcgi.clone() {
        return Box::pin(fastcgi(stream, req, ctx, &p, &opts, head_only)).await;
    }
    if p.transport.multiplexed() {
        return Box::pin(proxy_h2(stream, req, ctx, &p, head_only)).await;
    }
    let host = edit_upstream_request(ctx, req, &p);
    // The HTTP/1.1 request head; a body of unknown length goes chunked.
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let may_have_body =
        !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE") || length.is_some();
    let chunked = may_have_body && length.is_none();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in req.headers.iter() {
        if crate::request::hop_by_hop(k.as_str().as_bytes()) {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !p.transport.keepalive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // An upstream, and a connection to it: a connection that never opened carried no
    // request, so another upstream (or the same one, within `lb_try_duration`) is tried
    // as the other front-ends do (`retries`, `lb_try_duration`, `lb_try_interval`).
    let start = ctx.start.unwrap_or_else(Instant::now);
    let (addr, pooled, mut upc) = loop {
        let Some(i) = p.select(&*req, ctx) else {
            if !p.try_duration.is_zero() && start.elapsed() + p.try_interval < p.try_duration {
                ctx.tried.clear();
                tokio::time::sleep(p.try_interval.max(Duration::from_millis(10))).await;
                continue;
            }
            return fail(stream, req, ctx, head_only, 503).await;
        };
        ctx.tried.push(i);
        let up = p.upstreams[i].clone();
        // Plain TCP connections are pooled; TLS and unix-socket ones are opened per request.
        let pooled = !p.transport.tls && !up.unix;
        let addr = up.addr;
        count_upstream(ctx, up.clone());
        let dial_start = Instant::now();
        let connected = match addr.filter(|_| pooled) {
            Some(a) => pool::checkout(a, &p.transport).await,
            None if pooled => Err(std::io::Error::other("unresolved upstream address")),
            None => pool::connect_direct(&up, &p.transport, &host)
                .await
                .map(|c| (c, false)),
        };
        match connected {
            Ok((upc, reused)) => {
                if !reused {
                    up.record_connect(dial_start.elapsed());
                }
                break (addr, pooled, upc);
            }
            Err(_) => {
                if let Some(passive) = &p.passive {
                    up.record_failure(passive);
                }
                release_upstream(ctx);
                if p.may_retry(ctx.attempts, start) {
                    if ctx.tried.len() >= p.upstreams.len() && !p.try_duration.is_zero() {
                        ctx.tried.clear();
                    }
                    if ctx.tried.len() < p.upstreams.len() {
                        if !p.try_interval.is_zero() && !p.try_duration.is_zero() {
                            tokio::time::sleep(p.try_interval).await;
                        }
                        continue;
                    }
                }
                return fail(stream, req, ctx, head_only, 502).await;
            }
        }
    };
    use tokio::io::AsyncWriteExt;
    if upc.stream.write_all(&out).await.is_err() {
        return fail(stream, req, ctx, head_only, 502).await;
    }
    ctx.upstream_sent = Some(Instant::now());
    // The request body, streamed.
    let mut read = 0u64;
    if may_have_body {
        let deadline = body_deadline();
        let mut framed = Vec::new();
        loop {
            match recv_chunk(stream, deadline).await {
                Ok(Some(chunk)) => {
                    read += chunk.len() as u64;
                    if ctx.max_body.is_some_and(|max| read > max) {
                        return fail(stream, req, ctx, head_only, 413).await;
                    }
                    // A body of unknown length goes chunked: size, data and CRLF in
                    // one write.
                    let piece: &[u8] = if chunked {
                        framed.clear();
                        crate::fast_h1::chunk_into(&mut framed, &chunk);
                        &framed
                    } else {
                        &chunk
                    };
                    if upc.stream.write_all(piece).await.is_err() {
                        return fail(stream, req, ctx, head_only, 502).await;
                    }
                }
                Ok(None) => break,
                Err(()) => return (0, read, 0),
            }
        }
        if chunked && upc.stream.write_all(b"0\r\n\r\n").await.is_err() {
            return fail(stream, req, ctx, head_only, 502).await;
        }
    }
    let head_len = match pool::read_response_head(&mut upc, &p.transport).await {
        Ok(Some(n)) => n,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return fail(stream, req, ctx, head_only, 504).await
        }
        _ => return fail(stream, req, ctx, head_only, 502).await,
    };
    let rhead = upc.buf.split_to(head_len).freeze();
    let Some(UpstreamHead {
        status,
        framing,
        keepalive,
        fields,
    }) = parse_upstream_head(&rhead, head_only)
    else {
        return fail(stream, req, ctx, head_only, 502).await;
    };
    ctx.upstream_duration = ctx.upstream_sent.map(|t| t.elapsed());
    passive_check(ctx, status);
    let Some(mut rewrite) =
        send_proxied_head(stream, req, ctx, &p, status, fields, head_only).await
    else {
        return (status, read, 0);
    };
    // The body: decoded from the upstream's framing, rewritten if needed.
    let mut sent = 0u64;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut dec = ChunkScanner::default();
    let mut data = Vec::with_capacity(16 * 1024);
    let mut complete = matches!(framing, Framing::None);
    while !complete {
        if upc.buf.is_empty() && left > 0 {
            match upc.read_more_bulk().await {
                Ok(0) if matches!(framing, Framing::UntilClose) => complete = true,
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        // Bodies leave the connection's buffer as `Bytes` (no copy) unless chunk
        // framing has to be taken off.
        let chunk = match framing {
            Framing::Chunked => {
                data.clear();
                match dec.scan_data(&upc.buf, Some(&mut data)) {
                    Ok((used, done)) => {
                        upc.buf.advance(used);
                        complete |= done;
                    }
                    Err(()) => break,
                }
                Bytes::copy_from_slice(&data)
            }
            _ => {
                let take = (upc.buf.len() as u64).min(left) as usize;
                if let Framing::Length(_) = framing {
                    left -= take as u64;
                    complete |= left == 0;
                }
                upc.buf.split_to(take).freeze()
            }
        };
        if relay_piece(stream, &mut rewrite, chunk, &mut sent)
            .await
            .is_err()
        {
            return (status, read, sent);
        }
    }
    relay_end(stream, &mut rewrite, &mut sent).await;
    if complete {
        let _ = stream.finish().await;
        if keepalive
            && p.transport.keepalive
            && upc.buf.is_empty()
            && !matches!(framing, Framing::UntilClose)
        {
            if let Some(a) = addr.filter(|_| pooled) {
                pool::checkin(a, upc);
            }
        }
    } else {
        ctx.upstream_error = Some("upstream closed mid-response".into());
        stream.abort(false);
    }
    (status, read, sent)
}

/// Proxies to an h2c upstream over the shared [`H2ConnPool`](h2_pool::H2ConnPool):
/// bodies stream both ways within HTTP/2 flow control, trailers pass through (gRPC).
async fn proxy_h2<S: Exchange>(
    stream: &mut S,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    p: &Arc<crate::upstream::ProxyHandler>,
    head_only: bool,
) -> (u16, u64, u64) {
    let Some(i) = p.select(&*req, ctx) else {
        return fail(stream, req, ctx, head_only, 503).await;
    };
    let up = p.upstreams[i].clone();
    let Some(addr) = up.addr else {
        return fail(stream, req, ctx, head_only, 502).await;
    };
    count_upstream(ctx, up.clone());
    let host = edit_upstream_request(ctx, req, p);
    let authority = if host.is_empty() {
        up.dial.as_str()
    } else {
        host.as_str()
    };
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut b = http::Request::builder()
        .method(req.method.clone())
        .uri(format!(
            "{}://{authority}{pq}",
            if p.transport.tls { "https" } else { "http" }
        ))
        .version(http::Version::HTTP_2);
    for (k, v) in req.headers.iter() {
        let name = k.as_str();
        if crate::request::hop_by_hop(name.as_bytes()) && !(name == "te" && v == "trailers") {
            continue;
        }
        if name == "host" {
            continue;
        }
        b = b.header(k, v);
    }
    let Ok(up_req) = b.body(()) else {
        return fail(stream, req, ctx, head_only, 502).await;
    };
    let bodyless = matches!(req.method.as_str(), "GET" | "HEAD")
        && req.headers.get(http::header::CONTENT_LENGTH).is_none();
    let idempotent = matches!(
        req.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    );
    let dial = if p.transport.dial.is_zero() {
        std::time::Duration::from_secs(10)
    } else {
        p.transport.dial
    };
    let tls = if p.transport.tls {
        match p
            .transport
            .client_tls_h2()
            .and_then(|c| Ok((c, p.transport.server_name(&up.dial, authority)?)))
        {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.upstream_error = Some(CompactString::new(&e));
                return fail(stream, req, ctx, head_only, 502).await;
            }
        }
    } else {
        None
    };
    let retryable = idempotent && bodyless;
    let mut resp_ready: Option<http::Response<::h2::RecvStream>> = None;
    let pool = h2_pool::H2ConnPool::global();
    let start =
        |req: http::Request<()>| pool.start(addr, dial, tls.as_ref(), req, bodyless, retryable);
    let (mut resp, mut send, mut slot) = match start(up_req.clone()).await {
        Ok(s) => s,
        Err(e) => {
            ctx.upstream_error = Some(CompactString::new(&e));
            if let Some(passive) = &p.passive {
                up.record_failure(passive);
            }
            return fail(stream, req, ctx, head_only, 502).await;
        }
    };
    if retryable {
        // A stream the upstream refused (GOAWAY while it was in flight) was not
        // processed: an idempotent request without a body is sent again.
        let mut tries = 0;
        loop {
            match (&mut resp).await {
                Ok(r) => {
                    resp_ready = Some(r);
                    break;
                }
                Err(e)
                    if tries < 2
                        && (e.is_go_away() || e.reason() == Some(::h2::Reason::REFUSED_STREAM)) =>
                {
                    tries += 1;
                    match start(up_req.clone()).await {
                        Ok((r, s2, sl)) => {
                            resp = r;
                            send = s2;
                            slot = sl;
                        }
                        Err(_) => return fail(stream, req, ctx, head_only, 502).await,
                    }
                }
                Err(_) => return fail(stream, req, ctx, head_only, 502).await,
            }
        }
    }
    let _slot = slot;
    ctx.upstream_sent = Some(Instant::now());
    // The request body, as it arrives, within the upstream's flow-control window.
    let mut read = 0u64;
    if !bodyless {
        let deadline = body_deadline();
        loop {
            match recv_chunk(stream, deadline).await {
                Ok(Some(data)) => {
                    read += data.len() as u64;
                    if ctx.max_body.is_some_and(|max| read > max) {
                        send.send_reset(::h2::Reason::CANCEL);
                        return fail(stream, req, ctx, head_only, 413).await;
                    }
                    if h2_pool::send_all(&mut send, data, false).await.is_err() {
                        return fail(stream, req, ctx, head_only, 502).await;
                    }
                }
                Ok(None) => {
                    let _ = h2_pool::send_all(&mut send, Bytes::new(), true).await;
                    break;
                }
                Err(()) => {
                    send.send_reset(::h2::Reason::CANCEL);
                    return (0, read, 0);
                }
            }
        }
    }
    let resp = match resp_ready.take() {
        Some(r) => Ok(r),
        None => match p.transport.read {
            Some(t) => match tokio::time::timeout(t, resp).await {
                Ok(r) => r,
                Err(_) => return fail(stream, req, ctx, head_only, 504).await,
            },
            None => resp.await,
        },
    };
    let Ok(resp) = resp else {
        return fail(stream, req, ctx, head_only, 502).await;
    };
    let status = resp.status().as_u16();
    ctx.upstream_duration = ctx.upstream_sent.map(|t| t.elapsed());
    passive_check(ctx, status);
    let (parts, mut body) = resp.into_parts();
    let fields: Vec<(CompactString, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !crate::request::hop_by_hop(k.as_str().as_bytes()))
        .map(|(k, v)| {
            (
                CompactString::new(k.as_str()),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let Some(mut rewrite) = send_proxied_head(stream, req, ctx, p, status, fields, head_only).await
    else {
        return (status, read, 0);
    };
    let mut sent = 0u64;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            ctx.upstream_error = Some("upstream stream failed mid-response".into());
            stream.abort(false);
            return (status, read, sent);
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if relay_piece(stream, &mut rewrite, chunk, &mut sent)
            .await
            .is_err()
        {
            return (status, read, sent);
        }
    }
    relay_end(stream, &mut rewrite, &mut sent).await;
    match body.trailers().await {
        Ok(Some(t)) => {
            let _ = stream.send_trailers(t).await;
        }
        _ => {
            let _ = stream.finish().await;
        }
    }
    (status, read, sent)
}

/// The client side of a FastCGI exchange (`php_fastcgi`, `transport fastcgi`).
struct StreamDownstream<'s, S: Exchange> {
    stream: &'s mut S,
    request_id: Option<uuid::Uuid>,
    shape: crate::fastcgi::Shaping,
    deadline: tokio::time::Instant,
    head_only: bool,
    sent: u64,
    read: u64,
}

#[async_trait::async_trait]
impl<S: Exchange> crate::fastcgi::Downstream for StreamDownstream<'_, S> {
    async fn read_body(&mut self) -> std::io::Result<Option<Bytes>> {
        match recv_chunk(self.stream, self.deadline).await {
            Ok(Some(b)) => {
                self.read += b.len() as u64;
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(()) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    async fn write_head(
        &mut self,
        status: u16,
        mut headers: Vec<(CompactString, String)>,
    ) -> std::io::Result<()> {
        self.shape.head(status, &mut headers, self.head_only);
        let ctx = RequestContext {
            request_id: self.request_id,
            ..RequestContext::default()
        };
        self.stream
            .send_response(response_head(
                status,
                headers,
                &ctx,
                S::VERSION != http::Version::HTTP_3,
            ))
            .await
            .map_err(|_| std::io::Error::other("the client went away"))
    }

    async fn write_body(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if self.head_only {
            return Ok(());
        }
        let chunk = self.shape.body(chunk)?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.sent += chunk.len() as u64;
        send_body(self.stream, chunk)
            .await
            .map_err(|_| std::io::Error::other("the client stopped reading"))
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        let last = self.shape.end()?;
        if !last.is_empty() && !self.head_only {
            self.sent += last.len() as u64;
            let _ = send_body(self.stream, last).await;
        }
        self.stream
            .finish()
            .await
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

async fn fastcgi<S: Exchange>(
    stream: &mut S,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    p: &Arc<crate::upstream::ProxyHandler>,
    opts: &crate::fastcgi::FastCgiOpts,
    head_only: bool,
) -> (u16, u64, u64) {
    let mut down = StreamDownstream {
        stream: &mut *stream,
        request_id: ctx.request_id,
        shape: crate::fastcgi::Shaping::take(p, &*req, ctx),
        deadline: body_deadline(),
        head_only,
        sent: 0,
        read: 0,
    };
    let req_ref: &RequestHeader = req;
    let result = crate::fastcgi::run(p, opts, req_ref, ctx, &mut down).await;
    let (sent, read) = (down.sent, down.read);
    down.shape.give_back(ctx);
    match result {
        Ok(x) => (x.status, read, sent),
        Err(code) => {
            let (st, _, s) = fail(stream, req, ctx, head_only, code).await;
            (st, read, s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Null;

    impl Exchange for Null {
        const VERSION: http::Version = http::Version::HTTP_2;
        async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
            Ok(None)
        }
        async fn send_response(&mut self, _: http::Response<()>) -> Result<(), ()> {
            Ok(())
        }
        async fn send_data(&mut self, _: Bytes) -> Result<(), ()> {
            Ok(())
        }
        async fn send_trailers(&mut self, _: http::HeaderMap) -> Result<(), ()> {
            Ok(())
        }
        async fn finish(&mut self) -> Result<(), ()> {
            Ok(())
        }
        fn abort(&mut self, _: bool) {}
    }

    /// A field HTTP/2 and HTTP/3 cannot carry is left out; the rest of the head stands.
    #[test]
    fn response_head_drops_only_the_unusable_fields() {
        let fields = vec![
            ("content-type".into(), "text/plain".to_string()),
            ("bad name".into(), "x".to_string()),
            ("x-bad-value".into(), "a\nb".to_string()),
            ("connection".into(), "keep-alive".to_string()),
            ("x-ok".into(), "yes".to_string()),
        ];
        let head = response_head(201, fields, &RequestContext::default(), false);
        assert_eq!(head.status(), 201);
        let names: Vec<&str> = head.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-ok"]);
    }

    /// Every request stream is a task holding this future (moved into the task when it is
    /// spawned): rare, large states (h2 and FastCGI upstreams, auth checks) are boxed.
    #[test]
    fn request_future_stays_small() {
        let store = RouteStore::new(crate::route_table::RouteTable::default());
        let f = serve_request(http::Request::new(()), Null, ConnInfo::default(), &store);
        let size = std::mem::size_of_val(&f);
        // 14,112 bytes in a debug build before the boxing.
        assert!(size < 6 * 1024, "serve_request future is {size} bytes");
    }
}
