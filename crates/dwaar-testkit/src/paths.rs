//! Every protocol path of one site: the end-to-end suites take the protocol as an
//! explicit parameter ([`Proto`]) and send the same request over each.
//!
//! [`Paths::start`] runs one site body (directives) behind every front-end at once: a
//! Dwaar process serving it on a plain port (the lean HTTP/1 path), an h2c port
//! (`protocols h1 h2c`) and an HTTPS port with the local CA (`protocols h1 h2 h3`), and
//! a second process with the lean path off (HTTP/1.1 through Pingora). Requests go out
//! through real clients: curl for HTTP/1.1 (plain and TLS), HTTP/2 and h2c, and the
//! testkit's quinn + h3 client for HTTP/3.

use crate::client::Response;
use crate::proxy::Dwaar;
use crate::{free_port, wait_until};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One protocol path through Dwaar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 on a plain port, served by the lean path.
    H1Lean,
    /// HTTP/1.1 on a plain port, served by Pingora's `HttpProxy`.
    H1Pingora,
    /// HTTP/1.1 over TLS.
    H1Tls,
    /// HTTP/2 over TLS.
    H2Tls,
    /// HTTP/2 with prior knowledge on a plain port.
    H2c,
    /// HTTP/3 over QUIC.
    H3,
}

/// Every path, in the order the suites run them.
pub const ALL: [Proto; 6] = [
    Proto::H1Lean,
    Proto::H1Pingora,
    Proto::H1Tls,
    Proto::H2Tls,
    Proto::H2c,
    Proto::H3,
];

/// A request to send over a path.
#[derive(Debug, Clone, Default)]
pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The `Host` (`:authority`) to send; `localhost` when empty.
    pub host: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Vec<u8>,
    /// Send the body without announcing its length: chunked over HTTP/1.1, without
    /// `content-length` over HTTP/3 (curl announces it over HTTP/2 regardless).
    pub unsized_body: bool,
    /// Send `Expect: 100-continue` and wait (up to 20 s) for the `100 Continue` before
    /// the body (HTTP/3: the field only).
    pub expect_continue: bool,
}

impl<'a> Req<'a> {
    pub fn get(path: &'a str) -> Req<'a> {
        Req {
            method: "GET",
            path,
            ..Req::default()
        }
    }

    pub fn post(path: &'a str, body: Vec<u8>) -> Req<'a> {
        Req {
            method: "POST",
            path,
            body,
            ..Req::default()
        }
    }

    pub fn header(mut self, name: &'a str, value: &'a str) -> Req<'a> {
        self.headers.push((name, value));
        self
    }

    pub fn unsized_body(mut self) -> Req<'a> {
        self.unsized_body = true;
        self
    }

    pub fn expect_continue(mut self) -> Req<'a> {
        self.expect_continue = true;
        self.headers.push(("Expect", "100-continue"));
        self
    }

    pub fn host(mut self, host: &'a str) -> Req<'a> {
        self.host = host;
        self
    }
}

/// What a failed exchange looked like from the client (`curl`'s exit code and message,
/// or the HTTP/3 client's error).
#[derive(Debug)]
pub struct Failed {
    pub code: i32,
    pub message: String,
}

/// One site served over every path.
pub struct Paths {
    pub main: Dwaar,
    pub pingora: Dwaar,
    pub plain: u16,
    pub plain_pingora: u16,
    pub h2c: u16,
    pub https: u16,
    /// The local CA's root, trusted by the clients.
    pub root: Vec<u8>,
    pub store: tempfile::TempDir,
}

impl Paths {
    /// Starts `body` (site directives, tab-indented) behind every path. `SCRATCH` in it
    /// names a directory of the test's own (logs, files); `INSTANCE` becomes `main` or
    /// `pingora`, so each process can write files of its own.
    pub fn start(bin: &Path, body: &str) -> Paths {
        Self::start_with(bin, "", body)
    }

    /// Like [`Paths::start`], with `servers` settings (lines such as
    /// `timeouts {\n read_header 1s\n }`) for every listener of both processes.
    pub fn start_with(bin: &Path, servers: &str, body: &str) -> Paths {
        Self::start_full(bin, servers, body, &[])
    }

    /// Like [`Paths::start_with`], with environment variables for both processes.
    pub fn start_full(bin: &Path, servers: &str, body: &str, env: &[(&str, &str)]) -> Paths {
        Self::start_all(bin, "", servers, body, env)
    }

    /// Like [`Paths::start`], with extra global option lines for both processes
    /// (`STORE` in them names the directory the test's storage is in).
    pub fn start_global(bin: &Path, global: &str, body: &str) -> Paths {
        Self::start_all(bin, global, "", body, &[])
    }

