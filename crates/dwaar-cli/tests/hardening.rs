// Hostile HTTP/1 clients: malformed and ambiguous requests are refused with the right
// status, the connection is closed, and nothing reaches the origin; slow-loris clients
// are cut off by `servers { timeouts { read_header } }`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Sends `raw`, returns (status, connection closed afterwards).
fn send(port: u16, raw: &[u8]) -> (u16, bool) {
    let (statuses, closed) = exchange(port, raw);
    (statuses.first().copied().unwrap_or(0), closed)
}

/// Sends `raw`, returns the status of every response read back (in order) and whether
/// the connection was closed afterwards.
fn exchange(port: u16, raw: &[u8]) -> (Vec<u16>, bool) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = s.write_all(raw);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    let statuses = text
        .lines()
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .filter_map(|l| l.get(..3).and_then(|c| c.parse().ok()))
        .collect();
    (statuses, closed)
}

#[test]
fn malformed_and_ambiguous_requests_are_refused_and_never_forwarded() {
    let origin = origin::http("hardening");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("differing CLs", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(), &[400]),
        ("malformed CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd".to_vec(), &[400]),
        ("negative CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), &[400]),
        ("unknown coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), &[400]),
        ("repeated coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("two TE fields", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), &[400]),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), &[400]),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n".to_vec(), &[400]),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nab\r\n0\r\n\r\n".to_vec(), &[400]),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(), &[400]),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(), &[400]),
        ("invalid field name", b"GET / HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n".to_vec(), &[400]),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        ("CL list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab".to_vec(), &[400]),
        ("identical CLs", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab".to_vec(), &[400]),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        ("tab in target", b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        ("head over 32 KiB", big_field(64 * 1024), &[431]),
        ("over 100 fields", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-F: 1\r\n".repeat(101)).into_bytes(), &[431]),
        ("repeated Host", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), &[400]),
        // Over Pingora's own head limit, Pingora refuses it before Dwaar sees it.
        ("URI too long", long.into_bytes(), &[414]),
        ("URI over 8 KiB", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "b".repeat(9000)).into_bytes(), &[414]),
        ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), &[505]),
    ];
    for (name, raw, want) in &cases {
        let (status, closed) = send(port, raw);
        assert!(
            want.contains(&status),
            "{name}: status {status}, want {want:?}"
        );
        // The connection is not kept for another request after a refused one.
        if *name != "missing Host" {
            assert!(closed, "{name}: connection left open");
        }
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the origin");
    // A well-formed request still works.
    assert_eq!(ok_get(port, "x", "/").status, 200);
}

/// A request whose one header field makes the head `size` bytes long.
fn big_field(size: usize) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(size)
    )
    .into_bytes()
}

