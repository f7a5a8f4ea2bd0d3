//! The `expression` matcher: Caddy's CEL expressions.
//!
//! Caddy extends CEL with placeholders (`{path}`) and with matcher functions
//! (`path('/api/*')`, `header({'X-Key': 'v'})`, `remote_ip('10.0.0.0/8')`...). Here the
//! expression is rewritten into plain CEL: each placeholder becomes a variable
//! (`dwaar_ph0`...) filled in per request, and each matcher call a boolean variable
//! (`dwaar_m0`...) set by the matcher compiled from its arguments with the matcher
//! compiler every other matcher goes through. The rewritten text is parsed with the
//! `cel-interpreter` crate (0.8: its parser never panics on bad input) when the config
//! loads, so a syntax error is reported at the expression's line.

use super::args::Diags;
use super::matchers::add_matcher;
use crate::lexer::Token;
use crate::model::{ExpressionMatch, MatcherSet};
use crate::parser::Directive;

/// Whether `name` is a matcher an expression may call as a function (as in Caddy:
/// every matcher with arguments, except `not` and `expression` itself).
fn is_function(name: &str) -> bool {
    super::matchers::MATCHER_KINDS.contains(&name) && !matches!(name, "not" | "bot" | "expression")
}

/// Parses a CEL program. (cel-interpreter 0.8's LALRPOP parser reports every bad input
/// as an error; the ANTLR parser of later versions panics on many, a risk for a proxy
/// that loads configs it is sent.)
pub fn parse_cel(text: &str) -> Result<cel_interpreter::Program, String> {
    cel_interpreter::Program::compile(text).map_err(|e| e.to_string())
}

