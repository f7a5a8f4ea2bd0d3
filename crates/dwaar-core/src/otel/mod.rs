//! `tracing`: each request it runs for becomes an OpenTelemetry server span.
//!
//! The W3C trace context (`traceparent`, RFC-like spec at w3.org/TR/trace-context) of
//! the incoming request is the span's parent; the request goes on (to the upstream)
//! with a `traceparent` naming this span, and `tracestate` as it came. The trace and
//! span ids are `{http.vars.trace_id}` and `{http.vars.span_id}` and the access log's
//! `traceID` and `spanID` fields.
//!
//! On the request path a span is only a boxed struct in the context; when the request
//! ends it moves into a bounded queue (dropped, and counted, when the queue is full).
//! [`export`] batches the queue on its own thread and sends it to the collector the
//! standard `OTEL_*` environment variables name, over OTLP (HTTP/protobuf or gRPC).

pub mod export;

use crate::context::RequestContext;
use crate::request::HttpRequest;
use compact_str::CompactString;
use std::time::{SystemTime, UNIX_EPOCH};

/// A value of a span attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Text(String),
    Int(i64),
}

/// A request's span while the request runs.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The incoming request's span, when it named one.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    /// `tracestate` as it came.
    pub trace_state: String,
    pub name: String,
    pub start_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// `span_attributes` (names the config chose).
    pub custom: Vec<(String, String)>,
}

/// A span that ended, on its way to the exporter.
#[derive(Debug)]
pub struct Finished {
    pub span: Span,
    pub end_unix_nanos: u64,
    pub status: u16,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub error: Option<CompactString>,
}

/// `traceparent`'s fields: (trace id, parent span id, sampled). `None` for a value the
/// spec says to ignore (bad shape, version `ff`, all-zero ids).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let _ = from_hex::<1>(version)?;
    let trace_id = from_hex::<16>(trace)?;
    let span_id = from_hex::<8>(span)?;
    let flags = from_hex::<1>(flags)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags & 1 == 1))
}

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Starts the request's span (the first `tracing` that runs for it; later ones change
/// nothing): parent from `traceparent`, the sampling decision, the ids in
/// `{http.vars.*}`, and the request's `traceparent` rewritten to name this span.
pub fn start(
    name: String,
    custom: Vec<(String, String)>,
    req: &mut dyn HttpRequest,
    ctx: &mut RequestContext,
) {
    if ctx.trace().is_some() {
        return;
    }
    let parent = req.header("traceparent").and_then(parse_traceparent);
    let trace_id = match parent {
        Some((t, _, _)) => t,
        None => nonzero_id(),
    };
    let span_id: [u8; 8] = nonzero_id();
    let sampled = export::settings()
        .sampler
        .sample(parent.map(|p| p.2), &trace_id);
    let started = SystemTime::now() - ctx.start.map(|s| s.elapsed()).unwrap_or_default();
    let (trace_hex, span_hex) = (hex(&trace_id), hex(&span_id));
    req.set_header(
        "traceparent",
        &format!(
            "00-{trace_hex}-{span_hex}-{}",
            if sampled { "01" } else { "00" }
        ),
    );
    let mut attributes = vec![
        ("http.request.method", AttrValue::Text(req.method().into())),
        ("url.path", AttrValue::Text(req.path().into())),
        ("url.scheme", AttrValue::Text(ctx.scheme().into())),
        ("server.address", AttrValue::Text(ctx.host.to_string())),
        (
            "server.port",
            AttrValue::Int(i64::from(ctx.conn.local_port)),
        ),
        (
            "client.address",
            AttrValue::Text(ctx.client_ip().to_string()),
        ),
        (
            "network.peer.address",
            AttrValue::Text(ctx.conn.remote.ip().to_string()),
        ),
        (
            "network.peer.port",
            AttrValue::Int(i64::from(ctx.conn.remote.port())),
        ),
        (
            "network.protocol.version",
            AttrValue::Text(
                match req.version() {
                    http::Version::HTTP_10 => "1.0",
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_3 => "3",
                    _ => "1.1",
                }
                .into(),
            ),
        ),
    ];
    if let Some(q) = req.query().filter(|q| !q.is_empty()) {
        attributes.push(("url.query", AttrValue::Text(q.into())));
    }
    if let Some(ua) = req.header("user-agent") {
        attributes.push(("user_agent.original", AttrValue::Text(ua.into())));
    }
    ctx.set_var("trace_id", trace_hex);
    ctx.set_var("span_id", span_hex);
    ctx.rare_mut().trace = Some(Span {
        trace_id,
        span_id,
        parent: parent.map(|p| p.1),
        sampled,
        trace_state: req.header("tracestate").unwrap_or_default().to_string(),
        name,
        start_unix_nanos: unix_nanos(started),
        attributes,
        custom,
    });
}

fn nonzero_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| rand::random::<u8>());
        if id != [0; N] {
            return id;
        }
    }
}

/// Ends the request's span (if it has a sampled one) and queues it for export.
pub fn end(ctx: &RequestContext, status: u16, bytes_read: u64, bytes_written: u64) {
    let Some(span) = ctx.trace().filter(|s| s.sampled) else {
        return;
    };
    export::queue(Finished {
        span: span.clone(),
        end_unix_nanos: unix_nanos(SystemTime::now()),
        status,
        bytes_read,
        bytes_written,
        error: ctx.attempt.error.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_the_spec_says() {
        let (t, s, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert!(sampled);
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.2);
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
