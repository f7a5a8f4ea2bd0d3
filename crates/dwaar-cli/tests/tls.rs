//! HTTPS end to end: the local CA, manual certificates, SNI selection, redirects,
//! client certificates, protocol settings, reloads that swap certificates, and ACME
//! against a real Pebble (HTTP-01, TLS-ALPN-01, renewal under traffic).

use dwaar_testkit::client;
use dwaar_testkit::origin::TestCa;
use dwaar_testkit::pebble::{self, Pebble};
use dwaar_testkit::proxy::Dwaar;
use dwaar_testkit::tls::{self, TlsOpts};
use dwaar_testkit::{bind, dns_apis};
use dwaar_testkit::{free_port, wait_until};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dwaar"))
}

/// Global options every test uses: its own ports and storage, admin on the testkit's.
fn globals(http: u16, https: u16, storage: &Path, extra: &str) -> String {
    format!(
        "{{\n\thttp_port {http}\n\thttps_port {https}\n\tstorage file_system {}\n{extra}}}\n",
        storage.display()
    )
}

/// [`globals`] for a Dwaar whose ACME CA is `pebble`, with `extra` option lines.
fn pebble_globals(http: u16, https: u16, storage: &Path, pebble: &Pebble, extra: &str) -> String {
    let acme = format!(
        "\tacme_ca {}\n\tacme_ca_root {}\n{extra}",
        pebble.directory,
        pebble.https_ca.ca_pem.display()
    );
    globals(http, https, storage, &acme)
}

fn local_root(storage: &Path) -> Vec<u8> {
    std::fs::read(storage.join("pki/local/root.crt")).expect("local CA root")
}

#[test]
fn localhost_gets_a_local_certificate_over_h1_and_h2() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "")
        + "localhost {\n\trespond \"hi over {scheme} {http.request.proto}\"\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    let root = local_root(store.path());
    let admin: u16 = d.admin.rsplit(':').next().unwrap().parse().unwrap();
    let metrics = client::get(admin, &d.admin, "/metrics").unwrap().text();
    assert!(
        metrics.contains("dwaar_tls_managed_certificates 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dwaar_tls_certificate_expiry_timestamp_seconds{name=\"localhost\"}"),
        "{metrics}"
    );

    // A client that verifies against the local root, offering h2 and http/1.1.
    let mut opts = TlsOpts::trusting(&root);
    opts.alpn = vec!["h2", "http/1.1"];
    let h1 = tls::get(
        https,
        "localhost",
        "localhost",
        "/",
        &TlsOpts::trusting(&root),
    )
    .unwrap();
    assert_eq!(h1.status, 200);
    assert_eq!(h1.body, "hi over https HTTP/1.1");
    assert_eq!(h1.alpn.as_deref(), Some("http/1.1"));
    assert!(tls::cert_text(&h1.chain[0]).contains("DNS:localhost"));

    // HTTP/2 with a real client: curl.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(store.path().join("pki/local/root.crt"))
        .args(["--resolve", &format!("localhost:{https}:127.0.0.1")])
        .args(["-w", " %{http_version}"])
        .arg(format!("https://localhost:{https}/"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi over https HTTP/2.0 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CA key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.path().join("pki/local/root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Plain HTTP redirects to HTTPS, keeping path and query.
    let r = client::get(http, "localhost", "/a/b?c=d").unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{https}/a/b?c=d").as_str())
    );
    // An unknown name gets no certificate: the handshake fails.
    assert!(tls::get(
        https,
        "other.example",
        "other.example",
        "/",
        &TlsOpts::default()
    )
    .is_err());
}

#[test]
fn ip_sites_and_wildcard_localhost_names_get_certificates() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "")
        + "127.0.0.1 {\n\trespond \"ip\"\n}\n*.dev.localhost {\n\trespond \"{host}\"\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let root = local_root(store.path());
    // No SNI when connecting to an IP: the certificate is chosen by the local address.
    let mut opts = TlsOpts::trusting(&root);
    opts.no_sni = true;
    let r = tls::get(https, "127.0.0.1", "127.0.0.1", "/", &opts).unwrap();
    assert_eq!(r.body, "ip");
    // Each name under a wildcard localhost site gets its own certificate on demand.
    for n in ["a.dev.localhost", "b.dev.localhost"] {
        let r = tls::get(https, n, n, "/", &TlsOpts::trusting(&root)).unwrap();
        assert_eq!(r.body, n);
        assert!(tls::cert_text(&r.chain[0]).contains(&format!("DNS:{n}")));
    }
}

#[test]
fn manual_certificates_are_selected_by_sni_exact_before_wildcard() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (a_crt, a_key) = ca.issue("a", &["a.example.com"]);
    let (w_crt, w_key) = ca.issue("wild", &["*.example.net"]);
    let (x_crt, x_key) = ca.issue("x", &["x.example.net"]);
    let cfg = globals(http, https, store.path(), "")
        + &format!(
            "a.example.com {{\n\ttls {} {}\n\trespond a\n}}\n\
             *.example.net {{\n\ttls {} {}\n\trespond wild-{{host}}\n}}\n\
             x.example.net {{\n\ttls {} {}\n\trespond x\n}}\n",
            a_crt.display(),
            a_key.display(),
            w_crt.display(),
            w_key.display(),
            x_crt.display(),
            x_key.display()
        );
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let opts = TlsOpts::trusting(std::fs::read(&ca.ca_pem).unwrap());
    let a = tls::get(https, "a.example.com", "a.example.com", "/", &opts).unwrap();
    assert_eq!(a.body, "a");
    let y = tls::get(https, "y.example.net", "y.example.net", "/", &opts).unwrap();
    assert_eq!(y.body, "wild-y.example.net");
    assert!(tls::cert_text(&y.chain[0]).contains("DNS:*.example.net"));
    let x = tls::get(https, "x.example.net", "x.example.net", "/", &opts).unwrap();
    assert_eq!(x.body, "x");
    let text = tls::cert_text(&x.chain[0]);
    assert!(text.contains("DNS:x.example.net") && !text.contains("*.example.net"));
    // Manual certificates make no local CA.
    assert!(!store.path().join("pki/local/root.crt").exists());
}

#[test]
fn reload_swaps_certificates_and_a_bad_certificate_keeps_the_old_one() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (c1, k1) = ca.issue("one", &["site.example.com"]);
    let (c2, k2) = ca.issue("two", &["site.example.com"]);
    let cfg = |c: &Path, k: &Path| {
        globals(http, https, store.path(), "")
            + &format!(
                "site.example.com {{\n\ttls {} {}\n\trespond ok\n}}\n",
                c.display(),
                k.display()
            )
    };
    let d = Dwaar::start(bin(), &cfg(&c1, &k1), &[https]);
    let opts = TlsOpts::trusting(std::fs::read(&ca.ca_pem).unwrap());
    let get = || tls::get(https, "site.example.com", "site.example.com", "/", &opts).unwrap();
    let first = get().leaf_serial();
    d.write_config(&cfg(&c2, &k2));
    d.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(10), || get().leaf_serial() != first),
        "the new certificate was never served"
    );
    let second = get().leaf_serial();
    // A key that does not match its certificate: the reload fails, the old one serves.
    d.write_config(&cfg(&c1, &k2));
    d.signal("USR1");
    assert!(wait_until(Duration::from_secs(10), || d
        .log_text()
        .contains("does not belong to the certificate")));
    assert_eq!(get().leaf_serial(), second);
    assert_eq!(get().status, 200);
}

