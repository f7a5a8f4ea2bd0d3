//! Sending finished spans to an OTLP collector, off the request path.
//!
//! [`settings`] reads the standard variables once per process:
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `..._PROTOCOL` (`http/protobuf`, the
//! default, or `grpc`), `..._HEADERS`, `..._TIMEOUT`, `..._CERTIFICATE`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
//! and `OTEL_SDK_DISABLED`.
//!
//! [`queue`] hands a span to a bounded channel (a full queue drops it: the request
//! path never waits). One thread per process collects batches (a full batch, or the
//! schedule delay) and sends each as one `ExportTraceServiceRequest` (the official
//! OTLP messages, `opentelemetry-proto`): an HTTP/1.1 `POST` of
//! `application/x-protobuf`, or a gRPC call over HTTP/2 (h2c for `http://`, TLS for
//! `https://`). A batch the collector refuses is logged and dropped.

use super::{AttrValue, Finished};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Which requests get a recorded span (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// This fraction of traces, chosen by trace id (the same trace everywhere).
    Ratio(f64),
    /// The parent's decision when there is a parent, else the inner sampler's.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Whether a span is recorded; `parent`: the incoming trace's sampled flag.
    pub fn sample(&self, parent: Option<bool>, trace_id: &[u8; 16]) -> bool {
        match (self, parent) {
            (Sampler::ParentBased(_), Some(p)) => p,
            (Sampler::ParentBased(root), None) => root.sample(None, trace_id),
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(r), _) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                let x = u64::from_be_bytes(low) >> 1;
                (x as f64) < r.clamp(0.0, 1.0) * (u64::MAX >> 1) as f64
            }
        }
    }
}

/// The collector and the export's behaviour, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The request path: `/v1/traces` for HTTP, the gRPC method for gRPC.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub ca_file: Option<String>,
    pub sampler: Sampler,
    pub resource: Vec<(String, String)>,
    pub delay: Duration,
    pub queue: usize,
    pub batch: usize,
    pub disabled: bool,
}

