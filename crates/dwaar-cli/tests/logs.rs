// End-to-end tests of access logs: fields, counts under load, rotation, a stalled
// output, flushing on shutdown, console and network outputs.

mod common;
use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON line ({e}): {l}")))
        .collect()
}

fn wait_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let ok = wait_until(Duration::from_secs(10), || lines(path).len() >= n);
    let got = lines(path);
    assert!(ok, "expected {n} log lines, got {}", got.len());
    got
}

/// Waits (up to 10 s) until `path` holds exactly `n` lines, whatever their format.
fn wait_line_count(path: &std::path::Path, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(path)
            .is_ok_and(|t| t.lines().count() == n)),
        "{:?}",
        std::fs::read_to_string(path)
    );
}

fn metric(admin: &str, name: &str) -> u64 {
    let r = dwaar_admin::client::request(admin, "GET", "/metrics", None, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    r.body
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", r.body))
}

/// `clients` keep-alive connections each send `per_client` GETs to distinct paths
/// (`/{prefix}{client}/{i}`) and expect 200 for every one.
fn keep_alive_clients(port: u16, clients: usize, per_client: usize, prefix: &'static str) {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
                for i in 0..per_client {
                    c.send_raw(
                        format!("GET /{prefix}{t}/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(c.read_response(false).map(|r| r.status).ok(), Some(200));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap_or_else(|_| panic!("client failed"));
    }
}

#[test]
fn every_field_for_proxied_static_error_and_rejected_requests() {
    let origin = origin::http("o");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("access.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\tlog_skip /healthz\n\trequest_body /upload {{\n\t\tmax_size 10\n\t}}\n\thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:{}\n\t}}\n\thandle /dead/* {{\n\t\treverse_proxy 127.0.0.1:1\n\t}}\n\trespond \"hello\"\n}}\n",
        log.display(),
        origin.port
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    let ua = ("User-Agent", "dwaar-test/1.0");
    let r = request(
        port,
        "GET",
        "site.test",
        "/up/x?token=s3cret&page=2",
        &[ua, ("Referer", "https://ref.example/")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    let proxied_id = r.header("x-request-id").unwrap_or("").to_string();
    assert_eq!(
        request(
            port,
            "GET",
            "site.test",
            "/static",
            &[("User-Agent", "Googlebot/2.1")],
            b""
        )
        .map(|r| r.status)
        .ok(),
        Some(200)
    );
    assert_eq!(
        request(port, "GET", "site.test", "/dead/y", &[ua], b"")
            .map(|r| r.status)
            .ok(),
        Some(502)
    );
    assert_eq!(
        request(
            port,
            "POST",
            "site.test",
            "/upload",
            &[ua],
            b"far more than ten bytes"
        )
        .map(|r| r.status)
        .ok(),
        Some(413)
    );
    assert_eq!(
        request(port, "GET", "site.test", "/healthz", &[ua], b"")
            .map(|r| r.status)
            .ok(),
        Some(200)
    );
    let got = wait_lines(&log, 4);
    std::thread::sleep(Duration::from_millis(300));
    let got_all = lines(&log);
    assert_eq!(
        got_all.len(),
        4,
        "log_skip'd request was logged: {got_all:?}"
    );
    let by_path = |u: &str| {
        got.iter()
            .find(|l| l["request"]["uri"].as_str().unwrap_or("").split('?').next() == Some(u))
            .cloned()
            .unwrap_or_else(|| panic!("no line for {u}: {got:?}"))
    };

    // Caddy's access-log schema, with Dwaar's own facts after it.
    let p = by_path("/up/x");
    assert_eq!(p["logger"], "http.log.access");
    assert_eq!(p["msg"], "handled request");
    assert_eq!(p["request"]["method"], "GET");
    assert_eq!(p["request"]["host"], "site.test");
    assert_eq!(p["request"]["uri"], "/up/x?token=REDACTED&page=2");
    assert_eq!(p["request"]["proto"], "HTTP/1.1");
    assert_eq!(p["status"], 200);
    assert_eq!(p["request_id"], proxied_id.as_str());
    assert_eq!(
        p["upstream_addr"],
        format!("127.0.0.1:{}", origin.port).as_str()
    );
    assert!(p["upstream_duration"].as_f64().is_some());
    assert!(p["duration"].as_f64() >= p["upstream_duration"].as_f64());
    assert_eq!(p["request"]["remote_ip"], "127.0.0.1");
    assert!(
        p["request"]["remote_port"]
            .as_str()
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0)
            > 0
    );
    assert_eq!(p["request"]["client_ip"], "127.0.0.1");
    assert_eq!(p["request"]["headers"]["User-Agent"][0], "dwaar-test/1.0");
    assert_eq!(
        p["request"]["headers"]["Referer"][0],
        "https://ref.example/"
    );
    assert!(p["resp_headers"].as_object().is_some_and(|h| !h.is_empty()));
    assert!(p["size"].as_u64().unwrap_or(0) > 0);
    assert_eq!(p["level"], "info");
    assert!(p["ts"].as_f64().unwrap_or(0.0) > 1.7e9, "{}", p["ts"]);
    assert!(p.get("error").is_none() && p.get("rejected_by").is_none());
    assert_eq!(p["is_bot"], false);

    let s = by_path("/static");
    assert_eq!(s["status"], 200);
    assert_eq!(s["size"], 5);
    assert_eq!(s["is_bot"], true);
    assert_eq!(s["resp_headers"]["Content-Length"][0], "5");
    assert!(s.get("upstream_addr").is_none() && s.get("upstream_duration").is_none());

    let e = by_path("/dead/y");
    assert_eq!(e["status"], 502);
    assert_eq!(e["level"], "error");
    assert_eq!(e["upstream_addr"], "127.0.0.1:1");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("connect"),
        "{e}"
    );

    let j = by_path("/upload");
    assert_eq!(j["status"], 413);
    assert_eq!(j["request"]["method"], "POST");
    assert_eq!(j["rejected_by"], "request_body");
}

/// GoAccess parses every line of `log` with `--log-format=<format>` and counts
/// `requests` valid ones (skipped when goaccess is missing, unless required).
fn goaccess_reads_every_line(log: &std::path::Path, format: &str, requests: u64) {
    if !have_tool("goaccess") {
        return;
    }
    let report = log.with_extension("report.json");
    let out = std::process::Command::new("goaccess")
        .arg(log)
        .args([
            &format!("--log-format={format}"),
            "--no-global-config",
            "-o",
        ])
        .arg(&report)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    let general = &v["general"];
    assert_eq!(general["total_requests"], requests, "{general}");
    assert_eq!(general["valid_requests"], requests, "{general}");
    assert_eq!(general["failed_requests"], 0, "{general}");
}

/// `format combined` writes nginx's combined lines, and GoAccess (the tool nginx users
/// point at their logs) parses every one of them with `--log-format=COMBINED`.
#[test]
fn combined_lines_parse_in_goaccess() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("combined.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t\tformat combined\n\t}}\n\trespond /missing 404\n\trespond \"hello\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    for path in ["/", "/a?b=c", "/missing", "/x"] {
        request(
            port,
            "GET",
            "x",
            path,
            &[
                ("User-Agent", "tool \"quoted\"/1.0"),
                ("Referer", "http://ref.test/"),
            ],
            b"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    wait_line_count(&log, 4);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.ends_with(
            "] \"GET / HTTP/1.1\" 200 5 \"http://ref.test/\" \"tool \\x22quoted\\x22/1.0\""
        ),
        "{first}"
    );
    assert!(text.contains("\"GET /missing HTTP/1.1\" 404 0 "), "{text}");
    goaccess_reads_every_line(&log, "COMBINED", 4);
}

/// `format transform` (the transform-encoder plugin's format): its default template is
/// the Common Log Format, which GoAccess parses with `--log-format=COMMON`; a template
/// of its own picks fields by path, with a Go time layout and a placeholder.
#[test]
fn transform_lines_follow_their_template() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (common, custom) = (dir.path().join("common.log"), dir.path().join("custom.log"));
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog common {{\n\t\toutput file {}\n\t\tformat transform\n\t}}\n\
         \tlog custom {{\n\t\toutput file {}\n\t\tformat transform \"{{request>method}} {{request>headers>X-Missing>[0]}} {{request>headers>User-Agent>[0]}} {{status}} {{ts}}\" {{\n\
         \t\t\tplaceholder ~\n\t\t\ttime_format \"2006-01-02T15:04\"\n\t\t}}\n\t}}\n\
         \trespond /missing 404\n\trespond \"hello\"\n}}\n",
        common.display(),
        custom.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    for path in ["/", "/a?b=c", "/missing"] {
        request(port, "GET", "x", path, &[("User-Agent", "tool/2")], b"")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    wait_line_count(&common, 3);
    wait_line_count(&custom, 3);
    let text = std::fs::read_to_string(&common).unwrap_or_default();
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.ends_with(" +0000] \"GET / HTTP/1.1\" 200 5"),
        "{first}"
    );
    assert!(text.contains("\"GET /missing HTTP/1.1\" 404 0"), "{text}");
    goaccess_reads_every_line(&common, "COMMON", 3);
    let text = std::fs::read_to_string(&custom).unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words[..4], ["GET", "~", "tool/2", "200"], "{line}");
    assert_eq!(words[4].len(), "2026-12-05T02:51".len(), "{line}");
    assert!(
        words[4].starts_with("20") && words[4].contains('T'),
        "{line}"
    );
}

/// The JSON record is Caddy's access-log schema: GoAccess reads it with
/// `--log-format=CADDY`, every line. `format filter` edits fields before they are
/// written (a deleted `Authorization`, a masked address, a query value replaced).
#[test]
fn json_lines_parse_in_goaccess_as_caddy_logs_and_filters_apply() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (log, filtered) = (
        dir.path().join("caddy.log"),
        dir.path().join("filtered.log"),
    );
    let (port, other) = (free_port(), free_port());
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\trespond /missing 404\n\trespond \"hello\"\n}}\n\
         :{other} {{\n\tlog named {{\n\t\toutput file {}\n\t\tformat filter {{\n\t\t\tfields {{\n\
         \t\t\t\trequest>headers>Authorization delete\n\
         \t\t\t\trequest>remote_ip ip_mask {{\n\t\t\t\t\tipv4 16\n\t\t\t\t}}\n\
         \t\t\t\trequest>uri query {{\n\t\t\t\t\treplace q hidden\n\t\t\t\t}}\n\
         \t\t\t\trequest>headers>User-Agent regexp \"^(\\w+).*\" \"${{1}}\"\n\
         \t\t\t}}\n\t\t}}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display(),
        filtered.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port, other]);
    let ua = ("User-Agent", "tool/1.0 (test)");
    for path in ["/", "/a?b=c", "/missing", "/x"] {
        request(
            port,
            "GET",
            "x",
            path,
            &[ua, ("Referer", "http://ref.test/")],
            b"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    request(
        other,
        "GET",
        "x",
        "/f?q=secret&keep=1",
        &[ua, ("Authorization", "Basic Ym9iOmh1bnRlcjI=")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_line_count(&log, 4);
    let f = wait_lines(&filtered, 1);
    let r = &f[0]["request"];
    assert!(r["headers"].get("Authorization").is_none(), "{r}");
    assert_eq!(r["remote_ip"], "127.0.0.0", "{r}");
    assert_eq!(r["uri"], "/f?q=hidden&keep=1", "{r}");
    assert_eq!(r["headers"]["User-Agent"][0], "tool", "{r}");
    assert_eq!(f[0]["logger"], "http.log.access.named");
    goaccess_reads_every_line(&log, "CADDY", 4);
}

/// `log_append` adds fields (placeholders filled in, matchers honoured) to the record.
#[test]
fn log_append_adds_fields() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("a.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\tlog_append tier {{query.tier}}\n\tlog_append /api/* area api\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    ok_get(port, "x", "/api/a?tier=gold");
    ok_get(port, "x", "/b");
    let got = wait_lines(&log, 2);
    assert_eq!(got[0]["tier"], "gold", "{}", got[0]);
    assert_eq!(got[0]["area"], "api", "{}", got[0]);
    assert_eq!(got[1]["tier"], "", "{}", got[1]);
    assert!(got[1].get("area").is_none(), "{}", got[1]);
}

#[test]
fn concurrent_requests_make_exactly_as_many_lines() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("a.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start_with(&bin(), &cfg, &[port], &["--threads", "2"]);
    keep_alive_clients(port, 4, 250, "t");
    let got = wait_lines(&log, 1000);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&log).len(), 1000);
    let uris: HashSet<String> = got
        .iter()
        .map(|l| l["request"]["uri"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(uris.len(), 1000, "duplicate or missing lines");
}

#[test]
fn rotation_keeps_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("roll.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {} {{\n\t\t\troll_size 16KiB\n\t\t\troll_keep 1000\n\t\t}}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start_with(&bin(), &cfg, &[port], &["--threads", "2"]);
    let n = 1500;
    keep_alive_clients(port, 3, n / 3, "r");
    let all = || -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("roll") && name.ends_with(".log") {
                for l in std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                {
                    let v2: serde_json::Value = serde_json::from_str(l)
                        .unwrap_or_else(|er| panic!("bad line in {name} ({er}): {l}"));
                    v.push(v2["request"]["uri"].as_str().unwrap_or("").to_string());
                }
            }
        }
        v
    };
    assert!(
        wait_until(Duration::from_secs(10), || all().len() >= n),
        "got {} lines",
        all().len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let uris = all();
    let unique: HashSet<&String> = uris.iter().collect();
    assert_eq!(uris.len(), n, "lines lost or duplicated");
    assert_eq!(unique.len(), n);
    let files = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(files > 5, "expected several rolled files, got {files}");
    for e in std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            // A batch may carry a file past the limit only when it started empty.
            assert!(size <= 16 * 1024 + 200 * 600, "{name} is {size} bytes");
        }
    }
}

