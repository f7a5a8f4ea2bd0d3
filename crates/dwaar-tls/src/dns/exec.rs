//! The `exec` DNS provider: any DNS service reached through a program of the user's,
//! run as `<command> [args] present <record-name> <value>` and later `... cleanup
//! <record-name> <value>` (the record name ends with a dot). Exit status 0 is success;
//! the zone is in `DWAAR_DNS_ZONE`, the TTL in `DWAAR_DNS_TTL`.

use super::TxtRecord;
use std::time::Duration;

pub struct Exec {
    pub command: Vec<String>,
}

impl Exec {
    async fn run(&self, action: &str, r: &TxtRecord) -> Result<(), String> {
        let (prog, args) = self.command.split_first().ok_or("dns exec: no command")?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .arg(action)
            .arg(format!("{}.", r.name))
            .arg(&r.value)
            .env("DWAAR_DNS_ZONE", format!("{}.", r.zone))
            .env("DWAAR_DNS_TTL", r.ttl.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .map_err(|_| format!("dns exec {prog} {action}: still running after 2 minutes"))?
            .map_err(|e| format!("dns exec {prog}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "dns exec {prog} {action} failed ({}): {}",
                out.status,
                err.trim()
            ))
        }
    }

    pub async fn present(&self, r: &TxtRecord) -> Result<(), String> {
        self.run("present", r).await
    }

    pub async fn cleanup(&self, r: &TxtRecord) -> Result<(), String> {
        self.run("cleanup", r).await
    }
}