#[test]
fn client_certificates_are_required_and_verified() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new();
    let clients = TestCa::new();
    let strangers = TestCa::new();
    let (s_crt, s_key) = server_ca.issue("server", &["secure.example.com", "open.example.com"]);
    let (good_crt, good_key) = clients.issue("alice", &["alice.client"]);
    let (bad_crt, bad_key) = strangers.issue("mallory", &["mallory.client"]);
    let cfg = globals(http, https, store.path(), "")
        + &format!(
            "secure.example.com {{\n\ttls {s} {k} {{\n\t\tclient_auth {{\n\t\t\tmode require_and_verify\n\t\t\ttrusted_ca_cert_file {ca}\n\t\t}}\n\t}}\n\trespond secure\n}}\n\
             open.example.com {{\n\ttls {s} {k}\n\trespond open\n}}\n",
            s = s_crt.display(),
            k = s_key.display(),
            ca = clients.ca_pem.display()
        );
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let base = TlsOpts::trusting(std::fs::read(&server_ca.ca_pem).unwrap());
    let with = |c: &Path, k: &Path| {
        let mut o = base.clone();
        o.client_cert = Some((c.to_path_buf(), k.to_path_buf()));
        o
    };
    // No certificate, or one from an unknown CA: refused.
    assert!(tls::get(
        https,
        "secure.example.com",
        "secure.example.com",
        "/",
        &base
    )
    .is_err());
    assert!(tls::get(
        https,
        "secure.example.com",
        "secure.example.com",
        "/",
        &with(&bad_crt, &bad_key)
    )
    .is_err());
    let ok = tls::get(
        https,
        "secure.example.com",
        "secure.example.com",
        "/",
        &with(&good_crt, &good_key),
    )
    .unwrap();
    assert_eq!((ok.status, ok.body.as_str()), (200, "secure"));
    // The open site needs no certificate...
    let open = tls::get(https, "open.example.com", "open.example.com", "/", &base).unwrap();
    assert_eq!(open.body, "open");
    // ...but cannot be used to reach the secure one by changing Host.
    let sneaky = tls::get(https, "open.example.com", "secure.example.com", "/", &base).unwrap();
    assert_eq!(sneaky.status, 421);
}

#[test]
fn protocols_ciphers_and_alpn_follow_the_site_policy() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "")
        + "modern.localhost {\n\ttls internal {\n\t\tprotocols tls1.3\n\t}\n\trespond m\n}\n\
           legacy.localhost {\n\ttls internal {\n\t\tprotocols tls1.2 tls1.2\n\t\tciphers TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n\t\talpn http/1.1\n\t}\n\trespond l\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let root = local_root(store.path());
    let only = |v: u8| {
        let mut o = TlsOpts::trusting(&root);
        o.version = Some(v);
        o.alpn = vec!["h2", "http/1.1"];
        o
    };
    assert!(tls::get(
        https,
        "modern.localhost",
        "modern.localhost",
        "/",
        &only(12)
    )
    .is_err());
    let mut h1_only = only(13);
    h1_only.alpn = vec!["http/1.1"];
    let m = tls::get(https, "modern.localhost", "modern.localhost", "/", &h1_only).unwrap();
    assert_eq!(m.version, "Some(TLSv1_3)");
    assert!(tls::get(
        https,
        "legacy.localhost",
        "legacy.localhost",
        "/",
        &only(13)
    )
    .is_err());
    let l = tls::get(
        https,
        "legacy.localhost",
        "legacy.localhost",
        "/",
        &only(12),
    )
    .unwrap();
    assert_eq!(l.cipher, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256");
    // h2 was offered, but the site only speaks http/1.1.
    assert_eq!(l.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(l.body, "l");
}

#[test]
fn catch_all_https_site_without_a_certificate_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("Dwaarfile");
    std::fs::write(&f, "https:// {\n\trespond x\n}\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["validate", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no host name to get a certificate for"),
        "{err}"
    );
}

