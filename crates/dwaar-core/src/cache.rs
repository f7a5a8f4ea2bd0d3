//! `cache`: an in-memory HTTP cache with RFC 9111 semantics and bounded memory.
//!
//! - [`on_request`] (the `cache` handler in the pipeline) computes the key (scheme, host
//!   and port always, then the path and query or the configured parts), and answers a
//!   fresh entry as a reply (on either front-end, so hits take the lean path too), a
//!   stale one within `stale-while-revalidate` while another request refreshes it, or
//!   lets the request go to the origin: as the one request fetching that key (others
//!   wait for it, [`Wait`]), with conditional fields when a stored entry can be
//!   revalidated.
//! - [`on_response`] decides from the origin's answer whether and how long it may be
//!   stored (`Cache-Control`, `Expires`, `Vary`, `Authorization` and `Set-Cookie` rules);
//!   the body is collected as it streams ([`Fill`]) and stored at its end. A `304` to a
//!   revalidation refreshes the entry and the client gets the stored body.
//! - [`Store`]: 16 shards of LRU lists; every entry is weighed (body, fields, key and a
//!   fixed overhead) and the least recently used go when a shard passes its share of
//!   `max_size`, so memory stays bounded whatever the number of distinct URLs.

use crate::context::RequestContext;
use crate::matcher::PathPattern;
use crate::pipeline::{Reply, ResponseHead};
use crate::request::HttpRequest;
use bytes::{Bytes, BytesMut};
use compact_str::CompactString;
use dwaar_config::model::CacheConfig;
use dwaar_config::placeholder::Template;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const SHARDS: usize = 16;
/// Bytes counted for an entry besides its body, fields and key (maps, list links).
const OVERHEAD: usize = 160;

/// What happened to a request in the cache (`X-Cache`, the access log, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Stale,
    Bypass,
    Revalidated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Stale => "STALE",
            Status::Bypass => "BYPASS",
            Status::Revalidated => "REVALIDATED",
        }
    }
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    status: u16,
    headers: Vec<(CompactString, String)>,
    body: Bytes,
    stored: SystemTime,
    /// `Age` the response already had when stored.
    initial_age: u64,
    fresh: Duration,
    swr: Duration,
    sie: Duration,
    /// `no-cache` or `must-revalidate`: never served stale, validated when not fresh.
    strict: bool,
    /// The request's values of the fields named by `Vary`.
    vary: Vec<(String, Option<String>)>,
    weight: usize,
}

impl Entry {
    fn age(&self, now: SystemTime) -> u64 {
        self.initial_age
            + now
                .duration_since(self.stored)
                .map(|d| d.as_secs())
                .unwrap_or(0)
    }

    fn state(&self, now: SystemTime) -> Freshness {
        let age = Duration::from_secs(self.age(now));
        if age < self.fresh && !(self.strict && self.fresh.is_zero()) {
            Freshness::Fresh
        } else if self.strict {
            Freshness::MustValidate
        } else if age < self.fresh + self.swr {
            Freshness::StaleUsable
        } else {
            Freshness::MustValidate
        }
    }

    fn field(&self, name: &str) -> Option<&str> {
        ResponseHead::get(&self.headers, name)
    }

    fn vary_matches(&self, req: &dyn HttpRequest) -> bool {
        self.vary.iter().all(|(name, v)| {
            req.header(name).map(normalize_vary) == v.as_deref().map(normalize_vary)
        })
    }
}

fn normalize_vary(v: &str) -> String {
    v.split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase()
}

#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    Fresh,
    StaleUsable,
    MustValidate,
}

/// The variants stored under one primary key.
#[derive(Debug)]
struct Slot {
    host: CompactString,
    path: String,
    variants: Vec<Arc<Entry>>,
}

impl Slot {
    fn weight(&self) -> usize {
        self.variants.iter().map(|e| e.weight).sum()
    }
}

