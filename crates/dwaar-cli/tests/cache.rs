// `cache` end to end against a counting origin: hits, misses, stale answers,
// revalidation, Vary, no-store and private, Set-Cookie, a stampede, stale-if-error and
// purges through the admin API.

mod common;
use common::*;
use dwaar_testkit::pages::counting_origin;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

fn site(cache: &str, upstream: u16) -> (Dwaar, u16) {
    let port = free_port();
    let conf = format!(
        "http://localhost:{port} {{\n\tcache {{\n{cache}\t}}\n\treverse_proxy 127.0.0.1:{upstream}\n}}\n"
    );
    (Dwaar::start(&bin(), &conf, &[port]), port)
}

fn get_h(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", "localhost", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn hits_misses_and_what_is_never_stored() {
    let (origin, count) = counting_origin();
    let (_d, port) = site("", origin);
    let a = get_h(port, "/cc/max-age=60", &[]);
    assert_eq!(a.header("x-cache"), Some("MISS"));
    let b = get_h(port, "/cc/max-age=60", &[]);
    assert_eq!(b.header("x-cache"), Some("HIT"));
    assert_eq!(a.text(), b.text());
    assert!(b.header("age").is_some());
    assert_eq!(count.load(SeqCst), 1);
    // The query is part of the key.
    assert_eq!(
        get_h(port, "/cc/max-age=60?x=1", &[]).header("x-cache"),
        Some("MISS")
    );
    for path in [
        "/cc/no-store",
        "/cc/private,%20max-age=60",
        "/cookie",
        "/cc/max-age=0",
    ] {
        let before = count.load(SeqCst);
        get_h(port, path, &[]);
        let again = get_h(port, path, &[]);
        assert_eq!(again.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(
            count.load(SeqCst),
            before + 2,
            "{path} was served from the cache"
        );
    }
    // Credentials: only what the origin marks public is shared.
    let auth = [("Authorization", "Basic dTpw")];
    get_h(port, "/cc/max-age=30", &auth);
    assert_eq!(
        get_h(port, "/cc/max-age=30", &auth).header("x-cache"),
        Some("MISS")
    );
    get_h(port, "/cc/public,%20max-age=30", &auth);
    assert_eq!(
        get_h(port, "/cc/public,%20max-age=30", &auth).header("x-cache"),
        Some("HIT")
    );
    // The client asks for a fresh answer.
    let fresh = get_h(port, "/cc/max-age=60", &[("Cache-Control", "no-cache")]);
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    // POST is never answered from the cache.
    let p = request(port, "POST", "localhost", "/cc/max-age=60", &[], b"x").expect("cache test");
    assert!(p.header("x-cache").is_none());
}

#[test]
fn vary_keeps_variants_apart() {
    let (origin, count) = counting_origin();
    let (_d, port) = site("", origin);
    let en = get_h(port, "/vary", &[("Accept-Language", "en")]);
    let de = get_h(port, "/vary", &[("Accept-Language", "de")]);
    assert!(en.text().starts_with("lang en"));
    assert!(de.text().starts_with("lang de"));
    let en2 = get_h(port, "/vary", &[("Accept-Language", "en")]);
    let de2 = get_h(port, "/vary", &[("Accept-Language", "de")]);
    assert_eq!(
        (en2.text(), en2.header("x-cache")),
        (en.text(), Some("HIT"))
    );
    assert_eq!(
        (de2.text(), de2.header("x-cache")),
        (de.text(), Some("HIT"))
    );
    assert_eq!(count.load(SeqCst), 2);
}

#[test]
fn stale_revalidation_and_304_refresh() {
    let (origin, count) = counting_origin();
    let (_d, port) = site("", origin);
    // Fresh for a second, then revalidated with If-None-Match: the origin says 304.
    let first = get_h(port, "/cc/max-age=1", &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = get_h(port, "/cc/max-age=1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(
        r.text(),
        first.text(),
        "the stored body is served after a 304"
    );
    assert_eq!(count.load(SeqCst), 2);
    // The 304 refreshed the entry: fresh again.
    assert_eq!(
        get_h(port, "/cc/max-age=1", &[]).header("x-cache"),
        Some("HIT")
    );
    // stale-while-revalidate: a stale entry is answered while one request refreshes it.
    get_h(port, "/cc/max-age=1,%20stale-while-revalidate=30", &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let s = get_h(port, "/cc/max-age=1,%20stale-while-revalidate=30", &[]);
    assert!(
        matches!(s.header("x-cache"), Some("STALE") | Some("REVALIDATED")),
        "{:?}",
        s.headers
    );
}

#[test]
fn a_stampede_makes_one_origin_request() {
    let (origin, count) = counting_origin();
    let (_d, port) = site("", origin);
    let threads: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || get_h(port, "/slow", &[]).text()))
        .collect();
    let bodies: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().expect("cache test"))
        .collect();
    assert_eq!(count.load(SeqCst), 1, "origin requests");
    assert!(bodies.iter().all(|b| b == "slow 1"), "{:?}", &bodies[..3]);
}

