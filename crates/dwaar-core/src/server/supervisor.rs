//! Worker processes: `dwaar run --workers N`.
//!
//! The supervisor owns the config, the admin API and every listening socket; it runs no
//! proxy itself. It starts N copies of the binary as worker processes (fork+exec before
//! any of them has an async runtime), connects each over a private unix socket, and
//! sends it the compiled config model plus its share of the `SO_REUSEPORT` sockets
//! ([`super::fdpass`]). A reload is validated once here, then forwarded to every worker
//! ([`Follower`]). A worker that exits unexpectedly is restarted with back-off and given
//! the current config; since the supervisor keeps the sockets open, connections that
//! arrive meanwhile wait in the accept queue instead of being refused.
//!
//! Stopping (SIGTERM/SIGINT/SIGQUIT, `/stop`) is relayed to the workers as a graceful
//! stop; SIGUSR1 and `/load` become config pushes.

use super::control::{Control, UpgradeRequests};
use super::fdpass;
use super::reload::{Follower, Reloader, SocketSource};
use super::sockets::{self, SharedSpec, Snapshot};
use super::Stats;
use crate::route_table::{Registries, RouteStore, RouteTable};
use dwaar_config::model::Config;
use dwaar_config::source::SourceMap;
use serde::{Deserialize, Serialize};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Hidden `dwaar run` flag that makes a process a worker of the supervisor at PATH.
pub const WORKER_FLAG: &str = "--worker-of";
/// The secret a worker presents when it connects.
pub const WORKER_TOKEN_ENV: &str = "DWAAR_WORKER_TOKEN";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// A worker that lived this long before exiting restarts without delay.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Messages from the supervisor to a worker.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    Config {
        config: Box<Config>,
        specs: Vec<SharedSpec>,
    },
    Stop,
    /// Purge the worker's caches.
    Purge {
        purge: super::control::Purge,
    },
}

/// Messages from a worker to the supervisor.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    Hello { token: String, index: usize },
    Applied { error: Option<String> },
    Stats { stats: Box<Stats> },
}

/// How to start the supervisor.
pub struct SupervisorOptions {
    pub config: Config,
    pub sources: SourceMap,
    pub path: Option<PathBuf>,
    pub workers: usize,
    /// Accepting threads per worker (default: CPUs / workers, at least 1).
    pub threads: Option<usize>,
    /// Sockets inherited from a predecessor (`dwaar upgrade`).
    pub sockets: Option<Snapshot>,
}

struct Worker {
    child: Option<Child>,
    conn: Option<UnixStream>,
    replies: Option<mpsc::Receiver<Option<String>>>,
    stats: Arc<Mutex<Stats>>,
    /// Counters of this slot's earlier (exited) workers, so totals never go back.
    retired: (u64, u64),
    started: Instant,
    failures: u32,
    restart_at: Option<Instant>,
}

struct Shared {
    workers: Vec<Mutex<Worker>>,
    current: Mutex<(Arc<Config>, Snapshot)>,
    listener: UnixListener,
    socket_dir: PathBuf,
    token: String,
    exe: PathBuf,
    threads: usize,
    restarts: AtomicU64,
    stopping: AtomicBool,
}

/// A running supervisor.
pub struct Supervisor {
    control: Arc<Control>,
    upgrades: Mutex<Option<UpgradeRequests>>,
    shared: Arc<Shared>,
    grace: Duration,
}

