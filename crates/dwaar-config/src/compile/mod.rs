//! Validation: the syntax tree ([`Document`]) becomes the [`Config`] model.
//!
//! Global options, site addresses and site-level directives are handled here; handler
//! directives live in `handlers`, `reverse_proxy` in its own module, matchers in
//! `matchers`, and directive ordering in `routes`.

mod analytics;
mod args;
mod cache;
mod encode;
pub mod expression;
mod files;
mod handlers;
mod layer4;
mod log;
mod matchers;
mod responses;
mod reverse_proxy;
mod routes;
mod security;
mod tls;

pub use args::Diags;
pub use handlers::{NOT_YET as NOT_YET_DIRECTIVES, SUPPORTED as SUPPORTED_DIRECTIVES};
pub use routes::DEFAULT_ORDER;
pub use tls::resolver_addr;
pub use tls::{CIPHERS as TLS_CIPHERS, CURVES as TLS_CURVES};

use crate::diag::did_you_mean;
use crate::lexer::Token;
use crate::model::{Config, GlobalOptions, OrderRule, ServerOptions, Site, SiteAddress};
use crate::parser::{Directive, Document};
use args::block_lines;
use matchers::NamedMatchers;
use routes::{compile_block, directive_order, RouteCx};
use std::collections::HashMap;

/// Global options that work today.
pub const GLOBAL_SUPPORTED: &[&str] = &[
    "debug",
    "http_port",
    "https_port",
    "grace_period",
    "shutdown_delay",
    "order",
    "servers",
    "admin",
    "workers",
    "log",
    "auto_https",
    "email",
    "acme_ca",
    "acme_ca_root",
    "acme_eab",
    "ocsp_stapling",
    "default_sni",
    "fallback_sni",
    "key_type",
    "renew_interval",
    "ocsp_interval",
    "skip_install_trust",
    "on_demand_tls",
    "storage_clean_interval",
    "local_certs",
    "storage",
    "analytics",
    "metrics",
    "default_bind",
    "filesystem",
    "layer4",
    "acme_dns",
    "cert_issuer",
    "preferred_chains",
];
/// Global options Caddy has that Dwaar refuses at their line until their runtime exists.
pub const GLOBAL_NOT_YET: &[&str] = &["pki", "persist_config", "preferred_chains", "events"];

/// The hosts of a `bind` (or `default_bind`) line: IP addresses or `localhost`, with an
/// optional network prefix: `tcp/` (either family), `tcp4/` (IPv4 only: `localhost` is
/// 127.0.0.1) or `tcp6/` (IPv6 only: `localhost` is ::1, and the wildcard `::` becomes
/// `tcp6/::`, a socket that does not also accept IPv4).
fn bind_hosts(d: &Directive, diags: &mut Diags) -> Vec<String> {
    let mut out = Vec::new();
    if !diags.arity(d, 0, 1, usize::MAX, &format!("{} <host>...", d.name.text)) {
        return out;
    }
    for a in &d.args {
        if let Some(rest) = a.text.strip_prefix("unix/") {
            if let Some(u) = unix_bind(a, rest, diags) {
                out.push(u);
            }
            continue;
        }
        let (network, rest) = match a.text.split_once('/') {
            Some((n @ ("tcp" | "tcp4" | "tcp6"), rest)) => (n, rest),
            Some((n, _)) => {
                diags.push(
                    a.error(format!("'{n}' is not a network Dwaar can bind"))
                        .with_help("use tcp/, tcp4/ or tcp6/ (or no prefix)"),
                );
                continue;
            }
            None => ("tcp", a.text.as_str()),
        };
        let host = rest.trim_start_matches('[').trim_end_matches(']');
        let ip = if host == "localhost" {
            match network {
                "tcp4" => Some("127.0.0.1".parse().ok()),
                "tcp6" => Some("::1".parse().ok()),
                _ => None,
            }
            .flatten()
        } else {
            host.parse::<std::net::IpAddr>().ok()
        };
        match (network, ip) {
            ("tcp", None) if host == "localhost" => out.push(host.to_string()),
            (_, None) => diags.push(
                a.error(format!("bind address '{}' is not an IP address", a.text))
                    .with_help("bind 127.0.0.1 or bind ::1"),
            ),
            ("tcp4", Some(std::net::IpAddr::V6(_))) | ("tcp6", Some(std::net::IpAddr::V4(_))) => {
                diags.push(a.error(format!(
                    "'{host}' is not an {} address",
                    if network == "tcp4" { "IPv4" } else { "IPv6" }
                )))
            }
            ("tcp6", Some(ip)) if ip.is_unspecified() => out.push("tcp6/::".to_string()),
            (_, Some(ip)) => out.push(ip.to_string()),
        }
    }
    out
}

