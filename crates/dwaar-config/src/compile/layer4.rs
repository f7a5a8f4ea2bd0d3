//! The `layer4` global option and `listener_wrappers { layer4 }`: caddy-l4's Caddyfile
//! shape (addresses, named matchers, `route [@m] { handlers }`) compiled into
//! [`L4Server`]s and [`L4Routes`].

use super::args::{block_lines, Diags};
use super::matchers::push_cidrs;
use crate::lexer::Token;
use crate::model::{
    ActiveHealth, L4Address, L4Handler, L4Matcher, L4MatcherSet, L4Proxy, L4Route, L4Routes,
    L4Server, L4Throttle, L4Upstream, LbPolicy, PassiveHealth,
};
use crate::parser::Directive;

/// The default time matchers may wait for a connection's first bytes.
const MATCHING_TIMEOUT_MS: u64 = 3000;
/// Most ports one address range may name.
const MAX_PORTS: u32 = 1024;

/// `layer4 { <address>... { ... } }`.
pub fn servers(d: &Directive, diags: &mut Diags) -> Vec<L4Server> {
    if !diags.arity(d, 0, 0, 0, "layer4 { <address> { ... } }") {
        return Vec::new();
    }
    if d.block.is_none() {
        diags.push(
            d.name
                .error("layer4 needs a block of servers")
                .with_help("layer4 {\n    :5432 {\n        route {\n            proxy 127.0.0.1:5433\n        }\n    }\n}"),
        );
    }
    let mut out: Vec<L4Server> = Vec::new();
    for s in block_lines(&d.block) {
        let mut listen = Vec::new();
        for t in std::iter::once(&s.name).chain(&s.args) {
            listen.extend(addresses(t, diags));
        }
        if s.block.is_none() {
            diags.push(
                s.name
                    .error(format!(
                        "layer4 server '{}' needs a block of routes",
                        s.name.text
                    ))
                    .with_help("route {\n    proxy 127.0.0.1:5433\n}"),
            );
            continue;
        }
        for a in &listen {
            if out.iter().any(|o| o.listen.contains(a))
                || listen.iter().filter(|b| *b == a).count() > 1
            {
                diags.push(s.name.error(format!(
                    "layer4 address {}{}:{} is listed twice",
                    if a.udp { "udp/" } else { "" },
                    a.host,
                    a.port
                )));
            }
        }
        let udp = listen.first().is_some_and(|a| a.udp);
        if listen.iter().any(|a| a.udp != udp) {
            diags.push(
                s.name
                    .error("a layer4 server listens on TCP or on UDP, not both")
                    .with_help("give the udp/ addresses their own server block"),
            );
        }
        let routes = routes(block_lines(&s.block), udp, diags);
        out.push(L4Server { listen, routes });
    }
    out
}

/// A listener address: `[tcp/|udp/][host]:port[-port]`.
fn addresses(t: &Token, diags: &mut Diags) -> Vec<L4Address> {
    let (udp, rest) = if let Some(r) = t.text.strip_prefix("udp/") {
        (true, r)
    } else {
        (false, t.text.strip_prefix("tcp/").unwrap_or(&t.text))
    };
    let bad = |diags: &mut Diags, why: &str| {
        diags.push(
            t.error(format!("'{}' is not a layer4 address: {why}", t.text))
                .with_help(":5432, 127.0.0.1:6000, [::1]:7000, udp/:5353 or :7000-7005"),
        );
        Vec::new()
    };
    if rest.starts_with("unix/") || t.text.contains("://") {
        return bad(diags, "layer4 listens on TCP or UDP host:port addresses");
    }
    let Some((host, ports)) = rest.rsplit_once(':') else {
        return bad(diags, "no port");
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !host.is_empty() && host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
        return bad(diags, "the host must be an IP address or localhost");
    }
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
        return bad(diags, "invalid port");
    };
    if lo == 0 || hi < lo {
        return bad(diags, "invalid port range");
    }
    if u32::from(hi - lo) >= MAX_PORTS {
        return bad(diags, "a range names at most 1024 ports");
    }
    (lo..=hi)
        .map(|port| L4Address {
            udp,
            host: host.to_string(),
            port,
        })
        .collect()
}

