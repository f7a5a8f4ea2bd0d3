//! Request matchers: inline tokens (`*`, `/path`, `@name`) and named matcher definitions.
//!
//! Caddy's semantics: within one matcher set every matcher must match (AND); the values
//! of one matcher are alternatives (OR). Repeating a matcher line of the same kind in a
//! named block merges the values, except `not`, `header_regexp` and `path_regexp`, which
//! each stay separate conditions.

use super::args::{block_lines, Diags};
use crate::diag::did_you_mean;
use crate::lexer::Token;
use crate::model::{FieldMatch, Matcher, MatcherSet, VarsMatch};
use crate::parser::Directive;
use std::collections::HashMap;

pub type NamedMatchers = HashMap<String, MatcherSet>;

pub(crate) const MATCHER_KINDS: &[&str] = &[
    "path",
    "path_regexp",
    "host",
    "method",
    "header",
    "header_regexp",
    "query",
    "protocol",
    "remote_ip",
    "client_ip",
    "not",
    "file",
    "bot",
    "vars",
    "vars_regexp",
    "expression",
];

/// Whether a token in matcher position is a matcher (`*`, `/...`, `@name`).
pub fn is_matcher_token(t: &Token) -> bool {
    !t.quoted() && (t.text == "*" || t.text.starts_with('/') || t.text.starts_with('@'))
}

/// Reads the optional matcher at `args[0]`. Returns the sets (empty = all) and how many
/// arguments it used.
pub fn inline_matcher(
    d: &Directive,
    named: &NamedMatchers,
    diags: &mut Diags,
) -> (Vec<MatcherSet>, usize) {
    let Some(first) = d.args.first() else {
        return (Vec::new(), 0);
    };
    if !is_matcher_token(first) {
        return (Vec::new(), 0);
    }
    if first.text == "*" {
        return (Vec::new(), 1);
    }
    if let Some(name) = first.text.strip_prefix('@') {
        match named.get(name) {
            Some(set) => return (vec![set.clone()], 1),
            None => {
                let mut e = first.error(format!("matcher '@{name}' is not defined in this site"));
                if let Some(s) = did_you_mean(name, named.keys().map(String::as_str)) {
                    e = e.with_help(format!("did you mean '@{s}'?"));
                } else {
                    e = e.with_help(format!("define it first: @{name} {{ path /... }}"));
                }
                diags.push(e);
                return (Vec::new(), 1);
            }
        }
    }
    (
        vec![MatcherSet {
            name: None,
            matchers: vec![Matcher::Path(vec![first.text.clone()])],
        }],
        1,
    )
}

/// Compiles a `@name ...` definition into a matcher set.
pub fn named_definition(d: &Directive, diags: &mut Diags) -> Option<(String, MatcherSet)> {
    let name = d.name.text.trim_start_matches('@').to_string();
    if name.is_empty() {
        diags.push(d.name.error("a matcher name is needed after '@'"));
        return None;
    }
    let mut set = MatcherSet {
        name: Some(name.clone()),
        matchers: Vec::new(),
    };
    if d.args.is_empty() && d.block.is_none() {
        diags.push(
            d.name
                .error(format!("matcher '@{name}' has no conditions"))
                .with_help(format!("@{name} path /api/* or @{name} {{ ... }}")),
        );
        return None;
    }
    if d.args.len() == 1 && d.args[0].quoted() && d.block.is_none() {
        // `@name `{method} == "POST"``: a quoted expression alone (Caddy's shorthand).
        if let Some(e) = super::expression::compile(&d.args[0], Some(&name), diags) {
            set.matchers.push(Matcher::Expression(Box::new(e)));
        }
    } else if !d.args.is_empty() {
        // Single-line form: `@name path /a /b`; a bare path is shorthand for `path`.
        let line = Directive {
            name: d.args[0].clone(),
            args: d.args[1..].to_vec(),
            block: d.block.clone(),
        };
        if line.name.text.starts_with('/') {
            set.matchers.push(Matcher::Path(
                d.args.iter().map(|t| t.text.clone()).collect(),
            ));
        } else {
            add_matcher(&mut set, &line, diags);
        }
    } else {
        for line in block_lines(&d.block) {
            add_matcher(&mut set, line, diags);
        }
    }
    Some((name, set))
}