#[test]
fn a_stalled_output_drops_records_but_never_slows_requests() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fifo = dir.path().join("stalled.log");
    // A FIFO nobody reads: the writer blocks on it forever.
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mkfifo failed");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\trespond \"x\"\n}}\n",
        fifo.display()
    );
    let d = Dwaar::start(&bin(), &cfg, &[port]);
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..4000 {
        let t = Instant::now();
        c.send_raw(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.read_response(false).map(|r| r.status).ok(), Some(200));
        slowest = slowest.max(t.elapsed());
    }
    let dropped = metric(&d.admin, "dwaar_log_records_total{result=\"dropped\"}");
    assert!(
        dropped >= 1000,
        "expected drops once the channel filled, got {dropped}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a request took {slowest:?} while the log was stalled"
    );
    eprintln!(
        "4000 requests in {:?}, slowest {slowest:?}, {dropped} records dropped",
        started.elapsed()
    );
    // Unblock the writer so the process can exit cleanly.
    let _reader = std::fs::File::open(&fifo);
}

#[test]
fn pending_records_are_flushed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("f.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let mut d = Dwaar::start(&bin(), &cfg, &[port]);
    for i in 0..50 {
        assert_eq!(ok_get(port, "x", &format!("/{i}")).status, 200);
    }
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(lines(&log).len(), 50);
}

