//! Just enough HTTP/1.1 for the admin API: one bounded request per connection.

use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed admin request.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of a header (names compared case-insensitively); `None` when absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times a header appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

/// A response; the connection closes after it.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: Serialize>(status: u16, v: &T) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "",
    }
}

/// Reads one request (head and `Content-Length` body) within the size and time limits;
/// an unusable request comes back as the error response to send.
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    max_body: usize,
) -> Result<Request, Response> {
    match tokio::time::timeout(READ_TIMEOUT, read_inner(s, max_body)).await {
        Ok(r) => r,
        Err(_) => Err(Response::error(408, "request not received in time")),
    }
}

async fn read_inner<S: AsyncRead + Unpin>(s: &mut S, max_body: usize) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, mut req) = loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|_| Response::error(400, "read failed"))?;
        if n == 0 {
            return Err(Response::error(
                400,
                "connection closed before a full request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let req = Request {
                    method: parsed.method.unwrap_or("").to_string(),
                    path: parsed.path.unwrap_or("").to_string(),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                };
                break (len, req);
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(Response::error(431, "request head too large"))
            }
            Err(e) => return Err(Response::error(400, &format!("malformed request: {e}"))),
        }
    };
    if req.header("transfer-encoding").is_some() {
        return Err(Response::error(411, "send the body with Content-Length"));
    }
    let len = match (
        req.header_count("content-length"),
        req.header("content-length"),
    ) {
        (0, _) => 0,
        (1, Some(v)) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| Response::error(400, "invalid Content-Length"))?,
        _ => return Err(Response::error(400, "duplicate Content-Length")),
    };
    if len > max_body {
        return Err(Response::error(
            413,
            &format!("body larger than {max_body} bytes"),
        ));
    }
    let mut body = buf.split_off(head_len);
    if body.len() > len {
        return Err(Response::error(400, "more data than Content-Length"));
    }
    body.reserve(len - body.len());
    while body.len() < len {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|_| Response::error(400, "read failed"))?;
        if n == 0 {
            return Err(Response::error(400, "body shorter than Content-Length"));
        }
        if body.len() + n > len {
            return Err(Response::error(400, "more data than Content-Length"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    req.body = body;
    Ok(req)
}

pub async fn write_response<S: AsyncWrite + Unpin>(s: &mut S, r: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: null\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(&r.body).await?;
    s.shutdown().await
}
