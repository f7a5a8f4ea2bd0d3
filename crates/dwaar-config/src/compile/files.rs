//! Static files and PHP: `root`, `file_server`, `try_files`, the `file` matcher, and
//! `php_fastcgi` (expanded into routes the way Caddy documents it).

use super::args::{block_lines, Diags};
use super::matchers::{inline_matcher, NamedMatchers};
use super::reverse_proxy;
use crate::model::{
    Browse, FastCgi, FileMatch, FileServer, Handler, Matcher, MatcherSet, Route, VarAssign,
};
use crate::parser::Directive;
use crate::placeholder::Template;

pub const TRY_POLICIES: &[&str] = &[
    "first_exist",
    "first_exist_fallback",
    "smallest_size",
    "largest_size",
    "most_recently_modified",
];
const ENCODINGS: &[&str] = &["br", "zstd", "gzip"];

fn one_route(matchers: Vec<MatcherSet>, handler: Handler) -> Route {
    Route {
        matchers,
        group: None,
        handlers: vec![handler],
    }
}

/// `root [matcher] <path>`.
pub fn root(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(d, skip, 1, 1, "root [matcher] <path>") || !diags.no_block(d) {
        return None;
    }
    let path = diags.template(&d.args[skip]);
    Some(one_route(m, Handler::Root { path }))
}

/// `file_server [matcher] [browse] { ... }`.
pub fn file_server(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(d, skip, 0, 1, "file_server [matcher] [browse] { ... }") {
        return None;
    }
    let mut fs = FileServer::default();
    if let Some(a) = d.args.get(skip) {
        if a.text == "browse" {
            fs.browse = Some(Browse::default());
        } else {
            diags.push(
                a.error(format!("unknown file_server argument '{}'", a.text))
                    .with_help("file_server [browse]"),
            );
        }
    }
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "root" => {
                if diags.arity(line, 0, 1, 1, "root <path>") {
                    fs.root = Some(diags.template(&line.args[0]));
                }
            }
            "hide" => {
                if diags.arity(line, 0, 1, usize::MAX, "hide <file|glob>...") {
                    fs.hide.extend(line.args.iter().map(|a| a.text.clone()));
                }
            }
            "index" => {
                if diags.arity(line, 0, 1, usize::MAX, "index <file>...") {
                    fs.index = line.args.iter().map(|a| a.text.clone()).collect();
                }
            }
            "browse" => {
                if diags.arity(line, 0, 0, 1, "browse [<template_file>]") {
                    if let Some(t) = line.args.first() {
                        diags.push(
                            t.error("browse templates are not supported yet")
                                .with_help("use 'browse' for the built-in listing page"),
                        );
                    }
                    fs.browse = Some(Browse::default());
                    for sub in block_lines(&line.block) {
                        diags.unknown_sub("browse", &sub.name, &[]);
                    }
                }
            }
            "precompressed" => {
                let list: Vec<&str> = if line.args.is_empty() {
                    ENCODINGS.to_vec()
                } else {
                    line.args.iter().map(|a| a.text.as_str()).collect()
                };
                for (i, e) in list.iter().enumerate() {
                    if ENCODINGS.contains(e) {
                        fs.precompressed.push(e.to_string());
                    } else if let Some(t) = line.args.get(i) {
                        diags.unknown_sub("precompressed", t, ENCODINGS);
                    }
                }
            }
            "status" => {
                if diags.arity(line, 0, 1, 1, "status <code>") {
                    fs.status = diags.status(&line.args[0]);
                }
            }
            "disable_canonical_uris" | "pass_thru" => {
                if diags.arity(line, 0, 0, 0, name) {
                    if name == "pass_thru" {
                        fs.pass_thru = true;
                    } else {
                        fs.disable_canonical_uris = true;
                    }
                }
            }
            "fs" => {
                if diags.arity(line, 0, 1, 1, "fs <name>") {
                    if fs.fs.is_some() {
                        diags.push(line.name.error("file_server has its filesystem already"));
                    } else if let Some((name, root)) = diags.filesystem(&line.args[0]) {
                        fs.fs = Some(crate::model::Filesystem { name, root });
                    }
                }
            }
            "etag_file_extensions" => diags.push(
                line.name
                    .error(format!("file_server option '{name}' is not supported yet")),
            ),
            _ => diags.unknown_sub(
                "file_server",
                &line.name,
                &[
                    "root",
                    "fs",
                    "hide",
                    "index",
                    "browse",
                    "precompressed",
                    "status",
                    "disable_canonical_uris",
                    "pass_thru",
                ],
            ),
        }
    }
    Some(one_route(m, Handler::FileServer(Box::new(fs))))
}

