//! The request lifecycle: everything that happens around the pipeline, written once and
//! driven by every front-end (the lean HTTP/1 path, Pingora's `HttpProxy`, HTTP/2 and
//! HTTP/3 streams).
//!
//! A front-end only translates its protocol. For each request it
//!
//! 1. calls [`start`] with the connection's facts and the request's host, which makes
//!    the one route-table load of the request,
//! 2. runs [`crate::pipeline::handle_request`], then [`settle_checks`] when the pipeline
//!    asked for work off the request path (`basic_auth`, `forward_auth`, a `cache` wait),
//! 3. answers a [`crate::pipeline::Reply`], or proxies: [`attempt`] picks
//!    upstreams, retries within `lb_retries`/`lb_try_duration`/`lb_try_interval`,
//!    records passive health and counts in-flight requests with guards that cannot be
//!    forgotten, and [`failure_reply`] turns an upstream failure into the same answer
//!    (`handle_errors` included) on every path,
//! 4. and ends with [`finish`]: metrics, analytics and the access log.
//!
//! [`downstream`] is the client side of one request as the shared answer-writing code
//! sees it; [`exchange`] proxies through it (HTTP/1.1, HTTP/2 and FastCGI upstreams) for
//! every front-end but the lean path, reading the client's body through
//! [`request_body`]; [`inflight`] counts requests for graceful shutdown.

pub mod attempt;
pub mod downstream;
pub mod exchange;
pub mod inflight;
pub mod request_body;

use crate::context::{ConnInfo, RequestContext};
use crate::pipeline::{apply_request_rules, handle_request, normalize_host, Outcome, Reply};
use crate::request::HttpRequest;
use crate::route_table::{RouteStore, RouteTable};
use compact_str::CompactString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request body a handler did not read is read and dropped up to this many bytes so
/// the client sees its answer instead of a reset (curl, browsers and h2load all cope
/// badly with a reset while they are still uploading); past it the stream is reset or
/// the connection closed.
pub const DISCARD_MAX: usize = 8 * 1024 * 1024;
/// How long that discarding may take.
pub const DISCARD_WAIT: Duration = Duration::from_secs(5);
/// How long the client may pause while it is discarded (a body announced but never
/// sent does not hold the answer up).
pub const DISCARD_PAUSE: Duration = Duration::from_secs(1);

/// A request's declared body length (`Content-Length`).
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// The longest request body read for `{http.request.body}` (a longer one is answered
/// 413).
pub const BODY_PLACEHOLDER_MAX: usize = 16 * 1024 * 1024;

/// A body read for [`Outcome::NeedsBody`]: `{http.request.body}` shows it, and a
/// proxied request sends it on (the client's copy is spent). `had_body`: the request
/// announced one.
pub fn body_read(ctx: &mut RequestContext, body: bytes::Bytes, had_body: bool) {
    if had_body || !body.is_empty() {
        ctx.body_set = Some(Box::new(body.clone()));
    }
    ctx.rare_mut().request_body = Some(body);
}

/// Rounds of off-path checks one request may go through before it is answered 503.
const MAX_CHECK_ROUNDS: u32 = 4;

/// Starts a request: fills `ctx` (fresh) with the connection's facts, the start time
/// and the request's host (`raw_host`: the `Host` field or `:authority`, `None` when
/// the request has neither), and returns the route table this request uses from now on
/// (its one load). `None`: the host is not a valid one (the front-end answers 400).
/// The context is filled in place: it is large, and moving it costs a copy per request.
#[inline]
pub fn start(
    store: &RouteStore,
    conn: ConnInfo,
    raw_host: Option<&str>,
    ctx: &mut RequestContext,
) -> Option<Arc<RouteTable>> {
    ctx.start = Some(Instant::now());
    ctx.conn = conn;
    if let Some(h) = raw_host {
        ctx.host = normalize_host(h)?;
    }
    Some(store.load())
}

