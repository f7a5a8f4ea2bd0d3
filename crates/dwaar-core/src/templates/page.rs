//! What a template sees: Caddy's template context as template values. `.Req` and
//! `.OriginalReq` (the request now and as it arrived), `.Host`, `.RemoteIP`,
//! `.ClientIP`, `.Cookie "name"`, `.Args` (from `include`), `.RespHeader.Set/Add/Del`.
//! The request's facts are copied in once per render: template values own their data.

use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_gotmpl::{Error, Object, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A response header edit a template asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(String, String),
    Add(String, String),
    Del(String),
}

/// A request as templates see it (Go's `*http.Request`, the parts templates use).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub proto: String,
    pub host: String,
    pub path: String,
    pub raw_query: String,
    pub remote_addr: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn of(req: &dyn HttpRequest, ctx: &RequestContext) -> Req {
        let headers = req
            .header_names()
            .into_iter()
            .flat_map(|n| {
                let mut vals = Vec::new();
                req.any_header_value(&n, &mut |v| {
                    vals.push(v.to_string());
                    false
                });
                let name = canonical(&n);
                vals.into_iter().map(move |v| (name.clone(), v))
            })
            .collect();
        Req {
            method: req.method().to_string(),
            proto: match req.version() {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            }
            .into(),
            host: req.header("host").unwrap_or(&ctx.host).to_string(),
            path: req.path().to_string(),
            raw_query: req.query().unwrap_or_default().to_string(),
            remote_addr: ctx.conn.remote.to_string(),
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A cookie's value from the `Cookie` fields.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"').to_string())
    }

    fn uri(&self) -> String {
        if self.raw_query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.raw_query)
        }
    }
}

/// `Content-Type` as Go writes a header name (`X-Forwarded-For`).
pub fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

fn text(s: &str) -> Option<Result<Value, Error>> {
    Some(Ok(Value::from(s)))
}

impl Object for Req {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        match name {
            "Method" => text(&self.method),
            "Proto" => text(&self.proto),
            "Host" => text(&self.host),
            "RequestURI" => text(&self.uri()),
            "RemoteAddr" => text(&self.remote_addr),
            "URL" => Some(Ok(Value::Object(Rc::new(Url(self.clone()))))),
            "Header" => Some(Ok(Value::Object(Rc::new(Header(self.headers.clone()))))),
            "UserAgent" => text(self.header("user-agent").unwrap_or_default()),
            "Referer" => text(self.header("referer").unwrap_or_default()),
            "ContentLength" => Some(Ok(Value::Int(
                self.header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ))),
            _ => None,
        }
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        match (name, args) {
            ("Cookie", [n]) => Some(match self.cookie(&n.to_text()) {
                Some(v) => {
                    let mut m = BTreeMap::new();
                    m.insert("Name".to_string(), n.clone());
                    m.insert("Value".to_string(), Value::from(v));
                    Ok(Value::from(m))
                }
                None => Err(Error::Func("http: named cookie not present".into())),
            }),
            _ => None,
        }
    }

    fn text(&self) -> String {
        format!("&{{{} {} {}}}", self.method, self.uri(), self.proto)
    }
}

struct Url(Req);

impl Object for Url {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        match name {
            "Path" | "RawPath" => text(&self.0.path),
            "RawQuery" => text(&self.0.raw_query),
            "Scheme" | "Host" | "Fragment" | "Opaque" => text(""),
            "Query" => {
                let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                for pair in self.0.raw_query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    m.entry(query_unescape(k))
                        .or_default()
                        .push(Value::from(query_unescape(v)));
                }
                let map: BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
                Some(Ok(Value::Object(Rc::new(Query(map)))))
            }
            "String" => text(&self.0.uri()),
            _ => None,
        }
    }

    fn text(&self) -> String {
        self.0.uri()
    }
}

/// `url.Values`: a map of lists with `Get`.
struct Query(BTreeMap<String, Value>);

