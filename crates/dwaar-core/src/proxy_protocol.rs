//! The PROXY protocol (HAProxy's header that a TCP load balancer puts in front of a
//! connection to say who the client is): version 1 (one text line) and version 2
//! (binary), read on listeners that enable it (`servers { listener_wrappers {
//! proxy_protocol } }`) and written to upstreams that ask for it (`transport http {
//! proxy_protocol v1|v2 }`).
//!
//! Reading follows Caddy's policies: a peer in `deny` may not send a header (the
//! connection is closed when it does), a peer in `allow` may (its address becomes the
//! client address), and every other peer gets the `fallback_policy`: `ignore` (the
//! default: a header is read and dropped, the peer stays the client), `use`, `reject`,
//! `require` (no header, no connection) or `skip` (nothing is read: the bytes belong to
//! the application). The header is peeked at and then consumed exactly, so no byte of
//! what follows it (a TLS ClientHello, an HTTP request) is taken from the socket.

use crate::net::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};

/// A connection whose first bytes can be looked at without consuming them.
pub trait PeekStream: Send {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a;
}

impl PeekStream for TcpStream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        TcpStream::peek(self, buf)
    }
}

impl PeekStream for UnixStream {
    async fn peek(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            self.readable().await?;
            let fd = self.as_raw_fd();
            let got = self.try_io(tokio::io::Interest::READABLE, || {
                nix::sys::socket::recv(fd, buf, nix::sys::socket::MsgFlags::MSG_PEEK)
                    .map_err(std::io::Error::from)
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// What to do with a peer's PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Read a header if there is one; keep the peer's address.
    Ignore,
    /// Read a header if there is one and take the client address from it.
    Use,
    /// Close connections that start with a header.
    Reject,
    /// Close connections that do not start with a header; take the client address
    /// from it.
    Require,
    /// Do not look for a header.
    Skip,
}

impl Policy {
    pub fn parse(name: &str) -> Option<Policy> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ignore" => Policy::Ignore,
            "use" => Policy::Use,
            "reject" => Policy::Reject,
            "require" => Policy::Require,
            "skip" => Policy::Skip,
            _ => return None,
        })
    }
}

/// The PROXY protocol settings of one port.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// How long the header may take to arrive (`None`: no limit).
    pub timeout: Option<Duration>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub fallback: Policy,
}

/// Caddy's default: five seconds for the header.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Inbound {
    /// The policy a `proxy_protocol { ... }` block describes.
    pub fn compile(pp: &dwaar_config::model::ProxyProtocol) -> Result<Inbound, String> {
        let nets = |list: &[String]| -> Result<Vec<IpNet>, String> {
            list.iter().map(|c| IpNet::parse(c)).collect()
        };
        Ok(Inbound {
            timeout: match pp.timeout_ms {
                None => Some(DEFAULT_TIMEOUT),
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
            },
            allow: nets(&pp.allow)?,
            deny: nets(&pp.deny)?,
            fallback: match pp.fallback_policy.as_deref() {
                None => Policy::Ignore,
                Some(p) => {
                    Policy::parse(p).ok_or_else(|| format!("unknown fallback_policy '{p}'"))?
                }
            },
        })
    }

    pub fn policy_for(&self, peer: IpAddr) -> Policy {
        let peer = crate::net::canonical(peer);
        if crate::net::any_contains(&self.deny, peer) {
            Policy::Reject
        } else if crate::net::any_contains(&self.allow, peer) {
            Policy::Use
        } else {
            self.fallback
        }
    }
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is relayed for this client, to this destination.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, or an address family
    /// that is not TCP/UDP over IP): the peer's address stands.
    Local,
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The largest v2 header accepted (the addresses plus room for TLVs).
const V2_MAX: usize = 16 + 1024;

/// What a buffer starting a connection holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes.
    Header(Header, usize),
    /// Not a PROXY header.
    Absent,
    /// Could be a header; more bytes are needed.
    Incomplete,
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, &'static str> {
    let starts = |sig: &[u8]| buf.iter().zip(sig).all(|(a, b)| a == b);
    if starts(V2_SIGNATURE) {
        if buf.len() < 16 {
            return Ok(Parsed::Incomplete);
        }
        return parse_v2(buf);
    }
    if starts(V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    Ok(Parsed::Absent)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, &'static str> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 line longer than 107 bytes")
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| "PROXY v1 line is not text")?;
    let mut parts = line.split(' ');
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || parts.next().ok_or("PROXY v1 line lacks a field");
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if parts.next().is_some() {
                return Err("PROXY v1 line has extra fields");
            }
            let ip = |s: &str| -> Result<IpAddr, &'static str> {
                let ip: IpAddr = s.parse().map_err(|_| "PROXY v1 address is invalid")?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err("PROXY v1 address does not match its family"),
                }
            };
            let port = |s: &str| -> Result<u16, &'static str> {
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err("PROXY v1 port is invalid");
                }
                s.parse().map_err(|_| "PROXY v1 port is invalid")
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err("PROXY v1 family must be TCP4, TCP6 or UNKNOWN"),
    };
    Ok(Parsed::Header(header, end + 2))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, &'static str> {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err("PROXY v2 version is not 2");
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err("PROXY v2 header is too long");
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let header = match version_command & 0x0f {
        0 => Header::Local,
        1 => match buf[13] >> 4 {
            // AF_INET: 4 + 4 + 2 + 2 bytes.
            1 => {
                let a = body.get(..12).ok_or("PROXY v2 IPv4 block is short")?;
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(8)),
                    destination: SocketAddr::new(ip(4), port(10)),
                }
            }
            // AF_INET6: 16 + 16 + 2 + 2 bytes.
            2 => {
                let a = body.get(..36).ok_or("PROXY v2 IPv6 block is short")?;
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&a[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(32)),
                    destination: SocketAddr::new(ip(16), port(34)),
                }
            }
            // AF_UNSPEC or AF_UNIX: no IP address to take.
            0 | 3 => Header::Local,
            _ => return Err("PROXY v2 address family is unknown"),
        },
        _ => return Err("PROXY v2 command is unknown"),
    };
    Ok(Parsed::Header(header, len))
}