impl Supervisor {
    pub fn start(opts: SupervisorOptions) -> Result<Supervisor, String> {
        let v6 = sockets::ipv6_available();
        let n = opts.workers.max(1);
        let threads = opts
            .threads
            .unwrap_or_else(|| (super::default_threads() / n).max(1))
            .max(1);
        // The supervisor obtains and renews certificates; workers load them from storage.
        let registry = Arc::new(Registries {
            tls: Some(dwaar_tls::TlsManager::new(true)),
            ..Registries::default()
        });
        let table = RouteTable::compile(&opts.config, &registry)?;
        let k = n * threads;
        let snapshot = sockets::prepare(
            opts.sockets.as_ref().map_or(&[][..], |s| &s[..]),
            &table.listeners,
            k,
            v6,
        )?;
        let grace = Duration::from_millis(opts.config.global.grace_period_ms.unwrap_or(5000));
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the dwaar binary: {e}"))?;
        let socket_dir =
            std::env::temp_dir().join(format!("dwaar-supervisor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&socket_dir);
        std::fs::create_dir(&socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", socket_dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700));
        }
        let listener = UnixListener::bind(socket_dir.join("workers.sock"))
            .map_err(|e| format!("cannot open the worker channel: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let config = Arc::new(opts.config.clone());
        let shared = Arc::new(Shared {
            workers: (0..n)
                .map(|_| {
                    Mutex::new(Worker {
                        child: None,
                        conn: None,
                        replies: None,
                        stats: Arc::new(Mutex::new(Stats::default())),
                        retired: (0, 0),
                        started: Instant::now(),
                        failures: 0,
                        restart_at: None,
                    })
                })
                .collect(),
            current: Mutex::new((config, snapshot.clone())),
            listener,
            socket_dir,
            token: uuid::Uuid::now_v7().simple().to_string()
                + &format!("{:x}", rand::random::<u64>()),
            exe,
            threads,
            restarts: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        for i in 0..n {
            if let Err(e) = shared.spawn(i) {
                shared.stop_all(Duration::from_secs(1));
                return Err(format!("worker {i} did not start: {e}"));
            }
        }
        let (sockets_tx, _) = watch::channel(snapshot);
        let store = Arc::new(RouteStore::new(table));
        registry.activate_tls(&store.load());
        let reloader = Arc::new(Reloader::new(
            store,
            registry,
            sockets_tx,
            SocketSource::Bind { k },
            v6,
            opts.config,
            opts.path,
            &opts.sources,
        ));
        reloader.set_follower(shared.clone());
        let stats_shared = shared.clone();
        let (control, upgrades) = Control::new(reloader, Box::new(move || stats_shared.stats()));
        let purger = shared.clone();
        control.set_purge_forward(Box::new(move |p| purger.purge_all(p)));
        let monitor = shared.clone();
        std::thread::Builder::new()
            .name("dwaar-supervisor".into())
            .spawn(move || monitor.monitor())
            .map_err(|e| e.to_string())?;
        tracing::info!(
            workers = n,
            threads_per_worker = threads,
            "dwaar supervisor started"
        );
        super::footprint::release_after_start();
        Ok(Supervisor {
            control,
            upgrades: Mutex::new(Some(upgrades)),
            shared,
            grace,
        })
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    pub fn take_upgrades(&self) -> Option<UpgradeRequests> {
        self.upgrades.lock().ok().and_then(|mut u| u.take())
    }

    /// The PIDs of the running workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .workers
            .iter()
            .filter_map(|w| w.lock().ok().and_then(|w| w.child.as_ref().map(Child::id)))
            .collect()
    }

    /// Stops every worker gracefully (they drain up to the grace period) and returns.
    pub fn shutdown(self) {
        tracing::info!("stopping workers");
        self.shared.stop_all(self.grace + Duration::from_secs(5));
        self.control.reloader.release_sockets();
        let _ = std::fs::remove_dir_all(&self.shared.socket_dir);
        tracing::info!("stopped");
    }
}

impl Shared {
    fn stats(&self) -> Stats {
        let mut total = Stats {
            worker_restarts: self.restarts.load(Ordering::Relaxed),
            ..Stats::default()
        };
        for w in &self.workers {
            if let Ok(w) = w.lock() {
                total.log_written += w.retired.0;
                total.log_dropped += w.retired.1;
                if w.conn.is_some() {
                    total.workers += 1;
                    if let Ok(s) = w.stats.lock() {
                        total.requests.add(&s.requests);
                        total.inflight_requests += s.inflight_requests;
                        total.open_connections += s.open_connections;
                        total.log_dropped += s.log_dropped;
                        total.log_written += s.log_written;
                    }
                }
            }
        }
        total
    }

    /// Starts worker `i` and gives it the current config; returns once it serves.
    fn spawn(&self, i: usize) -> Result<(), String> {
        let mut slot = self.workers[i]
            .lock()
            .map_err(|_| "worker state poisoned")?;
        let child = Command::new(&self.exe)
            .arg("run")
            .arg(WORKER_FLAG)
            .arg(self.socket_dir.join("workers.sock"))
            .args([
                "--worker-index",
                &i.to_string(),
                "--threads",
                &self.threads.to_string(),
            ])
            .env(WORKER_TOKEN_ENV, &self.token)
            .env_remove(super::upgrade::HANDOFF_ENV)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let previous = slot
            .stats
            .lock()
            .ok()
            .map(|mut old| std::mem::take(&mut *old));
        if let Some(old) = previous {
            slot.retired.0 += old.log_written;
            slot.retired.1 += old.log_dropped;
        }
        slot.child = Some(child);
        slot.started = Instant::now();
        slot.conn = None;
        let r = self.connect_worker(i, &mut slot);
        if r.is_err() {
            if let Some(c) = slot.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        r
    }

    /// Accepts worker `i`'s channel, sends it the config and waits until it serves.
    fn connect_worker(&self, i: usize, slot: &mut Worker) -> Result<(), String> {
        let mut conn = self.accept_worker(i, slot)?;
        let (tx, rx) = mpsc::channel();
        let mut reader = conn.try_clone().map_err(|e| e.to_string())?;
        let stats = slot.stats.clone();
        std::thread::Builder::new()
            .name(format!("dwaar-worker-{i}-channel"))
            .spawn(move || read_worker(&mut reader, &tx, &stats))
            .map_err(|e| e.to_string())?;
        let (config, snapshot) = self
            .current
            .lock()
            .map(|c| c.clone())
            .map_err(|_| "state poisoned")?;
        send_config(&mut conn, &config, &snapshot, i, self.workers.len())?;
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(None) => {}
            Ok(Some(e)) => return Err(e),
            Err(_) => return Err("no answer from the worker".into()),
        }
        slot.conn = Some(conn);
        slot.replies = Some(rx);
        tracing::info!(
            worker = i,
            pid = slot.child.as_ref().map(Child::id),
            "worker serving"
        );
        Ok(())
    }

    /// Waits for worker `i` to connect and present the token.
    fn accept_worker(&self, i: usize, slot: &mut Worker) -> Result<UnixStream, String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.listener.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(CONNECT_TIMEOUT));
                    let hello = fdpass::recv(&mut c).ok().flatten();
                    let _ = c.set_read_timeout(None);
                    match hello.and_then(|(m, _)| serde_json::from_slice::<FromWorker>(&m).ok()) {
                        Some(FromWorker::Hello { token, index })
                            if token == self.token && index == i =>
                        {
                            return Ok(c)
                        }
                        _ => {
                            tracing::warn!(
                                "ignored a worker-channel connection that did not identify itself"
                            );
                            continue;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) {
                        return Err(format!("the worker exited during startup ({status})"));
                    }
                    if Instant::now() > deadline {
                        if let Some(mut c) = slot.child.take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        return Err("the worker did not connect in time".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("worker channel: {e}")),
            }
        }
    }

    /// Restarts workers that exited, with back-off, until the supervisor stops.
    fn monitor(&self) {
        while !self.stopping.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            for i in 0..self.workers.len() {
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                let due = {
                    let Ok(mut w) = self.workers[i].lock() else {
                        continue;
                    };
                    let exited = match w.child.as_mut().map(Child::try_wait) {
                        Some(Ok(Some(status))) => Some(status.to_string()),
                        Some(Ok(None)) => None,
                        Some(Err(e)) => Some(e.to_string()),
                        None => Some("not running".into()),
                    };
                    match (exited, w.restart_at) {
                        (None, _) => false,
                        (Some(status), None) => {
                            w.failures = if w.started.elapsed() > HEALTHY_RUN {
                                0
                            } else {
                                w.failures + 1
                            };
                            let delay = backoff(w.failures);
                            tracing::warn!(worker = i, %status, "worker exited; restarting in {delay:?}");
                            w.child = None;
                            w.conn = None;
                            w.replies = None;
                            w.restart_at = Some(Instant::now() + delay);
                            false
                        }
                        (Some(_), Some(at)) => Instant::now() >= at,
                    }
                };
                if due {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    match self.spawn(i) {
                        Ok(()) => {
                            if let Ok(mut w) = self.workers[i].lock() {
                                w.restart_at = None;
                            }
                        }
                        Err(e) => {
                            tracing::error!(worker = i, "worker restart failed: {e}");
                            if let Ok(mut w) = self.workers[i].lock() {
                                w.failures += 1;
                                w.restart_at = Some(Instant::now() + backoff(w.failures));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sends a cache purge to every running worker.
    fn purge_all(&self, purge: &super::control::Purge) {
        let msg = serde_json::to_vec(&ToWorker::Purge {
            purge: purge.clone(),
        })
        .unwrap_or_default();
        for w in &self.workers {
            if let Ok(mut w) = w.lock() {
                if let Some(c) = w.conn.as_mut() {
                    let _ = fdpass::send(c, &msg, &[]);
                }
            }
        }
    }

    /// Tells every worker to stop, waits up to `wait`, then kills what is left.
    fn stop_all(&self, wait: Duration) {
        self.stopping.store(true, Ordering::Release);
        let stop = serde_json::to_vec(&ToWorker::Stop).unwrap_or_default();
        for w in &self.workers {
            if let Ok(mut w) = w.lock() {
                if let Some(c) = w.conn.as_mut() {
                    let _ = fdpass::send(c, &stop, &[]);
                }
            }
        }
        let deadline = Instant::now() + wait;
        for w in &self.workers {
            let Ok(mut w) = w.lock() else { continue };
            let Some(child) = w.child.as_mut() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(pid = child.id(), "worker did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            w.child = None;
            w.conn = None;
        }
    }
}

impl Follower for Shared {
    fn follow(&self, config: &Arc<Config>, snapshot: &Snapshot) {
        if let Ok(mut c) = self.current.lock() {
            *c = (config.clone(), snapshot.clone());
        }
        let n = self.workers.len();
        for i in 0..n {
            let Ok(mut w) = self.workers[i].lock() else {
                continue;
            };
            let Some(conn) = w.conn.as_mut() else {
                continue;
            };
            let sent = send_config(conn, config, snapshot, i, n);
            let answer = match (sent, w.replies.as_ref()) {
                (Ok(()), Some(rx)) => rx
                    .recv_timeout(REPLY_TIMEOUT)
                    .unwrap_or(Some("no answer".into())),
                (Err(e), _) => Some(e),
                (Ok(()), None) => Some("no reply channel".into()),
            };
            if let Some(e) = answer {
                // It restarts with the config just committed.
                tracing::error!(
                    worker = i,
                    "worker could not apply the config ({e}); restarting it"
                );
                if let Some(c) = w.child.as_mut() {
                    let _ = c.kill();
                }
            }
        }
    }
}

fn send_config(
    conn: &mut UnixStream,
    config: &Config,
    snapshot: &Snapshot,
    i: usize,
    n: usize,
) -> Result<(), String> {
    let (specs, fds) = sockets::export(snapshot, i, n);
    let msg = ToWorker::Config {
        config: Box::new(config.clone()),
        specs,
    };
    let payload = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
    fdpass::send(conn, &payload, &fds).map_err(|e| format!("cannot reach the worker: {e}"))
}

/// Reads a worker's messages: stats are recorded, config answers handed to the waiter.
fn read_worker(
    conn: &mut UnixStream,
    replies: &mpsc::Sender<Option<String>>,
    stats: &Mutex<Stats>,
) {
    while let Ok(Some((msg, _))) = fdpass::recv(conn) {
        match serde_json::from_slice::<FromWorker>(&msg) {
            Ok(FromWorker::Applied { error }) => {
                let _ = replies.send(error);
            }
            Ok(FromWorker::Stats { stats: s }) => {
                if let Ok(mut g) = stats.lock() {
                    *g = *s;
                }
            }
            Ok(FromWorker::Hello { .. }) | Err(_) => {}
        }
    }
    // The worker is gone: nothing of it is in flight any more; its counters stay until
    // the slot's next worker starts (then they move to `retired`).
    if let Ok(mut g) = stats.lock() {
        g.inflight_requests = 0;
        g.open_connections = 0;
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8) - 1)).min(MAX_BACKOFF)
}

/// The worker process's side of the channel.
pub mod worker {
    use super::*;
    use crate::server::{Server, StartOptions};

    /// Runs a worker process until the supervisor says stop, goes away, or SIGTERM.
    pub fn run(
        channel: &std::path::Path,
        index: usize,
        threads: usize,
        fronts: crate::server::Fronts,
    ) -> Result<(), String> {
        let token =
            std::env::var(WORKER_TOKEN_ENV).map_err(|_| "not started by a dwaar supervisor")?;
        let mut conn = UnixStream::connect(channel)
            .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
        let hello =
            serde_json::to_vec(&FromWorker::Hello { token, index }).map_err(|e| e.to_string())?;
        fdpass::send(&mut conn, &hello, &[]).map_err(|e| e.to_string())?;
        let (config, snapshot) = match next(&mut conn)? {
            Some((ToWorker::Config { config, specs }, fds)) => {
                (*config, sockets::import(specs, fds)?)
            }
            _ => return Err("the supervisor sent no config".into()),
        };
        let server = Server::start(StartOptions {
            config,
            sources: SourceMap::new(),
            path: None,
            threads: Some(threads),
            sockets: Some(snapshot),
            worker_process: true,
            fronts,
        });
        let writer = Arc::new(Mutex::new(conn.try_clone().map_err(|e| e.to_string())?));
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                let _ = reply(&writer, Some(e.clone()));
                return Err(e);
            }
        };
        reply(&writer, None)?;
        // Commands arrive on a plain thread; the main thread waits for them or a signal.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let control = server.control();
        let reader_writer = writer.clone();
        std::thread::Builder::new()
            .name("dwaar-worker-channel".into())
            .spawn(move || {
                // A stop, the supervisor going away or a broken channel all end it.
                loop {
                    match next(&mut conn) {
                        Ok(Some((ToWorker::Config { config, specs }, fds))) => {
                            let r = sockets::import(specs, fds).and_then(|s| {
                                control
                                    .reloader
                                    .load_with_sockets(*config, s)
                                    .map(|_| ())
                                    .map_err(|e| e.message)
                            });
                            let _ = reply(&reader_writer, r.err());
                        }
                        Ok(Some((ToWorker::Purge { purge }, _))) => {
                            control.purge_cache(&purge);
                        }
                        _ => break,
                    }
                }
                let _ = tx.send(());
            })
            .map_err(|e| e.to_string())?;
        let stats_writer = writer.clone();
        let stats_control = server.control();
        std::thread::Builder::new()
            .name("dwaar-worker-stats".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let msg = FromWorker::Stats {
                    stats: Box::new(stats_control.stats()),
                };
                let Ok(payload) = serde_json::to_vec(&msg) else {
                    break;
                };
                let Ok(mut w) = stats_writer.lock() else {
                    break;
                };
                if fdpass::send(&mut w, &payload, &[]).is_err() {
                    break;
                }
            })
            .map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            // Each worker's own upstream state: its health checks and DNS refreshes.
            server.spawn_background();
            use tokio::signal::unix::{signal, SignalKind};
            // The supervisor decides about reloads and stops: a Ctrl-C that reaches
            // the whole process group, SIGHUP, SIGUSR1/2 are left to it.
            let ignored: Vec<_> = [SignalKind::interrupt(), SignalKind::quit(), SignalKind::hangup(), SignalKind::user_defined1(), SignalKind::user_defined2()]
                .into_iter()
                .filter_map(|k| signal(k).ok())
                .collect();
            let mut term = signal(SignalKind::terminate()).ok();
            tokio::select! {
                _ = rx.recv() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            drop(ignored);
        });
        server.shutdown();
        Ok(())
    }

    fn next(
        conn: &mut UnixStream,
    ) -> Result<Option<(ToWorker, Vec<std::os::fd::OwnedFd>)>, String> {
        match fdpass::recv(conn).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some((m, fds)) => serde_json::from_slice(&m)
                .map(|t| Some((t, fds)))
                .map_err(|e| format!("bad message from the supervisor: {e}")),
        }
    }

    fn reply(writer: &Mutex<UnixStream>, error: Option<String>) -> Result<(), String> {
        let payload =
            serde_json::to_vec(&FromWorker::Applied { error }).map_err(|e| e.to_string())?;
        let mut w = writer.lock().map_err(|_| "poisoned")?;
        fdpass::send(&mut w, &payload, &[]).map_err(|e| e.to_string())
    }
}
