//! Requests that arrive as streams of a multiplexed connection: HTTP/2 (our own
//! front-end over TLS and h2c, [`h2`]) and HTTP/3 ([`crate::quic`]). Each stream becomes
//! a protocol-neutral request for the pipeline and goes through the shared
//! [lifecycle](crate::lifecycle); its answer goes back out through the
//! [`Downstream`] trait, which is all that differs between the two protocols.
//! Proxying goes through the lifecycle's shared exchange
//! ([`crate::lifecycle::exchange`]).

pub mod h2;

use crate::context::{ConnInfo, RequestContext};
use crate::lifecycle::downstream::{read_body, write_reply, Downstream};
use crate::lifecycle::{attempt, inflight, Decided, LogParts};
use crate::pipeline::{Outcome, Reply};
use crate::route_table::RouteStore;
use bytes::Bytes;
use compact_str::CompactString;
use pingora_http::RequestHeader;

/// The request as the pipeline sees it (Pingora's header type implements `HttpRequest`):
/// the stream's parts moved in, fields and all, nothing copied. The target becomes
/// origin-form (the path and query; the authority moves to `Host` when the request has
/// none).
fn to_request_header(req: http::Request<()>, version: http::Version) -> Option<RequestHeader> {
    let (mut parts, ()) = req.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority() {
            let host = http::HeaderValue::from_str(a.as_str()).ok()?;
            parts.headers.insert(http::header::HOST, host);
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = http::Uri::from(target);
    parts.version = version;
    Some(RequestHeader::from(parts))
}

/// Serves one request of a multiplexed connection through the lifecycle.
pub async fn serve_request<D: Downstream>(
    req: http::Request<()>,
    mut stream: D,
    conn: ConnInfo,
    store: &RouteStore,
) {
    let version = stream.version();
    let Some(original) = to_request_header(req, version) else {
        reply_status(&mut stream, 400).await;
        return;
    };
    let head_only = original.method == http::Method::HEAD;
    let raw_host = original
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let mut ctx = RequestContext::default();
    let Some(table) = crate::lifecycle::start(store, conn, raw_host, &mut ctx) else {
        reply_status(&mut stream, 400).await;
        return;
    };
    // Counted for graceful shutdown like the other front-ends' requests.
    ctx.inflight = inflight::Guard::enter();
    // Kept only when some handler may ask to run the pipeline again.
    let rerun = table.rerun_checks.then(|| original.clone());
    let mut header = original;
    let mut outcome = match crate::lifecycle::decide(&table, rerun.as_ref(), &mut header, &mut ctx)
    {
        Decided::Ready(o) => o,
        Decided::Checking(checks) => checks.await,
    };
    if matches!(outcome, Outcome::NeedsBody) {
        // Boxed: rare, and its state would sit in every stream's future.
        outcome = Box::pin(body_then_decide(
            &mut stream,
            &table,
            rerun.as_ref(),
            &mut header,
            &mut ctx,
        ))
        .await;
    }
    ctx.table = Some(table);
    let (status, read, written) = match outcome {
        Outcome::Reply(mut r) => {
            crate::rewrite::reply(&mut ctx, &mut r);
            let status = r.status;
            let sent = write_reply(&mut stream, r, &ctx, head_only)
                .await
                .unwrap_or(0);
            (status, 0, sent)
        }
        // Boxed: rare (analytics beacons and reports).
        Outcome::Internal(i) => Box::pin(internal(&mut stream, i, &ctx, head_only)).await,
        // The request was processed and the config says to drop it: a failure, not a
        // refusal (a refused stream tells the client it may safely send it again).
        Outcome::Abort => {
            stream.abort(false);
            (0, 0, 0)
        }
        // `decide` settles every check; kept for exhaustiveness.
        Outcome::Check(_) | Outcome::NeedsBody => {
            let sent = write_reply(&mut stream, Reply::status(503), &ctx, head_only)
                .await
                .unwrap_or(0);
            (503, 0, sent)
        }
        Outcome::Proxy => {
            crate::lifecycle::exchange::proxy(&mut stream, &mut header, &mut ctx, head_only).await
        }
    };
    attempt::release(&mut ctx);
    crate::lifecycle::finish(
        &ctx,
        header.method.as_str(),
        (status, read, written),
        || LogParts {
            request: &header,
            method: header.method.as_str(),
            path: header.uri.path(),
            query: header.uri.query().unwrap_or(""),
            version,
            user_agent: header.headers.get(http::header::USER_AGENT).cloned(),
            referer: header.headers.get(http::header::REFERER).cloned(),
            status,
            bytes_read: read,
            bytes_written: written,
        },
    );
}

/// `{http.request.body}`: reads the body into the context, then runs the pipeline again.
async fn body_then_decide<D: Downstream>(
    stream: &mut D,
    table: &crate::route_table::RouteTable,
    rerun: Option<&RequestHeader>,
    header: &mut RequestHeader,
    ctx: &mut RequestContext,
) -> Outcome {
    let had = stream.declared_length().is_some_and(|n| n > 0);
    let Some(body) = read_body(stream, crate::lifecycle::BODY_PLACEHOLDER_MAX).await else {
        return Outcome::Reply(Reply::status(413));
    };
    let had = had || !body.is_empty();
    crate::lifecycle::body_read(ctx, body, had);
    match crate::lifecycle::decide(table, rerun, header, ctx) {
        Decided::Ready(o) => o,
        Decided::Checking(checks) => checks.await,
    }
}

/// Dwaar's own endpoint: reads the body up to its limit, answers; returns (status,
/// request body bytes, response body bytes).
async fn internal<D: Downstream>(
    stream: &mut D,
    i: crate::analytics::Internal,
    ctx: &RequestContext,
    head_only: bool,
) -> (u16, u64, u64) {
    let limit = i.body_limit();
    let (r, n) = match read_body(stream, limit).await {
        Some(body) => {
            let n = body.len() as u64;
            (crate::analytics::answer(i, body).await, n)
        }
        None => (Reply::status(413), 0),
    };
    let status = r.status;
    let sent = write_reply(stream, r, ctx, head_only).await.unwrap_or(0);
    (status, n, sent)
}

/// Answers with an empty `status` response (400 for a request that cannot be read, 425
/// for a replayable one).
pub async fn reply_status<D: Downstream>(stream: &mut D, status: u16) {
    let _ = write_reply(
        stream,
        Reply::status(status),
        &RequestContext::default(),
        false,
    )
    .await;
}

/// The response head for an HTTP/2 or HTTP/3 client, from the fields the lifecycle
/// settled on (taken, not copied: each value's text becomes the field's bytes). A field
/// that is not valid in HTTP/2 or HTTP/3 is left out rather than failing the response.
/// `alt_svc`: the response announces HTTP/3 when the port serves it (HTTP/2). A head
/// without `Date` gets one (RFC 9110 §6.6.1).
pub fn response_head(
    status: u16,
    fields: Vec<(CompactString, String)>,
    ctx: &RequestContext,
    alt_svc: bool,
) -> http::Response<()> {
    let mut head = http::Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let map = head.headers_mut();
    map.reserve(fields.len() + 3);
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
        if let Some(v) = crate::lifecycle::alt_svc(ctx) {
            map.insert(http::header::ALT_SVC, v);
        }
    }
    if !map.contains_key(http::header::DATE) {
        map.insert(http::header::DATE, crate::http1::date_value());
    }
    head
}

