//! `encode`: response compression negotiated with the client.
//!
//! The `encode` handler only marks the request ([`choose`] runs the `Accept-Encoding`
//! negotiation of RFC 9110 §12.5.3 against the configured formats, in the order they
//! were written). When the response head is known, [`begin`] decides whether this
//! response may be compressed (type, status, size, no coding yet, no `no-transform`, not
//! a range or gRPC), adds `Vary: Accept-Encoding`, and edits the head; the body then
//! streams through a [`Rewrite`](crate::rewrite::Rewrite) encoder, flushed chunk by
//! chunk so server-sent events and long responses are not held back.

use crate::compress::Coding;
use crate::pipeline::ResponseHead;
use dwaar_config::model::{Encode, EncodeFormat};

/// The compiled `encode` directive.
#[derive(Debug)]
pub struct EncodeRule {
    /// (coding, level) in preference order.
    pub formats: Vec<(Coding, Option<u32>)>,
    pub minimum_length: u64,
    /// Content types (prefixes; a trailing `*` is a wildcard) that may be compressed.
    pub types: Vec<String>,
    /// Status codes or classes (`2xx`) that may be compressed; empty: any.
    pub statuses: Vec<String>,
}

/// Content types compressed when `match` names none (Caddy's list, plus a few).
pub const DEFAULT_TYPES: &[&str] = &[
    "application/atom+xml*",
    "application/eot*",
    "application/font*",
    "application/geo+json*",
    "application/graphql+json*",
    "application/javascript*",
    "application/json*",
    "application/ld+json*",
    "application/manifest+json*",
    "application/opentype*",
    "application/otf*",
    "application/rss+xml*",
    "application/truetype*",
    "application/ttf*",
    "application/vnd.api+json*",
    "application/vnd.ms-fontobject*",
    "application/wasm*",
    "application/x-httpd-cgi*",
    "application/x-javascript*",
    "application/x-opentype*",
    "application/x-otf*",
    "application/x-perl*",
    "application/x-protobuf*",
    "application/x-ttf*",
    "application/xhtml+xml*",
    "application/xml*",
    "font/*",
    "image/svg+xml*",
    "image/vnd.microsoft.icon*",
    "image/x-icon*",
    "multipart/bag*",
    "multipart/mixed*",
    "text/*",
];

impl EncodeRule {
    pub fn compile(e: &Encode) -> EncodeRule {
        let formats = e
            .formats
            .iter()
            .map(|f| {
                (
                    match f.format {
                        EncodeFormat::Gzip => Coding::Gzip,
                        EncodeFormat::Zstd => Coding::Zstd,
                        EncodeFormat::Br => Coding::Br,
                    },
                    f.level,
                )
            })
            .collect();
        let types = if e.match_types.is_empty() {
            DEFAULT_TYPES.iter().map(|t| t.to_string()).collect()
        } else {
            e.match_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect()
        };
        EncodeRule {
            formats,
            minimum_length: e.minimum_length,
            types,
            statuses: e.match_status.clone(),
        }
    }

    fn type_matches(&self, content_type: &str) -> bool {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => ct.starts_with(prefix),
            None => ct == *t,
        })
    }

    fn status_matches(&self, status: u16) -> bool {
        self.statuses.is_empty()
            || self.statuses.iter().any(|s| match s.strip_suffix("xx") {
                Some(class) => class.parse::<u16>().is_ok_and(|c| c == status / 100),
                None => s.parse::<u16>().is_ok_and(|c| c == status),
            })
    }
}

/// What `Accept-Encoding` says about a coding: its q-value (0 = refused).
fn quality(accept: &str, name: &str) -> Option<f32> {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if coding.eq_ignore_ascii_case(name) {
            return Some(q);
        }
        if coding == "*" {
            star = Some(q);
        }
    }
    star
}

fn coding_name(c: Coding) -> &'static str {
    match c {
        Coding::Gzip => "gzip",
        Coding::Deflate => "deflate",
        Coding::Br => "br",
        Coding::Zstd => "zstd",
    }
}

/// The coding to use for a client's `Accept-Encoding`: the first configured format the
/// client accepts (q > 0), the server's order winning over the client's q-values.
pub fn choose(rule: &EncodeRule, accept: Option<&str>) -> Option<(Coding, Option<u32>)> {
    let accept = accept?;
    rule.formats
        .iter()
        .find(|(c, _)| quality(accept, coding_name(*c)).is_some_and(|q| q > 0.0))
        .copied()
}

/// What the request settled for `encode`.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub rule: std::sync::Arc<EncodeRule>,
    /// `None`: the client accepts none of the formats (the response still varies).
    pub coding: Option<(Coding, Option<u32>)>,
    /// The request asked for a range (the answer is sent as it is).
    pub ranged: bool,
}

