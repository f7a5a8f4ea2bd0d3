//! `dwaar trust` / `dwaar untrust`: the local CA root in the system trust store.
//!
//! On Debian-like systems the root is copied to
//! `/usr/local/share/ca-certificates/dwaar-local-ca.crt` and `update-ca-certificates`
//! rebuilds `/etc/ssl/certs`; curl, OpenSSL and anything reading the system bundle then
//! trust sites served with `tls internal`. `DWAAR_TRUST_DIR` moves the directory (for
//! tests and unusual layouts).

use crate::ca::{LocalCa, ROOT_CERT};
use crate::storage::Storage;
use std::path::PathBuf;
use std::process::Command;

const FILE_NAME: &str = "dwaar-local-ca.crt";

fn trust_dir() -> PathBuf {
    std::env::var_os("DWAAR_TRUST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/share/ca-certificates"))
}

fn refresh(fresh: bool) -> Result<String, String> {
    let mut cmd = Command::new("update-ca-certificates");
    if fresh {
        cmd.arg("--fresh");
    }
    let out = cmd.output().map_err(|e| {
        format!("cannot run update-ca-certificates: {e} (is ca-certificates installed?)")
    })?;
    if !out.status.success() {
        return Err(format!(
            "update-ca-certificates failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs the local CA root (creating the CA if needed). Returns where it went.
pub fn trust(storage: &Storage) -> Result<PathBuf, String> {
    crate::install_provider();
    let ca = LocalCa::load_or_create(storage)?;
    let dir = trust_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dest = dir.join(FILE_NAME);
    std::fs::write(&dest, ca.root_pem())
        .map_err(|e| format!("cannot write {}: {e} (run as root?)", dest.display()))?;
    refresh(false)?;
    Ok(dest)
}

/// Removes the root from the system store. Returns the removed file, if there was one.
pub fn untrust() -> Result<Option<PathBuf>, String> {
    let dest = trust_dir().join(FILE_NAME);
    if !dest.exists() {
        return Ok(None);
    }
    std::fs::remove_file(&dest)
        .map_err(|e| format!("cannot remove {}: {e} (run as root?)", dest.display()))?;
    refresh(true)?;
    Ok(Some(dest))
}

/// Where the root certificate is stored, for `--cacert` style use.
pub fn root_path(storage: &Storage) -> PathBuf {
    storage.path(ROOT_CERT)
}
