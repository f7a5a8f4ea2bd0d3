//! Handler directives: each turns one Dwaarfile directive into route(s) of the model.

use super::args::{block_lines, Diags};
use super::matchers::{inline_matcher, NamedMatchers};
use super::reverse_proxy::reverse_proxy;
use super::routes::{compile_block, unknown_directive, RouteCx};
use crate::lexer::Token;
use crate::model::{
    Handler, HeaderOp, HeaderOps, MapEntry, MapHandler, Matcher, MatcherSet, Route, UriOp,
    VarAssign,
};
use crate::parser::Directive;

/// What compiling one directive produced.
pub enum Compiled {
    Route(Route),
    Nothing,
}

/// Handler directives that work today.
pub const SUPPORTED: &[&str] = &[
    "reverse_proxy",
    "respond",
    "redir",
    "rewrite",
    "uri",
    "header",
    "request_header",
    "handle",
    "handle_path",
    "route",
    "error",
    "abort",
    "vars",
    "map",
    "request_body",
    "log_skip",
    "skip_log",
    "root",
    "file_server",
    "try_files",
    "php_fastcgi",
    "ip_filter",
    "rate_limit",
    "basic_auth",
    "basicauth",
    "forward_auth",
    "metrics",
    "encode",
    "cache",
    "intercept",
    "copy_response",
    "copy_response_headers",
    "method",
    "invoke",
    "log_append",
    "log_name",
    "tracing",
    "templates",
    "fs",
    "acme_server",
];

/// Directives Caddy (or Dwaar's roadmap) has whose runtime does not exist yet.
pub const NOT_YET: &[&str] = &["push"];

/// Site-level directives handled by the site compiler, not here.
pub const SITE_LEVEL: &[&str] = &[
    "bind",
    "handle_errors",
    "log",
    "tls",
    "security_headers",
    "analytics",
];

fn to_compiled(r: Option<Route>) -> Compiled {
    r.map_or(Compiled::Nothing, Compiled::Route)
}

fn route(matchers: Vec<MatcherSet>, handlers: Vec<Handler>) -> Compiled {
    Compiled::Route(Route {
        matchers,
        group: None,
        handlers,
    })
}

