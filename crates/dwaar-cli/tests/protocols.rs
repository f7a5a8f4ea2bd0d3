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

/// Rate limits shared through Redis decide alike on every path: `distributed exact`
/// asks the fleet off the request path and reruns the pipeline, `approximate` decides
/// from local counts.
#[test]
fn distributed_rate_limits_on_every_path() {
    if !dwaar_testkit::redis::available() {
        return;
    }
    let redis = dwaar_testkit::redis::Redis::start();
    let p = Paths::start_global(
        &bin(),
        &format!(
            "\tstorage redis {{\n\t\taddress {}\n\t\tlocal_copy STORE\n\t}}\n",
            redis.addr()
        ),
        "\thandle /exact {\n\t\trate_limit {\n\t\t\tzone exact\n\t\t\tkey {http.request.header.X-Who}\n\t\t\tevents 2\n\t\t\twindow 1m\n\t\t\tdistributed exact\n\t\t}\n\t\trespond \"exact\"\n\t}\n\
         \thandle /approx {\n\t\trate_limit {\n\t\t\tzone approx\n\t\t\tkey {http.request.header.X-Who}\n\t\t\tevents 2\n\t\t\twindow 1m\n\t\t\tdistributed approximate 100ms\n\t\t}\n\t\trespond \"approx\"\n\t}\n",
    );
    for proto in ALL {
        let who = format!("{proto:?}");
        for path in ["/exact", "/approx"] {
            let req = Req::get(path).header("X-Who", &who);
            for round in 1..=2 {
                let r = p.ok(proto, &req);
                assert_eq!(r.status, 200, "{proto:?} {path} #{round}");
            }
            let r = p.ok(proto, &req);
            assert_eq!(r.status, 429, "{proto:?} {path}: third request");
            assert!(r.header("retry-after").is_some(), "{proto:?} {path}");
        }
    }
    // The exact zone's counts are in Redis.
    assert!(redis
        .cli(&["--scan", "--pattern", "dwaar:rl:{exact:*"])
        .contains("dwaar:rl:"));
}

/// `acme_server` answers on every path: its directory names URLs of the scheme and host
/// the client used, nonces come with every answer, and a POST body (read before the
/// routes run) that is no JWS is refused with an ACME problem document.
#[test]
fn acme_server_answers_on_every_path() {
    // `route` keeps the order written (`respond` comes first in the directive order).
    let p = Paths::start(
        &bin(),
        "\troute {\n\t\tacme_server\n\t\trespond \"not acme\"\n\t}\n",
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/acme/local/directory"));
        assert_eq!(r.status, 200, "{proto:?}");
        let dir: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        let new_account = dir["newAccount"].as_str().unwrap_or_default().to_string();
        assert!(
            new_account.ends_with("/acme/local/new-account"),
            "{proto:?}: {dir}"
        );
        assert!(r.header("replay-nonce").is_some(), "{proto:?}");
        let r = p.ok(
            proto,
            &Req::post("/acme/local/new-account", b"not a jws".to_vec()),
        );
        assert_eq!(r.status, 400, "{proto:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{proto:?}"
        );
        assert!(
            r.text().contains("urn:ietf:params:acme:error:malformed"),
            "{proto:?}"
        );
        let r = p.ok(proto, &Req::get("/elsewhere"));
        assert_eq!(
            r.text(),
            "not acme",
            "{proto:?}: other paths go on to the next handler"
        );
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

/// The same for HTTP/2 upstreams (h2c): the stream front-ends used to give them a
/// single attempt.
#[test]
fn h2_upstream_connect_failures_are_retried_on_every_path() {
    let o = origin::h2c("alive-h2");
    let dead = free_port();
    let p = Paths::start(
        &bin(),
        &format!(
            "\treverse_proxy h2c://127.0.0.1:{dead} h2c://127.0.0.1:{} {{\n\t\tlb_policy first\n\t\tlb_retries 2\n\t}}\n",
            o.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/h2"));
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        assert!(
            r.text().contains("origin: alive-h2"),
            "{proto:?}: {}",
            r.text()
        );
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

/// An upstream that answers with something other than an HTTP/1 response head gets a
/// 502 at once on every path, while it keeps its connection open: bytes that are not
/// HTTP, a status line of the wrong shape, a field line without a colon. A good head
/// split over many small writes still goes through.
#[test]
fn unusable_upstream_heads_are_502_at_once_on_every_path() {
    // Every answer goes out one byte at a time: a good head's end arrives last. The
    // connection stays open after each answer.
    let (port, _) = origin::scripted(
        &[
            ("GET /ssh", b"SSH-2.0-OpenSSH_9.2\r\n"),
            ("GET /status", b"HTTP/1.1 abc\r\nContent-Length: 0\r\n\r\n"),
            (
                "GET /field",
                b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
            ),
        ],
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
        true,
    );
    let p = Paths::start(&bin(), &format!("\treverse_proxy 127.0.0.1:{port}\n"));
    for proto in ALL {
        for path in ["/ssh", "/status", "/field"] {
            let started = std::time::Instant::now();
            let r = p.ok(proto, &Req::get(path));
            assert_eq!(r.status, 502, "{proto:?} {path}: {}", r.text());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{proto:?} {path}: {:?}",
                started.elapsed()
            );
        }
        let r = p.ok(proto, &Req::get("/split"));
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "{proto:?}");
    }
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
        // A body of unknown length reaches PHP whole (CGI needs its length first).
        let r = p.ok(
            proto,
            &Req::post("/echo.php", b"sized later".to_vec()).unsized_body(),
        );
        assert_eq!((r.status, r.text().as_str()), (200, "got 11"), "{proto:?}");
        // No length up front (chunked over HTTP/1.1): held to max_size as it streams.
        let big = Req::post("/echo.php", vec![b'x'; 64 * 1024]).unsized_body();
        let r = p.send(proto, &big);
        assert_eq!(
            r.as_ref().map(|r| r.status).ok(),
            Some(413),
            "{proto:?}: {r:?}"
        );
    }
}

/// `owner:hunter2`, bcrypt cost 4.
const HASH: &str = "$2b$04$n9w8gA5QbBkpl3san02ecOAEjvhB1O5XG4fRBeeAoDTNwSY6piqEm";

/// Files: whole, ranged, conditional and HEAD requests (a 2 MB file too, whole and
/// ranged, streamed from disk), and a missing file through `handle_errors`.
#[test]
fn files_ranges_validators_and_errors_on_every_path() {
    let www = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(www.path().join("abc.txt"), "abcdefghij").unwrap_or_else(|e| panic!("{e}"));
    // Large enough to be streamed from disk (the lean path's `sendfile`) on every path.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.path().join("big.bin"), &big).unwrap_or_else(|e| panic!("{e}"));
    let p = Paths::start(
        &bin(),
        &format!(
            "\troot * {}\n\tfile_server\n\thandle_errors {{\n\t\trespond \"missing {{err.status_code}}\"\n\t}}\n",
            www.path().display()
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/abc.txt"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "abcdefghij"),
            "{proto:?}"
        );
        let etag = r
            .header("etag")
            .unwrap_or_else(|| panic!("{proto:?}: no etag"))
            .to_string();
        let r = p.ok(proto, &Req::get("/abc.txt").header("Range", "bytes=2-4"));
        assert_eq!((r.status, r.text().as_str()), (206, "cde"), "{proto:?}");
        assert_eq!(r.header("content-range"), Some("bytes 2-4/10"), "{proto:?}");
        let r = p.ok(proto, &Req::get("/big.bin"));
        assert_eq!(r.status, 200, "{proto:?}");
        assert!(r.body == big, "{proto:?}: {} bytes", r.body.len());
        let r = p.ok(
            proto,
            &Req::get("/big.bin").header("Range", "bytes=1000-1999999"),
        );
        assert_eq!(r.status, 206, "{proto:?}");
        assert!(
            r.body[..] == big[1000..],
            "{proto:?}: {} bytes",
            r.body.len()
        );
        let r = p.ok(proto, &Req::get("/abc.txt").header("If-None-Match", &etag));
        assert_eq!((r.status, r.body.len()), (304, 0), "{proto:?}");
        let head = Req {
            method: "HEAD",
            ..Req::get("/abc.txt")
        };
        let r = p.ok(proto, &head);
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.header("content-length"), Some("10"), "{proto:?}");
        assert!(r.body.is_empty(), "{proto:?}");
        let r = p.ok(proto, &Req::get("/nope.txt"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "missing 404"),
            "{proto:?}"
        );
    }
}

/// `encode`: a compressed body that decodes to the original, on every path.
#[test]
fn encode_compresses_on_every_path() {
    use std::io::Read;
    let text = "compress me please ".repeat(200);
    let p = Paths::start(
        &bin(),
        &format!("\tencode gzip\n\theader Content-Type text/plain\n\trespond \"{text}\"\n"),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/").header("Accept-Encoding", "gzip"));
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{proto:?}");
        let mut out = String::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut out)
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        assert_eq!(out, text, "{proto:?}");
        let plain = p.ok(proto, &Req::get("/"));
        assert_eq!(plain.header("content-encoding"), None, "{proto:?}");
        assert_eq!(plain.text(), text, "{proto:?}");
    }
}

