//! `templates`: responses run as Go templates before they go out, as Caddy's
//! `templates` handler does.
//!
//! The handler only marks the request ([`TemplatesRule`] in `ctx.resp.templates`).
//! A response whose `Content-Type` holds one of the rule's types (`text/html`,
//! `text/plain`, `text/markdown` by default) is then read whole, rendered, and sent
//! with its new length (`Accept-Ranges`, `Last-Modified` and `ETag` dropped): replies
//! Dwaar builds (`file_server`, `respond`) through [`render_reply`], which
//! [`crate::lifecycle::decide`] awaits on every front-end; proxied responses through
//! [`crate::lifecycle::exchange`], which holds back a matching response's head and body
//! ([`Held`]) and answers with the rendered page. `encode` compresses the rendered page.
//!
//! Rendering is synchronous ([`dwaar_gotmpl`]); `httpInclude` needs a sub-request,
//! which is async: a render that reaches an `httpInclude` whose answer is not known yet
//! stops ([`Halt::Include`]), the sub-request runs through the site's routes, and the
//! render starts again with the answer known. `httpError` stops a render with a status
//! (answered through `handle_errors`); a template error answers 500.

mod front_matter;
mod funcs;
mod markdown;
mod page;

use crate::context::RequestContext;
use crate::lifecycle::downstream::Downstream;
use crate::pipeline::{Reply, ResponseHead};
use crate::request::HttpRequest;
use bytes::{Bytes, BytesMut};
use compact_str::CompactString;
use page::{HeaderEdit, Page, Req};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The largest response body rendered (a larger one is answered 500).
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// How deep `httpInclude`s may nest (Caddy's limit).
const MAX_INCLUDE_DEPTH: u32 = 3;
/// Distinct `httpInclude`s one page may make.
const MAX_INCLUDES: usize = 32;
/// The request field counting `httpInclude` depth (Caddy's name).
const INCLUDE_FIELD: &str = "caddy-templates-include";

/// The compiled `templates` directive.
#[derive(Debug)]
pub struct TemplatesRule {
    pub mime: Vec<String>,
    pub between: Option<(String, String)>,
    pub root: Option<dwaar_config::placeholder::Template>,
}

/// Why a render stopped early.
#[derive(Debug)]
pub enum Halt {
    /// `httpInclude` of a URI whose answer is not known yet.
    Include(String),
    /// `httpError <status>`.
    Status(u16),
}

/// `httpInclude` answers: the body, or why it failed.
pub type Includes = HashMap<String, Result<String, String>>;

/// What rendering made of a page.
#[derive(Debug)]
pub enum Rendered {
    Page(String, Vec<HeaderEdit>),
    /// `httpError`.
    Status(u16),
    Failed(String),
    /// Stopped at an `httpInclude` whose answer is not known yet.
    Include(String),
}

/// Whether a response with this status and `Content-Type` is rendered.
pub fn applies(rule: &TemplatesRule, status: u16, content_type: Option<&str>) -> bool {
    if status < 200 || status == 204 || status == 304 {
        return false;
    }
    let Some(ct) = content_type else {
        return false;
    };
    rule.mime.iter().any(|m| ct.contains(m.as_str()))
}

