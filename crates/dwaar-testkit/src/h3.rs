//! A small HTTP/3 client on quinn + h3, trusting given PEM roots (tests only).

use bytes::{Buf, Bytes};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct H3Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl H3Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client_config_with(roots_pem: &[u8], early_data: bool) -> Result<quinn::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &roots_pem[..]) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// One request: method, path (with query), extra fields, body.
pub type H3Request<'a> = (&'a str, String, Vec<(String, String)>, Vec<u8>);
type Owned = (String, String, Vec<(String, String)>, Vec<u8>);

/// A runtime for one client call, and the call's inputs owned.
fn prepare(
    host: &str,
    requests: Vec<H3Request<'_>>,
) -> Result<(tokio::runtime::Runtime, String, Vec<Owned>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let owned = requests
        .into_iter()
        .map(|(m, p, h, b)| (m.to_string(), p, h, b))
        .collect();
    Ok((rt, host.to_string(), owned))
}

/// A client endpoint trusting `roots_pem`, offering early data when `early_data`
/// (call it inside the runtime).
fn endpoint(roots_pem: &[u8], early_data: bool) -> Result<quinn::Endpoint, String> {
    let mut ep = quinn::Endpoint::client(([0, 0, 0, 0], 0).into()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(client_config_with(roots_pem, early_data)?);
    Ok(ep)
}

/// Sends `requests` (method, path, headers, body) on one HTTP/3 connection to
/// `127.0.0.1:port` for `host`, concurrently; answers in order.
pub fn requests(
    port: u16,
    host: &str,
    roots_pem: &[u8],
    requests: Vec<H3Request<'_>>,
) -> Result<Vec<H3Response>, String> {
    let (rt, host, requests) = prepare(host, requests)?;
    rt.block_on(async move {
        let ep = endpoint(roots_pem, false)?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect(([127, 0, 0, 1], port).into(), &host)
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|_| "QUIC handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let out = on_connection(conn, &host, port, requests).await?;
        ep.close(0u32.into(), b"done");
        Ok(out)
    })
}

/// Sends the requests concurrently on an established (or 0-RTT) connection.
async fn on_connection(
    conn: quinn::Connection,
    host: &str,
    port: u16,
    requests: Vec<Owned>,
) -> Result<Vec<H3Response>, String> {
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut tasks = Vec::new();
    for (method, path, headers, body) in requests {
        let mut send = send.clone();
        let authority = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut b = http::Request::builder()
                .method(method.as_str())
                .uri(format!("https://{authority}:{port}{path}"));
            for (k, v) in &headers {
                b = b.header(k.as_str(), v.as_str());
            }
            let req = b.body(()).map_err(|e| e.to_string())?;
            let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
            if !body.is_empty() {
                stream
                    .send_data(Bytes::from(body))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            stream.finish().await.map_err(|e| e.to_string())?;
            let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    out.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            let trailers = stream.recv_trailers().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(H3Response {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: out,
                trailers,
            })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .map_err(|_| "request timed out".to_string())?
                .map_err(|e| e.to_string())??,
        );
    }
    drop(send);
    drive.abort();
    Ok(out)
}

/// Connects once to get a session ticket, then again with 0-RTT and sends `requests`
/// as early data. Returns whether the server took 0-RTT, and the answers.
pub fn zero_rtt(
    port: u16,
    host: &str,
    roots_pem: &[u8],
    requests: Vec<H3Request<'_>>,
) -> Result<(bool, Vec<H3Response>), String> {
    let (rt, host, requests) = prepare(host, requests)?;
    rt.block_on(async move {
        let ep = endpoint(roots_pem, true)?;
        let addr = ([127, 0, 0, 1], port).into();
        // A full handshake and one request: the server sends its session tickets.
        let first = ep
            .connect(addr, &host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        on_connection(
            first.clone(),
            &host,
            port,
            vec![("GET".into(), "/".into(), Vec::new(), Vec::new())],
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.close(0u32.into(), b"again");
        let connecting = ep.connect(addr, &host).map_err(|e| e.to_string())?;
        let (conn, early) = match connecting.into_0rtt() {
            Ok((conn, _accepted)) => (conn, true),
            Err(connecting) => (connecting.await.map_err(|e| e.to_string())?, false),
        };
        let out = on_connection(conn, &host, port, requests).await?;
        ep.close(0u32.into(), b"done");
        Ok((early, out))
    })
}

/// One GET.
pub fn get(port: u16, host: &str, roots_pem: &[u8], path: &str) -> Result<H3Response, String> {
    requests(
        port,
        host,
        roots_pem,
        vec![("GET", path.to_string(), Vec::new(), Vec::new())],
    )
    .map(|mut v| v.remove(0))
}

/// Opens `n` QUIC connections to `127.0.0.1:port` at once (a connection flood), keeps
/// those that were established until `while_held` returns, then closes them. Returns
/// how many were established and how many failed (refused or timed out), and what
/// `while_held` returned.
pub fn hold_many<T>(
    port: u16,
    host: &str,
    roots_pem: &[u8],
    n: usize,
    while_held: impl FnOnce() -> T,
) -> Result<(usize, usize, T), String> {
    // A worker thread keeps the connections driven while `while_held` runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let host = host.to_string();
    let (conns, failed) = rt.block_on(async {
        let ep = endpoint(roots_pem, false)?;
        let attempts = (0..n).map(|_| {
            let connecting = ep.connect(([127, 0, 0, 1], port).into(), &host);
            async move {
                let c = connecting.map_err(|e| e.to_string())?;
                // Generous: 150 handshakes at once on a loaded 2-core machine may lose an
                // Initial to a full socket buffer and wait out a probe timeout or two.
                tokio::time::timeout(Duration::from_secs(12), c)
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        let conns: Vec<quinn::Connection> = results.into_iter().flatten().collect();
        Ok::<_, String>(((ep, conns), failed))
    })?;
    let (ep, conns) = conns;
    let out = while_held();
    let established = conns.len();
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), ep.wait_idle())
            .await
            .ok()
    });
    Ok((established, failed, out))
}
