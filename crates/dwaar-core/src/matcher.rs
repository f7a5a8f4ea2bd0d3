//! Compiled request matchers: built once per route table, evaluated per request.
//!
//! Semantics follow Caddy: all matchers in a set must match; the values of one matcher
//! are alternatives. Path patterns are case-insensitive and compared against the
//! percent-decoded path; `*` may stand at the end (prefix), the start (suffix), both
//! (substring) or elsewhere (a glob that does not cross `/`).

use crate::context::RequestContext;
use crate::net::IpNet;
use crate::request::HttpRequest;
use crate::template::{percent_decode, query_param};
use compact_str::CompactString;
use dwaar_config::model::{FieldMatch, Matcher, MatcherSet};
use regex::Regex;
use std::sync::Arc;

#[derive(Debug)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Glob(Vec<String>),
    Any,
}

impl PathPattern {
    pub fn new(p: &str) -> PathPattern {
        let p = p.to_ascii_lowercase();
        if p == "*" {
            return PathPattern::Any;
        }
        let stars = p.matches('*').count();
        match (p.starts_with('*'), p.ends_with('*'), stars) {
            (false, false, 0) => PathPattern::Exact(p),
            (false, true, 1) => PathPattern::Prefix(p[..p.len() - 1].to_string()),
            (true, false, 1) => PathPattern::Suffix(p[1..].to_string()),
            (true, true, 2) if p.len() > 2 => PathPattern::Contains(p[1..p.len() - 1].to_string()),
            _ => PathPattern::Glob(p.split('*').map(str::to_string).collect()),
        }
    }

    /// `path` must already be lowercase and decoded.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(e) => path == e,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Suffix(s) => path.ends_with(s.as_str()),
            PathPattern::Contains(c) => path.contains(c.as_str()),
            PathPattern::Glob(parts) => glob_match(parts, path),
        }
    }
}

/// Matches literal `parts` separated by `*` wildcards that do not cross `/`.
fn glob_match(parts: &[String], path: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return path.is_empty();
    };
    let Some(mut remaining) = path.strip_prefix(first.as_str()) else {
        return false;
    };
    for (i, part) in rest.iter().enumerate() {
        let last = i == rest.len() - 1;
        if last {
            if part.is_empty() {
                return !remaining.contains('/');
            }
            return remaining.ends_with(part.as_str())
                && !remaining[..remaining.len() - part.len()].contains('/');
        }
        match remaining.find(part.as_str()) {
            Some(idx) if !remaining[..idx].contains('/') => {
                remaining = &remaining[idx + part.len()..]
            }
            _ => return false,
        }
    }
    remaining.is_empty()
}

#[derive(Debug)]
enum ValuePattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl ValuePattern {
    fn new(v: &str) -> ValuePattern {
        if v == "*" {
            return ValuePattern::Any;
        }
        match (
            v.len() > 1 && v.starts_with('*'),
            v.len() > 1 && v.ends_with('*'),
        ) {
            (true, true) if v.len() > 2 => ValuePattern::Contains(v[1..v.len() - 1].to_string()),
            (false, true) => ValuePattern::Prefix(v[..v.len() - 1].to_string()),
            (true, false) => ValuePattern::Suffix(v[1..].to_string()),
            _ => ValuePattern::Exact(v.to_string()),
        }
    }
    fn matches(&self, s: &str) -> bool {
        match self {
            ValuePattern::Any => true,
            ValuePattern::Exact(e) => s == e,
            ValuePattern::Prefix(p) => s.starts_with(p.as_str()),
            ValuePattern::Suffix(x) => s.ends_with(x.as_str()),
            ValuePattern::Contains(c) => s.contains(c.as_str()),
        }
    }
}

#[derive(Debug)]
struct FieldPatterns {
    field: String,
    /// Empty = the field must be absent.
    values: Vec<ValuePattern>,
}

