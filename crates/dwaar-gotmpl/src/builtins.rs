//! Go's predefined template functions: `not`, `len`, `index`, `slice`, `print`,
//! `printf`, `println`, `html`, `js`, `urlquery`, and the comparisons `eq` `ne` `lt` `le`
//! `gt` `ge` (`and` and `or` short-circuit inside the evaluator). `printf` follows Go's
//! `fmt` verbs.

use crate::value::{go_float, Value};
use crate::{Engine, Error};
use std::cmp::Ordering;
use std::fmt::Write;

fn want(args: &[Value], n: usize) -> Result<(), Error> {
    if args.len() != n {
        return Err(Error::Func(format!(
            "wrong number of args: got {} want {n}",
            args.len()
        )));
    }
    Ok(())
}

pub(crate) fn install(e: &mut Engine<'_>) {
    e.func("not", |_, a| {
        want(a, 1)?;
        Ok(Value::Bool(!a[0].truth()))
    });
    e.func("len", |_, a| {
        want(a, 1)?;
        Ok(Value::Int(match &a[0] {
            Value::Str(s) => s.len() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            other => return Err(Error::Func(format!("len of type {}", other.kind()))),
        }))
    });
    e.func("index", |_, a| {
        let Some((first, keys)) = a.split_first() else {
            return Err(Error::Func("wrong number of args: want at least 1".into()));
        };
        let mut v = first.clone();
        for k in keys {
            v = match (&v, k) {
                (Value::List(l), k) => {
                    let i = k
                        .as_int()
                        .ok_or_else(|| Error::Func("cannot index slice with non-integer".into()))?;
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| l.get(i).cloned())
                        .ok_or_else(|| Error::Func(format!("index out of range: {i}")))?
                }
                (Value::Str(s), k) => {
                    let i = k.as_int().ok_or_else(|| {
                        Error::Func("cannot index string with non-integer".into())
                    })?;
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| s.as_bytes().get(i))
                        .map(|b| Value::Int(i64::from(*b)))
                        .ok_or_else(|| Error::Func(format!("index out of range: {i}")))?
                }
                (Value::Map(m), k) => m.get(&k.to_text()).cloned().unwrap_or_default(),
                (Value::Nil, _) => return Err(Error::Func("index of untyped nil".into())),
                (other, _) => {
                    return Err(Error::Func(format!(
                        "can't index item of type {}",
                        other.kind()
                    )))
                }
            };
        }
        Ok(v)
    });
    e.func("slice", |_, a| {
        let Some((first, bounds)) = a.split_first() else {
            return Err(Error::Func("wrong number of args: want at least 1".into()));
        };
        let len = match first {
            Value::Str(s) => s.len(),
            Value::List(l) => l.len(),
            other => {
                return Err(Error::Func(format!(
                    "can't slice item of type {}",
                    other.kind()
                )))
            }
        };
        let idx: Vec<usize> = bounds
            .iter()
            .map(|b| b.as_int().and_then(|i| usize::try_from(i).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Func("slice bounds must be non-negative integers".into()))?;
        let (lo, hi) = match idx.as_slice() {
            [] => (0, len),
            [lo] => (*lo, len),
            [lo, hi] | [lo, hi, _] => (*lo, *hi),
            _ => return Err(Error::Func("too many slice indexes".into())),
        };
        if lo > hi || hi > len {
            return Err(Error::Func(format!("index out of range: {lo}:{hi}")));
        }
        Ok(match first {
            Value::Str(s) => Value::from(
                s.get(lo..hi)
                    .ok_or_else(|| Error::Func("slice splits a character".into()))?,
            ),
            Value::List(l) => Value::from(l[lo..hi].to_vec()),
            _ => Value::Nil,
        })
    });
    e.func("print", |_, a| Ok(Value::from(sprint(a))));
    e.func("println", |_, a| {
        let mut s = String::new();
        for (i, v) in a.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            write_v(&mut s, v);
        }
        s.push('\n');
        Ok(Value::from(s))
    });
    e.func("printf", |_, a| {
        let Some((f, rest)) = a.split_first() else {
            return Err(Error::Func("wrong number of args: want at least 1".into()));
        };
        let f = f
            .as_str()
            .ok_or_else(|| Error::Func("printf's format must be a string".into()))?;
        Ok(Value::from(sprintf(f, rest)))
    });
    e.func("html", |_, a| Ok(Value::from(html_escape(&sprint(a)))));
    e.func("js", |_, a| Ok(Value::from(js_escape(&sprint(a)))));
    e.func("urlquery", |_, a| Ok(Value::from(query_escape(&sprint(a)))));
    e.func("eq", |_, a| {
        let Some((x, rest)) = a.split_first() else {
            return Err(Error::Func("missing argument for comparison".into()));
        };
        if rest.is_empty() {
            return Err(Error::Func("missing argument for comparison".into()));
        }
        Ok(Value::Bool(rest.iter().any(|y| equal(x, y))))
    });
    e.func("ne", |_, a| {
        want(a, 2)?;
        Ok(Value::Bool(!equal(&a[0], &a[1])))
    });
    for (name, ok) in [
        ("lt", &[Ordering::Less][..]),
        ("le", &[Ordering::Less, Ordering::Equal][..]),
        ("gt", &[Ordering::Greater][..]),
        ("ge", &[Ordering::Greater, Ordering::Equal][..]),
    ] {
        let ok = ok.to_vec();
        e.func(name, move |_, a| {
            want(a, 2)?;
            let o = order(&a[0], &a[1])?;
            Ok(Value::Bool(ok.contains(&o)))
        });
    }
    e.func("call", |_, _| {
        Err(Error::Func(
            "call: templates here have no function values".into(),
        ))
    });
}