/// What the pipeline decided: at once, or after checks off the request path.
pub enum Decided<'a> {
    Ready(Outcome),
    /// Settling checks ([`settle_checks`]); boxed, so their state stays out of every
    /// request's future.
    Checking(std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>),
}

/// Runs the pipeline; when it asks for checks (`basic_auth`, `forward_auth`, a `cache`
/// wait) the answer is [`Decided::Checking`], which the front-end awaits. `original`:
/// the request as it arrived, kept by the front-end when the table has handlers that
/// may ask for a rerun ([`RouteTable::rerun_checks`]). Synchronous for the common
/// case: no future is built unless a check is needed.
#[inline]
pub fn decide<'a, R: HttpRequest + Clone + Send + Sync>(
    table: &'a RouteTable,
    original: Option<&'a R>,
    req: &'a mut R,
    ctx: &'a mut RequestContext,
) -> Decided<'a> {
    let outcome = handle_request(table, req, ctx);
    match outcome {
        Outcome::Check(_) => Decided::Checking(Box::pin(async move {
            let outcome = settle_checks(table, outcome, original, req, ctx).await;
            rendered(outcome, table, req, ctx).await
        })),
        // `templates`: the reply is rendered first (boxed: only such requests pay).
        Outcome::Reply(_) if ctx.templates().is_some() => {
            Decided::Checking(Box::pin(rendered(outcome, table, req, ctx)))
        }
        _ => Decided::Ready(outcome),
    }
}

/// A reply through `templates` (when the request has the rule and the reply its type).
async fn rendered<R: HttpRequest + Send + Sync>(
    outcome: Outcome,
    table: &RouteTable,
    req: &mut R,
    ctx: &mut RequestContext,
) -> Outcome {
    match outcome {
        Outcome::Reply(r) if ctx.templates().is_some() => {
            match crate::templates::render_reply(r, Some(table), req, ctx).await {
                Some(r) => Outcome::Reply(r),
                None => Outcome::Abort,
            }
        }
        other => other,
    }
}

/// Runs the checks the pipeline asked for (`basic_auth`, `forward_auth`, a `cache`
/// wait) off the request path, each time running the pipeline again on `original` with
/// the check's edits. Rate-limit zones already charged for this request are not charged
/// again on a rerun. Never returns [`Outcome::Check`]: a check that cannot be settled
/// (no `original`, or too many rounds) is answered 503 on every front-end.
pub async fn settle_checks<R: HttpRequest + Clone>(
    table: &RouteTable,
    mut outcome: Outcome,
    original: Option<&R>,
    req: &mut R,
    ctx: &mut RequestContext,
) -> Outcome {
    let mut rounds = 0;
    while let (Outcome::Check(check), Some(original)) = (&outcome, original) {
        rounds += 1;
        if rounds > MAX_CHECK_ROUNDS {
            break;
        }
        match crate::auth::run(check.clone()).await {
            crate::auth::Checked::Answer(r) => return Outcome::Reply(r),
            crate::auth::Checked::Resume(edits) => {
                *req = original.clone();
                for (k, v) in &edits {
                    match v {
                        Some(v) => req.set_header(k, v),
                        None => req.remove_header(k),
                    }
                }
                *ctx = RequestContext {
                    start: ctx.start,
                    conn: std::mem::take(&mut ctx.conn),
                    host: std::mem::take(&mut ctx.host),
                    inflight: ctx.inflight.take(),
                    charged: ctx.charged,
                    // The body read for `{http.request.body}` stays; the rest reruns.
                    rare: ctx.rare.take().and_then(|r| r.request_body).map(|b| {
                        Box::new(crate::context::RareState {
                            request_body: Some(b),
                            ..Default::default()
                        })
                    }),
                    body_set: ctx.body_set.take(),
                    ..RequestContext::default()
                };
                outcome = handle_request(table, req, ctx);
            }
        }
    }
    if let Outcome::Check(_) = outcome {
        ctx.log.rejected_by = Some("check");
        outcome = Outcome::Reply(Reply::status(503));
    }
    outcome
}

