//! The real client address behind load balancers: the PROXY protocol (v1 and v2, per
//! listener, with allow/deny ranges and Caddy's fallback policies) on every TCP path, a
//! real HAProxy in front, and `client_ip_headers` / `trusted_proxies_strict` on every
//! path. The address must reach matchers, rate limits, placeholders, the access log and
//! the `X-Forwarded-For` sent upstream.

mod common;
use common::*;
use dwaar_testkit::balancer::{Balancer, Claim};
use dwaar_testkit::paths::{Paths, Proto, Req, ALL};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const TCP_PATHS: [Proto; 5] = [
    Proto::H1Lean,
    Proto::H1Pingora,
    Proto::H1Tls,
    Proto::H2Tls,
    Proto::H2c,
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("{s}"))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("{s}"))
}

const PROXY_SERVERS: &str = "\t\tlistener_wrappers {\n\t\t\tproxy_protocol {\n\t\t\t\ttimeout 2s\n\t\t\t\tallow 127.0.0.1/32\n\t\t\t\tdeny 127.0.0.2/32\n\t\t\t}\n\t\t\ttls\n\t\t}";

fn proxy_site(origin: u16) -> String {
    format!(
        "\tlog {{\n\t\toutput file SCRATCH/INSTANCE.log\n\t\tformat json\n\t}}\n\
         \t@balanced remote_ip 203.0.113.0/24 2001:db8::/32\n\
         \thandle /match {{\n\t\trespond @balanced \"matched\"\n\t\trespond \"not matched\"\n\t}}\n\
         \thandle /limited {{\n\t\trate_limit 1/m\n\t\trespond \"allowed\"\n\t}}\n\
         \thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:{origin}\n\t}}\n\
         \trespond \"remote={{remote_host}} client={{client_ip}}\"\n"
    )
}

/// HAProxy in the foreground on `config`; the caller kills it (by its child handle).
fn start_haproxy(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy: {e}"))
}

/// PROXY v1 and v2 headers from an allowed balancer set the client address on every
/// TCP path: placeholders, the `remote_ip` matcher, a rate-limit zone, the access log
/// and `X-Forwarded-For` upstream. A denied peer's header closes the connection; a
/// peer outside `allow` keeps its own address; HTTP/3 (UDP) is untouched.
#[test]
fn proxy_protocol_sets_the_client_address_on_every_tcp_path() {
    let origin = origin::http("up");
    let p = Paths::start_with(&bin(), PROXY_SERVERS, &proxy_site(origin.port));
    let local = ip("127.0.0.1");
    for (i, proto) in TCP_PATHS.into_iter().enumerate() {
        let v4 = sa(&format!("203.0.113.{}:40000", 10 + i));
        let v6 = sa(&format!("[2001:db8::{}]:40000", 10 + i));
        let b1 = Balancer::start(p.port(proto), Claim::V1(v4), local);
        let b2 = Balancer::start(p.port(proto), Claim::V2(v6), local);
        let via = |b: &Balancer, path: &str| {
            p.send_via(proto, &Req::get(path), Some(b.port))
                .unwrap_or_else(|e| panic!("{proto:?} {path}: {e:?}"))
        };
        assert_eq!(
            via(&b1, "/").text(),
            format!("remote={0} client={0}", v4.ip()),
            "{proto:?} v1"
        );
        assert_eq!(
            via(&b2, "/").text(),
            format!("remote={0} client={0}", v6.ip()),
            "{proto:?} v2"
        );
        assert_eq!(via(&b1, "/match").text(), "matched", "{proto:?}");
        assert_eq!(
            p.ok(proto, &Req::get("/match")).text(),
            "not matched",
            "{proto:?}"
        );
        // One request a minute per client: the balancer's clients are told apart.
        assert_eq!(via(&b1, "/limited").status, 200, "{proto:?}");
        assert_eq!(via(&b1, "/limited").status, 429, "{proto:?}");
        assert_eq!(via(&b2, "/limited").status, 200, "{proto:?}");
        let echo = via(&b1, "/up/echo").text().to_ascii_lowercase();
        assert!(
            echo.contains(&format!("h:x-forwarded-for: {}", v4.ip())),
            "{proto:?}: {echo}"
        );
        // A LOCAL header (the balancer's own health check) keeps the peer.
        let local_check = Balancer::start(p.port(proto), Claim::V2Local, local);
        assert_eq!(
            via(&local_check, "/").text(),
            "remote=127.0.0.1 client=127.0.0.1",
            "{proto:?}"
        );
        // A denied peer may not send a header: the connection is closed.
        let denied = Balancer::start(p.port(proto), Claim::V1(v4), ip("127.0.0.2"));
        assert!(
            p.send_via(proto, &Req::get("/"), Some(denied.port))
                .is_err(),
            "{proto:?}: a denied peer's header was accepted"
        );
        // Without a header the denied peer is served as itself.
        let plain = Balancer::start(p.port(proto), Claim::Nothing, ip("127.0.0.2"));
        assert_eq!(
            via(&plain, "/").text(),
            "remote=127.0.0.2 client=127.0.0.2",
            "{proto:?}"
        );
        // A peer outside `allow` (fallback `ignore`): its header is read and dropped.
        let other = Balancer::start(p.port(proto), Claim::V2(v6), ip("127.0.0.3"));
        assert_eq!(
            via(&other, "/").text(),
            "remote=127.0.0.3 client=127.0.0.3",
            "{proto:?}"
        );
    }
    // The access logs name the claimed clients.
    let logs: String = ["main", "pingora"]
        .iter()
        .map(|i| std::fs::read_to_string(p.scratch().join(format!("{i}.log"))).unwrap_or_default())
        .collect();
    for i in 0..TCP_PATHS.len() {
        let needle = format!("\"remote_ip\":\"203.0.113.{}\"", 10 + i);
        let found = wait_until(Duration::from_secs(5), || {
            let logs: String = ["main", "pingora"]
                .iter()
                .map(|n| {
                    std::fs::read_to_string(p.scratch().join(format!("{n}.log")))
                        .unwrap_or_default()
                })
                .collect();
            logs.contains(&needle)
        });
        assert!(found, "{needle} not logged: {logs}");
    }
    assert!(
        p.main
            .metric("dwaar_proxy_protocol_refused_total")
            .unwrap_or(0)
            >= 4,
        "refusals are counted"
    );
    // HTTP/3 is UDP: no PROXY protocol, served as before.
    assert_eq!(
        p.ok(Proto::H3, &Req::get("/")).text(),
        "remote=127.0.0.1 client=127.0.0.1"
    );
}