pub fn compile_directive(
    d: &Directive,
    named: &NamedMatchers,
    cx: &mut RouteCx<'_>,
    diags: &mut Diags,
) -> Compiled {
    let name = d.name.text.as_str();
    if d.name.quoted() {
        diags.push(
            d.name
                .error(format!("a directive name cannot be quoted: \"{name}\"")),
        );
        return Compiled::Nothing;
    }
    match name {
        "reverse_proxy" => {
            let (m, skip) = inline_matcher(d, named, diags);
            match reverse_proxy(d, skip, diags) {
                Some(mut rp) => {
                    // `handle_response` blocks: routes like any block of the site.
                    super::responses::compile_handle_response(
                        d,
                        &mut rp.responses.handle_response,
                        super::routes::ResponseScope::Proxy,
                        named,
                        cx,
                        diags,
                    );
                    route(m, vec![Handler::ReverseProxy(Box::new(rp))])
                }
                None => Compiled::Nothing,
            }
        }
        "respond" => respond(d, named, diags),
        "redir" => redir(d, named, diags),
        "rewrite" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, 1, "rewrite [matcher] <to>") || !diags.no_block(d) {
                return Compiled::Nothing;
            }
            let uri = diags.template(&d.args[skip]);
            route(m, vec![Handler::Rewrite { uri }])
        }
        "uri" => uri(d, named, diags),
        "encode" => super::encode::encode(d, named, diags),
        "cache" => super::cache::cache(d, named, diags),
        "metrics" => {
            // `metrics [<matcher>] { disable_openmetrics }`: Prometheus text here.
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 0, 0, "metrics [<matcher>]") {
                return Compiled::Nothing;
            }
            for line in block_lines(&d.block) {
                if line.name.text != "disable_openmetrics" {
                    diags.unknown_sub("metrics", &line.name, &["disable_openmetrics"]);
                }
            }
            route(m, vec![Handler::Metrics])
        }
        "acme_server" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 0, 0, "acme_server [<matcher>] { ... }") {
                return Compiled::Nothing;
            }
            match super::tls::acme_server(d, diags) {
                Some(c) => {
                    // JWS bodies are read before the routes run.
                    diags.body_placeholder = true;
                    route(m, vec![Handler::AcmeServer(Box::new(c))])
                }
                None => Compiled::Nothing,
            }
        }
        "root" => to_compiled(super::files::root(d, named, diags)),
        "ip_filter" => to_compiled(super::security::ip_filter(d, named, diags)),
        "rate_limit" => to_compiled(super::security::rate_limit(d, named, diags)),
        "basic_auth" | "basicauth" => to_compiled(super::security::basic_auth(d, named, diags)),
        "forward_auth" => to_compiled(super::security::forward_auth(d, named, diags)),
        "file_server" => to_compiled(super::files::file_server(d, named, diags)),
        "try_files" => to_compiled(super::files::try_files(d, diags)),
        "php_fastcgi" => to_compiled(super::files::php_fastcgi(d, named, diags)),
        "header" | "request_header" => header(d, named, diags),
        "intercept" => to_compiled(super::responses::intercept(d, named, cx, diags)),
        "log_append" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 2, 2, "log_append [<matcher>] <field> <value>")
                || !diags.no_block(d)
            {
                return Compiled::Nothing;
            }
            let field = &d.args[skip];
            // `<field`: the value is taken when the directive runs, not when the record
            // is written (Caddy's `early`).
            let (name, early) = match field.text.strip_prefix('<') {
                Some(rest) => (rest, true),
                None => (field.text.as_str(), false),
            };
            if name.is_empty() {
                diags.push(field.error("log_append needs a field name after '<'"));
                return Compiled::Nothing;
            }
            route(
                m,
                vec![Handler::LogAppend {
                    field: name.to_string(),
                    value: diags.template(&d.args[skip + 1]),
                    early,
                }],
            )
        }
        "invoke" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, 1, "invoke [<matcher>] <route-name>") || !diags.no_block(d)
            {
                return Compiled::Nothing;
            }
            let t = &d.args[skip];
            let Some(directives) = cx.named_routes.get(&t.text).copied() else {
                let mut e = t.error(format!("there is no named route '{}'", t.text));
                e = match crate::diag::did_you_mean(
                    &t.text,
                    cx.named_routes.keys().map(String::as_str),
                ) {
                    Some(s) => e.with_help(format!("did you mean '{s}'?")),
                    None => e.with_help(format!(
                        "define it at the top level: &({}) {{ ... }}",
                        t.text
                    )),
                };
                diags.push(e);
                return Compiled::Nothing;
            };
            if cx.invoking.contains(&t.text) {
                diags.push(t.error(format!(
                    "named route '{}' invokes itself (through {})",
                    t.text,
                    cx.invoking.join(" -> ")
                )));
                return Compiled::Nothing;
            }
            // Its own matchers: a named route does not see the site's. What is wrong in
            // it was reported once, where it is defined (`compile::check_named_routes`).
            cx.invoking.push(t.text.clone());
            let mut scratch = Diags {
                map_outputs: diags.map_outputs.clone(),
                filesystems: diags.filesystems.clone(),
                unnamed_rate_limits: diags.unnamed_rate_limits,
                ..Diags::default()
            };
            let routes = compile_block(directives, &NamedMatchers::new(), false, cx, &mut scratch);
            diags.unnamed_rate_limits = scratch.unnamed_rate_limits;
            cx.invoking.pop();
            route(m, vec![Handler::Subroute { routes }])
        }
        "method" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, 1, "method [<matcher>] <method>") || !diags.no_block(d) {
                return Compiled::Nothing;
            }
            let t = &d.args[skip];
            // A method is an HTTP token (RFC 9110 §9.1).
            let token = !t.text.is_empty()
                && t.text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                diags.push(t.error(format!("'{}' is not an HTTP method", t.text)));
                return Compiled::Nothing;
            }
            route(
                m,
                vec![Handler::Method {
                    method: t.text.to_ascii_uppercase(),
                }],
            )
        }
        "copy_response" => to_compiled(super::responses::copy_response(d, named, cx, diags)),
        "copy_response_headers" => {
            to_compiled(super::responses::copy_response_headers(d, named, cx, diags))
        }
        "handle" | "route" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(
                d,
                skip,
                0,
                0,
                &format!("{name} [matcher] {{ directives... }}"),
            ) {
                return Compiled::Nothing;
            }
            let routes = compile_block(block_lines(&d.block), named, name == "route", cx, diags);
            route(m, vec![Handler::Subroute { routes }])
        }
        "handle_path" => {
            let Some(first) = d.args.first() else {
                diags.push(
                    d.name
                        .error("'handle_path' needs a path matcher")
                        .with_help("handle_path /prefix/* { ... }"),
                );
                return Compiled::Nothing;
            };
            if !first.text.starts_with('/') || d.args.len() != 1 {
                diags.push(first.error("'handle_path' takes exactly one path matcher like /api/*").with_help("named matchers are not allowed here; use 'handle' with 'uri strip_prefix'"));
                return Compiled::Nothing;
            }
            let prefix = first
                .text
                .trim_end_matches('*')
                .trim_end_matches('/')
                .to_string();
            let (m, _) = inline_matcher(d, named, diags);
            let mut routes = vec![Route {
                matchers: vec![],
                group: None,
                handlers: vec![Handler::Uri(UriOp::StripPrefix { prefix })],
            }];
            routes.extend(compile_block(
                block_lines(&d.block),
                named,
                false,
                cx,
                diags,
            ));
            route(m, vec![Handler::Subroute { routes }])
        }
        "error" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, 2, "error [matcher] [<message>] <status>") {
                return Compiled::Nothing;
            }
            let rest = &d.args[skip..];
            let (message, status_tok) = match rest {
                [s] if s.text.parse::<u16>().is_ok() => (None, Some(s)),
                [msg] => (Some(msg), None),
                [msg, s] => (Some(msg), Some(s)),
                _ => (None, None),
            };
            let mut message = message.map(|t| diags.template(t)).unwrap_or_default();
            for line in block_lines(&d.block) {
                if line.name.text == "message" && diags.arity(line, 0, 1, 1, "message <text>") {
                    message = diags.template(&line.args[0]);
                } else if line.name.text != "message" {
                    diags.unknown_sub("error", &line.name, &["message"]);
                }
            }
            let status = match status_tok {
                Some(t) => match diags.status(t) {
                    Some(s) if s >= 400 => s,
                    Some(_) => {
                        diags.push(t.error("an error status must be 400 or above"));
                        return Compiled::Nothing;
                    }
                    None => return Compiled::Nothing,
                },
                None => 500,
            };
            route(m, vec![Handler::Error { status, message }])
        }
        "log_name" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, usize::MAX, "log_name [matcher] <names...>")
                || !diags.no_block(d)
            {
                return Compiled::Nothing;
            }
            let names = d.args[skip..].iter().map(|a| a.text.clone()).collect();
            route(m, vec![Handler::LogName { names }])
        }
        "log_skip" | "skip_log" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 0, 0, "log_skip [matcher]") || !diags.no_block(d) {
                return Compiled::Nothing;
            }
            route(m, vec![Handler::LogSkip])
        }
        "abort" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 0, 0, "abort [matcher]") || !diags.no_block(d) {
                return Compiled::Nothing;
            }
            route(m, vec![Handler::Abort])
        }
        "vars" => {
            let (m, skip) = inline_matcher(d, named, diags);
            let mut values = Vec::new();
            let rest = &d.args[skip..];
            if rest.len() == 2 {
                values.push(VarAssign {
                    name: rest[0].text.clone(),
                    value: diags.template(&rest[1]),
                });
            } else if !rest.is_empty() {
                diags.arity(
                    d,
                    skip,
                    2,
                    2,
                    "vars [matcher] [<name> <value>] { <name> <value>... }",
                );
                return Compiled::Nothing;
            }
            for line in block_lines(&d.block) {
                if diags.arity(line, 0, 1, 1, "<name> <value>") {
                    values.push(VarAssign {
                        name: line.name.text.clone(),
                        value: diags.template(&line.args[0]),
                    });
                }
            }
            if values.is_empty() {
                diags.push(
                    d.name
                        .error("'vars' sets nothing")
                        .with_help("vars <name> <value>"),
                );
                return Compiled::Nothing;
            }
            route(m, vec![Handler::Vars { values }])
        }
        "map" => map(d, named, diags),
        "request_body" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(
                d,
                skip,
                0,
                0,
                "request_body [matcher] { max_size <size>; set <body> }",
            ) {
                return Compiled::Nothing;
            }
            let (mut max, mut set) = (None, None);
            for line in block_lines(&d.block) {
                match line.name.text.as_str() {
                    "max_size" if diags.arity(line, 0, 1, 1, "max_size <size>") => {
                        max = diags.size(&line.args[0])
                    }
                    "set" if diags.arity(line, 0, 1, 1, "set <body>") => {
                        set = Some(diags.template(&line.args[0]))
                    }
                    "max_size" | "set" => {}
                    _ => diags.unknown_sub("request_body", &line.name, &["max_size", "set"]),
                }
            }
            if max.is_none() && set.is_none() {
                // A block without either (or with bad ones, reported) sets nothing.
                if !block_lines(&d.block)
                    .iter()
                    .any(|l| matches!(l.name.text.as_str(), "max_size" | "set"))
                {
                    diags.push(
                        d.name
                            .error("'request_body' needs a block with max_size or set")
                            .with_help("request_body { max_size 10MB }"),
                    );
                }
                return Compiled::Nothing;
            }
            route(m, vec![Handler::RequestBody { max_size: max, set }])
        }
        "tracing" => tracing(d, named, diags),
        "templates" => templates(d, named, diags),
        "fs" => {
            let (m, skip) = inline_matcher(d, named, diags);
            if !diags.arity(d, skip, 1, 1, "fs [<matcher>] <name>") || !diags.no_block(d) {
                return Compiled::Nothing;
            }
            match diags.filesystem(&d.args[skip]) {
                Some((name, root)) => route(m, vec![Handler::Fs { name, root }]),
                None => Compiled::Nothing,
            }
        }
        n if SITE_LEVEL.contains(&n) => {
            diags.push(d.name.error(format!(
                "'{n}' is only allowed at the top level of a site block"
            )));
            Compiled::Nothing
        }
        n if NOT_YET.contains(&n) => {
            diags.push(
                d.name
                    .error(format!("'{n}' is not supported yet"))
                    .with_help("remove it for now; it is on Dwaar's roadmap"),
            );
            Compiled::Nothing
        }
        _ => {
            let mut known: Vec<&str> = SUPPORTED.to_vec();
            known.extend_from_slice(NOT_YET);
            known.extend_from_slice(SITE_LEVEL);
            unknown_directive(d, diags, &known);
            Compiled::Nothing
        }
    }
}

