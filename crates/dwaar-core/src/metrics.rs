//! Request metrics of this process, for Prometheus (`/metrics` on the admin API and
//! the `metrics` directive).
//!
//! Each site has one [`SiteMetrics`] of plain atomics, found by its label when a route
//! table is compiled (so counters survive reloads); a request adds to its site's
//! counters once, when it is finished. Labels are bounded: methods fold into eight
//! values, statuses into classes, and sites beyond [`MAX_SITES`] share `_other`.
//! Worker processes send [`Snapshot`]s to the supervisor, which adds them up.

use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Distinct site labels kept; more share one series.
pub const MAX_SITES: usize = 1000;
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Status classes: no response, then 1xx..5xx.
pub const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
/// Latency histogram bounds in seconds.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Panics in this process (each failed the task it happened in; the process kept
/// serving).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Connections closed by the PROXY protocol policy (a header where none may be, none
/// where one must be, a malformed or late one).
pub static PROXY_PROTOCOL_REFUSED: AtomicU64 = AtomicU64::new(0);

/// TLS handshakes of this process by result.
pub static TLS_HANDSHAKES: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    Ok = 0,
    Failed,
    TimedOut,
}

#[derive(Debug, Default)]
pub struct SiteMetrics {
    pub label: String,
    requests: [[AtomicU64; 6]; 8],
    /// Cumulative counts per bucket are computed when rendering; these are per bucket,
    /// the last one for slower requests.
    latency: [AtomicU64; 14],
    latency_sum_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

static SITES: Mutex<Vec<Arc<SiteMetrics>>> = Mutex::new(Vec::new());

fn method_index(m: &str) -> usize {
    METHODS[..7].iter().position(|x| *x == m).unwrap_or(7)
}

impl SiteMetrics {
    /// The counters of `label`, shared by every table that has that site.
    pub fn for_label(label: &str) -> Arc<SiteMetrics> {
        let mut g = SITES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.iter().find(|s| s.label == label) {
            return s.clone();
        }
        let label = if g.len() >= MAX_SITES {
            "_other"
        } else {
            label
        };
        if let Some(s) = g.iter().find(|s| s.label == label) {
            return s.clone();
        }
        let s = Arc::new(SiteMetrics {
            label: label.to_string(),
            ..Default::default()
        });
        g.push(s.clone());
        s
    }

    /// Adds one finished request.
    pub fn observe(&self, method: &str, status: u16, secs: f64, read: u64, written: u64) {
        let class = if (100..600).contains(&status) {
            (status / 100) as usize
        } else {
            0
        };
        self.requests[method_index(method)][class].fetch_add(1, Relaxed);
        let b = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.latency[b].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
        self.bytes_in.fetch_add(read, Relaxed);
        self.bytes_out.fetch_add(written, Relaxed);
    }

    fn snapshot(&self) -> SiteSnapshot {
        SiteSnapshot {
            label: self.label.clone(),
            requests: self
                .requests
                .iter()
                .flat_map(|r| r.iter().map(|c| c.load(Relaxed)))
                .collect(),
            latency: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }
}

/// The counters of requests that matched no site.
fn unmatched() -> &'static Arc<SiteMetrics> {
    static U: std::sync::OnceLock<Arc<SiteMetrics>> = std::sync::OnceLock::new();
    U.get_or_init(|| SiteMetrics::for_label("_unmatched"))
}

/// Records a finished request under its site.
pub fn observe(
    ctx: &crate::context::RequestContext,
    method: &str,
    status: u16,
    read: u64,
    written: u64,
) {
    let secs = ctx.start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    let m = match ctx.site.as_ref() {
        Some(s) => &s.metrics,
        None => unmatched(),
    };
    m.observe(method, status, secs, read, written);
}

/// One site's counters, as sent from a worker to the supervisor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteSnapshot {
    pub label: String,
    pub requests: Vec<u64>,
    pub latency: Vec<u64>,
    pub latency_sum_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Everything this process counts, in a form that adds up across processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub sites: Vec<SiteSnapshot>,
    pub analytics_accepted: u64,
    pub analytics_dropped: u64,
    pub beacons_refused: u64,
    pub rate_limited: u64,
    pub rate_allowed: u64,
    #[serde(default)]
    pub tls_handshakes: [u64; 3],
    pub panics: u64,
    #[serde(default)]
    pub proxy_protocol_refused: u64,
    /// `cache`: hit, miss, stale, bypass, revalidated; then entries and bytes held.
    #[serde(default)]
    pub cache: [u64; 7],
    /// Layer 4: connections routed, unmatched, failed dials, bytes from and to
    /// clients, UDP sessions opened and datagrams dropped.
    #[serde(default)]
    pub layer4: [u64; 7],
}