/// Security middleware answers alike: `basic_auth`, `ip_filter`, `request_body`.
#[test]
fn security_middleware_on_every_path() {
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /secret {{\n\t\tbasic_auth {{\n\t\t\towner {HASH}\n\t\t}}\n\t\trespond \"secret {{http.auth.user.id}}\"\n\t}}\n\
             \thandle /blocked {{\n\t\tip_filter {{\n\t\t\tdeny 127.0.0.1/32\n\t\t}}\n\t\trespond \"open\"\n\t}}\n\
             \thandle /small {{\n\t\trequest_body {{\n\t\t\tmax_size 8B\n\t\t}}\n\t\trespond \"fits\"\n\t}}\n\
             \trespond ok\n"
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/secret"));
        assert_eq!(r.status, 401, "{proto:?}");
        assert!(r.header("www-authenticate").is_some(), "{proto:?}");
        let r = p.ok(
            proto,
            &Req::get("/secret").header("Authorization", "Basic b3duZXI6aHVudGVyMg=="),
        );
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "secret owner"),
            "{proto:?}"
        );
        assert_eq!(p.ok(proto, &Req::get("/blocked")).status, 403, "{proto:?}");
        let r = p.ok(proto, &Req::post("/small", b"0123456789abcdef".to_vec()));
        assert_eq!(r.status, 413, "{proto:?}");
        let r = p.ok(proto, &Req::post("/small", b"tiny".to_vec()));
        assert_eq!((r.status, r.text().as_str()), (200, "fits"), "{proto:?}");
    }
}

