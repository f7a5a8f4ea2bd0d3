// End-to-end tests of `reverse_proxy`: load balancing, health checks, retries,
// proxy headers, upgrades, errors and transports.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn origins(n: usize) -> Vec<origin::Origin> {
    (0..n).map(|i| origin::http(&format!("o{i}"))).collect()
}

fn upstream_list(os: &[origin::Origin]) -> String {
    os.iter()
        .map(|o| format!("127.0.0.1:{}", o.port))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends `n` requests and counts which origin answered.
fn distribution(
    port: u16,
    n: usize,
    headers: &[(&str, &str)],
    path: &str,
) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = request(port, "GET", "x", path, headers, b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        *m.entry(r.header("x-origin").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

fn proxy_with(policy: &str, os: &[origin::Origin]) -> (Dwaar, u16) {
    serve(&format!(
        ":PORT {{\n\treverse_proxy {} {{\n\t\tlb_policy {policy}\n\t}}\n}}",
        upstream_list(os)
    ))
}

#[test]
fn round_robin_spreads_evenly() {
    let os = origins(3);
    let (_d, port) = proxy_with("round_robin", &os);
    let m = distribution(port, 30, &[], "/");
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m.values().all(|&c| c == 10), "{m:?}");
}

/// `weighted_round_robin 3 1 0`: over 1,000 requests exactly 750/250, and the weight-0
/// upstream never; with the heavy one down its turns pass to the others.
#[test]
fn weighted_round_robin_follows_the_weights() {
    let mut os = origins(3);
    let (_d, port) = proxy_with("weighted_round_robin 3 1 0", &os);
    let m = distribution(port, 1000, &[], "/");
    assert_eq!(m.get("o0"), Some(&750), "{m:?}");
    assert_eq!(m.get("o1"), Some(&250), "{m:?}");
    assert_eq!(m.get("o2"), None, "{m:?}");
    // Passive health takes the heavy upstream out once it refuses connections.
    os[0].kill();
    let (_d2, port2) = serve(&format!(
        ":PORT {{
	reverse_proxy {} {{
		lb_policy weighted_round_robin 3 1 0
		lb_retries 2
		fail_duration 30s
	}}
}}",
        upstream_list(&os)
    ));
    let m = distribution(port2, 20, &[], "/");
    assert_eq!(m.get("o1"), Some(&20), "{m:?}");
}

/// `query`, `header` and `cookie` with a `fallback` block: a key sticks to one upstream,
/// keys spread, and requests without a key follow the fallback (here `first`), not
/// random; counted over 1,000 requests.
#[test]
fn query_header_and_cookie_policies_fall_back_as_configured() {
    let os = origins(4);
    let (_d, port) = proxy_with("query user {\n\t\t\tfallback first\n\t\t}", &os);
    let mut owners = std::collections::HashSet::new();
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let m = distribution(port, 25, &[], &format!("/?x=1&user={user}&y=2"));
        assert_eq!(m.len(), 1, "{user} sticks to one upstream: {m:?}");
        owners.extend(m.keys().cloned());
    }
    assert!(owners.len() >= 2, "keys spread over upstreams: {owners:?}");
    let m = distribution(port, 800, &[], "/?other=1");
    assert_eq!(
        m.get("o0"),
        Some(&800),
        "no key: the fallback `first`: {m:?}"
    );

    let (_d, port) = proxy_with("header X-User {\n\t\t\tfallback round_robin\n\t\t}", &os);
    let m = distribution(port, 40, &[], "/");
    assert!(
        m.len() == 4 && m.values().all(|c| *c == 10),
        "round robin fallback: {m:?}"
    );

    let (_d, port) = proxy_with("cookie lb {\n\t\t\tfallback first\n\t\t}", &os);
    let r = ok_get(port, "x", "/");
    assert_eq!(r.header("x-origin"), Some("o0"), "cookie fallback first");
    assert!(r.header("set-cookie").is_some_and(|c| c.starts_with("lb=")));
}

