//! A small DNS stub resolver for upstreams that move: A, AAAA and SRV lookups over UDP
//! (TCP when the answer is truncated) with the records' TTLs, against the configured
//! `resolvers` or the system's (`/etc/resolv.conf`, with its search domains for names
//! without a dot). It runs on the control runtime, never on a request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_CNAME: u16 = 5;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub timeout: Duration,
}

/// A SRV target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Records of one lookup, with the smallest TTL among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    pub ttl: Duration,
}

impl Resolver {
    /// `servers` as configured (`1.2.3.4` or `1.2.3.4:5353`), else the system's.
    pub fn new(servers: &[String]) -> Result<Resolver, String> {
        let (system_servers, search) = system_config();
        let servers = if servers.is_empty() {
            system_servers
        } else {
            servers
                .iter()
                .map(|s| {
                    parse_server(s).ok_or_else(|| format!("resolver '{s}' is not an IP address"))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Resolver {
            servers,
            search,
            timeout: Duration::from_secs(3),
        })
    }

    /// The IP addresses of `name` (A and/or AAAA).
    pub async fn lookup_ip(
        &self,
        name: &str,
        v4: bool,
        v6: bool,
    ) -> Result<Answer<IpAddr>, String> {
        let mut last = String::from("no answer");
        for candidate in self.candidates(name) {
            let mut records = Vec::new();
            let mut ttl = u32::MAX;
            for (wanted, kind) in [(v4, TYPE_A), (v6, TYPE_AAAA)] {
                if !wanted {
                    continue;
                }
                match self.query(&candidate, kind).await {
                    Ok(r) => {
                        for rec in r {
                            if let Rdata::Ip(ip) = rec.data {
                                records.push(ip);
                                ttl = ttl.min(rec.ttl);
                            }
                        }
                    }
                    Err(e) => last = e,
                }
            }
            if !records.is_empty() {
                return Ok(Answer {
                    records,
                    ttl: Duration::from_secs(u64::from(ttl)),
                });
            }
        }
        Err(format!("{name}: {last}"))
    }

    /// The SRV records of `name` (`_service._proto.name`).
    pub async fn lookup_srv(&self, name: &str) -> Result<Answer<Srv>, String> {
        let records = self.query(name, TYPE_SRV).await?;
        let mut out = Vec::new();
        let mut ttl = u32::MAX;
        for rec in records {
            if let Rdata::Srv(s) = rec.data {
                out.push(s);
                ttl = ttl.min(rec.ttl);
            }
        }
        if out.is_empty() {
            return Err(format!("{name}: no SRV records"));
        }
        out.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
        Ok(Answer {
            records: out,
            ttl: Duration::from_secs(u64::from(ttl)),
        })
    }

    /// `name` as given, and with the search domains when it has no dot.
    fn candidates(&self, name: &str) -> Vec<String> {
        let name = name.trim_end_matches('.');
        let mut out = vec![name.to_string()];
        if !name.contains('.') {
            out.extend(self.search.iter().map(|d| format!("{name}.{d}")));
        }
        out
    }

    async fn query(&self, name: &str, kind: u16) -> Result<Vec<Record>, String> {
        let mut last = "no resolver".to_string();
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, ask(*server, name, kind)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{server} did not answer"),
            }
        }
        Err(last)
    }
}

fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// Nameservers and search domains from `/etc/resolv.conf` (127.0.0.1:53 when absent).
fn system_config() -> (Vec<SocketAddr>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(s) = words.next().and_then(parse_server) {
                    servers.push(s);
                }
            }
            Some("search") | Some("domain") => {
                search = words.map(str::to_string).collect();
            }
            _ => {}
        }
    }
    if servers.is_empty() {
        servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    (servers, search)
}

#[derive(Debug)]
struct Record {
    ttl: u32,
    data: Rdata,
}

#[derive(Debug)]
enum Rdata {
    Ip(IpAddr),
    Srv(Srv),
    Other,
}

async fn ask(server: SocketAddr, name: &str, kind: u16) -> Result<Vec<Record>, String> {
    let id: u16 = rand::random();
    let query = encode_query(id, name, kind)?;
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        let msg = &buf[..n];
        if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
            continue; // not ours
        }
        if msg[2] & 0x02 != 0 {
            // Truncated: ask again over TCP.
            return ask_tcp(server, &query, id).await;
        }
        return parse_response(msg);
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Vec<Record>, String> {
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await.map_err(|e| e.to_string())?;
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("mismatched DNS answer over TCP".into());
    }
    parse_response(&msg)
}

