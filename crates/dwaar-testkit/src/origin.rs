//! Mock origins on 127.0.0.1 ephemeral ports, each on its own thread and runtime.
//!
//! The HTTP/1.1 origin answers by path:
//! - `Expect: 100-continue` is answered `100 Continue` before the body is read, except on
//!   paths containing `/silent` (never answered) or `/refuse-body` (413 at once, the body
//!   never read, the connection closed).
//! - `/status/NNN`: that status; `/slow/MS`: waits MS ms first; `/drop`: closes without
//!   answering; `/health`: 200 or 503 by [`Origin::set_healthy`]; `/sse`: three events
//!   200 ms apart (chunked); anything else: 200 with an echo of the request.
//! - A WebSocket upgrade on any path other than `/refuse-upgrade` is accepted and
//!   echoes messages; `/refuse-upgrade` answers 200 without switching protocols.
//!
//! The echo body lists `origin`, `method`, `uri`, `body` (length) and every header as
//! `h:name: value` lines, so tests can assert on what reached the backend.

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A running mock origin.
pub struct Origin {
    pub port: u16,
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    /// Requests answered so far (health probes excluded).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }
    /// Stops listening and closes the port (simulates a killed backend).
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
struct Shared {
    name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

/// Starts an HTTP/1.1 origin named `name`.
pub fn http(name: &str) -> Origin {
    start(name, false)
}

/// An upstream that reads each request and closes the connection without answering
/// (a backend that crashes on requests); its port.
pub fn dropping() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                let _ = s.read(&mut [0u8; 4096]);
            });
        }
    });
    port
}

/// An upstream that answers every request head with the given raw bytes (keep-alive):
/// for framings and interim answers the echo origin never sends. Its port.
pub fn canned(response: &'static [u8]) -> u16 {
    scripted(&[], response, false).0
}

/// A raw HTTP/1 upstream for answers a real server never gives: each request head on a
/// connection (kept alive, the connection held open between requests) is answered
/// with the bytes of the first `(start, answer)` whose `start` begins the head (such as
/// `"GET /bad "`), else with `default`. `trickle` writes every answer one byte at a
/// time, 2 ms apart. Its port, and how many connections it accepted.
pub fn scripted(
    answers: &'static [(&'static str, &'static [u8])],
    default: &'static [u8],
    trickle: bool,
) -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            accepted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = s;
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let answer = answers
                            .iter()
                            .find(|(start, _)| seen.starts_with(start.as_bytes()))
                            .map_or(default, |(_, answer)| answer);
                        seen.drain(..i + 4);
                        let written = if trickle {
                            answer.iter().try_for_each(|b| {
                                std::thread::sleep(Duration::from_millis(2));
                                s.write_all(std::slice::from_ref(b))
                            })
                        } else {
                            s.write_all(answer)
                        };
                        if written.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, connections)
}

/// An HTTP/1.1 origin on a chosen address (`127.0.0.2:8080`; port 0 for any), for
/// tests where upstreams differ by IP (DNS A records).
pub fn http_on(name: &str, addr: &str) -> Origin {
    start_on(name, Kind::H1, addr)
}

/// Starts an HTTP/2 prior-knowledge (h2c) origin named `name`.
pub fn h2c(name: &str) -> Origin {
    start(name, true)
}

enum Kind {
    H1,
    H2c,
    Tls(tokio_rustls::TlsAcceptor),
    TlsH2(tokio_rustls::TlsAcceptor),
}

fn start(name: &str, h2: bool) -> Origin {
    start_with(name, if h2 { Kind::H2c } else { Kind::H1 })
}

fn start_with(name: &str, kind: Kind) -> Origin {
    start_on(name, kind, "127.0.0.1:0")
}

