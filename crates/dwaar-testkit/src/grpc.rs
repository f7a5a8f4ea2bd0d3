//! A small gRPC echo service over h2c (prior knowledge), and a client for it: enough to
//! check that a proxy carries gRPC framing, trailers and bidirectional streams.
//! Messages are raw bytes in gRPC's 5-byte length-prefixed frames (no protobuf needed).

use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;
use tokio::net::TcpListener;

/// Frames one message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Takes the complete messages at the front of `buf`.
pub fn unframe(buf: &mut BytesMut) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).to_vec());
    }
    out
}

/// Accepts TCP connections on 127.0.0.1 on a thread of its own and hands each to
/// `serve` (as a task of that thread's runtime); returns the port.
pub(crate) fn listen<F, Fut>(what: &'static str, serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect(what);
    let port = std_listener.local_addr().expect(what).port();
    std_listener.set_nonblocking(true).expect(what);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect(what);
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = TcpListener::from_std(std_listener).expect(what);
            while let Ok((s, _)) = listener.accept().await {
                tokio::task::spawn_local(serve(s));
            }
        });
    });
    port
}

/// Starts the echo service on 127.0.0.1; returns its port. Each message is answered
/// as soon as it arrives ("echo: " + message); the stream ends with `grpc-status: 0`
/// and the number of messages in `x-count`.
pub fn echo_server() -> u16 {
    listen("grpc origin", |s| async move {
        let Ok(mut conn) = h2::server::handshake(s).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let grpc = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let te = req.headers().get("te").is_some_and(|v| v == "trailers");
                let resp = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("x-saw-te-trailers", if te { "1" } else { "0" })
                    .body(())
                    .expect("response");
                let Ok(mut send) = respond.send_response(resp, false) else {
                    return;
                };
                let mut body = req.into_body();
                let mut buf = BytesMut::new();
                let mut n = 0;
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    buf.extend_from_slice(&chunk);
                    for m in unframe(&mut buf) {
                        n += 1;
                        let mut reply = b"echo: ".to_vec();
                        reply.extend_from_slice(&m);
                        let _ = send.send_data(frame(&reply), false);
                    }
                }
                let mut trailers = http::HeaderMap::new();
                let status = if grpc { "0" } else { "3" };
                trailers.insert("grpc-status", status.parse().expect("value"));
                trailers.insert("grpc-message", "done".parse().expect("value"));
                trailers.insert("x-count", n.to_string().parse().expect("value"));
                let _ = send.send_trailers(trailers);
            });
        }
    })
}

/// What a call came back with.
#[derive(Debug)]
pub struct Call {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub messages: Vec<Vec<u8>>,
    pub trailers: Option<http::HeaderMap>,
    /// For a streamed call: whether each reply arrived before the next message was sent.
    pub interleaved: bool,
}

/// Calls `path` on `port` over h2c, sending `messages` one at a time; with `stream`,
/// waits for each reply before sending the next message (a bidirectional stream).
pub fn call(port: u16, path: &str, messages: &[&[u8]], stream: bool) -> Result<Call, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("accept-encoding", "gzip")
            .body(())
            .map_err(|e| e.to_string())?;
        let (resp, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
        let mut interleaved = stream;
        let mut messages_out = Vec::new();
        let deadline = Duration::from_secs(10);
        if stream {
            // The first message, then the response head, then one reply per message.
            send.send_data(frame(messages[0]), false)
                .map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(deadline, resp)
                .await
                .map_err(|_| "no response head".to_string())?
                .map_err(|e| e.to_string())?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            for (i, _) in messages.iter().enumerate() {
                // Wait for the reply to message i before sending i + 1.
                while messages_out.len() <= i {
                    match tokio::time::timeout(deadline, body.data()).await {
                        Ok(Some(Ok(c))) => {
                            let _ = body.flow_control().release_capacity(c.len());
                            buf.extend_from_slice(&c);
                            messages_out.extend(unframe(&mut buf));
                        }
                        _ => {
                            interleaved = false;
                            break;
                        }
                    }
                }
                if let Some(next) = messages.get(i + 1) {
                    send.send_data(frame(next), false)
                        .map_err(|e| e.to_string())?;
                }
            }
            send.send_data(Bytes::new(), true)
                .map_err(|e| e.to_string())?;
            return finish_call(parts, body, buf, messages_out, interleaved).await;
        }
        for (i, m) in messages.iter().enumerate() {
            send.send_data(frame(m), i + 1 == messages.len())
                .map_err(|e| e.to_string())?;
        }
        let resp = tokio::time::timeout(deadline, resp)
            .await
            .map_err(|_| "no response head".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        finish_call(parts, body, BytesMut::new(), Vec::new(), false).await
    })
}

/// Reads the rest of a call's response (messages, then trailers) and assembles it.
async fn finish_call(
    parts: http::response::Parts,
    mut body: h2::RecvStream,
    mut buf: BytesMut,
    mut messages: Vec<Vec<u8>>,
    interleaved: bool,
) -> Result<Call, String> {
    let deadline = Duration::from_secs(10);
    while let Ok(Some(Ok(c))) = tokio::time::timeout(deadline, body.data()).await {
        let _ = body.flow_control().release_capacity(c.len());
        buf.extend_from_slice(&c);
        messages.extend(unframe(&mut buf));
    }
    let trailers = tokio::time::timeout(deadline, body.trailers())
        .await
        .map_err(|_| "no trailers".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Call {
        status: parts.status.as_u16(),
        headers: parts.headers,
        messages,
        trailers,
        interleaved,
    })
}

/// An h2c origin that says GOAWAY on each connection after taking `after` requests and
/// refuses (REFUSED_STREAM) the streams that still arrive; answers take 20 ms. Returns the port and
/// the number of connections it accepted.
pub fn h2c_draining(after: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    let port = listen("h2 origin", move |s| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let Ok(mut conn) = h2::server::handshake(s).await else {
                return;
            };
            let mut n = 0;
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                n += 1;
                if n > after {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let resp = http::Response::builder()
                        .status(200)
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ =
                            send.send_data(Bytes::from(format!("ok {}", req.uri().path())), true);
                    }
                });
                if n == after {
                    conn.graceful_shutdown();
                }
            }
        }
    });
    (port, conns)
}
