// First-party analytics end to end: injection into proxied, compressed, streamed and
// file pages; where it must not happen; CSP; the beacon's checks; rollups that survive a
// restart; the admin API, dashboards and metrics; and a real browser.

mod common;
use common::*;
use dwaar_testkit::pages::{decompress, html_origin, PAGE};
use std::io::Read;
use std::time::{Duration, Instant};

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

struct Site {
    d: Dwaar,
    port: u16,
    store: tempfile::TempDir,
}

fn site(extra_site: &str, origin: u16) -> Site {
    let store = tempfile::tempdir().expect("analytics test step");
    let www = store.path().join("www");
    std::fs::create_dir_all(&www).expect("analytics test step");
    std::fs::write(www.join("index.html"), PAGE).expect("analytics test step");
    std::fs::write(www.join("plain.txt"), "not html").expect("analytics test step");
    let port = free_port();
    let conf = site_config(port, origin, store.path(), extra_site);
    let d = Dwaar::start(&bin(), &conf, &[port]);
    Site { d, port, store }
}

fn site_config(port: u16, origin: u16, store: &std::path::Path, extra_site: &str) -> String {
    // Loopback is "ZZ" in the test's country ranges.
    std::fs::write(
        store.join("geo.csv"),
        "127.0.0.0,127.255.255.255,ZZ\n::1,::1,ZZ\n",
    )
    .expect("analytics test step");
    format!(
        "{{\n\tstorage file_system {st}\n\tanalytics {{\n\t\tflush_interval 100ms\n\t\tgeoip {st}/geo.csv\n\t}}\n}}\n\
         http://localhost:{port} {{\n\tanalytics {{\n\t\texclude_paths /private/*\n\t\tdashboard /stats\n\t}}\n{extra_site}\
         \thandle /files/* {{\n\t\turi strip_prefix /files\n\t\troot * {st}/www\n\t\tfile_server\n\t}}\n\
         \thandle /hello {{\n\t\theader Content-Type text/html\n\t\trespond \"<html><body>hi</body></html>\" 200 {{\n\t\t\tclose\n\t\t}}\n\t}}\n\
         \treverse_proxy 127.0.0.1:{origin}\n}}\n",
        st = store.display()
    )
}

fn browse(port: u16, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![
        ("User-Agent", BROWSER),
        ("Accept-Encoding", "gzip, br, zstd, deflate"),
    ];
    h.extend_from_slice(extra);
    request(port, "GET", "localhost", path, &h, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn tags(body: &[u8]) -> usize {
    String::from_utf8_lossy(body)
        .matches("/_dwaar/a.js")
        .count()
}

fn token_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).to_string();
    let at = text
        .find("data-t=\"")
        .map(|i| i + 8)
        .unwrap_or_else(|| panic!("no token: {text}"));
    text[at..].split('"').next().unwrap_or("").to_string()
}

#[test]
fn the_script_goes_before_body_in_every_coding_and_stream() {
    let origin = html_origin();
    let s = site("", origin);
    let r = browse(s.port, "/page", &[]);
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        body.contains("<h1>Hello</h1><script src=\"/_dwaar/a.js\" data-dwaar"),
        "{body}"
    );
    assert!(body.ends_with("</script></body></html>"), "{body}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let r = browse(s.port, &format!("/coded/{coding}"), &[]);
        assert_eq!(r.header("content-encoding"), Some(coding));
        let plain = decompress(Some(coding), &r.body);
        let text = String::from_utf8_lossy(&plain);
        assert_eq!(tags(&plain), 1, "{coding}: {text}");
        assert!(text.contains("</script></body>"), "{coding}: {text}");
    }
    // Streamed: `</body>` split across chunks, and the first chunk is not held back
    // while the origin pauses.
    let mut c = Conn::open(s.port).expect("analytics test step");
    let started = Instant::now();
    c.send_raw(format!("GET /stream HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {BROWSER}\r\nConnection: close\r\n\r\n").as_bytes()).expect("analytics test step");
    let mut seen = Vec::new();
    let mut tmp = [0u8; 4096];
    let first_at = loop {
        let n = c.stream().read(&mut tmp).expect("analytics test step");
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&tmp[..n]);
        if String::from_utf8_lossy(&seen).contains("<p>first</p>") {
            break started.elapsed();
        }
    };
    assert!(
        first_at < Duration::from_millis(1200),
        "first chunk after {first_at:?}"
    );
    c.stream()
        .read_to_end(&mut seen)
        .expect("analytics test step");
    let all = String::from_utf8_lossy(&seen);
    assert_eq!(all.matches("/_dwaar/a.js").count(), 1, "{all}");
    // Files and `respond` pages Dwaar builds itself.
    let f = browse(s.port, "/files/index.html", &[]);
    assert_eq!(tags(&f.body), 1, "{}", f.text());
    assert_eq!(
        f.header("content-length"),
        Some(f.body.len().to_string().as_str())
    );
    let h = browse(s.port, "/hello", &[]);
    assert_eq!(h.text().matches("/_dwaar/a.js").count(), 1, "{}", h.text());
}

