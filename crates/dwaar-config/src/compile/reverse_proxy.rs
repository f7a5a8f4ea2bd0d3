//! The `reverse_proxy` directive: upstreams, load balancing, health checks, headers and
//! transport options.

use super::args::{block_lines, Diags};
use super::handlers::header_line;
use super::responses::status_pattern_ok;
use crate::lexer::Token;
use crate::model::{
    ActiveHealth, FieldMatch, HeaderOps, LbPolicy, PassiveHealth, ReverseProxy, Transport, Upstream,
};
use crate::parser::Directive;

const SUBDIRECTIVES: &[&str] = &[
    "to",
    "lb_policy",
    "lb_retries",
    "lb_try_duration",
    "lb_try_interval",
    "lb_retry_match",
    "health_uri",
    "health_path",
    "health_port",
    "health_interval",
    "health_timeout",
    "health_status",
    "health_body",
    "health_headers",
    "health_method",
    "health_request_body",
    "health_passes",
    "health_fails",
    "health_follow_redirects",
    "health_upstream",
    "fail_duration",
    "max_fails",
    "unhealthy_status",
    "unhealthy_latency",
    "unhealthy_request_count",
    "header_up",
    "header_down",
    "flush_interval",
    "stream_timeout",
    "stream_close_delay",
    "transport",
    "dynamic",
    "replace_status",
    "handle_response",
    "request_buffers",
    "response_buffers",
];

const TRANSPORT_SUB: &[&str] = &[
    "dial_timeout",
    "response_header_timeout",
    "read_timeout",
    "write_timeout",
    "keepalive",
    "keepalive_idle_conns",
    "keepalive_idle_conns_per_host",
    "tls",
    "tls_server_name",
    "tls_insecure_skip_verify",
    "tls_trusted_ca_certs",
    "versions",
    "proxy_protocol",
    "resolvers",
    "max_conns_per_host",
    "tls_client_auth",
    "keepalive_interval",
    "read_buffer",
    "write_buffer",
    "compression",
    "max_response_header",
    "dns_min_ttl",
    "expect_continue_timeout",
];

