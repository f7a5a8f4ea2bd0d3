//! The protocol-neutral request pipeline: site lookup, routes, matchers and handlers.
//!
//! A front-end calls [`handle_request`] once per request with the route table it loaded
//! and its own [`HttpRequest`]. The result says what to do: send a [`Reply`], proxy
//! (the chosen handler is in the context), or abort the connection. Response header
//! edits are left in the context for the front-end to apply with [`apply_edits`].

use crate::context::{HeaderEdit, RequestContext};
use crate::matcher::{any_set_matches, match_path};
use crate::net::{any_contains, client_ip};
use crate::request::{sanitize_header_value, HttpRequest};
use crate::route_table::{HandlerRule, HeaderRule, MapRule, RouteRule, RouteTable, UriRule};
use crate::template::render;
use crate::upstream::ProxyHandler;
use bytes::Bytes;
use compact_str::CompactString;
use dwaar_config::placeholder::Template;
use std::sync::Arc;

/// A response produced without an upstream.
#[derive(Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(CompactString, String)>,
    pub body: Bytes,
    pub close: bool,
    /// Sent after `body`, in bounded chunks (files).
    pub stream: Option<crate::files::FileBody>,
    /// The body (and stream) go through this on the way out (chunked framing).
    pub rewrite: Option<Box<crate::rewrite::Rewrite>>,
}

impl Reply {
    /// The body length for `Content-Length`.
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64 + self.stream.as_ref().map_or(0, |s| s.len())
    }
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Default::default()
        }
    }
}

/// What the front-end must do next.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Forward upstream with `ctx.proxy`.
    Proxy,
    /// Close the connection without a response.
    Abort,
    /// Answer this off the request path (`crate::auth::run`), then run the pipeline
    /// again on the original request (or send what the check answered).
    Check(crate::auth::Check),
    /// Dwaar's own endpoint (analytics beacon, reports): read the body up to its
    /// limit, then `crate::analytics::answer`.
    Internal(crate::analytics::Internal),
    /// The site uses `{http.request.body}`: read the body (up to
    /// [`crate::lifecycle::BODY_PLACEHOLDER_MAX`]) into the context
    /// ([`crate::lifecycle::body_read`]), then decide again. Nothing ran yet.
    NeedsBody,
}

