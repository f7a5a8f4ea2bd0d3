//! BIND 9 (`named`) as the authoritative DNS server of DNS-01 tests: zones that accept
//! TSIG-signed RFC 2136 updates of TXT records, on 127.0.0.1 and a free port (UDP and
//! TCP). Records are read back with `dig` and changed by stand-ins with `nsupdate`, the
//! BIND tools. The server is killed (by PID) on drop.

use crate::dnsmasq::free_udp_port;
use crate::wait_until;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The TSIG key every test zone accepts updates from (base64 of 32 bytes).
pub const KEY_NAME: &str = "dwaar-acme";
pub const KEY_SECRET: &str = "ZHdhYXItdGVzdC10c2lnLWtleS0zMi1ieXRlcy1sb25n";

pub struct Bind {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Whether `named`, `dig` and `nsupdate` exist; with `DWAAR_REQUIRE_E2E=1` their
/// absence is a failure.
pub fn available() -> bool {
    crate::have_tools(&["/usr/sbin/named", "dig", "nsupdate"])
}

impl Bind {
    /// Starts `named` serving `zones`, each with a SOA, an NS and `*`/apex A records
    /// pointing at 127.0.0.1.
    pub fn start(zones: &[&str]) -> Bind {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_udp_port();
        let d = dir.path().display().to_string();
        let mut conf = format!(
            "options {{\n\tdirectory \"{d}\";\n\tlisten-on port {port} {{ 127.0.0.1; }};\n\tlisten-on-v6 {{ none; }};\n\trecursion no;\n\tpid-file \"{d}/named.pid\";\n\tdnssec-validation no;\n\tallow-query {{ any; }};\n}};\ncontrols {{ }};\nkey \"{KEY_NAME}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{KEY_SECRET}\";\n}};\n"
        );
        for z in zones {
            conf.push_str(&format!(
                "zone \"{z}\" {{\n\ttype primary;\n\tfile \"{d}/{z}.zone\";\n\tupdate-policy {{ grant {KEY_NAME} zonesub TXT; }};\n}};\n"
            ));
            let zone = format!(
                "$TTL 60\n@ IN SOA ns1.{z}. admin.{z}. 1 3600 600 86400 1\n@ IN NS ns1.{z}.\nns1 IN A 127.0.0.1\n@ IN A 127.0.0.1\n* IN A 127.0.0.1\n"
            );
            std::fs::write(dir.path().join(format!("{z}.zone")), zone)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("{e}"));
        let log =
            std::fs::File::create(dir.path().join("named.log")).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("/usr/sbin/named")
            .arg("-g")
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("named: {e}"));
        let b = Bind { child, port, dir };
        let up = wait_until(Duration::from_secs(20), || {
            zones.iter().all(|z| !b.dig(z, "SOA").is_empty())
        });
        assert!(up, "named did not start:\n{}", b.log());
        b
    }

    /// `127.0.0.1:<port>`: the `resolvers` / `server` address for Dwaar.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The records of `name`/`rtype` (`dig +short`), one per line.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                name,
                rtype,
                "+short",
                "+time=2",
                "+tries=1",
            ])
            .output()
            .unwrap_or_else(|e| panic!("dig: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(|l| l.trim_matches('"').to_string())
            .collect()
    }

    /// Applies `nsupdate` commands (`update add ...`, `update delete ...`) to `zone`,
    /// signed with the test key.
    pub fn nsupdate(&self, zone: &str, commands: &[String]) -> Result<(), String> {
        use std::io::Write;
        let mut script = format!("server 127.0.0.1 {}\nzone {zone}\n", self.port);
        for c in commands {
            script.push_str(c);
            script.push('\n');
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .args(["-y", &format!("hmac-sha256:{KEY_NAME}:{KEY_SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nsupdate: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