#[test]
fn no_script_where_it_does_not_belong() {
    let origin = html_origin();
    let s = site("", origin);
    let none = |r: &Response, what: &str| assert_eq!(tags(&r.body), 0, "{what}: {}", r.text());
    none(&browse(s.port, "/json", &[]), "json");
    none(&browse(s.port, "/no-transform", &[]), "no-transform");
    none(&browse(s.port, "/not-found", &[]), "404");
    none(&browse(s.port, "/unknown-coding", &[]), "unknown coding");
    none(&browse(s.port, "/private/x", &[]), "excluded path");
    none(&browse(s.port, "/page", &[("DNT", "1")]), "do not track");
    none(
        &browse(s.port, "/page", &[("Sec-GPC", "1")]),
        "global privacy control",
    );
    none(&browse(s.port, "/files/plain.txt", &[]), "text file");
    let bot = request(
        s.port,
        "GET",
        "localhost",
        "/page",
        &[("User-Agent", "curl/8.0")],
        b"",
    )
    .expect("analytics test step");
    none(&bot, "bot");
    let post = request(
        s.port,
        "POST",
        "localhost",
        "/page",
        &[("User-Agent", BROWSER)],
        b"x",
    )
    .expect("analytics test step");
    none(&post, "POST");
    let head = request(
        s.port,
        "HEAD",
        "localhost",
        "/page",
        &[("User-Agent", BROWSER)],
        b"",
    )
    .expect("analytics test step");
    assert_eq!(
        head.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    let ranged = browse(s.port, "/files/index.html", &[("Range", "bytes=0-9")]);
    assert_eq!(ranged.status, 206);
    none(&ranged, "range");
    let etag = browse(s.port, "/files/index.html", &[])
        .header("etag")
        .unwrap_or("")
        .to_string();
    let cond = browse(s.port, "/files/index.html", &[("If-None-Match", &etag)]);
    assert_eq!(cond.status, 304, "{etag}");
}

#[test]
fn a_page_csp_lets_the_script_run() {
    let origin = html_origin();
    let s = site("", origin);
    let r = browse(s.port, "/csp-nonce", &[]);
    assert!(r.text().contains("nonce=\"r4nd0m\""), "{}", r.text());
    assert_eq!(
        r.header("content-security-policy"),
        Some("script-src 'nonce-r4nd0m' 'strict-dynamic'")
    );
    let r = browse(s.port, "/csp-strict", &[]);
    let csp = r
        .header("content-security-policy")
        .unwrap_or("")
        .to_string();
    let hash = dwaar_hash();
    assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        r.text().contains(&format!("integrity=\"sha256-{hash}\"")),
        "{}",
        r.text()
    );
    // The script served matches the hash the policy names.
    let js = browse(s.port, "/_dwaar/a.js", &[]);
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.header("set-cookie").is_none());
    let again = browse(
        s.port,
        "/_dwaar/a.js",
        &[(
            "If-None-Match",
            js.header("etag").expect("analytics test step"),
        )],
    );
    assert_eq!(again.status, 304);
}

/// Base64 SHA-256 of the served script, computed by `openssl` independently.
fn dwaar_hash() -> String {
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dwaar-analytics/assets/a.js"
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl dgst -sha256 -binary {src} | openssl base64 -A"
        ))
        .output()
        .expect("analytics test step");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn beacon(port: u16, origin: &str, ctype: &str, body: &str) -> u16 {
    request(
        port,
        "POST",
        "localhost",
        "/_dwaar/collect",
        &[
            ("User-Agent", BROWSER),
            ("Origin", origin),
            ("Content-Type", ctype),
        ],
        body.as_bytes(),
    )
    .map(|r| r.status)
    .unwrap_or(0)
}