    fn start_all(
        bin: &Path,
        global: &str,
        servers: &str,
        body: &str,
        env: &[(&str, &str)],
    ) -> Paths {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let scratch = store.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("scratch: {e}"));
        let body = body.replace("SCRATCH", &scratch.display().to_string());
        let (http, https, plain, h2c, plain_pingora) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let main_body = body.replace("INSTANCE", "main");
        let global = global.replace("STORE", &store.path().display().to_string());
        let conf = format!(
            "{{\n\thttp_port {http}\n\thttps_port {https}\n\tstorage file_system {}\n{global}\
             \tservers :{plain} {{\n{servers}\n\t}}\n\
             \tservers :{h2c} {{\n\t\tprotocols h1 h2c\n{servers}\n\t}}\n\
             \tservers :{https} {{\n\t\tprotocols h1 h2 h3\n{servers}\n\t}}\n}}\n\
             :{plain} {{\n{main_body}\n}}\n\
             :{h2c} {{\n{main_body}\n}}\n\
             https://localhost:{https} {{\n\ttls internal\n{main_body}\n}}\n",
            store.path().display()
        );
        let main = Dwaar::start_env(bin, &conf, &[plain, h2c, https], &["--threads", "1"], env);
        let root = std::fs::read(store.path().join("pki/local/root.crt"))
            .unwrap_or_else(|e| panic!("local CA root: {e}"));
        let pingora_conf = format!(
            "{{\n{global}\tservers :{plain_pingora} {{\n{servers}\n\t}}\n}}\n:{plain_pingora} {{\n{}\n}}\n",
            body.replace("INSTANCE", "pingora")
        );
        let pingora = Dwaar::start_env(
            bin,
            &pingora_conf,
            &[plain_pingora],
            &["--threads", "1"],
            &[&[("DWAAR_FAST_PATH", "0")], env].concat(),
        );
        let paths = Paths {
            main,
            pingora,
            plain,
            plain_pingora,
            h2c,
            https,
            root,
            store,
        };
        // QUIC is ready a moment after the TCP ports.
        let up = wait_until(Duration::from_secs(10), || {
            crate::h3::get(https, "localhost", &paths.root, "/").is_ok()
        });
        assert!(up, "no HTTP/3 answer: {}", paths.main.log_text());
        paths
    }

    /// The scratch directory (`SCRATCH` in the body).
    pub fn scratch(&self) -> std::path::PathBuf {
        self.store.path().join("scratch")
    }

    /// Sends `req` over `proto`; `Err` when the exchange failed (no complete response).
    pub fn send(&self, proto: Proto, req: &Req<'_>) -> Result<Response, Failed> {
        self.send_via(proto, req, None)
    }

    /// The port `proto` reaches Dwaar on (HTTP/3: the HTTPS port, over UDP).
    pub fn port(&self, proto: Proto) -> u16 {
        match proto {
            Proto::H1Lean => self.plain,
            Proto::H1Pingora => self.plain_pingora,
            Proto::H1Tls | Proto::H2Tls | Proto::H3 => self.https,
            Proto::H2c => self.h2c,
        }
    }

    /// Like [`Paths::send`], with the TCP connection made to `127.0.0.1:via` instead
    /// (a [`crate::balancer::Balancer`] in front of [`Paths::port`]); host, SNI and
    /// certificate checks stay those of the real port. Not for HTTP/3.
    pub fn send_via(
        &self,
        proto: Proto,
        req: &Req<'_>,
        via: Option<u16>,
    ) -> Result<Response, Failed> {
        if proto == Proto::H3 {
            assert!(via.is_none(), "HTTP/3 cannot go through a TCP balancer");
            return self.send_h3(req);
        }
        let host = if req.host.is_empty() {
            "localhost"
        } else {
            req.host
        };
        let (scheme, port, flag) = match proto {
            Proto::H1Lean => ("http", self.plain, "--http1.1"),
            Proto::H1Pingora => ("http", self.plain_pingora, "--http1.1"),
            Proto::H1Tls => ("https", self.https, "--http1.1"),
            Proto::H2Tls => ("https", self.https, "--http2"),
            Proto::H2c => ("http", self.h2c, "--http2-prior-knowledge"),
            Proto::H3 => unreachable!("handled above"),
        };
        let dir = tempfile::tempdir().map_err(|e| failed(-1, e))?;
        let (head, out, data, ca) = (
            dir.path().join("head"),
            dir.path().join("body"),
            dir.path().join("data"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&ca, &self.root).map_err(|e| failed(-1, e))?;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", flag, "--max-time", "30", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(
                via.map(|v| {
                    vec![
                        "--connect-to".to_string(),
                        format!("localhost:{port}:127.0.0.1:{v}"),
                    ]
                })
                .unwrap_or_default(),
            )
            .arg("--dump-header")
            .arg(&head)
            .arg("--output")
            .arg(&out);
        if req.method == "HEAD" {
            cmd.arg("--head");
        } else {
            cmd.args(["-X", req.method]);
        }
        if host != "localhost" {
            cmd.args(["-H", &format!("Host: {host}")]);
        }
        for (k, v) in &req.headers {
            cmd.args(["-H", &format!("{k}: {v}")]);
        }
        if req.expect_continue {
            cmd.args(["--expect100-timeout", "20"]);
        }
        if req.unsized_body && flag == "--http1.1" {
            cmd.args(["-H", "Transfer-Encoding: chunked"]);
        }
        if !req.body.is_empty() || matches!(req.method, "POST" | "PUT") {
            std::fs::write(&data, &req.body).map_err(|e| failed(-1, e))?;
            cmd.arg("--data-binary").arg(format!("@{}", data.display()));
        }
        cmd.arg(format!("{scheme}://localhost:{port}{}", req.path));
        let done = cmd.output().map_err(|e| failed(-1, e))?;
        if !done.status.success() {
            return Err(Failed {
                code: done.status.code().unwrap_or(-1),
                message: String::from_utf8_lossy(&done.stderr).into_owned(),
            });
        }
        let head = std::fs::read_to_string(&head).map_err(|e| failed(-1, e))?;
        // With `--head` curl writes the head where the body would go.
        let body = if req.method == "HEAD" {
            Vec::new()
        } else {
            std::fs::read(&out).unwrap_or_default()
        };
        parse_head(&head, body).ok_or(Failed {
            code: -1,
            message: format!("unreadable response head: {head:?}"),
        })
    }

    fn send_h3(&self, req: &Req<'_>) -> Result<Response, Failed> {
        let host = if req.host.is_empty() {
            "localhost"
        } else {
            req.host
        };
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Like curl, announce a known length (unless asked not to).
        if !req.body.is_empty() && !req.unsized_body {
            headers.push(("content-length".into(), req.body.len().to_string()));
        }
        let r = crate::h3::requests(
            self.https,
            host,
            &self.root,
            vec![(req.method, req.path.to_string(), headers, req.body.clone())],
        )
        .map_err(|message| Failed { code: -1, message })?
        .remove(0);
        Ok(Response {
            status: r.status,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: r.body,
        })
    }

    /// Writes `raw` on a new HTTP/1.1 connection of `proto` (plain or TLS) and returns
    /// everything read until the server closes it or `wait` passes, and whether it
    /// closed. (HTTP/1.1 paths only.)
    pub fn raw_h1(
        &self,
        proto: Proto,
        raw: &[&[u8]],
        pause: Duration,
        wait: Duration,
    ) -> (String, bool) {
        use std::io::{Read, Write};
        let port = match proto {
            Proto::H1Lean => self.plain,
            Proto::H1Pingora => self.plain_pingora,
            Proto::H1Tls => self.https,
            other => panic!("raw HTTP/1.1 over {other:?}"),
        };
        let mut io: Box<dyn ReadWrite> = if proto == Proto::H1Tls {
            let opts = crate::tls::TlsOpts::trusting(&self.root);
            Box::new(
                crate::tls::connect(port, "localhost", &opts)
                    .unwrap_or_else(|e| panic!("TLS connect: {e}")),
            )
        } else {
            Box::new(
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .unwrap_or_else(|e| panic!("connect: {e}")),
            )
        };
        for (i, piece) in raw.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if io.write_all(piece).and_then(|_| io.flush()).is_err() {
                break;
            }
        }
        io.set_timeout(wait);
        let mut out = Vec::new();
        let mut chunk = [0u8; 16384];
        let closed = loop {
            match io.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }

    /// Sends `req` over `proto` and expects a response.
    pub fn ok(&self, proto: Proto, req: &Req<'_>) -> Response {
        self.send(proto, req)
            .unwrap_or_else(|e| panic!("{proto:?} {} {}: {e:?}", req.method, req.path))
    }
}

fn failed(code: i32, e: impl std::fmt::Display) -> Failed {
    Failed {
        code,
        message: e.to_string(),
    }
}

/// The last response head curl dumped (after any interim `100 Continue`).
fn parse_head(dump: &str, body: Vec<u8>) -> Option<Response> {
    let block = dump
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()?;
    let mut lines = block.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A blocking byte stream with a read timeout (plain TCP or TLS).
trait ReadWrite: std::io::Read + std::io::Write {
    fn set_timeout(&mut self, t: Duration);
}

impl ReadWrite for std::net::TcpStream {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self.sock.set_read_timeout(Some(t));
    }
}