/// The text of an `expression` line: one argument as it is, several joined with
/// spaces, quoted ones with their quotes back (as Caddy reads them).
fn expression_token(line: &Directive) -> Option<Token> {
    let first = line.args.first()?;
    if line.args.len() == 1 {
        return Some(first.clone());
    }
    let text = line
        .args
        .iter()
        .map(|t| match t.kind {
            crate::lexer::TokenKind::Quoted => {
                format!("\"{}\"", t.text.replace('\\', "\\\\").replace('"', "\\\""))
            }
            _ => t.text.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut t = first.clone();
    t.text = text;
    Some(t)
}

pub(crate) fn add_matcher(set: &mut MatcherSet, line: &Directive, diags: &mut Diags) {
    let kind = line.name.text.as_str();
    let values: Vec<String> = line.args.iter().map(|t| t.text.clone()).collect();
    let need_values = |diags: &mut Diags| {
        if values.is_empty() {
            diags.push(
                line.name
                    .error(format!("matcher '{kind}' needs at least one value")),
            );
            false
        } else {
            true
        }
    };
    match kind {
        "path" => {
            if !need_values(diags) {
                return;
            }
            for t in &line.args {
                if !(t.text.starts_with('/') || t.text.starts_with('*')) {
                    diags.push(t.error(format!(
                        "path pattern '{}' must start with '/' or '*'",
                        t.text
                    )));
                }
            }
            merge_list(set, Matcher::Path(values));
        }
        "host" => {
            if need_values(diags) {
                merge_list(
                    set,
                    Matcher::Host(values.iter().map(|v| v.to_ascii_lowercase()).collect()),
                );
            }
        }
        "method" => {
            if need_values(diags) {
                merge_list(
                    set,
                    Matcher::Method(values.iter().map(|v| v.to_ascii_uppercase()).collect()),
                );
            }
        }
        "remote_ip" | "client_ip" => {
            if !need_values(diags) {
                return;
            }
            let mut cidrs = Vec::new();
            for t in &line.args {
                if t.text == "forwarded" {
                    diags.push(t.error("'remote_ip forwarded' was removed in Caddy 2.7; use 'client_ip' with trusted_proxies"));
                    continue;
                }
                let v = if t.text == "private_ranges" {
                    PRIVATE_RANGES.iter().map(|s| s.to_string()).collect()
                } else {
                    vec![t.text.clone()]
                };
                for c in v {
                    if let Err(e) = check_cidr(&c) {
                        diags.push(t.error(e));
                    } else {
                        cidrs.push(c);
                    }
                }
            }
            merge_list(
                set,
                if kind == "remote_ip" {
                    Matcher::RemoteIp(cidrs)
                } else {
                    Matcher::ClientIp(cidrs)
                },
            );
        }
        "header" => {
            let Some(field) = line.args.first() else {
                diags.push(
                    line.name
                        .error("matcher 'header' needs a field name")
                        .with_help("header Field [value...]"),
                );
                return;
            };
            let (name, vals) = match field.text.strip_prefix('!') {
                Some(n) => (n.to_string(), Vec::new()),
                None => {
                    let v: Vec<String> = line.args[1..].iter().map(|t| t.text.clone()).collect();
                    (
                        field.text.clone(),
                        if v.is_empty() {
                            vec!["*".to_string()]
                        } else {
                            v
                        },
                    )
                }
            };
            merge_fields(
                set,
                true,
                FieldMatch {
                    field: name,
                    values: vals,
                },
            );
        }
        "query" => {
            if !need_values(diags) {
                return;
            }
            for t in &line.args {
                let (k, v) = t.text.split_once('=').unwrap_or((t.text.as_str(), "*"));
                merge_fields(
                    set,
                    false,
                    FieldMatch {
                        field: k.to_string(),
                        values: vec![v.to_string()],
                    },
                );
            }
        }
        "protocol" => {
            if !diags.arity(
                line,
                0,
                1,
                1,
                "protocol http|https|grpc|http/1.1|http/2|http/3",
            ) {
                return;
            }
            let p = values[0].to_ascii_lowercase();
            if ![
                "http",
                "https",
                "grpc",
                "http/1.0",
                "http/1.1",
                "http/2",
                "http/3",
                "http/1",
                "http/2+",
                "http/1.1+",
            ]
            .contains(&p.as_str())
            {
                diags.push(
                    line.args[0]
                        .error(format!("unknown protocol '{}'", values[0]))
                        .with_help("use http, https, grpc, http/1.1, http/2 or http/3"),
                );
                return;
            }
            set.matchers.push(Matcher::Protocol(p));
        }
        "vars" => {
            if !diags.arity(line, 0, 2, usize::MAX, "vars <variable> <values...>") {
                return;
            }
            let key = line.args[0].text.clone();
            let values = line.args[1..].iter().map(|v| diags.template(v)).collect();
            match set.matchers.iter_mut().find_map(|m| match m {
                Matcher::Vars(list) => Some(list),
                _ => None,
            }) {
                Some(list) => list.push(VarsMatch { key, values }),
                None => set
                    .matchers
                    .push(Matcher::Vars(vec![VarsMatch { key, values }])),
            }
        }
        "vars_regexp" => {
            if !diags.arity(line, 0, 2, 3, "vars_regexp [name] <variable> <regexp>") {
                return;
            }
            let named = line.args.len() == 3;
            let Some(pattern) = diags.regex(&line.args[line.args.len() - 1]) else {
                return;
            };
            set.matchers.push(Matcher::VarsRegexp {
                name: named
                    .then(|| line.args[0].text.clone())
                    .or_else(|| set.name.clone()),
                key: line.args[usize::from(named)].text.clone(),
                pattern,
            });
        }
        "path_regexp" | "header_regexp" => {
            let (min, usage) = if kind == "path_regexp" {
                (1, "path_regexp [name] regexp")
            } else {
                (2, "header_regexp [name] field regexp")
            };
            if !diags.arity(line, 0, min, min + 1, usage) {
                return;
            }
            let named = line.args.len() == min + 1;
            let re_tok = &line.args[line.args.len() - 1];
            let name = named
                .then(|| line.args[0].text.clone())
                .or_else(|| set.name.clone());
            let Some(pattern) = diags.regex(re_tok) else {
                return;
            };
            if kind == "path_regexp" {
                set.matchers.push(Matcher::PathRegexp { name, pattern });
            } else {
                let field = line.args[usize::from(named)].text.clone();
                set.matchers.push(Matcher::HeaderRegexp {
                    name,
                    field,
                    pattern,
                });
            }
        }
        "not" => {
            let mut inner = MatcherSet {
                name: None,
                matchers: Vec::new(),
            };
            if let Some(first) = line.args.first() {
                let sub = Directive {
                    name: first.clone(),
                    args: line.args[1..].to_vec(),
                    block: None,
                };
                if sub.name.text.starts_with('/') {
                    inner.matchers.push(Matcher::Path(values));
                } else {
                    add_matcher(&mut inner, &sub, diags);
                }
            } else if line.block.is_some() {
                for l in block_lines(&line.block) {
                    add_matcher(&mut inner, l, diags);
                }
            } else {
                diags.push(
                    line.name
                        .error("'not' needs a matcher")
                        .with_help("not path /admin/* or not { ... }"),
                );
                return;
            }
            set.matchers.push(Matcher::Not(Box::new(inner)));
        }
        "bot" => {
            if diags.arity(line, 0, 0, 0, "bot") {
                set.matchers.push(Matcher::Bot);
            }
        }
        "file" => {
            if let Some(m) = super::files::file_matcher(line, diags) {
                set.matchers.push(m);
            }
        }
        "expression" => {
            let Some(tok) = expression_token(line) else {
                diags.push(
                    line.name
                        .error("matcher 'expression' needs an expression")
                        .with_help("expression {method} == \"POST\""),
                );
                return;
            };
            if let Some(e) = super::expression::compile(&tok, set.name.as_deref(), diags) {
                set.matchers.push(Matcher::Expression(Box::new(e)));
            }
        }
        _ => {
            let mut e = line.name.error(format!("unknown matcher '{kind}'"));
            if let Some(s) = did_you_mean(kind, MATCHER_KINDS.iter().copied()) {
                e = e.with_help(format!("did you mean '{s}'?"));
            } else {
                e = e.with_help(format!("matchers are: {}", MATCHER_KINDS.join(", ")));
            }
            diags.push(e);
        }
    }
}

/// Appends values to an existing list matcher of the same kind, or adds it.
fn merge_list(set: &mut MatcherSet, m: Matcher) {
    for existing in set.matchers.iter_mut() {
        match (existing, &m) {
            (Matcher::Path(a), Matcher::Path(b))
            | (Matcher::Host(a), Matcher::Host(b))
            | (Matcher::Method(a), Matcher::Method(b))
            | (Matcher::RemoteIp(a), Matcher::RemoteIp(b))
            | (Matcher::ClientIp(a), Matcher::ClientIp(b)) => {
                a.extend(b.iter().cloned());
                return;
            }
            _ => {}
        }
    }
    set.matchers.push(m);
}

fn merge_fields(set: &mut MatcherSet, header: bool, f: FieldMatch) {
    for existing in set.matchers.iter_mut() {
        let list = match existing {
            Matcher::Header(l) if header => l,
            Matcher::Query(l) if !header => l,
            _ => continue,
        };
        if let Some(e) = list
            .iter_mut()
            .find(|e| e.field.eq_ignore_ascii_case(&f.field))
        {
            e.values.extend(f.values);
        } else {
            list.push(f);
        }
        return;
    }
    set.matchers.push(if header {
        Matcher::Header(vec![f])
    } else {
        Matcher::Query(vec![f])
    });
}

pub const PRIVATE_RANGES: &[&str] = &[
    "192.168.0.0/16",
    "172.16.0.0/12",
    "10.0.0.0/8",
    "127.0.0.1/8",
    "fd00::/8",
    "::1",
];

/// Checks an IP address or CIDR range.
/// Adds the CIDR ranges of `args` to `list` (`private_ranges` expands to the private
/// networks); a token that is not a range is an error at it.
pub fn push_cidrs(args: &[crate::lexer::Token], list: &mut Vec<String>, diags: &mut super::Diags) {
    for a in args {
        if a.text == "private_ranges" {
            list.extend(PRIVATE_RANGES.iter().map(|r| r.to_string()));
        } else if let Err(e) = check_cidr(&a.text) {
            diags.push(a.error(e));
        } else {
            list.push(a.text.clone());
        }
    }
}

pub fn check_cidr(s: &str) -> Result<(), String> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip, Some(b)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid IP address or CIDR range '{s}'"))?;
    if let Some(b) = bits {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match b.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => {
                return Err(format!(
                    "invalid prefix length in '{s}': expected 0 to {max}"
                ))
            }
        }
    }
    Ok(())
}
