//! The functions templates call: Caddy's (`include`, `import`, `httpInclude`, `readFile`,
//! `listFiles`, `fileExists`, `fileStat`, `env`, `placeholder`/`ph`, `markdown`,
//! `splitFrontMatter`, `stripHTML`, `httpError`, `humanize`, `pathEscape`) and the
//! sprig functions Caddyfiles commonly use (strings, lists, dicts, math, defaults,
//! JSON, base64, regular expressions, dates).
//!
//! Files are read under the render's root, never outside it (`..` is cleaned away as a
//! URL path would be).

use super::page::Page;
use super::{Halt, Includes};
use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_gotmpl::{Engine, Error, Object, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn ferr(m: impl Into<String>) -> Error {
    Error::Func(m.into())
}

fn arg(a: &[Value], i: usize) -> Result<&Value, Error> {
    a.get(i)
        .ok_or_else(|| ferr(format!("wrong number of args: want at least {}", i + 1)))
}

fn s(a: &[Value], i: usize) -> Result<String, Error> {
    Ok(arg(a, i)?.to_text_plain())
}

trait Plain {
    /// The value as text, nil as empty (sprig's `toString` view).
    fn to_text_plain(&self) -> String;
}

impl Plain for Value {
    fn to_text_plain(&self) -> String {
        match self {
            Value::Nil => String::new(),
            v => v.to_text(),
        }
    }
}

/// `root` joined with `name` cleaned as a URL path (it cannot leave `root`).
pub fn under_root(root: &Path, name: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = root.to_path_buf();
    for p in parts {
        out.push(p);
    }
    out
}

/// Adds every function to `e`. The closures borrow the request being answered.
pub fn install<'f>(
    e: &mut Engine<'f>,
    page: Rc<Page>,
    root: PathBuf,
    req: &'f dyn HttpRequest,
    ctx: &'f RequestContext,
    includes: &'f Includes,
) {
    let root = Rc::new(root);
    {
        let (root, page) = (root.clone(), page.clone());
        e.func("include", move |call, a| {
            let name = s(a, 0)?;
            let text = std::fs::read_to_string(under_root(&root, &name))
                .map_err(|err| ferr(format!("{name}: {err}")))?;
            let dot = page.with_args(a[1..].to_vec());
            Ok(Value::from(call.render(&name, &text, dot)?))
        });
    }
    {
        let root = root.clone();
        e.func("import", move |call, a| {
            let name = s(a, 0)?;
            let text = std::fs::read_to_string(under_root(&root, &name))
                .map_err(|err| ferr(format!("{name}: {err}")))?;
            call.define(&name, &text)?;
            Ok(Value::from(""))
        });
    }
    {
        let page = page.clone();
        e.func("httpInclude", move |call, a| {
            let uri = s(a, 0)?;
            match includes.get(&uri) {
                Some(Ok(body)) => {
                    let dot = Value::Object(page.clone());
                    Ok(Value::from(call.render(&uri, body, dot)?))
                }
                Some(Err(m)) => Err(ferr(m.clone())),
                None => Err(Error::Halt(Rc::new(Halt::Include(uri)))),
            }
        });
    }
    {
        let root = root.clone();
        e.func("readFile", move |_, a| {
            let name = s(a, 0)?;
            std::fs::read_to_string(under_root(&root, &name))
                .map(Value::from)
                .map_err(|err| ferr(format!("{name}: {err}")))
        });
    }
    {
        let root = root.clone();
        e.func("fileExists", move |_, a| {
            Ok(Value::Bool(under_root(&root, &s(a, 0)?).exists()))
        });
    }
    {
        let root = root.clone();
        e.func("listFiles", move |_, a| {
            let name = s(a, 0)?;
            let dir = std::fs::read_dir(under_root(&root, &name))
                .map_err(|err| ferr(format!("{name}: {err}")))?;
            let mut names: Vec<String> = dir
                .filter_map(|d| d.ok().map(|d| d.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            Ok(Value::from(
                names.into_iter().map(Value::from).collect::<Vec<_>>(),
            ))
        });
    }
    {
        let root = root.clone();
        e.func("fileStat", move |_, a| {
            let name = s(a, 0)?;
            let path = under_root(&root, &name);
            let meta = std::fs::metadata(&path).map_err(|err| ferr(format!("{name}: {err}")))?;
            let mut m = BTreeMap::new();
            m.insert(
                "Name".to_string(),
                Value::from(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
            );
            m.insert("Size".to_string(), Value::Int(meta.len() as i64));
            m.insert("IsDir".to_string(), Value::Bool(meta.is_dir()));
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            m.insert("ModTime".to_string(), time_value(modified));
            Ok(Value::from(m))
        });
    }
    e.func("env", |_, a| {
        Ok(Value::from(std::env::var(s(a, 0)?).unwrap_or_default()))
    });
    let placeholder = move |_: &mut dwaar_gotmpl::Call<'_, '_>, a: &[Value]| {
        let name = s(a, 0)?;
        let t = dwaar_config::placeholder::Template::parse(&format!("{{{name}}}"));
        if !t.unknown_keys().is_empty() {
            return Ok(Value::from(""));
        }
        Ok(Value::from(
            crate::template::render(&t, req, ctx).into_owned(),
        ))
    };
    e.func("placeholder", placeholder);
    e.func("ph", placeholder);
    e.func("markdown", |_, a| {
        Ok(Value::from(super::markdown::to_html(&s(a, 0)?)))
    });
    e.func("splitFrontMatter", |_, a| {
        let (meta, body) = super::front_matter::split(&s(a, 0)?).map_err(ferr)?;
        let mut m = BTreeMap::new();
        m.insert("Meta".to_string(), meta);
        m.insert("Body".to_string(), Value::from(body));
        Ok(Value::from(m))
    });
    e.func("stripHTML", |_, a| Ok(Value::from(strip_html(&s(a, 0)?))));
    e.func("httpError", |_, a| {
        let code = arg(a, 0)?
            .as_int()
            .ok_or_else(|| ferr("httpError takes a status code"))?;
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (100..=999).contains(c))
            .ok_or_else(|| ferr(format!("{code} is not a status code")))?;
        Err(Error::Halt(Rc::new(Halt::Status(code))))
    });
    e.func("humanize", |_, a| {
        humanize(&s(a, 0)?, &s(a, 1)?).map(Value::from)
    });
    e.func("pathEscape", |_, a| Ok(Value::from(path_escape(&s(a, 0)?))));
    sprig(e);
}

/// A point in time (sprig's `now`, `fileStat`'s `ModTime`): Unix nanoseconds.
struct Time(i64);

impl Object for Time {
    fn get(&self, name: &str) -> Option<Result<Value, Error>> {
        let secs = self.0.div_euclid(1_000_000_000);
        let (y, _, _) = dwaar_config::time_layout::civil_from_days(secs.div_euclid(86_400));
        match name {
            "Unix" => Some(Ok(Value::Int(secs))),
            "UnixNano" => Some(Ok(Value::Int(self.0))),
            "UnixMilli" => Some(Ok(Value::Int(self.0.div_euclid(1_000_000)))),
            "Year" => Some(Ok(Value::Int(y))),
            "UTC" | "Local" => Some(Ok(time_value(self.0))),
            _ => None,
        }
    }

    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
        match (name, args) {
            ("Format", [layout]) => Some(Ok(Value::from(format_time(self.0, &layout.to_text())))),
            _ => None,
        }
    }

    fn text(&self) -> String {
        format_time(self.0, "2006-01-02 15:04:05.999999999 -0700 MST")
    }
}

fn time_value(unix_nanos: i64) -> Value {
    Value::Object(Rc::new(Time(unix_nanos)))
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn format_time(unix_nanos: i64, layout: &str) -> String {
    let Some(l) = dwaar_config::time_layout::Layout::parse(layout) else {
        return layout.to_string();
    };
    let mut out = String::new();
    l.write(
        dwaar_config::time_layout::Moment {
            unix: unix_nanos.div_euclid(1_000_000_000),
            nanos: unix_nanos.rem_euclid(1_000_000_000) as u32,
            offset: 0,
            zone: Some("UTC"),
        },
        &mut out,
    );
    out
}

/// Caddy 2.6's `stripHTML`: text outside tags; `<` inside a tag (outside quotes)
/// gives back what was skipped; an unclosed tag at the end is kept.
pub fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut tag_start: Option<usize> = None;
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match (tag_start, c) {
            (None, '<') => {
                tag_start = Some(i);
                in_quotes = false;
            }
            (None, c) => out.push(c),
            (Some(_), '"') => in_quotes = !in_quotes,
            (Some(_), '>') if !in_quotes => tag_start = None,
            (Some(start), '<') if !in_quotes => {
                out.push_str(&s[start..i]);
                tag_start = Some(i);
            }
            _ => {}
        }
    }
    if let Some(start) = tag_start {
        out.push_str(&s[start..]);
    }
    out
}

