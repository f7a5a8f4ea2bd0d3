//! The config commands of the binary: validate, fmt, adapt, version and config lookup.

mod common;
use common::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn validate_reports_summary_or_diagnostics() {
    let d = tmp();
    std::fs::write(d.path().join("Dwaarfile"), ":8080 {\n\trespond ok\n}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, _) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 0);
    assert!(out.contains("valid (1 site, 1 route, 1 file)"), "{out}");

    std::fs::write(
        d.path().join("Dwaarfile"),
        ":8080 {\n\trevers_proxy localhost:9000\n\trespond ok 99\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("error: unknown directive 'revers_proxy'"),
        "{err}"
    );
    assert!(err.contains("--> Dwaarfile:2:2"), "{err}");
    assert!(err.contains("help: did you mean 'reverse_proxy'?"), "{err}");
    assert!(
        err.contains("--> Dwaarfile:3:13"),
        "both errors reported: {err}"
    );
    assert!(err.contains("2 errors in"), "{err}");
}

#[test]
fn config_lookup_order_and_missing_file() {
    let d = tmp();
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("tried: ./Dwaarfile"), "{err}");

    std::fs::write(d.path().join("custom.conf"), ":1 {\n\trespond a\n}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.path().join("Dwaarfile"), ":2 {\n\trespond b\n}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(bin())
        .args(["adapt"])
        .current_dir(d.path())
        .env("DWAAR_CONFIG", "custom.conf")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"port\":1"),
        "$DWAAR_CONFIG wins over ./Dwaarfile"
    );
    let (_, out, _) = dwaar_cmd(&["adapt"], d.path());
    assert!(out.contains("\"port\":2"), "{out}");
    let (code, _, err) = dwaar_cmd(&["validate", "--config", "nope.conf"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("nope.conf"), "{err}");
}

#[test]
fn fmt_check_overwrite_and_idempotence() {
    let d = tmp();
    let f = d.path().join("Dwaarfile");
    std::fs::write(
        &f,
        "# site\n:8080   {\n  respond   \"hi\"   # greet\n    handle /x {\nrespond x\n}\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, _) = dwaar_cmd(&["fmt", "--check"], d.path());
    assert_eq!(code, 1, "unformatted file fails --check");
    let (code, out, _) = dwaar_cmd(&["fmt"], d.path());
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "# site\n:8080 {\n\trespond \"hi\" # greet\n\thandle /x {\n\t\trespond x\n\t}\n}\n"
    );
    let (code, _, _) = dwaar_cmd(&["fmt", "--overwrite"], d.path());
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&f).unwrap_or_default(), out);
    let (code, _, _) = dwaar_cmd(&["fmt", "--check", "Dwaarfile"], d.path());
    assert_eq!(code, 0);
}

#[test]
fn adapt_prints_the_model() {
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        ":8080 {\n\treverse_proxy /api/* localhost:9000\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, _) = dwaar_cmd(&["adapt", "--pretty"], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        v["sites"][0]["routes"][0]["handlers"][0]["handler"],
        "reverse_proxy"
    );
    assert_eq!(
        v["sites"][0]["routes"][0]["handlers"][0]["upstreams"][0]["dial"],
        "localhost:9000"
    );
    assert_eq!(
        v["sites"][0]["routes"][0]["matchers"][0]["matchers"][0]["path"][0],
        "/api/*"
    );
}

