//! Reading one small HTTP/1.1 response from a connection Dwaar opened itself (OCSP
//! responders here, `forward_auth` services in `dwaar-core`).

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads a response until the body its `Content-Length` announces is complete (the peer
/// may keep the connection open), only its head when it is chunked (callers do not
/// relay chunked bodies), or until the peer closes. More than `max` bytes is an error
/// naming `what`.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            return Err(format!("the {what} response is too large"));
        }
        if let Some(total) = complete(&buf) {
            if buf.len() >= total {
                buf.truncate(total);
                return Ok(buf);
            }
        }
    }
}

/// Where the response in `raw` ends, once its head is complete and says.
fn complete(raw: &[u8]) -> Option<usize> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let field = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if let Some(len) = field("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.checked_add(len);
    }
    field("transfer-encoding").map(|_| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_at_the_announced_length_and_refuses_too_much() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA";
        let got = read_response(&mut r, 1024, "test").await.unwrap();
        assert!(got.ends_with(b"\r\n\r\nabc"));
        let mut big: &[u8] = &[b'x'; 5000];
        assert!(read_response(&mut big, 100, "test").await.is_err());
        let mut chunked: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello";
        let got = read_response(&mut chunked, 1024, "test").await.unwrap();
        assert!(got.ends_with(b"\r\n\r\n"));
    }
}
