//! `DwaarProxy`: the Pingora front-end (HTTP/1.1 and HTTP/2) of the request pipeline.
//!
//! Phases: `request_filter` makes the one `RouteStore` load and runs the pipeline;
//! `upstream_peer` picks a backend; `upstream_request_filter` adds proxy headers and
//! `header_up`; `response_filter` applies `header_down` and `header` edits; `logging`
//! settles per-upstream counters; `fail_to_proxy` maps upstream failures to 502/503/504
//! and runs `handle_errors`.

use crate::context::{ConnInfo, RequestContext, UpstreamFailure};
use crate::lifecycle::downstream::Downstream;
use crate::lifecycle::{attempt, inflight, LogParts};
use crate::pipeline::{
    apply_edits, apply_request_rules, render_rules, Outcome, Reply, ResponseHead,
};
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

/// A request's context on Pingora's path: the lifecycle's [`RequestContext`] (reached
/// through `Deref`) and what only Pingora's phases need.
#[derive(Default)]
pub struct PingoraCtx {
    req: RequestContext,
    /// `abort` ran: the connection closes without an answer.
    abort: bool,
    /// Request body bytes seen so far (`request_body { max_size }` while proxying).
    body_seen: u64,
    /// The request upgrades its connection (WebSocket): never `Connection: close`.
    is_upgrade: bool,
    /// The turn of the request opening an upstream's first HTTP/2 connection.
    h2_first: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// `handle_response` took the upstream's answer: what to do instead.
    intercepted: Option<crate::lifecycle::ResponseHandled>,
    /// An upgrade to a proxy that watches its tunnels: the dial's socket duplicate.
    tunnel_socket: Option<crate::upstream::tunnels::SocketSlot>,
    /// The open tunnel, while it is watched (`stream_timeout`, `stream_close_delay`).
    tunnel: Option<crate::upstream::tunnels::TunnelGuard>,
}

impl std::ops::Deref for PingoraCtx {
    type Target = RequestContext;
    fn deref(&self) -> &RequestContext {
        &self.req
    }
}

impl std::ops::DerefMut for PingoraCtx {
    fn deref_mut(&mut self) -> &mut RequestContext {
        &mut self.req
    }
}

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
        local_ip: session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
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
        if let Some((policy, facts)) = remote
            .zip(local)
            .and_then(|(r, l)| crate::server::tls_conn::known(r, l))
        {
            c.tls_policy = policy;
            c.tls_facts = Some(facts);
        }
    }
    c
}

/// Whether this request is proxied by the shared exchange code ([`crate::lifecycle::exchange::proxy`],
/// as for HTTP/2 and HTTP/3) rather than by Pingora's own: FastCGI, the body buffering
/// options, `request_body { set }`, `templates`, and `Expect: 100-continue` requests (answered as on
/// every other path, with `expect_continue_timeout` honoured). Upgrades stay with
/// Pingora, which relays them.
fn served_by_shared_exchange(
    p: &crate::upstream::ProxyHandler,
    req: &RequestHeader,
    ctx: &PingoraCtx,
) -> bool {
    p.fastcgi.is_some()
        || (!ctx.is_upgrade
            && (p.shared_exchange()
                || ctx.body_set.is_some()
                || ctx.templates().is_some()
                || crate::lifecycle::request_body::expects_continue(&req.headers)))
}

/// Proxies the request through the shared exchange code, which answers failures the
/// way a failed Pingora attempt is answered (with `handle_errors`).
async fn serve_shared(session: &mut Session, ctx: &mut RequestContext) {
    let mut req = session.req_header().clone();
    let head_only = req.method == http::Method::HEAD;
    let mut down = PingoraDownstream { session };
    crate::lifecycle::exchange::proxy(&mut down, &mut req, ctx, head_only).await;
}

/// A Pingora session (HTTP/1 or HTTP/2) as the lifecycle's client side.
struct PingoraDownstream<'s> {
    session: &'s mut Session,
}

