//! Runtime placeholders (`{host}`, `{http.request.header.X}`, `{re.name.1}` ...).
//!
//! A [`Template`] is a string with placeholders, parsed once at config load into
//! literal and [`Placeholder`] parts; the request path only walks the parts. Both
//! Caddy's long names (`http.request.uri.path`) and its shorthands (`{path}`) are
//! understood. A `{...}` that names no known placeholder is kept as literal text (as
//! Caddy does, so JSON bodies survive) and reported as a warning when it looks like a
//! misspelt placeholder.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One value known only while serving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Host,
    Hostport,
    Port,
    Method,
    Scheme,
    Proto,
    Uri,
    Path,
    PathSegment(usize),
    Dir,
    File,
    Query,
    QueryParam(String),
    OrigUri,
    OrigPath,
    /// `?query` of the original URI, or nothing when it had none.
    OrigPrefixedQuery,
    Remote,
    RemoteHost,
    RemotePort,
    ClientIp,
    /// A request header; the name is stored lowercase.
    Header(String),
    /// `{http.response.*}`: the response as it went out (status, body size, time,
    /// header fields), known once it was written: for `log_append`.
    ResponseStatus,
    ResponseSize,
    ResponseDuration,
    ResponseDurationMs,
    ResponseHeader(String),
    Cookie(String),
    HostLabel(usize),
    Var(String),
    Regex {
        name: String,
        index: usize,
    },
    UpstreamHostport,
    /// The status of the response being handled, in `handle_response`
    /// (`{rp.status_code}`, or `{resp.status_code}` under `intercept`).
    UpstreamStatus,
    /// A header of the response being handled, in `handle_response`; lowercase name.
    UpstreamHeader(String),
    ErrorStatusCode,
    ErrorStatusText,
    ErrorMessage,
    RequestId,
    /// A name no built-in placeholder has: a `map` output when one set it, else `{name}`.
    Named(String),
    /// `{env.NAME}`: the process environment, read when rendered (empty when unset).
    Env(String),
    /// `{system.*}`: facts about the machine.
    System(SystemFact),
    /// `{time.now*}`: the time of rendering, in one of Caddy's formats.
    Now(TimeFormat),
    /// `{file./path}`: the first MiB of a file, one trailing newline removed.
    FileContents(String),
    /// `{http.request.uri.path.file.base}` (`{file.base}`): the last path element
    /// without its extension.
    FileBase,
    /// `{http.request.uri.path.file.ext}` (`{file.ext}`): its extension, with the dot.
    FileExt,
    /// `{?query}`: `?` and the query, or nothing.
    PrefixedQuery,
    /// `{%path}`, `{%query}`, `{%uri}`: query-escaped forms.
    PathEscaped,
    QueryEscaped,
    UriEscaped,
    /// `{orig_method}`: the method before any rewrite.
    OrigMethod,
    /// `{orig_dir}`, `{orig_file}`, `{orig_query}`: parts of the original URI.
    OrigDir,
    OrigFile,
    OrigQuery,
    /// `{http.request.duration}` (Go's duration text) and `_ms` (milliseconds).
    Duration,
    DurationMs,
    /// `{http.request.local.port}`: the port the request came in on.
    LocalPort,
    /// `{http.request.local.host}`: the address it came in on; `.local`: both.
    LocalHost,
    Local,
    /// `{http.time_until_shutdown}`: while stopping, the time left.
    TimeUntilShutdown,
    /// `{http.reverse_proxy.retries}`: attempts after the first.
    Retries,
    /// `{http.shutting_down}`: `true` once the server started stopping.
    ShuttingDown,
    /// `{http.error.id}`: a short identifier of the error being handled.
    ErrorId,
    /// `{http.error.trace}`: the directive that raised the error being handled.
    ErrorTrace,
    /// `{http.request.body}`: the request's body (read before the site's routes run).
    RequestBody,
    /// `{http.reverse_proxy.upstream.*}`: the upstream of the latest attempt.
    Upstream(UpstreamFact),
    /// `{http.request.tls.*}` (`{tls_*}`): the connection's TLS handshake.
    Tls(TlsFact),
}