/// The lines of a server, subroute or listener wrapper: options, named matchers and
/// routes.
pub fn routes(lines: &[Directive], udp: bool, diags: &mut Diags) -> L4Routes {
    let mut out = L4Routes {
        matching_timeout_ms: MATCHING_TIMEOUT_MS,
        idle_timeout_ms: None,
        stream_timeout_ms: None,
        routes: Vec::new(),
    };
    let mut named: Vec<L4MatcherSet> = Vec::new();
    for l in lines {
        let name = l.name.text.as_str();
        if let Some(n) = name.strip_prefix('@') {
            if n.is_empty() {
                diags.push(l.name.error("a matcher needs a name after @"));
                continue;
            }
            if named.iter().any(|m| m.name == n) {
                diags.push(l.name.error(format!("matcher @{n} is defined twice")));
                continue;
            }
            let matchers = if l.args.is_empty() {
                if l.block.is_none() {
                    diags.push(
                        l.name
                            .error(format!("matcher @{n} has no matchers"))
                            .with_help(format!("@{n} tls sni example.com")),
                    );
                }
                block_lines(&l.block)
                    .iter()
                    .filter_map(|m| matcher(&m.name, &m.args, &m.block, udp, diags))
                    .collect()
            } else {
                matcher(&l.args[0], &l.args[1..], &l.block, udp, diags)
                    .into_iter()
                    .collect()
            };
            named.push(L4MatcherSet {
                name: n.to_string(),
                matchers,
            });
            continue;
        }
        match name {
            "matching_timeout" | "idle_timeout" | "stream_timeout" => {
                if name == "stream_timeout" && udp {
                    diags.push(
                        l.name
                            .error("stream_timeout applies to TCP connections")
                            .with_help("UDP sessions end after idle_timeout"),
                    );
                    continue;
                }
                if diags.arity(l, 0, 1, 1, &format!("{name} <duration>")) {
                    if let Some(v) = diags.duration(&l.args[0]) {
                        match name {
                            "matching_timeout" => out.matching_timeout_ms = v,
                            "idle_timeout" => out.idle_timeout_ms = Some(v),
                            _ => out.stream_timeout_ms = Some(v),
                        }
                    }
                }
            }
            "route" => {
                let mut sets = Vec::new();
                for a in &l.args {
                    let Some(n) = a.text.strip_prefix('@') else {
                        diags.push(
                            a.error(format!("'{}' is not a matcher name", a.text))
                                .with_help(
                                "route @name { ... }: define the matcher first, on its own line",
                            ),
                        );
                        continue;
                    };
                    match named.iter().find(|m| m.name == n) {
                        Some(m) => sets.push(m.clone()),
                        None => diags
                            .push(a.error(format!("matcher @{n} is not defined")).with_help(
                                "define named matchers before the routes that use them",
                            )),
                    }
                }
                if l.block.is_none() {
                    diags.push(l.name.error("route needs a block of handlers"));
                }
                let handlers = handlers(block_lines(&l.block), udp, diags);
                out.routes.push(L4Route {
                    matchers: sets,
                    handlers,
                });
            }
            _ => diags.unknown_sub(
                "layer4 server",
                &l.name,
                &[
                    "route",
                    "matching_timeout",
                    "idle_timeout",
                    "stream_timeout",
                    "@name",
                ],
            ),
        }
    }
    out
}

const MATCHERS: &[&str] = &[
    "tls",
    "http",
    "ssh",
    "postgres",
    "proxy_protocol",
    "remote_ip",
    "local_ip",
    "not",
];

