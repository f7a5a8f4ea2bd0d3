//! Starting the real `dwaar` binary for a test.

use crate::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `dwaar run`; killed (by PID) when dropped.
pub struct Dwaar {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The admin API address (`127.0.0.1:PORT`), unless the config sets its own.
    pub admin: String,
    log: PathBuf,
}

impl Dwaar {
    /// Writes `dwaarfile` to a temp dir, starts `bin run --config` on it, and waits until
    /// every port in `ports` accepts connections.
    pub fn start(bin: &Path, dwaarfile: &str, ports: &[u16]) -> Dwaar {
        Self::start_with(bin, dwaarfile, ports, &["--threads", "1"])
    }

    /// Like [`Dwaar::start`] with extra `run` arguments (replacing `--threads 1`).
    pub fn start_with(bin: &Path, dwaarfile: &str, ports: &[u16], args: &[&str]) -> Dwaar {
        Self::start_env(bin, dwaarfile, ports, args, &[])
    }

    /// Like [`Dwaar::start_with`] with extra environment variables.
    pub fn start_env(
        bin: &Path,
        dwaarfile: &str,
        ports: &[u16],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Dwaar {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("Dwaarfile");
        std::fs::write(&config, dwaarfile).unwrap_or_else(|e| panic!("write config: {e}"));
        let log = dir.path().join("dwaar.log");
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let err_file = log_file.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let admin = format!("127.0.0.1:{}", crate::free_port());
        // The `pingora_path` test binary runs the suites with the fast path off.
        let fast = !std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|n| n.starts_with("pingora_path"));
        let child = Command::new(bin)
            .env("DWAAR_FAST_PATH", if fast { "1" } else { "0" })
            .args(["run", "--config"])
            .arg(&config)
            .args(args)
            .env("DWAAR_ADMIN", &admin)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn dwaar: {e}"));
        let mut d = Dwaar {
            child,
            dir,
            config,
            admin,
            log,
        };
        let up = wait_until(Duration::from_secs(20), || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        if !up {
            let status = d.child.try_wait().ok().flatten();
            panic!(
                "dwaar did not start listening on {ports:?} (exit: {status:?}); log:\n{}",
                d.log_text()
            );
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the config file's contents.
    pub fn write_config(&self, dwaarfile: &str) {
        std::fs::write(&self.config, dwaarfile).unwrap_or_else(|e| panic!("write config: {e}"));
    }

    /// Sends a signal to the process (by PID).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(timeout, || match self.child.try_wait() {
            Ok(Some(s)) => {
                code = s.code();
                true
            }
            _ => false,
        });
        code
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of `series` (a metric name with its labels, as written in `/metrics`)
    /// from the admin API; `None` when it is missing or the API does not answer.
    pub fn metric(&self, series: &str) -> Option<u64> {
        let port: u16 = self.admin.rsplit(':').next()?.parse().ok()?;
        let page = crate::client::get(port, &self.admin, "/metrics").ok()?;
        page.text().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// The process's resident memory in KiB (0 when it cannot be read).
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Dwaar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
