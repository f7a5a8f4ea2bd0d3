//! Fleet-wide locks: `SET <key> <token> NX PX <ttl>`, kept alive while held and
//! released only by their holder (compare-and-delete).
//!
//! Each acquisition takes a fencing number from a counter (`INCR`); it is part of the
//! token, so a holder whose lock expired (a long pause) can tell with
//! [`FleetLock::still_held`] before it writes, and a newer holder's lock is never
//! released by an older one.

use crate::Fleet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deletes the lock `KEYS[1]` if it still holds token `ARGV[1]`.
fn release() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        )
    })
}

/// Extends the lock `KEYS[1]` by `ARGV[2]` ms if it still holds token `ARGV[1]`.
fn extend() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        )
    })
}

pub struct FleetLock {
    fleet: Arc<Fleet>,
    key: String,
    token: String,
    /// The fencing number of this acquisition (higher is newer).
    pub fence: u64,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLock")
            .field("key", &self.key)
            .field("fence", &self.fence)
            .finish()
    }
}

/// Takes the lock `name` (blocking), waiting at most `wait` for another holder.
pub fn acquire(
    fleet: &Arc<Fleet>,
    name: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<FleetLock, String> {
    let key = fleet.key(&format!("locks/{name}"));
    let fence_key = fleet.key(&format!("fences/{name}"));
    let deadline = Instant::now() + wait;
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        let fence: u64 = fleet.with_sync(|c| redis::cmd("INCR").arg(&fence_key).query(c))?;
        let token = format!("{fence}:{:016x}", rand::random::<u64>());
        let got: Option<String> = fleet.with_sync(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(c)
        })?;
        if got.is_some() {
            let stop = Arc::new(AtomicBool::new(false));
            keep_alive(fleet.clone(), key.clone(), token.clone(), ttl, stop.clone());
            return Ok(FleetLock {
                fleet: fleet.clone(),
                key,
                token,
                fence,
                stop,
            });
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the fleet lock {name} is still held by another instance"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Extends the lock every third of its lifetime until stopped or lost.
fn keep_alive(fleet: Arc<Fleet>, key: String, token: String, ttl: Duration, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("dwaar-fleet-lock".into())
        .spawn(move || {
            let step = ttl / 3;
            loop {
                let until = Instant::now() + step;
                while Instant::now() < until {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let kept: Result<i64, String> = fleet.with_sync(|c| {
                    extend()
                        .key(&key)
                        .arg(&token)
                        .arg(ttl.as_millis() as u64)
                        .invoke(c)
                });
                if let Ok(0) = kept {
                    tracing::warn!(lock = key, "a fleet lock expired while held");
                    return;
                }
            }
        });
}

impl FleetLock {
    /// Whether this acquisition still holds the lock (check before writing results).
    pub fn still_held(&self) -> bool {
        let v: Result<Option<String>, String> = self
            .fleet
            .with_sync(|c| redis::cmd("GET").arg(&self.key).query(c));
        matches!(v, Ok(Some(t)) if t == self.token)
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _: Result<i64, String> = self
            .fleet
            .with_sync(|c| release().key(&self.key).arg(&self.token).invoke(c));
    }
}