/// A response header block the pipeline can edit (a `Reply`'s, or a front-end's).
pub trait ResponseHead {
    fn get(&self, name: &str) -> Option<&str>;
    fn set(&mut self, name: &str, value: &str);
    fn add(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
    fn replace_all(&mut self, name: &str, re: &regex::Regex, with: &str);
    /// Every field, in order.
    fn fields(&self) -> Vec<(CompactString, String)>;
}

impl ResponseHead for Vec<(CompactString, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn set(&mut self, name: &str, value: &str) {
        ResponseHead::remove(self, name);
        ResponseHead::add(self, name, value);
    }
    fn add(&mut self, name: &str, value: &str) {
        self.push((
            CompactString::new(name),
            sanitize_header_value(value).into_owned(),
        ));
    }
    fn remove(&mut self, name: &str) {
        self.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
    fn fields(&self) -> Vec<(CompactString, String)> {
        self.clone()
    }
    fn replace_all(&mut self, name: &str, re: &regex::Regex, with: &str) {
        for (k, v) in self.iter_mut() {
            if k.eq_ignore_ascii_case(name) {
                *v = sanitize_header_value(&re.replace_all(v, with)).into_owned();
            }
        }
    }
}

/// The edits every front-end makes to a proxied response's fields: the handler's
/// `header_down`, then the site's edits ([`edit_proxied_site_fields`]).
pub fn edit_proxied_fields(
    p: &ProxyHandler,
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
    fields: &mut Vec<(CompactString, String)>,
) {
    apply_header_down(p, req, ctx, fields);
    edit_proxied_site_fields(ctx, fields);
}

/// The handler's `header_down` on a proxied response (what the cache sees).
pub fn apply_header_down(
    p: &ProxyHandler,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    fields: &mut dyn ResponseHead,
) {
    if !p.header_down.is_empty() {
        let mut e = Vec::with_capacity(p.header_down.len());
        render_rules(&p.header_down, req, ctx, &mut e);
        apply_edits(&e, fields);
    }
}

/// The site's immediate and deferred `header` edits on a proxied response, then the
/// sticky-session cookie.
pub fn edit_proxied_site_fields(
    ctx: &mut RequestContext,
    fields: &mut Vec<(CompactString, String)>,
) {
    apply_immediate_to_proxied(&ctx.resp.immediate, fields);
    apply_edits(&ctx.resp.deferred, fields);
    if let Some(c) = ctx.resp.set_cookie.take() {
        fields.push((CompactString::const_new("set-cookie"), c));
    }
}

/// Applies rendered edits to a response head.
pub fn apply_edits(edits: &[HeaderEdit], head: &mut dyn ResponseHead) {
    for e in edits {
        match e {
            HeaderEdit::Set(n, v) => head.set(n, v),
            HeaderEdit::Add(n, v) => head.add(n, v),
            HeaderEdit::Delete(n) => delete_matching(head, n),
            HeaderEdit::Default(n, v) => {
                if head.get(n).is_none() {
                    head.set(n, v);
                }
            }
            HeaderEdit::Replace { name, re, with } => head.replace_all(name, re, with),
        }
    }
}

/// Immediate edits on a proxied response: they were set before the upstream's fields
/// arrived, so a `Set` field and the upstream's field of the same name both remain.
pub fn apply_immediate_to_proxied(edits: &[HeaderEdit], head: &mut dyn ResponseHead) {
    for e in edits {
        match e {
            HeaderEdit::Set(n, v) | HeaderEdit::Add(n, v) => head.add(n, v),
            HeaderEdit::Default(n, v) => {
                if head.get(n).is_none() {
                    head.set(n, v);
                }
            }
            HeaderEdit::Delete(_) | HeaderEdit::Replace { .. } => {
                apply_edits(std::slice::from_ref(e), head)
            }
        }
    }
}

fn delete_matching(head: &mut dyn ResponseHead, name: &str) {
    if !name.contains('*') {
        head.remove(name);
        return;
    }
    let doomed: Vec<CompactString> = head
        .fields()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| field_pattern_matches(name, k))
        .collect();
    for k in doomed {
        head.remove(&k);
    }
}

/// Whether a field name matches a `header -<pattern>` deletion: `X-*` (a prefix), `*-Id`
/// (a suffix), `*Debug*` (anywhere), or the exact name; case-insensitive, as in Caddy.
pub fn field_pattern_matches(pattern: &str, field: &str) -> bool {
    let (p, f) = (pattern.to_ascii_lowercase(), field.to_ascii_lowercase());
    match (p.strip_prefix('*'), p.strip_suffix('*')) {
        (Some(rest), _) if rest.ends_with('*') => f.contains(rest.trim_end_matches('*')),
        (Some(suffix), _) => f.ends_with(suffix),
        (_, Some(prefix)) => f.starts_with(prefix),
        _ => p == f,
    }
}

/// Renders header rules against the request.
pub fn render_rules(
    rules: &[HeaderRule],
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    out: &mut Vec<HeaderEdit>,
) {
    for r in rules {
        out.push(match r {
            HeaderRule::Set(n, t) => HeaderEdit::Set(n.clone(), render(t, req, ctx).into_owned()),
            HeaderRule::Add(n, t) => HeaderEdit::Add(n.clone(), render(t, req, ctx).into_owned()),
            HeaderRule::Delete(n) => HeaderEdit::Delete(n.clone()),
            HeaderRule::Default(n, t) => {
                HeaderEdit::Default(n.clone(), render(t, req, ctx).into_owned())
            }
            HeaderRule::Replace { name, re, with } => HeaderEdit::Replace {
                name: name.clone(),
                re: re.clone(),
                with: render(with, req, ctx).into_owned(),
            },
        });
    }
}

/// Applies header rules directly to a request (for `request_header` and `header_up`).
pub fn apply_request_rules(rules: &[HeaderRule], req: &mut dyn HttpRequest, ctx: &RequestContext) {
    for r in rules {
        match r {
            HeaderRule::Set(n, t) => {
                let v = render(t, req, ctx).into_owned();
                req.set_header(n, &v);
            }
            HeaderRule::Add(n, t) => {
                let v = render(t, req, ctx).into_owned();
                req.append_header(n, &v);
            }
            HeaderRule::Delete(n) if n.contains('*') => {
                for name in req.header_names() {
                    if field_pattern_matches(n, &name) {
                        req.remove_header(&name);
                    }
                }
            }
            HeaderRule::Delete(n) => req.remove_header(n),
            HeaderRule::Default(n, t) => {
                if req.header_count(n) == 0 {
                    let v = render(t, req, ctx).into_owned();
                    req.set_header(n, &v);
                }
            }
            HeaderRule::Replace { name, re, with } => {
                let with = render(with, req, ctx).into_owned();
                let mut values = Vec::new();
                req.any_header_value(name, &mut |v| {
                    values.push(re.replace_all(v, with.as_str()).into_owned());
                    false
                });
                req.remove_header(name);
                for v in values {
                    req.append_header(name, &v);
                }
            }
        }
    }
}

enum Terminal<'t> {
    Respond {
        status: Option<u16>,
        body: Option<&'t Template>,
        content_type: Option<&'static str>,
        close: bool,
    },
    Redirect {
        to: &'t Template,
        status: u16,
        html: bool,
    },
    Proxy(Arc<ProxyHandler>),
    Error {
        status: u16,
        message: String,
        /// The directive that raised it (`{http.error.trace}`).
        by: &'static str,
    },
    Abort,
    /// A reply built by a handler (files).
    Ready(Reply),
    /// `metrics`: built where the route table is at hand.
    Metrics,
    Check(crate::auth::Check),
    /// `copy_response`: relay the upstream's answer after all (with this status).
    CopyResponse(Option<u16>),
}

enum Flow<'t> {
    Continue,
    Done(Terminal<'t>),
}

/// Lowercases and strips the port from a Host value; rejects obviously invalid hosts.
pub fn normalize_host(raw: &str) -> Option<CompactString> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        &raw[..rest.find(']').map(|i| i + 2).unwrap_or(raw.len())]
    } else {
        raw.rsplit_once(':')
            .map(|(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    raw
                }
            })
            .unwrap_or(raw)
    };
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@' || b.is_ascii_control())
    {
        return None;
    }
    Some(CompactString::new(host.trim_end_matches('.')).to_ascii_lowercase())
}

/// The longest request target accepted (path and query).
pub const MAX_URI: usize = 8 * 1024;

