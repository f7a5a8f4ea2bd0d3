//! Go's `text/template`, for Caddy's `templates` directive: the same syntax (actions,
//! pipelines, variables, `if`/`range`/`with`/`define`/`template`/`block`, trim markers,
//! custom delimiters) and the same evaluation (truth, fields and methods, printing), with
//! Go's built-in functions. The host adds functions ([`Engine::func`]) and data
//! ([`Value`], [`Object`]); nothing here touches files or the network.
//!
//! Errors never panic: a template that does not parse, or fails while running, is an
//! [`Error`] naming its line. Functions may stop a render with [`Error::Halt`], which
//! carries the host's own payload through to the caller untouched.

mod builtins;
mod exec;
mod parse;
mod value;

pub use builtins::{go_quote, html_escape, query_escape_into, sprintf};
pub use exec::Call;
pub use value::{go_float, Object, Value};

use std::collections::HashMap;
use std::rc::Rc;

/// A function callable from templates.
pub type Func<'f> = Rc<dyn Fn(&mut Call<'_, 'f>, &[Value]) -> Result<Value, Error> + 'f>;

/// What went wrong.
#[derive(Debug)]
pub enum Error {
    Parse {
        line: usize,
        message: String,
    },
    Exec {
        name: String,
        line: usize,
        message: String,
    },
    /// A function's own failure (the evaluator adds where it happened).
    Func(String),
    /// A function stopped the render; the host knows what the payload means.
    Halt(Rc<dyn std::any::Any>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Parse { line, message } => write!(f, "template: {line}: {message}"),
            Error::Exec {
                name,
                line,
                message,
            } => write!(f, "template: {name}:{line}: {message}"),
            Error::Func(m) => write!(f, "{m}"),
            Error::Halt(_) => write!(f, "template stopped"),
        }
    }
}

impl std::error::Error for Error {}

/// Functions and delimiters; renders template text.
/// `'f`: what the host's functions may borrow (the request being answered).
#[derive(Clone)]
pub struct Engine<'f> {
    funcs: HashMap<String, Func<'f>>,
    left: String,
    right: String,
    /// The longest output one render may produce.
    pub max_output: usize,
}

impl Default for Engine<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("funcs", &self.funcs.len())
            .field("delims", &(&self.left, &self.right))
            .finish()
    }
}

impl<'f> Engine<'f> {
    /// An engine with Go's built-in functions and `{{ }}` delimiters.
    pub fn new() -> Engine<'f> {
        let mut e = Engine {
            funcs: HashMap::new(),
            left: "{{".into(),
            right: "}}".into(),
            max_output: 64 * 1024 * 1024,
        };
        builtins::install(&mut e);
        e
    }

    /// Other delimiters (`between`).
    pub fn delims(&mut self, left: &str, right: &str) {
        self.left = left.into();
        self.right = right.into();
    }

    /// Adds (or replaces) a function.
    pub fn func(
        &mut self,
        name: &str,
        f: impl Fn(&mut Call<'_, 'f>, &[Value]) -> Result<Value, Error> + 'f,
    ) {
        self.funcs.insert(name.into(), Rc::new(f));
    }

    pub(crate) fn parse(&self, name: &str, text: &str) -> Result<parse::Set, Error> {
        parse::parse(name, text, (&self.left, &self.right), &|n| {
            self.funcs.contains_key(n) || n == "and" || n == "or"
        })
    }

    /// Parses `text` as the template `name` and runs it with `dot`.
    pub fn render(&self, name: &str, text: &str, dot: Value) -> Result<String, Error> {
        self.render_at(name, text, dot, 0)
    }

    pub(crate) fn render_at(
        &self,
        name: &str,
        text: &str,
        dot: Value,
        depth: usize,
    ) -> Result<String, Error> {
        let set = self.parse(name, text)?;
        let Some(main) = set.get(name).cloned() else {
            return Ok(String::new());
        };
        let mut state = exec::State {
            engine: self,
            set: std::cell::RefCell::new(set),
            name: name.into(),
            vars: vec![("$".into(), dot.clone())],
            depth,
            out: String::with_capacity(text.len()),
        };
        state.run(&main, &dot)?;
        Ok(state.out)
    }
}

#[cfg(test)]
mod tests;
