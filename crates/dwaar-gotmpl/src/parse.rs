//! Template text into a tree, with Go's rules: actions between delimiters (`{{` `}}` by
//! default), `{{-` and `-}}` trimming the white space next to them, `{{/* comments */}}`,
//! and inside actions pipelines of commands, variables, fields, literals, and the
//! control structures `if`, `else`, `range`, `with`, `define`, `template`, `block`,
//! `break`, `continue`, `end`.

use crate::Error;
use std::collections::HashMap;
use std::rc::Rc;

/// A parsed list of nodes.
pub type List = Vec<Node>;

#[derive(Debug, Clone)]
pub enum Node {
    Text(String),
    Action {
        line: usize,
        pipe: Pipe,
    },
    If(Branch),
    With(Branch),
    Range {
        line: usize,
        pipe: Pipe,
        body: List,
        otherwise: Option<List>,
    },
    Template {
        line: usize,
        name: String,
        pipe: Option<Pipe>,
    },
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub struct Branch {
    pub line: usize,
    pub pipe: Pipe,
    pub body: List,
    pub otherwise: Option<List>,
}

/// `$x := ...` / `$x = ...` / `$i, $e := ...` followed by commands joined by `|`.
#[derive(Debug, Clone, Default)]
pub struct Pipe {
    pub decl: Vec<String>,
    /// `=` (assign to an existing variable) rather than `:=`.
    pub assign: bool,
    pub commands: Vec<Command>,
}

/// Operands of one command: the first may be a function or method taking the rest.
#[derive(Debug, Clone)]
pub struct Command {
    pub args: Vec<Operand>,
}

#[derive(Debug, Clone)]
pub enum Operand {
    Dot,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `.A.B` on dot.
    Field(Vec<String>),
    /// `$x.A.B`.
    Variable(String, Vec<String>),
    /// A function by name.
    Func(String),
    /// `(pipeline).A.B`.
    Sub(Box<Pipe>, Vec<String>),
}

/// The templates one text defines: the main one (under its name) and its `define`s.
pub type Set = HashMap<String, Rc<List>>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    /// An action's tokens with the line it starts on.
    Action(Vec<ATok>, usize),
}

#[derive(Debug, Clone, PartialEq)]
enum ATok {
    Ident(String),
    Field(String),
    Var(String),
    Dot,
    Str(String),
    Num(String),
    Char(i64),
    Declare,
    Assign,
    Pipe,
    LParen,
    RParen,
    Comma,
}

/// Splits `text` into text and actions.
fn lex(text: &str, left: &str, right: &str) -> Result<Vec<Tok>, Error> {
    let mut out: Vec<Tok> = Vec::new();
    let mut rest = text;
    let mut line = 1usize;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(start) = rest.find(left) else {
            push_text(&mut out, rest, trim_next, false);
            break;
        };
        let after = &rest[start + left.len()..];
        // `{{- ` trims the text before it (a space must follow the dash).
        let trim_before = after.starts_with("- ")
            || after.starts_with("-\t")
            || after.starts_with("-\n")
            || after.starts_with("-\r");
        push_text(&mut out, &rest[..start], trim_next, trim_before);
        let action_line = line + rest[..start].matches('\n').count();
        let body_start = if trim_before { &after[2..] } else { after };
        // The action ends at the first right delimiter outside a quoted string or
        // comment.
        let end = find_action_end(body_start, right).ok_or_else(|| Error::Parse {
            line: action_line,
            message: "unclosed action".into(),
        })?;
        let mut body = &body_start[..end];
        let consumed = (rest.len() - body_start.len()) + end + right.len();
        // ` -}}` trims the text after it (white space must precede the dash).
        trim_next =
            body.ends_with('-') && body[..body.len() - 1].ends_with([' ', '\t', '\n', '\r']);
        if trim_next {
            body = &body[..body.len() - 1];
        }
        let inner = body.trim();
        if let Some(comment) = inner.strip_prefix("/*") {
            if !comment.ends_with("*/") {
                return Err(Error::Parse {
                    line: action_line,
                    message: "comment ends before closing delimiter".into(),
                });
            }
        } else {
            let toks = lex_action(body, action_line)?;
            if toks.is_empty() {
                return Err(Error::Parse {
                    line: action_line,
                    message: "missing value for command".into(),
                });
            }
            out.push(Tok::Action(toks, action_line));
        }
        line += rest[..consumed].matches('\n').count();
        rest = &rest[consumed..];
    }
    Ok(out)
}

