//! Rendering config [`Template`]s against a request.

use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_config::placeholder::{Part, Placeholder, Template};
use std::borrow::Cow;
use std::fmt::Write as _;

/// Renders `t`; a template without placeholders is returned borrowed.
pub fn render<'t>(t: &'t Template, req: &dyn HttpRequest, ctx: &RequestContext) -> Cow<'t, str> {
    if let Some(lit) = t.as_literal() {
        return Cow::Borrowed(lit);
    }
    let mut out = String::with_capacity(t.raw().len() + 32);
    for p in t.parts() {
        match p {
            Part::Literal(s) => out.push_str(s),
            Part::Value(ph) => push_value(&mut out, ph, req, ctx),
        }
    }
    Cow::Owned(out)
}

/// The host part of a `Host` value as sent: no port, no IPv6 brackets.
fn host_as_sent(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    }
}

fn push_value(out: &mut String, ph: &Placeholder, req: &dyn HttpRequest, ctx: &RequestContext) {
    use Placeholder as P;
    match ph {
        // As the client wrote it (Caddy keeps its case), without the port.
        P::Host => out.push_str(req.header("host").map_or(&ctx.host, host_as_sent)),
        P::Hostport => {
            out.push_str(req.header("host").unwrap_or(&ctx.host));
        }
        P::Port => {
            let _ = write!(out, "{}", ctx.conn.local_port);
        }
        P::Method => out.push_str(req.method()),
        P::Scheme => out.push_str(ctx.scheme()),
        P::Proto => out.push_str(match req.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }),
        P::Uri => {
            out.push_str(req.path());
            if let Some(q) = req.query() {
                out.push('?');
                out.push_str(q);
            }
        }
        P::Path => out.push_str(req.path()),
        P::PathSegment(n) => {
            if let Some(seg) = req.path().split('/').filter(|s| !s.is_empty()).nth(*n) {
                out.push_str(seg);
            }
        }
        P::Dir => {
            let p = req.path();
            out.push_str(&p[..p.rfind('/').map(|i| i + 1).unwrap_or(0)]);
        }
        P::File => {
            let p = req.path();
            out.push_str(&p[p.rfind('/').map(|i| i + 1).unwrap_or(0)..]);
        }
        P::Query => out.push_str(req.query().unwrap_or("")),
        P::QueryParam(k) => {
            if let Some(v) = query_param(req.query().unwrap_or(""), k) {
                out.push_str(&v);
            }
        }
        P::OrigUri => match &ctx.orig_uri {
            Some(u) => out.push_str(u),
            None => push_value(out, &P::Uri, req, ctx),
        },
        P::OrigPath => match &ctx.orig_uri {
            Some(u) => out.push_str(u.split('?').next().unwrap_or("")),
            None => out.push_str(req.path()),
        },
        P::OrigPrefixedQuery => {
            let q = match &ctx.orig_uri {
                Some(u) => u.split_once('?').map(|(_, q)| q),
                None => req.query(),
            };
            if let Some(q) = q.filter(|q| !q.is_empty()) {
                out.push('?');
                out.push_str(q);
            }
        }
        P::Remote => {
            let _ = write!(out, "{}", ctx.conn.remote);
        }
        P::RemoteHost => {
            let _ = write!(out, "{}", ctx.conn.remote.ip());
        }
        P::RemotePort => {
            let _ = write!(out, "{}", ctx.conn.remote.port());
        }
        P::ClientIp => {
            let _ = write!(out, "{}", ctx.client_ip());
        }
        P::Header(name) => {
            let mut first = true;
            req.any_header_value(name, &mut |v| {
                if !first {
                    out.push(',');
                }
                out.push_str(v);
                first = false;
                false
            });
        }
        P::Cookie(name) => {
            req.any_header_value("cookie", &mut |v| {
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name {
                            out.push_str(val);
                            return true;
                        }
                    }
                }
                false
            });
        }
        P::HostLabel(n) => {
            // Labels count from the right, like Caddy: labels.0 is the TLD.
            if let Some(l) = ctx.host.rsplit('.').nth(*n) {
                out.push_str(l);
            }
        }
        P::Var(name) => {
            if let Some(v) = ctx.var(name) {
                out.push_str(v);
            }
        }
        P::Regex { name, index } => {
            if let Some(v) = ctx.capture(name, *index) {
                out.push_str(v);
            }
        }
        P::UpstreamStatus => {
            if let Some((s, _)) = &ctx.resp.upstream_answer {
                let _ = write!(out, "{s}");
            }
        }
        // Known once the response was written (`log_append`); empty before.
        P::ResponseStatus | P::ResponseSize => {
            if let Some((status, size)) = ctx.log.extras.as_ref().and_then(|e| e.response.get()) {
                let v = if matches!(ph, P::ResponseStatus) {
                    u64::from(*status)
                } else {
                    *size
                };
                let _ = write!(out, "{v}");
            }
        }
        P::ResponseDuration | P::ResponseDurationMs => {
            if ctx
                .log
                .extras
                .as_ref()
                .is_some_and(|e| e.response.get().is_some())
            {
                let since = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
                push_duration(out, since, matches!(ph, P::ResponseDurationMs));
            }
        }
        P::ResponseHeader(name) => {
            let fields = ctx
                .log
                .extras
                .as_ref()
                .and_then(|e| e.headers.as_ref())
                .and_then(|h| h.response.get());
            if let Some((_, v)) = fields
                .into_iter()
                .flatten()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                out.push_str(v);
            }
        }
        P::UpstreamHeader(name) => {
            if let Some((_, fields)) = &ctx.resp.upstream_answer {
                if let Some((_, v)) = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    out.push_str(v);
                }
            }
        }
        P::UpstreamHostport => {
            if let Some(u) = &ctx.attempt.upstream {
                out.push_str(&u.dial);
            }
        }
        P::ErrorStatusCode => {
            if let Some((s, _)) = &ctx.error {
                let _ = write!(out, "{s}");
            }
        }
        P::ErrorStatusText => {
            if let Some((s, _)) = &ctx.error {
                out.push_str(
                    http::StatusCode::from_u16(*s)
                        .ok()
                        .and_then(|c| c.canonical_reason())
                        .unwrap_or(""),
                );
            }
        }
        P::ErrorMessage => {
            if let Some((_, m)) = &ctx.error {
                out.push_str(m);
            }
        }
        P::Env(name) => {
            if let Ok(v) = std::env::var(name) {
                out.push_str(&v);
            }
        }
        P::System(fact) => push_system(out, *fact),
        P::Now(format) => push_now(out, *format),
        P::FileContents(path) => out.push_str(&file_contents(path)),
        // Go's `path.Base` without `path.Ext`, and `path.Ext`, as Caddy computes them.
        P::FileBase | P::FileExt => {
            let p = req.path();
            let last = &p[p.rfind('/').map(|i| i + 1).unwrap_or(0)..];
            let ext = last.rfind('.').map_or("", |i| &last[i..]);
            if *ph == P::FileExt {
                out.push_str(ext);
            } else {
                let trimmed = p.trim_end_matches('/');
                let base = match trimmed.rfind('/') {
                    _ if trimmed.is_empty() => "/",
                    Some(i) => &trimmed[i + 1..],
                    None => trimmed,
                };
                out.push_str(base.strip_suffix(ext).unwrap_or(base));
            }
        }
        P::PrefixedQuery => {
            if let Some(q) = req.query().filter(|q| !q.is_empty()) {
                out.push('?');
                out.push_str(q);
            }
        }
        // Of the decoded path, as Caddy escapes `r.URL.Path`.
        P::PathEscaped => query_escape(out, &percent_decode(req.path())),
        P::QueryEscaped => query_escape(out, req.query().unwrap_or("")),
        P::UriEscaped => {
            let mut uri = String::new();
            push_value(&mut uri, &P::Uri, req, ctx);
            query_escape(out, &uri);
        }
        P::OrigMethod => out.push_str(ctx.orig_method.as_deref().unwrap_or(req.method())),
        P::OrigDir | P::OrigFile | P::OrigQuery => {
            let (path, query) = match &ctx.orig_uri {
                Some(u) => u.split_once('?').unwrap_or((u, "")),
                None => (req.path(), req.query().unwrap_or("")),
            };
            let cut = path.rfind('/').map(|i| i + 1).unwrap_or(0);
            out.push_str(match ph {
                P::OrigDir => &path[..cut],
                P::OrigFile => &path[cut..],
                _ => query,
            });
        }
        P::Duration | P::DurationMs => {
            let d = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
            push_duration(out, d, *ph == P::DurationMs);
        }
        P::LocalPort => {
            let _ = write!(out, "{}", ctx.conn.local_port);
        }
        P::LocalHost | P::Local => {
            if let Some(ip) = ctx.conn.local_ip {
                let ip = crate::net::canonical(ip);
                let _ = match (ph, ip) {
                    (P::LocalHost, _) => write!(out, "{ip}"),
                    (_, std::net::IpAddr::V6(v6)) => write!(out, "[{v6}]:{}", ctx.conn.local_port),
                    (_, v4) => write!(out, "{v4}:{}", ctx.conn.local_port),
                };
            }
        }
        P::TimeUntilShutdown => {
            if let Some(left) = crate::lifecycle::inflight::time_until_shutdown() {
                push_duration(out, left, false);
            }
        }
        P::Retries => {
            let _ = write!(out, "{}", ctx.attempt.count.saturating_sub(1));
        }
        P::ShuttingDown => out.push_str(if crate::lifecycle::inflight::draining() {
            "true"
        } else {
            "false"
        }),
        P::RequestBody => {
            if let Some(b) = ctx.request_body() {
                out.push_str(&String::from_utf8_lossy(b));
            }
        }
        P::ErrorTrace => {
            if ctx.error.is_some() {
                out.push_str(ctx.rare.as_ref().map_or("", |r| r.error_by));
            }
        }
        P::ErrorId => {
            if ctx.error.is_some() {
                push_error_id(out, ctx);
            }
        }
        P::Upstream(fact) => {
            if let Some(u) = &ctx.attempt.upstream {
                push_upstream(out, *fact, u, ctx);
            }
        }
        P::Tls(fact) => {
            if let Some(facts) = &ctx.conn.tls_facts {
                push_tls(out, *fact, facts);
            }
        }
        P::Named(name) => match ctx.var(name) {
            Some(v) => out.push_str(v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        },
        P::RequestId => {
            if let Some(id) = &ctx.request_id {
                let mut buf = [0u8; 36];
                out.push_str(id.hyphenated().encode_lower(&mut buf));
            }
        }
    }
}

