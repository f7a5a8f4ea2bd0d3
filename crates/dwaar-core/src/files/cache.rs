//! A per-thread cache of small, frequently served files.
//!
//! An entry is used only while the file on disk still has the same device, inode,
//! size and modification time (one `stat` per request), so edits are seen at once.
//! Each thread keeps at most [`THREAD_BYTES`]; files above [`MAX_FILE`] are never
//! cached; the least recently used entry goes first.

use bytes::Bytes;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const MAX_FILE: u64 = 256 * 1024;
pub const THREAD_BYTES: usize = 16 * 1024 * 1024;

/// Identity of a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: Option<SystemTime>,
}

impl Version {
    pub fn of(m: &std::fs::Metadata) -> Version {
        use std::os::unix::fs::MetadataExt;
        Version {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
        }
    }
}

/// A cached file: its contents and the validators sent with it.
#[derive(Clone)]
pub struct Cached {
    pub data: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

struct Entry {
    version: Version,
    file: Cached,
    used: u64,
}

#[derive(Default)]
struct Cache {
    map: HashMap<PathBuf, Entry>,
    bytes: usize,
    clock: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The cached file at `path` if it is of `version`. An entry is only ever stored
/// after the file was opened and found under its root, and the same device and inode
/// mean the same file, so a hit needs no further path checks.
pub fn get(path: &Path, version: Version) -> Option<Cached> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.clock += 1;
        let clock = c.clock;
        let e = c.map.get_mut(path)?;
        if e.version != version {
            return None;
        }
        e.used = clock;
        Some(e.file.clone())
    })
}

/// Remembers `file` as the contents of `path` at `version`.
pub fn put(path: &Path, version: Version, file: Cached) {
    let data_len = file.data.len();
    if data_len as u64 > MAX_FILE {
        return;
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(old) = c.map.remove(path) {
            c.bytes -= old.file.data.len();
        }
        while c.bytes + data_len > THREAD_BYTES {
            let Some(victim) = c
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            if let Some(e) = c.map.remove(&victim) {
                c.bytes -= e.file.data.len();
            }
        }
        c.clock += 1;
        let used = c.clock;
        c.bytes += data_len;
        c.map.insert(
            path.to_path_buf(),
            Entry {
                version,
                file,
                used,
            },
        );
    });
}
