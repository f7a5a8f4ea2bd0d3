//! `Store`: the rollup database (SQLite, in the storage directory).
//!
//! One row per (site, resolution, interval start) holding an encoded [`Bucket`]:
//! minutes for the live view and short ranges, hours and days for the rest. Writers add
//! their deltas by merging into the rows in one transaction, so several processes (the
//! workers of one server, or an old and a new binary during an upgrade) can share the
//! file. The database also keeps the beacon-signing key and the daily visitor salts.
//!
//! With `storage redis` (set by [`set_fleet`]), each instance also publishes its rows to
//! Redis: hash `<prefix>:an:<site>:<res>:<start>`, one field per instance holding that
//! instance's bucket, indexed by a sorted set per site and resolution. Ranges are then
//! read from Redis and the instances' buckets merged (visitors as the union of their
//! HyperLogLog registers, percentiles by merging digests, top lists by adding counts),
//! so every instance's dashboard shows the fleet. The beacon key and the visitor salts
//! come from Redis too, so a visitor hashes the same on every instance. Rows that could
//! not be published (Redis down) stay in the local database and are published again
//! (at most [`MAX_DIRTY`] of them remembered); reads fall back to the local rows.

use crate::bucket::Bucket;
use dwaar_fleet::redis;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;
/// Minute rows are kept this long.
pub const MINUTE_RETENTION: i64 = 2 * DAY;
/// Hour rows are kept at most this long (day rows follow the configured retention).
pub const HOUR_RETENTION: i64 = 62 * DAY;

pub struct Store {
    conn: Connection,
    fleet: Option<Arc<dwaar_fleet::Fleet>>,
}

/// Rows remembered for publication while Redis is down.
pub const MAX_DIRTY: usize = 100_000;

static FLEET: Mutex<Option<Arc<dwaar_fleet::Fleet>>> = Mutex::new(None);
static DIRTY: Mutex<BTreeSet<(String, i64, i64)>> = Mutex::new(BTreeSet::new());

/// The fleet stores opened from now on share their data with (`None`: local only).
pub fn set_fleet(f: Option<Arc<dwaar_fleet::Fleet>>) {
    *FLEET.lock().unwrap_or_else(|p| p.into_inner()) = f;
}

