//! The service manager's readiness protocol (systemd's `sd_notify`): one datagram of
//! `KEY=VALUE` lines per state change, sent to the unix socket named by `$NOTIFY_SOCKET`.
//!
//! The binary [`install`]s a notifier in the process that answers to the service manager
//! (the single process, or the supervisor of worker processes; never a worker). The rest
//! of the server reports through the free functions here, which do nothing when no
//! notifier is installed, so they cost one atomic load outside systemd. Sending never
//! blocks and its errors are ignored: a service manager that went away must not stop
//! the server.
//!
//! Messages: `READY=1` once serving, `RELOADING=1` with `MONOTONIC_USEC` when a reload
//! starts and `READY=1` when it ended (either way), `STOPPING=1` when a graceful stop
//! begins, `STATUS=` with a one-line summary, `WATCHDOG=1` on the interval the manager
//! asked for, and `MAINPID=` from the successor of a binary upgrade (the unit needs
//! `NotifyAccess=all` to accept it).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Connects this process to the service manager's socket, given as `$NOTIFY_SOCKET`
/// holds it: a path, or `@name` for the abstract namespace.
pub fn install(socket: &std::ffi::OsStr) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let target = match bytes.split_first() {
        None => return Err("NOTIFY_SOCKET is empty".into()),
        Some((b'@', name)) => abstract_address(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(socket))
            .map_err(|e| format!("NOTIFY_SOCKET {socket:?}: {e}"))?,
        Some(_) => {
            return Err(format!(
                "NOTIFY_SOCKET {socket:?} is neither an absolute path nor an @abstract name"
            ))
        }
    };
    let socket = UnixDatagram::unbound().map_err(|e| format!("notify socket: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("notify socket: {e}"))?;
    NOTIFIER
        .set(Notifier { socket, target })
        .map_err(|_| "the notify socket is already set".to_string())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(|e| format!("NOTIFY_SOCKET: {e}"))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> Result<SocketAddr, String> {
    Err("abstract NOTIFY_SOCKET names exist on Linux only".into())
}

/// Whether a notifier is installed.
pub fn active() -> bool {
    NOTIFIER.get().is_some()
}

/// Sends one message (lines of `KEY=VALUE`).
pub fn send(message: &str) {
    if let Some(n) = NOTIFIER.get() {
        if let Err(e) = n.socket.send_to_addr(message.as_bytes(), &n.target) {
            tracing::debug!("notify: {e}");
        }
    }
}

/// The server serves; `status` says what.
pub fn ready(status: &str) {
    if active() {
        send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }
}

/// The successor of a binary upgrade serves and is now the service's main process.
pub fn ready_as_main(status: &str) {
    if active() {
        send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ));
    }
}

/// A reload starts now.
pub fn reloading() {
    if active() {
        send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
    }
}

/// A graceful stop begins.
pub fn stopping() {
    if active() {
        send("STOPPING=1\nSTATUS=stopping: finishing requests in flight");
    }
}

/// Tells the watchdog this process is alive.
pub fn watchdog() {
    send("WATCHDOG=1");
}

/// The keep-alive interval the service manager asked for (`WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` names it): half the timeout, as systemd advises.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares reload times with.
fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("4000000"), None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_interval(Some("4000000"), Some(&me)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_interval(Some("4000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }
}