/// A site served on a unix socket speaks plain HTTP there (TLS and HTTP/3 need an IP
/// listener): refuses HTTPS addresses, reported at `at`.
fn unix_needs_plain_http(at: &Token, addresses: &[SiteAddress], diags: &mut Diags) {
    if addresses
        .iter()
        .any(|a| a.scheme.as_deref() == Some("https"))
    {
        diags.push(
            at.error("a site on a unix socket serves plain HTTP only")
                .with_help("give the site http:// addresses (http://example.com:80)"),
        );
    }
}

/// `unix/<path>[|<mode>]`: a unix socket at `path` (absolute, or relative to the working
/// directory) with the octal permission `mode` (default `0200`, as in Caddy: only the
/// owner may connect), normalised to `unix/<path>|<mode>`.
fn unix_bind(a: &Token, rest: &str, diags: &mut Diags) -> Option<String> {
    let (path, mode) = match rest.rsplit_once('|') {
        Some((p, m)) => (p, m),
        None => (rest, "0200"),
    };
    if path.is_empty() || path.starts_with('@') {
        diags.push(
            a.error(format!("'{}': a unix socket needs a file path", a.text))
                .with_help("bind unix//run/dwaar.sock|0660"),
        );
        return None;
    }
    let ok_mode = u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| mode.len() <= 4 && *m <= 0o777);
    let Some(bits) = ok_mode else {
        diags.push(
            a.error(format!("'{mode}' is not an octal file mode"))
                .with_help("bind unix//run/dwaar.sock|0660"),
        );
        return None;
    };
    if bits & 0o200 == 0 {
        diags.push(a.error(format!(
            "mode {mode} leaves the owner unable to connect to the socket"
        )));
        return None;
    }
    Some(format!("unix/{path}|{bits:04o}"))
}

/// `listener_wrappers { proxy_protocol { ... } tls }`: the PROXY protocol is read before
/// the TLS handshake, so `tls` (implied when absent) must come after it.
fn listener_wrappers(line: &Directive, s: &mut ServerOptions, diags: &mut Diags) {
    if !diags.arity(line, 0, 0, 0, "listener_wrappers { ... }") {
        return;
    }
    let mut seen_tls = false;
    for w in block_lines(&line.block) {
        match w.name.text.as_str() {
            "tls" => {
                if diags.arity(w, 0, 0, 0, "tls") {
                    seen_tls = true;
                }
            }
            "proxy_protocol" => {
                if seen_tls {
                    diags.push(
                        w.name
                            .error("proxy_protocol must come before tls")
                            .with_help("the PROXY header precedes the TLS handshake: list proxy_protocol first"),
                    );
                    continue;
                }
                if s.layer4.is_some() {
                    diags.push(
                        w.name
                            .error("proxy_protocol must come before layer4")
                            .with_help("the PROXY header is the first thing on the connection"),
                    );
                    continue;
                }
                if s.proxy_protocol.is_some() {
                    diags.push(
                        w.name
                            .error("proxy_protocol is already set for this server"),
                    );
                    continue;
                }
                if diags.arity(w, 0, 0, 0, "proxy_protocol { ... }") {
                    s.proxy_protocol = Some(proxy_protocol(w, diags));
                }
            }
            "layer4" => {
                if seen_tls {
                    diags.push(
                        w.name
                            .error("layer4 must come before tls")
                            .with_help("layer4 routes see the connection before the TLS handshake: list layer4 first"),
                    );
                } else if s.layer4.is_some() {
                    diags.push(w.name.error("layer4 is already set for this server"));
                } else if diags.arity(w, 0, 0, 0, "layer4 { ... }") {
                    s.layer4 = Some(layer4::routes(block_lines(&w.block), false, diags));
                }
            }
            "http_redirect" => diags.push(w.name.error(format!(
                "listener wrapper '{}' is not supported yet",
                w.name.text
            ))),
            _ => diags.unknown_sub(
                "listener_wrappers",
                &w.name,
                &["proxy_protocol", "layer4", "tls"],
            ),
        }
    }
}

fn proxy_protocol(d: &Directive, diags: &mut Diags) -> crate::model::ProxyProtocol {
    let mut p = crate::model::ProxyProtocol::default();
    for l in block_lines(&d.block) {
        match l.name.text.as_str() {
            "timeout" => {
                if diags.arity(l, 0, 1, 1, "timeout <duration>") {
                    p.timeout_ms = diags.duration(&l.args[0]);
                }
            }
            "allow" | "deny" => {
                if diags.arity(l, 0, 1, usize::MAX, &format!("{} <cidr>...", l.name.text)) {
                    let list = if l.name.text == "allow" {
                        &mut p.allow
                    } else {
                        &mut p.deny
                    };
                    matchers::push_cidrs(&l.args, list, diags);
                }
            }
            "fallback_policy" => {
                const POLICIES: &[&str] = &["ignore", "use", "reject", "require", "skip"];
                if diags.arity(l, 0, 1, 1, "fallback_policy ignore|use|reject|require|skip") {
                    let v = l.args[0].text.to_ascii_lowercase();
                    if POLICIES.contains(&v.as_str()) {
                        p.fallback_policy = Some(v);
                    } else {
                        diags.unknown_sub("fallback_policy", &l.args[0], POLICIES);
                    }
                }
            }
            _ => diags.unknown_sub(
                "proxy_protocol",
                &l.name,
                &["timeout", "allow", "deny", "fallback_policy"],
            ),
        }
    }
    p
}