#[derive(Debug)]
struct Shard {
    lru: lru::LruCache<u64, Slot>,
    bytes: usize,
    /// Responses held (variants of every slot), kept as they change: stats never walk
    /// the list.
    entries: usize,
}

/// A bounded in-memory store, shared by the tables that have the same `cache`.
#[derive(Debug)]
pub struct Store {
    shards: Vec<Mutex<Shard>>,
    shard_max: usize,
    pub max_size: u64,
    /// Keys being fetched now; waiting requests watch for the fetcher to finish.
    fetching: Mutex<HashMap<u64, tokio::sync::watch::Receiver<()>>>,
    pub counts: Counts,
}

/// Running totals for metrics and `/cache/stats`.
#[derive(Debug, Default)]
pub struct Counts {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub bypass: AtomicU64,
    pub revalidated: AtomicU64,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        Store {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: lru::LruCache::unbounded(),
                        bytes: 0,
                        entries: 0,
                    })
                })
                .collect(),
            shard_max: (max_size as usize / SHARDS).max(1),
            max_size,
            fetching: Mutex::new(HashMap::new()),
            counts: Counts::default(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(key as usize) % SHARDS]
    }

    fn find(&self, key: u64, req: &dyn HttpRequest) -> Option<Arc<Entry>> {
        let mut s = self.shard(key).lock().ok()?;
        let slot = s.lru.get(&key)?;
        slot.variants.iter().find(|e| e.vary_matches(req)).cloned()
    }

    fn insert(&self, key: u64, host: &str, path: &str, entry: Entry) {
        self.insert_arc(key, host, path, Arc::new(entry));
    }

    fn insert_arc(&self, key: u64, host: &str, path: &str, entry: Arc<Entry>) {
        if entry.weight > self.shard_max {
            return;
        }
        let Ok(mut s) = self.shard(key).lock() else {
            return;
        };
        let mut added = entry.weight;
        match s.lru.get_mut(&key) {
            Some(slot) => {
                // The same variant replaces the old one.
                if let Some(i) = slot.variants.iter().position(|e| e.vary == entry.vary) {
                    let old = std::mem::replace(&mut slot.variants[i], entry);
                    added = added.saturating_sub(old.weight);
                    s.bytes = s.bytes.saturating_sub(old.weight);
                } else {
                    slot.variants.push(entry);
                    s.entries += 1;
                }
            }
            None => {
                s.entries += 1;
                s.lru.put(
                    key,
                    Slot {
                        host: CompactString::new(host),
                        path: path.to_string(),
                        variants: vec![entry],
                    },
                );
            }
        }
        s.bytes += added;
        self.counts.stored.fetch_add(1, Relaxed);
        while s.bytes > self.shard_max {
            match s.lru.pop_lru() {
                Some((_, slot)) => {
                    s.bytes = s.bytes.saturating_sub(slot.weight());
                    s.entries = s.entries.saturating_sub(slot.variants.len());
                    self.counts.evicted.fetch_add(1, Relaxed);
                }
                None => break,
            }
        }
    }

    /// Entries and bytes held now.
    pub fn size(&self) -> (u64, u64) {
        let mut n = 0;
        let mut b = 0;
        for s in &self.shards {
            if let Ok(s) = s.lock() {
                n += s.entries as u64;
                b += s.bytes as u64;
            }
        }
        (n, b)
    }

    /// Removes entries: all, or those of `host` (any, if `None`) whose path is `path`
    /// exactly or starts with `prefix`. Returns how many responses were removed.
    pub fn purge(&self, host: Option<&str>, path: Option<&str>, prefix: Option<&str>) -> u64 {
        let mut removed = 0;
        for s in &self.shards {
            let Ok(mut s) = s.lock() else { continue };
            let doomed: Vec<u64> = s
                .lru
                .iter()
                .filter(|(_, slot)| {
                    host.is_none_or(|h| slot.host.eq_ignore_ascii_case(h))
                        && path.is_none_or(|p| slot.path == p)
                        && prefix.is_none_or(|p| slot.path.starts_with(p))
                })
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                if let Some(slot) = s.lru.pop(&k) {
                    s.bytes = s.bytes.saturating_sub(slot.weight());
                    removed += slot.variants.len() as u64;
                    s.entries = s.entries.saturating_sub(slot.variants.len());
                }
            }
        }
        removed
    }

    /// Becomes the request fetching `key`, or learns whom to wait for.
    fn claim(self: &Arc<Self>, key: u64) -> Claim {
        let Ok(mut m) = self.fetching.lock() else {
            return Claim::Leader(None);
        };
        if let Some(rx) = m.get(&key) {
            return Claim::Wait(Wait(rx.clone()));
        }
        let (tx, rx) = tokio::sync::watch::channel(());
        m.insert(key, rx);
        Claim::Leader(Some(FetchGuard {
            store: self.clone(),
            key,
            _done: tx,
        }))
    }
}

