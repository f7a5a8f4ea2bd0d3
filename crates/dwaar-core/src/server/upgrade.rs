//! Zero-downtime binary upgrade: the running process starts its successor and hands it
//! every listening socket over a private unix socket (`SCM_RIGHTS`, see [`super::fdpass`]).
//!
//! The successor is the binary now on disk at the path this process was started from,
//! with the same arguments. It adopts the sockets, starts serving, and answers `ready`;
//! only then does the old process stop accepting and drain. Because both processes hold
//! the same kernel sockets, connections waiting in the accept queue are never reset. If
//! the successor fails to start (a bad config, a broken binary), the old process keeps
//! serving and the caller gets the error.

use super::fdpass;
use super::sockets::{self, SharedSpec, Snapshot};
use serde::{Deserialize, Serialize};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the successor's environment: where to collect the sockets.
pub const HANDOFF_ENV: &str = "DWAAR_UPGRADE_SOCKET";
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How this process was started, captured at startup (before the binary can change).
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

impl Relaunch {
    pub fn current() -> Option<Relaunch> {
        Some(Relaunch {
            exe: std::env::current_exe().ok()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// An extra socket handed over next to the proxy listeners (the admin API).
pub struct Extra<'a> {
    pub fd: BorrowedFd<'a>,
    /// The socket path when it is a unix socket.
    pub unix_path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Handoff {
    specs: Vec<SharedSpec>,
    /// The running config: the successor serves exactly what was live (which may have
    /// come from `POST /load`, not from the file).
    config: Option<Box<dwaar_config::model::Config>>,
    /// The admin token, which the config's JSON form never carries.
    admin_token: Option<String>,
    /// Present when the last descriptor is the extra socket.
    extra: Option<ExtraSocket>,
}

#[derive(Serialize, Deserialize)]
struct ExtraSocket {
    unix_path: Option<PathBuf>,
}

/// Starts the successor and hands it the sockets; returns its PID once it serves.
pub fn hand_over(
    relaunch: &Relaunch,
    snapshot: &Snapshot,
    config: &dwaar_config::model::Config,
    extra: Option<Extra<'_>>,
) -> Result<u32, String> {
    let dir = std::env::temp_dir().join(format!("dwaar-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = hand_over_in(&dir, relaunch, snapshot, config, extra);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn hand_over_in(
    dir: &std::path::Path,
    relaunch: &Relaunch,
    snapshot: &Snapshot,
    config: &dwaar_config::model::Config,
    extra: Option<Extra<'_>>,
) -> Result<u32, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let path = dir.join("handoff.sock");
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("cannot open the handoff socket: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut child = Command::new(&relaunch.exe)
        .args(&relaunch.args)
        .env(HANDOFF_ENV, &path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", relaunch.exe.display()))?;
    let pid = child.id();
    let fail = |child: &mut std::process::Child, why: String| -> String {
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    // Wait for the successor to connect (or to die trying).
    let started = Instant::now();
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the new process exited before taking over ({status}); see its log"
                    ));
                }
                if started.elapsed() > ACCEPT_TIMEOUT {
                    return Err(fail(
                        &mut child,
                        "the new process did not ask for the sockets in time".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(&mut child, format!("handoff accept failed: {e}"))),
        }
    };
    let _ = conn.set_nonblocking(false);
    let (specs, mut fds) = sockets::export(snapshot, 0, 1);
    let handoff = Handoff {
        specs,
        config: Some(Box::new(config.clone())),
        admin_token: config.global.admin.token.clone(),
        extra: extra.as_ref().map(|e| ExtraSocket {
            unix_path: e.unix_path.clone(),
        }),
    };
    if let Some(e) = &extra {
        fds.push(e.fd);
    }
    let payload = serde_json::to_vec(&handoff).map_err(|e| e.to_string())?;
    if let Err(e) = fdpass::send(&mut conn, &payload, &fds) {
        return Err(fail(&mut child, format!("cannot send the sockets: {e}")));
    }
    let _ = conn.set_read_timeout(Some(READY_TIMEOUT));
    match fdpass::recv(&mut conn) {
        Ok(Some((msg, _))) if msg == b"ready" => {
            // The child lives on after we exit; do not wait for it.
            drop(child);
            Ok(pid)
        }
        Ok(Some((msg, _))) => Err(fail(
            &mut child,
            format!("the new process failed: {}", String::from_utf8_lossy(&msg)),
        )),
        Ok(None) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "the new process exited before it was ready ({status}); see its log"
            ))
        }
        Err(e) => Err(fail(
            &mut child,
            format!("the new process did not become ready: {e}"),
        )),
    }
}

/// The successor's side: sockets from the predecessor, and the channel to report on.
pub struct Inherited {
    pub sockets: Snapshot,
    /// The config the predecessor was serving.
    pub config: Option<Box<dwaar_config::model::Config>>,
    /// The extra socket, with its unix path when it is one.
    pub extra: Option<(OwnedFd, Option<PathBuf>)>,
    conn: UnixStream,
}

impl Inherited {
    /// Collects the sockets when this process was started by [`hand_over`].
    pub fn take() -> Result<Option<Inherited>, String> {
        let Some(path) = std::env::var_os(HANDOFF_ENV) else {
            return Ok(None);
        };
        let mut conn = UnixStream::connect(&path)
            .map_err(|e| format!("cannot reach the old process for the upgrade: {e}"))?;
        let (payload, mut fds) = fdpass::recv(&mut conn)
            .map_err(|e| format!("upgrade handoff failed: {e}"))?
            .ok_or("the old process closed the handoff")?;
        let h: Handoff =
            serde_json::from_slice(&payload).map_err(|e| format!("bad upgrade handoff: {e}"))?;
        let extra = match h.extra {
            Some(x) => {
                let fd = fds.pop().ok_or("upgrade handoff lacks the admin socket")?;
                Some((fd, x.unix_path))
            }
            None => None,
        };
        let sockets = sockets::import(h.specs, fds)?;
        let config = h.config.map(|mut c| {
            c.global.admin.token = h.admin_token;
            c
        });
        Ok(Some(Inherited {
            sockets,
            config,
            extra,
            conn,
        }))
    }

    /// Tells the old process we serve; it then drains and exits.
    pub fn ready(mut self) {
        if let Err(e) = fdpass::send(&mut self.conn, b"ready", &[]) {
            tracing::warn!("could not confirm the upgrade to the old process: {e}");
        }
    }

    /// Tells the old process we could not start, so it keeps serving.
    pub fn failed(mut self, why: &str) {
        let _ = fdpass::send(&mut self.conn, why.as_bytes(), &[]);
    }
}
