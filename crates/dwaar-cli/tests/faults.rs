//! Broken surroundings: a disk that fills up under the access log and the analytics
//! database, then frees. (Worker crashes under load are in `lifecycle.rs`, upstreams
//! failing mid-response in `hardening.rs`, HTTP/2 floods in `h2_conformance.rs`.)

mod common;
use common::*;
use std::time::Duration;

const BROWSER: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

/// A small tmpfs mounted for one test (root only); unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("DWAAR_REQUIRE_E2E").is_err(),
                "cannot mount a tmpfs (the disk-full test needs root)"
            );
            eprintln!("skipped: cannot mount a tmpfs");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk with a file (writing until it is full).
    fn fill(&self) {
        use std::io::Write;
        let mut f =
            std::fs::File::create(self.path().join("filler")).unwrap_or_else(|e| panic!("{e}"));
        // Large writes until one fails, then single bytes for the last partial block.
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write(&[0u8; 1]).is_ok_and(|n| n > 0) {}
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The access log and the analytics database share a disk that fills up: requests keep
/// being answered, log records are dropped and counted (never half written), analytics
/// keeps its rollups for the next try, and when space comes back both resume; the
/// SQLite database passes its integrity check.
#[test]
fn a_full_disk_loses_records_not_requests() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let port = free_port();
    let log = disk.path().join("logs/access.log");
    let conf = format!(
        "{{\n\tstorage file_system {st}\n\tanalytics {{\n\t\tflush_interval 100ms\n\t}}\n}}\n\
         http://localhost:{port} {{\n\tlog {{\n\t\toutput file {log}\n\t}}\n\tanalytics\n\
         \theader Content-Type text/html\n\trespond \"<html><body>page</body></html>\"\n}}\n",
        st = disk.path().display(),
        log = log.display()
    );
    let d = Dwaar::start(&bin(), &conf, &[port]);
    let page = |path: &str| {
        request(
            port,
            "GET",
            "localhost",
            path,
            &[("User-Agent", BROWSER)],
            b"",
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .status
    };
    let views = || {
        dwaar_admin::client::request(&d.admin, "GET", "/analytics/localhost?from=-1h", None, &[])
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .and_then(|v| v["totals"]["views"].as_u64())
            .unwrap_or(0)
    };
    for i in 0..20 {
        assert_eq!(page(&format!("/before/{i}")), 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || views() >= 20),
        "{}",
        views()
    );
    assert!(wait_until(
        Duration::from_secs(5),
        || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 20
    ));

    disk.fill();
    let dropped_before = d
        .metric("dwaar_log_records_total{result=\"dropped\"}")
        .unwrap_or(0);
    for i in 0..300 {
        assert_eq!(
            page(&format!("/full/{i}-{}", "x".repeat(200))),
            200,
            "request {i} on a full disk"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .metric("dwaar_log_records_total{result=\"dropped\"}")
            .unwrap_or(0)
            > dropped_before),
        "no log records counted as dropped"
    );

    disk.free();
    for i in 0..20 {
        assert_eq!(page(&format!("/after/{i}")), 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/after/19")),
        "logging did not resume"
    );
    eprintln!(
        "log: {} dropped while full; analytics views {}",
        d.metric("dwaar_log_records_total{result=\"dropped\"}")
            .unwrap_or(0)
            - dropped_before,
        views()
    );
    // Every line is a whole record.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "half-written record: {line:.200}"
        );
    }
    // Analytics counted what it could keep, and resumed: the views after the disk came
    // back are there.
    assert!(
        wait_until(Duration::from_secs(10), || views() >= 40),
        "analytics did not resume: {}",
        views()
    );
    // The database is whole.
    let db = disk.path().join("analytics/analytics.db");
    let check = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])")
        .arg(&db)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(page("/last"), 200);
}

/// Certificate storage that turns read-only while a certificate is due for renewal
/// (Pebble issuing 30-second certificates, renewed at 20 s of age): the renewal fails
/// and is retried with back-off, the old certificate keeps serving, and once storage is
/// writable again the renewed certificate is stored and served.
#[test]
fn unwritable_certificate_storage_keeps_the_old_certificate_serving() {
    use dwaar_testkit::pebble::{self, Pebble};
    use dwaar_testkit::tls::{self, TlsOpts};
    if !pebble::available() {
        assert!(
            std::env::var("DWAAR_REQUIRE_E2E").is_err(),
            "pebble is not installed"
        );
        eprintln!("skipping: pebble is not installed");
        return;
    }
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, Some(Duration::from_secs(30)), &[]);
    let conf = format!(
        "{{\n\thttp_port {http}\n\thttps_port {https}\n\tstorage file_system {st}\n\temail ops@example.test\n\tacme_ca {dir}\n\tacme_ca_root {root}\n}}\n\
         web.example.test {{\n\trespond \"web\"\n}}\n",
        st = disk.path().display(),
        dir = pebble.directory,
        root = pebble.https_ca.ca_pem.display()
    );
    let d = Dwaar::start(&bin(), &conf, &[http, https]);
    let opts = TlsOpts::trusting(pebble.issuing_root().as_bytes());
    let serial = || {
        tls::get(https, "web.example.test", "web.example.test", "/", &opts)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.leaf_serial())
    };
    assert!(
        wait_until(Duration::from_secs(60), || serial().is_some()),
        "no certificate: {}",
        d.log_text()
    );
    let first = serial();
    let remount = |mode: &str| {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(disk.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {mode}");
    };
    remount("ro");
    let failures = || {
        d.log_text()
            .matches("could not obtain a certificate")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(40), || failures() >= 1),
        "the renewal never failed: {}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("Read-only file system"),
        "{}",
        d.log_text()
    );
    // The old certificate still serves (it is valid for a few seconds more).
    assert_eq!(serial(), first, "{}", d.log_text());
    remount("rw");
    assert!(
        wait_until(Duration::from_secs(40), || serial()
            .is_some_and(|s| Some(s) != first)),
        "not renewed once storage was writable: {}",
        d.log_text()
    );
    let stored = std::fs::read_dir(disk.path().join("certificates"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(stored > 0, "nothing stored");
}
