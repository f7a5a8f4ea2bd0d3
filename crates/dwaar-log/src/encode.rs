//! Turning records into bytes: JSON (sonic-rs) and a console line for humans.
//!
//! Both append to a caller-owned buffer that the writer thread reuses, so encoding
//! allocates only when a query string has to be redacted.

use crate::record::RequestLog;
use std::io::Write;
use std::net::IpAddr;

/// How a site wants its records written.
#[derive(Debug, Clone)]
pub struct Style {
    /// `json`, `console` or nginx's `combined` (with filters: the wrapped one).
    pub format: dwaar_config::model::LogFormat,
    /// Leading bits of IPv4/IPv6 addresses to keep.
    pub mask_ip: Option<(u8, u8)>,
    /// The logger's name in JSON records: `http.log.access`, or
    /// `http.log.access.<name>` for a named log.
    pub logger: compact_str::CompactString,
    /// `format filter`'s field filters and the encoder options, when the log has any.
    pub transform: Option<std::sync::Arc<crate::transform::Transform>>,
}

impl Style {
    /// The style a log block asks for.
    pub fn of(c: &dwaar_config::model::LogConfig) -> Result<Style, String> {
        Ok(Style {
            format: c.format,
            mask_ip: c.mask_ip,
            logger: match &c.name {
                Some(n) => compact_str::format_compact!("http.log.access.{n}"),
                None => compact_str::CompactString::const_new("http.log.access"),
            },
            transform: if c.filters.is_empty() && c.encoder.is_none() && c.transform.is_none() {
                None
            } else {
                Some(std::sync::Arc::new(crate::transform::Transform::compile(
                    &c.filters,
                    c.encoder.as_ref(),
                    c.transform.as_ref(),
                )?))
            },
        })
    }

    /// Whether records need the request's and response's header fields (JSON writes
    /// them; filters read the JSON form).
    pub fn wants_headers(&self) -> bool {
        self.format == dwaar_config::model::LogFormat::Json || self.transform.is_some()
    }
}

/// Query keys whose values never reach a log.
const SENSITIVE: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "key",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "auth",
    "authorization",
    "signature",
    "sig",
    "session",
    "sessionid",
    "code",
];

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn sensitive(key: &str) -> bool {
    // Every listed key is 3 to 13 bytes long; the suffixes need at least 6.
    if key.len() < 3 {
        return false;
    }
    SENSITIVE.iter().any(|s| s.eq_ignore_ascii_case(key))
        || ["_token", "password", "secret"]
            .iter()
            .any(|suffix| ends_with_ignore_case(key, suffix))
}

/// The keys of a query string, in order.
fn query_keys(q: &str) -> impl Iterator<Item = (&str, bool)> {
    q.as_bytes()
        .split(|b| *b == b'&')
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            // Splitting at ASCII bytes keeps both halves valid UTF-8.
            Some(i) => (std::str::from_utf8(&pair[..i]).unwrap_or(""), true),
            None => (std::str::from_utf8(pair).unwrap_or(""), false),
        })
}

/// The query with the values of sensitive keys replaced; borrowed when nothing changes.
pub fn redact_query(q: &str) -> std::borrow::Cow<'_, str> {
    if !query_keys(q).any(|(k, has_value)| has_value && sensitive(k)) {
        return std::borrow::Cow::Borrowed(q);
    }
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if sensitive(k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Zeroes all but the leading `bits` of an address.
pub fn mask(ip: IpAddr, bits: Option<(u8, u8)>) -> IpAddr {
    let Some((v4, v6)) = bits else { return ip };
    match ip {
        IpAddr::V4(a) => {
            let m = if v4 == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4.min(32)))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            if let Some(v4addr) = a.to_ipv4_mapped() {
                return mask(IpAddr::V4(v4addr), Some((v4, v6)));
            }
            let m = if v6 == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6.min(128)))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// A small stack buffer for numbers, addresses and timestamps.
