//! Running a parsed template: Go's evaluation rules for pipelines (the value of each
//! command is the last argument of the next), fields and methods, variables and their
//! scopes, and the control structures.

use crate::parse::{Branch, Command, List, Node, Operand, Pipe, Set};
use crate::value::Value;
use crate::{Engine, Error};
use std::cell::RefCell;
use std::rc::Rc;

/// Templates calling templates: Go's limit.
const MAX_DEPTH: usize = 1000;

/// What a function gets besides its arguments: the engine (to render more text) and the
/// running template set (which `import`-style functions may add to).
pub struct Call<'a, 'f> {
    pub(crate) engine: &'a Engine<'f>,
    pub(crate) set: &'a RefCell<Set>,
    pub(crate) depth: usize,
}

impl Call<'_, '_> {
    /// Adds the `define`s in `text` to the running set (Caddy's `import`).
    pub fn define(&mut self, name: &str, text: &str) -> Result<(), Error> {
        let parsed = self.engine.parse(name, text)?;
        let mut set = self.set.borrow_mut();
        for (k, v) in parsed {
            if k != name {
                set.insert(k, v);
            }
        }
        Ok(())
    }

    /// Renders `text` as a template of its own (its own defines) with `dot` (Caddy's
    /// `include`).
    pub fn render(&mut self, name: &str, text: &str, dot: Value) -> Result<String, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::Exec {
                name: name.into(),
                line: 0,
                message: "exceeded maximum template depth".into(),
            });
        }
        self.engine.render_at(name, text, dot, self.depth + 1)
    }
}

pub(crate) struct State<'a, 'f> {
    pub engine: &'a Engine<'f>,
    pub set: RefCell<Set>,
    pub name: String,
    pub vars: Vec<(String, Value)>,
    pub depth: usize,
    pub out: String,
}

enum Flow {
    Normal,
    Break,
    Continue,
}

impl State<'_, '_> {
    fn err(&self, line: usize, message: impl Into<String>) -> Error {
        Error::Exec {
            name: self.name.clone(),
            line,
            message: message.into(),
        }
    }

    fn check_size(&self, line: usize) -> Result<(), Error> {
        if self.out.len() > self.engine.max_output {
            return Err(self.err(line, "output too large"));
        }
        Ok(())
    }

    pub fn run(&mut self, list: &List, dot: &Value) -> Result<(), Error> {
        match self.walk(list, dot)? {
            Flow::Normal => Ok(()),
            _ => Err(self.err(0, "break or continue outside range")),
        }
    }

