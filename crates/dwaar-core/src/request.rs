//! The protocol-neutral view of a request head that the pipeline reads and edits.
//!
//! Every front-end (Pingora's H1/H2 proxy, the HTTP/2 and HTTP/3 stream front-ends, the
//! lean H1 path) implements [`HttpRequest`] for its own request type, so routing,
//! matchers and middleware are written once. Header names are ASCII case-insensitive everywhere.

use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

pub trait HttpRequest {
    fn method(&self) -> &str;
    /// The path as sent (percent-encoded), without the query.
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    fn version(&self) -> http::Version;
    /// The first value of a header, if present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;
    /// Calls `f` for each value of `name`; stops when `f` returns true. Returns whether it stopped.
    fn any_header_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool;
    fn header_count(&self, name: &str) -> usize;
    /// Every header name once, in order of first appearance (CGI variables, logs).
    fn header_names(&self) -> Vec<String>;
    /// Size of the header fields in bytes, as received where the front-end kept the
    /// head (HTTP/1), else names + values + 4 per field; `max_header_size` bounds it.
    fn header_bytes(&self) -> usize;
    fn set_header(&mut self, name: &str, value: &str);
    /// [`set_header`](Self::set_header) for a field Dwaar itself adds (`x-forwarded-for`
    /// and the like): `name` is a lowercase constant, so a request type can use it as it
    /// is instead of parsing and copying it per request.
    fn set_own_header(&mut self, name: &'static str, value: &str) {
        self.set_header(name, value);
    }
    fn append_header(&mut self, name: &str, value: &str);
    fn remove_header(&mut self, name: &str);
    /// Replaces path and query; returns false when the result is not a valid URI.
    fn set_path_query(&mut self, path: &str, query: Option<&str>) -> bool;
    /// Changes the method (`method` directive); `false` when it is not a valid one.
    fn set_method(&mut self, method: &str) -> bool;
}

/// Headers that describe one connection, never forwarded to another hop.
pub fn hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// `path?query` (or just the path) as one string.
pub fn join_path_query(path: &str, query: Option<&str>) -> String {
    let mut s = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

/// Strips CR, LF and NUL so interpolated values can never split a header.
pub fn sanitize_header_value(v: &str) -> std::borrow::Cow<'_, str> {
    if memchr::memchr3(b'\r', b'\n', 0, v.as_bytes()).is_some() {
        std::borrow::Cow::Owned(
            v.chars()
                .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(v)
    }
}

/// A field value from text, with CR, LF and NUL stripped ([`sanitize_header_value`]):
/// checked once when the text is clean (the common case), and cleaned and checked
/// again only when it is not.
fn field_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v)
        .ok()
        .or_else(|| HeaderValue::from_str(&sanitize_header_value(v)).ok())
}

impl HttpRequest for RequestHeader {
    fn set_method(&mut self, method: &str) -> bool {
        match http::Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                self.set_method(m);
                true
            }
            Err(_) => false,
        }
    }
    fn header_names(&self) -> Vec<String> {
        self.headers
            .keys()
            .map(|k| k.as_str().to_string())
            .collect()
    }
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    fn version(&self) -> http::Version {
        self.version
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn any_header_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(f)
    }
    fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
    fn header_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum()
    }
    fn set_header(&mut self, name: &str, value: &str) {
        if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), field_value(value)) {
            let _ = self.insert_header(n, v);
        }
    }
    fn set_own_header(&mut self, name: &'static str, value: &str) {
        // Pingora parses the name once from the static text (a `HeaderName` would be
        // turned back into text and parsed again).
        debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        if let Some(v) = field_value(value) {
            let _ = self.insert_header(name, v);
        }
    }
    fn append_header(&mut self, name: &str, value: &str) {
        if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), field_value(value)) {
            let _ = RequestHeader::append_header(self, n, v);
        }
    }
    fn remove_header(&mut self, name: &str) {
        let _ = RequestHeader::remove_header(self, name);
    }
    fn set_path_query(&mut self, path: &str, query: Option<&str>) -> bool {
        match http::Uri::try_from(join_path_query(path, query)) {
            Ok(u) => {
                self.set_uri(u);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hop-by-hop field is recognised in any case; fields of the same lengths that
    /// are end-to-end are not.
    #[test]
    fn hop_by_hop_fields_in_any_case() {
        for name in [
            "te",
            "TE",
            "Trailer",
            "upgrade",
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TRANSFER-ENCODING",
        ] {
            assert!(hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "",
            "t",
            "tf",
            "referer",
            "content-md5",
            "set-cookie",
            "content-language",
            "content-encodings",
            "x-forwarded-for",
        ] {
            assert!(!hop_by_hop(name.as_bytes()), "{name}");
        }
    }
}
