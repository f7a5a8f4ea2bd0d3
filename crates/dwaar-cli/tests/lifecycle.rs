//! End-to-end tests of the server lifecycle: reloads (admin API, CLI, SIGUSR1,
//! `--watch`), the admin API's rules, worker processes, graceful stop and upgrade,
//! all under steady traffic where it matters.

mod common;
use common::*;
use dwaar_admin::client::{request as admin, Reply};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

fn load_text(addr: &str, text: &str) -> Reply {
    admin(
        addr,
        "POST",
        "/load",
        Some(("text/dwaarfile", text.as_bytes())),
        &[],
    )
    .unwrap_or_else(|e| panic!("POST /load: {e}"))
}

/// Config `version` (a letter): `respond` answers it, and proxied responses carry it.
fn versioned(port: u16, origin: u16, version: char) -> String {
    format!(
        "{{\n\tgrace_period 3s\n}}\n:{port} {{\n\thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:{origin} {{\n\t\t\theader_down X-Config {version}\n\t\t}}\n\t}}\n\trespond \"{version}\"\n}}\n"
    )
}

/// Steady traffic from several clients, keep-alive and not, checking every answer
/// against the config that was live for the whole request.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Even: a config is stably live; odd: a change is in progress.
    generation: Arc<AtomicU64>,
    version: Arc<AtomicU8>,
    threads: Vec<std::thread::JoinHandle<TrafficReport>>,
}

#[derive(Default, Debug)]
struct TrafficReport {
    ok: u64,
    failures: Vec<String>,
    wrong_config: Vec<String>,
}

impl Traffic {
    fn start(port: u16, initial: char) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let version = Arc::new(AtomicU8::new(initial as u8));
        let threads = (0..4)
            .map(|i| {
                let (stop, generation, version) =
                    (stop.clone(), generation.clone(), version.clone());
                std::thread::spawn(move || {
                    client(port, i % 2 == 0, i >= 2, &stop, &generation, &version)
                })
            })
            .collect();
        Traffic {
            stop,
            generation,
            version,
            threads,
        }
    }

    /// Runs `change` (a reload, an upgrade...) and marks the config `after` live once
    /// it returns.
    fn change<T>(&self, after: char, change: impl FnOnce() -> T) -> T {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let r = change();
        self.version.store(after as u8, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        r
    }

    fn finish(self) -> TrafficReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = TrafficReport::default();
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| panic!("client thread panicked"));
            total.ok += r.ok;
            total.failures.extend(r.failures);
            total.wrong_config.extend(r.wrong_config);
        }
        total
    }
}

fn client(
    port: u16,
    keep_alive: bool,
    proxied: bool,
    stop: &AtomicBool,
    generation: &AtomicU64,
    version: &AtomicU8,
) -> TrafficReport {
    let mut report = TrafficReport::default();
    let mut conn: Option<Conn> = None;
    let path = if proxied { "/up/x" } else { "/" };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{}\r\n",
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    while !stop.load(Ordering::SeqCst) {
        let g1 = generation.load(Ordering::SeqCst);
        let expected = version.load(Ordering::SeqCst) as char;
        let result = (|| -> std::io::Result<Response> {
            if conn.is_none() {
                conn = Some(Conn::open(port)?);
            }
            let c = conn
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no connection"))?;
            c.send_raw(req.as_bytes())?;
            c.read_response(false)
        })();
        let g2 = generation.load(Ordering::SeqCst);
        match result {
            Ok(r) if r.status == 200 => {
                report.ok += 1;
                let got = if proxied {
                    r.header("x-config").unwrap_or("?").to_string()
                } else {
                    r.text()
                };
                if g1 == g2 && g1.is_multiple_of(2) && got != expected.to_string() {
                    report
                        .wrong_config
                        .push(format!("{path}: expected {expected}, got {got}"));
                }
                let closing = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !keep_alive || closing {
                    conn = None;
                }
            }
            Ok(r) => {
                report
                    .failures
                    .push(format!("{path}: status {} {}", r.status, r.text()));
                conn = None;
            }
            Err(e) => {
                report.failures.push(format!("{path}: {e}"));
                conn = None;
            }
        }
    }
    report
}

