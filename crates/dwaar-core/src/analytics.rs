//! Analytics on the request path: the glue between the pipeline and `dwaar-analytics`.
//!
//! - Requests: a site with `analytics` answers `/_dwaar/a.js` (the script, from memory)
//!   and `/_dwaar/collect` (beacons) before its routes, and its `dashboard` path after
//!   its routes' middleware (so the site's `basic_auth` and `ip_filter` protect it).
//! - Responses: [`begin_page`] decides whether a response is a page view and whether
//!   the script goes in; `dwaar-analytics`' injector then rewrites the body as it
//!   streams (decoding and re-encoding gzip, deflate, br or zstd as the origin sent it),
//!   through the same [`crate::rewrite::Rewrite`] as `encode`, for proxied responses and for
//!   replies Dwaar builds itself (files, `respond`).
//! - Every finished request of such a site becomes one event ([`record`]), handed to the
//!   process's collector over its bounded channel (never blocking).

use crate::compress::Coding;
use crate::context::RequestContext;
use crate::matcher::PathPattern;
use crate::pipeline::{Outcome, Reply, ResponseHead};
use crate::request::HttpRequest;
use crate::rewrite::Rewrite;
use bytes::Bytes;
use compact_str::CompactString;
use dwaar_analytics::collector::{now_unix, BeaconEvent, PageView, RequestEvent};
use dwaar_analytics::{inject, script, Collector, Event};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const SCRIPT_PATH: &str = "/_dwaar/a.js";
pub const COLLECT_PATH: &str = "/_dwaar/collect";

/// A site's compiled `analytics` settings.
#[derive(Debug)]
pub struct SiteAnalytics {
    /// The name the site's numbers are kept under (its first address).
    pub site: Arc<str>,
    exclude: Vec<PathPattern>,
    respect_dnt: bool,
    sample_permille: u16,
    pub dashboard: Option<String>,
    /// The rollup database.
    pub db: PathBuf,
    /// `None` in a process that serves no requests.
    pub collector: Option<Arc<Collector>>,
}

impl SiteAnalytics {
    pub fn new(
        site: &str,
        cfg: &dwaar_config::model::SiteAnalytics,
        db: PathBuf,
        collector: Option<Arc<Collector>>,
    ) -> SiteAnalytics {
        SiteAnalytics {
            site: Arc::from(site),
            exclude: cfg
                .exclude_paths
                .iter()
                .map(|p| PathPattern::new(p))
                .collect(),
            respect_dnt: cfg.respect_dnt,
            sample_permille: cfg.sample_permille.clamp(1, 1000),
            dashboard: cfg.dashboard.clone(),
            db,
            collector,
        }
    }
}

/// What a page-view candidate request looked like (kept until its response is known).
#[derive(Debug, Default)]
pub struct PageFacts {
    path: CompactString,
    query: CompactString,
    referrer: Option<CompactString>,
    user_agent: CompactString,
    /// Set once the response turned out to be an HTML page.
    pub counted: bool,
}

/// Work a front-end finishes off the pipeline: read the (small) body, then [`answer`].
#[derive(Debug)]
pub enum Internal {
    Beacon(Box<BeaconRequest>),
    Report {
        db: PathBuf,
        site: String,
        query: String,
        csv: bool,
    },
    Sites {
        db: PathBuf,
        sites: Vec<String>,
    },
}

impl Internal {
    /// Largest body the front-end reads for this request (more is refused with 413).
    pub fn body_limit(&self) -> usize {
        match self {
            Internal::Beacon(_) => dwaar_analytics::beacon::MAX_BODY,
            _ => 0,
        }
    }
}

#[derive(Debug)]
pub struct BeaconRequest {
    analytics: Arc<SiteAnalytics>,
    content_type: Option<String>,
    origin_host: Option<String>,
    host: String,
    user_agent: CompactString,
    ip: IpAddr,
}

fn lower_path(req: &dyn HttpRequest) -> String {
    req.path().to_ascii_lowercase()
}

fn header_is_one(req: &dyn HttpRequest, name: &str) -> bool {
    req.header(name).is_some_and(|v| v.trim() == "1")
}