/// `X-Forwarded-For`/`-Proto`/`-Host` (kept from trusted proxies only) and
/// `X-Request-Id` on an upstream request.
pub fn forwarded_headers(ctx: &RequestContext, up: &mut dyn HttpRequest, host: &str) {
    use compact_str::ToCompactString;
    let peer_ip = ctx.conn.remote.ip().to_compact_string();
    let xff = match (ctx.peer_trusted, up.header("x-forwarded-for")) {
        (true, Some(prev)) if !prev.is_empty() => compact_str::format_compact!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    up.set_own_header("x-forwarded-for", &xff);
    if !(ctx.peer_trusted && up.header_count("x-forwarded-proto") > 0) {
        up.set_own_header("x-forwarded-proto", ctx.scheme());
    }
    if !(ctx.peer_trusted && up.header_count("x-forwarded-host") > 0) {
        up.set_own_header("x-forwarded-host", host);
    }
    if let Some(id) = ctx.request_id {
        let mut buf = [0u8; 36];
        up.set_own_header("x-request-id", id.hyphenated().encode_lower(&mut buf));
    }
}

/// The edits a request gets on its way upstream: forwarding fields, then `header_up`.
/// Returns the client's `Host`.
pub fn edit_upstream_request(
    ctx: &RequestContext,
    req: &mut dyn HttpRequest,
    p: &crate::upstream::ProxyHandler,
) -> CompactString {
    let host = CompactString::new(req.header("host").unwrap_or(""));
    forwarded_headers(ctx, req, &host);
    apply_request_rules(&p.header_up, req, ctx);
    host
}

/// The `Alt-Svc` value announcing HTTP/3 on this connection's port, for responses
/// over TLS on a port that serves it.
pub fn alt_svc(ctx: &RequestContext) -> Option<http::HeaderValue> {
    if !ctx.conn.tls {
        return None;
    }
    let port = ctx.conn.local_port;
    ctx.table
        .as_ref()?
        .alt_svc
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, v)| v.clone())
}

