//! The DNS wire format (RFC 1035) as far as DNS-01 needs it: queries, the answers to
//! them (TXT, SOA, NS, CNAME, A, AAAA), RFC 2136 UPDATE messages and their TSIG
//! signature (RFC 8945), sent over UDP (TCP when the answer is truncated) or TCP.
//!
//! Parsing never panics: a short or malformed message is an error.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const A: u16 = 1;
pub const NS: u16 = 2;
pub const CNAME: u16 = 5;
pub const SOA: u16 = 6;
pub const TXT: u16 = 16;
pub const AAAA: u16 = 28;
const TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5 << 11;
const FLAG_RD: u16 = 1 << 8;
const FLAG_TC: u16 = 1 << 9;

/// Response codes worth naming in errors.
pub fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        n => format!("rcode {n}"),
    }
}

/// `name` in wire form, lowercased (the canonical form TSIG signs); the root is `.`
/// or empty.
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("'{name}' is not a valid DNS name"));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// TXT rdata: one or more character strings of up to 255 bytes.
fn txt_rdata(value: &str) -> Vec<u8> {
    let mut r = Vec::with_capacity(value.len() + 1);
    for chunk in value.as_bytes().chunks(255) {
        r.push(chunk.len() as u8);
        r.extend_from_slice(chunk);
    }
    if value.is_empty() {
        r.push(0);
    }
    r
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut m = Vec::with_capacity(512);
    put_u16(&mut m, id);
    put_u16(&mut m, flags);
    for c in counts {
        put_u16(&mut m, c);
    }
    m
}

/// A query for `name`/`qtype`; `recurse` asks a resolver to recurse.
pub fn query(id: u16, name: &str, qtype: u16, recurse: bool) -> Result<Vec<u8>, String> {
    let mut m = header(id, if recurse { FLAG_RD } else { 0 }, [1, 0, 0, 0]);
    put_name(&mut m, name)?;
    put_u16(&mut m, qtype);
    put_u16(&mut m, CLASS_IN);
    Ok(m)
}

/// One change of an UPDATE message.
pub enum Change<'a> {
    /// Add this TXT value (existing values stay).
    AddTxt {
        name: &'a str,
        ttl: u32,
        value: &'a str,
    },
    /// Delete exactly this TXT value.
    DeleteTxt { name: &'a str, value: &'a str },
}

/// An RFC 2136 UPDATE of `zone`.
pub fn update(id: u16, zone: &str, changes: &[Change]) -> Result<Vec<u8>, String> {
    let mut m = header(id, OPCODE_UPDATE, [1, 0, changes.len() as u16, 0]);
    put_name(&mut m, zone)?;
    put_u16(&mut m, SOA);
    put_u16(&mut m, CLASS_IN);
    for c in changes {
        let (name, class, ttl, value) = match c {
            Change::AddTxt { name, ttl, value } => (name, CLASS_IN, *ttl, value),
            Change::DeleteTxt { name, value } => (name, CLASS_NONE, 0, value),
        };
        put_name(&mut m, name)?;
        put_u16(&mut m, TXT);
        put_u16(&mut m, class);
        m.extend_from_slice(&ttl.to_be_bytes());
        let rdata = txt_rdata(value);
        put_u16(&mut m, rdata.len() as u16);
        m.extend_from_slice(&rdata);
    }
    Ok(m)
}

/// A TSIG key: its name, algorithm (`hmac-sha256`...) and secret.
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    pub secret: Vec<u8>,
}

impl TsigKey {
    fn hmac(&self) -> Result<ring::hmac::Algorithm, String> {
        Ok(match self.algorithm.as_str() {
            "hmac-sha1" => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            "hmac-sha256" => ring::hmac::HMAC_SHA256,
            "hmac-sha384" => ring::hmac::HMAC_SHA384,
            "hmac-sha512" => ring::hmac::HMAC_SHA512,
            other => return Err(format!("unsupported TSIG algorithm '{other}'")),
        })
    }