/// An RFC 9110 field name (a token).
fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `&(name) { ... }` at the top level: a named route, run where `invoke name` says.
fn named_route_name(sb: &crate::parser::SiteBlock) -> Option<&str> {
    match sb.addresses.as_slice() {
        [t] => t
            .text
            .strip_prefix("&(")
            .and_then(|r| r.strip_suffix(')'))
            .filter(|n| !n.is_empty()),
        _ => None,
    }
}

/// The named routes of the document, by name (defined twice: reported).
fn named_routes<'d>(doc: &'d Document, diags: &mut Diags) -> HashMap<String, &'d [Directive]> {
    let mut out: HashMap<String, &'d [Directive]> = HashMap::new();
    for sb in &doc.sites {
        if let Some(name) = named_route_name(sb) {
            if out.insert(name.to_string(), &sb.block.directives).is_some() {
                diags.push(sb.addresses[0].error(format!("named route '{name}' is defined twice")));
            }
        }
    }
    out
}

/// Compiles every named route once on its own, so what is wrong in one is reported at
/// its line once, invoked or not (each `invoke` compiles it again, quietly).
fn check_named_routes(routes: &HashMap<String, &[Directive]>, order: &[String], diags: &mut Diags) {
    let mut names: Vec<&String> = routes.keys().collect();
    names.sort();
    for name in names {
        let mut cx = RouteCx {
            order,
            group_counter: 0,
            response_scope: None,
            named_routes: routes,
            invoking: vec![name.clone()],
        };
        compile_block(routes[name], &NamedMatchers::new(), false, &mut cx, diags);
    }
}

/// Every name the config language knows, sorted: what `dwaar list-directives` prints and
/// what the docs site must have a page for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Vocabulary {
    /// Site directives that work (handlers and site-level ones, aliases included).
    pub directives: Vec<&'static str>,
    pub global_options: Vec<&'static str>,
    pub matchers: Vec<&'static str>,
    /// Known from Caddy, refused with an error at their line for now.
    pub directives_not_yet: Vec<&'static str>,
    pub global_options_not_yet: Vec<&'static str>,
}