#[test]
fn imports_resolve_relative_to_the_config_file() {
    let d = tmp();
    std::fs::create_dir_all(d.path().join("conf/sites")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.path().join("conf/Dwaarfile"), "import sites/*.conf\n")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        d.path().join("conf/sites/a.conf"),
        ":8080 {\n\trespond a\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        d.path().join("conf/sites/b.conf"),
        ":8081 {\n\trespond b\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Run from another directory (systemd runs with CWD=/).
    let (code, out, err) = dwaar_cmd(&["validate", "--config", "conf/Dwaarfile"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 sites"), "{out}");
    assert!(out.contains("3 files"), "{out}");
}

#[test]
fn version_prints() {
    let (code, out, _) = dwaar_cmd(&["version"], std::path::Path::new("."));
    assert_eq!(code, 0);
    assert!(out.starts_with("dwaar "), "{out}");
}

#[test]
fn empty_config_starts() {
    let port = free_port();
    // No sites: the process must start and stay up (automation adds sites later).
    let mut d = Dwaar::start(&bin(), "# nothing yet\n", &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(d.alive(), "{}", d.log_text());
    let _ = port;
}

#[test]
fn run_refuses_a_bad_config_with_diagnostics() {
    let d = tmp();
    std::fs::write(d.path().join("Dwaarfile"), ":8080 {\n\trespond ok 99\n}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["run"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("--> Dwaarfile:2:13"), "{err}");
}

#[test]
fn run_reports_a_port_in_use() {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        format!(":{port} {{\n\trespond ok\n}}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["run"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("address already in use"), "{err}");
}

/// A site whose response sits inside `depth` nested `route` blocks.
fn nested_routes(port: &str, depth: usize) -> String {
    let mut s = format!("{port} {{\n");
    for i in 1..=depth {
        s += &format!("{}route {{\n", "\t".repeat(i));
    }
    s += &format!("{}respond deep\n", "\t".repeat(depth + 1));
    for i in (1..=depth).rev() {
        s += &format!("{}}}\n", "\t".repeat(i));
    }
    s + "}\n"
}

/// Nesting is bounded: 64 levels of blocks (the site's included) are fine, a 65th is
/// refused at its `{`, whatever the depth (a config thousands deep once crashed
/// `validate`, `run` and a reload).
#[test]
fn deeply_nested_blocks_are_refused_at_their_line() {
    let d = tmp();
    let f = d.path().join("Dwaarfile");
    std::fs::write(&f, nested_routes(":8080", 63)).unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 0, "{out}{err}");
    for depth in [64, 750, 5000] {
        std::fs::write(&f, nested_routes(":8080", depth)).unwrap_or_else(|e| panic!("{e}"));
        for cmd in ["validate", "adapt"] {
            let (code, _, err) = dwaar_cmd(&[cmd], d.path());
            assert_eq!(code, 1, "{cmd} {depth}: {err}");
            assert!(err.contains("blocks nested more than 64 deep"), "{err}");
            assert!(err.contains("--> Dwaarfile:65:"), "{err}");
        }
    }
}

/// A file that is not text names the line and column of its first bad byte.
#[test]
fn binary_configs_name_the_first_bad_byte() {
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        b":8080 {\n\trespond ok\n}\n\x7fELF\x02\x01\x01\x00\x00\xff",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("not UTF-8 text: byte 0xff at line 4, column 10"),
        "{err}"
    );
}

/// A reload to a config nested too deep fails with the diagnostic, and the running
/// server keeps serving the old config (a reload once overflowed a worker's stack).
#[test]
fn a_reload_to_a_deeply_nested_config_keeps_the_old_one_serving() {
    let (d, port) = serve(&nested_routes(":PORT", 63));
    assert_eq!(ok_get(port, "x", "/").text(), "deep");
    d.write_config(&nested_routes(&format!(":{port}"), 3000));
    d.signal("USR1");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || d
            .log_text()
            .contains("blocks nested more than 64 deep")),
        "{}",
        d.log_text()
    );
    let r = ok_get(port, "x", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "deep"));
}