/// `humanize "size" "2048"` (`2.0 kB`) and `humanize "time" <RFC 1123Z text>`.
fn humanize(kind: &str, value: &str) -> Result<String, Error> {
    let (kind, layout) = kind.split_once(':').unwrap_or((kind, ""));
    match kind {
        "size" => {
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| ferr(format!("humanize size: {value:?} is not a number")))?;
            Ok(bytes_text(n))
        }
        "time" => {
            // The value as Caddy's default layout writes it (RFC 1123 with a numeric
            // zone) or as an HTTP date; other layouts are not read.
            if !layout.is_empty() {
                return Err(ferr("humanize time: only the default layout is supported"));
            }
            let then = chrono_like_rfc1123z(value)
                .or_else(|| httpdate::parse_http_date(value).ok())
                .ok_or_else(|| ferr(format!("humanize time: cannot read {value:?}")))?;
            Ok(relative(std::time::SystemTime::now(), then))
        }
        other => Err(ferr(format!(
            "humanize: unknown kind {other:?} (size or time)"
        ))),
    }
}

/// `Mon, 02 Jan 2006 15:04:05 -0700`.
fn chrono_like_rfc1123z(v: &str) -> Option<std::time::SystemTime> {
    let (date, zone) = v.trim().rsplit_once(' ')?;
    let gmt = format!("{date} GMT");
    let t = httpdate::parse_http_date(&gmt).ok()?;
    let sign = if zone.starts_with('-') { -1i64 } else { 1 };
    let digits = zone.trim_start_matches(['+', '-']);
    let h: i64 = digits.get(..2)?.parse().ok()?;
    let m: i64 = digits.get(2..4)?.parse().ok()?;
    let off = std::time::Duration::from_secs(u64::try_from(h * 3600 + m * 60).ok()?);
    Some(if sign > 0 { t - off } else { t + off })
}