fn assert_clean(report: &TrafficReport, what: &str) {
    eprintln!("{what}: {} requests answered", report.ok);
    assert!(report.ok > 100, "{what}: too little traffic: {report:?}");
    assert!(
        report.failures.is_empty(),
        "{what}: {} failed requests: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
    assert!(
        report.wrong_config.is_empty(),
        "{what}: answers from the wrong config: {:?}",
        &report.wrong_config[..report.wrong_config.len().min(10)]
    );
}

fn pidfile_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Stops a process the test started indirectly (an upgrade's successor), by PID.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(self.0, "KILL");
    }
}

#[test]
fn reloads_and_upgrade_under_traffic_drop_nothing() {
    let origin = origin::http("o");
    let port = free_port();
    let a = versioned(port, origin.port, 'A');
    let b = versioned(port, origin.port, 'B');
    let piddir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pidfile = piddir.path().join("dwaar.pid");
    let mut d = Dwaar::start_with(
        &bin(),
        &a,
        &[port],
        &[
            "--threads",
            "2",
            "--pidfile",
            pidfile.to_str().unwrap_or_default(),
        ],
    );
    let addr = d.admin.clone();
    let traffic = Traffic::start(port, 'A');
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        let (text, v) = if i % 2 == 0 { (&b, 'B') } else { (&a, 'A') };
        let r = traffic.change(v, || load_text(&addr, text));
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
        std::thread::sleep(Duration::from_millis(60));
    }
    // Live config is now A. An invalid config is refused and A keeps serving.
    let r = traffic.change('A', || load_text(&addr, &a.replace("respond", "respnd")));
    assert_eq!(r.status, 400, "{}", r.body);
    std::thread::sleep(Duration::from_millis(200));
    // SIGUSR1 re-reads the file.
    d.write_config(&b);
    traffic.change('B', || {
        d.signal("USR1");
        // The signal is asynchronous: wait until the reload counter moves.
        assert!(wait_until(Duration::from_secs(5), || {
            admin(&addr, "GET", "/metrics", None, &[]).is_ok_and(|m| {
                m.body
                    .contains("dwaar_config_reloads_total{result=\"success\"} 21")
            })
        }));
    });
    std::thread::sleep(Duration::from_millis(200));
    // Upgrade: a new process takes the sockets over; the old one drains and exits.
    let old = d.pid();
    let r = traffic.change('B', || {
        admin(&addr, "POST", "/upgrade", None, &[]).unwrap_or_else(|e| panic!("upgrade: {e}"))
    });
    assert_eq!(r.status, 200, "{}", r.body);
    let new = json(&r)["pid"].as_u64().unwrap_or(0) as u32;
    let _cleanup = KillOnDrop(new);
    assert_ne!(new, old);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "old process did not exit after the upgrade"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(new));
    assert!(
        wait_until(Duration::from_secs(2), || pidfile_pid(&pidfile)
            == Some(new)),
        "pidfile not updated"
    );
    // The successor serves reloads too.
    let r = traffic.change('A', || load_text(&addr, &a));
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(300));
    let report = traffic.finish();
    assert_clean(&report, "reloads + upgrade");
    // Graceful stop through the admin API; the pidfile goes away.
    let r = admin(&addr, "POST", "/stop", None, &[]).unwrap_or_else(|e| panic!("stop: {e}"));
    assert_eq!(r.status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(new)),
        "successor did not stop"
    );
    assert!(!pidfile.exists(), "pidfile left behind");
}

fn worker_pids(supervisor: u32) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &supervisor.to_string()])
        .output();
    let mut pids: Vec<u32> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids
}