/// Fields that belong to one HTTP/1 hop and never appear in HTTP/2 or HTTP/3.
fn connection_specific(name: &str) -> bool {
    crate::request::hop_by_hop(name.as_bytes()) || name.eq_ignore_ascii_case("host")
}

/// Proxies a request the pipeline sends upstream, for every front-end that answers
#[cfg(test)]
mod tests {
    use super::*;

    struct Null;

    impl Downstream for Null {
        fn version(&self) -> http::Version {
            http::Version::HTTP_2
        }
        async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
            Ok(None)
        }
        async fn send_head(
            &mut self,
            _: u16,
            _: Vec<(CompactString, String)>,
            _: &RequestContext,
            _: bool,
        ) -> Result<(), ()> {
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
        fn declared_length(&self) -> Option<u64> {
            None
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
        assert_eq!(names, ["content-type", "x-ok", "date"]);
    }

    /// Every request stream is a task holding this future (moved into the task when it is
    /// spawned): rare, large states (h2 and FastCGI upstreams, auth checks) are boxed.
    #[test]
    fn request_future_stays_small() {
        let store = RouteStore::new(crate::route_table::RouteTable::default());
        let f = serve_request(http::Request::new(()), Null, ConnInfo::default(), &store);
        let size = std::mem::size_of_val(&f);
        eprintln!(
            "serve_request future: {size} bytes (context {}, request head {}, request {})",
            std::mem::size_of::<RequestContext>(),
            std::mem::size_of::<RequestHeader>(),
            std::mem::size_of::<http::Request<()>>()
        );
        // 14,112 bytes in a debug build before rare states were boxed. (Boxing the
        // proxying and reply states too made it 3.5 KiB but cost more in allocations
        // than it saved in copies: benchmarks/instructions.sh.)
        assert!(size < 5 * 1024, "serve_request future is {size} bytes");
    }
}
