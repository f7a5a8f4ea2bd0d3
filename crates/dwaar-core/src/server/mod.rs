//! The server process: worker threads with their own listeners, and a control plane.
//!
//! `Server::start` compiles the config, checks that every port can be bound, and starts
//! one thread per worker, each with a current-thread Tokio runtime that accepts on its
//! own `SO_REUSEPORT` sockets and hands connections to Pingora's HTTP proxy app. The
//! control plane (signals, `--watch`, health checks, the admin API) runs on the caller's
//! runtime via [`Server::run_control`]. Shutdown stops accepting, waits for in-flight
//! requests up to the grace period, then returns.

pub mod control;
pub mod fdpass;
pub mod footprint;
pub mod listeners;
pub mod notify;
pub mod reload;
pub mod sockets;
pub mod supervisor;
pub mod tls_conn;
pub mod upgrade;

use crate::proxy::DwaarProxy;
use crate::route_table::Registries;
use crate::route_table::{RouteStore, RouteTable};
use crate::upstream::HealthChecker;
pub use control::{Control, Stats};
use dwaar_config::model::Config;
use dwaar_config::source::SourceMap;
use listeners::{Apps, ConnCount};
use pingora_core::server::configuration::ServerConf;
use reload::{Reloader, SocketSource};
use sockets::Snapshot;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How to start the server.
pub struct StartOptions {
    pub config: Config,
    pub sources: SourceMap,
    /// The config file, for re-reads on SIGUSR1/SIGHUP and `--watch`.
    pub path: Option<PathBuf>,
    /// Worker threads (default: available CPUs).
    pub threads: Option<usize>,
    /// Listening sockets handed over by a supervisor or a predecessor (`dwaar upgrade`).
    pub sockets: Option<Snapshot>,
    /// A worker process: new sockets only ever come from the supervisor.
    pub worker_process: bool,
    /// Which front-ends serve which connections.
    pub fronts: Fronts,
}

/// Which front-end serves which requests, chosen once when the server starts (the CLI
/// sets these; the library reads no environment for them). Every HTTP/1.1 connection,
/// plain or TLS, is read by the lean path first (its head limits, timeouts and version
/// checks are the front door), and h2c connections are recognised there.
#[derive(Debug, Clone, Copy)]
pub struct Fronts {
    /// Every HTTP/1.1 request is handed to Pingora's `HttpProxy` once its head is read
    /// (instead of only those the lean path does not serve itself): the end-to-end
    /// suites run through both, and benchmarks compare them.
    pub pingora_h1: bool,
    /// HTTP/2 over TLS goes to Dwaar's own HTTP/2 front-end (else to Pingora's).
    pub own_h2: bool,
    /// How HTTP/3 runs: UDP segmentation offload, the cap on QUIC connections.
    pub quic: crate::quic::QuicOptions,
}

impl Default for Fronts {
    fn default() -> Self {
        Fronts {
            pingora_h1: false,
            own_h2: true,
            quic: crate::quic::QuicOptions::default(),
        }
    }
}

/// The default number of accepting threads: one per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A running server.
pub struct Server {
    control: Arc<Control>,
    upgrades: std::sync::Mutex<Option<control::UpgradeRequests>>,
    store: Arc<RouteStore>,
    shutdown: watch::Sender<bool>,
    conns: Arc<ConnCount>,
    grace: Duration,
}

