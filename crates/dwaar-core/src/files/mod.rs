//! Static files: `root`, `file_server`, `try_files` and the `file` matcher.
//!
//! Paths: the request path is percent-decoded once, NUL is refused, and `..` never
//! climbs above the root (the path is cleaned the way Caddy cleans it). After a file
//! is opened, its real path (one `readlink` of `/proc/self/fd/N`) must still be under
//! the root's real path, so a symlink cannot lead outside it.
//!
//! I/O model: like nginx without thread pools, `stat`/`open` and the reads of a file
//! being sent are ordinary system calls on the worker thread (cheap for files in the
//! page cache); bodies go out in 64 KiB chunks between which the connection's writes
//! await, so memory per response is bounded whatever the file size. Small files are
//! kept in a per-thread cache ([`cache`]) checked against the file's identity and
//! modification time on every request.

pub mod body;
pub mod cache;
pub mod listing;
pub mod serve;

pub use body::FileBody;

use crate::context::RequestContext;
use crate::request::HttpRequest;
use crate::template::render;
use dwaar_config::model::FileMatch;
use std::path::{Path, PathBuf};

/// The root directory for a request: the handler's own, else `{vars.root}`, else the
/// working directory.
pub fn root_for(
    own: Option<&dwaar_config::placeholder::Template>,
    req: &dyn HttpRequest,
    ctx: &RequestContext,
) -> PathBuf {
    if let Some(t) = own {
        return PathBuf::from(render(t, req, ctx).as_ref());
    }
    match ctx.var("root") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from("."),
    }
}

/// `root` inside the file system `fs` selected (its directory, with `root` read as a
/// path within it), or `root` itself on the machine's file system.
pub fn within_fs(fs: Option<&std::path::Path>, root: PathBuf) -> PathBuf {
    match fs {
        None => root,
        Some(base) => base.join(root.strip_prefix("/").unwrap_or(&root)),
    }
}

/// Percent-decodes `path` once. `None` for NUL bytes or invalid escapes.
pub fn decode_path(path: &str) -> Option<Vec<u8>> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    (!out.contains(&0)).then_some(out)
}

/// The cleaned components of a decoded path: no empty, `.` or `..` parts (`..` drops
/// the previous part and never goes above the start).
pub fn clean_components(decoded: &[u8]) -> Vec<&[u8]> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in decoded.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts
}

