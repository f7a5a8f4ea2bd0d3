//! Security middleware: `ip_filter`, `rate_limit` and `security_headers`.

use super::args::{block_lines, Diags};
use super::matchers::{inline_matcher, NamedMatchers};
use crate::model::{
    BasicAuth, BasicUser, ForwardAuth, Handler, HeaderOp, HeaderOps, IpFilter, MatcherSet,
    RateLimit, Route,
};
use crate::parser::Directive;
use crate::placeholder::Template;

fn route(m: Vec<MatcherSet>, h: Handler) -> Route {
    Route {
        matchers: m,
        group: None,
        handlers: vec![h],
    }
}

/// `ip_filter [matcher] { allow <cidr>...; deny <cidr>...; default allow|deny }`.
pub fn ip_filter(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        0,
        "ip_filter [matcher] { allow ...; deny ...; default allow|deny }",
    ) {
        return None;
    }
    let mut f = IpFilter {
        allow: Vec::new(),
        deny: Vec::new(),
        default_allow: true,
    };
    let mut saw_default = false;
    let errors_before = diags.error_count();
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "allow" | "deny" => {
                if !diags.arity(line, 0, 1, usize::MAX, &format!("{name} <cidr>...")) {
                    continue;
                }
                let list = if name == "allow" {
                    &mut f.allow
                } else {
                    &mut f.deny
                };
                super::matchers::push_cidrs(&line.args, list, diags);
            }
            "default" => {
                if diags.arity(line, 0, 1, 1, "default allow|deny") {
                    saw_default = true;
                    match line.args[0].text.as_str() {
                        "allow" => f.default_allow = true,
                        "deny" => f.default_allow = false,
                        _ => diags.unknown_sub("default", &line.args[0], &["allow", "deny"]),
                    }
                }
            }
            _ => diags.unknown_sub("ip_filter", &line.name, &["allow", "deny", "default"]),
        }
    }
    // An allow list without a default means "only these".
    if !saw_default && !f.allow.is_empty() && f.deny.is_empty() {
        f.default_allow = false;
    }
    if diags.error_count() > errors_before {
        return None;
    }
    if f.allow.is_empty() && f.deny.is_empty() && f.default_allow {
        diags.push(
            d.name
                .error("ip_filter allows everything: give it allow or deny lists")
                .with_help("ip_filter { allow 10.0.0.0/8; default deny }"),
        );
        return None;
    }
    Some(route(m, Handler::IpFilter(f)))
}