/// A `{http.request.tls.*}` fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFact {
    Version,
    CipherSuite,
    Resumed,
    Proto,
    ProtoMutual,
    ServerName,
    ClientFingerprint,
    ClientIssuer,
    ClientSubject,
    ClientSerial,
    ClientCertificatePem,
    ClientCertificateDerBase64,
    /// The client key's bytes (the certificate's public key bit string), in hex.
    ClientPublicKey,
    ClientPublicKeySha256,
    /// A subject alternative name list of the client certificate, or one entry of it.
    ClientSan(SanKind, Option<u16>),
    /// Encrypted ClientHello was accepted (never, in Dwaar).
    Ech,
}

/// The kinds of subject alternative names `{http.request.tls.client.san.*}` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    DnsNames,
    Emails,
    Ips,
    Uris,
}

/// A `{system.*}` fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemFact {
    Hostname,
    Os,
    Arch,
    Slash,
    Wd,
}

/// How `{time.now*}` renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// `2006-01-02 15:04:05.999999999 +0000 UTC`
    Default,
    /// `Mon, 02 Jan 2006 15:04:05 GMT`
    Http,
    /// `02/Jan/2006:15:04:05 +0000`
    CommonLog,
    Year,
    Unix,
    UnixMs,
}

/// A `{http.reverse_proxy.upstream.*}` fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFact {
    /// `tcp/host:port`, or the socket path.
    Address,
    Host,
    Port,
    /// Requests in flight to it now.
    Requests,
    /// Its `max_conns_per_host` (0: none).
    MaxRequests,
    /// From sending the request to the response head (Go's duration text, or ms).
    Latency,
    LatencyMs,
    /// Failures counted by passive health checks (within `fail_duration`).
    Fails,
    /// Since the latest attempt started (Go's duration text, or ms).
    Duration,
    DurationMs,
    /// Since the first attempt started: all of the proxying, retries included.
    ProxyDuration,
    ProxyDurationMs,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A string with placeholders, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
    /// `{...}` keys that looked like placeholders but are unknown (kept literally).
    unknown: Vec<String>,
}

impl Template {
    pub fn parse(raw: &str) -> Template {
        let mut parts = Vec::new();
        let mut unknown = Vec::new();
        let mut lit = String::new();
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let b = bytes[i];
            if b == b'\\' && matches!(bytes.get(i + 1), Some(b'{') | Some(b'}')) {
                lit.push(bytes[i + 1] as char);
                i += 2;
                continue;
            }
            if b == b'{' {
                if let Some(close) = raw[i + 1..].find('}') {
                    let key = &raw[i + 1..i + 1 + close];
                    if let Some(p) = lookup(key) {
                        if !lit.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut lit)));
                        }
                        parts.push(Part::Value(p));
                        i += close + 2;
                        continue;
                    }
                    if looks_like_placeholder(key) {
                        // Possibly a `map` destination: resolved at run time, or kept as text.
                        unknown.push(key.to_string());
                        if !lit.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut lit)));
                        }
                        parts.push(Part::Value(Placeholder::Named(key.to_string())));
                        i += close + 2;
                        continue;
                    }
                }
            }
            let ch_len = raw[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            lit.push_str(&raw[i..i + ch_len]);
            i += ch_len;
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Template {
            raw: raw.to_string(),
            parts,
            unknown,
        }
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The literal value when the template holds no placeholder.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether the template uses `{http.request.body}`.
    pub fn reads_body(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Value(Placeholder::RequestBody)))
    }

    pub fn unknown_keys(&self) -> &[String] {
        &self.unknown
    }

    pub fn has_placeholders(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Value(_)))
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Template::parse(&s))
    }
}

fn looks_like_placeholder(key: &str) -> bool {
    let body = key.strip_prefix(['?', '%']).unwrap_or(key);
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '?'))
        && body
            .chars()
            .next()
            .map(|c| c.is_ascii_alphabetic())
            .unwrap_or(false)
}