const GRPC_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Settings {
    /// Reads the settings through `var` (the environment, or a test's map).
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Settings {
        let traces_or = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
                .filter(|v| !v.trim().is_empty())
        };
        let protocol = match traces_or("PROTOCOL").as_deref().map(str::trim) {
            Some("grpc") => Protocol::Grpc,
            Some(other) if other != "http/protobuf" => {
                tracing::warn!(
                    protocol = other,
                    "OTLP protocol not supported (http/protobuf or grpc); using http/protobuf"
                );
                Protocol::HttpProtobuf
            }
            _ => Protocol::HttpProtobuf,
        };
        // The signal's own endpoint is used as written; the general one gets the
        // signal's path (HTTP) appended.
        let (endpoint, full) =
            match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()) {
                Some(e) => (e, true),
                None => (
                    var("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .filter(|v| !v.trim().is_empty())
                        .unwrap_or_else(|| match protocol {
                            Protocol::HttpProtobuf => "http://localhost:4318".into(),
                            Protocol::Grpc => "http://localhost:4317".into(),
                        }),
                    false,
                ),
            };
        let endpoint = endpoint.trim();
        let (tls, rest) = match endpoint.split_once("://") {
            Some(("https", r)) => (true, r),
            Some((_, r)) => (false, r),
            None => (false, endpoint),
        };
        let insecure = traces_or("INSECURE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let tls = tls && !(insecure && protocol == Protocol::Grpc);
        let (authority, given_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = match (protocol, tls) {
            (_, true) => 443,
            (Protocol::HttpProtobuf, false) => 4318,
            (Protocol::Grpc, false) => 4317,
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().unwrap_or(default_port),
            ),
            _ => (authority.trim_matches(['[', ']']).to_string(), default_port),
        };
        let path = match protocol {
            Protocol::Grpc => GRPC_METHOD.to_string(),
            Protocol::HttpProtobuf if full => {
                if given_path.is_empty() {
                    "/".into()
                } else {
                    given_path.into()
                }
            }
            Protocol::HttpProtobuf => format!("{}/v1/traces", given_path.trim_end_matches('/')),
        };
        let headers = traces_or("HEADERS")
            .map(|h| {
                h.split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((percent_decode(k.trim()), percent_decode(v.trim())))
                    })
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let millis = |name: &str, default: u64| {
            var(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::from_millis(default), Duration::from_millis)
        };
        let timeout = traces_or("TIMEOUT")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let count = |name: &str, default: usize| {
            var(name)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        let ratio = var("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        let sampler = match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("traceidratio") => Sampler::Ratio(ratio),
            Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Some("parentbased_traceidratio") => {
                Sampler::ParentBased(Box::new(Sampler::Ratio(ratio)))
            }
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        };
        let mut resource: Vec<(String, String)> = var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|a| {
                a.split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((percent_decode(k.trim()), percent_decode(v.trim())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let service = var("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty());
        match service {
            Some(s) => {
                resource.retain(|(k, _)| k != "service.name");
                resource.push(("service.name".into(), s));
            }
            None if !resource.iter().any(|(k, _)| k == "service.name") => {
                resource.push(("service.name".into(), "unknown_service:dwaar".into()));
            }
            None => {}
        }
        for (k, v) in [
            ("telemetry.sdk.name", "dwaar"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ("webengine.name", "Dwaar"),
            ("webengine.version", env!("CARGO_PKG_VERSION")),
        ] {
            resource.push((k.into(), v.into()));
        }
        Settings {
            protocol,
            tls,
            host,
            port,
            path,
            headers,
            timeout,
            ca_file: traces_or("CERTIFICATE"),
            sampler,
            resource,
            delay: millis("OTEL_BSP_SCHEDULE_DELAY", 5000),
            queue: count("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
            batch: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
            disabled: var("OTEL_SDK_DISABLED")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's settings (read from the environment on first use).
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings::from_vars(&|k| std::env::var(k).ok()))
}

enum Msg {
    Span(Box<Finished>),
    Flush(SyncSender<()>),
}

/// Spans dropped because the queue was full or the collector refused them.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The exporter's queue, made (with its thread) when the first span ends.
static QUEUE: OnceLock<Option<SyncSender<Msg>>> = OnceLock::new();

fn sender() -> Option<&'static SyncSender<Msg>> {
    QUEUE
        .get_or_init(|| {
            let s = settings();
            if s.disabled {
                return None;
            }
            let (tx, rx) = sync_channel(s.queue);
            std::thread::Builder::new()
                .name("dwaar-otlp".into())
                .spawn(move || run(rx, s))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the span exporter"))
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Queues a finished span for export (never waits).
pub fn queue(span: Finished) {
    let Some(tx) = sender() else { return };
    if tx.try_send(Msg::Span(Box::new(span))).is_err()
        && DROPPED.fetch_add(1, Ordering::Relaxed) == 0
    {
        tracing::warn!("span export queue full: spans are being dropped");
    }
}

/// Sends the spans still queued, waiting up to `timeout` (shutdown).
pub fn flush(timeout: Duration) {
    // Only a process that queued spans has an exporter to flush.
    let Some(Some(tx)) = QUEUE.get() else { return };
    let (ack, done) = sync_channel(1);
    if tx.try_send(Msg::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(timeout);
    }
}

/// The exporter thread: batches by size and time, sends each batch.
fn run(rx: Receiver<Msg>, s: &'static Settings) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::warn!("cannot start the span exporter's runtime");
        return;
    };
    let mut batch: Vec<Finished> = Vec::with_capacity(s.batch);
    let mut deadline = Instant::now() + s.delay;
    let mut failing = false;
    let mut send = |batch: &mut Vec<Finished>| {
        if batch.is_empty() {
            return;
        }
        let body = encode(batch, s);
        let n = batch.len();
        batch.clear();
        match rt.block_on(async { tokio::time::timeout(s.timeout, post(s, body)).await }) {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("spans reach the collector again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                DROPPED.fetch_add(n as u64, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %e, host = %s.host, port = s.port, "span export failed; dropping the batch");
                }
                failing = true;
            }
            Err(_) => {
                DROPPED.fetch_add(n as u64, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(host = %s.host, port = s.port, "span export timed out; dropping the batch");
                }
                failing = true;
            }
        }
    };
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(f)) => {
                batch.push(*f);
                if batch.len() >= s.batch {
                    send(&mut batch);
                    deadline = Instant::now() + s.delay;
                }
            }
            Ok(Msg::Flush(ack)) => {
                send(&mut batch);
                let _ = ack.try_send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                deadline = Instant::now() + s.delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}

fn text(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// One export request holding `batch`.
pub fn encode(batch: &[Finished], s: &Settings) -> Vec<u8> {
    let spans = batch
        .iter()
        .map(|f| {
            let sp = &f.span;
            let mut attributes: Vec<KeyValue> = sp
                .attributes
                .iter()
                .map(|(k, v)| match v {
                    AttrValue::Text(t) => text(k, t.clone()),
                    AttrValue::Int(i) => int(k, *i),
                })
                .collect();
            attributes.push(int("http.response.status_code", i64::from(f.status)));
            if f.bytes_read > 0 {
                attributes.push(int("http.request.body.size", f.bytes_read as i64));
            }
            if f.bytes_written > 0 {
                attributes.push(int("http.response.body.size", f.bytes_written as i64));
            }
            if let Some(e) = &f.error {
                attributes.push(text("error.type", e.to_string()));
            }
            attributes.extend(sp.custom.iter().map(|(k, v)| text(k, v.clone())));
            // Server spans: 5xx is an error, 4xx is the client's (OTel's HTTP rules).
            let status = (f.status >= 500).then(|| Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            });
            Span {
                trace_id: sp.trace_id.to_vec(),
                span_id: sp.span_id.to_vec(),
                trace_state: sp.trace_state.clone(),
                parent_span_id: sp.parent.map(|p| p.to_vec()).unwrap_or_default(),
                // Sampled; the parent was remote when there was one (OTLP's span flags).
                flags: 0x100 | if sp.parent.is_some() { 0x200 | 1 } else { 1 },
                name: sp.name.clone(),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: sp.start_unix_nanos,
                end_time_unix_nano: f.end_unix_nanos.max(sp.start_unix_nanos),
                attributes,
                status,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: s.resource.iter().map(|(k, v)| text(k, v.clone())).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "dwaar".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// A byte stream to the collector: TCP, or TLS over it.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

async fn connect(s: &Settings, alpn: &[u8]) -> Result<Box<dyn Conn>, String> {
    let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", s.host, s.port))?;
    let _ = tcp.set_nodelay(true);
    if !s.tls {
        return Ok(Box::new(tcp));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            for c in rustls_pemfile::certs(&mut &pem[..]).flatten() {
                roots.add(c).map_err(|e| format!("{path}: {e}"))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(s.host.clone())
        .map_err(|e| format!("{}: {e}", s.host))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", s.host))?;
    Ok(Box::new(tls))
}

/// Sends one export request's bytes.
async fn post(s: &Settings, body: Vec<u8>) -> Result<(), String> {
    match s.protocol {
        Protocol::HttpProtobuf => post_http(s, body).await,
        Protocol::Grpc => post_grpc(s, body).await,
    }
}

async fn post_http(s: &Settings, body: Vec<u8>) -> Result<(), String> {
    let mut conn = connect(s, b"http/1.1").await?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: dwaar/{}\r\n",
        s.path,
        s.host,
        s.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in &s.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(&body).await.map_err(|e| e.to_string())?;
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // The status line is enough.
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("the collector answered {c}")),
        None => Err("the collector sent no HTTP answer".into()),
    }
}

async fn post_grpc(s: &Settings, body: Vec<u8>) -> Result<(), String> {
    let conn = connect(s, b"h2").await?;
    let (mut client, connection) = h2::client::handshake(conn)
        .await
        .map_err(|e| format!("HTTP/2 with the collector: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let scheme = if s.tls { "https" } else { "http" };
        let mut req = http::Request::post(format!("{scheme}://{}:{}{}", s.host, s.port, s.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", concat!("dwaar/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &s.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        let (answer, mut stream) = client.send_request(req, false).map_err(|e| e.to_string())?;
        // gRPC's message framing: not compressed, then the length.
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        stream
            .send_data(framed.into(), true)
            .map_err(|e| e.to_string())?;
        let answer = answer.await.map_err(|e| e.to_string())?;
        if answer.status() != http::StatusCode::OK {
            return Err(format!("the collector answered {}", answer.status()));
        }
        // The status may come in the head (trailers-only) or in the trailers.
        let head_status = grpc_status(answer.headers());
        let mut recv = answer.into_body();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = recv.flow_control().release_capacity(chunk.len());
        }
        let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
        match trailers.as_ref().and_then(grpc_status).or(head_status) {
            Some((0, _)) => Ok(()),
            Some((code, msg)) => Err(format!("gRPC status {code}: {msg}")),
            None => Err("the collector sent no gRPC status".into()),
        }
    }
    .await;
    driver.abort();
    result
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Settings {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(&|k| map.get(k).cloned())
    }

    #[test]
    fn endpoints_follow_the_spec() {
        let s = with(&[]);
        assert_eq!(
            (s.protocol, s.tls, s.host.as_str(), s.port, s.path.as_str()),
            (
                Protocol::HttpProtobuf,
                false,
                "localhost",
                4318,
                "/v1/traces"
            )
        );
        let s = with(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otel.example:9000/base/",
        )]);
        assert_eq!(
            (s.tls, s.host.as_str(), s.port, s.path.as_str()),
            (true, "otel.example", 9000, "/base/v1/traces")
        );
        let s = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:7000/custom",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"),
        ]);
        assert_eq!((s.port, s.path.as_str()), (7000, "/custom"));
        assert_eq!(
            s.headers,
            vec![("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
        let s = with(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1]:4317"),
            ("OTEL_SERVICE_NAME", "edge"),
        ]);
        assert_eq!(
            (s.protocol, s.host.as_str(), s.port, s.path.as_str()),
            (Protocol::Grpc, "::1", 4317, GRPC_METHOD)
        );
        assert!(s.resource.contains(&("service.name".into(), "edge".into())));
    }

    #[test]
    fn samplers_decide_by_parent_and_ratio() {
        let id = [0xffu8; 16];
        let parent = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        assert!(parent.sample(None, &id));
        assert!(!parent.sample(Some(false), &id));
        assert!(parent.sample(Some(true), &id));
        assert!(!Sampler::Ratio(0.5).sample(None, &id));
        assert!(Sampler::Ratio(0.5).sample(None, &[0u8; 16]));
        assert!(!Sampler::AlwaysOff.sample(Some(true), &id));
        let s = with(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(
            s.sampler,
            Sampler::ParentBased(Box::new(Sampler::Ratio(0.25)))
        );
    }
}
