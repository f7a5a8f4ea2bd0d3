//! `redis-server` for fleet tests: a standalone server on a free port (no persistence),
//! which a test can stop and start again on the same port, a Redis Cluster of three
//! masters made with `redis-cli --cluster create`, and a Sentinel watching a server.
//! Processes are killed by PID on drop.

use crate::{free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

/// Whether `redis-server` and `redis-cli` exist; with `DWAAR_REQUIRE_E2E=1` their
/// absence is a failure.
pub fn available() -> bool {
    crate::have_tools(&["redis-server", "redis-cli"])
}

impl Redis {
    pub fn start() -> Redis {
        Self::on(free_port(), false)
    }

    fn on(port: u16, cluster: bool) -> Redis {
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            cluster,
        };
        r.resume();
        r
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (Redis "goes down").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty, unless it is a cluster node).
    pub fn resume(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}"));
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || self.cli(&["PING"]).trim()
                == "PONG"),
            "redis-server did not start on {port}"
        );
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port whose cluster bus port (`port + 10000`) exists and is free too.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A Redis Cluster of three masters (no replicas) on free ports.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::on(cluster_port(), true)).collect();
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes };
        assert!(
            wait_until(Duration::from_secs(20), || c.nodes[0]
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")),
            "the cluster did not come up"
        );
        c
    }

    /// The seed addresses, space separated.
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::addr)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A Redis Sentinel watching `master` under the name `mymaster`.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 2000\n",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server --sentinel: {e}"));
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        let ask = || {
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["SENTINEL", "get-master-addr-by-name", "mymaster"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        assert!(
            wait_until(Duration::from_secs(10), || ask()
                .contains(&master.port.to_string())),
            "the sentinel does not know the master"
        );
        s
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