pub fn reverse_proxy(d: &Directive, skip: usize, diags: &mut Diags) -> Option<ReverseProxy> {
    let before = diags.list.iter().filter(|x| x.is_error()).count();
    let mut rp = ReverseProxy {
        upstreams: Vec::new(),
        load_balancing: Default::default(),
        health: Default::default(),
        header_up: HeaderOps::default(),
        header_down: HeaderOps::default(),
        flush_interval_ms: None,
        stream_timeout_ms: None,
        stream_close_delay_ms: None,
        transport: Transport::default(),
        dynamic: None,
        responses: Default::default(),
        request_buffers: None,
        response_buffers: None,
    };
    for t in &d.args[skip..] {
        for u in upstreams(t, diags) {
            rp.upstreams.push(u);
        }
    }
    let mut active: Option<ActiveHealth> = None;
    let mut passive: Option<PassiveHealth> = None;
    fn active_mut(a: &mut Option<ActiveHealth>) -> &mut ActiveHealth {
        a.get_or_insert_with(ActiveHealth::default)
    }
    fn passive_mut(p: &mut Option<PassiveHealth>) -> &mut PassiveHealth {
        p.get_or_insert_with(PassiveHealth::default)
    }
    for line in block_lines(&d.block) {
        if rp.responses.read(line, diags) {
            continue;
        }
        let sub = line.name.text.as_str();
        let one = |diags: &mut Diags, usage: &str| diags.arity(line, 0, 1, 1, usage);
        match sub {
            "to" => {
                if diags.arity(line, 0, 1, usize::MAX, "to <upstream>...") {
                    for t in &line.args {
                        for u in upstreams(t, diags) {
                            rp.upstreams.push(u);
                        }
                    }
                }
            }
            "lb_policy" => {
                if let Some(p) = lb_policy(line, diags) {
                    rp.load_balancing.policy = p;
                }
            }
            "lb_retries" if one(diags, "lb_retries <count>") => {
                if let Some(n) = diags.number(&line.args[0], "retry count") {
                    rp.load_balancing.retries = n;
                }
            }
            "lb_try_duration" if one(diags, "lb_try_duration <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    rp.load_balancing.try_duration_ms = v;
                }
            }
            "lb_retry_match" => {
                // The same forms as a named matcher: one line, or a block of matchers.
                let mut name = line.name.clone();
                name.text = "@lb_retry_match".into();
                let definition = Directive {
                    name,
                    args: line.args.clone(),
                    block: line.block.clone(),
                };
                if let Some((_, set)) = super::matchers::named_definition(&definition, diags) {
                    rp.load_balancing.retry_match.push(set);
                }
            }
            "lb_try_interval" if one(diags, "lb_try_interval <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    rp.load_balancing.try_interval_ms = v;
                }
            }
            "health_uri" | "health_path" if one(diags, "health_uri <uri>") => {
                let u = &line.args[0].text;
                if !u.starts_with('/') {
                    diags.push(line.args[0].error("health_uri must start with '/'"));
                }
                active_mut(&mut active).uri = u.clone();
            }
            "health_port" if one(diags, "health_port <port>") => {
                if let Some(p) = port(&line.args[0], diags) {
                    active_mut(&mut active).port = Some(p);
                }
            }
            "health_interval" if one(diags, "health_interval <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    if v == 0 {
                        diags.push(line.args[0].error("health_interval must be greater than zero"));
                    }
                    active_mut(&mut active).interval_ms = v.max(1);
                }
            }
            "health_timeout" if one(diags, "health_timeout <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    active_mut(&mut active).timeout_ms = v;
                }
            }
            "health_status" if one(diags, "health_status <code>|<class like 2xx>") => {
                let s = line.args[0].text.to_ascii_lowercase();
                if status_pattern_ok(&s) {
                    active_mut(&mut active).expect_status = Some(s);
                } else {
                    diags.push(line.args[0].error(format!(
                        "invalid status '{s}': expected a code like 200 or a class like 2xx"
                    )));
                }
            }
            "health_body" if one(diags, "health_body <regexp>") => {
                if let Some(re) = diags.regex(&line.args[0]) {
                    active_mut(&mut active).expect_body = Some(re);
                }
            }
            "health_headers" => {
                let mut headers = Vec::new();
                for h in block_lines(&line.block) {
                    headers.push(FieldMatch {
                        field: h.name.text.clone(),
                        values: h.args.iter().map(|t| t.text.clone()).collect(),
                    });
                }
                if headers.is_empty() {
                    diags.push(
                        line.name
                            .error("health_headers needs a block of header lines")
                            .with_help("health_headers {\n    Host example.com\n}"),
                    );
                }
                active_mut(&mut active).headers = headers;
            }
            "health_method" if one(diags, "health_method <method>") => {
                let m = &line.args[0].text;
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    active_mut(&mut active).method = Some(m.to_ascii_uppercase());
                } else {
                    diags.push(line.args[0].error(format!("'{m}' is not an HTTP method")));
                }
            }
            "health_request_body" if one(diags, "health_request_body <body>") => {
                active_mut(&mut active).request_body = Some(line.args[0].text.clone());
            }
            "health_passes" | "health_fails"
                if one(diags, &format!("{} <count>", line.name.text)) =>
            {
                if let Some(n) = diags.number::<u32>(&line.args[0], "count") {
                    if n == 0 {
                        diags.push(
                            line.args[0].error(format!("{} must be at least 1", line.name.text)),
                        );
                    }
                    let a = active_mut(&mut active);
                    if line.name.text == "health_passes" {
                        a.passes = n.max(1);
                    } else {
                        a.fails = n.max(1);
                    }
                }
            }
            "health_follow_redirects" if diags.arity(line, 0, 0, 0, "health_follow_redirects") => {
                active_mut(&mut active).follow_redirects = true;
            }
            "health_upstream" if one(diags, "health_upstream <host:port>") => {
                let a = &line.args[0];
                let port_ok = a
                    .text
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if port_ok {
                    active_mut(&mut active).upstream = Some(a.text.clone());
                } else {
                    diags.push(
                        a.error(format!("health_upstream '{}' is not host:port", a.text))
                            .with_help("health_upstream 127.0.0.1:9090"),
                    );
                }
            }
            "fail_duration" if one(diags, "fail_duration <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    passive_mut(&mut passive).fail_duration_ms = v;
                }
            }
            "max_fails" if one(diags, "max_fails <count>") => {
                if let Some(n) = diags.number::<u32>(&line.args[0], "count") {
                    if n == 0 {
                        diags.push(line.args[0].error("max_fails must be at least 1"));
                    }
                    passive_mut(&mut passive).max_fails = n.max(1);
                }
            }
            "unhealthy_status" => {
                if diags.arity(line, 0, 1, usize::MAX, "unhealthy_status <code>...") {
                    for t in &line.args {
                        let s = t.text.to_ascii_lowercase();
                        if status_pattern_ok(&s) {
                            passive_mut(&mut passive).unhealthy_status.push(s);
                        } else {
                            diags.push(t.error(format!("invalid status '{s}'")));
                        }
                    }
                }
            }
            "unhealthy_latency" if one(diags, "unhealthy_latency <duration>") => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    passive_mut(&mut passive).unhealthy_latency_ms = Some(v);
                }
            }
            "unhealthy_request_count" if one(diags, "unhealthy_request_count <count>") => {
                if let Some(n) = diags.number(&line.args[0], "count") {
                    passive_mut(&mut passive).unhealthy_request_count = Some(n);
                }
            }
            "header_up" | "header_down" => {
                if diags.arity(
                    line,
                    0,
                    1,
                    3,
                    &format!("{sub} [+|-]<field> [<value>|<find> <replace>]"),
                ) {
                    let ops = if sub == "header_up" {
                        &mut rp.header_up
                    } else {
                        &mut rp.header_down
                    };
                    header_line(&line.name, &line.args, false, ops, diags);
                }
            }
            "flush_interval" if one(diags, "flush_interval <duration>|-1") => {
                if line.args[0].text == "-1" {
                    rp.flush_interval_ms = Some(-1);
                } else if let Some(v) = diags.duration(&line.args[0]) {
                    rp.flush_interval_ms = Some(v as i64);
                }
            }
            "transport" => transport(line, &mut rp.transport, diags),
            "stream_timeout" | "stream_close_delay" if one(diags, &format!("{sub} <duration>")) => {
                if let Some(v) = diags.duration(&line.args[0]) {
                    let slot = if sub == "stream_timeout" {
                        &mut rp.stream_timeout_ms
                    } else {
                        &mut rp.stream_close_delay_ms
                    };
                    // Caddy: 0 means no limit (and no delay).
                    *slot = (v > 0).then_some(v);
                }
            }
            "stream_timeout" | "stream_close_delay" => {}
            "request_buffers" | "response_buffers"
                if one(diags, &format!("{sub} <size>|unlimited")) =>
            {
                let slot = if sub == "request_buffers" {
                    &mut rp.request_buffers
                } else {
                    &mut rp.response_buffers
                };
                let arg = &line.args[0];
                if arg.text == "unlimited" {
                    *slot = Some(u64::MAX);
                } else if let Some(v) = diags.size(arg) {
                    // Caddy: 0 turns buffering off.
                    *slot = (v > 0).then_some(v);
                }
            }
            "request_buffers" | "response_buffers" => {}
            "buffer_requests" | "buffer_responses" => diags.push(
                line.name
                    .error(format!("'{}' was removed from Caddy", line.name.text))
                    .with_help(if sub == "buffer_requests" {
                        "request_buffers <size> buffers request bodies"
                    } else {
                        "response_buffers <size> buffers response bodies"
                    }),
            ),
            "copy_response" | "copy_response_headers" => diags.push(
                line.name
                    .error(format!(
                        "'{}' goes inside a handle_response block",
                        line.name.text
                    ))
                    .with_help("handle_response @matcher {\n    copy_response\n}"),
            ),
            "dynamic" => {
                if rp.dynamic.is_some() {
                    diags.push(line.name.error("reverse_proxy has one 'dynamic' source"));
                } else {
                    rp.dynamic = dynamic(line, diags);
                }
            }
            "lb_retries"
            | "lb_try_duration"
            | "lb_try_interval"
            | "health_uri"
            | "health_path"
            | "health_port"
            | "health_interval"
            | "health_timeout"
            | "health_status"
            | "health_body"
            | "fail_duration"
            | "max_fails"
            | "unhealthy_latency"
            | "unhealthy_request_count"
            | "flush_interval" => {}
            _ => diags.unknown_sub("reverse_proxy", &line.name, SUBDIRECTIVES),
        }
    }
    if let Some(a) = &active {
        if a.uri.is_empty() && a.port.is_none() && a.upstream.is_none() {
            diags.push(
                d.name
                    .error("active health checks need health_uri, health_port or health_upstream"),
            );
        }
    }
    rp.health.active = active;
    rp.health.passive = passive;
    let named_any = d.args.len() > skip
        || block_lines(&d.block)
            .iter()
            .any(|l| l.name.text == "to" && !l.args.is_empty());
    rp.responses.check_used(d, diags);
    if let Some(dy) = &rp.dynamic {
        if named_any || !rp.upstreams.is_empty() {
            diags.push(
                d.name
                    .error("reverse_proxy takes either upstream addresses or 'dynamic', not both"),
            );
        }
        if matches!(
            rp.load_balancing.policy,
            LbPolicy::WeightedRoundRobin { .. }
        ) {
            diags.push(d.name.error(format!(
                "weighted_round_robin needs a fixed list of upstreams, not 'dynamic {}'",
                dy.kind
            )));
        }
    } else if rp.upstreams.is_empty() && !named_any {
        diags.push(
            d.name
                .error("'reverse_proxy' needs at least one upstream")
                .with_help("reverse_proxy localhost:8080, or a 'to' line in the block"),
        );
    }
    if rp.upstreams.iter().any(|u| u.scheme == "https") {
        rp.transport.tls = true;
    }
    if let LbPolicy::WeightedRoundRobin { weights } = &rp.load_balancing.policy {
        if weights.len() != rp.upstreams.len() {
            let at = block_lines(&d.block)
                .iter()
                .find(|l| l.name.text == "lb_policy")
                .map(|l| l.name.clone());
            let msg = format!(
                "lb_policy weighted_round_robin has {} weight{} for {} upstream{}",
                weights.len(),
                if weights.len() == 1 { "" } else { "s" },
                rp.upstreams.len(),
                if rp.upstreams.len() == 1 { "" } else { "s" },
            );
            diags.push(
                at.map_or_else(|| d.name.error(msg.clone()), |t| t.error(msg.clone()))
                    .with_help("give one weight per upstream, in the order they are listed"),
            );
        }
    }
    let multiplexed = rp.upstreams.iter().any(|u| u.scheme == "h2c")
        || rp.transport.versions.iter().any(|v| v != "1.1");
    if rp.transport.proxy_protocol.is_some() && multiplexed {
        diags.push(
            d.name
                .error("proxy_protocol with HTTP/2 upstreams is not supported yet")
                .with_help("use HTTP/1.1 upstreams with proxy_protocol"),
        );
    }
    if rp.transport.expect_continue_timeout_ms.is_some() && multiplexed {
        let at = block_lines(&d.block)
            .iter()
            .filter(|l| l.name.text == "transport")
            .flat_map(|l| block_lines(&l.block))
            .find(|l| l.name.text == "expect_continue_timeout")
            .map_or_else(|| d.name.clone(), |l| l.name.clone());
        diags.push(
            at.error("expect_continue_timeout applies to HTTP/1.1 upstreams")
                .with_help("HTTP/2 upstreams are sent the request body at once"),
        );
    }
    if rp.response_buffers.is_some() && (multiplexed || rp.transport.fastcgi.is_some()) {
        let at = block_lines(&d.block)
            .iter()
            .find(|l| l.name.text == "response_buffers")
            .map_or_else(|| d.name.clone(), |l| l.name.clone());
        diags.push(
            at.error("response_buffers applies to HTTP/1.1 upstreams")
                .with_help("HTTP/2 and FastCGI responses are relayed as they arrive"),
        );
    }
    let after = diags.list.iter().filter(|x| x.is_error()).count();
    (after == before).then_some(rp)
}

