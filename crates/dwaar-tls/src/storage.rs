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
//!
//! With `storage redis`, the same paths are keys in Redis, shared by every instance of
//! a fleet, and the directory (`local_copy`, else the data directory) keeps a copy of
//! everything read or written: when Redis cannot be reached, reads come from the copy
//! and writes land there (and in Redis once it answers again for later writes). Locks
//! are then fleet-wide ([`dwaar_fleet::lock`]), so one instance orders a certificate
//! while the others wait and load its result.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    /// `storage redis`: the fleet's shared store (`root` then holds the local copy).
    fleet: Option<std::sync::Arc<dwaar_fleet::Fleet>>,
}

impl PartialEq for Storage {
    fn eq(&self, other: &Storage) -> bool {
        self.root == other.root
            && self.fleet.as_ref().map(|f| &f.cfg) == other.fleet.as_ref().map(|f| &f.cfg)
    }
}

impl Eq for Storage {}

/// Whether a file holds a secret (private keys, account keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Public,
    Secret,
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Storage {
        Storage {
            root: root.into(),
            fleet: None,
        }
    }

    /// The storage a config's global options describe: `storage redis` (with its local
    /// copy), else `storage file_system`, else the user's data directory.
    pub fn for_config(g: &dwaar_config::model::GlobalTls) -> Storage {
        let Some(r) = &g.redis else {
            return Storage::from_config(g.storage.as_deref());
        };
        let root = r
            .local_copy
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or_else(default_root);
        match dwaar_fleet::fleet(r) {
            Ok(f) => Storage {
                root,
                fleet: Some(f),
            },
            Err(e) => {
                tracing::error!("storage redis: {e}; storing locally only");
                Storage::new(root)
            }
        }
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
        let local = || fs::read(self.path(rel)).ok();
        let Some(fleet) = &self.fleet else {
            return local();
        };
        match fleet.get(rel) {
            Ok(Some(v)) => {
                // Keep the local copy current for the day Redis is unreachable.
                if local().as_deref() != Some(&v[..]) {
                    let _ = self.write_local(rel, &v, secrecy_of(rel));
                }
                Some(v)
            }
            // Challenge answers are short-lived and removed from the fleet after
            // validation: a local copy must not bring one back.
            Ok(None) if rel.starts_with("challenges/") => None,
            Ok(None) => {
                // Something stored before the fleet shared it: share it now.
                let v = local()?;
                let _ = fleet.set(rel, &v);
                Some(v)
            }
            Err(_) => local(),
        }
    }

    /// Modification time of a stored file, to notice changes made by other processes.
    pub fn modified(&self, rel: &str) -> Option<std::time::SystemTime> {
        if let Some(fleet) = &self.fleet {
            if let Ok(t) = fleet.modified(rel) {
                return t.map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
            }
        }
        fs::metadata(self.path(rel)).and_then(|m| m.modified()).ok()
    }

    /// Writes `data` to `rel` atomically (and to the fleet's store, with one).
    pub fn write(&self, rel: &str, data: &[u8], secrecy: Secrecy) -> Result<(), String> {
        self.write_local(rel, data, secrecy)?;
        if let Some(fleet) = &self.fleet {
            if let Err(e) = fleet.set(rel, data) {
                tracing::warn!(path = rel, "kept locally only: {e}");
            }
        }
        Ok(())
    }

    fn write_local(&self, rel: &str, data: &[u8], secrecy: Secrecy) -> Result<(), String> {
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
        if let Some(fleet) = &self.fleet {
            let _ = fleet.remove(rel);
        }
    }

    /// Takes the lock for `name` (blocking): fleet-wide with `storage redis` (waiting up
    /// to 10 minutes for another instance), else across this machine's processes.
    /// Released on drop. With Redis unreachable, the machine-wide lock is taken.
    pub fn lock(&self, name: &str) -> Result<StorageLock, String> {
        if let Some(fleet) = &self.fleet {
            let ttl = std::time::Duration::from_secs(60);
            let wait = std::time::Duration::from_secs(600);
            match dwaar_fleet::lock::acquire(fleet, &safe_name(name), ttl, wait) {
                Ok(l) => return Ok(StorageLock::Fleet(l)),
                Err(e) if fleet.is_up() => return Err(e),
                Err(e) => tracing::warn!(
                    lock = name,
                    "fleet lock unavailable ({e}); locking this machine only"
                ),
            }
        }
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
        Ok(StorageLock::File(lock))
    }
}