fn report(admin: &str, site: &str, query: &str) -> serde_json::Value {
    let r = dwaar_admin::client::request(
        admin,
        "GET",
        &format!("/analytics/{site}?{query}"),
        None,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("analytics test step")
}

#[test]
fn beacons_are_checked_counted_and_survive_a_restart() {
    let origin = html_origin();
    let mut s = site("", origin);
    let page = browse(s.port, "/page", &[]);
    let t = token_of(&page.body);
    let me = format!("http://localhost:{}", s.port);
    let good = format!("{{\"t\":\"{t}\",\"p\":\"/page\",\"w\":1280,\"l\":\"de-DE\",\"s\":4.5,\"lcp\":1200,\"cls\":0.05,\"inp\":90}}");
    assert_eq!(beacon(s.port, &me, "text/plain;charset=UTF-8", &good), 204);
    // Forged, expired, foreign, oversized, wrong type, wrong method.
    let forged = good.replace(&t[t.len() - 4..], "0000");
    assert_eq!(beacon(s.port, &me, "text/plain", &forged), 403);
    assert_eq!(
        beacon(
            s.port,
            &me,
            "text/plain",
            "{\"t\":\"1000.00112233445566778899aabbccddeeff\"}"
        ),
        403
    );
    assert_eq!(
        beacon(s.port, "https://evil.example", "text/plain", &good),
        403
    );
    let huge = format!("{{\"t\":\"{t}\",\"p\":\"{}\"}}", "a".repeat(5000));
    assert_eq!(beacon(s.port, &me, "text/plain", &huge), 413);
    assert_eq!(
        beacon(s.port, &me, "application/x-www-form-urlencoded", &good),
        415
    );
    assert_eq!(beacon(s.port, &me, "text/plain", "not json"), 400);
    let get = browse(s.port, "/_dwaar/collect", &[]);
    assert_eq!(get.status, 405);
    // The server side counted the page view; the beacon its vitals.
    let admin = s.d.admin.clone();
    let counted = wait_until(Duration::from_secs(10), || {
        let v = report(&admin, "localhost", "from=-1h");
        v["totals"]["js_views"] == 1 && v["totals"]["views"] == 1
    });
    let v = report(&admin, "localhost", "from=-1h");
    assert!(counted, "{v}");
    assert_eq!(v["totals"]["visitors"], 1);
    assert_eq!(v["totals"]["vitals"]["lcp_ms"]["p75"], 1200.0);
    assert_eq!(v["top"]["pages"][0]["key"], "/page");
    assert_eq!(v["top"]["languages"][0]["key"], "de-DE");
    assert_eq!(v["top"]["browsers"][0]["key"], "Chrome");
    assert_eq!(v["top"]["countries"][0]["key"], "ZZ", "{v}");
    assert_eq!(v["live_visitors"], 1);
    // Stop (the collector writes what it holds) and start again on the same storage.
    s.d.signal("TERM");
    assert!(s.d.wait_exit(Duration::from_secs(20)).is_some());
    let conf = site_config(s.port, origin, s.store.path(), "");
    let d2 = Dwaar::start(&bin(), &conf, &[s.port]);
    let v = report(&d2.admin, "localhost", "from=-1d&granularity=hour");
    assert_eq!(v["totals"]["views"], 1, "{v}");
    assert_eq!(v["totals"]["js_views"], 1, "{v}");
    let day = report(&d2.admin, "localhost", "from=-30d&granularity=day");
    assert_eq!(day["totals"]["visitors"], 1, "{day}");
    let csv = dwaar_admin::client::request(
        &d2.admin,
        "GET",
        "/analytics/localhost/export.csv?from=-1d",
        None,
        &[],
    )
    .expect("analytics test step");
    let text = csv.body.clone();
    assert!(text.starts_with("start,views,js_views,visitors"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    let sites = dwaar_admin::client::request(&d2.admin, "GET", "/analytics/sites", None, &[])
        .expect("analytics test step");
    let sites: serde_json::Value = serde_json::from_str(&sites.body).expect("analytics test step");
    assert_eq!(sites["sites"][0]["site"], "localhost");
    let bad = dwaar_admin::client::request(
        &d2.admin,
        "GET",
        "/analytics/localhost?granularity=week",
        None,
        &[],
    )
    .expect("analytics test step");
    assert_eq!(bad.status, 400);
    drop(s);
}

#[test]
fn dashboards_and_metrics() {
    let origin = html_origin();
    let s = site(
        "\tbasic_auth /stats* {\n\t\towner $2b$04$/fXyZi4vlH7QWjVz7etkF.3Zih9MhlAvhxLhRh/hqU/S90K3aeE6a\n\t}\n\tmetrics /metrics\n",
        origin,
    );
    browse(s.port, "/page", &[]);
    // The site's dashboard sits behind the site's own basic_auth.
    assert_eq!(browse(s.port, "/stats", &[]).status, 401);
    let auth = [("Authorization", "Basic b3duZXI6aHVudGVyMg==")];
    let page = browse(s.port, "/stats", &auth);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("data-api=\"/stats/api\""));
    assert!(page.text().contains("data-site=\"localhost\""));
    let api = browse(s.port, "/stats/api/localhost?from=-1h", &auth);
    assert_eq!(api.status, 200, "{}", api.text());
    let other = browse(s.port, "/stats/api/elsewhere.example", &auth);
    assert_eq!(other.status, 404);
    // The admin dashboard.
    let d = dwaar_admin::client::request(&s.d.admin, "GET", "/dashboard", None, &[])
        .expect("analytics test step");
    assert_eq!(d.status, 200);
    assert!(d.body.contains("data-api=\"/analytics\""));
    // Prometheus, on the admin API and through `metrics`.
    let m = dwaar_admin::client::request(&s.d.admin, "GET", "/metrics", None, &[])
        .expect("analytics test step");
    let m = m.body;
    for want in [
        "dwaar_requests_total{site=\"localhost\",method=\"GET\",code=\"2xx\"}",
        "dwaar_request_duration_seconds_bucket{site=\"localhost\",le=\"+Inf\"}",
        "dwaar_response_bytes_total{site=\"localhost\"}",
        &format!("dwaar_upstream_healthy{{upstream=\"127.0.0.1:{origin}\"}} 1"),
        "dwaar_analytics_events_total{result=\"accepted\"}",
        "process_resident_memory_bytes",
        &format!("dwaar_upstream_connects_total{{upstream=\"127.0.0.1:{origin}\"}} 1"),
        "dwaar_tls_handshakes_total{result=\"ok\"} 0",
        "dwaar_open_connections",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
    let site_metrics = browse(s.port, "/metrics", &[]);
    assert!(
        site_metrics
            .text()
            .contains("dwaar_requests_total{site=\"localhost\""),
        "{}",
        site_metrics.text()
    );
}

/// Whether the browser test can run here; with `DWAAR_REQUIRE_E2E=1` it must.
fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var("DWAAR_REQUIRE_E2E").as_deref() != Ok("1"),
        "chromium is required (apt-get install chromium)"
    );
    eprintln!("skipping: no chromium");
    None
}

fn headless(chrome: &str, profile: &std::path::Path, url: &str) -> String {
    let out = std::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            // Headless Chromium names itself in its User-Agent, which counts as a bot.
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0 Safari/537.36",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .unwrap_or_else(|e| panic!("chromium: {e}"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_browser_runs_the_script_and_sees_itself_on_the_dashboard() {
    let Some(chrome) = chromium() else { return };
    let origin = html_origin();
    let s = site("", origin);
    let www = s.store.path().join("www");
    // A page that is "left" shortly after loading (the `pagehide` the script listens
    // for; a headless run ends without one).
    std::fs::write(
        www.join("visit.html"),
        "<!doctype html><html><head><title>v</title></head><body><h1>Visit</h1>\
         <script>addEventListener('load', function () { setTimeout(function () { dispatchEvent(new Event('pagehide')); document.body.dataset.left = '1'; }, 300); });</script>\
         </body></html>",
    )
    .expect("analytics test step");
    let profile = tempfile::tempdir().expect("analytics test step");
    let dom = headless(
        chrome,
        profile.path(),
        &format!("http://localhost:{}/files/visit.html", s.port),
    );
    assert!(
        dom.contains("data-left=\"1\""),
        "the page script did not run: {dom}"
    );
    assert!(
        dom.contains("src=\"/_dwaar/a.js\""),
        "no script tag in the page: {dom}"
    );
    let admin = s.d.admin.clone();
    let counted = wait_until(Duration::from_secs(15), || {
        report(&admin, "localhost", "from=-1h")["totals"]["js_views"].as_u64() >= Some(1)
    });
    assert!(
        counted,
        "no beacon counted: {}",
        report(&admin, "localhost", "from=-1h")
    );
    let v = report(&admin, "localhost", "from=-1h");
    assert!(v["top"]["screens"][0]["count"].as_u64() >= Some(1), "{v}");
    // The dashboard, rendered by the browser, shows the visit.
    let dom = headless(
        chrome,
        profile.path(),
        &format!("http://{admin}/dashboard#site=localhost&range=1h"),
    );
    assert!(
        dom.contains("data-loaded=\"1\""),
        "dashboard did not render: {dom}"
    );
    let js_views = dom
        .split("id=\"kpi-js-views\"")
        .nth(1)
        .and_then(|r| r.split('>').nth(1))
        .and_then(|r| r.split('<').next())
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        js_views.parse::<u64>().is_ok_and(|n| n >= 1),
        "kpi-js-views = {js_views:?}"
    );
    assert!(
        dom.contains("/files/visit.html"),
        "top pages lack the visit"
    );
    // A single-page app: a pushState route change ends the first view and starts another;
    // both are reported, the route change as a page of its own.
    std::fs::write(
        www.join("spa.html"),
        "<!doctype html><html><head><title>spa</title></head><body><h1>App</h1>\
         <script>addEventListener('load', function () { setTimeout(function () { history.pushState({}, '', '/files/spa/route-two'); \
         setTimeout(function () { dispatchEvent(new Event('pagehide')); document.body.dataset.left = '1'; }, 100); }, 200); });</script>\
         </body></html>",
    )
    .expect("analytics test step");
    let dom = headless(
        chrome,
        profile.path(),
        &format!("http://localhost:{}/files/spa.html", s.port),
    );
    assert!(
        dom.contains("data-left=\"1\""),
        "the SPA page did not run: {dom}"
    );
    let routed = wait_until(Duration::from_secs(15), || {
        let v = report(&admin, "localhost", "from=-1h");
        v["totals"]["js_views"].as_u64() >= Some(3)
            && v["top"]["pages"]
                .as_array()
                .is_some_and(|p| p.iter().any(|e| e["key"] == "/files/spa/route-two"))
    });
    assert!(
        routed,
        "the route change was not counted: {}",
        report(&admin, "localhost", "from=-1h")
    );
}