/// One matcher: `name args` or `name { sub args }`.
fn matcher(
    name: &Token,
    args: &[Token],
    block: &Option<crate::parser::Block>,
    udp: bool,
    diags: &mut Diags,
) -> Option<L4Matcher> {
    let kind = name.text.as_str();
    if udp && !matches!(kind, "remote_ip" | "local_ip" | "not") && MATCHERS.contains(&kind) {
        diags.push(
            name.error(format!("the {kind} matcher reads a TCP stream"))
                .with_help("UDP routes match by remote_ip and local_ip"),
        );
        return None;
    }
    // `tls sni a b` and `tls { sni a b \n alpn h2 }` both give (sub, values) pairs.
    let subs = |diags: &mut Diags, known: &[&str]| -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        if let Some(first) = args.first() {
            out.push((
                first.text.clone(),
                args[1..].iter().map(|t| t.text.clone()).collect(),
            ));
            if !known.contains(&first.text.as_str()) {
                diags.unknown_sub(kind, first, known);
            } else if args.len() < 2 {
                diags.push(first.error(format!("{kind} {} needs values", first.text)));
            }
        }
        for l in block_lines(block) {
            if !known.contains(&l.name.text.as_str()) {
                diags.unknown_sub(kind, &l.name, known);
                continue;
            }
            if diags.arity(l, 0, 1, usize::MAX, &format!("{} <value>...", l.name.text)) {
                out.push((
                    l.name.text.clone(),
                    l.args.iter().map(|t| t.text.clone()).collect(),
                ));
            }
        }
        out
    };
    let no_args = |diags: &mut Diags| {
        if let Some(a) = args.first() {
            diags.push(a.error(format!("the {kind} matcher takes no arguments")));
        }
        if block.is_some() {
            diags.push(name.error(format!("the {kind} matcher takes no block")));
        }
    };
    Some(match kind {
        "tls" => {
            let (mut sni, mut alpn) = (Vec::new(), Vec::new());
            for (sub, values) in subs(diags, &["sni", "alpn"]) {
                if sub == "sni" {
                    sni.extend(values.into_iter().map(|v| v.to_ascii_lowercase()));
                } else {
                    alpn.extend(values);
                }
            }
            L4Matcher::Tls { sni, alpn }
        }
        "http" => {
            let (mut hosts, mut paths, mut methods) = (Vec::new(), Vec::new(), Vec::new());
            for (sub, values) in subs(diags, &["host", "path", "method"]) {
                match sub.as_str() {
                    "host" => hosts.extend(values.into_iter().map(|v| v.to_ascii_lowercase())),
                    "path" => paths.extend(values),
                    _ => methods.extend(values.into_iter().map(|v| v.to_ascii_uppercase())),
                }
            }
            L4Matcher::Http {
                hosts,
                paths,
                methods,
            }
        }
        "postgres" => {
            let (mut users, mut databases, mut clients) = (Vec::new(), Vec::new(), Vec::new());
            for (sub, values) in subs(diags, &["user", "database", "client"]) {
                match sub.as_str() {
                    "user" => users.extend(values),
                    "database" => databases.extend(values),
                    _ => clients.extend(values),
                }
            }
            L4Matcher::Postgres {
                users,
                databases,
                clients,
            }
        }
        "ssh" => {
            no_args(diags);
            L4Matcher::Ssh
        }
        "proxy_protocol" => {
            no_args(diags);
            L4Matcher::ProxyProtocol
        }
        "remote_ip" | "local_ip" => {
            if args.is_empty() {
                diags.push(name.error(format!("{kind} needs addresses or CIDR ranges")));
            }
            let mut list = Vec::new();
            push_cidrs(args, &mut list, diags);
            if kind == "remote_ip" {
                L4Matcher::RemoteIp(list)
            } else {
                L4Matcher::LocalIp(list)
            }
        }
        "not" => {
            let inner: Vec<L4Matcher> = match args.first() {
                Some(first) => matcher(first, &args[1..], &None, udp, diags)
                    .into_iter()
                    .collect(),
                None => block_lines(block)
                    .iter()
                    .filter_map(|m| matcher(&m.name, &m.args, &m.block, udp, diags))
                    .collect(),
            };
            if inner.is_empty() && args.is_empty() && block.is_none() {
                diags.push(
                    name.error("not needs a matcher")
                        .with_help("not remote_ip 10.0.0.0/8"),
                );
            }
            L4Matcher::Not(inner)
        }
        _ => {
            diags.unknown_sub("layer4 matchers", name, MATCHERS);
            return None;
        }
    })
}

const HANDLERS: &[&str] = &[
    "proxy",
    "tls",
    "subroute",
    "throttle",
    "proxy_protocol",
    "close",
    "echo",
];