/// Proxying: forwarding headers by scheme, `header_up`/`header_down`, a request body
/// streamed up, and upstream failures through `handle_errors`.
#[test]
fn proxying_on_every_path() {
    let o = origin::http("app");
    let dead = free_port();
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /dead/* {{\n\t\treverse_proxy 127.0.0.1:{dead}\n\t}}\n\
             \thandle_errors {{\n\t\trespond \"upstream said {{err.status_code}}\"\n\t}}\n\
             \treverse_proxy 127.0.0.1:{} {{\n\t\theader_up X-Up yes\n\t\theader_down -X-Backend-Secret\n\t\theader_down X-Down added\n\t}}\n",
            o.port
        ),
    );
    for proto in ALL {
        let tls = matches!(proto, Proto::H1Tls | Proto::H2Tls | Proto::H3);
        let r = p.ok(proto, &Req::get("/echo?q=1"));
        assert_eq!(r.status, 200, "{proto:?}");
        let text = r.text().to_ascii_lowercase();
        let scheme = if tls { "https" } else { "http" };
        assert!(
            text.contains(&format!("x-forwarded-proto: {scheme}")),
            "{proto:?}: {text}"
        );
        assert!(
            text.contains("x-forwarded-for: 127.0.0.1"),
            "{proto:?}: {text}"
        );
        assert!(text.contains("x-up: yes"), "{proto:?}: {text}");
        assert!(text.contains("uri: /echo?q=1"), "{proto:?}: {text}");
        assert_eq!(r.header("x-down"), Some("added"), "{proto:?}");
        assert_eq!(r.header("x-backend-secret"), None, "{proto:?}");
        assert!(r.header("x-request-id").is_some(), "{proto:?}");
        let r = p.ok(proto, &Req::post("/upload", vec![b'b'; 300_000]));
        assert!(r.text().contains("body: 300000"), "{proto:?}: {}", r.text());
        let r = p.ok(proto, &Req::get("/dead/x"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (502, "upstream said 502"),
            "{proto:?}"
        );
    }
}

/// The access log has one record per request with the protocol it came over.
#[test]
fn access_logs_name_the_protocol_on_every_path() {
    let o = origin::http("app");
    let p = Paths::start(
        &bin(),
        &format!(
            "\tlog {{\n\t\toutput file SCRATCH/INSTANCE.log\n\t}}\n\
             \thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:{}\n\t}}\n\
             \trespond \"logged\" 202\n",
            o.port
        ),
    );
    let want = [
        (Proto::H1Lean, "HTTP/1.1"),
        (Proto::H1Pingora, "HTTP/1.1"),
        (Proto::H1Tls, "HTTP/1.1"),
        (Proto::H2Tls, "HTTP/2.0"),
        (Proto::H2c, "HTTP/2.0"),
        (Proto::H3, "HTTP/3.0"),
    ];
    let record = |proto: Proto, path: &str| -> serde_json::Value {
        let instance = if proto == Proto::H1Pingora {
            "pingora"
        } else {
            "main"
        };
        let file = p.scratch().join(format!("{instance}.log"));
        let needle = format!("\"uri\":\"{path}\"");
        let found = wait_until(std::time::Duration::from_secs(5), || {
            std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&needle))
        });
        assert!(found, "{proto:?}: no record for {path}");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default()
            .to_string();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{proto:?}: {e}: {line}"))
    };
    for (proto, name) in want {
        let tls = matches!(proto, Proto::H1Tls | Proto::H2Tls | Proto::H3);
        let path = format!("/log-{proto:?}");
        let req = Req::get(&path).header("X-Probe", "yes");
        assert_eq!(p.ok(proto, &req).status, 202, "{proto:?}");
        // Caddy's access-log schema on every path.
        let v = record(proto, &path);
        assert_eq!(
            v.pointer("/request/proto").and_then(|p| p.as_str()),
            Some(name),
            "{proto:?}: {v}"
        );
        assert_eq!(v["status"], 202, "{proto:?}: {v}");
        assert_eq!(v["logger"], "http.log.access", "{proto:?}");
        assert_eq!(
            v["request"]["headers"]["X-Probe"][0], "yes",
            "{proto:?}: {v}"
        );
        assert_eq!(
            v["resp_headers"]["Content-Length"][0], "6",
            "{proto:?}: {v}"
        );
        assert_eq!(v["size"], 6, "{proto:?}: {v}");
        if tls {
            let version = v.pointer("/request/tls/version").and_then(|x| x.as_u64());
            assert_eq!(version, Some(0x0304), "{proto:?}: {v}");
            assert_eq!(
                v["request"]["tls"]["server_name"], "localhost",
                "{proto:?}: {v}"
            );
        } else {
            assert!(v["request"].get("tls").is_none(), "{proto:?}: {v}");
        }
        // A proxied answer's fields, as the client got them.
        let up = format!("/up/log-{proto:?}");
        assert_eq!(p.ok(proto, &Req::get(&up)).status, 200, "{proto:?}");
        let v = record(proto, &up);
        assert_eq!(
            v["resp_headers"]["Content-Type"][0], "text/plain",
            "{proto:?}: {v}"
        );
        assert!(
            v["resp_headers"].get("Connection").is_none(),
            "{proto:?}: {v}"
        );
    }
}

/// The HTTP/1.1 paths read requests alike (the lean path is the front door of plain and
/// TLS connections, whoever serves the request): pipelined requests are answered in
/// order, an HTTP version other than 1.x is 505, an over-long target 414, and a client
/// trickling its head is cut off at `read_header`.
#[test]
fn http1_paths_read_requests_alike() {
    use std::time::Duration;
    let p = Paths::start_with(
        &bin(),
        "\t\ttimeouts {\n\t\t\tread_header 1s\n\t\t}",
        "\trespond \"at {path}\"\n",
    );
    for proto in [Proto::H1Lean, Proto::H1Pingora, Proto::H1Tls] {
        let (text, _) = p.raw_h1(
            proto,
            &[b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"],
            Duration::ZERO,
            Duration::from_secs(5),
        );
        let one = text.find("at /one");
        let two = text.find("at /two");
        assert!(
            one.is_some() && two.is_some() && one < two,
            "{proto:?}: pipelined answers: {text:?}"
        );
        assert_eq!(
            text.matches("HTTP/1.1 200").count(),
            2,
            "{proto:?}: {text:?}"
        );

        let (text, _) = p.raw_h1(
            proto,
            &[b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n"],
            Duration::ZERO,
            Duration::from_secs(5),
        );
        assert!(text.starts_with("HTTP/1.1 505"), "{proto:?}: {text:?}");

        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let (text, _) = p.raw_h1(
            proto,
            &[long.as_bytes()],
            Duration::ZERO,
            Duration::from_secs(5),
        );
        assert!(text.starts_with("HTTP/1.1 414"), "{proto:?}: {text:?}");

        // A header line every 300 ms: the head is never complete within 1 s.
        let trickle: Vec<&[u8]> = std::iter::once(&b"GET / HTTP/1.1\r\nHost: localhost\r\n"[..])
            .chain(std::iter::repeat_n(&b"X-Slow: 1\r\n"[..], 12))
            .collect();
        let started = std::time::Instant::now();
        let (text, closed) = p.raw_h1(
            proto,
            &trickle,
            Duration::from_millis(300),
            Duration::from_secs(3),
        );
        assert!(
            closed,
            "{proto:?}: a trickling client still connected: {text:?}"
        );
        assert!(!text.contains("200"), "{proto:?}: {text:?}");
        assert!(started.elapsed() < Duration::from_secs(8), "{proto:?}");
    }
}

/// First-party analytics on every path: the script is served, and HTML pages (replies
/// Dwaar makes and proxied ones, compressed by the origin or not) get its tag once.
#[test]
fn analytics_injects_on_every_path() {
    let origin = dwaar_testkit::pages::html_origin();
    let p = Paths::start(
        &bin(),
        &format!(
            "\tanalytics\n\
             \thandle /hello {{\n\t\theader Content-Type text/html\n\t\trespond \"<html><body>hi</body></html>\"\n\t}}\n\
             \treverse_proxy 127.0.0.1:{origin}\n"
        ),
    );
    const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    for proto in ALL {
        let js = p.ok(proto, &Req::get("/_dwaar/a.js"));
        assert_eq!(js.status, 200, "{proto:?}");
        assert!(
            js.header("content-type")
                .is_some_and(|t| t.contains("javascript")),
            "{proto:?}: {:?}",
            js.headers
        );
        for path in ["/hello", "/page"] {
            let r = p.ok(proto, &Req::get(path).header("User-Agent", BROWSER));
            assert_eq!(r.status, 200, "{proto:?} {path}");
            assert_eq!(
                r.text().matches("/_dwaar/a.js").count(),
                1,
                "{proto:?} {path}: {}",
                r.text()
            );
        }
        let gz = p.ok(
            proto,
            &Req::get("/page")
                .header("User-Agent", BROWSER)
                .header("Accept-Encoding", "gzip"),
        );
        let body = dwaar_testkit::pages::decompress(gz.header("content-encoding"), &gz.body);
        assert_eq!(
            String::from_utf8_lossy(&body)
                .matches("/_dwaar/a.js")
                .count(),
            1,
            "{proto:?}: compressed page"
        );
    }
}

/// A kept FastCGI connection holds one of the responder's workers: two Dwaar processes
/// sharing a php-fpm pool of one worker both get answers (idle connections are closed
/// after a short while instead of after the 2-minute keep-alive).
#[test]
fn kept_fastcgi_connections_do_not_starve_other_processes() {
    let Some(bin_fpm) = dwaar_testkit::php::binary() else {
        eprintln!("skipping: php-fpm is not installed");
        return;
    };
    let fpm = dwaar_testkit::php::PhpFpm::start(&bin_fpm);
    let app = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(app.path().join("index.php"), "<?php echo 'php ok';")
        .unwrap_or_else(|e| panic!("{e}"));
    let p = Paths::start(
        &bin(),
        &format!(
            "\troot * {}\n\tphp_fastcgi unix/{}\n",
            app.path().display(),
            fpm.socket.display()
        ),
    );
    // The main process keeps its connection (the pool's one worker) ...
    let r = p.ok(Proto::H1Lean, &Req::get("/index.php"));
    assert_eq!(r.text(), "php ok");
    // ... and the other process is answered once it is let go.
    let started = std::time::Instant::now();
    let r = p.ok(Proto::H1Pingora, &Req::get("/index.php"));
    assert_eq!(r.text(), "php ok");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for proto in ALL {
        assert_eq!(
            p.ok(proto, &Req::get("/index.php")).text(),
            "php ok",
            "{proto:?}"
        );
    }
}

/// WebSocket upgrades tunnel both ways on the three HTTP/1.1 paths (over TLS the lean
/// path hands the connection, with the bytes it read, to Pingora).
#[test]
fn websocket_upgrades_on_http1_paths() {
    use std::time::Duration;
    let o = origin::http("ws");
    let p = Paths::start(&bin(), &format!("\treverse_proxy 127.0.0.1:{}\n", o.port));
    // A masked text frame "hello" (mask 1,2,3,4).
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for proto in [Proto::H1Lean, Proto::H1Pingora, Proto::H1Tls] {
        let (text, _) = p.raw_h1(
            proto,
            &[
                b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                &frame,
            ],
            Duration::from_millis(300),
            Duration::from_secs(2),
        );
        assert!(text.starts_with("HTTP/1.1 101"), "{proto:?}: {text:?}");
        assert!(text.contains("hello"), "{proto:?}: no echo in {text:?}");
    }
}

/// A large upload reaches the origin whole on every path, and on the HTTP/1.1 paths a
/// request pipelined right behind its body is still answered (the lean path streams
/// bodies in bulk reads through the upstream connection's buffer and must hand back
/// what follows the body).
#[test]
fn large_uploads_arrive_whole_and_what_follows_them_is_served() {
    use std::time::Duration;
    let o = origin::http("sink");
    let p = Paths::start(&bin(), &format!("\treverse_proxy 127.0.0.1:{}\n", o.port));
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for proto in ALL {
        let r = p.ok(proto, &Req::post("/up", body.clone()));
        assert_eq!(r.status, 200, "{proto:?}");
        assert!(
            r.text().contains(&format!("body: {}\n", body.len())),
            "{proto:?}: {}",
            r.text()
        );
    }
    let mut raw = format!(
        "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    for proto in [Proto::H1Lean, Proto::H1Pingora, Proto::H1Tls] {
        let (text, _) = p.raw_h1(proto, &[&raw], Duration::ZERO, Duration::from_secs(10));
        assert!(
            text.contains("uri: /first") && text.contains(&format!("body: {}\n", body.len())),
            "{proto:?}: {text:?}"
        );
        assert!(text.contains("uri: /second"), "{proto:?}: {text:?}");
    }
}

/// The strict HTTP/1 reader judges every head on every HTTP/1.1 path, TLS included:
/// `Content-Length` lists and repeats, a space in the target and a chunk line ended by
/// a bare LF are 400 and close the connection; a chunked request served by Pingora
/// (lent the connection) is followed by heads judged the same way. (Proxied: a
/// `respond` answers without reading the body and closes.)
#[test]
fn http1_paths_refuse_ambiguous_requests_alike() {
    use std::time::Duration;
    let origin = origin::http("strict");
    let p = Paths::start(
        &bin(),
        &format!("\treverse_proxy 127.0.0.1:{}\n", origin.port),
    );
    let h = "Host: localhost\r\n";
    let chunked = format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n");
    for proto in [Proto::H1Lean, Proto::H1Pingora, Proto::H1Tls] {
        for (name, raw) in [
            (
                "CL list",
                format!("POST / HTTP/1.1\r\n{h}Content-Length: 2, 2\r\n\r\nab"),
            ),
            (
                "repeated CL",
                format!("POST / HTTP/1.1\r\n{h}Content-Length: 2\r\nContent-Length: 2\r\n\r\nab"),
            ),
            ("space in target", format!("GET /a b HTTP/1.1\r\n{h}\r\n")),
            ("chunk line ended by LF", format!("{chunked}2;a\nab\n0\n\n")),
            (
                "after a lent chunked request",
                format!("{chunked}2\r\nok\r\n0\r\n\r\nGET /a b HTTP/1.1\r\n{h}\r\n"),
            ),
        ] {
            let (text, closed) = p.raw_h1(
                proto,
                &[raw.as_bytes()],
                Duration::ZERO,
                Duration::from_secs(5),
            );
            let last = text.rfind("HTTP/1.1 ").map(|i| &text[i..]).unwrap_or("");
            assert!(
                last.starts_with("HTTP/1.1 400"),
                "{proto:?} {name}: {text:?}"
            );
            assert!(closed, "{proto:?} {name}: left open");
        }
    }
}

/// `max_header_size` (32 KiB of fields by default) holds on every path: 431 above it.
#[test]
fn oversized_request_heads_are_431_on_every_path() {
    let p = Paths::start(&bin(), "\trespond \"ok\"\n");
    let small = "a".repeat(20 * 1024);
    let big = "a".repeat(40 * 1024);
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/").header("X-Big", &small));
        assert_eq!(r.status, 200, "{proto:?}");
        let r = p.send(proto, &Req::get("/").header("X-Big", &big));
        assert!(
            r.as_ref().is_ok_and(|r| r.status == 431),
            "{proto:?}: {:?}",
            r.map(|r| r.status)
        );
    }
}

/// Load-balancing policies run in the shared lifecycle: `weighted_round_robin 3 1` gives
/// 6 and 2 of every 8 requests, and `query` sticks to one upstream, on every path.
#[test]
fn weighted_and_query_policies_on_every_path() {
    let a = origin::http("a");
    let b = origin::http("b");
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /w/* {{\n\t\treverse_proxy 127.0.0.1:{0} 127.0.0.1:{1} {{\n\t\t\tlb_policy weighted_round_robin 3 1\n\t\t}}\n\t}}\n\
             \thandle /q/* {{\n\t\treverse_proxy 127.0.0.1:{0} 127.0.0.1:{1} {{\n\t\t\tlb_policy query user\n\t\t}}\n\t}}\n",
            a.port, b.port
        ),
    );
    for proto in ALL {
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8 {
            let r = p.ok(proto, &Req::get("/w/x"));
            *counts
                .entry(r.header("x-origin").unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            (counts.get("a"), counts.get("b")),
            (Some(&6), Some(&2)),
            "{proto:?}: {counts:?}"
        );
        let owners: std::collections::HashSet<String> = (0..5)
            .map(|_| {
                p.ok(proto, &Req::get("/q/x?user=alice"))
                    .header("x-origin")
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        assert_eq!(owners.len(), 1, "{proto:?}: {owners:?}");
    }
}

/// An upstream that fails a request after receiving it: a GET goes to the next upstream
/// (`lb_retries`) on every path; a DELETE only where `lb_retry_match` lets it.
#[test]
fn requests_failed_after_sending_are_retried_as_matched_on_every_path() {
    let bad = origin::dropping();
    let good = origin::http("good");
    let p = Paths::start(
        &bin(),
        &format!(
            "\treverse_proxy 127.0.0.1:{bad} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\tlb_retries 1\n\t\tlb_retry_match {{\n\t\t\tmethod GET DELETE\n\t\t\tpath /again/*\n\t\t}}\n\t}}\n",
            good.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/again/x"));
        assert_eq!(
            (r.status, r.header("x-origin")),
            (200, Some("good")),
            "{proto:?}"
        );
        let del = Req {
            method: "DELETE",
            path: "/again/y",
            ..Req::default()
        };
        assert_eq!(p.ok(proto, &del).status, 200, "{proto:?}: DELETE matches");
        assert_eq!(
            p.ok(proto, &Req::get("/other")).status,
            502,
            "{proto:?}: not matched"
        );
    }
}

/// The TLS placeholders name what the handshake settled on every TLS path (version,
/// suite, ALPN, SNI) and are empty on plain ones.
#[test]
fn tls_placeholders_on_every_path() {
    let p = Paths::start(
        &bin(),
        "\trespond \"{tls_version}|{tls_cipher}|{http.request.tls.proto}|{http.request.tls.server_name}|{http.request.tls.resumed}\"\n",
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/"));
        let text = r.text();
        let parts: Vec<&str> = text.split('|').collect();
        match proto {
            Proto::H1Lean | Proto::H1Pingora | Proto::H2c => {
                assert_eq!(text, "||||", "{proto:?}")
            }
            _ => {
                assert_eq!(parts[0], "tls1.3", "{proto:?}: {text}");
                let alpn = match proto {
                    Proto::H1Tls => "http/1.1",
                    Proto::H2Tls => "h2",
                    _ => "h3",
                };
                assert_eq!(parts[2], alpn, "{proto:?}: {text}");
                assert_eq!(parts[3], "localhost", "{proto:?}: {text}");
                assert!(parts[4] == "false" || parts[4] == "true", "{text}");
                if proto != Proto::H3 {
                    assert!(parts[1].starts_with("TLS_"), "{proto:?}: {text}");
                }
            }
        }
    }
}

/// `transport http { tls_client_auth }`: a TLS upstream that requires and verifies client
/// certificates (a second Dwaar with `client_auth`) answers on every path; without the
/// certificate it refuses the handshake (502).
#[test]
fn tls_client_auth_to_upstreams_on_every_path() {
    let ca = origin::TestCa::new();
    let (client_cert, client_key) = ca.issue("client", &["client.test"]);
    let (http, backend) = (free_port(), free_port());
    let _upstream = Dwaar::start(
        &bin(),
        &format!(
            "{{\n\thttp_port {http}\n\thttps_port {backend}\n\tauto_https disable_redirects\n}}\n\
             https://localhost:{backend} {{\n\ttls {} {} {{\n\t\tclient_auth {{\n\t\t\tmode require_and_verify\n\t\t\ttrusted_ca_cert_file {}\n\t\t}}\n\t}}\n\theader X-Client \"{{tls_client_subject}}|{{tls_client_serial}}|{{tls_client_fingerprint}}|{{tls_client_issuer}}\"\n\theader X-Client-Key \"{{http.request.tls.client.san.dns_names}}|{{http.request.tls.client.san.dns_names.0}}|{{http.request.tls.client.public_key}}|{{http.request.tls.client.public_key_sha256}}|{{http.request.tls.ech}}\"\n\trespond \"mtls ok\"\n}}\n",
            ca.cert_pem.display(),
            ca.key_pem.display(),
            ca.ca_pem.display()
        ),
        &[backend],
    );
    let front = |auth: &str| {
        format!(
            "\treverse_proxy https://127.0.0.1:{backend} {{\n\t\ttransport http {{\n\t\t\ttls_server_name localhost\n\t\t\ttls_trusted_ca_certs {}\n{auth}\t\t}}\n\t}}\n",
            ca.ca_pem.display()
        )
    };
    let p = Paths::start(
        &bin(),
        &front(&format!(
            "\t\t\ttls_client_auth {} {}\n",
            client_cert.display(),
            client_key.display()
        )),
    );
    // What the upstream learnt of the client certificate (`{tls_client_*}`), as
    // openssl prints it.
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .arg("x509")
            .args(["-noout", "-nameopt", "RFC2253", "-in"])
            .arg(&client_cert)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let subject = openssl(&["-subject"]).replacen("subject=", "", 1);
    let issuer = openssl(&["-issuer"]).replacen("issuer=", "", 1);
    let fingerprint = openssl(&["-fingerprint", "-sha256"])
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_ascii_lowercase();
    // The key's bytes: the end of its SubjectPublicKeyInfo (a P-256 point, 65 bytes).
    let key_bytes = |filter: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER | tail -c 65 | {filter}",
                client_cert.display()
            ))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key_hex = key_bytes("od -An -v -tx1").replace([' ', '\n'], "");
    let key_sha = key_bytes("openssl dgst -sha256 -r")
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        key_hex.len() == 130 && key_hex.starts_with("04") && key_sha.len() == 64,
        "{key_hex} {key_sha}"
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/"));
        assert_eq!((r.status, r.text().as_str()), (200, "mtls ok"), "{proto:?}");
        assert_eq!(
            r.header("x-client-key").unwrap_or_default(),
            format!("[client.test]|client.test|{key_hex}|{key_sha}|false"),
            "{proto:?}"
        );
        let client = r.header("x-client").unwrap_or_default().to_string();
        let parts: Vec<&str> = client.split('|').collect();
        assert_eq!(parts.len(), 4, "{client}");
        assert_eq!(parts[0], subject.trim(), "{proto:?}");
        assert!(
            !parts[1].is_empty() && parts[1].bytes().all(|b| b.is_ascii_digit()),
            "{client}"
        );
        assert_eq!(parts[2], fingerprint, "{proto:?}");
        assert_eq!(parts[3], issuer.trim(), "{proto:?}");
    }
    drop(p);
    let without = Paths::start(&bin(), &front(""));
    for proto in ALL {
        assert_eq!(without.ok(proto, &Req::get("/")).status, 502, "{proto:?}");
    }
}

/// `reverse_proxy {http.request.header.X-Backend}`: the upstream is filled in per request
/// (an IP address or a host name, looked up without blocking) on every path; a request
/// that names none gets 503.
#[test]
fn placeholder_upstreams_on_every_path() {
    let a = origin::http("a");
    let b = origin::http("b");
    let p = Paths::start(&bin(), "\treverse_proxy {http.request.header.X-Backend}\n");
    let to_a = format!("127.0.0.1:{}", a.port);
    let to_b = format!("localhost:{}", b.port);
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/").header("X-Backend", &to_a));
        assert_eq!(r.header("x-origin"), Some("a"), "{proto:?}");
        let r = p.ok(proto, &Req::get("/").header("X-Backend", &to_b));
        assert_eq!(r.header("x-origin"), Some("b"), "{proto:?}: a host name");
        assert_eq!(
            p.ok(proto, &Req::get("/")).status,
            503,
            "{proto:?}: none named"
        );
    }
}

/// `replace_status` with response matchers (`status`, `header`): the first matching rule
/// sets the status the client sees, the body is the upstream's, on every path.
#[test]
fn replace_status_on_every_path() {
    let o = origin::http("up");
    let p = Paths::start(
        &bin(),
        &format!(
            "\treverse_proxy 127.0.0.1:{} {{\n\t\t@bad status 5xx\n\t\treplace_status @bad 299\n\t\t@tagged {{\n\t\t\theader X-Origin u*\n\t\t}}\n\t\treplace_status @tagged 203\n\t}}\n",
            o.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/status/503"));
        assert_eq!(r.status, 299, "{proto:?}: 5xx replaced first");
        let r = p.ok(proto, &Req::get("/hello"));
        assert_eq!(r.status, 203, "{proto:?}: header matcher");
        assert!(
            r.text().contains("uri: /hello"),
            "{proto:?}: the upstream's body"
        );
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (body, want) in [
        ("replace_status @nope 200", "does not define"),
        (
            "@x status 7xx\n\t\treplace_status @x 200",
            "invalid status '7xx'",
        ),
        ("copy_response", "goes inside a handle_response block"),
        (
            "handle_response {\n\t\t\tcopy_response_headers {\n\t\t\t\tinclude A\n\t\t\t\texclude B\n\t\t\t}\n\t\t}",
            "either include or exclude",
        ),
        (
            "handle_response @nope {\n\t\t\trespond x\n\t\t}",
            "does not define",
        ),
    ] {
        std::fs::write(
            dir.path().join("Dwaarfile"),
            format!(":1 {{\n\treverse_proxy 127.0.0.1:2 {{\n\t\t{body}\n\t}}\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1, "{body}");
        assert!(err.contains(want), "{body}: {err}");
    }
}

/// An upstream's interim answers (`102 Processing`, `103 Early Hints`) before its final
/// response: the final response arrives on every path (the lean path once answered
/// 502); HTTP/1.1 clients get the interim heads ahead of it, as the upstream sent them.
#[test]
fn early_hints_from_upstreams_pass_on_every_path() {
    let port = origin::canned(
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let p = Paths::start(&bin(), &format!("\treverse_proxy 127.0.0.1:{port}\n"));
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{proto:?}");
    }
    for proto in [Proto::H1Lean, Proto::H1Pingora] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p.port(proto)))
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let hints = out.find("HTTP/1.1 103").unwrap_or(usize::MAX);
        let last = out.find("HTTP/1.1 200").unwrap_or(0);
        assert!(hints < last, "{proto:?}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("link: </app.css>; rel=preload"),
            "{out}"
        );
        assert!(
            out.find("HTTP/1.1 102").unwrap_or(usize::MAX) < hints,
            "{proto:?}: {out}"
        );
    }
    // HTTP/2 carries them as interim HEADERS frames (curl prints each head it gets).
    if have_tool("curl") {
        let out = std::process::Command::new("curl")
            .args(["-sv", "--http2-prior-knowledge"])
            .arg(format!("http://127.0.0.1:{}/", p.port(Proto::H2c)))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("< HTTP/2 103"), "{err}");
        assert!(err.contains("< HTTP/2 200"), "{err}");
    }
}

/// `copy_response` and `copy_response_*` outside a reverse_proxy's `handle_response`
/// routes are refused at their line (with a hint under `intercept`).
#[test]
fn copy_response_needs_a_proxy_answer() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (body, want) in [
        ("copy_response", "'copy_response' only works inside"),
        (
            "intercept {\n\t\thandle_response {\n\t\t\tcopy_response_headers\n\t\t}\n\t}",
            "original response is written",
        ),
        ("intercept", "needs replace_status or handle_response"),
        (
            "intercept {\n\t\treplace_status @x 200\n\t}",
            "does not define",
        ),
    ] {
        std::fs::write(
            dir.path().join("Dwaarfile"),
            format!(":1 {{\n\t{body}\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1, "{body}");
        assert!(err.contains(want), "{body}: {err}");
    }
}

/// `copy_response` relays the upstream's answer after all (its status replaced, the
/// fields the routes set kept); `copy_response_headers` brings chosen upstream fields to
/// the routes' own reply; `intercept` acts on what `respond` and `reverse_proxy` write
/// (`{resp.*}`, `replace_status`, routes that only add fields): on every path.
#[test]
fn copy_response_and_intercept_on_every_path() {
    let echo = origin::http("echo");
    let port = echo.port;
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle_path /copy/* {{
\t\treverse_proxy 127.0.0.1:{port} {{
\t\t\t@missing status 404
\t\t\thandle_response @missing {{
\t\t\t\theader X-Handled yes
\t\t\t\tcopy_response 410
\t\t\t}}
\t\t\t@teapot status 418
\t\t\thandle_response @teapot {{
\t\t\t\tcopy_response_headers {{
\t\t\t\t\tinclude X-Origin
\t\t\t\t}}
\t\t\t\trespond \"teapot from {{rp.header.X-Origin}}\" 200
\t\t\t}}
\t\t}}
\t}}
\thandle_path /icpt/* {{
\t\tintercept {{
\t\t\t@missing status 404
\t\t\thandle_response @missing {{
\t\t\t\trespond \"intercepted {{resp.status_code}} from {{resp.header.X-Origin}}\" 200
\t\t\t}}
\t\t\t@created status 201
\t\t\treplace_status @created 202
\t\t\t@ok status 200
\t\t\thandle_response @ok {{
\t\t\t\theader X-Seen {{resp.status_code}}
\t\t\t}}
\t\t}}
\t\t@made path /made
\t\trespond @made \"made\" 201
\t\treverse_proxy 127.0.0.1:{port}
\t}}
"
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/copy/status/404"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (410, "status 404 from echo"),
            "{proto:?}: copied with a new status"
        );
        assert_eq!(r.header("x-handled"), Some("yes"), "{proto:?}");
        assert_eq!(r.header("x-origin"), Some("echo"), "{proto:?}");
        let r = p.ok(proto, &Req::get("/copy/status/418"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "teapot from echo"),
            "{proto:?}"
        );
        assert_eq!(
            r.header("x-origin"),
            Some("echo"),
            "{proto:?}: copied field"
        );
        let r = p.ok(proto, &Req::get("/copy/status/200"));
        assert_eq!(r.status, 200, "{proto:?}: not matched, relayed");
        let r = p.ok(proto, &Req::get("/icpt/status/404"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "intercepted 404 from echo"),
            "{proto:?}"
        );
        let r = p.ok(proto, &Req::get("/icpt/made"));
        assert_eq!((r.status, r.text().as_str()), (202, "made"), "{proto:?}");
        let r = p.ok(proto, &Req::get("/icpt/status/201"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (202, "status 201 from echo"),
            "{proto:?}: a proxied answer's status replaced"
        );
        let r = p.ok(proto, &Req::get("/icpt/status/200"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "status 200 from echo"),
            "{proto:?}: routes that write nothing let the original through"
        );
        assert_eq!(r.header("x-seen"), Some("200"), "{proto:?}");
    }
}

/// `handle_response`: an upstream's `X-Accel-Redirect` is served by `file_server` from
/// the proxy's own files (the upstream body is dropped), and an upstream 5xx is replaced
/// by a page that names `{rp.status_code}`, on every path.
#[test]
fn handle_response_serves_files_and_replaces_errors_on_every_path() {
    // An upstream that always answers with an X-Accel-Redirect to /secret.txt.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let accel = l.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = s;
                let mut buf = [0u8; 8192];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let r = b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /secret.txt\r\nContent-Length: 15\r\n\r\nupstream's body";
                    if s.write_all(r).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let echo = origin::http("echo");
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /accel/* {{\n\t\treverse_proxy 127.0.0.1:{accel} {{\n\t\t\t@accel header X-Accel-Redirect *\n\t\t\thandle_response @accel {{\n\t\t\t\troot * SCRATCH\n\t\t\t\trewrite * {{rp.header.X-Accel-Redirect}}\n\t\t\t\tfile_server\n\t\t\t}}\n\t\t}}\n\t}}\n\
             \thandle_path /err/* {{\n\t\treverse_proxy 127.0.0.1:{} {{\n\t\t\t@bad status 5xx\n\t\t\thandle_response @bad {{\n\t\t\t\trespond \"custom page for {{rp.status_code}}\" 503\n\t\t\t}}\n\t\t}}\n\t}}\n",
            echo.port
        ),
    );
    std::fs::write(p.scratch().join("secret.txt"), "top secret").unwrap_or_else(|e| panic!("{e}"));
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/accel/download"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "top secret"),
            "{proto:?}"
        );
        let r = p.ok(proto, &Req::get("/err/status/502"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (503, "custom page for 502"),
            "{proto:?}"
        );
        // Not matched: relayed as it is.
        let r = p.ok(proto, &Req::get("/err/status/404"));
        assert_eq!(r.status, 404, "{proto:?}");
    }
}

/// `request_buffers`: a body of unknown length that ends within the bound reaches the
/// upstream with a `Content-Length`, a longer one arrives whole (streamed on), and a
/// body held whole is sent again when `lb_retry_match` allows. `response_buffers`: a
/// chunked answer held whole goes to the client with its length. Every path.
#[test]
fn request_and_response_buffers_on_every_path() {
    let o = origin::http("app");
    let bad = origin::dropping();
    let port = o.port;
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /big/* {{\n\t\treverse_proxy 127.0.0.1:{port} {{\n\t\t\trequest_buffers 100KB\n\t\t}}\n\t}}\n\
             \thandle /again/* {{\n\t\treverse_proxy 127.0.0.1:{bad} 127.0.0.1:{port} {{\n\t\t\tlb_policy first\n\t\t\tlb_retries 1\n\t\t\tlb_retry_match {{\n\t\t\t\tmethod POST\n\t\t\t}}\n\t\t\trequest_buffers 1MB\n\t\t}}\n\t}}\n\
             \treverse_proxy 127.0.0.1:{port} {{\n\t\trequest_buffers 1MB\n\t\tresponse_buffers 64KB\n\t}}\n"
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::post("/small", vec![b'a'; 5000]).unsized_body());
        let t = r.text().to_ascii_lowercase();
        assert!(t.contains("body: 5000"), "{proto:?}: {t}");
        assert!(t.contains("h:content-length: 5000"), "{proto:?}: {t}");
        assert!(!t.contains("h:transfer-encoding"), "{proto:?}: {t}");

        let r = p.ok(
            proto,
            &Req::post("/big/x", vec![b'b'; 300_000]).unsized_body(),
        );
        let t = r.text().to_ascii_lowercase();
        assert!(t.contains("body: 300000"), "{proto:?}: {t}");
        // curl announces the length over HTTP/2 whatever it is told.
        if !matches!(proto, Proto::H2Tls | Proto::H2c) {
            assert!(t.contains("h:transfer-encoding: chunked"), "{proto:?}: {t}");
        }

        let r = p.ok(
            proto,
            &Req::post("/again/x", vec![b'c'; 5000]).unsized_body(),
        );
        assert_eq!(
            (r.status, r.header("x-origin")),
            (200, Some("app")),
            "{proto:?}: a held body is sent again"
        );
        assert!(r.text().contains("body: 5000"), "{proto:?}");

        let r = p.ok(proto, &Req::get("/sse"));
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.header("content-length"), Some("27"), "{proto:?}");
        assert_eq!(r.text(), "data: 1\n\ndata: 2\n\ndata: 3\n\n", "{proto:?}");
    }
}

/// `Expect: 100-continue`: Dwaar tells the client to go on when it reads the body and
/// the upstream gets the body without the field; with `expect_continue_timeout` the
/// upstream is asked first: its `100` lets the body through, its final answer goes to
/// the client without the body, and silence past the timeout sends the body anyway.
#[test]
fn expect_continue_on_every_path() {
    let o = origin::http("app");
    let port = o.port;
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /wait/* {{\n\t\treverse_proxy 127.0.0.1:{port} {{\n\t\t\ttransport http {{\n\t\t\t\texpect_continue_timeout 1s\n\t\t\t}}\n\t\t}}\n\t}}\n\
             \trespond /reply \"no upload\" 403\n\
             \treverse_proxy 127.0.0.1:{port}\n"
        ),
    );
    let body = vec![b'e'; 200_000];
    for proto in ALL {
        // The client waits up to 20 s for `100 Continue`: it must come at once.
        let started = std::time::Instant::now();
        let r = p.ok(proto, &Req::post("/up", body.clone()).expect_continue());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{proto:?}: the client waited for 100 Continue"
        );
        let t = r.text().to_ascii_lowercase();
        assert!(t.contains("body: 200000"), "{proto:?}: {t}");
        assert!(!t.contains("h:expect"), "{proto:?}: {t}");

        let r = p.ok(
            proto,
            &Req::post("/wait/up", body.clone()).expect_continue(),
        );
        let t = r.text().to_ascii_lowercase();
        assert!(t.contains("body: 200000"), "{proto:?}: {t}");
        assert!(t.contains("h:expect: 100-continue"), "{proto:?}: {t}");

        if matches!(proto, Proto::H2Tls | Proto::H2c) {
            // curl 7.88 over HTTP/2 often loses a final answer that comes before its
            // `100` (the stream ends with RST_STREAM NO_ERROR, RFC 9113 §8.1): nghttp
            // is the client here.
            if have_tool("nghttp") {
                let data = p.scratch().join("expect-body");
                std::fs::write(&data, &body).unwrap_or_else(|e| panic!("{e}"));
                let scheme = if proto == Proto::H2c { "http" } else { "https" };
                let out = std::process::Command::new("nghttp")
                    .args(["-nv", "-t", "20", "-H", "expect: 100-continue", "-d"])
                    .arg(&data)
                    .arg(format!(
                        "{scheme}://localhost:{}/wait/refuse-body",
                        p.port(proto)
                    ))
                    .output()
                    .unwrap_or_else(|e| panic!("nghttp: {e}"));
                let log = String::from_utf8_lossy(&out.stdout);
                assert!(log.contains(":status: 413"), "{proto:?}: {log}");
            }
        } else {
            let r = p.ok(
                proto,
                &Req::post("/wait/refuse-body", body.clone()).expect_continue(),
            );
            assert_eq!(r.status, 413, "{proto:?}");
            assert_eq!(r.text(), "no body wanted", "{proto:?}");
        }

        let r = p.ok(
            proto,
            &Req::post("/wait/silent", body.clone()).expect_continue(),
        );
        assert!(r.text().contains("body: 200000"), "{proto:?}");

        // An answer that needs no body is given at once, without asking for the body;
        // an HTTP/1.1 connection then ends (the client may still send the body).
        if matches!(proto, Proto::H1Lean | Proto::H1Pingora | Proto::H1Tls) {
            let (out, closed) = p.raw_h1(
                proto,
                &[b"POST /reply HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"],
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(5),
            );
            assert!(out.starts_with("HTTP/1.1 403"), "{proto:?}: {out}");
            assert!(!out.contains("100 Continue"), "{proto:?}: {out}");
            assert!(closed, "{proto:?}: the connection stayed open: {out}");
        }
    }
}

/// The `expression` matcher on every path: placeholders, matcher functions, CEL string
/// functions, the backtick shorthand, and `handle_errors`.
#[test]
fn expression_matcher_on_every_path() {
    let p = Paths::start(
        &bin(),
        "\t@post expression {method} == \"POST\" && path('/api/*')\n\
         \t@keyed `header({'X-Key': ['a', 'b']}) && {query.x} == \"1\"`\n\
         \t@tls expression {http.request.scheme} == \"https\" && {path}.endsWith(\".json\")\n\
         \t@page expression file({'root': 'SCRATCH', 'try_files': ['{path}.html']}) && !file('/absent')\n\
         \trespond @page \"page {file_match.relative}\"\n\
         \terror /missing 404\n\
         \trespond @post \"post api\"\n\
         \trespond @keyed \"keyed\"\n\
         \trespond @tls \"secure json\"\n\
         \thandle_errors {\n\t\t@nf expression {http.error.status_code} == 404\n\t\trespond @nf \"nf {http.error.status_code}\" 404\n\t}\n\
         \trespond \"none\"\n",
    );
    std::fs::write(p.scratch().join("about.html"), "about").unwrap_or_else(|e| panic!("{e}"));
    for proto in ALL {
        let tls = matches!(proto, Proto::H1Tls | Proto::H2Tls | Proto::H3);
        assert_eq!(
            p.ok(proto, &Req::get("/about")).text(),
            "page /about.html",
            "{proto:?}"
        );
        let r = p.ok(proto, &Req::post("/api/x", b"body".to_vec()));
        assert_eq!(r.text(), "post api", "{proto:?}");
        assert_eq!(p.ok(proto, &Req::get("/api/x")).text(), "none", "{proto:?}");
        let keyed = Req::get("/k?x=1").header("X-Key", "b");
        assert_eq!(p.ok(proto, &keyed).text(), "keyed", "{proto:?}");
        let wrong = Req::get("/k?x=1").header("X-Key", "c");
        assert_eq!(p.ok(proto, &wrong).text(), "none", "{proto:?}");
        let want = if tls { "secure json" } else { "none" };
        assert_eq!(p.ok(proto, &Req::get("/d.json")).text(), want, "{proto:?}");
        let r = p.ok(proto, &Req::get("/missing"));
        assert_eq!((r.status, r.text().as_str()), (404, "nf 404"), "{proto:?}");
    }
}

/// `request_body { set }`: the upstream gets the given body (placeholders filled in,
/// with its length) instead of the client's, on every path.
#[test]
fn request_body_set_on_every_path() {
    let o = origin::http("app");
    let p = Paths::start(
        &bin(),
        &format!(
            "\trequest_body /set/* {{\n\t\tset \"replaced by {{method}}\"\n\t}}\n\
             \treverse_proxy 127.0.0.1:{}\n",
            o.port
        ),
    );
    for proto in ALL {
        let mut reqs = vec![
            Req::post("/set/a", vec![b'c'; 70_000]),
            Req::post("/set/b", vec![b'c'; 5_000]).unsized_body(),
        ];
        // A client waiting for `100 Continue` is answered without being asked for its
        // body (curl 7.88 over HTTP/2 often loses such answers; see
        // `expect_continue_on_every_path`, which checks HTTP/2 with nghttp).
        if !matches!(proto, Proto::H2Tls | Proto::H2c) {
            reqs.push(Req::post("/set/c", vec![b'c'; 5_000]).expect_continue());
        }
        for req in reqs {
            let r = p.ok(proto, &req);
            let t = r.text().to_ascii_lowercase();
            // "replaced by POST": 16 bytes.
            assert!(t.contains("body: 16"), "{proto:?} {}: {t}", req.path);
            assert!(
                t.contains("h:content-length: 16"),
                "{proto:?} {}: {t}",
                req.path
            );
            assert!(
                !t.contains("h:transfer-encoding"),
                "{proto:?} {}: {t}",
                req.path
            );
        }
        let r = p.ok(proto, &Req::post("/other", vec![b'c'; 5_000]));
        assert!(r.text().contains("body: 5000"), "{proto:?}");
    }
}

/// `log_append` values are taken when the record is written, as in Caddy (the chosen
/// upstream and the response are known then); `<field` takes them when the directive
/// runs; a value naming a variable is that variable's value. Every path.
#[test]
fn log_append_late_and_early_on_every_path() {
    let o = origin::http("app");
    let p = Paths::start(
        &bin(),
        &format!(
            "\tlog {{\n\t\toutput file SCRATCH/INSTANCE.log\n\t}}\n\
             \tvars tier gold\n\
             \tlog_append upstream {{http.reverse_proxy.upstream.hostport}}\n\
             \tlog_append <early_upstream {{http.reverse_proxy.upstream.hostport}}\n\
             \tlog_append status {{http.response.status}}\n\
             \tlog_append type {{http.response.header.Content-Type}}\n\
             \tlog_append size {{http.response.size}}\n\
             \tlog_append tier tier\n\
             \treverse_proxy 127.0.0.1:{}\n",
            o.port
        ),
    );
    for proto in ALL {
        let path = format!("/late-{proto:?}");
        let r = p.ok(proto, &Req::get(&path));
        assert_eq!(r.status, 200, "{proto:?}");
        let instance = if proto == Proto::H1Pingora {
            "pingora"
        } else {
            "main"
        };
        let file = p.scratch().join(format!("{instance}.log"));
        let needle = format!("\"uri\":\"{path}\"");
        assert!(
            wait_until(std::time::Duration::from_secs(5), || {
                std::fs::read_to_string(&file)
                    .unwrap_or_default()
                    .contains(&needle)
            }),
            "{proto:?}: no record"
        );
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{proto:?}: {e}: {line}"));
        assert_eq!(
            v["upstream"],
            format!("127.0.0.1:{}", o.port).as_str(),
            "{proto:?}: {line}"
        );
        assert_eq!(v["early_upstream"], "", "{proto:?}: {line}");
        assert_eq!(v["status"], "200", "{proto:?}: {line}");
        assert_eq!(v["type"], "text/plain", "{proto:?}: {line}");
        assert_eq!(
            v["size"].as_str().and_then(|s| s.parse::<usize>().ok()),
            Some(r.body.len()),
            "{proto:?}: {line}"
        );
        assert_eq!(v["tier"], "gold", "{proto:?}: {line}");
    }
}

/// `tracing`: on every path the request becomes one server span, exported over OTLP
/// (HTTP/protobuf here) with the incoming `traceparent` as its parent; the upstream
/// sees a `traceparent` naming that span; `{http.vars.trace_id}` and the access log's
/// `traceID` carry the trace. An unsampled incoming trace is passed on, not exported.
#[test]
fn tracing_spans_on_every_path() {
    let receiver = dwaar_testkit::otlp::Receiver::start();
    let o = origin::http("app");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let p = Paths::start_full(
        &bin(),
        "",
        &format!(
            "\tlog {{\n\t\toutput file SCRATCH/INSTANCE.log\n\t}}\n\
             \ttracing {{\n\t\tspan \"edge {{method}}\"\n\t\tspan_attributes {{\n\t\t\ttenant acme\n\t\t}}\n\t}}\n\
             \theader X-Trace {{http.vars.trace_id}}\n\
             \treverse_proxy 127.0.0.1:{}\n",
            o.port
        ),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "edge-test"),
        ],
    );
    let parent = "00f067aa0ba902b7";
    let mut expected = Vec::new();
    for (i, proto) in ALL.into_iter().enumerate() {
        let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}");
        let incoming = format!("00-{trace}-{parent}-01");
        let r = p.ok(
            proto,
            &Req::get("/echo?x=1").header("traceparent", &incoming),
        );
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(r.header("x-trace"), Some(trace.as_str()), "{proto:?}");
        let text = r.text().to_ascii_lowercase();
        let sent = text
            .lines()
            .find_map(|l| l.strip_prefix("h:traceparent: "))
            .unwrap_or_else(|| panic!("{proto:?}: no traceparent upstream: {text}"))
            .to_string();
        let parts: Vec<&str> = sent.trim().split('-').collect();
        assert_eq!(parts.len(), 4, "{proto:?}: {sent}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace.as_str(), "01"),
            "{proto:?}"
        );
        assert_ne!(
            parts[2], parent,
            "{proto:?}: the upstream must see Dwaar's span"
        );
        expected.push((proto, trace, parts[2].to_string()));
        // An unsampled trace goes on unsampled (and is not exported).
        let quiet = format!("00-{}-{parent}-00", "aa".repeat(16));
        let r = p.ok(proto, &Req::get("/echo").header("traceparent", &quiet));
        let text = r.text().to_ascii_lowercase();
        assert!(
            text.contains(&format!("h:traceparent: 00-{}-", "aa".repeat(16)))
                && text.contains("-00\n"),
            "{proto:?}: {text}"
        );
    }
    wait_until(std::time::Duration::from_secs(10), || {
        let spans = receiver.spans();
        expected
            .iter()
            .all(|(_, t, _)| spans.iter().any(|s| &s.trace_id == t))
    });
    let spans = receiver.spans();
    for (proto, trace, span) in &expected {
        let s = spans
            .iter()
            .find(|s| &s.trace_id == trace)
            .unwrap_or_else(|| panic!("{proto:?}: no span for {trace}: {spans:?}"));
        assert_eq!(&s.span_id, span, "{proto:?}");
        assert_eq!(s.parent_span_id, parent, "{proto:?}");
        assert_eq!(
            (s.name.as_str(), s.kind, s.via),
            ("edge GET", 2, "http"),
            "{proto:?}"
        );
        assert_eq!(
            s.attribute("http.response.status_code"),
            Some("200"),
            "{proto:?}"
        );
        assert_eq!(s.attribute("url.path"), Some("/echo"), "{proto:?}");
        assert_eq!(s.attribute("tenant"), Some("acme"), "{proto:?}");
        assert!(s.end >= s.start && s.start > 0, "{proto:?}");
        assert!(
            s.resource
                .contains(&("service.name".into(), "edge-test".into())),
            "{proto:?}: {:?}",
            s.resource
        );
    }
    assert!(
        !spans.iter().any(|s| s.trace_id == "aa".repeat(16)),
        "unsampled traces are not exported"
    );
    // The access log names the trace and the span.
    let logs = || -> String {
        ["main", "pingora"]
            .iter()
            .map(|i| {
                std::fs::read_to_string(p.scratch().join(format!("{i}.log"))).unwrap_or_default()
            })
            .collect()
    };
    wait_until(std::time::Duration::from_secs(5), || {
        let text = logs();
        expected.iter().all(|(_, t, _)| text.contains(t.as_str()))
    });
    let logs = logs();
    for (proto, trace, span) in &expected {
        assert!(
            logs.contains(&format!("\"traceID\":\"{trace}\""))
                && logs.contains(&format!("\"spanID\":\"{span}\"")),
            "{proto:?}: {logs}"
        );
    }
}

/// `templates` on every path: a file_server page with includes, front matter, markdown,
/// request facts, an `httpInclude` sub-request and a response header; `httpError` and
/// template errors answer with their status; other types pass untouched; a proxied
/// text response is rendered too.
#[test]
fn templates_on_every_path() {
    let o = origin::http("app");
    let site = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = [
        (
            "index.html",
            "{{$post := splitFrontMatter (include \"post.md\")}}<title>{{$post.Meta.title}}</title>\n\
             {{include \"part.html\" \"from-index\"}}\n{{markdown $post.Body}}\
             host={{.Host}} m={{.Req.Method}} q={{.Req.URL.Query.Get \"q\"}} sid={{.Cookie \"sid\"}}\n\
             inc={{httpInclude \"/frag.txt\"}}{{.RespHeader.Set \"X-Rendered\" \"yes\"}}\n",
        ),
        ("post.md", "---\ntitle: Hello\n---\n# Heading\n\nSome *text*.\n"),
        ("part.html", "<nav>{{index .Args 0}}</nav>"),
        ("frag.txt", "fragment {{.Req.URL.Path}}"),
        ("teapot.html", "{{httpError 418}}"),
        ("bad.html", "{{.Nope}}"),
        ("data.bin", "{{x}}"),
    ];
    for (name, text) in files {
        std::fs::write(site.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    let p = Paths::start(
        &bin(),
        &format!(
            "\troot * {}\n\ttemplates\n\thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:{}\n\t}}\n\tfile_server\n",
            site.path().display(),
            o.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/?q=42").header("cookie", "sid=abc"));
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        let text = r.text();
        for want in [
            "<title>Hello</title>\n<nav>from-index</nav>\n",
            "<h1 id=\"heading\">Heading</h1>\n<p>Some <em>text</em>.</p>\n",
            "host=localhost m=GET q=42 sid=abc\n",
            "inc=fragment /frag.txt\n",
        ] {
            assert!(text.contains(want), "{proto:?}: {want:?} not in {text}");
        }
        assert_eq!(r.header("x-rendered"), Some("yes"), "{proto:?}");
        assert_eq!(
            r.header("etag"),
            None,
            "{proto:?}: a rendered page has no file ETag"
        );
        assert_eq!(
            p.ok(proto, &Req::get("/teapot.html")).status,
            418,
            "{proto:?}"
        );
        assert_eq!(p.ok(proto, &Req::get("/bad.html")).status, 500, "{proto:?}");
        assert_eq!(
            p.ok(proto, &Req::get("/data.bin")).text(),
            "{{x}}",
            "{proto:?}"
        );
        let r = p.ok(
            proto,
            &Req::get("/up/echo").header("x-t", "{{upper \"hi\"}}"),
        );
        assert_eq!(r.status, 200, "{proto:?}");
        assert!(r.text().contains("h:x-t: HI"), "{proto:?}: {}", r.text());
    }
}

/// `{http.request.body}` on every path: the body is read before the site's routes run,
/// shown where the placeholder is, and still sent upstream whole.
#[test]
fn request_body_placeholder_on_every_path() {
    let o = origin::http("app");
    let p = Paths::start(
        &bin(),
        &format!(
            "\thandle /echo {{\n\t\trespond \"got={{http.request.body}}\"\n\t}}\n\
             \thandle {{\n\t\trequest_header X-Body {{http.request.body}}\n\t\treverse_proxy 127.0.0.1:{}\n\t}}\n",
            o.port
        ),
    );
    for proto in ALL {
        let r = p.ok(proto, &Req::post("/echo", b"hello world".to_vec()));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "got=hello world"),
            "{proto:?}"
        );
        assert_eq!(p.ok(proto, &Req::get("/echo")).text(), "got=", "{proto:?}");
        let r = p.ok(proto, &Req::post("/up", b"to the app".to_vec()));
        let text = r.text();
        assert!(text.contains("h:x-body: to the app"), "{proto:?}: {text}");
        assert!(text.contains("body: 10"), "{proto:?}: {text}");
    }
}

/// `servers { strict_sni_host }`: over TLS a Host that is not the name the handshake
/// asked for gets 421 (any case of the same name passes); plain paths are unaffected.
#[test]
fn strict_sni_host_on_every_path() {
    let p = Paths::start_with(&bin(), "\t\tstrict_sni_host", "\trespond \"host={host}\"\n");
    for proto in ALL {
        let r = p.ok(proto, &Req::get("/").host("LocalHost"));
        assert_eq!(r.status, 200, "{proto:?}");
        // The HTTP/3 client of the test kit sends its authority as the server name too.
        if matches!(proto, Proto::H3) {
            continue;
        }
        let r = p
            .send(proto, &Req::get("/").host("other.test"))
            .unwrap_or_else(|e| panic!("{proto:?}: {e:?}"));
        if matches!(proto, Proto::H1Tls | Proto::H2Tls) {
            assert_eq!(r.status, 421, "{proto:?}");
        } else {
            assert_eq!(r.status, 200, "{proto:?}");
            assert_eq!(r.text(), "host=other.test", "{proto:?}");
        }
    }
}