enum Claim {
    Leader(Option<FetchGuard>),
    Wait(Wait),
}

/// Held by the request fetching a key; dropping it wakes the waiting requests.
#[derive(Debug)]
pub struct FetchGuard {
    store: Arc<Store>,
    key: u64,
    /// Dropped with the guard: every waiting request's `changed()` then returns.
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.store.fetching.lock() {
            m.remove(&self.key);
        }
    }
}

/// A request waiting for another one to fetch the same key (woken when the fetcher's
/// guard is dropped, however that request ended).
#[derive(Debug, Clone)]
pub struct Wait(tokio::sync::watch::Receiver<()>);

impl Wait {
    /// Waits until the fetch ends or `timeout` passes.
    pub async fn wait(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.changed()).await;
    }
}

/// The compiled `cache` directive.
#[derive(Debug)]
pub struct CacheRule {
    pub store: Arc<Store>,
    paths: Vec<PathPattern>,
    key: Vec<Template>,
    get: bool,
    head: bool,
    bypass: Vec<String>,
    pub status_header: Option<String>,
    ttl: Duration,
    swr: Duration,
    sie: Duration,
    max_item: u64,
    pub lock_timeout: Duration,
}

impl CacheRule {
    pub fn compile(c: &CacheConfig, store: Arc<Store>) -> CacheRule {
        CacheRule {
            store,
            paths: c.match_path.iter().map(|p| PathPattern::new(p)).collect(),
            key: c.key.clone(),
            get: c.methods.iter().any(|m| m == "GET"),
            head: c.methods.iter().any(|m| m == "HEAD"),
            bypass: c.bypass_headers.clone(),
            status_header: c.status_header.clone(),
            ttl: Duration::from_millis(c.ttl_ms),
            swr: Duration::from_millis(c.stale_while_revalidate_ms),
            sie: Duration::from_millis(c.stale_if_error_ms),
            max_item: c.max_item_size,
            lock_timeout: Duration::from_millis(c.lock_timeout_ms),
        }
    }
}

/// What a request carries through the cache to the response.
#[derive(Debug)]
pub struct CacheCtx {
    pub rule: Arc<CacheRule>,
    key: u64,
    host: CompactString,
    path: String,
    /// The request's values of every field it has (for Vary), kept lowercase.
    req_fields: Vec<(String, String)>,
    authorized: bool,
    /// `no-store` in the request: nothing is stored.
    no_store: bool,
    pub status: Status,
    /// The entry being revalidated (conditional fields were added upstream).
    pub stale: Option<Arc<Entry>>,
    /// Conditional fields to add to the upstream request.
    pub conditional: Vec<(&'static str, String)>,
    guard: Option<FetchGuard>,
    pub fill: Option<Fill>,
    /// Set when a `304` refreshed the entry (the front-end sends it as a reply).
    revalidated: Option<Arc<Entry>>,
}

fn cc_has(v: Option<&str>, directive: &str) -> bool {
    v.is_some_and(|v| {
        v.split(',').any(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case(directive)
                || t.split_once('=')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(directive))
        })
    })
}