struct Stack<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Stack<N> {
    fn new() -> Self {
        Stack {
            buf: [0; N],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Write for Stack<N> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<const N: usize> Stack<N> {
    fn push(&mut self, b: u8) {
        if self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    /// Appends `v` in decimal, zero-padded to `width` digits.
    fn num(&mut self, mut v: u64, width: usize) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for _ in n..width {
            self.push(b'0');
        }
        for i in (0..n).rev() {
            self.push(digits[i]);
        }
    }
}

fn ip_text(ip: IpAddr) -> Stack<48> {
    let mut s = Stack::new();
    match ip {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().iter().enumerate() {
                if i > 0 {
                    s.push(b'.');
                }
                s.num(u64::from(*o), 1);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(s, "{ip}");
        }
    }
    s
}

/// RFC 3339 UTC with milliseconds, as a `String` (for file names).
pub fn timestamp_text(ms: u64) -> String {
    timestamp(ms).as_str().to_string()
}

thread_local! {
    /// The last second formatted on this thread: consecutive records share it.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-29T21:10:00.123Z`.
fn timestamp(ms: u64) -> Stack<24> {
    let secs = ms / 1000;
    let (cached, prefix) = LAST_SECOND.get();
    let prefix = if cached == secs {
        prefix
    } else {
        let full = date_time(secs);
        let mut p = [0u8; 19];
        p.copy_from_slice(&full.buf[..19]);
        LAST_SECOND.set((secs, p));
        p
    };
    let mut s = Stack::new();
    s.buf[..19].copy_from_slice(&prefix);
    s.len = 19;
    s.push(b'.');
    s.num(ms % 1000, 3);
    s.push(b'Z');
    s
}

/// The UTC calendar date of a Unix time in seconds: (year, month 1-12, day 1-31).
pub fn civil_date(secs: u64) -> (u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y.max(0) as u64, m as u64, d as u64)
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time in seconds.
fn date_time(secs: u64) -> Stack<24> {
    let rem = secs % 86_400;
    let (y, m, d) = civil_date(secs);
    let mut s = Stack::new();
    s.num(y, 4);
    s.push(b'-');
    s.num(m, 2);
    s.push(b'-');
    s.num(d, 2);
    s.push(b'T');
    s.num(rem / 3600, 2);
    s.push(b':');
    s.num(rem % 3600 / 60, 2);
    s.push(b':');
    s.num(rem % 60, 2);
    s
}

fn header_str(v: &Option<http::HeaderValue>) -> Option<std::borrow::Cow<'_, str>> {
    v.as_ref().map(|h| match h.to_str() {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(h.as_bytes()),
    })
}

fn level_name(r: &RequestLog) -> &'static str {
    match r.level() {
        dwaar_config::model::LogLevel::Error => "error",
        _ => "info",
    }
}

/// Header fields whose values never reach a log (as in Caddy without
/// `log_credentials`).
fn credential(name: &str) -> bool {
    [
        "cookie",
        "set-cookie",
        "authorization",
        "proxy-authorization",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(name))
}

/// A header name in the canonical form Caddy's (Go's) logs use: `user-agent` becomes
/// `User-Agent`. Names with characters outside a token are kept as they are.
fn canonical_name(name: &str) -> std::borrow::Cow<'_, str> {
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let canonical = |i: usize, b: u8| {
        if i == 0 || name.as_bytes()[i - 1] == b'-' {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        }
    };
    if !token || name.bytes().enumerate().all(|(i, b)| canonical(i, b) == b) {
        return std::borrow::Cow::Borrowed(name);
    }
    let out: Vec<u8> = name
        .bytes()
        .enumerate()
        .map(|(i, b)| canonical(i, b))
        .collect();
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| name.to_string()))
}

