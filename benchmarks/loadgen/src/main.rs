//! `dwaar-loadgen`: the load `benchmarks/run-benchmark.sh` needs and Debian's tools
//! cannot make.
//!
//! - `h3`: HTTP/3 GETs over QUIC (Debian's `h2load` is built without QUIC):
//!   `-c` connections, each with `-m` requests in flight, for `-d` seconds.
//! - `tls`: one TLS handshake per request (`Connection: close`), `-c` at a time, for `-d`
//!   seconds; `--resume` keeps the sessions servers offer and resumes them, so the run
//!   measures resumed handshakes; without it every handshake is a full one.
//!
//! - `hold`: opens `-c` connections of `--proto tls|h2|h3`, sends one GET on each and
//!   keeps them all open for `-d` seconds (for the memory table: what each idle
//!   connection costs the server).
//!
//! - `sink`: an HTTP/1.1 origin on `--listen ADDR:PORT` that reads every request body
//!   to its end (Content-Length or chunked) before answering `200 OK`, for upload runs
//!   (nginx's `return 200` may answer before the body has arrived, which lets a proxy
//!   skip most of the upload).
//!
//! It only makes load: certificates are not verified, and it prints counts for the
//! harness to divide (`requests`, `failed`, `resumed`, `bytes`, `seconds`, `rps`).

use bytes::Buf;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
struct Opts {
    mode: String,
    connect: SocketAddr,
    host: String,
    path: String,
    conns: usize,
    streams: usize,
    seconds: f64,
    threads: usize,
    resume: bool,
    gso: bool,
    proto: String,
    /// Stop after this many requests (tls mode) instead of after `-d`.
    total: Option<u64>,
}

const USAGE: &str =
    "usage: dwaar-loadgen sink --listen ADDR:PORT | dwaar-loadgen h3|tls|hold --connect ADDR:PORT [--host NAME] [--path P] \
[-c CONNS] [-m STREAMS] [-d SECONDS] [-n REQUESTS] [-t THREADS] [--resume] [--no-gso] [--proto tls|h2|h3]";

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or(USAGE)?;
    if !matches!(mode.as_str(), "h3" | "tls" | "hold" | "sink") {
        return Err(format!("unknown mode '{mode}'\n{USAGE}"));
    }
    let mut o = Opts {
        mode,
        connect: "127.0.0.1:443".parse().map_err(|_| "bad default")?,
        host: "localhost".into(),
        path: "/".into(),
        conns: 10,
        streams: 10,
        seconds: 10.0,
        threads: 1,
        resume: false,
        gso: true,
        proto: "tls".into(),
        total: None,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--connect" | "--listen" => {
                o.connect = value()?.parse().map_err(|e| format!("--connect: {e}"))?
            }
            "--host" => o.host = value()?,
            "--path" => o.path = value()?,
            "-c" => o.conns = value()?.parse().map_err(|e| format!("-c: {e}"))?,
            "-m" => o.streams = value()?.parse().map_err(|e| format!("-m: {e}"))?,
            "-d" => {
                o.seconds = value()?
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|e| format!("-d: {e}"))?
            }
            "-t" => o.threads = value()?.parse().map_err(|e| format!("-t: {e}"))?,
            "--resume" => o.resume = true,
            "--no-gso" => o.gso = false,
            "--proto" => o.proto = value()?,
            "-n" => o.total = Some(value()?.parse().map_err(|e| format!("-n: {e}"))?),
            _ => return Err(format!("unknown argument '{a}'\n{USAGE}")),
        }
    }
    if o.conns == 0 || o.streams == 0 || o.threads == 0 {
        return Err("-c, -m and -t must be at least 1".into());
    }
    Ok(o)
}

/// What a run counted.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    resumed: AtomicU64,
    bytes: AtomicU64,
}

fn main() {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let result = rt.block_on(async {
        match opts.mode.as_str() {
            "h3" => h3_load(&opts, &counts).await,
            "hold" => hold(&opts, &counts).await,
            "sink" => sink(&opts).await,
            _ => tls_load(&opts, &counts).await,
        }
    });
    let secs = start.elapsed().as_secs_f64();
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let ok = counts.ok.load(Ordering::Relaxed);
    println!("mode {}", opts.mode);
    println!("requests {ok}");
    println!("failed {}", counts.failed.load(Ordering::Relaxed));
    println!("resumed {}", counts.resumed.load(Ordering::Relaxed));
    println!("bytes {}", counts.bytes.load(Ordering::Relaxed));
    println!("seconds {secs:.2}");
    println!("rps {:.1}", ok as f64 / secs);
}