fn cc_secs(v: Option<&str>, directive: &str) -> Option<u64> {
    v?.split(',').find_map(|t| {
        let (k, val) = t.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(directive)
            .then(|| val.trim().trim_matches('"').parse().ok())?
    })
}

/// What the pipeline does after `cache` looked at a request.
pub enum Decision {
    /// Answer with this (a hit).
    Reply(Reply),
    /// Wait for the request fetching this key, then run the pipeline again.
    Wait(Wait, Duration),
    /// Go on to the origin (`ctx.cache` says how).
    Continue,
}

/// The `cache` handler.
pub fn on_request(
    rule: &Arc<CacheRule>,
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
    waited: bool,
) -> Decision {
    let method = req.method();
    let methods_ok = (method == "GET" && rule.get) || (method == "HEAD" && rule.head);
    let path = req.path();
    if !methods_ok
        || (!rule.paths.is_empty()
            && !rule
                .paths
                .iter()
                .any(|p| p.matches(&path.to_ascii_lowercase())))
    {
        return Decision::Continue;
    }
    if rule.bypass.iter().any(|h| req.header(h).is_some()) {
        // Counted when the origin answers, like misses.
        ctx.cache = Some(Box::new(CacheCtx::new(rule, 0, "", "", Status::Bypass)));
        return Decision::Continue;
    }
    let rcc = req.header("cache-control");
    // Scheme, host and port always; then the path and query, or the configured parts.
    let key = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ctx.scheme(), ctx.host.as_str(), ctx.conn.local_port).hash(&mut h);
        if rule.key.is_empty() {
            (path, req.query().unwrap_or("")).hash(&mut h);
        } else {
            for t in &rule.key {
                crate::template::render(t, req, ctx).hash(&mut h);
            }
        }
        h.finish()
    };
    // The client insists on a fresh answer: no stored one is used (it may be replaced).
    let client_no_cache = cc_has(rcc, "no-cache")
        || (rcc.is_none() && req.header("pragma").is_some_and(|p| p.contains("no-cache")));
    let now = SystemTime::now();
    let found = if client_no_cache {
        None
    } else {
        rule.store.find(key, req)
    };
    let mut guard = None;
    let mut stale = None;
    if let Some(e) = found {
        match e.state(now) {
            Freshness::Fresh => {
                rule.store.counts.hits.fetch_add(1, Relaxed);
                ctx.log.cache_served = Some(Status::Hit);
                return Decision::Reply(hit_reply(&e, rule, Status::Hit, now));
            }
            Freshness::StaleUsable => {
                // Someone else refreshes it: serve stale. Else this request refreshes.
                match rule.store.claim(key) {
                    Claim::Wait(_) => {
                        rule.store.counts.stale.fetch_add(1, Relaxed);
                        ctx.log.cache_served = Some(Status::Stale);
                        return Decision::Reply(hit_reply(&e, rule, Status::Stale, now));
                    }
                    Claim::Leader(g) => guard = g,
                }
            }
            Freshness::MustValidate => {}
        }
        stale = Some(e);
    }
    if guard.is_none() && !waited {
        match rule.store.claim(key) {
            Claim::Leader(g) => guard = g,
            Claim::Wait(w) => return Decision::Wait(w, rule.lock_timeout),
        }
    }
    // Going to the origin. Misses are counted when it answers (a request the lean path
    // hands to Pingora runs the pipeline twice).
    let mut c = CacheCtx::new(rule, key, &ctx.host, path, Status::Miss);
    c.authorized = req.header("authorization").is_some();
    c.no_store = cc_has(rcc, "no-store");
    c.conditional = stale
        .as_ref()
        .map(|e| validators(e, req))
        .unwrap_or_default();
    c.stale = stale;
    c.guard = guard;
    c.req_fields = req_fields(req);
    ctx.cache = Some(Box::new(c));
    Decision::Continue
}