/// Misconfigured policies are refused at their line.
#[test]
fn load_balancing_config_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (policy, want) in [
        ("weighted_round_robin 3", "1 weight for 2 upstreams"),
        ("weighted_round_robin 0 0", "every weight is 0"),
        ("weighted_round_robin 1 x", "x"),
        (
            "round_robin {\n\t\t\tfallback first\n\t\t}",
            "has no fallback",
        ),
        ("query", "needs a parameter name"),
        ("header X {\n\t\t\tfallback nope\n\t\t}", "nope"),
    ] {
        std::fs::write(
            dir.path().join("Dwaarfile"),
            format!(":1 {{\n\treverse_proxy 127.0.0.1:2 127.0.0.1:3 {{\n\t\tlb_policy {policy}\n\t}}\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1, "{policy}");
        assert!(
            err.contains(want) && err.contains("Dwaarfile:"),
            "{policy}: {err}"
        );
    }
}

#[test]
fn random_uses_every_upstream() {
    let os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {}\n}}",
        upstream_list(&os)
    ));
    let m = distribution(port, 60, &[], "/");
    assert_eq!(m.len(), 2, "{m:?}");
}

#[test]
fn first_prefers_the_first_upstream() {
    let os = origins(3);
    let (_d, port) = proxy_with("first", &os);
    let m = distribution(port, 10, &[], "/");
    assert_eq!(m.get("o0"), Some(&10), "{m:?}");
}

#[test]
fn hash_policies_are_sticky() {
    let os = origins(4);
    for (policy, headers, paths) in [
        ("uri_hash", vec![], vec!["/a", "/b", "/c"]),
        ("header X-User", vec![("X-User", "alice")], vec!["/x"]),
        ("ip_hash", vec![], vec!["/y"]),
        ("client_ip_hash", vec![], vec!["/z"]),
    ] {
        let (_d, port) = proxy_with(policy, &os);
        for p in paths {
            let m = distribution(port, 8, &headers, p);
            assert_eq!(m.len(), 1, "{policy} {p}: {m:?}");
        }
    }
}

#[test]
fn least_conn_avoids_busy_upstream() {
    let os = origins(2);
    let (_d, port) = proxy_with("least_conn", &os);
    // Occupy one upstream with a slow request, then the other must take the next ones.
    let slow = std::thread::spawn(move || request(port, "GET", "x", "/slow/1500", &[], b""));
    assert!(wait_until(Duration::from_secs(5), || os
        .iter()
        .map(|o| o.hits())
        .sum::<usize>()
        == 1));
    let busy = if os[0].hits() == 1 { "o0" } else { "o1" };
    let m = distribution(port, 6, &[], "/");
    assert_eq!(m.get(busy), None, "busy upstream {busy} got traffic: {m:?}");
    let _ = slow.join();
}

#[test]
fn cookie_policy_sets_and_honours_cookie() {
    let os = origins(3);
    let (_d, port) = proxy_with("cookie lb", &os);
    let r = ok_get(port, "x", "/");
    let cookie = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie"))
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    let first = r.header("x-origin").unwrap_or("").to_string();
    let m = distribution(port, 8, &[("Cookie", &cookie)], "/");
    assert_eq!(m.get(&first), Some(&8), "{m:?}");
}

#[test]
fn proxy_headers_replace_untrusted_forwarded_for() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let r = request(
        port,
        "GET",
        "site.example",
        "/",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "0190b6c9-8b1e-7cc2-8a2f-000000000001"),
        ],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body = r.text();
    assert!(body.contains("h:x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("h:x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("h:x-forwarded-host: site.example\n"),
        "{body}"
    );
    assert!(
        body.contains("h:host: site.example\n"),
        "Host passes through: {body}"
    );
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no request id"));
    assert_ne!(
        id, "0190b6c9-8b1e-7cc2-8a2f-000000000001",
        "untrusted client id replaced"
    );
    assert_eq!(uuid_version(id), Some('7'));
    assert!(
        body.contains(&format!("h:x-request-id: {id}")),
        "same id upstream: {body}"
    );
}

fn uuid_version(id: &str) -> Option<char> {
    (id.len() == 36).then(|| id.chars().nth(14)).flatten()
}

#[test]
fn trusted_proxies_append_and_keep_request_id() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!("{{\n\tservers {{\n\t\ttrusted_proxies static 127.0.0.1/8\n\t}}\n}}\n:PORT {{\n\t@fwd client_ip 6.6.6.0/24\n\trespond /who @fwd \"client is forwarded\"\n\treverse_proxy 127.0.0.1:{}\n}}", o.port).replace("respond /who @fwd", "respond @fwd"));
    let r = request(
        port,
        "GET",
        "x",
        "/",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Request-Id", "0190b6c9-8b1e-7cc2-8a2f-000000000001"),
        ],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "client is forwarded");
    let r = request(
        port,
        "GET",
        "x",
        "/",
        &[
            ("X-Forwarded-For", "9.9.9.9"),
            ("X-Request-Id", "0190b6c9-8b1e-7cc2-8a2f-000000000001"),
        ],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body = r.text();
    assert!(
        body.contains("h:x-forwarded-for: 9.9.9.9, 127.0.0.1\n"),
        "{body}"
    );
    assert_eq!(
        r.header("x-request-id"),
        Some("0190b6c9-8b1e-7cc2-8a2f-000000000001")
    );
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let r = request(
        port,
        "GET",
        "x",
        "/",
        &[
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "x"),
            ("TE", "trailers"),
        ],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body = r.text();
    for h in ["x-secret-hop", "keep-alive", "proxy-connection", "h:te:"] {
        assert!(!body.contains(h), "{h} forwarded: {body}");
    }
}