fn field_patterns(f: &[FieldMatch], lowercase: bool) -> Vec<FieldPatterns> {
    f.iter()
        .map(|m| FieldPatterns {
            field: if lowercase {
                m.field.to_ascii_lowercase()
            } else {
                m.field.clone()
            },
            values: m.values.iter().map(|v| ValuePattern::new(v)).collect(),
        })
        .collect()
}

#[derive(Debug)]
enum HostPattern {
    Exact(String),
    Wildcard(String),
}

#[derive(Debug)]
enum Compiled {
    Path(Vec<PathPattern>),
    PathRegexp {
        name: CompactString,
        re: Arc<Regex>,
    },
    Host(Vec<HostPattern>),
    Method(Vec<String>),
    Header(Vec<FieldPatterns>),
    HeaderRegexp {
        name: CompactString,
        field: String,
        re: Arc<Regex>,
    },
    Query(Vec<FieldPatterns>),
    Protocol(String),
    RemoteIp(Vec<IpNet>),
    ClientIp(Vec<IpNet>),
    Not(Box<CompiledSet>),
    ErrorStatus(Vec<(u16, bool)>),
    File(Box<dwaar_config::model::FileMatch>),
    Bot,
    /// Some key's value equals one of its values (any key, as in Caddy).
    Vars(Vec<(VarKey, Vec<dwaar_config::placeholder::Template>)>),
    VarsRegexp {
        name: CompactString,
        key: VarKey,
        re: Arc<Regex>,
    },
    Expression(Box<Expression>),
}

/// A compiled `expression` matcher: the CEL program, the standard functions it may
/// call, and what fills its variables per request.
struct Expression {
    source: String,
    program: cel_interpreter::Program,
    functions: cel_interpreter::Context<'static>,
    /// `dwaar_ph<N>`: placeholders, rendered per request.
    placeholders: Vec<(String, dwaar_config::placeholder::Template, bool)>,
    /// `dwaar_m<N>`: matcher calls (with their variable names), matched per request.
    matchers: Vec<(String, CompiledSet)>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.source)
            .finish()
    }
}

/// Placeholders Caddy hands to expressions as numbers (`{http.error.status_code} ==
/// 404`); all others are strings.
fn numeric_placeholder(name: &str) -> bool {
    [
        "status_code",
        ".port",
        ".requests",
        ".max_requests",
        ".fails",
        "retries",
        "resp.status",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

impl Expression {
    fn compile(e: &dwaar_config::model::ExpressionMatch) -> Result<Expression, String> {
        Ok(Expression {
            source: e.source.clone(),
            program: dwaar_config::compile::expression::parse_cel(&e.program)
                .map_err(|err| format!("expression `{}`: {err}", e.source))?,
            functions: cel_interpreter::Context::default(),
            placeholders: e
                .placeholders
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        format!("dwaar_ph{i}"),
                        dwaar_config::placeholder::Template::parse(&format!("{{{name}}}")),
                        numeric_placeholder(name),
                    )
                })
                .collect(),
            matchers: compile_sets(&e.matchers)?
                .into_iter()
                .enumerate()
                .map(|(i, set)| (format!("dwaar_m{i}"), set))
                .collect(),
        })
    }

    /// Whether the expression is true for this request (an error or a value that is
    /// not a boolean does not match, as in Caddy).
    fn matches(&self, req: &dyn HttpRequest, ctx: &mut RequestContext) -> bool {
        use cel_interpreter::Value;
        let mut scope = self.functions.new_inner_scope();
        for (var, template, numeric) in &self.placeholders {
            let text = crate::template::render(template, req, ctx).into_owned();
            let value = match text.parse::<i64>() {
                Ok(n) if *numeric => Value::Int(n),
                _ => Value::String(Arc::new(text)),
            };
            scope.add_variable_from_value(var.as_str(), value);
        }
        for (var, set) in &self.matchers {
            scope.add_variable_from_value(var.as_str(), set.matches(req, ctx));
        }
        matches!(self.program.execute(&scope), Ok(Value::Bool(true)))
    }
}