pub fn vocabulary() -> Vocabulary {
    let sorted = |parts: &[&[&'static str]]| {
        let mut v: Vec<&'static str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    Vocabulary {
        directives: sorted(&[SUPPORTED_DIRECTIVES, handlers::SITE_LEVEL]),
        global_options: sorted(&[GLOBAL_SUPPORTED]),
        matchers: sorted(&[matchers::MATCHER_KINDS]),
        directives_not_yet: sorted(&[NOT_YET_DIRECTIVES]),
        global_options_not_yet: sorted(&[GLOBAL_NOT_YET]),
    }
}

/// Whether `name` is a directive Dwaar knows (supported or not yet).
pub fn is_known_directive(name: &str) -> bool {
    SUPPORTED_DIRECTIVES.contains(&name)
        || NOT_YET_DIRECTIVES.contains(&name)
        || handlers::SITE_LEVEL.contains(&name)
}

/// Validates a parsed document into the config model, collecting diagnostics.
pub fn compile(doc: &Document, diags: &mut Diags) -> Config {
    for sb in &doc.sites {
        collect_map_outputs(&sb.block.directives, &mut diags.map_outputs);
    }
    let global = global_options(
        doc.global.as_ref().map_or(&[], |b| &b.directives[..]),
        diags,
    );
    diags.redis_storage = global.tls.redis.is_some();
    let order = directive_order(&global.order);
    let named_routes = named_routes(doc, diags);
    check_named_routes(&named_routes, &order, diags);
    let mut sites = Vec::new();
    let mut seen: HashMap<(String, u16, Option<String>), Token> = HashMap::new();
    for sb in &doc.sites {
        if named_route_name(sb).is_some() {
            continue;
        }
        let mut addresses = Vec::new();
        for t in &sb.addresses {
            if let Some(a) = site_address(t, &global, diags) {
                let key = (a.host.clone(), a.port, a.path.clone());
                if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(key) {
                    e.insert(t.clone());
                } else {
                    let d = t.error(format!(
                        "site address '{}' is already used by another site block",
                        t.text
                    ));
                    diags.push(d.with_help(
                        "merge the two site blocks, or give one a different host or port",
                    ));
                }
                addresses.push(a);
            }
        }
        let mut bind = Vec::new();
        let mut site_logs: Vec<crate::model::LogConfig> = Vec::new();
        let mut site_tls: Option<crate::model::SiteTls> = None;
        let mut seen_tls = false;
        let mut security: Option<security::SecurityHeaders> = None;
        let mut site_analytics: Option<crate::model::SiteAnalytics> = None;
        let mut error_blocks: Vec<&Directive> = Vec::new();
        let mut handler_dirs: Vec<Directive> = Vec::new();
        for d in &sb.block.directives {
            match d.name.text.as_str() {
                "bind" if !d.name.quoted() => {
                    let hosts = bind_hosts(d, diags);
                    if hosts.iter().any(|h| h.starts_with("unix/")) {
                        unix_needs_plain_http(&d.name, &addresses, diags);
                    }
                    bind.extend(hosts);
                }
                "handle_errors" if !d.name.quoted() => error_blocks.push(d),
                "log" if !d.name.quoted() => {
                    let name = d.args.first().map(|a| a.text.as_str());
                    if name.is_some() && site_logs.iter().any(|l| l.name.as_deref() == name) {
                        diags.push(
                            d.args[0]
                                .error(format!(
                                    "this site already has a log named '{}'",
                                    d.args[0].text
                                ))
                                .with_help("give each log block its own name"),
                        );
                    } else if let Some(c) = log::log_config(d, diags, log::Scope::Site) {
                        site_logs.push(c);
                    }
                }
                "analytics" if !d.name.quoted() => {
                    if site_analytics.is_some() {
                        diags.push(d.name.error("a site has one 'analytics' directive"));
                    } else {
                        site_analytics = analytics::site(d, diags);
                    }
                }
                "security_headers" if !d.name.quoted() => {
                    if security.is_some() {
                        diags.push(d.name.error("a site has one 'security_headers' directive"));
                    } else {
                        security = security::security_headers(d, diags);
                    }
                }
                "tls" if !d.name.quoted() => {
                    if seen_tls {
                        diags.push(
                            d.name
                                .error("a site has one 'tls' directive")
                                .with_help("merge the two into one block"),
                        );
                    } else {
                        seen_tls = true;
                        site_tls = tls::site_tls(d, diags);
                        if !addresses.is_empty()
                            && addresses
                                .iter()
                                .all(|a| a.scheme.as_deref() == Some("http"))
                        {
                            diags.push(
                                d.name
                                    .error("'tls' in a site that is only served over plain HTTP")
                                    .with_help("give the site an https:// address or a host name"),
                            );
                        }
                    }
                }
                _ => handler_dirs.push(d.clone()),
            }
        }
        let mut cx = RouteCx {
            order: &order,
            group_counter: 0,
            response_scope: None,
            named_routes: &named_routes,
            invoking: Vec::new(),
        };
        let named = NamedMatchers::new();
        let mut routes = compile_block(&handler_dirs, &named, false, &mut cx, diags);
        // Security headers: on by default for HTTPS sites, where they are asked for.
        let https = addresses
            .iter()
            .any(|a| a.scheme.as_deref() == Some("https"));
        let headers = match security {
            Some(security::SecurityHeaders::On(h)) => Some(h),
            Some(security::SecurityHeaders::Off) => None,
            None if https => Some(security::headers_handler(
                &security::DEFAULT_SECURITY_HEADERS
                    .iter()
                    .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                    .collect::<Vec<_>>(),
            )),
            None => None,
        };
        if let Some(h) = headers {
            routes.insert(
                0,
                crate::model::Route {
                    matchers: Vec::new(),
                    group: None,
                    handlers: vec![h],
                },
            );
        }
        let mut error_routes = Vec::new();
        for d in error_blocks {
            let codes: Vec<String> = d.args.iter().map(|t| t.text.to_ascii_lowercase()).collect();
            for (t, c) in d.args.iter().zip(&codes) {
                let ok = c.len() == 3
                    && (c.bytes().all(|b| b.is_ascii_digit())
                        || (c.as_bytes()[0].is_ascii_digit() && &c[1..] == "xx"));
                if !ok {
                    diags.push(
                        t.error(format!("invalid status code '{}' in handle_errors", t.text))
                            .with_help("use codes like 404 or classes like 5xx"),
                    );
                }
            }
            let inner = compile_block(block_lines(&d.block), &named, false, &mut cx, diags);
            let matchers = if codes.is_empty() {
                vec![]
            } else {
                vec![handlers::error_status_matcher(codes)]
            };
            error_routes.push(crate::model::Route {
                matchers,
                group: None,
                handlers: vec![crate::model::Handler::Subroute { routes: inner }],
            });
        }
        if bind.is_empty() {
            bind = global.default_bind.clone();
            if bind.iter().any(|h| h.starts_with("unix/")) {
                if let Some(t) = sb.addresses.first() {
                    unix_needs_plain_http(t, &addresses, diags);
                }
            }
        }
        check_log_names(&sb.block.directives, &site_logs, diags);
        sites.push(Site {
            addresses,
            bind,
            routes,
            error_routes,
            logs: site_logs,
            tls: site_tls,
            analytics: site_analytics,
            reads_body: std::mem::take(&mut diags.body_placeholder),
        });
    }
    check_port_schemes(doc, &sites, diags);
    layer4::check_ports(doc, &sites, diags);
    tls::check_on_demand(doc, &global.tls, diags);
    Config { global, sites }
}

/// A port speaks either TLS or plain HTTP, never both.
fn check_port_schemes(doc: &Document, sites: &[Site], diags: &mut Diags) {
    let mut scheme_of: HashMap<u16, &str> = HashMap::new();
    let tokens = doc.sites.iter().flat_map(|sb| sb.addresses.iter());
    let addrs = sites.iter().flat_map(|s| s.addresses.iter());
    // `sites` holds only addresses that parsed; pair them with their tokens by text.
    let mut tokens = tokens.peekable();
    for a in addrs {
        let scheme = a.scheme.as_deref().unwrap_or("http");
        let t = loop {
            match tokens.next() {
                Some(t) if site_address_matches(&t.text, a) => break Some(t),
                Some(_) => continue,
                None => break None,
            }
        };
        match scheme_of.get(&a.port) {
            Some(&other) if other != scheme => {
                if let Some(t) = t {
                    diags.push(
                        t.error(format!(
                            "port {} serves both http:// and https:// sites",
                            a.port
                        ))
                        .with_help("give HTTP and HTTPS sites different ports"),
                    );
                }
            }
            _ => {
                scheme_of.insert(a.port, if scheme == "https" { "https" } else { "http" });
            }
        }
    }
}

fn site_address_matches(text: &str, a: &SiteAddress) -> bool {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    rest.to_ascii_lowercase().starts_with(&a.host)
}

/// Every name a `log_name` directive gives (anywhere in the site) must be one of the
/// site's named logs.
fn check_log_names(dirs: &[Directive], logs: &[crate::model::LogConfig], diags: &mut Diags) {
    for d in dirs {
        if d.name.text == "log_name" && !d.name.quoted() {
            let skip = usize::from(d.args.first().is_some_and(matchers::is_matcher_token));
            for a in d.args.iter().skip(skip) {
                if !logs
                    .iter()
                    .any(|l| l.name.as_deref() == Some(a.text.as_str()))
                {
                    let known: Vec<&str> = logs.iter().filter_map(|l| l.name.as_deref()).collect();
                    diags.push(
                        a.error(format!("this site has no log named '{}'", a.text))
                            .with_help(if known.is_empty() {
                                "name a log block: log <name> { ... }".to_string()
                            } else {
                                format!("its logs: {}", known.join(", "))
                            }),
                    );
                }
            }
        }
        if let Some(b) = &d.block {
            check_log_names(&b.directives, logs, diags);
        }
    }
}

fn collect_map_outputs(dirs: &[Directive], out: &mut std::collections::HashSet<String>) {
    for d in dirs {
        if d.name.text == "map" {
            let skip = usize::from(d.args.first().is_some_and(matchers::is_matcher_token));
            for t in d.args.iter().skip(skip + 1) {
                out.insert(
                    t.text
                        .trim_start_matches('{')
                        .trim_end_matches('}')
                        .trim_start_matches("vars.")
                        .to_string(),
                );
            }
        }
        if let Some(b) = &d.block {
            collect_map_outputs(&b.directives, out);
        }
    }
}

fn site_address(t: &Token, g: &GlobalOptions, diags: &mut Diags) -> Option<SiteAddress> {
    let text = t.text.trim();
    if text.contains('{') {
        diags.push(
            t.error(format!(
                "site address '{text}' has an unexpanded placeholder"
            ))
            .with_help("environment variables are written {$NAME}"),
        );
        return None;
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, text),
    };
    if let Some(s) = &scheme {
        if s != "http" && s != "https" {
            diags.push(
                t.error(format!("unsupported scheme '{s}' in site address"))
                    .with_help("use http:// or https://"),
            );
            return None;
        }
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let (host, port_str) = reverse_proxy::split_host_port(hostport);
    let host = host.to_ascii_lowercase();
    if !host.is_empty() && !valid_host(&host) {
        diags.push(
            t.error(format!("invalid host '{host}' in site address"))
                .with_help("examples: example.com, *.example.com, :8080, http://localhost:8080"),
        );
        return None;
    }
    let port = match port_str {
        Some(p) => match p.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                diags.push(
                    t.error(format!("invalid port '{p}' in site address '{text}'"))
                        .with_help("ports are numbers from 0 to 65535"),
                );
                return None;
            }
        },
        None => None,
    };
    let auto_off = g.auto_https.as_deref() == Some("off");
    let scheme = match (&scheme, port) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) if p == g.http_port => "http".into(),
        (None, Some(p)) if p == g.https_port => "https".into(),
        (None, _) if host.is_empty() || auto_off => "http".into(),
        (None, _) => "https".into(),
    };
    let port = port.unwrap_or(if scheme == "https" {
        g.https_port
    } else {
        g.http_port
    });
    Some(SiteAddress {
        scheme: Some(scheme),
        host,
        port,
        path,
    })
}

fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        })
}

/// `filesystem <name> local <directory>` (or `local { root <directory> }`): Dwaar's
/// file system module is a directory on this machine (Caddy's are plugins).
fn filesystem(d: &Directive, diags: &mut Diags) -> Option<crate::model::Filesystem> {
    if !diags.arity(d, 0, 2, 3, "filesystem <name> local <directory>") {
        return None;
    }
    let name = d.args[0].text.clone();
    if d.args[1].text != "local" {
        diags.push(
            d.args[1]
                .error(format!(
                    "no filesystem module '{}' in Dwaar",
                    d.args[1].text
                ))
                .with_help(
                    "Dwaar's file systems are directories: filesystem <name> local <directory>",
                ),
        );
        return None;
    }
    let mut root = d.args.get(2).map(|t| t.text.clone());
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "root" if diags.arity(line, 0, 1, 1, "root <directory>") => {
                root = Some(line.args[0].text.clone());
            }
            "root" => {}
            _ => diags.unknown_sub("filesystem", &line.name, &["root"]),
        }
    }
    let Some(root) = root.filter(|r| !r.is_empty()) else {
        diags.push(
            d.args[1]
                .error("a local filesystem needs its directory")
                .with_help("filesystem assets local /srv/assets"),
        );
        return None;
    };
    Some(crate::model::Filesystem { name, root })
}

