//! The shared exchange: proxying a request the pipeline sent upstream, written once
//! against [`Downstream`] for every front-end that answers through it (the HTTP/2 and
//! HTTP/3 streams, and Pingora's sessions for FastCGI, body buffering, `request_body {
//! set }` and `Expect: 100-continue`). [`proxy`] checks a declared length against
//! `request_body { max_size }`, wraps the client's body in a
//! [`RequestBody`](super::request_body::RequestBody), then runs the exchange for the
//! upstream's kind: HTTP/1.1 over the keep-alive pool (or a direct TLS or unix
//! connection), HTTP/2 over the shared pool, or FastCGI. Responses go through the
//! proxy's response rules, the cache, the site's header edits and the body rewrite.

use super::request_body::{expects_continue, RequestBody};
use crate::context::RequestContext;
use crate::http1::{ChunkScanner, Framing};
use crate::lifecycle::attempt;
use crate::lifecycle::downstream::{
    answer_failure, body_deadline, recv_chunk, relay_end, relay_piece, write_reply, Downstream,
};
use crate::upstream::{h1_pool as pool, h2_pool};
use bytes::{Buf, Bytes};
use compact_str::CompactString;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Instant;

/// What became of a proxied response's head.
enum Head {
    /// Sent; the body follows through this rewrite.
    Sent(Option<Box<crate::rewrite::Rewrite>>),
    /// The cache answered instead (a revalidated or stale entry): status, bytes sent.
    Answered(u16, u64),
    /// The client went away.
    Gone,
}

/// Sends a proxied response's head: `header_down`, the cache's look at the response
/// (which may answer from the store instead), the site's edits, then the body's
/// rewrite.
async fn send_proxied_head<D: Downstream>(
    stream: &mut D,
    req: &RequestHeader,
    ctx: &mut RequestContext,
    p: &crate::upstream::ProxyHandler,
    status: u16,
    mut fields: Vec<(CompactString, String)>,
    head_only: bool,
) -> Head {
    // `replace_status`, `handle_response`, `intercept`: routes may answer instead of the
    // upstream's body, or change the status.
    let mut status = status;
    if crate::lifecycle::acts_on_response(p, ctx) {
        let all: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // The routes may rewrite the request (`rewrite` before `file_server`).
        let mut own = req.clone();
        match crate::lifecycle::upstream_response(p, status, all, &mut own, ctx) {
            crate::lifecycle::ResponseHandled::Relay(shown) => status = shown,
            crate::lifecycle::ResponseHandled::Answer(r) => {
                attempt::release(ctx);
                let st = r.status;
                let sent = Box::pin(write_reply(stream, r, ctx, head_only))
                    .await
                    .unwrap_or(0);
                return Head::Answered(st, sent);
            }
            crate::lifecycle::ResponseHandled::Abort => {
                attempt::release(ctx);
                return Head::Gone;
            }
        }
    }
    crate::pipeline::apply_header_down(p, req, ctx, &mut fields);
    if ctx.cache.is_some() {
        let stored = if status >= 500 && crate::cache::stale_usable_for_error(ctx) {
            crate::cache::stale_for_error(ctx)
        } else if crate::cache::on_response(ctx, status, &mut fields, head_only) {
            crate::cache::revalidated_reply(ctx)
        } else {
            None
        };
        if let Some(r) = stored {
            let st = r.status;
            // Boxed: rare, and its state would sit in every proxied request's future.
            let sent = Box::pin(write_reply(stream, r, ctx, head_only))
                .await
                .unwrap_or(0);
            return Head::Answered(st, sent);
        }
    }
    crate::pipeline::edit_proxied_site_fields(ctx, &mut fields);
    let rewrite = if head_only || crate::templates::will_hold(ctx, status, &fields) {
        None
    } else {
        crate::rewrite::begin(ctx, status, &mut fields).map(Box::new)
    };
    ctx.log.capture_response(|| fields.clone());
    match stream.send_head(status, fields, ctx, false).await {
        Ok(()) => Head::Sent(rewrite),
        Err(()) => Head::Gone,
    }
}