/// Maps a placeholder key (long or short form) to its [`Placeholder`].
pub fn lookup(key: &str) -> Option<Placeholder> {
    use Placeholder as P;
    let simple = match key {
        "host" | "http.request.host" => Some(P::Host),
        "hostport" | "http.request.hostport" => Some(P::Hostport),
        "port" | "http.request.port" => Some(P::Port),
        "method" | "http.request.method" => Some(P::Method),
        "scheme" | "http.request.scheme" => Some(P::Scheme),
        "http.request.proto" => Some(P::Proto),
        "uri" | "http.request.uri" => Some(P::Uri),
        "path" | "http.request.uri.path" => Some(P::Path),
        "dir" | "http.request.uri.path.dir" => Some(P::Dir),
        "file" | "http.request.uri.path.file" => Some(P::File),
        "query" | "http.request.uri.query" => Some(P::Query),
        "http.request.orig_uri" => Some(P::OrigUri),
        "http.request.orig_uri.path" => Some(P::OrigPath),
        "http.request.orig_uri.prefixed_query" => Some(P::OrigPrefixedQuery),
        "remote" | "http.request.remote" => Some(P::Remote),
        "remote_host" | "http.request.remote.host" => Some(P::RemoteHost),
        "remote_port" | "http.request.remote.port" => Some(P::RemotePort),
        "client_ip" | "http.vars.client_ip" => Some(P::ClientIp),
        "upstream_hostport" | "http.reverse_proxy.upstream.hostport" => Some(P::UpstreamHostport),
        "rp.status_code"
        | "http.reverse_proxy.status_code"
        | "resp.status_code"
        | "http.intercept.status_code" => Some(P::UpstreamStatus),
        "err.status_code" | "http.error.status_code" => Some(P::ErrorStatusCode),
        "err.status_text" | "http.error.status_text" => Some(P::ErrorStatusText),
        "err.message" | "http.error.message" => Some(P::ErrorMessage),
        "http.request.uuid" | "http.request.id" | "uuid" => Some(P::RequestId),
        "http.auth.user.id" => Some(P::Var("http.auth.user.id".into())),
        "system.hostname" => Some(P::System(SystemFact::Hostname)),
        "system.os" => Some(P::System(SystemFact::Os)),
        "system.arch" => Some(P::System(SystemFact::Arch)),
        "system.slash" => Some(P::System(SystemFact::Slash)),
        "system.wd" => Some(P::System(SystemFact::Wd)),
        "time.now" => Some(P::Now(TimeFormat::Default)),
        "time.now.http" => Some(P::Now(TimeFormat::Http)),
        "time.now.common_log" => Some(P::Now(TimeFormat::CommonLog)),
        "time.now.year" => Some(P::Now(TimeFormat::Year)),
        "time.now.unix" => Some(P::Now(TimeFormat::Unix)),
        "time.now.unix_ms" => Some(P::Now(TimeFormat::UnixMs)),
        "http.request.uri.path.file.base" | "file.base" => Some(P::FileBase),
        "http.request.uri.path.file.ext" | "file.ext" => Some(P::FileExt),
        "?query" | "http.request.uri.prefixed_query" => Some(P::PrefixedQuery),
        "%path" | "http.request.uri.path_escaped" => Some(P::PathEscaped),
        "%query" | "http.request.uri.query_escaped" => Some(P::QueryEscaped),
        "%uri" | "http.request.uri_escaped" => Some(P::UriEscaped),
        "orig_method" | "http.request.orig_method" => Some(P::OrigMethod),
        "orig_uri" => Some(P::OrigUri),
        "orig_path" => Some(P::OrigPath),
        "orig_dir" | "http.request.orig_uri.path.dir" => Some(P::OrigDir),
        "orig_file" | "http.request.orig_uri.path.file" => Some(P::OrigFile),
        "orig_query" | "http.request.orig_uri.query" => Some(P::OrigQuery),
        "orig_?query" => Some(P::OrigPrefixedQuery),
        "http.request.duration" => Some(P::Duration),
        "http.response.status" => Some(P::ResponseStatus),
        "http.response.size" => Some(P::ResponseSize),
        "http.response.duration" => Some(P::ResponseDuration),
        "http.response.duration_ms" => Some(P::ResponseDurationMs),
        "http.request.duration_ms" => Some(P::DurationMs),
        "http.request.local.port" => Some(P::LocalPort),
        "http.request.local.host" => Some(P::LocalHost),
        "http.request.local" => Some(P::Local),
        "http.time_until_shutdown" => Some(P::TimeUntilShutdown),
        "http.reverse_proxy.retries" => Some(P::Retries),
        "http.shutting_down" => Some(P::ShuttingDown),
        "http.request.body" => Some(P::RequestBody),
        "err.id" | "http.error.id" => Some(P::ErrorId),
        "err.trace" | "http.error.trace" => Some(P::ErrorTrace),
        "http.reverse_proxy.upstream.address" => Some(P::Upstream(UpstreamFact::Address)),
        "http.reverse_proxy.upstream.host" => Some(P::Upstream(UpstreamFact::Host)),
        "http.reverse_proxy.upstream.port" => Some(P::Upstream(UpstreamFact::Port)),
        "http.reverse_proxy.upstream.requests" => Some(P::Upstream(UpstreamFact::Requests)),
        "http.reverse_proxy.upstream.max_requests" => Some(P::Upstream(UpstreamFact::MaxRequests)),
        "http.reverse_proxy.upstream.latency" => Some(P::Upstream(UpstreamFact::Latency)),
        "http.reverse_proxy.upstream.latency_ms" => Some(P::Upstream(UpstreamFact::LatencyMs)),
        "http.reverse_proxy.upstream.fails" => Some(P::Upstream(UpstreamFact::Fails)),
        "http.reverse_proxy.upstream.duration" => Some(P::Upstream(UpstreamFact::Duration)),
        "http.reverse_proxy.upstream.duration_ms" => Some(P::Upstream(UpstreamFact::DurationMs)),
        "http.reverse_proxy.duration" => Some(P::Upstream(UpstreamFact::ProxyDuration)),
        "http.reverse_proxy.duration_ms" => Some(P::Upstream(UpstreamFact::ProxyDurationMs)),
        "tls_version" => Some(P::Tls(TlsFact::Version)),
        "tls_cipher" => Some(P::Tls(TlsFact::CipherSuite)),
        "tls_client_fingerprint" => Some(P::Tls(TlsFact::ClientFingerprint)),
        "tls_client_issuer" => Some(P::Tls(TlsFact::ClientIssuer)),
        "tls_client_subject" => Some(P::Tls(TlsFact::ClientSubject)),
        "tls_client_serial" => Some(P::Tls(TlsFact::ClientSerial)),
        "tls_client_certificate_pem" => Some(P::Tls(TlsFact::ClientCertificatePem)),
        "tls_client_certificate_der_base64" => Some(P::Tls(TlsFact::ClientCertificateDerBase64)),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    let prefixed = |prefixes: &[&str]| {
        prefixes
            .iter()
            .find_map(|p| key.strip_prefix(p))
            .filter(|rest| !rest.is_empty())
    };
    if let Some(fact) = prefixed(&["http.request.tls."]) {
        return Some(P::Tls(match fact.to_ascii_lowercase().as_str() {
            "version" => TlsFact::Version,
            "cipher_suite" => TlsFact::CipherSuite,
            "resumed" => TlsFact::Resumed,
            "proto" => TlsFact::Proto,
            "proto_mutual" => TlsFact::ProtoMutual,
            "server_name" => TlsFact::ServerName,
            "client.fingerprint" => TlsFact::ClientFingerprint,
            "client.issuer" => TlsFact::ClientIssuer,
            "client.subject" => TlsFact::ClientSubject,
            "client.serial" => TlsFact::ClientSerial,
            "client.certificate_pem" => TlsFact::ClientCertificatePem,
            "client.certificate_der_base64" => TlsFact::ClientCertificateDerBase64,
            "client.public_key" => TlsFact::ClientPublicKey,
            "client.public_key_sha256" => TlsFact::ClientPublicKeySha256,
            "ech" => TlsFact::Ech,
            other => {
                let san = other.strip_prefix("client.san.")?;
                let (kind, rest) = [
                    ("dns_names", SanKind::DnsNames),
                    ("emails", SanKind::Emails),
                    ("ips", SanKind::Ips),
                    ("uris", SanKind::Uris),
                ]
                .into_iter()
                .find_map(|(name, kind)| san.strip_prefix(name).map(|rest| (kind, rest)))?;
                let index = match rest {
                    "" => None,
                    r => Some(r.strip_prefix('.')?.parse::<u16>().ok()?),
                };
                TlsFact::ClientSan(kind, index)
            }
        }));
    }
    if let Some(name) = prefixed(&["env."]) {
        return Some(P::Env(name.to_string()));
    }
    // `{file.X}` with a plain name is Caddy's shorthand for a part of the path's file
    // (`base`, `ext` above); anything else, a path (`{file./etc/motd}`), is a file read.
    if let Some(path) = prefixed(&["file."]) {
        let shorthand = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        return (!shorthand).then(|| P::FileContents(path.to_string()));
    }
    if let Some(name) = prefixed(&["http.request.header.", "header."]) {
        return Some(P::Header(name.to_ascii_lowercase()));
    }
    if let Some(name) = prefixed(&["http.response.header."]) {
        return Some(P::ResponseHeader(name.to_ascii_lowercase()));
    }
    if let Some(name) = prefixed(&[
        "http.reverse_proxy.header.",
        "rp.header.",
        "http.intercept.header.",
        "resp.header.",
    ]) {
        return Some(P::UpstreamHeader(name.to_ascii_lowercase()));
    }
    if let Some(name) = prefixed(&["http.request.cookie.", "cookie."]) {
        return Some(P::Cookie(name.to_string()));
    }
    if let Some(name) = prefixed(&["http.request.uri.query.", "query."]) {
        return Some(P::QueryParam(name.to_string()));
    }
    if let Some(n) = prefixed(&["http.request.uri.path.", "path."]) {
        return n.parse().ok().map(P::PathSegment);
    }
    if let Some(n) = prefixed(&["http.request.host.labels.", "labels."]) {
        return n.parse().ok().map(P::HostLabel);
    }
    // What the `file` matcher and `try_files` found (`relative`, `absolute`, `type`,
    // `remainder`), kept as variables.
    if let Some(name) = prefixed(&["http.matchers.file.", "file_match."]) {
        return Some(P::Var(format!("file_match.{name}")));
    }
    if let Some(name) = prefixed(&["http.vars.", "vars."]) {
        return Some(P::Var(name.to_string()));
    }
    if let Some(rest) = prefixed(&["http.regexp.", "re."]) {
        let (name, idx) = rest.rsplit_once('.')?;
        let index = idx.parse().ok()?;
        return Some(P::Regex {
            name: name.to_string(),
            index,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let t = Template::parse("https://{host}{uri}?x={http.request.header.X-Id}");
        assert_eq!(
            t.parts(),
            &[
                Part::Literal("https://".into()),
                Part::Value(Placeholder::Host),
                Part::Value(Placeholder::Uri),
                Part::Literal("?x=".into()),
                Part::Value(Placeholder::Header("x-id".into())),
            ]
        );
    }

    #[test]
    fn json_and_escapes_stay_literal() {
        let t = Template::parse(r#"{"ok":true} \{host}"#);
        assert_eq!(t.as_literal(), Some(r#"{"ok":true} {host}"#));
        assert!(t.unknown_keys().is_empty());
    }

    #[test]
    fn caddy_shorthands_and_global_values() {
        for (key, want) in [
            ("?query", Placeholder::PrefixedQuery),
            ("%path", Placeholder::PathEscaped),
            ("orig_?query", Placeholder::OrigPrefixedQuery),
            ("file.base", Placeholder::FileBase),
            (
                "file./etc/motd",
                Placeholder::FileContents("/etc/motd".into()),
            ),
            (
                "file.notes.txt",
                Placeholder::FileContents("notes.txt".into()),
            ),
            ("env.HOME", Placeholder::Env("HOME".into())),
            ("uuid", Placeholder::RequestId),
            ("time.now.unix_ms", Placeholder::Now(TimeFormat::UnixMs)),
        ] {
            assert_eq!(lookup(key), Some(want), "{key}");
        }
        // A plain `{file.X}` is a path-part shorthand Caddy does not have: unknown.
        assert_eq!(lookup("file.secret"), None);
        let t = Template::parse("{%nope}{?bad}");
        assert_eq!(t.unknown_keys(), &["%nope".to_string(), "?bad".to_string()]);
    }

    #[test]
    fn regex_and_unknown() {
        let t = Template::parse("{re.api.1}{hots}");
        assert_eq!(
            t.parts()[0],
            Part::Value(Placeholder::Regex {
                name: "api".into(),
                index: 1
            })
        );
        assert_eq!(t.unknown_keys(), &["hots".to_string()]);
    }
}