/// Pebble end to end: HTTP-01 for one name, TLS-ALPN-01 for another, both verified
/// against Pebble's root; renewal of short-lived certificates under continuous
/// handshakes with no failure; certificates on disk reused after a restart.
#[test]
fn acme_with_pebble_issues_renews_and_reuses() {
    if !pebble::available() {
        eprintln!("skipping: pebble is not installed");
        return;
    }
    let (http, https) = (free_port(), free_port());
    let lifetime = Duration::from_secs(30);
    let pebble = Pebble::start(http, https, Some(lifetime), &["blocked.example.test"]);
    let store = tempfile::tempdir().unwrap();
    let cfg = pebble_globals(http, https, store.path(), &pebble, "\temail ops@example.test\n")
        + "web.example.test {\n\trespond \"web over {scheme}\"\n}\n\
           alpn.example.test {\n\ttls {\n\t\tissuer acme {\n\t\t\tdisable_http_challenge\n\t\t}\n\t}\n\trespond alpn\n}\n\
           local.localhost {\n\trespond local\n}\n"
        + &format!(
            "blocked.example.test {{\n\ttls {{\n\t\tissuer acme {{\n\t\t\tdir {d}\n\t\t\ttest_dir {d}\n\t\t}}\n\t}}\n\trespond never\n}}\n",
            d = pebble.directory
        );
    let mut d = Dwaar::start(bin(), &cfg, &[http, https]);
    let root = pebble.issuing_root();
    let opts = TlsOpts::trusting(root.as_bytes());
    let fetch = |name: &str| tls::get(https, name, name, "/", &opts);
    let issued = wait_until(Duration::from_secs(60), || {
        fetch("web.example.test").is_ok() && fetch("alpn.example.test").is_ok()
    });
    assert!(
        issued,
        "no certificates; dwaar log:\n{}\npebble log:\n{}",
        d.log_text(),
        pebble.log()
    );
    assert_eq!(fetch("web.example.test").unwrap().body, "web over https");
    assert_eq!(fetch("alpn.example.test").unwrap().body, "alpn");
    let log = d.log_text();
    assert!(
        log.contains("challenge=Some(Http01)") && log.contains("challenge=Some(TlsAlpn01)"),
        "{log}"
    );
    // The refused name is reported with the CA's problem document; the rest serve.
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log_text()
            .contains("rejectedIdentifier")),
        "{}",
        d.log_text()
    );
    let local = tls::get(
        https,
        "local.localhost",
        "local.localhost",
        "/",
        &TlsOpts::trusting(local_root(store.path())),
    )
    .unwrap();
    assert_eq!(local.body, "local");
    // Stored with private keys 0600.
    let key = walk(store.path())
        .into_iter()
        .find(|p| p.ends_with("web.example.test.key"))
        .expect("stored key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Renewal: handshakes never stop while the 30 s certificates are replaced.
    let first = fetch("web.example.test").unwrap().leaf_serial();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed, opts) = (stop.clone(), ok.clone(), failed.clone(), opts.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match tls::get(https, "web.example.test", "web.example.test", "/", &opts) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        })
    };
    let start = Instant::now();
    let renewed = wait_until(Duration::from_secs(45), || {
        fetch("web.example.test").is_ok_and(|r| r.leaf_serial() != first)
    });
    stop.store(true, Ordering::Relaxed);
    let errors = traffic.join().unwrap();
    assert!(
        renewed,
        "not renewed after {:?}:\n{}",
        start.elapsed(),
        d.log_text()
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed handshakes: {errors:?}"
    );

    // After the failure, the next attempt rehearses on the staging directory first.
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log_text()
            .contains("staging rehearsal failed")),
        "{}",
        d.log_text()
    );

    // A restart reuses what is on disk: the stored certificate is served and no new
    // order is placed. With 30-second certificates (renewed at 20 s of age) the stored one
    // must be fresh when the restart reads it, however long the steps above took on a
    // loaded machine: wait for this name's next renewal, then restart at once.
    let obtained = |log: &str| {
        log.matches("certificate obtained name=\"alpn.example.test\"")
            .count()
    };
    let before = obtained(&d.log_text());
    assert!(
        wait_until(Duration::from_secs(30), || obtained(&d.log_text()) > before),
        "no renewal of alpn.example.test: {}",
        d.log_text()
    );
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(10));
    let stored = walk(store.path())
        .into_iter()
        .find(|p| p.ends_with("alpn.example.test.crt"))
        .expect("stored certificate");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&stored)
        .output()
        .unwrap();
    let stored_serial = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let d2 = Dwaar::start(bin(), &cfg, &[http, https]);
    let after = fetch("alpn.example.test").unwrap();
    assert_eq!(
        after.leaf_serial().trim_start_matches("00"),
        stored_serial.trim_start_matches("00")
    );
    assert!(
        !d2.log_text()
            .contains("obtaining a certificate name=\"alpn.example.test\""),
        "{}",
        d2.log_text()
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// With worker processes the supervisor talks to the CA; workers answer the
/// challenges and serve the certificates through the shared storage.
#[test]
fn acme_with_worker_processes() {
    if !pebble::available() {
        eprintln!("skipping: pebble is not installed");
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None, &[]);
    let store = tempfile::tempdir().unwrap();
    let cfg = pebble_globals(http, https, store.path(), &pebble, "")
        + "w1.example.test {\n\trespond w1\n}\n\
           w2.example.test {\n\ttls {\n\t\tissuer acme {\n\t\t\tdisable_http_challenge\n\t\t}\n\t}\n\trespond w2\n}\n\
           local.localhost {\n\trespond local\n}\n";
    let d = Dwaar::start_with(
        bin(),
        &cfg,
        &[http, https],
        &["--workers", "2", "--threads", "1"],
    );
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    for name in ["w1.example.test", "w2.example.test"] {
        // Every worker serves it (several connections land on both).
        let served = wait_until(Duration::from_secs(60), || {
            (0..6).all(|_| tls::get(https, name, name, "/", &opts).is_ok_and(|r| r.status == 200))
        });
        assert!(
            served,
            "{name} not served; log:\n{}\n{}",
            d.log_text(),
            pebble.log()
        );
    }
    let root = local_root(store.path());
    for _ in 0..6 {
        let r = tls::get(
            https,
            "local.localhost",
            "local.localhost",
            "/",
            &TlsOpts::trusting(&root),
        )
        .unwrap();
        assert_eq!(r.body, "local");
    }
}

/// `dwaar trust` puts the local root into the system store, so curl trusts a
/// `tls internal` site without `--cacert`; `dwaar untrust` takes it out again.
#[test]
fn trust_and_untrust_the_local_ca() {
    let root_user = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let tool = std::path::Path::new("/usr/sbin/update-ca-certificates").exists();
    if !(root_user && tool) {
        assert!(
            std::env::var("DWAAR_REQUIRE_E2E").map_or(true, |v| v != "1"),
            "the trust test needs root and ca-certificates"
        );
        eprintln!("skipping: needs root and update-ca-certificates");
        return;
    }
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "") + "localhost {\n\trespond trusted\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let curl = || {
        std::process::Command::new("curl")
            .args(["-sS", "--resolve", &format!("localhost:{https}:127.0.0.1")])
            .arg(format!("https://localhost:{https}/"))
            .output()
            .expect("curl")
    };
    assert!(!curl().status.success(), "trusted before dwaar trust?");
    let t = std::process::Command::new(bin())
        .args(["trust", "--storage"])
        .arg(store.path())
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let trusted = curl();
    let untrust = std::process::Command::new(bin())
        .arg("untrust")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&trusted.stdout),
        "trusted",
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(
        untrust.status.success(),
        "{}",
        String::from_utf8_lossy(&untrust.stderr)
    );
    assert!(
        !curl().status.success(),
        "still trusted after dwaar untrust"
    );
}

