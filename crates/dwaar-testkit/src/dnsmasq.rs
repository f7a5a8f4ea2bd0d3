//! dnsmasq (Debian's `dnsmasq-base`) as a real DNS server on a free local UDP port:
//! names from a hosts file (read again on [`Dnsmasq::set_hosts`]) and whatever other
//! options a test adds (`--srv-host=...`, `--address=/zone/ip`). Killed (by PID) on drop.

use crate::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    hosts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Whether dnsmasq is installed; with `DWAAR_REQUIRE_E2E=1` its absence is a failure.
pub fn available() -> bool {
    crate::have_tools(&["dnsmasq"])
}

/// A port free for UDP (and TCP) on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    loop {
        let p = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

impl Dnsmasq {
    /// Starts dnsmasq on `port` (a free one when `None`) answering from `hosts` (a
    /// hosts file's text, TTL 1 s) and `options`.
    pub fn start(hosts: &str, options: &[String], port: Option<u16>) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap_or_else(|e| panic!("{e}"));
        let port = port.unwrap_or_else(free_udp_port);
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("dnsmasq: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq {
            child,
            port,
            hosts: file,
            _dir: dir,
        }
    }

    /// Rewrites the hosts file and makes dnsmasq read it again.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap_or_else(|e| panic!("{e}"));
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
