//! A raw HTTP/1.1 client for tests: sends exactly the bytes given and parses the
//! response (Content-Length, chunked, or close-delimited framing).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Reads one response; `head` = the request was HEAD (no body follows).
    pub fn read_response(&mut self, head: bool) -> std::io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let status = r.code.unwrap_or(0);
                let hs: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                let get = |name: &str| {
                    hs.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let body = if head || status == 204 || status == 304 || status == 101 {
                    Vec::new()
                } else if get("transfer-encoding")
                    .map(|v| v.to_ascii_lowercase().contains("chunked"))
                    .unwrap_or(false)
                {
                    self.read_chunked()?
                } else if let Some(len) =
                    get("content-length").and_then(|v| v.trim().parse::<usize>().ok())
                {
                    self.fill(len)?;
                    self.buf.drain(..len).collect()
                } else {
                    let mut rest = Vec::new();
                    self.stream.read_to_end(&mut rest)?;
                    self.buf.extend_from_slice(&rest);
                    std::mem::take(&mut self.buf)
                };
                return Ok(Response {
                    status,
                    headers: hs,
                    body,
                });
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        while self.buf.len() < n {
            self.read_more()?;
        }
        Ok(())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&l[..i]).into_owned());
            }
            self.read_more()?;
        }
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line()?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                })?;
            if size == 0 {
                // Trailers until an empty line.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            self.fill(size + 2)?;
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// True when the peer has closed the connection (reads EOF within a short wait).
    pub fn is_closed(&mut self) -> bool {
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(1500)));
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(port: u16, request: &str) -> std::io::Result<Response> {
    let mut c = Conn::open(port)?;
    c.send_raw(request.as_bytes())?;
    c.read_response(request.starts_with("HEAD "))
}

/// `GET path` with the given Host.
pub fn get(port: u16, host: &str, path: &str) -> std::io::Result<Response> {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// A request with a method, extra header lines and a body.
pub fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    let mut c = Conn::open(port)?;
    c.send_raw(s.as_bytes())?;
    c.send_raw(body)?;
    c.read_response(method == "HEAD")
}
