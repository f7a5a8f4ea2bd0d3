// One behaviour, every protocol path: each test starts one site behind all six paths
// (HTTP/1.1 lean and via Pingora, HTTP/1.1 over TLS, HTTP/2 over TLS, h2c, HTTP/3) and
// asserts the same answer on each. Where a protocol legitimately differs, the test says
// so per protocol. These are the divergences the first review found between the
// front-ends, each fixed in the shared lifecycle.

mod common;
use common::*;
use dwaar_testkit::paths::{Paths, Proto, Req, ALL};

/// Answers Dwaar makes itself carry `Date`; `{host}` keeps the client's case; `map`
/// with a regex key substitutes its captures (all as Caddy does).
#[test]
fn replies_date_host_case_and_map_captures_on_every_path() {
    let p = Paths::start(
        &bin(),
        "\tmap {path} {post} {\n\t\t~^/blog/(\\d+)$ \"post-${1}\"\n\t\tdefault none\n\t}\n\
         \trespond \"host={host} post={post}\"\n",
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/blog/42").host("LocalHost"));
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.text(), "host=LocalHost post=post-42", "{proto:?}");
        assert!(r.header("date").is_some(), "{proto:?}: no Date header");
    }
}

/// `abort` drops the request it processed: every path fails it, none tells the client
/// the request was refused (safe to retry), so it is processed exactly once.
#[test]
fn abort_is_processed_once_on_every_path() {
    let p = Paths::start(
        &bin(),
        "\tlog {\n\t\toutput file SCRATCH/INSTANCE.log\n\t}\n\thandle /abort {\n\t\tabort\n\t}\n\trespond ok\n",
    );
    let seen = || {
        ["main", "pingora"]
            .iter()
            .map(|i| {
                std::fs::read_to_string(p.scratch().join(format!("{i}.log")))
                    .unwrap_or_default()
                    .matches("\"/abort\"")
                    .count()
            })
            .sum::<usize>()
    };
    for (n, proto) in ALL.into_iter().enumerate() {
        let r = p.send(proto, &Req::get("/abort"));
        assert!(r.is_err(), "{proto:?}: aborted request answered: {r:?}");
        let failure = r.err().map(|f| f.message).unwrap_or_default();
        assert!(
            !failure.to_ascii_lowercase().contains("refused"),
            "{proto:?}: abort looked like a refusal: {failure}"
        );
        let logged = wait_until(std::time::Duration::from_secs(5), || seen() > n);
        assert!(logged, "{proto:?}: abort not logged");
        assert_eq!(
            seen(),
            n + 1,
            "{proto:?}: the request was processed more than once"
        );
        // The path keeps serving.
        assert_eq!(p.ok(proto, &Req::get("/")).text(), "ok", "{proto:?}");
    }
}

/// An upload to a handler that does not read it completes for curl on every path (it
/// is read and dropped within a bound; a reset under curl 7.88 still uploading made it
/// spin forever over HTTP/2).
#[test]
fn uploads_to_handlers_that_do_not_read_them_complete() {
    let p = Paths::start(&bin(), "\trespond \"done\" 201\n");
    let body = vec![b'u'; 1024 * 1024];
    for proto in ALL {
        let r = p.ok(proto, &Req::post("/upload", body.clone()));
        assert_eq!((r.status, r.text().as_str()), (201, "done"), "{proto:?}");
    }
}

/// A request that passes `forward_auth` is counted once against a `rate_limit` before
/// it (the pipeline reruns after the auth call; the zone is not charged again).
#[test]
fn forward_auth_requests_count_once_against_rate_limits() {
    let auth = origin::http("auth");
    let p = Paths::start(
        &bin(),
        &format!(
            "\trate_limit {{\n\t\tkey {{http.request.header.X-Who}}\n\t\tevents 2\n\t\twindow 1m\n\t}}\n\
             \tforward_auth 127.0.0.1:{} {{\n\t\turi /verify\n\t}}\n\trespond \"in\"\n",
            auth.port
        ),
    );
    for proto in ALL {
        let who = format!("{proto:?}");
        let req = Req::get("/").header("X-Who", &who);
        for round in 1..=2 {
            let r = p.ok(proto, &req);
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "in"),
                "{proto:?} #{round}"
            );
        }
        assert_eq!(p.ok(proto, &req).status, 429, "{proto:?}: third request");
    }
}

