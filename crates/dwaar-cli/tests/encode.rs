// `encode` end to end: negotiation, what is and is not compressed, streamed
// compression that does not hold events back, and encode together with analytics.

mod common;
use common::*;
use dwaar_testkit::pages::{decompress, html_origin};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const BIG: &str = "All work and no play makes a proxy a dull server.\n";

fn site(encode: &str, extra: &str) -> (Dwaar, u16, tempfile::TempDir) {
    let origin = html_origin();
    let dir = tempfile::tempdir().expect("encode test step");
    std::fs::write(dir.path().join("big.css"), BIG.repeat(300)).expect("encode test step");
    std::fs::write(dir.path().join("small.css"), "a{}").expect("encode test step");
    let port = free_port();
    let conf = format!(
        "{{\n\tstorage file_system {d}/store\n}}\nhttp://localhost:{port} {{\n\t{encode}\n{extra}\
         \thandle /files/* {{\n\t\turi strip_prefix /files\n\t\troot * {d}\n\t\tfile_server\n\t}}\n\
         \thandle /said {{\n\t\theader Content-Type text/plain\n\t\trespond \"{body}\"\n\t}}\n\
         \treverse_proxy 127.0.0.1:{origin}\n}}\n",
        d = dir.path().display(),
        body = BIG.trim_end().repeat(40),
    );
    (Dwaar::start(&bin(), &conf, &[port]), port, dir)
}

fn get_enc(port: u16, path: &str, accept: Option<&str>, extra: &[(&str, &str)]) -> Response {
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = accept {
        h.push(("Accept-Encoding", a));
    }
    request(port, "GET", "localhost", path, &h, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn negotiation_matrix_on_proxied_file_and_respond_answers() {
    let (_d, port, _dir) = site("encode zstd gzip br", "");
    let want = BIG.repeat(200);
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip"), Some("gzip")),
        (Some("br"), Some("br")),
        (Some("br;q=1, gzip;q=0.5"), Some("gzip")),
        (Some("zstd;q=0, gzip;q=0.1"), Some("gzip")),
        (Some("*"), Some("zstd")),
        (Some("zstd;q=0, *;q=0.2"), Some("gzip")),
        (Some("identity"), None),
        (Some("*;q=0"), None),
        (Some("deflate"), None),
        (None, None),
    ];
    for (accept, coding) in cases {
        let r = get_enc(port, "/big.txt", *accept, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            *coding,
            "Accept-Encoding {accept:?}"
        );
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        let plain = decompress(*coding, &r.body);
        assert_eq!(String::from_utf8_lossy(&plain), want, "{accept:?}");
        if coding.is_some() {
            assert!(
                r.body.len() < want.len() / 5,
                "{accept:?}: {}",
                r.body.len()
            );
            assert!(r.header("content-length").is_none());
            assert_eq!(r.header("etag"), Some("W/\"big\""));
        } else {
            assert_eq!(r.header("etag"), Some("\"big\""));
        }
    }
    // Files and `respond`.
    let f = get_enc(port, "/files/big.css", Some("gzip"), &[]);
    assert_eq!(f.header("content-encoding"), Some("gzip"));
    assert_eq!(
        String::from_utf8_lossy(&decompress(Some("gzip"), &f.body)),
        BIG.repeat(300)
    );
    let s = get_enc(port, "/said", Some("br"), &[]);
    assert_eq!(s.header("content-encoding"), Some("br"));
    assert_eq!(
        String::from_utf8_lossy(&decompress(Some("br"), &s.body)),
        BIG.trim_end().repeat(40)
    );
    // HEAD says what GET would send, without a body.
    let h = request(
        port,
        "HEAD",
        "localhost",
        "/files/big.css",
        &[("Accept-Encoding", "gzip")],
        b"",
    )
    .expect("encode test step");
    assert_eq!(h.header("content-encoding"), Some("gzip"));
}

#[test]
fn what_is_never_compressed() {
    let (_d, port, _dir) = site("encode gzip", "");
    for path in [
        "/small.txt",
        "/image.png",
        "/grpc",
        "/no-transform",
        "/files/small.css",
    ] {
        let r = get_enc(port, path, Some("gzip"), &[]);
        assert_eq!(r.header("content-encoding"), None, "{path}");
    }
    // Already encoded by the origin: passed on as it is, never twice.
    let r = get_enc(port, "/coded/br", Some("gzip, br"), &[]);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(String::from_utf8_lossy(&decompress(Some("br"), &r.body)).contains("<h1>Hello</h1>"));
    // A range gets the plain bytes it names.
    let r = get_enc(
        port,
        "/files/big.css",
        Some("gzip"),
        &[("Range", "bytes=0-9")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, BIG.as_bytes()[..10].to_vec());
}

#[test]
fn the_block_form_levels_lengths_and_matchers() {
    let (_d, port, _dir) = site(
        "encode {\n\t\tgzip 9\n\t\tminimum_length 5\n\t\tmatch {\n\t\t\theader Content-Type text/plain*\n\t\t\tstatus 2xx\n\t\t}\n\t}",
        "",
    );
    let r = get_enc(port, "/small.txt", Some("gzip"), &[]);
    assert_eq!(r.header("content-encoding"), None, "4 bytes is under 5");
    let r = get_enc(port, "/big.txt", Some("gzip, zstd"), &[]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // CSS is not text/plain here.
    let r = get_enc(port, "/files/big.css", Some("gzip"), &[]);
    assert_eq!(r.header("content-encoding"), None);
}

#[test]
fn streamed_events_are_compressed_without_waiting() {
    let (_d, port, _dir) = site("encode gzip", "");
    let mut c = Conn::open(port).expect("encode test step");
    let started = Instant::now();
    c.send_raw(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        .expect("encode test step");
    // Read until the first event decodes; the origin pauses 700 ms after each one.
    let mut raw = Vec::new();
    let mut tmp = [0u8; 8192];
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    let mut fed = 0;
    let first_at = loop {
        let n = c.stream().read(&mut tmp).expect("encode test step");
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&tmp[..n]);
        if let Some(body_at) = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&raw[..body_at]).to_ascii_lowercase();
            assert!(head.contains("content-encoding: gzip"), "{head}");
            let data = dechunk(&raw[body_at..]);
            let _ = dec.write_all(&data[fed..]);
            fed = data.len();
            let _ = dec.flush();
            if String::from_utf8_lossy(dec.get_ref()).contains("data: event 0") {
                break started.elapsed();
            }
        }
    };
    assert!(
        first_at < Duration::from_millis(600),
        "first event after {first_at:?}"
    );
}

/// The data of complete chunks in a chunked body read so far.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let Ok(size) = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("x"), 16)
        else {
            return out;
        };
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

#[test]
fn analytics_and_encode_together() {
    let (_d, port, _dir) = site("encode gzip", "\tanalytics\n");
    let ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0";
    let r = get_enc(port, "/page", Some("gzip"), &[("User-Agent", ua)]);
    assert_eq!(
        r.header("content-encoding"),
        None,
        "the test page is under 512 bytes"
    );
    // Origin-compressed HTML: injected and sent in the origin's coding.
    let r = get_enc(
        port,
        "/coded/zstd",
        Some("gzip, zstd"),
        &[("User-Agent", ua)],
    );
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    let text = String::from_utf8_lossy(&decompress(Some("zstd"), &r.body)).to_string();
    assert_eq!(text.matches("/_dwaar/a.js").count(), 1, "{text}");
}