#[test]
fn auto_https_modes() {
    let store = tempfile::tempdir().unwrap();
    // off: a host name without a scheme is served over plain HTTP; no CA is made.
    let (http, https) = (free_port(), free_port());
    let cfg = globals(http, https, store.path(), "\tauto_https off\n")
        + "example.com {\n\trespond plain\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[http]);
    assert_eq!(
        client::get(http, "example.com", "/").unwrap().text(),
        "plain"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", https)).is_err());
    assert!(!store.path().join("pki").exists());
    drop(d);

    // disable_redirects: HTTPS as usual, nothing on the HTTP port.
    let (http, https) = (free_port(), free_port());
    let cfg = globals(
        http,
        https,
        store.path(),
        "\tauto_https disable_redirects\n",
    ) + "localhost {\n\trespond secure\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[https]);
    let root = local_root(store.path());
    let r = tls::get(
        https,
        "localhost",
        "localhost",
        "/",
        &TlsOpts::trusting(&root),
    )
    .unwrap();
    assert_eq!(r.body, "secure");
    assert!(std::net::TcpStream::connect(("127.0.0.1", http)).is_err());
    drop(d);

    // disable_certs: redirects stay, but only sites with their own files get a certificate.
    let (http, https) = (free_port(), free_port());
    let cfg = globals(http, https, store.path(), "\tauto_https disable_certs\n")
        + "auto.localhost {\n\trespond none\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[http, https]);
    assert!(tls::get(
        https,
        "auto.localhost",
        "auto.localhost",
        "/",
        &TlsOpts::default()
    )
    .is_err());
    assert_eq!(
        client::get(http, "auto.localhost", "/").unwrap().status,
        308
    );
}

/// OCSP stapling against a real responder (`openssl ocsp`): a good certificate gets
/// its response stapled, a revoked one does not, and a responder on a loopback
/// address is not contacted unless the test-only override allows it.
#[test]
fn ocsp_responses_are_stapled() {
    let (http, https, responder) = (free_port(), free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let aia = format!("authorityInfoAccess=OCSP;URI:http://127.0.0.1:{responder}");
    let (good, good_key) = ca.issue_with("good", &["good.example.com"], &aia);
    let (bad, bad_key) = ca.issue_with("revoked", &["revoked.example.com"], &aia);
    let ca_pem = std::fs::read_to_string(&ca.ca_pem).unwrap();
    let serial = |p: &Path| {
        let o = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    let dir = ca.dir.path();
    std::fs::write(
        dir.join("index.txt"),
        format!(
            "V\t301231235959Z\t\t{}\tunknown\t/CN=good.example.com\nR\t301231235959Z\t250101000000Z\t{}\tunknown\t/CN=revoked.example.com\n",
            serial(&good),
            serial(&bad)
        ),
    )
    .unwrap();
    // Chains with the issuer, as OCSP requests need it.
    for (leaf, out) in [(&good, "good-chain.pem"), (&bad, "revoked-chain.pem")] {
        let text = std::fs::read_to_string(leaf).unwrap() + &ca_pem;
        std::fs::write(dir.join(out), text).unwrap();
    }
    let ocsp = std::process::Command::new("openssl")
        .args(["ocsp", "-index", "index.txt", "-port"])
        .arg(responder.to_string())
        .args([
            "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem", "-ndays", "1",
        ])
        .current_dir(dir)
        .stdout(std::fs::File::create(dir.join("ocsp.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("ocsp.log")).unwrap())
        .spawn()
        .unwrap();
    // Killed however the test ends (a failed assertion must not leave it running).
    let _ocsp = KillOnDrop(ocsp);
    // Not a TCP probe: an empty connection wedges `openssl ocsp`.
    assert!(wait_until(Duration::from_secs(10), || {
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        (read("ocsp.out") + &read("ocsp.log")).contains("waiting for OCSP client connections")
    }));
    let cfg = globals(http, https, store.path(), "")
        + &format!(
            "good.example.com {{\n\ttls {} {}\n\trespond good\n}}\nrevoked.example.com {{\n\ttls {} {}\n\trespond revoked\n}}\n",
            dir.join("good-chain.pem").display(),
            good_key.display(),
            dir.join("revoked-chain.pem").display(),
            bad_key.display()
        );
    let status = |name: &str| {
        let mut c = std::process::Command::new("openssl")
            .args(["s_client", "-status", "-connect"])
            .arg(format!("127.0.0.1:{https}"))
            .args(["-servername", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        drop(c.stdin.take());
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
    };

    // Without the override, the loopback responder is off limits.
    let d = Dwaar::start(bin(), &cfg, &[https]);
    assert!(wait_until(Duration::from_secs(10), || d
        .log_text()
        .contains("resolves only to internal addresses")));
    assert!(status("good.example.com").contains("OCSP response: no response sent"));
    drop(d);

    let d = Dwaar::start_env(
        bin(),
        &cfg,
        &[https],
        &["--threads", "1"],
        &[("DWAAR_OCSP_ALLOW_PRIVATE", "1")],
    );
    assert!(
        wait_until(Duration::from_secs(15), || status("good.example.com")
            .contains("Cert Status: good")),
        "no staple; log:\n{}",
        d.log_text()
    );
    assert!(status("good.example.com").contains("OCSP Response Status: successful"));
    assert!(wait_until(Duration::from_secs(10), || d
        .log_text()
        .contains("the certificate is revoked")));
    assert!(status("revoked.example.com").contains("OCSP response: no response sent"));
    drop(d);

    // `ocsp_stapling off`: the responder is never asked, nothing is stapled.
    let off = cfg.replacen("{\n", "{\n\tocsp_stapling off\n", 1);
    let d = Dwaar::start_env(
        bin(),
        &off,
        &[https],
        &["--threads", "1"],
        &[("DWAAR_OCSP_ALLOW_PRIVATE", "1")],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(status("good.example.com").contains("OCSP response: no response sent"));
    assert!(!d.log_text().contains("OCSP"), "{}", d.log_text());
    drop(d);

    // `ocsp_interval 1s`: the staple is fetched again well before it needs to be.
    let often = cfg.replacen("{\n", "{\n\tocsp_interval 1s\n", 1);
    let d = Dwaar::start_env(
        bin(),
        &often,
        &[https],
        &["--threads", "1"],
        &[("DWAAR_OCSP_ALLOW_PRIVATE", "1")],
    );
    let fetches = || d.log_text().matches("stapled an OCSP response").count();
    assert!(
        wait_until(Duration::from_secs(20), || fetches() >= 3),
        "{}",
        d.log_text()
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pingora serves HTTPS connections and times each read, not the whole head; Dwaar's
/// TLS wrapper bounds the first request head by `read_header`.
#[test]
fn slowloris_over_tls_is_cut_off_by_the_header_timeout() {
    use std::io::{Read, Write};
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(
        http,
        https,
        store.path(),
        "\tservers {\n\t\ttimeouts {\n\t\t\tread_header 1s\n\t\t}\n\t}\n",
    ) + "localhost {\n\trespond hi\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let opts = TlsOpts::trusting(local_root(store.path()));
    // A normal request is unaffected.
    assert_eq!(
        tls::get(https, "localhost", "localhost", "/", &opts)
            .unwrap()
            .body,
        "hi"
    );
    let mut s = tls::connect(https, "localhost", &opts).unwrap();
    let start = Instant::now();
    let mut cut = false;
    for b in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        if start.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    if !cut {
        let mut buf = [0u8; 64];
        cut = matches!(s.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(
        cut,
        "the trickling client was kept for {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn servers_protocols_for_the_https_port_decide_alpn() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(
        http,
        https,
        store.path(),
        &format!("\tservers :{https} {{\n\t\tprotocols h1\n\t}}\n"),
    ) + "localhost {\n\trespond hi\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let mut opts = TlsOpts::trusting(local_root(store.path()));
    opts.alpn = vec!["h2", "http/1.1"];
    let r = tls::get(https, "localhost", "localhost", "/", &opts).unwrap();
    assert_eq!(r.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(r.body, "hi");
}

/// Session tickets: keys live in storage, so a client resumes its session whichever
/// worker process takes the connection, and after the server restarts; TLS 1.3 and 1.2.
#[test]
fn sessions_resume_across_worker_processes_and_restarts() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "") + "localhost {\n\trespond hi\n}\n";
    let mut workers =
        Dwaar::start_with(bin(), &cfg, &[https], &["--workers", "2", "--threads", "1"]);
    let root = local_root(store.path());
    let mut clients = Vec::new();
    for version in [13, 12] {
        let mut opts = TlsOpts::trusting(&root);
        opts.version = Some(version);
        let client = tls::Client::new(&opts).unwrap();
        let first = tls::get_with(&client, https, "localhost", "localhost", "/").unwrap();
        assert_eq!(first.status, 200);
        assert!(
            !first.resumed,
            "TLS 1.{}: a first visit is a full handshake",
            version % 10
        );
        // Ten connections: the kernel spreads them over both workers.
        for i in 0..10 {
            let r = tls::get_with(&client, https, "localhost", "localhost", "/").unwrap();
            assert_eq!(r.status, 200);
            assert!(
                r.resumed,
                "TLS 1.{} connection {i} was not resumed; log:\n{}",
                version % 10,
                workers.log_text()
            );
        }
        clients.push(client);
    }
    use std::os::unix::fs::PermissionsExt;
    let keys = store.path().join("tickets/keys.json");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o600
    );
    workers.signal("TERM");
    assert!(workers.wait_exit(Duration::from_secs(20)).is_some());
    drop(workers);

    // A fresh single-process server on the same storage accepts the old tickets.
    let d = Dwaar::start(bin(), &cfg, &[https]);
    for client in &clients {
        let r = tls::get_with(client, https, "localhost", "localhost", "/").unwrap();
        assert!(
            r.resumed,
            "not resumed after a restart; log:\n{}",
            d.log_text()
        );
    }
    let admin: u16 = d.admin.rsplit(':').next().unwrap().parse().unwrap();
    let metrics = client::get(admin, &d.admin, "/metrics").unwrap().text();
    assert!(
        metrics.contains("dwaar_tls_handshakes_total{kind=\"resumed\"} 2"),
        "{metrics}"
    );
}

/// The server's cipher order decides, not the client's (rustls clients list AES-256-GCM
/// first): AES-128-GCM by default, the `ciphers` order when a site gives one.
#[test]
fn the_servers_cipher_order_decides() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "")
        + "localhost {\n\trespond hi\n}\n\
           a.localhost {\n\ttls {\n\t\tciphers TLS_AES_256_GCM_SHA384 TLS_AES_128_GCM_SHA256\n\t}\n\trespond a\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[https]);
    let mut opts = TlsOpts::trusting(local_root(store.path()));
    opts.version = Some(13);
    let r = tls::get(https, "localhost", "localhost", "/", &opts).unwrap();
    assert_eq!(r.cipher, "TLS13_AES_128_GCM_SHA256");
    let r = tls::get(https, "a.localhost", "a.localhost", "/", &opts).unwrap();
    assert_eq!(r.cipher, "TLS13_AES_256_GCM_SHA384");
}

#[test]
fn acme_external_account_binding() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    // Pebble refuses new accounts without a binding to this key.
    let mac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with_eab(http, https, "kid-dwaar", mac_key);
    let store = tempfile::tempdir().unwrap();
    let extra = format!(
        "\tkey_type rsa2048\n\tacme_eab {{\n\t\tkey_id kid-dwaar\n\t\tmac_key {mac_key}\n\t}}\n"
    );
    // One site takes the global binding, another names a wrong key of its own: Pebble
    // refuses that account, so only the first gets a certificate.
    let cfg = pebble_globals(http, https, store.path(), &pebble, &extra)
        + "bound.example.test {\n\trespond bound\n}\n"
        + "unbound.example.test {\n\ttls {\n\t\teab kid-other AAAAAAAAAAAAAAAAAAAAAA\n\t}\n\trespond unbound\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    let issued = wait_until(Duration::from_secs(60), || {
        tls::get(
            https,
            "bound.example.test",
            "bound.example.test",
            "/",
            &opts,
        )
        .is_ok()
    });
    assert!(
        issued,
        "no certificate; dwaar log:\n{}\npebble log:\n{}",
        d.log_text(),
        pebble.log()
    );
    assert!(tls::get(
        https,
        "unbound.example.test",
        "unbound.example.test",
        "/",
        &opts
    )
    .is_err());
    // The CA refused the account of the unknown key.
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log_text()
            .contains("cannot create an ACME account")),
        "{}",
        d.log_text()
    );
    let accounts: Vec<String> = std::fs::read_dir(store.path().join("acme"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ca| std::fs::read_dir(ca.path()).into_iter().flatten().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        accounts.iter().any(|a| a.contains("-eab-kid-dwaar")),
        "{accounts:?}"
    );
}

/// The DNS names of the certificate a handshake to `port` gets (`sni`: None sends none).
fn served_names(port: u16, sni: Option<&str>) -> String {
    let server_name = match sni {
        Some(n) => format!("-servername {n}"),
        None => "-noservername".to_string(),
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} {server_name} </dev/null 2>/dev/null \
             | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn default_sni_and_fallback_sni_choose_certificates() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let sites = "a.example.test {\n\ttls internal\n\trespond a\n}\n\
                 b.example.test {\n\ttls internal\n\trespond b\n}\n";
    let plain = globals(http, https, store.path(), "") + sites;
    let d = Dwaar::start(bin(), &plain, &[http, https]);
    // Without the options: no SNI gets the local address's certificate, an unknown
    // name none.
    assert!(wait_until(Duration::from_secs(10), || served_names(
        https,
        Some("a.example.test")
    )
    .contains("DNS:a.example.test")));
    assert!(!served_names(https, None).contains("example.test"));
    assert!(served_names(https, Some("unknown.test")).is_empty());
    drop(d);
    let cfg = globals(
        http,
        https,
        store.path(),
        "\tdefault_sni a.example.test\n\tfallback_sni b.example.test\n",
    ) + sites;
    let _d = Dwaar::start(bin(), &cfg, &[http, https]);
    assert!(wait_until(Duration::from_secs(10), || served_names(
        https, None
    )
    .contains("DNS:a.example.test")));
    assert!(served_names(https, Some("unknown.test")).contains("DNS:b.example.test"));
    assert!(served_names(https, Some("a.example.test")).contains("DNS:a.example.test"));
}

/// What `openssl s_client` says of the server's public key for `sni`.
fn public_key(port: u16, sni: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null \
             | grep -E 'Server public key|Peer signature type'"
        ))
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn key_type_chooses_certificate_keys() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "\tkey_type p384\n")
        + "a.example.test {\n\ttls internal\n\trespond a\n}\n\
           b.example.test {\n\ttls internal {\n\t\tkey_type ed25519\n\t}\n\trespond b\n}\n\
           c.example.test {\n\ttls internal {\n\t\tkey_type rsa4096\n\t}\n\trespond c\n}\n";
    let _d = Dwaar::start(bin(), &cfg, &[http, https]);
    for (name, size) in [
        ("a.example.test", "384 bit"),
        ("b.example.test", "ed25519"),
        ("c.example.test", "4096 bit"),
    ] {
        assert!(
            wait_until(Duration::from_secs(20), || public_key(https, name)
                .contains(size)),
            "{name}: {}",
            public_key(https, name)
        );
    }
}

#[test]
fn tls_load_serves_certificates_from_a_directory() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let bundles = tempfile::tempdir().unwrap();
    for (label, names) in [
        ("one", &["l1.example.test"][..]),
        ("two", &["*.l2.example.test"][..]),
    ] {
        let (crt, key) = ca.issue(label, names);
        let pem = std::fs::read_to_string(crt).unwrap() + &std::fs::read_to_string(key).unwrap();
        std::fs::write(bundles.path().join(format!("{label}.pem")), pem).unwrap();
    }
    let site = |hosts: &str| {
        format!(
            "{hosts} {{\n\ttls {{\n\t\tload {}\n\t}}\n\trespond loaded\n}}\n",
            bundles.path().display()
        )
    };
    let cfg = globals(http, https, store.path(), "") + &site("l1.example.test, x.l2.example.test");
    let _d = Dwaar::start(bin(), &cfg, &[http, https]);
    let opts = TlsOpts::trusting(std::fs::read(&ca.ca_pem).unwrap());
    for name in ["l1.example.test", "x.l2.example.test"] {
        let r = tls::get(https, name, name, "/", &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.body, "loaded");
    }
    assert!(served_names(https, Some("x.l2.example.test")).contains("DNS:*.l2.example.test"));
    // A host no loaded certificate covers: the config is refused.
    let bad = globals(free_port(), free_port(), store.path(), "") + &site("other.example.test");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dwaarfile"), bad).unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(dir.path().join("Dwaarfile"))
        .env("DWAAR_ADMIN", "off")
        .output()
        .unwrap_or_else(|e| panic!("dwaar: {e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no certificate there covers other.example.test"),
        "{err}"
    );
}

#[test]
fn renew_interval_spaces_renewal_checks() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    // 30-second certificates are due for renewal after 20 seconds; checked once an
    // hour, this one is not renewed during the test.
    let pebble = Pebble::start(http, https, Some(Duration::from_secs(30)), &[]);
    let store = tempfile::tempdir().unwrap();
    let cfg = pebble_globals(http, https, store.path(), &pebble, "\trenew_interval 1h\n")
        + "r.example.test {\n\trespond r\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    let obtained = || {
        d.metric("dwaar_tls_certificates_obtained_total")
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || obtained() == 1),
        "{}\n{}",
        d.log_text(),
        pebble.log()
    );
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(obtained(), 1, "{}", d.log_text());
}