#[test]
fn connection_refused_is_502_and_handle_errors_customises() {
    let dead = free_port();
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{dead}\n\thandle_errors 502 {{\n\t\trespond \"upstream down ({{err.status_code}})\"\n\t}}\n}}"));
    let r = ok_get(port, "x", "/");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "upstream down (502)");
    let (_d2, port2) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{dead}\n}}"));
    assert_eq!(ok_get(port2, "x", "/").status, 502);
}

#[test]
fn upstream_timeout_is_504() {
    let o = origin::http("slow");
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n\t\t\tresponse_header_timeout 300ms\n\t\t}}\n\t}}\n}}", o.port));
    let r = ok_get(port, "x", "/slow/3000");
    assert_eq!(r.status, 504);
}

#[test]
fn all_unhealthy_is_503() {
    let o = origin::http("sick");
    o.set_healthy(false);
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t}}\n}}", o.port));
    assert!(wait_until(Duration::from_secs(5), || ok_get(
        port, "x", "/"
    )
    .status
        == 503));
    o.set_healthy(true);
    assert!(
        wait_until(Duration::from_secs(5), || ok_get(port, "x", "/").status
            == 200),
        "recovers"
    );
}

#[test]
fn active_health_check_moves_traffic_off_a_killed_backend() {
    let mut os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {} {{\n\t\tlb_policy round_robin\n\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t\thealth_timeout 200ms\n\t\thealth_status 2xx\n\t}}\n}}",
        upstream_list(&os)
    ));
    assert_eq!(distribution(port, 4, &[], "/").len(), 2);
    os[0].kill();
    // Once the checker notices, every request goes to o1 without errors.
    let all_o1 = || {
        (0..4).all(|_| {
            get(port, "x", "/")
                .map(|r| r.header("x-origin") == Some("o1"))
                .unwrap_or(false)
        })
    };
    assert!(wait_until(Duration::from_secs(5), all_o1));
    assert_eq!(distribution(port, 20, &[], "/").get("o1"), Some(&20));
}

#[test]
fn passive_health_and_retries_hide_a_killed_backend() {
    let mut os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {} {{\n\t\tlb_policy round_robin\n\t\tlb_retries 2\n\t\tfail_duration 30s\n\t\tmax_fails 1\n\t}}\n}}",
        upstream_list(&os)
    ));
    os[0].kill();
    // Idempotent requests are retried on the other upstream: no client-visible error.
    let m = distribution(port, 10, &[], "/");
    assert_eq!(m.get("o1"), Some(&10), "{m:?}");
}

#[test]
fn passive_unhealthy_status_marks_down() {
    let os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {} {{\n\t\tlb_policy first\n\t\tfail_duration 30s\n\t\tmax_fails 2\n\t\tunhealthy_status 5xx\n\t}}\n}}",
        upstream_list(&os)
    ));
    // Two 500s from o0 mark it down; then `first` falls through to o1.
    assert_eq!(ok_get(port, "x", "/status/500").status, 500);
    assert_eq!(ok_get(port, "x", "/status/500").status, 500);
    let r = ok_get(port, "x", "/");
    assert_eq!(r.header("x-origin"), Some("o1"));
}

#[test]
fn unhealthy_request_count_limits_concurrency() {
    let os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {} {{\n\t\tlb_policy first\n\t\tunhealthy_request_count 1\n\t}}\n}}",
        upstream_list(&os)
    ));
    let slow = std::thread::spawn(move || request(port, "GET", "x", "/slow/1500", &[], b""));
    assert!(wait_until(Duration::from_secs(5), || os[0].hits() == 1));
    assert_eq!(ok_get(port, "x", "/").header("x-origin"), Some("o1"));
    let _ = slow.join();
}

