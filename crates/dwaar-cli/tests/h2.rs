// HTTP/2 over TLS through Dwaar's own HTTP/2 front-end (`streams::h2`), with curl as the
// client: the pipeline's handlers, proxying with bodies both ways, `handle_errors`,
// `request_body` limits, `lb_retries`, many streams on one connection, graceful
// shutdown with a request in flight, access logs, and `cache` sites (which keep HTTP/2
// on Pingora's path so misses are stored).

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Dwaar serving `https://localhost:PORT` (local CA) with `body` in the site block.
struct Site {
    d: Dwaar,
    port: u16,
    store: tempfile::TempDir,
}

fn site(body: &str) -> Site {
    site_with("", body)
}

fn site_with(global: &str, body: &str) -> Site {
    let store = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (http, https) = (free_port(), free_port());
    let conf = format!(
        "{{\n\thttp_port {http}\n\thttps_port {https}\n\tstorage file_system {}\n{global}}}\n\
         https://localhost:{https} {{\n\ttls internal\n{body}}}\n",
        store.path().display()
    );
    let d = Dwaar::start(&bin(), &conf, &[https]);
    Site {
        d,
        port: https,
        store,
    }
}

/// curl over HTTP/2; returns (body, "status version") from `-w`.
fn curl(s: &Site, args: &[&str], path: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(s.store.path().join("pki/local/root.crt"))
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", s.port)])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("https://localhost:{}{path}", s.port))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert!(
        out.status.success(),
        "curl {args:?} {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (body.to_string(), meta.to_string())
}

#[test]
fn handlers_and_proxying_over_http2() {
    let o = origin::http("app");
    let s = site(&format!(
        "\theader X-Site dwaar\n\trespond /r \"replied\" 201\n\treverse_proxy 127.0.0.1:{}\n",
        o.port
    ));
    let (body, meta) = curl(&s, &["-D", "-"], "/r");
    assert_eq!(meta, "201 2");
    assert!(body.contains("x-site: dwaar"), "{body}");
    assert!(body.ends_with("replied"), "{body}");

    // Proxied, with the forwarding headers, and a 300 KB body streamed up.
    let (body, meta) = curl(&s, &[], "/echo?q=1");
    assert_eq!(meta, "200 2");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    let big = s.store.path().join("big.bin");
    std::fs::write(&big, "a".repeat(300_000)).unwrap_or_else(|e| panic!("{e}"));
    let (body, meta) = curl(
        &s,
        &["--data-binary", &format!("@{}", big.display())],
        "/upload",
    );
    assert_eq!(meta, "200 2");
    assert!(body.contains("body: 300000"), "{body}");

    // HEAD answers carry no body.
    let (body, meta) = curl(&s, &["-I"], "/echo");
    assert_eq!(meta, "200 2");
    assert!(body.contains("content-length:"), "{body}");
    // One upstream connection carried all of that (four client connections).
    assert_eq!(o.connections(), 1);

    // 100 requests multiplexed on one connection.
    let urls: Vec<String> = (0..100)
        .map(|i| format!("https://localhost:{}/n/{i}", s.port))
        .collect();
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--http2",
        "--parallel",
        "--parallel-max",
        "100",
        "--cacert",
    ])
    .arg(s.store.path().join("pki/local/root.crt"))
    .args(["--resolve", &format!("localhost:{}:127.0.0.1", s.port)])
    .args(["-w", "%{http_code} %{http_version}\n", "-o", "/dev/null"]);
    for u in &urls {
        cmd.arg(u);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| *l == "200 2").count(),
        100,
        "{text}"
    );
}

