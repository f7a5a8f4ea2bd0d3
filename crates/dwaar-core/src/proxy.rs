//! `DwaarProxy`: the Pingora front-end (HTTP/1.1 and HTTP/2) of the request pipeline.
//!
//! Phases: `request_filter` makes the one `RouteStore` load and runs the pipeline;
//! `upstream_peer` picks a backend; `upstream_request_filter` adds proxy headers and
//! `header_up`; `response_filter` applies `header_down` and `header` edits; `logging`
//! settles per-upstream counters; `fail_to_proxy` maps upstream failures to 502/503/504
//! and runs `handle_errors`.

use crate::context::{ConnInfo, RequestContext, UpstreamFailure};
use crate::pipeline::{
    apply_edits, apply_request_rules, handle_request, normalize_host, render_rules, Outcome, Reply,
    ResponseHead,
};
use crate::request::HttpRequest;
use crate::route_table::RouteStore;
use async_trait::async_trait;
use bytes::Bytes;
use compact_str::CompactString;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The proxy service; cheap to share, holds only the route store.
pub struct DwaarProxy {
    pub store: Arc<RouteStore>,
}

impl ResponseHead for ResponseHeader {
    fn fields(&self) -> Vec<(CompactString, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    CompactString::new(k.as_str()),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn set(&mut self, name: &str, value: &str) {
        let v = crate::request::sanitize_header_value(value);
        let _ = self.insert_header(name.to_string(), v.as_ref());
    }
    fn add(&mut self, name: &str, value: &str) {
        let v = crate::request::sanitize_header_value(value);
        let _ = self.append_header(name.to_string(), v.as_ref());
    }
    fn remove(&mut self, name: &str) {
        let _ = self.remove_header(name);
    }
    fn replace_all(&mut self, name: &str, re: &regex::Regex, with: &str) {
        let values: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| re.replace_all(v, with).into_owned())
            .collect();
        if values.is_empty() {
            return;
        }
        let _ = self.remove_header(name);
        for v in values {
            self.add(name, &v);
        }
    }
}

fn conn_info(session: &Session) -> ConnInfo {
    let remote = session.client_addr().and_then(|a| a.as_inet()).copied();
    let local_port = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
        .unwrap_or(0);
    let mut c = ConnInfo {
        local_port,
        ..ConnInfo::default()
    };
    if let Some(r) = remote {
        c.remote = std::net::SocketAddr::new(crate::net::canonical(r.ip()), r.port());
    }
    c.tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some();
    if c.tls {
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        if let (Some(r), Some(l)) = (remote, local) {
            c.tls_policy = crate::server::tls_conn::policy_of(r, l).unwrap_or(0);
        }
    }
    c
}

/// Runs a FastCGI exchange for the request and answers errors before the head went
/// out the way a failed proxy attempt is answered (with `handle_errors`).
async fn serve_fastcgi(
    session: &mut Session,
    ctx: &mut RequestContext,
    p: &Arc<crate::upstream::ProxyHandler>,
    opts: &crate::fastcgi::FastCgiOpts,
) -> Result<()> {
    ctx.inflight = crate::server::inflight::enter();
    let req = session.req_header().clone();
    let result = {
        let mut down = PingoraDownstream {
            session: &mut *session,
            request_id: ctx.request_id,
            shape: crate::fastcgi::Shaping::take(p, &req, ctx),
        };
        let r = crate::fastcgi::run(p, opts, &req, ctx, &mut down).await;
        down.shape.give_back(ctx);
        r
    };
    if std::mem::take(&mut ctx.inflight) {
        crate::server::inflight::exit();
    }
    match result {
        Ok(_) => Ok(()),
        Err(code) => {
            let message = ctx
                .upstream_error
                .as_deref()
                .unwrap_or("fastcgi upstream failed")
                .to_string();
            let mut req = req;
            match crate::pipeline::proxy_error_reply(code, message, &mut req, ctx) {
                Some(r) => write_reply(session, ctx, r).await,
                None => Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "aborted by config",
                )),
            }
        }
    }
}

/// The client side of a FastCGI exchange on Pingora's H1/H2 sessions.
struct PingoraDownstream<'s> {
    session: &'s mut Session,
    request_id: Option<uuid::Uuid>,
    shape: crate::fastcgi::Shaping,
}