/// A piece of a proxied body on its way out: collected for the cache when it fills,
/// then sent through the rewrite.
async fn relay_proxied<D: Downstream>(
    stream: &mut D,
    ctx: &mut RequestContext,
    rewrite: &mut Option<Box<crate::rewrite::Rewrite>>,
    chunk: Bytes,
    sent: &mut u64,
) -> Result<(), ()> {
    if let Some(fill) = ctx.cache.as_mut().and_then(|c| c.fill.as_mut()) {
        fill.push(&chunk);
    }
    relay_piece(stream, rewrite.as_deref_mut(), chunk, sent).await
}

/// through a [`Downstream`] (HTTP/2, HTTP/3, and Pingora's sessions for FastCGI and the
/// buffering options): `request_body { max_size }` against a declared length, the
/// body's `Expect: 100-continue` and `request_buffers` ([`RequestBody`]), then the
/// exchange for the upstream's kind. Returns (status, request body bytes, response
/// body bytes).
pub async fn proxy<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
) -> (u16, u64, u64) {
    if ctx.templates().is_some() {
        // Boxed: its state stays out of every other proxied request's future.
        return Box::pin(proxy_templated(stream, req, ctx, head_only)).await;
    }
    proxy_response(stream, req, ctx, head_only).await
}

/// [`proxy`] once `templates` is settled: the exchange for the upstream's kind.
async fn proxy_response<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
) -> (u16, u64, u64) {
    // `request_body { max_size }`: a declared length over it is refused before
    // anything is sent; a body that grows past it is cut off while streaming.
    let declared = crate::lifecycle::declared_length(&req.headers);
    if ctx.max_body.zip(declared).is_some_and(|(max, n)| n > max) {
        let (st, sent) = answer_failure(stream, req, ctx, head_only, 413).await;
        return (st, 0, sent);
    }
    let Some(p) = ctx.proxy.clone() else {
        let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
        return (st, 0, sent);
    };
    let mut body = RequestBody::new(stream);
    if expects_continue(&req.headers) {
        // With `expect_continue_timeout` an HTTP/1.1 upstream is asked first (the
        // field goes on); otherwise the body is on its way and the field is spent.
        if !asks_upstream_first(&p) {
            req.remove_header(&http::header::EXPECT);
        }
        body.expect_continue();
    }
    if let Some(set) = ctx.body_set.take() {
        // `request_body { set }`: this body, whatever the client sent.
        let n = set.len();
        body.replace(*set).await;
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.remove_header(&http::header::EXPECT);
        let _ = req.insert_header(http::header::CONTENT_LENGTH, itoa::Buffer::new().format(n));
    } else if let Some(limit) = p.request_buffers {
        // Past `max_size` the exchange refuses the body anyway: no need to hold more.
        let limit = ctx.max_body.map_or(limit, |m| {
            limit.min(usize::try_from(m).unwrap_or(usize::MAX).saturating_add(1))
        });
        match body.read_ahead(limit).await {
            Ok(true) => {
                let framed = req.headers.contains_key(http::header::CONTENT_LENGTH)
                    || req.headers.contains_key(http::header::TRANSFER_ENCODING);
                if let Some(n) = body.held_length().filter(|&n| n > 0 || framed) {
                    req.remove_header(&http::header::TRANSFER_ENCODING);
                    let _ = req
                        .insert_header(http::header::CONTENT_LENGTH, itoa::Buffer::new().format(n));
                }
            }
            Ok(false) => {}
            Err(()) => return (0, 0, 0),
        }
    }
    // Boxed: their states stay out of every request's future (most upstreams are
    // plain HTTP/1.1).
    if let Some(opts) = p.fastcgi.clone() {
        return Box::pin(fastcgi(&mut body, req, ctx, &p, &opts, head_only)).await;
    }
    if p.transport.multiplexed() {
        return Box::pin(proxy_h2(&mut body, req, ctx, &p, head_only)).await;
    }
    proxy_h1(&mut body, req, ctx, p, head_only).await
}