#[test]
fn errors_limits_and_retries_over_http2() {
    let live = origin::http("live");
    let dead = free_port();
    let s = site(&format!(
        "\thandle /dead/* {{\n\t\treverse_proxy 127.0.0.1:{dead}\n\t}}\n\
         \thandle /retry/* {{\n\t\treverse_proxy 127.0.0.1:{dead} 127.0.0.1:{} {{\n\t\t\tlb_policy first\n\t\t\tlb_retries 1\n\t\t}}\n\t}}\n\
         \trequest_body /upload {{\n\t\tmax_size 10B\n\t}}\n\
         \treverse_proxy 127.0.0.1:{}\n\
         \thandle_errors {{\n\t\trespond \"custom {{err.status_code}}\"\n\t}}\n",
        live.port, live.port
    ));
    // The unreachable upstream: handle_errors answers.
    let (body, meta) = curl(&s, &[], "/dead/x");
    assert_eq!((body.as_str(), meta.as_str()), ("custom 502", "502 2"));
    // The first upstream is down: the retry reaches the second.
    let (body, meta) = curl(&s, &[], "/retry/x");
    assert_eq!(meta, "200 2", "{body}");
    assert!(body.contains("live"), "{body}");
    // request_body: a declared length over the limit, and one within it.
    let (_, meta) = curl(&s, &["--data-binary", "this body is too large"], "/upload");
    assert!(meta.starts_with("413 "), "{meta}");
    let (body, meta) = curl(&s, &["--data-binary", "small"], "/upload");
    assert_eq!(meta, "200 2");
    assert!(body.contains("body: 5"), "{body}");
}

#[test]
fn graceful_shutdown_finishes_streams_in_flight() {
    let o = origin::http("slow");
    let logs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = logs.path().join("access.log");
    let mut s = site(&format!(
        "\tlog {{\n\t\toutput file {}\n\t}}\n\treverse_proxy 127.0.0.1:{}\n",
        log.display(),
        o.port
    ));
    let (_, meta) = curl(&s, &[], "/warm");
    assert_eq!(meta, "200 2");
    let root = s.store.path().join("pki/local/root.crt");
    let port = s.port;
    let slow = std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(root)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{port}/slow/1500"))
            .output()
            .expect("curl")
    });
    std::thread::sleep(Duration::from_millis(400));
    let stopped = Instant::now();
    s.d.signal("TERM");
    let out = slow.join().expect("curl thread");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.ends_with("200 2"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.d.wait_exit(Duration::from_secs(10)).is_some(),
        "dwaar did not exit"
    );
    assert!(stopped.elapsed() >= Duration::from_millis(900));
    // Both requests were logged as HTTP/2.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.matches("\"HTTP/2.0\"").count(), 2, "{text}");
}

#[test]
fn cache_sites_still_fill_over_http2() {
    let (port, count) = dwaar_testkit::pages::counting_origin();
    let s = site(&format!("\tcache\n\treverse_proxy 127.0.0.1:{port}\n"));
    for _ in 0..3 {
        let (_, meta) = curl(&s, &[], "/cc/public,%20max-age=60");
        assert_eq!(meta, "200 2");
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the cache was not filled over HTTP/2"
    );
}

/// A response whose length is declared ends with its last DATA frame (END_STREAM set on
/// it), not with an empty DATA frame after it; a body streamed without a length still
/// ends cleanly. Seen frame by frame with nghttp.
#[test]
fn declared_lengths_end_the_stream_on_their_last_data_frame() {
    if !have_tool("nghttp") {
        return;
    }
    let o = origin::http("app");
    let mut s = site(&format!(
        "\trespond /r \"replied\"\n\treverse_proxy 127.0.0.1:{}\n",
        o.port
    ));
    // (path, the response declares its length)
    for (path, declared) in [("/r", true), ("/echo?q=1", true), ("/sse", false)] {
        let out = std::process::Command::new("nghttp")
            .args(["-nv", "-t", "20"])
            .arg(format!("https://localhost:{}{path}", s.port))
            .output()
            .unwrap_or_else(|e| panic!("nghttp: {e}"));
        let log = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(log.contains(":status: 200"), "{path}: {log}");
        let data: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("recv DATA frame"))
            .collect();
        assert!(!data.is_empty(), "{path}: {log}");
        // The stream always ends with END_STREAM on a DATA frame.
        let last = data.last().copied().unwrap_or_default();
        assert!(last.contains("flags=0x01"), "{path}: {last}\n{log}");
        if declared {
            assert!(
                data.iter().all(|l| !l.contains("length=0,")),
                "{path}: an empty DATA frame was sent: {log}"
            );
        }
    }
    assert!(s.d.alive(), "{}", s.d.log_text());
}
