//! Helpers for reading a directive's arguments with precise errors.

use crate::diag::{did_you_mean, Diagnostic};
use crate::lexer::Token;
use crate::parser::{Block, Directive};
use crate::placeholder::Template;
use crate::units::{parse_duration_ms, parse_size};

/// Collects diagnostics while a directive is compiled.
#[derive(Default)]
pub struct Diags {
    pub list: Vec<Diagnostic>,
    /// Names set by `map` anywhere in the config: valid placeholders, not typos.
    pub map_outputs: std::collections::HashSet<String>,
    /// A value compiled since the last site used `{http.request.body}`.
    pub body_placeholder: bool,
    /// The `filesystem`s the global options define: name to directory.
    pub filesystems: std::collections::HashMap<String, String>,
    /// `rate_limit` directives without a `zone` seen so far: each gets its own zone,
    /// numbered in the order they are written (stable when the file is reformatted).
    pub unnamed_rate_limits: u32,
    /// The global options set `storage redis` (what `distributed` rate limits need).
    pub redis_storage: bool,
}

impl Diags {
    pub fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }

    /// The `filesystem` named by `t`: (name, directory); an unknown name is reported.
    pub fn filesystem(&mut self, t: &Token) -> Option<(String, String)> {
        if let Some(root) = self.filesystems.get(&t.text) {
            return Some((t.text.clone(), root.clone()));
        }
        let mut e = t.error(format!("no filesystem named '{}'", t.text));
        let names: Vec<&str> = self.filesystems.keys().map(String::as_str).collect();
        e = match crate::diag::did_you_mean(&t.text, names.iter().copied()) {
            Some(s) => e.with_help(format!("did you mean '{s}'?")),
            None => {
                e.with_help("define it in the global options: filesystem <name> local <directory>")
            }
        };
        self.push(e);
        None
    }

    /// Errors collected so far (warnings excluded).
    pub fn error_count(&self) -> usize {
        self.list.iter().filter(|d| d.is_error()).count()
    }

    /// Errors unless `d` has between `min` and `max` arguments (after `skip`).
    pub fn arity(
        &mut self,
        d: &Directive,
        skip: usize,
        min: usize,
        max: usize,
        usage: &str,
    ) -> bool {
        let n = d.args.len().saturating_sub(skip);
        if n >= min && n <= max {
            return true;
        }
        let expected = if min == max {
            format!("{min} argument{}", if min == 1 { "" } else { "s" })
        } else if max == usize::MAX {
            format!("at least {min} argument{}", if min == 1 { "" } else { "s" })
        } else {
            format!("{min} to {max} arguments")
        };
        let at = if n > max {
            d.args.get(skip + max).unwrap_or(&d.name)
        } else {
            &d.name
        };
        let msg = if n > max {
            format!(
                "'{}' expects {expected}, found {n}: unexpected '{}'",
                d.name.text, at.text
            )
        } else {
            format!("'{}' expects {expected}, found {n}", d.name.text)
        };
        self.push(at.error(msg).with_help(format!("usage: {usage}")));
        false
    }

    /// Errors if the directive has a block it does not take.
    pub fn no_block(&mut self, d: &Directive) -> bool {
        if let Some(b) = &d.block {
            let t = b.directives.first().map(|x| &x.name).unwrap_or(&d.name);
            self.push(t.error(format!("'{}' does not take a block", d.name.text)));
            return false;
        }
        true
    }

    pub fn duration(&mut self, t: &Token) -> Option<u64> {
        match parse_duration_ms(&t.text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(t.error(e));
                None
            }
        }
    }

    pub fn size(&mut self, t: &Token) -> Option<u64> {
        match parse_size(&t.text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(t.error(e));
                None
            }
        }
    }

    pub fn number<T: std::str::FromStr>(&mut self, t: &Token, what: &str) -> Option<T> {
        match t.text.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.push(t.error(format!(
                    "invalid {what} '{}': expected a whole number",
                    t.text
                )));
                None
            }
        }
    }

    pub fn status(&mut self, t: &Token) -> Option<u16> {
        match t.text.parse::<u16>() {
            Ok(v) if (100..=999).contains(&v) => Some(v),
            _ => {
                self.push(t.error(format!(
                    "invalid status code '{}': expected a number from 100 to 999",
                    t.text
                )));
                None
            }
        }
    }

    pub fn regex(&mut self, t: &Token) -> Option<String> {
        match regex::RegexBuilder::new(&t.text)
            .size_limit(1 << 20)
            .build()
        {
            Ok(_) => Some(t.text.clone()),
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.push(t.error(format!("invalid regular expression: {first}")));
                None
            }
        }
    }

    /// Parses a template and warns about `{...}` keys that look like misspelt placeholders.
    pub fn template(&mut self, t: &Token) -> Template {
        let tpl = Template::parse(&t.text);
        if tpl.reads_body() {
            self.body_placeholder = true;
        }
        let typos: Vec<String> = tpl
            .unknown_keys()
            .iter()
            .filter(|k| !self.map_outputs.contains(*k))
            .cloned()
            .collect();
        for k in typos {
            let mut w = t.warning(format!(
                "unknown placeholder '{{{k}}}' is kept as literal text"
            ));
            if let Some(s) = did_you_mean(&k, KNOWN_PLACEHOLDERS.iter().copied()) {
                w = w.with_help(format!("did you mean '{{{s}}}'?"));
            }
            self.push(w);
        }
        tpl
    }

    /// Reports an unknown sub-directive inside `parent`'s block.
    pub fn unknown_sub(&mut self, parent: &str, t: &Token, known: &[&str]) {
        let mut d = t.error(format!("unknown subdirective '{}' in '{parent}'", t.text));
        if let Some(s) = did_you_mean(&t.text, known.iter().copied()) {
            d = d.with_help(format!("did you mean '{s}'?"));
        } else {
            d = d.with_help(format!("'{parent}' accepts: {}", known.join(", ")));
        }
        self.push(d);
    }
}

/// The directives of an optional block (empty when there is none).
pub fn block_lines(b: &Option<Block>) -> &[Directive] {
    b.as_ref().map(|b| b.directives.as_slice()).unwrap_or(&[])
}

pub const KNOWN_PLACEHOLDERS: &[&str] = &[
    "host",
    "hostport",
    "port",
    "method",
    "scheme",
    "uri",
    "path",
    "dir",
    "file",
    "query",
    "remote",
    "remote_host",
    "remote_port",
    "client_ip",
    "upstream_hostport",
    "http.request.host",
    "http.request.uri",
    "http.request.uri.path",
    "http.request.method",
    "http.request.uri.query",
    "http.request.remote.host",
    "http.request.scheme",
    "http.error.status_code",
    "http.error.status_text",
    "http.error.message",
    "err.status_code",
    "err.status_text",
    "err.message",
    "http.request.uuid",
];
