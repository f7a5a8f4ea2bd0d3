//! Templates of `format transform` (the transform-encoder plugin's log lines): text
//! with `{field}` references into the JSON access record, parsed once at load.
//!
//! A field is a path of keys joined by `>` (`request>headers>User-Agent>[0]`, where
//! `[N]` indexes an array); `a:b` tries each path in turn. `{common_log}` stands for
//! the Common Log Format line. `\{` and `\}` are literal braces.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// Alternatives, each a path of keys.
    Field(Vec<Vec<String>>),
}

/// What `{common_log}` stands for.
pub const COMMON_LOG: &str = r#"{request>remote_ip} - {user_id} [{ts}] "{request>method} {request>uri} {request>proto}" {status} {size}"#;

/// The parts of `template`, or what is wrong with it.
pub fn parse(template: &str) -> Result<Vec<Part>, String> {
    let expanded = template.replace("{common_log}", COMMON_LOG);
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = expanded.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('{' | '}')) => {
                text.extend(chars.next());
            }
            '{' => {
                let mut key = String::new();
                let mut closed = false;
                for k in chars.by_ref() {
                    if k == '}' {
                        closed = true;
                        break;
                    }
                    key.push(k);
                }
                if !closed {
                    return Err(format!("'{{{key}' is not closed with '}}'"));
                }
                let alternatives: Vec<Vec<String>> = key
                    .split(':')
                    .map(|alt| alt.split('>').map(str::to_string).collect::<Vec<_>>())
                    .collect();
                if alternatives.iter().flatten().any(|k| k.is_empty()) {
                    return Err(format!(
                        "'{{{key}}}' is not a field path (fields look like {{request>remote_ip}})"
                    ));
                }
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Field(alternatives));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// Whether `template` is the Common Log Format line (its time is then written as
/// `02/Jan/2006:15:04:05 -0700`, whatever `time_format` says, as the plugin does).
pub fn is_common_log(template: &str) -> bool {
    template.trim() == "{common_log}" || template.trim() == COMMON_LOG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_alternatives() {
        let p = parse(r"{request>headers>User-Agent>[0]:ua} \{x\} {status}").unwrap();
        assert_eq!(
            p,
            vec![
                Part::Field(vec![
                    vec![
                        "request".into(),
                        "headers".into(),
                        "User-Agent".into(),
                        "[0]".into()
                    ],
                    vec!["ua".into()]
                ]),
                Part::Text(" {x} ".into()),
                Part::Field(vec![vec!["status".into()]]),
            ]
        );
        assert!(parse("{common_log}").unwrap().len() > 10);
        assert!(parse("{status").is_err());
        assert!(parse("{a>>b}").is_err());
    }
}