fn fleet_now() -> Option<Arc<dwaar_fleet::Fleet>> {
    FLEET.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS buckets (
                site TEXT NOT NULL, res INTEGER NOT NULL, start INTEGER NOT NULL,
                data BLOB NOT NULL, PRIMARY KEY (site, res, start)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS salts (day INTEGER PRIMARY KEY, salt BLOB NOT NULL);",
        )
        .map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Store {
            conn,
            fleet: fleet_now(),
        })
    }

    /// This database's id among the fleet's instances (stable across restarts).
    fn instance(&mut self) -> Result<String, String> {
        let id = self.local_secret("instance-id")?;
        Ok(id[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Publishes this instance's rows of `keys` (and any left over) to the fleet.
    fn publish(&mut self, keys: Vec<(String, i64, i64)>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let Ok(me) = self.instance() else { return };
        let mut todo: Vec<(String, i64, i64)> = {
            let mut dirty = DIRTY.lock().unwrap_or_else(|p| p.into_inner());
            let mut all: Vec<_> = std::mem::take(&mut *dirty).into_iter().collect();
            all.extend(keys);
            all
        };
        todo.sort();
        todo.dedup();
        let mut rows = Vec::with_capacity(todo.len());
        for (site, res, start) in &todo {
            let data: Option<Vec<u8>> = self
                .conn
                .query_row(
                    "SELECT data FROM buckets WHERE site=?1 AND res=?2 AND start=?3",
                    params![site, res, start],
                    |r| r.get(0),
                )
                .optional()
                .ok()
                .flatten();
            if let Some(d) = data {
                rows.push((site.clone(), *res, *start, d));
            }
        }
        let sent = fleet.with_sync(|c| {
            let mut pipe = redis::pipe();
            for (site, res, start, data) in &rows {
                let key = fleet.key(&format!("an:{site}:{res}:{start}"));
                let ttl = match *res {
                    MINUTE => MINUTE_RETENTION,
                    HOUR => HOUR_RETENTION,
                    _ => 400 * DAY,
                };
                pipe.cmd("HSET").arg(&key).arg(&me).arg(data).ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
                pipe.cmd("ZADD")
                    .arg(fleet.key(&format!("an:{site}:{res}")))
                    .arg(*start)
                    .arg(*start)
                    .ignore();
                pipe.cmd("SADD")
                    .arg(fleet.key("an:sites"))
                    .arg(site)
                    .ignore();
            }
            pipe.query::<()>(c)
        });
        if sent.is_err() {
            let mut dirty = DIRTY.lock().unwrap_or_else(|p| p.into_inner());
            for k in todo {
                if dirty.len() >= MAX_DIRTY {
                    break;
                }
                dirty.insert(k);
            }
        }
    }

    /// Publishes rows left over from a time Redis was down, if any.
    pub fn republish(&mut self) {
        let pending = !DIRTY.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if pending && self.fleet.as_ref().is_some_and(|f| f.is_up()) {
            self.publish(Vec::new());
        }
    }

    /// The fleet's buckets (every instance's, merged) of `site`/`res` in `[from, to)`.
    fn fleet_range(
        &self,
        site: &str,
        res: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Bucket)>, String> {
        let fleet = self.fleet.as_ref().ok_or("no fleet")?;
        let index = fleet.key(&format!("an:{site}:{res}"));
        let starts: Vec<i64> = fleet.with_sync(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg(from)
                .arg(format!("({to}"))
                .query(c)
        })?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<Vec<u8>>> = fleet.with_sync(|c| {
            let mut pipe = redis::pipe();
            for s in &starts {
                pipe.cmd("HVALS")
                    .arg(fleet.key(&format!("an:{site}:{res}:{s}")));
            }
            pipe.query(c)
        })?;
        let mut out = Vec::with_capacity(starts.len());
        for (start, parts) in starts.into_iter().zip(rows) {
            let mut b = Bucket::default();
            let mut any = false;
            for p in parts {
                if let Some(x) = Bucket::decode(&p) {
                    b.merge(&x);
                    any = true;
                }
            }
            if any {
                out.push((start, b));
            }
        }
        Ok(out)
    }

    /// A value shared by the fleet under `name`: the first instance's `fresh` wins.
    fn fleet_value(&self, name: &str, fresh: &[u8; 32], ttl_secs: Option<i64>) -> Option<[u8; 32]> {
        let fleet = self.fleet.as_ref()?;
        let key = fleet.key(&format!("an:{name}"));
        let v: Vec<u8> = fleet
            .with_sync(|c| {
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&fresh[..]).arg("NX");
                if let Some(t) = ttl_secs {
                    set.arg("EX").arg(t);
                }
                set.query::<()>(c)?;
                redis::cmd("GET").arg(&key).query(c)
            })
            .ok()?;
        v.try_into().ok()
    }

    /// Merges per-minute deltas into the minute, hour and day rows (and publishes the
    /// rows to the fleet, with one).
    pub fn add(&mut self, deltas: &[(&str, i64, &Bucket)]) -> Result<(), String> {
        self.add_local(deltas)?;
        if self.fleet.is_some() {
            let keys = deltas
                .iter()
                .flat_map(|(site, minute, _)| {
                    [MINUTE, HOUR, DAY]
                        .map(|res| (site.to_string(), res, minute - minute.rem_euclid(res)))
                })
                .collect();
            self.publish(keys);
        }
        Ok(())
    }

    fn add_local(&mut self, deltas: &[(&str, i64, &Bucket)]) -> Result<(), String> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut get = tx
                .prepare_cached("SELECT data FROM buckets WHERE site=?1 AND res=?2 AND start=?3")
                .map_err(err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO buckets (site, res, start, data) VALUES (?1,?2,?3,?4)",
                )
                .map_err(err)?;
            for (site, minute, delta) in deltas {
                for res in [MINUTE, HOUR, DAY] {
                    let start = minute - minute.rem_euclid(res);
                    let old: Option<Vec<u8>> = get
                        .query_row(params![site, res, start], |r| r.get(0))
                        .optional()
                        .map_err(err)?;
                    let mut b = old.and_then(|o| Bucket::decode(&o)).unwrap_or_default();
                    b.merge(delta);
                    put.execute(params![site, res, start, b.encode()])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// The buckets of `site` at resolution `res` with `from <= start < to`: the
    /// fleet's when it can be read, else this instance's.
    pub fn range(
        &self,
        site: &str,
        res: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Bucket)>, String> {
        if self.fleet.is_some() {
            if let Ok(rows) = self.fleet_range(site, res, from, to) {
                return Ok(rows);
            }
        }
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT start, data FROM buckets WHERE site=?1 AND res=?2 AND start>=?3 AND start<?4 ORDER BY start",
            )
            .map_err(err)?;
        let rows = q
            .query_map(params![site, res, from, to], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (start, data) = row.map_err(err)?;
            if let Some(b) = Bucket::decode(&data) {
                out.push((start, b));
            }
        }
        Ok(out)
    }

    /// Sites with any stored data (here or, with a fleet, anywhere in it).
    pub fn sites(&self) -> Result<Vec<String>, String> {
        let mut out = self.local_sites()?;
        if let Some(fleet) = &self.fleet {
            if let Ok(more) = fleet.with_sync(|c| {
                redis::cmd("SMEMBERS")
                    .arg(fleet.key("an:sites"))
                    .query::<Vec<String>>(c)
            }) {
                out.extend(more);
                out.sort();
                out.dedup();
            }
        }
        Ok(out)
    }

    fn local_sites(&self) -> Result<Vec<String>, String> {
        let mut q = self
            .conn
            .prepare_cached("SELECT DISTINCT site FROM buckets WHERE res=?1 ORDER BY site")
            .map_err(err)?;
        let rows = q.query_map(params![DAY], |r| r.get(0)).map_err(err)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(err)
    }

    /// Deletes rows past their retention.
    pub fn prune(&mut self, now: i64, retention_days: u32) -> Result<(), String> {
        let days = retention_days as i64 * DAY;
        for (res, keep) in [
            (MINUTE, MINUTE_RETENTION),
            (HOUR, HOUR_RETENTION.min(days)),
            (DAY, days),
        ] {
            self.conn
                .execute(
                    "DELETE FROM buckets WHERE res=?1 AND start<?2",
                    params![res, now - keep],
                )
                .map_err(err)?;
        }
        Ok(())
    }

    /// A random 32-byte secret kept under `name`, created on first use (shared by the
    /// fleet, with one).
    pub fn secret(&mut self, name: &str) -> Result<[u8; 32], String> {
        let fresh = random32()?;
        if let Some(v) = self.fleet_value(&format!("secret:{name}"), &fresh, None) {
            return Ok(v);
        }
        self.local_secret(name)
    }

    fn local_secret(&mut self, name: &str) -> Result<[u8; 32], String> {
        let fresh = random32()?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![name, &fresh[..]],
            )
            .map_err(err)?;
        let v: Vec<u8> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key=?1", params![name], |r| {
                r.get(0)
            })
            .map_err(err)?;
        v.try_into()
            .map_err(|_| format!("stored secret {name} is damaged"))
    }

    /// The visitor salt of UTC day `day` (days since the epoch). Salts of earlier days
    /// are deleted, so yesterday's visitors cannot be linked to today's.
    pub fn salt(&mut self, day: i64) -> Result<[u8; 32], String> {
        let fresh = random32()?;
        // Shared by the fleet (a visitor hashes alike everywhere), gone after two days.
        if let Some(v) = self.fleet_value(&format!("salt:{day}"), &fresh, Some(2 * DAY)) {
            return Ok(v);
        }
        self.conn
            .execute(
                "INSERT OR IGNORE INTO salts (day, salt) VALUES (?1, ?2)",
                params![day, &fresh[..]],
            )
            .map_err(err)?;
        self.conn
            .execute("DELETE FROM salts WHERE day<?1", params![day])
            .map_err(err)?;
        let v: Vec<u8> = self
            .conn
            .query_row("SELECT salt FROM salts WHERE day=?1", params![day], |r| {
                r.get(0)
            })
            .map_err(err)?;
        v.try_into()
            .map_err(|_| "stored salt is damaged".to_string())
    }
}