/// Writes header fields as Caddy does: `{"Name":["value",...],...}`, each name once
/// (canonical form, in order of first appearance) with all its values.
fn header_map(out: &mut Vec<u8>, fields: &[(compact_str::CompactString, String)]) {
    use sonic_rs::format::{CompactFormatter, Formatter};
    let mut f = CompactFormatter;
    out.push(b'{');
    let mut first = true;
    for (i, (name, _)) in fields.iter().enumerate() {
        if fields[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = f.write_string_fast(out, &canonical_name(name), true);
        out.extend_from_slice(b":[");
        if credential(name) {
            out.extend_from_slice(b"\"REDACTED\"");
        } else {
            let mut values = fields[i..]
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name));
            for (j, (_, v)) in values.by_ref().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                let _ = f.write_string_fast(out, v, true);
            }
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Appends `micros` as seconds with a fraction (`0.001234`): a JSON number.
fn seconds(out: &mut Vec<u8>, micros: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1_000_000).as_bytes());
    let frac = micros % 1_000_000;
    out.push(b'.');
    let digits = itoa::Buffer::new().format(frac).len();
    out.extend(std::iter::repeat_n(b'0', 6 - digits));
    out.extend_from_slice(itoa::Buffer::new().format(frac).as_bytes());
}

/// Appends the record as one JSON line in Caddy's access-log schema (`level`, `ts` in
/// Unix seconds, `logger`, `msg`, `request{remote_ip, remote_port, client_ip, proto,
/// method, host, uri, headers, tls}`, `bytes_read`, `user_id`, `duration` in seconds,
/// `size`, `status`, `resp_headers`), so tools that read Caddy's logs read Dwaar's;
/// Dwaar's own facts follow (`request_id`, `upstream_addr`, `upstream_duration`, `cache`,
/// `encoding`, `rejected_by`, `error`, `is_bot`) and then the `log_append` fields.
/// Credentials in headers and sensitive query values are written `REDACTED`.
///
/// Written field by field: keys are constant bytes, strings go through sonic-rs's SIMD
/// escaper, numbers through `itoa`.
pub fn json_line(r: &RequestLog, style: &Style, out: &mut Vec<u8>) {
    use sonic_rs::format::{CompactFormatter, Formatter};
    let mut f = CompactFormatter;
    let mut str_field = |out: &mut Vec<u8>, key: &[u8], v: &str| {
        out.extend_from_slice(key);
        let _ = f.write_string_fast(out, v, true);
    };
    let num = |out: &mut Vec<u8>, key: &[u8], v: u64| {
        out.extend_from_slice(key);
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    };
    out.extend_from_slice(b"{\"level\":\"");
    out.extend_from_slice(level_name(r).as_bytes());
    out.extend_from_slice(b"\",\"ts\":");
    seconds(out, r.ts_ms * 1000);
    str_field(out, b",\"logger\":", &style.logger);
    out.extend_from_slice(b",\"msg\":\"handled request\",\"request\":{\"remote_ip\":\"");
    let remote = ip_text(mask(r.remote_ip, style.mask_ip));
    out.extend_from_slice(remote.as_bytes());
    out.extend_from_slice(b"\",\"remote_port\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(r.remote_port).as_bytes());
    out.extend_from_slice(b"\",\"client_ip\":\"");
    if r.client_ip == r.remote_ip {
        out.extend_from_slice(remote.as_bytes());
    } else {
        out.extend_from_slice(ip_text(mask(r.client_ip, style.mask_ip)).as_bytes());
    }
    out.push(b'"');
    str_field(out, b",\"proto\":", r.proto);
    str_field(out, b",\"method\":", &r.method);
    str_field(out, b",\"host\":", &r.host);
    if r.query.is_empty() {
        str_field(out, b",\"uri\":", &r.path);
    } else {
        let q = redact_query(&r.query);
        let mut uri = String::with_capacity(r.path.len() + 1 + q.len());
        uri.push_str(&r.path);
        uri.push('?');
        uri.push_str(&q);
        str_field(out, b",\"uri\":", &uri);
    }
    out.extend_from_slice(b",\"headers\":");
    header_map(out, &r.headers);
    if let Some(t) = &r.tls {
        out.extend_from_slice(if t.resumed {
            b",\"tls\":{\"resumed\":true"
        } else {
            b",\"tls\":{\"resumed\":false"
        });
        num(out, b",\"version\":", u64::from(t.version));
        num(out, b",\"cipher_suite\":", u64::from(t.cipher_suite));
        str_field(out, b",\"proto\":", &t.proto);
        str_field(out, b",\"server_name\":", &t.server_name);
        out.push(b'}');
    }
    out.push(b'}');
    num(out, b",\"bytes_read\":", r.bytes_read);
    str_field(out, b",\"user_id\":", &r.user_id);
    out.extend_from_slice(b",\"duration\":");
    seconds(out, r.duration_us);
    num(out, b",\"size\":", r.bytes_written);
    num(out, b",\"status\":", u64::from(r.status));
    out.extend_from_slice(b",\"resp_headers\":");
    header_map(out, &r.resp_headers);
    if let Some(id) = r.request_id {
        let mut b = [0u8; 36];
        out.extend_from_slice(b",\"request_id\":\"");
        out.extend_from_slice(id.hyphenated().encode_lower(&mut b).as_bytes());
        out.push(b'"');
    }
    if let Some(a) = &r.upstream_addr {
        str_field(out, b",\"upstream_addr\":", a);
    }
    if let Some(u) = r.upstream_duration_us {
        out.extend_from_slice(b",\"upstream_duration\":");
        seconds(out, u);
    }
    let optional: [(&[u8], Option<&str>); 4] = [
        (b",\"cache\":", r.cache),
        (b",\"encoding\":", r.encoding),
        (b",\"rejected_by\":", r.rejected_by),
        (b",\"error\":", r.error.as_deref()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            str_field(out, k, v);
        }
    }
    out.extend_from_slice(if r.is_bot {
        b",\"is_bot\":true"
    } else {
        b",\"is_bot\":false"
    });
    for (k, v) in &r.extra {
        out.push(b',');
        let _ = f.write_string_fast(out, k, true);
        out.push(b':');
        let _ = f.write_string_fast(out, v, true);
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a human-readable line:
/// `2026-11-29T21:10:00.123Z INFO GET example.com/path?q HTTP/1.1 200 1.234ms 512B 192.0.2.1 "curl/8"`.
pub fn console_line(r: &RequestLog, style: &Style, out: &mut Vec<u8>) {
    let level = if r.status >= 500 { "ERROR" } else { "INFO " };
    let _ = write!(
        out,
        "{} {level} {} {}{}",
        timestamp(r.ts_ms).as_str(),
        r.method,
        r.host,
        r.path
    );
    if !r.query.is_empty() {
        let _ = write!(out, "?{}", redact_query(&r.query));
    }
    let _ = write!(
        out,
        " {} {} {}.{:03}ms {}B {}",
        r.proto,
        r.status,
        r.duration_us / 1000,
        r.duration_us % 1000,
        r.bytes_written,
        ip_text(mask(r.client_ip, style.mask_ip)).as_str()
    );
    if let Some(ua) = header_str(&r.user_agent) {
        let _ = write!(out, " {:?}", ua);
    }
    if let Some(u) = &r.upstream_addr {
        let _ = write!(out, " upstream={u}");
    }
    if let Some(rj) = r.rejected_by {
        let _ = write!(out, " rejected_by={rj}");
    }
    if let Some(e) = &r.error {
        let _ = write!(out, " error={:?}", e.as_str());
    }
    for (k, v) in &r.extra {
        let _ = write!(out, " {k}={v:?}");
    }
    out.push(b'\n');
}

/// Appends the record in the style's format.
pub fn encode(r: &RequestLog, style: &Style, out: &mut Vec<u8>) {
    use dwaar_config::model::LogFormat;
    if let Some(f) = &style.transform {
        let mut line = Vec::with_capacity(1024);
        json_line(r, style, &mut line);
        let output = match style.format {
            LogFormat::Console => crate::transform::Output::Console,
            LogFormat::Transform => crate::transform::Output::Template,
            _ => crate::transform::Output::Json,
        };
        f.write(&line, output, out);
        return;
    }
    match style.format {
        LogFormat::Console => console_line(r, style, out),
        LogFormat::Combined => combined_line(r, style, out),
        // Without a template there is no transform to write (never compiled so).
        LogFormat::Json | LogFormat::Transform => json_line(r, style, out),
    }
}

/// Appends nginx's `combined` line: `client - - [04/Dec/2026:21:42:47 +0000] "GET /p?q
/// HTTP/1.1" 200 512 "referer" "user agent"` (UTC; `-` for what is missing; `"` and `\`
/// in the quoted fields escaped as nginx does, `\x22`).
pub fn combined_line(r: &RequestLog, style: &Style, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "{} - - [{}] \"",
        ip_text(mask(r.client_ip, style.mask_ip)).as_str(),
        common_log_time(r.ts_ms / 1000)
    );
    quoted(out, &r.method);
    out.push(b' ');
    quoted(out, &r.path);
    if !r.query.is_empty() {
        out.push(b'?');
        quoted(out, &redact_query(&r.query));
    }
    let _ = write!(out, " {}\" {} {} \"", r.proto, r.status, r.bytes_written);
    match header_str(&r.referer) {
        Some(v) => quoted(out, &v),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" \"");
    match header_str(&r.user_agent) {
        Some(v) => quoted(out, &v),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\"\n");
}

/// A Unix time in the Common Log Format, UTC: `04/Dec/2026:21:42:47 +0000`.
pub fn common_log_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil_date(secs);
    format!(
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m as usize).saturating_sub(1) % 12],
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A value inside a combined line's quotes: `"`, `\` and control bytes as `\xHH`.
fn quoted(out: &mut Vec<u8>, v: &str) {
    for b in v.bytes() {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0).as_str(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(951_782_400_123).as_str(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            timestamp(1_795_986_600_999).as_str(),
            "2026-11-29T21:10:00.999Z"
        );
    }

    #[test]
    fn masks_keep_the_prefix() {
        let m = Some((24, 48));
        assert_eq!(
            mask("192.0.2.77".parse().expect("ip"), m).to_string(),
            "192.0.2.0"
        );
        assert_eq!(
            mask("2001:db8:1:2:3::9".parse().expect("ip"), m).to_string(),
            "2001:db8:1::"
        );
        assert_eq!(
            mask("::ffff:10.1.2.3".parse().expect("ip"), m).to_string(),
            "10.1.2.0"
        );
        assert_eq!(
            mask("10.1.2.3".parse().expect("ip"), None).to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn sensitive_query_values_are_redacted() {
        assert_eq!(redact_query("a=1&b=2"), "a=1&b=2");
        assert_eq!(
            redact_query("q=x&token=abc&Password=p&x_token=t&flag"),
            "q=x&token=REDACTED&Password=REDACTED&x_token=REDACTED&flag"
        );
    }

    #[test]
    fn json_is_caddys_access_log_schema() {
        let r = RequestLog {
            ts_ms: 1_795_986_600_000,
            path: "/a\"b\\c\n".into(),
            user_agent: Some(http::HeaderValue::from_static("ua \"quoted\"")),
            query: "api_key=s3cr3t&x=1".into(),
            status: 502,
            duration_us: 1_234,
            error: Some("connection refused".into()),
            headers: vec![
                ("user-agent".into(), "ua \"quoted\"".into()),
                ("authorization".into(), "Bearer s".into()),
                ("x-multi".into(), "1".into()),
                ("X-Multi".into(), "2".into()),
            ],
            resp_headers: vec![("content-type".into(), "text/plain".into())],
            ..RequestLog::default()
        };
        let style = Style::of(&dwaar_config::model::LogConfig::default()).expect("style");
        let mut out = Vec::new();
        json_line(&r, &style, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["request"]["uri"], "/a\"b\\c\n?api_key=REDACTED&x=1");
        assert_eq!(v["request"]["headers"]["User-Agent"][0], "ua \"quoted\"");
        assert_eq!(v["request"]["headers"]["Authorization"][0], "REDACTED");
        assert_eq!(
            v["request"]["headers"]["X-Multi"],
            serde_json::json!(["1", "2"])
        );
        assert_eq!(v["request"]["remote_port"], "0");
        assert_eq!(v["resp_headers"]["Content-Type"][0], "text/plain");
        assert_eq!(v["level"], "error");
        assert_eq!(v["logger"], "http.log.access");
        assert_eq!(v["msg"], "handled request");
        assert_eq!(v["ts"].as_f64(), Some(1_795_986_600.0));
        assert_eq!(v["duration"].as_f64(), Some(0.001234));
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"], "connection refused");
        assert!(out.ends_with(b"\n") && !out[..out.len() - 1].contains(&b'\n'));
    }
}