/// At the response head: whether to compress this response; edits the head when so
/// (Content-Encoding, no Content-Length, a weak ETag, Vary). Returns the encoder and
/// the coding's name.
pub fn begin(
    n: &Negotiated,
    status: u16,
    head: &mut dyn ResponseHead,
) -> Option<(crate::compress::Encoder, &'static str)> {
    let rule = &n.rule;
    if !(200..300).contains(&status) || status == 204 || status == 206 {
        return None;
    }
    if !rule.status_matches(status) {
        return None;
    }
    let ct = head.get("content-type").unwrap_or("").to_string();
    if ct.is_empty() || ct.starts_with("application/grpc") || !rule.type_matches(&ct) {
        return None;
    }
    if head
        .get("content-encoding")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"))
    {
        return None;
    }
    if head.get("cache-control").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
    }) {
        return None;
    }
    if head
        .get("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len < rule.minimum_length)
    {
        return None;
    }
    // From here the representation depends on Accept-Encoding.
    add_vary(head);
    if n.ranged {
        return None;
    }
    let (coding, level) = n.coding?;
    let enc = crate::compress::Encoder::with_level(coding, level).ok()?;
    head.set("content-encoding", coding_name(coding));
    head.remove("content-length");
    if let Some(etag) = head.get("etag").map(str::to_string) {
        if !etag.starts_with("W/") {
            head.set("etag", &format!("W/{etag}"));
        }
    }
    Some((enc, coding_name(coding)))
}

fn add_vary(head: &mut dyn ResponseHead) {
    match head.get("vary").map(str::to_string) {
        Some(v)
            if v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.eq_ignore_ascii_case("accept-encoding")
            }) => {}
        Some(v) if !v.trim().is_empty() => head.set("vary", &format!("{v}, Accept-Encoding")),
        _ => head.set("vary", "Accept-Encoding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(formats: &[Coding]) -> EncodeRule {
        EncodeRule {
            formats: formats.iter().map(|c| (*c, None)).collect(),
            minimum_length: 512,
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            statuses: Vec::new(),
        }
    }

    #[test]
    fn negotiation_matrix() {
        let r = rule(&[Coding::Zstd, Coding::Gzip]);
        let pick = |a: Option<&str>| choose(&r, a).map(|c| c.0);
        assert_eq!(pick(Some("gzip, deflate, br, zstd")), Some(Coding::Zstd));
        assert_eq!(pick(Some("gzip")), Some(Coding::Gzip));
        // Server order wins over client q-values, q=0 refuses.
        assert_eq!(pick(Some("gzip;q=1.0, zstd;q=0.1")), Some(Coding::Zstd));
        assert_eq!(pick(Some("zstd;q=0, gzip")), Some(Coding::Gzip));
        assert_eq!(pick(Some("zstd;q=0, gzip;q=0")), None);
        // `*` stands for anything not named.
        assert_eq!(pick(Some("*")), Some(Coding::Zstd));
        assert_eq!(pick(Some("zstd;q=0, *;q=0.5")), Some(Coding::Gzip));
        assert_eq!(pick(Some("*;q=0")), None);
        assert_eq!(pick(Some("identity")), None);
        assert_eq!(pick(Some("")), None);
        assert_eq!(pick(None), None);
        assert_eq!(pick(Some("br")), None);
    }

    fn head(fields: &[(&str, &str)]) -> Vec<(compact_str::CompactString, String)> {
        fields
            .iter()
            .map(|(k, v)| ((*k).into(), v.to_string()))
            .collect()
    }

    fn negotiated(accept: &str, ranged: bool) -> Negotiated {
        let r = std::sync::Arc::new(rule(&[Coding::Gzip]));
        Negotiated {
            coding: choose(&r, Some(accept)),
            rule: r,
            ranged,
        }
    }

    #[test]
    fn what_is_never_compressed() {
        let n = negotiated("gzip", false);
        let cases: &[(u16, &[(&str, &str)])] = &[
            (
                200,
                &[("content-type", "image/png"), ("content-length", "5000")],
            ),
            (
                200,
                &[("content-type", "text/html"), ("content-length", "100")],
            ),
            (
                200,
                &[("content-type", "text/html"), ("content-encoding", "br")],
            ),
            (
                200,
                &[
                    ("content-type", "text/html"),
                    ("cache-control", "no-transform"),
                ],
            ),
            (206, &[("content-type", "text/html")]),
            (304, &[("content-type", "text/html")]),
            (200, &[("content-type", "application/grpc")]),
            (200, &[]),
        ];
        for (status, fields) in cases {
            let mut h = head(fields);
            assert!(begin(&n, *status, &mut h).is_none(), "{status} {fields:?}");
            assert!(h.get("content-encoding") != Some("gzip"));
        }
    }

    #[test]
    fn head_edits_when_compressing() {
        let n = negotiated("gzip", false);
        let mut h = head(&[
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "5000"),
            ("etag", "\"abc\""),
            ("vary", "Origin"),
        ]);
        assert!(begin(&n, 200, &mut h).is_some());
        assert_eq!(h.get("content-encoding"), Some("gzip"));
        assert_eq!(h.get("content-length"), None);
        assert_eq!(h.get("etag"), Some("W/\"abc\""));
        assert_eq!(h.get("vary"), Some("Origin, Accept-Encoding"));
        // A client that accepts nothing still learns the answer varies.
        let n = negotiated("identity", false);
        let mut h = head(&[("content-type", "text/css")]);
        assert!(begin(&n, 200, &mut h).is_none());
        assert_eq!(h.get("vary"), Some("Accept-Encoding"));
        // A range request gets the bytes it asked for.
        let n = negotiated("gzip", true);
        let mut h = head(&[("content-type", "text/css")]);
        assert!(begin(&n, 200, &mut h).is_none());
    }
}