/// Request smuggling defences for HTTP/1 (RFC 9112 §6), decided here for every HTTP/1
/// path: at most one `Content-Length`, and it is 1 to 18 digits (a list such as `2, 2`
/// or a repeated field is refused even when the values agree); never both
/// `Content-Length` and `Transfer-Encoding`; and no coding but a single `chunked` (none
/// in HTTP/1.0). `lengths`: how many `Content-Length` fields the front-end saw (counted
/// once by the caller, and counted even where a parser dropped them).
pub fn framing_check(req: &dyn HttpRequest, lengths: usize) -> Option<Reply> {
    match lengths {
        0 => {}
        1 => {
            let valid = req.header("content-length").is_some_and(|v| {
                !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit())
            });
            if !valid {
                return Some(bad_request("malformed Content-Length"));
            }
        }
        _ => return Some(bad_request("repeated Content-Length")),
    }
    let te = req.header_count("transfer-encoding");
    if te == 0 {
        return None;
    }
    if lengths > 0 {
        return Some(bad_request("both Content-Length and Transfer-Encoding"));
    }
    let chunked_only = te == 1
        && req
            .header("transfer-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !chunked_only || req.version() == http::Version::HTTP_10 {
        return Some(bad_request("unsupported Transfer-Encoding"));
    }
    None
}

