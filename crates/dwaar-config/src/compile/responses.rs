//! Acting on a response before the client sees it: the response matchers,
//! `replace_status` and `handle_response` lines shared by `reverse_proxy` and
//! `intercept`, the `intercept` directive itself, and `copy_response` /
//! `copy_response_headers` (which only mean something inside a `reverse_proxy`'s
//! `handle_response` routes).

use super::args::{block_lines, Diags};
use super::matchers::{inline_matcher, NamedMatchers};
use super::routes::{compile_block, ResponseScope, RouteCx};
use crate::lexer::Token;
use crate::model::{
    FieldMatch, HandleResponse, Handler, MatcherSet, ReplaceStatus, ResponseHandling,
    ResponseMatcher, Route,
};
use crate::parser::Directive;

/// The response-rule lines a block may hold, read alike in `reverse_proxy` and
/// `intercept`.
impl ResponseHandling {
    /// Reads `line` if it is a response matcher, `replace_status` or `handle_response`
    /// (whose routes are compiled later, by [`compile_handle_response`]); `false` when
    /// the line is something else.
    pub fn read(&mut self, line: &Directive, diags: &mut Diags) -> bool {
        let name = line.name.text.as_str();
        if name.starts_with('@') {
            if let Some(m) = response_matcher(line, diags) {
                if self.response_matchers.iter().any(|x| x.name == m.name) {
                    diags.push(
                        line.name
                            .error(format!("response matcher '{name}' is defined twice")),
                    );
                } else {
                    self.response_matchers.push(m);
                }
            }
            return true;
        }
        match name {
            "replace_status" => {
                if !diags.arity(line, 0, 1, 2, "replace_status [@matcher] <code>") {
                    return true;
                }
                let (matcher, code) = match line.args.as_slice() {
                    [code] => (None, code),
                    [m, code] => (Some(m), code),
                    _ => return true,
                };
                let Some(matcher) = response_matcher_ref(matcher, "replace_status", diags) else {
                    return true;
                };
                match code.text.parse::<u16>() {
                    Ok(c) if (100..=999).contains(&c) => self
                        .replace_status
                        .push(ReplaceStatus { matcher, status: c }),
                    _ => diags.push(code.error(format!("'{}' is not a status code", code.text))),
                }
                true
            }
            "handle_response" => {
                if !diags.arity(line, 0, 0, 1, "handle_response [@matcher] { ... }") {
                    return true;
                }
                let Some(matcher) =
                    response_matcher_ref(line.args.first(), "handle_response", diags)
                else {
                    return true;
                };
                if line.block.is_none() {
                    diags.push(
                        line.name
                            .error("handle_response needs a block of directives"),
                    );
                    return true;
                }
                self.handle_response.push(HandleResponse {
                    matcher,
                    routes: Vec::new(),
                });
                true
            }
            _ => false,
        }
    }

    /// Every response matcher used by `replace_status` or `handle_response` is defined.
    pub fn check_used(&self, d: &Directive, diags: &mut Diags) {
        let used = self
            .replace_status
            .iter()
            .filter_map(|r| r.matcher.as_ref())
            .chain(
                self.handle_response
                    .iter()
                    .filter_map(|h| h.matcher.as_ref()),
            );
        for m in used {
            if !self.response_matchers.iter().any(|x| &x.name == m) {
                diags.push(d.name.error(format!(
                    "response matcher '@{m}' is used but this {} does not define it",
                    d.name.text
                )));
            }
        }
    }
}

/// `Some(None)`: no matcher token; `Some(Some(name))`: `@name`; `None`: not a response
/// matcher (reported).
fn response_matcher_ref(
    t: Option<&Token>,
    what: &str,
    diags: &mut Diags,
) -> Option<Option<String>> {
    match t {
        None => Some(None),
        Some(m) if m.text.starts_with('@') && m.text.len() > 1 => {
            Some(Some(m.text[1..].to_string()))
        }
        Some(m) => {
            diags.push(
                m.error(format!("{what} takes a response matcher (@name)"))
                    .with_help("@error status 5xx"),
            );
            None
        }
    }
}

/// Compiles the routes of the `handle_response` blocks of `d` (in order) into `blocks`.
pub fn compile_handle_response(
    d: &Directive,
    blocks: &mut [HandleResponse],
    scope: ResponseScope,
    named: &NamedMatchers,
    cx: &mut RouteCx<'_>,
    diags: &mut Diags,
) {
    let sources = block_lines(&d.block)
        .iter()
        .filter(|l| l.name.text == "handle_response")
        .filter_map(|l| l.block.as_ref());
    let outer = cx.response_scope.replace(scope);
    for (h, block) in blocks.iter_mut().zip(sources) {
        h.routes = compile_block(&block.directives, named, true, cx, diags);
    }
    cx.response_scope = outer;
}

/// `intercept [<matcher>] { @name ...; replace_status ...; handle_response ... }`.
pub fn intercept(
    d: &Directive,
    named: &NamedMatchers,
    cx: &mut RouteCx<'_>,
    diags: &mut Diags,
) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(d, skip, 0, 0, "intercept [<matcher>] { ... }") {
        return None;
    }
    let mut ic = ResponseHandling::default();
    for line in block_lines(&d.block) {
        if !ic.read(line, diags) {
            diags.unknown_sub(
                "intercept",
                &line.name,
                &["@name", "replace_status", "handle_response"],
            );
        }
    }
    ic.check_used(d, diags);
    if ic.replace_status.is_empty() && ic.handle_response.is_empty() {
        diags.push(
            d.name
                .error("'intercept' needs replace_status or handle_response")
                .with_help("intercept {\n    @error status 5xx\n    handle_response @error {\n        respond \"sorry\"\n    }\n}"),
        );
        return None;
    }
    compile_handle_response(
        d,
        &mut ic.handle_response,
        ResponseScope::Intercept,
        named,
        cx,
        diags,
    );
    Some(route(m, Handler::Intercept(Box::new(ic))))
}