impl Snapshot {
    /// This process's counters (the table's analytics collector and cache stores).
    pub fn take(table: Option<&crate::route_table::RouteTable>) -> Snapshot {
        let analytics = table
            .and_then(|t| t.analytics.as_ref())
            .and_then(|a| a.collector.as_deref());
        let mut cache = [0u64; 7];
        for st in table.map(|t| t.cache_stores.as_slice()).unwrap_or(&[]) {
            let c = &st.counts;
            let (n, b) = st.size();
            for (slot, v) in cache.iter_mut().zip([
                c.hits.load(Relaxed),
                c.misses.load(Relaxed),
                c.stale.load(Relaxed),
                c.bypass.load(Relaxed),
                c.revalidated.load(Relaxed),
                n,
                b,
            ]) {
                *slot += v;
            }
        }
        let sites = SITES
            .lock()
            .map(|g| g.iter().map(|s| s.snapshot()).collect())
            .unwrap_or_default();
        let (a, d, r) = analytics.map_or((0, 0, 0), |c| {
            (
                c.accepted.load(Relaxed),
                c.dropped.load(Relaxed),
                c.beacons_refused.load(Relaxed),
            )
        });
        Snapshot {
            sites,
            analytics_accepted: a,
            analytics_dropped: d,
            beacons_refused: r,
            rate_limited: crate::security::LIMITED.load(Relaxed),
            rate_allowed: crate::security::ALLOWED.load(Relaxed),
            tls_handshakes: [0, 1, 2].map(|i| TLS_HANDSHAKES[i].load(Relaxed)),
            panics: PANICS.load(Relaxed),
            proxy_protocol_refused: PROXY_PROTOCOL_REFUSED.load(Relaxed),
            cache,
            layer4: {
                use crate::layer4::{connection as c, udp as u};
                [
                    &c::CONNECTIONS,
                    &c::UNMATCHED,
                    &c::DIAL_FAILURES,
                    &c::BYTES_FROM_CLIENTS,
                    &c::BYTES_TO_CLIENTS,
                    &u::SESSIONS,
                    &u::DROPPED,
                ]
                .map(|a| a.load(Relaxed))
            },
        }
    }

    /// Adds another process's counters to these.
    pub fn add(&mut self, o: &Snapshot) {
        for s in &o.sites {
            match self.sites.iter_mut().find(|x| x.label == s.label) {
                Some(x) => {
                    for (a, b) in x.requests.iter_mut().zip(&s.requests) {
                        *a += b;
                    }
                    for (a, b) in x.latency.iter_mut().zip(&s.latency) {
                        *a += b;
                    }
                    x.latency_sum_us += s.latency_sum_us;
                    x.bytes_in += s.bytes_in;
                    x.bytes_out += s.bytes_out;
                }
                None => self.sites.push(s.clone()),
            }
        }
        self.analytics_accepted += o.analytics_accepted;
        self.analytics_dropped += o.analytics_dropped;
        self.beacons_refused += o.beacons_refused;
        self.rate_limited += o.rate_limited;
        self.rate_allowed += o.rate_allowed;
        self.panics += o.panics;
        self.proxy_protocol_refused += o.proxy_protocol_refused;
        for (a, b) in self.tls_handshakes.iter_mut().zip(o.tls_handshakes) {
            *a += b;
        }
        for (a, b) in self.cache.iter_mut().zip(o.cache) {
            *a += b;
        }
        for (a, b) in self.layer4.iter_mut().zip(o.layer4) {
            *a += b;
        }
    }

