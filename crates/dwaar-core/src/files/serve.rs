//! `file_server`: one request in, one [`Reply`] out (or "not mine" for `pass_thru`).
//!
//! HTTP semantics follow RFC 9110 as Go's `ServeContent` applies them (what Caddy
//! users know): `If-Match`/`If-Unmodified-Since` give 412, `If-None-Match`/
//! `If-Modified-Since` give 304, `If-Range` guards ranges, one range is a 206 with
//! `Content-Range`, several are `multipart/byteranges`, unsatisfiable ones 416.

use super::body::FileBody;
use super::{cache, join_under, listing, real_path_of, real_root, root_for};
use crate::context::RequestContext;
use crate::pipeline::Reply;
use crate::request::HttpRequest;
use bytes::Bytes;
use compact_str::CompactString;
use dwaar_config::model::FileServer;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the file server decided.
pub enum Served {
    Reply(Reply),
    /// Not found: the error status for `handle_errors` (404), or 403/400/503.
    Error(u16),
    /// Not found and `pass_thru`: the next handler runs.
    PassThru,
}

type Headers = Vec<(CompactString, String)>;

fn header(h: &mut Headers, k: &'static str, v: impl Into<String>) {
    h.push((CompactString::const_new(k), v.into()));
}

/// Serves `req` from `fs`'s root.
pub fn serve(fs: &FileServer, req: &dyn HttpRequest, ctx: &RequestContext) -> Served {
    let own_fs = fs
        .fs
        .as_ref()
        .map(|f| std::path::Path::new(f.root.as_str()));
    let root = super::within_fs(
        own_fs.or(ctx.fs_root()),
        root_for(fs.root.as_ref(), req, ctx),
    );
    let path = req.path();
    let not_found = || {
        if fs.pass_thru {
            Served::PassThru
        } else {
            Served::Error(404)
        }
    };
    let Some(full) = join_under(&root, path) else {
        return Served::Error(400);
    };
    if is_hidden(fs, &root, &full) {
        return not_found();
    }
    let meta = match std::fs::metadata(&full) {
        Ok(m) => m,
        Err(e) => return error_for(&e, fs),
    };
    let (file_path, meta) = if meta.is_dir() {
        let index = fs.index.iter().find_map(|i| {
            let p = full.join(i);
            if is_hidden(fs, &root, &p) {
                return None;
            }
            std::fs::metadata(&p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p, m))
        });
        if !path.ends_with('/') && (index.is_some() || fs.browse.is_some()) {
            if let Some(r) = canonical(fs, req, ctx, true) {
                return Served::Reply(r);
            }
        }
        match index {
            Some(found) => found,
            None if fs.browse.is_some() => {
                let Some(real_root) = real_root(&root) else {
                    return not_found();
                };
                return match listing::render(fs, &root, &real_root, &full, req) {
                    Some(r) => Served::Reply(r),
                    None => not_found(),
                };
            }
            None => return not_found(),
        }
    } else {
        if path.ends_with('/') {
            if let Some(r) = canonical(fs, req, ctx, false) {
                return Served::Reply(r);
            }
        }
        (full, meta)
    };
    let method = req.method();
    if method != "GET" && method != "HEAD" && ctx.error.is_none() {
        let mut r = Reply::status(405);
        header(&mut r.headers, "allow", "GET, HEAD");
        return Served::Reply(r);
    }
    send_file(fs, req, ctx, &root, &file_path, meta)
}

fn error_for(e: &std::io::Error, fs: &FileServer) -> Served {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => {
            if fs.pass_thru {
                Served::PassThru
            } else {
                Served::Error(404)
            }
        }
        std::io::ErrorKind::PermissionDenied => Served::Error(403),
        _ => Served::Error(503),
    }
}

