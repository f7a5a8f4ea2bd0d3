//! TLS session tickets with keys shared by every process of one server and rotated on a
//! schedule.
//!
//! A returning client that presents a ticket skips the certificate signature and key
//! exchange of a full handshake (a resumed handshake costs a fraction of a full one). A
//! ticket is the session state sealed with AES-256-GCM under a key the server holds; for
//! resumption to work whichever worker process accepts the connection, every process must
//! hold the same keys. They therefore live in storage (`tickets/keys.json`, mode 0600):
//!
//! - the leader (the single process, or the supervisor of `--workers`) creates the first
//!   key and adds a new one every [`ROTATION`]; a new key is written [`LEAD`] before it
//!   starts sealing tickets, so every process knows it before the first ticket made with
//!   it arrives; the newest [`MAX_KEYS`] keys that have started are kept, which bounds a
//!   ticket's usable life to about `ROTATION x MAX_KEYS`;
//! - every process re-reads the file every [`CHECK`] on a small background thread, so
//!   the handshake path never touches the disk;
//! - before storage is known (and if it cannot be written), a process seals with a random
//!   key of its own: resumption then works within that process only.
//!
//! Keys in storage also survive restarts and `dwaar upgrade`, so clients keep resuming
//! across them. A ticket names its key (8 random bytes), so a ticket sealed under a key
//! that has been dropped simply fails to open and the client gets a full handshake.

use crate::storage::{Secrecy, Storage};
use arc_swap::ArcSwap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a new key starts sealing tickets (Caddy's default rotation interval).
pub const ROTATION: Duration = Duration::from_secs(12 * 3600);
/// How many started keys are kept (the newest seals, all open).
pub const MAX_KEYS: usize = 4;
/// How long before it starts sealing a new key is written to storage.
pub const LEAD: Duration = Duration::from_secs(120);
/// How often every process re-reads the keys (the leader also rotates then).
pub const CHECK: Duration = Duration::from_secs(30);
/// Where the keys live in storage.
pub const KEYS_FILE: &str = "tickets/keys.json";

const NAME_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// One key as stored: hex name and key, and when it starts sealing (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredKey {
    name: String,
    key: String,
    from: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    from: u64,
}

/// The keys in use, newest first.
#[derive(Default)]
struct KeyRing {
    keys: Vec<Key>,
    /// The stored form this ring was built from (`None`: a process-local key).
    stored: Option<KeyFile>,
}

impl KeyRing {
    fn from_file(file: &KeyFile) -> Option<KeyRing> {
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            let name: [u8; NAME_LEN] = from_hex(&k.name)?.try_into().ok()?;
            let raw = from_hex(&k.key)?;
            let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).ok()?);
            keys.push(Key {
                name,
                aead,
                from: k.from,
            });
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.from));
        Some(KeyRing {
            keys,
            stored: Some(file.clone()),
        })
    }

    /// The key that seals at `now`: the newest one that has started.
    fn sealing(&self, now: u64) -> Option<&Key> {
        self.keys
            .iter()
            .find(|k| k.from <= now)
            .or(self.keys.last())
    }
}

/// Where the keys come from once storage is known.
struct Source {
    storage: Storage,
    leader: bool,
}

/// The server's ticket keys (rustls's `ProducesTickets`), shared by all its configs.
pub struct TicketKeys {
    ring: ArcSwap<KeyRing>,
    source: Mutex<Option<Source>>,
    /// Whether the thread that re-reads the keys ([`keep_fresh`]) runs.
    keeper_started: Mutex<bool>,
    random: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.ring.load().keys.len())
            .finish()
    }
}

impl TicketKeys {
    /// Keys with one random, process-local key until [`TicketKeys::use_storage`].
    pub fn new() -> Result<Arc<TicketKeys>, String> {
        let random = SystemRandom::new();
        let local = KeyFile {
            keys: vec![new_key(&random, 0)?],
        };
        let mut ring = KeyRing::from_file(&local).ok_or("cannot build a ticket key")?;
        ring.stored = None;
        Ok(Arc::new(TicketKeys {
            ring: ArcSwap::from_pointee(ring),
            source: Mutex::new(None),
            keeper_started: Mutex::new(false),
            random,
        }))
    }

    /// Takes the keys from `storage` from now on (the leader creates and rotates them),
    /// loading them right away and re-reading them every [`CHECK`].
    pub fn use_storage(self: &Arc<Self>, storage: Storage, leader: bool) {
        if let Ok(mut s) = self.source.lock() {
            *s = Some(Source { storage, leader });
        }
        self.refresh(unix_now());
        let Ok(mut started) = self.keeper_started.lock() else {
            return;
        };
        if !*started {
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("dwaar-tickets".into())
                .spawn(move || keep_fresh(me));
            match spawned {
                Ok(_) => *started = true,
                Err(e) => tracing::warn!("cannot start the ticket key thread: {e}"),
            }
        }
    }