impl Server {
    pub fn start(opts: StartOptions) -> Result<Server, String> {
        crate::lifecycle::install_panic_hook();
        let v6 = sockets::ipv6_available();
        let registry = Arc::new(Registries::serving(!opts.worker_process));
        let table = RouteTable::compile(&opts.config, &registry)?;
        let threads = opts.threads.unwrap_or_else(default_threads).max(1);
        let source = if opts.worker_process {
            SocketSource::Given
        } else {
            SocketSource::Bind { k: threads }
        };
        let snapshot = match opts.sockets {
            // Inherited sockets are kept for the addresses still configured.
            Some(given) if opts.worker_process => given,
            Some(given) => sockets::prepare(&given, &table.listeners, threads, v6)?,
            None => sockets::prepare(&[], &table.listeners, threads, v6)?,
        };
        let grace = Duration::from_millis(opts.config.global.grace_period_ms.unwrap_or(5000));
        let (sockets_tx, sockets_rx) = watch::channel(snapshot);
        let store = Arc::new(RouteStore::new(table));
        registry.activate_tls(&store.load());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        crate::quic::start(store.clone(), shutdown_rx.clone(), opts.fronts.quic);
        crate::layer4::udp::start(store.clone(), shutdown_rx.clone());

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
        let apps = Apps {
            h1: Arc::new(h1),
            store: store.clone(),
            fronts: opts.fronts,
        };

        let conns = Arc::new(ConnCount::default());
        for i in 0..threads {
            let (sockets, shutdown, apps, conns) = (
                sockets_rx.clone(),
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
                    crate::lifecycle::inflight::register_thread();
                    rt.block_on(async move {
                        listeners::worker(sockets, shutdown, apps, conns, (i, threads)).await;
                        // Keep serving accepted connections until the process exits.
                        std::future::pending::<()>().await;
                    });
                })
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
        }
        let reloader = Arc::new(Reloader::new(
            store.clone(),
            registry,
            sockets_tx,
            source,
            v6,
            opts.config,
            opts.path,
            &opts.sources,
        ));
        let stats_conns = conns.clone();
        let stats_store = store.clone();
        let (control, upgrades) = Control::new(
            reloader,
            Box::new(move || Stats {
                inflight_requests: crate::lifecycle::inflight::total() as u64,
                open_connections: stats_conns.get() as u64,
                workers: 1,
                worker_restarts: 0,
                log_dropped: dwaar_log::dropped_total(),
                log_written: dwaar_log::written_total(),
                requests: crate::metrics::Snapshot::take(Some(&stats_store.load())),
            }),
        );
        tracing::info!(threads, "dwaar started");
        footprint::release_after_start();
        Ok(Server {
            control,
            upgrades: std::sync::Mutex::new(Some(upgrades)),
            store,
            shutdown: shutdown_tx,
            conns,
            grace,
        })
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Starts the background service of this process's route tables: active health
    /// checks, `dynamic` upstream refreshes and host-name lookups. Must run inside a
    /// Tokio runtime (a single server's control runtime, or a worker process's).
    pub fn spawn_background(&self) {
        let checker = HealthChecker {
            store: self.store.clone(),
        };
        let shutdown_rx = self.shutdown.subscribe();
        tokio::spawn(async move { checker.run(shutdown_rx).await });
    }

    /// Runs health checks and the control loop (signals, `--watch`, upgrades) until a
    /// stop signal, an admin `/stop` or a completed upgrade. Must run inside a Tokio runtime.
    pub async fn run_control(
        &self,
        watch_files: bool,
        signals: control::Signals,
    ) -> control::Ended {
        self.spawn_background();
        let upgrades = self.upgrades.lock().ok().and_then(|mut u| u.take());
        control::run(&self.control, upgrades, watch_files, signals).await
    }

    /// Stops accepting, waits for in-flight requests (up to the grace period) and returns.
    pub fn shutdown(self) {
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let deadline = Instant::now() + self.grace;
        crate::lifecycle::inflight::start_draining(deadline);
        // Tunnels with a `stream_close_delay` close after it, as on a config change.
        crate::upstream::tunnels::unloaded(&self.store.load().tunnels);
        let _ = self.shutdown.send(true);
        // Close our copies of the listening sockets: new connections are refused now
        // (or, after an upgrade, accepted by the successor that holds the same sockets).
        // A request already on the wire may not have been counted yet: a short settle time.
        std::thread::sleep(Duration::from_millis(50));
        // Wait for requests to finish and for keep-alive clients to take their
        // `Connection: close` and leave; idle connections hold the exit at most until
        // the grace period ends.
        while (crate::lifecycle::inflight::total() > 0 || self.conns.get() > 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = crate::lifecycle::inflight::total();
        if left > 0 {
            tracing::warn!(
                requests = left,
                "grace period over; closing remaining requests"
            );
        }
        self.control.reloader.flush_logs(Duration::from_secs(2));
        self.control.reloader.flush_analytics();
        crate::otel::export::flush(Duration::from_secs(2));
        tracing::info!(connections = self.conns.get(), "stopped");
    }
}