/// What a `vars` matcher looks at: a variable, or a placeholder.
#[derive(Debug)]
pub enum VarKey {
    Var(CompactString),
    Placeholder(dwaar_config::placeholder::Template),
}

impl VarKey {
    fn new(key: &str) -> VarKey {
        if key.starts_with('{') && key.ends_with('}') && key.matches('{').count() == 1 {
            VarKey::Placeholder(dwaar_config::placeholder::Template::parse(key))
        } else {
            VarKey::Var(CompactString::new(key))
        }
    }

    /// The key's value for this request (empty when unset).
    fn value<'a>(
        &'a self,
        req: &dyn HttpRequest,
        ctx: &'a RequestContext,
    ) -> std::borrow::Cow<'a, str> {
        match self {
            VarKey::Var(name) => std::borrow::Cow::Borrowed(ctx.var(name).unwrap_or("")),
            VarKey::Placeholder(t) => crate::template::render(t, req, ctx),
        }
    }
}

/// A compiled matcher set (AND of its matchers).
#[derive(Debug)]
pub struct CompiledSet {
    matchers: Vec<Compiled>,
}

/// Compiles matcher sets; regexes are built with a size budget to bound memory.
pub fn compile_sets(sets: &[MatcherSet]) -> Result<Vec<CompiledSet>, String> {
    sets.iter().map(compile_set).collect()
}

pub fn build_regex(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regular expression '{p}': {e}"))
}

fn compile_set(set: &MatcherSet) -> Result<CompiledSet, String> {
    let mut matchers = Vec::with_capacity(set.matchers.len());
    let default_name = set.name.clone().unwrap_or_default();
    for m in &set.matchers {
        matchers.push(match m {
            Matcher::Path(p) => Compiled::Path(p.iter().map(|s| PathPattern::new(s)).collect()),
            Matcher::PathRegexp { name, pattern } => Compiled::PathRegexp {
                name: CompactString::new(name.as_deref().unwrap_or(&default_name)),
                re: Arc::new(build_regex(pattern)?),
            },
            Matcher::Host(h) => Compiled::Host(
                h.iter()
                    .map(|h| match h.strip_prefix('*') {
                        Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase()),
                        None => HostPattern::Exact(h.to_ascii_lowercase()),
                    })
                    .collect(),
            ),
            Matcher::Method(m) => Compiled::Method(m.clone()),
            Matcher::Header(f) => Compiled::Header(field_patterns(f, true)),
            Matcher::HeaderRegexp {
                name,
                field,
                pattern,
            } => Compiled::HeaderRegexp {
                name: CompactString::new(name.as_deref().unwrap_or(&default_name)),
                field: field.to_ascii_lowercase(),
                re: Arc::new(build_regex(pattern)?),
            },
            Matcher::Query(f) => Compiled::Query(field_patterns(f, false)),
            Matcher::Protocol(p) => Compiled::Protocol(p.clone()),
            Matcher::RemoteIp(r) => Compiled::RemoteIp(
                r.iter()
                    .map(|s| IpNet::parse(s))
                    .collect::<Result<_, _>>()?,
            ),
            Matcher::ClientIp(r) => Compiled::ClientIp(
                r.iter()
                    .map(|s| IpNet::parse(s))
                    .collect::<Result<_, _>>()?,
            ),
            Matcher::Not(inner) => Compiled::Not(Box::new(compile_set(inner)?)),
            Matcher::File(f) => Compiled::File(Box::new(f.clone())),
            Matcher::Bot => Compiled::Bot,
            Matcher::Vars(list) => Compiled::Vars(
                list.iter()
                    .map(|v| (VarKey::new(&v.key), v.values.clone()))
                    .collect(),
            ),
            Matcher::VarsRegexp { name, key, pattern } => Compiled::VarsRegexp {
                name: CompactString::new(name.as_deref().unwrap_or(&default_name)),
                key: VarKey::new(key),
                re: Arc::new(build_regex(pattern)?),
            },
            Matcher::Expression(e) => Compiled::Expression(Box::new(Expression::compile(e)?)),
            Matcher::ErrorStatus(codes) => Compiled::ErrorStatus(
                codes
                    .iter()
                    .map(|c| {
                        if let Some(class) = c.strip_suffix("xx") {
                            (class.parse::<u16>().unwrap_or(0) * 100, true)
                        } else {
                            (c.parse().unwrap_or(0), false)
                        }
                    })
                    .collect(),
            ),
        });
    }
    Ok(CompiledSet { matchers })
}