/// Runs the pipeline for one request. `ctx.conn` and `ctx.host` must be set.
pub fn handle_request(
    table: &RouteTable,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Outcome {
    // Debug builds only: lets the end-to-end tests check that a panicking request fails
    // alone (`lifecycle::install_panic_hook`). Release builds have no such trigger.
    #[cfg(debug_assertions)]
    if req.header("x-dwaar-test-panic").is_some() {
        panic!("x-dwaar-test-panic");
    }
    // HTTP/1 framing (`framing_check`) was judged by the front door every HTTP/1 head
    // passes (`fast_h1`), before any front-end serves the request.
    // nginx's limit for a request line (8 KiB): longer targets are 414.
    if req.path().len() + req.query().map_or(0, |q| q.len() + 1) > MAX_URI {
        let mut r = Reply::status(414);
        r.close = true;
        return Outcome::Reply(r);
    }
    if req.version() == http::Version::HTTP_11 || req.version() == http::Version::HTTP_10 {
        let n = req.header_count("host");
        if n > 1 || (n == 0 && req.version() == http::Version::HTTP_11) {
            return Outcome::Reply(bad_request(if n > 1 {
                "duplicate Host header"
            } else {
                "missing Host header"
            }));
        }
    }
    let Some(port) = table.port(ctx.conn.local_port) else {
        return Outcome::Reply(Reply::status(404));
    };
    if req.header_bytes() > port.max_header_size() {
        let mut r = Reply::status(431);
        r.close = true;
        return Outcome::Reply(r);
    }
    let peer = ctx.conn.remote.ip();
    ctx.peer_trusted = port.client_ip.trusts(peer);
    ctx.client_ip = Some(client_ip(peer, &port.client_ip, req));
    ctx.request_id = Some(request_id(req, ctx.peer_trusted));
    if !ctx.conn.tls {
        if let Some(token) = req.path().strip_prefix(dwaar_tls::challenge::HTTP01_PREFIX) {
            if let Some(answer) = table.challenges.as_ref().and_then(|b| b.http_answer(token)) {
                let mut r = Reply::status(200);
                r.headers.push((
                    CompactString::const_new("content-type"),
                    "text/plain".into(),
                ));
                r.body = answer.into();
                return Outcome::Reply(r);
            }
        }
    } else if port.strict_sni_host && !sni_is_host(ctx) {
        return Outcome::Reply(Reply::status(421));
    } else if table.client_auth {
        // A site that requires client certificates only answers on connections that
        // were accepted under its own TLS policy.
        let required = table
            .tls
            .as_ref()
            .and_then(|t| t.state.client_auth_policy(&ctx.host));
        if required.is_some_and(|p| p != ctx.conn.tls_policy) {
            return Outcome::Reply(Reply::status(421));
        }
    }
    let site = {
        let path = match_path(req);
        port.lookup(&ctx.host, &path).cloned()
    };
    let Some(site) = site else {
        // Caddy answers an unknown host on a served port with an empty 200.
        return Outcome::Reply(Reply::status(200));
    };
    ctx.site = Some(site.clone());
    if site.reads_body && ctx.request_body().is_none() {
        return Outcome::NeedsBody;
    }
    if site.logs.iter().any(|l| l.logger.wants_headers()) {
        ctx.log.extras_mut().headers = Some(crate::context::HeaderCapture {
            request: request_fields(req),
            ..Default::default()
        });
    }
    if let Some(a) = &site.analytics {
        if let Some(o) = crate::analytics::early(a, req, ctx) {
            return o;
        }
    }
    let flow = run_routes(&site.routes, req, ctx);
    // A site's own analytics dashboard, once its middleware let the request through.
    if let Some(a) = &site.analytics {
        if !matches!(
            flow,
            Flow::Done(Terminal::Check(_)) | Flow::Done(Terminal::Abort)
        ) {
            if let Some(o) = crate::analytics::dashboard(a, req, ctx) {
                return match o {
                    Outcome::Reply(r) => Outcome::Reply(finish_reply(r, ctx)),
                    other => other,
                };
            }
        }
    }
    let terminal = match flow {
        Flow::Continue => return Outcome::Reply(finish_reply(Reply::status(200), ctx)),
        Flow::Done(t) => t,
    };
    match terminal {
        Terminal::Proxy(p) => {
            ctx.proxy = Some(p);
            Outcome::Proxy
        }
        Terminal::Abort => Outcome::Abort,
        Terminal::Check(check) => Outcome::Check(check),
        Terminal::Metrics => {
            let mut r = Reply::status(200);
            r.headers.push((
                CompactString::const_new("content-type"),
                "text/plain; version=0.0.4; charset=utf-8".into(),
            ));
            r.body = crate::metrics::render(Some(table)).into();
            written(finish_reply(r, ctx), req, ctx)
        }
        Terminal::Error {
            status,
            message,
            by,
        } => error_outcome(&site.error_routes, status, message, by, req, ctx),
        // Outside `handle_response` routes (refused by the config compiler).
        Terminal::CopyResponse(_) => error_outcome(
            &site.error_routes,
            500,
            "copy_response outside handle_response".into(),
            "copy_response",
            req,
            ctx,
        ),
        other => {
            let r = reply_for(other, req, ctx);
            written(r, req, ctx)
        }
    }
}

/// A reply the routes wrote, after an `intercept` had its say.
fn written(r: Reply, req: &mut dyn HttpRequest, ctx: &mut RequestContext) -> Outcome {
    if ctx.resp.intercept.is_none() {
        return Outcome::Reply(r);
    }
    intercepted(r, req, ctx).map_or(Outcome::Abort, Outcome::Reply)
}

/// The reply for a proxying failure: the site's `handle_errors` routes when it has them,
/// else an empty response with the status. `None`: the error routes abort the connection.
pub fn proxy_error_reply(
    code: u16,
    message: String,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Option<Reply> {
    let by = if ctx.proxy.as_ref().is_some_and(|p| p.fastcgi.is_some()) {
        "php_fastcgi"
    } else {
        "reverse_proxy"
    };
    raised_error_reply(code, message, by, req, ctx)
}

/// The reply for an error the directive `by` raised: as [`proxy_error_reply`].
pub fn raised_error_reply(
    code: u16,
    message: String,
    by: &'static str,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Option<Reply> {
    let Some(site) = ctx.site.clone() else {
        return Some(Reply::status(code));
    };
    if site.error_routes.is_empty() {
        return Some(Reply::status(code));
    }
    match error_outcome(&site.error_routes, code, message, by, req, ctx) {
        Outcome::Reply(r) => Some(r),
        Outcome::Abort => None,
        Outcome::Proxy | Outcome::Check(_) | Outcome::Internal(_) | Outcome::NeedsBody => {
            Some(Reply::status(code))
        }
    }
}

/// Runs `handle_errors` routes for an error status; without a match, an empty response
/// with that status.
pub fn error_outcome(
    routes: &[RouteRule],
    status: u16,
    message: String,
    by: &'static str,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Outcome {
    ctx.error = Some((status, message));
    ctx.rare_mut().error_by = by;
    ctx.groups_done = 0;
    // Headers set immediately stay (as in Caddy); deferred edits belonged to the failed response.
    ctx.resp.deferred.clear();
    match run_routes(routes, req, ctx) {
        Flow::Done(Terminal::Abort) => Outcome::Abort,
        Flow::Done(Terminal::Proxy(_)) | Flow::Continue | Flow::Done(Terminal::Error { .. }) => {
            Outcome::Reply(finish_reply(Reply::status(status), ctx))
        }
        Flow::Done(t) => Outcome::Reply(reply_for(t, req, ctx)),
    }
}

/// Runs `handle_response` routes for a response of `status` (`ctx.resp.upstream_answer`
/// holds it for `{rp.*}` and `copy_response*`). Their own reply replaces the response
/// (whose body is dropped); `copy_response` relays it after all; routes that write
/// nothing get the original response under [`Scope::Intercept`] (as in Caddy) and an
/// empty one with its status under [`Scope::Proxy`]. An `error` in them is answered like
/// Dwaar's own errors (`handle_errors`).
pub fn response_reply(
    routes: &[RouteRule],
    status: u16,
    scope: Scope,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> crate::lifecycle::ResponseHandled {
    use crate::lifecycle::ResponseHandled;
    ctx.groups_done = 0;
    let answer = |r: Option<Reply>| r.map_or(ResponseHandled::Abort, ResponseHandled::Answer);
    match run_routes(routes, req, ctx) {
        Flow::Done(Terminal::Abort) => ResponseHandled::Abort,
        Flow::Done(Terminal::Error {
            status,
            message,
            by,
        }) => answer(raised_error_reply(status, message, by, req, ctx)),
        Flow::Done(Terminal::CopyResponse(to)) => ResponseHandled::Relay(to.unwrap_or(status)),
        Flow::Done(Terminal::Proxy(_)) | Flow::Continue => match scope {
            Scope::Intercept => ResponseHandled::Relay(status),
            Scope::Proxy => ResponseHandled::Answer(finish_reply(Reply::status(status), ctx)),
        },
        Flow::Done(t) => ResponseHandled::Answer(reply_for(t, req, ctx)),
    }
}

/// Whose response `handle_response` routes act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A `reverse_proxy`'s upstream answer.
    Proxy,
    /// What the handlers after an `intercept` wrote.
    Intercept,
}

/// An `intercept` on a reply Dwaar made itself (`respond`, `file_server`, `redir`...):
/// `replace_status`, or `handle_response` routes (which answer instead, or let the
/// reply through with the header edits they made). `None`: the routes aborted.
fn intercepted(mut r: Reply, req: &mut dyn HttpRequest, ctx: &mut RequestContext) -> Option<Reply> {
    let Some(rules) = ctx.resp.intercept.clone() else {
        return Some(r);
    };
    let fields: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let Some(routes) = rules.routes_for(r.status, &fields) else {
        r.status = rules.shown_status(r.status, &fields);
        return Some(r);
    };
    let (immediate, deferred) = (ctx.resp.immediate.len(), ctx.resp.deferred.len());
    let status = r.status;
    ctx.resp.upstream_answer = Some((status, fields));
    match response_reply(routes, status, Scope::Intercept, req, ctx) {
        crate::lifecycle::ResponseHandled::Answer(reply) => Some(reply),
        crate::lifecycle::ResponseHandled::Relay(to) => {
            // The original reply, with what the routes added to its head.
            r.status = to;
            apply_edits(&ctx.resp.immediate[immediate..], &mut r.headers);
            apply_edits(&ctx.resp.deferred[deferred..], &mut r.headers);
            Some(r)
        }
        crate::lifecycle::ResponseHandled::Abort => None,
    }
}

fn request_id(req: &dyn HttpRequest, trusted: bool) -> uuid::Uuid {
    if trusted {
        if let Some(id) = req
            .header("x-request-id")
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
        {
            return id;
        }
    }
    uuid::Uuid::now_v7()
}

fn bad_request(why: &str) -> Reply {
    Reply {
        status: 400,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: Bytes::from(format!("400 Bad Request: {why}\n")),
        close: true,
        stream: None,
        rewrite: None,
    }
}

/// Applies the collected header edits to a reply.
fn finish_reply(mut r: Reply, ctx: &RequestContext) -> Reply {
    apply_edits(&ctx.resp.immediate, &mut r.headers);
    apply_edits(&ctx.resp.deferred, &mut r.headers);
    r
}

fn reply_for(t: Terminal<'_>, req: &dyn HttpRequest, ctx: &RequestContext) -> Reply {
    let mut headers: Vec<(CompactString, String)> = Vec::new();
    apply_edits(&ctx.resp.immediate, &mut headers);
    let mut r = match t {
        Terminal::Respond {
            status,
            body,
            content_type,
            close,
        } => {
            let body = body.map(|b| render(b, req, ctx)).unwrap_or_default();
            if !body.is_empty() && ResponseHead::get(&headers, "content-type").is_none() {
                headers.push((
                    "content-type".into(),
                    content_type
                        .unwrap_or("text/plain; charset=utf-8")
                        .to_string(),
                ));
            }
            let status = status.or(ctx.error.as_ref().map(|e| e.0)).unwrap_or(200);
            Reply {
                status,
                headers,
                body: Bytes::from(body.into_owned()),
                close,
                stream: None,
                rewrite: None,
            }
        }
        Terminal::Redirect { to, status, html } => {
            let to = render(to, req, ctx);
            let to = sanitize_redirect(&to);
            if html {
                let esc = html_escape(&to);
                headers.push(("content-type".into(), "text/html; charset=utf-8".into()));
                let body = format!("<!DOCTYPE html>\n<html>\n\t<head>\n\t\t<title>Redirecting...</title>\n\t\t<script>window.location.replace(\"{esc}\");</script>\n\t\t<meta http-equiv=\"refresh\" content=\"0; URL='{esc}'\">\n\t</head>\n\t<body>Redirecting to <a href=\"{esc}\">{esc}</a>...</body>\n</html>\n");
                Reply {
                    status: 200,
                    headers,
                    body: Bytes::from(body),
                    close: false,
                    stream: None,
                    rewrite: None,
                }
            } else {
                ResponseHead::set(&mut headers, "location", &to);
                Reply {
                    status,
                    headers,
                    body: Bytes::new(),
                    close: false,
                    stream: None,
                    rewrite: None,
                }
            }
        }
        Terminal::Error { status, .. } => Reply {
            status,
            headers,
            ..Default::default()
        },
        Terminal::Proxy(_) | Terminal::Abort => Reply {
            status: 502,
            headers,
            ..Default::default()
        },
        Terminal::Check(_) | Terminal::Metrics | Terminal::CopyResponse(_) => Reply {
            status: 503,
            headers,
            ..Default::default()
        },
        Terminal::Ready(mut r) => {
            apply_edits(&ctx.resp.immediate, &mut r.headers);
            r
        }
    };
    apply_edits(&ctx.resp.deferred, &mut r.headers);
    r
}

/// Removes CR/LF and collapses a leading `//` so a redirect cannot become protocol-relative.
fn sanitize_redirect(to: &str) -> String {
    let clean: String = to
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect();
    if clean.starts_with("//") || clean.starts_with("/\\") {
        format!("/{}", clean.trim_start_matches(['/', '\\']))
    } else {
        clean
    }
}

/// Text safe inside HTML elements and quoted attributes.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn run_routes<'t>(
    routes: &'t [RouteRule],
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Flow<'t> {
    for route in routes {
        if let Some(bit) = route.group_bit {
            if ctx.groups_done & bit != 0 {
                continue;
            }
        }
        if !any_set_matches(&route.matchers, req, ctx) {
            continue;
        }
        if let Some(bit) = route.group_bit {
            ctx.groups_done |= bit;
        }
        for h in &route.handlers {
            if let Flow::Done(t) = run_handler(h, req, ctx) {
                return Flow::Done(t);
            }
        }
    }
    Flow::Continue
}

fn remember_orig(req: &dyn HttpRequest, ctx: &mut RequestContext) {
    if ctx.orig_uri.is_none() {
        let mut u = req.path().to_string();
        if let Some(q) = req.query() {
            u.push('?');
            u.push_str(q);
        }
        ctx.orig_uri = Some(u);
    }
}

fn set_path(req: &mut dyn HttpRequest, ctx: &mut RequestContext, path: &str) {
    remember_orig(req, ctx);
    let q = req.query().map(str::to_string);
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    req.set_path_query(&path, q.as_deref());
}

fn run_handler<'t>(
    h: &'t HandlerRule,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Flow<'t> {
    match h {
        HandlerRule::Proxy(p) => Flow::Done(Terminal::Proxy(p.clone())),
        HandlerRule::Respond {
            status,
            body,
            content_type,
            close,
        } => Flow::Done(Terminal::Respond {
            status: *status,
            body: body.as_ref(),
            content_type: *content_type,
            close: *close,
        }),
        HandlerRule::Redirect { to, status, html } => Flow::Done(Terminal::Redirect {
            to,
            status: *status,
            html: *html,
        }),
        HandlerRule::Error { status, message } => Flow::Done(Terminal::Error {
            status: *status,
            message: render(message, req, ctx).into_owned(),
            by: "error",
        }),
        HandlerRule::Metrics => Flow::Done(Terminal::Metrics),
        HandlerRule::AcmeServer(server) => {
            if !server.handles(req.path()) {
                return Flow::Continue;
            }
            let host = req.header("host").unwrap_or(&ctx.host).to_string();
            let base = format!("{}://{host}", ctx.scheme());
            let body = ctx.request_body().cloned().unwrap_or_default();
            let a = server.handle(req.method(), &base, req.path(), &body);
            let mut r = Reply::status(a.status);
            for (k, v) in a.headers {
                r.headers.push((CompactString::const_new(k), v));
            }
            r.body = a.body.into();
            Flow::Done(Terminal::Ready(r))
        }
        HandlerRule::Cache(rule) => {
            let waited = req.header(crate::auth::CACHE_WAITED)
                == Some(crate::auth::marker(u64::MAX).as_str());
            req.remove_header(crate::auth::CACHE_WAITED);
            match crate::cache::on_request(rule, req, ctx, waited) {
                crate::cache::Decision::Reply(r) => Flow::Done(Terminal::Ready(r)),
                crate::cache::Decision::Wait(w, t) => {
                    Flow::Done(Terminal::Check(crate::auth::Check::CacheWait(w, t)))
                }
                crate::cache::Decision::Continue => Flow::Continue,
            }
        }
        HandlerRule::Encode(rule) => {
            ctx.resp.encode = Some(crate::encode::Negotiated {
                coding: crate::encode::choose(rule, req.header("accept-encoding")),
                rule: rule.clone(),
                ranged: req.header("range").is_some(),
            });
            Flow::Continue
        }
        HandlerRule::Abort => {
            ctx.log.rejected_by = Some("abort");
            Flow::Done(Terminal::Abort)
        }
        HandlerRule::LogSkip => {
            ctx.log.skip = true;
            Flow::Continue
        }
        HandlerRule::LogName(names) => {
            ctx.log.extras_mut().names = Some(names.clone());
            Flow::Continue
        }
        HandlerRule::Rewrite(t) => {
            let to = render(t, req, ctx).into_owned();
            let (p, q) = match to.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (to, req.query().map(str::to_string)),
            };
            remember_orig(req, ctx);
            let p = if p.is_empty() {
                req.path().to_string()
            } else if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            };
            let q = q.filter(|q| !q.is_empty());
            req.set_path_query(&p, q.as_deref());
            Flow::Continue
        }
        HandlerRule::Uri(op) => {
            let path = req.path().to_string();
            let new = match op {
                UriRule::StripPrefix(pre) => path.strip_prefix(pre.as_str()).map(str::to_string),
                UriRule::StripSuffix(suf) => path.strip_suffix(suf.as_str()).map(str::to_string),
                UriRule::Replace {
                    find,
                    replace,
                    limit,
                } => match limit {
                    Some(n) if *n > 0 => Some(path.replacen(find.as_str(), replace, *n as usize)),
                    _ => Some(path.replace(find.as_str(), replace)),
                },
                UriRule::PathRegexp { re, replace } => {
                    Some(re.replace_all(&path, replace.as_str()).into_owned())
                }
            };
            if let Some(n) = new {
                if n != path {
                    set_path(req, ctx, &n);
                }
            }
            Flow::Continue
        }
        HandlerRule::ResponseHeaders { rules, deferred } => {
            let mut out = Vec::with_capacity(rules.len());
            render_rules(rules, req, ctx, &mut out);
            if *deferred {
                ctx.resp.deferred.extend(out);
            } else {
                ctx.resp.immediate.extend(out);
            }
            Flow::Continue
        }
        HandlerRule::RequestHeaders(rules) => {
            apply_request_rules(rules, req, ctx);
            Flow::Continue
        }
        HandlerRule::Subroute(routes) => run_routes(routes, req, ctx),
        HandlerRule::Vars(vars) => {
            for (k, t) in vars {
                let v = render(t, req, ctx).into_owned();
                ctx.set_var(k, v);
            }
            Flow::Continue
        }
        HandlerRule::Map(m) => {
            run_map(m, req, ctx);
            Flow::Continue
        }
        HandlerRule::BasicAuth(a) => {
            let creds = req
                .header("authorization")
                .and_then(crate::auth::parse_basic);
            let verdict = creds.as_ref().map(|(user, password)| {
                let hash = a.users.get(user).map_or(a.unknown.as_str(), |h| h.as_str());
                let key = crate::auth::key(&a.realm, user, password, hash);
                (crate::auth::cached(&key), key, password, hash, user)
            });
            match verdict {
                Some((Some(true), _, _, _, user)) => {
                    ctx.set_var("http.auth.user.id", user.clone());
                    // The credentials stop here: never forwarded upstream.
                    req.remove_header("authorization");
                    Flow::Continue
                }
                Some((None, key, password, hash, _)) => Flow::Done(Terminal::Check(
                    crate::auth::Check::Password(crate::auth::PasswordCheck {
                        key,
                        password: password.clone(),
                        hash: hash.to_string(),
                    }),
                )),
                _ => refuse(
                    ctx,
                    "basic_auth",
                    401,
                    Some(("www-authenticate", a.challenge.clone())),
                ),
            }
        }
        HandlerRule::ForwardAuth(f) => {
            let marker = crate::auth::marker(f.id);
            if req.header(crate::auth::FORWARD_MARKER) == Some(marker.as_str()) {
                req.remove_header(crate::auth::FORWARD_MARKER);
                return Flow::Continue;
            }
            Flow::Done(Terminal::Check(crate::auth::Check::Forward(
                forward_auth_call(f, req, ctx, marker),
            )))
        }
        HandlerRule::IpFilter(f) => {
            // The real client (after trusted_proxies), IPv4-mapped addresses as IPv4.
            let ip = crate::net::canonical(ctx.client_ip());
            let allowed = if any_contains(&f.deny, ip) {
                false
            } else if any_contains(&f.allow, ip) {
                true
            } else {
                f.default_allow
            };
            if allowed {
                return Flow::Continue;
            }
            refuse(ctx, "ip_filter", 403, None)
        }
        HandlerRule::RateLimit(r) => {
            // A rerun after an off-path check (auth) has already been counted here.
            let zone = Arc::as_ptr(&r.zone) as usize;
            if ctx.charged.contains(zone) {
                return Flow::Continue;
            }
            let key = render(&r.key, req, ctx);
            let verdict = match &r.fleet {
                None => r.zone.check(&key),
                Some(f) => match crate::security::fleet_verdict(f, r, zone as u64, &key, req) {
                    Ok(v) => v,
                    Err(check) => return Flow::Done(Terminal::Check(check)),
                },
            };
            if verdict.is_ok() {
                ctx.charged.add(zone);
            }
            match verdict {
                Ok(()) => Flow::Continue,
                Err(l) => refuse(
                    ctx,
                    "rate_limit",
                    429,
                    Some(("retry-after", l.retry_after_secs.to_string())),
                ),
            }
        }
        HandlerRule::Root(t) => {
            let v = render(t, req, ctx).into_owned();
            ctx.set_var("root", v);
            Flow::Continue
        }
        HandlerRule::TryFiles(fm) => {
            let Some(found) = crate::files::find_file(fm, req, ctx) else {
                return match fm.fallback_status {
                    Some(status) => Flow::Done(Terminal::Error {
                        status,
                        message: "no file to try".into(),
                        by: "try_files",
                    }),
                    None => Flow::Continue,
                };
            };
            crate::files::remember(&found, ctx);
            // The candidate's own query (`index.php?{query}`) replaces the request's.
            let q = fm.try_files.iter().find_map(|t| {
                let r = render(t, req, ctx);
                r.split_once('?').map(|(_, q)| q.to_string())
            });
            remember_orig(req, ctx);
            let query = match q {
                Some(q) => Some(q),
                None => req.query().map(str::to_string),
            };
            let query = query.filter(|q| !q.is_empty());
            // Only the file part: what followed a split delimiter is kept as
            // `{file_match.remainder}` (the FastCGI transport's PATH_INFO).
            req.set_path_query(&found.relative, query.as_deref());
            Flow::Continue
        }
        HandlerRule::FileServer(fs) => match crate::files::serve::serve(fs, req, ctx) {
            crate::files::serve::Served::Reply(r) => Flow::Done(Terminal::Ready(r)),
            crate::files::serve::Served::PassThru => Flow::Continue,
            crate::files::serve::Served::Error(status) => Flow::Done(Terminal::Error {
                status,
                by: "file_server",
                message: match status {
                    404 => "file not found",
                    403 => "access to the file is forbidden",
                    400 => "invalid path",
                    _ => "the file cannot be read",
                }
                .into(),
            }),
        },
        HandlerRule::RequestBody { max, set } => {
            if let Some(t) = set {
                ctx.body_set = Some(Box::new(render(t, req, ctx).into_owned().into()));
            }
            let Some(max) = max else {
                return Flow::Continue;
            };
            ctx.max_body = Some(*max);
            let too_big = req
                .header("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > *max);
            if too_big {
                ctx.log.rejected_by = Some("request_body");
                return Flow::Done(Terminal::Error {
                    status: 413,
                    message: "request body too large".into(),
                    by: "request_body",
                });
            }
            Flow::Continue
        }
        HandlerRule::Intercept(rules) => {
            ctx.resp.intercept = Some(rules.clone());
            Flow::Continue
        }
        HandlerRule::CopyResponse(status) => Flow::Done(Terminal::CopyResponse(*status)),
        HandlerRule::LogAppend(field, value, early) => {
            if *early {
                let v = log_value(value, req, ctx);
                ctx.log.extras_mut().appended.push((field.clone(), v));
            } else {
                // Taken when the record is written, response facts included: the
                // front-end records the response's fields for it.
                let extras = ctx.log.extras_mut();
                extras.late.push((field.clone(), value.clone()));
                extras.headers.get_or_insert_with(Default::default);
            }
            Flow::Continue
        }
        HandlerRule::Fs(name, root) => {
            ctx.set_var("fs", name.to_string());
            ctx.rare_mut().fs_root = Some(root.clone());
            Flow::Continue
        }
        HandlerRule::Templates(rule) => {
            if ctx.templates().is_none() {
                ctx.rare_mut().templates = Some(rule.clone());
            }
            Flow::Continue
        }
        HandlerRule::Tracing { span, attributes } => {
            if ctx.trace().is_none() {
                let name = render(span, req, ctx).into_owned();
                let custom = attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), render(v, req, ctx).into_owned()))
                    .collect();
                crate::otel::start(name, custom, req, ctx);
            }
            Flow::Continue
        }
        HandlerRule::Method(m) => {
            if ctx.orig_method.is_none() {
                ctx.orig_method = Some(CompactString::new(req.method()));
            }
            req.set_method(m);
            Flow::Continue
        }
        HandlerRule::CopyResponseHeaders(copy) => {
            if let Some((_, fields)) = &ctx.resp.upstream_answer {
                for (k, v) in fields.iter().filter(|(k, _)| copy.copies(k)) {
                    ctx.resp
                        .immediate
                        .push(HeaderEdit::Add(CompactString::new(k), v.clone()));
                }
            }
            Flow::Continue
        }
    }
}