/// `root` joined with the cleaned request path. `None` when the path is unusable.
pub fn join_under(root: &Path, request_path: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let decoded = decode_path(request_path)?;
    let mut p = root.to_path_buf();
    for c in clean_components(&decoded) {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    Some(p)
}

/// The real path of an open file (Linux: one `readlink` of its `/proc` entry).
pub fn real_path_of(file: &std::fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// The root's real path, cached per thread (roots come from the config).
pub fn real_root(root: &Path) -> Option<PathBuf> {
    thread_local! {
        static ROOTS: std::cell::RefCell<Vec<(PathBuf, PathBuf)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ROOTS.with(|r| {
        let mut r = r.borrow_mut();
        if let Some((_, real)) = r.iter().find(|(p, _)| p == root) {
            return Some(real.clone());
        }
        let real = std::fs::canonicalize(root).ok()?;
        if r.len() >= 64 {
            r.clear();
        }
        r.push((root.to_path_buf(), real.clone()));
        Some(real)
    })
}

/// What the `file` matcher found.
#[derive(Debug, Clone)]
pub struct FileFound {
    /// Path relative to the root, starting with `/`.
    pub relative: String,
    pub absolute: PathBuf,
    pub is_dir: bool,
    /// What followed the split delimiter (`/extra` in `/index.php/extra`).
    pub remainder: String,
}

/// Evaluates a `file` matcher or `try_files`: the candidate chosen by the policy.
pub fn find_file(fm: &FileMatch, req: &dyn HttpRequest, ctx: &RequestContext) -> Option<FileFound> {
    let root = within_fs(ctx.fs_root(), root_for(fm.root.as_ref(), req, ctx));
    let default = [dwaar_config::placeholder::Template::parse("{path}")];
    let candidates = if fm.try_files.is_empty() {
        &default[..]
    } else {
        &fm.try_files[..]
    };
    let mut best: Option<(FileFound, std::fs::Metadata)> = None;
    for t in candidates {
        let rendered = render(t, req, ctx);
        // `=404` style fallbacks are not files.
        if rendered.starts_with('=') {
            continue;
        }
        // A query in a candidate is not part of the file name.
        let candidate = rendered.split('?').next().unwrap_or("");
        // Like Caddy: whether a directory is wanted is decided by the candidate as
        // written (`{path}/`), not by what it expands to (`/dir/` from `{path}`).
        let want_dir = t.raw().ends_with('/');
        let (file_part, remainder) = split_path(candidate, &fm.split_path);
        let Some(abs) = join_under(&root, file_part) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&abs) else {
            continue;
        };
        if meta.is_dir() != want_dir {
            continue;
        }
        let Some(decoded) = decode_path(file_part) else {
            continue;
        };
        let mut relative = String::new();
        for c in clean_components(&decoded) {
            relative.push('/');
            relative.push_str(&String::from_utf8_lossy(c));
        }
        if want_dir || relative.is_empty() {
            relative.push('/');
        }
        let found = FileFound {
            relative,
            absolute: abs,
            is_dir: meta.is_dir(),
            remainder: remainder.to_string(),
        };
        let better = match (&best, fm.try_policy.as_str()) {
            (None, _) => true,
            (Some(_), "first_exist" | "first_exist_fallback") => false,
            (Some((_, m)), "smallest_size") => meta.len() < m.len(),
            (Some((_, m)), "largest_size") => meta.len() > m.len(),
            (Some((_, m)), _) => meta.modified().ok() > m.modified().ok(),
        };
        if better {
            best = Some((found, meta));
            if fm.try_policy.starts_with("first_exist") {
                break;
            }
        }
    }
    if best.is_none() && fm.try_policy == "first_exist_fallback" {
        // The last candidate is used without looking at the disk.
        let last = render(candidates.last()?, req, ctx);
        let last = last.split('?').next().unwrap_or("");
        let (file_part, remainder) = split_path(last, &fm.split_path);
        let decoded = decode_path(file_part)?;
        let mut relative = String::new();
        for c in clean_components(&decoded) {
            relative.push('/');
            relative.push_str(&String::from_utf8_lossy(c));
        }
        return Some(FileFound {
            absolute: join_under(&root, file_part)?,
            relative,
            is_dir: false,
            remainder: remainder.to_string(),
        });
    }
    best.map(|(f, _)| f)
}

/// Splits at the first delimiter (kept on the left): `/a.php/b` -> (`/a.php`, `/b`).
pub fn split_path<'a>(path: &'a str, delimiters: &[String]) -> (&'a str, &'a str) {
    let lower = path.to_ascii_lowercase();
    for d in delimiters {
        if let Some(i) = lower.find(&d.to_ascii_lowercase()) {
            let end = i + d.len();
            return (&path[..end], &path[end..]);
        }
    }
    (path, "")
}

/// Records a match in the `file_match.*` variables (`{http.matchers.file.relative}`).
pub fn remember(found: &FileFound, ctx: &mut RequestContext) {
    ctx.set_var("file_match.relative", found.relative.clone());
    ctx.set_var(
        "file_match.absolute",
        found.absolute.to_string_lossy().into_owned(),
    );
    ctx.set_var(
        "file_match.type",
        if found.is_dir { "directory" } else { "file" }.into(),
    );
    ctx.set_var("file_match.remainder", found.remainder.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_root() {
        let root = Path::new("/srv/www");
        let j = |p: &str| join_under(root, p).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(j("/a/b.txt").as_deref(), Some("/srv/www/a/b.txt"));
        assert_eq!(
            j("/../../etc/passwd").as_deref(),
            Some("/srv/www/etc/passwd")
        );
        assert_eq!(
            j("/%2e%2e/%2e%2e/etc/passwd").as_deref(),
            Some("/srv/www/etc/passwd")
        );
        assert_eq!(j("/a/..%2f..%2fsecret").as_deref(), Some("/srv/www/secret"));
        assert_eq!(j("/x%00.txt"), None);
        assert_eq!(j("/bad%zz"), None);
        // Decoded once: %252e stays a literal "%2e" name.
        assert_eq!(j("/%252e%252e/x").as_deref(), Some("/srv/www/%2e%2e/x"));
    }

    #[test]
    fn split_keeps_the_delimiter_left() {
        let d = vec![".php".to_string()];
        assert_eq!(split_path("/index.php/a/b", &d), ("/index.php", "/a/b"));
        assert_eq!(split_path("/x.PHP", &d), ("/x.PHP", ""));
        assert_eq!(split_path("/static/app.js", &d), ("/static/app.js", ""));
    }
}