/// The first value of query parameter `key`, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v).into_owned())
    })
}

/// Decodes `%XX` escapes (and `+` is left alone); invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

// Go's `url.QueryEscape` (the template engine's, so `{%path}` and `urlquery` agree).
use dwaar_gotmpl::query_escape_into as query_escape;

fn push_system(out: &mut String, fact: dwaar_config::placeholder::SystemFact) {
    use dwaar_config::placeholder::SystemFact as F;
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match fact {
        F::Hostname => out.push_str(HOSTNAME.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        })),
        F::Os => out.push_str(std::env::consts::OS),
        // Go's names, as Caddy reports them.
        F::Arch => out.push_str(match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        }),
        F::Slash => out.push(std::path::MAIN_SEPARATOR),
        F::Wd => {
            if let Ok(d) = std::env::current_dir() {
                out.push_str(&d.to_string_lossy());
            }
        }
    }
}

/// The time of rendering in a `{time.now*}` format (UTC).
fn push_now(out: &mut String, format: dwaar_config::placeholder::TimeFormat) {
    use dwaar_config::placeholder::TimeFormat as F;
    let now = std::time::SystemTime::now();
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = dwaar_log::encode::civil_date(secs);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let _ = match format {
        F::Default => write!(
            out,
            "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}.{:09} +0000 UTC",
            since.subsec_nanos()
        ),
        F::Http => write!(out, "{}", httpdate::fmt_http_date(now)),
        F::CommonLog => write!(out, "{}", dwaar_log::encode::common_log_time(secs)),
        F::Year => write!(out, "{y}"),
        F::Unix => write!(out, "{secs}"),
        F::UnixMs => write!(out, "{}", since.as_millis()),
    };
}