fn relative(now: std::time::SystemTime, then: std::time::SystemTime) -> String {
    let (secs, suffix) = match now.duration_since(then) {
        Ok(d) => (d.as_secs(), "ago"),
        Err(e) => (e.duration().as_secs(), "from now"),
    };
    let units = [
        (60 * 60 * 24 * 365, "year"),
        (60 * 60 * 24 * 30, "month"),
        (60 * 60 * 24 * 7, "week"),
        (60 * 60 * 24, "day"),
        (60 * 60, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    if secs == 0 {
        return "now".into();
    }
    for (n, name) in units {
        if secs >= n {
            let k = secs / n;
            return if k == 1 {
                format!("1 {name} {suffix}")
            } else {
                format!("{k} {name}s {suffix}")
            };
        }
    }
    "now".into()
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn bytes_text(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(units.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

fn path_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'$'
            | b'&'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn num(v: &Value) -> Result<f64, Error> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| ferr(format!("{s:?} is not a number"))),
        Value::Nil => Ok(0.0),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(ferr(format!("{} is not a number", other.kind()))),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Float(f) => *f as i64,
        Value::Str(s) => s.trim().parse().unwrap_or(0),
        Value::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::List(l) => l.as_ref().clone(),
        Value::Nil => Vec::new(),
        other => vec![other.clone()],
    }
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Str(s) => serde_json::Value::String(s.to_string()),
        Value::List(l) => serde_json::Value::Array(l.iter().map(json_of).collect()),
        Value::Map(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
        Value::Object(o) => serde_json::Value::String(o.text()),
    }
}

/// A JSON value as a template value.
pub fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(a) => {
            Value::from(a.into_iter().map(from_json).collect::<Vec<_>>())
        }
        serde_json::Value::Object(o) => Value::from(
            o.into_iter()
                .map(|(k, v)| (k, from_json(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// Sprig's functions that Caddy templates commonly use.
fn sprig(e: &mut Engine<'_>) {
    let str1 = |e: &mut Engine<'_>, name: &str, f: fn(&str) -> String| {
        e.func(name, move |_, a| Ok(Value::from(f(&s(a, 0)?))));
    };
    str1(e, "upper", |x| x.to_uppercase());
    str1(e, "lower", |x| x.to_lowercase());
    str1(e, "trim", |x| x.trim().to_string());
    str1(e, "title", |x| {
        let mut out = String::new();
        let mut start = true;
        for c in x.chars() {
            out.extend(if start {
                c.to_uppercase().collect::<Vec<_>>()
            } else {
                vec![c]
            });
            start = c.is_whitespace();
        }
        out
    });
    str1(e, "nospace", |x| {
        x.chars().filter(|c| !c.is_whitespace()).collect()
    });
    str1(e, "squote", |x| format!("'{x}'"));
    str1(e, "b64enc", |x| base64_encode(x.as_bytes()));
    str1(e, "b64dec", |x| {
        String::from_utf8_lossy(&base64_decode(x).unwrap_or_default()).into_owned()
    });
    e.func("quote", |_, a| {
        Ok(Value::from(
            a.iter()
                .map(|v| dwaar_gotmpl::go_quote(&v.to_text_plain()))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    e.func("toString", |_, a| {
        Ok(Value::from(arg(a, 0)?.to_text_plain()))
    });
    e.func("trimPrefix", |_, a| {
        let (p, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::from(
            x.strip_prefix(p.as_str()).unwrap_or(&x).to_string(),
        ))
    });
    e.func("trimSuffix", |_, a| {
        let (p, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::from(
            x.strip_suffix(p.as_str()).unwrap_or(&x).to_string(),
        ))
    });
    e.func("trimAll", |_, a| {
        let (cut, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::from(x.trim_matches(|c| cut.contains(c)).to_string()))
    });
    e.func("replace", |_, a| {
        let (old, new, x) = (s(a, 0)?, s(a, 1)?, s(a, 2)?);
        Ok(Value::from(x.replace(&old, &new)))
    });
    e.func("contains", |_, a| {
        Ok(Value::Bool(s(a, 1)?.contains(&s(a, 0)?)))
    });
    e.func("hasPrefix", |_, a| {
        Ok(Value::Bool(s(a, 1)?.starts_with(&s(a, 0)?)))
    });
    e.func("hasSuffix", |_, a| {
        Ok(Value::Bool(s(a, 1)?.ends_with(&s(a, 0)?)))
    });
    e.func("repeat", |_, a| {
        let n = usize::try_from(int(arg(a, 0)?)).unwrap_or(0).min(1 << 20);
        Ok(Value::from(s(a, 1)?.repeat(n)))
    });
    e.func("trunc", |_, a| {
        let n = int(arg(a, 0)?);
        let x = s(a, 1)?;
        let chars: Vec<char> = x.chars().collect();
        let n = usize::try_from(n.unsigned_abs())
            .unwrap_or(0)
            .min(chars.len());
        Ok(Value::from(if int(arg(a, 0)?) >= 0 {
            chars[..n].iter().collect::<String>()
        } else {
            chars[chars.len() - n..].iter().collect::<String>()
        }))
    });
    e.func("abbrev", |_, a| {
        let n = usize::try_from(int(arg(a, 0)?)).unwrap_or(0);
        let x = s(a, 1)?;
        if x.chars().count() <= n || n < 4 {
            return Ok(Value::from(x));
        }
        Ok(Value::from(format!(
            "{}...",
            x.chars().take(n - 3).collect::<String>()
        )))
    });
    e.func("indent", |_, a| {
        let pad = " ".repeat(usize::try_from(int(arg(a, 0)?)).unwrap_or(0).min(1024));
        let x = s(a, 1)?;
        Ok(Value::from(format!(
            "{pad}{}",
            x.replace('\n', &format!("\n{pad}"))
        )))
    });
    e.func("nindent", |_, a| {
        let pad = " ".repeat(usize::try_from(int(arg(a, 0)?)).unwrap_or(0).min(1024));
        let x = s(a, 1)?;
        Ok(Value::from(format!(
            "\n{pad}{}",
            x.replace('\n', &format!("\n{pad}"))
        )))
    });
    e.func("cat", |_, a| {
        Ok(Value::from(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    e.func("splitList", |_, a| {
        let (sep, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::from(
            x.split(sep.as_str()).map(Value::from).collect::<Vec<_>>(),
        ))
    });
    e.func("split", |_, a| {
        let (sep, x) = (s(a, 0)?, s(a, 1)?);
        Ok(Value::from(
            x.split(sep.as_str())
                .enumerate()
                .map(|(i, p)| (format!("_{i}"), Value::from(p)))
                .collect::<BTreeMap<_, _>>(),
        ))
    });
    e.func("join", |_, a| {
        let sep = s(a, 0)?;
        Ok(Value::from(
            list(arg(a, 1)?)
                .iter()
                .map(Value::to_text_plain)
                .collect::<Vec<_>>()
                .join(&sep),
        ))
    });
    e.func("list", |_, a| Ok(Value::from(a.to_vec())));
    e.func("append", |_, a| {
        let mut l = list(arg(a, 0)?);
        l.push(arg(a, 1)?.clone());
        Ok(Value::from(l))
    });
    e.func("first", |_, a| {
        Ok(list(arg(a, 0)?).first().cloned().unwrap_or_default())
    });
    e.func("last", |_, a| {
        Ok(list(arg(a, 0)?).last().cloned().unwrap_or_default())
    });
    e.func("rest", |_, a| {
        Ok(Value::from(
            list(arg(a, 0)?).into_iter().skip(1).collect::<Vec<_>>(),
        ))
    });
    e.func("reverse", |_, a| {
        let mut l = list(arg(a, 0)?);
        l.reverse();
        Ok(Value::from(l))
    });
    e.func("uniq", |_, a| {
        let mut out: Vec<Value> = Vec::new();
        for v in list(arg(a, 0)?) {
            if !out.contains(&v) {
                out.push(v);
            }
        }
        Ok(Value::from(out))
    });
    e.func("has", |_, a| {
        Ok(Value::Bool(list(arg(a, 1)?).contains(arg(a, 0)?)))
    });
    e.func("sortAlpha", |_, a| {
        let mut l: Vec<String> = list(arg(a, 0)?).iter().map(Value::to_text_plain).collect();
        l.sort();
        Ok(Value::from(
            l.into_iter().map(Value::from).collect::<Vec<_>>(),
        ))
    });
    e.func("dict", |_, a| {
        let mut m = BTreeMap::new();
        for pair in a.chunks(2) {
            m.insert(
                pair[0].to_text_plain(),
                pair.get(1).cloned().unwrap_or_default(),
            );
        }
        Ok(Value::from(m))
    });
    e.func("get", |_, a| match arg(a, 0)? {
        Value::Map(m) => Ok(m.get(&s(a, 1)?).cloned().unwrap_or_else(|| Value::from(""))),
        _ => Ok(Value::from("")),
    });
    e.func("hasKey", |_, a| match arg(a, 0)? {
        Value::Map(m) => Ok(Value::Bool(m.contains_key(&s(a, 1)?))),
        _ => Ok(Value::Bool(false)),
    });
    e.func("keys", |_, a| {
        let mut out = Vec::new();
        for m in a {
            if let Value::Map(m) = m {
                out.extend(m.keys().map(|k| Value::from(k.as_str())));
            }
        }
        Ok(Value::from(out))
    });
    e.func("values", |_, a| match arg(a, 0)? {
        Value::Map(m) => Ok(Value::from(m.values().cloned().collect::<Vec<_>>())),
        _ => Ok(Value::from(Vec::new())),
    });
    e.func("default", |_, a| {
        let given = a.get(1).filter(|v| v.truth());
        Ok(given
            .cloned()
            .unwrap_or_else(|| a.first().cloned().unwrap_or_default()))
    });
    e.func("empty", |_, a| {
        Ok(Value::Bool(!a.first().is_some_and(Value::truth)))
    });
    e.func("coalesce", |_, a| {
        Ok(a.iter().find(|v| v.truth()).cloned().unwrap_or_default())
    });
    e.func("ternary", |_, a| {
        Ok(if arg(a, 2)?.truth() {
            arg(a, 0)?.clone()
        } else {
            arg(a, 1)?.clone()
        })
    });
    e.func("toJson", |_, a| {
        Ok(Value::from(
            serde_json::to_string(&json_of(arg(a, 0)?)).unwrap_or_default(),
        ))
    });
    e.func("toPrettyJson", |_, a| {
        Ok(Value::from(
            serde_json::to_string_pretty(&json_of(arg(a, 0)?)).unwrap_or_default(),
        ))
    });
    e.func("fromJson", |_, a| {
        Ok(serde_json::from_str(&s(a, 0)?)
            .map(from_json)
            .unwrap_or_default())
    });
    let math = |e: &mut Engine<'_>, name: &str, f: fn(i64, i64) -> Option<i64>| {
        e.func(name, move |_, a| {
            let mut acc = int(arg(a, 0)?);
            for v in &a[1..] {
                acc = f(acc, int(v)).ok_or_else(|| ferr("integer divide by zero or overflow"))?;
            }
            Ok(Value::Int(acc))
        });
    };
    math(e, "add", i64::checked_add);
    math(e, "sub", i64::checked_sub);
    math(e, "mul", i64::checked_mul);
    math(e, "div", i64::checked_div);
    math(e, "mod", i64::checked_rem);
    math(e, "max", |x, y| Some(x.max(y)));
    math(e, "min", |x, y| Some(x.min(y)));
    e.func("add1", |_, a| {
        Ok(Value::Int(int(arg(a, 0)?).saturating_add(1)))
    });
    e.func("addf", |_, a| {
        let mut acc = 0.0;
        for v in a {
            acc += num(v)?;
        }
        Ok(Value::Float(acc))
    });
    e.func("int", |_, a| Ok(Value::Int(int(arg(a, 0)?))));
    e.func("int64", |_, a| Ok(Value::Int(int(arg(a, 0)?))));
    e.func("atoi", |_, a| {
        Ok(Value::Int(s(a, 0)?.trim().parse().unwrap_or(0)))
    });
    e.func("float64", |_, a| {
        Ok(Value::Float(num(arg(a, 0)?).unwrap_or(0.0)))
    });
    e.func("seq", |_, a| {
        let nums: Vec<i64> = a.iter().map(int).collect();
        let (start, step, end) = match nums.as_slice() {
            [end] => (1, 1, *end),
            [start, end] => (*start, if start <= end { 1 } else { -1 }, *end),
            [start, step, end] => (*start, *step, *end),
            _ => return Ok(Value::from("")),
        };
        let mut out = Vec::new();
        let mut i = start;
        while step != 0 && ((step > 0 && i <= end) || (step < 0 && i >= end)) && out.len() < 100_000
        {
            out.push(i.to_string());
            i += step;
        }
        Ok(Value::from(out.join(" ")))
    });
    e.func("until", |_, a| {
        let n = int(arg(a, 0)?).clamp(0, 100_000);
        Ok(Value::from((0..n).map(Value::Int).collect::<Vec<_>>()))
    });
    e.func("regexMatch", |_, a| {
        let re = regex::Regex::new(&s(a, 0)?).map_err(|err| ferr(err.to_string()))?;
        Ok(Value::Bool(re.is_match(&s(a, 1)?)))
    });
    e.func("regexFind", |_, a| {
        let re = regex::Regex::new(&s(a, 0)?).map_err(|err| ferr(err.to_string()))?;
        let x = s(a, 1)?;
        Ok(Value::from(re.find(&x).map_or("", |m| m.as_str())))
    });
    e.func("regexReplaceAll", |_, a| {
        let re = regex::Regex::new(&s(a, 0)?).map_err(|err| ferr(err.to_string()))?;
        // Go's `${1}` and `$1` are the regex crate's too.
        Ok(Value::from(
            re.replace_all(&s(a, 1)?, s(a, 2)?.as_str()).into_owned(),
        ))
    });
    e.func("now", |_, _| Ok(time_value(now_nanos())));
    e.func("date", |_, a| {
        let layout = s(a, 0)?;
        let t = match arg(a, 1)? {
            Value::Int(secs) => secs.saturating_mul(1_000_000_000),
            Value::Object(o) => o
                .get("UnixNano")
                .and_then(Result::ok)
                .and_then(|v| v.as_int())
                .unwrap_or(0),
            _ => now_nanos(),
        };
        Ok(Value::from(format_time(t, &layout)))
    });
    e.func("unixEpoch", |_, a| match arg(a, 0)? {
        Value::Object(o) => Ok(Value::from(
            o.get("Unix")
                .and_then(Result::ok)
                .unwrap_or_default()
                .to_text(),
        )),
        _ => Ok(Value::from("")),
    });
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_html_as_caddy_2_6() {
        assert_eq!(strip_html("<p>Hello <b>you</b></p>"), "Hello you");
        assert_eq!(strip_html("a < b and <i>c</i>"), "a < b and c");
        assert_eq!(strip_html("<a title=\"x>y\">z</a>"), "z");
        assert_eq!(strip_html("tail <open"), "tail <open");
    }

    #[test]
    fn humanize_and_paths() {
        assert_eq!(humanize("size", "2048").ok().as_deref(), Some("2.0 kB"));
        assert_eq!(humanize("size", "5").ok().as_deref(), Some("5 B"));
        assert_eq!(
            humanize("size", "123456789").ok().as_deref(),
            Some("124 MB")
        );
        assert_eq!(
            under_root(Path::new("/srv"), "../../etc/passwd"),
            PathBuf::from("/srv/etc/passwd")
        );
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("aGVsbG8=").unwrap_or_default(), b"hello");
    }
}
