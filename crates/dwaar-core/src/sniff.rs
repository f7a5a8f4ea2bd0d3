//! Protocol sniffing for layer-4 routing: small parsers over the first bytes a TCP client
//! sent (peeked, so possibly cut short) that recognise a TLS ClientHello, a PostgreSQL first
//! message, an SSH identification or an HTTP/1 request head. None of them panics on any
//! input, and each tells "need more bytes" apart from "not this protocol".

use std::borrow::Cow;
use std::ops::RangeInclusive;

/// The outcome of parsing a prefix of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The bytes so far are this.
    Done(T),
    /// The bytes so far are a valid beginning; more are needed to decide.
    NeedMore,
    /// The bytes are not this protocol.
    No,
}

/// What a TLS ClientHello says that routing cares about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The server_name extension's host_name, lowercased (None when absent).
    pub server_name: Option<String>,
    /// The ALPN protocol names offered, in order.
    pub alpn: Vec<Vec<u8>>,
}

/// The largest TLS plaintext record fragment (RFC 8446 section 5.1).
const MAX_RECORD: usize = 16 * 1024;
/// The largest ClientHello body reassembled (its 4-byte header comes on top).
const MAX_HELLO_BODY: usize = 16 * 1024;

/// Parses a TLS ClientHello from the start of a stream: handshake records (content type 22,
/// versions 0x0300..=0x0304) whose payloads, reassembled, hold a ClientHello. Extracts SNI
/// (extension 0, name type 0) and ALPN (extension 16); anything malformed is `No`.
pub fn client_hello(buf: &[u8]) -> Parse<ClientHello> {
    // Borrowed while the message sits in one record; copied only when it is fragmented.
    let mut msg: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    loop {
        let header = rest.get(..5).unwrap_or(rest);
        let allowed: [RangeInclusive<u8>; 3] = [22..=22, 3..=3, 0..=4];
        if header.iter().zip(allowed).any(|(b, ok)| !ok.contains(b)) {
            return Parse::No;
        }
        let Some(&[_, _, _, hi, lo]) = rest.get(..5) else {
            return Parse::NeedMore;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if !(1..=MAX_RECORD).contains(&len) {
            return Parse::No;
        }
        let payload = rest.get(5..).unwrap_or_default();
        let fragment = payload.get(..len).unwrap_or(payload);
        if msg.is_empty() {
            msg = Cow::Borrowed(fragment);
        } else {
            msg.to_mut().extend_from_slice(fragment);
        }
        match *msg {
            [kind, ..] if kind != 1 => return Parse::No,
            [_, a, b, c, ref body @ ..] => {
                let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if body_len > MAX_HELLO_BODY {
                    return Parse::No;
                }
                if let Some(body) = body.get(..body_len) {
                    return parse_hello(body).map_or(Parse::No, Parse::Done);
                }
            }
            _ => {}
        }
        if fragment.len() < len {
            return Parse::NeedMore;
        }
        rest = payload.get(len..).unwrap_or_default();
    }
}

/// A cursor over TLS wire data; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }

    /// A vector behind a big-endian length of `width` bytes.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = self.take(width)?;
        self.take(n.iter().fold(0, |n, &b| n << 8 | usize::from(b)))
    }
}

/// A ClientHello body (after the handshake header), or None when malformed.
fn parse_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let version = r.u16()?;
    r.take(32)?; // random
    let session_id = r.vec(1)?;
    let suites = r.vec(2)?;
    let compression = r.vec(1)?;
    let valid = (0x0300..=0x0304).contains(&version)
        && session_id.len() <= 32
        && !suites.is_empty()
        && suites.len() % 2 == 0
        && !compression.is_empty();
    if !valid {
        return None;
    }
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello); // no extensions at all
    }
    let mut exts = Reader(r.vec(2)?);
    if !r.0.is_empty() {
        return None;
    }
    let mut seen_sni = false;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        match kind {
            0 if !seen_sni => {
                seen_sni = true;
                hello.server_name = server_name(data)?;
            }
            16 if hello.alpn.is_empty() => hello.alpn = alpn(data)?,
            0 | 16 => return None, // repeated
            _ => {}
        }
    }
    Some(hello)
}