/// A route's handlers, run in order; one that ends the connection comes last.
fn handlers(lines: &[Directive], udp: bool, diags: &mut Diags) -> Vec<L4Handler> {
    let mut out = Vec::new();
    let mut ended: Option<&Token> = None;
    for l in lines {
        let name = l.name.text.as_str();
        if let Some(t) = ended {
            diags.push(
                l.name
                    .error(format!(
                        "'{name}' never runs: '{}' before it ends the connection",
                        t.text
                    ))
                    .with_help("a route's handlers run in order; proxy, close and echo come last"),
            );
            continue;
        }
        if udp && matches!(name, "tls" | "throttle" | "proxy_protocol") {
            diags.push(
                l.name
                    .error(format!("the {name} handler works on TCP connections"))
                    .with_help("UDP routes use proxy, subroute, close and echo"),
            );
            continue;
        }
        let h = match name {
            "proxy" => proxy(l, udp, diags).map(|p| L4Handler::Proxy(Box::new(p))),
            "tls" => {
                if diags.arity(l, 0, 0, 0, "tls") && diags.no_block(l) {
                    Some(L4Handler::Tls)
                } else {
                    None
                }
            }
            "subroute" => {
                if diags.arity(l, 0, 0, 0, "subroute { ... }") {
                    Some(L4Handler::Subroute(routes(
                        block_lines(&l.block),
                        udp,
                        diags,
                    )))
                } else {
                    None
                }
            }
            "throttle" => throttle(l, diags).map(L4Handler::Throttle),
            "proxy_protocol" => {
                if diags.arity(l, 0, 0, 0, "proxy_protocol { ... }") {
                    Some(L4Handler::ProxyProtocol(super::proxy_protocol(l, diags)))
                } else {
                    None
                }
            }
            "close" | "echo" => {
                if diags.arity(l, 0, 0, 0, name) && diags.no_block(l) {
                    Some(if name == "close" {
                        L4Handler::Close
                    } else {
                        L4Handler::Echo
                    })
                } else {
                    None
                }
            }
            _ => {
                diags.unknown_sub("layer4 handlers", &l.name, HANDLERS);
                None
            }
        };
        if matches!(name, "proxy" | "close" | "echo") {
            ended = Some(&l.name);
        }
        out.extend(h);
    }
    out
}

const PROXY_SUBS: &[&str] = &[
    "upstream",
    "lb_policy",
    "lb_try_duration",
    "lb_try_interval",
    "dial_timeout",
    "health_interval",
    "health_port",
    "health_timeout",
    "fail_duration",
    "max_fails",
    "unhealthy_connection_count",
    "proxy_protocol",
];

