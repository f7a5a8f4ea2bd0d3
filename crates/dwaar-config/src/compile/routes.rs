//! Turning a block of directives into an ordered list of [`Route`]s.
//!
//! Outside `route` blocks, directives are sorted into Caddy's default directive order
//! (adjusted by the `order` global option); directives of the same name are sorted by
//! the specificity of their path matcher. `handle` and `rewrite` routes at one level
//! become mutually exclusive groups.

use super::args::Diags;
use super::handlers::{compile_directive, Compiled};
use super::matchers::{named_definition, NamedMatchers};
use crate::diag::did_you_mean;
use crate::model::{Matcher, OrderRule, Route};
use crate::parser::Directive;

/// Caddy's default order of handler directives.
pub const DEFAULT_ORDER: &[&str] = &[
    "tracing",
    "map",
    "vars",
    "fs",
    "root",
    "log_append",
    "log_name",
    "skip_log",
    "log_skip",
    "header",
    "copy_response_headers",
    "request_body",
    "redir",
    "method",
    "rewrite",
    "uri",
    "try_files",
    "ip_filter",
    "rate_limit",
    "basicauth",
    "basic_auth",
    "forward_auth",
    "request_header",
    "encode",
    "cache",
    "push",
    "intercept",
    "templates",
    "invoke",
    "handle",
    "handle_path",
    "route",
    "abort",
    "error",
    "copy_response",
    "respond",
    "metrics",
    "reverse_proxy",
    "php_fastcgi",
    "file_server",
    "acme_server",
];

/// Directives whose routes exclude each other when several appear at one level.
const EXCLUSIVE: &[&str] = &["handle", "rewrite", "root"];

/// The effective directive order after `order` rules.
pub fn directive_order(rules: &[OrderRule]) -> Vec<String> {
    let mut order: Vec<String> = DEFAULT_ORDER.iter().map(|s| s.to_string()).collect();
    for r in rules {
        order.retain(|d| d != &r.directive);
        let idx = match (r.position.as_str(), r.other.as_deref()) {
            ("first", _) => Some(0),
            ("last", _) => Some(order.len()),
            ("before", Some(o)) => order.iter().position(|d| d == o),
            ("after", Some(o)) => order.iter().position(|d| d == o).map(|i| i + 1),
            _ => None,
        };
        let idx = idx.unwrap_or(order.len());
        order.insert(idx, r.directive.clone());
    }
    order
}

/// State shared while compiling one site.
pub struct RouteCx<'a> {
    pub order: &'a [String],
    pub group_counter: usize,
    /// Inside `handle_response` routes: whose response they handle.
    pub response_scope: Option<ResponseScope>,
    /// The document's named routes (`&(name) { ... }`), for `invoke`.
    pub named_routes: &'a std::collections::HashMap<String, &'a [Directive]>,
    /// The named routes being compiled, innermost last (an `invoke` cycle is an error).
    pub invoking: Vec<String>,
}

/// Whose response a `handle_response` block handles (what `copy_response` may copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseScope {
    /// A `reverse_proxy`'s upstream answer.
    Proxy,
    /// The response the handlers after an `intercept` wrote.
    Intercept,
}

/// Compiles `directives` (one block level) into routes.
pub fn compile_block(
    directives: &[Directive],
    outer: &NamedMatchers,
    ordered: bool,
    cx: &mut RouteCx<'_>,
    diags: &mut Diags,
) -> Vec<Route> {
    let mut named = outer.clone();
    for d in directives {
        if d.name.text.starts_with('@') && !d.name.quoted() {
            if let Some((name, set)) = named_definition(d, diags) {
                if named.insert(name.clone(), set).is_some() && !outer.contains_key(&name) {
                    diags.push(
                        d.name
                            .error(format!("matcher '@{name}' is defined twice in this block")),
                    );
                }
            }
        }
    }
    let mut items: Vec<(String, usize, Route)> = Vec::new();
    for d in directives {
        if d.name.text.starts_with('@') && !d.name.quoted() {
            continue;
        }
        match compile_directive(d, &named, cx, diags) {
            // handle_path is handle with a prefix strip: it sorts and groups as `handle`.
            Compiled::Route(r) => {
                let name = if d.name.text == "handle_path" {
                    "handle".to_string()
                } else {
                    d.name.text.clone()
                };
                items.push((name, items.len(), r))
            }
            Compiled::Nothing => {}
        }
    }
    if !ordered {
        // Canonical names for the order table (`basicauth` is `basic_auth`'s alias).
        items.sort_by(|a, b| {
            let pa = position(cx.order, &a.0);
            let pb = position(cx.order, &b.0);
            pa.cmp(&pb)
                .then_with(|| {
                    if a.0 == b.0 {
                        specificity_cmp(&a.0, &a.2, &b.2)
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .then(a.1.cmp(&b.1))
        });
        for name in EXCLUSIVE {
            let count = items.iter().filter(|(n, _, _)| n == name).count();
            if count > 1 {
                let group = format!("group{}", cx.group_counter);
                cx.group_counter += 1;
                for (n, _, r) in items.iter_mut() {
                    if n == name {
                        r.group = Some(group.clone());
                    }
                }
            }
        }
    }
    items.into_iter().map(|(_, _, r)| r).collect()
}

fn position(order: &[String], name: &str) -> usize {
    order.iter().position(|d| d == name).unwrap_or(order.len())
}

/// Longest single path matcher first; a route with a matcher before one without.
fn specificity_cmp(dir: &str, a: &Route, b: &Route) -> std::cmp::Ordering {
    let la = single_path_len(a);
    let lb = single_path_len(b);
    if dir == "vars" {
        return la.cmp(&lb);
    }
    if la == 0 && lb == 0 {
        return match (a.matchers.is_empty(), b.matchers.is_empty()) {
            (false, true) => std::cmp::Ordering::Less,
            (true, false) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        };
    }
    lb.cmp(&la)
}

fn single_path_len(r: &Route) -> usize {
    match r.matchers.as_slice() {
        [set] => match set.matchers.as_slice() {
            [Matcher::Path(p)] if p.len() == 1 => {
                let s = &p[0];
                // A trailing wildcard is less specific than the same literal path.
                if let Some(stripped) = s.strip_suffix('*') {
                    stripped.len()
                } else {
                    s.len() + 1
                }
            }
            _ => 0,
        },
        _ => 0,
    }
}

/// Error for a directive name nobody knows, with a suggestion.
pub fn unknown_directive(d: &Directive, diags: &mut Diags, known: &[&str]) {
    let mut e = d.name.error(format!("unknown directive '{}'", d.name.text));
    if let Some(s) = did_you_mean(&d.name.text, known.iter().copied()) {
        e = e.with_help(format!("did you mean '{s}'?"));
    }
    diags.push(e);
}
