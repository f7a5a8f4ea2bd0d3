//! OCSP stapling: for certificates that name an OCSP responder, Dwaar fetches a
//! response in the background and hands it to clients in the handshake, so they need
//! not ask the CA themselves (faster, and private).
//!
//! The request (RFC 6960, SHA-1 CertID as responders expect) and the small part of the
//! response Dwaar checks (status successful, the entry for this serial says "good",
//! and its validity window) are encoded and read here with a minimal DER walker.
//! Clients verify the responder's signature themselves. Responders on loopback,
//! private, link-local or otherwise internal addresses are never contacted (a
//! certificate must not be able to make Dwaar probe the inside network);
//! `DWAAR_OCSP_ALLOW_PRIVATE=1` lifts that for tests only.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

const OID_OCSP: &str = "1.3.6.1.5.5.7.48.1";
/// Largest response accepted.
const MAX_RESPONSE: usize = 64 * 1024;

/// The OCSP responder URL of a DER certificate, if it has one (http only).
pub fn responder_url(leaf: &[u8]) -> Option<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in aia.iter() {
                if d.access_method.to_id_string() == OID_OCSP {
                    if let GeneralName::URI(u) = &d.access_location {
                        if u.starts_with("http://") {
                            return Some(u.to_string());
                        }
                    }
                }
            }
        }
    }
    None
}

/// A checked OCSP response.
#[derive(Debug, Clone)]
pub struct Staple {
    pub der: Vec<u8>,
    pub this_update: SystemTime,
    pub next_update: Option<SystemTime>,
}

impl Staple {
    /// When to fetch a new one: halfway through the validity window (or in an hour
    /// when the responder gives no next update).
    pub fn refresh_at(&self) -> SystemTime {
        match self.next_update {
            Some(next) => {
                let span = next
                    .duration_since(self.this_update)
                    .unwrap_or(Duration::ZERO);
                self.this_update + span / 2
            }
            None => self.this_update + Duration::from_secs(3600),
        }
    }
}

/// Builds the DER OCSP request for `leaf` issued by `issuer`.
pub fn request(leaf: &[u8], issuer: &[u8]) -> Result<Vec<u8>, String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("leaf: {e}"))?;
    let (_, issuer) =
        x509_parser::parse_x509_certificate(issuer).map_err(|e| format!("issuer: {e}"))?;
    let sha1 = |d: &[u8]| {
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, d)
            .as_ref()
            .to_vec()
    };
    let name_hash = sha1(issuer.subject().as_raw());
    let key_hash = sha1(&issuer.public_key().subject_public_key.data);
    // AlgorithmIdentifier { sha1, NULL }
    let alg = tlv(
        0x30,
        &[
            &tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a])[..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let serial = tlv(0x02, leaf.raw_serial());
    let cert_id = tlv(
        0x30,
        &[alg, tlv(0x04, &name_hash), tlv(0x04, &key_hash), serial].concat(),
    );
    let request = tlv(0x30, &cert_id);
    let request_list = tlv(0x30, &request);
    let tbs = tlv(0x30, &request_list);
    Ok(tlv(0x30, &tbs))
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// One DER element: tag, content, and what follows it.
fn read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((tag, b.get(start..end)?, b.get(end..)?))
}

fn generalized_time(b: &[u8]) -> Option<SystemTime> {
    // YYYYMMDDHHMMSS[.fff]Z
    let s = std::str::from_utf8(b).ok()?;
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, se) = (n(8..10)?, n(10..12)?, n(12..14)?);
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let (y, mo) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    let days = days.checked_sub(719_468)?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + se))
}