#[test]
fn workers_follow_reloads_and_survive_a_worker_kill() {
    let origin = origin::http("o");
    let port = free_port();
    let a = versioned(port, origin.port, 'A');
    let b = versioned(port, origin.port, 'B');
    let d = Dwaar::start_with(&bin(), &a, &[port], &["--workers", "2", "--threads", "1"]);
    let addr = d.admin.clone();
    assert!(
        wait_until(Duration::from_secs(5), || worker_pids(d.pid()).len() == 2),
        "expected 2 workers"
    );
    let before = worker_pids(d.pid());
    let traffic = Traffic::start(port, 'A');
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        let (text, v) = if i % 2 == 0 { (&b, 'B') } else { (&a, 'A') };
        let r = traffic.change(v, || load_text(&addr, text));
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
        std::thread::sleep(Duration::from_millis(60));
    }
    // A worker is stopped (SIGTERM); the supervisor starts a replacement, and the
    // other worker plus the queued connections carry the traffic meanwhile.
    kill(before[0], "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || {
            let now = worker_pids(d.pid());
            now.len() == 2 && !now.contains(&before[0])
        }),
        "worker was not replaced: {:?}",
        worker_pids(d.pid())
    );
    // The replacement got the current config (A), and later reloads reach it too.
    std::thread::sleep(Duration::from_millis(300));
    let r = traffic.change('B', || load_text(&addr, &b));
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(500));
    let report = traffic.finish();
    assert_clean(&report, "workers");
    // Every worker answers with B: many fresh connections land on both.
    for _ in 0..40 {
        assert_eq!(ok_get(port, "t", "/").text(), "B");
    }
    let m = admin(&addr, "GET", "/metrics", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.body.contains("dwaar_workers 2"), "{}", m.body);
    assert!(
        m.body.contains("dwaar_worker_restarts_total 1"),
        "{}",
        m.body
    );
    // A crash (SIGKILL) under traffic is also repaired. Only requests on connections
    // the killed worker held can fail: at most one per client (its request in flight,
    // or the next one on its kept connection); every other request is answered.
    let now = worker_pids(d.pid());
    let traffic = Traffic::start(port, 'B');
    std::thread::sleep(Duration::from_millis(400));
    kill(now[1], "KILL");
    assert!(
        wait_until(Duration::from_secs(15), || {
            let w = worker_pids(d.pid());
            w.len() == 2 && !w.contains(&now[1])
        }),
        "crashed worker was not replaced"
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = traffic.finish();
    eprintln!(
        "worker killed: {} answered, {} failed: {:?}",
        report.ok,
        report.failures.len(),
        report.failures
    );
    assert!(report.ok > 100, "{report:?}");
    assert!(report.failures.len() <= 4, "{:?}", report.failures);
    assert!(report.wrong_config.is_empty(), "{:?}", report.wrong_config);
    for _ in 0..20 {
        assert_eq!(ok_get(port, "t", "/").text(), "B");
    }
    // An upgrade under traffic: a new supervisor with new workers takes the sockets.
    let mut d = d;
    let old_workers = worker_pids(d.pid());
    let traffic = Traffic::start(port, 'B');
    std::thread::sleep(Duration::from_millis(300));
    let r = traffic.change('B', || {
        admin(&addr, "POST", "/upgrade", None, &[]).unwrap_or_else(|e| panic!("upgrade: {e}"))
    });
    assert_eq!(r.status, 200, "{}", r.body);
    let new = json(&r)["pid"].as_u64().unwrap_or(0) as u32;
    let _cleanup = KillOnDrop(new);
    assert!(
        d.wait_exit(Duration::from_secs(15)).is_some(),
        "old supervisor did not exit"
    );
    assert!(
        wait_until(Duration::from_secs(5), || worker_pids(new).len() == 2),
        "new workers missing"
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = traffic.change('A', || load_text(&addr, &a));
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(300));
    let report = traffic.finish();
    assert_clean(&report, "workers upgrade");
    assert!(
        old_workers.iter().all(|p| !alive(*p)),
        "old workers outlived the upgrade"
    );
    // SIGTERM to the (new) supervisor stops everything gracefully.
    let pids = worker_pids(new);
    kill(new, "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !alive(new)),
        "supervisor did not stop"
    );
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "workers outlived the supervisor"
    );
}