fn start_on(name: &str, kind: Kind, addr: &str) -> Origin {
    let std_listener =
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind origin {addr}: {e}"));
    let port = std_listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = std_listener.set_nonblocking(true);
    let shared = Shared {
        name: name.to_string(),
        hits: Arc::default(),
        connections: Arc::default(),
        healthy: Arc::new(AtomicBool::new(true)),
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let s2 = shared.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(async move {
            let listener =
                TcpListener::from_std(std_listener).unwrap_or_else(|e| panic!("listener: {e}"));
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        s2.connections.fetch_add(1, Ordering::SeqCst);
                        let s = s2.clone();
                        match &kind {
                            Kind::H2c => { tasks.spawn(serve_h2(stream, s)); }
                            Kind::H1 => { tasks.spawn(serve_h1(stream, s)); }
                            Kind::Tls(acc) => {
                                let acc = acc.clone();
                                tasks.spawn(async move {
                                    if let Ok(tls) = acc.accept(stream).await {
                                        serve_h1(tls, s).await;
                                    }
                                });
                            }
                            Kind::TlsH2(acc) => {
                                let acc = acc.clone();
                                tasks.spawn(async move {
                                    if let Ok(tls) = acc.accept(stream).await {
                                        serve_h2(tls, s).await;
                                    }
                                });
                            }
                        }
                    }
                }
            }
            // Dropping the listener and every connection closes the port for real.
            tasks.abort_all();
        });
    });
    Origin {
        port,
        name: name.to_string(),
        hits: shared.hits,
        connections: shared.connections,
        healthy: shared.healthy,
        stop: Some(tx),
        thread: Some(thread),
    }
}

struct Req {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_req<S: Io>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Req> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let req_headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let mut req = Req {
                method: r.method.unwrap_or("").to_string(),
                uri: r.path.unwrap_or("").to_string(),
                headers: req_headers,
                body: Vec::new(),
            };
            buf.drain(..n);
            if req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            {
                // `/refuse-body` answers before the body (which is never read);
                // `/silent...` never says `100 Continue`.
                if req.uri.contains("/refuse-body") {
                    return Some(req);
                }
                if !req.uri.contains("/silent") {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .ok()?;
                }
            }
            if let Some(len) = req
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                while buf.len() < len {
                    read_some(stream, buf).await?;
                }
                req.body = buf.drain(..len).collect();
            } else if req
                .header("transfer-encoding")
                .map(|v| v.contains("chunked"))
                .unwrap_or(false)
            {
                loop {
                    let pos = loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        read_some(stream, buf).await?;
                    };
                    let size = usize::from_str_radix(
                        String::from_utf8_lossy(&buf[..pos])
                            .split(';')
                            .next()
                            .unwrap_or("0")
                            .trim(),
                        16,
                    )
                    .ok()?;
                    buf.drain(..pos + 2);
                    while buf.len() < size + 2 {
                        read_some(stream, buf).await?;
                    }
                    req.body.extend(buf.drain(..size));
                    buf.drain(..2);
                    if size == 0 {
                        break;
                    }
                }
            }
            return Some(req);
        }
        read_some(stream, buf).await?;
    }
}

async fn read_some<S: Io>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn echo_body(s: &Shared, req: &Req) -> String {
    let mut out = format!(
        "origin: {}\nmethod: {}\nuri: {}\nbody: {}\n",
        s.name,
        req.method,
        req.uri,
        req.body.len()
    );
    for (k, v) in &req.headers {
        out.push_str(&format!("h:{}: {}\n", k.to_ascii_lowercase(), v));
    }
    out
}

async fn respond<S: Io>(stream: &mut S, status: u16, extra: &str, body: &str) -> bool {
    let msg = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nServer: mock-origin\r\nX-Backend-Secret: hidden\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await.is_ok()
}

/// Self-signed certificate material for a TLS origin, made with the `openssl` CLI.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// PEM of the CA that signed the server certificate (for `tls_trusted_ca_certs`).
    pub ca_pem: std::path::PathBuf,
    /// The server certificate (for `localhost`, 127.0.0.1) and its key.
    pub cert_pem: std::path::PathBuf,
    pub key_pem: std::path::PathBuf,
}

