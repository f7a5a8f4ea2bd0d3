//! `Reloader`: loads a new config into the running server.
//!
//! A reload is parse -> compile -> listener check -> one atomic `RouteStore` swap ->
//! publish the listener set. Any failure before the swap leaves the old table serving and
//! returns the full diagnostics. Reloads are serialised; requests never wait for them.

use crate::route_table::{Registries, RouteStore, RouteTable};
use crate::server::sockets::{self, Snapshot};
use dwaar_config::diag::Diagnostic;
use dwaar_config::model::Config;
use dwaar_config::source::SourceMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// Why a reload was refused.
#[derive(Debug, Clone)]
pub struct ReloadError {
    /// Rendered diagnostics (file:line:col, caret, help), or a plain message.
    pub message: String,
    pub diagnostics: Vec<DiagnosticInfo>,
}

/// One diagnostic in machine-readable form (for the admin API).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiagnosticInfo {
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub help: Option<String>,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ReloadError {
    pub fn plain(message: impl Into<String>) -> Self {
        ReloadError {
            message: message.into(),
            diagnostics: Vec::new(),
        }
    }

    fn from_load(e: &dwaar_config::LoadError) -> Self {
        ReloadError {
            message: e.to_string(),
            diagnostics: infos(&e.diagnostics, &e.sources),
        }
    }
}

fn infos(diags: &[Diagnostic], sources: &SourceMap) -> Vec<DiagnosticInfo> {
    diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            let (file, line, column) =
                match d.span.and_then(|s| sources.file(s.file).map(|f| (f, s))) {
                    Some((f, s)) => {
                        let (l, c) = f.line_col(s.start);
                        (Some(f.name.clone()), Some(l), Some(c))
                    }
                    None => (None, None, None),
                };
            DiagnosticInfo {
                message: d.message.clone(),
                file,
                line,
                column,
                help: d.help.clone(),
            }
        })
        .collect()
}

/// What a successful reload reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    pub sites: usize,
    pub listeners: Vec<String>,
}

/// Where the running config came from, for re-reads and `--watch`.
#[derive(Debug, Clone, Default)]
struct Source {
    path: Option<PathBuf>,
    /// Every file the config was built from, with its modification time.
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

/// Receives every config the reloader commits (the supervisor forwards it to the
/// worker processes).
pub trait Follower: Send + Sync {
    fn follow(&self, config: &Arc<Config>, sockets: &Snapshot);
}

/// Where the sockets of new listen addresses come from.
#[derive(Clone, Copy)]
pub(crate) enum SocketSource {
    /// Bind them here, `k` sockets per address.
    Bind { k: usize },
    /// They arrive with the config (worker processes get them from the supervisor).
    Given,
}

/// Loads new configurations into the running server.
pub struct Reloader {
    store: Arc<RouteStore>,
    registry: Arc<Registries>,
    sockets: watch::Sender<Snapshot>,
    source: SocketSource,
    v6: bool,
    state: Mutex<(Arc<Config>, Source)>,
    follower: Mutex<Option<Arc<dyn Follower>>>,
    pub ok_count: AtomicU64,
    pub fail_count: AtomicU64,
}

impl Reloader {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<RouteStore>,
        registry: Arc<Registries>,
        sockets: watch::Sender<Snapshot>,
        source: SocketSource,
        v6: bool,
        config: Config,
        path: Option<PathBuf>,
        sources: &SourceMap,
    ) -> Self {
        Reloader {
            store,
            registry,
            sockets,
            source,
            v6,
            follower: Mutex::new(None),
            state: Mutex::new((
                Arc::new(config),
                Source {
                    path,
                    files: file_times(sources),
                },
            )),
            ok_count: AtomicU64::new(0),
            fail_count: AtomicU64::new(0),
        }
    }

    /// Registers the receiver of every committed config.
    pub fn set_follower(&self, f: Arc<dyn Follower>) {
        if let Ok(mut g) = self.follower.lock() {
            *g = Some(f);
        }
    }

    /// The listening sockets in use.
    pub fn sockets(&self) -> Snapshot {
        self.sockets.borrow().clone()
    }

    /// Writes out pending access-log records (shutdown).
    pub fn flush_logs(&self, timeout: std::time::Duration) {
        self.registry.flush_logs(timeout);
    }

    /// Writes the analytics counts still held in memory and stops collecting (shutdown).
    pub fn flush_analytics(&self) {
        self.registry.flush_analytics();
    }

    /// The route table serving now.
    pub fn table(&self) -> Arc<crate::route_table::RouteTable> {
        self.store.load()
    }

    /// Drops every listening socket this process holds (shutdown).
    pub(crate) fn release_sockets(&self) {
        self.sockets.send_replace(Arc::new(Vec::new()));
    }

    /// The running config.
    pub fn current(&self) -> Arc<Config> {
        self.state.lock().map(|s| s.0.clone()).unwrap_or_default()
    }

    /// The config file the server was started with (or last loaded from).
    pub fn config_path(&self) -> Option<PathBuf> {
        self.state.lock().ok().and_then(|s| s.1.path.clone())
    }

