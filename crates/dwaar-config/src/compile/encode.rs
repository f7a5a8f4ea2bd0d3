//! `encode`: response compression (Caddy's syntax, plus `br`).

use super::args::{block_lines, Diags};
use super::handlers::Compiled;
use super::matchers::{inline_matcher, NamedMatchers};
use crate::model::{Encode, EncodeFormat, EncodeFormatLevel, Handler, Route};
use crate::parser::Directive;

const SUBS: &[&str] = &["gzip", "zstd", "br", "minimum_length", "match"];

fn format(name: &str) -> Option<EncodeFormat> {
    match name {
        "gzip" => Some(EncodeFormat::Gzip),
        "zstd" => Some(EncodeFormat::Zstd),
        "br" => Some(EncodeFormat::Br),
        _ => None,
    }
}

/// The level a format accepts: gzip 1-9, zstd 1-22 (or fastest/default/better/best),
/// br 0-11.
fn level(f: EncodeFormat, t: &crate::lexer::Token, diags: &mut Diags) -> Option<u32> {
    let named = match (f, t.text.as_str()) {
        (EncodeFormat::Zstd, "fastest") => Some(1),
        (EncodeFormat::Zstd, "default") => Some(3),
        (EncodeFormat::Zstd, "better") => Some(7),
        (EncodeFormat::Zstd, "best") => Some(11),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let (lo, hi) = match f {
        EncodeFormat::Gzip => (1, 9),
        EncodeFormat::Zstd => (1, 22),
        EncodeFormat::Br => (0, 11),
    };
    match t.text.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Some(v),
        _ => {
            diags.push(
                t.error(format!("invalid compression level '{}'", t.text))
                    .with_help(format!("a whole number from {lo} to {hi}")),
            );
            None
        }
    }
}

fn add(e: &mut Encode, f: EncodeFormat, level: Option<u32>) {
    match e.formats.iter_mut().find(|x| x.format == f) {
        Some(x) => x.level = level.or(x.level),
        None => e.formats.push(EncodeFormatLevel { format: f, level }),
    }
}

/// `encode [<matcher>] [<format>...] { gzip [<level>]; zstd [<level>]; br [<level>];
/// minimum_length <size>; match { header Content-Type <type>...; status <code>... } }`
pub fn encode(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Compiled {
    let (m, skip) = inline_matcher(d, named, diags);
    let mut e = Encode::default();
    for t in &d.args[skip.min(d.args.len())..] {
        match format(&t.text) {
            Some(f) => add(&mut e, f, None),
            None => diags.push(
                t.error(format!("unknown encoding format '{}'", t.text))
                    .with_help("gzip, zstd or br"),
            ),
        }
    }
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        if let Some(f) = format(name) {
            if diags.arity(line, 0, 0, 1, &format!("{name} [<level>]")) {
                let lvl = line.args.first().and_then(|t| level(f, t, diags));
                add(&mut e, f, lvl);
            }
            continue;
        }
        match name {
            "minimum_length" => {
                if diags.arity(line, 0, 1, 1, "minimum_length <bytes>") {
                    if let Some(n) = diags.size(&line.args[0]) {
                        e.minimum_length = n;
                    }
                }
            }
            "match" => {
                if !diags.arity(
                    line,
                    0,
                    0,
                    0,
                    "match { header Content-Type <type>...; status <code>... }",
                ) {
                    continue;
                }
                for m in block_lines(&line.block) {
                    match m.name.text.as_str() {
                        "header" => {
                            if diags.arity(m, 0, 2, usize::MAX, "header Content-Type <type>...") {
                                if !m.args[0].text.eq_ignore_ascii_case("content-type") {
                                    diags.push(
                                        m.args[0]
                                            .error("encode matches on the Content-Type header only")
                                            .with_help(
                                                "header Content-Type text/* application/json*",
                                            ),
                                    );
                                } else {
                                    e.match_types
                                        .extend(m.args[1..].iter().map(|t| t.text.clone()));
                                }
                            }
                        }
                        "status" => {
                            if diags.arity(m, 0, 1, usize::MAX, "status <code|class>...") {
                                for t in &m.args {
                                    let ok = t.text.len() == 3
                                        && (t
                                            .text
                                            .parse::<u16>()
                                            .is_ok_and(|c| (100..600).contains(&c))
                                            || (t.text.ends_with("xx")
                                                && t.text[..1]
                                                    .parse::<u8>()
                                                    .is_ok_and(|c| (1..6).contains(&c))));
                                    if ok {
                                        e.match_status.push(t.text.clone());
                                    } else {
                                        diags.push(
                                            t.error(format!("invalid status '{}'", t.text))
                                                .with_help("a code like 200 or a class like 2xx"),
                                        );
                                    }
                                }
                            }
                        }
                        _ => diags.unknown_sub("match", &m.name, &["header", "status"]),
                    }
                }
            }
            _ => diags.unknown_sub("encode", &line.name, SUBS),
        }
    }
    if e.formats.is_empty() {
        add(&mut e, EncodeFormat::Zstd, None);
        add(&mut e, EncodeFormat::Gzip, None);
    }
    Compiled::Route(Route {
        matchers: m,
        group: None,
        handlers: vec![Handler::Encode(Box::new(e))],
    })
}