/// Proxies for a request with `templates`: a response of its types is held back whole
/// and answered rendered; others pass through. The upstream is asked for an
/// uncompressed body (a compressed one could not be rendered).
async fn proxy_templated<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
) -> (u16, u64, u64) {
    let Some(rule) = ctx.templates().cloned() else {
        return (0, 0, 0);
    };
    let asked = req.clone();
    req.remove_header(&http::header::ACCEPT_ENCODING);
    ctx.rare_mut().holding = true;
    let mut holding = crate::templates::Holding {
        inner: stream,
        rule: rule.clone(),
        held: None,
    };
    let (status, read, sent) = proxy_response(&mut holding, req, ctx, head_only).await;
    ctx.rare_mut().holding = false;
    let Some(held) = holding.held.take() else {
        return (status, read, sent);
    };
    let mut asked = asked;
    let table = ctx.table.clone();
    let Some(mut r) =
        crate::templates::finish(&rule, held, table.as_deref(), &mut asked, ctx).await
    else {
        stream.abort(false);
        return (status, read, 0);
    };
    crate::rewrite::reply(ctx, &mut r);
    let st = r.status;
    let sent = write_reply(stream, r, ctx, head_only).await.unwrap_or(0);
    (st, read, sent)
}

/// Whether a request with `Expect: 100-continue` waits for the upstream's `100 Continue`
/// before its body goes (`expect_continue_timeout`, HTTP/1.1 upstreams, body not read
/// ahead).
fn asks_upstream_first(p: &crate::upstream::ProxyHandler) -> bool {
    p.transport.expect_continue.is_some()
        && p.fastcgi.is_none()
        && !p.transport.multiplexed()
        && p.request_buffers.is_none()
}

