//! The CLI side: one request to a running server's admin API.

use std::io::{Read, Write};
use std::time::Duration;

/// A response from the admin API.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with an optional body to the admin endpoint at `addr`
/// (`host:port` or `unix//path`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    extra_headers: &[(&str, String)],
) -> Result<Reply, String> {
    let timeout = Some(Duration::from_secs(120));
    let (mut stream, host): (Box<dyn ReadWrite>, String) = if let Some(p) =
        addr.strip_prefix("unix/")
    {
        let s = std::os::unix::net::UnixStream::connect(p)
            .map_err(|e| format!("cannot reach the admin socket {p}: {e} (is dwaar running?)"))?;
        let _ = s.set_read_timeout(timeout);
        (Box::new(s), "localhost".to_string())
    } else {
        let s = std::net::TcpStream::connect(addr).map_err(|e| {
            format!("cannot reach the admin API at {addr}: {e} (is dwaar running?)")
        })?;
        let _ = s.set_read_timeout(timeout);
        let port = s.peer_addr().map(|a| a.port()).unwrap_or(0);
        (Box::new(s), format!("localhost:{port}"))
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    let token = std::env::var("DWAAR_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((ctype, b)) => head.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            b.len()
        )),
        None => head.push_str("Content-Length: 0\r\n\r\n"),
    }
    let io = |e: std::io::Error| format!("admin request failed: {e}");
    stream.write_all(head.as_bytes()).map_err(io)?;
    if let Some((_, b)) = body {
        stream.write_all(b).map_err(io)?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("admin API sent an incomplete response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("admin API sent a malformed status line")?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
