//! The control plane shared by a standalone server and the supervisor: what the admin
//! API reaches ([`Control`]) and the loop that reacts to signals, `--watch` and upgrade
//! requests ([`run`]).

use super::reload::Reloader;
use super::upgrade::{self, Relaunch};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Live numbers of the serving processes, for `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub inflight_requests: u64,
    pub open_connections: u64,
    pub workers: u64,
    pub worker_restarts: u64,
    /// Access-log records dropped because an output could not keep up or failed.
    #[serde(default)]
    pub log_dropped: u64,
    #[serde(default)]
    pub log_written: u64,
    /// Request, analytics and rate-limit counters (summed over workers).
    #[serde(default)]
    pub requests: crate::metrics::Snapshot,
}

type UpgradeReply = tokio::sync::oneshot::Sender<Result<u32, String>>;
/// Pending upgrade requests, consumed by [`run`].
pub type UpgradeRequests = tokio::sync::mpsc::UnboundedReceiver<UpgradeReply>;

/// Shared by the control plane and the admin API.
pub struct Control {
    pub reloader: Arc<Reloader>,
    pub stop: Notify,
    pub started: Instant,
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
    upgrades: tokio::sync::mpsc::UnboundedSender<UpgradeReply>,
    /// How to start a successor, captured at startup.
    relaunch: Option<Relaunch>,
    /// The admin socket, handed to a successor next to the proxy listeners.
    admin_socket: Mutex<Option<(OwnedFd, Option<PathBuf>)>>,
    /// Where cache purges also go (the supervisor sends them to its workers).
    purge_forward: Mutex<Option<PurgeForward>>,
}

/// What `DELETE /cache` removes: everything, or by host, exact path or path prefix.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Purge {
    pub host: Option<String>,
    pub path: Option<String>,
    pub prefix: Option<String>,
}

type PurgeForward = Box<dyn Fn(&Purge) + Send + Sync>;

impl Control {
    pub fn new(
        reloader: Arc<Reloader>,
        stats: Box<dyn Fn() -> Stats + Send + Sync>,
    ) -> (Arc<Control>, UpgradeRequests) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let c = Control {
            reloader,
            stop: Notify::new(),
            started: Instant::now(),
            stats,
            upgrades: tx,
            relaunch: Relaunch::current(),
            admin_socket: Mutex::new(None),
            purge_forward: Mutex::new(None),
        };
        (Arc::new(c), rx)
    }

    /// Registers the admin socket so an upgrade passes it on.
    pub fn set_admin_socket(&self, fd: OwnedFd, unix_path: Option<PathBuf>) {
        if let Ok(mut g) = self.admin_socket.lock() {
            *g = Some((fd, unix_path));
        }
    }

    /// Starts the successor and hands it every socket (see [`upgrade`]).
    fn hand_over(&self) -> Result<u32, String> {
        use std::os::fd::AsFd;
        let relaunch = self
            .relaunch
            .as_ref()
            .ok_or("cannot tell which binary to start")?;
        let admin = self
            .admin_socket
            .lock()
            .map_err(|_| "admin state poisoned")?;
        let extra = admin.as_ref().map(|(fd, path)| upgrade::Extra {
            fd: fd.as_fd(),
            unix_path: path.clone(),
        });
        upgrade::hand_over(
            relaunch,
            &self.reloader.sockets(),
            &self.reloader.current(),
            extra,
        )
    }

    /// Purges this process's caches and, in worker mode, the workers'. Returns the
    /// responses removed here.
    pub fn purge_cache(&self, p: &Purge) -> u64 {
        if let Ok(f) = self.purge_forward.lock() {
            if let Some(f) = f.as_ref() {
                f(p);
            }
        }
        self.reloader
            .table()
            .cache_stores
            .iter()
            .map(|s| s.purge(p.host.as_deref(), p.path.as_deref(), p.prefix.as_deref()))
            .sum()
    }

    /// Sends purges on to other processes as well (the supervisor's workers).
    pub fn set_purge_forward(&self, f: PurgeForward) {
        if let Ok(mut g) = self.purge_forward.lock() {
            *g = Some(f);
        }
    }

    /// Asks the server to shut down gracefully.
    pub fn request_stop(&self) {
        self.stop.notify_one();
    }

    /// Asks the control loop for a binary upgrade; returns the new process's PID.
    pub async fn request_upgrade(&self) -> Result<u32, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.upgrades
            .send(tx)
            .map_err(|_| "the server is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the upgrade was abandoned".into()))
    }

    pub fn stats(&self) -> Stats {
        (self.stats)()
    }

    /// The Prometheus exposition of the control-plane metrics.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.stats();
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "# HELP dwaar_config_reloads_total Config reloads by result.\n\
             # TYPE dwaar_config_reloads_total counter\n\
             dwaar_config_reloads_total{{result=\"success\"}} {}\n\
             dwaar_config_reloads_total{{result=\"failure\"}} {}\n\
             # HELP dwaar_uptime_seconds Seconds since the server started.\n\
             # TYPE dwaar_uptime_seconds gauge\n\
             dwaar_uptime_seconds {}\n\
             # HELP dwaar_inflight_requests Requests being served now.\n\
             # TYPE dwaar_inflight_requests gauge\n\
             dwaar_inflight_requests {}\n\
             # HELP dwaar_open_connections Client connections open now.\n\
             # TYPE dwaar_open_connections gauge\n\
             dwaar_open_connections {}\n\
             # HELP dwaar_workers Worker processes running.\n\
             # TYPE dwaar_workers gauge\n\
             dwaar_workers {}\n\
             # HELP dwaar_worker_restarts_total Worker processes restarted after exiting.\n\
             # TYPE dwaar_worker_restarts_total counter\n\
             dwaar_worker_restarts_total {}\n\
             # HELP dwaar_log_records_total Access-log records by outcome.\n\
             # TYPE dwaar_log_records_total counter\n\
             dwaar_log_records_total{{result=\"written\"}} {}\n\
             dwaar_log_records_total{{result=\"dropped\"}} {}\n",
            self.reloader.ok_count.load(Relaxed),
            self.reloader.fail_count.load(Relaxed),
            self.started.elapsed().as_secs(),
            st.inflight_requests,
            st.open_connections,
            st.workers,
            st.worker_restarts,
            st.log_written,
            st.log_dropped,
        );
        st.requests.write(&mut out);
        crate::metrics::write_upstreams(&self.reloader.table(), &mut out);
        crate::metrics::write_process(&mut out);
        dwaar_fleet::write_metrics(&mut out);
        self.reloader.tls_metrics(&mut out);
        out
    }
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A stop was asked for (signal or `/stop`): this server goes away.
    Stopped,
    /// A successor took over the sockets and serves; this process only drains.
    Upgraded,
}

/// Reacts to signals, `--watch` and upgrade requests until the server should stop:
/// SIGTERM/SIGINT/SIGQUIT or `/stop`, or a successful upgrade (the successor serves).
/// SIGUSR1 and SIGHUP re-read the config file; SIGUSR2 upgrades.
///
/// `signals` must have been created before the server started listening: a stop or
/// reload signal that arrives in between is then waiting here instead of killing the
/// process (the default action of SIGTERM and SIGHUP).
pub async fn run(
    control: &Arc<Control>,
    upgrades: Option<UpgradeRequests>,
    watch_files: bool,
    mut signals: Signals,
) -> Ended {
    if watch_files {
        let reloader = control.reloader.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tick.tick().await;
                if reloader.files_changed() {
                    // Debounce: editors write in several steps.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload_file()).await;
                }
            }
        });
    }
    let mut upgrades = upgrades;
    loop {
        let request = tokio::select! {
            s = signals.next(control) => match s {
                SignalAction::Stop => return Ended::Stopped,
                SignalAction::Reload => {
                    let r = control.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload_file()).await;
                    continue;
                }
                SignalAction::Upgrade => None,
            },
            r = async {
                match upgrades.as_mut() {
                    Some(u) => u.recv().await,
                    None => std::future::pending().await,
                }
            } => match r {
                Some(reply) => Some(reply),
                None => { upgrades = None; continue; }
            },
        };
        let c = control.clone();
        let result = tokio::task::spawn_blocking(move || c.hand_over())
            .await
            .unwrap_or_else(|e| Err(format!("upgrade task failed: {e}")));
        match &result {
            Ok(pid) => tracing::info!(pid, "upgrade: the new process serves; draining this one"),
            Err(e) => tracing::error!("upgrade failed, this process keeps serving: {e}"),
        }
        let done = result.is_ok();
        if let Some(reply) = request {
            let _ = reply.send(result);
        }
        if done {
            // Let the admin API deliver its answer before this runtime stops.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ended::Upgraded;
        }
    }
}

enum SignalAction {
    Stop,
    Reload,
    Upgrade,
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// The signal streams, created once so no signal is missed between waits (and early,
/// before the listeners, so none is missed at start either).
pub struct Signals([Option<tokio::signal::unix::Signal>; 6]);

impl Signals {
    /// Registers the handlers; needs a Tokio runtime with I/O enabled.
    pub fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let mk = |k: SignalKind| signal(k).ok();
        Signals([
            mk(SignalKind::terminate()),
            mk(SignalKind::interrupt()),
            mk(SignalKind::quit()),
            mk(SignalKind::user_defined1()),
            mk(SignalKind::hangup()),
            mk(SignalKind::user_defined2()),
        ])
    }

    async fn next(&mut self, control: &Control) -> SignalAction {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let [term, int, quit, usr1, hup, usr2] = &mut self.0;
        tokio::select! {
            _ = one(term) => SignalAction::Stop,
            _ = one(int) => SignalAction::Stop,
            _ = one(quit) => SignalAction::Stop,
            _ = control.stop.notified() => SignalAction::Stop,
            _ = one(usr1) => SignalAction::Reload,
            _ = one(hup) => SignalAction::Reload,
            _ = one(usr2) => SignalAction::Upgrade,
        }
    }
}
