//! `splitFrontMatter`: the metadata block at the top of a document, as Caddy reads it.
//! The first non-blank line opens it: `---` (YAML, closed by `---` or `...`), `+++`
//! (TOML, closed by `+++`) or `{` (JSON, closed by a line starting `}`). Without one the
//! whole text is the body.

use dwaar_gotmpl::Value;
use std::collections::BTreeMap;

/// (metadata, body). An unterminated block or one that does not parse is an error.
pub fn split(text: &str) -> Result<(Value, String), String> {
    let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n']);
    let first = trimmed.lines().next().unwrap_or_default().trim();
    let (open_len, closers, kind): (usize, &[&str], &str) = match first {
        "---" => (3, &["\n---", "\n..."], "yaml"),
        "+++" => (3, &["\n+++"], "toml"),
        "{" => (1, &["\n}"], "json"),
        _ => return Ok((Value::Nil, text.to_string())),
    };
    let after_open = &trimmed[trimmed.find(first).unwrap_or(0) + open_len..];
    let Some((at, closer)) = closers
        .iter()
        .filter_map(|c| after_open.find(c).map(|i| (i, *c)))
        .min_by_key(|(i, _)| *i)
    else {
        return Err(format!("unterminated {kind} front matter"));
    };
    let raw = &after_open[..at];
    let body = &after_open[at + closer.len()..];
    let meta = match kind {
        "yaml" => {
            let v: serde_yaml::Value =
                serde_yaml::from_str(raw).map_err(|e| format!("front matter: {e}"))?;
            from_yaml(v)
        }
        "toml" => {
            let v: toml::Table = toml::from_str(raw).map_err(|e| format!("front matter: {e}"))?;
            from_toml(toml::Value::Table(v))
        }
        _ => {
            let v: serde_json::Value = serde_json::from_str(&format!("{{{raw}\n}}"))
                .map_err(|e| format!("front matter: {e}"))?;
            super::funcs::from_json(v)
        }
    };
    // A block of nothing is an empty map.
    let meta = match meta {
        Value::Nil => Value::from(BTreeMap::new()),
        m => m,
    };
    Ok((meta, body.to_string()))
}

fn from_yaml(v: serde_yaml::Value) -> Value {
    match v {
        serde_yaml::Value::Null => Value::Nil,
        serde_yaml::Value::Bool(b) => Value::Bool(b),
        serde_yaml::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_yaml::Value::String(s) => Value::from(s),
        serde_yaml::Value::Sequence(a) => {
            Value::from(a.into_iter().map(from_yaml).collect::<Vec<_>>())
        }
        serde_yaml::Value::Mapping(m) => Value::from(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        serde_yaml::Value::String(s) => s,
                        other => from_yaml(other).to_text(),
                    };
                    (key, from_yaml(v))
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        serde_yaml::Value::Tagged(t) => from_yaml(t.value),
    }
}

fn from_toml(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s),
        toml::Value::Integer(i) => Value::Int(i),
        toml::Value::Float(f) => Value::Float(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::from(a.into_iter().map(from_toml).collect::<Vec<_>>()),
        toml::Value::Table(t) => Value::from(
            t.into_iter()
                .map(|(k, v)| (k, from_toml(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(text: &str) -> (String, String) {
        let (m, b) = split(text).unwrap_or_else(|e| panic!("{e}"));
        (m.to_text(), b)
    }

    #[test]
    fn reads_yaml_toml_and_json() {
        assert_eq!(
            meta("---\ntitle: Hi\ntags: [a, b]\n---\n# Body\n"),
            ("map[tags:[a b] title:Hi]".into(), "\n# Body\n".into())
        );
        assert_eq!(
            meta("+++\ntitle = \"T\"\nn = 2\n+++\nbody"),
            ("map[n:2 title:T]".into(), "\nbody".into())
        );
        assert_eq!(
            meta("{\n\"title\": \"J\"\n}\nrest"),
            ("map[title:J]".into(), "\nrest".into())
        );
        assert_eq!(
            meta("no front matter"),
            ("<no value>".into(), "no front matter".into())
        );
        assert!(split("---\ntitle: x\n").is_err());
    }
}
