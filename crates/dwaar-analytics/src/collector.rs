//! `Collector`: takes events from the request path and folds them into the store.
//!
//! Front-ends hand events over a bounded channel with `try_send` (a full channel drops
//! the event and counts it, the request never waits). One thread per process owns the
//! per-minute deltas, hashes visitors with the day's salt, and merges the deltas into
//! the [`Store`] every flush interval and on shutdown.

use crate::agent;
use crate::bucket::{Bucket, List, Metric};
use crate::store::{Store, DAY, MINUTE};
use compact_str::CompactString;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events queued at most before new ones are dropped: with [`TICK`], room for about
/// 400,000 events a second (the queue's slots are allocated up front: 256 KiB).
pub const QUEUE: usize = 4 * 1024;
/// How often the collecting thread takes what is queued.
pub const TICK: Duration = Duration::from_millis(10);

/// One finished request of a site with analytics on.
#[derive(Debug)]
pub struct RequestEvent {
    pub site: Arc<str>,
    pub ts: i64,
    pub status: u16,
    pub bytes: u64,
    pub latency_us: u64,
    /// Present when the response was an HTML page view.
    pub page: Option<Box<PageView>>,
}

/// What a page view adds to the top lists and visitors.
#[derive(Debug, Default)]
pub struct PageView {
    pub path: CompactString,
    pub query: CompactString,
    /// The `Referer` host when it is another site's.
    pub referrer: Option<CompactString>,
    pub ip: Option<IpAddr>,
    pub user_agent: CompactString,
}

/// A beacon the endpoint accepted.
#[derive(Debug)]
pub struct BeaconEvent {
    pub site: Arc<str>,
    pub ts: i64,
    pub ip: IpAddr,
    pub user_agent: CompactString,
    pub beacon: crate::beacon::Beacon,
    /// 1 / sample rate: how many page views this beacon stands for.
    pub weight: u64,
}

/// Kept small (the beacon is boxed): the queue holds [`QUEUE`] of these.
#[derive(Debug)]
pub enum Event {
    Request(RequestEvent),
    Beacon(Box<BeaconEvent>),
}

/// Settings that may change on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub retention_days: u32,
    pub flush: Duration,
    pub geoip: Option<Arc<crate::geo::GeoDb>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention_days: 400,
            flush: Duration::from_secs(2),
            geoip: None,
        }
    }
}

