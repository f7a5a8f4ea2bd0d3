//! State a fleet of Dwaar instances shares through Redis (or Valkey): the `storage
//! redis` global option.
//!
//! A [`Fleet`] is one Redis deployment (standalone servers tried in order, a Redis
//! Cluster, or a master found through Sentinels) and what Dwaar does with it:
//!
//! - stored data by key (certificates, keys, accounts, challenge answers), read and
//!   written from the certificate machinery's threads ([`Fleet::get`], [`Fleet::set`]);
//! - locks with expiry and fencing tokens, so one instance orders a certificate while
//!   the others wait ([`lock`]);
//! - distributed rate-limit decisions ([`limit`]), asynchronously from the request path;
//! - messages to every instance (cache purges), over pub/sub ([`bus`]).
//!
//! Redis being down never stops serving: every call fails fast while a back-off runs
//! (1 s doubling to 30 s), callers fall back to local state, a prober thread notices
//! when Redis is back, and `dwaar_storage_up` / the error counters say what happened.

pub mod bus;
pub mod limit;
pub mod lock;

/// The Redis client library, for the admin API's own commands.
pub use redis;

use dwaar_config::model::RedisStorage;
use redis::ConnectionLike;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How the fleet's Redis is reached.
enum Backend {
    /// Standalone servers, tried in order.
    Single(Vec<redis::Client>),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(Mutex<redis::sentinel::SentinelClient>),
}