    /// Re-reads the config file.
    pub fn reload_file(&self) -> Result<ReloadSummary, ReloadError> {
        super::notify::reloading();
        let Some(path) = self.config_path() else {
            return self.count(Err(ReloadError::plain(
                "the server was not started from a config file",
            )));
        };
        let r = match dwaar_config::load_file(&path) {
            Ok(l) => self.apply(l.config, Some(path), &l.sources, None),
            Err(e) => Err(ReloadError::from_load(&e)),
        };
        self.count(r)
    }

    /// Loads Dwaarfile text; `path` (absolute) anchors relative imports.
    pub fn load_text(
        &self,
        text: &str,
        path: Option<PathBuf>,
    ) -> Result<ReloadSummary, ReloadError> {
        super::notify::reloading();
        let name = path
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dwaarfile".into());
        let r = match dwaar_config::load_str(&name, path.clone(), text, &|k| std::env::var(k).ok())
        {
            Ok(l) => {
                let keep = path.or_else(|| self.config_path());
                self.apply(l.config, keep, &l.sources, None)
            }
            Err(e) => Err(ReloadError::from_load(&e)),
        };
        self.count(r)
    }

    /// Loads a config model (JSON from `dwaar adapt`).
    pub fn load_config(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        super::notify::reloading();
        let path = self.config_path();
        let r = self.apply(config, path, &SourceMap::new(), None);
        self.count(r)
    }

    /// Loads a config whose sockets were bound elsewhere (a worker process).
    pub fn load_with_sockets(
        &self,
        config: Config,
        sockets: Snapshot,
    ) -> Result<ReloadSummary, ReloadError> {
        let path = self.config_path();
        let r = self.apply(config, path, &SourceMap::new(), Some(sockets));
        self.count(r)
    }

    /// True when the config file or any file it imported changed on disk.
    pub fn files_changed(&self) -> bool {
        let files = match self.state.lock() {
            Ok(s) => s.1.files.clone(),
            Err(_) => return false,
        };
        files.iter().any(|(p, t)| mtime(p) != *t)
    }

    /// Certificate metrics of this process's certificate manager, appended to `out`.
    pub fn tls_metrics(&self, out: &mut String) {
        if let Some(m) = &self.registry.tls {
            m.write_metrics(out);
        }
    }

    fn count(&self, r: Result<ReloadSummary, ReloadError>) -> Result<ReloadSummary, ReloadError> {
        match &r {
            Ok(s) => {
                self.ok_count.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sites = s.sites, "config reloaded");
                super::notify::ready(&serving_status(s.sites));
                // Parsing and compiling touched start-up code again.
                super::footprint::release_code_pages();
            }
            Err(e) => {
                self.fail_count.fetch_add(1, Ordering::Relaxed);
                tracing::error!("config reload failed, the previous config keeps serving:\n{e}");
                super::notify::ready("the last reload failed; the previous config keeps serving");
            }
        }
        r
    }

    fn apply(
        &self,
        config: Config,
        path: Option<PathBuf>,
        sources: &SourceMap,
        given: Option<Snapshot>,
    ) -> Result<ReloadSummary, ReloadError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| ReloadError::plain("reload state is poisoned"))?;
        let table = RouteTable::compile(&config, &self.registry).map_err(ReloadError::plain)?;
        let snapshot = match (given, self.source) {
            (Some(s), _) => s,
            (None, SocketSource::Bind { k }) => {
                let current = self.sockets.borrow().clone();
                sockets::prepare(&current, &table.listeners, k, self.v6)
                    .map_err(ReloadError::plain)?
            }
            (None, SocketSource::Given) => {
                return Err(ReloadError::plain(
                    "this worker takes configs from its supervisor only",
                ))
            }
        };
        let summary = ReloadSummary {
            sites: config.sites.len(),
            listeners: snapshot
                .iter()
                .map(|b| sockets::describe(&b.spec, self.v6))
                .collect(),
        };
        self.store.swap(table);
        self.registry.activate_tls(&self.store.load());
        // A first `h3` port starts the HTTP/3 service.
        crate::quic::ensure_started();
        crate::layer4::udp::ensure_started();
        // Removed listeners close once every thread has dropped its clone.
        self.sockets.send_replace(snapshot.clone());
        let files = if sources.files().is_empty() {
            state.1.files.clone()
        } else {
            file_times(sources)
        };
        let config = Arc::new(config);
        *state = (config.clone(), Source { path, files });
        let follower = self.follower.lock().ok().and_then(|f| f.clone());
        if let Some(f) = follower {
            f.follow(&config, &snapshot);
        }
        Ok(summary)
    }
}

/// The service manager's one-line status for a server serving `sites` sites.
pub fn serving_status(sites: usize) -> String {
    format!("serving {sites} site{}", if sites == 1 { "" } else { "s" })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Every config file and its directory (a file added to a glob-imported directory
/// changes the directory's time), with modification times.
fn file_times(sources: &SourceMap) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for f in sources.files() {
        if let Some(p) = &f.path {
            paths.push(p.clone());
            if let Some(dir) = p.parent() {
                paths.push(dir.to_path_buf());
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|p| {
            let t = mtime(&p);
            (p, t)
        })
        .collect()
}
