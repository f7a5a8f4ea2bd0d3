//! `RequestContext`: everything one request carries between pipeline phases.
//!
//! It is created empty by `new_ctx`, filled by the single route-table load in the first
//! phase (site, matched handler, rendered header edits, variables), and read by every
//! later phase. No later phase touches the `RouteStore` again: they use `table`.

use crate::route_table::{RouteTable, SiteRoutes};
use crate::upstream::{ProxyHandler, UpstreamState};
use compact_str::CompactString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// A response header edit, rendered for this request.
#[derive(Debug, Clone)]
pub enum HeaderEdit {
    Set(CompactString, String),
    Add(CompactString, String),
    Delete(CompactString),
    Default(CompactString, String),
    Replace {
        name: CompactString,
        re: Arc<regex::Regex>,
        with: String,
    },
}

/// Facts about the connection, supplied by the front-end.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local_port: u16,
    pub tls: bool,
    /// The TLS policy the connection was accepted under (0: none).
    pub tls_policy: u64,
    /// The address the connection was accepted on (`{http.request.local.host}`).
    pub local_ip: Option<IpAddr>,
    /// What the TLS handshake settled (`{tls_*}` placeholders), on TLS connections.
    pub tls_facts: Option<Arc<TlsFacts>>,
}

/// What a TLS (or QUIC) handshake settled, kept once per connection.
#[derive(Debug, Default)]
pub struct TlsFacts {
    /// `tls1.2`, `tls1.3` (as Caddy writes them).
    pub version: &'static str,
    /// The IANA name of the cipher suite (`TLS_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// The cipher suite's code point (`0x1301`); 0 when unknown.
    pub cipher_code: u16,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The application protocol agreed on (ALPN).
    pub alpn: Option<String>,
    /// The session was resumed (no full handshake).
    pub resumed: bool,
    /// The client's certificate (DER), when it sent one.
    pub client_cert: Option<Vec<u8>>,
}

impl TlsFacts {
    /// The facts of a finished rustls server handshake.
    pub fn of(conn: &rustls::ServerConnection) -> TlsFacts {
        TlsFacts {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "tls1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "tls1.2",
                _ => "",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or_default()
                .to_string(),
            cipher_code: conn
                .negotiated_cipher_suite()
                .map(|s| u16::from(s.suite()))
                .unwrap_or(0),
            server_name: conn.server_name().map(str::to_string),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
        }
    }
}