#[test]
fn keepalive_pool_reuses_upstream_connections() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..20 {
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.read_response(false)
                .unwrap_or_else(|e| panic!("{e}"))
                .status,
            200
        );
    }
    assert!(
        o.connections() <= 2,
        "{} upstream connections for 20 requests",
        o.connections()
    );
}

#[test]
fn keepalive_off_closes_upstream_connections() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n\t\t\tkeepalive off\n\t\t}}\n\t}}\n}}", o.port));
    for _ in 0..5 {
        assert_eq!(ok_get(port, "x", "/").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(3), || o.connections() == 5),
        "{}",
        o.connections()
    );
}

#[test]
fn websocket_upgrade_tunnels_both_ways() {
    let o = origin::http("ws");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // A masked text frame "hello" from the client; the echo comes back unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.send_raw(&frame).unwrap_or_else(|e| panic!("{e}"));
    let mut got = [0u8; 7];
    use std::io::Read;
    c.stream()
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&got, b"\x81\x05hello");
}

/// Opens a WebSocket to `path` through Dwaar on `port`.
fn ws_open(port: u16, path: &str) -> Conn {
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 101);
    c
}

/// Whether a text frame sent over the tunnel comes back from the echoing origin.
fn ws_echoes(c: &mut Conn) -> bool {
    use std::io::Read;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    if c.send_raw(&frame).is_err() {
        return false;
    }
    let mut got = [0u8; 4];
    let _ = c.stream().set_read_timeout(Some(Duration::from_secs(5)));
    c.stream().read_exact(&mut got).is_ok() && &got == b"\x81\x02hi"
}

/// How long until the tunnel ends (the client reads the end of the stream), if it does
/// within `within`.
fn ws_ends_within(c: &mut Conn, within: Duration) -> Option<Duration> {
    use std::io::Read;
    let start = std::time::Instant::now();
    let _ = c.stream().set_read_timeout(Some(within));
    let mut buf = [0u8; 64];
    loop {
        match c.stream().read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed())
            }
            Err(_) => return None,
        }
    }
}