fn req_fields(req: &dyn HttpRequest) -> Vec<(String, String)> {
    [
        "accept-encoding",
        "accept",
        "accept-language",
        "origin",
        "user-agent",
        "cookie",
    ]
    .iter()
    .filter_map(|n| req.header(n).map(|v| (n.to_string(), v.to_string())))
    .collect()
}

impl CacheCtx {
    fn new(rule: &Arc<CacheRule>, key: u64, host: &str, path: &str, status: Status) -> CacheCtx {
        CacheCtx {
            rule: rule.clone(),
            key,
            host: CompactString::new(host),
            path: path.to_string(),
            req_fields: Vec::new(),
            authorized: false,
            no_store: false,
            status,
            stale: None,
            conditional: Vec::new(),
            guard: None,
            fill: None,
            revalidated: None,
        }
    }
}

/// Conditional fields to revalidate `e`, unless the client sent its own.
fn validators(e: &Entry, req: &dyn HttpRequest) -> Vec<(&'static str, String)> {
    if req.header("if-none-match").is_some() || req.header("if-modified-since").is_some() {
        return Vec::new();
    }
    let mut v = Vec::new();
    if let Some(etag) = e.field("etag") {
        v.push(("if-none-match", etag.to_string()));
    }
    if let Some(lm) = e.field("last-modified") {
        v.push(("if-modified-since", lm.to_string()));
    }
    v
}

/// A stored response as a reply (HEAD gets the same fields; the front-end sends no body).
fn hit_reply(e: &Entry, rule: &CacheRule, status: Status, now: SystemTime) -> Reply {
    let mut r = Reply::status(e.status);
    r.headers = e.headers.clone();
    ResponseHead::set(&mut r.headers, "age", &e.age(now).to_string());
    if let Some(h) = &rule.status_header {
        ResponseHead::set(&mut r.headers, h, status.as_str());
    }
    r.body = e.body.clone();
    r
}

/// The reply for a request whose stored entry the origin just confirmed (`304`).
pub fn revalidated_reply(ctx: &mut RequestContext) -> Option<Reply> {
    let c = ctx.cache.as_mut()?;
    let e = c.revalidated.take()?;
    Some(hit_reply(
        &e,
        &c.rule,
        Status::Revalidated,
        SystemTime::now(),
    ))
}

/// Whether a stored entry may stand in for a failed origin (`stale-if-error`).
pub fn stale_usable_for_error(ctx: &RequestContext) -> bool {
    let Some(c) = ctx.cache.as_ref() else {
        return false;
    };
    let Some(e) = c.stale.as_ref() else {
        return false;
    };
    let age = Duration::from_secs(e.age(SystemTime::now()));
    !e.strict && age < e.fresh + e.sie.max(c.rule.sie)
}

/// A `stale-if-error` answer for a request whose origin failed (could not be reached,
/// or answered 5xx), if the entry allows.
pub fn stale_for_error(ctx: &mut RequestContext) -> Option<Reply> {
    if !stale_usable_for_error(ctx) {
        return None;
    }
    let c = ctx.cache.as_mut()?;
    let e = c.stale.clone()?;
    let now = SystemTime::now();
    c.rule.store.counts.stale.fetch_add(1, Relaxed);
    c.status = Status::Stale;
    c.guard.take();
    Some(hit_reply(&e, &c.rule, Status::Stale, now))
}

/// Fields never stored with a response.
fn unstored(name: &str) -> bool {
    crate::request::hop_by_hop(name.as_bytes())
        || name.eq_ignore_ascii_case("age")
        || name.eq_ignore_ascii_case("x-request-id")
        || name.eq_ignore_ascii_case("set-cookie")
}

/// A response body being collected for the store.
#[derive(Debug)]
pub struct Fill {
    entry: Option<Entry>,
    body: BytesMut,
    limit: u64,
}

impl Fill {
    /// Adds a chunk; gives up (stores nothing) past the size limit.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.entry.is_some() {
            if (self.body.len() + chunk.len()) as u64 > self.limit {
                self.entry = None;
                self.body = BytesMut::new();
            } else {
                self.body.extend_from_slice(chunk);
            }
        }
    }
}

