// Security middleware end to end: ip_filter (with trusted_proxies and IPv4-mapped
// peers), rate_limit, security_headers and the bot matcher.

mod common;
use common::*;

fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", "x", path, headers, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn ip_filter_uses_the_real_client_address() {
    let (_d, port) = serve(
        ":PORT {\n\thandle /only-local {\n\t\tip_filter {\n\t\t\tallow 127.0.0.1/32\n\t\t}\n\t\trespond ok\n\t}\n\
         \thandle /no-local {\n\t\tip_filter {\n\t\t\tdeny 127.0.0.0/8\n\t\t}\n\t\trespond ok\n\t}\n\
         \thandle /ten {\n\t\tip_filter {\n\t\t\tallow 10.0.0.0/8\n\t\t\tdefault deny\n\t\t}\n\t\trespond ok\n\t}\n}\n",
    );
    assert_eq!(get_with(port, "/only-local", &[]).status, 200);
    assert_eq!(get_with(port, "/no-local", &[]).status, 403);
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(
        get_with(port, "/no-local", &[("X-Forwarded-For", "10.1.2.3")]).status,
        403
    );
    assert_eq!(
        get_with(port, "/ten", &[("X-Forwarded-For", "10.1.2.3")]).status,
        403
    );
    // An IPv4-mapped IPv6 peer is its IPv4 address.
    let mapped = std::net::TcpStream::connect(format!("[::ffff:127.0.0.1]:{port}"));
    // Only a host without IPv6 may skip this (Dwaar then listens on IPv4 alone).
    let ipv6 = std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| !s.trim().is_empty());
    assert!(
        mapped.is_ok() || !ipv6,
        "IPv4-mapped connect failed: {mapped:?}"
    );
    if let Ok(mut c) = mapped {
        use std::io::{Read, Write};
        c.write_all(b"GET /no-local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        assert!(s.starts_with("HTTP/1.1 403"), "{s}");
    }
}

#[test]
fn ip_filter_trusts_forwarded_addresses_only_from_trusted_proxies() {
    let (_d, port) = serve(
        "{\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n}\n\
         :PORT {\n\tip_filter {\n\t\tallow 10.0.0.0/8\n\t}\n\trespond ok\n}\n",
    );
    assert_eq!(
        get_with(port, "/", &[("X-Forwarded-For", "10.9.8.7")]).status,
        200
    );
    assert_eq!(
        get_with(port, "/", &[("X-Forwarded-For", "192.0.2.1")]).status,
        403
    );
    assert_eq!(get_with(port, "/", &[]).status, 403);
}

#[test]
fn rate_limit_per_key_with_retry_after() {
    let (_d, port) = serve(
        ":PORT {\n\thandle /short {\n\t\trate_limit 3/m\n\t\trespond ok\n\t}\n\
         \thandle /keyed {\n\t\trate_limit {\n\t\t\tkey {http.request.header.X-Api-Key}\n\t\t\tevents 2\n\t\t\twindow 1m\n\t\t}\n\t\trespond ok\n\t}\n}\n",
    );
    for _ in 0..3 {
        assert_eq!(get_with(port, "/short", &[]).status, 200);
    }
    let r = get_with(port, "/short", &[]);
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
    assert!((1..=60).contains(&retry));
    for key in ["alice", "bob"] {
        for _ in 0..2 {
            assert_eq!(get_with(port, "/keyed", &[("X-Api-Key", key)]).status, 200);
        }
        assert_eq!(get_with(port, "/keyed", &[("X-Api-Key", key)]).status, 429);
    }
}

#[test]
fn security_headers_defaults_overrides_and_off() {
    let (_d, port) = serve(":PORT {\n\thandle /custom {\n\t\trespond ok\n\t}\n\trespond ok\n}\n");
    // Plain HTTP sites get none unless asked.
    assert_eq!(
        get_with(port, "/", &[]).header("x-content-type-options"),
        None
    );
    let (_d2, port2) = serve(
        ":PORT {\n\tsecurity_headers {\n\t\t-X-Frame-Options\n\t\tReferrer-Policy no-referrer\n\t\tPermissions-Policy geolocation=()\n\t}\n\
         \theader /app X-Content-Type-Options custom\n\trespond ok\n}\n",
    );
    let r = get_with(port2, "/", &[]);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("permissions-policy"), Some("geolocation=()"));
    assert_eq!(r.header("x-frame-options"), None);
    // A value set by the site wins over the default.
    assert_eq!(
        get_with(port2, "/app", &[]).header("x-content-type-options"),
        Some("custom")
    );
}

