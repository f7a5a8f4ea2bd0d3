//! Running Dwaar as operators do: the systemd readiness protocol (against a datagram
//! socket the test owns), the unit file, `dwaar start`, the quick commands, shell
//! completions, manual pages and the build facts.

mod common;
use common::*;
use dwaar_admin::client::request as admin;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The service manager's side of `$NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("{e}"));
        Manager {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message that is not a watchdog keep-alive (those are counted).
    fn next(&self, watchdogs: &mut u32, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m == "WATCHDOG=1" {
                    *watchdogs += 1;
                    continue;
                }
                return Some(m);
            }
        }
        None
    }

    fn expect(&self, watchdogs: &mut u32, what: &str, check: impl Fn(&str) -> bool) -> String {
        let m = self
            .next(watchdogs, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no message: expected {what}"));
        assert!(check(&m), "expected {what}, got {m:?}");
        m
    }
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn respond_config(port: u16, text: &str) -> String {
    format!(":{port} {{\n\trespond \"{text}\"\n}}\n")
}

/// READY after start, RELOADING (with a monotonic time) then READY around each reload
/// (failed ones too), MAINPID + READY from an upgrade's successor (and no STOPPING from
/// its predecessor), STOPPING on a graceful stop, WATCHDOG on the asked interval; for a
/// single process and for a supervisor with two workers (which stay silent).
#[test]
fn readiness_protocol_follows_start_reload_upgrade_and_stop() {
    for workers in ["1", "2"] {
        let mgr = Manager::new();
        let sock = mgr.path.display().to_string();
        // A port another test took between `free_port` and the bind would be answered by
        // that test's server: start again on a new port when this one's exited.
        let (d, port) = loop {
            let port = free_port();
            let mut d = Dwaar::start_env(
                &bin(),
                &respond_config(port, "one"),
                &[port],
                &["--threads", "1", "--workers", workers],
                &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "400000")],
            );
            std::thread::sleep(Duration::from_millis(100));
            if d.alive() || !d.log_text().contains("address already in use") {
                break (d, port);
            }
        };
        let mut dogs = 0;
        let first = mgr.next(&mut dogs, Duration::from_secs(20));
        assert!(
            first.as_deref().is_some_and(|m| {
                field(m, "READY") == Some("1") && field(m, "STATUS") == Some("serving 1 site")
            }),
            "expected READY=1 after start ({workers} workers), got {first:?}; log:\n{}",
            d.log_text()
        );

        // A good reload.
        let r = admin(
            &d.admin,
            "POST",
            "/load",
            Some(("text/dwaarfile", respond_config(port, "two").as_bytes())),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.body);
        let m = mgr.expect(&mut dogs, "RELOADING=1", |m| {
            field(m, "RELOADING") == Some("1")
        });
        let usec: u64 = field(&m, "MONOTONIC_USEC")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("MONOTONIC_USEC missing: {m:?}"));
        assert!(usec > 0);
        mgr.expect(&mut dogs, "READY=1 after the reload", |m| {
            field(m, "READY") == Some("1") && field(m, "STATUS") == Some("serving 1 site")
        });
        assert_eq!(ok_get(port, "x", "/").text(), "two");

        // A refused reload: still RELOADING then READY, with a status that says so.
        let r = admin(
            &d.admin,
            "POST",
            "/load",
            Some(("text/dwaarfile", b":1 {\n\trespnd x\n}\n".as_slice())),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(r.status, 200);
        mgr.expect(&mut dogs, "RELOADING=1", |m| {
            field(m, "RELOADING") == Some("1")
        });
        mgr.expect(&mut dogs, "READY=1 after the failed reload", |m| {
            field(m, "READY") == Some("1")
                && field(m, "STATUS").is_some_and(|s| s.contains("reload failed"))
        });

        // An upgrade: the successor becomes the main process.
        let r = admin(&d.admin, "POST", "/upgrade", None, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.body);
        let new_pid: u32 = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid in {}", r.body));
        let _successor = KillOnDrop(new_pid);
        assert_ne!(new_pid, d.pid());
        mgr.expect(&mut dogs, "MAINPID + READY from the successor", |m| {
            field(m, "MAINPID") == Some(new_pid.to_string().as_str())
                && field(m, "READY") == Some("1")
        });
        // The old process drains and exits without claiming the service stops.
        let old_gone = wait_until(Duration::from_secs(20), || {
            !Path::new(&format!("/proc/{}", d.pid())).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", d.pid()))
                    .is_ok_and(|s| s.contains(") Z "))
        });
        assert!(old_gone, "the old process did not exit");
        if let Some(m) = mgr.next(&mut dogs, Duration::from_millis(500)) {
            panic!("unexpected message after the upgrade: {m:?}");
        }

        // A graceful stop of the successor.
        let r = admin(&d.admin, "POST", "/stop", None, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.body);
        mgr.expect(&mut dogs, "STOPPING=1", |m| {
            field(m, "STOPPING") == Some("1")
        });
        assert!(
            dogs >= 2,
            "watchdog keep-alives every 200 ms expected ({workers} workers): {dogs}"
        );
        drop(d);
    }
}

struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// `systemd-analyze verify` accepts the unit (pointed at this build's binary) without a
/// single warning.
#[test]
fn the_systemd_unit_verifies() {
    if !have_tool("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/dwaar.service"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/usr/bin/dwaar reload",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=dwaar",
        "StateDirectory=dwaar",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("dwaar.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/dwaar", &bin().display().to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p
}

/// `dwaar start` returns once the server serves (from a Caddyfile, with an env file
/// and a pidfile), `dwaar stop` ends it; a broken config makes `start` fail with the
/// diagnostics; an unknown adapter is refused. Output is captured through pipes, so a
/// `start` that held on to them would hang this test.
#[test]
fn start_returns_when_serving_and_fails_with_the_diagnostics() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let admin_addr = format!("127.0.0.1:{}", free_port());
    write(
        d.path(),
        "Caddyfile",
        &format!("{{\n\tadmin {admin_addr}\n}}\n:{port} {{\n\trespond {{$GREETING}}\n}}\n"),
    );
    write(
        d.path(),
        "app.env",
        "# settings\nexport GREETING=\"hello from env\"\n",
    );
    let pidfile = d.path().join("dwaar.pid");
    let started = Instant::now();
    let (code, out, err) = dwaar_cmd(
        &[
            "start",
            "--adapter",
            "caddyfile",
            "--envfile",
            "app.env",
            "--pidfile",
            &pidfile.display().to_string(),
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(out.contains("running in the background"), "{out}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pidfile"));
    let _guard = KillOnDrop(pid);
    // Ready means serving: no retry needed.
    assert_eq!(ok_get(port, "x", "/").text(), "hello from env");

    let (code, out, err) = dwaar_cmd(&["stop", "--address", &admin_addr], d.path());
    assert_eq!(code, 0, "{out}{err}");
    let gone = wait_until(Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(gone, "the started server did not stop");
    assert!(!pidfile.exists(), "the pidfile outlived the server");

    // A broken config: non-zero, with file:line:col.
    write(
        d.path(),
        "Caddyfile",
        &format!(":{port} {{\n\trespnd x\n}}\n"),
    );
    let (code, _, err) = dwaar_cmd(&["start"], d.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown directive 'respnd'"), "{err}");
    assert!(err.contains("Caddyfile:2:2"), "{err}");
    assert!(err.contains("did not start"), "{err}");

    // Nothing to run.
    std::fs::remove_file(d.path().join("Caddyfile")).unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["start"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("./Dwaarfile, ./Caddyfile"), "{err}");

    let (code, _, err) = dwaar_cmd(&["validate", "--adapter", "json"], d.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("possible values: caddyfile, dwaarfile"),
        "{err}"
    );
    // A malformed env file names its line and stops everything.
    write(d.path(), "Dwaarfile", &respond_config(port, "x"));
    write(d.path(), "bad.env", "A=1\nthis is not a pair\n");
    let (code, _, err) = dwaar_cmd(&["validate", "--envfile", "bad.env"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("bad.env:2: expected KEY=VALUE"), "{err}");
}

/// A quick command in the background; killed (by PID) when dropped.
struct Quick {
    child: std::process::Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Quick {
    fn start(args: &[&str], ports: &[u16]) -> Quick {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("out.log");
        let f = std::fs::File::create(&out).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let q = Quick {
            child,
            out,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(20), || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
                && (!ports.is_empty() || q.output().contains("Server address"))
        });
        assert!(up, "{args:?} did not start: {}", q.output());
        q
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Quick {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn quick_commands_answer_curl() {
    if !have_tool("curl") {
        return;
    }
    let curl = |url: &str, extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // respond: a free port chosen and printed, status, headers, placeholders.
    let q = Quick::start(
        &[
            "respond",
            "--status",
            "203",
            "-H",
            "X-Quick: yes",
            "hi {http.request.uri.path}",
        ],
        &[],
    );
    let addr = q
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("Server address: ").map(str::to_string))
        .unwrap_or_else(|| panic!("{}", q.output()));
    let r = curl(&format!("http://{addr}/there"), &[]);
    assert!(r.starts_with("HTTP/1.1 203"), "{r}");
    assert!(
        r.contains("X-Quick: yes") && r.ends_with("hi /there"),
        "{r}"
    );
    drop(q);

    // respond on a port range, body from stdin. Another test may take one of the two
    // ports between choosing them and binding: then the server exits and the range is
    // chosen again (the answers must come from this server, never from another test's).
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let body = write(dir.path(), "body.txt", "from stdin");
    let mut served = None;
    for _ in 0..5 {
        let base = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", base + 1)).is_err() {
            continue;
        }
        let range = format!("127.0.0.1:{base}-{}", base + 1);
        let f = std::fs::File::open(&body).unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(bin())
            .args(["respond", "--listen", &range])
            .stdin(f)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let up = wait_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
                || std::net::TcpStream::connect(("127.0.0.1", base + 1)).is_ok()
        });
        if !up || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.wait();
            continue;
        }
        let a = curl(&format!("http://127.0.0.1:{base}/"), &[]);
        let b = curl(&format!("http://127.0.0.1:{}/", base + 1), &[]);
        let still_ours = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        if still_ours {
            served = Some((a, b));
            break;
        }
    }
    let (a, b) = served.unwrap_or_else(|| panic!("respond never held both ports"));
    assert!(
        a.ends_with("from stdin") && b.ends_with("from stdin"),
        "{a}\n{b}"
    );

    // file-server: files, a directory listing, precompressed siblings.
    let site = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(site.path(), "hello.txt", "plain hello");
    std::fs::create_dir(site.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
    write(&site.path().join("sub"), "listed.txt", "x");
    write(site.path(), "app.js", "console.log('plain')");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"console.log('gz')").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        site.path().join("app.js.gz"),
        gz.finish().unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fport = free_port();
    let listen = format!("127.0.0.1:{fport}");
    let root = site.path().display().to_string();
    let _f = Quick::start(
        &[
            "file-server",
            "--root",
            &root,
            "--listen",
            &listen,
            "--browse",
            "--precompressed",
            "gzip",
            "--access-log",
        ],
        &[fport],
    );
    let r = curl(&format!("http://{listen}/hello.txt"), &[]);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("plain hello"),
        "{r}"
    );
    let r = curl(&format!("http://{listen}/sub/"), &[]);
    assert!(r.contains("listed.txt"), "directory listing: {r}");
    let r = curl(
        &format!("http://{listen}/app.js"),
        &["-H", "Accept-Encoding: gzip"],
    );
    assert!(
        r.to_ascii_lowercase().contains("content-encoding: gzip"),
        "precompressed: {r}"
    );
    let (code, _, err) = dwaar_cmd(&["file-server", "--templates"], site.path());
    assert_eq!(code, 1);
    assert!(err.contains("not supported yet"), "{err}");

    // reverse-proxy: to a real origin, headers both ways, Host changed on request.
    let origin = origin::http("quick");
    let pport = free_port();
    let from = format!(":{pport}");
    let to = format!("127.0.0.1:{}", origin.port);
    let _p = Quick::start(
        &[
            "reverse-proxy",
            "--from",
            &from,
            "--to",
            &to,
            "--change-host-header",
            "--header-up",
            "X-Up: 1",
            "--header-down",
            "X-Down: 2",
        ],
        &[pport],
    );
    let r = curl(&format!("http://127.0.0.1:{pport}/echo"), &[]);
    assert!(r.contains("X-Down: 2"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(
        lower.contains("h:x-up: 1"),
        "header_up reached the origin: {r}"
    );
    assert!(
        lower.contains(&format!("h:host: 127.0.0.1:{}", origin.port)),
        "--change-host-header: {r}"
    );
    let (code, _, err) = dwaar_cmd(
        &[
            "reverse-proxy",
            "--from",
            ":1",
            "--to",
            "127.0.0.1:2",
            "--insecure",
        ],
        site.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("https:// backends only"), "{err}");
}

#[test]
fn completions_load_in_their_shells() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = dwaar_cmd(&["completion", shell], d.path());
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("reverse-proxy"), "{shell}: {out}");
        write(d.path(), &format!("dwaar.{shell}"), &out);
    }
    if have_tool("bash") {
        let script = format!(
            "source {}/dwaar.bash && complete -p dwaar",
            d.path().display()
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("dwaar"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        if Command::new(shell).arg("--version").output().is_ok() {
            let out = Command::new(shell)
                .arg(check)
                .arg(d.path().join(format!("dwaar.{shell}")))
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn manual_pages_render_with_man() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = d.path().display().to_string();
    let (code, _, err) = dwaar_cmd(&["manpage", "--directory", &dir], d.path());
    assert_eq!(code, 0, "{err}");
    for page in [
        "dwaar.1",
        "dwaar-start.1",
        "dwaar-reverse-proxy.1",
        "dwaar-run.1",
    ] {
        assert!(d.path().join(page).exists(), "{page}");
    }
    assert!(!d.path().join("dwaar-help.1").exists());
    if !have_tool("man") {
        return;
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(d.path().join("dwaar-start.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dwaar-start") && text.contains("--pidfile"),
        "{text}"
    );
}

#[test]
fn build_info_environ_and_directive_list() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (code, out, _) = dwaar_cmd(&["build-info"], d.path());
    assert_eq!(code, 0);
    for want in [
        "version: ",
        "commit: ",
        "rustc: rustc ",
        "target: ",
        "pingora-core ",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let out = Command::new(bin())
        .arg("environ")
        .env("DWAAR_TEST_MARK", "seen")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DWAAR_TEST_MARK=seen") && text.contains("dwaar.storage="));
    let (code, out, _) = dwaar_cmd(&["list-directives", "--json"], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names("directives").contains(&"reverse_proxy".to_string()));
    assert!(names("global_options").contains(&"admin".to_string()));
    assert!(names("directives").contains(&"templates".to_string()));
    assert!(names("directives_not_yet").contains(&"push".to_string()));
    // A closed reader is not an error (`dwaar list-directives | head -1`).
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("{} list-directives --all | head -1", bin().display()),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
