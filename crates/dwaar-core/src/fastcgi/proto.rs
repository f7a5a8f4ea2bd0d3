//! The FastCGI wire format (version 1): records and name-value pairs.

pub const VERSION: u8 = 1;
pub const BEGIN_REQUEST: u8 = 1;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const ROLE_RESPONDER: u16 = 1;
pub const FLAG_KEEP_CONN: u8 = 1;
/// Content per record: at most 65535; a multiple of 8 keeps padding at zero.
pub const MAX_CONTENT: usize = 65528;
/// Every request on a connection uses this id (one request at a time).
pub const REQUEST_ID: u16 = 1;

/// Appends one record (`content` must fit [`MAX_CONTENT`]).
pub fn record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    let pad = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&[
        VERSION,
        kind,
        (REQUEST_ID >> 8) as u8,
        REQUEST_ID as u8,
        (content.len() >> 8) as u8,
        content.len() as u8,
        pad as u8,
        0,
    ]);
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..pad]);
}

/// Appends a stream's data as records, then nothing else (the caller ends the stream
/// with an empty record).
pub fn stream(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        record(out, kind, chunk);
    }
}

/// The BEGIN_REQUEST record for a responder that keeps the connection.
pub fn begin_request(out: &mut Vec<u8>) {
    let flags = FLAG_KEEP_CONN;
    record(
        out,
        BEGIN_REQUEST,
        &[
            (ROLE_RESPONDER >> 8) as u8,
            ROLE_RESPONDER as u8,
            flags,
            0,
            0,
            0,
            0,
            0,
        ],
    );
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// Encodes name-value pairs (PARAMS content).
pub fn pairs<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for (k, v) in items {
        push_len(&mut out, k.len());
        push_len(&mut out, v.len());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// A record header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: u8,
    pub request_id: u16,
    pub content_len: usize,
    pub padding: usize,
}

pub fn parse_header(h: &[u8; 8]) -> Option<Header> {
    if h[0] != VERSION {
        return None;
    }
    Some(Header {
        kind: h[1],
        request_id: u16::from_be_bytes([h[2], h[3]]),
        content_len: u16::from_be_bytes([h[4], h[5]]) as usize,
        padding: h[6] as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_lengths() {
        let long = "x".repeat(200);
        let p = pairs([("A", "b"), ("LONG", long.as_str())].into_iter());
        assert_eq!(&p[..4], &[1, 1, b'A', b'b']);
        assert_eq!(p[4], 4);
        assert_eq!(&p[5..9], &(200u32 | 0x8000_0000).to_be_bytes());
    }

    #[test]
    fn records_are_padded_to_eight() {
        let mut out = Vec::new();
        record(&mut out, STDIN, b"hello");
        assert_eq!(out.len(), 8 + 8);
        assert_eq!(out[6], 3);
        let h = parse_header(&out[..8].try_into().unwrap()).unwrap();
        assert_eq!((h.kind, h.content_len, h.padding), (STDIN, 5, 3));
    }
}