#[test]
fn stale_if_error_when_the_origin_is_down() {
    let mut o = origin::http("gone-soon");
    let (_d, port) = site("\t\tttl 1s\n\t\tstale_if_error 1m\n", o.port);
    let a = get_h(port, "/thing", &[]);
    assert_eq!(a.header("x-cache"), Some("MISS"));
    assert_eq!(get_h(port, "/thing", &[]).header("x-cache"), Some("HIT"));
    o.kill();
    std::thread::sleep(Duration::from_millis(1100));
    let s = get_h(port, "/thing", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-cache"), Some("STALE"));
    assert_eq!(s.text(), a.text());
}

#[test]
fn purges_and_stats_through_the_admin_api() {
    let (origin, count) = counting_origin();
    let (d, port) = site("\t\tstatus_header X-Dwaar-Cache\n", origin);
    for p in ["/cc/max-age=60", "/cc/max-age=61", "/cc/max-age=62"] {
        get_h(port, p, &[]);
        assert_eq!(get_h(port, p, &[]).header("x-dwaar-cache"), Some("HIT"));
    }
    let call = |m: &str, p: &str| {
        dwaar_admin::client::request(&d.admin, m, p, None, &[]).unwrap_or_else(|e| panic!("{e}"))
    };
    let stats: serde_json::Value =
        serde_json::from_str(&call("GET", "/cache/stats").body).expect("json");
    assert_eq!(stats["entries"], 3, "{stats}");
    assert!(stats["bytes"].as_u64() > Some(0));
    assert!(stats["hits"].as_u64() >= Some(3));
    let r = call("DELETE", "/cache?host=localhost&path=/cc/max-age=60");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get_h(port, "/cc/max-age=60", &[]).header("x-dwaar-cache"),
        Some("MISS")
    );
    assert_eq!(
        get_h(port, "/cc/max-age=61", &[]).header("x-dwaar-cache"),
        Some("HIT")
    );
    call("DELETE", "/cache?prefix=/cc/max-age=6");
    assert_eq!(
        get_h(port, "/cc/max-age=62", &[]).header("x-dwaar-cache"),
        Some("MISS")
    );
    call("DELETE", "/cache");
    let stats: serde_json::Value =
        serde_json::from_str(&call("GET", "/cache/stats").body).expect("json");
    assert_eq!(stats["entries"], 0, "{stats}");
    let before = count.load(SeqCst);
    get_h(port, "/cc/max-age=61", &[]);
    assert_eq!(count.load(SeqCst), before + 1);
    let m = call("GET", "/metrics").body;
    assert!(
        m.contains("dwaar_cache_requests_total{result=\"hit\"}"),
        "{m}"
    );
}

#[test]
fn the_access_log_names_the_cache_outcome_and_the_coding() {
    let (origin, _count) = counting_origin();
    let dir = tempfile::tempdir().expect("cache test");
    let log = dir.path().join("access.log");
    let port = free_port();
    let conf = format!(
        "http://localhost:{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\tencode gzip {{\n\t\tminimum_length 1\n\t}}\n\tcache\n\treverse_proxy 127.0.0.1:{origin}\n}}\n",
        log.display()
    );
    let _d = Dwaar::start(&bin(), &conf, &[port]);
    get_h(port, "/cc/max-age=60", &[("Accept-Encoding", "gzip")]);
    let hit = get_h(port, "/cc/max-age=60", &[("Accept-Encoding", "gzip")]);
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("content-encoding"), Some("gzip"));
    let logged = wait_until(Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("\"cache\":\"MISS\"")
            && t.contains("\"cache\":\"HIT\"")
            && t.contains("\"encoding\":\"gzip\"")
    });
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn the_key_keeps_ports_apart() {
    let (origin, count) = counting_origin();
    let (a, b) = (free_port(), free_port());
    let conf = format!(
        "http://localhost:{a}, http://localhost:{b} {{\n\tcache\n\treverse_proxy 127.0.0.1:{origin}\n}}\n"
    );
    let _d = Dwaar::start(&bin(), &conf, &[a, b]);
    assert_eq!(
        get_h(a, "/cc/max-age=60", &[]).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get_h(a, "/cc/max-age=60", &[]).header("x-cache"),
        Some("HIT")
    );
    // The same site and path on another port is another key.
    assert_eq!(
        get_h(b, "/cc/max-age=60", &[]).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(count.load(SeqCst), 2);
}

#[test]
fn purges_reach_every_worker_process() {
    let (origin, _count) = counting_origin();
    let port = free_port();
    let conf =
        format!("http://localhost:{port} {{\n\tcache\n\treverse_proxy 127.0.0.1:{origin}\n}}\n");
    let d = Dwaar::start_with(
        &bin(),
        &conf,
        &[port],
        &["--workers", "2", "--threads", "1"],
    );
    // Separate connections spread over both workers; each fills its own store.
    for i in 0..20 {
        get_h(port, &format!("/cc/max-age=60,%20x={}", i % 5), &[]);
    }
    let admin = d.admin.clone();
    let stats = || -> serde_json::Value {
        dwaar_admin::client::request(&admin, "GET", "/cache/stats", None, &[])
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || stats()["entries"].as_u64()
            >= Some(5)),
        "{}",
        stats()
    );
    let r =
        dwaar_admin::client::request(&admin, "DELETE", "/cache", None, &[]).expect("cache test");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        wait_until(Duration::from_secs(10), || stats()["entries"] == 0),
        "a worker kept its entries: {}",
        stats()
    );
}

#[test]
fn stale_if_error_when_the_origin_answers_5xx() {
    let (origin, _count) = counting_origin();
    let (_d, port) = site("", origin);
    let a = get_h(port, "/flaky", &[]);
    assert_eq!((a.status, a.text().as_str()), (200, "good answer"));
    std::thread::sleep(Duration::from_millis(1100));
    let s = get_h(port, "/flaky", &[]);
    assert_eq!(s.status, 200, "{:?}", s.headers);
    assert_eq!(s.header("x-cache"), Some("STALE"));
    assert_eq!(s.text(), "good answer");
}
