//! Passing listening sockets between processes over a Unix stream (`SCM_RIGHTS`).
//!
//! The supervisor hands each worker process its share of the listening sockets, and a
//! running server hands all of them to its successor during `dwaar upgrade`: the kernel
//! socket (and its accept queue) survives, so no connection is refused or reset.
//!
//! Framing: `u32` payload length, `u32` descriptor count, the payload, then the
//! descriptors in packets of at most `FDS_PER_PACKET`, each carried by one byte.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Linux accepts at most 253 descriptors per message.
const FDS_PER_PACKET: usize = 200;
/// Refuse absurd messages from a confused peer.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
const MAX_FDS: usize = 64 * 1024;

/// Sends one message with its descriptors.
pub fn send(
    stream: &mut UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&u32::try_from(payload.len()).map_err(invalid)?.to_le_bytes());
    header[4..].copy_from_slice(&u32::try_from(fds.len()).map_err(invalid)?.to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)?;
    for chunk in fds.chunks(FDS_PER_PACKET) {
        let raw: Vec<RawFd> = chunk.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(&[0u8])];
        loop {
            match sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
                Ok(1) => break,
                Ok(_) => return Err(std::io::Error::other("short descriptor packet")),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    stream.flush()
}

/// Receives one message; `Ok(None)` when the peer closed the stream cleanly.
pub fn recv(stream: &mut UnixStream) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 8];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let nfds = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_PAYLOAD || nfds > MAX_FDS {
        return Err(invalid("message too large"));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    let mut fds = Vec::with_capacity(nfds);
    while fds.len() < nfds {
        let mut byte = [0u8; 1];
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_PACKET]);
        let raw: Vec<RawFd> = {
            let mut iov = [IoSliceMut::new(&mut byte)];
            let msg = loop {
                match recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => break m,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if msg.bytes == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut raw = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    raw.extend(r);
                }
            }
            raw
        };
        if raw.is_empty() {
            return Err(invalid("descriptor packet without descriptors"));
        }
        fds.extend(raw.into_iter().map(adopt));
    }
    Ok(Some((payload, fds)))
}

/// Takes ownership of a descriptor the kernel just installed in this process.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was created by the kernel for this process while receiving an
    // SCM_RIGHTS message. Nothing else in the process knows the number, so this is the
    // only owner and it is closed exactly once, when the `OwnedFd` drops.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn invalid<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sockets_survive_the_trip() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let listeners: Vec<std::net::TcpListener> = (0..450)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        let payload = vec![7u8; 100_000];
        let (got, fds) = std::thread::scope(|s| {
            s.spawn(move || {
                send(&mut a, &payload, &fds).expect("send");
                drop(a);
            });
            recv(&mut b).expect("recv").expect("message")
        });
        assert_eq!(got.len(), 100_000);
        assert_eq!(fds.len(), 450);
        // The received descriptor is the same socket: it reports the same address.
        let l = std::net::TcpListener::from(fds.into_iter().nth(3).expect("fd"));
        assert_eq!(l.local_addr().ok(), listeners[3].local_addr().ok());
        assert!(recv(&mut b).expect("eof").is_none());
    }
}
