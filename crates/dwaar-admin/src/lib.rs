//! The admin API: a small HTTP/1.1 endpoint for operators and the `dwaar` CLI.
//!
//! It runs on the control runtime of the top process (the single server, or the
//! supervisor when there are worker processes), so what it reports and changes is the
//! whole server. Endpoints: `GET /health`, `GET /config`, `GET /routes`, `GET /metrics`,
//! `GET /dashboard`, `GET /analytics/sites`, `GET /analytics/{site}[/export.csv]`,
//! `GET /cache/stats`, `DELETE /cache[?host=&path=|prefix=]`,
//! `POST /load`, `POST /reload`, `POST /stop`, `POST /upgrade`. Access rules live in
//! [`access`]; the listener (TCP or unix socket) in [`listener`]; the CLI side in
//! [`client`].

pub mod access;
pub mod client;
pub mod fleet;
mod http;
pub mod listener;
mod routes;

use dwaar_core::server::reload::ReloadError;
use dwaar_core::server::Control;
use http::{Request, Response};
use listener::{AdminListener, Peer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Largest config accepted by `POST /load`.
pub const MAX_LOAD_BODY: usize = 16 * 1024 * 1024;
/// Concurrent admin connections; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: AdminListener, control: Arc<Control>) {
    tokio::spawn(fleet::follow(control.clone()));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let local_port = listener.port();
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let resp = match http::read_request(&mut stream, MAX_LOAD_BODY).await {
                Ok(req) => handle(&req, peer, local_port, &control).await,
                Err(resp) => resp,
            };
            let _ = http::write_response(&mut stream, &resp).await;
        });
    }
}

async fn handle(
    req: &Request,
    peer: Peer,
    local_port: Option<u16>,
    control: &Arc<Control>,
) -> Response {
    let admin = control.reloader.current().global.admin.clone();
    if let Err(denied) = access::check(req, peer, local_port, &admin) {
        return denied;
    }
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        // Degraded, not down: with the fleet's Redis unreachable, serving goes on.
        ("GET" | "HEAD", "/health") => {
            let up = dwaar_core::dwaar_fleet::all_up();
            let mut body = json!({
                "status": if up { "ok" } else { "degraded" },
                "uptime_seconds": control.started.elapsed().as_secs(),
            });
            if !dwaar_core::dwaar_fleet::all().is_empty() {
                body["storage"] = json!(if up { "up" } else { "unreachable" });
            }
            Response::json(200, &body)
        }
        ("GET" | "HEAD", "/config" | "/config/") => Response::json(
            200,
            &serde_json::to_value(&*control.reloader.current()).unwrap_or_default(),
        ),
        ("GET" | "HEAD", "/routes") => {
            Response::json(200, &routes::describe(&control.reloader.current()))
        }
        ("GET" | "HEAD", "/metrics") => {
            Response::text(200, "text/plain; version=0.0.4", control.metrics())
        }
        ("GET" | "HEAD", "/dashboard" | "/dashboard/") => {
            let page = dwaar_core::analytics::dashboard_page("/analytics", None);
            from_reply(page)
        }
        ("GET" | "HEAD", p) if p.starts_with("/analytics/") => analytics(req, control).await,
        (_, p) if p.starts_with("/analytics/") || p == "/dashboard" => {
            Response::error(405, &format!("{} is not allowed on {path}", req.method))
                .with_header("Allow", "GET, HEAD")
        }
        ("GET" | "HEAD", "/cache/stats") => {
            let c = control.stats().requests.cache;
            Response::json(
                200,
                &json!({"hits": c[0], "misses": c[1], "stale": c[2], "bypass": c[3],
                        "revalidated": c[4], "entries": c[5], "bytes": c[6]}),
            )
        }
        ("DELETE", "/cache") => {
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let mut purge = dwaar_core::server::control::Purge::default();
            for kv in query.split('&').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let v = Some(dwaar_core::analytics::percent_decode(v)).filter(|v| !v.is_empty());
                match k {
                    "host" => purge.host = v,
                    "path" => purge.path = v,
                    "prefix" => purge.prefix = v,
                    _ => {
                        return Response::error(
                            400,
                            &format!("unknown parameter '{k}': use host, path or prefix"),
                        )
                    }
                }
            }
            if purge.path.is_some() && purge.prefix.is_some() {
                return Response::error(400, "give path or prefix, not both");
            }
            let n = control.purge_cache(&purge);
            fleet::publish_purge(control, &purge).await;
            Response::json(200, &json!({"status": "purged", "removed": n}))
        }
        (_, "/cache" | "/cache/stats") => {
            let allow = if path == "/cache" {
                "DELETE"
            } else {
                "GET, HEAD"
            };
            Response::error(405, &format!("{} is not allowed on {path}", req.method))
                .with_header("Allow", allow)
        }
        ("POST", "/load") => load(req, control).await,
        ("POST", "/reload") => {
            let c = control.clone();
            reload_result(blocking(move || c.reloader.reload_file()).await)
        }
        ("POST", "/stop") => {
            control.request_stop();
            Response::json(200, &json!({"status": "stopping"}))
        }
        ("POST", "/upgrade") => match control.request_upgrade().await {
            Ok(pid) => Response::json(200, &json!({"status": "upgraded", "pid": pid})),
            Err(e) => Response::error(500, &e),
        },
        (
            _,
            "/health" | "/config" | "/config/" | "/routes" | "/metrics" | "/load" | "/reload"
            | "/stop" | "/upgrade",
        ) => {
            let allow = if matches!(path, "/load" | "/reload" | "/stop" | "/upgrade") {
                "POST"
            } else {
                "GET, HEAD"
            };
            Response::error(405, &format!("{} is not allowed on {path}", req.method))
                .with_header("Allow", allow)
        }
        _ => Response::error(404, &format!("no admin endpoint {path}")),
    }
}

