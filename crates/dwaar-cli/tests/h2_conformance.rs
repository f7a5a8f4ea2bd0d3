// HTTP/2 conformance: malformed requests and frame floods from a Python `h2` client
// (RFC 9113 §8.2, §8.1.1; the CONTINUATION and rapid-reset floods), against both HTTP/2
// front-ends: h2c (handed to Pingora) and HTTPS with ALPN `h2` (Dwaar's own). `.ci/run`
// puts the `h2` package in `target/pyenv`; `DWAAR_PYTHON` may name another interpreter.

mod common;
use common::*;

#[test]
fn malformed_requests_and_floods_are_refused() {
    let Some(py) = python_with("h2") else { return };
    let (port, tls_port) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf = format!(
        "{{\n\thttps_port {tls_port}\n\tstorage file_system {}\n\tservers :{port} {{\n\t\tprotocols h1 h2c\n\t}}\n}}\n\
         :{port} {{\n\trespond \"ok\"\n}}\n\
         https://localhost:{tls_port} {{\n\ttls internal\n\trespond \"ok\"\n}}\n",
        store.path().display()
    );
    let mut d = Dwaar::start(&bin(), &conf, &[port, tls_port]);
    let rss = || d.rss_kb();
    let before = rss();
    for (front, args) in [
        ("h2c", vec![port.to_string()]),
        ("h2 over TLS", vec![tls_port.to_string(), "tls".into()]),
    ] {
        check_front(&py, front, &args);
    }
    // The floods leave no queue behind: memory stays near where it was.
    let after = rss();
    eprintln!("RSS before the floods {before} kB, after {after} kB");
    assert!(after < before + 64 * 1024, "RSS {before} kB -> {after} kB");
    assert!(d.alive(), "dwaar exited: {}", d.log_text());
}

fn check_front(py: &str, front: &str, args: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/conformance.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{front}: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let get = |k: &str| v[k].as_str().unwrap_or("").to_string();
    assert_eq!(get("valid request"), "status:200", "{front}: {v}");
    for case in [
        "uppercase field name",
        "connection-specific field",
        "transfer-encoding field",
        "te other than trailers",
        "missing :path",
        "pseudo field after regular",
        "content-length mismatch",
    ] {
        let r = get(case);
        assert!(
            r.starts_with("reset:PROTOCOL_ERROR") || r.starts_with("goaway:PROTOCOL_ERROR"),
            "{front}: {case}: {r}"
        );
    }
    for case in ["continuation flood", "rapid reset"] {
        let r = get(case);
        assert!(
            r.starts_with("goaway:") || r.starts_with("closed"),
            "{front}: {case}: {r}"
        );
    }
    // SETTINGS and PING must each be answered; the `h2` crate keeps one pending answer
    // of each kind instead of a queue, so a flood is absorbed (or refused), never stored.
    for case in ["settings flood", "ping flood"] {
        let r = get(case);
        assert!(
            r.starts_with("goaway:") || r.starts_with("closed") || r.starts_with("timeout"),
            "{front}: {case}: {r}"
        );
    }
    assert_eq!(
        get("valid request after the floods"),
        "status:200",
        "{front}: {v}"
    );
}