/// `rate_limit [matcher] <events>/<window>` or the block form with `zone`, `key`,
/// `events`, `window`, `burst`.
pub fn rate_limit(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        1,
        "rate_limit [matcher] <events>/<window> or { ... }",
    ) {
        return None;
    }
    // Without `zone`, each directive (and each use of a snippet holding one) has its
    // own zone, numbered in the order written.
    diags.unnamed_rate_limits += 1;
    let mut r = RateLimit {
        zone: format!("@{}", diags.unnamed_rate_limits),
        key: Template::parse("{remote_host}"),
        events: 0,
        window_ms: 0,
        burst: 0,
        distributed: None,
    };
    if let Some(t) = d.args.get(skip) {
        let parsed = t.text.split_once('/').and_then(|(n, w)| {
            let n: u32 = n.parse().ok()?;
            let ms = match w {
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => crate::units::parse_duration_ms(other).ok()?,
            };
            Some((n, ms))
        });
        match parsed {
            Some((n, ms)) if n > 0 && ms > 0 => {
                r.events = n;
                r.window_ms = ms;
            }
            _ => {
                diags.push(
                    t.error(format!("invalid rate '{}'", t.text))
                        .with_help("write events per window: 100/s, 1000/m, 50/10s"),
                );
                return None;
            }
        }
    }
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "zone" => {
                if diags.arity(line, 0, 1, 1, "zone <name>") {
                    r.zone = line.args[0].text.clone();
                }
            }
            "key" => {
                if diags.arity(line, 0, 1, 1, "key <placeholder>") {
                    r.key = diags.template(&line.args[0]);
                }
            }
            "events" | "burst" => {
                if diags.arity(line, 0, 1, 1, &format!("{name} <count>")) {
                    if let Some(n) = diags.number::<u32>(&line.args[0], "count") {
                        if name == "events" {
                            r.events = n;
                        } else {
                            r.burst = n;
                        }
                    }
                }
            }
            "window" => {
                if diags.arity(line, 0, 1, 1, "window <duration>") {
                    if let Some(v) = diags.duration(&line.args[0]) {
                        r.window_ms = v;
                    }
                }
            }
            "distributed" => {
                if !diags.arity(
                    line,
                    0,
                    1,
                    2,
                    "distributed exact | distributed approximate [<sync_interval>]",
                ) {
                    continue;
                }
                if !diags.redis_storage {
                    diags.push(
                        line.name
                            .error("a distributed rate limit is shared through Redis, and this config has none")
                            .with_help("add 'storage redis' (with its address) to the global options"),
                    );
                    continue;
                }
                match (line.args[0].text.as_str(), line.args.get(1)) {
                    ("exact", None) => r.distributed = Some(crate::model::Distributed::Exact),
                    ("exact", Some(a)) => diags.push(
                        a.error("exact mode has no sync interval: every decision asks Redis"),
                    ),
                    ("approximate", interval) => {
                        let ms = match interval {
                            Some(a) => match diags.duration(a) {
                                Some(0) => {
                                    diags.push(a.error("the sync interval must be above zero"));
                                    continue;
                                }
                                Some(ms) => ms,
                                None => continue,
                            },
                            None => 1000,
                        };
                        r.distributed = Some(crate::model::Distributed::Approximate {
                            sync_interval_ms: ms,
                        });
                    }
                    _ => diags.unknown_sub("distributed", &line.args[0], &["exact", "approximate"]),
                }
            }
            _ => diags.unknown_sub(
                "rate_limit",
                &line.name,
                &["zone", "key", "events", "window", "burst", "distributed"],
            ),
        }
    }
    if r.events == 0 || r.window_ms == 0 {
        diags.push(
            d.name
                .error("rate_limit needs events and a window")
                .with_help("rate_limit 100/s, or rate_limit { events 100; window 1s }"),
        );
        return None;
    }
    Some(route(m, Handler::RateLimit(r)))
}

/// The default security response headers (set only when the response has none).
pub const DEFAULT_SECURITY_HEADERS: &[(&str, &str)] = &[
    ("Strict-Transport-Security", "max-age=31536000"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-Frame-Options", "SAMEORIGIN"),
];

/// `security_headers [off] { <Field> <value>; -<Field> }`: the defaults, each field
/// overridable or removable. Compiles to deferred `header` defaults (`?Field value`), so
/// a value from the application or a `header` directive wins.
pub fn security_headers(d: &Directive, diags: &mut Diags) -> Option<SecurityHeaders> {
    if !diags.arity(d, 0, 0, 1, "security_headers [off] { ... }") {
        return None;
    }
    if let Some(a) = d.args.first() {
        if a.text == "off" {
            return Some(SecurityHeaders::Off);
        }
        diags.unknown_sub("security_headers", a, &["off"]);
        return None;
    }
    let mut fields: Vec<(String, Option<String>)> = DEFAULT_SECURITY_HEADERS
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
    for line in block_lines(&d.block) {
        let name = line.name.text.clone();
        if let Some(removed) = name.strip_prefix('-') {
            fields.retain(|(k, _)| !k.eq_ignore_ascii_case(removed));
            continue;
        }
        if !diags.arity(line, 0, 1, 1, &format!("{name} <value>")) {
            continue;
        }
        let v = line.args[0].text.clone();
        match fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
        {
            Some(slot) => slot.1 = Some(v),
            None => fields.push((name, Some(v))),
        }
    }
    Some(SecurityHeaders::On(headers_handler(&fields)))
}

/// What a site says about security headers.
pub enum SecurityHeaders {
    Off,
    On(Handler),
}

/// The deferred header defaults for `fields`.
pub fn headers_handler(fields: &[(String, Option<String>)]) -> Handler {
    Handler::Headers(HeaderOps {
        ops: fields
            .iter()
            .filter_map(|(k, v)| {
                v.as_ref().map(|v| HeaderOp::Default {
                    name: k.clone(),
                    value: Template::parse(v),
                })
            })
            .collect(),
        deferred: true,
    })
}

/// `basic_auth [matcher] [bcrypt [realm]] { <user> <hash> ... }` (alias `basicauth`).
/// Hashes are bcrypt strings, or base64 of them (what older Caddy versions wanted).
pub fn basic_auth(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        0,
        2,
        "basic_auth [matcher] [bcrypt [realm]] { user hash }",
    ) {
        return None;
    }
    let mut realm = "restricted".to_string();
    if let Some(alg) = d.args.get(skip) {
        if alg.text != "bcrypt" {
            diags.push(
                alg.error(format!("unsupported hash algorithm '{}'", alg.text))
                    .with_help("basic_auth uses bcrypt hashes: dwaar hash-password"),
            );
            return None;
        }
    }
    if let Some(r) = d.args.get(skip + 1) {
        // Quotes and control characters would break the WWW-Authenticate header.
        realm = r
            .text
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .collect();
    }
    let mut users: Vec<BasicUser> = Vec::new();
    let errors_before = diags.error_count();
    for line in block_lines(&d.block) {
        if !diags.arity(line, 0, 1, 1, "<username> <bcrypt hash>") {
            continue;
        }
        let name = line.name.text.clone();
        let raw = line.args[0].text.clone();
        let hash = if raw.starts_with("$2") {
            raw
        } else {
            match crate::units::base64_decode(&raw).and_then(|b| String::from_utf8(b).ok()) {
                Some(h) if h.starts_with("$2") => h,
                _ => {
                    diags.push(
                        line.args[0]
                            .error("not a bcrypt hash")
                            .with_help("make one with: dwaar hash-password"),
                    );
                    continue;
                }
            }
        };
        if !valid_bcrypt(&hash) {
            diags.push(
                line.args[0]
                    .error("malformed bcrypt hash")
                    .with_help("make one with: dwaar hash-password"),
            );
            continue;
        }
        if users.iter().any(|u| u.name == name) {
            diags.push(line.name.error(format!("user '{name}' is listed twice")));
            continue;
        }
        users.push(BasicUser { name, hash });
    }
    if diags.error_count() > errors_before {
        return None;
    }
    if users.is_empty() {
        diags.push(
            d.name
                .error("basic_auth needs at least one user")
                .with_help("basic_auth { alice <hash from dwaar hash-password> }"),
        );
        return None;
    }
    Some(route(m, Handler::BasicAuth(BasicAuth { realm, users })))
}

