//! Certificate storage on the file system (`storage file_system <path>`).
//!
//! Layout under the root (similar in spirit to Caddy's, so operators find their way):
//!
//! ```text
//! pki/local/root.crt, root.key          the local CA (`tls internal`)
//! certificates/<issuer>/<name>/<name>.crt, .key, .json
//! acme/<issuer>/account.json            ACME account key and URL
//! challenges/http/<token>               HTTP-01 key authorisations being validated
//! challenges/tls-alpn/<name>.crt, .key  TLS-ALPN-01 certificates being validated
//! locks/<name>.lock                     one issuer per name across processes
//! ```
//!
//! Every write is atomic (a temporary file in the same directory, fsynced, then renamed),
//! so a crash never leaves half a key, and secret files are created with mode 0600.
//! Worker processes and an upgraded successor read the same directory, which is how
//! certificates and challenge answers reach every process that serves traffic.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    root: PathBuf,
}

/// Whether a file holds a secret (private keys, account keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Public,
    Secret,
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Storage {
        Storage { root: root.into() }
    }

    /// `storage` from the config, or the user's data directory.
    pub fn from_config(configured: Option<&str>) -> Storage {
        match configured {
            Some(p) => Storage::new(p),
            None => Storage::new(default_root()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.path(rel)).ok()
    }

    /// Modification time of a stored file, to notice changes made by other processes.
    pub fn modified(&self, rel: &str) -> Option<std::time::SystemTime> {
        fs::metadata(self.path(rel)).and_then(|m| m.modified()).ok()
    }

    /// Writes `data` to `rel` atomically.
    pub fn write(&self, rel: &str, data: &[u8], secrecy: Secrecy) -> Result<(), String> {
        let path = self.path(rel);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        create_dir(&dir)?;
        let mode = match secrecy {
            Secrecy::Secret => 0o600,
            Secrecy::Public => 0o644,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)?;
            // An existing temporary file keeps its old mode; make sure of the new one.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
    }

    pub fn remove(&self, rel: &str) {
        let _ = fs::remove_file(self.path(rel));
    }

    /// Takes the cross-process lock for `name` (blocking). Released on drop.
    pub fn lock(&self, name: &str) -> Result<StorageLock, String> {
        let dir = self.path("locks");
        create_dir(&dir)?;
        let path = dir.join(format!("{}.lock", safe_name(name)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open lock {}: {e}", path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))?;
        Ok(StorageLock { _lock: lock })
    }
}

/// Held while one process works on a name; other processes wait.
pub struct StorageLock {
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for StorageLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageLock")
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// `$XDG_DATA_HOME/dwaar`, `$HOME/.local/share/dwaar`, or `/var/lib/dwaar`.
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("dwaar");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/dwaar");
    }
    PathBuf::from("/var/lib/dwaar")
}

/// A name usable as a file name: `*.example.com` becomes `wildcard_.example.com`;
/// anything outside `[a-z0-9.-_]` becomes `_`.
pub fn safe_name(name: &str) -> String {
    let name = name.replacen('*', "wildcard_", 1);
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_with_modes() {
        let dir = std::env::temp_dir().join(format!("dwaar-storage-{}", std::process::id()));
        let s = Storage::new(&dir);
        s.write("a/b/key.pem", b"secret", Secrecy::Secret).unwrap();
        s.write("a/b/cert.pem", b"public", Secrecy::Public).unwrap();
        s.write("a/b/key.pem", b"secret2", Secrecy::Secret).unwrap();
        assert_eq!(s.read("a/b/key.pem").unwrap(), b"secret2");
        let mode = |p: &str| fs::metadata(s.path(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("a/b/key.pem"), 0o600);
        assert_eq!(mode("a/b/cert.pem"), 0o644);
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(s.path("a/b"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("*.Example.com"), "wildcard_.example.com");
        assert_eq!(safe_name("../etc/passwd"), "_etc_passwd");
        assert_eq!(safe_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(safe_name("::1"), "__1");
    }
}