/// Proxies to a plain HTTP/1.1 upstream over the keep-alive pool (or a direct TLS or
/// unix-socket connection); returns (status, request body bytes, response body bytes).
async fn proxy_h1<D: Downstream>(
    stream: &mut RequestBody<'_, D>,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    p: Arc<crate::upstream::ProxyHandler>,
    head_only: bool,
) -> (u16, u64, u64) {
    let host = crate::lifecycle::edit_upstream_request(ctx, req, &p);
    // The HTTP/1.1 request head; a body of unknown length goes chunked.
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let may_have_body =
        !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE") || length.is_some();
    let chunked = may_have_body && length.is_none();
    let out = upstream_request_head(req, chunked, p.transport.keepalive);
    // A body read ahead whole (`request_buffers`) can be sent again like no body.
    let streamed = may_have_body && !stream.replayable();
    // `expect_continue_timeout`: the field was kept for the upstream to answer.
    let ask_first = p
        .transport
        .expect_continue
        .filter(|_| may_have_body && expects_continue(&req.headers));
    // The upstream answered before it had the body: the connection is not reused.
    let mut body_skipped = false;
    let mut interim = Vec::new();
    // An upstream, and a connection to it: a connection that never opened carried no
    // request, so another upstream (or the same one, within `lb_try_duration`) is tried.
    // A request without a body can be sent again when an upstream fails it
    // (`lb_retry_match`, `GET` by default); a streamed body cannot.
    let (addr, pooled, mut upc, head_len, read) = 'attempt: loop {
        stream.rewind();
        interim.clear();
        let (addr, pooled, mut upc) = loop {
            let Some(up) = attempt::pick(&p, &*req, ctx).await else {
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 503).await;
                return (st, 0, sent);
            };
            // Plain TCP connections are pooled; TLS and unix-socket ones are opened per request.
            let pooled = !p.transport.tls && !up.unix;
            let addr = up.addr();
            let dial_start = Instant::now();
            let connected = match addr.filter(|_| pooled) {
                Some(a) => pool::checkout(a, &p.transport, ctx.proxy_client()).await,
                None if pooled => Err(std::io::Error::other("unresolved upstream address")),
                None => pool::connect_direct(&up, &p.transport, &host, ctx.proxy_client())
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
                Err(e) => {
                    let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                    if attempt::connect_failed(&p, ctx, timed_out) {
                        continue;
                    }
                    ctx.attempt.error = Some(CompactString::new(e.to_string()));
                    let code = if timed_out { 504 } else { 502 };
                    let (st, sent) = answer_failure(stream, req, ctx, head_only, code).await;
                    return (st, 0, sent);
                }
            }
        };
        use tokio::io::AsyncWriteExt;
        if upc.stream.write_all(&out).await.is_err() {
            if streamed {
                attempt::count_failure(ctx);
            } else if attempt::sent_failed(&p, &*req, ctx) {
                continue 'attempt;
            }
            let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
            return (st, 0, sent);
        }
        ctx.attempt.sent = Some(Instant::now());
        if let Some(wait) = ask_first {
            body_skipped = matches!(
                pool::await_continue(&mut upc, wait, &mut interim).await,
                pool::Continue::Answered
            );
        }
        // The request body, streamed.
        let mut read = 0u64;
        if may_have_body && !body_skipped {
            let deadline = body_deadline();
            let mut framed = Vec::new();
            loop {
                match recv_chunk(stream, deadline).await {
                    Ok(Some(chunk)) => {
                        read += chunk.len() as u64;
                        if ctx.max_body.is_some_and(|max| read > max) {
                            let (st, sent) = answer_failure(stream, req, ctx, head_only, 413).await;
                            return (st, read, sent);
                        }
                        // A body of unknown length goes chunked: size, data and CRLF in
                        // one write.
                        let piece: &[u8] = if chunked {
                            framed.clear();
                            crate::http1::chunk_into(&mut framed, &chunk);
                            &framed
                        } else {
                            &chunk
                        };
                        if upc.stream.write_all(piece).await.is_err() {
                            attempt::count_failure(ctx);
                            let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                            return (st, read, sent);
                        }
                    }
                    Ok(None) => break,
                    Err(()) => return (0, read, 0),
                }
            }
            if chunked && upc.stream.write_all(b"0\r\n\r\n").await.is_err() {
                attempt::count_failure(ctx);
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                return (st, read, sent);
            }
        }
        match pool::read_response_head(&mut upc, &p.transport, &mut interim).await {
            Ok(Some(n)) => {
                for h in &interim {
                    let (status, fields) = crate::http1::interim_fields(h);
                    stream.send_interim(status, fields).await;
                }
                break 'attempt (addr, pooled, upc, n, read);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                if streamed {
                    attempt::count_failure(ctx);
                } else if attempt::sent_failed(&p, &*req, ctx) {
                    continue 'attempt;
                }
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 504).await;
                return (st, read, sent);
            }
            _ => {
                if streamed {
                    attempt::count_failure(ctx);
                } else if attempt::sent_failed(&p, &*req, ctx) {
                    continue 'attempt;
                }
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                return (st, read, sent);
            }
        }
    };
    let rhead = upc.buf.split_to(head_len).freeze();
    let Some(UpstreamHead {
        status,
        framing,
        keepalive,
        fields,
    }) = parse_upstream_head(&rhead, head_only)
    else {
        ctx.attempt.error = Some("unusable response head".into());
        let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
        return (st, read, sent);
    };
    attempt::passive_check(ctx, status);
    let mut body = BodyReader::new(framing);
    let mut fields = fields;
    // `response_buffers`: the body is read ahead of the head; one that ends within the
    // bound goes out with its length.
    let held = match p.response_buffers.filter(|_| !head_only) {
        Some(limit) => match body.hold(&mut upc, limit).await {
            Ok(held) => {
                if body.complete && !matches!(framing, Framing::Length(_) | Framing::None) {
                    fields.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
                    fields.push((
                        "content-length".into(),
                        itoa::Buffer::new().format(held.len()).to_owned(),
                    ));
                }
                Some(held)
            }
            Err(()) => {
                ctx.attempt.error = Some("upstream closed mid-response".into());
                attempt::count_failure(ctx);
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                return (st, read, sent);
            }
        },
        None => None,
    };
    let mut rewrite = match send_proxied_head(stream, req, ctx, &p, status, fields, head_only).await
    {
        Head::Sent(rw) => rw,
        Head::Answered(st, sent) => return (st, read, sent),
        Head::Gone => return (status, read, 0),
    };
    // The body: decoded from the upstream's framing, rewritten if needed.
    let mut sent = 0u64;
    let mut relayed = match held {
        Some(b) => relay_proxied(stream, ctx, &mut rewrite, b, &mut sent).await,
        None => Ok(()),
    };
    while relayed.is_ok() {
        match body.next(&mut upc).await {
            Ok(Some(chunk)) => {
                relayed = relay_proxied(stream, ctx, &mut rewrite, chunk, &mut sent).await;
            }
            Ok(None) | Err(()) => break,
        }
    }
    if relayed.is_err() {
        crate::cache::finish(ctx, false);
        return (status, read, sent);
    }
    let complete = body.complete;
    crate::cache::finish(ctx, complete);
    let _ = relay_end(stream, rewrite.as_deref_mut(), &mut sent).await;
    if complete {
        let _ = stream.finish().await;
        if keepalive
            && p.transport.keepalive
            && !body_skipped
            && upc.buf.is_empty()
            && !matches!(framing, Framing::UntilClose)
        {
            if let Some(a) = addr.filter(|_| pooled) {
                pool::checkin(a, upc, &p.transport);
            }
        }
    } else {
        ctx.attempt.error = Some("upstream closed mid-response".into());
        stream.abort(false);
    }
    (status, read, sent)
}