fn port(t: &Token, diags: &mut Diags) -> Option<u16> {
    match t.text.parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            diags.push(t.error(format!("invalid port '{}': expected 1 to 65535", t.text)));
            None
        }
    }
}

/// Parses an upstream address: `host:port`, `:port`, `http://host[:port]`, `https://...`,
/// `h2c://...`, `unix//path`.
/// The duration of a one-argument line that must be at least one second (ms).
fn at_least_a_second(l: &Directive, diags: &mut Diags) -> Option<u64> {
    let v = diags.duration(&l.args[0])?;
    if v < 1000 {
        diags.push(l.args[0].error(format!("{} must be at least 1s", l.name.text)));
        return None;
    }
    Some(v)
}

/// DNS servers (`ip` or `ip:port`) of a `resolvers` line.
fn push_resolvers(args: &[Token], list: &mut Vec<String>, diags: &mut Diags) {
    for a in args {
        let ok = a.text.parse::<std::net::IpAddr>().is_ok()
            || a.text.parse::<std::net::SocketAddr>().is_ok();
        if ok {
            list.push(a.text.clone());
        } else {
            diags.push(a.error(format!("resolver '{}' is not an IP address", a.text)));
        }
    }
}

/// `dynamic a [<name> <port>] { ... }` or `dynamic srv [<full_name>] { ... }`.
fn dynamic(line: &Directive, diags: &mut Diags) -> Option<crate::model::DynamicUpstreams> {
    if !diags.arity(line, 0, 1, 3, "dynamic a|srv ...") {
        return None;
    }
    let kind = line.args[0].text.as_str();
    if !matches!(kind, "a" | "srv") {
        diags.unknown_sub("dynamic", &line.args[0], &["a", "srv"]);
        return None;
    }
    let mut d = crate::model::DynamicUpstreams {
        kind: kind.to_string(),
        name: String::new(),
        port: None,
        refresh_ms: 60_000,
        resolvers: Vec::new(),
        dial_timeout_ms: None,
        versions: Vec::new(),
    };
    let (mut service, mut proto) = (None, None);
    match (kind, &line.args[1..]) {
        (_, []) => {}
        ("a", [name]) => d.name = name.text.clone(),
        ("a", [name, port_t]) => {
            d.name = name.text.clone();
            d.port = port(port_t, diags);
        }
        ("srv", [name]) => d.name = name.text.clone(),
        (_, [.., extra]) => {
            diags.push(extra.error(format!("unexpected argument for dynamic {kind}")));
            return None;
        }
    }
    let subs: &[&str] = if kind == "a" {
        &[
            "name",
            "port",
            "refresh",
            "resolvers",
            "dial_timeout",
            "dial_fallback_delay",
            "versions",
        ]
    } else {
        &[
            "service",
            "proto",
            "name",
            "refresh",
            "resolvers",
            "dial_timeout",
            "dial_fallback_delay",
        ]
    };
    for l in block_lines(&line.block) {
        let sub = l.name.text.as_str();
        let one = |diags: &mut Diags| diags.arity(l, 0, 1, 1, &format!("{sub} <value>"));
        match sub {
            "name" if one(diags) => d.name = l.args[0].text.clone(),
            "port" if kind == "a" && one(diags) => d.port = port(&l.args[0], diags),
            "service" if kind == "srv" && one(diags) => service = Some(l.args[0].text.clone()),
            "proto" if kind == "srv" && one(diags) => {
                let p = l.args[0].text.to_ascii_lowercase();
                if p == "tcp" || p == "udp" {
                    proto = Some(p);
                } else {
                    diags.unknown_sub("proto", &l.args[0], &["tcp", "udp"]);
                }
            }
            "refresh" if one(diags) => {
                if let Some(v) = diags.duration(&l.args[0]) {
                    d.refresh_ms = v.max(100);
                }
            }
            "resolvers" if diags.arity(l, 0, 1, usize::MAX, "resolvers <ip>...") => {
                push_resolvers(&l.args, &mut d.resolvers, diags);
            }
            "dial_timeout" if one(diags) => d.dial_timeout_ms = diags.duration(&l.args[0]),
            "dial_fallback_delay" if one(diags) => {
                // Every resolved address is an upstream of its own, tried in turn by
                // the load balancer, so there is no dual-stack race to delay; only
                // turning it off (a negative value) says what Dwaar does.
                if !l.args[0].text.starts_with('-') {
                    diags.push(
                        l.args[0]
                            .error("dial_fallback_delay is not supported: each resolved address is its own upstream")
                            .with_help("use lb_retries to move on to another address when one fails"),
                    );
                }
            }
            "versions" if kind == "a" && diags.arity(l, 0, 1, 2, "versions ipv4|ipv6") => {
                for a in &l.args {
                    match a.text.as_str() {
                        "ipv4" | "ipv6" => d.versions.push(a.text.clone()),
                        _ => diags.unknown_sub("versions", a, &["ipv4", "ipv6"]),
                    }
                }
            }
            s if subs.contains(&s) => {}
            _ => diags.unknown_sub(&format!("dynamic {kind}"), &l.name, subs),
        }
    }
    if kind == "srv" {
        if let (Some(s), Some(p)) = (&service, &proto) {
            d.name = format!("_{s}._{p}.{}", d.name);
        } else if service.is_some() != proto.is_some() {
            diags.push(
                line.name
                    .error("dynamic srv needs both service and proto (or a full name)"),
            );
            return None;
        }
    }
    if d.name.is_empty() {
        diags.push(line.name.error(format!("dynamic {kind} needs a name")));
        return None;
    }
    if kind == "a" && d.port.is_none() {
        diags.push(
            line.name
                .error("dynamic a needs a port")
                .with_help("dynamic a backend.internal 8080"),
        );
        return None;
    }
    Some(d)
}

