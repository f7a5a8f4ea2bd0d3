//! `cache`: Dwaar's in-memory HTTP cache (RFC 9111 semantics, bounded memory).

use super::args::{block_lines, Diags};
use super::handlers::Compiled;
use super::matchers::{inline_matcher, NamedMatchers};
use crate::model::{CacheConfig, Handler, Route};
use crate::parser::Directive;

const SUBS: &[&str] = &[
    "max_size",
    "max_item_size",
    "ttl",
    "match_path",
    "stale_while_revalidate",
    "stale_if_error",
    "key",
    "methods",
    "bypass_header",
    "status_header",
    "lock_timeout",
];

/// `cache [<matcher>] { max_size 512mb; ttl 5m; match_path /static/*; ... }`
pub fn cache(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        0,
        "cache [<matcher>] { max_size 512mb; ttl 5m }",
    ) {
        return Compiled::Nothing;
    }
    let mut c = CacheConfig::default();
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        let one = |diags: &mut Diags, usage: &str| diags.arity(line, 0, 1, 1, usage);
        match name {
            "max_size" | "max_item_size" => {
                if one(diags, &format!("{name} <size>")) {
                    if let Some(n) = diags.size(&line.args[0]) {
                        if n < 64 * 1024 {
                            diags.push(line.args[0].error(format!("{name} must be at least 64kb")));
                        } else if name == "max_size" {
                            c.max_size = n;
                        } else {
                            c.max_item_size = n;
                        }
                    }
                }
            }
            "ttl" | "stale_while_revalidate" | "stale_if_error" | "lock_timeout" => {
                if one(diags, &format!("{name} <duration>")) {
                    if let Some(ms) = diags.duration(&line.args[0]) {
                        match name {
                            "ttl" => c.ttl_ms = ms,
                            "stale_while_revalidate" => c.stale_while_revalidate_ms = ms,
                            "stale_if_error" => c.stale_if_error_ms = ms,
                            _ => c.lock_timeout_ms = ms.max(1),
                        }
                    }
                }
            }
            "match_path" => {
                if diags.arity(line, 0, 1, usize::MAX, "match_path <path>...") {
                    for p in &line.args {
                        if p.text.starts_with('/') || p.text == "*" {
                            c.match_path.push(p.text.clone());
                        } else {
                            diags.push(
                                p.error(format!("path '{}' must start with '/'", p.text))
                                    .with_help("match_path /static/* /api/public/*"),
                            );
                        }
                    }
                }
            }
            "key" => {
                if diags.arity(line, 0, 1, usize::MAX, "key <placeholder>...") {
                    c.key = line.args.iter().map(|t| diags.template(t)).collect();
                }
            }
            "methods" => {
                if diags.arity(line, 0, 1, 2, "methods GET [HEAD]") {
                    let mut ms = Vec::new();
                    for t in &line.args {
                        match t.text.to_ascii_uppercase().as_str() {
                            m @ ("GET" | "HEAD") => ms.push(m.to_string()),
                            _ => diags.push(
                                t.error(format!("method '{}' cannot be cached", t.text))
                                    .with_help("GET and HEAD"),
                            ),
                        }
                    }
                    c.methods = ms;
                }
            }
            "bypass_header" => {
                if diags.arity(line, 0, 1, usize::MAX, "bypass_header <field>...") {
                    c.bypass_headers
                        .extend(line.args.iter().map(|t| t.text.to_ascii_lowercase()));
                }
            }
            "status_header" => {
                if one(diags, "status_header <field>|off") {
                    let v = &line.args[0].text;
                    c.status_header = (v != "off").then(|| v.clone());
                }
            }
            _ => diags.unknown_sub("cache", &line.name, SUBS),
        }
    }
    if c.max_item_size > c.max_size {
        c.max_item_size = c.max_size;
    }
    Compiled::Route(Route {
        matchers: m,
        group: None,
        handlers: vec![Handler::Cache(Box::new(c))],
    })
}
