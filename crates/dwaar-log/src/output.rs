//! Where encoded batches go: stdout, stderr, a rotating file, or a network socket.
//!
//! Outputs run on their writer thread only. A batch is written with one `write` call
//! where the OS allows, and never split across files, so rotation neither loses nor
//! duplicates lines.

use dwaar_config::model::LogOutput;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A destination for batches of encoded lines.
pub trait Output: Send {
    /// Writes one batch; an error means the batch was lost.
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()>;
}

/// Builds the output for an access log. Without `soft_start`, a network destination is
/// dialled now (Caddy's rule: it must be reachable for the config to load) and that
/// connection is the one the writer uses; everything else opens lazily on the writer.
pub fn open(o: &LogOutput) -> std::io::Result<Box<dyn Output>> {
    if let LogOutput::Net {
        address,
        dial_timeout_ms,
        soft_start: false,
    } = o
    {
        let mut net = Net::new(address.clone(), Duration::from_millis(*dial_timeout_ms));
        let conn = net.connect().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("log destination {address} is unreachable ({e}); add soft_start to start anyway"),
            )
        })?;
        net.conn = Some(conn);
        return Ok(Box::new(net));
    }
    Ok(from_config(o))
}

/// Builds the output for a config (opening nothing yet: files and sockets are opened
/// lazily on the writer thread, so a slow disk or peer never stalls a reload).
pub fn from_config(o: &LogOutput) -> Box<dyn Output> {
    match o {
        LogOutput::Stdout => Box::new(Stdout),
        LogOutput::Stderr => Box::new(Stderr),
        LogOutput::Discard => Box::new(Discard),
        LogOutput::File {
            path,
            roll_size,
            roll_keep,
            roll_keep_for_ms,
            mode,
        } => Box::new(RollingFile::new(
            PathBuf::from(path),
            *roll_size,
            *roll_keep,
            Duration::from_millis(*roll_keep_for_ms),
            *mode,
        )),
        LogOutput::Net {
            address,
            dial_timeout_ms,
            ..
        } => Box::new(Net::new(
            address.clone(),
            Duration::from_millis(*dial_timeout_ms),
        )),
    }
}

struct Stdout;
impl Output for Stdout {
    fn write_batch(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(b)
    }
}

struct Stderr;
impl Output for Stderr {
    fn write_batch(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(b)
    }
}