fn header<'a>(headers: &'a [(CompactString, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Renders `text` once: the page and its header edits, or where it stopped.
fn render_once(
    rule: &TemplatesRule,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    text: &str,
    includes: &Includes,
) -> Rendered {
    let root = crate::files::root_for(rule.root.as_ref(), req, ctx);
    let current = Rc::new(Req::of(req, ctx));
    let original = match ctx.orig_uri.as_deref() {
        Some(orig) => {
            let mut o = (*current).clone();
            let (p, q) = orig.split_once('?').unwrap_or((orig, ""));
            o.path = p.to_string();
            o.raw_query = q.to_string();
            if let Some(m) = &ctx.orig_method {
                o.method = m.to_string();
            }
            Rc::new(o)
        }
        None => current.clone(),
    };
    let edits = Rc::new(RefCell::new(Vec::new()));
    let page = Rc::new(Page {
        req: current,
        original,
        remote_ip: ctx.conn.remote.ip().to_string(),
        client_ip: ctx.client_ip().to_string(),
        args: dwaar_gotmpl::Value::Nil,
        resp: edits.clone(),
    });
    let mut engine = dwaar_gotmpl::Engine::new();
    engine.max_output = MAX_BODY;
    if let Some((l, r)) = &rule.between {
        engine.delims(l, r);
    }
    funcs::install(&mut engine, page.clone(), root, req, ctx, includes);
    let name = req.path().to_string();
    match engine.render(&name, text, dwaar_gotmpl::Value::Object(page)) {
        Ok(out) => {
            let e = edits.borrow().clone();
            Rendered::Page(out, e)
        }
        Err(dwaar_gotmpl::Error::Halt(h)) => match h.downcast_ref::<Halt>() {
            Some(Halt::Include(uri)) => Rendered::Include(uri.clone()),
            Some(Halt::Status(code)) => Rendered::Status(*code),
            None => Rendered::Failed("template stopped".into()),
        },
        Err(e) => Rendered::Failed(e.to_string()),
    }
}

/// Renders `text` for the request, making the `httpInclude` sub-requests it needs.
pub async fn render(
    rule: &TemplatesRule,
    table: Option<&crate::route_table::RouteTable>,
    req: &(dyn HttpRequest + Sync),
    ctx: &RequestContext,
    text: &str,
) -> Rendered {
    let mut includes = Includes::new();
    loop {
        match render_once(rule, req, ctx, text, &includes) {
            Rendered::Include(uri) => {
                if includes.len() >= MAX_INCLUDES {
                    return Rendered::Failed("too many httpInclude calls".into());
                }
                let answer = match table {
                    Some(t) => Box::pin(include(t, req, ctx, &uri)).await,
                    None => Err("httpInclude: no routes to ask".into()),
                };
                includes.insert(uri, answer);
            }
            done => return done,
        }
    }
}

/// A response read whole, to render.
#[derive(Debug, Default)]
pub struct Held {
    pub status: u16,
    pub fields: Vec<(CompactString, String)>,
    pub body: BytesMut,
    pub too_big: bool,
}

/// The rendered page as a reply (the held response's status and fields, its length
/// fields dropped), or the error answer (`handle_errors` applies).
pub async fn finish(
    rule: &TemplatesRule,
    held: Held,
    table: Option<&crate::route_table::RouteTable>,
    req: &mut (dyn HttpRequest + Send + Sync),
    ctx: &mut RequestContext,
) -> Option<Reply> {
    if held.too_big {
        return crate::pipeline::raised_error_reply(
            500,
            "response too large to render".into(),
            "templates",
            req,
            ctx,
        );
    }
    let text = String::from_utf8_lossy(&held.body).into_owned();
    let rendered = render(rule, table, &*req, ctx, &text).await;
    match rendered {
        Rendered::Page(body, edits) => {
            let mut headers = held.fields;
            headers.retain(|(k, _)| {
                !["content-length", "accept-ranges", "last-modified", "etag"]
                    .iter()
                    .any(|n| k.eq_ignore_ascii_case(n))
            });
            for e in edits {
                match e {
                    HeaderEdit::Set(k, v) => {
                        ResponseHead::set(&mut headers, &k.to_ascii_lowercase(), &v);
                    }
                    HeaderEdit::Add(k, v) => {
                        headers.push((CompactString::new(k.to_ascii_lowercase()), v))
                    }
                    HeaderEdit::Del(k) => {
                        ResponseHead::remove(&mut headers, &k.to_ascii_lowercase())
                    }
                }
            }
            Some(Reply {
                status: held.status,
                headers,
                body: Bytes::from(body),
                ..Default::default()
            })
        }
        Rendered::Status(code) => crate::pipeline::raised_error_reply(
            code,
            format!("httpError {code}"),
            "templates",
            req,
            ctx,
        ),
        Rendered::Failed(message) | Rendered::Include(message) => {
            tracing::warn!(path = %req.path(), error = %message, "template failed");
            crate::pipeline::raised_error_reply(500, message, "templates", req, ctx)
        }
    }
}

/// A reply Dwaar built, rendered when the rule applies to it. `None`: the error routes
/// aborted.
pub async fn render_reply(
    mut r: Reply,
    table: Option<&crate::route_table::RouteTable>,
    req: &mut (dyn HttpRequest + Send + Sync),
    ctx: &mut RequestContext,
) -> Option<Reply> {
    let Some(rule) = ctx.templates().cloned() else {
        return Some(r);
    };
    if !applies(&rule, r.status, header(&r.headers, "content-type")) {
        return Some(r);
    }
    let mut held = Held {
        status: r.status,
        fields: std::mem::take(&mut r.headers),
        body: BytesMut::from(&r.body[..]),
        too_big: false,
    };
    if let Some(s) = r.stream.as_mut() {
        while let Ok(Some(c)) = s.next_chunk() {
            if held.body.len() + c.len() > MAX_BODY {
                held.too_big = true;
                break;
            }
            held.body.extend_from_slice(&c);
        }
    }
    finish(&rule, held, table, req, ctx).await
}

/// Runs `httpInclude`'s sub-request: a GET of `uri` through the site's routes with the
/// request's fields (and `Accept-Encoding: identity`); the body of a 2xx/3xx answer.
async fn include(
    table: &crate::route_table::RouteTable,
    req: &(dyn HttpRequest + Sync),
    ctx: &RequestContext,
    uri: &str,
) -> Result<String, String> {
    let depth: u32 = match req.header(INCLUDE_FIELD) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("bad {INCLUDE_FIELD} value {v:?}"))?,
        None => 0,
    };
    if depth >= MAX_INCLUDE_DEPTH {
        return Err("virtual request cycle".into());
    }
    let mut sub = pingora_http::RequestHeader::build("GET", uri.as_bytes(), None)
        .map_err(|e| format!("httpInclude {uri}: {e}"))?;
    for name in req.header_names() {
        if [
            "content-length",
            "transfer-encoding",
            "accept-encoding",
            "expect",
            INCLUDE_FIELD,
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let mut values = Vec::new();
        req.any_header_value(&name, &mut |v| {
            values.push(v.to_string());
            false
        });
        for v in values {
            let _ = sub.append_header(name.clone(), v);
        }
    }
    let _ = sub.insert_header("accept-encoding", "identity");
    let _ = sub.insert_header(INCLUDE_FIELD, (depth + 1).to_string());
    let mut sctx = RequestContext {
        start: Some(std::time::Instant::now()),
        conn: ctx.conn.clone(),
        host: ctx.host.clone(),
        ..RequestContext::default()
    };
    let outcome = crate::pipeline::handle_request(table, &mut sub, &mut sctx);
    let mut sink = Collect::default();
    let status = match outcome {
        crate::pipeline::Outcome::Reply(r) => {
            let r = match Box::pin(render_reply(r, Some(table), &mut sub, &mut sctx)).await {
                Some(r) => r,
                None => return Err("httpInclude: aborted".into()),
            };
            let st = r.status;
            let _ = crate::lifecycle::downstream::write_reply(&mut sink, r, &sctx, false).await;
            st
        }
        crate::pipeline::Outcome::Proxy => {
            sctx.table = ctx.table.clone();
            let (st, _, _) = Box::pin(crate::lifecycle::exchange::proxy(
                &mut sink, &mut sub, &mut sctx, false,
            ))
            .await;
            st
        }
        _ => return Err(format!("httpInclude {uri}: no answer")),
    };
    if status >= 400 || sink.failed {
        return Err(format!("http {status}"));
    }
    Ok(String::from_utf8_lossy(&sink.body).into_owned())
}

/// A client side that keeps what it is sent (sub-requests).
#[derive(Debug, Default)]
struct Collect {
    status: u16,
    body: BytesMut,
    failed: bool,
}

impl Downstream for Collect {
    fn version(&self) -> http::Version {
        http::Version::HTTP_11
    }
    async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
        Ok(None)
    }
    async fn send_head(
        &mut self,
        status: u16,
        _fields: Vec<(CompactString, String)>,
        _ctx: &RequestContext,
        _close: bool,
    ) -> Result<(), ()> {
        self.status = status;
        Ok(())
    }
    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        if self.body.len() + data.len() > MAX_BODY {
            self.failed = true;
            return Err(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }
    async fn send_trailers(&mut self, _trailers: http::HeaderMap) -> Result<(), ()> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), ()> {
        Ok(())
    }
    fn declared_length(&self) -> Option<u64> {
        Some(0)
    }
    fn abort(&mut self, _refused: bool) {
        self.failed = true;
    }
}