/// A 308 to the canonical form of the path (with or without the trailing slash),
/// unless a rewrite changed the last path element or canonical URIs are off.
fn canonical(
    fs: &FileServer,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    add_slash: bool,
) -> Option<Reply> {
    if fs.disable_canonical_uris {
        return None;
    }
    let orig = ctx
        .orig_uri
        .as_deref()
        .map(|u| u.split('?').next().unwrap_or(""));
    let orig_path = orig.unwrap_or(req.path());
    let last = |p: &str| {
        p.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    if last(orig_path) != last(req.path()) {
        return None;
    }
    let mut to = if add_slash {
        format!("{orig_path}/")
    } else {
        orig_path.trim_end_matches('/').to_string()
    };
    // Never an open redirect through `//host`.
    while to.starts_with("//") {
        to.remove(0);
    }
    if to.is_empty() {
        to.push('/');
    }
    let query = match &ctx.orig_uri {
        Some(u) => u.split_once('?').map(|(_, q)| q.to_string()),
        None => req.query().map(str::to_string),
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        to.push('?');
        to.push_str(&q);
    }
    let mut r = Reply::status(308);
    header(&mut r.headers, "location", to);
    Some(r)
}

/// `hide`: a pattern without `/` hides any path component it matches; one with `/`
/// hides that path (relative to the root, or absolute) and everything under it.
pub fn is_hidden(fs: &FileServer, root: &Path, p: &Path) -> bool {
    if fs.hide.is_empty() {
        return false;
    }
    let opts = glob::MatchOptions::new();
    for h in &fs.hide {
        if h.contains('/') {
            let base: PathBuf = if h.starts_with('/') {
                PathBuf::from(h)
            } else {
                root.join(h)
            };
            if p.starts_with(&base) {
                return true;
            }
            if let Ok(g) = glob::Pattern::new(&base.to_string_lossy()) {
                if g.matches_path_with(p, opts) {
                    return true;
                }
            }
        } else if let Ok(g) = glob::Pattern::new(h) {
            let rel = p.strip_prefix(root).unwrap_or(p);
            if rel
                .components()
                .any(|c| g.matches_with(&c.as_os_str().to_string_lossy(), opts))
            {
                return true;
            }
        }
    }
    false
}

/// `"<mtime seconds, base 36><size, base 36>"`.
pub fn etag(meta: &Metadata) -> Option<String> {
    let secs = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    if secs <= 1 {
        return None;
    }
    Some(format!("\"{}{}\"", base36(secs), base36(meta.len())))
}

fn base36(mut n: u64) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(D[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// An HTTP date (IMF-fixdate).
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether an `If-Match`/`If-None-Match` list matches `etag` (`weak`: W/ ignored).
fn etag_list_matches(list: &str, etag: Option<&str>, weak: bool) -> bool {
    let Some(etag) = etag else {
        return list.trim() == "*";
    };
    let norm = |t: &str| -> String {
        let t = t.trim();
        if weak {
            t.trim_start_matches("W/").to_string()
        } else {
            t.to_string()
        }
    };
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || ((weak || !t.starts_with("W/")) && norm(t) == norm(etag))
    })
}

/// The MIME type for a file name.
pub fn content_type(name: &Path) -> String {
    let ext = name
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let t = match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "text" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/vnd.microsoft.icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "webmanifest" => "application/manifest+json",
        "php" => "application/x-httpd-php",
        _ => "application/octet-stream",
    };
    t.to_string()
}

/// `Accept-Encoding` weights: `None` when the coding is refused or not mentioned.
fn accepted_weight(accept: &str, coding: &str) -> Option<f32> {
    let mut star = None;
    for item in accept.split(',') {
        let mut it = item.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .map(|v| v.trim().parse::<f32>().unwrap_or(0.0))
            })
            .unwrap_or(1.0);
        if name == coding {
            return (q > 0.0).then_some(q);
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.filter(|q| *q > 0.0)
}

fn sidecar(
    fs: &FileServer,
    req: &dyn HttpRequest,
    file: &Path,
) -> Option<(String, PathBuf, Metadata)> {
    if fs.precompressed.is_empty() {
        return None;
    }
    let accept = req.header("accept-encoding")?;
    let mut options: Vec<(f32, usize, &str)> = fs
        .precompressed
        .iter()
        .enumerate()
        .filter_map(|(i, e)| accepted_weight(accept, e).map(|q| (q, i, e.as_str())))
        .collect();
    options.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, enc) in options {
        let ext = match enc {
            "br" => "br",
            "zstd" => "zst",
            _ => "gz",
        };
        let mut p = file.as_os_str().to_owned();
        p.push(format!(".{ext}"));
        let p = PathBuf::from(p);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                return Some((enc.to_string(), p, m));
            }
        }
    }
    None
}