/// Chunked framing that a lenient parser reads differently (bare LF or CR line ends,
/// a size without digits, whitespace that leads nowhere) is a 400 and a close on both
/// HTTP/1 paths, including after earlier requests on the same connection.
#[test]
fn chunked_framing_is_read_strictly() {
    let origin = origin::http("chunks");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    let head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (name, body) in [
        ("extension ended by LF", "2;a\nab\n0\n\n"),
        ("size ended by LF", "2\nab\r\n0\r\n\r\n"),
        ("data ended by LF", "2\r\nab\n0\r\n\r\n"),
        ("bare CR", "2;a\rab\r\n0\r\n\r\n"),
        ("no size", ";a\r\nab\r\n0\r\n\r\n"),
        ("whitespace, no extension", "2 x\r\nab\r\n0\r\n\r\n"),
        ("trailer ended by LF", "2\r\nab\r\n0\r\nX: 1\n\r\n"),
    ] {
        let (status, closed) = send(port, format!("{head}{body}").as_bytes());
        assert_eq!(status, 400, "{name}");
        assert!(closed, "{name}: connection left open");
        // The same after a good request on the connection.
        let (statuses, closed) = exchange(
            port,
            format!("{head}2\r\nok\r\n0\r\n\r\n{head}{body}").as_bytes(),
        );
        assert!(
            statuses == [200, 400] && closed,
            "{name} second: {statuses:?} {closed}"
        );
    }
    // Well-formed chunked bodies still arrive whole, extensions and trailers included.
    let (status, _) = send(
        port,
        format!("{head}2;x=y\r\nab\r\n1\r\nc\r\n0\r\nX-T: 1\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200);
}

/// Every head on a connection is judged by the same strict reader, also after a
/// request Pingora served (a chunked upload here): a pipelined request with a space in
/// its target is refused, and well-formed pipelined requests are answered in order.
#[test]
fn heads_after_a_lent_request_are_read_strictly() {
    let origin = origin::http("lent");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    let chunked =
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let all = format!(
        "{chunked}GET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz{chunked}GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let (statuses, closed) = exchange(port, all.as_bytes());
    assert_eq!(statuses, [200, 200, 200, 200, 400]);
    assert!(closed, "the connection stayed open after the 400");
}

/// The request head limit: 32 KiB of fields by default (431 above, like nginx's
/// defaults), `servers { max_header_size }` raises or lowers it on both paths.
#[test]
fn request_heads_are_bounded_by_max_header_size() {
    let (_d, port) = serve(":PORT {\n\trespond ok\n}\n");
    assert_eq!(send(port, &big_field(20 * 1024)).0, 200);
    assert_eq!(send(port, &big_field(40 * 1024)).0, 431);
    let (_d2, port2) =
        serve("{\n\tservers {\n\t\tmax_header_size 1MB\n\t}\n}\n:PORT {\n\trespond ok\n}\n");
    assert_eq!(send(port2, &big_field(200 * 1024)).0, 200);
    let (_d3, port3) =
        serve("{\n\tservers {\n\t\tmax_header_size 4KB\n\t}\n}\n:PORT {\n\trespond ok\n}\n");
    assert_eq!(send(port3, &big_field(3 * 1024)).0, 200);
    assert_eq!(send(port3, &big_field(6 * 1024)).0, 431);
}

#[test]
fn slowloris_is_cut_off_by_the_header_timeout() {
    // Every head is read by the lean path, which bounds the whole head by
    // `read_header`, also when Pingora serves the requests.
    let (_d, port) = serve(
        "{\n\tservers {\n\t\ttimeouts {\n\t\t\tread_header 1s\n\t\t\tidle 2s\n\t\t}\n\t}\n}\n:PORT {\n\trespond ok\n}\n",
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    // One header byte every 300 ms: never completes a head.
    let writer = {
        let mut w = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa" {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut buf = [0u8; 256];
    let r = s.read(&mut buf);
    let elapsed = start.elapsed();
    assert!(
        matches!(r, Ok(0)) || r.is_err() || String::from_utf8_lossy(&buf).contains("408"),
        "{r:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "cut off after {elapsed:?}"
    );
    let _ = writer.join();
    // An idle keep-alive connection is closed after `idle`.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    c.set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap_or_else(|e| panic!("{e}"));
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 64 * 1024 * 1024])
        .unwrap_or_else(|e| panic!("{e}"));
    let (d, port) = serve(&format!(
        "{{\n\tservers {{\n\t\ttimeouts {{\n\t\t\twrite 1s\n\t\t}}\n\t}}\n}}\n:PORT {{\n\troot * {}\n\tfile_server\n}}\n",
        dir.path().display()
    ));
    let open = || d.metric("dwaar_open_connections").unwrap_or(99);
    // Ask for 64 MiB and never read it. (Without the write timeout the connection
    // stays open: checked by hand when this test was written.)
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_until(Duration::from_secs(3), || open() >= 1));
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || open() == 0),
        "the stalled connection was kept for {:?}",
        start.elapsed()
    );
    drop(s);
}

/// An origin that answers `/bad-*` paths with broken framing and `/good` properly,
/// keeping connections open; it counts the connections it accepted.
fn broken_origin() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    origin::scripted(
        &[
            (
                "GET /bad-cl ",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\nabcd",
            ),
            (
                "GET /two-cl ",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 6\r\n\r\nabcdef",
            ),
            (
                "GET /bad-te ",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
            ),
            (
                "GET /bad-chunk ",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
            ),
        ],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
}