/// `tracing [matcher] { span <name>; span_attributes { <key> <value> ... } }`: a span
/// per request, exported over OTLP to the collector the `OTEL_*` variables name.
fn tracing(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        0,
        "tracing [matcher] { span <name>; span_attributes { <key> <value> } }",
    ) {
        return Compiled::Nothing;
    }
    let mut span = None;
    let mut attributes = Vec::new();
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "span" => {
                if diags.arity(line, 0, 1, 1, "span <name>") {
                    span = Some(diags.template(&line.args[0]));
                }
            }
            "span_attributes" => {
                if !diags.arity(line, 0, 0, 0, "span_attributes { <key> <value> }") {
                    continue;
                }
                for a in block_lines(&line.block) {
                    if diags.arity(a, 0, 1, 1, "<key> <value>") {
                        attributes.push((a.name.text.clone(), diags.template(&a.args[0])));
                    }
                }
            }
            _ => diags.unknown_sub("tracing", &line.name, &["span", "span_attributes"]),
        }
    }
    route(
        m,
        vec![Handler::Tracing {
            span: span.unwrap_or_else(|| crate::placeholder::Template::parse("handler")),
            attributes,
        }],
    )
}

/// `templates [matcher] { mime <types...>; between <open> <close>; root <path> }`:
/// responses of those types are run as Go templates before they go out.
fn templates(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        0,
        "templates [matcher] { mime <types...>; between <open> <close>; root <path> }",
    ) {
        return Compiled::Nothing;
    }
    let mut mime = Vec::new();
    let mut between = None;
    let mut root = None;
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "mime" => {
                if diags.arity(line, 0, 1, usize::MAX, "mime <types...>") {
                    mime.extend(line.args.iter().map(|a| a.text.clone()));
                }
            }
            "between" => {
                if diags.arity(line, 0, 2, 2, "between <open> <close>") {
                    let (open, close) = (&line.args[0].text, &line.args[1].text);
                    if open.is_empty() || close.is_empty() {
                        diags.push(line.name.error("'between' delimiters cannot be empty"));
                    } else {
                        between = Some((open.clone(), close.clone()));
                    }
                }
            }
            "root" => {
                if diags.arity(line, 0, 1, 1, "root <path>") {
                    root = Some(diags.template(&line.args[0]));
                }
            }
            "extensions" => diags.push(
                line.name
                    .error("'extensions' loads Go plugin modules, which Dwaar has none of")
                    .with_help("remove the block; Dwaar's template functions are built in"),
            ),
            _ => diags.unknown_sub("templates", &line.name, &["mime", "between", "root"]),
        }
    }
    if mime.is_empty() {
        mime = vec![
            "text/html".into(),
            "text/plain".into(),
            "text/markdown".into(),
        ];
    }
    route(
        m,
        vec![Handler::Templates {
            mime,
            between,
            root,
        }],
    )
}