fn global_options(dirs: &[Directive], diags: &mut Diags) -> GlobalOptions {
    let mut g = GlobalOptions::default();
    // Like CADDY_ADMIN: the environment may move the default admin address;
    // an explicit `admin` option still wins.
    if let Ok(addr) = std::env::var("DWAAR_ADMIN") {
        if !addr.is_empty() {
            g.admin.listen = (addr != "off").then_some(addr);
        }
    }
    for d in dirs {
        let name = d.name.text.as_str();
        match name {
            "default_bind" => g.default_bind = bind_hosts(d, diags),
            "layer4" => {
                for server in layer4::servers(d, diags) {
                    let dup = server
                        .listen
                        .iter()
                        .find(|a| g.layer4.iter().any(|o| o.listen.contains(a)));
                    if let Some(a) = dup {
                        diags.push(d.name.error(format!(
                            "layer4 address {}:{} is listed twice",
                            a.host, a.port
                        )));
                    } else {
                        g.layer4.push(server);
                    }
                }
            }
            "filesystem" => {
                if let Some(f) = filesystem(d, diags) {
                    if g.filesystems.iter().any(|x| x.name == f.name) {
                        diags.push(
                            d.args[0].error(format!("filesystem '{}' is defined twice", f.name)),
                        );
                    } else {
                        diags.filesystems.insert(f.name.clone(), f.root.clone());
                        g.filesystems.push(f);
                    }
                }
            }
            "debug" => {
                if diags.arity(d, 0, 0, 0, "debug") {
                    g.debug = true;
                }
            }
            "http_port" | "https_port" => {
                if diags.arity(d, 0, 1, 1, &format!("{name} <port>")) {
                    if let Some(p) = diags.number::<u16>(&d.args[0], "port") {
                        if name == "http_port" {
                            g.http_port = p
                        } else {
                            g.https_port = p
                        }
                    }
                }
            }
            "grace_period" | "shutdown_delay" => {
                if diags.arity(d, 0, 1, 1, &format!("{name} <duration>")) {
                    let v = diags.duration(&d.args[0]);
                    if name == "grace_period" {
                        g.grace_period_ms = v
                    } else {
                        g.shutdown_delay_ms = v
                    }
                }
            }
            "order" => {
                if !diags.arity(
                    d,
                    0,
                    2,
                    3,
                    "order <directive> first|last|before <other>|after <other>",
                ) {
                    continue;
                }
                let pos = d.args[1].text.clone();
                let needs_other = pos == "before" || pos == "after";
                if !["first", "last", "before", "after"].contains(&pos.as_str()) {
                    diags.push(
                        d.args[1]
                            .error(format!("unknown order position '{pos}'"))
                            .with_help("use first, last, before <directive> or after <directive>"),
                    );
                    continue;
                }
                if needs_other != (d.args.len() == 3) {
                    diags.push(d.name.error(format!(
                        "'order {} {pos}' {}",
                        d.args[0].text,
                        if needs_other {
                            "needs the directive to order against"
                        } else {
                            "takes no further argument"
                        }
                    )));
                    continue;
                }
                let dir = d.args[0].text.clone();
                let known = |n: &str| DEFAULT_ORDER.contains(&n) || NOT_YET_DIRECTIVES.contains(&n);
                if !known(&dir) {
                    diags.push(d.args[0].error(format!("cannot order unknown directive '{dir}'")));
                    continue;
                }
                if let Some(o) = d.args.get(2) {
                    if !known(&o.text) {
                        diags.push(o.error(format!(
                            "cannot order relative to unknown directive '{}'",
                            o.text
                        )));
                        continue;
                    }
                }
                g.order.push(OrderRule {
                    directive: dir,
                    position: pos,
                    other: d.args.get(2).map(|t| t.text.clone()),
                });
            }
            "servers" => servers(d, &mut g, diags),
            "admin" => admin(d, &mut g, diags),
            "log" => {
                // `log` / `log default`: Dwaar's own log; another name: a log that
                // collects access records (`include`).
                let name = d.args.first().map(|a| a.text.as_str());
                let own = matches!(name, None | Some("default"));
                if own && g.log.is_some() {
                    diags.push(d.name.error("the global 'log' option is given twice"));
                } else if !own && g.access_logs.iter().any(|l| l.name.as_deref() == name) {
                    diags.push(d.args[0].error("a global log of this name is given twice"));
                } else if let Some(c) = log::log_config(d, diags, log::Scope::Global) {
                    if own {
                        if !c.include.is_empty() {
                            g.access_logs.push(c.clone());
                        }
                        g.log = Some(c);
                    } else if c.include.is_empty() {
                        diags.push(
                            d.name
                                .error("a named global log needs 'include' with the access logs it collects")
                                .with_help("log access {\n\tinclude http.log.access\n\toutput file /var/log/access.log\n}"),
                        );
                    } else {
                        g.access_logs.push(c);
                    }
                }
            }
            "workers" => {
                if diags.arity(d, 0, 1, 1, "workers <count>") {
                    if let Some(n) = diags.number::<u16>(&d.args[0], "worker count") {
                        if n == 0 || n > 256 {
                            diags.push(d.args[0].error("workers must be between 1 and 256"));
                        } else {
                            g.workers = n;
                        }
                    }
                }
            }
            "auto_https" => {
                if diags.arity(
                    d,
                    0,
                    1,
                    1,
                    "auto_https off|disable_redirects|disable_certs|ignore_loaded_certs|prefer_wildcard",
                ) {
                    match d.args[0].text.as_str() {
                        m @ ("off"
                        | "disable_redirects"
                        | "disable_certs"
                        | "ignore_loaded_certs"
                        | "prefer_wildcard") => g.auto_https = Some(m.into()),
                        _ => diags.unknown_sub(
                            "auto_https",
                            &d.args[0],
                            &[
                                "off",
                                "disable_redirects",
                                "disable_certs",
                                "ignore_loaded_certs",
                                "prefer_wildcard",
                            ],
                        ),
                    }
                }
            }
            "email"
            | "acme_ca"
            | "acme_ca_root"
            | "local_certs"
            | "storage"
            | "acme_eab"
            | "ocsp_stapling"
            | "default_sni"
            | "fallback_sni"
            | "key_type"
            | "renew_interval"
            | "ocsp_interval"
            | "skip_install_trust"
            | "on_demand_tls"
            | "acme_dns"
            | "cert_issuer"
            | "preferred_chains"
            | "storage_clean_interval" => {
                tls::global_option(d, &mut g.tls, diags);
            }
            "analytics" => analytics::global(d, &mut g.analytics, diags),
            // Caddy's switch for its metrics; Dwaar always keeps them (per host too).
            "metrics" => {
                for line in block_lines(&d.block) {
                    if line.name.text != "per_host" {
                        diags.unknown_sub("metrics", &line.name, &["per_host"]);
                    }
                }
            }
            n if GLOBAL_NOT_YET.contains(&n) => {
                diags.push(
                    d.name
                        .error(format!("global option '{n}' is not supported yet")),
                );
            }
            _ => {
                let mut e = d.name.error(format!("unknown global option '{name}'"));
                let all: Vec<&str> = GLOBAL_SUPPORTED
                    .iter()
                    .chain(GLOBAL_NOT_YET)
                    .copied()
                    .collect();
                if let Some(s) = did_you_mean(name, all) {
                    e = e.with_help(format!("did you mean '{s}'?"));
                }
                diags.push(e);
            }
        }
    }
    g
}

