//! Distributed rate limits: the same sliding-window counter as Dwaar's local zones
//! (this window's count plus the previous window's, weighted by how much of it still
//! overlaps), with the counts kept in Redis.
//!
//! - **Exact**: one atomic script per decision reads both windows, decides, and counts
//!   an allowed request. Every instance sees every other's requests at once.
//! - **Approximate**: each instance decides locally from the fleet's counts as of the
//!   last sync plus its own requests since; every `sync_interval` it adds its new
//!   requests to Redis and reads the totals back. No Redis round trip per request; the
//!   fleet may admit more than the limit by what the other instances admitted since
//!   their last sync (at most `(instances - 1) x limit` in a window, usually far less).
//!
//! Keys: `<prefix>:rl:{<zone>:<key hash>}:<window number>` (the braces keep both windows
//! of a key in one Redis Cluster slot), expiring after two windows. Window numbers
//! come from each instance's clock, so the fleet's clocks should agree (NTP).

use crate::Fleet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SLIDING: &str = "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
local prev = tonumber(redis.call('GET', KEYS[2]) or '0') \
if cur + math.floor(prev * tonumber(ARGV[2]) / 1000000) >= tonumber(ARGV[1]) then return 0 end \
redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1";

/// The script (sent by hash, loaded when Redis does not know it yet).
fn sliding() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(SLIDING))
}

fn keys(fleet: &Fleet, zone: &str, key_hash: u64, epoch: u64) -> (String, String) {
    let base = fleet.key(&format!("rl:{{{zone}:{key_hash:016x}}}"));
    (
        format!("{base}:{epoch}"),
        format!("{base}:{}", epoch.wrapping_sub(1)),
    )
}

/// The share (in millionths) of the previous window still inside the sliding window.
fn weight(now_ms: u64, window_ms: u64) -> u64 {
    (window_ms - now_ms % window_ms) * 1_000_000 / window_ms
}

/// One exact decision: `Ok(true)` allowed (and counted), `Ok(false)` refused, `Err`
/// when Redis could not decide.
pub async fn check_exact(
    fleet: &Fleet,
    zone: &str,
    key_hash: u64,
    limit: u64,
    window_ms: u64,
    now_ms: u64,
) -> Result<bool, String> {
    let epoch = now_ms / window_ms;
    let (cur, prev) = keys(fleet, zone, key_hash, epoch);
    let w = weight(now_ms, window_ms);
    let mut script = sliding().key(&cur);
    script.key(&prev).arg(limit).arg(w).arg(window_ms * 2);
    let r: Result<i64, String> = fleet.script(&script).await;
    r.map(|v| v == 1)
}

/// What an instance knows of one key in approximate mode.
#[derive(Default, Clone, Copy)]
struct Seen {
    epoch: u64,
    /// The fleet's counts of this window and the previous one at the last sync.
    fleet_cur: u64,
    fleet_prev: u64,
    /// Requests this instance admitted in this window and has not pushed yet.
    pending: u64,
    /// Pending requests of the previous window (pushed at the next sync).
    pending_prev: u64,
}

/// Keys one approximate zone tracks at most: keys of past windows go first, then
/// an arbitrary one.
const MAX_KEYS: usize = 100_000;
/// Independent locks per zone, so request threads rarely wait for each other.
const SHARDS: usize = 16;
/// Keys pushed in one pipeline by a sync.
const PER_PIPELINE: usize = 500;

type Shard = Mutex<HashMap<u64, Seen>>;

/// An approximate zone: local decisions, synced every interval.
pub struct Approximate {
    fleet: Arc<Fleet>,
    zone: String,
    limit: u64,
    window_ms: u64,
    shards: Box<[Shard]>,
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, HashMap<u64, Seen>> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Approximate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approximate")
            .field("zone", &self.zone)
            .finish()
    }
}