    /// Reads (and, on the leader, rotates) the stored keys as of `now`.
    fn refresh(&self, now: u64) {
        let (storage, leader) = match self.source.lock() {
            Ok(s) => match &*s {
                Some(s) => (s.storage.clone(), s.leader),
                None => return,
            },
            Err(_) => return,
        };
        let file = if leader {
            match self.rotate(&storage, now) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("session ticket keys: {e}; keeping the keys in memory");
                    return;
                }
            }
        } else {
            match read_file(&storage) {
                Some(f) => f,
                None => return,
            }
        };
        if self.ring.load().stored.as_ref() == Some(&file) {
            return;
        }
        match KeyRing::from_file(&file) {
            Some(ring) if !ring.keys.is_empty() => self.ring.store(Arc::new(ring)),
            _ => tracing::warn!(
                "{}: unreadable session ticket keys",
                storage.path(KEYS_FILE).display()
            ),
        }
    }

    /// The leader's step: the stored keys with a new one added when the newest is due to
    /// be replaced, and the oldest dropped; written back when anything changed.
    fn rotate(&self, storage: &Storage, now: u64) -> Result<KeyFile, String> {
        let _lock = storage.lock("ticket-keys")?;
        let old = read_file(storage).unwrap_or_default();
        let next = plan(&old, now, || new_key(&self.random, 0))?;
        if next != old {
            let json = serde_json::to_vec_pretty(&next).map_err(|e| e.to_string())?;
            storage.write(KEYS_FILE, &json, Secrecy::Secret)?;
        }
        Ok(next)
    }

    fn seal(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let ring = self.ring.load();
        let key = ring.sealing(now)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        // name | nonce | sealed state | tag, built in one buffer.
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let ring = self.ring.load();
        let key = ring.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATION.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

/// What the stored keys should be at `now`: a first key that starts at once; a new key
/// (starting [`LEAD`] from now at the earliest) once the newest has sealed for
/// `ROTATION - LEAD`; then only the newest [`MAX_KEYS`] started keys and any pending one.
fn plan(
    old: &KeyFile,
    now: u64,
    mut fresh: impl FnMut() -> Result<StoredKey, String>,
) -> Result<KeyFile, String> {
    let mut keys = old.keys.clone();
    keys.sort_by_key(|k| std::cmp::Reverse(k.from));
    match keys.first() {
        None => {
            let mut k = fresh()?;
            k.from = now;
            keys.push(k);
        }
        Some(newest) if newest.from + ROTATION.as_secs() <= now + LEAD.as_secs() => {
            let mut k = fresh()?;
            k.from = (newest.from + ROTATION.as_secs()).max(now + LEAD.as_secs());
            keys.insert(0, k);
        }
        Some(_) => {}
    }
    let pending = keys.iter().take_while(|k| k.from > now).count();
    keys.truncate(pending + MAX_KEYS);
    Ok(KeyFile { keys })
}

fn new_key(random: &SystemRandom, from: u64) -> Result<StoredKey, String> {
    let mut name = [0u8; NAME_LEN];
    let mut key = [0u8; 32];
    random
        .fill(&mut name)
        .and_then(|_| random.fill(&mut key))
        .map_err(|_| "no randomness for a ticket key".to_string())?;
    Ok(StoredKey {
        name: to_hex(&name),
        key: to_hex(&key),
        from,
    })
}

fn read_file(storage: &Storage) -> Option<KeyFile> {
    serde_json::from_slice(&storage.read(KEYS_FILE)?).ok()
}

fn keep_fresh(keys: Weak<TicketKeys>) {
    loop {
        std::thread::sleep(CHECK);
        let Some(keys) = keys.upgrade() else {
            return;
        };
        keys.refresh(unix_now());
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn storage() -> (tempfile_dir::Dir, Storage) {
        let d = tempfile_dir::Dir::new();
        let s = Storage::new(d.path());
        (d, s)
    }

    /// A directory removed on drop (the crate has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "dwaar-tickets-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_ticket_opens_only_with_its_key_and_untouched() {
        let a = TicketKeys::new().unwrap();
        let b = TicketKeys::new().unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&t).unwrap(), b"session state");
        assert!(b.decrypt(&t).is_none(), "another process-local key");
        let mut bent = t.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(a.decrypt(&bent).is_none(), "tampered ticket");
        assert!(a.decrypt(&t[..10]).is_none(), "short ticket");
        assert_ne!(a.encrypt(b"x").unwrap(), a.encrypt(b"x").unwrap());
    }

    #[test]
    fn processes_on_one_storage_open_each_others_tickets() {
        let (_d, s) = storage();
        let leader = TicketKeys::new().unwrap();
        leader.use_storage(s.clone(), true);
        let worker = TicketKeys::new().unwrap();
        worker.use_storage(s.clone(), false);
        let t = worker.encrypt(b"hello").unwrap();
        assert_eq!(leader.decrypt(&t).unwrap(), b"hello");
        let t = leader.encrypt(b"back").unwrap();
        assert_eq!(worker.decrypt(&t).unwrap(), b"back");
        // A restarted leader keeps the stored keys, so old tickets still open.
        let again = TicketKeys::new().unwrap();
        again.use_storage(s.clone(), true);
        assert_eq!(again.decrypt(&t).unwrap(), b"back");
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(s.path(KEYS_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn rotation_adds_a_pending_key_ahead_and_keeps_a_bounded_number() {
        let mut n = 0u8;
        let mut fresh = || {
            n += 1;
            Ok(StoredKey {
                name: format!("{n:016x}"),
                key: "00".repeat(32),
                from: 0,
            })
        };
        let rot = ROTATION.as_secs();
        let t0 = 1_000_000;
        let f = plan(&KeyFile::default(), t0, &mut fresh).unwrap();
        assert_eq!(f.keys.len(), 1);
        assert_eq!(f.keys[0].from, t0);
        // Nothing to do until the newest key nears the end of its turn.
        assert_eq!(plan(&f, t0 + rot / 2, &mut fresh).unwrap(), f);
        let due = t0 + rot - LEAD.as_secs();
        let g = plan(&f, due, &mut fresh).unwrap();
        assert_eq!(g.keys.len(), 2);
        assert_eq!(g.keys[0].from, t0 + rot, "the new key starts on schedule");
        assert_eq!(
            plan(&g, due + 1, &mut fresh).unwrap(),
            g,
            "only one pending key"
        );
        // Many rotations later: at most MAX_KEYS started keys plus one pending.
        let mut h = g;
        for i in 1..20 {
            h = plan(&h, t0 + i * rot + rot - LEAD.as_secs(), &mut fresh).unwrap();
        }
        assert_eq!(h.keys.len(), MAX_KEYS + 1);
        // After a long stop the new key still waits LEAD before sealing.
        let late = t0 + 100 * rot;
        let l = plan(&h, late, &mut fresh).unwrap();
        assert_eq!(l.keys[0].from, late + LEAD.as_secs());
    }

    #[test]
    fn the_sealing_key_is_the_newest_started_one() {
        let (_d, s) = storage();
        let keys = TicketKeys::new().unwrap();
        keys.use_storage(s.clone(), true);
        let now = unix_now();
        // Make the leader add the next key (pending, LEAD ahead).
        keys.refresh(now + ROTATION.as_secs() - LEAD.as_secs());
        let ring = keys.ring.load();
        assert_eq!(ring.keys.len(), 2);
        let sealing_now = ring.sealing(now).unwrap().name;
        assert_eq!(
            sealing_now, ring.keys[1].name,
            "the pending key does not seal yet"
        );
        let later = ring.keys[0].from;
        assert_eq!(ring.sealing(later).unwrap().name, ring.keys[0].name);
        // Tickets from before the switch still open after it.
        let t = keys.seal(b"old", now).unwrap();
        let t2 = keys.seal(b"new", later).unwrap();
        assert_eq!(keys.open(&t).unwrap(), b"old");
        assert_eq!(keys.open(&t2).unwrap(), b"new");
        assert_eq!(&t2[..NAME_LEN], &ring.keys[0].name);
    }

    #[test]
    fn a_follower_without_stored_keys_keeps_its_own() {
        let (_d, s) = storage();
        let worker = TicketKeys::new().unwrap();
        worker.use_storage(s.clone(), false);
        let t = worker.encrypt(b"x").unwrap();
        assert_eq!(worker.decrypt(&t).unwrap(), b"x");
        std::fs::create_dir_all(s.path("tickets")).unwrap();
        std::fs::write(s.path(KEYS_FILE), b"{not json").unwrap();
        worker.refresh(unix_now());
        assert_eq!(worker.decrypt(&t).unwrap(), b"x", "garbage is ignored");
    }
}
