//! Records reshaped before they are written: `format filter`'s field filters (redacting
//! `Authorization`, masking addresses, hashing cookies, as Caddy's filter encoder does)
//! and Caddy's encoder options (key names, time, duration and level formats).
//!
//! Such a record is first written as the JSON line ([`crate::encode::json_line`]), then
//! read back as a document, edited, and written by the chosen encoder (`json`, or
//! `console`: Caddy's tab-separated `ts level logger msg {fields}`). This costs a parse
//! per record, paid only by logs that ask for filters or encoder options.

use dwaar_config::log_template::Part;
use dwaar_config::model::{
    EncoderOptions, FieldFilter, FilterAction, KeyAction, TransformTemplate,
};
use dwaar_config::time_layout::{Layout, Moment};
use sonic_rs::{JsonValueMutTrait, JsonValueTrait, Value};

/// The compiled filters and encoder options of one log.
#[derive(Debug)]
pub struct Transform {
    fields: Vec<(Vec<String>, Action)>,
    options: EncoderOptions,
    /// The layout of a `time_format` written as text (named ones are layouts too).
    time_layout: Option<Layout>,
    /// `format transform`: the line's template.
    template: Option<LineTemplate>,
}

/// The output `Transform::write` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Console,
    /// `format transform`'s template line.
    Template,
}

#[derive(Debug)]
struct LineTemplate {
    parts: Vec<Part>,
    placeholder: String,
    unescape_strings: bool,
}

#[derive(Debug)]
enum Action {
    Delete,
    Replace(String),
    IpMask(u8, u8),
    Query(Vec<KeyAction>),
    Cookie(Vec<KeyAction>),
    Regexp(regex::Regex, String),
    Hash,
    Rename(String),
}

impl Transform {
    pub fn compile(
        filters: &[FieldFilter],
        options: Option<&EncoderOptions>,
        template: Option<&TransformTemplate>,
    ) -> Result<Transform, String> {
        let mut out = Vec::with_capacity(filters.len());
        for f in filters {
            let action = match &f.action {
                FilterAction::Delete => Action::Delete,
                FilterAction::Replace { value } => Action::Replace(value.clone()),
                FilterAction::IpMask { ipv4, ipv6 } => Action::IpMask(*ipv4, *ipv6),
                FilterAction::Query { actions } => Action::Query(actions.clone()),
                FilterAction::Cookie { actions } => Action::Cookie(actions.clone()),
                FilterAction::Regexp {
                    pattern,
                    replacement,
                } => Action::Regexp(
                    regex::Regex::new(pattern).map_err(|e| format!("log filter regexp: {e}"))?,
                    replacement.clone(),
                ),
                FilterAction::Hash => Action::Hash,
                FilterAction::Rename { name } => Action::Rename(name.clone()),
            };
            out.push((f.field.split('>').map(str::to_string).collect(), action));
        }
        let mut options = options.cloned().unwrap_or_default();
        let template = match template {
            Some(t) => {
                if dwaar_config::log_template::is_common_log(&t.template) {
                    // The plugin writes Common Log Format's own time, whatever was set.
                    options.time_format = Some("common_log".into());
                }
                Some(LineTemplate {
                    parts: dwaar_config::log_template::parse(&t.template)?,
                    placeholder: t.placeholder.clone(),
                    unescape_strings: t.unescape_strings,
                })
            }
            None => None,
        };
        let time_layout = options.time_format.as_deref().and_then(|f| {
            let layout = match f {
                "iso8601" => "2006-01-02T15:04:05.000Z0700",
                "rfc3339" => "2006-01-02T15:04:05Z07:00",
                "rfc3339_nano" => "2006-01-02T15:04:05.999999999Z07:00",
                "wall" => "2006/01/02 15:04:05",
                "wall_milli" => "2006/01/02 15:04:05.000",
                "wall_nano" => "2006/01/02 15:04:05.000000000",
                "common_log" => "02/Jan/2006:15:04:05 -0700",
                "unix_seconds_float" | "unix_milli_float" | "unix_nano" => return None,
                custom => custom,
            };
            Layout::parse(layout)
        });
        Ok(Transform {
            fields: out,
            options,
            time_layout,
            template,
        })
    }

