//! The request body as the shared exchange ([`super::exchange`]) reads it.
//!
//! [`RequestBody`] wraps the client side ([`Downstream`]) of one proxied request and adds
//! what the upstream's side of the exchange needs from the body:
//!
//! - `Expect: 100-continue`: the client is told `100 Continue` when the body is first
//!   read (and only then: an answer given without reading the body never invites the
//!   upload), as Caddy's Go server does. With `expect_continue_timeout` the HTTP/1.1
//!   exchange first waits for the upstream's own `100` (or its final answer).
//! - `request_buffers`: up to a bound of the body is read before the request goes
//!   upstream. A body that ends within the bound goes with a `Content-Length` (upstreams
//!   that cannot take chunked bodies get one) and can be sent again when an upstream
//!   fails after having the request; a longer one goes as the bytes read ahead followed
//!   by the rest.

use crate::context::RequestContext;
use crate::lifecycle::downstream::{body_deadline, recv_chunk, Downstream};
use bytes::{Bytes, BytesMut};
use compact_str::CompactString;

/// Whether a request asks to be told before it sends its body (`Expect: 100-continue`).
pub fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// One proxied request's body source (see the module docs).
pub struct RequestBody<'a, D: Downstream> {
    down: &'a mut D,
    /// Read ahead (`request_buffers`): handed out before the rest of the body.
    ahead: Bytes,
    /// `ahead` was handed out (since the last [`RequestBody::rewind`]).
    ahead_given: bool,
    /// `ahead` holds the whole body.
    complete: bool,
    /// The client waits for `100 Continue` before it sends the body.
    continue_due: bool,
}

impl<'a, D: Downstream> RequestBody<'a, D> {
    pub fn new(down: &'a mut D) -> Self {
        RequestBody {
            down,
            ahead: Bytes::new(),
            ahead_given: true,
            complete: false,
            continue_due: false,
        }
    }

    /// The client sent `Expect: 100-continue`: it is answered when the body is first read.
    pub fn expect_continue(&mut self) {
        self.continue_due = true;
    }

    /// Tells a waiting client to send its body now.
    async fn invite(&mut self) {
        if std::mem::take(&mut self.continue_due) {
            self.down.send_interim(100, Vec::new()).await;
        }
    }

    /// Reads the body ahead until it ends or `limit` bytes are held; `Err` when the
    /// client failed or stalled. Returns whether the whole body is held.
    pub async fn read_ahead(&mut self, limit: usize) -> Result<bool, ()> {
        self.invite().await;
        let mut held = BytesMut::new();
        let deadline = body_deadline();
        while held.len() < limit {
            match recv_chunk(self.down, deadline).await? {
                Some(chunk) => held.extend_from_slice(&chunk),
                None => {
                    self.complete = true;
                    break;
                }
            }
        }
        self.ahead = held.freeze();
        self.ahead_given = false;
        Ok(self.complete)
    }

    /// `request_body { set }`: the upstream gets `body` instead of the client's, which
    /// is read and dropped (within the usual bounds) first.
    pub async fn replace(&mut self, body: Bytes) {
        if !self.continue_due {
            self.down.discard_body().await;
        }
        self.ahead = body;
        self.ahead_given = false;
        self.complete = true;
    }

    /// The whole body was read ahead, so the request can be sent again.
    pub fn replayable(&self) -> bool {
        self.complete
    }

    /// Hands the read-ahead body out again (for another upstream).
    pub fn rewind(&mut self) {
        self.ahead_given = false;
    }

    /// The length of a body read ahead whole.
    pub fn held_length(&self) -> Option<u64> {
        self.complete.then_some(self.ahead.len() as u64)
    }
}

impl<D: Downstream> Downstream for RequestBody<'_, D> {
    fn version(&self) -> http::Version {
        self.down.version()
    }

    async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
        if !std::mem::replace(&mut self.ahead_given, true) && !self.ahead.is_empty() {
            return Ok(Some(self.ahead.clone()));
        }
        if self.complete {
            return Ok(None);
        }
        self.invite().await;
        self.down.recv_data().await
    }

    async fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(CompactString, String)>,
        ctx: &RequestContext,
        close: bool,
    ) -> Result<(), ()> {
        // A client that was never asked for its body may still send it (curl does after
        // a second): an HTTP/1 connection cannot tell that from the next request, so it
        // ends after this answer.
        self.down
            .send_head(status, fields, ctx, close || self.awaits_continue())
            .await
    }

    fn awaits_continue(&self) -> bool {
        self.continue_due
    }

    async fn send_interim(&mut self, status: u16, fields: Vec<(String, String)>) {
        // The upstream's own `100` is not passed on: the client hears it from
        // `invite` when its body is wanted.
        if status != 100 {
            self.down.send_interim(status, fields).await;
        }
    }

    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        self.down.send_data(data).await
    }

    async fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), ()> {
        self.down.send_trailers(trailers).await
    }

    async fn finish(&mut self) -> Result<(), ()> {
        self.down.finish().await
    }

    fn declared_length(&self) -> Option<u64> {
        self.held_length().or_else(|| self.down.declared_length())
    }

    async fn discard_body(&mut self) {
        // A client still waiting for `100 Continue` was never asked for its body.
        if self.awaits_continue() || self.complete {
            return;
        }
        self.down.discard_body().await;
    }

    fn abort(&mut self, refused: bool) {
        self.down.abort(refused);
    }
}