struct Discard;
impl Output for Discard {
    fn write_batch(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// An append-only file that rolls over at a size limit.
///
/// Several processes (worker processes) may log to the same file: writes use
/// `O_APPEND`, rolling happens under an exclusive `flock` on `<file>.lock`, and a process
/// that finds the path now names a different file (another process rolled it) reopens.
pub struct RollingFile {
    path: PathBuf,
    roll_size: u64,
    keep: u32,
    keep_for: Duration,
    mode: u32,
    file: Option<(File, u64)>,
}

impl RollingFile {
    pub fn new(path: PathBuf, roll_size: u64, keep: u32, keep_for: Duration, mode: u32) -> Self {
        RollingFile {
            path,
            roll_size,
            keep,
            keep_for,
            mode,
            file: None,
        }
    }

    fn open(&self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(self.mode)
            .open(&self.path)
    }

    /// The open file, reopened when the path was rolled away by another process.
    fn current(&mut self) -> std::io::Result<&mut File> {
        let stale = match (&self.file, std::fs::metadata(&self.path)) {
            (Some((f, ino)), Ok(m)) => m.ino() != *ino || f.metadata().is_err(),
            (Some(_), Err(_)) => true,
            (None, _) => true,
        };
        if stale {
            let f = self.open()?;
            let ino = f.metadata()?.ino();
            self.file = Some((f, ino));
        }
        match &mut self.file {
            Some((f, _)) => Ok(f),
            None => Err(std::io::Error::other("log file not open")),
        }
    }

    fn roll_if_needed(&mut self, incoming: u64) -> std::io::Result<()> {
        if self.roll_size == 0 {
            return Ok(());
        }
        let size = self.current()?.metadata()?.len();
        if size == 0 || size + incoming <= self.roll_size {
            return Ok(());
        }
        let lock_path = lock_path(&self.path);
        let lock = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(self.mode)
            .open(&lock_path)?;
        let guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        // Another process may have rolled while we waited.
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + incoming > self.roll_size {
            let backup = backup_name(&self.path, SystemTime::now());
            std::fs::rename(&self.path, &backup)?;
            self.file = None;
            self.current()?;
            self.prune();
        } else {
            self.file = None;
        }
        drop(guard);
        Ok(())
    }

    /// Removes rolled files beyond `keep` (newest kept) or older than `keep_for`.
    fn prune(&self) {
        let mut rolled = rolled_files(&self.path);
        rolled.sort_by_key(|r| std::cmp::Reverse(r.1));
        let now = SystemTime::now();
        for (i, (p, t)) in rolled.iter().enumerate() {
            let too_many = self.keep > 0 && i >= self.keep as usize;
            let too_old = !self.keep_for.is_zero()
                && now
                    .duration_since(*t)
                    .map(|age| age > self.keep_for)
                    .unwrap_or(false);
            if too_many || too_old {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Output for RollingFile {
    fn write_batch(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.roll_if_needed(b.len() as u64)?;
        let f = self.current()?;
        let before = f.metadata()?.len();
        let r = f.write_all(b);
        if r.is_err() {
            // A full disk takes part of a batch: cut the file back so no half record
            // is left for the next batch to be glued to. (Only when the growth is all
            // ours: another process appending meanwhile would make it larger.)
            if let Ok(m) = f.metadata() {
                if m.len() > before && m.len() - before < b.len() as u64 {
                    let _ = f.set_len(before);
                }
            }
            self.file = None;
        }
        r
    }
}

fn lock_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// `access.log` -> `access-2026-11-29T21-10-00.123.log` (lexically sortable, like Caddy's).
pub fn backup_name(p: &Path, t: SystemTime) -> PathBuf {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let stamp = crate::encode::timestamp_text(ms)
        .trim_end_matches('Z')
        .replace(':', "-");
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut candidate = p.with_file_name(format!("{stem}-{stamp}{ext}"));
    // Several rolls within one millisecond: number them, keeping the extension.
    let mut n = 1;
    while candidate.exists() {
        candidate = p.with_file_name(format!("{stem}-{stamp}-{n}{ext}"));
        n += 1;
    }
    candidate
}

/// Rolled files of `p` with their modification times.
pub fn rolled_files(p: &Path) -> Vec<(PathBuf, SystemTime)> {
    let Some(dir) = p.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    }) else {
        return Vec::new();
    };
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{stem}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && e.path() != p && !n.ends_with(".lock")
        })
        .filter_map(|e| {
            let t = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((e.path(), t))
        })
        .collect()
}

/// A TCP or unix stream that reconnects with back-off; batches written while it is down
/// are dropped (and counted by the caller).
pub struct Net {
    address: String,
    dial_timeout: Duration,
    conn: Option<Box<dyn Write + Send>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Net {
    pub fn new(address: String, dial_timeout: Duration) -> Self {
        Net {
            address,
            dial_timeout,
            conn: None,
            retry_at: None,
            backoff: Duration::from_millis(250),
        }
    }

    /// Dials the destination once.
    fn connect(&self) -> std::io::Result<Box<dyn Write + Send>> {
        let write_timeout = Some(Duration::from_secs(5));
        if let Some(path) = self.address.strip_prefix("unix/") {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_write_timeout(write_timeout)?;
            return Ok(Box::new(s));
        }
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.address)?
            .next()
            .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
        let s = std::net::TcpStream::connect_timeout(&addr, self.dial_timeout)?;
        s.set_write_timeout(write_timeout)?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    }
}

impl Output for Net {
    fn write_batch(&mut self, b: &[u8]) -> std::io::Result<()> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(std::io::Error::other(
                    "log destination down; waiting to reconnect",
                ));
            }
            match self.connect() {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                    return Err(e);
                }
            }
        }
        let r = match self.conn.as_mut() {
            Some(c) => c.write_all(b).and_then(|_| c.flush()),
            None => Err(std::io::Error::other("not connected")),
        };
        if r.is_err() {
            self.conn = None;
            self.retry_at = Some(Instant::now() + self.backoff);
        }
        r
    }
}