impl Approximate {
    /// A zone synced every `interval` by its own thread (until the zone is dropped).
    pub fn start(
        fleet: Arc<Fleet>,
        zone: &str,
        limit: u64,
        window_ms: u64,
        interval: Duration,
    ) -> Arc<Approximate> {
        let a = Arc::new(Approximate {
            fleet,
            zone: zone.to_string(),
            limit,
            window_ms: window_ms.max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        });
        let weak = Arc::downgrade(&a);
        let _ = std::thread::Builder::new()
            .name("dwaar-limit-sync".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let Some(a) = weak.upgrade() else { return };
                        a.sync().await;
                    }
                });
            });
        a
    }

    fn shard(&self, key_hash: u64) -> &Shard {
        &self.shards[(key_hash % SHARDS as u64) as usize]
    }

    /// Decides locally: `true` admitted (and counted).
    pub fn check(&self, key_hash: u64, now_ms: u64) -> bool {
        if !self.fleet.is_up() {
            self.fleet
                .fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let epoch = now_ms / self.window_ms;
        let w = weight(now_ms, self.window_ms);
        let mut keys = lock(self.shard(key_hash));
        if keys.len() >= MAX_KEYS / SHARDS && !keys.contains_key(&key_hash) {
            keys.retain(|_, s| s.epoch + 1 >= epoch);
            if keys.len() >= MAX_KEYS / SHARDS {
                if let Some(k) = keys.keys().next().copied() {
                    keys.remove(&k);
                }
            }
        }
        let s = keys.entry(key_hash).or_insert(Seen {
            epoch,
            ..Default::default()
        });
        roll(s, epoch);
        let prev = (s.fleet_prev + s.pending_prev) * w / 1_000_000;
        if s.fleet_cur + s.pending + prev >= self.limit {
            return false;
        }
        s.pending += 1;
        true
    }

    /// Pushes this instance's new counts and reads the fleet's totals back, in
    /// pipelines of [`PER_PIPELINE`] keys.
    pub async fn sync(&self) {
        let epoch = crate::now_ms() / self.window_ms;
        let mut snapshot: Vec<(u64, Seen)> = Vec::new();
        for shard in self.shards.iter() {
            let mut keys = lock(shard);
            keys.retain(|_, s| s.epoch + 1 >= epoch);
            snapshot.extend(keys.iter_mut().map(|(k, s)| {
                roll(s, epoch);
                let taken = *s;
                // What is pushed now is counted in the fleet totals read back.
                s.pending = 0;
                s.pending_prev = 0;
                (*k, taken)
            }));
        }
        let ttl = self.window_ms * 2;
        for (n, batch) in snapshot.chunks(PER_PIPELINE).enumerate() {
            let mut pipe = redis::pipe();
            for (k, s) in batch {
                let (cur_key, prev_key) = keys(&self.fleet, &self.zone, *k, s.epoch);
                pipe.cmd("INCRBY").arg(&cur_key).arg(s.pending);
                pipe.cmd("PEXPIRE").arg(&cur_key).arg(ttl).ignore();
                pipe.cmd("INCRBY").arg(&prev_key).arg(s.pending_prev);
            }
            let totals: Vec<u64> = match self.fleet.query_pipe::<Vec<u64>>(&pipe).await {
                Ok(t) if t.len() == batch.len() * 2 => t,
                _ => {
                    // Not counted by the fleet: this batch and the rest wait for the
                    // next sync.
                    for (k, s) in &snapshot[n * PER_PIPELINE..] {
                        self.update(*k, s.epoch, |e| {
                            e.pending += s.pending;
                            e.pending_prev += s.pending_prev;
                        });
                    }
                    return;
                }
            };
            for (i, (k, s)) in batch.iter().enumerate() {
                self.update(*k, s.epoch, |e| {
                    e.fleet_cur = totals[2 * i];
                    e.fleet_prev = totals[2 * i + 1];
                });
            }
        }
    }

    /// Changes what is known of `key` if it is still in window `epoch`.
    fn update(&self, key: u64, epoch: u64, f: impl FnOnce(&mut Seen)) {
        if let Some(e) = lock(self.shard(key))
            .get_mut(&key)
            .filter(|e| e.epoch == epoch)
        {
            f(e);
        }
    }
}

/// Moves a key's counts to window `epoch`.
fn roll(s: &mut Seen, epoch: u64) {
    if s.epoch == epoch {
        return;
    }
    if s.epoch + 1 == epoch {
        s.fleet_prev = s.fleet_cur;
        s.pending_prev = s.pending;
    } else {
        s.fleet_prev = 0;
        s.pending_prev = 0;
    }
    s.fleet_cur = 0;
    s.pending = 0;
    s.epoch = epoch;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_roll() {
        let mut s = Seen {
            epoch: 5,
            fleet_cur: 10,
            fleet_prev: 3,
            pending: 2,
            pending_prev: 1,
        };
        roll(&mut s, 6);
        assert_eq!(
            (s.fleet_prev, s.pending_prev, s.fleet_cur, s.pending),
            (10, 2, 0, 0)
        );
        roll(&mut s, 9);
        assert_eq!((s.fleet_prev, s.pending_prev), (0, 0));
        assert_eq!(weight(0, 1000), 1_000_000);
        assert_eq!(weight(750, 1000), 250_000);
    }
}