impl Default for ConnInfo {
    fn default() -> Self {
        ConnInfo {
            remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            local_port: 0,
            tls: false,
            tls_policy: 0,
            local_ip: None,
            tls_facts: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamFailure {
    #[default]
    None,
    Connect,
    Timeout,
    NoneAvailable,
}

/// A request's attempts at its upstreams (`crate::lifecycle::attempt`).
#[derive(Debug, Default)]
pub struct UpstreamAttempt {
    /// The upstream of the latest attempt (logs, passive health).
    pub upstream: Option<Arc<UpstreamState>>,
    /// Upstreams already tried (by [`crate::upstream::tried_id`]).
    pub tried: Vec<usize>,
    /// Attempts made.
    pub count: u32,
    /// The upstream this request is in flight to (released when dropped).
    pub claim: Option<crate::lifecycle::attempt::UpstreamClaim>,
    /// Why the last attempt failed, if it did.
    pub failure: UpstreamFailure,
    /// When the latest attempt started.
    pub started: Option<Instant>,
    /// When the first attempt started.
    pub first_started: Option<Instant>,
    /// When the upstream request head was handed to the connection.
    pub sent: Option<Instant>,
    /// From `sent` to the upstream response head.
    pub duration: Option<std::time::Duration>,
    /// Short upstream error text when proxying failed (access log).
    pub error: Option<CompactString>,
    /// The upstreams a `reverse_proxy {placeholder}` named for this request.
    pub rendered: Vec<Arc<UpstreamState>>,
}

/// The rate-limit zones (by address) a request was counted in: up to
/// [`ChargedZones::MAX`] kept inline (no allocation on the request path); a request
/// passing more zones than that is counted again in the extra ones if it reruns.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChargedZones {
    zones: [usize; ChargedZones::MAX],
    len: u8,
}

impl ChargedZones {
    pub const MAX: usize = 4;

    pub fn contains(&self, zone: usize) -> bool {
        self.zones[..self.len as usize].contains(&zone)
    }

    pub fn add(&mut self, zone: usize) {
        if (self.len as usize) < Self::MAX {
            self.zones[self.len as usize] = zone;
            self.len += 1;
        }
    }
}

/// What a request's response gets on its way out: header edits, the sticky-session
/// cookie, `encode`'s negotiation, analytics' page view, and the body's rewrite.
#[derive(Default)]
pub struct ResponseShaping {
    /// In `handle_response`: the status and header fields of the response being handled
    /// (`{rp.*}`, `{resp.*}`, `copy_response_headers`).
    pub upstream_answer: Option<(u16, Vec<(String, String)>)>,
    /// An `intercept` ran: its rules for the response the handlers after it write.
    pub intercept: Option<Arc<crate::response_rules::ResponseRules>>,
    /// Header edits applied before the response's own headers are merged.
    pub immediate: Vec<HeaderEdit>,
    /// Header edits applied to the final response.
    pub deferred: Vec<HeaderEdit>,
    /// The sticky-session cookie to set.
    pub set_cookie: Option<String>,
    /// `encode` ran: what the client accepts.
    pub encode: Option<crate::encode::Negotiated>,
    /// A GET to an analytics site: what its page view would record.
    pub page: Option<Box<crate::analytics::PageFacts>>,
    /// The response body is being rewritten (analytics injection, `encode`).
    pub rewrite: Option<Box<crate::rewrite::Rewrite>>,
}

/// Facts only the access log records.
#[derive(Debug, Default)]
pub struct LogFacts {
    /// `log_skip` matched: leave this request out of the access log.
    pub skip: bool,
    /// The middleware that refused the request.
    pub rejected_by: Option<&'static str>,
    /// `cache` answered from memory (the `cache` field).
    pub cache_served: Option<crate::cache::Status>,
    /// The coding `encode` compressed the response with.
    pub encoded: Option<&'static str>,
    /// What only some configurations use (boxed: the context lives in every
    /// connection's future, and most requests need none of it).
    pub extras: Option<Box<LogExtras>>,
}

/// The less common facts of a request's log record.
#[derive(Debug, Default)]
pub struct LogExtras {
    /// `log_append`: fields added to this request's record.
    pub appended: Vec<(CompactString, String)>,
    /// `log_append` fields whose values are taken when the record is written.
    pub late: Vec<(CompactString, dwaar_config::placeholder::Template)>,
    /// The response's status and body size, once it was written (`{http.response.*}`).
    pub response: std::sync::OnceLock<(u16, u64)>,
    /// `log_name`: the site's logs this request goes to (instead of those of its host).
    pub names: Option<Vec<String>>,
    /// The header fields a JSON access log writes; captured only when the site's log
    /// wants them.
    pub headers: Option<HeaderCapture>,
}

/// A request's and its response's header fields, for the access log.
#[derive(Debug, Default)]
pub struct HeaderCapture {
    /// The request's fields as the client sent them (before the routes' edits).
    pub request: Vec<(CompactString, String)>,
    /// The response's fields as they went to the client; set once, by the front-end
    /// that wrote the head.
    pub response: std::sync::OnceLock<Vec<(CompactString, String)>>,
}

impl LogFacts {
    /// Records the response's fields for the access log, when it wants them (`fields`
    /// is only called then).
    #[inline]
    pub fn capture_response(&self, fields: impl FnOnce() -> Vec<(CompactString, String)>) {
        if let Some(h) = self.extras.as_ref().and_then(|e| e.headers.as_ref()) {
            let _ = h.response.get_or_init(fields);
        }
    }

    /// The extras, made on first use.
    pub fn extras_mut(&mut self) -> &mut LogExtras {
        self.extras.get_or_insert_with(Box::default)
    }
}

/// Per-request state shared by all phases: the route (table, site, handler, variables),
/// the connection facts, the upstream [`attempt`](Self::attempt), what the response
/// gets on its way out (header edits, cache, encode, analytics page, rewrite) and the
/// facts the access log records. Pingora's own phases keep what only they need in
/// `proxy::PingoraCtx`.
#[derive(Default)]
pub struct RequestContext {
    /// The route table this request started with (the one `RouteStore` load).
    pub table: Option<Arc<RouteTable>>,
    pub site: Option<Arc<SiteRoutes>>,
    pub conn: ConnInfo,
    /// Request host, lowercase, without port.
    pub host: CompactString,
    pub client_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its X-Forwarded-* headers are kept).
    pub peer_trusted: bool,
    pub request_id: Option<uuid::Uuid>,
    /// Path and query before the first rewrite (`{http.request.orig_uri}`).
    pub orig_uri: Option<String>,
    /// The method before `method` changed it (`{http.request.orig_method}`).
    pub orig_method: Option<CompactString>,
    pub vars: Vec<(CompactString, String)>,
    pub captures: Vec<(CompactString, Vec<Option<String>>)>,
    /// Groups (by id) in which a route already ran.
    pub groups_done: u64,
    pub proxy: Option<Arc<ProxyHandler>>,
    /// The upstream attempts made for `proxy`.
    pub attempt: UpstreamAttempt,
    /// What the response gets on its way out.
    pub resp: ResponseShaping,
    /// Facts only the access log records.
    pub log: LogFacts,
    /// Rate-limit zones already charged for this request, so a rerun of the pipeline
    /// after an off-path check does not charge them again.
    pub charged: ChargedZones,
    pub max_body: Option<u64>,
    /// `request_body { set }`: the body sent upstream instead of the client's.
    pub body_set: Option<Box<bytes::Bytes>>,
    pub error: Option<(u16, String)>,
    /// What only some configurations use (boxed, so every request's context stays
    /// small).
    pub rare: Option<Box<RareState>>,
    pub close: bool,
    pub start: Option<Instant>,
    /// Counted in the worker's in-flight requests (for graceful shutdown) while held.
    pub inflight: Option<crate::lifecycle::inflight::Guard>,
    /// `cache` looked at the request: its key, lock and what to store.
    pub cache: Option<Box<crate::cache::CacheCtx>>,
}

/// A request's state for features few configurations use: `templates`, `tracing`,
/// `fs`, `{http.request.body}`, `{http.error.trace}`.
#[derive(Debug, Default)]
pub struct RareState {
    /// `templates` ran: responses of its types are rendered.
    pub templates: Option<Arc<crate::templates::TemplatesRule>>,
    /// The proxied response goes to a [`crate::templates::Holding`] client side.
    pub holding: bool,
    /// The request body, read for `{http.request.body}`.
    pub request_body: Option<bytes::Bytes>,
    /// `fs`: the directory of the file system file paths are read under.
    pub fs_root: Option<Arc<std::path::Path>>,
    /// `tracing`: the request's span.
    pub trace: Option<crate::otel::Span>,
    /// The directive that raised `error` (`{http.error.trace}`).
    pub error_by: &'static str,
}

impl RequestContext {
    /// The rare state, made on first use.
    pub fn rare_mut(&mut self) -> &mut RareState {
        self.rare.get_or_insert_with(Default::default)
    }

