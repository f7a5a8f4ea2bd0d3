//! IP ranges and the client address: CIDR matching with IPv4-mapped IPv6 folded to IPv4,
//! and `X-Forwarded-For` trusted only from configured proxies; accepted connections
//! wrapped for Pingora ([`to_pingora`]).

use std::net::IpAddr;

/// An IP range (`10.0.0.0/8`, `::1/128`); a bare address is a full-length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, b)) => (ip, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("invalid IP range '{s}'"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("invalid prefix in '{s}'"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            _ => false,
        }
    }
}

/// Folds IPv4-mapped IPv6 (`::ffff:1.2.3.4`) to plain IPv4 so one client has one identity.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the first
/// valid address in `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, trusted: &[IpNet], xff: Option<&str>) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !any_contains(trusted, peer) {
        return peer;
    }
    xff.and_then(|v| v.split(',').next())
        .and_then(|first| parse_ip_lenient(first.trim()))
        .map(canonical)
        .unwrap_or(peer)
}

/// Parses `1.2.3.4`, `[::1]`, `1.2.3.4:5678` or `[::1]:80`.
fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// Wraps an accepted TCP connection for Pingora, with the addresses already known
/// from `accept()` (no `getpeername`/`getsockname` later).
pub fn to_pingora(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
) -> pingora_core::protocols::l4::stream::Stream {
    use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
    use pingora_core::protocols::l4::stream::Stream;
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let mut stream: Stream = tcp.into();
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(PSocketAddr::Inet(peer)));
    let _ = digest.local_addr.set(local.map(PSocketAddr::Inet));
    stream.set_socket_digest(digest);
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_mapped() {
        let n = IpNet::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.contains("10.1.2.3".parse().unwrap_or_else(|_| panic!())));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap_or_else(|_| panic!())));
        assert!(!n.contains("11.0.0.1".parse().unwrap_or_else(|_| panic!())));
        assert!(IpNet::parse("1.2.3.4/33").is_err());
    }

    #[test]
    fn xff_only_from_trusted() {
        let trusted = vec![IpNet::parse("127.0.0.1").unwrap_or_else(|e| panic!("{e}"))];
        let peer: IpAddr = "127.0.0.1".parse().unwrap_or_else(|_| panic!());
        assert_eq!(
            client_ip(peer, &trusted, Some("9.9.9.9, 1.1.1.1")).to_string(),
            "9.9.9.9"
        );
        let other: IpAddr = "8.8.8.8".parse().unwrap_or_else(|_| panic!());
        assert_eq!(
            client_ip(other, &trusted, Some("9.9.9.9")).to_string(),
            "8.8.8.8"
        );
        assert_eq!(
            client_ip(peer, &[], Some("9.9.9.9")).to_string(),
            "127.0.0.1"
        );
    }
}