#[test]
fn console_format_to_stdout_and_ip_masking() {
    let port = free_port();
    let cfg = format!(":{port} {{\n\tlog {{\n\t\toutput stdout\n\t\tformat console\n\t\tmask_ip 8\n\t}}\n\trespond \"x\" 201\n}}\n");
    let d = Dwaar::start(&bin(), &cfg, &[port]);
    assert_eq!(
        ok_get(port, "console.test", "/hello?password=hunter2").status,
        201
    );
    assert!(wait_until(Duration::from_secs(5), || d
        .log_text()
        .contains("/hello")));
    let text = d.log_text();
    let line = text.lines().find(|l| l.contains("/hello")).unwrap_or("");
    assert!(
        line.contains("GET console.test/hello?password=REDACTED HTTP/1.1 201"),
        "{line}"
    );
    assert!(line.contains(" 127.0.0.0"), "IP not masked: {line}");
    assert!(!text.contains("hunter2"));
}

#[test]
fn net_output_delivers_lines_to_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sock = dir.path().join("collector.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        if let Ok((s, _)) = listener.accept() {
            for l in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        }
    });
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput net unix/{}\n\t}}\n\trespond \"x\"\n}}\n",
        sock.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    for i in 0..20 {
        assert_eq!(ok_get(port, "x", &format!("/n{i}")).status, 200);
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    assert_eq!(got.len(), 20);
    assert!(got
        .iter()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn global_log_option_sends_dwaars_own_log_to_a_file_as_json() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("dwaar.log");
    let port = free_port();
    let cfg = format!(
        "{{\n\tlog {{\n\t\toutput file {}\n\t\tformat json\n\t\tlevel INFO\n\t}}\n}}\n:{port} {{\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let d = Dwaar::start(&bin(), &cfg, &[port]);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("dwaar started")
    }));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(
        !d.log_text().contains("dwaar started"),
        "the runtime log still went to stderr"
    );
}

