//! Active health checks: a background service that probes every upstream with
//! `health_uri`/`health_port`/`health_upstream` on its interval, all targets in
//! parallel, and flips the upstream's `active_healthy` verdict after `health_fails`
//! consecutive failures or `health_passes` consecutive passes. A probe is a real HTTP
//! request (`health_method`, `health_request_body`, `health_headers`), over TLS for TLS
//! upstreams, following redirects when asked; it reads at most 64 KiB and is bounded by
//! `health_timeout` as a whole.

use super::{now_ms, TransportOpts, UpstreamState};
use crate::route_table::RouteStore;
use dwaar_config::model::ActiveHealth;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_PROBE_RESPONSE: usize = 64 * 1024;

/// One upstream to probe and how.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub upstream: Arc<UpstreamState>,
    pub cfg: ActiveHealth,
    /// How to reach it (TLS settings, dial timeout).
    pub transport: TransportOpts,
    schedule: Arc<Schedule>,
}

#[derive(Debug, Default)]
struct Schedule {
    next_due_ms: AtomicU64,
    in_flight: AtomicBool,
    /// Consecutive results of the same kind as the last one.
    passes: AtomicU32,
    fails: AtomicU32,
}

impl HealthTarget {
    pub fn new(upstream: Arc<UpstreamState>, cfg: ActiveHealth, transport: TransportOpts) -> Self {
        HealthTarget {
            upstream,
            cfg,
            transport,
            schedule: Arc::default(),
        }
    }

    /// Counts a probe's result; returns the verdict to store.
    fn verdict(&self, ok: bool, healthy: bool) -> bool {
        let s = &self.schedule;
        if ok {
            s.fails.store(0, Ordering::Relaxed);
            let n = s.passes.fetch_add(1, Ordering::Relaxed) + 1;
            healthy || n >= self.cfg.passes.max(1)
        } else {
            s.passes.store(0, Ordering::Relaxed);
            let n = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
            healthy && n < self.cfg.fails.max(1)
        }
    }

    pub fn same_as(&self, o: &HealthTarget) -> bool {
        Arc::ptr_eq(&self.upstream, &o.upstream) && self.cfg == o.cfg
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
        // Host-name upstreams are looked up with the system's DNS servers.
        let resolver = super::dns::Resolver::new(&[]).ok().map(Arc::new);
        let looking = Arc::new(AtomicBool::new(false));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let table = self.store.load();
            let now = now_ms();
            let mut dynamic_targets = Vec::new();
            for d in &table.dynamic {
                d.refresh_if_due(now);
                dynamic_targets.extend(d.health_targets());
            }
            if let Some(resolver) = &resolver {
                let due: Vec<Arc<UpstreamState>> = table
                    .upstreams
                    .iter()
                    .filter(|u| {
                        !u.unix
                            && super::dynamic::host_name(&u.dial).is_some()
                            && now >= u.next_lookup_ms.load(Ordering::Relaxed)
                    })
                    .cloned()
                    .collect();
                if !due.is_empty() && !looking.swap(true, Ordering::AcqRel) {
                    let (resolver, looking) = (resolver.clone(), looking.clone());
                    tokio::spawn(async move {
                        for u in due {
                            let own = u.resolver.lock().ok().and_then(|r| r.clone());
                            super::dynamic::refresh_named(&u, own.as_deref().unwrap_or(&resolver))
                                .await;
                        }
                        looking.store(false, Ordering::Release);
                    });
                }
            }
            for t in table.health_targets.iter().chain(&dynamic_targets) {
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
                    let passed = probe(&t).await;
                    let healthy = t.upstream.active_healthy.load(Ordering::Relaxed);
                    let ok = t.verdict(passed, healthy);
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

/// Most redirects a probe follows with `health_follow_redirects`.
const MAX_REDIRECTS: usize = 10;

async fn probe_inner(t: &HealthTarget) -> bool {
    let mut uri = t.cfg.uri.clone();
    for _ in 0..=MAX_REDIRECTS {
        let Some(resp) = exchange(t, &uri).await else {
            return false;
        };
        let Some(resp) = resp else {
            // A port-only check: the connection opened.
            return true;
        };
        if t.cfg.follow_redirects {
            if let Some(next) = redirect_target(&resp) {
                uri = next;
                continue;
            }
        }
        return judge(&resp, &t.cfg);
    }
    false
}

/// One probe request for `uri`: `None` when the connection or exchange failed,
/// `Some(None)` for a port-only check that connected, else the response read.
async fn exchange(t: &HealthTarget, uri: &str) -> Option<Option<Vec<u8>>> {
    let u = &t.upstream;
    let host = match &t.cfg.upstream {
        Some(other) => other.clone(),
        None if u.unix => "localhost".to_string(),
        None => u.dial.clone(),
    };
    let mut stream: Box<dyn Io> = if u.unix && t.cfg.upstream.is_none() {
        Box::new(tokio::net::UnixStream::connect(&u.dial).await.ok()?)
    } else {
        let addr = match &t.cfg.upstream {
            Some(other) => tokio::net::lookup_host(other.as_str()).await.ok()?.next()?,
            None => {
                let mut addr = u.addr()?;
                if let Some(p) = t.cfg.port {
                    addr.set_port(p);
                }
                addr
            }
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        if uri.is_empty() {
            return Some(None);
        }
        if t.transport.tls {
            let cfg = t.transport.client_tls().ok()?;
            let name = t.transport.server_name(&host, &host).ok()?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .ok()?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        }
    };
    if uri.is_empty() {
        return Some(None);
    }
    let method = t.cfg.method.as_deref().unwrap_or("GET");
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dwaar-health-check\r\nConnection: close\r\n"
    );
    for h in &t.cfg.headers {
        for v in &h.values {
            let v: String = v.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
            req.push_str(&format!("{}: {v}\r\n", h.field));
        }
    }
    let body = t.cfg.request_body.as_deref().unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_only = method == "HEAD";
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_PROBE_RESPONSE {
                    break;
                }
                // Without a body check, the status line and headers are enough.
                if (t.cfg.expect_body.is_none() || head_only)
                    && buf.windows(4).any(|w| w == b"\r\n\r\n")
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(Some(buf))
}

/// The path (and query) a 3xx response sends the probe to.
fn redirect_target(resp: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    r.parse(resp).ok()?;
    if !(300..400).contains(&r.code?) {
        return None;
    }
    let location = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("location"))
        .and_then(|h| std::str::from_utf8(h.value).ok())?
        .trim();
    // An absolute URL keeps only its path: the probe stays on the upstream.
    let path = match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    };
    path.starts_with('/').then(|| path.to_string())
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