/// One upstream address, or several for a port range (`localhost:8001-8006`).
fn upstreams(t: &Token, diags: &mut Diags) -> Vec<Upstream> {
    upstream(t, diags).unwrap_or_default()
}

fn upstream(t: &Token, diags: &mut Diags) -> Option<Vec<Upstream>> {
    let text = t.text.as_str();
    if text.contains('{') {
        // Filled in per request: `[scheme://]{placeholder}[:port]`.
        let (scheme, rest) = match text.split_once("://") {
            Some((s, r)) if !s.contains('{') => (s.to_ascii_lowercase(), r),
            _ => ("http".to_string(), text),
        };
        if !["http", "https"].contains(&scheme.as_str()) {
            diags.push(
                t.error(format!(
                    "unsupported scheme '{scheme}' for a placeholder upstream"
                ))
                .with_help("use http:// or https://"),
            );
            return None;
        }
        return Some(vec![Upstream {
            scheme,
            dial: rest.to_string(),
            unix: false,
            placeholder: true,
        }]);
    }
    if let Some(path) = text.strip_prefix("unix/") {
        if path.is_empty() {
            diags.push(t.error("unix socket upstream needs a path: unix//run/app.sock"));
            return None;
        }
        return Some(vec![Upstream {
            scheme: "http".into(),
            dial: path.to_string(),
            unix: true,
            placeholder: false,
        }]);
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), text),
    };
    if !["http", "https", "h2c"].contains(&scheme.as_str()) {
        diags.push(
            t.error(format!("unsupported upstream scheme '{scheme}'"))
                .with_help("use http://, https:// or h2c://"),
        );
        return None;
    }
    if rest.contains('/') {
        diags.push(
            t.error(format!("upstream address '{text}' cannot have a path"))
                .with_help("use 'rewrite' or 'uri' to change the path sent upstream"),
        );
        return None;
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port_str) = split_host_port(rest);
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (first, last) = match port_str {
        None => (default_port, default_port),
        Some(p) => match p.split_once('-') {
            Some((a, b)) => match (port_of(a), port_of(b)) {
                (Some(a), Some(b)) if a <= b && b - a < 1024 => (a, b),
                _ => {
                    diags.push(
                        t.error(format!("invalid port range in upstream '{text}'"))
                            .with_help(
                                "a range goes up and spans at most 1024 ports: localhost:8001-8006",
                            ),
                    );
                    return None;
                }
            },
            None => match port_of(p) {
                Some(p) => (p, p),
                None => {
                    diags.push(t.error(format!("invalid port in upstream '{text}'")));
                    return None;
                }
            },
        },
    };
    Some(
        (first..=last)
            .map(|port| Upstream {
                scheme: scheme.clone(),
                dial: if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                },
                unix: false,
                placeholder: false,
            })
            .collect(),
    )
}