fn respond(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        2,
        "respond [matcher] [<body>|<status>] [<status>]",
    ) {
        return Compiled::Nothing;
    }
    let rest = &d.args[skip..];
    let is_status = |t: &Token| !t.quoted() && t.text.len() == 3 && t.text.parse::<u16>().is_ok();
    let (mut body, status_tok) = match rest {
        [] => (None, None),
        [one] if is_status(one) => (None, Some(one)),
        [one] => (Some(diags.template(one)), None),
        [b, s] => (Some(diags.template(b)), Some(s)),
        _ => (None, None),
    };
    let mut status = None;
    if let Some(t) = status_tok {
        match diags.status(t) {
            Some(s) => status = Some(s),
            None => return Compiled::Nothing,
        }
    }
    let mut close = false;
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "body" => {
                if diags.arity(line, 0, 1, 1, "body <text>") {
                    body = Some(diags.template(&line.args[0]));
                }
            }
            "close" => {
                if diags.arity(line, 0, 0, 0, "close") {
                    close = true;
                }
            }
            _ => diags.unknown_sub("respond", &line.name, &["body", "close"]),
        }
    }
    route(
        m,
        vec![Handler::StaticResponse {
            status,
            body,
            close,
        }],
    )
}

fn redir(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (mut m, mut skip) = inline_matcher(d, named, diags);
    // `redir /new-place` with a single argument: Caddy treats it as the target.
    if skip == 1 && d.args.len() == 1 && !d.args[0].text.starts_with('@') && d.args[0].text != "*" {
        m.clear();
        skip = 0;
    }
    if !diags.arity(
        d,
        skip,
        1,
        2,
        "redir [matcher] <to> [<code>|temporary|permanent|permanent_redirect|html]",
    ) || !diags.no_block(d)
    {
        return Compiled::Nothing;
    }
    let to = diags.template(&d.args[skip]);
    let mut status = 302;
    let mut html = false;
    if let Some(code) = d.args.get(skip + 1) {
        match code.text.as_str() {
            "temporary" => status = 302,
            "permanent" => status = 301,
            "permanent_redirect" => status = 308,
            "html" => {
                html = true;
                status = 200;
            }
            _ => match diags.status(code) {
                Some(s) if (300..400).contains(&s) => status = s,
                Some(_) => {
                    diags.push(
                        code.error(format!("redirect status must be 3xx, found {}", code.text))
                            .with_help("use 301, 302, 303, 307, 308, temporary, permanent or html"),
                    );
                    return Compiled::Nothing;
                }
                None => return Compiled::Nothing,
            },
        }
    }
    route(m, vec![Handler::Redirect { to, status, html }])
}