fn send_file(
    fs: &FileServer,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
    root: &Path,
    path: &Path,
    meta: Metadata,
) -> Served {
    let mut headers: Headers = Vec::with_capacity(8);
    let ctype = content_type(path);
    let modified = meta.modified().ok().filter(|t| secs(*t) > 1);
    let (encoding, body_path, body_meta) = match sidecar(fs, req, path) {
        Some((enc, p, m)) => (Some(enc), p, m),
        None => (None, path.to_path_buf(), meta),
    };
    if !fs.precompressed.is_empty() {
        header(&mut headers, "vary", "Accept-Encoding");
    }
    let size = body_meta.len();
    let version = cache::Version::of(&body_meta);
    // A small file already verified and read: no open, no path check, no formatting.
    let cached = if size <= cache::MAX_FILE && encoding.is_none() {
        cache::get(&body_path, version)
    } else {
        None
    };
    let (tag, last_modified) = match &cached {
        Some(c) => (c.etag.clone(), c.last_modified.clone()),
        None => (etag(&body_meta), modified.map(http_date)),
    };
    if let Some(t) = &tag {
        header(&mut headers, "etag", t.clone());
    }
    if let Some(m) = &last_modified {
        header(&mut headers, "last-modified", m.clone());
    }
    header(&mut headers, "accept-ranges", "bytes");
    let forced = fs.status.or(ctx.error.as_ref().map(|e| e.0));

    // Conditional requests.
    let method = req.method();
    let get_or_head = method == "GET" || method == "HEAD";
    if forced.is_none() {
        let precondition_failed = match req.header("if-match") {
            Some(list) => !etag_list_matches(list, tag.as_deref(), false),
            None => match (
                req.header("if-unmodified-since").and_then(parse_http_date),
                modified,
            ) {
                (Some(since), Some(m)) => secs(m) > secs(since),
                _ => false,
            },
        };
        if precondition_failed {
            return Served::Reply(Reply {
                status: 412,
                headers,
                ..Default::default()
            });
        }
        let not_modified = match req.header("if-none-match") {
            Some(list) => etag_list_matches(list, tag.as_deref(), true),
            None => {
                get_or_head
                    && match (
                        req.header("if-modified-since").and_then(parse_http_date),
                        modified,
                    ) {
                        (Some(since), Some(m)) => secs(m) <= secs(since),
                        _ => false,
                    }
            }
        };
        if not_modified {
            let status = if get_or_head { 304 } else { 412 };
            if tag.is_some() {
                headers.retain(|(k, _)| k != "last-modified");
            }
            return Served::Reply(Reply {
                status,
                headers,
                ..Default::default()
            });
        }
    }

    if let Some(enc) = &encoding {
        header(&mut headers, "content-encoding", enc.clone());
    }
    let forced_status = forced.unwrap_or(200);
    let wants_range = forced.is_none() && get_or_head && req.header("range").is_some();
    if let (Some(c), false) = (&cached, wants_range) {
        header(&mut headers, "content-type", ctype);
        return Served::Reply(Reply {
            status: forced_status,
            headers,
            body: c.data.clone(),
            ..Default::default()
        });
    }
    let Ok(file) = std::fs::File::open(&body_path) else {
        return Served::Error(403);
    };
    // The file really is under the root (symlinks included).
    let Some(real_root) = real_root(root) else {
        return Served::Error(404);
    };
    match real_path_of(&file) {
        Some(real) if real.starts_with(&real_root) => {}
        _ => return Served::Error(404),
    }

    // Ranges.
    let range = if forced.is_none() && get_or_head {
        req.header("range")
            .filter(|_| match req.header("if-range") {
                None => true,
                Some(v) if v.trim_start().starts_with('"') || v.trim_start().starts_with("W/") => {
                    tag.as_deref() == Some(v.trim()) && !v.trim_start().starts_with("W/")
                }
                Some(v) => match (parse_http_date(v), modified) {
                    (Some(d), Some(m)) => secs(d) == secs(m),
                    _ => false,
                },
            })
    } else {
        None
    };
    let file = Arc::new(file);
    let status = forced_status;
    if let Some(spec) = range {
        match parse_ranges(spec, size) {
            Ranges::Unsatisfiable => {
                header(&mut headers, "content-range", format!("bytes */{size}"));
                return Served::Reply(Reply {
                    status: 416,
                    headers,
                    ..Default::default()
                });
            }
            Ranges::Some(list) if list.iter().map(|r| r.1).sum::<u64>() <= size => {
                let mut body = FileBody::new();
                if list.len() == 1 {
                    let (start, len) = list[0];
                    header(&mut headers, "content-type", ctype);
                    header(
                        &mut headers,
                        "content-range",
                        format!("bytes {start}-{}/{size}", start + len - 1),
                    );
                    body.push_file(file, start, len);
                } else {
                    let boundary = format!("{:032x}", rand::random::<u128>());
                    header(
                        &mut headers,
                        "content-type",
                        format!("multipart/byteranges; boundary={boundary}"),
                    );
                    for (i, (start, len)) in list.iter().enumerate() {
                        let lead = if i == 0 { "" } else { "\r\n" };
                        body.push_bytes(Bytes::from(format!(
                            "{lead}--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {start}-{}/{size}\r\n\r\n",
                            start + len - 1
                        )));
                        body.push_file(file.clone(), *start, *len);
                    }
                    body.push_bytes(Bytes::from(format!("\r\n--{boundary}--\r\n")));
                }
                return Served::Reply(Reply {
                    status: 206,
                    headers,
                    stream: Some(body),
                    ..Default::default()
                });
            }
            // Malformed, or more than the file: the whole file.
            _ => {}
        }
    }
    header(&mut headers, "content-type", ctype);
    // Small files go into the per-thread cache.
    if size <= cache::MAX_FILE {
        let data = match &cached {
            Some(c) => c.data.clone(),
            None => {
                let mut buf = vec![0u8; size as usize];
                use std::os::unix::fs::FileExt;
                if file.read_exact_at(&mut buf, 0).is_err() {
                    return Served::Error(503);
                }
                let d = Bytes::from(buf);
                if encoding.is_none() {
                    cache::put(
                        &body_path,
                        version,
                        cache::Cached {
                            data: d.clone(),
                            etag: tag.clone(),
                            last_modified: last_modified.clone(),
                        },
                    );
                }
                d
            }
        };
        return Served::Reply(Reply {
            status,
            headers,
            body: data,
            ..Default::default()
        });
    }
    let mut body = FileBody::new();
    body.push_file(file, 0, size);
    Served::Reply(Reply {
        status,
        headers,
        stream: Some(body),
        ..Default::default()
    })
}

