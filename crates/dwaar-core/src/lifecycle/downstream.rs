//! [`Downstream`]: the client side of one request, as the shared lifecycle code writes
//! answers to it and streams bodies through it. HTTP/2 and HTTP/3 streams implement it
//! ([`crate::streams`]), and so does a Pingora session (`crate::proxy`), so a reply, a
//! failure answer, a FastCGI exchange and an HTTP/2 upstream's response are written
//! once for all of them. (The lean HTTP/1 path writes its bytes itself: its relay is
//! the hot path and stays byte-level.)
//!
//! Limits: a request body pausing longer than [`BODY_PAUSE`] or lasting longer than
//! [`BODY_DEADLINE`] is abandoned; a client whose flow control stays shut for
//! [`SEND_WAIT`] loses the response.

use crate::context::RequestContext;
use crate::pipeline::{Reply, ResponseHead};
use crate::request::HttpRequest;
use bytes::{Bytes, BytesMut};
use compact_str::CompactString;
use std::future::Future;
use std::time::Duration;

/// How long a request body may pause.
pub const BODY_PAUSE: Duration = Duration::from_secs(60);
/// How long sending may wait for the client's flow control to open.
pub const SEND_WAIT: Duration = Duration::from_secs(60);
/// The longest a request body may take as a whole.
pub const BODY_DEADLINE: Duration = Duration::from_secs(600);

/// One request's client side.
pub trait Downstream: Send {
    /// The protocol version of the request (access logs, framing choices).
    fn version(&self) -> http::Version;
    /// The next piece of the request body; `Ok(None)` at its end.
    fn recv_data(&mut self) -> impl Future<Output = Result<Option<Bytes>, ()>> + Send;
    /// Sends the response head with its final fields (a `content-length` among them
    /// when the body's length is known; without one an HTTP/1 client gets chunked
    /// framing). `close`: the connection ends after this response (HTTP/1).
    fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(CompactString, String)>,
        ctx: &RequestContext,
        close: bool,
    ) -> impl Future<Output = Result<(), ()>> + Send;
    /// Sends an interim (`1xx`) response, such as `103 Early Hints`, where the protocol
    /// can (dropped otherwise).
    fn send_interim(
        &mut self,
        status: u16,
        fields: Vec<(String, String)>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (status, fields);
        async {}
    }
    /// The client sent `Expect: 100-continue` and none of its body has been read: it
    /// waits to be asked, so an answer given without the body neither reads it nor
    /// (HTTP/1) keeps the connection.
    fn awaits_continue(&self) -> bool {
        false
    }
    /// Sends body bytes, waiting for the client's flow control.
    fn send_data(&mut self, data: Bytes) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the response with trailers.
    fn send_trailers(
        &mut self,
        trailers: http::HeaderMap,
    ) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the response.
    fn finish(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// The request's declared body length (`Content-Length`), if any.
    fn declared_length(&self) -> Option<u64>;
    /// Reads and drops, within [`DISCARD_MAX`](super::DISCARD_MAX) and
    /// [`DISCARD_WAIT`](super::DISCARD_WAIT) (pausing at most
    /// [`DISCARD_PAUSE`](super::DISCARD_PAUSE)), what is left of a request body the answer
    /// does not need, before the answer starts: a client still uploading when its
    /// response arrives may never finish the upload (curl 7.88 over HTTP/2 spins at
    /// 100% CPU). Past the bound the answer goes out and the rest is cut off. A body
    /// announced larger than the bound is not read at all.
    fn discard_body(&mut self) -> impl Future<Output = ()> + Send {
        async move {
            if self.awaits_continue()
                || self
                    .declared_length()
                    .is_some_and(|n| n > super::DISCARD_MAX as u64)
            {
                return;
            }
            let mut left = super::DISCARD_MAX;
            let overall = tokio::time::Instant::now() + super::DISCARD_WAIT;
            while left > 0 {
                let until = overall.min(tokio::time::Instant::now() + super::DISCARD_PAUSE);
                match tokio::time::timeout_at(until, self.recv_data()).await {
                    Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len()),
                    _ => return,
                }
            }
        }
    }
    /// Abandons the response: `refused` when nothing of the request was processed (the
    /// client may retry it), otherwise as a failure (a truncated response, `abort`).
    fn abort(&mut self, refused: bool);
}