impl Downstream for PingoraDownstream<'_> {
    fn version(&self) -> http::Version {
        self.session.req_header().version
    }

    async fn recv_data(&mut self) -> std::result::Result<Option<Bytes>, ()> {
        self.session.read_request_body().await.map_err(|_| ())
    }

    async fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(CompactString, String)>,
        ctx: &RequestContext,
        close: bool,
    ) -> std::result::Result<(), ()> {
        let resp = pingora_head(self.session, status, fields, ctx, close).map_err(|_| ())?;
        self.session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|_| ())
    }

    async fn send_interim(&mut self, status: u16, fields: Vec<(String, String)>) {
        // HTTP/1.1 only: Pingora's HTTP/2 sessions are not served here.
        if self.session.req_header().version != http::Version::HTTP_11 {
            return;
        }
        let Ok(mut head) = ResponseHeader::build(status, Some(fields.len())) else {
            return;
        };
        for (k, v) in fields {
            let _ = head.append_header(k, v);
        }
        let _ = self
            .session
            .write_response_header(Box::new(head), false)
            .await;
    }

    async fn send_data(&mut self, data: Bytes) -> std::result::Result<(), ()> {
        self.session
            .write_response_body(Some(data), false)
            .await
            .map_err(|_| ())
    }

    async fn send_trailers(&mut self, trailers: http::HeaderMap) -> std::result::Result<(), ()> {
        // HTTP/2 ends the stream with them; Pingora's HTTP/1 writer has no trailers
        // (they are dropped), so the body is ended there as usual.
        let h2 = self.session.as_downstream().as_http2().is_some();
        self.session
            .as_downstream_mut()
            .write_response_trailers(trailers)
            .await
            .map_err(|_| ())?;
        if h2 {
            return Ok(());
        }
        self.finish().await
    }

    async fn finish(&mut self) -> std::result::Result<(), ()> {
        self.session
            .write_response_body(None, true)
            .await
            .map_err(|_| ())
    }

    fn declared_length(&self) -> Option<u64> {
        crate::lifecycle::declared_length(&self.session.req_header().headers)
    }

    fn awaits_continue(&self) -> bool {
        self.session.body_bytes_read() == 0
            && crate::lifecycle::request_body::expects_continue(&self.session.req_header().headers)
    }

    fn abort(&mut self, _refused: bool) {
        self.session.set_keepalive(None);
    }
}

/// The response head for a Pingora session: the fields, `X-Request-Id`, `Alt-Svc`, and
/// the framing (chunked on HTTP/1 when no length is known; `Connection: close`).
fn pingora_head(
    session: &mut Session,
    status: u16,
    fields: Vec<(CompactString, String)>,
    ctx: &RequestContext,
    close: bool,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(fields.len() + 4))?;
    let mut has_length = false;
    for (k, v) in fields {
        if k.eq_ignore_ascii_case("x-request-id") && ctx.request_id.is_some() {
            continue;
        }
        has_length |= k.eq_ignore_ascii_case("content-length");
        resp.append_header(k.to_string(), v)?;
    }
    if let Some(id) = ctx.request_id {
        let mut buf = [0u8; 36];
        resp.insert_header("x-request-id", &*id.hyphenated().encode_lower(&mut buf))?;
    }
    if let Some(v) = crate::lifecycle::alt_svc(ctx) {
        resp.insert_header("alt-svc", v)?;
    }
    let req = session.req_header();
    let no_body =
        status == 204 || status == 304 || status < 200 || req.method == http::Method::HEAD;
    if !has_length && !no_body && req.version < http::Version::HTTP_2 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    if close {
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    Ok(resp)
}

/// The request's host: `Host`, or the URI authority (HTTP/2 `:authority`).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

async fn write_reply(session: &mut Session, ctx: &RequestContext, r: Reply) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    crate::lifecycle::downstream::write_reply(&mut PingoraDownstream { session }, r, ctx, head_only)
        .await
        .map(|_| ())
        .map_err(|()| Error::explain(ErrorType::WriteError, "writing a reply"))
}

