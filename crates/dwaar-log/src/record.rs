//! `RequestLog`: one request, built on the request path without allocating.
//!
//! Short strings are `CompactString` (inline up to 24 bytes), fixed vocabularies are
//! `&'static str`, and header values (`User-Agent`, `Referer`) are `HeaderValue`s shared
//! with the parsed request (a reference-count bump, no copy). Formatting (timestamps,
//! IP masking, query redaction) happens later, on the writer thread.

use compact_str::CompactString;
use dwaar_config::model::LogLevel;
use http::HeaderValue;
use std::net::{IpAddr, Ipv4Addr};

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// Start of the request, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub request_id: Option<uuid::Uuid>,
    pub method: CompactString,
    pub host: CompactString,
    pub path: CompactString,
    /// The query string without `?`; empty when there is none.
    pub query: CompactString,
    pub proto: &'static str,
    pub status: u16,
    pub duration_us: u64,
    /// From the upstream request being sent to its response headers arriving.
    pub upstream_duration_us: Option<u64>,
    pub upstream_addr: Option<CompactString>,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// The client after `trusted_proxies` (equal to `remote_ip` without proxies).
    pub client_ip: IpAddr,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// The connection's TLS handshake, on TLS connections.
    pub tls: Option<TlsLog>,
    /// The user `basic_auth` let in (empty otherwise).
    pub user_id: CompactString,
    /// The request's header fields as the client sent them (name, value), in order;
    /// filled only for formats that write them (JSON).
    pub headers: Vec<(CompactString, String)>,
    /// The response's header fields as sent; filled like `headers`.
    pub resp_headers: Vec<(CompactString, String)>,
    pub cache: Option<&'static str>,
    pub encoding: Option<&'static str>,
    /// Which middleware refused the request (`request_body`, `host`, `abort`, ...).
    pub rejected_by: Option<&'static str>,
    /// The User-Agent looked automated (crawler, scanner, script).
    pub is_bot: bool,
    /// Short upstream error text on 5xx.
    pub error: Option<CompactString>,
    /// Fields added by `log_append` (name, value), written after the others.
    pub extra: Vec<(CompactString, String)>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            ts_ms: 0,
            request_id: None,
            method: CompactString::const_new("GET"),
            host: CompactString::const_new(""),
            path: CompactString::const_new("/"),
            query: CompactString::const_new(""),
            proto: "HTTP/1.1",
            status: 0,
            duration_us: 0,
            upstream_duration_us: None,
            upstream_addr: None,
            remote_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            user_agent: None,
            referer: None,
            bytes_read: 0,
            bytes_written: 0,
            tls: None,
            user_id: CompactString::const_new(""),
            headers: Vec::new(),
            resp_headers: Vec::new(),
            cache: None,
            encoding: None,
            rejected_by: None,
            is_bot: false,
            error: None,
            extra: Vec::new(),
        }
    }
}

/// What a TLS connection's handshake settled, as Caddy's access log writes it.
#[derive(Debug, Clone, Default)]
pub struct TlsLog {
    pub resumed: bool,
    /// The protocol version's code point (`0x0304` for TLS 1.3).
    pub version: u16,
    /// The cipher suite's code point (`0x1301`...); 0 when unknown.
    pub cipher_suite: u16,
    /// The application protocol (ALPN), empty when none was agreed.
    pub proto: CompactString,
    pub server_name: CompactString,
}

impl RequestLog {
    /// Caddy's rule: server errors are logged at ERROR, everything else at INFO.
    pub fn level(&self) -> LogLevel {
        if self.status >= 500 {
            LogLevel::Error
        } else {
            LogLevel::Info
        }
    }
}

/// `HTTP/x` names for the protocol versions a front-end reports.
pub fn proto_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
