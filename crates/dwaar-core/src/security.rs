//! Request-path security: rate-limit zones and bot detection.
//!
//! **Rate limiting** keeps, per key, the counts of the current and the previous fixed
//! window and estimates a sliding window from them (the previous count weighted by how
//! much of it still overlaps). Keys live in [`SHARDS`] mutex-guarded maps holding at
//! most [`MAX_KEYS`] keys in all, so memory per zone is bounded whatever arrives
//! ([`Zone::memory_bound`]); a full shard evicts a stale key if it has one, else the
//! least busy of a few sampled keys, so a flood of new keys cannot push out a heavy
//! one. (A count-min sketch was tried first: with a million keys in one window its
//! counters saturated and 64% of first requests were refused.)
//!
//! **Bots** are recognised by User-Agent substrings of known crawlers, scanners and
//! HTTP libraries, matched in one pass with Aho-Corasick.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Keys tracked per zone at most.
pub const MAX_KEYS: usize = 100_000;
pub const SHARDS: usize = 64;
const PER_SHARD: usize = MAX_KEYS / SHARDS;
/// Keys looked at when a full shard must evict one.
const EVICTION_SAMPLE: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Counts {
    epoch: u64,
    current: u32,
    previous: u32,
}

impl Counts {
    /// Moves the counts to window `epoch`.
    fn roll(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        self.previous = if self.epoch + 1 == epoch {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.epoch = epoch;
    }
}

/// One rate-limit zone.
/// Decisions of every zone of this process, for metrics.
pub static ALLOWED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static LIMITED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct Zone {
    pub events: u32,
    pub burst: u32,
    pub window_ms: u64,
    shards: Box<[Mutex<HashMap<u64, Counts>>]>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("events", &self.events)
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

/// A refused request: when to retry, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hash_key(key: &str) -> u64 {
    // FNV-1a, then a final mix: fast and good enough to spread keys over a sketch.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Zone {
    pub fn new(events: u32, window_ms: u64, burst: u32) -> Zone {
        Zone {
            events,
            burst,
            window_ms: window_ms.max(1),
            shards: (0..SHARDS)
                // Twice the keys kept: with at most half the table live, hashbrown
                // clears its tombstones in place instead of growing.
                .map(|_| Mutex::new(HashMap::with_capacity(PER_SHARD * 2)))
                .collect(),
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// The most memory the zone's tables can take: every shard at capacity (hashbrown
    /// allocates a power of two of buckets of key + counts, plus a control byte each).
    pub fn memory_bound() -> usize {
        let buckets = (PER_SHARD * 2 * 8 / 7).next_power_of_two();
        let entry = std::mem::size_of::<(u64, Counts)>() + 1;
        SHARDS * buckets * entry
    }

    /// Bytes the zone's tables take now.
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, Counts)>() + 1;
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.capacity() * entry).unwrap_or(0))
            .sum()
    }

    /// Counts a request for `key` at `now` (ms); `Err` when it is over the limit (a
    /// refused request is not counted).
    pub fn check_at(&self, key: &str, now: u64) -> Result<(), Limited> {
        let h = hash_key(key);
        let epoch = now / self.window_ms;
        let into = now % self.window_ms;
        let Ok(mut shard) = self.shards[(h as usize) % SHARDS].lock() else {
            return Ok(());
        };
        if !shard.contains_key(&h) && shard.len() >= PER_SHARD {
            evict(&mut shard, epoch);
        }
        let c = shard.entry(h).or_insert(Counts {
            epoch,
            current: 0,
            previous: 0,
        });
        c.roll(epoch);
        let weight = (self.window_ms - into) as f64 / self.window_ms as f64;
        let carried = (f64::from(c.previous) * weight) as u64;
        let limit = u64::from(self.events) + u64::from(self.burst);
        if u64::from(c.current) + carried >= limit {
            return Err(Limited {
                retry_after_secs: (self.window_ms - into).div_ceil(1000).max(1),
            });
        }
        c.current = c.current.saturating_add(1);
        Ok(())
    }

    /// [`check`](Self::check) without counting the decision in the `rate_limit`
    /// metrics (Dwaar's own limits, like the analytics beacon's).
    pub fn check_uncounted(&self, key: &str) -> Result<(), Limited> {
        self.check_at(key, now_ms())
    }

    pub fn check(&self, key: &str) -> Result<(), Limited> {
        let r = self.check_at(key, now_ms());
        match r {
            Ok(()) => ALLOWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Err(_) => LIMITED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        r
    }
}