/// A catch-all site with on-demand certificates from `pebble`, allowed by the `ask`
/// endpoint on port `ask`.
fn on_demand_config(http: u16, https: u16, storage: &Path, pebble: &Pebble, ask: u16) -> String {
    let extra = format!("\ton_demand_tls {{\n\t\task http://127.0.0.1:{ask}/check\n\t}}\n");
    pebble_globals(http, https, storage, pebble, &extra)
        + "https:// {\n\ttls {\n\t\ton_demand\n\t}\n\trespond \"on demand {host}\"\n}\n"
}

/// An `ask` endpoint: answers 200 for `domain=` values in `allowed`, 403 otherwise, and
/// counts the questions.
fn ask_server(allowed: &'static [&'static str]) -> (u16, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let svc = dwaar_testkit::stub::StandIn::start(Arc::new(move |r| {
        count.fetch_add(1, Ordering::SeqCst);
        let domain = r.query("domain").unwrap_or_default();
        match r.path() == "/check" && allowed.contains(&domain.as_str()) {
            true => (200, String::new()),
            false => (403, String::new()),
        }
    }));
    (svc.port, asked)
}

#[test]
fn on_demand_certificates_from_acme_when_the_ask_endpoint_agrees() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None, &[]);
    let (ask, asked) = ask_server(&["yes.example.test", "many.example.test"]);
    let store = tempfile::tempdir().unwrap();
    let cfg = on_demand_config(http, https, store.path(), &pebble, ask);
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    // Nothing is obtained at start.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    let r = tls::get(https, "yes.example.test", "yes.example.test", "/", &opts)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", d.log_text(), pebble.log()));
    assert_eq!(r.body, "on demand yes.example.test");
    // A name the endpoint refuses gets no certificate (the handshake fails).
    assert!(tls::get(https, "no.example.test", "no.example.test", "/", &opts).is_err());
    // Eight handshakes at once for a new name: one issuance, every one served.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let opts = opts.clone();
            std::thread::spawn(move || {
                tls::get(https, "many.example.test", "many.example.test", "/", &opts)
                    .map(|r| r.body)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), "on demand many.example.test");
    }
    let log = d.log_text();
    assert_eq!(
        log.matches("certificate obtained on demand").count(),
        2,
        "{log}"
    );
    // The certificate stays: another connection asks nobody.
    let before = asked.load(Ordering::SeqCst);
    tls::get(https, "yes.example.test", "yes.example.test", "/", &opts).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), before);
}