/// Runs the `openssl` CLI in `dir`; a failure fails the test with its stderr.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A CA and a server certificate for `localhost` / 127.0.0.1.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Dwaar Test CA",
            ],
        );
        let mut ca = TestCa {
            ca_pem: dir.path().join("ca.pem"),
            cert_pem: std::path::PathBuf::new(),
            key_pem: std::path::PathBuf::new(),
            dir,
        };
        (ca.cert_pem, ca.key_pem) = ca.issue("server", &["localhost", "127.0.0.1"]);
        ca
    }

    /// Issues another certificate from this CA for `names` (DNS names or IPs) and
    /// returns the certificate and key files. `label` names the files.
    pub fn issue(&self, label: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        self.issue_with(label, names, "")
    }

    /// Like [`TestCa::issue`] with extra `openssl x509` extension lines (for example
    /// `authorityInfoAccess=OCSP;URI:http://127.0.0.1:1234`).
    pub fn issue_with(
        &self,
        label: &str,
        names: &[&str],
        extra_ext: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = self.dir.path();
        let run = |args: &[&str]| openssl(dir, args);
        let key = format!("{label}.key");
        let csr = format!("{label}.csr");
        let crt = format!("{label}.pem");
        let ext = format!("{label}.cnf");
        let cn = format!("/CN={}", names.first().copied().unwrap_or(label));
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &cn,
        ]);
        let sans: Vec<String> = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect();
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n{extra_ext}\n",
                sans.join(",")
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        (dir.join(crt), dir.join(key))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor_alpn(&[])
    }

    fn acceptor_alpn(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("{e}"));
        let certs = rustls_pemfile::certs(&mut read(&self.cert_pem).as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let key = rustls_pemfile::private_key(&mut read(&self.key_pem).as_slice())
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no key"));
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = cfg;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts an HTTPS (HTTP/1.1 over TLS) origin with a certificate from `ca`.
pub fn https(name: &str, ca: &TestCa) -> Origin {
    start_with(name, Kind::Tls(ca.acceptor()))
}

/// Starts an HTTP/2-over-TLS origin (ALPN h2) with a certificate from `ca`.
pub fn https_h2(name: &str, ca: &TestCa) -> Origin {
    start_with(name, Kind::TlsH2(ca.acceptor_alpn(&[b"h2"])))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn serve_h1<S: Io>(mut stream: S, s: Shared) {
    let mut buf = Vec::new();
    while let Some(req) = read_req(&mut stream, &mut buf).await {
        let path = req.uri.split('?').next().unwrap_or("").to_string();
        if path == "/health" {
            let ok = s.healthy.load(Ordering::SeqCst);
            if !respond(
                &mut stream,
                if ok { 200 } else { 503 },
                "",
                if ok { "ok" } else { "down" },
            )
            .await
            {
                return;
            }
            continue;
        }
        s.hits.fetch_add(1, Ordering::SeqCst);
        let origin_hdr = format!("X-Origin: {}\r\n", s.name);
        let upgrade = req
            .header("upgrade")
            .map(|v| v.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false);
        if upgrade && path != "/refuse-upgrade" {
            let key = req.header("sec-websocket-key").unwrap_or("").to_string();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let msg = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{origin_hdr}\r\n");
            if stream.write_all(msg.as_bytes()).await.is_err() {
                return;
            }
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                stream,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if m.is_close() {
                    break;
                }
                if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                    break;
                }
            }
            return;
        }
        if path.contains("/refuse-body") {
            let _ = respond(&mut stream, 413, "Connection: close\r\n", "no body wanted").await;
            return;
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap_or(500);
            if !respond(
                &mut stream,
                code,
                &origin_hdr,
                &format!("status {code} from {}", s.name),
            )
            .await
            {
                return;
            }
            continue;
        }
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        }
        if path == "/drop" {
            return;
        }
        if path == "/sse" {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n{origin_hdr}\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for i in 1..=3 {
                let ev = format!("data: {i}\n\n");
                let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            if stream.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
            continue;
        }
        let body = echo_body(&s, &req);
        let head_only = req.method == "HEAD";
        let msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nServer: mock-origin\r\nX-Backend-Secret: hidden\r\n{origin_hdr}\r\n{}",
            body.len(),
            if head_only { "" } else { &body }
        );
        if stream.write_all(msg.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn serve_h2<S: Io>(stream: S, s: Shared) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        s.hits.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            "origin: {}\nproto: {:?}\nmethod: {}\nuri: {}\n",
            s.name,
            req.version(),
            req.method(),
            req.uri().path()
        );
        let resp = http::Response::builder()
            .status(200)
            .header("x-origin", s.name.as_str())
            .body(())
            .unwrap_or_default();
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(bytes::Bytes::from(body), true);
        }
    }
}