    /// Reshapes `line` (one JSON record with its newline) and appends the result in the
    /// chosen format.
    pub fn write(&self, line: &[u8], output: Output, out: &mut Vec<u8>) {
        let Ok(mut doc) = sonic_rs::from_slice::<Value>(line) else {
            out.extend_from_slice(line);
            return;
        };
        for (path, action) in &self.fields {
            apply(&mut doc, path, action);
        }
        let o = &self.options;
        match (output, &self.template) {
            (Output::Console, _) => console_line(&mut doc, self, out),
            (Output::Template, Some(t)) => {
                encode_values(&mut doc, self);
                t.write(&doc, out);
            }
            _ => {
                encode_values(&mut doc, self);
                rename_keys(&mut doc, o);
                let _ = sonic_rs::to_writer(&mut *out, &doc);
            }
        }
        out.extend_from_slice(o.line_ending.as_deref().unwrap_or("\n").as_bytes());
    }

    /// A time (Unix seconds) in the log's time format: UTC, or the machine's zone with
    /// `time_local`.
    fn time_value(&self, secs: f64, default: Option<&Layout>) -> Value {
        let secs = secs.max(0.0);
        match self.options.time_format.as_deref() {
            Some("unix_milli_float") => return float(secs * 1000.0),
            Some("unix_nano") => return Value::from((secs * 1e9).round() as u64),
            _ => {}
        }
        let Some(layout) = self.time_layout.as_ref().or(default) else {
            return float(secs);
        };
        // Records carry microseconds; a float of Unix seconds holds no more than that.
        let whole = secs.floor();
        let micros = (((secs - whole) * 1e6).round() as u32).min(999_999);
        let unix = whole as i64;
        let offset = if self.options.time_local {
            use chrono::{Offset, TimeZone};
            chrono::Local
                .timestamp_opt(unix, 0)
                .single()
                .map_or(0, |t| t.offset().fix().local_minus_utc())
        } else {
            0
        };
        let mut text = String::with_capacity(40);
        layout.write(
            Moment {
                unix,
                nanos: micros * 1000,
                offset,
                zone: None,
            },
            &mut text,
        );
        Value::from(text.as_str())
    }
}

impl LineTemplate {
    /// The template filled from the record: strings JSON-escaped (or as they are with
    /// `unescape_strings`), other values as JSON, the placeholder for what is missing
    /// or empty.
    fn write(&self, doc: &Value, out: &mut Vec<u8>) {
        let start = out.len();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Field(alternatives) => {
                    let found = alternatives.iter().find_map(|path| lookup(doc, path));
                    match found {
                        Some(v) if v.is_str() => {
                            let s = v.as_str().unwrap_or_default();
                            if s.is_empty() {
                                out.extend_from_slice(self.placeholder.as_bytes());
                            } else if self.unescape_strings {
                                out.extend_from_slice(s.as_bytes());
                            } else {
                                let quoted = sonic_rs::to_string(s).unwrap_or_default();
                                out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
                            }
                        }
                        Some(v) if !v.is_null() => {
                            let _ = sonic_rs::to_writer(&mut *out, v);
                        }
                        _ => out.extend_from_slice(self.placeholder.as_bytes()),
                    }
                }
            }
        }
        // As the plugin does: escaped quotes inside the line are written plainly.
        let line = out.split_off(start);
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'\\' && line.get(i + 1) == Some(&b'"') {
                out.push(b'"');
                i += 2;
            } else {
                out.push(line[i]);
                i += 1;
            }
        }
    }
}

/// The value at `path` (`[N]` indexes arrays).
fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = doc;
    for key in path {
        v = match key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
            Some(i) => v.get(i.parse::<usize>().ok()?)?,
            None => v.get(key.as_str())?,
        };
    }
    Some(v)
}

/// Rewrites `ts`, the durations and `level` in the formats the options ask for.
fn encode_values(doc: &mut Value, t: &Transform) {
    let o = &t.options;
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    if o.time_format.is_some() {
        if let Some(ts) = obj.get_mut(&"ts") {
            let secs = ts.as_f64().unwrap_or(0.0);
            *ts = t.time_value(secs, None);
        }
    }
    if let Some(f) = o.duration_format.as_deref() {
        for key in ["duration", "upstream_duration"] {
            if let Some(d) = obj.get_mut(&key) {
                let secs = d.as_f64().unwrap_or(0.0);
                *d = duration_value(secs, f);
            }
        }
    }
    if let Some(level) = obj.get_mut(&"level") {
        let text = level_text(level.as_str().unwrap_or("info"), o);
        *level = Value::from(text.as_str());
    }
}