/// The request to an authentication service: the client's headers (not its body),
/// `X-Forwarded-Method`/`-Uri`/`-For`/`-Proto`/`-Host`, then `header_up`.
fn forward_auth_call(
    f: &crate::route_table::ForwardAuthRule,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    marker: String,
) -> crate::auth::AuthCall {
    let uri = render(&f.uri, req, ctx).into_owned();
    let uri = if uri.starts_with('/') {
        uri
    } else {
        format!("/{uri}")
    };
    let uri = if http::Uri::try_from(uri.as_str()).is_ok() {
        uri
    } else {
        "/".to_string()
    };
    let Ok(mut up) = pingora_http::RequestHeader::build("GET", uri.as_bytes(), None) else {
        // Nothing sensible to send: the service is not asked and the request fails.
        return crate::auth::AuthCall {
            addr: f.addr.clone(),
            request: Vec::new(),
            copy: Vec::new(),
            marker,
        };
    };
    for name in req.header_names() {
        if crate::request::hop_by_hop(name.as_bytes())
            || matches!(
                name.as_str(),
                "host" | "content-length" | crate::auth::FORWARD_MARKER
            )
        {
            continue;
        }
        req.any_header_value(&name, &mut |v| {
            HttpRequest::append_header(&mut up, &name, v);
            false
        });
    }
    let orig = ctx
        .orig_uri
        .clone()
        .unwrap_or_else(|| crate::request::join_path_query(req.path(), req.query()));
    let set = |up: &mut pingora_http::RequestHeader, k: &str, v: &str| {
        HttpRequest::set_header(up, k, v);
    };
    set(&mut up, "x-forwarded-method", req.method());
    set(&mut up, "x-forwarded-uri", &orig);
    set(&mut up, "x-forwarded-for", &ctx.client_ip().to_string());
    set(&mut up, "x-forwarded-proto", ctx.scheme());
    set(
        &mut up,
        "x-forwarded-host",
        req.header("host").unwrap_or(&ctx.host),
    );
    apply_request_rules(&f.header_up, &mut up, ctx);
    let mut raw = format!("GET {uri} HTTP/1.1\r\nHost: {}\r\n", f.addr).into_bytes();
    for (k, v) in up.headers.iter() {
        raw.extend_from_slice(k.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    crate::auth::AuthCall {
        addr: f.addr.clone(),
        request: raw,
        copy: f.copy.clone(),
        marker,
    }
}

/// A request refused by security middleware `by`: the error status (so
/// `handle_errors` applies), the refusal in the log, and an optional response field.
fn refuse<'t>(
    ctx: &mut RequestContext,
    by: &'static str,
    status: u16,
    field: Option<(&'static str, String)>,
) -> Flow<'t> {
    ctx.log.rejected_by = Some(by);
    if let Some((name, value)) = field {
        ctx.resp
            .immediate
            .push(HeaderEdit::Set(CompactString::const_new(name), value));
    }
    Flow::Done(Terminal::Error {
        status,
        by,
        message: format!("refused by {by}"),
    })
}

fn run_map(m: &MapRule, req: &dyn HttpRequest, ctx: &mut RequestContext) {
    let input = render(&m.source, req, ctx).into_owned();
    let mut captures = None;
    let outputs: Option<&Vec<Template>> = m
        .exact
        .iter()
        .find(|(k, _)| *k == input)
        .map(|(_, o)| o)
        .or_else(|| {
            m.regex.iter().find_map(|(re, o)| {
                let c = re.captures(&input)?;
                captures = Some(c);
                Some(o)
            })
        });
    let outs = match outputs {
        Some(o) => o,
        None if !m.defaults.is_empty() => &m.defaults,
        None => return,
    };
    for (dest, t) in m.destinations.iter().zip(outs) {
        if t.raw() == "-" {
            continue;
        }
        let mut v = render(t, req, ctx).into_owned();
        // A regex key's output may name its capture groups (`${1}`, `$name`), as in Caddy.
        if let Some(c) = captures.as_ref().filter(|_| v.contains('$')) {
            let mut expanded = String::with_capacity(v.len());
            c.expand(&v, &mut expanded);
            v = expanded;
        }
        ctx.set_var(dest, v);
    }
}

/// A request's header fields (name, value) in order, for the access log.
fn request_fields(req: &dyn HttpRequest) -> Vec<(CompactString, String)> {
    let mut out = Vec::new();
    for name in req.header_names() {
        req.any_header_value(&name, &mut |v| {
            out.push((CompactString::new(&name), v.to_string()));
            false
        });
    }
    out
}

/// A `log_append` value: a variable's value when the text names one (as in Caddy),
/// else the text with its placeholders filled in.
pub fn log_value(value: &Template, req: &dyn HttpRequest, ctx: &RequestContext) -> String {
    if let Some(var) = value.as_literal().and_then(|name| ctx.var(name)) {
        return var.to_string();
    }
    render(value, req, ctx).into_owned()
}

/// Whether a TLS request's Host is the server name its handshake asked for (a client
/// that sent none matches no Host).
fn sni_is_host(ctx: &RequestContext) -> bool {
    ctx.conn
        .tls_facts
        .as_ref()
        .and_then(|f| f.server_name.as_deref())
        .is_some_and(|sni| sni.eq_ignore_ascii_case(&ctx.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a b"), None);
    }

    #[test]
    fn redirects_cannot_go_protocol_relative() {
        assert_eq!(sanitize_redirect("//evil.com/x"), "/evil.com/x");
        assert_eq!(sanitize_redirect("/a\r\nSet-Cookie: x"), "/aSet-Cookie: x");
    }
}
