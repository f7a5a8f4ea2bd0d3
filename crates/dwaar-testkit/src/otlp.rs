//! An OTLP trace receiver for tests: one port that takes `ExportTraceServiceRequest`s
//! over HTTP/1.1 (`POST /v1/traces`, `application/x-protobuf`) and over gRPC (h2c,
//! prior knowledge), decodes them with the official OpenTelemetry protobuf definitions
//! and keeps the spans.

use bytes::BytesMut;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `http` or `grpc`.
    pub via: &'static str,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// 2 = server.
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    pub resource: Vec<(String, String)>,
    pub start: u64,
    pub end: u64,
    /// 2 = error.
    pub status_code: i32,
}

impl Received {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The receiver; spans accumulate in `spans`.
pub struct Receiver {
    pub port: u16,
    pub spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn keep(via: &'static str, body: &[u8], spans: &Mutex<Vec<Received>>) -> bool {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return false;
    };
    let mut out = spans.lock().unwrap_or_else(|e| e.into_inner());
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| pairs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Received {
                    via,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attributes: pairs(&s.attributes),
                    resource: resource.clone(),
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    status_code: s.status.as_ref().map_or(0, |st| st.code),
                });
            }
        }
    }
    true
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1.
    pub fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        let port = crate::grpc::listen("otlp receiver", move |s| serve(s, kept.clone()));
        Receiver { port, spans }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `within` for at least `n` spans; returns them.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        crate::wait_until(within, || self.spans().len() >= n);
        self.spans()
    }
}

async fn serve(mut s: tokio::net::TcpStream, spans: Arc<Mutex<Vec<Received>>>) {
    let mut first = [0u8; 3];
    if s.peek(&mut first).await.is_err() {
        return;
    }
    if &first == b"PRI" {
        serve_grpc(s, spans).await;
        return;
    }
    // HTTP/1.1: one request per connection is all the exporter sends.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let ok = keep("http", &buf[head_end..head_end + length], &spans);
    let answer: &[u8] = if ok {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    let _ = s.write_all(answer).await;
}

async fn serve_grpc(s: tokio::net::TcpStream, spans: Arc<Mutex<Vec<Received>>>) {
    let Ok(mut conn) = h2::server::handshake(s).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let path_ok =
            req.uri().path() == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
        let mut body = req.into_body();
        let mut buf = BytesMut::new();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            buf.extend_from_slice(&data);
        }
        let messages = crate::grpc::unframe(&mut buf);
        let ok =
            path_ok && !messages.is_empty() && messages.iter().all(|m| keep("grpc", m, &spans));
        let head = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap_or_default();
        let Ok(mut stream) = respond.send_response(head, false) else {
            continue;
        };
        let _ = stream.send_data(crate::grpc::frame(b""), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "grpc-status",
            http::HeaderValue::from_static(if ok { "0" } else { "3" }),
        );
        let _ = stream.send_trailers(trailers);
    }
}