/// Renames the standard keys as the options say.
fn rename_keys(doc: &mut Value, o: &EncoderOptions) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    for (from, to) in [
        ("msg", &o.message_key),
        ("level", &o.level_key),
        ("ts", &o.time_key),
        ("logger", &o.name_key),
    ] {
        if let Some(to) = to.as_deref().filter(|t| *t != from) {
            if let Some(v) = obj.remove(&from) {
                obj.insert(to, v);
            }
        }
    }
}

fn level_text(level: &str, o: &EncoderOptions) -> String {
    match o.level_format.as_deref() {
        Some("upper") => level.to_ascii_uppercase(),
        Some("color") => {
            let color = if level == "error" { 31 } else { 34 };
            format!("\x1b[{color}m{}\x1b[0m", level.to_ascii_uppercase())
        }
        _ => level.to_string(),
    }
}

/// A JSON number (0 for what JSON cannot hold).
fn float(v: f64) -> Value {
    Value::new_f64(v).unwrap_or_default()
}

/// A duration (seconds) in one of Caddy's duration formats.
fn duration_value(secs: f64, format: &str) -> Value {
    match format {
        "ms" => float(secs * 1000.0),
        "nano" | "ns" => Value::from((secs * 1e9).round().max(0.0) as u64),
        "string" => Value::from(duration_text(secs).as_str()),
        _ => float(secs),
    }
}

/// A duration as Go writes one (`1.234ms`, `2.5s`, `850µs`).
fn duration_text(secs: f64) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if secs >= 1.0 {
        format!("{}s", trim(secs))
    } else if secs >= 1e-3 {
        format!("{}ms", trim(secs * 1e3))
    } else if secs >= 1e-6 {
        format!("{}µs", trim(secs * 1e6))
    } else {
        format!("{}ns", (secs * 1e9).round())
    }
}

/// The key of `obj` named `name`: exactly, else ignoring ASCII case (header names).
fn key_of(obj: &sonic_rs::Object, name: &str) -> Option<String> {
    if obj.contains_key(&name) {
        return Some(name.to_string());
    }
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _)| k.to_string())
}

fn apply(doc: &mut Value, path: &[String], action: &Action) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = doc;
    for p in parents {
        let Some(obj) = at.as_object_mut() else {
            return;
        };
        let Some(k) = key_of(obj, p) else { return };
        match obj.get_mut(&k) {
            Some(v) => at = v,
            None => return,
        }
    }
    let Some(obj) = at.as_object_mut() else {
        return;
    };
    let Some(key) = key_of(obj, last) else {
        return;
    };
    match action {
        Action::Delete => {
            obj.remove(&key);
        }
        Action::Rename(name) => {
            if let Some(v) = obj.remove(&key) {
                obj.insert(name, v);
            }
        }
        Action::Replace(value) => {
            obj.insert(&key, Value::from(value.as_str()));
        }
        _ => {
            if let Some(v) = obj.get_mut(&key) {
                edit_strings(v, &|s| edit(s, action));
            }
        }
    }
}

/// Applies `f` to a string, or to each string of an array (header values).
fn edit_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    if let Some(s) = v.as_str() {
        let new = f(s);
        *v = Value::from(new.as_str());
    } else if let Some(a) = v.as_array_mut() {
        for item in a.iter_mut() {
            if let Some(s) = item.as_str() {
                let new = f(s);
                *item = Value::from(new.as_str());
            }
        }
    }
}

fn edit(s: &str, action: &Action) -> String {
    match action {
        Action::IpMask(v4, v6) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => crate::encode::mask(ip, Some((*v4, *v6))).to_string(),
            Err(_) => s.to_string(),
        },
        Action::Hash => hash(s),
        Action::Regexp(re, with) => re.replace_all(s, with.as_str()).into_owned(),
        Action::Query(actions) => match s.split_once('?') {
            Some((path, q)) => {
                let q = edit_pairs(q.split('&'), "&", actions);
                if q.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{q}")
                }
            }
            None => s.to_string(),
        },
        Action::Cookie(actions) => edit_pairs(s.split(';').map(str::trim), "; ", actions),
        Action::Delete | Action::Replace(_) | Action::Rename(_) => s.to_string(),
    }
}