/// The lowercase, percent-decoded request path used by path matchers.
///
/// Dot segments and repeated slashes are resolved first, so `/public/../admin` and
/// `/public/%2e%2e/admin` match what an origin that normalises paths will serve:
/// `/admin`.
pub fn match_path(req: &dyn HttpRequest) -> std::borrow::Cow<'_, str> {
    let p = percent_decode(req.path());
    let p = if p.contains("/.") || p.contains("//") {
        std::borrow::Cow::Owned(clean_path(&p))
    } else {
        p
    };
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(p.to_ascii_lowercase())
    } else {
        p
    }
}

/// Resolves `.` and `..` segments and collapses repeated slashes; never climbs above
/// `/`; keeps a trailing slash.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(p.len());
    for s in &parts {
        out.push('/');
        out.push_str(s);
    }
    let trailing = p.ends_with('/') || p.ends_with("/.") || p.ends_with("/..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// True when any set matches (no sets = match all).
pub fn any_set_matches(
    sets: &[CompiledSet],
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
) -> bool {
    sets.is_empty() || sets.iter().any(|s| s.matches(req, ctx))
}

impl CompiledSet {
    pub fn matches(&self, req: &dyn HttpRequest, ctx: &mut RequestContext) -> bool {
        self.matchers.iter().all(|m| matches_one(m, req, ctx))
    }
}

fn matches_one(m: &Compiled, req: &dyn HttpRequest, ctx: &mut RequestContext) -> bool {
    match m {
        Compiled::Path(pats) => {
            let p = match_path(req);
            pats.iter().any(|pat| pat.matches(&p))
        }
        Compiled::Bot => crate::security::is_bot(req.header("user-agent")),
        Compiled::File(fm) => match crate::files::find_file(fm, req, ctx) {
            Some(found) => {
                crate::files::remember(&found, ctx);
                true
            }
            None => false,
        },
        Compiled::PathRegexp { name, re } => {
            let p = percent_decode(req.path());
            match re.captures(&p) {
                Some(c) => {
                    record_captures(ctx, name, &c);
                    true
                }
                None => false,
            }
        }
        Compiled::Host(hosts) => hosts.iter().any(|h| match h {
            HostPattern::Exact(e) => ctx.host == e.as_str(),
            HostPattern::Wildcard(suffix) => {
                ctx.host.ends_with(suffix.as_str())
                    && !ctx.host[..ctx.host.len() - suffix.len()].contains('.')
            }
        }),
        Compiled::Method(ms) => ms.iter().any(|m| m == req.method()),
        Compiled::Header(fields) => fields.iter().all(|f| {
            if f.values.is_empty() {
                return req.header_count(&f.field) == 0;
            }
            req.any_header_value(&f.field, &mut |v| f.values.iter().any(|p| p.matches(v)))
        }),
        Compiled::Vars(keys) => keys.iter().any(|(key, values)| {
            let have = key.value(req, ctx);
            values
                .iter()
                .any(|v| crate::template::render(v, req, ctx) == have)
        }),
        Compiled::VarsRegexp { name, key, re } => {
            let caps: Option<Vec<Option<String>>> = {
                let have = key.value(req, ctx);
                re.captures(&have).map(|c| {
                    c.iter()
                        .map(|m| m.map(|m| m.as_str().to_string()))
                        .collect()
                })
            };
            match caps {
                Some(c) => {
                    ctx.captures.push((name.clone(), c));
                    true
                }
                None => false,
            }
        }
        Compiled::HeaderRegexp { name, field, re } => {
            let mut caps: Option<Vec<Option<String>>> = None;
            req.any_header_value(field, &mut |v| match re.captures(v) {
                Some(c) => {
                    caps = Some(
                        c.iter()
                            .map(|m| m.map(|m| m.as_str().to_string()))
                            .collect(),
                    );
                    true
                }
                None => false,
            });
            match caps {
                Some(c) => {
                    ctx.captures.push((name.clone(), c));
                    true
                }
                None => false,
            }
        }
        Compiled::Query(fields) => {
            let q = req.query().unwrap_or("");
            fields.iter().all(|f| match query_param(q, &f.field) {
                Some(v) => f.values.iter().any(|p| p.matches(&v)),
                None => false,
            })
        }
        Compiled::Protocol(p) => {
            let v = req.version();
            match p.as_str() {
                "http" => !ctx.conn.tls,
                "https" => ctx.conn.tls,
                "grpc" => req
                    .header("content-type")
                    .map(|c| c.starts_with("application/grpc"))
                    .unwrap_or(false),
                "http/1.0" => v == http::Version::HTTP_10,
                "http/1.1" => v == http::Version::HTTP_11,
                "http/1" => v == http::Version::HTTP_10 || v == http::Version::HTTP_11,
                "http/1.1+" => v >= http::Version::HTTP_11,
                "http/2" => v == http::Version::HTTP_2,
                "http/2+" => v >= http::Version::HTTP_2,
                "http/3" => v == http::Version::HTTP_3,
                _ => false,
            }
        }
        Compiled::RemoteIp(nets) => nets.iter().any(|n| n.contains(ctx.conn.remote.ip())),
        // The pipeline settles the client address before any route runs.
        Compiled::ClientIp(nets) => nets.iter().any(|n| n.contains(ctx.client_ip())),
        Compiled::Not(inner) => !inner.matches(req, ctx),
        Compiled::Expression(e) => e.matches(req, ctx),
        Compiled::ErrorStatus(codes) => match ctx.error {
            Some((s, _)) => codes
                .iter()
                .any(|&(c, class)| if class { s / 100 == c / 100 } else { s == c }),
            None => false,
        },
    }
}

fn record_captures(ctx: &mut RequestContext, name: &CompactString, c: &regex::Captures<'_>) {
    if name.is_empty() && c.len() <= 1 {
        return;
    }
    let vals = c
        .iter()
        .map(|m| m.map(|m| m.as_str().to_string()))
        .collect();
    ctx.captures.push((name.clone(), vals));
}

#[cfg(test)]
mod clean_tests {
    use super::clean_path;

    #[test]
    fn cleans_dot_segments() {
        assert_eq!(clean_path("/public/../admin/x"), "/admin/x");
        assert_eq!(clean_path("/a/./b//c/"), "/a/b/c/");
        assert_eq!(clean_path("/../../etc"), "/etc");
        assert_eq!(clean_path("/a/.."), "/");
        assert_eq!(clean_path("//admin"), "/admin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert!(PathPattern::new("/api/*").matches("/api/x/y"));
        assert!(!PathPattern::new("/api/*").matches("/apix"));
        assert!(PathPattern::new("*.css").matches("/a/b.css"));
        assert!(PathPattern::new("/A").matches("/a"));
        assert!(PathPattern::new("/u/*/edit").matches("/u/42/edit"));
        assert!(!PathPattern::new("/u/*/edit").matches("/u/4/2/edit"));
        assert!(PathPattern::new("*admin*").matches("/x/admin/y"));
    }
}