    /// Prometheus text for these counters.
    pub fn write(&self, out: &mut String) {
        out.push_str(
            "# HELP dwaar_requests_total Requests finished, by site, method and status class.\n\
             # TYPE dwaar_requests_total counter\n",
        );
        for s in &self.sites {
            let site = escape(&s.label);
            for (mi, m) in METHODS.iter().enumerate() {
                for (ci, c) in CLASSES.iter().enumerate() {
                    let n = s.requests.get(mi * 6 + ci).copied().unwrap_or(0);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "dwaar_requests_total{{site=\"{site}\",method=\"{m}\",code=\"{c}\"}} {n}"
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP dwaar_request_duration_seconds Time from request head to the end of the response.\n\
             # TYPE dwaar_request_duration_seconds histogram\n",
        );
        for s in &self.sites {
            let site = escape(&s.label);
            let mut cum = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cum += s.latency.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "dwaar_request_duration_seconds_bucket{{site=\"{site}\",le=\"{le}\"}} {cum}"
                );
            }
            cum += s.latency.get(BUCKETS.len()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "dwaar_request_duration_seconds_bucket{{site=\"{site}\",le=\"+Inf\"}} {cum}\n\
                 dwaar_request_duration_seconds_sum{{site=\"{site}\"}} {}\n\
                 dwaar_request_duration_seconds_count{{site=\"{site}\"}} {cum}",
                s.latency_sum_us as f64 / 1e6
            );
        }
        for (name, help, value) in [
            (
                "dwaar_request_bytes_total",
                "Body bytes read from clients.",
                (|s: &SiteSnapshot| s.bytes_in) as fn(&SiteSnapshot) -> u64,
            ),
            (
                "dwaar_response_bytes_total",
                "Body bytes sent to clients.",
                |s: &SiteSnapshot| s.bytes_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for s in &self.sites {
                let _ = writeln!(out, "{name}{{site=\"{}\"}} {}", escape(&s.label), value(s));
            }
        }
        let _ = write!(
            out,
            "# HELP dwaar_rate_limit_decisions_total rate_limit decisions.\n\
             # TYPE dwaar_rate_limit_decisions_total counter\n\
             dwaar_rate_limit_decisions_total{{decision=\"allowed\"}} {}\n\
             dwaar_rate_limit_decisions_total{{decision=\"limited\"}} {}\n\
             # HELP dwaar_analytics_events_total Analytics events by outcome.\n\
             # TYPE dwaar_analytics_events_total counter\n\
             dwaar_analytics_events_total{{result=\"accepted\"}} {}\n\
             dwaar_analytics_events_total{{result=\"dropped\"}} {}\n\
             # HELP dwaar_analytics_beacons_refused_total Beacons refused (forged, oversized, foreign, limited).\n\
             # TYPE dwaar_analytics_beacons_refused_total counter\n\
             dwaar_analytics_beacons_refused_total {}\n\
             # HELP dwaar_tls_handshakes_total TLS handshakes on HTTPS listeners by result.\n\
             # TYPE dwaar_tls_handshakes_total counter\n\
             dwaar_tls_handshakes_total{{result=\"ok\"}} {}\n\
             dwaar_tls_handshakes_total{{result=\"failed\"}} {}\n\
             dwaar_tls_handshakes_total{{result=\"timeout\"}} {}\n\
             # HELP dwaar_panics_total Panics caught; each failed only the task (connection or stream) it happened in.\n\
             # TYPE dwaar_panics_total counter\n\
             dwaar_panics_total {}\n\
             # HELP dwaar_proxy_protocol_refused_total Connections closed by the PROXY protocol policy.\n\
             # TYPE dwaar_proxy_protocol_refused_total counter\n\
             dwaar_proxy_protocol_refused_total {}\n",
            self.rate_allowed,
            self.rate_limited,
            self.analytics_accepted,
            self.analytics_dropped,
            self.beacons_refused,
            self.tls_handshakes[0],
            self.tls_handshakes[1],
            self.tls_handshakes[2],
            self.panics,
            self.proxy_protocol_refused,
        );
        let l4 = &self.layer4;
        let _ = write!(
            out,
            "# HELP dwaar_layer4_connections_total TCP connections a layer4 route took.\n\
             # TYPE dwaar_layer4_connections_total counter\n\
             dwaar_layer4_connections_total {}\n\
             # HELP dwaar_layer4_unmatched_total TCP connections no layer4 route took.\n\
             # TYPE dwaar_layer4_unmatched_total counter\n\
             dwaar_layer4_unmatched_total {}\n\
             # HELP dwaar_layer4_dial_failures_total Layer4 proxies that found no upstream to connect to.\n\
             # TYPE dwaar_layer4_dial_failures_total counter\n\
             dwaar_layer4_dial_failures_total {}\n\
             # HELP dwaar_layer4_bytes_total Bytes relayed by layer4 proxies, by direction.\n\
             # TYPE dwaar_layer4_bytes_total counter\n\
             dwaar_layer4_bytes_total{{direction=\"from_client\"}} {}\n\
             dwaar_layer4_bytes_total{{direction=\"to_client\"}} {}\n\
             # HELP dwaar_layer4_udp_sessions_total UDP client sessions opened.\n\
             # TYPE dwaar_layer4_udp_sessions_total counter\n\
             dwaar_layer4_udp_sessions_total {}\n\
             # HELP dwaar_layer4_udp_dropped_total UDP datagrams dropped (no route, no upstream, too many sessions, full buffers).\n\
             # TYPE dwaar_layer4_udp_dropped_total counter\n\
             dwaar_layer4_udp_dropped_total {}\n",
            l4[0], l4[1], l4[2], l4[3], l4[4], l4[5], l4[6],
        );
        out.push_str(
            "# HELP dwaar_cache_requests_total Requests the cache looked at, by result.\n\
             # TYPE dwaar_cache_requests_total counter\n",
        );
        for (i, r) in ["hit", "miss", "stale", "bypass", "revalidated"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "dwaar_cache_requests_total{{result=\"{r}\"}} {}",
                self.cache[i]
            );
        }
        let _ = write!(
            out,
            "# HELP dwaar_cache_entries Responses held by the caches.\n\
             # TYPE dwaar_cache_entries gauge\n\
             dwaar_cache_entries {}\n\
             # HELP dwaar_cache_bytes Memory the cached responses are counted at.\n\
             # TYPE dwaar_cache_bytes gauge\n\
             dwaar_cache_bytes {}\n",
            self.cache[5], self.cache[6]
        );
    }
}