/// At the origin's response head (after `header_down`, before the site's `header`
/// edits): a `304` to our revalidation refreshes the entry and returns `true` (the
/// front-end then answers with [`revalidated_reply`] instead); a storable answer starts
/// a [`Fill`]. Adds the status header.
pub fn on_response(
    ctx: &mut RequestContext,
    status: u16,
    head: &mut dyn ResponseHead,
    head_request: bool,
) -> bool {
    let Some(c) = ctx.cache.as_mut() else {
        return false;
    };
    let rule = c.rule.clone();
    if c.status == Status::Bypass {
        rule.store.counts.bypass.fetch_add(1, Relaxed);
        if let Some(h) = &rule.status_header {
            head.set(h, Status::Bypass.as_str());
        }
        return false;
    }
    let now = SystemTime::now();
    if status == 304 && !c.conditional.is_empty() {
        if let Some(old) = c.stale.take() {
            // Refreshed: the stored fields updated by the 304's, the stored body.
            let mut fields = old.headers.clone();
            for name in [
                "cache-control",
                "expires",
                "date",
                "etag",
                "last-modified",
                "vary",
            ] {
                if let Some(v) = head.get(name) {
                    ResponseHead::set(&mut fields, name, v);
                }
            }
            c.status = Status::Revalidated;
            rule.store.counts.revalidated.fetch_add(1, Relaxed);
            let refreshed =
                entry_from(&rule, old.status, &fields, &c.req_fields, c.authorized, now).map(
                    |mut e| {
                        e.body = old.body.clone();
                        e.weight += e.body.len() + c.path.len() + c.host.len();
                        e
                    },
                );
            let reply_from = match refreshed {
                Some(e) => {
                    let e = Arc::new(e);
                    rule.store.insert_arc(c.key, &c.host, &c.path, e.clone());
                    e
                }
                None => old,
            };
            c.guard.take();
            c.revalidated = Some(reply_from);
            return true;
        }
    }
    rule.store.counts.misses.fetch_add(1, Relaxed);
    if let Some(h) = &rule.status_header {
        head.set(h, c.status.as_str());
    }
    if c.no_store || head_request {
        return false;
    }
    let fields: Vec<(CompactString, String)> = ResponseHead::fields(head);
    if let Some(len) = head
        .get("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > rule.max_item {
            return false;
        }
    }
    if let Some(e) = entry_from(&rule, status, &fields, &c.req_fields, c.authorized, now) {
        c.fill = Some(Fill {
            entry: Some(e),
            body: BytesMut::new(),
            limit: rule.max_item,
        });
    }
    false
}