#[test]
fn worker_processes_share_the_store_and_their_metrics_add_up() {
    let origin = html_origin();
    let store = tempfile::tempdir().expect("analytics test step");
    let port = free_port();
    let conf = site_config(port, origin, store.path(), "");
    let d = Dwaar::start_with(
        &bin(),
        &conf,
        &[port],
        &["--workers", "2", "--threads", "1"],
    );
    // Separate connections: the kernel spreads them over both workers.
    for i in 0..20 {
        let ua = format!("{BROWSER} visitor/{i}");
        let r = request(
            port,
            "GET",
            "localhost",
            "/page",
            &[("User-Agent", &ua)],
            b"",
        )
        .expect("analytics test step");
        assert_eq!(tags(&r.body), 1);
    }
    let admin = d.admin.clone();
    let all = wait_until(Duration::from_secs(15), || {
        report(&admin, "localhost", "from=-1h")["totals"]["views"] == 20
    });
    let v = report(&admin, "localhost", "from=-1h");
    assert!(all, "{v}");
    let visitors = v["totals"]["visitors"].as_u64().unwrap_or(0);
    assert!((19..=21).contains(&visitors), "{v}");
    let summed = wait_until(Duration::from_secs(10), || {
        dwaar_admin::client::request(&admin, "GET", "/metrics", None, &[]).is_ok_and(|m| {
            m.body
                .contains("dwaar_requests_total{site=\"localhost\",method=\"GET\",code=\"2xx\"} 20")
        })
    });
    assert!(summed, "metrics of both workers not summed");
}