#[async_trait]
impl crate::fastcgi::Downstream for PingoraDownstream<'_> {
    async fn read_body(&mut self) -> std::io::Result<Option<Bytes>> {
        self.session
            .read_request_body()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    async fn write_head(
        &mut self,
        status: u16,
        mut headers: Vec<(CompactString, String)>,
    ) -> std::io::Result<()> {
        let io = |e: Box<Error>| std::io::Error::other(e.to_string());
        let head_only = self.session.req_header().method == http::Method::HEAD;
        // The responder's Content-Length is among `headers`; a rewrite may change it.
        let length = self.shape.head(status, &mut headers, head_only);
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 4)).map_err(io)?;
        for (k, v) in headers {
            resp.append_header(k.to_string(), v).map_err(io)?;
        }
        if let Some(id) = self.request_id {
            let mut buf = [0u8; 36];
            resp.insert_header("x-request-id", &*id.hyphenated().encode_lower(&mut buf))
                .map_err(io)?;
        }
        let no_body = status == 204 || status == 304 || status < 200 || head_only;
        if length.is_none() && !no_body && self.session.req_header().version < http::Version::HTTP_2
        {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
                .map_err(io)?;
        }
        self.session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(io)
    }

    async fn write_body(&mut self, chunk: Bytes) -> std::io::Result<()> {
        let chunk = self.shape.body(chunk)?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.session
            .write_response_body(Some(chunk), false)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        let last = Some(self.shape.end()?).filter(|b| !b.is_empty());
        self.session
            .write_response_body(last, true)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Whether a raw HTTP/1 head has a field named `name` (ASCII case-insensitive).
fn raw_has_field(head: &[u8], name: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    })
}

/// The request's host: `Host`, or the URI authority (HTTP/2 `:authority`).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