/// `copy_response [<matcher>] [<status>] { status <status> }`.
pub fn copy_response(
    d: &Directive,
    named: &NamedMatchers,
    cx: &RouteCx<'_>,
    diags: &mut Diags,
) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !proxy_scope(d, cx, diags)
        || !diags.arity(d, skip, 0, 1, "copy_response [<matcher>] [<status>]")
    {
        return None;
    }
    let mut status = match d.args.get(skip) {
        Some(t) => Some(diags.status(t)?),
        None => None,
    };
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "status" if diags.arity(line, 0, 1, 1, "status <code>") => {
                status = Some(diags.status(&line.args[0])?);
            }
            "status" => {}
            _ => diags.unknown_sub("copy_response", &line.name, &["status"]),
        }
    }
    Some(route(m, Handler::CopyResponse { status }))
}

/// `copy_response_headers [<matcher>] { include <fields...> | exclude <fields...> }`.
pub fn copy_response_headers(
    d: &Directive,
    named: &NamedMatchers,
    cx: &RouteCx<'_>,
    diags: &mut Diags,
) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !proxy_scope(d, cx, diags)
        || !diags.arity(
            d,
            skip,
            0,
            0,
            "copy_response_headers [<matcher>] { include|exclude <fields...> }",
        )
    {
        return None;
    }
    let (mut include, mut exclude) = (Vec::new(), Vec::new());
    for line in block_lines(&d.block) {
        let list = match line.name.text.as_str() {
            "include" => &mut include,
            "exclude" => &mut exclude,
            _ => {
                diags.unknown_sub("copy_response_headers", &line.name, &["include", "exclude"]);
                continue;
            }
        };
        if diags.arity(
            line,
            0,
            1,
            usize::MAX,
            &format!("{} <field>...", line.name.text),
        ) {
            list.extend(line.args.iter().map(|a| a.text.to_ascii_lowercase()));
        }
    }
    if !include.is_empty() && !exclude.is_empty() {
        diags.push(
            d.name
                .error("copy_response_headers takes either include or exclude, not both"),
        );
        return None;
    }
    Some(route(m, Handler::CopyResponseHeaders { include, exclude }))
}

/// `copy_response*` read the upstream's answer, which only exists in a
/// `reverse_proxy`'s `handle_response` routes.
fn proxy_scope(d: &Directive, cx: &RouteCx<'_>, diags: &mut Diags) -> bool {
    if cx.response_scope == Some(ResponseScope::Proxy) {
        return true;
    }
    let mut e = d.name.error(format!(
        "'{}' only works inside a reverse_proxy's handle_response block",
        d.name.text
    ));
    if cx.response_scope == Some(ResponseScope::Intercept) {
        e = e.with_help("inside intercept, the original response is written when the routes write nothing; headers set by the routes are added to it");
    }
    diags.push(e);
    false
}

fn route(matchers: Vec<MatcherSet>, h: Handler) -> Route {
    Route {
        matchers,
        group: None,
        handlers: vec![h],
    }
}

/// Whether `s` is a status code (`404`) or class (`5xx`) a response matcher accepts.
pub fn status_pattern_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 3
        && (b'1'..=b'5').contains(&b[0])
        && ((b[1..].iter().all(u8::is_ascii_digit)) || &s[1..] == "xx")
}

/// `@name status <codes>` / `@name header <field> [<value>]`, or a block of such lines.
fn response_matcher(line: &Directive, diags: &mut Diags) -> Option<ResponseMatcher> {
    let name = line.name.text.trim_start_matches('@').to_string();
    let mut m = ResponseMatcher {
        name,
        status: Vec::new(),
        headers: Vec::new(),
    };
    let mut conditions: Vec<(Token, Vec<Token>)> = Vec::new();
    if let Some((first, rest)) = line.args.split_first() {
        conditions.push((first.clone(), rest.to_vec()));
    }
    for l in block_lines(&line.block) {
        conditions.push((l.name.clone(), l.args.clone()));
    }
    if conditions.is_empty() {
        diags.push(line.name.error(format!(
            "response matcher '{}' has no conditions",
            line.name.text
        )));
        return None;
    }
    for (kind, args) in conditions {
        match kind.text.as_str() {
            "status" => {
                if args.is_empty() {
                    diags.push(kind.error("status needs at least one code"));
                }
                for a in args {
                    if status_pattern_ok(&a.text) {
                        m.status.push(a.text.clone());
                    } else {
                        diags.push(a.error(format!(
                            "invalid status '{}': expected a code like 404 or a class like 5xx",
                            a.text
                        )));
                    }
                }
            }
            "header" => match args.split_first() {
                Some((field, values)) => m.headers.push(FieldMatch {
                    field: field.text.clone(),
                    values: values.iter().map(|v| v.text.clone()).collect(),
                }),
                None => diags.push(kind.error("header needs a field name")),
            },
            _ => diags.unknown_sub("response matcher", &kind, &["status", "header"]),
        }
    }
    Some(m)
}
