//! `H2ConnPool`: HTTP/2 upstream connections (h2c, or h2 over TLS) shared by the
//! HTTP/2 and HTTP/3 front-ends.
//!
//! Requests to one upstream address multiplex as streams onto at most
//! [`MAX_CONNS`] connections, each carrying up to [`MAX_STREAMS`] at once. Opening a
//! connection is serialised per address, so a burst that finds no connection opens one
//! and shares it instead of opening one per request. A connection that ended (GOAWAY,
//! an error, the peer closing) is dropped from the pool, and a request that could not
//! be started on it is retried once on a fresh connection when it is idempotent.

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connections per upstream address.
pub const MAX_CONNS: usize = 2;
/// Concurrent streams Dwaar puts on one connection.
pub const MAX_STREAMS: usize = 100;

#[derive(Clone)]
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    alive: Arc<AtomicBool>,
    streams: Arc<AtomicUsize>,
}

/// Counts a stream on its connection until dropped.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSlot")
    }
}

#[derive(Default)]
pub struct H2ConnPool {
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    opening: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for H2ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2ConnPool")
    }
}

/// TLS to the upstream: client settings (ALPN h2) and the name to verify.
pub type Tls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// A started request: the response to await, the body to send, and its slot.
pub type Started = (
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
    StreamSlot,
);

impl H2ConnPool {
    /// The process-wide pool.
    pub fn global() -> &'static H2ConnPool {
        static P: std::sync::OnceLock<H2ConnPool> = std::sync::OnceLock::new();
        P.get_or_init(H2ConnPool::default)
    }

    /// A live connection with room for a stream.
    fn pick(&self, addr: SocketAddr) -> Option<Conn> {
        let mut m = self.conns.lock().ok()?;
        let list = m.entry(addr).or_default();
        list.retain(|c| c.alive.load(Ordering::Acquire));
        list.iter()
            .filter(|c| c.streams.load(Ordering::Acquire) < MAX_STREAMS)
            .min_by_key(|c| c.streams.load(Ordering::Acquire))
            .cloned()
    }

    fn count(&self, addr: SocketAddr) -> usize {
        self.conns
            .lock()
            .map(|m| m.get(&addr).map_or(0, |l| l.len()))
            .unwrap_or(0)
    }

    async fn connection(
        &self,
        addr: SocketAddr,
        dial: Dial,
        tls: Option<&Tls>,
    ) -> Result<Conn, String> {
        if let Some(c) = self.pick(addr) {
            return Ok(c);
        }
        // One opener per address at a time; the others then find its connection.
        let gate = self
            .opening
            .lock()
            .map_err(|_| "pool poisoned")?
            .entry(addr)
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(c) = self.pick(addr) {
            return Ok(c);
        }
        if self.count(addr) >= MAX_CONNS {
            // Every allowed connection is full: wait briefly for a free stream.
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                if let Some(c) = self.pick(addr) {
                    return Ok(c);
                }
            }
            return Err("every upstream HTTP/2 connection is full".into());
        }
        let tcp = tokio::time::timeout(dial.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "upstream connect timed out".to_string())?
            .map_err(|e| format!("upstream connect: {e}"))?;
        dial.socket.apply(&tcp);
        let alive = Arc::new(AtomicBool::new(true));
        let send = match tls {
            Some((cfg, name)) => {
                let stream = tokio::time::timeout(
                    dial.timeout,
                    tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| "upstream TLS handshake timed out".to_string())?
                .map_err(|e| format!("upstream TLS: {e}"))?;
                handshake(stream, alive.clone(), dial.max_header).await?
            }
            None => handshake(tcp, alive.clone(), dial.max_header).await?,
        };
        let c = Conn {
            send,
            alive,
            streams: Arc::new(AtomicUsize::new(0)),
        };
        if let Ok(mut m) = self.conns.lock() {
            m.entry(addr).or_default().push(c.clone());
        }
        Ok(c)
    }

    /// Starts `req` on a shared connection to `addr`. `end`: the request has no body.
    /// A request that cannot be started on a connection that went away is retried
    /// once on a fresh one when `idempotent`.
    pub async fn start(
        &self,
        addr: SocketAddr,
        dial: Dial,
        tls: Option<&Tls>,
        req: http::Request<()>,
        end: bool,
        idempotent: bool,
    ) -> Result<Started, String> {
        let mut tries = if idempotent { 2 } else { 1 };
        loop {
            tries -= 1;
            let c = self.connection(addr, dial, tls).await?;
            c.streams.fetch_add(1, Ordering::AcqRel);
            let slot = StreamSlot(c.streams.clone());
            let attempt = async {
                let mut send = c.send.clone().ready().await?;
                send.send_request(req.clone(), end)
            };
            match attempt.await {
                Ok((resp, body)) => return Ok((resp, body, slot)),
                Err(e) => {
                    // GOAWAY or a dead connection: not used again.
                    c.alive.store(false, Ordering::Release);
                    if tries == 0 {
                        return Err(format!("upstream HTTP/2: {e}"));
                    }
                }
            }
        }
    }

    /// Connections open to `addr` now (tests and metrics).
    pub fn connections(&self, addr: SocketAddr) -> usize {
        self.conns
            .lock()
            .map(|m| {
                m.get(&addr).map_or(0, |l| {
                    l.iter().filter(|c| c.alive.load(Ordering::Acquire)).count()
                })
            })
            .unwrap_or(0)
    }
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task that clears
/// `alive` when it ends.
async fn handshake<T>(
    io: T,
    alive: Arc<AtomicBool>,
    max_header: u32,
) -> Result<h2::client::SendRequest<Bytes>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, driver) = h2::client::Builder::new()
        .max_concurrent_streams(MAX_STREAMS as u32)
        .max_header_list_size(max_header)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("upstream HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = driver.await;
        alive.store(false, Ordering::Release);
    });
    Ok(send)
}

/// Sends `data` on an HTTP/2 stream within its flow-control window, waiting for the
/// peer to grant more (so a large body never piles up in memory).
pub async fn send_all(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), String> {
    if data.is_empty() {
        if end {
            send.send_data(Bytes::new(), true)
                .map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or("the upstream stream closed")?
            .map_err(|e| e.to_string())?;
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How to open a connection: the dial timeout and the socket's options.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    pub timeout: std::time::Duration,
    pub socket: super::SocketOpts,
    /// The largest response header list accepted (`max_response_header`).
    pub max_header: u32,
}