async fn write_reply(session: &mut Session, ctx: &RequestContext, mut r: Reply) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + 3))?;
    for (k, v) in r.headers.drain(..) {
        resp.append_header(k.to_string(), v)?;
    }
    if let Some(id) = ctx.request_id {
        let mut buf = [0u8; 36];
        resp.insert_header("x-request-id", &*id.hyphenated().encode_lower(&mut buf))?;
    }
    if let Some(v) = crate::quic::alt_svc(ctx) {
        resp.insert_header("alt-svc", v)?;
    }
    let no_body_status = r.status == 204 || r.status == 304 || r.status < 200;
    let len = r.body_len();
    let rewrite = r.rewrite.take();
    if !no_body_status {
        if rewrite.is_none() {
            resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        } else if session.req_header().version < http::Version::HTTP_2 {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    if r.close || ctx.close {
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    let end = head_only || no_body_status || (len == 0 && rewrite.is_none());
    session.write_response_header(Box::new(resp), end).await?;
    if end {
        return Ok(());
    }
    if let Some(mut rw) = rewrite {
        return write_rewritten(session, r, &mut rw).await;
    }
    let mut stream = r.stream.take();
    let body = std::mem::take(&mut r.body);
    if !body.is_empty() {
        session
            .write_response_body(Some(body), stream.is_none())
            .await?;
    }
    if let Some(s) = stream.as_mut() {
        loop {
            let chunk = s.next_chunk().map_err(|e| {
                pingora_error::Error::because(pingora_error::ErrorType::ReadError, "file body", e)
            })?;
            let last = s.is_empty();
            match chunk {
                Some(c) => session.write_response_body(Some(c), last).await?,
                None => break,
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}

/// Sends a reply's body through its rewrite (compression, analytics), chunk by chunk.
async fn write_rewritten(
    session: &mut Session,
    mut r: Reply,
    rw: &mut crate::rewrite::Rewrite,
) -> Result<()> {
    let fail = |e: std::io::Error| {
        pingora_error::Error::because(
            pingora_error::ErrorType::InternalError,
            "rewriting a reply",
            e,
        )
    };
    let first = rw
        .feed(Some(std::mem::take(&mut r.body)), false)
        .map_err(fail)?;
    if !first.is_empty() {
        session.write_response_body(Some(first), false).await?;
    }
    if let Some(s) = r.stream.as_mut() {
        while let Some(c) = s.next_chunk().map_err(|e| {
            pingora_error::Error::because(pingora_error::ErrorType::ReadError, "file body", e)
        })? {
            let out = rw.feed(Some(c), false).map_err(fail)?;
            if !out.is_empty() {
                session.write_response_body(Some(out), false).await?;
            }
        }
    }
    let last = rw.feed(None, true).map_err(fail)?;
    session.write_response_body(Some(last), true).await
}

/// `X-Forwarded-For`/`-Proto`/`-Host` (kept from trusted proxies only) and
/// `X-Request-Id` on an upstream request; shared by both front-ends.
pub(crate) fn forwarded_headers(ctx: &RequestContext, up: &mut dyn HttpRequest, host: &str) {
    use compact_str::ToCompactString;
    let peer_ip = ctx.conn.remote.ip().to_compact_string();
    let xff = match (ctx.peer_trusted, up.header("x-forwarded-for")) {
        (true, Some(prev)) if !prev.is_empty() => compact_str::format_compact!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    up.set_header("x-forwarded-for", &xff);
    if !(ctx.peer_trusted && up.header_count("x-forwarded-proto") > 0) {
        up.set_header("x-forwarded-proto", ctx.scheme());
    }
    if !(ctx.peer_trusted && up.header_count("x-forwarded-host") > 0) {
        up.set_header("x-forwarded-host", host);
    }
    if let Some(id) = ctx.request_id {
        let mut buf = [0u8; 36];
        up.set_header("x-request-id", id.hyphenated().encode_lower(&mut buf));
    }
}

/// Passive health: a response status or latency that counts as a failure.
pub(crate) fn passive_check(ctx: &RequestContext, code: u16) {
    if let (Some(p), Some(u)) = (&ctx.proxy, &ctx.upstream) {
        if let Some(passive) = &p.passive {
            let bad_status = passive
                .unhealthy_status
                .iter()
                .any(|s| status_matches(s, code));
            let slow = match (passive.unhealthy_latency_ms, ctx.upstream_start) {
                (Some(limit), Some(t)) => t.elapsed().as_millis() as u64 >= limit,
                _ => false,
            };
            if bad_status || slow {
                u.record_failure(passive);
            }
        }
    }
}

/// Runs the checks the pipeline asked for (`basic_auth`, `forward_auth`, a `cache`
/// wait) off the request path, each time running the pipeline again on `original`, the
/// request as it arrived, with the check's edits. Without `original` (the table has no
/// such handler) a check cannot be settled. Shared by Pingora and HTTP/3.
pub(crate) async fn settle_checks(
    table: &crate::route_table::RouteTable,
    mut outcome: Outcome,
    original: Option<&RequestHeader>,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
) -> Outcome {
    let mut rounds = 0;
    while let (Outcome::Check(check), Some(original)) = (&outcome, original) {
        rounds += 1;
        match crate::auth::run(check.clone()).await {
            crate::auth::Checked::Answer(r) => return Outcome::Reply(r),
            crate::auth::Checked::Resume(edits) => {
                *req = original.clone();
                for (k, v) in &edits {
                    match v {
                        Some(v) => HttpRequest::set_header(req, k, v),
                        None => HttpRequest::remove_header(req, k),
                    }
                }
                *ctx = RequestContext {
                    start: ctx.start,
                    conn: ctx.conn,
                    host: std::mem::take(&mut ctx.host),
                    is_upgrade: ctx.is_upgrade,
                    ..RequestContext::default()
                };
                outcome = handle_request(table, req, ctx);
                if rounds >= 4 {
                    if let Outcome::Check(_) = outcome {
                        outcome = Outcome::Reply(Reply::status(503));
                    }
                }
            }
        }
    }
    outcome
}

/// A request is on its way to `up`: counted in the upstream's active requests (until
/// [`release_upstream`]), one more attempt, timed from now. Every front-end calls it.
pub(crate) fn count_upstream(ctx: &mut RequestContext, up: Arc<crate::upstream::UpstreamState>) {
    up.active.fetch_add(1, Ordering::Relaxed);
    ctx.active_counted = true;
    ctx.upstream = Some(up);
    ctx.attempts += 1;
    ctx.upstream_start = Some(Instant::now());
}

/// The edits a request gets on its way upstream on the lean path and over HTTP/3:
/// forwarding fields, then `header_up`. Returns the client's `Host`.
pub(crate) fn edit_upstream_request(
    ctx: &RequestContext,
    req: &mut dyn HttpRequest,
    p: &crate::upstream::ProxyHandler,
) -> compact_str::CompactString {
    let host = compact_str::CompactString::new(req.header("host").unwrap_or(""));
    forwarded_headers(ctx, req, &host);
    apply_request_rules(&p.header_up, req, ctx);
    host
}

pub(crate) fn release_upstream(ctx: &mut RequestContext) {
    if ctx.active_counted {
        if let Some(u) = &ctx.upstream {
            u.active.fetch_sub(1, Ordering::Relaxed);
        }
        ctx.active_counted = false;
    }
}

#[async_trait]
impl ProxyHttp for DwaarProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::default()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        ctx.start = Some(Instant::now());
        if crate::server::inflight::draining() {
            session.set_keepalive(None);
        }
        ctx.conn = conn_info(session);
        let table = self.store.load();
        if let Some(t) = table.port(ctx.conn.local_port).map(|p| p.timeouts) {
            if t.read_body.is_some() {
                session.set_read_timeout(t.read_body);
            }
            if t.write.is_some() {
                session.set_write_timeout(t.write);
            }
            if let Some(idle) = t.idle {
                session.set_keepalive(Some(idle.as_secs().max(1)));
            }
        }
        let host = match request_host(session.req_header()) {
            Some(h) => normalize_host(h),
            None => Some(Default::default()),
        };
        let Some(host) = host else {
            ctx.rejected_by = Some("host");
            write_reply(
                session,
                ctx,
                Reply {
                    status: 400,
                    close: true,
                    ..Default::default()
                },
            )
            .await?;
            return Ok(true);
        };
        ctx.host = host;
        // Pingora drops `Content-Length` when `Transfer-Encoding` is present; the raw
        // head still shows whether the client sent both.
        if session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
        {
            let both = session
                .as_http1()
                .is_some_and(|h1| raw_has_field(&h1.get_headers_raw_bytes(), b"content-length"));
            if let Some(r) = crate::pipeline::framing_check(session.req_header(), both) {
                ctx.rejected_by = Some("framing");
                write_reply(session, ctx, r).await?;
                return Ok(true);
            }
        }
        ctx.is_upgrade = session.is_upgrade_req();
        // basic_auth and forward_auth answer off the request path; then the pipeline
        // runs again from the request as it arrived.
        let original = table.rerun_checks.then(|| session.req_header().clone());
        let outcome = handle_request(&table, session.req_header_mut(), ctx);
        let outcome = settle_checks(
            &table,
            outcome,
            original.as_ref(),
            session.req_header_mut(),
            ctx,
        )
        .await;
        ctx.table = Some(table);
        match outcome {
            Outcome::Reply(mut r) => {
                crate::rewrite::reply(ctx, &mut r);
                write_reply(session, ctx, r).await?;
                Ok(true)
            }
            Outcome::Internal(i) => {
                let limit = i.body_limit();
                let mut body = bytes::BytesMut::new();
                while let Some(chunk) = session.read_request_body().await? {
                    if body.len() + chunk.len() > limit {
                        ctx.close = true;
                        write_reply(session, ctx, Reply::status(413)).await?;
                        return Ok(true);
                    }
                    body.extend_from_slice(&chunk);
                }
                let r = crate::analytics::answer(i, body.freeze()).await;
                write_reply(session, ctx, r).await?;
                Ok(true)
            }
            Outcome::Proxy => {
                let Some(p) = ctx.proxy.clone() else {
                    return Ok(false);
                };
                let Some(opts) = p.fastcgi.clone() else {
                    return Ok(false);
                };
                serve_fastcgi(session, ctx, &p, &opts).await?;
                Ok(true)
            }
            Outcome::Check(_) => {
                write_reply(session, ctx, Reply::status(503)).await?;
                Ok(true)
            }
            Outcome::Abort => {
                ctx.abort = true;
                Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "aborted by config",
                ))
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let (Some(max), Some(b)) = (ctx.max_body, body.as_ref()) {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > max {
                ctx.rejected_by = Some("request_body");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let Some(proxy) = ctx.proxy.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no proxy handler"));
        };
        release_upstream(ctx);
        if ctx.attempts > 0 && !proxy.try_interval.is_zero() && !proxy.try_duration.is_zero() {
            tokio::time::sleep(proxy.try_interval).await;
        }
        let start = ctx.start.unwrap_or_else(Instant::now);
        let i = loop {
            if let Some(i) = proxy.select(session.req_header(), ctx) {
                break i;
            }
            // With lb_try_duration, keep looking (any upstream, again) until it runs out.
            if !proxy.try_duration.is_zero()
                && start.elapsed() + proxy.try_interval < proxy.try_duration
            {
                ctx.tried.clear();
                tokio::time::sleep(proxy.try_interval.max(std::time::Duration::from_millis(10)))
                    .await;
                continue;
            }
            ctx.upstream_failure = UpstreamFailure::NoneAvailable;
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no upstream available",
            ));
        };
        let up = proxy.upstreams[i].clone();
        // The first HTTP/2 connection to an upstream: one request opens it while the
        // others of a burst wait, then they share it as streams.
        if proxy.transport.multiplexed() && !up.h2_open.load(Ordering::Acquire) {
            let turn = up.h2_first.clone().lock_owned().await;
            if !up.h2_open.load(Ordering::Acquire) {
                ctx.h2_first = Some(turn);
            }
        }
        count_upstream(ctx, up);
        ctx.tried.push(i);
        match proxy.peer(i, &ctx.host) {
            Some(p) => Ok(Box::new(p)),
            None => {
                ctx.upstream_failure = UpstreamFailure::Connect;
                Err(Error::explain(
                    ErrorType::ConnectError,
                    "cannot resolve upstream address",
                ))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The next waiting request tries to open the connection.
        ctx.h2_first = None;
        ctx.upstream_failure = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            UpstreamFailure::Timeout
        } else {
            UpstreamFailure::Connect
        };
        if let (Some(p), Some(u)) = (&ctx.proxy, &ctx.upstream) {
            if let Some(passive) = &p.passive {
                u.record_failure(passive);
            }
            let start = ctx.start.unwrap_or_else(Instant::now);
            // A connection that never opened carried no request: retrying is always safe.
            if p.may_retry(ctx.attempts, start) {
                if ctx.tried.len() >= p.upstreams.len() && !p.try_duration.is_zero() {
                    // Every upstream failed once; within lb_try_duration they may be retried.
                    ctx.tried.clear();
                }
                if ctx.tried.len() < p.upstreams.len() {
                    e.set_retry(true);
                }
            }
        }
        release_upstream(ctx);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let host = request_host(session.req_header())
            .map(str::to_string)
            .unwrap_or_default();
        forwarded_headers(ctx, up, &host);
        if up.headers.get(http::header::HOST).is_none() {
            // HTTP/2 clients send :authority; HTTP/1 upstreams need a Host header.
            if let Some(a) = up.uri.authority().map(|a| a.as_str().to_string()) {
                up.insert_header(http::header::HOST, a)?;
            }
        }
        if let Some(p) = ctx.proxy.clone() {
            if !p.transport.keepalive && !ctx.is_upgrade {
                up.insert_header(http::header::CONNECTION, "close")?;
            }
            apply_request_rules(&p.header_up, up, ctx);
        }
        // Revalidating a stored response: ask the origin whether it changed.
        if let Some(c) = ctx.cache.as_ref() {
            for (k, v) in &c.conditional {
                up.insert_header(*k, v.as_str())?;
            }
        }
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        ctx.upstream_duration = ctx.upstream_sent.map(|t| t.elapsed());
        passive_check(ctx, resp.status.as_u16());
        // Framing Dwaar cannot relay safely: 502, and the connection is not reused.
        let codings: Vec<&http::HeaderValue> = resp
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .collect();
        let chunked_only = codings.is_empty()
            || (codings.len() == 1
                && codings[0]
                    .to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")));
        if !chunked_only {
            ctx.upstream_error = Some(CompactString::const_new("unsupported transfer coding"));
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream response with an unsupported Transfer-Encoding",
            ));
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if !reused {
            if let (Some(u), Some(t)) = (&ctx.upstream, ctx.upstream_start) {
                u.record_connect(t.elapsed());
            }
        }
        if let (Some(_), Some(u)) = (ctx.h2_first.take(), &ctx.upstream) {
            u.h2_open.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(p) = ctx.proxy.clone() {
            if !p.header_down.is_empty() {
                let mut edits = Vec::with_capacity(p.header_down.len());
                render_rules(&p.header_down, session.req_header(), ctx, &mut edits);
                apply_edits(&edits, resp);
            }
        }
        // The cache sees the proxy's answer before the site's own `header` edits.
        if ctx.cache.is_some() {
            let status = resp.status.as_u16();
            if status >= 500 && crate::cache::stale_usable_for_error(ctx) {
                // The stored response stands in (from `fail_to_proxy`).
                return Err(Error::explain(
                    ErrorType::Custom("cache-stale-if-error"),
                    "the origin failed; answered from the cache",
                ));
            }
            let head_request = session.req_header().method == http::Method::HEAD;
            if crate::cache::on_response(ctx, status, resp, head_request) {
                // A 304 to our revalidation: the stored response is sent as a reply
                // (from `fail_to_proxy`, before anything of the 304 went out).
                return Err(Error::explain(
                    ErrorType::Custom("cache-revalidated"),
                    "answered from the revalidated cache entry",
                ));
            }
        }
        // Immediate edits were made before the upstream answered: its fields are added
        // next to them (Caddy's semantics); deferred edits act on the final response.
        crate::pipeline::apply_immediate_to_proxied(&ctx.resp_immediate, resp);
        apply_edits(&ctx.resp_deferred, resp);
        if let Some(c) = ctx.set_cookie.take() {
            resp.append_header(http::header::SET_COOKIE, c)?;
        }
        if let Some(id) = ctx.request_id {
            let mut buf = [0u8; 36];
            resp.insert_header("x-request-id", &*id.hyphenated().encode_lower(&mut buf))?;
        }
        if let Some(v) = crate::quic::alt_svc(ctx) {
            resp.insert_header("alt-svc", v)?;
        }
        if ctx.page.is_some() || ctx.encode.is_some() {
            let status = resp.status.as_u16();
            let had_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
            if let Some(rw) = crate::rewrite::begin(ctx, status, resp) {
                let head_only = session.req_header().method == http::Method::HEAD;
                if !head_only {
                    ctx.rewrite = Some(Box::new(rw));
                }
                let h1 = session.req_header().version < http::Version::HTTP_2;
                if had_length
                    && !resp.headers.contains_key(http::header::CONTENT_LENGTH)
                    && h1
                    && !head_only
                {
                    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(c) = ctx.cache.as_mut() {
            if let (Some(fill), Some(b)) = (c.fill.as_mut(), body.as_ref()) {
                fill.push(b);
            }
        }
        if end_of_stream && ctx.cache.is_some() {
            crate::cache::finish(ctx, true);
        }
        if let Some(rw) = ctx.rewrite.as_mut() {
            let out = rw.feed(body.take(), end_of_stream).map_err(|e| {
                Error::because(ErrorType::InternalError, "rewriting the response body", e)
            })?;
            *body = Some(out);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        release_upstream(ctx);
        if let Some(r) = crate::cache::revalidated_reply(ctx) {
            let _ = write_reply(session, ctx, r).await;
            return FailToProxy {
                error_code: 200,
                can_reuse_downstream: true,
            };
        }
        if ctx.abort {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ if ctx.upstream_failure == UpstreamFailure::Timeout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    if ctx.upstream.is_some() || ctx.proxy.is_some() {
                        502
                    } else {
                        500
                    }
                }
            },
        };
        if code == 0 {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if code >= 500 {
            ctx.upstream_error = Some(short_error(e));
        }
        // The response may already have started; then nothing more can be sent.
        if session.response_written().is_none() && code >= 500 {
            if let Some(r) = crate::cache::stale_for_error(ctx) {
                let _ = write_reply(session, ctx, r).await;
                return FailToProxy {
                    error_code: 200,
                    can_reuse_downstream: false,
                };
            }
        }
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let Some(reply) =
            crate::pipeline::proxy_error_reply(code, e.to_string(), session.req_header_mut(), ctx)
        else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.close = true;
        let _ = write_reply(session, ctx, reply).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestContext) {
        // An unfinished fill is dropped; requests waiting for it look again.
        crate::cache::finish(ctx, false);
        access_log(session, ctx);
        release_upstream(ctx);
        if std::mem::take(&mut ctx.inflight) {
            crate::server::inflight::exit();
        }
    }
}

/// A short, single-line description of a proxy error for the access log.
fn short_error(e: &Error) -> CompactString {
    let mut s = CompactString::new(e.etype().as_str());
    if let Some(c) = e.context.as_ref() {
        let text = c.as_str();
        if !text.is_empty() {
            s.push_str(": ");
            s.push_str(&text[..text.floor_char_boundary_compat(120)]);
        }
    }
    s
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Settles the finished request: metrics, analytics and the access log (never blocks).
fn access_log(session: &Session, ctx: &RequestContext) {
    let req = session.req_header();
    let down = session.as_downstream();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    crate::metrics::observe(
        ctx,
        req.method.as_str(),
        status,
        down.body_bytes_read() as u64,
        down.body_bytes_sent() as u64,
    );
    crate::analytics::record(ctx, status, down.body_bytes_sent() as u64);
    if !is_logged(ctx) {
        return;
    }
    log_request(
        ctx,
        LogParts {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query().unwrap_or(""),
            version: req.version,
            user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
            referer: req.headers.get(http::header::REFERER).cloned(),
            status: session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0),
            bytes_read: down.body_bytes_read() as u64,
            bytes_written: down.body_bytes_sent() as u64,
        },
    );
}

/// What a front-end knows about a finished request, for its log record.
pub(crate) struct LogParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub version: http::Version,
    pub user_agent: Option<http::HeaderValue>,
    pub referer: Option<http::HeaderValue>,
    pub status: u16,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// When the request started, in Unix milliseconds: read from the clock only for requests
/// that are logged, not on every request.
fn start_unix_ms(ctx: &RequestContext) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let elapsed = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
    now.saturating_sub(elapsed).as_millis() as u64
}

/// Whether the request goes to an access log (its site has `log`, no `log_skip` matched);
/// front-ends check it before gathering the record's parts.
pub(crate) fn is_logged(ctx: &RequestContext) -> bool {
    !ctx.skip_log && ctx.site.as_ref().is_some_and(|s| s.log.is_some())
}

/// Builds the access-log record from the context and a front-end's parts.
pub(crate) fn log_request(ctx: &RequestContext, p: LogParts<'_>) {
    let Some(logger) = ctx.site.as_ref().and_then(|s| s.log.as_ref()) else {
        return;
    };
    if ctx.skip_log {
        return;
    }
    // The request as the client sent it, before any rewrite.
    let (path, query) = match ctx.orig_uri.as_deref() {
        Some(orig) => orig.split_once('?').unwrap_or((orig, "")),
        None => (p.path, p.query),
    };
    let record = dwaar_log::RequestLog {
        ts_ms: start_unix_ms(ctx),
        request_id: ctx.request_id,
        method: CompactString::new(p.method),
        host: ctx.host.clone(),
        path: CompactString::new(path),
        query: CompactString::new(query),
        proto: dwaar_log::record::proto_name(p.version),
        status: p.status,
        duration_us: ctx
            .start
            .map(|s| s.elapsed().as_micros() as u64)
            .unwrap_or(0),
        upstream_duration_us: ctx.upstream_duration.map(|d| d.as_micros() as u64),
        upstream_addr: ctx.upstream.as_ref().map(|u| CompactString::new(&u.dial)),
        remote_ip: ctx.conn.remote.ip(),
        remote_port: ctx.conn.remote.port(),
        client_ip: ctx.client_ip.unwrap_or(ctx.conn.remote.ip()),
        is_bot: crate::security::is_bot(p.user_agent.as_ref().and_then(|v| v.to_str().ok())),
        user_agent: p.user_agent,
        referer: p.referer,
        bytes_read: p.bytes_read,
        bytes_written: p.bytes_written,
        rejected_by: ctx.rejected_by,
        cache: ctx
            .cache_served
            .or(ctx.cache.as_ref().map(|c| c.status))
            .map(|s| s.as_str()),
        encoding: ctx.encoded,
        error: ctx.upstream_error.clone(),
        ..Default::default()
    };
    logger.log(record);
}

fn status_matches(pattern: &str, code: u16) -> bool {
    if let Some(class) = pattern.strip_suffix("xx") {
        class
            .parse::<u16>()
            .map(|c| c == code / 100)
            .unwrap_or(false)
    } else {
        pattern.parse::<u16>().map(|c| c == code).unwrap_or(false)
    }
}