/// Before the site's routes: the script, the beacon endpoint, and noting page-view
/// candidates. `Some` answers the request.
pub(crate) fn early(
    a: &Arc<SiteAnalytics>,
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Option<Outcome> {
    let path = req.path();
    if path == SCRIPT_PATH {
        return Some(Outcome::Reply(script_reply(req)));
    }
    if path == COLLECT_PATH {
        if req.method() != "POST" {
            return Some(Outcome::Reply(method_not_allowed("POST")));
        }
        if beacon_zone()
            .check_uncounted(&compact_str::ToCompactString::to_compact_string(
                &ctx.client_ip(),
            ))
            .is_err()
        {
            if let Some(c) = &a.collector {
                c.beacons_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Some(Outcome::Reply(Reply::status(429)));
        }
        let origin_host = req
            .header("origin")
            .or_else(|| req.header("referer"))
            .and_then(dwaar_analytics::beacon::url_host)
            .map(str::to_ascii_lowercase);
        return Some(Outcome::Internal(Internal::Beacon(Box::new(
            BeaconRequest {
                analytics: a.clone(),
                content_type: req.header("content-type").map(str::to_string),
                origin_host,
                host: ctx.host.to_string(),
                user_agent: CompactString::new(req.header("user-agent").unwrap_or("")),
                ip: ctx.client_ip(),
            },
        ))));
    }
    // A page view is a GET of an HTML page; the response decides the rest. Paths that
    // name a static asset are never pages (they stay on the lean path).
    let ua = req.header("user-agent");
    // A page view needs a browser: no User-Agent is a tool, not a visitor.
    let candidate = req.method() == "GET"
        && ua.is_some_and(|u| !u.is_empty())
        && !is_asset(path)
        && a.collector.is_some()
        && !(a.respect_dnt && (header_is_one(req, "dnt") || header_is_one(req, "sec-gpc")))
        && !crate::security::is_bot(ua)
        && !a.exclude.iter().any(|p| p.matches(&lower_path(req)));
    if candidate {
        let referrer = req
            .header("referer")
            .and_then(dwaar_analytics::beacon::url_host)
            .filter(|h| !h.eq_ignore_ascii_case(&ctx.host))
            .map(CompactString::new);
        ctx.resp.page = Some(Box::new(PageFacts {
            path: CompactString::new(req.path()),
            query: CompactString::new(req.query().unwrap_or("")),
            referrer,
            user_agent: CompactString::new(ua.unwrap_or("")),
            counted: false,
        }));
    }
    None
}

/// Whether the path ends in an extension that is never an HTML page.
fn is_asset(path: &str) -> bool {
    const EXT: &[&str] = &[
        "css", "js", "mjs", "map", "json", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg",
        "ico", "woff", "woff2", "ttf", "otf", "mp4", "webm", "mp3", "wasm", "txt", "xml", "pdf",
        "zip", "gz",
    ];
    let last = path.rsplit('/').next().unwrap_or("");
    last.rsplit_once('.')
        .is_some_and(|(_, ext)| EXT.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

fn beacon_zone() -> &'static crate::security::Zone {
    static Z: std::sync::OnceLock<crate::security::Zone> = std::sync::OnceLock::new();
    // 60 beacons a minute per client address is far above any real visitor.
    Z.get_or_init(|| crate::security::Zone::new(60, 60_000, 0))
}

fn method_not_allowed(allow: &str) -> Reply {
    let mut r = Reply::status(405);
    r.headers.push(("allow".into(), allow.into()));
    r
}

fn script_reply(req: &dyn HttpRequest) -> Reply {
    if req.method() != "GET" && req.method() != "HEAD" {
        return method_not_allowed("GET, HEAD");
    }
    let etag = script::script_etag();
    let mut r = Reply::status(200);
    r.headers.extend([
        (
            "content-type".into(),
            "text/javascript; charset=utf-8".into(),
        ),
        ("cache-control".into(), "public, max-age=86400".into()),
        ("etag".into(), etag.to_string()),
        ("x-content-type-options".into(), "nosniff".into()),
    ]);
    if req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        r.status = 304;
        return r;
    }
    r.body = Bytes::from_static(script::SCRIPT.as_bytes());
    r
}

/// After the site's routes: the site's own dashboard, when the request is for it and no
/// middleware refused it. `Some` answers the request.
pub(crate) fn dashboard(
    a: &SiteAnalytics,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
) -> Option<Outcome> {
    let base = a.dashboard.as_deref()?;
    if ctx.log.rejected_by.is_some() {
        return None;
    }
    let path = req.path();
    let rest = path.strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    if req.method() != "GET" && req.method() != "HEAD" {
        return Some(Outcome::Reply(method_not_allowed("GET, HEAD")));
    }
    let site = a.site.to_string();
    if rest.is_empty() || rest == "/" {
        return Some(Outcome::Reply(dashboard_page(
            &format!("{base}/api"),
            Some(&site),
        )));
    }
    let api = rest.strip_prefix("/api/")?;
    if api == "sites" {
        return Some(Outcome::Internal(Internal::Sites {
            db: a.db.clone(),
            sites: vec![site],
        }));
    }
    let (name, csv) = match api.strip_suffix("/export.csv") {
        Some(n) => (n, true),
        None => (api, false),
    };
    if percent_decode(name) != site {
        return Some(Outcome::Reply(Reply::status(404)));
    }
    Some(Outcome::Internal(Internal::Report {
        db: a.db.clone(),
        site,
        query: req.query().unwrap_or("").to_string(),
        csv,
    }))
}

/// Decodes `%XX` escapes (site names in API paths).
pub fn percent_decode(s: &str) -> String {
    crate::files::decode_path(s)
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| s.to_string())
}

/// The dashboard HTML for the API under `api`.
pub fn dashboard_page(api: &str, site: Option<&str>) -> Reply {
    let mut r = Reply::status(200);
    r.headers.extend([
        ("content-type".into(), "text/html; charset=utf-8".into()),
        ("cache-control".into(), "no-store".into()),
        (
            "content-security-policy".into(),
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:".into(),
        ),
        ("x-content-type-options".into(), "nosniff".into()),
    ]);
    r.body = Bytes::from(script::dashboard(api, site));
    r
}

fn json_reply(status: u16, v: &serde_json::Value) -> Reply {
    let mut r = Reply::status(status);
    r.headers.extend([
        ("content-type".into(), "application/json".into()),
        ("cache-control".into(), "no-store".into()),
    ]);
    r.body = Bytes::from(v.to_string());
    r
}

/// Answers an [`Internal`] request once its body (at most `body_limit`) was read.
pub async fn answer(i: Internal, body: Bytes) -> Reply {
    match i {
        Internal::Beacon(b) => beacon(*b, &body),
        Internal::Report {
            db,
            site,
            query,
            csv,
        } => {
            let now = now_unix();
            let range = match dwaar_analytics::query::Range::parse(&query, now) {
                Ok(r) => r,
                Err(e) => return json_reply(400, &serde_json::json!({ "error": e })),
            };
            let out = tokio::task::spawn_blocking(move || {
                let store = dwaar_analytics::store::Store::open(&db)?;
                if csv {
                    dwaar_analytics::query::csv(&store, &site, range).map(|c| (c, true))
                } else {
                    dwaar_analytics::query::report(&store, &site, range, now)
                        .map(|v| (v.to_string(), false))
                }
            })
            .await;
            match out {
                Ok(Ok((text, is_csv))) => {
                    let mut r = Reply::status(200);
                    let ct = if is_csv {
                        "text/csv; charset=utf-8"
                    } else {
                        "application/json"
                    };
                    r.headers.extend([
                        ("content-type".into(), ct.into()),
                        ("cache-control".into(), "no-store".into()),
                    ]);
                    r.body = Bytes::from(text);
                    r
                }
                Ok(Err(e)) => json_reply(500, &serde_json::json!({ "error": e })),
                Err(_) => Reply::status(500),
            }
        }
        Internal::Sites { db, sites } => {
            let now = now_unix();
            let out = tokio::task::spawn_blocking(move || {
                let store = dwaar_analytics::store::Store::open(&db)?;
                let mut v = dwaar_analytics::query::sites(&store, &sites, now)?;
                // A site's own dashboard lists only that site.
                if let Some(list) = v["sites"].as_array_mut() {
                    list.retain(|s| sites.iter().any(|n| s["site"] == n.as_str()));
                }
                Ok::<_, String>(v)
            })
            .await;
            match out {
                Ok(Ok(v)) => json_reply(200, &v),
                Ok(Err(e)) => json_reply(500, &serde_json::json!({ "error": e })),
                Err(_) => Reply::status(500),
            }
        }
    }
}

fn beacon(b: BeaconRequest, body: &[u8]) -> Reply {
    let a = &b.analytics;
    let Some(c) = &a.collector else {
        return Reply::status(503);
    };
    let refuse = |status: u16| {
        c.beacons_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Reply::status(status)
    };
    let parsed = match dwaar_analytics::beacon::parse(
        b.content_type.as_deref(),
        b.origin_host.as_deref(),
        &b.host,
        body,
    ) {
        Ok(p) => p,
        Err(e) => return refuse(e.status()),
    };
    let now = now_unix();
    if !c.check_token(&a.site, &parsed.token, now) {
        return refuse(403);
    }
    c.send(Event::Beacon(Box::new(BeaconEvent {
        site: a.site.clone(),
        ts: now,
        ip: b.ip,
        user_agent: b.user_agent,
        beacon: parsed,
        weight: (1000 / a.sample_permille as u64).max(1),
    })));
    Reply::status(204)
}

/// At the response head: counts a page view and, when the page gets the script, edits
/// the head (Content-Length, ETag, Content-Security-Policy) and returns the body
/// rewriter.
pub fn begin_page(
    a: &SiteAnalytics,
    page: &mut PageFacts,
    status: u16,
    head: &mut dyn ResponseHead,
) -> Option<Rewrite> {
    let collector = a.collector.as_ref()?;
    let html = head.get("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
    });
    if !(200..300).contains(&status) || status == 204 || status == 206 || !html {
        return None;
    }
    page.counted = true;
    if head.get("cache-control").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
    }) {
        return None;
    }
    let coding = Coding::from_content_encoding(head.get("content-encoding")).ok()?;
    if a.sample_permille < 1000 && rand::random::<u16>() % 1000 >= a.sample_permille {
        return None;
    }
    // The page's policy must let the script run and the beacon go out.
    let mut nonce = None;
    let mut integrity = false;
    if let Some(csp) = head.get("content-security-policy").map(str::to_string) {
        let fit = inject::fit_csp(&csp, script::script_hash());
        nonce = fit.nonce;
        integrity = fit.integrity;
        if let Some(v) = fit.rewritten {
            head.set("content-security-policy", &v);
        }
    }
    let token = collector.token(&a.site, now_unix());
    let tag = inject::script_tag(
        &token,
        nonce.as_deref(),
        integrity.then(script::script_hash),
        a.respect_dnt,
    );
    let added = tag.len() as u64;
    let rewrite = Rewrite::inject(inject::Injector::new(tag), coding).ok()?;
    match (
        coding,
        head.get("content-length").map(|v| v.trim().parse::<u64>()),
    ) {
        (None, Some(Ok(n))) => head.set("content-length", &(n + added).to_string()),
        (_, Some(_)) => head.remove("content-length"),
        _ => {}
    }
    // The bytes changed: a strong validator would now lie.
    if let Some(etag) = head.get("etag").map(str::to_string) {
        if !etag.starts_with("W/") {
            head.set("etag", &format!("W/{etag}"));
        }
    }
    Some(rewrite)
}

/// Hands a finished request of an analytics site to the collector.
pub fn record(ctx: &RequestContext, status: u16, bytes_written: u64) {
    let Some(a) = ctx.site.as_ref().and_then(|s| s.analytics.as_ref()) else {
        return;
    };
    let Some(c) = &a.collector else { return };
    let page = ctx.resp.page.as_ref().filter(|p| p.counted).map(|p| {
        Box::new(PageView {
            path: p.path.clone(),
            query: p.query.clone(),
            referrer: p.referrer.clone(),
            ip: Some(ctx.client_ip()),
            user_agent: p.user_agent.clone(),
        })
    });
    c.send(Event::Request(RequestEvent {
        site: a.site.clone(),
        ts: now_unix(),
        status,
        bytes: bytes_written,
        latency_us: ctx
            .start
            .map(|s| s.elapsed().as_micros() as u64)
            .unwrap_or(0),
        page,
    }));
}