/// An extension body that is exactly one non-empty vector with a two-byte length.
fn ext_list(data: &[u8]) -> Option<Reader<'_>> {
    let mut r = Reader(data);
    let list = r.vec(2)?;
    (r.0.is_empty() && !list.is_empty()).then_some(Reader(list))
}

/// The server_name extension (RFC 6066 section 3): its first host_name, lowercased.
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut list = ext_list(data)?;
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.take(1)?;
        let name = list.vec(2)?;
        if kind == [0] && host.is_none() {
            let valid = !name.is_empty() && name.iter().all(u8::is_ascii_graphic);
            let name = std::str::from_utf8(name).ok().filter(|_| valid)?;
            host = Some(name.to_ascii_lowercase());
        }
    }
    Some(host)
}

/// The ALPN extension (RFC 7301 section 3.1): non-empty protocol names, in order.
fn alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut list = ext_list(data)?;
    let mut names = Vec::new();
    while !list.0.is_empty() {
        names.push(list.vec(1).filter(|name| !name.is_empty())?.to_vec());
    }
    Some(names)
}

/// The first message a PostgreSQL client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postgres {
    /// SSLRequest (code 80877103): the client wants TLS next.
    SslRequest,
    /// GSSENCRequest (code 80877104).
    GssEncRequest,
    /// CancelRequest (code 80877102).
    Cancel,
    /// StartupMessage, protocol 3.x, with its parameters (user, database, application_name...).
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

const PG_CANCEL: u32 = 80877102;
const PG_SSL: u32 = 80877103;
const PG_GSSENC: u32 = 80877104;

/// Parses a PostgreSQL client's first message: Int32 length (counting itself, 8..=10000),
/// Int32 code, then for a StartupMessage (protocol 3.x) NUL-terminated key/value pairs
/// ending with an empty key. The special requests are `Done` once their 8-byte header is
/// in, a StartupMessage once all of it is. Anything inconsistent is `No`.
pub fn postgres(buf: &[u8]) -> Parse<Postgres> {
    let (len, code) = (int32_prefix(buf, 0), int32_prefix(buf, 4));
    if !could_be(len, 8..=10000)
        || !(could_be(code, 0x0003_0000..=0x0003_ffff) || could_be(code, PG_CANCEL..=PG_GSSENC))
    {
        return Parse::No;
    }
    let (Ok(len), Ok(code)) = (<[u8; 4]>::try_from(len), <[u8; 4]>::try_from(code)) else {
        return Parse::NeedMore;
    };
    let (len, code) = (u32::from_be_bytes(len) as usize, u32::from_be_bytes(code));
    match code {
        PG_SSL if len == 8 => Parse::Done(Postgres::SslRequest),
        PG_GSSENC if len == 8 => Parse::Done(Postgres::GssEncRequest),
        // Process id and secret key (4 bytes in protocol 3.0, up to 256 from 3.2 on).
        PG_CANCEL if (16..=268).contains(&len) => Parse::Done(Postgres::Cancel),
        PG_CANCEL | PG_SSL | PG_GSSENC => Parse::No,
        _ => match buf.get(8..len) {
            None => Parse::NeedMore,
            Some(body) => startup_params(body).map_or(Parse::No, |params| {
                let (major, minor) = ((code >> 16) as u16, code as u16);
                Parse::Done(Postgres::Startup {
                    major,
                    minor,
                    params,
                })
            }),
        },
    }
}

/// Up to four bytes of `buf` from `at`.
fn int32_prefix(buf: &[u8], at: usize) -> &[u8] {
    let rest = buf.get(at..).unwrap_or_default();
    rest.get(..4).unwrap_or(rest)
}