#[test]
fn an_unreachable_log_collector_stops_the_start_unless_soft_start() {
    let dead = free_port();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("Dwaarfile");
    std::fs::write(
        &cfg,
        format!(
            ":{port} {{\n\tlog {{\n\t\toutput net 127.0.0.1:{dead}\n\t}}\n\trespond \"x\"\n}}\n"
        ),
    )
    .unwrap_or_default();
    let config = cfg.to_str().unwrap_or_default();
    let (code, _, err) = dwaar_cmd(&["run", "--threads", "1", "--config", config], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("unreachable") && err.contains("soft_start"),
        "{err}"
    );
    // With soft_start it serves, and keeps trying the collector in the background.
    let soft = format!(
        ":{port} {{\n\tlog {{\n\t\toutput net 127.0.0.1:{dead} {{\n\t\t\tsoft_start\n\t\t}}\n\t}}\n\trespond \"x\"\n}}\n"
    );
    let _d = Dwaar::start(&bin(), &soft, &[port]);
    assert_eq!(ok_get(port, "x", "/").text(), "x");
}

/// Several logs in one site on every path: each request goes to the logs that take its
/// host, or to those `log_name` names (a `no_hostname` log takes nothing else).
#[test]
fn several_logs_and_log_name_on_every_path() {
    use dwaar_testkit::paths::{Paths, Proto, Req, ALL};
    let p = Paths::start(
        &bin(),
        "\tlog main {\n\t\toutput file SCRATCH/INSTANCE-main.log\n\t}\n\
         \tlog api {\n\t\toutput file SCRATCH/INSTANCE-api.log\n\t\tno_hostname\n\t}\n\
         \tlog elsewhere {\n\t\toutput file SCRATCH/INSTANCE-elsewhere.log\n\t\thostnames other.test\n\t}\n\
         \tlog_name /api/* api\n\trespond \"ok\"\n",
    );
    let read = |proto: Proto, log: &str| {
        let instance = if proto == Proto::H1Pingora {
            "pingora"
        } else {
            "main"
        };
        std::fs::read_to_string(p.scratch().join(format!("{instance}-{log}.log")))
            .unwrap_or_default()
    };
    for proto in ALL {
        let (api, page) = (format!("/api/{proto:?}"), format!("/page/{proto:?}"));
        assert_eq!(p.ok(proto, &Req::get(&api)).status, 200, "{proto:?}");
        assert_eq!(p.ok(proto, &Req::get(&page)).status, 200, "{proto:?}");
        let quoted = |path: &str| format!("\"uri\":\"{path}\"");
        assert!(
            wait_until(Duration::from_secs(5), || read(proto, "api")
                .contains(&quoted(&api))
                && read(proto, "main").contains(&quoted(&page))),
            "{proto:?}: api log {:?}, main log {:?}",
            read(proto, "api"),
            read(proto, "main")
        );
        assert!(!read(proto, "main").contains(&quoted(&api)), "{proto:?}");
        assert!(!read(proto, "api").contains(&quoted(&page)), "{proto:?}");
        assert!(read(proto, "api").contains("\"logger\":\"http.log.access.api\""));
    }
    assert!(read(Proto::H1Lean, "elsewhere").is_empty());
    assert!(read(Proto::H1Pingora, "elsewhere").is_empty());
}

