//! IP ranges and the client address: CIDR matching with IPv4-mapped IPv6 folded to IPv4,
//! and client IP headers (`X-Forwarded-For` by default) trusted only from configured
//! proxies ([`ClientIpRule`]); accepted connections wrapped for Pingora ([`to_pingora`]).

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

/// How a port finds the client behind proxies: `servers { trusted_proxies,
/// client_ip_headers, trusted_proxies_strict }`.
#[derive(Debug, Clone, Default)]
pub struct ClientIpRule {
    pub trusted: Vec<IpNet>,
    /// Lowercase header names, in order; empty means `x-forwarded-for`.
    pub headers: Vec<String>,
    /// Read right to left and take the first address that is not a trusted proxy
    /// (else the leftmost valid address).
    pub strict: bool,
}

impl ClientIpRule {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        any_contains(&self.trusted, peer)
    }

    fn header_names(&self) -> impl Iterator<Item = &str> {
        let default: &[&str] = if self.headers.is_empty() {
            &["x-forwarded-for"]
        } else {
            &[]
        };
        default
            .iter()
            .copied()
            .chain(self.headers.iter().map(String::as_str))
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the address
/// its client IP headers name (Caddy's rules: the leftmost valid one across the headers
/// in order; in strict mode, per header from the right, the first one that is not itself
/// a trusted proxy). Without a valid address the peer stands.
pub fn client_ip(
    peer: IpAddr,
    rule: &ClientIpRule,
    req: &dyn crate::request::HttpRequest,
) -> IpAddr {
    let peer = canonical(peer);
    if rule.trusted.is_empty() || !rule.trusts(peer) {
        return peer;
    }
    let mut found = None;
    if rule.strict {
        let mut ips: Vec<IpAddr> = Vec::new();
        for name in rule.header_names() {
            ips.clear();
            req.any_header_value(name, &mut |v| {
                ips.extend(
                    v.split(',')
                        .filter_map(|p| parse_ip_lenient(p.trim()))
                        .map(canonical),
                );
                false
            });
            found = ips.iter().rev().copied().find(|ip| !rule.trusts(*ip));
            if found.is_some() {
                break;
            }
        }
    } else {
        for name in rule.header_names() {
            req.any_header_value(name, &mut |v| {
                found = v
                    .split(',')
                    .find_map(|p| parse_ip_lenient(p.trim()))
                    .map(canonical);
                found.is_some()
            });
            if found.is_some() {
                break;
            }
        }
    }
    found.unwrap_or(peer)
}

/// Parses `1.2.3.4`, `[::1]`, `1.2.3.4:5678`, `[::1]:80` or `fe80::1%eth0` (the zone
/// dropped).
fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    if let Some((ip, _zone)) = s.split_once('%') {
        if !ip.starts_with('[') {
            return ip.parse().ok();
        }
    }
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

/// Wraps an accepted connection (TCP, or a unix socket's) for Pingora, with the
/// addresses already known from `accept()` (no `getpeername`/`getsockname` later).
pub fn to_pingora<S>(
    tcp: S,
    peer: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
) -> pingora_core::protocols::l4::stream::Stream
where
    S: Into<pingora_core::protocols::l4::stream::Stream> + std::os::fd::AsRawFd,
{
    use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
    use pingora_core::protocols::l4::stream::Stream;
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
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

    /// Headers for [`client_ip`] tests.
    struct Heads(Vec<(&'static str, &'static str)>);

    impl crate::request::HttpRequest for Heads {
        fn method(&self) -> &str {
            "GET"
        }
        fn path(&self) -> &str {
            "/"
        }
        fn query(&self) -> Option<&str> {
            None
        }
        fn version(&self) -> http::Version {
            http::Version::HTTP_11
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|h| h.0.eq_ignore_ascii_case(name))
                .map(|h| h.1)
        }
        fn any_header_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
            self.0
                .iter()
                .filter(|h| h.0.eq_ignore_ascii_case(name))
                .any(|h| f(h.1))
        }
        fn header_count(&self, name: &str) -> usize {
            self.0
                .iter()
                .filter(|h| h.0.eq_ignore_ascii_case(name))
                .count()
        }
        fn header_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn header_bytes(&self) -> usize {
            0
        }
        fn set_method(&mut self, _: &str) -> bool {
            false
        }
        fn set_header(&mut self, _: &str, _: &str) {}
        fn append_header(&mut self, _: &str, _: &str) {}
        fn remove_header(&mut self, _: &str) {}
        fn set_path_query(&mut self, _: &str, _: Option<&str>) -> bool {
            false
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn rule(trusted: &[&str], headers: &[&str], strict: bool) -> ClientIpRule {
        ClientIpRule {
            trusted: trusted
                .iter()
                .map(|t| IpNet::parse(t).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            strict,
        }
    }

    #[test]
    fn client_ip_headers_only_from_trusted_peers() {
        let r = rule(&["127.0.0.1", "10.0.0.0/8"], &[], false);
        let req = Heads(vec![("X-Forwarded-For", "9.9.9.9, 1.1.1.1")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &r, &req), ip("9.9.9.9"));
        assert_eq!(client_ip(ip("8.8.8.8"), &r, &req), ip("8.8.8.8"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), &rule(&[], &[], false), &req),
            ip("127.0.0.1")
        );
        // Several lines are one list; junk is skipped; ports and zones are dropped.
        let req = Heads(vec![
            ("X-Forwarded-For", "junk"),
            ("X-Forwarded-For", "[2001:db8::1]:443, 1.1.1.1"),
        ]);
        assert_eq!(client_ip(ip("127.0.0.1"), &r, &req), ip("2001:db8::1"));
        let req = Heads(vec![("X-Forwarded-For", "fe80::1%eth0")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &r, &req), ip("fe80::1"));
    }

    #[test]
    fn client_ip_headers_in_order_and_strict_mode() {
        let headers = Heads(vec![
            ("X-Real-IP", "5.5.5.5"),
            ("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 10.0.0.2"),
        ]);
        let named = rule(
            &["127.0.0.1", "10.0.0.0/8"],
            &["x-real-ip", "x-forwarded-for"],
            false,
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &named, &headers), ip("5.5.5.5"));
        // Strict: from the right, past the trusted 10.0.0.2, the spoofable 6.6.6.6 ignored.
        let strict = rule(&["127.0.0.1", "10.0.0.0/8"], &["x-forwarded-for"], true);
        assert_eq!(client_ip(ip("127.0.0.1"), &strict, &headers), ip("7.7.7.7"));
        let all_trusted = Heads(vec![("X-Forwarded-For", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &strict, &all_trusted),
            ip("127.0.0.1")
        );
        let lenient = rule(&["127.0.0.1", "10.0.0.0/8"], &[], false);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &lenient, &headers),
            ip("6.6.6.6")
        );
    }
}