/// `cache` stores misses on every path (HTTP/3 never did, and a `cache` route used to
/// take HTTP/2 away from Dwaar's own front-end).
#[test]
fn cache_misses_are_stored_on_every_path() {
    let o = origin::http("cached");
    let p = Paths::start(
        &bin(),
        &format!(
            "\tcache {{\n\t\tttl 1m\n\t}}\n\treverse_proxy 127.0.0.1:{}\n",
            o.port
        ),
    );
    for proto in ALL {
        let path = format!("/cc/max-age=60?proto={proto:?}");
        let before = o.hits();
        let a = p.ok(proto, &Req::get(&path));
        assert_eq!(a.header("x-cache"), Some("MISS"), "{proto:?}");
        let b = p.ok(proto, &Req::get(&path));
        assert_eq!(b.header("x-cache"), Some("HIT"), "{proto:?}");
        assert_eq!(a.body, b.body, "{proto:?}");
        assert_eq!(
            o.hits(),
            before + 1,
            "{proto:?}: the origin was asked twice"
        );
    }
}

/// Requests to a dead upstream are retried on the next one (`lb_retries`) whatever the
/// front-end and the upstream protocol, and a site without upstreams answers 503.
#[test]
fn connect_failures_are_retried_on_every_path() {
    let o = origin::http("alive");
    let dead = free_port();
    let p = Paths::start(
        &bin(),
        &format!(
            "\treverse_proxy 127.0.0.1:{dead} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\tlb_retries 2\n\t}}\n",
            o.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/echo"));
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
    }
}

/// A request whose task panics fails alone: the process keeps serving every path, and
/// the panic is counted. (The trigger exists in debug builds only.)
#[test]
fn a_panicking_request_fails_alone() {
    let p = Paths::start(
        &bin(),
        "\thandle /metrics {\n\t\tmetrics\n\t}\n\trespond ok\n",
    );
    for proto in ALL {
        let r = p.send(proto, &Req::get("/").header("X-Dwaar-Test-Panic", "1"));
        assert!(
            r.as_ref().map_or(true, |r| r.status >= 500),
            "{proto:?}: {r:?}"
        );
        assert_eq!(p.ok(proto, &Req::get("/")).text(), "ok", "{proto:?}");
    }
    let m = p.ok(Proto::H1Lean, &Req::get("/metrics")).text();
    let panics: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("dwaar_panics_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Five of the six paths run in the main process.
    assert!(panics >= 5, "dwaar_panics_total {panics}\n{m}");
}

/// FastCGI on every path: upstream attempts go through the shared loop (a dead first
/// upstream is skipped within `lb_try_duration`), and a request body is held to
/// `request_body { max_size }` while it streams (a chunked body declares no length).
#[test]
fn php_retries_and_body_limits_on_every_path() {
    let Some(bin_fpm) = dwaar_testkit::php::binary() else {
        eprintln!("skipping: php-fpm is not installed");
        return;
    };
    let fpm = dwaar_testkit::php::PhpFpm::start(&bin_fpm);
    let app = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        app.path().join("echo.php"),
        "<?php echo 'got ' . strlen(file_get_contents('php://input'));",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dead = free_port();
    let p = Paths::start(
        &bin(),
        &format!(
            "\troot * {}\n\trequest_body {{\n\t\tmax_size 1KB\n\t}}\n\
             \tphp_fastcgi 127.0.0.1:{dead} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\tlb_try_duration 2s\n\t}}\n",
            app.path().display(),
            fpm.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::post("/echo.php", b"small".to_vec()));
        assert_eq!((r.status, r.text().as_str()), (200, "got 5"), "{proto:?}");
        let h1 = matches!(proto, Proto::H1Lean | Proto::H1Pingora | Proto::H1Tls);
        let mut big = Req::post("/echo.php", vec![b'x'; 64 * 1024]);
        if h1 {
            big = big.header("Transfer-Encoding", "chunked");
        }
        let r = p.send(proto, &big);
        assert_eq!(
            r.as_ref().map(|r| r.status).ok(),
            Some(413),
            "{proto:?}: {r:?}"
        );
    }
}