/// A label value with `\`, `"` and newlines escaped (Prometheus text format).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Upstream health, load and connect times of the table's reverse proxies.
pub fn write_upstreams(table: &crate::route_table::RouteTable, out: &mut String) {
    let mut seen = std::collections::HashSet::new();
    let mut lines = String::new();
    for u in &table.upstreams {
        if !seen.insert(u.dial.clone()) {
            continue;
        }
        let d = escape(&u.dial);
        let _ = writeln!(
            lines,
            "dwaar_upstream_healthy{{upstream=\"{d}\"}} {}\n\
             dwaar_upstream_active_requests{{upstream=\"{d}\"}} {}\n\
             dwaar_upstream_connects_total{{upstream=\"{d}\"}} {}\n\
             dwaar_upstream_connect_seconds_total{{upstream=\"{d}\"}} {}",
            u.healthy() as u8,
            u.active.load(Relaxed),
            u.connects.load(Relaxed),
            u.connect_us.load(Relaxed) as f64 / 1e6,
        );
    }
    out.push_str(
        "# HELP dwaar_upstream_healthy Whether the upstream is considered up (1) or down (0).\n\
         # TYPE dwaar_upstream_healthy gauge\n\
         # HELP dwaar_upstream_active_requests Requests in flight to the upstream.\n\
         # TYPE dwaar_upstream_active_requests gauge\n\
         # HELP dwaar_upstream_connects_total New connections opened to the upstream.\n\
         # TYPE dwaar_upstream_connects_total counter\n\
         # HELP dwaar_upstream_connect_seconds_total Time spent opening them (divide by the count for the mean).\n\
         # TYPE dwaar_upstream_connect_seconds_total counter\n",
    );
    out.push_str(&lines);
}

/// Process facts from `/proc/self` (resident memory, CPU time, open files, start time).
pub fn write_process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    // /proc reports CPU time in USER_HZ ticks, 100 a second on Linux.
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the name.
    let cpu = (num(11) + num(12)) / 100.0;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        * 1024.0;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time of this process.\n\
         # TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total {cpu}\n\
         # HELP process_resident_memory_bytes Resident memory of this process.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes {rss}\n\
         # HELP process_open_fds Open file descriptors of this process.\n\
         # TYPE process_open_fds gauge\n\
         process_open_fds {fds}\n"
    );
}

/// The `metrics` directive's answer: this process's request metrics.
pub fn render(table: Option<&crate::route_table::RouteTable>) -> String {
    let mut out = String::with_capacity(4096);
    Snapshot::take(table).write(&mut out);
    if let Some(t) = table {
        write_upstreams(t, &mut out);
    }
    write_process(&mut out);
    dwaar_fleet::write_metrics(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_and_add_up() {
        let m = SiteMetrics::for_label("metrics-test.example");
        m.observe("GET", 200, 0.003, 0, 100);
        m.observe("BREW", 503, 20.0, 5, 0);
        let mut a = Snapshot::take(None);
        let b = a.clone();
        a.add(&b);
        let mut out = String::new();
        a.write(&mut out);
        assert!(
            out.contains(
                "dwaar_requests_total{site=\"metrics-test.example\",method=\"GET\",code=\"2xx\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("method=\"OTHER\",code=\"5xx\"} 2"));
        assert!(out.contains(
            "dwaar_request_duration_seconds_bucket{site=\"metrics-test.example\",le=\"0.005\"} 2"
        ));
        assert!(
            out.contains("dwaar_request_duration_seconds_count{site=\"metrics-test.example\"} 4")
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
