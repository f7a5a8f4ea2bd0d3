//! Active health checks: a background service that probes every upstream with
//! `health_uri`/`health_port` on its interval, all targets in parallel, and flips the
//! upstream's `active_healthy` verdict. Probes read at most 64 KiB and loop over partial
//! reads; each is bounded by `health_timeout`.

use super::{now_ms, UpstreamState};
use crate::route_table::RouteStore;
use dwaar_config::model::ActiveHealth;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_PROBE_RESPONSE: usize = 64 * 1024;

/// One upstream to probe and how.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub upstream: Arc<UpstreamState>,
    pub cfg: ActiveHealth,
    pub tls: bool,
    schedule: Arc<Schedule>,
}

#[derive(Debug, Default)]
struct Schedule {
    next_due_ms: AtomicU64,
    in_flight: AtomicBool,
}

impl HealthTarget {
    pub fn new(upstream: Arc<UpstreamState>, cfg: ActiveHealth, tls: bool) -> Self {
        HealthTarget {
            upstream,
            cfg,
            tls,
            schedule: Arc::default(),
        }
    }

    pub fn same_as(&self, o: &HealthTarget) -> bool {
        Arc::ptr_eq(&self.upstream, &o.upstream)
            && self.cfg.uri == o.cfg.uri
            && self.cfg.port == o.cfg.port
    }
}

/// Runs the probes of whatever route table is current.
pub struct HealthChecker {
    pub store: Arc<RouteStore>,
}

impl HealthChecker {
    /// Probes due targets until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let table = self.store.load();
            let now = now_ms();
            for t in &table.health_targets {
                let s = &t.schedule;
                if now < s.next_due_ms.load(Ordering::Relaxed)
                    || s.in_flight.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                s.next_due_ms
                    .store(now + t.cfg.interval_ms, Ordering::Relaxed);
                let t = t.clone();
                tokio::spawn(async move {
                    let ok = probe(&t).await;
                    let was = t.upstream.active_healthy.swap(ok, Ordering::Relaxed);
                    if was != ok {
                        if ok {
                            tracing::info!(upstream = %t.upstream.dial, "upstream is healthy again");
                        } else {
                            tracing::warn!(upstream = %t.upstream.dial, "upstream failed its health check");
                        }
                    }
                    t.schedule.in_flight.store(false, Ordering::Release);
                });
            }
        }
    }
}

async fn probe(t: &HealthTarget) -> bool {
    let timeout = Duration::from_millis(t.cfg.timeout_ms.max(1));
    tokio::time::timeout(timeout, probe_inner(t))
        .await
        .unwrap_or(false)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn probe_inner(t: &HealthTarget) -> bool {
    let u = &t.upstream;
    let host = if u.unix {
        "localhost".to_string()
    } else {
        u.dial.clone()
    };
    let mut stream: Box<dyn Io> = if u.unix {
        match tokio::net::UnixStream::connect(&u.dial).await {
            Ok(s) => Box::new(s),
            Err(_) => return false,
        }
    } else {
        let Some(mut addr) = u.addr else { return false };
        if let Some(p) = t.cfg.port {
            addr.set_port(p);
        }
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => Box::new(s),
            Err(_) => return false,
        }
    };
    if t.tls || t.cfg.uri.is_empty() {
        // TLS upstreams (and port-only checks) are judged by a successful connect.
        return true;
    }
    let mut req = format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dwaar-health-check\r\nConnection: close\r\n", t.cfg.uri);
    for h in &t.cfg.headers {
        for v in &h.values {
            let v: String = v.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
            req.push_str(&format!("{}: {v}\r\n", h.field));
        }
    }
    req.push_str("\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_PROBE_RESPONSE {
                    break;
                }
                // Without a body check, the status line and headers are enough.
                if t.cfg.expect_body.is_none() && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    judge(&buf, &t.cfg)
}

fn judge(resp: &[u8], cfg: &ActiveHealth) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let body_at = match r.parse(resp) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return false,
    };
    let Some(code) = r.code else { return false };
    let status_ok = match cfg.expect_status.as_deref() {
        Some(s) if s.ends_with("xx") => s.as_bytes()[0] == b'0' + (code / 100) as u8,
        Some(s) => s.parse::<u16>().map(|c| c == code).unwrap_or(false),
        None => (200..300).contains(&code),
    };
    if !status_ok {
        return false;
    }
    match &cfg.expect_body {
        Some(re) => {
            let body = String::from_utf8_lossy(&resp[body_at..]);
            regex::Regex::new(re)
                .map(|r| r.is_match(&body))
                .unwrap_or(false)
        }
        None => true,
    }
}