/// `stream_timeout` ends an upgraded connection that long after it opened, however
/// busy it is; a proxy without it leaves its tunnels alone.
#[test]
fn stream_timeout_ends_tunnels() {
    let o = origin::http("ws");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\thandle /limited/* {{\n\t\treverse_proxy 127.0.0.1:{0} {{\n\t\t\tstream_timeout 800ms\n\t\t}}\n\t}}\n\treverse_proxy 127.0.0.1:{0}\n}}",
        o.port
    ));
    let mut limited = ws_open(port, "/limited/chat");
    let mut free = ws_open(port, "/chat");
    assert!(ws_echoes(&mut limited));
    assert!(ws_echoes(&mut free));
    let ended = ws_ends_within(&mut limited, Duration::from_secs(5));
    assert!(
        ended.is_some_and(|t| t < Duration::from_secs(3)),
        "{ended:?}"
    );
    assert!(
        ws_echoes(&mut free),
        "the other proxy's tunnel is untouched"
    );
    assert_eq!(ws_ends_within(&mut free, Duration::from_millis(500)), None);
}

/// `stream_close_delay`: replacing the config closes the old config's tunnels after
/// the delay; tunnels of a proxy without it run on across the reload.
#[test]
fn stream_close_delay_ends_tunnels_after_a_reload() {
    let o = origin::http("ws");
    let config = |port: u16, tag: &str| {
        format!(
            ":{port} {{\n\thandle /delayed/* {{\n\t\treverse_proxy 127.0.0.1:{0} {{\n\t\t\tstream_close_delay 300ms\n\t\t}}\n\t}}\n\treverse_proxy 127.0.0.1:{0}\n\theader X-Tag {tag}\n}}",
            o.port
        )
    };
    let (d, port) = serve(&config(0, "a").replace(":0 {", ":PORT {"));
    let mut delayed = ws_open(port, "/delayed/chat");
    let mut kept = ws_open(port, "/chat");
    assert!(ws_echoes(&mut delayed));
    assert!(ws_echoes(&mut kept));
    d.write_config(&config(port, "b"));
    d.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log_text()
            .matches("config reloaded")
            .count()
            >= 1),
        "{}",
        d.log_text()
    );
    let ended = ws_ends_within(&mut delayed, Duration::from_secs(5));
    assert!(ended.is_some(), "{}", d.log_text());
    assert!(ws_echoes(&mut kept), "a tunnel without the option survives");
    assert_eq!(
        ok_get(port, "x", "/x").header("x-tag"),
        Some("b"),
        "the new config serves"
    );
}

#[test]
fn upgrade_answered_without_101_stays_http() {
    let o = origin::http("plain");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(b"GET /refuse-upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    // The connection must still speak HTTP (or be closed), never be a raw tunnel.
    if c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_ok() {
        if let Ok(r2) = c.read_response(false) {
            assert_eq!(r2.status, 200);
            assert!(
                r2.text().contains("uri: /\n"),
                "second request parsed as HTTP"
            );
        }
    }
}

#[test]
fn server_sent_events_stream_without_buffering() {
    let o = origin::http("sse");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\tflush_interval -1\n\t}}\n}}",
        o.port
    ));
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    use std::io::Read;
    while !String::from_utf8_lossy(&buf).contains("data: 1") {
        let mut chunk = [0u8; 1024];
        let n = c.stream().read(&mut chunk).unwrap_or(0);
        assert!(n > 0, "stream ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    // The whole stream takes 1.2 s; the first event must arrive well before the end.
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "first event took {:?}",
        start.elapsed()
    );
}

#[test]
fn h2c_upstream_and_transport_versions() {
    let o = origin::h2c("h2");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy h2c://127.0.0.1:{}\n}}",
        o.port
    ));
    let r = ok_get(port, "x", "/grpc-like");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("proto: HTTP/2.0"), "{}", r.text());
}

#[test]
fn unix_socket_upstream() {
    let dir = tempfile_dir();
    let sock = dir.join("app.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap_or_else(|e| panic!("{e}"));
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia unix!",
            );
        }
    });
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy unix/{}\n}}",
        sock.display()
    ));
    let r = ok_get(port, "x", "/");
    assert_eq!(r.text(), "via unix!");
    let _ = t.join();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dwaar-test-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::create_dir_all(&d);
    d
}

#[test]
fn lb_try_duration_waits_for_a_backend() {
    let port_b = free_port();
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{port_b} {{\n\t\tlb_try_duration 3s\n\t\tlb_try_interval 100ms\n\t}}\n}}"));
    // Start the backend shortly after the request begins: the retry loop picks it up.
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let l =
            std::net::TcpListener::bind(("127.0.0.1", port_b)).unwrap_or_else(|e| panic!("{e}"));
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate",
            );
        }
    });
    let r = ok_get(port, "x", "/");
    assert_eq!(r.text(), "late");
    let _ = h.join();
}

#[test]
fn https_upstreams_verify_or_skip_verification() {
    let ca = origin::TestCa::new();
    let o = origin::https("secure", &ca);
    // Trusting the test CA: verified TLS to the upstream.
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy https://127.0.0.1:{} {{\n\t\ttransport http {{\n\t\t\ttls_server_name localhost\n\t\t\ttls_trusted_ca_certs {}\n\t\t}}\n\t}}\n}}",
        o.port,
        ca.ca_pem.display()
    ));
    let r = ok_get(port, "x", "/verified");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("uri: /verified"));
    // Without trust the handshake fails: 502.
    let (_d2, port2) = serve(&format!(
        ":PORT {{\n\treverse_proxy https://127.0.0.1:{}\n}}",
        o.port
    ));
    assert_eq!(ok_get(port2, "x", "/").status, 502);
    // tls_insecure_skip_verify accepts any certificate.
    let (_d3, port3) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n\t\t\ttls\n\t\t\ttls_insecure_skip_verify\n\t\t}}\n\t}}\n}}", o.port));
    assert_eq!(ok_get(port3, "x", "/").status, 200);
}

#[test]
fn chunked_response_with_content_length_reaches_the_client_without_it() {
    let origin = origin::canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
    );
    let (_d, port) = serve(&format!(":PORT {{\n\treverse_proxy 127.0.0.1:{origin}\n}}"));
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Wiki");
        assert!(
            r.header("content-length").is_none() || r.header("transfer-encoding").is_none(),
            "both framings reached the client: {:?}",
            r.headers
        );
    }
}

#[test]
fn request_with_both_framings_is_not_smuggled() {
    let o = origin::http("o");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    // If Content-Length won, "GET /smuggled" would be read as a second request.
    let attack = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(attack.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    // Refusing (400, or closing the connection) is as good as decoding it as chunked.
    let Ok(first) = c.read_response(false) else {
        return;
    };
    assert!(
        first.status == 400 || first.status == 200,
        "{}",
        first.status
    );
    if first.status == 200 {
        // Chunked won. RFC 9112 §6.3 wants the connection closed after such a request;
        // if it is not, the next request on the wire is answered on its own.
        if let Ok(second) = c.read_response(false) {
            assert!(second.text().contains("/smuggled"), "{}", second.text());
        }
    }
    assert!(!first.text().contains("/smuggled"));
}

#[test]
fn large_request_bodies_reach_an_origin_that_reads_them_first() {
    // The origin answers only after reading the whole body: the proxy must stream it
    // before waiting for the answer (a 3 MB upload once deadlocked here).
    let o = origin::http("uploads");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}\n",
        o.port
    ));
    let body = vec![b'x'; 3_000_000];
    let r = request(port, "POST", "x", "/upload", &[], &body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("body: 3000000"), "{}", r.text());
}

/// Which origin `n` requests reach, once the answers settle (health checks run in the
/// background), within `wait`.
fn settles_on(port: u16, want: &str, wait: Duration) -> bool {
    wait_until(wait, || {
        (0..4).all(|_| {
            request(port, "GET", "x", "/", &[], b"")
                .map(|r| {
                    r.header("x-origin")
                        .unwrap_or(r.text().as_str())
                        .contains(want)
                })
                .unwrap_or(false)
        })
    })
}

/// A Dwaar that plays a picky backend: `/hc` is 200 only for a POST with a 5-byte
/// body, `/moved` redirects to `/hc-ok`, everything else answers "from-backend".
fn picky_backend() -> (Dwaar, u16) {
    serve(
        ":PORT {\n\t@good {\n\t\tmethod POST\n\t\theader Content-Length 5\n\t}\n\thandle /hc {\n\t\trespond @good \"ok\" 200\n\t\trespond \"bad\" 500\n\t}\n\thandle /moved {\n\t\tredir * /hc-ok 302\n\t}\n\thandle /hc-ok {\n\t\trespond \"fine\" 200\n\t}\n\thandle {\n\t\theader X-Origin backend\n\t\trespond \"from-backend\"\n\t}\n}\n",
    )
}

/// `health_method`, `health_request_body`, `health_follow_redirects` and
/// `health_upstream` shape the probe; a backend that fails its probe gets no traffic.
#[test]
fn health_probe_method_body_redirects_and_other_address() {
    let (_b, backend) = picky_backend();
    let spare = origin::http("spare");
    let front = |health: &str| {
        serve(&format!(
            ":PORT {{\n\treverse_proxy 127.0.0.1:{backend} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\thealth_interval 100ms\n{health}\t}}\n}}\n",
            spare.port
        ))
    };
    // GET /hc is 500: the backend is out, the spare serves.
    let (_f, port) = front("\t\thealth_uri /hc\n");
    assert!(
        settles_on(port, "spare", Duration::from_secs(5)),
        "GET probe"
    );
    // POST with the body passes: the backend (first) serves.
    let (_f, port) =
        front("\t\thealth_uri /hc\n\t\thealth_method POST\n\t\thealth_request_body hello\n");
    assert!(
        settles_on(port, "backend", Duration::from_secs(5)),
        "POST probe"
    );
    // A redirect is a failure unless followed.
    let (_f, port) = front("\t\thealth_uri /moved\n");
    assert!(
        settles_on(port, "spare", Duration::from_secs(5)),
        "302 not followed"
    );
    let (_f, port) = front("\t\thealth_uri /moved\n\t\thealth_follow_redirects\n");
    assert!(
        settles_on(port, "backend", Duration::from_secs(5)),
        "302 followed"
    );
    // health_upstream probes another address: the spare's /anything is 200.
    let (_f, port) = front(&format!(
        "\t\thealth_uri /hc\n\t\thealth_upstream 127.0.0.1:{}\n",
        spare.port
    ));
    assert!(
        settles_on(port, "backend", Duration::from_secs(5)),
        "health_upstream"
    );
}

/// `health_fails 3` needs three failed probes in a row before an upstream is out, and
/// `health_passes 2` two good ones before it is back.
#[test]
fn health_passes_and_fails_count_in_a_row() {
    let os = origins(2);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\thealth_uri /health\n\t\thealth_interval 400ms\n\t\thealth_fails 3\n\t\thealth_passes 2\n\t}}\n}}\n",
        os[0].port, os[1].port
    ));
    assert!(settles_on(port, "o0", Duration::from_secs(5)));
    os[0].set_healthy(false);
    // At most two probes have failed half a second later: still in.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ok_get(port, "x", "/").header("x-origin"),
        Some("o0"),
        "out after fewer than 3 failures"
    );
    assert!(
        settles_on(port, "o1", Duration::from_secs(5)),
        "out after 3 failures"
    );
    os[0].set_healthy(true);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        ok_get(port, "x", "/").header("x-origin"),
        Some("o1"),
        "back after one pass"
    );
    assert!(
        settles_on(port, "o0", Duration::from_secs(5)),
        "back after 2 passes"
    );
}

/// TLS upstreams get a real HTTP probe over TLS: a 503 `/health` takes one out (it was
/// judged by the TCP connect alone before).
#[test]
fn health_checks_over_tls_judge_the_answer() {
    let ca = origin::TestCa::new();
    let secure = origin::https("secure", &ca);
    let other = origin::https("other", &ca);
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy https://127.0.0.1:{} https://127.0.0.1:{} {{\n\t\tlb_policy first\n\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t\ttransport http {{\n\t\t\ttls_server_name localhost\n\t\t\ttls_trusted_ca_certs {}\n\t\t}}\n\t}}\n}}\n",
        secure.port,
        other.port,
        ca.ca_pem.display()
    ));
    assert!(settles_on(port, "secure", Duration::from_secs(5)));
    secure.set_healthy(false);
    assert!(
        settles_on(port, "other", Duration::from_secs(5)),
        "TLS probe saw the 503"
    );
}

/// `keepalive_idle_conns_per_host` bounds the idle connections kept to one upstream and
/// `keepalive_idle_conns 0` keeps none (one worker thread, so one pool).
#[test]
fn idle_connection_limits_bound_what_is_kept() {
    let burst = |port: u16| {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || request(port, "GET", "x", "/slow/300", &[], b"")))
            .collect();
        for t in threads {
            let r = t.join().unwrap_or_else(|_| panic!("join"));
            assert_eq!(r.map(|r| r.status).unwrap_or(0), 200);
        }
    };
    let run = |transport: &str| -> usize {
        let o = origin::http("kept");
        let (_d, port) = serve(&format!(
            ":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n{transport}\t\t}}\n\t}}\n}}\n",
            o.port
        ));
        burst(port);
        burst(port);
        o.connections()
    };
    assert_eq!(run(""), 4, "unbounded: the second burst reuses all four");
    assert_eq!(run("\t\t\tkeepalive_idle_conns 0\n"), 8, "none kept");
    // The per-count bounds are those of Dwaar's own pools; the `pingora_path` suite
    // proxies through Pingora's shared pool, where only 0 applies (documented).
    let through_pingora = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("pingora_path"));
    if through_pingora {
        return;
    }
    assert_eq!(
        run("\t\t\tkeepalive_idle_conns_per_host 1\n"),
        7,
        "one kept: the second burst opens three"
    );
    assert_eq!(
        run("\t\t\tkeepalive_idle_conns 2\n"),
        6,
        "two kept in all: the second burst opens two"
    );
}

/// `max_conns_per_host 1`: concurrent requests to one upstream wait their turn instead
/// of opening more connections (three 400 ms requests take three turns), and all succeed.
#[test]
fn max_conns_per_host_queues_requests() {
    let o = origin::http("capped");
    let timed = |transport: &str| {
        let (_d, port) = serve(&format!(
            ":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n{transport}\t\t}}\n\t}}\n}}\n",
            o.port
        ));
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || request(port, "GET", "x", "/slow/400", &[], b"")))
            .collect();
        for t in threads {
            let r = t.join().unwrap_or_else(|_| panic!("join"));
            assert_eq!(r.map(|r| r.status).unwrap_or(0), 200);
        }
        started.elapsed()
    };
    let capped = timed("\t\t\tmax_conns_per_host 1\n");
    assert!(
        capped >= Duration::from_millis(1150),
        "three turns: {capped:?}"
    );
    let free = timed("");
    assert!(free < Duration::from_millis(1100), "in parallel: {free:?}");
}

/// After an upstream had the request and failed it, the request goes to another one
/// only when it is a GET (by default) or matches `lb_retry_match`; a POST body is sent
/// again whole.
#[test]
fn lb_retry_match_decides_which_requests_are_sent_again() {
    let bad = origin::dropping();
    let good = origin::http("good");
    let site = |extra: &str| {
        serve(&format!(
            ":PORT {{\n\treverse_proxy 127.0.0.1:{bad} 127.0.0.1:{} {{\n\t\tlb_policy first\n\t\tlb_retries 1\n{extra}\t}}\n}}\n",
            good.port
        ))
    };
    let post = |port: u16| {
        request(
            port,
            "POST",
            "x",
            "/submit",
            &[("Content-Type", "text/plain")],
            b"payload-123",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    // Default: a GET is retried, a POST is not.
    let (_d, port) = site("");
    let r = ok_get(port, "x", "/read");
    assert_eq!(
        (r.status, r.header("x-origin")),
        (200, Some("good")),
        "GET retried"
    );
    assert_eq!(post(port).status, 502, "POST not retried by default");
    // lb_retry_match: POST /submit is retried (with its body), GET is no longer.
    let (_d, port) = site("\t\tlb_retry_match {\n\t\t\tmethod POST\n\t\t\tpath /submit\n\t\t}\n");
    let r = post(port);
    assert_eq!(
        (r.status, r.header("x-origin")),
        (200, Some("good")),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("body: 11"),
        "the body arrived whole: {}",
        r.text()
    );
    assert_eq!(ok_get(port, "x", "/read").status, 502, "GET does not match");
    let r = request(port, "POST", "x", "/other", &[], b"x").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 502, "a POST elsewhere does not match");
}

/// With worker processes, each worker runs the background service of its own route
/// table: active health checks take a failing upstream out (they did not run in workers
/// before), and `dynamic`/host-name lookups refresh there too.
#[test]
fn active_health_checks_run_in_worker_processes() {
    let os = origins(2);
    let port = free_port();
    let d = Dwaar::start_with(
        &bin(),
        &format!(
            ":{port} {{\n\treverse_proxy {} {{\n\t\tlb_policy first\n\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t}}\n}}\n",
            upstream_list(&os)
        ),
        &[port],
        &["--threads", "1", "--workers", "2"],
    );
    assert!(
        settles_on(port, "o0", Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
    os[0].set_healthy(false);
    assert!(
        settles_on(port, "o1", Duration::from_secs(10)),
        "both workers took o0 out: {}",
        d.log_text()
    );
}

/// `keepalive_interval` turns on TCP keep-alive probes on upstream connections: the
/// kernel shows a keepalive timer on Dwaar's kept connection to the origin (`ss -o`).
#[test]
fn keepalive_interval_sets_tcp_keepalive_on_upstream_connections() {
    if !have_tool("ss") {
        return;
    }
    let timers = |transport: &str| -> String {
        let o = origin::http("ka");
        let (_d, port) = serve(&format!(
            ":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n{transport}\t\t}}\n\t}}\n}}\n",
            o.port
        ));
        assert_eq!(ok_get(port, "x", "/").status, 200);
        let out = std::process::Command::new("ss")
            .args(["-tno", "state", "established"])
            .arg(format!("( dport = :{} )", o.port))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let with = timers("\t\t\tkeepalive_interval 7s\n");
    assert!(with.contains("timer:(keepalive"), "{with}");
    let without = timers("");
    assert!(!without.contains("timer:(keepalive"), "{without}");
}

/// `read_buffer` / `write_buffer` size the kernel buffers of upstream sockets (Linux
/// reports twice the size asked for, its bookkeeping included).
#[test]
fn read_and_write_buffer_size_upstream_sockets() {
    if !have_tool("ss") {
        return;
    }
    let o = origin::http("buf");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{} {{\n\t\ttransport http {{\n\t\t\tread_buffer 100000\n\t\t\twrite_buffer 50000\n\t\t}}\n\t}}\n}}\n",
        o.port
    ));
    assert_eq!(ok_get(port, "x", "/").status, 200);
    let out = std::process::Command::new("ss")
        .args(["-tnm", "state", "established"])
        .arg(format!("( dport = :{} )", o.port))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rb200000") && text.contains("tb100000"),
        "{text}"
    );
}

/// `max_response_header`: an upstream head larger than the limit is a 502; within the
/// default limit (64 KiB) the same head passes.
#[test]
fn max_response_header_bounds_upstream_heads() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "b".repeat(20 * 1024)
    );
    let origin = origin::canned(Box::leak(big.into_bytes().into_boxed_slice()));
    let (_d, port) = serve(&format!(
        ":PORT {{\n\thandle /small/* {{\n\t\treverse_proxy 127.0.0.1:{origin} {{\n\t\t\ttransport http {{\n\t\t\t\tmax_response_header 8KiB\n\t\t\t}}\n\t\t}}\n\t}}\n\treverse_proxy 127.0.0.1:{origin}\n}}\n"
    ));
    assert_eq!(ok_get(port, "x", "/small/x").status, 502, "over 8 KiB");
    let r = ok_get(port, "x", "/any");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "20 KiB within the default"
    );
}