/// `try_files <files...> { policy <p> }`: a rewrite to the first candidate that exists.
pub fn try_files(d: &Directive, diags: &mut Diags) -> Option<Route> {
    if !diags.arity(d, 0, 1, usize::MAX, "try_files <files...>") {
        return None;
    }
    // `=404`: the error when no candidate exists; it ends the list.
    let status_at = d.args.iter().position(|a| a.text.starts_with('='));
    let mut fallback_status = None;
    if let Some(i) = status_at {
        let t = &d.args[i];
        match t.text[1..].parse::<u16>() {
            Ok(s) if (400..=599).contains(&s) => fallback_status = Some(s),
            _ => {
                diags.push(
                    t.error(format!("'{}' is not an error status", t.text))
                        .with_help("try_files {path} /index.html =404"),
                );
                return None;
            }
        }
        if let Some(extra) = d.args.get(i + 1) {
            diags.push(extra.error("nothing may follow the =status fallback of try_files"));
            return None;
        }
    }
    let files = &d.args[..status_at.unwrap_or(d.args.len())];
    let mut fm = FileMatch {
        root: None,
        try_files: files.iter().map(|a| diags.template(a)).collect(),
        try_policy: "first_exist".into(),
        split_path: Vec::new(),
        fallback_status,
    };
    for line in block_lines(&d.block) {
        if line.name.text == "policy" {
            if diags.arity(line, 0, 1, 1, "policy <policy>") {
                set_policy(&mut fm, &line.args[0], diags);
            }
        } else {
            diags.unknown_sub("try_files", &line.name, &["policy"]);
        }
    }
    Some(one_route(Vec::new(), Handler::TryFiles(fm)))
}

fn set_policy(fm: &mut FileMatch, t: &crate::lexer::Token, diags: &mut Diags) {
    if TRY_POLICIES.contains(&t.text.as_str()) {
        fm.try_policy = t.text.clone();
    } else {
        diags.unknown_sub("try_policy", t, TRY_POLICIES);
    }
}

/// The `file` matcher: `file <files...>` or `file { root, try_files, try_policy, split_path }`.
pub fn file_matcher(line: &Directive, diags: &mut Diags) -> Option<Matcher> {
    let mut fm = FileMatch {
        root: None,
        try_files: line.args.iter().map(|a| diags.template(a)).collect(),
        try_policy: "first_exist".into(),
        split_path: Vec::new(),
        fallback_status: None,
    };
    for l in block_lines(&line.block) {
        match l.name.text.as_str() {
            "root" => {
                if diags.arity(l, 0, 1, 1, "root <path>") {
                    fm.root = Some(diags.template(&l.args[0]));
                }
            }
            "try_files" => {
                if diags.arity(l, 0, 1, usize::MAX, "try_files <files...>") {
                    fm.try_files = l.args.iter().map(|a| diags.template(a)).collect();
                }
            }
            "try_policy" => {
                if diags.arity(l, 0, 1, 1, "try_policy <policy>") {
                    set_policy(&mut fm, &l.args[0], diags);
                }
            }
            "split_path" => {
                if diags.arity(l, 0, 1, usize::MAX, "split_path <delimiter>...") {
                    fm.split_path = l.args.iter().map(|a| a.text.clone()).collect();
                }
            }
            _ => diags.unknown_sub(
                "file",
                &l.name,
                &["root", "try_files", "try_policy", "split_path"],
            ),
        }
    }
    Some(Matcher::File(fm))
}