/// Applies `inbound` to a new connection from `peer`: reads (and consumes) a PROXY
/// header as the policy says and returns the client address to use, or why the
/// connection must be closed.
pub async fn accept<S: PeekStream + tokio::io::AsyncRead + Unpin>(
    tcp: &mut S,
    peer: SocketAddr,
    inbound: &Inbound,
) -> Result<SocketAddr, String> {
    let policy = inbound.policy_for(peer.ip());
    if policy == Policy::Skip {
        return Ok(peer);
    }
    let read = async {
        let mut buf = [0u8; V2_MAX];
        loop {
            let n = tcp.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before sending anything".to_string());
            }
            match parse(&buf[..n]).map_err(str::to_string)? {
                Parsed::Incomplete => {
                    // Headers nearly always arrive in one segment; wait for the rest
                    // without spinning on data that is already there.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                done => return Ok(done),
            }
        }
    };
    let parsed = match inbound.timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| "no PROXY header in time".to_string())??,
        None => read.await?,
    };
    match (parsed, policy) {
        (Parsed::Header(..), Policy::Reject) => {
            Err(format!("PROXY header from {peer}, which may not send one"))
        }
        (Parsed::Absent, Policy::Require) => Err(format!("no PROXY header from {peer}")),
        (Parsed::Absent, _) => Ok(peer),
        (Parsed::Header(header, len), policy) => {
            use tokio::io::AsyncReadExt;
            let mut skip = [0u8; V2_MAX];
            tcp.read_exact(&mut skip[..len])
                .await
                .map_err(|e| e.to_string())?;
            match (header, policy) {
                (Header::Proxied { source, .. }, Policy::Use | Policy::Require) => Ok(source),
                _ => Ok(peer),
            }
        }
        (Parsed::Incomplete, _) => Err("incomplete PROXY header".into()),
    }
}

/// The PROXY protocol version written to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

/// The header announcing `client` connected to `destination`, as sent to an upstream.
pub fn encode(version: Version, client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // Mixed families: IPv4 addresses are written as IPv4-mapped IPv6.
    let (client, destination) = match (client, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, destination)
        }
        _ => (to_v6(client), to_v6(destination)),
    };
    match version {
        Version::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                destination.ip(),
                client.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (client, destination) {
                (SocketAddr::V4(c), SocketAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&c.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                }
                (c, d) => {
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    for a in [c, d] {
                        if let SocketAddr::V6(v6) = a {
                            out.extend_from_slice(&v6.ip().octets());
                        }
                    }
                }
            }
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn v1_lines() {
        let buf = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(buf),
            Ok(Parsed::Header(
                Header::Proxied {
                    source: sa("203.0.113.7:51234"),
                    destination: sa("10.0.0.1:443")
                },
                43
            ))
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(v6),
            Ok(Parsed::Header(Header::Proxied { .. }, 40))
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 x y z\r\n"),
            Ok(Parsed::Header(Header::Local, 29))
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Parsed::Absent));
        assert_eq!(parse(b"\x16\x03\x01"), Ok(Parsed::Absent));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_headers_round_trip_with_the_encoder() {
        for (c, d) in [
            ("198.51.100.9:40000", "10.1.2.3:80"),
            ("[2001:db8::9]:40000", "[2001:db8::1]:443"),
        ] {
            let h = encode(Version::V2, sa(c), sa(d));
            let mut buf = h.clone();
            buf.extend_from_slice(b"GET /");
            assert_eq!(
                parse(&buf),
                Ok(Parsed::Header(
                    Header::Proxied {
                        source: sa(c),
                        destination: sa(d)
                    },
                    h.len()
                ))
            );
            assert_eq!(parse(&h[..h.len() - 1]), Ok(Parsed::Incomplete));
            let v1 = encode(Version::V1, sa(c), sa(d));
            assert!(
                matches!(parse(&v1), Ok(Parsed::Header(Header::Proxied { source, .. }, n)) if source == sa(c) && n == v1.len())
            );
        }
        // Mixed families become IPv6.
        let h = encode(Version::V2, sa("1.2.3.4:5"), sa("[::1]:80"));
        assert!(
            matches!(parse(&h), Ok(Parsed::Header(Header::Proxied { source, .. }, _)) if source.is_ipv6())
        );
        // LOCAL, TLVs, and damage.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(parse(&local), Ok(Parsed::Header(Header::Local, 19)));
        let mut v3 = local.clone();
        v3[12] = 0x31;
        assert!(parse(&v3).is_err());
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(parse(&short).is_err());
    }

    #[test]
    fn policies_follow_deny_then_allow_then_fallback() {
        let net = |s: &str| IpNet::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let inbound = Inbound {
            timeout: None,
            allow: vec![net("10.0.0.0/8")],
            deny: vec![net("10.9.0.0/16")],
            fallback: Policy::Ignore,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inbound.policy_for(ip("10.1.2.3")), Policy::Use);
        assert_eq!(inbound.policy_for(ip("10.9.2.3")), Policy::Reject);
        assert_eq!(inbound.policy_for(ip("192.0.2.1")), Policy::Ignore);
        assert_eq!(inbound.policy_for(ip("::ffff:10.1.2.3")), Policy::Use);
        assert_eq!(Policy::parse("REQUIRE"), Some(Policy::Require));
        assert_eq!(Policy::parse("maybe"), None);
    }
}