/// Keys and account files are secret; the rest is public.
fn secrecy_of(rel: &str) -> Secrecy {
    if rel.ends_with(".key") || rel.contains("account") || rel.starts_with("tickets/") {
        Secrecy::Secret
    } else {
        Secrecy::Public
    }
}

/// Held while one process (or fleet instance) works on a name; the others wait.
pub enum StorageLock {
    File(nix::fcntl::Flock<File>),
    Fleet(dwaar_fleet::lock::FleetLock),
}

impl StorageLock {
    /// Whether the lock is still this holder's (a fleet lock can expire during a long
    /// pause; a file lock cannot).
    pub fn still_held(&self) -> bool {
        match self {
            StorageLock::File(_) => true,
            StorageLock::Fleet(l) => l.still_held(),
        }
    }
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
/// How long after it expired a stored certificate is kept.
pub const EXPIRED_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes certificates (and their keys and the rest of their directory) that expired
/// more than [`EXPIRED_KEPT`] before `now` from `certificates/<ca>/<name>/`; returns how
/// many. Directories whose certificate cannot be read are left alone.
pub fn clean_expired(storage: &Storage, now: std::time::SystemTime) -> usize {
    let mut removed = 0;
    let Ok(cas) = fs::read_dir(storage.path("certificates")) else {
        return 0;
    };
    for ca in cas.flatten() {
        let Ok(names) = fs::read_dir(ca.path()) else {
            continue;
        };
        for dir in names.flatten().map(|e| e.path()) {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let Ok(pem) = fs::read(dir.join(format!("{name}.crt"))) else {
                continue;
            };
            let leaf = rustls_pemfile::certs(&mut pem.as_slice()).next();
            let Some(Ok(leaf)) = leaf else {
                continue;
            };
            let Ok((_, _, not_after)) = crate::certs::leaf_facts(&leaf) else {
                continue;
            };
            if not_after + EXPIRED_KEPT < now && fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

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

#[cfg(test)]
mod cleaning {
    use super::*;

    fn store_cert(storage: &Storage, name: &str, not_after: time::OffsetDateTime) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        p.not_before = not_after - time::Duration::days(90);
        p.not_after = not_after;
        let cert = p.self_signed(&key).expect("cert");
        let dir = format!("certificates/ca/{name}/{name}");
        storage
            .write(
                &format!("{dir}.crt"),
                cert.pem().as_bytes(),
                Secrecy::Public,
            )
            .expect("write");
        storage
            .write(
                &format!("{dir}.key"),
                key.serialize_pem().as_bytes(),
                Secrecy::Secret,
            )
            .expect("write");
    }

    #[test]
    fn expired_certificates_leave_storage_a_day_later() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let storage = Storage::new(tmp.path());
        let now = time::OffsetDateTime::now_utc();
        store_cert(&storage, "old.example.com", now - time::Duration::days(3));
        store_cert(
            &storage,
            "recent.example.com",
            now - time::Duration::hours(2),
        );
        store_cert(
            &storage,
            "valid.example.com",
            now + time::Duration::days(30),
        );
        assert_eq!(clean_expired(&storage, std::time::SystemTime::now()), 1);
        let left = |n: &str| storage.path(&format!("certificates/ca/{n}")).exists();
        assert!(!left("old.example.com"));
        assert!(left("recent.example.com"));
        assert!(left("valid.example.com"));
    }
}