#[test]
fn failed_load_returns_diagnostics_and_keeps_serving() {
    let (d, port) = serve(":PORT {\n\trespond \"one\"\n}\n");
    let bad = format!(":{port} {{\n\trespond \"two\"\n\treverse_proxy localhost:notaport\n}}\n");
    let r = load_text(&d.admin, &bad);
    assert_eq!(r.status, 400);
    let v = json(&r);
    let diag = &v["diagnostics"][0];
    assert_eq!(diag["line"], 3, "{v}");
    assert_eq!(diag["column"], 16, "{v}");
    assert!(
        diag["message"].as_str().unwrap_or("").contains("port"),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap_or("").contains("Dwaarfile:3:16"),
        "{v}"
    );
    assert_eq!(ok_get(port, "x", "/").text(), "one");
    let m = admin(&d.admin, "GET", "/metrics", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.body
            .contains("dwaar_config_reloads_total{result=\"failure\"} 1"),
        "{}",
        m.body
    );
    // The CLI prints the same diagnostics and exits 1.
    let cli_reload = || {
        let config = d.config.to_str().unwrap_or_default();
        dwaar_cmd(
            &["reload", "--config", config, "--address", &d.admin],
            d.dir.path(),
        )
    };
    std::fs::write(&d.config, &bad).unwrap_or_default();
    let (code, _, err) = cli_reload();
    assert_eq!(code, 1);
    assert!(err.contains("Dwaarfile:3:16") && err.contains('^'), "{err}");
    // A good file through the CLI.
    std::fs::write(&d.config, format!(":{port} {{\n\trespond \"three\"\n}}\n")).unwrap_or_default();
    let (code, out, err) = cli_reload();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config reloaded"), "{out}");
    assert_eq!(ok_get(port, "x", "/").text(), "three");
    // JSON from `dwaar adapt` loads too.
    let (_, adapted, _) = dwaar_cmd(
        &["adapt", "--config", d.config.to_str().unwrap_or_default()],
        d.dir.path(),
    );
    let adapted = adapted.replace("three", "four");
    let r = admin(
        &d.admin,
        "POST",
        "/load",
        Some(("application/json", adapted.as_bytes())),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ok_get(port, "x", "/").text(), "four");
    let r = admin(
        &d.admin,
        "POST",
        "/load",
        Some(("application/json", b"{\"sites\": 5}")),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    assert!(json(&r)["error"]
        .as_str()
        .unwrap_or("")
        .contains("invalid config JSON"));
}

#[test]
fn admin_endpoints_and_browser_protection() {
    let (d, port) = serve(":PORT {\n\trespond /hi \"hi\"\n}\n");
    let a = &d.admin;
    let h = admin(a, "GET", "/health", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((h.status, json(&h)["status"].as_str()), (200, Some("ok")));
    let c = admin(a, "GET", "/config", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json(&c)["sites"][0]["addresses"][0]["port"], port);
    let r = admin(a, "GET", "/routes", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json(&r)["sites"][0]["routes"][0]["handlers"][0],
        "static_response",
        "{}",
        r.body
    );
    let m = admin(a, "GET", "/metrics", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.body.contains("# TYPE dwaar_config_reloads_total counter"));
    assert_eq!(
        admin(a, "GET", "/load", None, &[]).map(|r| r.status).ok(),
        Some(405)
    );
    assert_eq!(
        admin(a, "GET", "/nope", None, &[]).map(|r| r.status).ok(),
        Some(404)
    );
    let r =
        admin(a, "POST", "/load", Some(("image/png", b"x")), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 415);
    // A web page cannot drive the API: foreign Origin, foreign Host, pre-flight.
    let raw_admin = |req: &str| -> u16 {
        let p: u16 = a
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        raw(p, req).map(|r| r.status).unwrap_or(0)
    };
    let ap = a.rsplit(':').next().unwrap_or("");
    assert_eq!(raw_admin(&format!("POST /stop HTTP/1.1\r\nHost: localhost:{ap}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n")), 403);
    assert_eq!(
        raw_admin("POST /stop HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n"),
        403
    );
    assert_eq!(
        raw_admin(&format!(
            "OPTIONS /load HTTP/1.1\r\nHost: localhost:{ap}\r\nOrigin: http://evil.example\r\n\r\n"
        )),
        405
    );
    assert_eq!(raw_admin(&format!("POST /stop HTTP/1.1\r\nHost: 127.0.0.1:{ap}\r\nOrigin: null\r\nContent-Length: 0\r\n\r\n")), 403);
    assert_eq!(
        raw_admin(&format!(
            "GET /health HTTP/1.1\r\nHost: localhost:{ap}\r\nOrigin: http://localhost:{ap}\r\n\r\n"
        )),
        200
    );
    // Still running after all that.
    assert_eq!(ok_get(port, "x", "/hi").text(), "hi");
}

#[test]
fn admin_on_a_unix_socket_is_private() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sock = dir.path().join("admin.sock");
    let port = free_port();
    let cfg = format!(
        "{{\n\tadmin unix/{}\n}}\n:{port} {{\n\trespond \"u\"\n}}\n",
        sock.display()
    );
    let d = Dwaar::start(&bin(), &cfg, &[port]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    let addr = format!("unix/{}", sock.display());
    let r = admin(&addr, "GET", "/health", None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    let (code, out, err) = dwaar_cmd(&["stop", "--address", &addr], d.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let mut d = d;
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn watch_reloads_when_the_file_or_an_import_changes() {
    let port = free_port();
    let d = Dwaar::start_with(
        &bin(),
        &format!(":{port} {{\n\trespond \"zero\"\n}}\n"),
        &[port],
        &["--threads", "1", "--watch"],
    );
    assert_eq!(ok_get(port, "x", "/").text(), "zero");
    // The file changes to import another one.
    std::fs::write(d.dir.path().join("site.conf"), "respond \"one\"\n").unwrap_or_default();
    std::thread::sleep(Duration::from_millis(1100));
    d.write_config(&format!(":{port} {{\n\timport site.conf\n}}\n"));
    assert!(
        wait_until(Duration::from_secs(5), || ok_get(port, "x", "/").text()
            == "one"),
        "file change not picked up"
    );
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(d.dir.path().join("site.conf"), "respond \"two\"\n").unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || ok_get(port, "x", "/").text()
            == "two"),
        "import change not picked up"
    );
    std::thread::sleep(Duration::from_millis(1100));
    d.write_config(&format!(":{port} {{\n\trespond \"three\"\n}}\n"));
    assert!(
        wait_until(Duration::from_secs(5), || ok_get(port, "x", "/").text()
            == "three"),
        "file change not picked up"
    );
    // A broken edit is refused; the last good config keeps serving.
    std::thread::sleep(Duration::from_millis(1100));
    d.write_config(&format!(":{port} {{\n\trespond \"four\"\n"));
    assert!(wait_until(Duration::from_secs(5), || d
        .log_text()
        .contains("config reload failed")));
    assert_eq!(ok_get(port, "x", "/").text(), "three");
}

fn listener_changes(args: &[&str]) {
    let (p1, p2) = (free_port(), free_port());
    let one = format!(":{p1} {{\n\trespond \"one\"\n}}\n");
    let d = Dwaar::start_with(&bin(), &one, &[p1], args);
    let mut kept = Conn::open(p1).unwrap_or_else(|e| panic!("{e}"));
    let get = |c: &mut Conn| -> String {
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        c.read_response(false)
            .map(|r| r.text())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(get(&mut kept), "one");
    // A second site on a new port: opened without touching the first.
    let both = format!("{one}:{p2} {{\n\trespond \"two\"\n}}\n");
    assert_eq!(load_text(&d.admin, &both).status, 200);
    assert_eq!(ok_get(p2, "x", "/").text(), "two");
    for _ in 0..10 {
        assert_eq!(ok_get(p2, "x", "/").text(), "two");
    }
    assert_eq!(
        get(&mut kept),
        "one",
        "the existing connection was disturbed"
    );
    // Removed again: the port closes, the first keeps serving on the same connection.
    assert_eq!(load_text(&d.admin, &one).status, 200);
    assert!(
        wait_until(Duration::from_secs(3), || std::net::TcpStream::connect((
            "127.0.0.1",
            p2
        ))
        .is_err()),
        "port {p2} still open"
    );
    assert_eq!(get(&mut kept), "one");
    // A port held by another program refuses the reload, naming it.
    let squatter = std::net::TcpListener::bind(("0.0.0.0", p2)).unwrap_or_else(|e| panic!("{e}"));
    let r = load_text(&d.admin, &both);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains(&format!("{p2}")) && r.body.contains("in use"),
        "{}",
        r.body
    );
    drop(squatter);
    assert_eq!(get(&mut kept), "one");
}

#[test]
fn listeners_open_and_close_on_reload() {
    listener_changes(&["--threads", "2"]);
}

#[test]
fn listeners_open_and_close_on_reload_with_workers() {
    listener_changes(&["--workers", "2", "--threads", "1"]);
}

#[test]
fn a_taken_default_admin_port_does_not_stop_the_server() {
    // Whoever holds 2019 (a Caddy on this machine, or this test), dwaar still serves.
    let _squatter = std::net::TcpListener::bind("127.0.0.1:2019");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("Dwaarfile");
    std::fs::write(&cfg, format!(":{port} {{\n\trespond \"up\"\n}}\n")).unwrap_or_default();
    let mut child = std::process::Command::new(bin())
        .args(["run", "--threads", "1", "--config"])
        .arg(&cfg)
        .env_remove("DWAAR_ADMIN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let served = up && ok_get(port, "x", "/").text() == "up";
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "dwaar did not serve with port 2019 taken");
}

/// `shutdown_delay`: after a stop signal the server keeps accepting and answering for
/// the delay (so a load balancer can take it out of rotation), then drains and exits.
#[test]
fn shutdown_delay_keeps_serving_before_the_drain() {
    let port = free_port();
    let mut d = Dwaar::start(
        &bin(),
        &format!(
            "{{\n\tshutdown_delay 1500ms\n\tgrace_period 1s\n}}\n:{port} {{\n\trespond ok\n}}\n"
        ),
        &[port],
    );
    let asked = std::time::Instant::now();
    d.signal("TERM");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        ok_get(port, "x", "/").text(),
        "ok",
        "a new connection during the delay"
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "exited before the delay: {:?}",
        asked.elapsed()
    );
    assert!(d.log_text().contains("shutdown_delay"), "{}", d.log_text());
}

/// An idle server gives memory back (`server/footprint.rs`): 10-20 s after its last
/// request it drops the code pages serving paged in and jemalloc's free pages, and the
/// next request is served as before.
#[test]
fn an_idle_server_gives_memory_back_and_keeps_serving() {
    let (mut d, port) = serve("{\n\tadmin off\n}\n:PORT {\n\trespond \"idle ok\"\n}\n");
    // Past the start-up release (2 s), then traffic pages the serving code back in.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..300 {
        assert_eq!(ok_get(port, "localhost", "/").status, 200);
    }
    let served = d.rss_kb();
    // One whole quiet period is noticed within two.
    std::thread::sleep(Duration::from_secs(22));
    let trimmed = d.rss_kb();
    eprintln!("RSS after serving {served} kB, after the idle trim {trimmed} kB");
    assert!(
        trimmed + 1024 < served,
        "no memory given back: {served} kB -> {trimmed} kB"
    );
    let r = ok_get(port, "localhost", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "idle ok");
    assert!(d.alive(), "{}", d.log_text());
}
