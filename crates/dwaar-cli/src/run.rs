//! `dwaar run`: wires the config, the server (or the supervisor of worker processes),
//! the admin API, the pidfile and an inherited upgrade together.

use crate::commands::load;
use dwaar_admin::listener::BoundAdmin;
use dwaar_core::server::control::{self, Control};
use dwaar_core::server::notify;
use dwaar_core::server::upgrade::Inherited;
use dwaar_core::server::{supervisor, Server, StartOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `dwaar run` gets its config.
pub enum ConfigSource<'a> {
    /// A file: `--config`, else the default lookup.
    File(Option<&'a Path>),
    /// Text made by a quick command (`reverse-proxy`, `file-server`, `respond`).
    Generated(String),
}

/// Options of `dwaar run`.
pub struct RunOptions<'a> {
    pub source: ConfigSource<'a>,
    pub threads: Option<usize>,
    pub workers: Option<u16>,
    pub watch: bool,
    pub pidfile: Option<PathBuf>,
    pub environ: bool,
    /// Lines printed once the server serves (the quick commands' summary).
    pub announce: Vec<String>,
}

pub fn run(o: RunOptions<'_>) -> i32 {
    if o.environ {
        for (k, v) in std::env::vars_os() {
            println!("{}={}", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the control runtime: {e}");
            return 1;
        }
    };
    // First of all (before the config loads and any listener opens): a SIGTERM or SIGHUP
    // from then on is handled, never fatal.
    let signals = {
        let _in_runtime = rt.enter();
        control::Signals::new()
    };
    let mut inherited = match Inherited::take() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    install_notifier();
    let (path, loaded) = match inherited.as_mut().and_then(|i| i.config.take()) {
        // An upgrade serves exactly what its predecessor served (which may have come
        // from the admin API); the file stays the source of later reloads.
        Some(config) => {
            let path = match &o.source {
                ConfigSource::File(flag) => Some(
                    dwaar_config::resolve_config_path(*flag)
                        .unwrap_or_else(|_| PathBuf::from("Dwaarfile")),
                ),
                ConfigSource::Generated(_) => None,
            };
            let sources = path
                .as_deref()
                .and_then(|p| dwaar_config::load_file(p).ok())
                .map(|l| l.sources)
                .unwrap_or_default();
            let loaded = dwaar_config::Loaded {
                config: *config,
                sources,
                warnings: Vec::new(),
            };
            (path, loaded)
        }
        None => match load_source(&o.source) {
            Ok(v) => v,
            Err(c) => {
                if let Some(i) = inherited {
                    i.failed("the config file does not load");
                }
                return c;
            }
        },
    };
    crate::runtime_log::init(
        loaded.config.global.log.as_ref(),
        loaded.config.global.debug,
    );
    let abs = path.map(|p| std::path::absolute(&p).unwrap_or(p));
    let sites = loaded.config.sites.len();
    let workers = o.workers.unwrap_or(loaded.config.global.workers).max(1);
    let fail = |inherited: Option<Inherited>, e: String| {
        eprintln!("error: {e}");
        if let Some(i) = inherited {
            i.failed(&e);
        }
        1
    };
    // The admin socket: the predecessor's, or bound now.
    let (admin, inherited) = match admin_socket(&loaded.config, inherited) {
        Ok(v) => v,
        Err((e, inherited)) => return fail(inherited, e),
    };
    let (sockets, inherited) = match inherited {
        Some(mut i) => (
            Some(std::mem::replace(&mut i.sockets, Arc::new(Vec::new()))),
            Some(i),
        ),
        None => (None, None),
    };
    let threads = o.threads;
    let started = if workers > 1 {
        supervisor::Supervisor::start(supervisor::SupervisorOptions {
            config: loaded.config,
            sources: loaded.sources,
            path: abs,
            workers: usize::from(workers),
            threads,
            sockets,
        })
        .map(Running::Supervisor)
    } else {
        Server::start(StartOptions {
            config: loaded.config,
            sources: loaded.sources,
            path: abs,
            threads,
            sockets,
            worker_process: false,
            fronts: fronts(),
        })
        .map(Running::Server)
    };
    let running = match started {
        Ok(r) => r,
        Err(e) => return fail(inherited, e),
    };
    let control = running.control();
    let code = rt.block_on(async {
        if let Some(a) = &admin {
            match a.listen() {
                Ok(l) => {
                    tracing::info!(address = %a.describe(), "admin API listening");
                    tokio::spawn(dwaar_admin::serve(l, control.clone()));
                }
                Err(e) => tracing::error!("admin API unavailable: {e}"),
            }
            if let Ok(fd) = a.fd().try_clone_to_owned() {
                control.set_admin_socket(fd, a.unix_path());
            }
        }
        write_pidfile(o.pidfile.as_deref());
        let status = dwaar_core::server::reload::serving_status(sites);
        match inherited {
            // The successor of an upgrade becomes the service's main process before
            // its predecessor is told to drain and exit.
            Some(i) => {
                notify::ready_as_main(&status);
                i.ready();
            }
            None => notify::ready(&status),
        }
        for line in &o.announce {
            println!("{line}");
        }
        if let Some(every) = watchdog_interval() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    notify::watchdog();
                }
            });
        }
        let ended = match &running {
            Running::Server(s) => s.run_control(o.watch, signals).await,
            Running::Supervisor(s) => {
                let upgrades = s.take_upgrades();
                control::run(&control, upgrades, o.watch, signals).await
            }
        };
        // After an upgrade the successor is the main process: it is not stopping.
        if ended == control::Ended::Stopped {
            notify::stopping();
            // `shutdown_delay`: keep serving as before for a while, so load balancers
            // see the health check fail and move traffic away before connections drain.
            if let Some(ms) = control.reloader.current().global.shutdown_delay_ms {
                tracing::info!(
                    delay_ms = ms,
                    "stop requested: serving on for shutdown_delay"
                );
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
        0
    });
    running.shutdown();
    remove_pidfile(o.pidfile.as_deref());
    code
}

