//! The server process: worker threads with their own listeners, and a control plane.
//!
//! `Server::start` compiles the config, checks that every port can be bound, and starts
//! one thread per worker, each with a current-thread Tokio runtime that accepts on its
//! own `SO_REUSEPORT` sockets and hands connections to Pingora's HTTP proxy app. The
//! control plane (signals, `--watch`, health checks, the admin API) runs on the caller's
//! runtime via [`Server::run_control`]. Shutdown stops accepting, waits for in-flight
//! requests up to the grace period, then returns.

pub mod inflight;
pub mod listeners;
pub mod reload;

use crate::proxy::DwaarProxy;
use crate::route_table::{RouteStore, RouteTable};
use crate::upstream::{HealthChecker, UpstreamRegistry};
use dwaar_config::model::Config;
use dwaar_config::source::SourceMap;
use listeners::{Apps, ConnCount};
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use reload::Reloader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How to start the server.
pub struct StartOptions {
    pub config: Config,
    pub sources: SourceMap,
    /// The config file, for re-reads on SIGUSR1/SIGHUP and `--watch`.
    pub path: Option<PathBuf>,
    /// Worker threads (default: available CPUs).
    pub threads: Option<usize>,
}

/// Shared by the control plane and the admin API.
pub struct Control {
    pub reloader: Arc<Reloader>,
    pub stop: Notify,
    pub started: Instant,
}

impl Control {
    /// Asks the server to shut down gracefully.
    pub fn request_stop(&self) {
        self.stop.notify_one();
    }
}

/// A running server.
pub struct Server {
    control: Arc<Control>,
    store: Arc<RouteStore>,
    shutdown: watch::Sender<bool>,
    conns: Arc<ConnCount>,
    grace: Duration,
}

impl Server {
    pub fn start(opts: StartOptions) -> Result<Server, String> {
        let v6 = listeners::ipv6_available();
        let registry = Arc::new(UpstreamRegistry::default());
        let table = RouteTable::compile(&opts.config, &registry)?;
        listeners::probe(&table.listeners, v6)?;
        let grace = Duration::from_millis(opts.config.global.grace_period_ms.unwrap_or(5000));
        let (specs_tx, specs_rx) = watch::channel(Arc::new(table.listeners.clone()));
        let store = Arc::new(RouteStore::new(table));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let conf = Arc::new(ServerConf {
            upstream_keepalive_pool_size: 1024,
            // Our own policy (lb_retries, lb_try_duration) bounds attempts.
            max_retries: 10_000,
            ..ServerConf::default()
        });
        let h1 = pingora_proxy::http_proxy(
            &conf,
            DwaarProxy {
                store: store.clone(),
            },
        );
        let mut h2c = pingora_proxy::http_proxy(
            &conf,
            DwaarProxy {
                store: store.clone(),
            },
        );
        let mut h2c_opts = HttpServerOptions::default();
        h2c_opts.h2c = true;
        h2c.server_options = Some(h2c_opts);
        let apps = Apps {
            h1: Arc::new(h1),
            h2c: Arc::new(h2c),
        };

        let threads = opts
            .threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        let conns = Arc::new(ConnCount::default());
        for i in 0..threads {
            let (specs, shutdown, apps, conns) = (
                specs_rx.clone(),
                shutdown_rx.clone(),
                apps.clone(),
                conns.clone(),
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a worker runtime: {e}"))?;
            std::thread::Builder::new()
                .name(format!("dwaar-worker-{i}"))
                .spawn(move || {
                    inflight::register_thread();
                    rt.block_on(async move {
                        listeners::worker(specs, shutdown, apps, conns, v6).await;
                        // Keep serving accepted connections until the process exits.
                        std::future::pending::<()>().await;
                    });
                })
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
        }
        let reloader = Arc::new(Reloader::new(
            store.clone(),
            registry,
            specs_tx,
            v6,
            opts.config,
            opts.path,
            &opts.sources,
        ));
        let control = Arc::new(Control {
            reloader,
            stop: Notify::new(),
            started: Instant::now(),
        });
        tracing::info!(threads, "dwaar started");
        Ok(Server {
            control,
            store,
            shutdown: shutdown_tx,
            conns,
            grace,
        })
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Runs health checks, signal handling and (optionally) the config file watcher
    /// until a stop signal or an admin `/stop`. Must run inside a Tokio runtime.
    pub async fn run_control(&self, watch_files: bool) {
        let checker = HealthChecker {
            store: self.store.clone(),
        };
        let shutdown_rx = self.shutdown.subscribe();
        tokio::spawn(async move { checker.run(shutdown_rx).await });
        if watch_files {
            let reloader = self.control.reloader.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(300));
                loop {
                    tick.tick().await;
                    if reloader.files_changed() {
                        // Debounce: editors write in several steps.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = reloader.reload_file();
                    }
                }
            });
        }
        wait_for_stop(&self.control).await;
    }

    /// Stops accepting, waits for in-flight requests (up to the grace period) and returns.
    pub fn shutdown(self) {
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + self.grace;
        // A request already on the wire may not have been counted yet: a short settle time.
        std::thread::sleep(Duration::from_millis(50));
        while inflight::total() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = inflight::total();
        if left > 0 {
            tracing::warn!(
                requests = left,
                "grace period over; closing remaining requests"
            );
        }
        tracing::info!(connections = self.conns.get(), "stopped");
    }
}

#[cfg(unix)]
async fn wait_for_stop(control: &Control) {
    use tokio::signal::unix::{signal, SignalKind};
    let mk = |k: SignalKind| signal(k).ok();
    let (mut term, mut int, mut quit, mut usr1, mut hup) = (
        mk(SignalKind::terminate()),
        mk(SignalKind::interrupt()),
        mk(SignalKind::quit()),
        mk(SignalKind::user_defined1()),
        mk(SignalKind::hangup()),
    );
    async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            _ = next(&mut term) => return,
            _ = next(&mut int) => return,
            _ = next(&mut quit) => return,
            _ = control.stop.notified() => return,
            // SIGUSR1 and SIGHUP (systemctl reload) re-read the config file.
            _ = next(&mut usr1) => { let _ = control.reloader.reload_file(); }
            _ = next(&mut hup) => { let _ = control.reloader.reload_file(); }
        }
    }
}