/// An asynchronous connection (cheap to clone, multiplexed).
#[derive(Clone)]
enum AsyncConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for AsyncConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AsyncConn::Single(c) => c.req_packed_command(cmd),
            AsyncConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AsyncConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AsyncConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AsyncConn::Single(c) => c.get_db(),
            AsyncConn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Fleet {
    pub cfg: RedisStorage,
    backend: Backend,
    sync_conn: Mutex<Option<Box<dyn ConnectionLike + Send>>>,
    async_conn: tokio::sync::Mutex<Option<AsyncConn>>,
    up: AtomicBool,
    /// Consecutive failures, and when the next attempt may be made.
    failures: AtomicU32,
    retry_at: Mutex<Option<Instant>>,
    /// Failed Redis operations.
    pub errors: AtomicU64,
    /// Decisions made locally because Redis could not be asked.
    pub fallbacks: AtomicU64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("addresses", &self.cfg.addresses)
            .field("up", &self.is_up())
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<RedisStorage, Arc<Fleet>>> {
    static ALL: OnceLock<Mutex<HashMap<RedisStorage, Arc<Fleet>>>> = OnceLock::new();
    ALL.get_or_init(Mutex::default)
}

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fleet of a `storage redis` block: one per distinct block in the process, kept
/// across reloads (its connections and state survive them).
pub fn fleet(cfg: &RedisStorage) -> Result<Arc<Fleet>, String> {
    let mut all = lock_std(registry());
    if let Some(f) = all.get(cfg) {
        return Ok(f.clone());
    }
    let f = Arc::new(Fleet::new(cfg.clone())?);
    Fleet::start_prober(&f);
    all.insert(cfg.clone(), f.clone());
    Ok(f)
}

/// Every fleet of the process, for metrics and health.
pub fn all() -> Vec<Arc<Fleet>> {
    lock_std(registry()).values().cloned().collect()
}

/// Prometheus lines about every fleet.
pub fn write_metrics(out: &mut String) {
    use std::fmt::Write;
    let fleets = all();
    if fleets.is_empty() {
        return;
    }
    // (name, type, help, value of one fleet)
    type Series = (&'static str, &'static str, &'static str, fn(&Fleet) -> u64);
    let series: [Series; 3] = [
        (
            "dwaar_storage_up",
            "gauge",
            "Whether the shared storage (Redis) answers.",
            |f| u64::from(f.is_up()),
        ),
        (
            "dwaar_storage_errors_total",
            "counter",
            "Failed operations on the shared storage.",
            |f| f.errors.load(Ordering::Relaxed),
        ),
        (
            "dwaar_rate_limit_fallbacks_total",
            "counter",
            "Distributed rate-limit decisions made locally because Redis could not be asked.",
            |f| f.fallbacks.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for f in &fleets {
            let addr = f.cfg.addresses.join(",");
            let labels = match name {
                "dwaar_rate_limit_fallbacks_total" => format!("address=\"{addr}\""),
                _ => format!("backend=\"redis\",address=\"{addr}\""),
            };
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(f));
        }
    }
}

/// Whether every fleet's Redis answers (for `/health`).
pub fn all_up() -> bool {
    all().iter().all(|f| f.is_up())
}

/// `redis://[user:pass@]host:port/db` for one address.
fn url(cfg: &RedisStorage, addr: &str, with_db: bool) -> String {
    let scheme = if cfg.tls { "rediss" } else { "redis" };
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let auth = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (None, Some(p)) => format!(":{}@", enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
        (None, None) => String::new(),
    };
    if with_db {
        format!("{scheme}://{auth}{addr}/{}", cfg.db)
    } else {
        format!("{scheme}://{auth}{addr}")
    }
}

impl Fleet {
    fn new(cfg: RedisStorage) -> Result<Fleet, String> {
        let backend = if cfg.cluster {
            let nodes: Vec<String> = cfg.addresses.iter().map(|a| url(&cfg, a, false)).collect();
            let b = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(dial_timeout(&cfg))
                .response_timeout(command_timeout(&cfg));
            Backend::Cluster(b.build().map_err(|e| format!("storage redis: {e}"))?)
        } else if let Some(master) = &cfg.sentinel_master {
            let sentinels: Vec<String> = cfg
                .addresses
                .iter()
                .map(|a| {
                    let scheme = if cfg.tls { "rediss" } else { "redis" };
                    format!("{scheme}://{a}")
                })
                .collect();
            let mut info = redis::RedisConnectionInfo::default().set_db(i64::from(cfg.db));
            if let Some(u) = &cfg.username {
                info = info.set_username(u);
            }
            if let Some(p) = &cfg.password {
                info = info.set_password(p);
            }
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info);
            let client = redis::sentinel::SentinelClient::build(
                sentinels,
                master.clone(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| format!("storage redis sentinel: {e}"))?;
            Backend::Sentinel(Mutex::new(client))
        } else {
            let clients = cfg
                .addresses
                .iter()
                .map(|a| redis::Client::open(url(&cfg, a, true)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("storage redis: {e}"))?;
            Backend::Single(clients)
        };
        Ok(Fleet {
            cfg,
            backend,
            sync_conn: Mutex::new(None),
            async_conn: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            retry_at: Mutex::new(None),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The Redis key of a stored path.
    pub fn key(&self, rel: &str) -> String {
        format!("{}:{rel}", self.cfg.key_prefix)
    }

    /// Whether an attempt may be made now (not inside a back-off).
    fn may_try(&self) -> bool {
        lock_std(&self.retry_at).is_none_or(|t| Instant::now() >= t)
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(addresses = ?self.cfg.addresses, "Redis answers again; shared state resumes");
        }
        self.failures.store(0, Ordering::Relaxed);
        *lock_std(&self.retry_at) = None;
    }

    fn failed(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let wait = Duration::from_millis((1000u64 << (n - 1).min(5)).min(30_000));
        *lock_std(&self.retry_at) = Some(Instant::now() + wait);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                addresses = ?self.cfg.addresses,
                "Redis is unreachable ({e}); serving from local state until it answers"
            );
        }
    }

    fn connect_sync(&self) -> Result<Box<dyn ConnectionLike + Send>, String> {
        let timeout = command_timeout(&self.cfg);
        match &self.backend {
            Backend::Single(clients) => {
                let mut last = String::from("no address");
                for c in clients {
                    match c.get_connection_with_timeout(dial_timeout(&self.cfg)) {
                        Ok(conn) => {
                            let _ = conn.set_read_timeout(Some(timeout));
                            let _ = conn.set_write_timeout(Some(timeout));
                            return Ok(Box::new(conn));
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
            Backend::Cluster(c) => c
                .get_connection()
                .map(|c| Box::new(c) as Box<dyn ConnectionLike + Send>)
                .map_err(|e| e.to_string()),
            Backend::Sentinel(s) => {
                let conn = lock_std(s).get_connection().map_err(|e| e.to_string())?;
                let _ = conn.set_read_timeout(Some(timeout));
                let _ = conn.set_write_timeout(Some(timeout));
                Ok(Box::new(conn))
            }
        }
    }

    /// Runs `f` on the synchronous connection (made when needed); fails fast while
    /// Redis is in back-off. Blocking: call it off the request path.
    pub fn with_sync<T>(
        &self,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        if !self.may_try() {
            return Err("Redis is unreachable (retrying later)".into());
        }
        let mut guard = lock_std(&self.sync_conn);
        if guard.is_none() {
            match self.connect_sync() {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    self.failed(&e);
                    return Err(format!("Redis: {e}"));
                }
            }
        }
        let Some(conn) = guard.as_mut() else {
            return Err("Redis: no connection".into());
        };
        let r = f(conn.as_mut());
        if self.record_outcome(&r) {
            *guard = None;
        }
        r.map_err(|e| format!("Redis: {e}"))
    }

    /// Records an operation's outcome (up or down, error counts); true when its
    /// connection is broken (it failed for another reason than the server's answer)
    /// and must be dropped.
    fn record_outcome<T>(&self, r: &redis::RedisResult<T>) -> bool {
        match r {
            Ok(_) => {
                self.succeeded();
                false
            }
            Err(e)
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error() =>
            {
                self.failed(&e.to_string());
                true
            }
            Err(_) => {
                // A server-side error leaves the connection usable.
                self.errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    async fn connect_async(&self) -> Result<AsyncConn, String> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(dial_timeout(&self.cfg)))
            .set_response_timeout(Some(command_timeout(&self.cfg)));
        match &self.backend {
            Backend::Single(clients) => {
                let mut last = String::from("no address");
                for c in clients {
                    match c.get_multiplexed_async_connection_with_config(&cfg).await {
                        Ok(conn) => return Ok(AsyncConn::Single(conn)),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
            Backend::Cluster(c) => c
                .get_async_connection()
                .await
                .map(AsyncConn::Cluster)
                .map_err(|e| e.to_string()),
            Backend::Sentinel(s) => {
                // The sentinel client is synchronous to ask; its answer gives the master.
                let client = {
                    let mut s = lock_std(s);
                    s.get_client().map_err(|e| e.to_string())?
                };
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map(AsyncConn::Single)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Runs one command asynchronously (connecting when needed), within the command
    /// timeout; fails fast while Redis is in back-off.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self.async_connection().await?;
        let r = tokio::time::timeout(command_timeout(&self.cfg), cmd.query_async(&mut conn)).await;
        self.settle(r).await
    }

    /// Runs a Lua script asynchronously (by hash; loaded first when Redis does not
    /// know it), as [`Fleet::query`] runs a command.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.async_connection().await?;
        let r =
            tokio::time::timeout(command_timeout(&self.cfg), script.invoke_async(&mut conn)).await;
        self.settle(r).await
    }

    /// Runs a pipeline asynchronously (see [`Fleet::query`]).
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, String> {
        let mut conn = self.async_connection().await?;
        let r = tokio::time::timeout(command_timeout(&self.cfg), pipe.query_async(&mut conn)).await;
        self.settle(r).await
    }

    /// The shared asynchronous connection, made when needed; an error at once while
    /// Redis is in back-off.
    async fn async_connection(&self) -> Result<AsyncConn, String> {
        if !self.may_try() {
            return Err("Redis is unreachable (retrying later)".into());
        }
        let mut guard = self.async_conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        match tokio::time::timeout(dial_timeout(&self.cfg), self.connect_async()).await {
            Ok(Ok(c)) => {
                *guard = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                Err(format!("Redis: {e}"))
            }
            Err(_) => {
                self.failed("connect timed out");
                Err("Redis: connect timed out".into())
            }
        }
    }

    /// Records the outcome of an asynchronous operation (a timeout breaks the connection).
    async fn settle<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, String> {
        let r = r.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "command timed out",
            )))
        });
        if self.record_outcome(&r) {
            *self.async_conn.lock().await = None;
        }
        r.map_err(|e| format!("Redis: {e}"))
    }

    /// The value stored at `rel`.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        let key = self.key(rel);
        self.with_sync(|c| redis::cmd("GET").arg(&key).query(c))
    }

    /// Stores `data` at `rel`, with the time of the change (for [`Fleet::modified`]).
    pub fn set(&self, rel: &str, data: &[u8]) -> Result<(), String> {
        let (key, stamp) = (self.key(rel), self.key(&format!("{rel}#mtime")));
        let now = now_ms();
        self.with_sync(|c| {
            redis::cmd("SET").arg(&key).arg(data).query::<()>(c)?;
            redis::cmd("SET").arg(&stamp).arg(now).query::<()>(c)
        })
    }

    /// When `rel` last changed (ms since the epoch).
    pub fn modified(&self, rel: &str) -> Result<Option<u64>, String> {
        let stamp = self.key(&format!("{rel}#mtime"));
        self.with_sync(|c| redis::cmd("GET").arg(&stamp).query(c))
    }

    pub fn remove(&self, rel: &str) -> Result<(), String> {
        let (key, stamp) = (self.key(rel), self.key(&format!("{rel}#mtime")));
        self.with_sync(|c| {
            redis::cmd("DEL").arg(&key).query::<()>(c)?;
            redis::cmd("DEL").arg(&stamp).query::<()>(c)
        })
    }

    /// A plain client for pub/sub (any cluster node relays every message).
    fn pubsub_client(&self) -> Result<redis::Client, String> {
        match &self.backend {
            Backend::Single(clients) => clients.first().cloned().ok_or_else(|| "no address".into()),
            Backend::Cluster(_) => {
                let a = self.cfg.addresses.first().ok_or("no address")?;
                redis::Client::open(url(&self.cfg, a, false)).map_err(|e| e.to_string())
            }
            Backend::Sentinel(s) => lock_std(s).get_client().map_err(|e| e.to_string()),
        }
    }

    /// Pings every few seconds so `dwaar_storage_up` and `/health` follow Redis even
    /// without traffic, and a recovered Redis is noticed.
    fn start_prober(me: &Arc<Fleet>) {
        let weak = Arc::downgrade(me);
        let _ = std::thread::Builder::new()
            .name("dwaar-redis-probe".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(f) = weak.upgrade() else { return };
                if !f.may_try() {
                    continue;
                }
                let _ = f.with_sync(|c| redis::cmd("PING").query::<String>(c));
            });
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn dial_timeout(cfg: &RedisStorage) -> Duration {
    Duration::from_millis(cfg.dial_timeout_ms.unwrap_or(2000))
}

fn command_timeout(cfg: &RedisStorage) -> Duration {
    Duration::from_millis(cfg.command_timeout_ms.unwrap_or(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_credentials() {
        let mut cfg = RedisStorage {
            addresses: vec!["10.0.0.5:6380".into()],
            cluster: false,
            sentinel_master: None,
            db: 3,
            username: Some("dw aar".into()),
            password: Some("p@ss/w:rd".into()),
            key_prefix: "dwaar".into(),
            tls: true,
            dial_timeout_ms: None,
            command_timeout_ms: None,
            local_copy: None,
        };
        assert_eq!(
            url(&cfg, "10.0.0.5:6380", true),
            "rediss://dw%20aar:p%40ss%2Fw%3Ard@10.0.0.5:6380/3"
        );
        cfg.username = None;
        cfg.tls = false;
        assert_eq!(url(&cfg, "h:1", false), "redis://:p%40ss%2Fw%3Ard@h:1");
    }
}