/// Splits `host:port`, `[v6]:port`, `:port` or `host`.
pub fn split_host_port(s: &str) -> (String, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h.to_string(), after.strip_prefix(':'));
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
        _ => (s.to_string(), None),
    }
}

const LB_POLICIES: &[&str] = &[
    "random",
    "random_choose",
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "first",
    "ip_hash",
    "client_ip_hash",
    "uri_hash",
    "header",
    "cookie",
    "query",
];

/// `lb_policy <name> [<args>] [{ fallback <name> [<args>] }]`; the `fallback` line has
/// the same shape (and may have its own block).
pub(super) fn lb_policy(line: &Directive, diags: &mut Diags) -> Option<LbPolicy> {
    if !diags.arity(line, 0, 1, usize::MAX, "lb_policy <policy> [<args>]") {
        return None;
    }
    let name = line.args[0].text.as_str();
    let args = &line.args[1..];
    let takes_fallback = matches!(name, "header" | "cookie" | "query");
    let mut fallback = None;
    for l in block_lines(&line.block) {
        match l.name.text.as_str() {
            "fallback" if takes_fallback => {
                if fallback.is_some() {
                    diags.push(l.name.error("lb_policy has one fallback"));
                } else {
                    fallback = lb_policy(l, diags).map(Box::new);
                }
            }
            "fallback" => diags.push(
                l.name
                    .error(format!("lb_policy {name} has no fallback"))
                    .with_help("only header, cookie and query fall back to another policy"),
            ),
            _ => diags.unknown_sub("lb_policy", &l.name, &["fallback"]),
        }
    }
    let max_args = match name {
        "random_choose" | "header" | "query" => 1,
        "cookie" => 2,
        "weighted_round_robin" => usize::MAX,
        _ => 0,
    };
    if let Some(extra) = args.get(max_args) {
        diags.push(extra.error(format!("unexpected argument for lb_policy {name}")));
        return None;
    }
    let needs = |what: &str, example: &str| {
        line.args[0]
            .error(format!("lb_policy {name} needs {what}"))
            .with_help(example.to_string())
    };
    let p = match name {
        "random" => LbPolicy::Random,
        "random_choose" => {
            let n = match args.first() {
                Some(t) => diags.number(t, "choice count")?,
                None => 2,
            };
            LbPolicy::RandomChoose { choose: n }
        }
        "round_robin" => LbPolicy::RoundRobin,
        "weighted_round_robin" => {
            if args.is_empty() {
                diags.push(needs(
                    "one weight per upstream",
                    "lb_policy weighted_round_robin 3 1",
                ));
                return None;
            }
            let mut weights = Vec::new();
            for a in args {
                weights.push(diags.number::<u32>(a, "weight")?);
            }
            if weights.iter().all(|w| *w == 0) {
                diags.push(args[0].error("every weight is 0: no upstream could be chosen"));
                return None;
            }
            LbPolicy::WeightedRoundRobin { weights }
        }
        "least_conn" => LbPolicy::LeastConn,
        "first" => LbPolicy::First,
        "ip_hash" => LbPolicy::IpHash,
        "client_ip_hash" => LbPolicy::ClientIpHash,
        "uri_hash" => LbPolicy::UriHash,
        "header" => match args.first() {
            Some(f) => LbPolicy::Header {
                field: f.text.clone(),
                fallback,
            },
            None => {
                diags.push(needs("a field name", "lb_policy header X-User-Id"));
                return None;
            }
        },
        "query" => match args.first() {
            Some(k) => LbPolicy::Query {
                key: k.text.clone(),
                fallback,
            },
            None => {
                diags.push(needs("a parameter name", "lb_policy query user"));
                return None;
            }
        },
        "cookie" => LbPolicy::Cookie {
            name: args
                .first()
                .map(|t| t.text.clone())
                .unwrap_or_else(|| "lb".into()),
            secret: args.get(1).map(|t| t.text.clone()),
            fallback,
        },
        _ => {
            diags.unknown_sub("lb_policy", &line.args[0], LB_POLICIES);
            return None;
        }
    };
    Some(p)
}