/// With worker processes, the worker that takes the handshake obtains the certificate;
/// every worker serves it.
#[test]
fn on_demand_certificates_with_worker_processes() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None, &[]);
    let (ask, _) = ask_server(&["w.example.test"]);
    let store = tempfile::tempdir().unwrap();
    let cfg = on_demand_config(http, https, store.path(), &pebble, ask);
    let d = Dwaar::start_with(
        bin(),
        &cfg,
        &[http, https],
        &["--workers", "2", "--threads", "1"],
    );
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    let first = tls::get(https, "w.example.test", "w.example.test", "/", &opts);
    assert!(
        first.is_ok(),
        "{first:?}\n{}\n{}",
        d.log_text(),
        pebble.log()
    );
    // Connections land on both workers; each serves the name (loading the stored
    // certificate or obtaining it under the storage lock, which finds it stored).
    for _ in 0..8 {
        let r = tls::get(https, "w.example.test", "w.example.test", "/", &opts).unwrap();
        assert_eq!(r.body, "on demand w.example.test");
    }
}

/// Records every value `name`'s TXT record takes at `bind` until the flag is set.
fn watch_txt(
    bind: &Arc<bind::Bind>,
    name: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let bind = Arc::downgrade(bind);
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            let Some(bind) = bind.upgrade() else { break };
            for v in bind.dig(name, "TXT") {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    });
    (stop, h)
}

/// Waits until `host` is served over HTTPS with a certificate from `pebble`, with
/// `body` in the answer.
fn wait_for_issued(https: u16, host: &str, body: &str, pebble: &Pebble, d: &Dwaar) {
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    let issued = wait_until(Duration::from_secs(90), || {
        tls::get(https, host, host, "/", &opts).is_ok_and(|r| r.body.contains(body))
    });
    assert!(
        issued,
        "{host} has no certificate; dwaar log:\n{}\npebble log:\n{}",
        d.log_text(),
        pebble.log()
    );
}

fn dns01_ready() -> bool {
    pebble::available() && bind::available()
}

#[test]
fn dns01_rfc2136_wildcard_through_bind() {
    if !dns01_ready() {
        return;
    }
    let bind = Arc::new(bind::Bind::start(&["example.test"]));
    let pebble = Pebble::start_with_dns(&bind.addr());
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let (stop, watcher) = watch_txt(&bind, "_acme-challenge.example.test");
    // The wildcard and the apex validate through the same record name, at once.
    let extra = format!(
        "\tacme_dns rfc2136 {{\n\t\tserver {}\n\t\tkey_name {}\n\t\tkey_alg hmac-sha256\n\t\tkey {}\n\t}}\n",
        bind.addr(),
        bind::KEY_NAME,
        bind::KEY_SECRET
    );
    let cfg = pebble_globals(http, https, store.path(), &pebble, &extra)
        + &format!(
            "*.example.test, example.test {{\n\ttls {{\n\t\tresolvers {}\n\t}}\n\trespond \"hi {{host}}\"\n}}\n",
            bind.addr()
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    wait_for_issued(https, "a.example.test", "hi a.example.test", &pebble, &d);
    wait_for_issued(https, "example.test", "hi example.test", &pebble, &d);
    // One wildcard certificate serves every name under the zone.
    let names = served_names(https, Some("zz.example.test"));
    assert!(names.contains("DNS:*.example.test"), "{names}");
    // The records existed during validation and are gone after it.
    assert!(
        wait_until(Duration::from_secs(15), || bind
            .dig("_acme-challenge.example.test", "TXT")
            .is_empty()),
        "left behind: {:?}",
        bind.dig("_acme-challenge.example.test", "TXT")
    );
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    assert!(
        seen.len() >= 2,
        "TXT values seen during validation: {seen:?}"
    );
    assert!(seen.iter().all(|v| v.len() == 43), "{seen:?}");
}

#[test]
fn dns01_cloudflare_stand_in_with_prefer_wildcard() {
    if !dns01_ready() {
        return;
    }
    let bind = Arc::new(bind::Bind::start(&["cf.test"]));
    // Test double of Cloudflare's API (see dwaar_testkit::dns_apis).
    let api = dns_apis::cloudflare(&bind, &["cf.test"], "cf-token-123");
    let pebble = Pebble::start_with_dns(&bind.addr());
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let extra = "\tauto_https prefer_wildcard\n";
    let cfg = pebble_globals(http, https, store.path(), &pebble, extra)
        + &format!(
            "*.cf.test, www.cf.test {{\n\ttls {{\n\t\tdns cloudflare {{\n\t\t\tapi_token {{env.DWAAR_TEST_CF_TOKEN}}\n\t\t\tendpoint {}/client/v4\n\t\t}}\n\t\tresolvers {}\n\t}}\n\trespond \"cf {{host}}\"\n}}\n",
            api.url(),
            bind.addr()
        );
    let d = Dwaar::start_env(
        bin(),
        &cfg,
        &[http, https],
        &[],
        &[("DWAAR_TEST_CF_TOKEN", "cf-token-123")],
    );
    wait_for_issued(https, "www.cf.test", "cf www.cf.test", &pebble, &d);
    // www is covered by the wildcard, so it has no certificate of its own.
    let names = served_names(https, Some("www.cf.test"));
    assert!(names.contains("DNS:*.cf.test"), "{names}");
    let admin: u16 = d.admin.rsplit(':').next().unwrap().parse().unwrap();
    let metrics = client::get(admin, &d.admin, "/metrics").unwrap().text();
    assert!(
        metrics.contains("dwaar_tls_managed_certificates 1"),
        "{metrics}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || api.requests().iter().any(
            |r| r.starts_with("DELETE /client/v4/zones/zone-cf.test/dns_records/")
        )),
        "{:?}",
        api.requests()
    );
    assert!(bind.dig("_acme-challenge.cf.test", "TXT").is_empty());
    let reqs = api.requests();
    assert!(reqs.iter().any(|r| r == "GET /client/v4/zones"), "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r == "POST /client/v4/zones/zone-cf.test/dns_records"),
        "{reqs:?}"
    );
}