/// Makes room in a full shard: a key idle for two windows if there is one, else the
/// least busy of a few.
fn evict(shard: &mut HashMap<u64, Counts>, epoch: u64) {
    let mut victim: Option<(u64, u32)> = None;
    for (k, c) in shard.iter().take(EVICTION_SAMPLE * 4) {
        if c.epoch + 1 < epoch {
            victim = Some((*k, 0));
            break;
        }
        let busy = if c.epoch == epoch {
            c.current.max(c.previous)
        } else {
            c.current
        };
        if victim.is_none_or(|(_, b)| busy < b) {
            victim = Some((*k, busy));
        }
    }
    if let Some((k, _)) = victim {
        shard.remove(&k);
    }
}

/// User-Agent substrings (lowercase) of crawlers, monitors, scanners and HTTP libraries.
const BOT_PATTERNS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "slurp",
    "crawl",
    "archiver",
    "facebookexternalhit",
    "embedly",
    "quora link preview",
    "whatsapp",
    "telegrambot",
    "discordbot",
    "slackbot",
    "preview",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "php/",
    "ruby",
    "axios/",
    "node-fetch",
    "undici",
    "scrapy",
    "headlesschrome",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "nikto",
    "sqlmap",
    "nmap",
    "masscan",
    "zgrab",
    "nuclei",
    "dirbuster",
    "gobuster",
    "wpscan",
    "httpclient",
    "apache-httpclient",
    "postman",
    "insomnia",
    "lighthouse",
    "pingdom",
    "uptimerobot",
    "statuscake",
    "datadog",
    "newrelic",
    "monitor",
    "feedfetcher",
    "rss",
    "ahrefs",
    "semrush",
    "mj12",
    "dotbot",
    "petalbot",
    "bytespider",
    "gptbot",
    "claudebot",
    "ccbot",
    "anthropic",
    "perplexity",
];

fn bot_matcher() -> &'static aho_corasick::AhoCorasick {
    static M: OnceLock<aho_corasick::AhoCorasick> = OnceLock::new();
    M.get_or_init(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(BOT_PATTERNS)
            .expect("fixed ASCII patterns always build")
    })
}

/// Whether a User-Agent looks automated. A missing or empty one counts as a bot.
pub fn is_bot(user_agent: Option<&str>) -> bool {
    match user_agent.map(str::trim) {
        None | Some("") => true,
        Some(ua) => bot_matcher().is_match(ua),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_with_a_sliding_window() {
        let z = Zone::new(5, 1000, 0);
        let t = 10_000_000;
        for i in 0..5 {
            assert!(z.check_at("a", t + i).is_ok());
        }
        assert!(z.check_at("a", t + 10).is_err());
        // Another key is independent.
        assert!(z.check_at("b", t + 10).is_ok());
        // Halfway through the next window, half of the previous count (2 of 5) still
        // weighs: three more fit, the fourth does not.
        for _ in 0..3 {
            assert!(z.check_at("a", t + 1500).is_ok());
        }
        assert!(z.check_at("a", t + 1500).is_err());
        // Two windows later everything is forgotten.
        for _ in 0..5 {
            assert!(z.check_at("a", t + 3000).is_ok());
        }
    }

    #[test]
    fn a_million_distinct_keys_stay_under_the_memory_bound() {
        let z = Zone::new(10, 60_000, 0);
        let bound = Zone::memory_bound();
        assert!(bound <= 7 * 1024 * 1024, "{bound}");
        let t = 5_000_000;
        // A heavy key, active before and during the flood.
        let mut heavy_ok = 0;
        for _ in 0..10 {
            if z.check_at("heavy", t).is_ok() {
                heavy_ok += 1;
            }
        }
        let mut refused = 0u32;
        for i in 0..1_000_000u32 {
            let key = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            if z.check_at(&key, t).is_err() {
                refused += 1;
            }
            if i % 1000 == 0 && z.check_at("heavy", t).is_ok() {
                heavy_ok += 1;
            }
        }
        assert!(z.keys() <= MAX_KEYS, "{} keys", z.keys());
        assert!(z.memory_bytes() <= bound, "{} > {bound}", z.memory_bytes());
        // Every newcomer's first request is allowed...
        assert_eq!(refused, 0);
        // ...and the heavy key stayed limited throughout the flood.
        assert!(heavy_ok <= 10, "heavy key allowed {heavy_ok} times");
    }

    #[test]
    fn bots() {
        assert!(is_bot(Some("Mozilla/5.0 (compatible; Googlebot/2.1)")));
        assert!(is_bot(Some("curl/8.4.0")));
        assert!(is_bot(Some("python-requests/2.31")));
        assert!(is_bot(None));
        assert!(!is_bot(Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
        )));
    }
}