/// Edits `key=value` pairs (a query, a cookie list) by the actions for their keys.
fn edit_pairs<'a>(
    pairs: impl Iterator<Item = &'a str>,
    sep: &str,
    actions: &[KeyAction],
) -> String {
    let mut out: Vec<String> = Vec::new();
    for pair in pairs.filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match actions.iter().find(|a| a.key == k) {
            Some(a) if a.op == "delete" => {}
            Some(a) if a.op == "replace" => out.push(format!("{k}={}", a.value)),
            Some(a) if a.op == "hash" => out.push(format!("{k}={}", hash(v))),
            _ => out.push(pair.to_string()),
        }
    }
    out.join(sep)
}

/// The first 4 bytes of the SHA-256 of `s`, in hex (Caddy's `hash` filter).
fn hash(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Caddy's console form of a record: `ts<TAB>LEVEL<TAB>logger<TAB>msg<TAB>{fields}`.
fn console_line(doc: &mut Value, t: &Transform, out: &mut Vec<u8>) {
    let o = &t.options;
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let ts = obj.remove(&"ts").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let level = obj
        .remove(&"level")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let level = match o.level_format.as_deref() {
        None => level.to_ascii_uppercase(),
        Some(_) => level_text(&level, o),
    };
    let logger = obj
        .remove(&"logger")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let msg = obj
        .remove(&"msg")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let iso8601 = Layout::parse("2006-01-02T15:04:05.000Z0700");
    match t.time_value(ts, iso8601.as_ref()) {
        v if v.is_str() => out.extend_from_slice(v.as_str().unwrap_or_default().as_bytes()),
        v => {
            let _ = sonic_rs::to_writer(&mut *out, &v);
        }
    }
    for part in [level.as_str(), logger.as_str(), msg.as_str()] {
        out.push(b'\t');
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'\t');
    encode_values(doc, t);
    let _ = sonic_rs::to_writer(&mut *out, &*doc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwaar_config::model::FieldFilter;

    fn f(field: &str, action: FilterAction) -> FieldFilter {
        FieldFilter {
            field: field.into(),
            action,
        }
    }

    #[test]
    fn filters_edit_fields_in_place() {
        let line = br#"{"level":"info","ts":1.5,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"192.0.2.77","uri":"/a?token=x&keep=1","headers":{"Authorization":["Bearer s"],"Cookie":["sid=abc; theme=dark"],"X-Id":["abc123"]}},"status":200}
"#;
        let filters = Transform::compile(
            &[
                f("request>headers>Authorization", FilterAction::Delete),
                f(
                    "request>remote_ip",
                    FilterAction::IpMask { ipv4: 24, ipv6: 48 },
                ),
                f(
                    "request>uri",
                    FilterAction::Query {
                        actions: vec![KeyAction {
                            op: "delete".into(),
                            key: "token".into(),
                            value: String::new(),
                        }],
                    },
                ),
                f(
                    "request>headers>Cookie",
                    FilterAction::Cookie {
                        actions: vec![KeyAction {
                            op: "replace".into(),
                            key: "sid".into(),
                            value: "REDACTED".into(),
                        }],
                    },
                ),
                f("request>headers>X-Id", FilterAction::Hash),
                f(
                    "status",
                    FilterAction::Rename {
                        name: "code".into(),
                    },
                ),
            ],
            None,
            None,
        )
        .expect("compile");
        let mut out = Vec::new();
        filters.write(line, Output::Json, &mut out);
        let v: Value = sonic_rs::from_slice(&out).expect("json");
        assert!(v["request"]["headers"].get("Authorization").is_none());
        assert_eq!(v["request"]["remote_ip"].as_str(), Some("192.0.2.0"));
        assert_eq!(v["request"]["uri"].as_str(), Some("/a?keep=1"));
        assert_eq!(
            v["request"]["headers"]["Cookie"][0].as_str(),
            Some("sid=REDACTED; theme=dark")
        );
        assert_eq!(
            v["request"]["headers"]["X-Id"][0].as_str(),
            Some(hash("abc123").as_str())
        );
        assert_eq!(v["code"].as_u64(), Some(200));
        let mut console = Vec::new();
        filters.write(line, Output::Console, &mut console);
        let text = String::from_utf8_lossy(&console);
        assert!(
            text.starts_with("1970-01-01T00:00:01.500Z\tINFO\thttp.log.access\thandled request\t{"),
            "{text}"
        );
    }

    #[test]
    fn encoder_options_reshape_the_record() {
        let line = br#"{"level":"error","ts":1795986600.25,"logger":"http.log.access","msg":"handled request","duration":0.001234,"status":502}
"#;
        let options = EncoderOptions {
            time_key: Some("time".into()),
            message_key: Some("message".into()),
            time_format: Some("rfc3339_nano".into()),
            duration_format: Some("string".into()),
            level_format: Some("upper".into()),
            line_ending: Some("\r\n".into()),
            ..Default::default()
        };
        let t = Transform::compile(&[], Some(&options), None).expect("compile");
        let mut out = Vec::new();
        t.write(line, Output::Json, &mut out);
        assert!(out.ends_with(b"}\r\n"), "{}", String::from_utf8_lossy(&out));
        let v: Value = sonic_rs::from_slice(&out[..out.len() - 2]).expect("json");
        assert_eq!(v["time"].as_str(), Some("2026-11-29T21:10:00.25Z"));
        assert_eq!(v["message"].as_str(), Some("handled request"));
        assert_eq!(v["duration"].as_str(), Some("1.234ms"));
        assert_eq!(v["level"].as_str(), Some("ERROR"));
        assert!(v.get("ts").is_none() && v.get("msg").is_none());
        for (format, want) in [
            ("wall_milli", "2026/11/29 21:10:00.250"),
            ("common_log", "29/Nov/2026:21:10:00 +0000"),
            ("iso8601", "2026-11-29T21:10:00.250Z"),
        ] {
            let o = EncoderOptions {
                time_format: Some(format.into()),
                ..Default::default()
            };
            let t = Transform::compile(&[], Some(&o), None).expect("compile");
            assert_eq!(t.time_value(1_795_986_600.25, None).as_str(), Some(want));
        }
        let o = EncoderOptions {
            time_format: Some("unix_nano".into()),
            ..Default::default()
        };
        let t = Transform::compile(&[], Some(&o), None).expect("compile");
        assert_eq!(t.time_value(1.5, None).as_u64(), Some(1_500_000_000));
        assert_eq!(duration_value(2.5, "nano").as_u64(), Some(2_500_000_000));
    }

    #[test]
    fn transform_template_fills_fields() {
        let line = br#"{"level":"info","ts":1795986600.25,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"192.0.2.7","method":"GET","uri":"/a \"q\"","proto":"HTTP/1.1","headers":{"User-Agent":["curl/8"]}},"user_id":"","status":200,"size":5}
"#;
        let common = TransformTemplate {
            template: "{common_log}".into(),
            placeholder: "-".into(),
            unescape_strings: false,
        };
        let t = Transform::compile(&[], None, Some(&common)).expect("compile");
        let mut out = Vec::new();
        t.write(line, Output::Template, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "192.0.2.7 - - [29/Nov/2026:21:10:00 +0000] \"GET /a \"q\" HTTP/1.1\" 200 5\n"
        );
        let custom = TransformTemplate {
            template: "{request>headers>User-Agent>[0]} {nope:request>method} {missing}".into(),
            placeholder: "?".into(),
            unescape_strings: false,
        };
        let options = EncoderOptions {
            time_format: Some("2006-01-02".into()),
            ..Default::default()
        };
        let t = Transform::compile(&[], Some(&options), Some(&custom)).expect("compile");
        let mut out = Vec::new();
        t.write(line, Output::Template, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "curl/8 GET ?\n");
    }

    #[test]
    fn custom_layouts_and_time_local() {
        let line = br#"{"level":"info","ts":1795986600.25,"msg":"m"}
"#;
        let options = EncoderOptions {
            time_format: Some("2006-01-02 15:04:05.000 -07:00".into()),
            ..Default::default()
        };
        let t = Transform::compile(&[], Some(&options), None).expect("compile");
        let mut out = Vec::new();
        t.write(line, Output::Json, &mut out);
        let v: Value = sonic_rs::from_slice(&out).expect("json");
        assert_eq!(v["ts"].as_str(), Some("2026-11-29 21:10:00.250 +00:00"));
        // time_local follows the machine's zone: whatever it is, the text carries the
        // same instant.
        let local = EncoderOptions {
            time_local: true,
            ..options
        };
        let t = Transform::compile(&[], Some(&local), None).expect("compile");
        let mut out = Vec::new();
        t.write(line, Output::Json, &mut out);
        let v: Value = sonic_rs::from_slice(&out).expect("json");
        let text = v["ts"].as_str().expect("text");
        let parsed =
            chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.3f %:z").expect(text);
        assert_eq!(parsed.timestamp_millis(), 1_795_986_600_250);
    }
}