/// `transport fastcgi { root, split, env, resolve_root_symlink, capture_stderr,
/// dial_timeout, read_timeout, write_timeout }`.
fn fastcgi_transport(line: &Directive, t: &mut Transport, diags: &mut Diags) {
    let mut f = crate::model::FastCgi::default();
    for l in block_lines(&line.block) {
        let sub = l.name.text.as_str();
        let one = |diags: &mut Diags| diags.arity(l, 0, 1, 1, &format!("{sub} <value>"));
        match sub {
            "root" if one(diags) => f.root = Some(diags.template(&l.args[0])),
            "split" if diags.arity(l, 0, 1, usize::MAX, "split <delimiter>...") => {
                f.split_path = l.args.iter().map(|a| a.text.clone()).collect()
            }
            "env" if diags.arity(l, 0, 2, 2, "env <key> <value>") => {
                f.env.push(crate::model::VarAssign {
                    name: l.args[0].text.clone(),
                    value: diags.template(&l.args[1]),
                })
            }
            "resolve_root_symlink" if diags.arity(l, 0, 0, 0, sub) => f.resolve_root_symlink = true,
            "capture_stderr" if diags.arity(l, 0, 0, 0, sub) => f.capture_stderr = true,
            "dial_timeout" if one(diags) => {
                if let Some(v) = diags.duration(&l.args[0]) {
                    t.dial_timeout_ms = v;
                }
            }
            "read_timeout" if one(diags) => t.read_timeout_ms = diags.duration(&l.args[0]),
            "write_timeout" if one(diags) => t.write_timeout_ms = diags.duration(&l.args[0]),
            "root"
            | "split"
            | "env"
            | "resolve_root_symlink"
            | "capture_stderr"
            | "dial_timeout"
            | "read_timeout"
            | "write_timeout" => {}
            _ => diags.unknown_sub(
                "transport fastcgi",
                &l.name,
                &[
                    "root",
                    "split",
                    "env",
                    "resolve_root_symlink",
                    "capture_stderr",
                    "dial_timeout",
                    "read_timeout",
                    "write_timeout",
                ],
            ),
        }
    }
    t.fastcgi = Some(f);
}