/// `GET /analytics/sites`, `/analytics/{site}` and `/analytics/{site}/export.csv`.
async fn analytics(req: &Request, control: &Arc<Control>) -> Response {
    use dwaar_core::analytics::{answer, percent_decode, Internal};
    let config = control.reloader.current();
    let db = dwaar_core::route_table::analytics_db(&config);
    let sites = dwaar_core::route_table::analytics_sites(&config);
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let rest = path.trim_start_matches("/analytics/");
    let internal = if rest == "sites" {
        Internal::Sites { db, sites }
    } else {
        let (name, csv) = match rest.strip_suffix("/export.csv") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        let site = percent_decode(name);
        if site.is_empty() || site.contains('/') {
            return Response::error(404, &format!("no admin endpoint {path}"));
        }
        Internal::Report {
            db,
            site,
            query: query.to_string(),
            csv,
        }
    };
    from_reply(answer(internal, Default::default()).await)
}

/// An answer built by `dwaar-core` as an admin response.
fn from_reply(r: dwaar_core::pipeline::Reply) -> Response {
    let ct = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let content_type = if ct.starts_with("text/csv") {
        "text/csv; charset=utf-8"
    } else if ct.starts_with("text/html") {
        "text/html; charset=utf-8"
    } else {
        "application/json"
    };
    let mut out = Response::text(r.status, content_type, String::new());
    out.body = r.body.to_vec();
    for (k, v) in r.headers {
        if k.eq_ignore_ascii_case("content-security-policy") {
            out = out.with_header("Content-Security-Policy", &v);
        } else if k.eq_ignore_ascii_case("cache-control") {
            out = out.with_header("Cache-Control", &v);
        }
    }
    out
}

async fn load(req: &Request, control: &Arc<Control>) -> Response {
    let ctype = req
        .header("content-type")
        .unwrap_or("text/dwaarfile")
        .to_ascii_lowercase();
    let c = control.clone();
    if ctype.starts_with("application/json") {
        let config = match serde_json::from_slice::<dwaar_config::model::Config>(&req.body) {
            Ok(c) => c,
            Err(e) => return Response::error(400, &format!("invalid config JSON: {e}")),
        };
        return reload_result(blocking(move || c.reloader.load_config(config)).await);
    }
    if !(ctype.starts_with("text/") || ctype.starts_with("application/octet-stream")) {
        return Response::error(
            415,
            "send a Dwaarfile as text/dwaarfile or the adapted model as application/json",
        );
    }
    let Ok(text) = String::from_utf8(req.body.clone()) else {
        return Response::error(400, "the config is not valid UTF-8");
    };
    let path = match req.header("x-dwaar-config-path") {
        Some(p) if std::path::Path::new(p).is_absolute() => Some(std::path::PathBuf::from(p)),
        Some(_) => return Response::error(400, "X-Dwaar-Config-Path must be an absolute path"),
        None => None,
    };
    reload_result(blocking(move || c.reloader.load_text(&text, path)).await)
}

/// Reloads may talk to worker processes: keep them off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReloadError> + Send + 'static,
) -> Result<T, ReloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ReloadError::plain(format!("reload task failed: {e}"))))
}

fn reload_result(r: Result<dwaar_core::server::reload::ReloadSummary, ReloadError>) -> Response {
    match r {
        Ok(s) => Response::json(
            200,
            &json!({"status": "ok", "sites": s.sites, "listeners": s.listeners}),
        ),
        Err(e) => Response::json(
            400,
            &json!({"error": e.message, "diagnostics": e.diagnostics}),
        ),
    }
}
