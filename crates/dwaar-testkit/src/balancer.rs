//! A stand-in TCP load balancer: accepts connections on a port of its own, dials the
//! target (from a chosen local address), writes a PROXY protocol header claiming the
//! client it was told to claim, and relays the bytes both ways untouched, so any client
//! (curl over HTTP/1.1, TLS, HTTP/2, h2c) can be put behind it. Its header encoder is
//! written here from the specification, independently of Dwaar's parser.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The header the balancer sends first.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// `PROXY TCP4|TCP6 ...` for this client.
    V1(SocketAddr),
    /// The binary header for this client.
    V2(SocketAddr),
    /// A v2 `LOCAL` header (health checks of the balancer itself).
    V2Local,
    /// No header: a plain TCP relay.
    Nothing,
}

impl Claim {
    fn bytes(&self, destination: SocketAddr) -> Vec<u8> {
        match *self {
            Claim::Nothing => Vec::new(),
            Claim::V1(c) => format!(
                "PROXY {} {} {} {} {}\r\n",
                if c.is_ipv4() { "TCP4" } else { "TCP6" },
                c.ip(),
                if c.is_ipv4() {
                    destination.ip()
                } else {
                    IpAddr::V6(match destination.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    })
                },
                c.port(),
                destination.port()
            )
            .into_bytes(),
            Claim::V2Local => {
                let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
                h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
                h
            }
            Claim::V2(c) => {
                let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
                h.push(0x21);
                let six = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                match (c.ip(), destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        h.extend_from_slice(&[0x11, 0, 12]);
                        h.extend_from_slice(&s.octets());
                        h.extend_from_slice(&d.octets());
                    }
                    (s, d) => {
                        h.extend_from_slice(&[0x21, 0, 36]);
                        h.extend_from_slice(&six(s));
                        h.extend_from_slice(&six(d));
                    }
                }
                h.extend_from_slice(&c.port().to_be_bytes());
                h.extend_from_slice(&destination.port().to_be_bytes());
                h
            }
        }
    }
}

/// A running balancer; stops accepting when dropped.
pub struct Balancer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    /// Relays connections to `127.0.0.1:target`, dialled from `from` (a loopback
    /// address such as 127.0.0.2, so the target sees a peer of the test's choosing).
    pub fn start(target: u16, claim: Claim, from: IpAddr) -> Balancer {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("balancer bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = listener.set_nonblocking(true);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        std::thread::spawn(move || relay(client, target, claim, from));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Balancer { port, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, target: u16, claim: Claim, from: IpAddr) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = dial(from, target) else {
        return;
    };
    let destination = SocketAddr::from(([127, 0, 0, 1], target));
    let mut server_w = match server.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    if server_w.write_all(&claim.bytes(destination)).is_err() {
        return;
    }
    let (Ok(client_r), Ok(mut client_w)) = (client.try_clone(), client.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        copy(client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let mut server_r = server;
    copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn copy(mut from: impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP connection to `127.0.0.1:port` from the local address `from`.
fn dial(from: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(5),
    )?;
    Ok(socket.into())
}