/// The answer to a proxying failure with `code` (413, 502, 503, 504): the site's
/// `handle_errors` routes when it has them, else an empty response with the status.
/// `None`: the error routes abort the connection. Records the failure for the log.
pub fn failure_reply(
    code: u16,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Option<Reply> {
    let message = failure_message(code);
    if code >= 502 && ctx.attempt.error.is_none() {
        ctx.attempt.error = Some(message.into());
    }
    if code == 413 {
        ctx.log.rejected_by = Some("request_body");
    }
    let mut r = crate::pipeline::proxy_error_reply(code, message.into(), req, ctx)?;
    crate::rewrite::reply(ctx, &mut r);
    Some(r)
}

/// What `replace_status`, `handle_response` (a proxy's or an `intercept`'s) made of a
/// response.
#[derive(Debug)]
pub enum ResponseHandled {
    /// Send this instead of the upstream's response (whose body is dropped).
    Answer(Reply),
    /// Relay the upstream's response with this status (and the header edits the routes
    /// left in the context).
    Relay(u16),
    /// The routes aborted: close without an answer.
    Abort,
}

/// Whether anything acts on this proxy's upstream answers (else a front-end relays them
/// without collecting their fields).
pub fn acts_on_response(p: &crate::upstream::ProxyHandler, ctx: &RequestContext) -> bool {
    !p.responses.is_empty() || ctx.resp.intercept.is_some()
}

/// An upstream's answer (`status`, `fields`) meets the proxy's `handle_response` and
/// `replace_status`, then an enclosing `intercept`'s (which sees the status the proxy
/// would send). Call only when [`acts_on_response`].
pub fn upstream_response(
    p: &crate::upstream::ProxyHandler,
    status: u16,
    fields: Vec<(String, String)>,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> ResponseHandled {
    use crate::pipeline::Scope;
    if let Some(routes) = p.responses.routes_for(status, &fields) {
        return response_routes(routes, Scope::Proxy, status, fields, req, ctx);
    }
    let shown = p.responses.shown_status(status, &fields);
    let Some(rules) = ctx.resp.intercept.clone() else {
        return ResponseHandled::Relay(shown);
    };
    match rules.routes_for(shown, &fields) {
        Some(routes) => response_routes(routes, Scope::Intercept, shown, fields, req, ctx),
        None => ResponseHandled::Relay(rules.shown_status(shown, &fields)),
    }
}

fn response_routes(
    routes: &[crate::route_table::RouteRule],
    scope: crate::pipeline::Scope,
    status: u16,
    fields: Vec<(String, String)>,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> ResponseHandled {
    ctx.resp.upstream_answer = Some((status, fields));
    match crate::pipeline::response_reply(routes, status, scope, req, ctx) {
        ResponseHandled::Answer(mut r) => {
            crate::rewrite::reply(ctx, &mut r);
            ResponseHandled::Answer(r)
        }
        other => other,
    }
}

/// An upstream response's header fields as owned pairs (for response matchers).
pub fn owned_fields(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The text of a proxying failure (`{http.error.message}`, the access log).
pub fn failure_message(code: u16) -> &'static str {
    match code {
        413 => "request body too large",
        503 => "no upstream available",
        504 => "upstream timed out",
        _ => "bad gateway",
    }
}

/// What a front-end knows about a finished request, for metrics and its log record.
pub struct LogParts<'a> {
    /// The request (for `log_append` values taken when the record is written).
    pub request: &'a dyn HttpRequest,
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

/// Ends a request: metrics, the analytics event and the access-log record (never
/// blocks). `parts` is only called for requests that are logged.
pub fn finish<'a>(
    ctx: &RequestContext,
    method: &str,
    (status, read, written): (u16, u64, u64),
    parts: impl FnOnce() -> LogParts<'a>,
) {
    crate::metrics::observe(ctx, method, status, read, written);
    crate::analytics::record(ctx, status, written);
    if ctx.trace().is_some() {
        crate::otel::end(ctx, status, read, written);
    }
    if is_logged(ctx) {
        log_request(ctx, parts());
    }
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

/// Whether the request goes to an access log (its site has `log`, no `log_skip` matched).
pub fn is_logged(ctx: &RequestContext) -> bool {
    !ctx.log.skip && ctx.site.as_ref().is_some_and(|s| !s.logs.is_empty())
}

/// Builds the access-log record from the context and a front-end's parts.
fn log_request(ctx: &RequestContext, p: LogParts<'_>) {
    let Some(site) = ctx.site.as_ref() else {
        return;
    };
    let extras = ctx.log.extras.as_deref();
    let names = extras.and_then(|e| e.names.as_deref());
    let mut takers = site.logs.iter().filter(|l| l.takes(&ctx.host, names));
    let Some(first) = takers.next() else {
        return;
    };
    // The request as the client sent it, before any rewrite.
    let (path, query) = match ctx.orig_uri.as_deref() {
        Some(orig) => orig.split_once('?').unwrap_or((orig, "")),
        None => (p.path, p.query),
    };
    let extra = appended_fields(ctx, &p);
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
        upstream_duration_us: ctx.attempt.duration.map(|d| d.as_micros() as u64),
        upstream_addr: ctx
            .attempt
            .upstream
            .as_ref()
            .map(|u| CompactString::new(&u.dial)),
        remote_ip: ctx.conn.remote.ip(),
        remote_port: ctx.conn.remote.port(),
        client_ip: ctx.client_ip.unwrap_or(ctx.conn.remote.ip()),
        is_bot: crate::security::is_bot(p.user_agent.as_ref().and_then(|v| v.to_str().ok())),
        user_agent: p.user_agent,
        referer: p.referer,
        bytes_read: p.bytes_read,
        bytes_written: p.bytes_written,
        rejected_by: ctx.log.rejected_by,
        cache: ctx
            .log
            .cache_served
            .or(ctx.cache.as_ref().map(|c| c.status))
            .map(|s| s.as_str()),
        encoding: ctx.log.encoded,
        error: ctx.attempt.error.clone(),
        extra,
        tls: ctx
            .conn
            .tls_facts
            .as_deref()
            .map(|t| dwaar_log::record::TlsLog {
                resumed: t.resumed,
                version: match t.version {
                    "tls1.3" => 0x0304,
                    "tls1.2" => 0x0303,
                    _ => 0,
                },
                cipher_suite: t.cipher_code,
                proto: t.alpn.as_deref().unwrap_or_default().into(),
                server_name: t.server_name.as_deref().unwrap_or_default().into(),
            }),
        user_id: ctx
            .var("http.auth.user.id")
            .map(CompactString::new)
            .unwrap_or_default(),
        headers: extras
            .and_then(|e| e.headers.as_ref())
            .map(|h| h.request.clone())
            .unwrap_or_default(),
        resp_headers: extras
            .and_then(|e| e.headers.as_ref())
            .and_then(|h| h.response.get())
            .map(|fields| {
                fields
                    .iter()
                    .filter(|(k, _)| !crate::request::hop_by_hop(k.as_bytes()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    };
    for other in takers {
        other.logger.log(record.clone());
        for f in &other.forwards {
            f.log(record.clone());
        }
    }
    for f in &first.forwards {
        f.log(record.clone());
    }
    first.logger.log(record);
}

/// The `log_append` fields of a record: those taken when the directives ran, then those
/// taken now (with the response's facts known).
fn appended_fields(ctx: &RequestContext, p: &LogParts<'_>) -> Vec<(CompactString, String)> {
    // `tracing`: the ids, as Caddy names them.
    let mut out = match ctx.trace() {
        Some(t) => vec![
            (
                CompactString::const_new("traceID"),
                crate::otel::hex(&t.trace_id),
            ),
            (
                CompactString::const_new("spanID"),
                crate::otel::hex(&t.span_id),
            ),
        ],
        None => Vec::new(),
    };
    let Some(extras) = ctx.log.extras.as_deref() else {
        return out;
    };
    out.extend(extras.appended.iter().cloned());
    if !extras.late.is_empty() {
        let _ = extras.response.set((p.status, p.bytes_written));
        for (field, value) in &extras.late {
            out.push((
                field.clone(),
                crate::pipeline::log_value(value, p.request, ctx),
            ));
        }
    }
    out
}

/// Makes a panic fail only the task it happens in, logged and counted: every
/// connection and stream is a task of its own, release builds unwind (`panic =
/// "unwind"`), and tokio catches a task's panic at its poll, so the task's connection
/// or stream is dropped (the client sees a reset or a close) and its guards are
/// released while the worker keeps serving its other connections. This hook records
/// each panic (`dwaar_panics_total`, an error line) and then reports it as before.
/// Installed once per process when a server starts.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            crate::metrics::PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(location = %at, "a task panicked: {msg}");
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check that cannot be settled (no copy of the request to rerun) is answered 503,
    /// whatever the front-end (it used to be a reset on HTTP/2 and HTTP/3 and a dropped
    /// connection on the lean path).
    #[test]
    fn an_unsettled_check_is_a_503() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let table = RouteTable::default();
        let check = crate::auth::Check::Password(crate::auth::PasswordCheck {
            key: [0; 32],
            password: "pw".into(),
            hash: crate::auth::unknown_user(std::iter::empty()),
        });
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).expect("request");
        let mut ctx = RequestContext::default();
        let outcome = rt.block_on(settle_checks(
            &table,
            Outcome::Check(check),
            None,
            &mut req,
            &mut ctx,
        ));
        assert!(
            matches!(outcome, Outcome::Reply(ref r) if r.status == 503),
            "{outcome:?}"
        );
        assert_eq!(ctx.log.rejected_by, Some("check"));
    }
}