impl Object for Query {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        self.0.get(name).map(|v| Ok(v.clone()))
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        match (name, args) {
            ("Get", [k]) => Some(Ok(match self.0.get(&k.to_text()) {
                Some(Value::List(l)) => l.first().cloned().unwrap_or_else(|| Value::from("")),
                _ => Value::from(""),
            })),
            ("Has", [k]) => Some(Ok(Value::Bool(self.0.contains_key(&k.to_text())))),
            _ => None,
        }
    }

    fn text(&self) -> String {
        Value::from(self.0.clone()).to_text()
    }

    fn items(&self) -> Option<Vec<(Value, Value)>> {
        Some(
            self.0
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), v.clone()))
                .collect(),
        )
    }
}

/// `http.Header`: canonical names to lists of values, with `Get`.
struct Header(Vec<(String, String)>);

impl Header {
    fn map(&self) -> BTreeMap<String, Value> {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (k, v) in &self.0 {
            m.entry(k.clone())
                .or_default()
                .push(Value::from(v.as_str()));
        }
        m.into_iter().map(|(k, v)| (k, Value::from(v))).collect()
    }
}

impl Object for Header {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        Some(Ok(self.map().remove(&canonical(name)).unwrap_or_default()))
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        match (name, args) {
            ("Get", [k]) => {
                let k = k.to_text();
                Some(Ok(Value::from(
                    self.0
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&k))
                        .map_or("", |(_, v)| v.as_str()),
                )))
            }
            ("Values", [k]) => Some(Ok(self
                .map()
                .remove(&canonical(&k.to_text()))
                .unwrap_or_default())),
            _ => None,
        }
    }

    fn text(&self) -> String {
        Value::from(self.map()).to_text()
    }

    fn items(&self) -> Option<Vec<(Value, Value)>> {
        Some(
            self.map()
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    }
}

/// `.RespHeader`: edits of the response's header fields.
pub struct RespHeader(pub Rc<RefCell<Vec<HeaderEdit>>>);

impl Object for RespHeader {
    fn get(&self, _: &str) -> Option<Result<Value, Error>> {
        None
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        let edit = match (name, args) {
            ("Set", [k, v]) => HeaderEdit::Set(k.to_text(), v.to_text()),
            ("Add", [k, v]) => HeaderEdit::Add(k.to_text(), v.to_text()),
            ("Del", [k]) => HeaderEdit::Del(k.to_text()),
            _ => return None,
        };
        self.0.borrow_mut().push(edit);
        Some(Ok(Value::from("")))
    }
}

/// The template's dot.
#[derive(Clone)]
pub struct Page {
    pub req: Rc<Req>,
    pub original: Rc<Req>,
    pub remote_ip: String,
    pub client_ip: String,
    pub args: Value,
    pub resp: Rc<RefCell<Vec<HeaderEdit>>>,
}

impl Page {
    /// The same page with `include`'s arguments.
    pub fn with_args(&self, args: Vec<Value>) -> Value {
        let mut p = self.clone();
        p.args = Value::from(args);
        Value::Object(Rc::new(p))
    }
}

impl Object for Page {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        match name {
            "Req" => Some(Ok(Value::Object(self.req.clone()))),
            "OriginalReq" => Some(Ok(Value::Object(self.original.clone()))),
            "Args" => Some(Ok(self.args.clone())),
            "RemoteIP" => text(&self.remote_ip),
            "ClientIP" => text(&self.client_ip),
            "RespHeader" => Some(Ok(Value::Object(Rc::new(RespHeader(self.resp.clone()))))),
            "Host" => {
                // The request's host without its port (an IPv6 literal without brackets).
                let h = self.req.host.as_str();
                let host = match h.rsplit_once(':') {
                    Some((name, port))
                        if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
                    {
                        name
                    }
                    _ => h,
                };
                text(host.trim_start_matches('[').trim_end_matches(']'))
            }
            _ => None,
        }
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        match (name, args) {
            ("Cookie", [n]) => Some(Ok(Value::from(
                self.req.cookie(&n.to_text()).unwrap_or_default(),
            ))),
            _ => None,
        }
    }
}

/// `%XX` and `+` decoded (a query's key or value).
pub fn query_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