/// `proxy [<upstream>...] { ... }`.
fn proxy(d: &Directive, udp: bool, diags: &mut Diags) -> Option<L4Proxy> {
    let mut p = L4Proxy {
        upstreams: Vec::new(),
        policy: LbPolicy::Random,
        try_duration_ms: 0,
        try_interval_ms: 250,
        dial_timeout_ms: 10_000,
        health: None,
        passive: None,
        max_connections: None,
        proxy_protocol: None,
    };
    let before = diags.error_count();
    for t in &d.args {
        p.upstreams.extend(upstream(t, udp, diags));
    }
    fn health(p: &mut L4Proxy) -> &mut ActiveHealth {
        p.health.get_or_insert_with(ActiveHealth::default)
    }
    fn passive(p: &mut L4Proxy) -> &mut PassiveHealth {
        p.passive.get_or_insert_with(PassiveHealth::default)
    }
    for l in block_lines(&d.block) {
        let sub = l.name.text.as_str();
        let one = |diags: &mut Diags| diags.arity(l, 0, 1, 1, &format!("{sub} <value>"));
        match sub {
            "upstream" => {
                if diags.arity(
                    l,
                    0,
                    0,
                    usize::MAX,
                    "upstream [<address>] { dial <address>... }",
                ) {
                    for t in &l.args {
                        p.upstreams.extend(upstream(t, udp, diags));
                    }
                    for u in block_lines(&l.block) {
                        match u.name.text.as_str() {
                            "dial" => {
                                if diags.arity(u, 0, 1, usize::MAX, "dial <address>...") {
                                    for t in &u.args {
                                        p.upstreams.extend(upstream(t, udp, diags));
                                    }
                                }
                            }
                            "tls"
                            | "tls_client_auth"
                            | "tls_insecure_skip_verify"
                            | "tls_server_name"
                            | "tls_trusted_ca_certs"
                            | "tls_timeout"
                            | "tls_renegotiation"
                            | "tls_except_ports"
                            | "max_connections" => {
                                diags.push(u.name.error(format!(
                                    "upstream option '{}' is not supported yet",
                                    u.name.text
                                )));
                            }
                            _ => diags.unknown_sub("upstream", &u.name, &["dial"]),
                        }
                    }
                }
            }
            "lb_policy" => {
                if let Some(policy) = super::reverse_proxy::lb_policy(l, diags) {
                    match policy {
                        LbPolicy::Header { .. }
                        | LbPolicy::Cookie { .. }
                        | LbPolicy::Query { .. }
                        | LbPolicy::UriHash => diags.push(
                            l.args[0]
                                .error(format!("lb_policy {} needs an HTTP request", l.args[0].text))
                                .with_help("layer4 proxies use random, random_choose, round_robin, weighted_round_robin, least_conn, first or ip_hash"),
                        ),
                        other => p.policy = other,
                    }
                }
            }
            "lb_try_duration" | "lb_try_interval" | "dial_timeout" | "health_interval"
            | "health_timeout" | "fail_duration" => {
                if !one(diags) {
                    continue;
                }
                let Some(v) = diags.duration(&l.args[0]) else {
                    continue;
                };
                match sub {
                    "lb_try_duration" => p.try_duration_ms = v,
                    "lb_try_interval" => p.try_interval_ms = v,
                    "dial_timeout" => p.dial_timeout_ms = v,
                    "health_interval" => health(&mut p).interval_ms = v.max(1),
                    "health_timeout" => health(&mut p).timeout_ms = v,
                    _ => passive(&mut p).fail_duration_ms = v,
                }
            }
            "health_port" => {
                if one(diags) {
                    if let Some(port) = diags.number::<u16>(&l.args[0], "port") {
                        health(&mut p).port = Some(port);
                    }
                }
            }
            "max_fails" | "unhealthy_connection_count" => {
                if !one(diags) {
                    continue;
                }
                let Some(n) = diags.number::<u32>(&l.args[0], "count") else {
                    continue;
                };
                if n == 0 {
                    diags.push(l.args[0].error(format!("{sub} must be at least 1")));
                } else if sub == "max_fails" {
                    passive(&mut p).max_fails = n;
                } else {
                    p.max_connections = Some(n);
                }
            }
            "proxy_protocol" => {
                if one(diags) {
                    match l.args[0].text.as_str() {
                        "v1" | "v2" => p.proxy_protocol = Some(l.args[0].text.clone()),
                        _ => diags.unknown_sub("proxy_protocol", &l.args[0], &["v1", "v2"]),
                    }
                }
            }
            _ => diags.unknown_sub("proxy", &l.name, PROXY_SUBS),
        }
    }
    if udp && (p.health.is_some() || p.proxy_protocol.is_some()) {
        diags.push(
            d.name
                .error("health checks and proxy_protocol work on TCP upstreams")
                .with_help("a UDP proxy keeps passive checks (fail_duration, max_fails)"),
        );
    }
    if p.upstreams.is_empty() && diags.error_count() == before {
        diags.push(
            d.name
                .error("proxy needs at least one upstream")
                .with_help("proxy 127.0.0.1:5432"),
        );
    }
    if let LbPolicy::WeightedRoundRobin { weights } = &p.policy {
        if weights.len() != p.upstreams.len() {
            diags.push(d.name.error(format!(
                "weighted_round_robin has {} weights for {} upstreams",
                weights.len(),
                p.upstreams.len()
            )));
        }
    }
    (diags.error_count() == before).then_some(p)
}