#[test]
fn dns01_route53_stand_in() {
    if !dns01_ready() {
        return;
    }
    let bind = Arc::new(bind::Bind::start(&["r53.test"]));
    // Test double of the Route 53 API (see dwaar_testkit::dns_apis).
    let api = dns_apis::route53(&bind, &["r53.test"], "AKIDDWAARTEST");
    let pebble = Pebble::start_with_dns(&bind.addr());
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = pebble_globals(http, https, store.path(), &pebble, "")
        + &format!(
            "app.r53.test {{\n\ttls {{\n\t\tdns route53 {{\n\t\t\taccess_key_id AKIDDWAARTEST\n\t\t\tsecret_access_key c2VjcmV0\n\t\t\tendpoint {}\n\t\t}}\n\t\tresolvers {}\n\t}}\n\trespond r53\n}}\n",
            api.url(),
            bind.addr()
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    wait_for_issued(https, "app.r53.test", "r53", &pebble, &d);
    assert!(
        wait_until(Duration::from_secs(15), || bind
            .dig("_acme-challenge.app.r53.test", "TXT")
            .is_empty()),
        "{}",
        d.log_text()
    );
    let reqs = api.requests();
    for want in [
        "GET /2013-04-01/hostedzonesbyname",
        "GET /2013-04-01/hostedzone/Zr53-test/rrset",
        "POST /2013-04-01/hostedzone/Zr53-test/rrset/",
        "GET /2013-04-01/change/C0001",
    ] {
        assert!(
            reqs.iter().any(|r| r == want),
            "{want} missing from {reqs:?}"
        );
    }
    // One UPSERT to present, one DELETE to clean up.
    let posts = reqs.iter().filter(|r| r.starts_with("POST")).count();
    assert_eq!(posts, 2, "{reqs:?}");
}

#[test]
fn dns01_exec_hook_and_propagation_timeout() {
    if !dns01_ready() {
        return;
    }
    let bind = Arc::new(bind::Bind::start(&["exec.test"]));
    let pebble = Pebble::start_with_dns(&bind.addr());
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    // The user's hook: nsupdate against the zone, with what Dwaar passes it.
    let hook = store.path().join("hook.sh");
    let calls = store.path().join("calls");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $2 $DWAAR_DNS_ZONE\" >> {calls}\nif [ \"$1\" = present ]; then op=\"add $2 60\"; else op=\"delete $2\"; fi\nprintf 'server 127.0.0.1 {port}\\nzone exec.test\\nupdate %s TXT \"%s\"\\nsend\\n' \"$op\" \"$3\" | nsupdate -y hmac-sha256:{key}:{secret}\n",
            calls = calls.display(),
            port = bind.port,
            key = bind::KEY_NAME,
            secret = bind::KEY_SECRET,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A hook that publishes nothing: the propagation check gives up after its timeout.
    let cfg = pebble_globals(http, https, store.path(), &pebble, "")
        + &format!(
            "hook.exec.test {{\n\ttls {{\n\t\tdns exec {}\n\t\tresolvers {}\n\t}}\n\trespond hooked\n}}\n\
             silent.exec.test {{\n\ttls {{\n\t\tdns exec /bin/true\n\t\tresolvers {}\n\t\tpropagation_timeout 3s\n\t}}\n\trespond silent\n}}\n",
            hook.display(),
            bind.addr(),
            bind.addr()
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    wait_for_issued(https, "hook.exec.test", "hooked", &pebble, &d);
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&calls)
            .is_ok_and(|c| c.contains(
                "cleanup _acme-challenge.hook.exec.test. exec.test."
            ))),
        "{:?}",
        std::fs::read_to_string(&calls)
    );
    let c = std::fs::read_to_string(&calls).unwrap();
    assert!(
        c.starts_with("present _acme-challenge.hook.exec.test. exec.test."),
        "{c}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || d
            .log_text()
            .contains("_acme-challenge.silent.exec.test was not served by")),
        "{}",
        d.log_text()
    );
}

#[test]
fn issuers_are_tried_in_order() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None, &[]);
    let store = tempfile::tempdir().unwrap();
    let dead = format!("https://127.0.0.1:{}/directory", free_port());
    let root = pebble.https_ca.ca_pem.display().to_string();
    // Globally: an unreachable CA first, then Pebble. One site: an unreachable CA, then
    // the local CA.
    let extra = format!(
        "\tcert_issuer acme {{\n\t\tdir {dead}\n\t}}\n\tcert_issuer acme {{\n\t\tdir {}\n\t\ttrusted_roots {root}\n\t}}\n",
        pebble.directory
    );
    let cfg = globals(http, https, store.path(), &extra)
        + "global.example.test {\n\trespond global\n}\n"
        + &format!(
            "site.example.test {{\n\ttls {{\n\t\tissuer acme {{\n\t\t\tdir {dead}\n\t\t}}\n\t\tissuer internal\n\t}}\n\trespond site\n}}\n"
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    wait_for_issued(https, "global.example.test", "global", &pebble, &d);
    let local = TlsOpts::trusting(local_root(store.path()));
    assert!(
        wait_until(Duration::from_secs(30), || tls::get(
            https,
            "site.example.test",
            "site.example.test",
            "/",
            &local
        )
        .is_ok_and(|r| r.body.contains("site"))),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("fallback issuer"), "{log}");
}