    /// Appends the TSIG record signing `msg` at `now` (seconds since the epoch).
    pub fn sign(&self, msg: &mut Vec<u8>, now: u64) -> Result<(), String> {
        const FUDGE: u16 = 300;
        let alg = self.hmac()?;
        let mut key_name = Vec::new();
        put_name(&mut key_name, &self.name)?;
        let mut alg_name = Vec::new();
        put_name(&mut alg_name, &self.algorithm)?;
        let time = now.to_be_bytes();
        // The signed data: the message as it is, then the TSIG variables.
        let mut vars = Vec::with_capacity(64);
        vars.extend_from_slice(&key_name);
        put_u16(&mut vars, CLASS_ANY);
        vars.extend_from_slice(&0u32.to_be_bytes());
        vars.extend_from_slice(&alg_name);
        vars.extend_from_slice(&time[2..]);
        put_u16(&mut vars, FUDGE);
        put_u16(&mut vars, 0); // error
        put_u16(&mut vars, 0); // other length
        let key = ring::hmac::Key::new(alg, &self.secret);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(msg);
        ctx.update(&vars);
        let mac = ctx.sign();
        let mac = mac.as_ref();
        let id = [msg[0], msg[1]];
        let mut rdata = Vec::with_capacity(alg_name.len() + mac.len() + 16);
        rdata.extend_from_slice(&alg_name);
        rdata.extend_from_slice(&time[2..]);
        put_u16(&mut rdata, FUDGE);
        put_u16(&mut rdata, mac.len() as u16);
        rdata.extend_from_slice(mac);
        rdata.extend_from_slice(&id);
        put_u16(&mut rdata, 0);
        put_u16(&mut rdata, 0);
        msg.extend_from_slice(&key_name);
        put_u16(msg, TSIG);
        put_u16(msg, CLASS_ANY);
        msg.extend_from_slice(&0u32.to_be_bytes());
        put_u16(msg, rdata.len() as u16);
        msg.extend_from_slice(&rdata);
        let arcount = u16::from_be_bytes([msg[10], msg[11]]) + 1;
        msg[10..12].copy_from_slice(&arcount.to_be_bytes());
        Ok(())
    }
}

/// The data of a record Dwaar reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Txt(String),
    Name(String),
    Addr(IpAddr),
    Other,
}

#[derive(Debug, Clone)]
pub struct Record {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub rtype: u16,
    pub data: Data,
}

#[derive(Debug, Default)]
pub struct Message {
    pub id: u16,
    pub rcode: u16,
    pub truncated: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or("truncated DNS message")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A possibly compressed name starting at the cursor.
    fn name(&mut self) -> Result<String, String> {
        let (name, end) = read_name(self.buf, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// The name at `pos` and the offset after it (after the first pointer, if any).
fn read_name(buf: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *buf.get(pos).ok_or("truncated DNS name")? as usize;
        if len == 0 {
            return Ok((out, end.unwrap_or(pos + 1)));
        }
        if len & 0xC0 == 0xC0 {
            let lo = *buf.get(pos + 1).ok_or("truncated DNS name")? as usize;
            end.get_or_insert(pos + 2);
            pos = ((len & 0x3F) << 8) | lo;
            continue;
        }
        let label = buf
            .get(pos + 1..pos + 1 + len)
            .ok_or("truncated DNS label")?;
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
        pos += 1 + len;
    }
    Err("DNS name compression loop".into())
}

/// Parses a DNS message.
pub fn parse(buf: &[u8]) -> Result<Message, String> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..counts[0] {
        r.name()?;
        r.take(4)?;
    }
    let mut m = Message {
        id,
        rcode: flags & 0xF,
        truncated: flags & FLAG_TC != 0,
        ..Default::default()
    };
    for (section, count) in [(0, counts[1]), (1, counts[2]), (2, counts[3])] {
        for _ in 0..count {
            let name = r.name()?;
            let rtype = r.u16()?;
            r.take(6)?; // class, TTL
            let len = r.u16()? as usize;
            let start = r.pos;
            let rdata = r.take(len)?;
            let data = match rtype {
                TXT => {
                    let mut s = String::new();
                    let mut i = 0;
                    while i < rdata.len() {
                        let n = rdata[i] as usize;
                        let part = rdata.get(i + 1..i + 1 + n).ok_or("truncated TXT")?;
                        s.push_str(&String::from_utf8_lossy(part));
                        i += 1 + n;
                    }
                    Data::Txt(s)
                }
                NS | CNAME | SOA => Data::Name(read_name(buf, start)?.0),
                A if len == 4 => Data::Addr(IpAddr::from([rdata[0], rdata[1], rdata[2], rdata[3]])),
                AAAA if len == 16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(rdata);
                    Data::Addr(IpAddr::from(b))
                }
                _ => Data::Other,
            };
            let rec = Record { name, rtype, data };
            match section {
                0 => m.answers.push(rec),
                1 => m.authority.push(rec),
                _ => m.additional.push(rec),
            }
        }
    }
    Ok(m)
}