fn uri(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    let usage = "uri [matcher] strip_prefix|strip_suffix|replace|path_regexp <args...>";
    let Some(op_tok) = d.args.get(skip) else {
        diags.push(
            d.name
                .error("'uri' needs an operation")
                .with_help(format!("usage: {usage}")),
        );
        return Compiled::Nothing;
    };
    let rest = &d.args[skip + 1..];
    let op = match op_tok.text.as_str() {
        "strip_prefix" if diags.arity(d, skip + 1, 1, 1, "uri strip_prefix <prefix>") => {
            let p = &rest[0].text;
            UriOp::StripPrefix {
                prefix: if p.starts_with('/') {
                    p.clone()
                } else {
                    format!("/{p}")
                },
            }
        }
        "strip_suffix" if diags.arity(d, skip + 1, 1, 1, "uri strip_suffix <suffix>") => {
            UriOp::StripSuffix {
                suffix: rest[0].text.clone(),
            }
        }
        "replace" if diags.arity(d, skip + 1, 2, 3, "uri replace <find> <replace> [<limit>]") => {
            let limit = match rest.get(2) {
                Some(t) => match diags.number::<u32>(t, "limit") {
                    Some(v) => Some(v),
                    None => return Compiled::Nothing,
                },
                None => None,
            };
            UriOp::Replace {
                find: rest[0].text.clone(),
                replace: rest[1].text.clone(),
                limit,
            }
        }
        "path_regexp" if diags.arity(d, skip + 1, 2, 2, "uri path_regexp <regexp> <replace>") => {
            let Some(pattern) = diags.regex(&rest[0]) else {
                return Compiled::Nothing;
            };
            UriOp::PathRegexp {
                pattern,
                replace: rest[1].text.clone(),
            }
        }
        "strip_prefix" | "strip_suffix" | "replace" | "path_regexp" => return Compiled::Nothing,
        _ => {
            diags.unknown_sub(
                "uri",
                op_tok,
                &["strip_prefix", "strip_suffix", "replace", "path_regexp"],
            );
            return Compiled::Nothing;
        }
    };
    if !diags.no_block(d) {
        return Compiled::Nothing;
    }
    route(m, vec![Handler::Uri(op)])
}