/// Sends one raw HTTP/1.1 exchange over a unix socket; the whole answer.
fn over_unix(path: &std::path::Path, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.write_all(request).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `bind unix/<path>|<mode>`: the site answers on a unix socket with the mode asked
/// for (a stale socket file replaced), plain and chunked requests (the lean path and
/// Pingora), PROXY headers from an allowed peer, across a reload and in worker
/// processes; the site's port stays its routing key.
#[test]
fn unix_socket_binds_serve_http() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let sock = dir.path().join("site.sock");
    // A socket file left behind by an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap_or_else(|e| panic!("{e}")));
    let site = free_port();
    let config = |tag: &str| {
        format!(
            "{{\n\tservers :{site} {{\n\t\tlistener_wrappers {{\n\t\t\tproxy_protocol {{\n\t\t\t\tallow 127.0.0.1/32\n\t\t\t}}\n\t\t}}\n\t}}\n}}\n:PORT {{\n\trespond ready\n}}\nhttp://app.test:{site} {{\n\tbind unix/{}|0660\n\trespond \"{tag} from {{remote_host}} on {{http.request.port}}\"\n}}\n",
            sock.display()
        )
    };
    for args in [&["--threads", "2"][..], &["--workers", "2"][..]] {
        let port = free_port();
        let d = Dwaar::start_with(
            &bin(),
            &config("a").replace("PORT", &port.to_string()),
            &[port],
            args,
        );
        let get = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
        // The TCP port can take connections before the unix socket is bound: wait for
        // the socket to answer (the stale file refuses). It carries its mode from the
        // moment it exists under its name.
        assert!(
            wait_until(std::time::Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "{args:?}: {}",
            d.log_text()
        );
        let mode = std::fs::metadata(&sock)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o660, "{args:?}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".dwaar-")),
            "{args:?}: {leftovers:?}"
        );
        let r = over_unix(&sock, get);
        assert!(
            r.ends_with(&format!("a from 127.0.0.1 on {site}")),
            "{args:?}: {r}"
        );
        let r = over_unix(
            &sock,
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{args:?}: chunked: {r}");
        let r = over_unix(
            &sock,
            b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 80\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        );
        assert!(
            r.ends_with(&format!("a from 192.0.2.7 on {site}")),
            "{args:?}: {r}"
        );
        d.write_config(&config("b").replace("PORT", &port.to_string()));
        d.signal("USR1");
        assert!(
            wait_until(std::time::Duration::from_secs(10), || over_unix(&sock, get)
                .contains("b from")),
            "{args:?}: {}",
            d.log_text()
        );
        drop(d);
    }
}

/// Unix socket binds that cannot work are refused at their line.
#[test]
fn bad_unix_binds_are_refused() {
    let d = tmp();
    for (bind, want) in [
        ("unix/", "needs a file path"),
        ("unix//run/x.sock|0999", "not an octal file mode"),
        ("unix//run/x.sock|0444", "owner unable to connect"),
    ] {
        std::fs::write(
            d.path().join("Dwaarfile"),
            format!("http://:8080 {{\n\tbind {bind}\n\trespond a\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], d.path());
        assert_eq!(code, 1, "{bind}");
        assert!(
            err.contains("Dwaarfile:2:7") && err.contains(want),
            "{bind}: {err}"
        );
    }
    std::fs::write(
        d.path().join("Dwaarfile"),
        "example.com {\n\tbind unix//run/x.sock\n\trespond a\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("serves plain HTTP only"), "{err}");
    // A file that is not a socket is never removed.
    let file = d.path().join("data");
    std::fs::write(&file, "keep me").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        d.path().join("Dwaarfile"),
        format!(
            "http://:{} {{\n\tbind unix/{}\n\trespond a\n}}\n",
            free_port(),
            file.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(d.path().join("Dwaarfile"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        "keep me"
    );
}

/// A `request_body` block without `max_size` limits nothing and is refused at its line
/// (it was accepted and did nothing).
#[test]
fn request_body_without_max_size_is_refused() {
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        ":8080 {\n\trequest_body {\n\t}\n\trespond x\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("needs a block with max_size") && err.contains("Dwaarfile:2:2"),
        "{err}"
    );
}

/// `servers 127.0.0.1:PORT` applies to that port (it never matched anything); a
/// listener without a port is refused at its line.
#[test]
fn servers_with_a_host_apply_to_their_port() {
    let (_d, port) = serve(
        "{\n\tservers 127.0.0.1:PORT {\n\t\tmax_header_size 1KiB\n\t}\n}\n:PORT {\n\trespond ok\n}\n",
    );
    let big = "x".repeat(4096);
    let r = request(port, "GET", "x", "/", &[("X-Big", big.as_str())], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 431);
    assert_eq!(ok_get(port, "x", "/").status, 200);
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        "{\n\tservers localhost {\n\t}\n}\n:8080 {\n\trespond x\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("Dwaarfile:2:10") && err.contains("with a port"),
        "{err}"
    );
}

/// `admin :PORT` (no host) listens on every interface, as in Caddy (it once failed at
/// start); `admin tcp/127.0.0.1:PORT` takes Caddy's network prefix.
#[test]
fn admin_takes_a_port_alone_and_a_tcp_prefix() {
    for form in [":{a}", "tcp/127.0.0.1:{a}"] {
        let admin = free_port();
        let (_d, _) = serve(&format!(
            "{{\n\tadmin {}\n}}\n:PORT {{\n\trespond ok\n}}\n",
            form.replace("{a}", &admin.to_string())
        ));
        assert!(
            wait_until(std::time::Duration::from_secs(10), || get(
                admin,
                &format!("localhost:{admin}"),
                "/config/"
            )
            .is_ok_and(|r| r.status == 200)),
            "{form}"
        );
    }
}

/// `bind tcp6/::` listens on IPv6 only, so an IPv4 socket can share its port; the IPv4
/// loopback is refused there while IPv6 is served.
#[test]
fn tcp6_wildcard_binds_take_ipv6_only() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let other = free_port();
    let (d, port) = serve(&format!(
        ":PORT {{\n\trespond ready\n}}\nhttp://six.test:{other} {{\n\tbind tcp6/::\n\trespond six\n}}\nhttp://four.test:{other} {{\n\tbind tcp4/localhost\n\trespond four\n}}\n"
    ));
    assert_eq!(ok_get(port, "x", "/").text(), "ready");
    let ask = |addr: &str, host: &str| -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let six = ask(&format!("[::1]:{other}"), "six.test").unwrap_or_else(|e| panic!("{e}"));
    assert!(six.ends_with("six"), "{six}");
    let four = ask(&format!("127.0.0.1:{other}"), "four.test").unwrap_or_else(|e| panic!("{e}"));
    assert!(four.ends_with("four"), "{four}");
    // Not a dual-stack socket: IPv4-mapped traffic does not reach it (only the IPv4
    // socket bound to 127.0.0.1 answers IPv4, and 127.0.0.2 has none).
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.2:{other}")).is_err(),
        "{}",
        d.log_text()
    );
}

/// `default_bind` gives sites without `bind` their addresses; `bind` keeps its own;
/// network prefixes Dwaar cannot bind are refused at their line.
#[test]
fn default_bind_applies_to_sites_without_bind() {
    let d = tmp();
    std::fs::write(
        d.path().join("Dwaarfile"),
        "{\n\tdefault_bind 127.0.0.1\n}\n:8080 {\n\trespond a\n}\n:8081 {\n\tbind ::1\n\trespond b\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = dwaar_cmd(&["adapt"], d.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["sites"][0]["bind"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(v["sites"][1]["bind"], serde_json::json!(["::1"]));
    std::fs::write(
        d.path().join("Dwaarfile"),
        "{\n\tdefault_bind tcp4/localhost\n}\n:8080 {\n\trespond a\n}\n:8081 {\n\tbind tcp6/[::] tcp6/localhost tcp/::1\n\trespond b\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = dwaar_cmd(&["adapt"], d.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["sites"][0]["bind"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        v["sites"][1]["bind"],
        serde_json::json!(["tcp6/::", "::1", "::1"])
    );
    std::fs::write(
        d.path().join("Dwaarfile"),
        "{\n\tdefault_bind tcp4/::1\n}\n:8080 {\n\tbind unix//run/x.sock udp/1.2.3.4\n\trespond a\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("Dwaarfile:2:15") && err.contains("'::1' is not an IPv4 address"),
        "{err}"
    );
    assert!(
        err.contains("Dwaarfile:5:24") && err.contains("'udp' is not a network"),
        "{err}"
    );
    assert!(
        !err.contains("Dwaarfile:5:7"),
        "a unix socket is fine: {err}"
    );
}
