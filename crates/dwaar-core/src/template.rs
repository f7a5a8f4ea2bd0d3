//! Rendering config [`Template`]s against a request.

use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_config::placeholder::{Part, Placeholder, Template};
use std::borrow::Cow;
use std::fmt::Write as _;

/// Renders `t`; a template without placeholders is returned borrowed.
pub fn render<'t>(t: &'t Template, req: &dyn HttpRequest, ctx: &RequestContext) -> Cow<'t, str> {
    if let Some(lit) = t.as_literal() {
        return Cow::Borrowed(lit);
    }
    let mut out = String::with_capacity(t.raw().len() + 32);
    for p in t.parts() {
        match p {
            Part::Literal(s) => out.push_str(s),
            Part::Value(ph) => push_value(&mut out, ph, req, ctx),
        }
    }
    Cow::Owned(out)
}

/// The host part of a `Host` value as sent: no port, no IPv6 brackets.
fn host_as_sent(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    }
}

fn push_value(out: &mut String, ph: &Placeholder, req: &dyn HttpRequest, ctx: &RequestContext) {
    use Placeholder as P;
    match ph {
        // As the client wrote it (Caddy keeps its case), without the port.
        P::Host => out.push_str(req.header("host").map_or(&ctx.host, host_as_sent)),
        P::Hostport => {
            out.push_str(req.header("host").unwrap_or(&ctx.host));
        }
        P::Port => {
            let _ = write!(out, "{}", ctx.conn.local_port);
        }
        P::Method => out.push_str(req.method()),
        P::Scheme => out.push_str(ctx.scheme()),
        P::Proto => out.push_str(match req.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }),
        P::Uri => {
            out.push_str(req.path());
            if let Some(q) = req.query() {
                out.push('?');
                out.push_str(q);
            }
        }
        P::Path => out.push_str(req.path()),
        P::PathSegment(n) => {
            if let Some(seg) = req.path().split('/').filter(|s| !s.is_empty()).nth(*n) {
                out.push_str(seg);
            }
        }
        P::Dir => {
            let p = req.path();
            out.push_str(&p[..p.rfind('/').map(|i| i + 1).unwrap_or(0)]);
        }
        P::File => {
            let p = req.path();
            out.push_str(&p[p.rfind('/').map(|i| i + 1).unwrap_or(0)..]);
        }
        P::Query => out.push_str(req.query().unwrap_or("")),
        P::QueryParam(k) => {
            if let Some(v) = query_param(req.query().unwrap_or(""), k) {
                out.push_str(&v);
            }
        }
        P::OrigUri => match &ctx.orig_uri {
            Some(u) => out.push_str(u),
            None => push_value(out, &P::Uri, req, ctx),
        },
        P::OrigPath => match &ctx.orig_uri {
            Some(u) => out.push_str(u.split('?').next().unwrap_or("")),
            None => out.push_str(req.path()),
        },
        P::OrigPrefixedQuery => {
            let q = match &ctx.orig_uri {
                Some(u) => u.split_once('?').map(|(_, q)| q),
                None => req.query(),
            };
            if let Some(q) = q.filter(|q| !q.is_empty()) {
                out.push('?');
                out.push_str(q);
            }
        }
        P::Remote => {
            let _ = write!(out, "{}", ctx.conn.remote);
        }
        P::RemoteHost => {
            let _ = write!(out, "{}", ctx.conn.remote.ip());
        }
        P::RemotePort => {
            let _ = write!(out, "{}", ctx.conn.remote.port());
        }
        P::ClientIp => {
            let _ = write!(out, "{}", ctx.client_ip());
        }
        P::Header(name) => {
            let mut first = true;
            req.any_header_value(name, &mut |v| {
                if !first {
                    out.push(',');
                }
                out.push_str(v);
                first = false;
                false
            });
        }
        P::Cookie(name) => {
            req.any_header_value("cookie", &mut |v| {
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name {
                            out.push_str(val);
                            return true;
                        }
                    }
                }
                false
            });
        }
        P::HostLabel(n) => {
            // Labels count from the right, like Caddy: labels.0 is the TLD.
            if let Some(l) = ctx.host.rsplit('.').nth(*n) {
                out.push_str(l);
            }
        }
        P::Var(name) => {
            if let Some(v) = ctx.var(name) {
                out.push_str(v);
            }
        }
        P::Regex { name, index } => {
            if let Some(v) = ctx.capture(name, *index) {
                out.push_str(v);
            }
        }
        P::UpstreamStatus => {
            if let Some((s, _)) = &ctx.resp.upstream_answer {
                let _ = write!(out, "{s}");
            }
        }
        P::UpstreamHeader(name) => {
            if let Some((_, fields)) = &ctx.resp.upstream_answer {
                if let Some((_, v)) = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    out.push_str(v);
                }
            }
        }
        P::UpstreamHostport => {
            if let Some(u) = &ctx.attempt.upstream {
                out.push_str(&u.dial);
            }
        }
        P::ErrorStatusCode => {
            if let Some((s, _)) = &ctx.error {
                let _ = write!(out, "{s}");
            }
        }
        P::ErrorStatusText => {
            if let Some((s, _)) = &ctx.error {
                out.push_str(
                    http::StatusCode::from_u16(*s)
                        .ok()
                        .and_then(|c| c.canonical_reason())
                        .unwrap_or(""),
                );
            }
        }
        P::ErrorMessage => {
            if let Some((_, m)) = &ctx.error {
                out.push_str(m);
            }
        }
        P::Named(name) => match ctx.var(name) {
            Some(v) => out.push_str(v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        },
        P::RequestId => {
            if let Some(id) = &ctx.request_id {
                let mut buf = [0u8; 36];
                out.push_str(id.hyphenated().encode_lower(&mut buf));
            }
        }
    }
}

/// The first value of query parameter `key`, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v).into_owned())
    })
}

/// Decodes `%XX` escapes (and `+` is left alone); invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