fn header(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let response = d.name.text == "header";
    let (m, skip) = inline_matcher(d, named, diags);
    let mut ops = HeaderOps::default();
    let rest = &d.args[skip..];
    if !rest.is_empty() {
        header_line(&d.name, rest, response, &mut ops, diags);
    }
    for line in block_lines(&d.block) {
        if response && line.name.text == "defer" && line.args.is_empty() {
            ops.deferred = true;
            continue;
        }
        if response && line.name.text == "match" && line.block.is_some() {
            diags.push(
                line.name
                    .error("'match' (edits only for matching responses) is not supported yet")
                    .with_help(
                        "use intercept with a response matcher and header inside handle_response",
                    ),
            );
            continue;
        }
        let mut toks = vec![line.name.clone()];
        toks.extend(line.args.iter().cloned());
        header_line(&line.name, &toks, response, &mut ops, diags);
    }
    if ops.ops.is_empty() {
        if rest.is_empty() && d.block.is_none() {
            diags.push(
                d.name
                    .error(format!(
                        "'{}' changes nothing: name a header field",
                        d.name.text
                    ))
                    .with_help(format!(
                        "{} [matcher] [+|-|?|>]<field> [<value>]",
                        d.name.text
                    )),
            );
        }
        return Compiled::Nothing;
    }
    let h = if response {
        Handler::Headers(ops)
    } else {
        Handler::RequestHeaders(ops)
    };
    route(m, vec![h])
}