#[test]
fn get_certificate_asks_a_service_during_the_handshake() {
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (crt, key) = ca.issue("svc", &["svc.example.test"]);
    let bundle = std::fs::read_to_string(crt).unwrap() + &std::fs::read_to_string(key).unwrap();
    let asked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = asked.clone();
    // The operator's certificate service: one name has a certificate, others none.
    let svc = dwaar_testkit::stub::StandIn::start(Arc::new(move |r| {
        log.lock().unwrap().push(r.target.clone());
        match r.query("server_name").as_deref() {
            Some("svc.example.test") => (200, bundle.clone()),
            _ => (204, String::new()),
        }
    }));
    let cfg = globals(http, https, store.path(), "")
        + &format!(
            "svc.example.test, none.example.test {{\n\ttls {{\n\t\tget_certificate http {}/certificate\n\t}}\n\trespond \"from {{host}}\"\n}}\n",
            svc.url()
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    let opts = TlsOpts::trusting(std::fs::read(&ca.ca_pem).unwrap());
    for _ in 0..3 {
        let r = tls::get(https, "svc.example.test", "svc.example.test", "/", &opts)
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
        assert_eq!(r.body, "from svc.example.test");
    }
    // No certificate from the service: the handshake fails, and nothing was issued.
    assert!(tls::get(https, "none.example.test", "none.example.test", "/", &opts).is_err());
    let asked = asked.lock().unwrap().clone();
    let svc_asks: Vec<&String> = asked
        .iter()
        .filter(|t| t.contains("server_name=svc.example.test"))
        .collect();
    assert_eq!(svc_asks.len(), 1, "answers are reused: {asked:?}");
    assert!(
        svc_asks[0].starts_with("/certificate?server_name=svc.example.test&signature_schemes="),
        "{asked:?}"
    );
    assert!(!svc_asks[0].contains("signature_schemes=&"), "{asked:?}");
    assert!(
        asked
            .iter()
            .any(|t| t.contains("server_name=none.example.test")),
        "{asked:?}"
    );
}

/// The subject common name of a PEM certificate.
fn common_name(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "multiline", "-in"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("commonName"))
        .map(|v| v.trim().trim_start_matches('=').trim().to_string())
        .unwrap_or_default()
}

#[test]
fn preferred_chains_picks_the_alternate_root() {
    if !pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start_with_alternate_roots(http, https, 1);
    let (root0, root1) = (pebble.root(0), pebble.root(1));
    let cn1 = common_name(&root1);
    assert!(!cn1.is_empty() && cn1 != common_name(&root0), "{cn1}");
    let store = tempfile::tempdir().unwrap();
    let extra = format!("\tpreferred_chains {{\n\t\troot_common_name \"{cn1}\"\n\t}}\n");
    let cfg = pebble_globals(http, https, store.path(), &pebble, &extra)
        + "chain.example.test {\n\trespond chained\n}\n";
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    // Only the alternate root is trusted: the handshake verifies only if Dwaar serves
    // the chain that leads to it.
    let only_alt = TlsOpts::trusting(root1.as_bytes());
    let ok = wait_until(Duration::from_secs(60), || {
        tls::get(
            https,
            "chain.example.test",
            "chain.example.test",
            "/",
            &only_alt,
        )
        .is_ok()
    });
    assert!(ok, "{}\n{}", d.log_text(), pebble.log());
    assert!(
        tls::get(
            https,
            "chain.example.test",
            "chain.example.test",
            "/",
            &TlsOpts::trusting(root0.as_bytes())
        )
        .is_err(),
        "the default chain is not served"
    );
    assert!(
        d.log_text().contains("alternate certificate chain"),
        "{}",
        d.log_text()
    );
}

/// Runs certbot (a real ACME client) against `directory`, trusting `ca_bundle`, for
/// `names` with HTTP-01 on port 80 of 127.0.0.1; returns its exit status and output.
fn certbot(directory: &str, ca_bundle: &Path, work: &Path, names: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("certbot");
    cmd.args([
        "certonly",
        "--standalone",
        "--non-interactive",
        "--agree-tos",
    ])
    .args(["--register-unsafely-without-email", "--server", directory])
    .args(["--http-01-port", "80", "--http-01-address", "127.0.0.1"])
    .arg("--config-dir")
    .arg(work.join("config"))
    .arg("--work-dir")
    .arg(work.join("work"))
    .arg("--logs-dir")
    .arg(work.join("logs"))
    .env("REQUESTS_CA_BUNDLE", ca_bundle);
    for n in names {
        cmd.args(["-d", n]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("certbot: {e}"));
    // certbot 2.1 on Python 3.11 fails while printing some ACME errors; its log has them.
    let log = std::fs::read(work.join("logs/letsencrypt.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + &String::from_utf8_lossy(&out.stderr)
        + &String::from_utf8_lossy(&log);
    let _ = std::fs::remove_file(work.join("logs/letsencrypt.log"));
    (out.status.success(), text)
}

fn certbot_available() -> bool {
    dwaar_testkit::have_tools(&["certbot"])
}

#[test]
fn acme_server_issues_to_certbot() {
    if !certbot_available() || !dwaar_testkit::dnsmasq::available() {
        return;
    }
    // certbot's names resolve to 127.0.0.1 through this DNS server, which the ACME
    // server is told to use for validation.
    let dns = dwaar_testkit::dnsmasq::Dnsmasq::start(
        "127.0.0.1 host.certbot.test\n127.0.0.1 denied.certbot.test\n127.0.0.1 alpn.certbot.test\n",
        &[],
        None,
    );
    let (http, https) = (free_port(), free_port());
    let store = tempfile::tempdir().unwrap();
    let cfg = globals(http, https, store.path(), "")
        + &format!(
            "localhost {{\n\tacme_server {{\n\t\tlifetime 2h\n\t\tresolvers 127.0.0.1:{}\n\t\tallow {{\n\t\t\tdomains *.certbot.test\n\t\t}}\n\t\tdeny {{\n\t\t\tdomains denied.certbot.test\n\t\t}}\n\t}}\n}}\n",
            dns.port
        );
    let d = Dwaar::start(bin(), &cfg, &[http, https]);
    let root = store.path().join("pki/local/root.crt");
    assert!(wait_until(Duration::from_secs(10), || root.exists()));
    let directory = format!("https://localhost:{https}/acme/local/directory");
    let work = tempfile::tempdir().unwrap();
    let (ok, out) = certbot(&directory, &root, work.path(), &["host.certbot.test"]);
    assert!(ok, "certbot failed:\n{out}\ndwaar:\n{}", d.log_text());
    // The certificate chains to Dwaar's root and lives as long as configured.
    let live = work.path().join("config/live/host.certbot.test");
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg(live.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(live.join("cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:host.certbot.test"), "{text}");
    // Names outside the policy are refused before any validation.
    let (ok, out) = certbot(&directory, &root, work.path(), &["denied.certbot.test"]);
    assert!(!ok && out.contains("rejectedIdentifier :: The server will not issue certificates for the identifier :: 'denied.certbot.test' is denied by this CA's policy"), "{out}");
    let (ok, out) = certbot(&directory, &root, work.path(), &["elsewhere.test"]);
    assert!(
        !ok && out.contains("'elsewhere.test' is not allowed by this CA's policy"),
        "{out}"
    );
    // Dwaar's own ACME client, answering TLS-ALPN-01 on port 443, gets one too.
    let client_store = tempfile::tempdir().unwrap();
    let client_http = free_port();
    let extra = format!("\tacme_ca {directory}\n\tacme_ca_root {}\n", root.display());
    let client_cfg = globals(client_http, 443, client_store.path(), &extra)
        + "alpn.certbot.test {\n\ttls {\n\t\tissuer acme {\n\t\t\tdisable_http_challenge\n\t\t}\n\t}\n\trespond \"via tls-alpn-01\"\n}\n";
    let client = Dwaar::start(bin(), &client_cfg, &[client_http, 443]);
    let trust_local = TlsOpts::trusting(std::fs::read(&root).unwrap());
    let issued = wait_until(Duration::from_secs(60), || {
        tls::get(
            443,
            "alpn.certbot.test",
            "alpn.certbot.test",
            "/",
            &trust_local,
        )
        .is_ok_and(|r| r.body == "via tls-alpn-01")
    });
    assert!(
        issued,
        "client:\n{}\nserver:\n{}",
        client.log_text(),
        d.log_text()
    );
}