/// Caddy's encoder options reshape the JSON record: key names and the formats of the
/// time, durations and level.
#[test]
fn encoder_options_reshape_records() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("enc.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t\tformat json {{\n\
         \t\t\ttime_key time\n\t\t\ttime_format common_log\n\t\t\tduration_format ns\n\
         \t\t\tlevel_format upper\n\t\t\tmessage_key message\n\t\t}}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    ok_get(port, "x", "/enc");
    let got = wait_lines(&log, 1);
    let r = &got[0];
    assert!(r.get("ts").is_none() && r.get("msg").is_none(), "{r}");
    let time = r["time"].as_str().unwrap_or("");
    assert!(time.ends_with(" +0000") && time.len() == 26, "{r}");
    assert_eq!(r["message"], "handled request", "{r}");
    assert_eq!(r["level"], "INFO", "{r}");
    assert!(r["duration"].as_u64().is_some(), "{r}");
    assert_eq!(r["request"]["uri"], "/enc", "{r}");
}

/// `sampling`: within an interval, the first records are written, then every n-th.
#[test]
fn sampling_keeps_the_first_records_then_every_nth() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("sampled.log");
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\tlog {{\n\t\toutput file {}\n\t\tsampling {{\n\t\t\tinterval 10m\n\t\t\tfirst 3\n\t\t\tthereafter 5\n\t\t}}\n\t}}\n\trespond \"x\"\n}}\n",
        log.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    for i in 1..=20 {
        ok_get(port, "x", &format!("/s{i}"));
    }
    // Records 1-3, then 8, 13 and 18.
    let got = wait_lines(&log, 6);
    std::thread::sleep(Duration::from_millis(300));
    let uris: Vec<String> = lines(&log)
        .iter()
        .map(|l| l["request"]["uri"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        uris,
        ["/s1", "/s2", "/s3", "/s8", "/s13", "/s18"],
        "{got:?}"
    );
}