#[async_trait]
impl ProxyHttp for DwaarProxy {
    type CTX = PingoraCtx;

    fn new_ctx(&self) -> PingoraCtx {
        PingoraCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut PingoraCtx) -> Result<bool> {
        ctx.inflight = inflight::Guard::enter();
        // HTTP/1 requests come lent by the lean front door (`fast_h1::handed`), which
        // judged the head (framing included) and gives Pingora exactly one request:
        // Pingora never parses a head itself, nor reads past the request.
        if inflight::draining() {
            session.set_keepalive(None);
        }
        let conn = conn_info(session);
        let started =
            crate::lifecycle::start(&self.store, conn, request_host(session.req_header()), ctx);
        let Some(table) = started else {
            ctx.log.rejected_by = Some("host");
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
        // HTTP/2 clients send `:authority`; the pipeline (and `{host}`) read `Host`.
        if session
            .req_header()
            .headers
            .get(http::header::HOST)
            .is_none()
        {
            if let Some(a) = session.req_header().uri.authority().map(|a| a.to_string()) {
                session
                    .req_header_mut()
                    .insert_header(http::header::HOST, a)?;
            }
        }
        ctx.is_upgrade = session.is_upgrade_req();
        // basic_auth and forward_auth answer off the request path; then the pipeline
        // runs again from the request as it arrived.
        let original = table.rerun_checks.then(|| session.req_header().clone());
        let mut outcome = match crate::lifecycle::decide(
            &table,
            original.as_ref(),
            session.req_header_mut(),
            ctx,
        ) {
            crate::lifecycle::Decided::Ready(o) => o,
            crate::lifecycle::Decided::Checking(checks) => checks.await,
        };
        if matches!(outcome, Outcome::NeedsBody) {
            // `{http.request.body}`: the body first, then the pipeline.
            let had = session
                .req_header()
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
                || session
                    .req_header()
                    .headers
                    .contains_key(http::header::TRANSFER_ENCODING);
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = session.read_request_body().await? {
                if body.len() + chunk.len() > crate::lifecycle::BODY_PLACEHOLDER_MAX {
                    ctx.close = true;
                    write_reply(session, ctx, Reply::status(413)).await?;
                    return Ok(true);
                }
                body.extend_from_slice(&chunk);
            }
            crate::lifecycle::body_read(ctx, body.freeze(), had);
            outcome = match crate::lifecycle::decide(
                &table,
                original.as_ref(),
                session.req_header_mut(),
                ctx,
            ) {
                crate::lifecycle::Decided::Ready(o) => o,
                crate::lifecycle::Decided::Checking(checks) => checks.await,
            };
        }
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
                if !served_by_shared_exchange(&p, session.req_header(), ctx) {
                    return Ok(false);
                }
                serve_shared(session, ctx).await;
                Ok(true)
            }
            Outcome::Check(_) | Outcome::NeedsBody => {
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
        ctx: &mut PingoraCtx,
    ) -> Result<()> {
        if let (Some(max), Some(b)) = (ctx.max_body, body.as_ref()) {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > max {
                ctx.log.rejected_by = Some("request_body");
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
        ctx: &mut PingoraCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(proxy) = ctx.proxy.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no proxy handler"));
        };
        attempt::release(ctx);
        let Some(up) = attempt::pick(&proxy, session.req_header(), ctx).await else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no upstream available",
            ));
        };
        // The first HTTP/2 connection to an upstream: one request opens it while the
        // others of a burst wait, then they share it as streams.
        if proxy.transport.multiplexed() && !up.h2_open.load(Ordering::Acquire) {
            let turn = up.h2_first.clone().lock_owned().await;
            if !up.h2_open.load(Ordering::Acquire) {
                ctx.h2_first = Some(turn);
            }
        }
        let keep = (ctx.is_upgrade && proxy.tunnels.is_some()).then(|| {
            let slot = crate::upstream::tunnels::SocketSlot::default();
            ctx.tunnel_socket = Some(slot.clone());
            slot
        });
        match proxy.peer(&up, &ctx.host, ctx.proxy_client(), keep) {
            Some(p) => Ok(Box::new(p)),
            None => {
                ctx.attempt.failure = UpstreamFailure::Connect;
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
        ctx: &mut PingoraCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The next waiting request tries to open the connection.
        ctx.h2_first = None;
        if let Some(p) = ctx.proxy.clone() {
            // A connection that never opened carried no request: retrying is always safe.
            let timed_out = matches!(e.etype(), ErrorType::ConnectTimedout);
            if attempt::connect_failed(&p, ctx, timed_out) {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut PingoraCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The request can go out again only if nothing of the answer reached the client
        // and Pingora still holds the whole body.
        let replayable =
            session.response_written().is_none() && !session.as_ref().retry_buffer_truncated();
        if let Some(p) = ctx.proxy.clone() {
            if replayable && p.retries + u32::from(!p.try_duration.is_zero()) > 0 {
                let retry = attempt::sent_failed(&p, session.req_header(), ctx);
                e.set_retry(retry);
                return e;
            }
        }
        // Pingora's own rule: an idempotent request that met a stale kept-alive
        // connection is sent again.
        if !session.req_header().method.is_idempotent() || !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut PingoraCtx,
    ) -> Result<()> {
        let host = request_host(session.req_header())
            .map(str::to_string)
            .unwrap_or_default();
        crate::lifecycle::forwarded_headers(ctx, up, &host);
        if up.headers.get(http::header::HOST).is_none() {
            // HTTP/2 clients send :authority; HTTP/1 upstreams need a Host header.
            if let Some(a) = up.uri.authority().map(|a| a.as_str().to_string()) {
                up.insert_header(http::header::HOST, a)?;
            }
        }
        if let Some(p) = ctx.proxy.clone() {
            // No reuse (`keepalive off`, or no idle connection may be kept): the
            // upstream closes after answering, whatever Pingora's pool would do.
            if !p.transport.reuses_connections() && !ctx.is_upgrade {
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
        ctx.attempt.sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut PingoraCtx,
    ) -> Result<()> {
        ctx.attempt.duration = ctx.attempt.sent.map(|t| t.elapsed());
        if resp.status.as_u16() == 101 {
            // A tunnel opens: watch it when the proxy has stream limits.
            let tunnels = ctx.proxy.as_ref().and_then(|p| p.tunnels.clone());
            let fd = ctx
                .tunnel_socket
                .take()
                .and_then(|slot| slot.lock().ok().and_then(|mut s| s.take()));
            if let (Some(tunnels), Some(fd)) = (tunnels, fd) {
                ctx.tunnel = Some(tunnels.track(fd));
            }
        }
        // `max_response_header`: Pingora read the head within its own bound; a lower
        // one set for this proxy is checked here (the same measure as HTTP/2's list size).
        if let Some(limit) = ctx
            .proxy
            .as_ref()
            .and_then(|p| p.transport.max_response_header)
        {
            let size: usize = resp
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 32)
                .sum();
            if size > limit {
                ctx.attempt.error = Some(CompactString::const_new("response head too large"));
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream response head over max_response_header",
                ));
            }
        }
        attempt::passive_check(ctx, resp.status.as_u16());
        // `replace_status`, `handle_response`, `intercept`: nothing to clone or collect
        // unless one applies.
        if let Some(p) = ctx
            .proxy
            .clone()
            .filter(|p| crate::lifecycle::acts_on_response(p, ctx))
        {
            let status = resp.status.as_u16();
            let fields = crate::lifecycle::owned_fields(&resp.headers);
            match crate::lifecycle::upstream_response(
                &p,
                status,
                fields,
                _session.req_header_mut(),
                ctx,
            ) {
                crate::lifecycle::ResponseHandled::Relay(shown) => {
                    if shown != status {
                        resp.set_status(shown)?;
                    }
                }
                handled => {
                    // Answered in `fail_to_proxy`: the upstream's body is not relayed.
                    ctx.intercepted = Some(handled);
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(status),
                        "handled by handle_response",
                    ));
                }
            }
        }
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
            ctx.attempt.error = Some(CompactString::const_new("unsupported transfer coding"));
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
        ctx: &mut PingoraCtx,
    ) -> Result<()> {
        if !reused {
            if let (Some(u), Some(t)) = (&ctx.attempt.upstream, ctx.attempt.started) {
                u.record_connect(t.elapsed());
            }
        }
        if let (Some(_), Some(u)) = (ctx.h2_first.take(), &ctx.attempt.upstream) {
            u.h2_open.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut PingoraCtx,
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
        crate::pipeline::apply_immediate_to_proxied(&ctx.resp.immediate, resp);
        apply_edits(&ctx.resp.deferred, resp);
        if let Some(c) = ctx.resp.set_cookie.take() {
            resp.append_header(http::header::SET_COOKIE, c)?;
        }
        if let Some(id) = ctx.request_id {
            let mut buf = [0u8; 36];
            resp.insert_header("x-request-id", &*id.hyphenated().encode_lower(&mut buf))?;
        }
        if let Some(v) = crate::lifecycle::alt_svc(ctx) {
            resp.insert_header("alt-svc", v)?;
        }
        if ctx.resp.page.is_some() || ctx.resp.encode.is_some() {
            let status = resp.status.as_u16();
            let had_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
            if let Some(rw) = crate::rewrite::begin(ctx, status, resp) {
                let head_only = session.req_header().method == http::Method::HEAD;
                if !head_only {
                    ctx.resp.rewrite = Some(Box::new(rw));
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
        ctx: &mut PingoraCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(c) = ctx.cache.as_mut() {
            if let (Some(fill), Some(b)) = (c.fill.as_mut(), body.as_ref()) {
                fill.push(b);
            }
        }
        if end_of_stream && ctx.cache.is_some() {
            crate::cache::finish(ctx, true);
        }
        if let Some(rw) = ctx.resp.rewrite.as_mut() {
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
        ctx: &mut PingoraCtx,
    ) -> FailToProxy {
        attempt::release(ctx);
        if let Some(handled) = ctx.intercepted.take() {
            return match handled {
                crate::lifecycle::ResponseHandled::Answer(r) => {
                    let code = r.status;
                    let _ = write_reply(session, ctx, r).await;
                    FailToProxy {
                        error_code: code,
                        can_reuse_downstream: false,
                    }
                }
                crate::lifecycle::ResponseHandled::Abort
                | crate::lifecycle::ResponseHandled::Relay(_) => FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                },
            };
        }
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
            // A chunked body whose framing Dwaar's scanner refused (`fast_h1::handed`).
            _ if crate::fast_h1::handed::is_bad_chunk(e) => 400,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ if ctx.attempt.failure == UpstreamFailure::Timeout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    if ctx.attempt.upstream.is_some() || ctx.proxy.is_some() {
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
            ctx.attempt.error = Some(short_error(e));
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut PingoraCtx) {
        // An unfinished fill is dropped; requests waiting for it look again.
        crate::cache::finish(ctx, false);
        access_log(session, ctx);
        attempt::release(ctx);
        ctx.inflight = None;
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
    let (read, written) = (down.body_bytes_read() as u64, down.body_bytes_sent() as u64);
    ctx.log.capture_response(|| {
        session
            .response_written()
            .map(|r| {
                r.headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().into(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    crate::lifecycle::finish(ctx, req.method.as_str(), (status, read, written), || {
        LogParts {
            request: req,
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query().unwrap_or(""),
            version: req.version,
            user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
            referer: req.headers.get(http::header::REFERER).cloned(),
            status,
            bytes_read: read,
            bytes_written: written,
        }
    });
}
