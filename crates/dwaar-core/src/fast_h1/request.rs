//! `FastRequest`: a request head parsed in place from the connection's read buffer.
//!
//! Names and values stay byte ranges into the frozen head (`Bytes`) until the pipeline
//! edits them; only edited fields own their text. It implements [`HttpRequest`], so the
//! protocol-neutral pipeline runs on it unchanged.

use crate::request::{sanitize_header_value, HttpRequest};
use bytes::Bytes;
use compact_str::CompactString;

/// A piece of text: a range of the head, or owned after an edit (inline up to 24
/// bytes, so the usual edits such as `x-forwarded-for: 203.0.113.9` allocate nothing).
#[derive(Debug, Clone)]
pub enum Text {
    Raw(u32, u32),
    Owned(CompactString),
}

impl Text {
    pub fn get<'a>(&'a self, head: &'a [u8]) -> &'a [u8] {
        match self {
            Text::Raw(a, b) => &head[*a as usize..*b as usize],
            Text::Owned(s) => s.as_bytes(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub name: Text,
    pub value: Text,
}

/// One parsed request head.
#[derive(Debug, Clone)]
pub struct FastRequest {
    pub head: Bytes,
    pub method: Text,
    pub path: Text,
    pub query: Option<Text>,
    pub version: http::Version,
    pub headers: Vec<Header>,
}

fn range(head: &[u8], part: &[u8]) -> Text {
    let start = part.as_ptr() as usize - head.as_ptr() as usize;
    Text::Raw(start as u32, (start + part.len()) as u32)
}

impl FastRequest {
    /// Adds a field whose name is valid; the value loses any CR, LF and NUL.
    fn push_field(&mut self, name: CompactString, value: &str) {
        self.headers.push(Header {
            name: Text::Owned(name),
            value: Text::Owned(CompactString::new(sanitize_header_value(value))),
        });
    }

    /// Builds the request from `httparse`'s view of `head` (all slices point into it).
    pub fn from_parsed(head: Bytes, req: &httparse::Request<'_, '_>) -> Option<FastRequest> {
        let h = &head[..];
        let method = range(h, req.method?.as_bytes());
        let target = req.path?.as_bytes();
        let (path, query) = match target.iter().position(|b| *b == b'?') {
            Some(i) => (range(h, &target[..i]), Some(range(h, &target[i + 1..]))),
            None => (range(h, target), None),
        };
        let version = match req.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        };
        // Room for the forwarding fields the proxy adds, so they do not reallocate.
        let mut headers = Vec::with_capacity(req.headers.len() + 4);
        headers.extend(req.headers.iter().map(|x| Header {
            name: range(h, x.name.as_bytes()),
            value: range(h, x.value),
        }));
        Some(FastRequest {
            head,
            method,
            path,
            query,
            version,
            headers,
        })
    }

    fn str_of<'a>(&'a self, t: &'a Text) -> &'a str {
        std::str::from_utf8(t.get(&self.head)).unwrap_or("")
    }

    pub fn name_bytes<'a>(&'a self, h: &'a Header) -> &'a [u8] {
        h.name.get(&self.head)
    }

    pub fn value_bytes<'a>(&'a self, h: &'a Header) -> &'a [u8] {
        h.value.get(&self.head)
    }

    /// The raw value of the first header called `name`.
    pub fn header_bytes_of(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| self.name_bytes(h).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| self.value_bytes(h))
    }

    /// The value of a header as a shared `HeaderValue` (no copy for unedited headers).
    pub fn header_value(&self, name: &str) -> Option<http::HeaderValue> {
        let h = self
            .headers
            .iter()
            .find(|h| self.name_bytes(h).eq_ignore_ascii_case(name.as_bytes()))?;
        match &h.value {
            Text::Raw(a, b) => {
                http::HeaderValue::from_maybe_shared(self.head.slice(*a as usize..*b as usize)).ok()
            }
            Text::Owned(s) => http::HeaderValue::from_str(s).ok(),
        }
    }
}

impl HttpRequest for FastRequest {
    fn header_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in &self.headers {
            let n = String::from_utf8_lossy(self.name_bytes(h)).to_ascii_lowercase();
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
    fn method(&self) -> &str {
        self.str_of(&self.method)
    }
    fn path(&self) -> &str {
        self.str_of(&self.path)
    }
    fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|q| self.str_of(q))
    }
    fn version(&self) -> http::Version {
        self.version
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes_of(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    fn any_header_value(&self, name: &str, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.headers
            .iter()
            .filter(|h| self.name_bytes(h).eq_ignore_ascii_case(name.as_bytes()))
            .filter_map(|h| std::str::from_utf8(self.value_bytes(h)).ok())
            .any(f)
    }
    fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| self.name_bytes(h).eq_ignore_ascii_case(name.as_bytes()))
            .count()
    }
    /// The field lines as received (the head after the request line, without the
    /// blank line that ends it): no walk over the fields.
    fn header_bytes(&self) -> usize {
        let after_line = self
            .head
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.head.len(), |i| i + 1);
        self.head.len().saturating_sub(after_line + 2)
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.append_header(name, value);
    }
    fn append_header(&mut self, name: &str, value: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
            self.push_field(CompactString::new(name), value);
        }
    }
    fn set_own_header(&mut self, name: &'static str, value: &str) {
        // A constant, valid name: kept by reference, not checked or copied.
        self.remove_header(name);
        self.push_field(CompactString::const_new(name), value);
    }
    fn remove_header(&mut self, name: &str) {
        let head = &self.head;
        self.headers
            .retain(|h| !h.name.get(head).eq_ignore_ascii_case(name.as_bytes()));
    }
    fn set_method(&mut self, method: &str) -> bool {
        self.method = Text::Owned(CompactString::new(method));
        true
    }
    fn set_path_query(&mut self, path: &str, query: Option<&str>) -> bool {
        // The same validity rule as the Pingora front-end: it must form a URI.
        if http::Uri::try_from(crate::request::join_path_query(path, query)).is_err() {
            return false;
        }
        self.path = Text::Owned(CompactString::new(path));
        self.query = query.map(|q| Text::Owned(CompactString::new(q)));
        true
    }
}
