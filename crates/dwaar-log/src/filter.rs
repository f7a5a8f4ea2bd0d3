//! `format filter`: field filters applied to a record before it is written, as Caddy's
//! filter encoder does (redacting `Authorization`, masking addresses, hashing cookies).
//!
//! A filtered record is first written as the JSON line ([`crate::encode::json_line`]),
//! then read back as a document, edited field by field, and written by the wrapped
//! encoder (`json`, or `console`: Caddy's tab-separated `ts level logger msg {fields}`).
//! This costs a parse per record, paid only by logs that ask for filters.

use dwaar_config::model::{FieldFilter, FilterAction, KeyAction};
use sonic_rs::{JsonValueMutTrait, JsonValueTrait, Value};

/// The compiled filters of one log.
#[derive(Debug)]
pub struct Filters(Vec<(Vec<String>, Action)>);

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

impl Filters {
    pub fn compile(filters: &[FieldFilter]) -> Result<Filters, String> {
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
        Ok(Filters(out))
    }

    /// Filters `line` (one JSON record with its newline) and appends the result in the
    /// wrapped format.
    pub fn write(&self, line: &[u8], console: bool, out: &mut Vec<u8>) {
        let Ok(mut doc) = sonic_rs::from_slice::<Value>(line) else {
            out.extend_from_slice(line);
            return;
        };
        for (path, action) in &self.0 {
            apply(&mut doc, path, action);
        }
        if console {
            console_line(&mut doc, out);
        } else {
            let _ = sonic_rs::to_writer(&mut *out, &doc);
            out.push(b'\n');
        }
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
fn console_line(doc: &mut Value, out: &mut Vec<u8>) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let ts = obj.remove(&"ts").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let level = obj
        .remove(&"level")
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
        .unwrap_or_default();
    let logger = obj
        .remove(&"logger")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let msg = obj
        .remove(&"msg")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    out.extend_from_slice(crate::encode::timestamp_text((ts * 1000.0) as u64).as_bytes());
    for part in [level.as_str(), logger.as_str(), msg.as_str()] {
        out.push(b'\t');
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'\t');
    let _ = sonic_rs::to_writer(&mut *out, &*doc);
    out.push(b'\n');
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
        let filters = Filters::compile(&[
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
        ])
        .expect("compile");
        let mut out = Vec::new();
        filters.write(line, false, &mut out);
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
        filters.write(line, true, &mut console);
        let text = String::from_utf8_lossy(&console);
        assert!(
            text.starts_with("1970-01-01T00:00:01.500Z\tINFO\thttp.log.access\thandled request\t{"),
            "{text}"
        );
    }
}