fn encode_query(id: u16, name: &str, kind: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("'{name}' is not a valid DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&kind.to_be_bytes());
    q.extend_from_slice(&[0, 1]); // class IN
    Ok(q)
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let bad = || "malformed DNS name".to_string();
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or_else(bad)? as usize;
        if len & 0xc0 == 0xc0 {
            let low = *msg.get(at + 1).ok_or_else(bad)? as usize;
            end.get_or_insert(at + 2);
            at = ((len & 0x3f) << 8) | low;
            continue;
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(at + 1)));
        }
        let label = msg.get(at + 1..at + 1 + len).ok_or_else(bad)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        at += 1 + len;
    }
    Err(bad())
}

fn parse_response(msg: &[u8]) -> Result<Vec<Record>, String> {
    let short = || "short DNS answer".to_string();
    let rcode = msg[3] & 0x0f;
    match rcode {
        0 => {}
        3 => return Err("no such name".into()),
        c => return Err(format!("DNS error {c}")),
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = 12;
    for _ in 0..qd {
        at = read_name(msg, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = read_name(msg, at)?.1;
        let f = msg.get(at..at + 10).ok_or_else(short)?;
        let kind = u16::from_be_bytes([f[0], f[1]]);
        let ttl = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
        let len = usize::from(u16::from_be_bytes([f[8], f[9]]));
        let rdata_at = at + 10;
        let rdata = msg.get(rdata_at..rdata_at + len).ok_or_else(short)?;
        let data = match (kind, len) {
            (TYPE_A, 4) => Rdata::Ip(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                Rdata::Ip(IpAddr::V6(Ipv6Addr::from(b)))
            }
            (TYPE_SRV, 7..) => Rdata::Srv(Srv {
                priority: u16::from_be_bytes([rdata[0], rdata[1]]),
                weight: u16::from_be_bytes([rdata[2], rdata[3]]),
                port: u16::from_be_bytes([rdata[4], rdata[5]]),
                target: read_name(msg, rdata_at + 6)?.0,
            }),
            (TYPE_CNAME, _) => Rdata::Other,
            _ => Rdata::Other,
        };
        out.push(Record { ttl, data });
        at = rdata_at + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response for `name` of `kind` with the given answer records (rdata raw).
    fn response(id: u16, name: &str, kind: u16, answers: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut m = encode_query(id, name, kind).unwrap_or_default();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = answers.len() as u8;
        for (t, ttl, rdata) in answers {
            m.extend_from_slice(&[0xc0, 12]); // the question's name
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    #[test]
    fn parses_a_aaaa_and_srv_answers_with_ttls() {
        let m = response(
            7,
            "svc.test",
            TYPE_A,
            &[
                (TYPE_A, 30, vec![10, 0, 0, 2]),
                (TYPE_A, 20, vec![10, 0, 0, 3]),
            ],
        );
        let r = parse_response(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.len(), 2);
        assert!(matches!(r[1].data, Rdata::Ip(ip) if ip == IpAddr::from([10, 0, 0, 3])));
        assert_eq!(r[1].ttl, 20);
        let mut srv = vec![0, 10, 0, 5, 0x1f, 0x90];
        srv.extend_from_slice(&[0xc0, 12]); // target: the question name
        let m = response(8, "_http._tcp.svc.test", TYPE_SRV, &[(TYPE_SRV, 60, srv)]);
        let r = parse_response(&m).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&r[0].data, Rdata::Srv(s) if s.port == 8080 && s.priority == 10 && s.weight == 5 && s.target == "_http._tcp.svc.test")
        );
        let mut nx = response(9, "x.test", TYPE_A, &[]);
        nx[3] = 0x83;
        assert!(parse_response(&nx).is_err());
        // Truncated or looping names fail cleanly.
        assert!(parse_response(&m[..m.len() - 3]).is_err());
        let mut looped = response(10, "a.test", TYPE_A, &[(TYPE_A, 1, vec![1, 2, 3, 4])]);
        let at = looped.len() - 16;
        looped[at] = 0xc0;
        looped[at + 1] = at as u8;
        assert!(parse_response(&looped).is_err());
    }

    #[test]
    fn names_are_encoded_and_searched() {
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
        assert!(encode_query(1, &"x".repeat(64), TYPE_A).is_err());
        let r = Resolver {
            servers: vec![],
            search: vec!["svc.cluster.local".into()],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(r.candidates("api"), vec!["api", "api.svc.cluster.local"]);
        assert_eq!(r.candidates("api.example."), vec!["api.example"]);
        assert_eq!(
            parse_server("10.0.0.1"),
            Some(SocketAddr::from(([10, 0, 0, 1], 53)))
        );
        assert_eq!(
            parse_server("10.0.0.1:5353"),
            Some(SocketAddr::from(([10, 0, 0, 1], 5353)))
        );
    }
}