fn client_tls(alpn: &[u8], resume: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(dwaar_testkit::tls::AnyServer(provider)))
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c.resumption = if resume {
        rustls::client::Resumption::store(Arc::new(Sessions::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(c)
}

/// Sessions offered by the one server under test. rustls's own store keeps at most 8
/// TLS 1.3 tickets per server, fewer than the connections in flight here, so with a
/// slow server many connections would find none and measure full handshakes.
#[derive(Debug, Default)]
struct Sessions(std::sync::Mutex<SessionsInner>);

#[derive(Debug, Default)]
struct SessionsInner {
    kx: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
}

const MAX_TICKETS: usize = 4096;

impl rustls::client::ClientSessionStore for Sessions {
    fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        if let Ok(mut s) = self.0.lock() {
            s.kx = Some(group);
        }
    }
    fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.lock().ok()?.kx
    }
    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        if let Ok(mut s) = self.0.lock() {
            s.tls12 = Some(value);
        }
    }
    fn tls12_session(
        &self,
        _: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.lock().ok()?.tls12.clone()
    }
    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {
        if let Ok(mut s) = self.0.lock() {
            s.tls12 = None;
        }
    }
    fn insert_tls13_ticket(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        if let Ok(mut s) = self.0.lock() {
            if s.tls13.len() == MAX_TICKETS {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        }
    }
    fn take_tls13_ticket(
        &self,
        _: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.lock().ok()?.tls13.pop_back()
    }
}

// --- TLS handshakes ------------------------------------------------------------------