enum Ranges {
    /// `(start, length)` pairs.
    Some(Vec<(u64, u64)>),
    Unsatisfiable,
    Ignore,
}

fn parse_ranges(spec: &str, size: u64) -> Ranges {
    let Some(list) = spec.trim().strip_prefix("bytes=") else {
        return Ranges::Unsatisfiable;
    };
    let mut out = Vec::new();
    let mut any_valid_syntax = false;
    for r in list.split(',') {
        let r = r.trim();
        if r.is_empty() {
            continue;
        }
        let Some((a, b)) = r.split_once('-') else {
            return Ranges::Unsatisfiable;
        };
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            // Suffix: the last `b` bytes.
            let Ok(n) = b.parse::<u64>() else {
                return Ranges::Unsatisfiable;
            };
            any_valid_syntax = true;
            if n == 0 || size == 0 {
                continue;
            }
            let n = n.min(size);
            out.push((size - n, n));
        } else {
            let Ok(start) = a.parse::<u64>() else {
                return Ranges::Unsatisfiable;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return Ranges::Unsatisfiable,
                }
            };
            any_valid_syntax = true;
            if start >= size {
                continue;
            }
            out.push((start, end - start + 1));
        }
    }
    if out.is_empty() {
        if any_valid_syntax {
            Ranges::Unsatisfiable
        } else {
            Ranges::Ignore
        }
    } else {
        Ranges::Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str| match parse_ranges(s, 100) {
            Ranges::Some(v) => format!("{v:?}"),
            Ranges::Unsatisfiable => "416".into(),
            Ranges::Ignore => "ignore".into(),
        };
        assert_eq!(r("bytes=0-9"), "[(0, 10)]");
        assert_eq!(r("bytes=90-"), "[(90, 10)]");
        assert_eq!(r("bytes=-5"), "[(95, 5)]");
        assert_eq!(r("bytes=0-0,-1"), "[(0, 1), (99, 1)]");
        assert_eq!(r("bytes=95-200"), "[(95, 5)]");
        assert_eq!(r("bytes=100-"), "416");
        assert_eq!(r("bytes=5-1"), "416");
        assert_eq!(r("items=0-1"), "416");
    }

    #[test]
    fn etag_comparison() {
        assert!(etag_list_matches("\"a\", \"b\"", Some("\"b\""), false));
        assert!(!etag_list_matches("W/\"b\"", Some("\"b\""), false));
        assert!(etag_list_matches("W/\"b\"", Some("\"b\""), true));
        assert!(etag_list_matches("*", Some("\"x\""), false));
    }

    #[test]
    fn accept_encoding_weights() {
        assert_eq!(accepted_weight("gzip, br;q=0.5", "br"), Some(0.5));
        assert_eq!(accepted_weight("gzip;q=0", "gzip"), None);
        assert_eq!(accepted_weight("*;q=0.1", "zstd"), Some(0.1));
        assert_eq!(accepted_weight("identity", "gzip"), None);
    }
}