/// An HTTP/1.1 upstream's response body, decoded from its framing piece by piece.
struct BodyReader {
    framing: Framing,
    /// Bytes still due with `Content-Length` framing.
    left: u64,
    dec: ChunkScanner,
    /// Chunked data taken out of its framing.
    data: Vec<u8>,
    /// The whole body was read.
    complete: bool,
}

impl BodyReader {
    fn new(framing: Framing) -> Self {
        BodyReader {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => u64::MAX,
            },
            dec: ChunkScanner::default(),
            data: Vec::new(),
            complete: matches!(framing, Framing::None),
        }
    }

    /// The next piece of the body (possibly empty); `Ok(None)` once it is complete,
    /// `Err` when the upstream failed or ended it early. Pieces leave the connection's
    /// buffer as `Bytes` (no copy) unless chunk framing has to be taken off.
    async fn next(&mut self, upc: &mut pool::UpstreamConn) -> Result<Option<Bytes>, ()> {
        if self.complete {
            return Ok(None);
        }
        if upc.buf.is_empty() && self.left > 0 {
            match upc.read_more_bulk().await {
                Ok(0) if matches!(self.framing, Framing::UntilClose) => {
                    self.complete = true;
                    return Ok(None);
                }
                Ok(n) if n > 0 => {}
                _ => return Err(()),
            }
        }
        let chunk = match self.framing {
            Framing::Chunked => {
                if self.data.capacity() == 0 {
                    self.data.reserve(16 * 1024);
                }
                self.data.clear();
                let (used, done) = self
                    .dec
                    .scan_data(&upc.buf, Some(&mut self.data))
                    .map_err(|_| ())?;
                upc.buf.advance(used);
                self.complete |= done;
                Bytes::copy_from_slice(&self.data)
            }
            _ => {
                let take = (upc.buf.len() as u64).min(self.left) as usize;
                if let Framing::Length(_) = self.framing {
                    self.left -= take as u64;
                    self.complete |= self.left == 0;
                }
                upc.buf.split_to(take).freeze()
            }
        };
        Ok(Some(chunk))
    }

    /// Reads the body until it ends or `limit` bytes are held (`response_buffers`).
    async fn hold(&mut self, upc: &mut pool::UpstreamConn, limit: usize) -> Result<Bytes, ()> {
        let mut held = bytes::BytesMut::new();
        while held.len() < limit {
            match self.next(upc).await? {
                Some(piece) => held.extend_from_slice(&piece),
                None => break,
            }
        }
        Ok(held.freeze())
    }
}

