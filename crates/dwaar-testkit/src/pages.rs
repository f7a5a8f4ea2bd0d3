//! A scripted origin for body-rewriting tests (analytics injection, `encode`): fixed
//! HTML, text, binary, compressed, streamed and event-stream answers by path, and the
//! codings to build and check compressed bodies.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// The HTML page most paths answer with.
pub const PAGE: &str =
    "<!doctype html><html><head><title>t</title></head><body><h1>Hello</h1></body></html>";

pub fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("pages origin");
            e.finish().expect("pages origin")
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("pages origin");
            e.finish().expect("pages origin")
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).expect("pages origin");
            }
            out
        }
        "zstd" => zstd::encode_all(data, 3).expect("pages origin"),
        _ => data.to_vec(),
    }
}

pub fn decompress(coding: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Some("gzip") => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("pages origin");
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .expect("pages origin");
        }
        Some("br") => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("pages origin");
        }
        Some("zstd") => out = zstd::decode_all(data).expect("pages origin"),
        _ => out = data.to_vec(),
    }
    out
}

/// An origin that answers each path with a fixed HTML (or other) response; `/stream`
/// sends its page in chunks with a pause before `</body>` is split across two of them.
pub fn html_origin() -> u16 {
    counting_origin().0
}

/// [`html_origin`] with a count of the requests it answered (for cache tests), and
/// cache-related paths: `/cc/<Cache-Control value, %20 for spaces>` (with a fixed
/// ETag and `304` to a matching `If-None-Match`), `/vary` (varies on
/// Accept-Language), `/cookie` (sets one), `/slow` (answers after 500 ms), `/flaky`
/// (cacheable for a second with `stale-if-error=60`, then 503s).
pub fn counting_origin() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("pages origin");
    let port = l.local_addr().expect("pages origin").port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let counter = counter.clone();
            let flaky = flaky.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let field = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                };
                // Read a declared body before answering: closing with unread bytes
                // makes the close a reset, which can overtake the answer.
                let head_len = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(buf.len(), |i| i + 4);
                let declared: usize = field("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut unread = declared.saturating_sub(buf.len() - head_len);
                while unread > 0 {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => unread = unread.saturating_sub(k),
                    }
                }
                let page = PAGE.as_bytes();
                let reply = |s: &mut std::net::TcpStream, extra: &str, body: &[u8]| {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                };
                if let Some(cc) = path.strip_prefix("/cc/") {
                    let cc = cc.replace("%20", " ");
                    if field("if-none-match").as_deref() == Some("\"e1\"") {
                        let _ = write!(s, "HTTP/1.1 304 Not Modified\r\nCache-Control: {cc}\r\nETag: \"e1\"\r\nConnection: close\r\n\r\n");
                        return;
                    }
                    let body = format!("answer {n}");
                    reply(
                        &mut s,
                        &format!(
                            "Content-Type: text/plain\r\nCache-Control: {cc}\r\nETag: \"e1\"\r\n"
                        ),
                        body.as_bytes(),
                    );
                    return;
                }
                match path.as_str() {
                    "/flaky" => {
                        // Cacheable the first time, a 503 afterwards.
                        if !flaky.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            reply(&mut s, "Content-Type: text/plain\r\nCache-Control: max-age=1, stale-if-error=60\r\n", b"good answer");
                        } else {
                            let _ = write!(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndown");
                        }
                        return;
                    }
                    "/vary" => {
                        let lang = field("accept-language").unwrap_or_default();
                        reply(&mut s, "Content-Type: text/plain\r\nCache-Control: max-age=60\r\nVary: Accept-Language\r\n", format!("lang {lang} {n}").as_bytes());
                    }
                    "/cookie" => reply(&mut s, "Content-Type: text/plain\r\nCache-Control: max-age=60\r\nSet-Cookie: a=b\r\n", format!("cookie {n}").as_bytes()),
                    "/slow" => {
                        std::thread::sleep(Duration::from_millis(500));
                        reply(&mut s, "Content-Type: text/plain\r\nCache-Control: max-age=60\r\n", format!("slow {n}").as_bytes());
                    }
                    _ => {}
                }
                if matches!(path.as_str(), "/vary" | "/cookie" | "/slow") {
                    return;
                }
                match path.as_str() {
                    "/page" => reply(&mut s, "Content-Type: text/html; charset=utf-8\r\nETag: \"v1\"\r\n", page),
                    "/stream" => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                        let parts: [&[u8]; 3] = [b"<html><body><p>first</p></bo", b"dy>", b"</html>"];
                        for (i, p) in parts.iter().enumerate() {
                            let _ = write!(s, "{:x}\r\n", p.len());
                            let _ = s.write_all(p);
                            let _ = s.write_all(b"\r\n");
                            let _ = s.flush();
                            if i == 0 {
                                std::thread::sleep(Duration::from_millis(1500));
                            }
                        }
                        let _ = s.write_all(b"0\r\n\r\n");
                    }
                    p if p.starts_with("/coded/") => {
                        let coding = &p[7..];
                        let body = compress(coding, page);
                        reply(&mut s, &format!("Content-Type: text/html\r\nContent-Encoding: {coding}\r\nVary: Accept-Encoding\r\n"), &body);
                    }
                    "/csp-nonce" => reply(&mut s, "Content-Type: text/html\r\nContent-Security-Policy: script-src 'nonce-r4nd0m' 'strict-dynamic'\r\n", page),
                    "/csp-strict" => reply(&mut s, "Content-Type: text/html\r\nContent-Security-Policy: default-src 'none'; script-src https://cdn.example\r\n", page),
                    "/no-transform" => reply(&mut s, "Content-Type: text/html\r\nCache-Control: public, no-transform\r\n", page),
                    "/json" => reply(&mut s, "Content-Type: application/json\r\n", b"{\"a\":\"</body>\"}"),
                    "/not-found" => {
                        let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", page.len());
                        let _ = s.write_all(page);
                    }
                    "/big.txt" => {
                        let body = "All work and no play makes a proxy a dull server.\n".repeat(200);
                        reply(&mut s, "Content-Type: text/plain; charset=utf-8\r\nETag: \"big\"\r\n", body.as_bytes())
                    }
                    "/small.txt" => reply(&mut s, "Content-Type: text/plain\r\n", b"tiny"),
                    "/image.png" => reply(&mut s, "Content-Type: image/png\r\n", &[0x89u8; 4096]),
                    "/grpc" => reply(&mut s, "Content-Type: application/grpc\r\n", &[0u8; 2048]),
                    "/events" => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                        for i in 0..3 {
                            let ev = format!("data: event {i} {}\n\n", "x".repeat(600));
                            let _ = write!(s, "{:x}\r\n{ev}\r\n", ev.len());
                            let _ = s.flush();
                            std::thread::sleep(Duration::from_millis(700));
                        }
                        let _ = s.write_all(b"0\r\n\r\n");
                    }
                    "/unknown-coding" => reply(&mut s, "Content-Type: text/html\r\nContent-Encoding: compress\r\n", page),
                    _ => reply(&mut s, "Content-Type: text/html\r\n", page),
                }
            });
        }
    });
    (port, count)
}