fn admin(d: &Directive, g: &mut GlobalOptions, diags: &mut Diags) {
    if !diags.arity(
        d,
        0,
        0,
        1,
        "admin [off|<host:port>|unix//<path>] { token <secret>; origins <origin>... }",
    ) {
        return;
    }
    match d.args.first().map(|t| t.text.as_str()) {
        Some("off") => {
            if d.block.is_some() {
                diags.push(d.name.error("'admin off' takes no block"));
            }
            g.admin.listen = None;
            return;
        }
        Some(addr) => {
            let ok = match addr.strip_prefix("unix/") {
                Some(path) => !path.is_empty(),
                None => {
                    let (host, port) =
                        reverse_proxy::split_host_port(addr.trim_start_matches("tcp/"));
                    port.is_some_and(|p| p.parse::<u16>().is_ok())
                        && (host.is_empty() || valid_host(&host))
                }
            };
            if !ok {
                diags.push(
                    d.args[0]
                        .error(format!("invalid admin address '{addr}'"))
                        .with_help(
                            "use localhost:2019, 127.0.0.1:2020 or unix//run/dwaar-admin.sock",
                        ),
                );
                return;
            }
            g.admin.listen = Some(addr.trim_start_matches("tcp/").to_string());
        }
        None => {}
    }
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "token" => {
                if diags.arity(line, 0, 1, 1, "token <secret>") {
                    let t = &line.args[0];
                    if t.text.len() < 16 {
                        diags.push(
                            t.error("the admin token is too short: use at least 16 characters"),
                        );
                    } else if t.text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                        diags.push(
                            t.error("the admin token may not contain spaces or control characters"),
                        );
                    } else {
                        g.admin.token = Some(t.text.clone());
                    }
                }
            }
            "origins" => {
                if diags.arity(line, 0, 1, usize::MAX, "origins <origin>...") {
                    g.admin
                        .origins
                        .extend(line.args.iter().map(|t| t.text.to_ascii_lowercase()));
                }
            }
            _ => diags.unknown_sub("admin", &line.name, &["token", "origins"]),
        }
    }
}

