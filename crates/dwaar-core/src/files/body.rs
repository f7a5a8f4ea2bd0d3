//! A response body read from a file in bounded chunks (and, for multi-range
//! responses, interleaved with part headers).

use bytes::Bytes;
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes sent per chunk.
pub const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
enum Part {
    Bytes(Bytes),
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

/// A streamed body: its length is known up front (for `Content-Length`).
#[derive(Debug, Default)]
pub struct FileBody {
    parts: VecDeque<Part>,
    remaining: u64,
}

impl FileBody {
    pub fn new() -> FileBody {
        FileBody::default()
    }

    pub fn push_bytes(&mut self, b: Bytes) {
        self.remaining += b.len() as u64;
        self.parts.push_back(Part::Bytes(b));
    }

    pub fn push_file(&mut self, file: Arc<std::fs::File>, offset: u64, len: u64) {
        self.remaining += len;
        self.parts.push_back(Part::File { file, offset, len });
    }

    /// Bytes still to send.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// When the whole body is one region of one file: the file, offset and length
    /// (front-ends on plain sockets send those with `sendfile`).
    pub fn as_single_file(&self) -> Option<(&std::fs::File, u64, u64)> {
        match (self.parts.len(), self.parts.front()) {
            (1, Some(Part::File { file, offset, len })) => Some((&**file, *offset, *len)),
            _ => None,
        }
    }

    /// The next chunk (at most [`CHUNK`] bytes), `None` at the end. A file that
    /// shrank while being sent is an error: the response cannot be completed.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let Some(part) = self.parts.front_mut() else {
                return Ok(None);
            };
            match part {
                Part::Bytes(b) => {
                    let b = std::mem::take(b);
                    self.parts.pop_front();
                    if b.is_empty() {
                        continue;
                    }
                    self.remaining -= b.len() as u64;
                    return Ok(Some(b));
                }
                Part::File { file, offset, len } => {
                    if *len == 0 {
                        self.parts.pop_front();
                        continue;
                    }
                    let n = (*len).min(CHUNK as u64) as usize;
                    let mut buf = vec![0u8; n];
                    let mut got = 0;
                    while got < n {
                        let r = file.read_at(&mut buf[got..], *offset + got as u64)?;
                        if r == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the file shrank while it was being sent",
                            ));
                        }
                        got += r;
                    }
                    *offset += n as u64;
                    *len -= n as u64;
                    self.remaining -= n as u64;
                    return Ok(Some(Bytes::from(buf)));
                }
            }
        }
    }
}