fn equal(x: &Value, y: &Value) -> bool {
    x == y
}

fn order(x: &Value, y: &Value) -> Result<Ordering, Error> {
    let o = match (x, y) {
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::Str(a), Value::Str(b)) => a.cmp(b),
        (Value::Float(_) | Value::Int(_), Value::Float(_) | Value::Int(_)) => {
            let (a, b) = (num(x), num(y));
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
        _ => {
            return Err(Error::Func(format!(
                "incompatible types for comparison: {} and {}",
                x.kind(),
                y.kind()
            )))
        }
    };
    Ok(o)
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => 0.0,
    }
}

/// Go's `%v`.
fn write_v(out: &mut String, v: &Value) {
    match v {
        Value::Nil => out.push_str("<nil>"),
        other => other.write_text(out),
    }
}

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
pub fn sprint(a: &[Value]) -> String {
    let mut s = String::new();
    for (i, v) in a.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(a[i - 1], Value::Str(_)) {
            s.push(' ');
        }
        write_v(&mut s, v);
    }
    s
}

/// Go's `template.HTMLEscapeString`.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
pub fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    query_escape_into(&mut out, s);
    out
}

/// Go's `url.QueryEscape` written to `out`: unreserved bytes kept, a space as `+`, the
/// rest `%XX`.
pub fn query_escape_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Go's `fmt.Sprintf` for the verbs templates use.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut sp = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '-' => sp.minus = true,
                '+' => sp.plus = true,
                '#' => sp.sharp = true,
                '0' => sp.zero = true,
                ' ' => sp.space = true,
                _ => break,
            }
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, next: &mut usize| {
            if chars.peek() == Some(&'*') {
                chars.next();
                let v = args.get(*next).and_then(Value::as_int);
                *next += 1;
                return v.and_then(|n| usize::try_from(n).ok());
            }
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0) * 10 + d as usize);
                chars.next();
            }
            n
        };
        sp.width = number(&mut chars, &mut next);
        if chars.peek() == Some(&'.') {
            chars.next();
            sp.prec = Some(number(&mut chars, &mut next).unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let text = format_one(verb, arg, &sp);
        pad(
            &mut out,
            &text,
            &sp,
            matches!(arg, Value::Int(_) | Value::Float(_)),
        );
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[next..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", a.kind(), a.to_text());
        }
        out.push(')');
    }
    out
}