/// `$2a$10$` + 53 characters of bcrypt's base64.
fn valid_bcrypt(h: &str) -> bool {
    let b = h.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

/// `forward_auth [matcher] <upstream> { uri <to>; copy_headers <field>[>new]...; header_up ... }`.
pub fn forward_auth(d: &Directive, named: &NamedMatchers, diags: &mut Diags) -> Option<Route> {
    let (m, skip) = inline_matcher(d, named, diags);
    if !diags.arity(
        d,
        skip,
        1,
        1,
        "forward_auth [matcher] <upstream> { uri ...; copy_headers ... }",
    ) {
        return None;
    }
    let up = &d.args[skip];
    let dial = up
        .text
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if up.text.starts_with("https://") || !dial.contains(':') {
        diags.push(
            up.error(format!(
                "forward_auth upstream '{}' must be host:port (plain HTTP)",
                up.text
            ))
            .with_help("forward_auth localhost:9091 { uri /api/verify }"),
        );
        return None;
    }
    let mut f = ForwardAuth {
        upstream: dial,
        uri: Template::parse("{uri}"),
        copy_headers: Vec::new(),
        header_up: HeaderOps::default(),
    };
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "uri" => {
                if diags.arity(line, 0, 1, 1, "uri <path>") {
                    f.uri = diags.template(&line.args[0]);
                }
            }
            "copy_headers" => {
                let mut names: Vec<String> = line.args.iter().map(|a| a.text.clone()).collect();
                names.extend(block_lines(&line.block).iter().map(|l| l.name.text.clone()));
                if names.is_empty() {
                    diags.push(line.name.error("copy_headers needs field names"));
                }
                for n in names {
                    let (from, to) = match n.split_once('>') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => (n.clone(), n),
                    };
                    f.copy_headers.push((from, to));
                }
            }
            "header_up" => {
                if diags.arity(line, 0, 1, 3, "header_up [+|-]<field> [<value>]") {
                    super::handlers::header_line(
                        &line.name,
                        &line.args,
                        false,
                        &mut f.header_up,
                        diags,
                    );
                }
            }
            _ => diags.unknown_sub(
                "forward_auth",
                &line.name,
                &["uri", "copy_headers", "header_up"],
            ),
        }
    }
    Some(route(m, Handler::ForwardAuth(f)))
}