/// Parses `[+|-|?|>]field [value|find] [replace]` into `ops`.
pub fn header_line(
    at: &Token,
    toks: &[Token],
    response: bool,
    ops: &mut HeaderOps,
    diags: &mut Diags,
) {
    let field_tok = &toks[0];
    let mut field = field_tok.text.as_str();
    let mut prefix = None;
    if let Some(c) = field.chars().next() {
        if matches!(c, '+' | '-' | '?' | '>') {
            prefix = Some(c);
            field = &field[1..];
        }
    }
    if field.is_empty() {
        diags.push(field_tok.error("a header field name is needed"));
        return;
    }
    if !field.bytes().all(|b| b.is_ascii_graphic() && b != b':') && field != "*" {
        diags.push(field_tok.error(format!("invalid header field name '{field}'")));
        return;
    }
    if prefix == Some('>') {
        if !response {
            diags.push(field_tok.error("'>' (defer) only applies to response headers"));
            return;
        }
        ops.deferred = true;
    }
    let name = field.to_string();
    let args = &toks[1..];
    let op = match (prefix, args.len()) {
        (Some('-'), 0) => {
            if response {
                ops.deferred = true;
            }
            HeaderOp::Delete { name }
        }
        (Some('-'), _) => {
            diags.push(args[0].error(format!("deleting '{name}' takes no value")));
            return;
        }
        (Some('+'), 1) => HeaderOp::Add {
            name,
            value: diags.template(&args[0]),
        },
        (Some('?'), 1) => {
            if response {
                ops.deferred = true;
            }
            HeaderOp::Default {
                name,
                value: diags.template(&args[0]),
            }
        }
        (None | Some('>'), 1) => HeaderOp::Set {
            name,
            value: diags.template(&args[0]),
        },
        (None | Some('>'), 2) => {
            let (search, regex) = (args[0].text.clone(), true);
            if regex::RegexBuilder::new(&search)
                .size_limit(1 << 20)
                .build()
                .is_err()
            {
                diags.push(args[0].error(format!("invalid regular expression '{search}'")));
                return;
            }
            // Replacing needs the final field values, so it is deferred like a delete.
            if response {
                ops.deferred = true;
            }
            HeaderOp::Replace {
                name,
                search,
                replace: diags.template(&args[1]),
                regex,
            }
        }
        (_, 0) => {
            diags.push(
                field_tok
                    .error(format!("header field '{name}' needs a value"))
                    .with_help(format!(
                        "{field_tok} <value>, or -{name} to delete it",
                        field_tok = field_tok.text
                    )),
            );
            return;
        }
        _ => {
            let extra = args
                .get(if prefix == Some('+') || prefix == Some('?') {
                    1
                } else {
                    2
                })
                .unwrap_or(at);
            diags.push(
                extra
                    .error(format!("too many values for header field '{name}'"))
                    .with_help("quote values that contain spaces"),
            );
            return;
        }
    };
    ops.ops.push(op);
}

fn map(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        2,
        usize::MAX,
        "map [matcher] <source> <dest>... { <input> <outputs...> }",
    ) {
        return Compiled::Nothing;
    }
    let source = diags.template(&d.args[skip]);
    let destinations: Vec<String> = d.args[skip + 1..]
        .iter()
        .map(|t| {
            t.text
                .trim_start_matches('{')
                .trim_end_matches('}')
                .trim_start_matches("vars.")
                .to_string()
        })
        .collect();
    let mut mappings = Vec::new();
    let mut defaults = Vec::new();
    for line in block_lines(&d.block) {
        let outputs: Vec<_> = line.args.iter().map(|t| diags.template(t)).collect();
        if outputs.len() != destinations.len() {
            diags.push(line.name.error(format!(
                "map line has {} output(s) but there are {} destination(s)",
                outputs.len(),
                destinations.len()
            )));
            continue;
        }
        if line.name.text == "default" && !line.name.quoted() {
            defaults = outputs;
            continue;
        }
        let (input, regex) = match line.name.text.strip_prefix('~') {
            Some(re) if !line.name.quoted() => {
                let t = Token {
                    text: re.to_string(),
                    ..line.name.clone()
                };
                if diags.regex(&t).is_none() {
                    continue;
                }
                (re.to_string(), true)
            }
            _ => (line.name.text.clone(), false),
        };
        mappings.push(MapEntry {
            input,
            regex,
            outputs,
        });
    }
    route(
        m,
        vec![Handler::Map(MapHandler {
            source,
            destinations,
            mappings,
            defaults,
        })],
    )
}

/// The matcher `handle_errors <codes>` puts on its routes.
pub fn error_status_matcher(codes: Vec<String>) -> MatcherSet {
    MatcherSet {
        name: None,
        matchers: vec![Matcher::ErrorStatus(codes)],
    }
}