/// The config of a run: from a file (with its path, for reloads) or generated.
fn load_source(source: &ConfigSource<'_>) -> Result<(Option<PathBuf>, dwaar_config::Loaded), i32> {
    match source {
        ConfigSource::File(flag) => load(*flag).map(|(p, l)| (Some(p), l)),
        ConfigSource::Generated(text) => {
            match dwaar_config::load_str("command line", None, text, &|k| std::env::var(k).ok()) {
                Ok(l) => Ok((None, l)),
                Err(e) => {
                    eprint!("{e}");
                    Err(1)
                }
            }
        }
    }
}

/// Reports to the service manager when there is one (`$NOTIFY_SOCKET`, set by systemd
/// for `Type=notify` units and by `dwaar start`).
fn install_notifier() {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify::install(&socket) {
            eprintln!("warning: {e}; not reporting readiness");
        }
    }
}

fn watchdog_interval() -> Option<std::time::Duration> {
    notify::watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    )
}

enum Running {
    Server(Server),
    Supervisor(supervisor::Supervisor),
}

impl Running {
    fn control(&self) -> Arc<Control> {
        match self {
            Running::Server(s) => s.control(),
            Running::Supervisor(s) => s.control(),
        }
    }

    fn shutdown(self) {
        match self {
            Running::Server(s) => s.shutdown(),
            Running::Supervisor(s) => s.shutdown(),
        }
    }
}

type AdminAndRest = (Option<BoundAdmin>, Option<Inherited>);

fn admin_socket(
    config: &dwaar_config::model::Config,
    inherited: Option<Inherited>,
) -> Result<AdminAndRest, (String, Option<Inherited>)> {
    let Some(addr) = config.global.admin.listen.as_deref() else {
        return Ok((None, inherited));
    };
    let mut inherited = inherited;
    if let Some((fd, unix)) = inherited.as_mut().and_then(|i| i.extra.take()) {
        return Ok((Some(BoundAdmin::from_fd(fd, unix)), inherited));
    }
    match BoundAdmin::bind(addr) {
        Ok(b) => Ok((Some(b), inherited)),
        // The default address is often taken by a Caddy on the same machine: serve
        // anyway and say how to get the admin API. A chosen address must work.
        Err(e) if addr == dwaar_config::model::DEFAULT_ADMIN_LISTEN => {
            tracing::warn!(
                "{e}; serving without the admin API (choose another address with the \
                 'admin' global option or DWAAR_ADMIN)"
            );
            Ok((None, inherited))
        }
        Err(e) => Err((e, inherited)),
    }
}

fn write_pidfile(path: Option<&Path>) {
    if let Some(p) = path {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::error!("cannot write pidfile {}: {e}", p.display());
        }
    }
}

/// Removes the pidfile unless a successor (upgrade) has written its own PID there.
fn remove_pidfile(path: Option<&Path>) {
    if let Some(p) = path {
        let ours = std::fs::read_to_string(p)
            .map(|t| t.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Which front-ends serve which requests: `DWAAR_FAST_PATH=0` hands every HTTP/1.1
/// request to Pingora's `HttpProxy` once its head is read, `DWAAR_H2_FRONT=0` sends
/// HTTP/2 over TLS to Pingora's HTTP/2 session (both for comparisons and the test
/// suites), `DWAAR_QUIC_GSO=0` sends HTTP/3 without UDP segmentation offload (to
/// measure what it gives), `DWAAR_QUIC_MAX_CONNECTIONS=N` caps the QUIC connections of
/// each process (default 4,096).
fn fronts() -> dwaar_core::server::Fronts {
    let on = |name: &str| std::env::var(name).map_or(true, |v| v != "0");
    let default_quic = dwaar_core::quic::QuicOptions::default();
    dwaar_core::server::Fronts {
        pingora_h1: !on("DWAAR_FAST_PATH"),
        own_h2: on("DWAAR_H2_FRONT"),
        quic: dwaar_core::quic::QuicOptions {
            gso: on("DWAAR_QUIC_GSO"),
            max_connections: match std::env::var("DWAAR_QUIC_MAX_CONNECTIONS") {
                Err(_) => default_quic.max_connections,
                Ok(v) => v.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                    eprintln!(
                        "warning: DWAAR_QUIC_MAX_CONNECTIONS={v:?} is not a positive number; using {}",
                        default_quic.max_connections
                    );
                    default_quic.max_connections
                }),
            },
        },
    }
}

/// A worker process of `dwaar run --workers N` (started by the supervisor).
pub fn worker(channel: &Path, index: usize, threads: Option<usize>) -> i32 {
    // The supervisor's own log settings reach workers with the config; until then
    // (and for startup errors) they log to stderr like the supervisor's default.
    crate::runtime_log::init(None, false);
    match supervisor::worker::run(channel, index, threads.unwrap_or(1), fronts()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: worker {index}: {e}");
            1
        }
    }
}