#[test]
fn https_sites_get_security_headers_by_default() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = format!(
        "{{\n\thttp_port {http}\n\thttps_port {https}\n\tstorage file_system {}\n}}\n\
         localhost {{\n\trespond secure\n}}\nnohdr.localhost {{\n\tsecurity_headers off\n\trespond plain\n}}\n",
        store.path().display()
    );
    let _d = Dwaar::start(&bin(), &cfg, &[https]);
    let root =
        std::fs::read(store.path().join("pki/local/root.crt")).unwrap_or_else(|e| panic!("{e}"));
    let opts = dwaar_testkit::tls::TlsOpts::trusting(&root);
    let r = dwaar_testkit::tls::get(https, "localhost", "localhost", "/", &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    let r = dwaar_testkit::tls::get(https, "nohdr.localhost", "nohdr.localhost", "/", &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.header("strict-transport-security"), None);
}

#[test]
fn bot_matcher() {
    let (_d, port) =
        serve(":PORT {\n\t@bots bot\n\trespond @bots \"no bots\" 403\n\trespond welcome\n}\n");
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    assert_eq!(
        get_with(port, "/", &[("User-Agent", chrome)]).text(),
        "welcome"
    );
    assert_eq!(
        get_with(port, "/", &[("User-Agent", "curl/8.4.0")]).status,
        403
    );
    assert_eq!(
        get_with(port, "/", &[("User-Agent", "Googlebot/2.1")]).status,
        403
    );
    assert_eq!(get_with(port, "/", &[]).status, 403);
}