/// The HTTP/1.1 request head for an upstream (a body of unknown length goes chunked).
/// Synchronous, so its buffer building stays out of the request's future.
fn upstream_request_head(req: &RequestHeader, chunked: bool, keepalive: bool) -> Vec<u8> {
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
    if !keepalive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
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
    let mut slots = crate::http1::header_slots();
    let (parsed, resp) = crate::http1::parse_response(rhead, &mut slots);
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = resp.code.unwrap_or(502);
    let framing = crate::http1::upstream_framing(&resp, status, head_only)?;
    let keepalive = crate::http1::upstream_keepalive(&resp);
    let fields = resp
        .headers
        .iter()
        .filter(|h| !crate::request::hop_by_hop(h.name.as_bytes()))
        .map(|h| (h.name.into(), crate::http1::field_text(h.value)))
        .collect();
    Some(UpstreamHead {
        status,
        framing,
        keepalive,
        fields,
    })
}

/// Proxies to an HTTP/2 upstream (h2c, or h2 over TLS) over the shared
/// [`H2ConnPool`](h2_pool::H2ConnPool): bodies stream both ways within HTTP/2 flow
/// control, trailers pass through (gRPC). Connections that cannot be opened are retried
/// on other upstreams like every other transport's.
async fn proxy_h2<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    p: &Arc<crate::upstream::ProxyHandler>,
    head_only: bool,
) -> (u16, u64, u64) {
    let host = crate::lifecycle::edit_upstream_request(ctx, req, p);
    let bodyless = matches!(req.method.as_str(), "GET" | "HEAD")
        && req.headers.get(http::header::CONTENT_LENGTH).is_none();
    let idempotent = matches!(
        req.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    );
    let retryable = idempotent && bodyless;
    let dial = h2_pool::Dial {
        timeout: if p.transport.dial.is_zero() {
            std::time::Duration::from_secs(10)
        } else {
            p.transport.dial
        },
        socket: p.transport.socket,
        max_header: p.transport.response_head_limit() as u32,
    };
    let pool = h2_pool::H2ConnPool::global();
    let (up_req, mut resp, mut send, slot) = loop {
        let Some(up) = attempt::pick(p, &*req, ctx).await else {
            let (st, sent) = answer_failure(stream, req, ctx, head_only, 503).await;
            return (st, 0, sent);
        };
        let Some(addr) = up.addr() else {
            if attempt::connect_failed(p, ctx, false) {
                continue;
            }
            let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
            return (st, 0, sent);
        };
        let authority = if host.is_empty() {
            up.dial.as_str()
        } else {
            host.as_str()
        };
        let Some(up_req) = h2_upstream_request(req, authority, p.transport.tls) else {
            let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
            return (st, 0, sent);
        };
        let tls = if p.transport.tls {
            match p
                .transport
                .client_tls_h2()
                .and_then(|c| Ok((c, p.transport.server_name(&up.dial, authority)?)))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.attempt.error = Some(CompactString::new(&e));
                    let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                    return (st, 0, sent);
                }
            }
        } else {
            None
        };
        match pool
            .start(
                addr,
                dial,
                tls.as_ref(),
                up_req.clone(),
                bodyless,
                retryable,
            )
            .await
        {
            Ok((resp, send, slot)) => break (up_req, resp, send, slot),
            Err(e) => {
                // The stream was never opened: nothing reached the upstream.
                ctx.attempt.error = Some(CompactString::new(&e));
                if attempt::connect_failed(p, ctx, false) {
                    continue;
                }
                let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                return (st, 0, sent);
            }
        }
    };
    let mut slot = slot;
    let mut resp_ready: Option<http::Response<::h2::RecvStream>> = None;
    if retryable {
        // A stream the upstream refused (GOAWAY while it was in flight) was not
        // processed: an idempotent request without a body is sent again.
        let mut tries = 0;
        let addr = ctx.attempt.upstream.as_ref().and_then(|u| u.addr());
        loop {
            match (&mut resp).await {
                Ok(r) => {
                    resp_ready = Some(r);
                    break;
                }
                Err(e)
                    if tries < 2
                        && addr.is_some()
                        && (e.is_go_away() || e.reason() == Some(::h2::Reason::REFUSED_STREAM)) =>
                {
                    tries += 1;
                    let tls = match p.transport.tls {
                        true => p.transport.client_tls_h2().ok().and_then(|c| {
                            let dialed = ctx.attempt.upstream.as_ref().map(|u| u.dial.clone())?;
                            Some((c, p.transport.server_name(&dialed, &host).ok()?))
                        }),
                        false => None,
                    };
                    let Some(a) = addr else { break };
                    match pool
                        .start(a, dial, tls.as_ref(), up_req.clone(), bodyless, retryable)
                        .await
                    {
                        Ok((r, s2, sl)) => {
                            resp = r;
                            send = s2;
                            slot = sl;
                        }
                        Err(_) => {
                            attempt::count_failure(ctx);
                            let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                            return (st, 0, sent);
                        }
                    }
                }
                Err(_) => {
                    attempt::count_failure(ctx);
                    let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
                    return (st, 0, sent);
                }
            }
        }
    }
    let _slot = slot;
    ctx.attempt.sent = Some(Instant::now());
    // The request body streams up as it arrives while the response is awaited and then
    // relayed: both directions at once (gRPC bidirectional streams).
    let mut up = Upload {
        done: bodyless,
        deadline: body_deadline(),
        read: 0,
    };
    let resp = match resp_ready.take() {
        Some(r) => Ok(r),
        None => {
            let timeout = p.transport.read;
            let wait = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, &mut resp).await.ok(),
                    None => Some((&mut resp).await),
                }
            };
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    r = &mut wait => match r {
                        Some(r) => break r,
                        None => {
                            attempt::count_failure(ctx);
                            let (st, sent) = answer_failure(stream, req, ctx, head_only, 504).await;
                            return (st, up.read, sent);
                        }
                    },
                    chunk = recv_chunk(stream, up.deadline), if !up.done => {
                        if let Err(code) = up.forward(chunk, &mut send, ctx).await {
                            return upload_failed(stream, req, ctx, head_only, code, up.read).await;
                        }
                    }
                }
            }
        }
    };
    let Ok(resp) = resp else {
        attempt::count_failure(ctx);
        let (st, sent) = answer_failure(stream, req, ctx, head_only, 502).await;
        return (st, up.read, sent);
    };
    let status = resp.status().as_u16();
    attempt::passive_check(ctx, status);
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
    let mut rewrite = match send_proxied_head(stream, req, ctx, p, status, fields, head_only).await
    {
        Head::Sent(rw) => rw,
        Head::Answered(st, sent) => return (st, up.read, sent),
        Head::Gone => return (status, up.read, 0),
    };
    let mut sent = 0u64;
    loop {
        let chunk = tokio::select! {
            d = body.data() => d,
            chunk = recv_chunk(stream, up.deadline), if !up.done => {
                if up.forward(chunk, &mut send, ctx).await.is_err() {
                    // The response is under way: it can only be cut off.
                    crate::cache::finish(ctx, false);
                    stream.abort(false);
                    return (status, up.read, sent);
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        let Ok(chunk) = chunk else {
            ctx.attempt.error = Some("upstream stream failed mid-response".into());
            crate::cache::finish(ctx, false);
            stream.abort(false);
            return (status, up.read, sent);
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if relay_proxied(stream, ctx, &mut rewrite, chunk, &mut sent)
            .await
            .is_err()
        {
            crate::cache::finish(ctx, false);
            return (status, up.read, sent);
        }
    }
    crate::cache::finish(ctx, true);
    let _ = relay_end(stream, rewrite.as_deref_mut(), &mut sent).await;
    match body.trailers().await {
        Ok(Some(t)) => {
            let _ = stream.send_trailers(t).await;
        }
        _ => {
            let _ = stream.finish().await;
        }
    }
    (status, up.read, sent)
}

/// A request body on its way to an HTTP/2 upstream.
struct Upload {
    done: bool,
    deadline: tokio::time::Instant,
    read: u64,
}

impl Upload {
    /// Sends a piece of the client's body (or its end) upstream. `Err(status)`: the
    /// request fails with that status (413 over `request_body`, 502 when the upstream
    /// stream broke), or `Err(0)` when the client stalled or left.
    async fn forward(
        &mut self,
        chunk: Result<Option<Bytes>, ()>,
        send: &mut ::h2::SendStream<Bytes>,
        ctx: &mut RequestContext,
    ) -> Result<(), u16> {
        match chunk {
            Ok(Some(data)) => {
                self.read += data.len() as u64;
                if ctx.max_body.is_some_and(|max| self.read > max) {
                    send.send_reset(::h2::Reason::CANCEL);
                    return Err(413);
                }
                if h2_pool::send_all(send, data, false).await.is_err() {
                    attempt::count_failure(ctx);
                    return Err(502);
                }
            }
            Ok(None) => {
                self.done = true;
                let _ = h2_pool::send_all(send, Bytes::new(), true).await;
            }
            Err(()) => {
                send.send_reset(::h2::Reason::CANCEL);
                return Err(0);
            }
        }
        Ok(())
    }
}

/// The request body could not be sent up before the response head: answered with the
/// status, or dropped when the client went away.
async fn upload_failed<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    head_only: bool,
    code: u16,
    read: u64,
) -> (u16, u64, u64) {
    if code == 0 {
        return (0, read, 0);
    }
    let (st, sent) = answer_failure(stream, req, ctx, head_only, code).await;
    (st, read, sent)
}

/// The request as an HTTP/2 upstream gets it (`te: trailers` kept for gRPC).
fn h2_upstream_request(
    req: &RequestHeader,
    authority: &str,
    tls: bool,
) -> Option<http::Request<()>> {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut b = http::Request::builder()
        .method(req.method.clone())
        .uri(format!(
            "{}://{authority}{pq}",
            if tls { "https" } else { "http" }
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
    b.body(()).ok()
}

/// Runs a FastCGI exchange for the stream; failures before the head went out are
/// answered like a failed proxy attempt.
async fn fastcgi<D: Downstream>(
    stream: &mut D,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
    p: &Arc<crate::upstream::ProxyHandler>,
    opts: &crate::fastcgi::FastCgiOpts,
    head_only: bool,
) -> (u16, u64, u64) {
    let req_ref: &RequestHeader = req;
    let result = crate::fastcgi::run(p, opts, req_ref, ctx, stream, head_only).await;
    match result {
        Ok(x) => (x.status, x.request_bytes, x.body_bytes),
        Err((code, read)) => {
            let (st, s) = answer_failure(stream, req, ctx, head_only, code).await;
            (st, read, s)
        }
    }
}
