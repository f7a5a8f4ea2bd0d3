// End-to-end tests of `root`, `file_server`, `try_files` and the `file` matcher.

mod common;
use common::*;
use std::path::Path;

/// A site directory with a few files, a hidden one, a subdirectory and a symlink
/// pointing outside it.
fn site() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let w = |p: &str, data: &[u8]| {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap_or(d.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, data).unwrap_or_else(|e| panic!("{e}"));
    };
    w("index.html", b"<h1>home</h1>");
    w("hello.txt", b"hello world\n");
    w("style.css", b"body{}");
    w("app.js", b"console.log(1)");
    w(
        "data.bin",
        &(0..=255u8).cycle().take(10_000).collect::<Vec<u8>>(),
    );
    w("docs/readme.txt", b"docs");
    w("docs/zeta.txt", b"zzzzzz");
    w("docs/alpha.txt", b"a");
    w("docs/.secret", b"hidden");
    w("blog/index.html", b"blog index");
    w("notes.bak", b"backup");
    w("spa/index.html", b"spa shell");
    w("pre/app.js", b"plain js");
    w("pre/app.js.gz", b"GZIPPED");
    w("pre/app.js.br", b"BROTLI");
    std::os::unix::fs::symlink("/etc/hostname", d.path().join("escape.txt"))
        .unwrap_or_else(|e| panic!("{e}"));
    let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(outside.path().join("x.txt"), b"outside").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(outside.path(), d.path().join("linkdir"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::mem::forget(outside);
    d
}

fn config(root: &Path, body: &str) -> String {
    format!(":PORT {{\n\troot * {}\n{body}\n}}\n", root.display())
}

fn req(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", "x", path, headers, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn serves_files_with_types_validators_and_index() {
    let s = site();
    let (_d, port) = serve(&config(s.path(), "\tfile_server"));
    let r = req(port, "/hello.txt", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("etag").is_some_and(|e| e.starts_with('"')));
    assert!(r.header("last-modified").is_some());
    assert_eq!(
        req(port, "/style.css", &[]).header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(
        req(port, "/data.bin", &[]).header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(req(port, "/", &[]).text(), "<h1>home</h1>");
    assert_eq!(req(port, "/blog/", &[]).text(), "blog index");
    // HEAD: the same headers, no body.
    let h = request(port, "HEAD", "x", "/hello.txt", &[], b"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((h.status, h.body.len()), (200, 0));
    assert_eq!(h.header("content-length"), Some("12"));
    // Other methods are not allowed on files.
    let p = request(port, "POST", "x", "/hello.txt", &[], b"x").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.status, 405);
    assert_eq!(p.header("allow"), Some("GET, HEAD"));
    assert_eq!(req(port, "/missing.txt", &[]).status, 404);
}

#[test]
fn conditional_requests() {
    let s = site();
    let (_d, port) = serve(&config(s.path(), "\tfile_server"));
    let r = req(port, "/hello.txt", &[]);
    let etag = r.header("etag").unwrap_or_default().to_string();
    let lm = r.header("last-modified").unwrap_or_default().to_string();
    assert_eq!(
        req(port, "/hello.txt", &[("If-None-Match", &etag)]).status,
        304
    );
    assert_eq!(
        req(
            port,
            "/hello.txt",
            &[("If-None-Match", &format!("W/{etag}"))]
        )
        .status,
        304
    );
    assert_eq!(
        req(port, "/hello.txt", &[("If-None-Match", "\"other\"")]).status,
        200
    );
    assert_eq!(
        req(port, "/hello.txt", &[("If-Modified-Since", &lm)]).status,
        304
    );
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(
        req(port, "/hello.txt", &[("If-Modified-Since", old)]).status,
        200
    );
    assert_eq!(
        req(port, "/hello.txt", &[("If-Match", "\"nope\"")]).status,
        412
    );
    assert_eq!(req(port, "/hello.txt", &[("If-Match", &etag)]).status, 200);
    assert_eq!(
        req(port, "/hello.txt", &[("If-Unmodified-Since", old)]).status,
        412
    );
    // If-None-Match wins over If-Modified-Since.
    let r = req(
        port,
        "/hello.txt",
        &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn ranges_single_multi_unsatisfiable_and_if_range() {
    let s = site();
    let (_d, port) = serve(&config(s.path(), "\tfile_server"));
    let r = req(port, "/hello.txt", &[("Range", "bytes=0-4")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-range"), Some("bytes 0-4/12"));
    let r = req(port, "/hello.txt", &[("Range", "bytes=-6")]);
    assert_eq!(r.text(), "world\n");
    let r = req(port, "/hello.txt", &[("Range", "bytes=0-1,6-10")]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{ct}"));
    let body = r.text();
    assert!(body.contains(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-1/12\r\n\r\nhe\r\n")), "{body}");
    assert!(
        body.contains("Content-Range: bytes 6-10/12\r\n\r\nworld\r\n"),
        "{body}"
    );
    assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    assert_eq!(
        r.header("content-length").map(|l| l.parse::<usize>().ok()),
        Some(Some(body.len()))
    );
    let r = req(port, "/hello.txt", &[("Range", "bytes=50-60")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */12"));
    // If-Range with a stale validator: the whole file.
    let r = req(
        port,
        "/hello.txt",
        &[("Range", "bytes=0-4"), ("If-Range", "\"stale\"")],
    );
    assert_eq!((r.status, r.text().len()), (200, 12));
    let etag = req(port, "/hello.txt", &[])
        .header("etag")
        .unwrap_or_default()
        .to_string();
    let r = req(
        port,
        "/hello.txt",
        &[("Range", "bytes=0-4"), ("If-Range", &etag)],
    );
    assert_eq!(r.status, 206);
    // A range of a large (streamed, uncached) file.
    let r = req(port, "/data.bin", &[("Range", "bytes=9990-")]);
    assert_eq!(
        r.body,
        (0..=255u8).cycle().skip(9990).take(10).collect::<Vec<u8>>()
    );
}

#[test]
fn canonical_redirects_hide_and_traversal() {
    let s = site();
    let (_d, port) = serve(&config(
        s.path(),
        "\tfile_server {\n\t\thide .secret *.bak\n\t}",
    ));
    let r = req(port, "/blog?x=1", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/blog/?x=1")));
    let r = req(port, "/hello.txt/", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/hello.txt")));
    assert_eq!(req(port, "/docs/.secret", &[]).status, 404);
    assert_eq!(req(port, "/notes.bak", &[]).status, 404);
    // Traversal: cleaned inside the root, never outside.
    for p in [
        "/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/docs/..%2f..%2f..%2fetc%2fpasswd",
    ] {
        let raw_req = format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let r = raw(port, &raw_req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 404, "{p}");
        assert!(!r.text().contains("root:"), "{p}");
    }
    let r = raw(
        port,
        "GET /hello.txt%00.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    // Symlinks out of the root are refused, for files and directories.
    assert_eq!(req(port, "/escape.txt", &[]).status, 404);
    assert_eq!(req(port, "/linkdir/x.txt", &[]).status, 404);
}

#[test]
fn browse_lists_directories_as_html_and_json() {
    let s = site();
    let (_d, port) = serve(&config(
        s.path(),
        "\tfile_server browse {\n\t\thide .secret\n\t}",
    ));
    let r = req(port, "/docs/", &[]);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(html.contains("readme.txt") && html.contains("alpha.txt"));
    assert!(!html.contains(".secret"));
    let j = req(
        port,
        "/docs/?sort=size&order=desc",
        &[("Accept", "application/json")],
    );
    let v: serde_json::Value = serde_json::from_slice(&j.body).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["zeta.txt", "readme.txt", "alpha.txt"]);
    assert_eq!(v[0]["size"], 6);
    assert_eq!(v[0]["url"], "./zeta.txt");
    assert_eq!(v[0]["is_dir"], false);
    let by_name = req(port, "/docs/?sort=name", &[("Accept", "application/json")]);
    let v: serde_json::Value =
        serde_json::from_slice(&by_name.body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v[0]["name"], "alpha.txt");
    // Without browse, a directory without an index is not found.
    let (_d2, port2) = serve(&config(s.path(), "\tfile_server"));
    assert_eq!(req(port2, "/docs/", &[]).status, 404);
}

#[test]
fn precompressed_status_pass_thru_try_files_and_file_matcher() {
    let s = site();
    let (_d, port) = serve(&config(
        s.path(),
        "\t@pre path /pre/*\n\
         \thandle @pre {\n\t\tfile_server {\n\t\t\tprecompressed br gzip\n\t\t}\n\t}\n\
         \thandle /spa/* {\n\t\ttry_files {path} /spa/index.html\n\t\tfile_server\n\t}\n\
         \t@exists file {\n\t\ttry_files {path}\n\t}\n\
         \theader @exists X-Found {file_match.relative}\n\
         \thandle /gone/* {\n\t\tfile_server {\n\t\t\tstatus 410\n\t\t}\n\t}\n\
         \tfile_server {\n\t\tpass_thru\n\t}\n\
         \trespond \"fallback {path}\" 404",
    ));
    let br = req(port, "/pre/app.js", &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(
        (br.text().as_str(), br.header("content-encoding")),
        ("BROTLI", Some("br"))
    );
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    assert_eq!(
        br.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let gz = req(port, "/pre/app.js", &[("Accept-Encoding", "gzip, br;q=0")]);
    assert_eq!(gz.text(), "GZIPPED");
    let plain = req(port, "/pre/app.js", &[]);
    assert_eq!(
        (plain.text().as_str(), plain.header("content-encoding")),
        ("plain js", None)
    );
    // SPA fallback: unknown paths under /spa/ get the shell, real files themselves.
    assert_eq!(req(port, "/spa/deep/link", &[]).text(), "spa shell");
    // The file matcher.
    assert_eq!(
        req(port, "/hello.txt", &[]).header("x-found"),
        Some("/hello.txt")
    );
    assert_eq!(req(port, "/nope.txt", &[]).header("x-found"), None);
    // pass_thru: a missing file falls through to the next handler.
    let r = req(port, "/nope.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "fallback /nope.txt"));
    // status: a file served with another status (an error page, say).
    std::fs::create_dir_all(s.path().join("gone")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path().join("gone/page.html"), b"gone").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(req(port, "/gone/page.html", &[]).status, 410);
}

/// Files sent with `sendfile` after a head flagged "more follows": on one keep-alive
/// connection every response arrives whole and without the kernel holding the head
/// back (a held head would cost 200 ms per response): files of 1 byte to 2 MB, and a
/// range of one.
#[test]
fn sendfile_responses_arrive_whole_and_at_once_on_keep_alive() {
    use std::io::{Read, Write};
    let s = site();
    let mid: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.path().join("one.bin"), b"1").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path().join("mid.bin"), &mid).unwrap_or_else(|e| panic!("{e}"));
    let (_d, port) = serve(&config(s.path(), "\tfile_server"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    // Reads one response: its head, then the body by its Content-Length.
    let mut pending = Vec::new();
    let mut response = |c: &mut std::net::TcpStream| -> (String, Vec<u8>) {
        let mut buf = [0u8; 65536];
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = c.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "closed");
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{head}"));
        while pending.len() < end + len {
            let n = c.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "closed");
            pending.extend_from_slice(&buf[..n]);
        }
        let body = pending[end..end + len].to_vec();
        pending.drain(..end + len);
        (head, body)
    };
    let started = std::time::Instant::now();
    for i in 0..60 {
        let (path, range, want): (&str, Option<&str>, &[u8]) = match i % 4 {
            0 => ("/one.bin", None, b"1"),
            1 => ("/data.bin", None, &[]),
            2 => ("/mid.bin", None, &mid),
            _ => ("/mid.bin", Some("bytes=1000-1999999"), &mid[1000..]),
        };
        let extra = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let (head, body) = response(&mut c);
        let status = if range.is_some() { "206" } else { "200" };
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
        if !want.is_empty() {
            assert!(body == want, "{path} {range:?}: {} bytes", body.len());
        } else {
            assert_eq!(body.len(), 10_000, "{path}");
        }
    }
    // 60 responses; a head held back until a timer would take 12 s.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn edits_are_seen_and_big_files_stream_intact() {
    let s = site();
    let (_d, port) = serve(&config(s.path(), "\tfile_server"));
    assert_eq!(req(port, "/hello.txt", &[]).text(), "hello world\n");
    // The small-file cache notices the change (size differs, then same size).
    std::fs::write(s.path().join("hello.txt"), b"changed!").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(req(port, "/hello.txt", &[]).text(), "changed!");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(s.path().join("hello.txt"), b"CHANGED!").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(req(port, "/hello.txt", &[]).text(), "CHANGED!");
    // 10 MB: streamed in chunks, every byte as on disk.
    let big: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    std::fs::write(s.path().join("big.bin"), &big).unwrap_or_else(|e| panic!("{e}"));
    let r = req(port, "/big.bin", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big);
}

#[test]
fn own_root_index_names_no_canonical_uris_and_try_policies() {
    let s = site();
    std::fs::write(s.path().join("docs/start.htm"), b"start page")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path().join("small.txt"), b"s").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path().join("large.txt"), b"lllllllll").unwrap_or_else(|e| panic!("{e}"));
    let cfg = format!(
        ":PORT {{\n\troot * {r}\n\
         \thandle /pick {{\n\t\ttry_files /small.txt /large.txt {{\n\t\t\tpolicy largest_size\n\t\t}}\n\t\tfile_server {{\n\t\t\troot {r}\n\t\t}}\n\t}}\n\
         \thandle /pick-small {{\n\t\ttry_files /large.txt /small.txt {{\n\t\t\tpolicy smallest_size\n\t\t}}\n\t\tfile_server {{\n\t\t\troot {r}\n\t\t}}\n\t}}\n\
         \tfile_server {{\n\t\troot {r}/docs\n\t\tindex start.htm\n\t\tdisable_canonical_uris\n\t}}\n}}\n",
        r = s.path().display()
    );
    let (_d, port) = serve(&cfg);
    // The handler's own root, and its index file name.
    assert_eq!(req(port, "/", &[]).text(), "start page");
    assert_eq!(req(port, "/readme.txt", &[]).text(), "docs");
    // No canonical redirects: a file with a trailing slash is served as is.
    assert_eq!(req(port, "/readme.txt/", &[]).status, 200);
    assert_eq!(req(port, "/pick", &[]).text(), "lllllllll");
    assert_eq!(req(port, "/pick-small", &[]).text(), "s");
}

/// `filesystem <name> local <dir>` with `fs`: file_server, `try_files` and the `file`
/// matcher read under that directory (the site's `root` a path within it);
/// `file_server { fs }` picks one for itself; `{http.vars.fs}` names it.
#[test]
fn named_filesystems_are_second_roots() {
    let main = site();
    let assets = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (p, data) in [
        ("static/logo.txt", "logo from assets"),
        ("sub/other/o.txt", "other from assets"),
        ("static/app.html", "spa in assets"),
    ] {
        let path = assets.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap_or(assets.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, data).unwrap_or_else(|e| panic!("{e}"));
    }
    let cfg = format!(
        "{{\n\tfilesystem assets local {}\n}}\n:PORT {{\n\troot * {}\n\
         \thandle /static/* {{\n\t\tfs assets\n\t\troot * /\n\t\ttry_files {{path}} /static/app.html\n\t\theader X-Fs {{http.vars.fs}}\n\t\tfile_server\n\t}}\n\
         \thandle /other/* {{\n\t\tfile_server {{\n\t\t\tfs assets\n\t\t\troot /sub\n\t\t}}\n\t}}\n\
         \tfile_server\n}}\n",
        assets.path().display(),
        main.path().display()
    );
    let (_d, port) = serve(&cfg);
    assert_eq!(ok_get(port, "x", "/hello.txt").text(), "hello world\n");
    let r = ok_get(port, "x", "/static/logo.txt");
    assert_eq!((r.status, r.text().as_str()), (200, "logo from assets"));
    assert_eq!(r.header("x-fs"), Some("assets"));
    assert_eq!(ok_get(port, "x", "/static/missing").text(), "spa in assets");
    assert_eq!(
        ok_get(port, "x", "/other/o.txt").text(),
        "other from assets"
    );
    assert_eq!(
        ok_get(port, "x", "/static/../hello.txt").text(),
        "hello world\n"
    );
    // The main root is not reachable through the file system, nor the other way round.
    assert_eq!(
        ok_get(port, "x", "/static/hello.txt").text(),
        "spa in assets"
    );
    assert_eq!(ok_get(port, "x", "/logo.txt").status, 404);
}