fn hash(password: &str) -> String {
    let out = std::process::Command::new(bin())
        .args(["hash-password", "--cost", "4", "--plaintext", password])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}");
    let b = raw.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, c| (a << 8) | u32::from(*c)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn basic_auth_checks_passwords_off_the_request_path() {
    let origin = origin::http("private");
    let h = hash("s3cret pass");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\tbasic_auth /private/* bcrypt \"Staff \\\"only\\\"\" {{\n\t\talice {h}\n\t}}\n\
         \tbasicauth /who {{\n\t\tbob {h}\n\t}}\n\
         \trespond /who \"user={{http.auth.user.id}}\"\n\
         \treverse_proxy /private/* 127.0.0.1:{}\n\trespond /public open\n}}\n",
        origin.port
    ));
    assert_eq!(get_with(port, "/public", &[]).text(), "open");
    let r = get_with(port, "/private/x", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Staff only\", charset=\"UTF-8\"")
    );
    assert_eq!(
        get_with(
            port,
            "/private/x",
            &[("Authorization", &basic("alice", "wrong"))]
        )
        .status,
        401
    );
    assert_eq!(
        get_with(
            port,
            "/private/x",
            &[("Authorization", &basic("mallory", "s3cret pass"))]
        )
        .status,
        401
    );
    assert_eq!(
        get_with(port, "/private/x", &[("Authorization", "Basic !!!")]).status,
        401
    );
    let ok = get_with(
        port,
        "/private/x",
        &[("Authorization", &basic("alice", "s3cret pass"))],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The credentials are not forwarded upstream.
    assert!(
        !ok.text().to_ascii_lowercase().contains("authorization"),
        "{}",
        ok.text()
    );
    assert_eq!(origin.hits(), 1);
    // Again (from the verdict cache), and the user is known to placeholders.
    assert_eq!(
        get_with(
            port,
            "/private/y",
            &[("Authorization", &basic("alice", "s3cret pass"))]
        )
        .status,
        200
    );
    let who = get_with(
        port,
        "/who",
        &[("Authorization", &basic("bob", "s3cret pass"))],
    );
    assert_eq!(who.text(), "user=bob");
}

/// A tiny authentication service: `X-Token: good` passes with `Remote-User: alice`,
/// anything else gets 401 with its own body. It records what it was asked.
fn auth_service() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = vec![0u8; 16384];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&got).to_string();
            let ok = text
                .lines()
                .any(|l| l.eq_ignore_ascii_case("x-token: good"));
            if let Ok(mut v) = log.lock() {
                v.push(text);
            }
            let resp = if ok {
                "HTTP/1.1 200 OK\r\nRemote-User: alice\r\nX-Groups: admins\r\nContent-Length: 0\r\n\r\n".to_string()
            } else {
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 6\r\n\r\ndenied".to_string()
            };
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (port, seen)
}

#[test]
fn forward_auth_passes_copies_headers_or_returns_the_services_answer() {
    let (auth, seen) = auth_service();
    let origin = origin::http("behind-auth");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\tforward_auth 127.0.0.1:{auth} {{\n\t\turi /verify\n\t\tcopy_headers Remote-User X-Groups>X-Auth-Groups\n\t}}\n\
         \treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    let denied = get_with(port, "/app?x=1", &[("X-Token", "bad")]);
    assert_eq!((denied.status, denied.text().as_str()), (401, "denied"));
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert_eq!(origin.hits(), 0);
    let ok = get_with(
        port,
        "/app?x=1",
        &[("X-Token", "good"), ("Remote-User", "evil")],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body = ok.text();
    assert!(body.contains("h:remote-user: alice"), "{body}");
    assert!(
        !body.contains("evil"),
        "a client-sent copy reached the origin: {body}"
    );
    assert!(body.contains("h:x-auth-groups: admins"), "{body}");
    assert!(!body.contains("x-dwaar-forward-auth"), "{body}");
    let asked = seen.lock().map(|v| v.join("\n")).unwrap_or_default();
    assert!(asked.contains("GET /verify HTTP/1.1"), "{asked}");
    assert!(
        asked
            .to_ascii_lowercase()
            .contains("x-forwarded-method: get"),
        "{asked}"
    );
    assert!(
        asked
            .to_ascii_lowercase()
            .contains("x-forwarded-uri: /app?x=1"),
        "{asked}"
    );
}

#[test]
fn path_tricks_do_not_bypass_protected_routes() {
    let origin = origin::http("protected");
    let h = hash("pw");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\tbasic_auth /admin/* {{\n\t\troot {h}\n\t}}\n\
         \tip_filter /internal/* {{\n\t\tdeny 127.0.0.0/8\n\t}}\n\
         \treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    for p in [
        "/admin/x",
        "/ADMIN/x",
        "/Admin/x",
        "/%61dmin/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "//admin/x",
        "/./admin/x",
    ] {
        let r = get_with(port, p, &[]);
        assert!(
            r.status == 401 || r.status == 400,
            "{p}: {} (reached the origin?)",
            r.status
        );
    }
    for p in [
        "/internal/a",
        "/x/../internal/a",
        "/INTERNAL/a",
        "/%69nternal/a",
    ] {
        let r = get_with(port, p, &[]);
        assert!(r.status == 403 || r.status == 400, "{p}: {}", r.status);
    }
    assert_eq!(origin.hits(), 0);
}

/// An unknown user name costs as much bcrypt work as a known one with a wrong password
/// (the dummy hash takes the accounts' cost), so timing does not tell which names
/// exist. Each request uses a new password (verdicts are cached).
#[test]
fn unknown_users_cost_as_much_as_known_ones() {
    let out = std::process::Command::new(bin())
        .args(["hash-password", "--cost", "13", "--plaintext", "right"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (_d, port) = serve(&format!(
        ":PORT {{\n\tbasic_auth {{\n\t\talice {h}\n\t}}\n\trespond ok\n}}\n"
    ));
    let time = |user: &str, n: usize| {
        let started = std::time::Instant::now();
        for i in 0..n {
            let auth = basic(user, &format!("wrong-{i}"));
            let r = request(port, "GET", "x", "/", &[("Authorization", &auth)], b"")
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.status, 401);
        }
        started.elapsed()
    };
    let known = time("alice", 3);
    let unknown = time("mallory", 3);
    assert!(
        unknown * 2 > known,
        "unknown users answered much faster: {unknown:?} vs {known:?}"
    );
}