fn random32() -> Result<[u8; 32], String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_roll_up_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let t0 = 1_700_000_000 - 1_700_000_000 % DAY;
        {
            let mut s = Store::open(&path).unwrap();
            let mut b = Bucket {
                views: 2,
                ..Default::default()
            };
            b.visitors.insert(1);
            s.add(&[("x.test", t0, &b), ("x.test", t0 + 120, &b)])
                .unwrap();
            s.add(&[("x.test", t0 + HOUR, &b)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.range("x.test", MINUTE, t0, t0 + DAY).unwrap().len(), 3);
        let hours = s.range("x.test", HOUR, t0, t0 + DAY).unwrap();
        assert_eq!(
            hours.iter().map(|h| h.1.views).collect::<Vec<_>>(),
            vec![4, 2]
        );
        let days = s.range("x.test", DAY, t0, t0 + DAY).unwrap();
        assert_eq!(days[0].1.views, 6);
        assert_eq!(days[0].1.visitors.estimate(), 1);
        assert_eq!(s.sites().unwrap(), vec!["x.test".to_string()]);
    }

    #[test]
    fn secrets_and_salts_are_stable_then_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        assert_eq!(s.secret("k").unwrap(), s.secret("k").unwrap());
        let d1 = s.salt(100).unwrap();
        assert_eq!(d1, s.salt(100).unwrap());
        let d2 = s.salt(101).unwrap();
        assert_ne!(d1, d2);
        // Yesterday's salt is gone: asking again makes a new one.
        assert_ne!(s.salt(100).unwrap(), d1);
    }

    #[test]
    fn prune_keeps_what_retention_allows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        let now = 1_800_000_000;
        let b = Bucket::default();
        s.add(&[("x", now - 10 * DAY, &b), ("x", now - 60, &b)])
            .unwrap();
        s.prune(now, 5).unwrap();
        assert_eq!(s.range("x", MINUTE, 0, now).unwrap().len(), 1);
        assert_eq!(s.range("x", DAY, 0, now).unwrap().len(), 1);
    }
}