/// `php_fastcgi [matcher] <upstreams...> { ... }`, expanded like Caddy:
///
/// ```text
/// route {
///     @canonicalPath { file {path}/index.php; not path */ }
///     redir @canonicalPath {orig_path}/{orig_?query} 308
///     @indexFiles file { try_files {path} {path}/index.php index.php; split_path .php }
///     rewrite @indexFiles {file_match.relative}
///     @phpFiles path *.php
///     reverse_proxy @phpFiles <upstreams> { transport fastcgi { split .php } }
/// }
/// ```
pub fn php_fastcgi(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    let mut upstream_tokens: Vec<crate::lexer::Token> = d.args[skip..].to_vec();
    let mut split = vec![".php".to_string()];
    let mut index = "index.php".to_string();
    let mut try_override: Option<Vec<Template>> = None;
    let mut fcgi = FastCgi::default();
    let mut rp_lines: Vec<Directive> = Vec::new();
    let mut transport_lines: Vec<Directive> = Vec::new();
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "root" => {
                if diags.arity(line, 0, 1, 1, "root <path>") {
                    fcgi.root = Some(diags.template(&line.args[0]));
                }
            }
            "split" => {
                if diags.arity(line, 0, 1, usize::MAX, "split <delimiter>...") {
                    split = line.args.iter().map(|a| a.text.clone()).collect();
                }
            }
            "index" => {
                if diags.arity(line, 0, 1, 1, "index <file>|off") {
                    index = line.args[0].text.clone();
                }
            }
            "env" => {
                if diags.arity(line, 0, 2, 2, "env <key> <value>") {
                    fcgi.env.push(VarAssign {
                        name: line.args[0].text.clone(),
                        value: diags.template(&line.args[1]),
                    });
                }
            }
            "resolve_root_symlink" | "capture_stderr" => {
                if diags.arity(line, 0, 0, 0, name) {
                    if name == "capture_stderr" {
                        fcgi.capture_stderr = true;
                    } else {
                        fcgi.resolve_root_symlink = true;
                    }
                }
            }
            "try_files" => {
                if diags.arity(line, 0, 1, usize::MAX, "try_files <files...>") {
                    try_override = Some(line.args.iter().map(|a| diags.template(a)).collect());
                }
            }
            "dial_timeout" | "read_timeout" | "write_timeout" => transport_lines.push(line.clone()),
            "to" => upstream_tokens.extend(line.args.iter().cloned()),
            // Everything else is a reverse_proxy option (load balancing, health checks,
            // header manipulation).
            _ => rp_lines.push(line.clone()),
        }
    }
    if upstream_tokens.is_empty() {
        diags.push(
            d.name
                .error("php_fastcgi needs an upstream")
                .with_help("php_fastcgi localhost:9000 or php_fastcgi unix//run/php/php-fpm.sock"),
        );
        return None;
    }
    fcgi.split_path = split.clone();
    // Build the reverse_proxy directive this expands to and compile it with the
    // reverse_proxy compiler, so every load-balancing option behaves the same.
    let word = |text: &str| {
        let mut t = d.name.clone();
        t.text = text.to_string();
        t
    };
    let mut transport = Directive {
        name: word("transport"),
        args: vec![word("fastcgi")],
        block: None,
    };
    let span = d.name.span;
    transport.block = Some(crate::parser::Block {
        open: span,
        directives: transport_lines,
        close: span,
    });
    rp_lines.push(transport);
    let rp = Directive {
        name: word("reverse_proxy"),
        args: upstream_tokens,
        block: Some(crate::parser::Block {
            open: span,
            directives: rp_lines,
            close: span,
        }),
    };
    let mut rp = reverse_proxy::reverse_proxy(&rp, 0, diags)?;
    rp.transport.fastcgi = Some(fcgi.clone());
    let proxy = Handler::ReverseProxy(Box::new(rp));
    let mut routes = Vec::new();
    if index != "off" {
        // A directory with an index file but no trailing slash: redirect.
        routes.push(one_route(
            vec![MatcherSet {
                name: None,
                matchers: vec![
                    Matcher::File(FileMatch {
                        root: fcgi.root.clone(),
                        try_files: vec![Template::parse(&format!("{{path}}/{index}"))],
                        try_policy: "first_exist".into(),
                        split_path: Vec::new(),
                        fallback_status: None,
                    }),
                    Matcher::Not(Box::new(MatcherSet {
                        name: None,
                        matchers: vec![Matcher::Path(vec!["*/".into()])],
                    })),
                ],
            }],
            Handler::Redirect {
                to: Template::parse(
                    "{http.request.orig_uri.path}/{http.request.orig_uri.prefixed_query}",
                ),
                status: 308,
                html: false,
            },
        ));
    }
    // Like Caddy: the last candidate is the fallback when it is a PHP file.
    let fallback = try_override.as_ref().is_none_or(|t| {
        t.last()
            .is_some_and(|l| split.iter().any(|s| l.raw().ends_with(s.as_str())))
    });
    let candidates = try_override.unwrap_or_else(|| {
        if index == "off" {
            vec![Template::parse("{path}")]
        } else {
            vec![
                Template::parse("{path}"),
                Template::parse(&format!("{{path}}/{index}")),
                Template::parse(&index),
            ]
        }
    });
    routes.push(one_route(
        Vec::new(),
        Handler::TryFiles(FileMatch {
            root: fcgi.root.clone(),
            try_files: candidates,
            try_policy: if fallback && index != "off" {
                "first_exist_fallback".into()
            } else {
                "first_exist".into()
            },
            split_path: split.clone(),
            fallback_status: None,
        }),
    ));
    routes.push(Route {
        matchers: vec![MatcherSet {
            name: None,
            matchers: vec![Matcher::Path(
                split.iter().map(|s| format!("*{s}")).collect(),
            )],
        }],
        group: None,
        handlers: vec![proxy],
    });
    Some(Route {
        matchers: m,
        group: None,
        handlers: vec![Handler::Subroute { routes }],
    })
}