/// Raw exchanges on a lean port: `fallback_policy require` closes connections without
/// a header (and takes the address from one), a silent client is cut off after the
/// `timeout`, a malformed header closes the connection, and what follows a header in
/// the same segment is served.
#[test]
fn require_timeout_and_malformed_headers() {
    let (d, port) = serve(
        "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tproxy_protocol {\n\t\t\t\ttimeout 500ms\n\t\t\t\tfallback_policy require\n\t\t\t}\n\t\t}\n\t}\n}\n:PORT {\n\trespond \"{remote_host}:{remote_port}\"\n}\n",
    );
    let exchange = |bytes: &[u8]| -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    };
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, _) = exchange(request);
    assert!(out.is_empty(), "served without the required header: {out}");
    let with_header = [
        &b"PROXY TCP4 198.51.100.4 127.0.0.1 4321 80\r\n"[..],
        request,
    ]
    .concat();
    let (out, _) = exchange(&with_header);
    assert!(out.ends_with("198.51.100.4:4321"), "{out}");
    let (out, took) = exchange(b"");
    assert!(out.is_empty());
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "a silent client is closed after the timeout: {took:?}"
    );
    for bad in [
        &b"PROXY TCP4 bogus 127.0.0.1 1 2\r\n"[..],
        b"PROXY TCP9 1.2.3.4 127.0.0.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
    ] {
        let (out, _) = exchange(&[bad, request].concat());
        assert!(
            out.is_empty(),
            "{:?} was served: {out}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(d.metric("dwaar_proxy_protocol_refused_total").unwrap_or(0) >= 5);
}

/// The config refuses what it cannot honour, at its line.
#[test]
fn proxy_protocol_config_errors_point_at_their_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (config, want) in [
        (
            "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\ttls\n\t\t\tproxy_protocol\n\t\t}\n\t}\n}\n:1 {\n\trespond x\n}\n",
            ("Dwaarfile:5:4", "proxy_protocol must come before tls"),
        ),
        (
            "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tproxy_protocol {\n\t\t\t\tfallback_policy maybe\n\t\t\t}\n\t\t}\n\t}\n}\n:1 {\n\trespond x\n}\n",
            ("Dwaarfile:5:21", "maybe"),
        ),
        (
            "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tproxy_protocol {\n\t\t\t\tallow 10.0.0.0/33\n\t\t\t}\n\t\t}\n\t}\n}\n:1 {\n\trespond x\n}\n",
            ("Dwaarfile:5:11", "10.0.0.0/33"),
        ),
        (
            "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\thttp_redirect\n\t\t}\n\t}\n}\n:1 {\n\trespond x\n}\n",
            ("Dwaarfile:4:4", "not supported yet"),
        ),
        (
            "{\n\tservers {\n\t\tclient_ip_headers \"X Real\"\n\t}\n}\n:1 {\n\trespond x\n}\n",
            ("Dwaarfile:3:21", "is not a header name"),
        ),
    ] {
        std::fs::write(dir.path().join("Dwaarfile"), config).unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1, "{config}");
        assert!(err.contains(want.0) && err.contains(want.1), "{want:?}: {err}");
    }
}