/// Whether the first bytes of a big-endian Int32 can still make a value in `range`.
fn could_be(prefix: &[u8], range: RangeInclusive<u32>) -> bool {
    let pad = |fill| u32::from_be_bytes(std::array::from_fn(|i| *prefix.get(i).unwrap_or(&fill)));
    pad(0) <= *range.end() && pad(0xff) >= *range.start()
}

/// A StartupMessage body's parameters: key, value, ..., an empty key, then nothing.
fn startup_params(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let mut parts = body.split(|&b| b == 0);
    let mut params = Vec::new();
    loop {
        let key = parts.next()?;
        if key.is_empty() {
            break;
        }
        let value = parts.next()?;
        params.push((text(key)?, text(value)?));
    }
    // The final NUL leaves one empty piece after it, and nothing may follow.
    (parts.next() == Some(&[][..]) && parts.next().is_none()).then_some(params)
}

/// An SSH client's identification: the stream starts with "SSH-" (RFC 4253 section 4.2).
/// Fewer than 4 bytes that are a prefix of "SSH-" are `NeedMore`.
pub fn ssh(buf: &[u8]) -> Parse<()> {
    if buf.starts_with(b"SSH-") {
        Parse::Done(())
    } else if b"SSH-".starts_with(buf) {
        Parse::NeedMore
    } else {
        Parse::No
    }
}

/// The head of a client's first HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHead {
    /// The request method, as sent.
    pub method: String,
    /// The request target as sent (origin form `/a?b`, or absolute form).
    pub target: String,
    /// The Host header without a port, lowercased; for absolute-form targets the
    /// authority's host when no Host header.
    pub host: Option<String>,
}

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parses the request line and headers (at most 64) of an HTTP/1.x request. A partial head
/// is `NeedMore` unless its bytes already cannot be HTTP. The HTTP/2 prior-knowledge preface
/// is `Done` with method "PRI", target "*" and no host.
pub fn http_request(buf: &[u8]) -> Parse<HttpHead> {
    if buf.starts_with(H2_PREFACE) {
        let (method, target, host) = ("PRI".to_owned(), "*".to_owned(), None);
        return Parse::Done(HttpHead {
            method,
            target,
            host,
        });
    }
    if H2_PREFACE.starts_with(buf) {
        return Parse::NeedMore;
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !buf.first().is_some_and(|&b| token(b)) {
        return Parse::No;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Parse::NeedMore,
        Err(_) => Parse::No,
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Parse::No;
            };
            let host_header = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"));
            let host = match host_header {
                Some(h) => std::str::from_utf8(h.value).ok().and_then(host_only),
                None => target_authority(target).and_then(host_only),
            };
            let (method, target) = (method.to_owned(), target.to_owned());
            Parse::Done(HttpHead {
                method,
                target,
                host,
            })
        }
    }
}

/// The authority of an absolute-form target (`scheme://[userinfo@]host[:port]/...`).
fn target_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let authority = rest.get(..rest.find(['/', '?', '#']).unwrap_or(rest.len()))?;
    scheme_ok.then(|| {
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
    })
}