fn pad(out: &mut String, text: &str, sp: &Spec, numeric: bool) {
    let len = text.chars().count();
    let w = sp.width.unwrap_or(0);
    if len >= w {
        out.push_str(text);
    } else if sp.minus {
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', w - len));
    } else if sp.zero && numeric {
        let (sign, digits) = match text.strip_prefix(['-', '+']) {
            Some(d) => (&text[..1], d),
            None => ("", text),
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', w - len));
        out.push_str(digits);
    } else {
        out.extend(std::iter::repeat_n(' ', w - len));
        out.push_str(text);
    }
}

fn bad(verb: char, v: &Value) -> String {
    format!("%!{verb}({}={})", v.kind(), v.to_text())
}

fn signed(s: String, negative: bool, sp: &Spec) -> String {
    if negative {
        s
    } else if sp.plus {
        format!("+{s}")
    } else if sp.space {
        format!(" {s}")
    } else {
        s
    }
}

fn format_one(verb: char, v: &Value, sp: &Spec) -> String {
    match verb {
        'v' => match v {
            Value::Str(s) if sp.sharp => format!("{:?}", s.as_ref()),
            Value::Int(i) => signed(i.to_string(), *i < 0, sp),
            Value::Float(f) => signed(go_float(*f), *f < 0.0, sp),
            other => {
                let mut s = String::new();
                write_v(&mut s, other);
                s
            }
        },
        's' => match v {
            Value::Str(s) => match sp.prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.to_string(),
            },
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => bad(verb, v),
            other => {
                let mut s = String::new();
                write_v(&mut s, other);
                s
            }
        },
        'q' => match v {
            Value::Str(s) => go_quote(s),
            Value::Int(i) => {
                char::from_u32(*i as u32).map_or_else(|| bad(verb, v), |c| format!("'{c}'"))
            }
            _ => bad(verb, v),
        },
        'd' => match v {
            Value::Int(i) => signed(i.to_string(), *i < 0, sp),
            _ => bad(verb, v),
        },
        'b' | 'o' | 'x' | 'X' => match v {
            Value::Int(i) => {
                let a = i.unsigned_abs();
                let body = match verb {
                    'b' => format!("{a:b}"),
                    'o' => format!("{a:o}"),
                    'x' => format!("{a:x}"),
                    _ => format!("{a:X}"),
                };
                let prefix = match (sp.sharp, verb) {
                    (true, 'x') => "0x",
                    (true, 'X') => "0X",
                    (true, 'o') => "0",
                    _ => "",
                };
                signed(
                    format!("{}{prefix}{body}", if *i < 0 { "-" } else { "" }),
                    *i < 0,
                    sp,
                )
            }
            Value::Str(s) if verb == 'x' || verb == 'X' => {
                let mut h = String::new();
                for b in s.bytes() {
                    if verb == 'x' {
                        let _ = write!(h, "{b:02x}");
                    } else {
                        let _ = write!(h, "{b:02X}");
                    }
                }
                h
            }
            _ => bad(verb, v),
        },
        'c' => match v {
            Value::Int(i) => {
                char::from_u32(*i as u32).map_or_else(|| bad(verb, v), |c| c.to_string())
            }
            _ => bad(verb, v),
        },
        't' => match v {
            Value::Bool(b) => b.to_string(),
            _ => bad(verb, v),
        },
        'T' => match v {
            Value::Nil => "<nil>".into(),
            Value::List(_) => "[]interface {}".into(),
            Value::Map(_) => "map[string]interface {}".into(),
            Value::Object(_) => "*struct".into(),
            other => other.kind().into(),
        },
        'f' | 'F' | 'e' | 'E' | 'g' | 'G' => {
            let f = match v {
                Value::Float(f) => *f,
                Value::Int(_) => return bad(verb, v),
                _ => return bad(verb, v),
            };
            let s = match verb {
                'f' | 'F' => format!("{:.*}", sp.prec.unwrap_or(6), f),
                'e' | 'E' => {
                    let s = go_exp(format!("{:.*e}", sp.prec.unwrap_or(6), f));
                    if verb == 'E' {
                        s.to_uppercase()
                    } else {
                        s
                    }
                }
                _ => match sp.prec {
                    None => go_float(f),
                    Some(p) => {
                        let p = p.max(1);
                        let exp = if f == 0.0 {
                            0
                        } else {
                            f.abs().log10().floor() as i32
                        };
                        if exp < -4 || exp >= p as i32 {
                            go_exp(format!("{:.*e}", p - 1, f))
                        } else {
                            let s = format!("{:.*}", (p as i32 - 1 - exp).max(0) as usize, f);
                            if s.contains('.') {
                                s.trim_end_matches('0').trim_end_matches('.').to_string()
                            } else {
                                s
                            }
                        }
                    }
                },
            };
            signed(s, f < 0.0, sp)
        }
        _ => bad(verb, v),
    }
}

/// Rust's `1.5e3` as Go writes it: `1.5e+03`.
fn go_exp(s: String) -> String {
    match s.split_once('e') {
        Some((m, e)) => {
            let n: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if n < 0 { '-' } else { '+' }, n.abs())
        }
        None => s,
    }
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