    fn walk(&mut self, list: &List, dot: &Value) -> Result<Flow, Error> {
        for node in list {
            match node {
                Node::Text(t) => {
                    self.out.push_str(t);
                    self.check_size(0)?;
                }
                Node::Action { line, pipe } => {
                    let v = self.pipe(pipe, dot, *line)?;
                    if pipe.decl.is_empty() {
                        v.write_text(&mut self.out);
                        self.check_size(*line)?;
                    }
                }
                Node::If(b) => {
                    let flow = self.branch(b, dot, false)?;
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::With(b) => {
                    let flow = self.branch(b, dot, true)?;
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range {
                    line,
                    pipe,
                    body,
                    otherwise,
                } => {
                    let flow = self.range(*line, pipe, body, otherwise.as_ref(), dot)?;
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Template { line, name, pipe } => {
                    let next = match pipe {
                        Some(p) => self.pipe(p, dot, *line)?,
                        None => Value::Nil,
                    };
                    let Some(body) = self.set.borrow().get(name).cloned() else {
                        return Err(self.err(*line, format!("no such template \"{name}\"")));
                    };
                    if self.depth >= MAX_DEPTH {
                        return Err(self.err(*line, "exceeded maximum template depth"));
                    }
                    // A called template sees only `$` (its dot), not the caller's variables.
                    let saved = std::mem::replace(&mut self.vars, vec![("$".into(), next.clone())]);
                    self.depth += 1;
                    let r = self.walk(&body, &next);
                    self.depth -= 1;
                    self.vars = saved;
                    r?;
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn branch(&mut self, b: &Branch, dot: &Value, with: bool) -> Result<Flow, Error> {
        let mark = self.vars.len();
        let v = self.pipe(&b.pipe, dot, b.line)?;
        let flow = if v.truth() {
            if with {
                self.walk(&b.body, &v)
            } else {
                self.walk(&b.body, dot)
            }
        } else if let Some(o) = &b.otherwise {
            self.walk(o, dot)
        } else {
            Ok(Flow::Normal)
        };
        self.vars.truncate(mark);
        flow
    }

    fn range(
        &mut self,
        line: usize,
        pipe: &Pipe,
        body: &List,
        otherwise: Option<&List>,
        dot: &Value,
    ) -> Result<Flow, Error> {
        let mark = self.vars.len();
        // The pipeline's value, without its declarations (those name the key and item).
        let bare = Pipe {
            decl: Vec::new(),
            assign: false,
            commands: pipe.commands.clone(),
        };
        let v = self.pipe(&bare, dot, line)?;
        let items: Vec<(Value, Value)> = match &v {
            Value::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, x)| (Value::Int(i as i64), x.clone()))
                .collect(),
            Value::Map(m) => m
                .iter()
                .map(|(k, x)| (Value::from(k.as_str()), x.clone()))
                .collect(),
            Value::Int(n) => (0..*n).map(|i| (Value::Int(i), Value::Int(i))).collect(),
            Value::Nil => Vec::new(),
            Value::Object(o) => match o.items() {
                Some(items) => items,
                None => return Err(self.err(line, "range can't iterate over the value")),
            },
            other => {
                return Err(self.err(
                    line,
                    format!("range can't iterate over {}", other.to_text()),
                ))
            }
        };
        if items.is_empty() {
            let flow = match otherwise {
                Some(o) => self.walk(o, dot)?,
                None => Flow::Normal,
            };
            self.vars.truncate(mark);
            return Ok(flow);
        }
        for (k, item) in items {
            self.vars.truncate(mark);
            match pipe.decl.as_slice() {
                [one] => self.set_var(one, item.clone(), pipe.assign, line)?,
                [key, elem] => {
                    self.set_var(key, k, pipe.assign, line)?;
                    self.set_var(elem, item.clone(), pipe.assign, line)?;
                }
                _ => {}
            }
            match self.walk(body, &item)? {
                Flow::Break => break,
                Flow::Continue | Flow::Normal => {}
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
    }

    fn set_var(&mut self, name: &str, v: Value, assign: bool, line: usize) -> Result<(), Error> {
        if assign {
            match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = v,
                None => return Err(self.err(line, format!("undefined variable: {name}"))),
            }
        } else {
            self.vars.push((name.to_string(), v));
        }
        Ok(())
    }

    fn var(&self, name: &str, line: usize) -> Result<Value, Error> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| self.err(line, format!("undefined variable: {name}")))
    }

    fn pipe(&mut self, p: &Pipe, dot: &Value, line: usize) -> Result<Value, Error> {
        let mut value: Option<Value> = None;
        for c in &p.commands {
            value = Some(self.command(c, dot, value, line)?);
        }
        let v = value.unwrap_or_default();
        for name in &p.decl {
            self.set_var(name, v.clone(), p.assign, line)?;
        }
        Ok(v)
    }

    fn command(
        &mut self,
        c: &Command,
        dot: &Value,
        piped: Option<Value>,
        line: usize,
    ) -> Result<Value, Error> {
        let Some(first) = c.args.first() else {
            return Err(self.err(line, "empty command"));
        };
        let rest = &c.args[1..];
        match first {
            Operand::Func(name) => {
                // `and`/`or` stop at the first value that decides.
                if name == "and" || name == "or" {
                    return self.and_or(name == "and", rest, piped, dot, line);
                }
                let mut args = Vec::with_capacity(rest.len() + 1);
                for a in rest {
                    args.push(self.operand(a, dot, line)?);
                }
                args.extend(piped);
                self.call_func(name, &args, line)
            }
            Operand::Field(fields) => self.chain(dot.clone(), fields, rest, piped, dot, line),
            Operand::Variable(v, fields) => {
                let base = self.var(v, line)?;
                self.chain(base, fields, rest, piped, dot, line)
            }
            Operand::Sub(p, fields) if !fields.is_empty() => {
                let base = self.pipe(p, dot, line)?;
                self.chain(base, fields, rest, piped, dot, line)
            }
            other => {
                if !rest.is_empty() || piped.is_some() {
                    return Err(self.err(line, "can't give argument to non-function"));
                }
                self.operand(other, dot, line)
            }
        }
    }

    fn and_or(
        &mut self,
        and: bool,
        rest: &[Operand],
        piped: Option<Value>,
        dot: &Value,
        line: usize,
    ) -> Result<Value, Error> {
        if rest.is_empty() && piped.is_none() {
            return Err(self.err(line, "wrong number of args: want at least 1"));
        }
        let mut last = Value::Nil;
        for a in rest {
            last = self.operand(a, dot, line)?;
            if last.truth() != and {
                return Ok(last);
            }
        }
        if let Some(p) = piped {
            last = p;
        }
        Ok(last)
    }

    pub(crate) fn call_func(
        &mut self,
        name: &str,
        args: &[Value],
        line: usize,
    ) -> Result<Value, Error> {
        let Some(f) = self.engine.funcs.get(name).cloned() else {
            return Err(self.err(line, format!("function \"{name}\" not defined")));
        };
        let mut call = Call {
            engine: self.engine,
            set: &self.set,
            depth: self.depth,
        };
        f(&mut call, args).map_err(|e| match e {
            Error::Func(m) => self.err(line, format!("error calling {name}: {m}")),
            other => other,
        })
    }

    /// `base.A.B.C args`: every field but the last without arguments; the last may be
    /// a method taking `args` (and the piped value).
    fn chain(
        &mut self,
        base: Value,
        fields: &[String],
        args: &[Operand],
        piped: Option<Value>,
        dot: &Value,
        line: usize,
    ) -> Result<Value, Error> {
        let mut v = base;
        let n = fields.len();
        if n == 0 {
            if !args.is_empty() || piped.is_some() {
                return Err(self.err(line, "can't give argument to non-function"));
            }
            return Ok(v);
        }
        for (i, f) in fields.iter().enumerate() {
            let last = i + 1 == n;
            if last && (!args.is_empty() || piped.is_some()) {
                let mut vals = Vec::with_capacity(args.len() + 1);
                for a in args {
                    vals.push(self.operand(a, dot, line)?);
                }
                vals.extend(piped);
                return match &v {
                    Value::Object(o) => match o.call(f, &vals) {
                        Some(r) => r.map_err(|e| self.wrap(e, f, line)),
                        None => {
                            Err(self.err(line, format!("{f} is not a method but has arguments")))
                        }
                    },
                    _ => Err(self.err(line, format!("{f} is not a method but has arguments"))),
                };
            }
            v = self.field(&v, f, line)?;
        }
        Ok(v)
    }

    fn wrap(&self, e: Error, name: &str, line: usize) -> Error {
        match e {
            Error::Func(m) => self.err(line, format!("error calling {name}: {m}")),
            other => other,
        }
    }

    fn field(&self, v: &Value, name: &str, line: usize) -> Result<Value, Error> {
        match v {
            Value::Map(m) => Ok(m.get(name).cloned().unwrap_or_default()),
            Value::Object(o) => match o.get(name) {
                Some(r) => r.map_err(|e| self.wrap(e, name, line)),
                None => Err(self.err(line, format!("can't evaluate field {name}"))),
            },
            Value::Nil => Err(self.err(
                line,
                format!("nil pointer evaluating interface {{}}.{name}"),
            )),
            other => Err(self.err(
                line,
                format!("can't evaluate field {name} in type {}", other.kind()),
            )),
        }
    }

    fn operand(&mut self, o: &Operand, dot: &Value, line: usize) -> Result<Value, Error> {
        Ok(match o {
            Operand::Dot => dot.clone(),
            Operand::Nil => Value::Nil,
            Operand::Bool(b) => Value::Bool(*b),
            Operand::Int(i) => Value::Int(*i),
            Operand::Float(f) => Value::Float(*f),
            Operand::Str(s) => Value::Str(Rc::from(s.as_str())),
            Operand::Field(fields) => self.chain(dot.clone(), fields, &[], None, dot, line)?,
            Operand::Variable(v, fields) => {
                let base = self.var(v, line)?;
                self.chain(base, fields, &[], None, dot, line)?
            }
            Operand::Func(name) => self.call_func(name, &[], line)?,
            Operand::Sub(p, fields) => {
                let base = self.pipe(p, dot, line)?;
                self.chain(base, fields, &[], None, dot, line)?
            }
        })
    }
}
