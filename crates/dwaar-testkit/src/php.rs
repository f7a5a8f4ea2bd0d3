//! Debian's `php-fpm`, run in the foreground for FastCGI end-to-end tests: one pool on
//! a TCP port and one on a unix socket, with the status page on. Killed on drop.

use crate::{free_port, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PhpFpm {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub socket: PathBuf,
}

/// The php-fpm binary, if installed. With `DWAAR_REQUIRE_E2E=1` its absence fails.
pub fn binary() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/sbin").ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("php-fpm"))
            })
            .max()
    });
    if found.is_none() && std::env::var("DWAAR_REQUIRE_E2E").is_ok_and(|v| v == "1") {
        panic!("php-fpm is not installed but DWAAR_REQUIRE_E2E=1 (apt-get install php-fpm)");
    }
    found
}

impl PhpFpm {
    pub fn start(bin: &std::path::Path) -> PhpFpm {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let socket = dir.path().join("fpm.sock");
        let d = dir.path().display();
        let conf = format!(
            "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\ndaemonize = no\n\n\
             [tcp]\nlisten = 127.0.0.1:{port}\npm = static\npm.max_children = 8\n\
             pm.status_path = /fpm-status\nclear_env = no\ncatch_workers_output = yes\n\n\
             [unix]\nlisten = {}\nlisten.mode = 0666\npm = static\npm.max_children = 1\n\
             clear_env = no\n",
            socket.display()
        );
        let conf_path = dir.path().join("fpm.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::process::CommandExt;
        // Its own process group: the workers go down with the master on drop.
        let child = Command::new(bin)
            .process_group(0)
            .args(["-F", "-R", "-y"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("php-fpm: {e}"));
        let p = PhpFpm {
            child,
            dir,
            port,
            socket,
        };
        let up = wait_until(Duration::from_secs(15), || {
            p.socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "php-fpm did not start: {}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fpm.log")).unwrap_or_default()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