#[test]
fn upstream_responses_with_broken_framing_are_502_and_not_reused() {
    let (origin, conns) = broken_origin();
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{origin}\n}}\n"
    ));
    assert_eq!(ok_get(port, "x", "/good").text(), "ok");
    let before = conns.load(std::sync::atomic::Ordering::SeqCst);
    for path in ["/bad-cl", "/two-cl", "/bad-te"] {
        let r = get(port, "x", path);
        let status = r.as_ref().map(|r| r.status).unwrap_or(0);
        assert_eq!(status, 502, "{path}");
        // The next request does not reuse the connection that carried broken framing.
        let after_bad = conns.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(ok_get(port, "x", "/good").text(), "ok", "{path}");
        let now = conns.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            now > after_bad || now > before,
            "{path}: connection reused ({before} -> {now})"
        );
    }
}

#[test]
fn a_client_that_stalls_its_body_is_cut_off_after_read_body() {
    let origin = origin::http("slow-body");
    let (_d, port) = serve(&format!(
        "{{\n\tservers {{\n\t\ttimeouts {{\n\t\t\tread_body 1s\n\t\t}}\n\t}}\n}}\n:PORT {{\n\treverse_proxy 127.0.0.1:{}\n}}\n",
        origin.port
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(5), "kept for {waited:?}");
    // Whatever was answered, it was not a success.
    assert!(!String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

/// An origin that fails in the middle of a response, by path: `/reset` sends 1 KiB of
/// a 100 KiB body and resets the connection; `/truncated` sends one chunk of a chunked
/// body and closes; `/trickle` sends a 100-byte body one byte every 1.5 s; `/silent`
/// never answers.
fn failing_origin() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                if head.starts_with("GET /reset ") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 102400\r\n\r\n");
                    let _ = s.write_all(&[b'r'; 1024]);
                    std::thread::sleep(Duration::from_millis(100));
                    // Linger 0: the close is a reset.
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                } else if head.starts_with("GET /truncated ") {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    );
                    std::thread::sleep(Duration::from_millis(100));
                } else if head.starts_with("GET /trickle ") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
                    for _ in 0..100 {
                        if s.write_all(b"t").is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                } else if head.starts_with("GET /silent ") {
                    std::thread::sleep(Duration::from_secs(30));
                }
            });
        }
    });
    port
}

/// Reads a whole response on a fresh connection: (status line, body as sent, time taken).
fn fetch_broken(port: u16, path: &str) -> (String, Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |i| i + 4);
    let status = String::from_utf8_lossy(&got[..head_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (status, got.split_off(head_end), start.elapsed())
}

/// An upstream that resets mid-body, ends a chunked body early, trickles slower than
/// `read_timeout` or never answers: the client gets a clean end (a 502/504 before anything was sent, else the
/// connection closed short of the promised length, never a hang or a body completed
/// with made-up bytes), and every client connection is closed afterwards.
#[test]
fn upstream_failures_mid_response_end_cleanly() {
    let origin = failing_origin();
    let (d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy 127.0.0.1:{origin} {{\n\t\ttransport http {{\n\t\t\tread_timeout 1s\n\t\t}}\n\t}}\n}}\n"
    ));
    let (status, body, took) = fetch_broken(port, "/reset");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.len() < 102_400, "reset body completed: {}", body.len());
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (status, body, took) = fetch_broken(port, "/truncated");
    assert!(status.contains(" 200 "), "{status}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Ended early, the relayed chunked body never gets a last chunk Dwaar made up.
    assert!(
        body.starts_with(b"5\r\nhello\r\n") && !body.ends_with(b"0\r\n\r\n"),
        "{}",
        body.escape_ascii()
    );
    let (status, body, took) = fetch_broken(port, "/trickle");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.len() < 100, "trickle completed: {}", body.len());
    assert!(took < Duration::from_secs(8), "{took:?}");
    let (status, _, took) = fetch_broken(port, "/silent");
    assert!(status.contains(" 504 "), "{status}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing is left open behind the failures.
    let open = || d.metric("dwaar_open_connections").unwrap_or(99);
    assert!(
        wait_until(Duration::from_secs(5), || open() == 0),
        "connections left open: {}",
        open()
    );
}