fn servers(d: &Directive, g: &mut GlobalOptions, diags: &mut Diags) {
    if !diags.arity(d, 0, 0, 1, "servers [<listener_address>] { ... }") {
        return;
    }
    let mut s = ServerOptions {
        listener: d.args.first().map(|t| t.text.clone()),
        ..Default::default()
    };
    if let Some(t) = d.args.first() {
        let addr = t.text.strip_prefix("tcp/").unwrap_or(&t.text);
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none() {
            diags.push(
                t.error(format!(
                    "'{}' is not a listener address with a port",
                    t.text
                ))
                .with_help("servers :443 { ... } (or 127.0.0.1:8080)"),
            );
            return;
        }
    }
    const SUBS: &[&str] = &[
        "protocols",
        "timeouts",
        "trusted_proxies",
        "trusted_proxies_strict",
        "client_ip_headers",
        "max_header_size",
        "listener_wrappers",
        "name",
        "strict_sni_host",
        "log_credentials",
        "metrics",
    ];
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "protocols" => {
                for a in &line.args {
                    match a.text.as_str() {
                        "h1" | "h2" | "h2c" | "h3" => s.protocols.push(a.text.clone()),
                        _ => diags.unknown_sub("protocols", a, &["h1", "h2", "h2c", "h3"]),
                    }
                }
            }
            "trusted_proxies" => {
                let mut args = line.args.iter();
                match args.next().map(|t| t.text.as_str()) {
                    Some("static") => {}
                    Some(other) => {
                        diags.push(
                            line.args[0]
                                .error(format!("unknown trusted_proxies source '{other}'"))
                                .with_help("trusted_proxies static <cidr>..."),
                        );
                        continue;
                    }
                    None => {
                        diags.push(
                            line.name
                                .error("trusted_proxies needs a source")
                                .with_help("trusted_proxies static private_ranges"),
                        );
                        continue;
                    }
                }
                matchers::push_cidrs(&line.args[1..], &mut s.trusted_proxies, diags);
            }
            "max_header_size" => {
                if diags.arity(line, 0, 1, 1, "max_header_size <size>") {
                    s.max_header_size = diags.size(&line.args[0]);
                }
            }
            "timeouts" => {
                for l in block_lines(&line.block) {
                    if !diags.arity(l, 0, 1, 1, &format!("{} <duration>", l.name.text)) {
                        continue;
                    }
                    let v = diags.duration(&l.args[0]);
                    match l.name.text.as_str() {
                        "read_body" => s.read_body_timeout_ms = v,
                        "read_header" => s.read_header_timeout_ms = v,
                        "write" => s.write_timeout_ms = v,
                        "idle" => s.idle_timeout_ms = v,
                        _ => diags.unknown_sub(
                            "timeouts",
                            &l.name,
                            &["read_body", "read_header", "write", "idle"],
                        ),
                    }
                }
            }
            "trusted_proxies_strict" => {
                if diags.arity(line, 0, 0, 0, "trusted_proxies_strict") {
                    s.trusted_proxies_strict = true;
                }
            }
            "client_ip_headers" => {
                if diags.arity(line, 0, 1, usize::MAX, "client_ip_headers <field>...") {
                    for a in &line.args {
                        if http_token(&a.text) {
                            s.client_ip_headers.push(a.text.clone());
                        } else {
                            diags.push(a.error(format!("'{}' is not a header name", a.text)));
                        }
                    }
                }
            }
            "listener_wrappers" => listener_wrappers(line, &mut s, diags),
            "strict_sni_host" => {
                if diags.arity(line, 0, 0, 1, "strict_sni_host [on|insecure_off]") {
                    match line.args.first().map(|a| a.text.as_str()) {
                        None | Some("on") => s.strict_sni_host = true,
                        Some("insecure_off") => s.strict_sni_host = false,
                        Some(_) => diags.unknown_sub(
                            "strict_sni_host",
                            &line.args[0],
                            &["on", "insecure_off"],
                        ),
                    }
                }
            }
            "name" | "log_credentials" | "metrics" => {
                diags.push(line.name.error(format!(
                    "servers option '{}' is not supported yet",
                    line.name.text
                )));
            }
            _ => diags.unknown_sub("servers", &line.name, SUBS),
        }
    }
    g.servers.push(s);
}