/// The next piece of the request body: `Ok(None)` at its end, `Err` when the client
/// paused longer than [`BODY_PAUSE`], passed `deadline`, or the stream failed.
pub async fn recv_chunk<D: Downstream>(
    d: &mut D,
    deadline: tokio::time::Instant,
) -> Result<Option<Bytes>, ()> {
    let until = deadline.min(tokio::time::Instant::now() + BODY_PAUSE);
    match tokio::time::timeout_at(until, d.recv_data()).await {
        Ok(r) => r,
        Err(_) => Err(()),
    }
}

/// When a request body that starts now must have ended.
pub fn body_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + BODY_DEADLINE
}

/// Reads a request body of at most `limit` bytes (`None`: longer, or the client stalled).
pub async fn read_body<D: Downstream>(d: &mut D, limit: usize) -> Option<Bytes> {
    let mut body = BytesMut::new();
    let deadline = body_deadline();
    loop {
        match recv_chunk(d, deadline).await {
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

/// Sends body bytes, waiting at most [`SEND_WAIT`] for the client's flow control.
pub async fn send_body<D: Downstream>(d: &mut D, b: Bytes) -> Result<(), ()> {
    match tokio::time::timeout(SEND_WAIT, d.send_data(b)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends a reply Dwaar built (through its rewrite, if any); returns the body bytes sent.
pub async fn write_reply<D: Downstream>(
    d: &mut D,
    mut r: Reply,
    ctx: &RequestContext,
    head_only: bool,
) -> Result<u64, ()> {
    d.discard_body().await;
    let no_body = r.status == 204 || r.status == 304 || r.status < 200;
    let mut rewrite = r.rewrite.take();
    if !no_body && rewrite.is_none() {
        let len = r.body_len();
        ResponseHead::set(
            &mut r.headers,
            "content-length",
            itoa::Buffer::new().format(len),
        );
    }
    let close = r.close || ctx.close || d.awaits_continue();
    ctx.log.capture_response(|| r.headers.clone());
    d.send_head(r.status, std::mem::take(&mut r.headers), ctx, close)
        .await?;
    let mut sent = 0u64;
    if !head_only && !no_body {
        let first = std::mem::take(&mut r.body);
        relay_piece(d, rewrite.as_deref_mut(), first, &mut sent).await?;
        if let Some(s) = r.stream.as_mut() {
            while let Some(c) = s.next_chunk().map_err(|_| ())? {
                relay_piece(d, rewrite.as_deref_mut(), c, &mut sent).await?;
            }
        }
        relay_end(d, rewrite.as_deref_mut(), &mut sent).await?;
    }
    d.finish().await?;
    Ok(sent)
}

/// Sends one piece of a body through its rewrite, counting what went out.
pub async fn relay_piece<D: Downstream>(
    d: &mut D,
    rewrite: Option<&mut crate::rewrite::Rewrite>,
    chunk: Bytes,
    sent: &mut u64,
) -> Result<(), ()> {
    let piece = match rewrite {
        Some(rw) => rw.feed(Some(chunk), false).map_err(|_| ())?,
        None => chunk,
    };
    if piece.is_empty() {
        return Ok(());
    }
    *sent += piece.len() as u64;
    send_body(d, piece).await
}

/// Sends what the rewrite still holds at the end of a body.
pub async fn relay_end<D: Downstream>(
    d: &mut D,
    rewrite: Option<&mut crate::rewrite::Rewrite>,
    sent: &mut u64,
) -> Result<(), ()> {
    if let Some(rw) = rewrite {
        let last = rw.feed(None, true).map_err(|_| ())?;
        if !last.is_empty() {
            *sent += last.len() as u64;
            send_body(d, last).await?;
        }
    }
    Ok(())
}

/// Answers a proxying failure with `code` (see [`super::failure_reply`]); resolves to
/// (status, body bytes sent). When the error routes abort, the response is abandoned.
/// Boxed: failures are rare, and their state would otherwise sit in (and be copied
/// with) every proxied request's future.
pub fn answer_failure<'a, D: Downstream>(
    d: &'a mut D,
    req: &'a mut (dyn HttpRequest + Send),
    ctx: &'a mut RequestContext,
    head_only: bool,
    code: u16,
) -> std::pin::Pin<Box<dyn Future<Output = (u16, u64)> + Send + 'a>> {
    Box::pin(async move {
        let Some(r) = super::failure_reply(code, req, ctx) else {
            d.abort(false);
            return (code, 0);
        };
        let status = r.status;
        let sent = write_reply(d, r, ctx, head_only).await.unwrap_or(0);
        (status, sent)
    })
}