pub struct Collector {
    tx: Mutex<Option<SyncSender<Event>>>,
    pub dropped: AtomicU64,
    pub accepted: AtomicU64,
    pub beacons_refused: AtomicU64,
    settings: Arc<Mutex<Settings>>,
    db: PathBuf,
    token_key: ring::hmac::Key,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Collector({})", self.db.display())
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Collector {
    /// Opens the store at `db` and starts the collecting thread.
    pub fn start(db: &Path, settings: Settings) -> Result<Arc<Collector>, String> {
        let mut store = Store::open(db)?;
        let key = store.secret("beacon-key")?;
        let (tx, rx) = sync_channel(QUEUE);
        let settings = Arc::new(Mutex::new(settings));
        let c = Arc::new(Collector {
            tx: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            beacons_refused: AtomicU64::new(0),
            settings: settings.clone(),
            db: db.to_path_buf(),
            token_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            thread: Mutex::new(None),
        });
        let handle = std::thread::Builder::new()
            .name("dwaar-analytics".into())
            .spawn(move || run(store, rx, settings))
            .map_err(|e| format!("cannot start the analytics thread: {e}"))?;
        if let Ok(mut t) = c.thread.lock() {
            *t = Some(handle);
        }
        Ok(c)
    }

    pub fn db_path(&self) -> &Path {
        &self.db
    }

    pub fn configure(&self, s: Settings) {
        if let Ok(mut g) = self.settings.lock() {
            *g = s;
        }
    }

    /// Queues an event; never blocks.
    pub fn send(&self, e: Event) {
        let sent = match self.tx.lock() {
            Ok(g) => g.as_ref().is_some_and(|tx| match tx.try_send(e) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }),
            Err(_) => false,
        };
        if sent {
            self.accepted.fetch_add(1, Relaxed);
        } else {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Flushes what is queued and stops the thread (at shutdown).
    pub fn shutdown(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// A beacon token for `site`, valid for [`TOKEN_TTL`] seconds from `now`.
    pub fn token(&self, site: &str, now: i64) -> String {
        let exp = now + TOKEN_TTL;
        format!("{exp}.{}", self.mac(site, exp))
    }

    /// Whether `token` was issued by this server for `site` and has not expired.
    pub fn check_token(&self, site: &str, token: &str, now: i64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(exp) = exp.parse::<i64>() else {
            return false;
        };
        if exp < now || exp > now + TOKEN_TTL + 60 {
            return false;
        }
        let want = self.mac(site, exp);
        want.len() == mac.len()
            && want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn mac(&self, site: &str, exp: i64) -> String {
        let mut msg = Vec::with_capacity(site.len() + 9);
        msg.extend_from_slice(site.as_bytes());
        msg.push(0);
        msg.extend_from_slice(&exp.to_be_bytes());
        let tag = ring::hmac::sign(&self.token_key, &msg);
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// How long an injected beacon token stays valid, in seconds.
pub const TOKEN_TTL: i64 = 12 * 3600;

/// The collecting thread: deltas per (site, minute), flushed on a timer.
fn run(mut store: Store, rx: Receiver<Event>, settings: Arc<Mutex<Settings>>) {
    let mut deltas: HashMap<(Arc<str>, i64), Bucket> = HashMap::new();
    let mut salt: Option<(i64, [u8; 32])> = None;
    let mut last_flush = Instant::now();
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        let cfg = settings.lock().map(|s| s.clone()).unwrap_or_default();
        // Woken on a timer, not per event: senders never pay for waking this thread,
        // and one pass folds everything queued since the last.
        std::thread::sleep(TICK);
        let mut stop = false;
        loop {
            match rx.try_recv() {
                Ok(e) => fold(&mut deltas, e, &mut store, &mut salt, &cfg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            }
        }
        if stop || last_flush.elapsed() >= cfg.flush {
            flush(&mut store, &mut deltas);
            last_flush = Instant::now();
        }
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            if let Err(e) = store.prune(now_unix(), cfg.retention_days) {
                tracing::warn!("analytics: pruning old rows failed: {e}");
            }
            last_prune = Instant::now();
        }
        if stop {
            return;
        }
    }
}

fn flush(store: &mut Store, deltas: &mut HashMap<(Arc<str>, i64), Bucket>) {
    if deltas.is_empty() {
        store.republish();
        return;
    }
    let rows: Vec<(&str, i64, &Bucket)> = deltas.iter().map(|((s, m), b)| (&**s, *m, b)).collect();
    match store.add(&rows) {
        Ok(()) => deltas.clear(),
        Err(e) => {
            tracing::warn!("analytics: writing rollups failed (kept for the next try): {e}");
            // Bounded: a store that keeps failing must not grow memory without end.
            if deltas.len() > 10_000 {
                deltas.clear();
            }
        }
    }
}

/// The visitor's hash for today: keyed by a salt that is deleted after the day, so the
/// stored registers cannot be tied back to an address.
fn visitor_hash(salt: &[u8; 32], site: &str, ip: Option<IpAddr>, ua: &str) -> u64 {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(site.as_bytes());
    ctx.update(&[0]);
    match ip {
        Some(IpAddr::V4(a)) => ctx.update(&a.octets()),
        Some(IpAddr::V6(a)) => ctx.update(&a.octets()),
        None => {}
    }
    ctx.update(&[0]);
    ctx.update(ua.as_bytes());
    let tag = ctx.sign();
    let mut b = [0u8; 8];
    b.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(b)
}

fn day_salt(store: &mut Store, cache: &mut Option<(i64, [u8; 32])>, ts: i64) -> Option<[u8; 32]> {
    let day = ts.div_euclid(DAY);
    match cache {
        Some((d, s)) if *d == day => Some(*s),
        _ => match store.salt(day) {
            Ok(s) => {
                *cache = Some((day, s));
                Some(s)
            }
            Err(e) => {
                tracing::warn!("analytics: no visitor salt: {e}");
                None
            }
        },
    }
}

fn fold(
    deltas: &mut HashMap<(Arc<str>, i64), Bucket>,
    e: Event,
    store: &mut Store,
    salt: &mut Option<(i64, [u8; 32])>,
    cfg: &Settings,
) {
    match e {
        Event::Request(r) => {
            let minute = r.ts - r.ts.rem_euclid(MINUTE);
            let salt = match &r.page {
                Some(_) => day_salt(store, salt, r.ts),
                None => None,
            };
            let b = deltas.entry((r.site.clone(), minute)).or_default();
            b.requests += 1;
            b.bytes += r.bytes;
            if (100..600).contains(&r.status) {
                b.status[(r.status / 100 - 1) as usize] += 1;
            }
            b.digest(Metric::LatencyMs)
                .insert(r.latency_us as f64 / 1000.0);
            if let Some(p) = r.page {
                b.views += 1;
                if let Some(s) = salt {
                    b.visitors
                        .insert(visitor_hash(&s, &r.site, p.ip, &p.user_agent));
                }
                b.list(List::Pages).add(&p.path, 1);
                if let Some(rf) = &p.referrer {
                    b.list(List::Referrers).add(rf, 1);
                }
                let (browser, os, device) = agent::classify(&p.user_agent);
                b.list(List::Browsers).add(browser, 1);
                b.list(List::Os).add(os, 1);
                b.list(List::Devices).add(device, 1);
                for (k, v) in utm(&p.query) {
                    b.list(k).add(&v, 1);
                }
                if let (Some(db), Some(ip)) = (&cfg.geoip, p.ip) {
                    if let Some(cc) = db.country(ip) {
                        b.list(List::Countries).add(cc, 1);
                    }
                }
            }
        }
        Event::Beacon(bc) => {
            let bc = *bc;
            let minute = bc.ts - bc.ts.rem_euclid(MINUTE);
            let s = day_salt(store, salt, bc.ts);
            let b = deltas.entry((bc.site.clone(), minute)).or_default();
            b.js_views += bc.weight;
            if let Some(s) = s {
                b.visitors
                    .insert(visitor_hash(&s, &bc.site, Some(bc.ip), &bc.user_agent));
            }
            let d = &bc.beacon;
            // A single-page app's route change is a page view the server never saw.
            if d.soft && !d.path.is_empty() {
                b.list(List::Pages).add(&d.path, bc.weight);
            }
            b.list(List::Screens)
                .add(agent::screen_class(d.width), bc.weight);
            if !d.language.is_empty() {
                b.list(List::Languages).add(&d.language, bc.weight);
            }
            for (m, v) in [
                (Metric::LcpMs, d.lcp),
                (Metric::Cls, d.cls),
                (Metric::InpMs, d.inp),
                (Metric::TimeOnPageS, d.seconds),
            ] {
                if let Some(v) = v {
                    b.digest(m).insert(v);
                }
            }
        }
    }
}

/// `utm_source`, `utm_medium` and `utm_campaign` from a query string.
fn utm(query: &str) -> impl Iterator<Item = (List, String)> + '_ {
    query.split('&').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let list = match k {
            "utm_source" => List::UtmSource,
            "utm_medium" => List::UtmMedium,
            "utm_campaign" => List::UtmCampaign,
            _ => return None,
        };
        let v = percent_decode(v);
        (!v.is_empty()).then_some((list, v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector() -> (tempfile::TempDir, Arc<Collector>) {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start(
            &dir.path().join("analytics.db"),
            Settings {
                flush: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap();
        (dir, c)
    }

    #[test]
    fn tokens_are_bound_to_site_and_time() {
        let (_d, c) = collector();
        let t = c.token("a.test", 1000);
        assert!(c.check_token("a.test", &t, 1000));
        assert!(c.check_token("a.test", &t, 1000 + TOKEN_TTL));
        assert!(!c.check_token("a.test", &t, 1001 + TOKEN_TTL));
        assert!(!c.check_token("b.test", &t, 1000));
        assert!(!c.check_token("a.test", "99999999999.00", 1000));
        assert!(!c.check_token("a.test", "garbage", 1000));
        let forged = format!("{}.{}", 1000 + TOKEN_TTL, "0".repeat(32));
        assert!(!c.check_token("a.test", &forged, 1000));
    }

    #[test]
    fn events_reach_the_store_and_count_visitors_once() {
        let (_d, c) = collector();
        let site: Arc<str> = Arc::from("a.test");
        let now = now_unix();
        for i in 0..10u8 {
            c.send(Event::Request(RequestEvent {
                site: site.clone(),
                ts: now,
                status: 200,
                bytes: 100,
                latency_us: 1500,
                page: Some(Box::new(PageView {
                    path: "/".into(),
                    query: "utm_source=news%20letter&x=1".into(),
                    referrer: Some("ref.example".into()),
                    ip: Some(IpAddr::from([10, 0, 0, i % 2])),
                    user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into(),
                })),
            }));
        }
        c.shutdown();
        let store = Store::open(c.db_path()).unwrap();
        let rows = store.range("a.test", MINUTE, now - 120, now + 120).unwrap();
        let b = &rows[0].1;
        assert_eq!((b.views, b.requests, b.bytes), (10, 10, 1000));
        assert_eq!(b.visitors.estimate(), 2);
        assert_eq!(
            b.lists[List::UtmSource as usize].top(1),
            vec![("news letter", 10)]
        );
        assert_eq!(
            b.lists[List::Browsers as usize].top(1),
            vec![("Firefox", 10)]
        );
        assert_eq!(c.dropped.load(Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (_d, c) = collector();
        c.shutdown();
        c.send(Event::Request(RequestEvent {
            site: Arc::from("x"),
            ts: 0,
            status: 200,
            bytes: 0,
            latency_us: 0,
            page: None,
        }));
        assert_eq!(c.dropped.load(Relaxed), 1);
    }

    #[test]
    fn queued_events_stay_small() {
        // The queue is allocated up front: QUEUE x this.
        assert!(
            std::mem::size_of::<Event>() <= 64,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn decodes_percent_escapes_safely() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("bad%zz%2"), "bad%zz%2");
    }
}