/// The client side of a proxied request whose response may be rendered: a response
/// the rule applies to is held back whole ([`Held`]); any other passes through.
pub struct Holding<'d, D: Downstream> {
    pub inner: &'d mut D,
    pub rule: std::sync::Arc<TemplatesRule>,
    /// `Some` once a response was held back.
    pub held: Option<Held>,
}

impl<D: Downstream> Downstream for Holding<'_, D> {
    fn version(&self) -> http::Version {
        self.inner.version()
    }
    async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
        self.inner.recv_data().await
    }
    async fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(CompactString, String)>,
        ctx: &RequestContext,
        close: bool,
    ) -> Result<(), ()> {
        if applies(&self.rule, status, header(&fields, "content-type")) {
            self.held = Some(Held {
                status,
                fields,
                ..Held::default()
            });
            return Ok(());
        }
        self.inner.send_head(status, fields, ctx, close).await
    }
    async fn send_interim(&mut self, status: u16, fields: Vec<(String, String)>) {
        self.inner.send_interim(status, fields).await;
    }
    fn awaits_continue(&self) -> bool {
        self.inner.awaits_continue()
    }
    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        match self.held.as_mut() {
            Some(h) => {
                if h.body.len() + data.len() > MAX_BODY {
                    h.too_big = true;
                } else {
                    h.body.extend_from_slice(&data);
                }
                Ok(())
            }
            None => self.inner.send_data(data).await,
        }
    }
    async fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), ()> {
        match self.held {
            Some(_) => Ok(()),
            None => self.inner.send_trailers(trailers).await,
        }
    }
    async fn finish(&mut self) -> Result<(), ()> {
        match self.held {
            Some(_) => Ok(()),
            None => self.inner.finish().await,
        }
    }
    fn declared_length(&self) -> Option<u64> {
        self.inner.declared_length()
    }
    async fn discard_body(&mut self) {
        self.inner.discard_body().await;
    }
    fn abort(&mut self, refused: bool) {
        self.inner.abort(refused);
    }
}

/// Whether a proxied response about to go to a [`Holding`] client side will be held
/// and rendered (its body then must reach it unchanged: no compression yet).
pub fn will_hold(ctx: &RequestContext, status: u16, fields: &[(CompactString, String)]) -> bool {
    ctx.rare.as_deref().is_some_and(|r| {
        r.holding
            && r.templates
                .as_deref()
                .is_some_and(|t| applies(t, status, header(fields, "content-type")))
    })
}