async fn tls_load(o: &Opts, counts: &Arc<Counts>) -> Result<(), String> {
    let config = Arc::new(client_tls(b"http/1.1", o.resume)?);
    let name = rustls::pki_types::ServerName::try_from(o.host.clone())
        .map_err(|e| format!("--host: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        o.path, o.host
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(o.seconds);
    let total = o.total.unwrap_or(u64::MAX);
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.conns {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let (name, request, counts, addr, started) = (
            name.clone(),
            request.clone(),
            counts.clone(),
            o.connect,
            started.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            // With `-n`, requests are shared out until the total is reached; else time.
            let more = || match total {
                u64::MAX => tokio::time::Instant::now() < deadline,
                n => started.fetch_add(1, Ordering::Relaxed) < n,
            };
            while more() {
                let one = tokio::time::timeout(
                    Duration::from_secs(10),
                    one_tls_request(&connector, addr, &name, &request, &mut buf),
                )
                .await;
                match one {
                    Ok(Ok((resumed, n))) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(n, Ordering::Relaxed);
                        if resumed {
                            counts.resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// A TCP connection to `addr` with a completed TLS handshake.
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &rustls::pki_types::ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// One connection, one handshake, one request read to its end: (resumed, bytes).
async fn one_tls_request(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &rustls::pki_types::ServerName<'static>,
    request: &str,
    buf: &mut [u8],
) -> Result<(bool, u64), String> {
    let mut tls = tls_connect(connector, addr, name).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    let mut status_ok = false;
    loop {
        match tls.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                if total == 0 {
                    status_ok = buf[..n].starts_with(b"HTTP/1.1 200");
                }
                total += n as u64;
            }
            // Servers may close without close_notify after `Connection: close`.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && total > 0 => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    if !status_ok {
        return Err("not a 200".into());
    }
    Ok((resumed, total))
}

// --- an origin that reads whole bodies ----------------------------------------------

async fn sink(o: &Opts) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(o.connect)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", o.connect))?;
    loop {
        let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = sink_connection(s).await;
        });
    }
}

/// Serves requests on one connection until it closes: each body read (and dropped)
/// to its end, then `200 OK`.
async fn sink_connection(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 || s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let _ = buf.split_to(head_end);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        if let Some(left) = length {
            if !skip(&mut s, &mut buf, left).await? {
                return Ok(());
            }
        } else if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if s.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let _ = buf.split_to(line_end + 2);
                // The chunk and its CRLF; the last chunk's trailer section ends with CRLF.
                if !skip(&mut s, &mut buf, size + 2).await? {
                    return Ok(());
                }
                if size == 0 {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nOK\n")
            .await?;
        if buf.capacity() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
    }
}

/// Drops the next `left` bytes of the connection (buffered first); false when it closed
/// before they came.
async fn skip(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    mut left: usize,
) -> std::io::Result<bool> {
    while left > 0 {
        if buf.is_empty() && s.read_buf(buf).await? == 0 {
            return Ok(false);
        }
        let n = left.min(buf.len());
        let _ = buf.split_to(n);
        left -= n;
    }
    Ok(true)
}

// --- idle connections held open -----------------------------------------------------

/// Whatever keeps one held connection open.
type Held = Box<dyn std::any::Any + Send>;

async fn hold(o: &Opts, counts: &Arc<Counts>) -> Result<(), String> {
    let mut held: Vec<Held> = Vec::with_capacity(o.conns);
    let name = rustls::pki_types::ServerName::try_from(o.host.clone())
        .map_err(|e| format!("--host: {e}"))?;
    let h3_client = quic_client(o)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(
        if o.proto == "h2" { b"h2" } else { b"http/1.1" },
        false,
    )?));
    let uri: http::Uri = format!("https://{}:{}{}", o.host, o.connect.port(), o.path)
        .parse()
        .map_err(|e| format!("bad URL: {e}"))?;
    for _ in 0..o.conns {
        let one: Result<Held, String> = match o.proto.as_str() {
            "tls" => {
                let mut tls = tls_connect(&connector, o.connect, &name).await?;
                let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", o.path, o.host);
                tls.write_all(req.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
                if !buf[..n].starts_with(b"HTTP/1.1 200") {
                    return Err("not a 200".into());
                }
                Ok(Box::new(tls))
            }
            "h2" => {
                let tls = tls_connect(&connector, o.connect, &name).await?;
                let (mut send, conn) = h2::client::handshake(tls)
                    .await
                    .map_err(|e| e.to_string())?;
                let drive = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let req = http::Request::get(uri.clone())
                    .body(())
                    .map_err(|e| e.to_string())?;
                let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
                let mut body = resp.await.map_err(|e| e.to_string())?.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Ok(Box::new((send, DropAbort(drive))))
            }
            "h3" => {
                let (ep, drive, mut send) = h3_connect(o, &h3_client).await?;
                one_h3_request(&mut send, &uri).await?;
                Ok(Box::new((ep, DropAbort(drive), send)))
            }
            p => return Err(format!("--proto {p}: tls, h2 or h3")),
        };
        match one {
            Ok(h) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                held.push(h);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    eprintln!("held {}", held.len());
    tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
    drop(held);
    Ok(())
}

/// Aborts a driver task when the held connection is dropped.
struct DropAbort(tokio::task::JoinHandle<()>);

impl Drop for DropAbort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// --- HTTP/3 ----------------------------------------------------------------------------

fn quic_client(o: &Opts) -> Result<quinn::ClientConfig, String> {
    let tls = client_tls(b"h3", false)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.enable_segmentation_offload(o.gso);
    transport.max_concurrent_bidi_streams(((o.streams * 2) as u32).into());
    client.transport_config(Arc::new(transport));
    Ok(client)
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;

/// One QUIC connection on an endpoint (UDP socket) of its own, as separate clients
/// would have, with its h3 driver running.
async fn h3_connect(
    o: &Opts,
    client: &quinn::ClientConfig,
) -> Result<(quinn::Endpoint, tokio::task::JoinHandle<()>, H3Send), String> {
    let bind: SocketAddr = if o.connect.is_ipv6() {
        "[::]:0".parse().map_err(|_| "bind")?
    } else {
        "0.0.0.0:0".parse().map_err(|_| "bind")?
    };
    let mut ep = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    ep.set_default_client_config(client.clone());
    let conn = ep
        .connect(o.connect, &o.host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((ep, drive, send))
}

async fn h3_load(o: &Opts, counts: &Arc<Counts>) -> Result<(), String> {
    let client = quic_client(o)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(o.seconds);
    let uri: http::Uri = format!("https://{}:{}{}", o.host, o.connect.port(), o.path)
        .parse()
        .map_err(|e| format!("bad URL: {e}"))?;
    let mut conns = Vec::new();
    for _ in 0..o.conns {
        let (ep, drive, send) = h3_connect(o, &client).await?;
        let mut streams = Vec::new();
        for _ in 0..o.streams {
            let (mut send, counts, uri) = (send.clone(), counts.clone(), uri.clone());
            streams.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    match one_h3_request(&mut send, &uri).await {
                        Ok(n) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            counts.bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        conns.push((ep, drive, streams, send));
    }
    for (ep, drive, streams, send) in conns {
        for s in streams {
            let _ = s.await;
        }
        drop(send);
        drive.abort();
        ep.close(0u32.into(), b"done");
    }
    Ok(())
}

async fn one_h3_request(send: &mut H3Send, uri: &http::Uri) -> Result<u64, String> {
    let req = http::Request::get(uri.clone())
        .body(())
        .map_err(|e| e.to_string())?;
    let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
    stream.finish().await.map_err(|e| e.to_string())?;
    let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
    let mut n = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        n += chunk.remaining() as u64;
    }
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    Ok(n)
}