fn push_text(out: &mut Vec<Tok>, text: &str, trim_left: bool, trim_right: bool) {
    let mut t = text;
    if trim_left {
        t = t.trim_start_matches([' ', '\t', '\n', '\r']);
    }
    if trim_right {
        t = t.trim_end_matches([' ', '\t', '\n', '\r']);
    }
    if !t.is_empty() {
        out.push(Tok::Text(t.to_string()));
    }
}

fn find_action_end(s: &str, right: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let trimmed = s.trim_start();
    if trimmed.starts_with("/*") {
        let close = s.find("*/")?;
        return s[close..].find(right).map(|j| close + j);
    }
    while i < b.len() {
        if s[i..].starts_with(right) {
            return Some(i);
        }
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

fn lex_action(s: &str, line: usize) -> Result<Vec<ATok>, Error> {
    let err = |m: String| Error::Parse { line, message: m };
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'|' => {
                out.push(ATok::Pipe);
                i += 1;
            }
            b'(' => {
                out.push(ATok::LParen);
                i += 1;
            }
            b')' => {
                out.push(ATok::RParen);
                i += 1;
            }
            b',' => {
                out.push(ATok::Comma);
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b'=') => {
                out.push(ATok::Declare);
                i += 2;
            }
            b'=' => {
                out.push(ATok::Assign);
                i += 1;
            }
            b'"' => {
                let mut j = i + 1;
                let mut v = String::new();
                loop {
                    let Some(&ch) = b.get(j) else {
                        return Err(err("unterminated quoted string".into()));
                    };
                    match ch {
                        b'"' => break,
                        b'\\' => {
                            let (decoded, used) = unescape(&s[j..]).ok_or_else(|| {
                                err(format!("bad escape in string {:?}", &s[i..]))
                            })?;
                            v.push_str(&decoded);
                            j += used;
                        }
                        b'\n' => return Err(err("unterminated quoted string".into())),
                        _ => {
                            let ch = s[j..].chars().next().unwrap_or('\u{fffd}');
                            v.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                out.push(ATok::Str(v));
                i = j + 1;
            }
            b'`' => {
                let end = s[i + 1..]
                    .find('`')
                    .ok_or_else(|| err("unterminated raw quoted string".into()))?;
                out.push(ATok::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'\'' => {
                let end = s[i + 1..]
                    .find('\'')
                    .ok_or_else(|| err("unterminated character constant".into()))?;
                let inner = &s[i + 1..i + 1 + end];
                let ch = if inner.starts_with('\\') {
                    unescape(inner).and_then(|(d, _)| d.chars().next())
                } else {
                    inner.chars().next()
                };
                let ch = ch.ok_or_else(|| err("bad character constant".into()))?;
                out.push(ATok::Char(i64::from(u32::from(ch))));
                i += end + 2;
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && word_char(b[j]) {
                    j += 1;
                }
                out.push(ATok::Var(s[i..j].to_string()));
                i = j;
            }
            b'.' if b
                .get(i + 1)
                .is_some_and(|&n| word_char(n) && !n.is_ascii_digit()) =>
            {
                let mut j = i + 1;
                while j < b.len() && word_char(b[j]) {
                    j += 1;
                }
                out.push(ATok::Field(s[i + 1..j].to_string()));
                i = j;
            }
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push(ATok::Dot);
                i += 1;
            }
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric()
                        || b[j] == b'.'
                        || b[j] == b'_'
                        || ((b[j] == b'+' || b[j] == b'-')
                            && matches!(b[j - 1], b'e' | b'E' | b'p' | b'P')))
                {
                    j += 1;
                }
                out.push(ATok::Num(s[i..j].to_string()));
                i = j;
            }
            c if word_char(c) => {
                let mut j = i;
                while j < b.len() && word_char(b[j]) {
                    j += 1;
                }
                out.push(ATok::Ident(s[i..j].to_string()));
                i = j;
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(err(format!("unexpected {ch:?} in command")));
            }
        }
    }
    Ok(out)
}

/// Decodes one Go escape at the start of `s` (which begins with `\`): (text, bytes used).
fn unescape(s: &str) -> Option<(String, usize)> {
    let b = s.as_bytes();
    let c = *b.get(1)?;
    let simple = match c {
        b'n' => Some('\n'),
        b't' => Some('\t'),
        b'r' => Some('\r'),
        b'\\' => Some('\\'),
        b'"' => Some('"'),
        b'\'' => Some('\''),
        b'a' => Some('\x07'),
        b'b' => Some('\x08'),
        b'f' => Some('\x0c'),
        b'v' => Some('\x0b'),
        _ => None,
    };
    if let Some(ch) = simple {
        return Some((ch.to_string(), 2));
    }
    let (digits, radix) = match c {
        b'x' => (2, 16),
        b'u' => (4, 16),
        b'U' => (8, 16),
        b'0'..=b'7' => (3, 8),
        _ => return None,
    };
    let start = if radix == 8 { 1 } else { 2 };
    let text = s.get(start..start + digits)?;
    let n = u32::from_str_radix(text, radix).ok()?;
    let decoded = if c == b'x' || radix == 8 {
        // A byte; on its own it is only valid UTF-8 when ASCII.
        char::from_u32(n)?.to_string()
    } else {
        char::from_u32(n)?.to_string()
    };
    Some((decoded, start + digits))
}

fn number(text: &str, line: usize) -> Result<Operand, Error> {
    let clean = text.replace('_', "");
    let (neg, body) = match clean.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let int = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(bn) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        i64::from_str_radix(bn, 2).ok()
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|c| c.is_ascii_digit()) {
        i64::from_str_radix(&body[1..], 8).ok()
    } else {
        body.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Ok(Operand::Int(if neg { -i } else { i }));
    }
    match body.parse::<f64>() {
        Ok(f)
            if body
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == b'.') =>
        {
            Ok(Operand::Float(if neg { -f } else { f }))
        }
        _ => Err(Error::Parse {
            line,
            message: format!("bad number syntax: {text:?}"),
        }),
    }
}