/// Compiles the expression in `tok` (Caddy's dialect) for the matcher set `set_name`.
pub fn compile(tok: &Token, set_name: Option<&str>, diags: &mut Diags) -> Option<ExpressionMatch> {
    let src = tok.text.as_str();
    let mut out = String::with_capacity(src.len() + 16);
    let mut placeholders: Vec<String> = Vec::new();
    let mut matchers: Vec<MatcherSet> = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    let errors = diags.error_count();
    while i < b.len() {
        let c = b[i];
        // String literals are copied as they are.
        if c == b'"' || c == b'\'' {
            let end = string_end(b, i);
            out.push_str(&src[i..end]);
            i = end;
            continue;
        }
        // `{name}` (not `\{`): a placeholder.
        if c == b'{' && (i == 0 || b[i - 1] != b'\\') {
            if let Some(len) = placeholder_len(&b[i + 1..]) {
                let name = &src[i + 1..i + 1 + len];
                let n = match placeholders.iter().position(|p| p == name) {
                    Some(n) => n,
                    None => {
                        placeholders.push(name.to_string());
                        placeholders.len() - 1
                    }
                };
                out.push_str(&format!("dwaar_ph{n}"));
                i += len + 2;
                continue;
            }
        }
        // `name(` at the start of an identifier, not a method call: a matcher function.
        if c.is_ascii_alphabetic() && (i == 0 || !is_ident(b[i - 1])) {
            let mut j = i;
            while j < b.len() && is_ident(b[j]) {
                j += 1;
            }
            let word = &src[i..j];
            let after = src[j..].trim_start();
            let method_call = src[..i].trim_end().ends_with('.');
            if !method_call && after.starts_with('(') && is_function(word) {
                let open = src.len() - after.len();
                let Some(close) = call_end(b, open) else {
                    diags.push(tok.error(format!("'{word}(' is not closed in the expression")));
                    return None;
                };
                let args = &src[open + 1..close];
                match matcher_call(tok, word, args, set_name, diags) {
                    Some(set) => {
                        out.push_str(&format!("dwaar_m{}", matchers.len()));
                        matchers.push(set);
                    }
                    None => return None,
                }
                i = close + 1;
                continue;
            }
            out.push_str(word);
            i = j;
            continue;
        }
        let ch = src[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    if diags.error_count() != errors {
        return None;
    }
    if let Err(e) = parse_cel(&out) {
        let first = e.lines().next().unwrap_or("").trim().to_string();
        diags.push(
            tok.error(format!("invalid expression: {first}"))
                .with_help("a CEL expression, such as {method} == \"POST\" && path('/api/*')"),
        );
        return None;
    }
    Some(ExpressionMatch {
        source: src.to_string(),
        program: out,
        placeholders,
        matchers,
    })
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The index just past the string literal starting at `start` (its quote).
fn string_end(b: &[u8], start: usize) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The length of a placeholder name after `{` (`[a-zA-Z][\w.-]*` then `}`).
fn placeholder_len(b: &[u8]) -> Option<usize> {
    if !b.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = b
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')))?;
    (b.get(len) == Some(&b'}')).then_some(len)
}

/// The index of the `)` closing the call opened at `open`.
fn call_end(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = string_end(b, i);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (b[i] == b')').then_some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A literal argument of a matcher function.
enum Literal {
    Str(String),
    List(Vec<String>),
    Map(Vec<(String, Vec<String>)>),
}

/// Reads the comma-separated literals of a call.
fn literals(s: &str) -> Result<Vec<Literal>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    skip_space(b, &mut i);
    while i < b.len() {
        out.push(literal(s, &mut i)?);
        skip_space(b, &mut i);
        if i < b.len() {
            if b[i] != b',' {
                return Err(format!("unexpected '{}'", &s[i..]));
            }
            i += 1;
            skip_space(b, &mut i);
        }
    }
    Ok(out)
}

fn skip_space(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn literal(s: &str, i: &mut usize) -> Result<Literal, String> {
    let b = s.as_bytes();
    match b.get(*i) {
        Some(b'"') | Some(b'\'') => string_literal(s, i).map(Literal::Str),
        Some(b'[') => {
            *i += 1;
            let mut items = Vec::new();
            loop {
                skip_space(b, i);
                if b.get(*i) == Some(&b']') {
                    *i += 1;
                    return Ok(Literal::List(items));
                }
                items.push(string_literal(s, i)?);
                skip_space(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {}
                    _ => return Err("a list of strings is not closed".into()),
                }
            }
        }
        Some(b'{') => {
            *i += 1;
            let mut entries = Vec::new();
            loop {
                skip_space(b, i);
                if b.get(*i) == Some(&b'}') {
                    *i += 1;
                    return Ok(Literal::Map(entries));
                }
                let key = string_literal(s, i)?;
                skip_space(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("':' expected after '{key}'"));
                }
                *i += 1;
                skip_space(b, i);
                let values = match literal(s, i)? {
                    Literal::Str(v) => vec![v],
                    Literal::List(v) => v,
                    Literal::Map(_) => return Err("a map value must be strings".into()),
                };
                entries.push((key, values));
                skip_space(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {}
                    _ => return Err("a map is not closed".into()),
                }
            }
        }
        _ => Err(format!(
            "expected a string, list or map, found '{}'",
            &s[*i..]
        )),
    }
}

fn string_literal(s: &str, i: &mut usize) -> Result<String, String> {
    let b = s.as_bytes();
    let Some(&q) = b.get(*i).filter(|c| matches!(c, b'"' | b'\'')) else {
        return Err(format!("expected a string, found '{}'", &s[*i..]));
    };
    let end = string_end(b, *i);
    if end > b.len() || b[end - 1] != q || end - *i < 2 {
        return Err("a string is not closed".into());
    }
    let inner = &s[*i + 1..end - 1];
    *i = end;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The matcher set a call such as `header({'X-Key': 'v'})` stands for, compiled like the
/// matcher line it is equivalent to (`header X-Key v`).
fn matcher_call(
    tok: &Token,
    func: &str,
    args: &str,
    set_name: Option<&str>,
    diags: &mut Diags,
) -> Option<MatcherSet> {
    let lits = match literals(args) {
        Ok(l) => l,
        Err(e) => {
            diags.push(tok.error(format!("in {func}(...): {e}")));
            return None;
        }
    };
    let word = |text: &str| {
        let mut t = tok.clone();
        t.text = text.to_string();
        t.kind = crate::lexer::TokenKind::Quoted;
        t
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    match (func, lits.as_slice()) {
        ("header" | "query" | "vars", [Literal::Map(entries)]) => {
            for (k, vs) in entries {
                match func {
                    "query" => lines.push(vs.iter().map(|v| format!("{k}={v}")).collect()),
                    _ => {
                        let mut l = vec![k.clone()];
                        l.extend(vs.iter().cloned());
                        lines.push(l);
                    }
                }
            }
        }
        ("header" | "query" | "vars", _) => {
            diags.push(tok.error(format!(
                "{func}() takes one map, such as {{'X-Key': 'value'}}"
            )));
            return None;
        }
        ("file", [Literal::Map(entries)]) => {
            // `file({'root': ..., 'try_files': [...], ...})`: the block form's lines.
            let bare = |text: &str| {
                let mut t = word(text);
                t.kind = crate::lexer::TokenKind::Word;
                t
            };
            let directives = entries
                .iter()
                .map(|(k, vs)| Directive {
                    name: bare(k),
                    args: vs.iter().map(|v| word(v)).collect(),
                    block: None,
                })
                .collect();
            let line = Directive {
                name: bare("file"),
                args: Vec::new(),
                block: Some(crate::parser::Block {
                    open: tok.span,
                    directives,
                    close: tok.span,
                }),
            };
            let mut set = MatcherSet {
                name: None,
                matchers: Vec::new(),
            };
            add_matcher(&mut set, &line, diags);
            return Some(set);
        }
        (_, lits) => {
            let mut l = Vec::new();
            for lit in lits {
                match lit {
                    Literal::Str(s) => l.push(s.clone()),
                    Literal::List(v) => l.extend(v.iter().cloned()),
                    Literal::Map(_) => {
                        diags.push(tok.error(format!("{func}() takes strings")));
                        return None;
                    }
                }
            }
            lines.push(l);
        }
    }
    let mut set = MatcherSet {
        name: set_name.map(str::to_string),
        matchers: Vec::new(),
    };
    for args in lines {
        let line = Directive {
            name: {
                let mut t = word(func);
                t.kind = crate::lexer::TokenKind::Word;
                t
            },
            args: args.iter().map(|a| word(a)).collect(),
            block: None,
        };
        add_matcher(&mut set, &line, diags);
    }
    set.name = None;
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        crate::lexer::lex(Default::default(), &format!("`{text}`"), false)
            .0
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no token"))
    }

    #[test]
    fn placeholders_and_matcher_calls_become_variables() {
        let mut diags = Diags::default();
        let e = compile(
            &token(r#"{method} == "POST" && path('/api/*', "/v2/*") && header({'X-Key': ['a', 'b']}) && !{path}.startsWith("/x{y}")"#),
            Some("m"),
            &mut diags,
        )
        .unwrap_or_else(|| panic!("{:?}", diags.list));
        assert_eq!(
            e.program,
            r#"dwaar_ph0 == "POST" && dwaar_m0 && dwaar_m1 && !dwaar_ph1.startsWith("/x{y}")"#
        );
        assert_eq!(e.placeholders, vec!["method", "path"]);
        assert_eq!(e.matchers.len(), 2);
    }

    #[test]
    fn errors_name_the_problem() {
        for (src, want) in [
            ("{path} ==", "invalid expression"),
            ("path('/a'", "not closed"),
            ("header('X')", "takes one map"),
            ("path_regexp('(')", "regular expression"),
            ("file({'tries': ['a']})", "unknown subdirective"),
        ] {
            let mut diags = Diags::default();
            assert!(compile(&token(src), None, &mut diags).is_none(), "{src}");
            let text = format!("{:?}", diags.list);
            assert!(text.contains(want), "{src}: {text}");
        }
    }
}