/// Checks an OCSP response for the certificate with `serial` (raw big-endian bytes).
pub fn check(der: &[u8], serial: &[u8]) -> Result<Staple, String> {
    let bad = || "malformed OCSP response".to_string();
    let (_, resp, _) = read(der).ok_or_else(bad)?;
    let (tag, status, rest) = read(resp).ok_or_else(bad)?;
    if tag != 0x0a || status != [0] {
        return Err(format!(
            "the OCSP responder answered with status {status:?}"
        ));
    }
    let (_, bytes, _) = read(rest).ok_or_else(bad)?; // [0] EXPLICIT
    let (_, bytes, _) = read(bytes).ok_or_else(bad)?; // ResponseBytes SEQUENCE
    let (_, _oid, rest) = read(bytes).ok_or_else(bad)?;
    let (_, basic, _) = read(rest).ok_or_else(bad)?; // OCTET STRING
    let (_, basic, _) = read(basic).ok_or_else(bad)?; // BasicOCSPResponse
    let (_, data, _) = read(basic).ok_or_else(bad)?; // ResponseData
    let mut rest = data;
    let (tag, _, r) = read(rest).ok_or_else(bad)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    let (_, _responder, r) = read(rest).ok_or_else(bad)?;
    let (_, _produced, r) = read(r).ok_or_else(bad)?;
    let (_, mut responses, _) = read(r).ok_or_else(bad)?;
    while !responses.is_empty() {
        let (_, single, next) = read(responses).ok_or_else(bad)?;
        responses = next;
        let (_, cert_id, r) = read(single).ok_or_else(bad)?;
        // CertID: alg, name hash, key hash, serial.
        let (_, _, c) = read(cert_id).ok_or_else(bad)?;
        let (_, _, c) = read(c).ok_or_else(bad)?;
        let (_, _, c) = read(c).ok_or_else(bad)?;
        let (_, s, _) = read(c).ok_or_else(bad)?;
        if s != serial {
            continue;
        }
        let (status_tag, _, r) = read(r).ok_or_else(bad)?;
        match status_tag {
            0x80 => {}
            0xa1 => return Err("the certificate is revoked".into()),
            _ => return Err("the OCSP responder does not know the certificate".into()),
        }
        let (_, this, r) = read(r).ok_or_else(bad)?;
        let this_update = generalized_time(this).ok_or_else(bad)?;
        let next_update = match read(r) {
            Some((0xa0, inner, _)) => read(inner).and_then(|(_, t, _)| generalized_time(t)),
            _ => None,
        };
        let now = SystemTime::now();
        if next_update.is_some_and(|n| n < now) {
            return Err("the OCSP response has expired".into());
        }
        return Ok(Staple {
            der: der.to_vec(),
            this_update,
            next_update,
        });
    }
    Err("the OCSP response does not cover this certificate".into())
}

/// Whether Dwaar may contact `ip` on a certificate's say-so.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v.segments();
            !(v.is_loopback()
                || v.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// POSTs `request` to the responder at `url` and returns the body.
pub async fn fetch(url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// OCSP URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let allow_private = std::env::var("DWAAR_OCSP_ALLOW_PRIVATE").is_ok_and(|v| v == "1");
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| allow_private || is_public(a.ip()))
        .copied()
        .ok_or_else(|| {
            format!("{authority} resolves only to internal addresses; not contacting it")
        })?;
    let io = async {
        // Connect to the checked address itself, so a second lookup cannot differ.
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/ocsp-request\r\nAccept: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            request.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(request).await.map_err(|e| e.to_string())?;
        crate::http1::read_response(&mut s, MAX_RESPONSE + 4096, "OCSP").await
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("the OCSP responder {authority} timed out"))??;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("bad HTTP response from {authority}")),
    };
    if resp.code != Some(200) {
        return Err(format!("the OCSP responder answered HTTP {:?}", resp.code));
    }
    // `read_response` stopped at the end of the announced body.
    let body = &raw[n..];
    if body.len() > MAX_RESPONSE {
        return Err("the OCSP response is too large".into());
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn generalized_times() {
        let t = generalized_time(b"20261129235959Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_996_799
        );
        assert_eq!(generalized_time(b"19700101000000Z").unwrap(), UNIX_EPOCH);
    }
}
