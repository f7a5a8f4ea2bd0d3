//! Process setup: compile the config, build the Pingora server with one listener per
//! site address, add background services, and run until a shutdown signal.

use crate::proxy::DwaarProxy;
use crate::route_table::{RouteStore, RouteTable};
use crate::upstream::{HealthChecker, UpstreamRegistry};
use dwaar_config::model::Config;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_proxy::ProxyServiceBuilder;
use std::path::PathBuf;
use std::sync::Arc;

/// Whether this host can listen on IPv6 (dual-stack `[::]`).
fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::]:0").is_ok()
}

fn listen_addr(addr: &str, port: u16, v6: bool) -> String {
    if addr.is_empty() {
        if v6 {
            format!("[::]:{port}")
        } else {
            format!("0.0.0.0:{port}")
        }
    } else if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Runs the server in the foreground; returns only on a setup error.
pub fn run(config: Config, _config_path: PathBuf, threads: Option<usize>) -> Result<(), String> {
    let registry = Arc::new(UpstreamRegistry::default());
    let table = RouteTable::compile(&config, &registry)?;
    let listeners = table.listeners.clone();
    // Fail early and clearly when a port is taken, before Pingora's own (panicking) bind.
    for l in &listeners {
        let a = listen_addr(&l.addr, l.port, false);
        if let Err(e) = std::net::TcpListener::bind(&a) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(format!("cannot listen on {a}: address already in use"));
            }
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(format!("cannot listen on {a}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"));
            }
        }
    }
    let store = Arc::new(RouteStore::new(table));
    let grace = config
        .global
        .grace_period_ms
        .map(|ms| ms.div_ceil(1000))
        .unwrap_or(5);

    let run_dir = std::env::temp_dir().join(format!("dwaar-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&run_dir);
    let mut conf = ServerConf {
        threads: threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace),
        upstream_keepalive_pool_size: 1024,
        // Our own retry policy (lb_retries, lb_try_duration) bounds attempts.
        max_retries: 10_000,
        ..ServerConf::default()
    };
    conf.pid_file = run_dir.join("dwaar.pid").to_string_lossy().into_owned();
    conf.upgrade_sock = run_dir.join("upgrade.sock").to_string_lossy().into_owned();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let v6 = ipv6_available();
    let (h2c, h1): (Vec<_>, Vec<_>) = listeners.iter().partition(|l| l.h2c);
    for (group, h2c_on) in [(h1, false), (h2c, true)] {
        if group.is_empty() {
            continue;
        }
        let mut opts = HttpServerOptions::default();
        opts.h2c = h2c_on;
        let mut svc = ProxyServiceBuilder::new(
            &server.configuration,
            DwaarProxy {
                store: store.clone(),
            },
        )
        .name(if h2c_on { "dwaar h1+h2c" } else { "dwaar" })
        .server_options(opts)
        .build();
        for l in group {
            let a = listen_addr(&l.addr, l.port, v6);
            tracing::info!(address = %a, "listening");
            svc.add_tcp(&a);
        }
        server.add_service(svc);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker {
            store: store.clone(),
        },
    ));
    tracing::info!(sites = config.sites.len(), "dwaar started");
    server.run_forever();
}
