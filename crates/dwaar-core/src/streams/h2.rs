//! Dwaar's HTTP/2 front-end for TLS connections that negotiated `h2`: the `h2` crate's
//! server connection, with every request stream served by [`super::serve_request`]
//! (the code HTTP/3 uses), instead of Pingora's HTTP/2 session and `HttpProxy`.
//!
//! Settings match what Pingora's server used: at most [`MAX_STREAMS`] concurrent
//! streams and [`MAX_HEADER_LIST`] bytes of decoded fields per request; the `h2` crate's
//! defaults for flow control and its protections against reset and CONTINUATION floods
//! (GOAWAY `ENHANCE_YOUR_CALM`). A connection without open streams for the port's idle
//! timeout (60 s by default) is closed with GOAWAY; on shutdown every connection sends
//! GOAWAY and finishes the streams it has.

use super::serve_request;
use crate::context::ConnInfo;
use crate::lifecycle::downstream::Downstream;
use crate::route_table::RouteStore;
use crate::upstream::h2_pool;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Concurrent request streams a client may open on one connection.
pub const MAX_STREAMS: u32 = 100;
/// Largest decoded request head (fields) accepted.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// How long the client may take to send its connection preface and settings.
const PREFACE_WAIT: Duration = Duration::from_secs(10);
/// A connection with no open streams for this long is closed (unless the port says).
const IDLE: Duration = Duration::from_secs(60);

/// An HTTP/2 request stream as a [`Downstream`].
struct H2Exchange {
    body: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    send: Option<h2::SendStream<Bytes>>,
    /// The request's `Content-Length`, if it declared one.
    declared: Option<u64>,
    /// The client sent `Expect: 100-continue` and no body has been read yet.
    awaiting: bool,
    /// Response body bytes still to come when the head declared a length: the DATA
    /// frame that completes it carries END_STREAM, so `finish` sends no empty frame.
    remaining: Option<u64>,
    /// END_STREAM has been sent.
    ended: bool,
    /// The client said it takes trailers (`TE: trailers`, as gRPC clients do): the
    /// stream stays open after the body for them.
    takes_trailers: bool,
}

impl Downstream for H2Exchange {
    fn version(&self) -> http::Version {
        http::Version::HTTP_2
    }

    async fn send_interim(&mut self, status: u16, fields: Vec<(String, String)>) {
        let mut r = http::Response::builder().status(status);
        for (k, v) in &fields {
            r = r.header(k.as_str(), v.as_str());
        }
        if let Ok(r) = r.body(()) {
            let _ = self.respond.send_informational(r);
        }
    }

    fn awaits_continue(&self) -> bool {
        self.awaiting
    }

    async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
        self.awaiting = false;
        match self.body.data().await {
            Some(Ok(chunk)) => {
                // The window opens again as the body is consumed.
                let _ = self.body.flow_control().release_capacity(chunk.len());
                Ok(Some(chunk))
            }
            Some(Err(_)) => Err(()),
            None => Ok(None),
        }
    }

    async fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(compact_str::CompactString, String)>,
        ctx: &crate::context::RequestContext,
        _close: bool,
    ) -> Result<(), ()> {
        self.remaining = fields
            .iter()
            .filter(|_| !self.takes_trailers)
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok());
        let head = super::response_head(status, fields, ctx, true);
        let send = self.respond.send_response(head, false).map_err(|_| ())?;
        self.send = Some(send);
        Ok(())
    }

    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        let send = self.send.as_mut().ok_or(())?;
        // The piece that completes a declared length ends the stream with it.
        let end = match self.remaining.as_mut() {
            Some(left) => {
                *left = left.saturating_sub(data.len() as u64);
                *left == 0
            }
            None => false,
        };
        h2_pool::send_all(send, data, end).await.map_err(|_| ())?;
        self.ended = end;
        Ok(())
    }

    async fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), ()> {
        if self.ended {
            // A declared length was complete and the client did not ask for trailers.
            return Ok(());
        }
        let send = self.send.as_mut().ok_or(())?;
        self.ended = true;
        send.send_trailers(trailers).map_err(|_| ())
    }

    async fn finish(&mut self) -> Result<(), ()> {
        if self.ended {
            return Ok(());
        }
        let send = self.send.as_mut().ok_or(())?;
        self.ended = true;
        send.send_data(Bytes::new(), true).map_err(|_| ())
    }

    fn declared_length(&self) -> Option<u64> {
        self.declared
    }

    fn abort(&mut self, refused: bool) {
        let reason = if refused {
            h2::Reason::REFUSED_STREAM
        } else {
            h2::Reason::INTERNAL_ERROR
        };
        match self.send.as_mut() {
            Some(send) => send.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }
}

/// Serves one HTTP/2 connection (the TLS handshake is done) until the client closes
/// it, it errs, it sits idle, or the server shuts down.
pub async fn serve_connection<T>(
    io: T,
    conn: ConnInfo,
    store: Arc<RouteStore>,
    mut shutdown: ShutdownWatch,
    idle: Option<Duration>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST);
    let mut h2 = match tokio::time::timeout(PREFACE_WAIT, builder.handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("HTTP/2 preface timed out");
            return;
        }
    };
    let idle = idle.unwrap_or(IDLE);
    let mut streams = tokio::task::JoinSet::new();
    let mut closing = *shutdown.borrow();
    if closing {
        h2.graceful_shutdown();
    }
    // Re-armed only when the last stream ends (not on every frame or request).
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    loop {
        tokio::select! {
            accepted = h2.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let (parts, body) = req.into_parts();
                    let declared = crate::lifecycle::declared_length(&parts.headers);
                    let awaiting =
                        crate::lifecycle::request_body::expects_continue(&parts.headers);
                    let takes_trailers = parts
                        .headers
                        .get_all(http::header::TE)
                        .iter()
                        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
                    let exchange = H2Exchange {
                        body,
                        respond,
                        send: None,
                        declared,
                        awaiting,
                        remaining: None,
                        ended: false,
                        takes_trailers,
                    };
                    let store = store.clone();
                    let conn = conn.clone();
                    // The task holds only the request's parts and a box: the request's
                    // (large) future is built on the heap when the task first runs, not
                    // copied around while the task is spawned.
                    streams.spawn(async move {
                        let req = http::Request::from_parts(parts, ());
                        Box::pin(serve_request(req, exchange, conn, &store)).await;
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!("HTTP/2 connection ended: {e}");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            _ = &mut idle_timer, if streams.is_empty() && !closing => {
                h2.graceful_shutdown();
                closing = true;
            }
            _ = shutdown.changed(), if !closing => {
                h2.graceful_shutdown();
                closing = true;
            }
        }
    }
    // Streams still running finish on their own (their sends fail if the client left).
    while streams.join_next().await.is_some() {}
}
