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
    log: PathBuf,
}

impl Dwaar {
    /// Writes `dwaarfile` to a temp dir, starts `bin run --config` on it, and waits until
    /// every port in `ports` accepts connections.
    pub fn start(bin: &Path, dwaarfile: &str, ports: &[u16]) -> Dwaar {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("Dwaarfile");
        std::fs::write(&config, dwaarfile).unwrap_or_else(|e| panic!("write config: {e}"));
        let log = dir.path().join("dwaar.log");
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let err_file = log_file.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--threads", "1"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn dwaar: {e}"));
        let mut d = Dwaar {
            child,
            dir,
            config,
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
