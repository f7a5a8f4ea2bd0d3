//! One HTTP/3 connection: its request streams, served through the shared
//! [`crate::streams`] code, with 0-RTT requests limited to safe methods.

use super::MAX_HEAD;
use crate::context::ConnInfo;
use crate::lifecycle::downstream::Downstream;
use crate::route_table::RouteStore;
use crate::streams::serve_request;
use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use std::sync::Arc;

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An HTTP/3 request stream as a [`Downstream`].
/// The stream, and the request's declared body length.
struct H3Exchange(Stream, Option<u64>);

impl Downstream for H3Exchange {
    fn version(&self) -> http::Version {
        http::Version::HTTP_3
    }

    async fn recv_data(&mut self) -> Result<Option<Bytes>, ()> {
        match self.0.recv_data().await {
            Ok(Some(mut chunk)) => {
                let n = chunk.remaining();
                Ok(Some(chunk.copy_to_bytes(n)))
            }
            Ok(None) => Ok(None),
            Err(_) => Err(()),
        }
    }

    async fn send_head(
        &mut self,
        status: u16,
        fields: Vec<(compact_str::CompactString, String)>,
        ctx: &crate::context::RequestContext,
        _close: bool,
    ) -> Result<(), ()> {
        let head = crate::streams::response_head(status, fields, ctx, false);
        self.0.send_response(head).await.map_err(|_| ())
    }

    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        self.0.send_data(data).await.map_err(|_| ())
    }

    async fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), ()> {
        self.0.send_trailers(trailers).await.map_err(|_| ())
    }

    async fn finish(&mut self) -> Result<(), ()> {
        self.0.finish().await.map_err(|_| ())
    }

    fn declared_length(&self) -> Option<u64> {
        self.1
    }

    fn abort(&mut self, refused: bool) {
        self.0.stop_stream(if refused {
            h3::error::Code::H3_REQUEST_REJECTED
        } else {
            h3::error::Code::H3_INTERNAL_ERROR
        });
    }
}

/// What a QUIC handshake settled (always TLS 1.3; quinn does not name the suite).
/// `zero_rtt`: the client sent early data, so its session was resumed (quinn does not
/// say whether a handshake without early data resumed one).
fn quic_facts(conn: &quinn::Connection, zero_rtt: bool) -> crate::context::TlsFacts {
    let hs = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
    let client_cert = conn
        .peer_identity()
        .and_then(|p| {
            p.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
    crate::context::TlsFacts {
        version: "tls1.3",
        cipher: String::new(),
        cipher_code: 0,
        server_name: hs.as_ref().and_then(|h| h.server_name.clone()),
        alpn: hs
            .as_ref()
            .and_then(|h| h.protocol.as_ref())
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        resumed: zero_rtt,
        client_cert,
    }
}

/// `early`: the connection accepted 0-RTT; the flag turns true when its handshake ends.
pub(super) async fn serve_connection(
    conn: quinn::Connection,
    port: u16,
    store: Arc<RouteStore>,
    early: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    let info = ConnInfo {
        remote: std::net::SocketAddr::new(
            crate::net::canonical(conn.remote_address().ip()),
            conn.remote_address().port(),
        ),
        local_port: port,
        tls: true,
        tls_policy: 0,
        local_ip: conn.local_ip(),
        tls_facts: Some(Arc::new(quic_facts(&conn, early.is_some()))),
    };
    let mut h3 = match h3::server::builder()
        .max_field_section_size(MAX_HEAD)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("HTTP/3 setup failed: {e}");
            return;
        }
    };
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let store = store.clone();
                let early = early.clone();
                let info = info.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => {
                            let declared = crate::lifecycle::declared_length(req.headers());
                            let mut stream = H3Exchange(stream, declared);
                            let replayable = early
                                .as_ref()
                                .is_some_and(|d| !d.load(std::sync::atomic::Ordering::Acquire));
                            let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
                            if replayable && !safe {
                                crate::streams::reply_status(&mut stream, 425).await;
                                return;
                            }
                            // Built on the heap when the task runs (see the HTTP/2 front-end).
                            Box::pin(serve_request(req, stream, info, &store)).await
                        }
                        Err(e) => tracing::debug!("HTTP/3 request refused: {e}"),
                    }
                });
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("HTTP/3 connection ended: {e}");
                return;
            }
        }
    }
}