/// `client_ip_headers` are read (in order) only from `trusted_proxies`; in strict mode
/// from the right, past trusted proxies. On every path, HTTP/3 included: `{client_ip}`,
/// the `client_ip` matcher and `ip_filter` all see the same address.
#[test]
fn client_ip_headers_and_strict_mode_on_every_path() {
    let body = "\t@seven client_ip 7.7.7.7\n\thandle /seven {\n\t\trespond @seven \"seven\"\n\t\trespond \"other\"\n\t}\n\thandle /filtered {\n\t\tip_filter {\n\t\t\tdeny 5.5.5.5/32\n\t\t}\n\t\trespond \"passed\"\n\t}\n\trespond \"{client_ip}\"\n";
    let headers = [
        ("X-Real-IP", "5.5.5.5"),
        ("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 10.0.0.2"),
    ];
    let req = |path: &'static str| {
        headers
            .iter()
            .fold(Req::get(path), |r, (k, v)| r.header(k, v))
    };
    let ordered = Paths::start_with(
        &bin(),
        "\t\ttrusted_proxies static 127.0.0.1/32 10.0.0.0/8\n\t\tclient_ip_headers X-Real-IP X-Forwarded-For",
        body,
    );
    for proto in ALL {
        assert_eq!(ordered.ok(proto, &req("/")).text(), "5.5.5.5", "{proto:?}");
        assert_eq!(
            ordered.ok(proto, &req("/filtered")).status,
            403,
            "{proto:?}"
        );
        assert_eq!(
            ordered.ok(proto, &req("/seven")).text(),
            "other",
            "{proto:?}"
        );
    }
    drop(ordered);
    let strict = Paths::start_with(
        &bin(),
        "\t\ttrusted_proxies static 127.0.0.1/32 10.0.0.0/8\n\t\ttrusted_proxies_strict",
        body,
    );
    for proto in ALL {
        // X-Real-IP is not read (default headers); from the right: 10.0.0.2 is trusted,
        // 7.7.7.7 is the client; the leftmost 6.6.6.6 could be forged and is not used.
        assert_eq!(strict.ok(proto, &req("/")).text(), "7.7.7.7", "{proto:?}");
        assert_eq!(
            strict.ok(proto, &req("/seven")).text(),
            "seven",
            "{proto:?}"
        );
        assert_eq!(
            strict.ok(proto, &req("/filtered")).text(),
            "passed",
            "{proto:?}"
        );
    }
}