/// Global logs collect sites' access records by logger name (`include`, `exclude`, the
/// longest prefix deciding), each in its own output and format.
#[test]
fn global_logs_collect_access_records_by_name() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (api_only, all_but_other, other) = (
        dir.path().join("api.log"),
        dir.path().join("most.log"),
        dir.path().join("other.log"),
    );
    let port = free_port();
    let cfg = format!(
        "{{\n\tlog api-only {{\n\t\toutput file {}\n\t\tinclude http.log.access.api\n\t}}\n\
         \tlog most {{\n\t\toutput file {}\n\t\tformat console\n\t\tinclude http.log.access\n\t\texclude http.log.access.other\n\t}}\n}}\n\
         :{port} {{\n\tlog api {{\n\t\toutput discard\n\t\tno_hostname\n\t}}\n\
         \tlog other {{\n\t\toutput file {}\n\t}}\n\tlog_name /api/* api\n\trespond \"x\"\n}}\n",
        api_only.display(),
        all_but_other.display(),
        other.display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    ok_get(port, "x", "/api/one");
    ok_get(port, "x", "/page");
    let api = wait_lines(&api_only, 1);
    let others = wait_lines(&other, 1);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&all_but_other).is_ok_and(|t| t.contains("/api/one"))
    }));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&api_only).len(), 1, "{api:?}");
    assert_eq!(api[0]["request"]["uri"], "/api/one");
    assert_eq!(api[0]["logger"], "http.log.access.api");
    assert_eq!(lines(&other).len(), 1, "{others:?}");
    assert_eq!(others[0]["request"]["uri"], "/page");
    let most = std::fs::read_to_string(&all_but_other).unwrap_or_default();
    assert_eq!(most.lines().count(), 1, "{most}");
    assert!(!most.contains("/page"), "{most}");
}
