//! `dwaar start`: runs `dwaar run` in the background and returns once it serves.
//!
//! The child is told where to report through the same readiness protocol systemd uses
//! (`NOTIFY_SOCKET`, see `dwaar_core::server::notify`): `start` binds a private datagram
//! socket, waits for `READY=1`, and returns 0. If the child exits first (a config error,
//! a port in use), its diagnostics are already on stderr and `start` returns non-zero.
//! The child runs in its own process group, so a Ctrl-C at the terminal that ran
//! `start` does not reach it; stop it with `dwaar stop` or a signal to its PID.
//!
//! Output: on a terminal the child keeps writing its log there (as Caddy does). When
//! stdout or stderr is a pipe or file, `start` forwards what the child writes until it
//! is ready and then lets go of it, so `out=$(dwaar start)` returns instead of waiting
//! for the server to exit; such a server logs where its config's `log` option says.

use crate::ServeArgs;
use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn start(args: &ServeArgs) -> i32 {
    // Fail fast, with the same message `run` would print, when there is no config.
    if let Err(e) = dwaar_config::resolve_config_path(args.config.config.as_deref()) {
        eprintln!("error: {e}");
        return 1;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return 1;
        }
    };
    let dir = std::env::temp_dir();
    let socket_path = dir.join(format!("dwaar-start-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let socket = match UnixDatagram::bind(&socket_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot create {}: {e}", socket_path.display());
            return 1;
        }
    };
    let _cleanup = RemoveOnDrop(socket_path.clone());
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));

    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args(run_args(args))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .process_group(0);
    let out_tty = std::io::stdout().is_terminal();
    let err_tty = std::io::stderr().is_terminal();
    if !out_tty {
        cmd.stdout(Stdio::piped());
    }
    if !err_tty {
        cmd.stderr(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot start dwaar run: {e}");
            return 1;
        }
    };
    let forwarders = [
        child.stdout.take().map(|r| forward(r, std::io::stdout())),
        child.stderr.take().map(|r| forward(r, std::io::stderr())),
    ];
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == "READY=1") {
                println!(
                    "dwaar is running in the background (pid {}); stop it with: dwaar stop",
                    child.id()
                );
                return 0;
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                for f in forwarders.into_iter().flatten() {
                    let _ = f.join();
                }
                eprintln!("error: dwaar did not start ({status})");
                return status.code().filter(|c| *c != 0).unwrap_or(1);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: cannot watch the started process: {e}");
                return 1;
            }
        }
    }
}

/// Copies the child's output to ours on a thread (until the child closes it or this
/// process exits).
fn forward(
    mut from: impl std::io::Read + Send + 'static,
    mut to: impl std::io::Write + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                break;
            }
        }
    })
}

/// The `dwaar run` arguments that reproduce `start`'s.
fn run_args(a: &ServeArgs) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut flag = |name: &str, value: std::ffi::OsString| {
        out.push(name.into());
        out.push(value);
    };
    if let Some(c) = &a.config.config {
        flag("--config", c.clone().into_os_string());
    }
    if let Some(ad) = a.config.adapter {
        let name = match ad {
            crate::Adapter::Caddyfile => "caddyfile",
            crate::Adapter::Dwaarfile => "dwaarfile",
        };
        flag("--adapter", name.into());
    }
    for e in &a.envfile {
        flag("--envfile", e.clone().into_os_string());
    }
    if let Some(p) = &a.pidfile {
        flag("--pidfile", p.clone().into_os_string());
    }
    if let Some(t) = a.threads {
        flag("--threads", t.to_string().into());
    }
    if let Some(w) = a.workers {
        flag("--workers", w.to_string().into());
    }
    if a.watch {
        out.push("--watch".into());
    }
    out
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