/// Sends `msg` to `server` over UDP and returns the parsed answer; a truncated answer
/// is asked again over TCP.
pub async fn exchange(
    server: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> Result<Message, String> {
    let sock = tokio::net::UdpSocket::bind(if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    })
    .await
    .map_err(|e| format!("DNS socket: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("DNS server {server}: {e}"))?;
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let answer = tokio::time::timeout(timeout, async {
        sock.send(msg).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await?;
            // Answers to other questions (or forged ones) are not ours.
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                buf.truncate(n);
                return Ok::<_, std::io::Error>(buf);
            }
        }
    })
    .await
    .map_err(|_| format!("DNS server {server} did not answer within {timeout:?}"))?
    .map_err(|e| format!("DNS server {server}: {e}"))?;
    let m = parse(&answer)?;
    if m.truncated {
        return exchange_tcp(server, msg, timeout).await;
    }
    Ok(m)
}

/// Sends `msg` to `server` over TCP and returns the parsed answer.
pub async fn exchange_tcp(
    server: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> Result<Message, String> {
    let answer = tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(msg.len() + 2);
        framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        framed.extend_from_slice(msg);
        s.write_all(&framed).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|_| format!("DNS server {server} did not answer within {timeout:?}"))?
    .map_err(|e| format!("DNS server {server}: {e}"))?;
    let m = parse(&answer)?;
    if answer[..2] != msg[..2] {
        return Err(format!("DNS server {server} answered another question"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_compression() {
        let mut m = query(7, "_acme-challenge.Example.COM", TXT, true).unwrap();
        // Flip it into an answer with one TXT record whose owner points at the question.
        m[2] |= 0x80;
        m[7] = 1;
        m.extend_from_slice(&[0xC0, 12]);
        put_u16(&mut m, TXT);
        put_u16(&mut m, CLASS_IN);
        m.extend_from_slice(&60u32.to_be_bytes());
        let rdata = txt_rdata(&"x".repeat(300));
        put_u16(&mut m, rdata.len() as u16);
        m.extend_from_slice(&rdata);
        let parsed = parse(&m).unwrap();
        assert_eq!(parsed.id, 7);
        assert_eq!(parsed.answers.len(), 1);
        assert_eq!(parsed.answers[0].name, "_acme-challenge.example.com");
        assert_eq!(parsed.answers[0].data, Data::Txt("x".repeat(300)));
    }

    #[test]
    fn malformed_messages_are_errors() {
        // Every strict prefix of a message is incomplete: an error, never a panic.
        let m = query(1, "example.com", A, false).unwrap();
        for cut in 0..m.len() {
            assert!(parse(&m[..cut]).is_err(), "prefix of {cut} bytes");
        }
        assert!(parse(&m).is_ok());
        // A pointer to itself.
        let mut bad = header(1, 0, [1, 0, 0, 0]);
        bad.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(parse(&bad).is_err());
        assert!(put_name(&mut Vec::new(), "a..b").is_err());
    }

    #[test]
    fn tsig_covers_the_message() {
        let key = TsigKey {
            name: "acme".into(),
            algorithm: "hmac-sha256".into(),
            secret: b"0123456789abcdef".to_vec(),
        };
        let changes = [Change::AddTxt {
            name: "_acme-challenge.example.test",
            ttl: 60,
            value: "v",
        }];
        let mut a = update(9, "example.test", &changes).unwrap();
        let unsigned = a.len();
        key.sign(&mut a, 1_700_000_000).unwrap();
        assert_eq!(
            u16::from_be_bytes([a[10], a[11]]),
            1,
            "ARCOUNT counts the TSIG"
        );
        let parsed = parse(&a).unwrap();
        assert_eq!(parsed.additional[0].rtype, TSIG);
        assert_eq!(parsed.additional[0].name, "acme");
        // The same message signed at the same time signs the same; another time differs.
        let mut b = update(9, "example.test", &changes).unwrap();
        key.sign(&mut b, 1_700_000_000).unwrap();
        assert_eq!(a, b);
        let mut c = update(9, "example.test", &changes).unwrap();
        key.sign(&mut c, 1_700_000_001).unwrap();
        assert_ne!(a[unsigned..], c[unsigned..]);
    }
}