/// An upstream address: `[tcp/|udp/]host:port[-port]`.
fn upstream(t: &Token, udp: bool, diags: &mut Diags) -> Vec<L4Upstream> {
    let (is_udp, rest) = if let Some(r) = t.text.strip_prefix("udp/") {
        (true, r)
    } else {
        (false, t.text.strip_prefix("tcp/").unwrap_or(&t.text))
    };
    if is_udp != udp {
        diags.push(
            t.error(if udp {
                format!("'{}' is a TCP upstream of a UDP server", t.text)
            } else {
                format!("'{}' is a UDP upstream of a TCP server", t.text)
            })
            .with_help(if udp {
                "write UDP upstreams as udp/host:port"
            } else {
                "TCP servers proxy to host:port"
            }),
        );
        return Vec::new();
    }
    let bad = |diags: &mut Diags| {
        diags.push(
            t.error(format!("'{}' is not an upstream address", t.text))
                .with_help("host:port, [::1]:port or udp/host:port"),
        );
        Vec::new()
    };
    let Some((host, ports)) = rest.rsplit_once(':') else {
        return bad(diags);
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() || bare.contains(['/', ' ', '{']) {
        return bad(diags);
    }
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
        return bad(diags);
    };
    if lo == 0 || hi < lo || u32::from(hi - lo) >= MAX_PORTS {
        return bad(diags);
    }
    (lo..=hi)
        .map(|port| L4Upstream {
            dial: format!("{host}:{port}"),
            udp,
        })
        .collect()
}

/// `throttle { read_bytes_per_second ... }`.
fn throttle(d: &Directive, diags: &mut Diags) -> Option<L4Throttle> {
    if !diags.arity(d, 0, 0, 0, "throttle { ... }") {
        return None;
    }
    let mut t = L4Throttle::default();
    for l in block_lines(&d.block) {
        let sub = l.name.text.as_str();
        if !diags.arity(l, 0, 1, 1, &format!("{sub} <value>")) {
            continue;
        }
        match sub {
            "latency" => t.latency_ms = diags.duration(&l.args[0]),
            "read_bytes_per_second"
            | "read_burst_size"
            | "total_read_bytes_per_second"
            | "total_read_burst_size" => {
                let Some(v) = diags.size(&l.args[0]) else {
                    continue;
                };
                if v == 0 {
                    diags.push(l.args[0].error(format!("{sub} must be above 0")));
                    continue;
                }
                *match sub {
                    "read_bytes_per_second" => &mut t.read_bytes_per_second,
                    "read_burst_size" => &mut t.read_burst_size,
                    "total_read_bytes_per_second" => &mut t.total_read_bytes_per_second,
                    _ => &mut t.total_read_burst_size,
                } = Some(v);
            }
            _ => diags.unknown_sub(
                "throttle",
                &l.name,
                &[
                    "read_bytes_per_second",
                    "read_burst_size",
                    "total_read_bytes_per_second",
                    "total_read_burst_size",
                    "latency",
                ],
            ),
        }
    }
    if t == L4Throttle::default() {
        diags.push(
            d.name
                .error("throttle needs a limit")
                .with_help("throttle {\n    read_bytes_per_second 1MB\n}"),
        );
        return None;
    }
    Some(t)
}

/// A TCP port is either a layer4 server's or HTTP sites': sites share theirs with
/// layer4 routes through `servers { listener_wrappers { layer4 { ... } } }`.
pub fn check_ports(doc: &crate::parser::Document, sites: &[crate::model::Site], diags: &mut Diags) {
    let lines = doc.global.as_ref().map_or(&[][..], |b| &b.directives[..]);
    let mut scratch = Diags::default();
    for d in lines.iter().filter(|d| d.name.text == "layer4") {
        for s in block_lines(&d.block) {
            for t in std::iter::once(&s.name).chain(&s.args) {
                let taken = addresses(t, &mut scratch).into_iter().find(|a| {
                    !a.udp
                        && sites
                            .iter()
                            .any(|site| site.addresses.iter().any(|x| x.port == a.port))
                });
                if let Some(a) = taken {
                    diags.push(
                        t.error(format!("port {} is also a site's port", a.port))
                            .with_help(format!(
                                "to route some connections of a site's port at layer 4, use\nservers :{} {{\n    listener_wrappers {{\n        layer4 {{ ... }}\n        tls\n    }}\n}}",
                                a.port
                            )),
                    );
                }
            }
        }
    }
}