/// A real HAProxy in front (TCP mode, `send-proxy-v2`), for a plain and an HTTPS port;
/// and curl's own `--haproxy-protocol` (v1).
#[test]
fn haproxy_in_front_sends_the_client_address() {
    if !have_tool("haproxy") {
        return;
    }
    let p = Paths::start_with(
        &bin(),
        PROXY_SERVERS,
        "\trespond \"remote={remote_host}\"\n",
    );
    let (front_plain, front_tls) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n\tmaxconn 100\ndefaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 30s\n\ttimeout server 30s\n\
             frontend plain\n\tbind 127.0.0.1:{front_plain}\n\tdefault_backend dwaar_plain\n\
             frontend tls\n\tbind 127.0.0.1:{front_tls}\n\tdefault_backend dwaar_tls\n\
             backend dwaar_plain\n\tserver d 127.0.0.1:{} send-proxy-v2\n\
             backend dwaar_tls\n\tserver d 127.0.0.1:{} send-proxy-v2\n",
            p.plain, p.https
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut haproxy = start_haproxy(&cfg);
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", front_tls)).is_ok()
    });
    // The client dials HAProxy from 127.0.0.5; HAProxy dials Dwaar from 127.0.0.1.
    let curl = |url: &str, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--interface", "127.0.0.5"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.root).unwrap_or_else(|e| panic!("{e}"));
    let plain = curl(&format!("http://127.0.0.1:{front_plain}/"), &[]);
    let tls = curl(
        &format!("https://localhost:{front_tls}/"),
        &[
            "--cacert",
            &ca.display().to_string(),
            "--resolve",
            &format!("localhost:{front_tls}:127.0.0.1"),
            "--connect-to",
            &format!("localhost:{front_tls}:127.0.0.1:{front_tls}"),
            "-H",
            &format!("Host: localhost:{}", p.https),
        ],
    );
    let h2 = curl(
        &format!("https://localhost:{front_tls}/"),
        &[
            "--http2",
            "--cacert",
            &ca.display().to_string(),
            "--resolve",
            &format!("localhost:{front_tls}:127.0.0.1"),
            "-H",
            &format!("Host: localhost:{}", p.https),
        ],
    );
    // curl's own PROXY v1 header, straight to Dwaar (the peer 127.0.0.1 is allowed).
    let v1 = {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
            .arg(format!("http://127.0.0.1:{}/", p.plain))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    assert!(up, "haproxy did not start");
    assert_eq!(plain, "remote=127.0.0.5", "through HAProxy, plain");
    assert_eq!(tls, "remote=127.0.0.5", "through HAProxy, TLS");
    assert_eq!(h2, "remote=127.0.0.5", "through HAProxy, HTTP/2");
    assert_eq!(v1, "remote=127.0.0.1", "curl --haproxy-protocol");
}

/// `transport http { proxy_protocol v1|v2 }` on every path: a real HAProxy upstream
/// that requires the header (`accept-proxy`) answers with the source it read, which is
/// the client Dwaar settled on (here from `X-Forwarded-For` of a trusted peer); each
/// request gets its own connection, so a second client is never announced as the first.
#[test]
fn proxy_protocol_to_upstreams_on_every_path() {
    if !have_tool("haproxy") {
        return;
    }
    let (v1, v2) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n\tmaxconn 100\ndefaults\n\tmode http\n\ttimeout connect 5s\n\ttimeout client 30s\n\ttimeout server 30s\n\
             frontend v1\n\tbind 127.0.0.1:{v1} accept-proxy\n\thttp-request return status 200 content-type text/plain lf-string \"v1 src=%[src]\"\n\
             frontend v2\n\tbind 127.0.0.1:{v2} accept-proxy\n\thttp-request return status 200 content-type text/plain lf-string \"v2 src=%[src]\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut haproxy = start_haproxy(&cfg);
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", v2)).is_ok()
    });
    let body = format!(
        "\thandle /one/* {{\n\t\treverse_proxy 127.0.0.1:{v1} {{\n\t\t\ttransport http {{\n\t\t\t\tproxy_protocol v1\n\t\t\t}}\n\t\t}}\n\t}}\n\
         \thandle /two/* {{\n\t\treverse_proxy 127.0.0.1:{v2} {{\n\t\t\ttransport http {{\n\t\t\t\tproxy_protocol v2\n\t\t\t}}\n\t\t}}\n\t}}\n"
    );
    let p = Paths::start_with(&bin(), "\t\ttrusted_proxies static 127.0.0.1/32", &body);
    let mut failures = Vec::new();
    for proto in ALL {
        for (n, client) in ["198.51.100.7", "198.51.100.8", "2001:db8::8"]
            .iter()
            .enumerate()
        {
            for (path, version) in [("/one/x", "v1"), ("/two/x", "v2")] {
                let r = p.send(proto, &Req::get(path).header("X-Forwarded-For", client));
                let text = r.map(|r| r.text()).unwrap_or_else(|e| format!("{e:?}"));
                let want = format!("{version} src={client}");
                if text != want {
                    failures.push(format!(
                        "{proto:?} request {n} {path}: {text:?}, want {want:?}"
                    ));
                }
            }
        }
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    assert!(up, "haproxy did not start");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Refused at their line.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (line, want) in [
        ("proxy_protocol v3", "v3"),
        ("versions 2\n\t\t\tproxy_protocol v2", "HTTP/2 upstreams"),
    ] {
        std::fs::write(
            dir.path().join("Dwaarfile"),
            format!(":1 {{\n\treverse_proxy 127.0.0.1:2 {{\n\t\ttransport http {{\n\t\t\t{line}\n\t\t}}\n\t}}\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1);
        assert!(err.contains(want) && err.contains("Dwaarfile:"), "{err}");
    }
}