/// A `host[:port]` authority's host, lowercased, without a trailing dot; None when invalid.
fn host_only(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => authority.split_at_checked(v6.find(']')? + 2)?,
        None => authority.split_at_checked(authority.find(':').unwrap_or(authority.len()))?,
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(digits);
    let host = host.trim_end_matches('.');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/?#@".contains(&b));
    (port_ok && host_ok).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len16(data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    /// A ClientHello handshake message (header included) offering `sni` and `alpn`.
    fn hello_message(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]); // random
        body.push(32);
        body.extend([9; 32]); // session id
        body.extend(len16(&[0x13, 0x01, 0xc0, 0x2f])); // cipher suites
        body.extend([1, 0]); // compression: null
        let mut names = vec![0];
        names.extend(len16(sni.as_bytes()));
        let protocols: Vec<u8> = alpn
            .iter()
            .flat_map(|p| std::iter::once(p.len() as u8).chain(p.iter().copied()))
            .collect();
        let mut exts = Vec::new();
        for (kind, data) in [
            (0u16, len16(&names)),
            (16, len16(&protocols)),
            (43, vec![2, 3, 4]),
        ] {
            exts.extend(kind.to_be_bytes());
            exts.extend(len16(&data));
        }
        body.extend(len16(&exts));
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// `msg` in handshake records of at most `size` bytes each.
    fn records(msg: &[u8], size: usize) -> Vec<u8> {
        msg.chunks(size)
            .flat_map(|c| [22, 3, 1].into_iter().chain(len16(c)))
            .collect()
    }

    #[test]
    fn client_hello_whole_fragmented_and_truncated() {
        let msg = hello_message("Example.COM", &[b"h2", b"http/1.1"]);
        let expected = Parse::Done(ClientHello {
            server_name: Some("example.com".to_owned()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        });
        let two = records(&msg, msg.len() / 2 + 1);
        assert_eq!(two.len(), msg.len() + 10);
        for input in [
            records(&msg, 16384),
            two,
            records(&msg, 1),
            records(&msg, 3),
        ] {
            assert_eq!(client_hello(&input), expected);
            for n in 0..input.len() {
                assert_eq!(client_hello(&input[..n]), Parse::NeedMore, "prefix {n}");
            }
            let mut more = input.clone(); // what follows the hello does not matter
            more.extend([23, 3, 3, 0, 1, 0]);
            assert_eq!(client_hello(&more), expected);
        }
    }

    #[test]
    fn client_hello_refuses_garbage() {
        let no = |bytes: &[u8]| assert_eq!(client_hello(bytes), Parse::No, "{bytes:?}");
        no(b"GET / HTTP/1.1\r\n");
        no(&[0x80, 0x2e, 0x01, 0x03, 0x01]); // SSLv2 ClientHello
        no(&[22, 2]); // bad version
        no(&[22, 3, 5]);
        no(&[22, 3, 1, 0, 0]); // empty record
        no(&[22, 3, 1, 0x40, 0x01]); // record over 16 KiB
        no(&[22, 3, 1, 0, 4, 2, 0, 0, 0]); // a ServerHello
        no(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0x01]); // message over the cap
        no(&[22, 3, 1, 0, 4, 1, 0, 0, 0]); // empty ClientHello
        let msg = hello_message("example.com", &[b"h2"]);
        let mut tail = msg.clone();
        tail.push(0);
        tail[3] += 1; // a byte after the extensions
        no(&records(&tail, 16384));
        let mut second = records(&msg, 20);
        second[25] = 23; // the second record is not a handshake record
        no(&second);
        no(&records(&hello_message("", &[b"h2"]), 16384)); // empty host name
        no(&records(&hello_message("a.example", &[b""]), 16384)); // empty protocol
    }

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = vec![0, 3, 0, 0];
        for (k, v) in params {
            body.extend(k.bytes().chain([0]).chain(v.bytes()).chain([0]));
        }
        body.push(0);
        let mut msg = (body.len() as u32 + 4).to_be_bytes().to_vec();
        msg.extend(body);
        msg
    }

    #[test]
    fn postgres_messages() {
        let msg = startup(&[("user", "bob"), ("database", "shop")]);
        let params = [("user", "bob"), ("database", "shop")].map(|(k, v)| (k.into(), v.into()));
        let params = params.into();
        let done = Parse::Done(Postgres::Startup {
            major: 3,
            minor: 0,
            params,
        });
        assert_eq!(postgres(&msg), done);
        for n in 0..msg.len() {
            assert_eq!(postgres(&msg[..n]), Parse::NeedMore, "prefix {n}");
        }
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(postgres(&ssl), Parse::Done(Postgres::SslRequest));
        assert_eq!(postgres(&ssl[..6]), Parse::NeedMore);
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(postgres(&gss), Parse::Done(Postgres::GssEncRequest));
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 2, 3, 4, 5];
        assert_eq!(postgres(&cancel), Parse::Done(Postgres::Cancel));

        let no = |bytes: &[u8]| assert_eq!(postgres(bytes), Parse::No, "{bytes:?}");
        no(b"GET / HTTP/1.1");
        no(&[1]); // length too large
        no(&[0, 0, 0, 7]); // length too small
        no(&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f]); // SSLRequest with a body
        no(&[0, 0, 0, 9, 0, 2, 0, 0, 0]); // protocol 2
        no(&[0, 0, 0, 8, 0, 3, 0, 0]); // startup without its terminator
        let mut trailing = startup(&[("user", "bob")]);
        trailing.push(b'x');
        trailing[3] += 1;
        no(&trailing);
        let mut bad_utf8 = startup(&[("user", "bob")]);
        bad_utf8[13] = 0xff;
        no(&bad_utf8);
    }

    #[test]
    fn ssh_identification() {
        assert_eq!(ssh(b"SSH-2.0-OpenSSH_9.6\r\n"), Parse::Done(()));
        for n in 0..4 {
            assert_eq!(ssh(&b"SSH-"[..n]), Parse::NeedMore);
        }
        assert_eq!(ssh(b"SSX"), Parse::No);
        assert_eq!(ssh(b"GET / HTTP/1.1"), Parse::No);
    }

    #[test]
    fn http_heads() {
        let head = |method: &str, target: &str, host: Option<&str>| {
            let (method, target) = (method.to_owned(), target.to_owned());
            Parse::Done(HttpHead {
                method,
                target,
                host: host.map(str::to_owned),
            })
        };
        let get = b"GET /a?b HTTP/1.1\r\nAccept: */*\r\nHost: Example.com:8080\r\n\r\n";
        assert_eq!(http_request(get), head("GET", "/a?b", Some("example.com")));
        for n in 0..get.len() {
            assert_eq!(http_request(&get[..n]), Parse::NeedMore, "prefix {n}");
        }
        let target = "http://user@Proxy.Example:3128/x";
        let absolute = format!("GET {target} HTTP/1.1\r\n\r\n");
        let host = Some("proxy.example");
        assert_eq!(http_request(absolute.as_bytes()), head("GET", target, host));
        let v6 = b"GET / HTTP/1.0\r\nhost: [::1]:80\r\n\r\n";
        assert_eq!(http_request(v6), head("GET", "/", Some("[::1]")));
        assert_eq!(http_request(H2_PREFACE), head("PRI", "*", None));
        assert_eq!(http_request(&H2_PREFACE[..10]), Parse::NeedMore);
        for garbage in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"\x00\xff\xfe",
            b"GE\x01",
            b"GET / HTTP/9.9\r\n",
        ] {
            assert_eq!(http_request(garbage), Parse::No, "{garbage:?}");
        }
    }

    #[test]
    fn no_parser_panics() {
        let run = |bytes: &[u8]| {
            let _ = (
                client_hello(bytes),
                postgres(bytes),
                ssh(bytes),
                http_request(bytes),
            );
        };
        let msg = hello_message("x.example", &[b"h2"]);
        let http = b"GET http://[::1]:8/ HTTP/1.1\r\nHost: [a]:1\r\n\r\n".to_vec();
        for input in [
            records(&msg, 16384),
            records(&msg, 7),
            startup(&[("u", "v")]),
            http,
        ] {
            for n in 0..=input.len() {
                run(&input[..n]);
            }
            for (i, mask) in (0..input.len()).flat_map(|i| [(i, 0x01), (i, 0x80), (i, 0xff)]) {
                let mut flipped = input.clone();
                flipped[i] ^= mask;
                run(&flipped);
            }
        }
    }
}