/// A duration as Go prints one (`1.5ms`, `2m3.5s`), or as decimal milliseconds.
fn push_duration(out: &mut String, d: std::time::Duration, ms: bool) {
    if ms {
        let _ = write!(out, "{}", d.as_nanos() as f64 / 1e6);
        return;
    }
    let n = d.as_nanos();
    let trim = |v: f64| {
        let s = format!("{v:.9}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let _ = match n {
        0 => write!(out, "0s"),
        1..=999 => write!(out, "{n}ns"),
        1_000..=999_999 => write!(out, "{}µs", trim(n as f64 / 1e3)),
        1_000_000..=999_999_999 => write!(out, "{}ms", trim(n as f64 / 1e6)),
        _ => {
            let secs = d.as_secs();
            let frac = trim(f64::from(d.subsec_nanos()) / 1e9);
            let frac = frac.trim_start_matches('0');
            let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
            if h > 0 {
                write!(out, "{h}h{m}m{s}{frac}s")
            } else if m > 0 {
                write!(out, "{m}m{s}{frac}s")
            } else {
                write!(out, "{s}{frac}s")
            }
        }
    };
}

/// Nine characters naming the error being handled, from Caddy's alphabet (no `l`, `o`),
/// derived from the request's id so every placeholder and log line agrees on it.
fn push_error_id(out: &mut String, ctx: &RequestContext) {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz0123456789";
    let mut bits = ctx.request_id.map_or(0, |id| id.as_u128());
    for _ in 0..9 {
        out.push(ALPHABET[(bits % ALPHABET.len() as u128) as usize] as char);
        bits /= ALPHABET.len() as u128;
    }
}

fn push_upstream(
    out: &mut String,
    fact: dwaar_config::placeholder::UpstreamFact,
    u: &crate::upstream::UpstreamState,
    ctx: &RequestContext,
) {
    use dwaar_config::placeholder::UpstreamFact as F;
    let (host, port) = match u.dial.rsplit_once(':') {
        Some((h, p)) if !u.unix => (h.trim_matches(['[', ']']), p),
        _ => (u.dial.as_str(), ""),
    };
    let _ = match fact {
        F::Address if u.unix => write!(out, "{}", u.dial),
        F::Address => write!(out, "tcp/{}", u.dial),
        F::Host => write!(out, "{host}"),
        F::Port => write!(out, "{port}"),
        F::Requests => write!(
            out,
            "{}",
            u.active.load(std::sync::atomic::Ordering::Relaxed)
        ),
        F::MaxRequests => write!(
            out,
            "{}",
            ctx.proxy
                .as_ref()
                .and_then(|p| p.transport.max_conns)
                .unwrap_or(0)
        ),
        F::Latency | F::LatencyMs => {
            push_duration(
                out,
                ctx.attempt.duration.unwrap_or_default(),
                fact == F::LatencyMs,
            );
            Ok(())
        }
        F::Duration | F::DurationMs => {
            let since = ctx.attempt.started.map(|s| s.elapsed()).unwrap_or_default();
            push_duration(out, since, fact == F::DurationMs);
            Ok(())
        }
        F::ProxyDuration | F::ProxyDurationMs => {
            let since = ctx
                .attempt
                .first_started
                .map(|s| s.elapsed())
                .unwrap_or_default();
            push_duration(out, since, fact == F::ProxyDurationMs);
            Ok(())
        }
        F::Fails => {
            let window = ctx
                .proxy
                .as_ref()
                .and_then(|p| p.passive.as_ref())
                .map_or(0, |p| p.fail_duration_ms);
            write!(out, "{}", u.recent_failures(window))
        }
    };
}

/// A `{http.request.tls.*}` fact of the connection, formatted as Caddy does (client
/// facts are empty without a client certificate).
fn push_tls(
    out: &mut String,
    fact: dwaar_config::placeholder::TlsFact,
    t: &crate::context::TlsFacts,
) {
    use dwaar_config::placeholder::TlsFact as F;
    match fact {
        F::Version => out.push_str(t.version),
        // rustls names the TLS 1.3 suites `TLS13_...`; Go (and Caddy) `TLS_...`.
        F::CipherSuite => match t.cipher.strip_prefix("TLS13_") {
            Some(rest) => {
                out.push_str("TLS_");
                out.push_str(rest);
            }
            None => out.push_str(&t.cipher),
        },
        F::Resumed => out.push_str(if t.resumed { "true" } else { "false" }),
        F::Proto => out.push_str(t.alpn.as_deref().unwrap_or("")),
        F::ProtoMutual => out.push_str("true"),
        F::ServerName => out.push_str(t.server_name.as_deref().unwrap_or("")),
        // Dwaar does not accept Encrypted ClientHello.
        F::Ech => out.push_str("false"),
        _ => {
            if let Some(der) = &t.client_cert {
                push_client_cert(out, fact, der);
            }
        }
    }
}

fn push_client_cert(out: &mut String, fact: dwaar_config::placeholder::TlsFact, der: &[u8]) {
    use dwaar_config::placeholder::TlsFact as F;
    match fact {
        F::ClientFingerprint => {
            for b in ring::digest::digest(&ring::digest::SHA256, der).as_ref() {
                let _ = write!(out, "{b:02x}");
            }
        }
        F::ClientCertificateDerBase64 => {
            out.push_str(&dwaar_analytics::script::base64(der));
        }
        F::ClientCertificatePem => {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = dwaar_analytics::script::base64(der);
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        _ => {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                return;
            };
            match fact {
                F::ClientSerial => {
                    let _ = write!(out, "{}", cert.tbs_certificate.serial);
                }
                F::ClientSubject => push_name(out, cert.subject()),
                F::ClientIssuer => push_name(out, cert.issuer()),
                // The key's own bytes, as Caddy gives them: PKCS#1 for RSA, the point
                // for EC keys, the 32 bytes of an Ed25519 key.
                F::ClientPublicKey | F::ClientPublicKeySha256 => {
                    let key = &cert.public_key().subject_public_key.data;
                    let hex = |out: &mut String, bytes: &[u8]| {
                        for b in bytes {
                            let _ = write!(out, "{b:02x}");
                        }
                    };
                    if fact == F::ClientPublicKey {
                        hex(out, key);
                    } else {
                        hex(
                            out,
                            ring::digest::digest(&ring::digest::SHA256, key).as_ref(),
                        );
                    }
                }
                F::ClientSan(kind, index) => push_san(out, &cert, kind, index),
                _ => {}
            }
        }
    }
}

/// A subject alternative name list as Caddy (Go) writes it (`[a b]`), or one entry.
fn push_san(
    out: &mut String,
    cert: &x509_parser::certificate::X509Certificate<'_>,
    kind: dwaar_config::placeholder::SanKind,
    index: Option<u16>,
) {
    use dwaar_config::placeholder::SanKind;
    use x509_parser::extensions::GeneralName;
    let names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match (kind, n) {
                (SanKind::DnsNames, GeneralName::DNSName(d)) => Some(d.to_string()),
                (SanKind::Emails, GeneralName::RFC822Name(e)) => Some(e.to_string()),
                (SanKind::Uris, GeneralName::URI(u)) => Some(u.to_string()),
                (SanKind::Ips, GeneralName::IPAddress(b)) => match b.len() {
                    4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        Some(std::net::Ipv6Addr::from(a).to_string())
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match index {
        Some(i) => out.push_str(names.get(usize::from(i)).map_or("", String::as_str)),
        None => {
            out.push('[');
            out.push_str(&names.join(" "));
            out.push(']');
        }
    }
}

/// A distinguished name as Go's `pkix.Name.String` writes it (RFC 2253: the last RDN
/// first, `,` between RDNs, `+` within one, special characters escaped).
fn push_name(out: &mut String, name: &x509_parser::x509::X509Name<'_>) {
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.9" => "STREET",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.17" => "POSTALCODE",
                "2.5.4.5" => "SERIALNUMBER",
                _ => oid.as_str(),
            };
            out.push_str(short);
            out.push('=');
            let value = attr.as_str().unwrap_or_default();
            let last = value.chars().count().saturating_sub(1);
            for (k, c) in value.chars().enumerate() {
                let escape = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                    || (k == 0 && matches!(c, ' ' | '#'))
                    || (k == last && c == ' ');
                if escape {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
}

/// How long a `{file.*}` read is reused: the file is read at most once a second per
/// path, not on every request.
const FILE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// The most bytes a `{file.*}` placeholder takes from its file (as Caddy).
const FILE_MAX: u64 = 1 << 20;

/// The first MiB of the file at `path` with one trailing newline (`\n`, then `\r`)
/// removed; empty when it cannot be read (logged).
fn file_contents(path: &str) -> std::sync::Arc<str> {
    use std::collections::HashMap;
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    type Cache = Mutex<HashMap<String, (std::time::Instant, Arc<str>)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.lock() {
        if let Some((at, v)) = c.get(path) {
            if at.elapsed() < FILE_FRESH {
                return v.clone();
            }
        }
    }
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(FILE_MAX).read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        tracing::warn!(path, "placeholder: cannot read the file: {e}");
    }
    if text.ends_with('\n') {
        text.pop();
    }
    if text.ends_with('\r') {
        text.pop();
    }
    let v: Arc<str> = text.into();
    if let Ok(mut c) = cache.lock() {
        if c.len() > 256 {
            c.clear();
        }
        c.insert(path.to_string(), (std::time::Instant::now(), v.clone()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn duration(d: Duration) -> String {
        let mut s = String::new();
        push_duration(&mut s, d, false);
        s
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(duration(Duration::from_millis(2_500)), "2.5s");
        assert_eq!(duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(duration(Duration::from_millis(3_723_500)), "1h2m3.5s");
        let mut ms = String::new();
        push_duration(&mut ms, Duration::from_micros(1_250), true);
        assert_eq!(ms, "1.25");
    }

    #[test]
    fn base64_round_trips() {
        use dwaar_analytics::script::base64;
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = base64(s.as_bytes());
            assert_eq!(
                dwaar_config::units::base64_decode(&e).as_deref(),
                Some(s.as_bytes()),
                "{e}"
            );
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
    }

    #[test]
    fn query_escape_matches_go() {
        let mut s = String::new();
        query_escape(&mut s, "/a b/c~d.e_f-g?h=i&j");
        assert_eq!(s, "%2Fa+b%2Fc~d.e_f-g%3Fh%3Di%26j");
    }
}