fn transport(line: &Directive, t: &mut Transport, diags: &mut Diags) {
    match line.args.first().map(|a| a.text.as_str()) {
        Some("http") if line.args.len() == 1 => {}
        Some("fastcgi") if line.args.len() == 1 => {
            fastcgi_transport(line, t, diags);
            return;
        }
        Some(other) => {
            diags.push(
                line.args[0]
                    .error(format!("unknown transport '{other}'"))
                    .with_help("use: transport http { ... }"),
            );
            return;
        }
        None => {
            diags.push(
                line.name
                    .error("transport needs a name")
                    .with_help("transport http { ... }"),
            );
            return;
        }
    }
    for l in block_lines(&line.block) {
        let sub = l.name.text.as_str();
        let one = |diags: &mut Diags| diags.arity(l, 0, 1, 1, &format!("{sub} <value>"));
        match sub {
            "dial_timeout" if one(diags) => {
                if let Some(v) = diags.duration(&l.args[0]) {
                    t.dial_timeout_ms = v;
                }
            }
            "response_header_timeout" if one(diags) => {
                t.response_header_timeout_ms = diags.duration(&l.args[0])
            }
            "read_timeout" if one(diags) => t.read_timeout_ms = diags.duration(&l.args[0]),
            "write_timeout" if one(diags) => t.write_timeout_ms = diags.duration(&l.args[0]),
            "keepalive" if one(diags) => {
                if l.args[0].text == "off" {
                    t.keepalive_ms = None;
                } else {
                    t.keepalive_ms = diags.duration(&l.args[0]);
                }
            }
            "keepalive_idle_conns" | "keepalive_idle_conns_per_host" if one(diags) => {
                if let Some(n) = diags.number(&l.args[0], "connection count") {
                    if sub == "keepalive_idle_conns" {
                        t.keepalive_idle_conns = Some(n);
                    } else {
                        t.keepalive_idle_conns_per_host = Some(n);
                    }
                }
            }
            "tls" if diags.arity(l, 0, 0, 0, "tls") => t.tls = true,
            "tls_server_name" if one(diags) => {
                t.tls = true;
                t.tls_server_name = Some(l.args[0].text.clone());
            }
            "tls_insecure_skip_verify" if diags.arity(l, 0, 0, 0, "tls_insecure_skip_verify") => {
                t.tls = true;
                t.tls_insecure_skip_verify = true;
            }
            "tls_trusted_ca_certs"
                if diags.arity(l, 0, 1, usize::MAX, "tls_trusted_ca_certs <pem_file>...") =>
            {
                t.tls = true;
                t.tls_trusted_ca_certs = l.args.iter().map(|a| a.text.clone()).collect();
            }
            "versions" if diags.arity(l, 0, 1, 2, "versions 1.1|2|h2c") => {
                let mut v = Vec::new();
                for a in &l.args {
                    match a.text.as_str() {
                        "1.1" | "2" | "h2c" => v.push(a.text.clone()),
                        "3" => diags.push(a.error("HTTP/3 to upstreams is not supported")),
                        _ => diags.push(
                            a.error(format!("unknown HTTP version '{}'", a.text))
                                .with_help("use 1.1, 2 or h2c"),
                        ),
                    }
                }
                t.versions = v;
            }
            "tls_client_auth" => {
                if l.args.len() == 1 {
                    diags.push(
                        l.args[0]
                            .error("tls_client_auth with an automated certificate is not supported yet")
                            .with_help("tls_client_auth <cert_file> <key_file>"),
                    );
                } else if diags.arity(l, 0, 2, 2, "tls_client_auth <cert_file> <key_file>") {
                    t.tls = true;
                    t.tls_client_auth = Some((l.args[0].text.clone(), l.args[1].text.clone()));
                }
            }
            // Dwaar passes the client's Accept-Encoding on and never asks upstreams for
            // compression of its own, which is what `compression off` asks of Caddy.
            "compression" if one(diags) => {
                if l.args[0].text != "off" {
                    diags.push(
                        l.args[0]
                            .error("compression takes only 'off' (Dwaar never asks upstreams to compress on its own)"),
                    );
                }
            }
            "max_response_header" if one(diags) => {
                if let Some(v) = diags.size(&l.args[0]) {
                    if !(1024..=1 << 20).contains(&v) {
                        diags.push(
                            l.args[0].error("max_response_header must be between 1KiB and 1MiB"),
                        );
                    } else {
                        t.max_response_header = Some(v);
                    }
                }
            }
            "dns_min_ttl" if one(diags) => t.dns_min_ttl_ms = at_least_a_second(l, diags),
            "read_buffer" | "write_buffer" if one(diags) => {
                if let Some(v) = diags.size(&l.args[0]) {
                    // The kernel clamps to its own limits; these bounds catch typos.
                    if !(1024..=64 << 20).contains(&v) {
                        diags
                            .push(l.args[0].error(format!("{sub} must be between 1KiB and 64MiB")));
                    } else if sub == "read_buffer" {
                        t.read_buffer = Some(v);
                    } else {
                        t.write_buffer = Some(v);
                    }
                }
            }
            "keepalive_interval" if one(diags) => {
                t.keepalive_interval_ms = at_least_a_second(l, diags)
            }
            "expect_continue_timeout" if one(diags) => {
                // Caddy (Go): 0 sends the body at once, without waiting.
                t.expect_continue_timeout_ms = diags.duration(&l.args[0]).filter(|&v| v > 0);
            }
            "max_conns_per_host" if one(diags) => {
                if let Some(n) = diags.number(&l.args[0], "connection count") {
                    t.max_conns_per_host = n;
                }
            }
            "resolvers" if diags.arity(l, 0, 1, usize::MAX, "resolvers <ip>...") => {
                push_resolvers(&l.args, &mut t.resolvers, diags);
            }
            "proxy_protocol" if diags.arity(l, 0, 1, 1, "proxy_protocol v1|v2") => {
                match l.args[0].text.as_str() {
                    "v1" | "v2" => {
                        if t.versions.iter().any(|v| v != "1.1") {
                            diags.push(l.name.error(
                                "proxy_protocol with HTTP/2 upstreams is not supported yet",
                            ));
                        } else {
                            t.proxy_protocol = Some(l.args[0].text.clone());
                        }
                    }
                    _ => diags.unknown_sub("proxy_protocol", &l.args[0], &["v1", "v2"]),
                }
            }
            s if TRANSPORT_SUB.contains(&s) => {}
            _ => diags.unknown_sub("transport http", &l.name, TRANSPORT_SUB),
        }
    }
}