/// Parses `text` (named `name`) into its set of templates. `is_func` tells a known
/// function name (an unknown one is an error here, as in Go).
pub fn parse(
    name: &str,
    text: &str,
    delims: (&str, &str),
    is_func: &dyn Fn(&str) -> bool,
) -> Result<Set, Error> {
    let toks = lex(text, delims.0, delims.1)?;
    let mut p = Parser {
        toks,
        pos: 0,
        set: Set::new(),
        is_func,
        range_depth: 0,
        vars: vec![vec!["$".to_string()]],
    };
    let (list, stop) = p.list()?;
    if let Some((word, line)) = stop {
        return Err(Error::Parse {
            line,
            message: format!("unexpected {{{{{word}}}}}"),
        });
    }
    // A text of only definitions and white space does not replace a template of its
    // name that it defines.
    let empty = list
        .iter()
        .all(|n| matches!(n, Node::Text(t) if t.trim().is_empty()));
    if !(empty && p.set.contains_key(name)) {
        p.set.insert(name.to_string(), Rc::new(list));
    }
    Ok(p.set)
}

struct Parser<'f> {
    toks: Vec<Tok>,
    pos: usize,
    set: Set,
    is_func: &'f dyn Fn(&str) -> bool,
    range_depth: usize,
    /// Declared variables, one frame per block (for "undefined variable" errors).
    vars: Vec<Vec<String>>,
}

/// Which keyword ended a list: `end` or `else` (with the rest of the else action).
type Stop = Option<(String, usize)>;