    /// `templates`' rule for this request.
    pub fn templates(&self) -> Option<&Arc<crate::templates::TemplatesRule>> {
        self.rare.as_ref()?.templates.as_ref()
    }

    /// The body read for `{http.request.body}`.
    pub fn request_body(&self) -> Option<&bytes::Bytes> {
        self.rare.as_ref()?.request_body.as_ref()
    }

    /// The request's span (`tracing`).
    pub fn trace(&self) -> Option<&crate::otel::Span> {
        self.rare.as_ref()?.trace.as_ref()
    }

    /// The directory of the file system `fs` selected.
    pub fn fs_root(&self) -> Option<&std::path::Path> {
        self.rare.as_ref()?.fs_root.as_deref()
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_var(&mut self, name: &str, value: String) {
        if let Some(slot) = self.vars.iter_mut().find(|(k, _)| k == name) {
            slot.1 = value;
        } else {
            self.vars.push((CompactString::new(name), value));
        }
    }

    pub fn capture(&self, name: &str, idx: usize) -> Option<&str> {
        self.captures
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.get(idx))
            .and_then(|v| v.as_deref())
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client_ip.unwrap_or(self.conn.remote.ip())
    }

    /// The client as a PROXY protocol header names it to an upstream: the client
    /// address, with the connection's port when that address is the connection's own.
    pub fn proxy_client(&self) -> std::net::SocketAddr {
        let ip = self.client_ip();
        let port = if ip == self.conn.remote.ip() {
            self.conn.remote.port()
        } else {
            0
        };
        std::net::SocketAddr::new(ip, port)
    }

    pub fn scheme(&self) -> &'static str {
        if self.conn.tls {
            "https"
        } else {
            "http"
        }
    }
}