#[test]
fn sampling_and_do_not_track_settings_apply() {
    let origin = html_origin();
    let store = tempfile::tempdir().expect("analytics test step");
    let port = free_port();
    let conf = format!(
        "{{\n\tstorage file_system {st}\n\tanalytics {{\n\t\tflush_interval 100ms\n\t}}\n}}\n\
         http://localhost:{port} {{\n\tanalytics {{\n\t\tsample 0.1%\n\t\trespect_dnt off\n\t}}\n\treverse_proxy 127.0.0.1:{origin}\n}}\n",
        st = store.path().display()
    );
    let d = Dwaar::start(&bin(), &conf, &[port]);
    // With respect_dnt off, DNT requests are page views; with a 0.1% sample almost
    // none of the 30 pages get the script (the chance of 4 or more is about 3e-8).
    let mut tagged = 0;
    for _ in 0..30 {
        tagged += tags(&browse(port, "/page", &[("DNT", "1")]).body);
    }
    assert!(
        tagged <= 3,
        "{tagged} of 30 pages got the script at a 0.1% sample"
    );
    let counted = wait_until(Duration::from_secs(10), || {
        report(&d.admin, "localhost", "from=-1h")["totals"]["views"] == 30
    });
    assert!(counted, "{}", report(&d.admin, "localhost", "from=-1h"));
}