impl Parser<'_> {
    fn err(line: usize, message: impl Into<String>) -> Error {
        Error::Parse {
            line,
            message: message.into(),
        }
    }

    /// Nodes up to `{{end}}`/`{{else ...}}` (returned as the stop) or the end of text.
    fn list(&mut self) -> Result<(List, Stop), Error> {
        let mut out = List::new();
        while self.pos < self.toks.len() {
            let tok = self.toks[self.pos].clone();
            self.pos += 1;
            match tok {
                Tok::Text(t) => out.push(Node::Text(t)),
                Tok::Action(a, line) => {
                    if let Some(ATok::Ident(word)) = a.first() {
                        match word.as_str() {
                            "end" => {
                                if a.len() > 1 {
                                    return Err(Self::err(line, "unexpected token in end"));
                                }
                                return Ok((out, Some(("end".into(), line))));
                            }
                            "else" => {
                                // Keep the rest (`else if ...`) for the caller.
                                self.pos -= 1;
                                return Ok((out, Some(("else".into(), line))));
                            }
                            _ => {}
                        }
                    }
                    if let Some(n) = self.action(a, line)? {
                        out.push(n);
                    }
                }
            }
        }
        Ok((out, None))
    }

    fn action(&mut self, a: Vec<ATok>, line: usize) -> Result<Option<Node>, Error> {
        let word = match a.first() {
            Some(ATok::Ident(w)) => w.clone(),
            _ => String::new(),
        };
        match word.as_str() {
            "if" | "with" => {
                let b = self.branch(&a[1..], line, &word)?;
                Ok(Some(if word == "if" {
                    Node::If(b)
                } else {
                    Node::With(b)
                }))
            }
            "range" => {
                self.vars.push(Vec::new());
                let pipe = self.pipeline(&a[1..], line, true)?;
                self.range_depth += 1;
                let (body, stop) = self.list()?;
                self.range_depth -= 1;
                let otherwise = self.else_part(stop, line, "range")?;
                self.vars.pop();
                Ok(Some(Node::Range {
                    line,
                    pipe,
                    body,
                    otherwise,
                }))
            }
            "define" => {
                let name = match (a.get(1), a.len()) {
                    (Some(ATok::Str(n)), 2) => n.clone(),
                    _ => return Err(Self::err(line, "define takes one quoted name")),
                };
                let saved = std::mem::replace(&mut self.vars, vec![vec!["$".to_string()]]);
                let (body, stop) = self.list()?;
                self.vars = saved;
                match stop {
                    Some((w, _)) if w == "end" => {}
                    _ => return Err(Self::err(line, "unexpected EOF in define")),
                }
                self.set.insert(name, Rc::new(body));
                Ok(None)
            }
            "block" => {
                let name = match a.get(1) {
                    Some(ATok::Str(n)) => n.clone(),
                    _ => return Err(Self::err(line, "block takes a quoted name")),
                };
                let pipe = if a.len() > 2 {
                    Some(self.pipeline(&a[2..], line, false)?)
                } else {
                    None
                };
                let saved = std::mem::replace(&mut self.vars, vec![vec!["$".to_string()]]);
                let (body, stop) = self.list()?;
                self.vars = saved;
                match stop {
                    Some((w, _)) if w == "end" => {}
                    _ => return Err(Self::err(line, "unexpected EOF in block")),
                }
                self.set.insert(name.clone(), Rc::new(body));
                Ok(Some(Node::Template { line, name, pipe }))
            }
            "template" => {
                let name = match a.get(1) {
                    Some(ATok::Str(n)) => n.clone(),
                    _ => return Err(Self::err(line, "template takes a quoted name")),
                };
                let pipe = if a.len() > 2 {
                    Some(self.pipeline(&a[2..], line, false)?)
                } else {
                    None
                };
                Ok(Some(Node::Template { line, name, pipe }))
            }
            "break" | "continue" => {
                if a.len() > 1 {
                    return Err(Self::err(
                        line,
                        format!("unexpected token in {{{{{word}}}}}"),
                    ));
                }
                if self.range_depth == 0 {
                    return Err(Self::err(
                        line,
                        format!("{{{{{word}}}}} outside {{{{range}}}}"),
                    ));
                }
                Ok(Some(if word == "break" {
                    Node::Break
                } else {
                    Node::Continue
                }))
            }
            _ => {
                let pipe = self.pipeline(&a, line, false)?;
                Ok(Some(Node::Action { line, pipe }))
            }
        }
    }

    fn branch(&mut self, a: &[ATok], line: usize, word: &str) -> Result<Branch, Error> {
        self.vars.push(Vec::new());
        let pipe = self.pipeline(a, line, false)?;
        let (body, stop) = self.list()?;
        let otherwise = self.else_part(stop, line, word)?;
        self.vars.pop();
        Ok(Branch {
            line,
            pipe,
            body,
            otherwise,
        })
    }

    /// After a body: `{{end}}`, `{{else}} ... {{end}}`, or `{{else if|with ...}}` (a
    /// nested branch that shares the `{{end}}`).
    fn else_part(&mut self, stop: Stop, line: usize, word: &str) -> Result<Option<List>, Error> {
        match stop {
            Some((w, _)) if w == "end" => Ok(None),
            Some((_, else_line)) => {
                let Some(Tok::Action(a, _)) = self.toks.get(self.pos).cloned() else {
                    return Err(Self::err(else_line, "bad else"));
                };
                self.pos += 1;
                if a.len() == 1 {
                    let (body, stop) = self.list()?;
                    match stop {
                        Some((w, _)) if w == "end" => Ok(Some(body)),
                        Some((_, l)) => Err(Self::err(l, "expected end; found {{else}}")),
                        None => Err(Self::err(line, format!("unexpected EOF in {word}"))),
                    }
                } else {
                    match &a[1] {
                        ATok::Ident(k) if k == "if" || k == "with" => {
                            let b = self.branch(&a[2..], else_line, k)?;
                            Ok(Some(vec![if k == "if" {
                                Node::If(b)
                            } else {
                                Node::With(b)
                            }]))
                        }
                        _ => Err(Self::err(else_line, "unexpected token in else")),
                    }
                }
            }
            None => Err(Self::err(line, format!("unexpected EOF in {word}"))),
        }
    }

    fn declared(&self, v: &str) -> bool {
        self.vars.iter().any(|f| f.iter().any(|n| n == v))
    }

    fn pipeline(&mut self, a: &[ATok], line: usize, range: bool) -> Result<Pipe, Error> {
        let mut pipe = Pipe::default();
        let mut rest = a;
        // Declarations: `$x :=`, `$x =`, and in range `$i, $e :=`.
        let decl_end = rest
            .iter()
            .position(|t| matches!(t, ATok::Declare | ATok::Assign));
        if let Some(end) = decl_end {
            let vars = &rest[..end];
            let names: Option<Vec<String>> = match vars {
                [ATok::Var(v)] => Some(vec![v.clone()]),
                [ATok::Var(a1), ATok::Comma, ATok::Var(b1)] if range => {
                    Some(vec![a1.clone(), b1.clone()])
                }
                _ => None,
            };
            if let Some(names) = names {
                pipe.assign = matches!(rest[end], ATok::Assign);
                if pipe.assign {
                    for n in &names {
                        if !self.declared(n) {
                            return Err(Self::err(line, format!("undefined variable: {n}")));
                        }
                    }
                } else if let Some(frame) = self.vars.last_mut() {
                    frame.extend(names.iter().cloned());
                }
                pipe.decl = names;
                rest = &rest[end + 1..];
            }
        }
        if rest.is_empty() {
            return Err(Self::err(line, "missing value for command"));
        }
        for part in split_top(rest, |t| matches!(t, ATok::Pipe)) {
            if part.is_empty() {
                return Err(Self::err(line, "missing command in pipeline"));
            }
            pipe.commands.push(self.command(part, line)?);
        }
        Ok(pipe)
    }

    fn command(&mut self, a: &[ATok], line: usize) -> Result<Command, Error> {
        let mut args = Vec::new();
        let mut i = 0;
        while i < a.len() {
            let (op, used) = self.operand(&a[i..], line)?;
            args.push(op);
            i += used;
        }
        Ok(Command { args })
    }

    /// One operand (with the fields after it); returns it and the tokens used.
    fn operand(&mut self, a: &[ATok], line: usize) -> Result<(Operand, usize), Error> {
        let fields_after = |from: usize| -> (Vec<String>, usize) {
            let mut f = Vec::new();
            let mut j = from;
            while let Some(ATok::Field(n)) = a.get(j) {
                f.push(n.clone());
                j += 1;
            }
            (f, j)
        };
        let op = match &a[0] {
            ATok::Dot => (Operand::Dot, 1),
            ATok::Field(_) => {
                let (f, used) = fields_after(0);
                (Operand::Field(f), used)
            }
            ATok::Var(v) => {
                if !self.declared(v) {
                    return Err(Self::err(line, format!("undefined variable \"{v}\"")));
                }
                let (f, used) = fields_after(1);
                (Operand::Variable(v.clone(), f), used)
            }
            ATok::Str(s) => (Operand::Str(s.clone()), 1),
            ATok::Char(c) => (Operand::Int(*c), 1),
            ATok::Num(n) => (number(n, line)?, 1),
            ATok::Ident(w) => match w.as_str() {
                "nil" => (Operand::Nil, 1),
                "true" => (Operand::Bool(true), 1),
                "false" => (Operand::Bool(false), 1),
                name if (self.is_func)(name) => (Operand::Func(name.to_string()), 1),
                name => {
                    return Err(Self::err(line, format!("function \"{name}\" not defined")));
                }
            },
            ATok::LParen => {
                let mut depth = 0;
                let mut close = None;
                for (j, t) in a.iter().enumerate() {
                    match t {
                        ATok::LParen => depth += 1,
                        ATok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let close = close.ok_or_else(|| Self::err(line, "unclosed left paren"))?;
                let inner = self.pipeline(&a[1..close], line, false)?;
                let (f, used) = fields_after(close + 1);
                (Operand::Sub(Box::new(inner), f), used)
            }
            ATok::RParen => return Err(Self::err(line, "unexpected right paren")),
            other => return Err(Self::err(line, format!("unexpected {other:?} in operand"))),
        };
        Ok(op)
    }
}

/// Splits tokens at top-level separators (outside parentheses).
fn split_top(a: &[ATok], sep: impl Fn(&ATok) -> bool) -> Vec<&[ATok]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in a.iter().enumerate() {
        match t {
            ATok::LParen => depth += 1,
            ATok::RParen => depth -= 1,
            t if depth == 0 && sep(t) => {
                parts.push(&a[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&a[start..]);
    parts
}