/// The entry for a response, when RFC 9111 allows storing it.
fn entry_from(
    rule: &CacheRule,
    status: u16,
    fields: &[(CompactString, String)],
    req_fields: &[(String, String)],
    authorized: bool,
    now: SystemTime,
) -> Option<Entry> {
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let cc = get("cache-control");
    let cc = cc.as_deref();
    if cc_has(cc, "no-store") || cc_has(cc, "private") {
        return None;
    }
    if fields
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
    {
        return None;
    }
    let vary_names: Vec<String> = get("vary")
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if vary_names.iter().any(|v| v == "*") {
        return None;
    }
    // A request with credentials is shared only when the response says it may be.
    if authorized
        && !(cc_has(cc, "public") || cc_has(cc, "s-maxage") || cc_has(cc, "must-revalidate"))
    {
        return None;
    }
    let explicit = cc_secs(cc, "s-maxage")
        .or_else(|| cc_secs(cc, "max-age"))
        .map(Duration::from_secs)
        .or_else(|| {
            let expires = httpdate::parse_http_date(&get("expires")?).ok();
            let date = get("date")
                .and_then(|d| httpdate::parse_http_date(&d).ok())
                .unwrap_or(now);
            Some(
                expires
                    .and_then(|e| e.duration_since(date).ok())
                    .unwrap_or_default(),
            )
        });
    let heuristic = matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    );
    let strict =
        cc_has(cc, "no-cache") || cc_has(cc, "must-revalidate") || cc_has(cc, "proxy-revalidate");
    let fresh = match explicit {
        Some(f) => f,
        None if heuristic => rule.ttl,
        None => return None,
    };
    let has_validator = get("etag").is_some() || get("last-modified").is_some();
    if fresh.is_zero() && !(strict && has_validator) {
        return None;
    }
    let fresh = if cc_has(cc, "no-cache") {
        Duration::ZERO
    } else {
        fresh
    };
    let headers: Vec<(CompactString, String)> = fields
        .iter()
        .filter(|(k, _)| !unstored(k) && !k.eq_ignore_ascii_case("content-length"))
        .cloned()
        .collect();
    let vary = vary_names
        .into_iter()
        .map(|n| {
            let v = req_fields
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone());
            (n, v)
        })
        .collect();
    let weight = OVERHEAD
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>();
    Some(Entry {
        status,
        headers,
        body: Bytes::new(),
        stored: now,
        initial_age: get("age").and_then(|a| a.trim().parse().ok()).unwrap_or(0),
        fresh,
        swr: cc_secs(cc, "stale-while-revalidate")
            .map(Duration::from_secs)
            .unwrap_or(rule.swr),
        sie: cc_secs(cc, "stale-if-error")
            .map(Duration::from_secs)
            .unwrap_or(rule.sie),
        strict,
        vary,
        weight,
    })
}

/// At the end of a response: stores what was collected (a complete body only).
pub fn finish(ctx: &mut RequestContext, complete: bool) {
    let Some(c) = ctx.cache.as_mut() else { return };
    if let (Some(mut fill), true) = (c.fill.take(), complete) {
        if let Some(mut e) = fill.entry.take() {
            e.body = fill.body.freeze();
            e.weight += e.body.len() + c.path.len() + c.host.len();
            c.rule.store.insert(c.key, &c.host, &c.path, e);
        }
    }
    // Waiting requests look again now.
    c.guard.take();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize) -> Entry {
        Entry {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; body]),
            stored: SystemTime::now(),
            initial_age: 0,
            fresh: Duration::from_secs(60),
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            strict: false,
            vary: Vec::new(),
            weight: body + OVERHEAD,
        }
    }

    #[test]
    fn memory_stays_bounded_with_a_million_keys() {
        let store = Store::new(4 * 1024 * 1024);
        for i in 0..1_000_000u64 {
            store.insert(dwaar_analytics::hll::mix64(i), "h", "/p", entry(100));
        }
        let (n, bytes) = store.size();
        assert!(bytes <= 4 * 1024 * 1024, "{bytes}");
        assert!(n > 10_000 && n < 20_000, "{n}");
        assert!(store.counts.evicted.load(Relaxed) > 900_000);
    }

    #[test]
    fn purge_exact_prefix_and_all() {
        let store = Store::new(1 << 20);
        store.insert(1, "a.test", "/x/1", entry(10));
        store.insert(2, "a.test", "/x/2", entry(10));
        store.insert(3, "b.test", "/x/1", entry(10));
        assert_eq!(store.purge(Some("a.test"), Some("/x/1"), None), 1);
        assert_eq!(store.purge(None, None, Some("/x/")), 2);
        store.insert(4, "a.test", "/y", entry(10));
        assert_eq!(store.purge(None, None, None), 1);
        assert_eq!(store.size(), (0, 0));
    }

    #[test]
    fn cache_control_parsing() {
        assert!(cc_has(Some("public, max-age=60"), "max-age"));
        assert_eq!(cc_secs(Some("public, max-age=60"), "max-age"), Some(60));
        assert_eq!(cc_secs(Some("s-maxage=\"5\""), "s-maxage"), Some(5));
        assert!(!cc_has(Some("no-storex"), "no-store"));
    }
}
