//! Test helpers for Dwaar's end-to-end tests (never shipped in the binary).
//!
//! - [`origin`]: mock backends on 127.0.0.1 ephemeral ports (echo, status, slow, SSE,
//!   connection-dropping, health toggles, WebSocket echo, h2c).
//! - [`client`]: a small raw HTTP/1.1 client that shows exactly what went over the wire.
//! - [`proxy`]: start the real `dwaar` binary with a Dwaarfile and wait until it serves.
//! - [`tls`]: a blocking HTTPS client exposing handshake facts; [`pebble`]: a local ACME CA.
//!
//! Synchronisation is by polling with a deadline, never by fixed sleeps.

pub mod balancer;
pub mod bind;
pub mod client;
pub mod dns_apis;
pub mod dnsmasq;
pub mod grpc;
pub mod h3;
pub mod origin;
pub mod otlp;
pub mod pages;
pub mod paths;
pub mod pebble;
pub mod php;
pub mod proxy;
pub mod redis;
pub mod stub;
pub mod tls;

use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1 and that no other caller in this
/// process got. Ports come from below the kernel's ephemeral range (32768+), so the
/// outgoing connections of a busy test run cannot take them before they are bound.
/// Whether the outside programs `names` are all installed. With `DWAAR_REQUIRE_E2E=1` a
/// missing one fails the test; otherwise the caller skips.
pub fn have_tools(names: &[&str]) -> bool {
    for name in names {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found || std::env::var("DWAAR_REQUIRE_E2E").as_deref() != Ok("1"),
            "{name} is required (scripts/bootstrap installs it)"
        );
        if !found {
            return false;
        }
    }
    true
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts in its own slice of 10000..32000.
    let base = 10_000 + (std::process::id() % 40) * 550;
    for _ in 0..22_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (10_000 + (base - 10_000 + n) % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
