//! `file_server browse`: directory listings as HTML, or JSON for `Accept:
//! application/json`. Hidden entries are left out; `sort=name|namedirfirst|size|time`
//! and `order=asc|desc` choose the order (default: directories first, by name).

use super::serve::{http_date, is_hidden};
use crate::pipeline::html_escape;
use crate::pipeline::Reply;
use crate::request::HttpRequest;
use bytes::Bytes;
use compact_str::CompactString;
use dwaar_config::model::FileServer;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Entries read at most (a huge directory must not become a huge response).
const MAX_ENTRIES: usize = 10_000;

struct Item {
    name: String,
    size: u64,
    modified: SystemTime,
    mode: u32,
    is_dir: bool,
    is_symlink: bool,
}

pub fn render(
    fs: &FileServer,
    root: &Path,
    real_root: &Path,
    dir: &Path,
    req: &dyn HttpRequest,
) -> Option<Reply> {
    use std::os::unix::fs::PermissionsExt;
    // The directory itself must be under the root.
    let real = std::fs::canonicalize(dir).ok()?;
    if !real.starts_with(real_root) {
        return None;
    }
    let mut items = Vec::new();
    for e in std::fs::read_dir(dir).ok()?.flatten().take(MAX_ENTRIES) {
        let p = e.path();
        if is_hidden(fs, root, &p) {
            continue;
        }
        let Ok(lmeta) = e.metadata() else { continue };
        let is_symlink = lmeta.file_type().is_symlink();
        let meta = if is_symlink {
            std::fs::metadata(&p).unwrap_or(lmeta)
        } else {
            lmeta
        };
        items.push(Item {
            name: e.file_name().to_string_lossy().into_owned(),
            size: meta.len(),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
            mode: meta.permissions().mode(),
            is_dir: meta.is_dir(),
            is_symlink,
        });
    }
    let q = req.query().unwrap_or("");
    let param = |k: &str| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(a, _)| *a == k)
            .map(|(_, v)| v.to_string())
    };
    let sort = param("sort").unwrap_or_else(|| "namedirfirst".into());
    let desc = param("order").as_deref() == Some("desc");
    items.sort_by(|a, b| {
        let by_name = || a.name.to_lowercase().cmp(&b.name.to_lowercase());
        match sort.as_str() {
            "size" => b
                .is_dir
                .cmp(&a.is_dir)
                .then(a.size.cmp(&b.size))
                .then_with(by_name),
            "time" => a.modified.cmp(&b.modified).then_with(by_name),
            "name" => by_name(),
            _ => b.is_dir.cmp(&a.is_dir).then_with(by_name),
        }
    });
    if desc {
        items.reverse();
    }
    let newest = items.iter().map(|i| i.modified).max();
    let mut headers: Vec<(CompactString, String)> = Vec::new();
    headers.push(("vary".into(), "Accept, Accept-Encoding".into()));
    if let Some(t) = newest {
        headers.push(("last-modified".into(), http_date(t)));
        if let Some(since) = req
            .header("if-modified-since")
            .and_then(|s| httpdate::parse_http_date(s).ok())
        {
            let secs = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            };
            if secs(t) <= secs(since) {
                return Some(Reply {
                    status: 304,
                    headers,
                    ..Default::default()
                });
            }
        }
    }
    let wants_json = req
        .header("accept")
        .is_some_and(|a| a.contains("application/json"));
    let body = if wants_json {
        headers.push(("content-type".into(), "application/json".into()));
        let list: Vec<serde_json::Value> = items
            .iter()
            .map(|i| {
                let name = if i.is_dir {
                    format!("{}/", i.name)
                } else {
                    i.name.clone()
                };
                serde_json::json!({
                    "name": name,
                    "size": i.size,
                    "url": format!("./{}", url_escape(&name)),
                    "mod_time": rfc3339(i.modified),
                    "mode": i.mode,
                    "is_dir": i.is_dir,
                    "is_symlink": i.is_symlink,
                })
            })
            .collect();
        serde_json::to_vec(&list).unwrap_or_default()
    } else {
        headers.push(("content-type".into(), "text/html; charset=utf-8".into()));
        html(req.path(), &items, &sort, desc).into_bytes()
    };
    Some(Reply {
        status: 200,
        headers,
        body: Bytes::from(body),
        ..Default::default()
    })
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3339 UTC (milliseconds), as the request log writes times.
fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    dwaar_log::encode::timestamp_text(ms)
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn html(path: &str, items: &[Item], sort: &str, desc: bool) -> String {
    let title = html_escape(path);
    let link = |key: &str, label: &str| {
        let order = if sort == key && !desc { "desc" } else { "asc" };
        let arrow = match (sort == key, desc) {
            (true, false) => " ↑",
            (true, true) => " ↓",
            _ => "",
        };
        format!("<a href=\"?sort={key}&amp;order={order}\">{label}{arrow}</a>")
    };
    let dirs = items.iter().filter(|i| i.is_dir).count();
    let mut rows = String::new();
    if path != "/" {
        rows.push_str("<tr><td><a href=\"../\">⬑ up</a></td><td></td><td></td></tr>\n");
    }
    for i in items {
        let name = if i.is_dir {
            format!("{}/", i.name)
        } else {
            i.name.clone()
        };
        let size = if i.is_dir {
            "—".to_string()
        } else {
            human_size(i.size)
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"./{}\">{}</a>{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
            html_escape(&url_escape(&name)),
            html_escape(&name),
            if i.is_symlink {
                " <small>(link)</small>"
            } else {
                ""
            },
            size,
            html_escape(&rfc3339(i.modified)[..19].replace('T', " ")),
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>\nbody{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}}\nh1{{font-size:1.3rem;word-break:break-all}}\ntable{{border-collapse:collapse;width:100%}}\nth,td{{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #eee}}\ntd.n{{text-align:right;white-space:nowrap}}\na{{color:#0b57d0;text-decoration:none}}\na:hover{{text-decoration:underline}}\n@media (prefers-color-scheme:dark){{body{{background:#111;color:#ddd}}th,td{{border-color:#333}}a{{color:#8ab4f8}}}}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n<p>{dirs} director{}, {} file{}</p>\n<table>\n<thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</body>\n</html>\n",
        if dirs == 1 { "y" } else { "ies" },
        items.len() - dirs,
        if items.len() - dirs == 1 { "" } else { "s" },
        link("name", "Name"),
        link("size", "Size"),
        link("time", "Modified"),
    )
}