/// Carries the fleet's verdict on an exact distributed rate limit into the rerun of
/// the pipeline: `<marker>:ok` or `<marker>:<retry-after seconds>`.
pub const FLEET_LIMIT: &str = "x-dwaar-fleet-limit";

/// A question to the fleet about one exact distributed rate limit.
#[derive(Debug, Clone)]
pub struct FleetCall {
    pub fleet: std::sync::Arc<dwaar_fleet::Fleet>,
    pub zone: String,
    pub key_hash: u64,
    pub limit: u64,
    pub window_ms: u64,
    /// The local zone that decides while Redis cannot.
    pub local: std::sync::Arc<Zone>,
    pub key: String,
    pub marker: String,
}

/// A distributed zone's verdict: decided here (approximate mode, or the exact verdict
/// the fleet gave before this rerun), or a question to ask the fleet off the request
/// path first.
pub fn fleet_verdict(
    f: &crate::route_table::FleetLimit,
    rule: &crate::route_table::RateLimitRule,
    zone_id: u64,
    key: &str,
    req: &mut dyn crate::request::HttpRequest,
) -> Result<Result<(), Limited>, crate::auth::Check> {
    use crate::route_table::FleetLimit;
    use std::sync::atomic::Ordering::Relaxed;
    let z = &rule.zone;
    let retry = |now: u64| Limited {
        retry_after_secs: (z.window_ms - now % z.window_ms).div_ceil(1000).max(1),
    };
    let verdict = match f {
        FleetLimit::Approximate(a) => {
            let now = now_ms();
            if a.check(hash_key(key), now) {
                Ok(())
            } else {
                Err(retry(now))
            }
        }
        FleetLimit::Exact { fleet, zone } => {
            let marker = crate::auth::marker(zone_id);
            let given = req
                .header(FLEET_LIMIT)
                .and_then(|v| v.strip_prefix(marker.as_str()))
                .and_then(|v| v.strip_prefix(':'))
                .map(str::to_string);
            let Some(given) = given else {
                return Err(crate::auth::Check::FleetLimit(Box::new(FleetCall {
                    fleet: fleet.clone(),
                    zone: zone.clone(),
                    key_hash: hash_key(key),
                    limit: u64::from(z.events) + u64::from(z.burst),
                    window_ms: z.window_ms,
                    local: z.clone(),
                    key: key.to_string(),
                    marker,
                })));
            };
            req.remove_header(FLEET_LIMIT);
            match given.as_str() {
                "ok" => Ok(()),
                secs => Err(Limited {
                    retry_after_secs: secs.parse().unwrap_or(1),
                }),
            }
        }
    };
    match verdict {
        Ok(()) => ALLOWED.fetch_add(1, Relaxed),
        Err(_) => LIMITED.fetch_add(1, Relaxed),
    };
    Ok(verdict)
}

/// Asks the fleet (the local zone when Redis cannot answer): the header edit for the
/// rerun.
pub async fn ask_fleet(c: FleetCall) -> (String, Option<String>) {
    let now = now_ms();
    let r =
        dwaar_fleet::limit::check_exact(&c.fleet, &c.zone, c.key_hash, c.limit, c.window_ms, now)
            .await;
    let verdict = match r {
        Ok(true) => "ok".to_string(),
        Ok(false) => (c.window_ms - now % c.window_ms)
            .div_ceil(1000)
            .max(1)
            .to_string(),
        Err(e) => {
            c.fleet
                .fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(zone = c.zone, "rate limit decided locally: {e}");
            match c.local.check_at(&c.key, now) {
                Ok(()) => "ok".to_string(),
                Err(l) => l.retry_after_secs.to_string(),
            }
        }
    };
    (
        FLEET_LIMIT.to_string(),
        Some(format!("{}:{verdict}", c.marker)),
    )
}
