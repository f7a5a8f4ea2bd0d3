//! The `tls` site directive and the global options of automatic HTTPS
//! (`email`, `acme_ca`, `acme_ca_root`, `local_certs`, `storage`).
//!
//! Names of protocols, cipher suites and curves are checked here against what Dwaar's
//! TLS stack implements, so a typo fails at its line instead of at the first handshake.

use super::args::{block_lines, Diags};
use crate::lexer::Token;
use crate::model::{
    AcmeIssuer, ClientAuth, DnsOptions, DnsProvider, GlobalTls, Issuer, PreferredChains, SiteTls,
};
use crate::parser::Directive;

/// TLS versions Dwaar speaks.
pub const PROTOCOLS: &[&str] = &["tls1.2", "tls1.3"];
/// Cipher suites Dwaar implements, by IANA name.
pub const CIPHERS: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];
/// Key exchange groups Dwaar implements.
pub const CURVES: &[&str] = &["x25519", "secp256r1", "secp384r1"];
const CLIENT_AUTH_MODES: &[&str] = &[
    "request",
    "require",
    "verify_if_given",
    "require_and_verify",
];

/// The arguments of `line` (one or more), each one of `known`; an unknown one is an
/// error at it. `what` names an argument in the usage line.
fn known_names(line: &Directive, what: &str, known: &[&str], diags: &mut Diags) -> Vec<String> {
    let name = &line.name.text;
    let mut out = Vec::new();
    if diags.arity(line, 0, 1, usize::MAX, &format!("{name} {what}...")) {
        for a in &line.args {
            if known.contains(&a.text.as_str()) {
                out.push(a.text.clone());
            } else {
                diags.unknown_sub(name, a, known);
            }
        }
    }
    out
}

/// Parses a site's `tls` directive.
pub fn site_tls(d: &Directive, diags: &mut Diags) -> Option<SiteTls> {
    if !diags.arity(
        d,
        0,
        0,
        2,
        "tls [internal|<email>|<cert_file> <key_file>] { ... }",
    ) {
        return None;
    }
    let before = diags.error_count();
    let mut t = SiteTls::default();
    let mut issuer_lines = 0;
    match d.args.as_slice() {
        [] => {}
        [one] if one.text == "internal" => t.issuer = Some(Issuer::Internal),
        [one] if one.text.contains('@') => {
            t.issuer = Some(Issuer::Acme(AcmeIssuer {
                email: Some(one.text.clone()),
                ..Default::default()
            }))
        }
        [one] => diags.push(
            one.error(format!("unknown tls argument '{}'", one.text))
                .with_help("use 'tls internal', 'tls <email>' or 'tls <cert_file> <key_file>'"),
        ),
        [cert, key] => {
            t.cert_file = Some(cert.text.clone());
            t.key_file = Some(key.text.clone());
        }
        _ => {}
    }
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "protocols" => {
                if diags.arity(line, 0, 1, 2, "protocols <min> [<max>]") {
                    for a in &line.args {
                        if !PROTOCOLS.contains(&a.text.as_str()) {
                            let mut e = a.error(format!("unknown TLS protocol '{}'", a.text));
                            e = e.with_help(if a.text.starts_with("tls1.") {
                                "Dwaar speaks tls1.2 and tls1.3; older versions are insecure"
                            } else {
                                "use tls1.2 or tls1.3"
                            });
                            diags.push(e);
                        }
                    }
                    t.protocol_min = Some(line.args[0].text.clone());
                    t.protocol_max = line.args.get(1).map(|a| a.text.clone());
                    if let (Some(min), Some(max)) = (&t.protocol_min, &t.protocol_max) {
                        if min > max {
                            diags.push(line.args[1].error(format!(
                                "the highest protocol '{max}' is below the lowest '{min}'"
                            )));
                        }
                    }
                }
            }
            "ciphers" => t
                .ciphers
                .extend(known_names(line, "<cipher_suite>", CIPHERS, diags)),
            "curves" => t.curves.extend(known_names(line, "<curve>", CURVES, diags)),
            "alpn" => t
                .alpn
                .extend(known_names(line, "<protocol>", &["h2", "http/1.1"], diags)),
            "client_auth" => t.client_auth = client_auth(line, diags),
            "issuer" => {
                let Some(issuer) = issuer_line(line, diags) else {
                    continue;
                };
                if issuer_lines > 0 {
                    // A later issuer is a fallback, tried when the ones before fail.
                    t.fallback_issuers.push(issuer);
                } else {
                    set_issuer(&mut t, issuer, line, diags);
                }
                issuer_lines += 1;
            }
            "ca" | "ca_root" => {
                if !diags.arity(line, 0, 1, 1, &format!("{name} <value>")) {
                    continue;
                }
                if name == "ca" {
                    check_url(&line.args[0], diags);
                }
                if let Some(acme) = acme_of(&mut t, line, diags) {
                    let v = Some(line.args[0].text.clone());
                    if name == "ca" {
                        acme.dir = v;
                    } else {
                        acme.ca_root = v;
                    }
                }
            }
            "eab" => {
                if !diags.arity(line, 0, 2, 2, "eab <key_id> <mac_key>") {
                    continue;
                }
                let Some(eab) = eab(&line.args[0], &line.args[1], diags) else {
                    continue;
                };
                if let Some(acme) = acme_of(&mut t, line, diags) {
                    acme.eab = Some(eab);
                }
            }
            "dns" => {
                if let Some(p) = dns_provider(line, diags) {
                    if let Some(acme) = acme_of(&mut t, line, diags) {
                        acme.dns = Some(p);
                    }
                }
            }
            n if DNS_OPTIONS.contains(&n) => {
                let mut o = DnsOptions::default();
                if dns_option(line, &mut o, diags) {
                    if let Some(acme) = acme_of(&mut t, line, diags) {
                        merge_dns_options(&mut acme.dns_options, o);
                    }
                }
            }
            "key_type" => {
                if diags.arity(line, 0, 1, 1, "key_type p256|p384|rsa2048|rsa4096|ed25519") {
                    t.key_type = key_type(&line.args[0], diags);
                }
            }
            "load" => {
                if diags.arity(line, 0, 1, usize::MAX, "load <directory>...") {
                    t.load.extend(line.args.iter().map(|a| a.text.clone()));
                }
            }
            "on_demand" => {
                if diags.arity(line, 0, 0, 0, "on_demand") && diags.no_block(line) {
                    t.on_demand = true;
                }
            }
            "get_certificate" => {
                if !diags.arity(line, 0, 1, 2, "get_certificate http <url>") {
                    continue;
                }
                if line.args[0].text == "http" && line.args.len() == 1 {
                    diags.push(
                        line.name
                            .error("get_certificate http needs the URL to ask")
                            .with_help("get_certificate http http://127.0.0.1:9000/certificate"),
                    );
                } else if line.args[0].text != "http" {
                    diags.push(
                        line.args[0]
                            .error(format!(
                                "certificate manager '{}' is not built into Dwaar",
                                line.args[0].text
                            ))
                            .with_help("'get_certificate http <url>' asks a service of yours"),
                    );
                } else if !line.args[1].text.starts_with("http://")
                    && !line.args[1].text.starts_with("https://")
                {
                    diags.push(
                        line.args[1]
                            .error(format!("'{}' is not an http(s) URL", line.args[1].text)),
                    );
                } else {
                    t.get_certificate.push(line.args[1].text.clone());
                }
            }
            "insecure_secrets_log" | "reuse_private_keys" => diags.push(
                line.name
                    .error(format!("tls option '{name}' is not supported yet")),
            ),
            _ => diags.unknown_sub(
                "tls",
                &line.name,
                &[
                    "protocols",
                    "ciphers",
                    "curves",
                    "alpn",
                    "client_auth",
                    "issuer",
                    "ca",
                    "ca_root",
                    "eab",
                    "dns",
                    "propagation_delay",
                    "propagation_timeout",
                    "resolvers",
                    "dns_ttl",
                    "dns_challenge_override_domain",
                    "key_type",
                    "load",
                    "on_demand",
                    "get_certificate",
                ],
            ),
        }
    }
    if !t.load.is_empty() && (t.cert_file.is_some() || t.issuer.is_some()) {
        diags.push(
            d.name
                .error("a site that loads its certificates has no other source")
                .with_help("keep 'load', or the certificate files, or the issuer"),
        );
    }
    if t.cert_file.is_some() && t.issuer.is_some() {
        diags.push(
            d.name
                .error("a site with its own certificate files has no issuer")
                .with_help("remove the issuer, or the certificate files"),
        );
    }
    (diags.error_count() == before).then_some(t)
}

/// `issuer acme { ... }` or `issuer internal` (a site's `issuer`, a global
/// `cert_issuer`).
fn issuer_line(line: &Directive, diags: &mut Diags) -> Option<Issuer> {
    let name = line.name.text.as_str();
    let zerossl = line.args.first().is_some_and(|a| a.text == "zerossl");
    if !zerossl && !diags.arity(line, 0, 1, 1, &format!("{name} acme|internal {{ ... }}")) {
        return None;
    }
    match line.args[0].text.as_str() {
        "internal" => {
            if line.block.is_some() {
                diags.push(
                    line.name
                        .error(format!("'{name} internal' takes no options")),
                );
                return None;
            }
            Some(Issuer::Internal)
        }
        "acme" => Some(Issuer::Acme(acme_issuer(line, diags))),
        "zerossl" => {
            diags.push(
                line.args[0]
                    .error("the zerossl issuer (which asks ZeroSSL's API for a binding) is not built in")
                    .with_help("use ZeroSSL's ACME directory with the binding from its dashboard:\nacme https://acme.zerossl.com/v2/DV90 with 'eab <key_id> <mac_key>'"),
            );
            None
        }
        _ => {
            diags.unknown_sub(name, &line.args[0], &["acme", "internal"]);
            None
        }
    }
}

fn set_issuer(t: &mut SiteTls, issuer: Issuer, line: &Directive, diags: &mut Diags) {
    match (&t.issuer, &issuer) {
        (Some(Issuer::Acme(a)), Issuer::Acme(b)) => {
            // `tls you@example.com { issuer acme { dir ... } }`: the email carries over.
            let mut merged = b.clone();
            if merged.email.is_none() {
                merged.email = a.email.clone();
            }
            t.issuer = Some(Issuer::Acme(merged));
        }
        (Some(_), _) => diags.push(
            line.name
                .error("a site has one certificate issuer")
                .with_help("keep one 'issuer' line"),
        ),
        (None, _) => t.issuer = Some(issuer),
    }
}

/// The ACME issuer that an ACME option inside `tls` configures: the site's own, made
/// when it has none; `None` (with an error) when the site uses the internal issuer.
fn acme_of<'a>(
    t: &'a mut SiteTls,
    line: &Directive,
    diags: &mut Diags,
) -> Option<&'a mut AcmeIssuer> {
    if t.issuer.is_none() {
        t.issuer = Some(Issuer::Acme(AcmeIssuer::default()));
    }
    match t.issuer.as_mut() {
        Some(Issuer::Acme(a)) => Some(a),
        _ => {
            diags.push(line.name.error(format!(
                "'{}' configures an ACME issuer, but this site uses the internal one",
                line.name.text
            )));
            None
        }
    }
}

/// Options of the DNS-01 challenge, in `tls` and `issuer acme`.
const DNS_OPTIONS: &[&str] = &[
    "propagation_delay",
    "propagation_timeout",
    "resolvers",
    "dns_ttl",
    "dns_challenge_override_domain",
];

/// DNS providers built into Dwaar.
pub const DNS_PROVIDERS: &[&str] = &["rfc2136", "cloudflare", "route53", "exec"];

/// Parses one DNS-01 option line into `o`; false when it had an error.
fn dns_option(line: &Directive, o: &mut DnsOptions, diags: &mut Diags) -> bool {
    let name = line.name.text.as_str();
    let before = diags.error_count();
    match name {
        "resolvers" => {
            if diags.arity(line, 0, 1, usize::MAX, "resolvers <ip[:port]>...") {
                for a in &line.args {
                    if resolver_addr(&a.text).is_some() {
                        o.resolvers.push(a.text.clone());
                    } else {
                        diags.push(
                            a.error(format!("'{}' is not a DNS server address", a.text))
                                .with_help("an IP address with an optional port: 1.1.1.1, 127.0.0.1:5353, [::1]:53"),
                        );
                    }
                }
            }
        }
        "dns_challenge_override_domain" => {
            if diags.arity(line, 0, 1, 1, "dns_challenge_override_domain <name>") {
                let v = line.args[0].text.trim_end_matches('.').to_ascii_lowercase();
                if is_dns_name(&v) {
                    o.override_domain = Some(v);
                } else {
                    diags.push(
                        line.args[0].error(format!("'{}' is not a DNS name", line.args[0].text)),
                    );
                }
            }
        }
        _ => {
            if !diags.arity(line, 0, 1, 1, &format!("{name} <duration>")) {
                return false;
            }
            let a = &line.args[0];
            if name == "propagation_timeout" && a.text == "-1" {
                o.propagation_timeout_ms = Some(0);
            } else if let Some(v) = diags.duration(a) {
                match name {
                    "propagation_delay" => o.propagation_delay_ms = Some(v),
                    "propagation_timeout" if v == 0 => diags.push(
                        a.error("propagation_timeout must be above zero")
                            .with_help("'propagation_timeout -1' turns the propagation check off"),
                    ),
                    "propagation_timeout" => o.propagation_timeout_ms = Some(v),
                    _ => match u32::try_from(v / 1000) {
                        Ok(s) if s > 0 => o.ttl_s = Some(s),
                        _ => diags.push(a.error("dns_ttl must be between 1s and 136 years")),
                    },
                }
            }
        }
    }
    diags.error_count() == before
}

fn merge_dns_options(into: &mut DnsOptions, from: DnsOptions) {
    into.propagation_delay_ms = from.propagation_delay_ms.or(into.propagation_delay_ms);
    into.propagation_timeout_ms = from.propagation_timeout_ms.or(into.propagation_timeout_ms);
    into.resolvers.extend(from.resolvers);
    into.ttl_s = from.ttl_s.or(into.ttl_s);
    into.override_domain = from.override_domain.or(into.override_domain.take());
}

/// `preferred_chains [smallest] { root_common_name <cn>...; any_common_name <cn>... }`.
fn preferred_chains(d: &Directive, diags: &mut Diags) -> Option<PreferredChains> {
    let usage = "preferred_chains [smallest] { root_common_name <cn>...; any_common_name <cn>... }";
    if !diags.arity(d, 0, 0, 1, usage) {
        return None;
    }
    let mut p = PreferredChains::default();
    match d.args.first() {
        Some(a) if a.text == "smallest" => p.smallest = true,
        Some(a) => {
            diags.unknown_sub("preferred_chains", a, &["smallest"]);
            return None;
        }
        None => {}
    }
    for line in block_lines(&d.block) {
        let k = line.name.text.as_str();
        match k {
            "root_common_name" | "any_common_name" => {
                if diags.arity(line, 0, 1, usize::MAX, &format!("{k} <common_name>...")) {
                    let names = line.args.iter().map(|a| a.text.clone());
                    if k == "root_common_name" {
                        p.root_common_name.extend(names);
                    } else {
                        p.any_common_name.extend(names);
                    }
                }
            }
            _ => diags.unknown_sub(
                "preferred_chains",
                &line.name,
                &["root_common_name", "any_common_name"],
            ),
        }
    }
    if p.smallest && !(p.root_common_name.is_empty() && p.any_common_name.is_empty()) {
        diags.push(
            d.name
                .error("'smallest' and common names are two different preferences: choose one"),
        );
        return None;
    }
    if p == PreferredChains::default() {
        diags.push(
            d.name
                .error("preferred_chains needs 'smallest' or common names")
                .with_help(usage),
        );
        return None;
    }
    Some(p)
}

/// `ip` or `ip:port` (`[v6]:port`) of a DNS server.
pub fn resolver_addr(s: &str) -> Option<std::net::SocketAddr> {
    s.parse::<std::net::SocketAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 53).into()))
        .filter(|a| a.port() != 0)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `dns <provider> [args] { ... }`: one of the built-in DNS providers.
pub fn dns_provider(d: &Directive, diags: &mut Diags) -> Option<DnsProvider> {
    if !diags.arity(d, 0, 1, usize::MAX, "dns <provider> [<args>...] { ... }") {
        return None;
    }
    let before = diags.error_count();
    let which = &d.args[0];
    let rest = &d.args[1..];
    let provider = match which.text.as_str() {
        "rfc2136" => {
            if let Some(a) = rest.first() {
                diags.push(a.error("dns rfc2136 takes its settings in a block"));
            }
            let fields = provider_fields(d, &["server", "key_name", "key_alg", "key"], diags);
            let get = |k: &str| fields.get(k);
            let alg = get("key_alg").map(|t| t.text.to_ascii_lowercase());
            let alg = alg.unwrap_or_else(|| "hmac-sha256".into());
            let alg = alg.trim_end_matches('.').to_string();
            if !["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&alg.as_str()) {
                if let Some(t) = get("key_alg") {
                    diags.unknown_sub(
                        "key_alg",
                        t,
                        &["hmac-sha256", "hmac-sha1", "hmac-sha384", "hmac-sha512"],
                    );
                }
            }
            if let Some(k) = get("key") {
                if !k.text.starts_with("{env.") && base64_decodes(&k.text).is_none() {
                    diags.push(
                        k.error("the TSIG key is not base64").with_help(
                            "the 'secret' of a tsig-keygen key, e.g. key \"c2VjcmV0...\"",
                        ),
                    );
                }
            }
            if get("key").is_some() != get("key_name").is_some() {
                diags.push(d.name.error("a TSIG key needs both key_name and key"));
            }
            match get("server").map(|t| t.text.clone()) {
                Some(server) => Some(DnsProvider::Rfc2136 {
                    server,
                    key_name: get("key_name")
                        .map(|t| t.text.trim_end_matches('.').to_ascii_lowercase()),
                    key_alg: alg,
                    key: get("key").map(|t| t.text.clone()),
                }),
                None => {
                    diags.push(d.name.error("dns rfc2136 needs the server that accepts updates").with_help("dns rfc2136 {\n    server 192.0.2.53:53\n    key_name acme\n    key_alg hmac-sha256\n    key <base64 secret>\n}"));
                    None
                }
            }
        }
        "cloudflare" => {
            let fields = provider_fields(d, &["api_token", "zone_token", "endpoint"], diags);
            let get = |k: &str| fields.get(k).map(|t| t.text.clone());
            let token = match (rest, get("api_token")) {
                ([t], None) => Some(t.text.clone()),
                ([], t) => t,
                _ => {
                    diags.push(d.name.error("dns cloudflare takes the API token once"));
                    None
                }
            };
            match token {
                Some(api_token) => Some(DnsProvider::Cloudflare {
                    api_token,
                    zone_token: get("zone_token"),
                    endpoint: get("endpoint"),
                }),
                None => {
                    diags.push(
                        d.name
                            .error("dns cloudflare needs an API token")
                            .with_help("dns cloudflare {env.CF_API_TOKEN}"),
                    );
                    None
                }
            }
        }
        "route53" => {
            let fields = provider_fields(
                d,
                &[
                    "access_key_id",
                    "secret_access_key",
                    "session_token",
                    "region",
                    "hosted_zone_id",
                    "endpoint",
                ],
                diags,
            );
            let get = |k: &str| fields.get(k).map(|t| t.text.clone());
            if !rest.is_empty() {
                diags.push(rest[0].error("dns route53 takes its settings in a block"));
            }
            if get("access_key_id").is_some() != get("secret_access_key").is_some() {
                diags.push(d.name.error("give both access_key_id and secret_access_key, or neither (then AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"));
            }
            Some(DnsProvider::Route53 {
                access_key_id: get("access_key_id"),
                secret_access_key: get("secret_access_key"),
                session_token: get("session_token"),
                region: get("region"),
                hosted_zone_id: get("hosted_zone_id"),
                endpoint: get("endpoint"),
            })
        }
        "exec" => {
            if d.block.is_some() {
                diags.push(d.name.error("dns exec takes a command line, not a block"));
            }
            if rest.is_empty() {
                diags.push(d.name.error("dns exec needs the program to run").with_help("dns exec /usr/local/bin/dns-hook\n(run as: dns-hook present|cleanup <record-name> <value>)"));
                None
            } else {
                Some(DnsProvider::Exec {
                    command: rest.iter().map(|a| a.text.clone()).collect(),
                })
            }
        }
        other => {
            diags.push(
                which
                    .error(format!("DNS provider '{other}' is not built into Dwaar"))
                    .with_help(format!(
                        "built in: {} ('exec <program>' reaches any other DNS service)",
                        DNS_PROVIDERS.join(", ")
                    )),
            );
            None
        }
    };
    provider.filter(|_| diags.error_count() == before)
}

/// The `key value` lines of a provider's block, each key one of `known` (an
/// `endpoint` must be an http(s) URL).
struct Fields<'a>(Vec<(&'static str, &'a Token)>);

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Token> {
        self.0.iter().find(|(n, _)| *n == k).map(|(_, t)| *t)
    }
}

fn provider_fields<'a>(d: &'a Directive, known: &[&'static str], diags: &mut Diags) -> Fields<'a> {
    let mut out = Vec::new();
    for l in block_lines(&d.block) {
        match known.iter().find(|k| **k == l.name.text) {
            None => diags.unknown_sub(&format!("dns {}", d.args[0].text), &l.name, known),
            Some(k) if diags.arity(l, 0, 1, 1, &format!("{k} <value>")) => {
                if *k == "endpoint" {
                    check_api_url(&l.args[0], diags);
                }
                out.push((*k, &l.args[0]));
            }
            Some(_) => {}
        }
    }
    Fields(out)
}

fn base64_decodes(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn check_api_url(t: &Token, diags: &mut Diags) {
    if !(t.text.starts_with("https://") || t.text.starts_with("http://")) {
        diags.push(t.error(format!("'{}' is not an http(s) URL", t.text)));
    }
}

fn acme_issuer(d: &Directive, diags: &mut Diags) -> AcmeIssuer {
    let mut a = AcmeIssuer::default();
    for line in block_lines(&d.block) {
        let name = line.name.text.as_str();
        match name {
            "dir" | "test_dir" | "email" | "trusted_roots" => {
                if !diags.arity(line, 0, 1, 1, &format!("{name} <value>")) {
                    continue;
                }
                let v = Some(line.args[0].text.clone());
                match name {
                    "dir" => {
                        check_url(&line.args[0], diags);
                        a.dir = v
                    }
                    "test_dir" => {
                        check_url(&line.args[0], diags);
                        a.test_dir = v
                    }
                    "email" => a.email = v,
                    _ => a.ca_root = v,
                }
            }
            "disable_http_challenge" | "disable_tlsalpn_challenge" => {
                if diags.arity(line, 0, 0, 0, name) {
                    if name == "disable_http_challenge" {
                        a.disable_http_challenge = true;
                    } else {
                        a.disable_tlsalpn_challenge = true;
                    }
                }
            }
            "eab" => {
                if diags.arity(line, 0, 2, 2, "eab <key_id> <mac_key>") {
                    a.eab = eab(&line.args[0], &line.args[1], diags);
                }
            }
            "dns" => a.dns = dns_provider(line, diags),
            n if DNS_OPTIONS.contains(&n) => {
                dns_option(line, &mut a.dns_options, diags);
            }
            "preferred_chains" => a.preferred_chains = preferred_chains(line, diags),
            "alt_http_port" | "alt_tlsalpn_port" | "timeout" => diags.push(
                line.name
                    .error(format!("acme issuer option '{name}' is not supported yet")),
            ),
            _ => diags.unknown_sub(
                "issuer acme",
                &line.name,
                &[
                    "dir",
                    "test_dir",
                    "email",
                    "trusted_roots",
                    "disable_http_challenge",
                    "disable_tlsalpn_challenge",
                    "eab",
                    "dns",
                    "propagation_delay",
                    "propagation_timeout",
                    "resolvers",
                    "dns_ttl",
                    "dns_challenge_override_domain",
                ],
            ),
        }
    }
    if a.disable_http_challenge && a.disable_tlsalpn_challenge {
        diags.push(
            d.name
                .error("both ACME challenges are disabled: the certificate could never be issued")
                .with_help("keep the HTTP-01 or the TLS-ALPN-01 challenge"),
        );
    }
    a
}

fn client_auth(d: &Directive, diags: &mut Diags) -> Option<ClientAuth> {
    let mut c = ClientAuth {
        mode: String::new(),
        trusted_ca_cert_files: Vec::new(),
    };
    if d.block.is_none() {
        diags.push(
            d.name
                .error("client_auth needs a block")
                .with_help("client_auth { mode require_and_verify; trusted_ca_cert_file ca.pem }"),
        );
        return None;
    }
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "mode" => {
                if diags.arity(line, 0, 1, 1, "mode <mode>") {
                    let m = line.args[0].text.as_str();
                    if CLIENT_AUTH_MODES.contains(&m) {
                        c.mode = m.to_string();
                    } else {
                        diags.unknown_sub("mode", &line.args[0], CLIENT_AUTH_MODES);
                    }
                }
            }
            "trusted_ca_cert_file" => {
                if diags.arity(line, 0, 1, usize::MAX, "trusted_ca_cert_file <file>...") {
                    c.trusted_ca_cert_files
                        .extend(line.args.iter().map(|a| a.text.clone()));
                }
            }
            "trusted_ca_cert" | "trusted_leaf_cert" | "trusted_leaf_cert_file" | "verifier" => {
                diags.push(line.name.error(format!(
                    "client_auth option '{}' is not supported yet",
                    line.name.text
                )))
            }
            _ => diags.unknown_sub("client_auth", &line.name, &["mode", "trusted_ca_cert_file"]),
        }
    }
    if c.mode.is_empty() {
        // Like Caddy: trusted CAs imply verification is required.
        c.mode = if c.trusted_ca_cert_files.is_empty() {
            "require".into()
        } else {
            "require_and_verify".into()
        };
    }
    let verifies = c.mode == "verify_if_given" || c.mode == "require_and_verify";
    if verifies && c.trusted_ca_cert_files.is_empty() {
        diags.push(
            d.name
                .error(format!(
                    "client_auth mode '{}' needs trusted_ca_cert_file",
                    c.mode
                ))
                .with_help("name the PEM file of the CA that signs client certificates"),
        );
        return None;
    }
    if !verifies && !c.trusted_ca_cert_files.is_empty() {
        diags.push(d.name.error(format!(
            "client_auth mode '{}' does not verify certificates, so trusted_ca_cert_file has no effect",
            c.mode
        )));
        return None;
    }
    Some(c)
}

fn check_url(t: &crate::lexer::Token, diags: &mut Diags) {
    if !(t.text.starts_with("https://") || t.text.starts_with("http://")) {
        diags.push(
            t.error(format!("'{}' is not an ACME directory URL", t.text))
                .with_help("for example https://acme-v02.api.letsencrypt.org/directory"),
        );
    }
}

/// Handles one global option of certificate automation; false if `d` is not one.
pub fn global_option(d: &Directive, g: &mut GlobalTls, diags: &mut Diags) -> bool {
    let name = d.name.text.as_str();
    match name {
        "email" | "acme_ca" | "acme_ca_root" => {
            if diags.arity(d, 0, 1, 1, &format!("{name} <value>")) {
                let v = Some(d.args[0].text.clone());
                match name {
                    "email" => g.email = v,
                    "acme_ca" => {
                        check_url(&d.args[0], diags);
                        g.acme_ca = v
                    }
                    _ => g.acme_ca_root = v,
                }
            }
        }
        "acme_eab" => {
            if !diags.arity(d, 0, 0, 0, "acme_eab { key_id <id> mac_key <key> }") {
                return true;
            }
            let (mut key_id, mut mac_key) = (None, None);
            for line in block_lines(&d.block) {
                match line.name.text.as_str() {
                    "key_id" | "mac_key" => {
                        if diags.arity(line, 0, 1, 1, &format!("{} <value>", line.name.text)) {
                            let slot = if line.name.text == "key_id" {
                                &mut key_id
                            } else {
                                &mut mac_key
                            };
                            *slot = Some(&line.args[0]);
                        }
                    }
                    _ => diags.unknown_sub("acme_eab", &line.name, &["key_id", "mac_key"]),
                }
            }
            match (key_id, mac_key) {
                (Some(k), Some(m)) => g.eab = eab(k, m, diags),
                _ => diags.push(
                    d.name
                        .error("acme_eab needs key_id and mac_key")
                        .with_help("acme_eab {\n    key_id <id>\n    mac_key <key>\n}"),
                ),
            }
        }
        "acme_dns" => g.acme_dns = dns_provider(d, diags),
        "preferred_chains" => g.preferred_chains = preferred_chains(d, diags),
        "cert_issuer" => {
            if let Some(i) = issuer_line(d, diags) {
                g.cert_issuers.push(i);
            }
        }
        "renew_interval" | "ocsp_interval" | "storage_clean_interval" => {
            if diags.arity(d, 0, 1, 1, &format!("{name} <duration>")) {
                if let Some(v) = diags.duration(&d.args[0]) {
                    if v == 0 {
                        diags.push(d.args[0].error(format!("{name} must be above zero")));
                    } else if name == "renew_interval" {
                        g.renew_interval_ms = Some(v);
                    } else if name == "ocsp_interval" {
                        g.ocsp_interval_ms = Some(v);
                    } else {
                        g.storage_clean_interval_ms = Some(v);
                    }
                }
            }
        }
        "on_demand_tls" => {
            if !diags.arity(d, 0, 0, 0, "on_demand_tls { ask <url> }") {
                return true;
            }
            let (mut ask, mut interval_ms, mut burst) = (None, None, None);
            for line in block_lines(&d.block) {
                let sub = line.name.text.as_str();
                match sub {
                    "ask" | "interval" | "burst" => {
                        if !diags.arity(line, 0, 1, 1, &format!("{sub} <value>")) {
                            continue;
                        }
                        let a = &line.args[0];
                        match sub {
                            "ask" => {
                                let rest = a
                                    .text
                                    .strip_prefix("http://")
                                    .or_else(|| a.text.strip_prefix("https://"));
                                if rest.is_some_and(|r| !r.is_empty()) {
                                    ask = Some(a.text.clone());
                                } else {
                                    diags.push(
                                        a.error(format!("'{}' is not an http(s) URL", a.text))
                                            .with_help("the ask endpoint is a service of yours: ask http://localhost:5555/check"),
                                    );
                                }
                            }
                            "interval" => interval_ms = diags.duration(a).filter(|v| *v > 0),
                            _ => burst = diags.number::<u32>(a, "count").filter(|n| *n > 0),
                        }
                    }
                    "permission" => {
                        // Caddy 2.7's form: `permission http { endpoint <url> }`.
                        let http = line.args.first().is_some_and(|a| a.text == "http");
                        let endpoint = block_lines(&line.block)
                            .iter()
                            .find(|l| l.name.text == "endpoint")
                            .and_then(|l| l.args.first());
                        match (http, endpoint) {
                            (true, Some(e)) => ask = Some(e.text.clone()),
                            _ => diags.push(
                                line.name
                                    .error("permission takes the http module with an endpoint")
                                    .with_help("permission http {\n    endpoint http://localhost:5555/check\n}"),
                            ),
                        }
                    }
                    _ => diags.unknown_sub(
                        "on_demand_tls",
                        &line.name,
                        &["ask", "permission", "interval", "burst"],
                    ),
                }
            }
            match ask {
                Some(ask) => {
                    g.on_demand = Some(crate::model::OnDemandTls {
                        ask,
                        interval_ms,
                        burst,
                    })
                }
                None => diags.push(
                    d.name
                        .error("on_demand_tls needs an ask endpoint")
                        .with_help("on_demand_tls {\n    ask http://localhost:5555/check\n}\n(any name could otherwise make Dwaar ask the CA for a certificate)"),
                ),
            }
        }
        // Dwaar never installs its root in the system's trust store by itself (that
        // is `dwaar trust`), so there is nothing to skip.
        "skip_install_trust" => {
            diags.arity(d, 0, 0, 0, "skip_install_trust");
        }
        "key_type" => {
            if diags.arity(d, 0, 1, 1, "key_type p256|p384|rsa2048|rsa4096|ed25519") {
                g.key_type = key_type(&d.args[0], diags);
            }
        }
        "default_sni" | "fallback_sni" => {
            if diags.arity(d, 0, 1, 1, &format!("{name} <name>")) {
                let v = d.args[0].text.to_ascii_lowercase();
                let ok = !v.is_empty()
                    && !v.starts_with('.')
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b));
                if !ok {
                    diags.push(
                        d.args[0].error(format!("'{}' is not a server name", d.args[0].text)),
                    );
                } else if name == "default_sni" {
                    g.default_sni = Some(v);
                } else {
                    g.fallback_sni = Some(v);
                }
            }
        }
        "ocsp_stapling" => {
            if diags.arity(d, 0, 1, 1, "ocsp_stapling off") {
                if d.args[0].text == "off" {
                    g.ocsp_stapling_off = true;
                } else {
                    diags.push(
                        d.args[0]
                            .error(format!("unknown ocsp_stapling value '{}'", d.args[0].text))
                            .with_help(
                                "stapling is on by default; 'ocsp_stapling off' turns it off",
                            ),
                    );
                }
            }
        }
        "local_certs" => {
            if diags.arity(d, 0, 0, 0, "local_certs") {
                g.local_certs = true;
            }
        }
        "storage" => {
            if !diags.arity(
                d,
                0,
                1,
                usize::MAX,
                "storage file_system <path> | storage redis { ... }",
            ) {
                return true;
            }
            if d.args[0].text == "redis" {
                g.redis = redis_storage(d, diags);
                return true;
            }
            if d.args.len() > 2 {
                diags.push(d.args[2].error("storage file_system takes one directory"));
                return true;
            }
            if d.args[0].text != "file_system" {
                diags.push(
                    d.args[0]
                        .error(format!(
                            "storage module '{}' is not supported",
                            d.args[0].text
                        ))
                        .with_help(
                            "Dwaar stores in a directory (storage file_system <path>) or in Redis (storage redis)",
                        ),
                );
                return true;
            }
            let mut root = d.args.get(1).map(|a| a.text.clone());
            for line in block_lines(&d.block) {
                if line.name.text == "root" {
                    if diags.arity(line, 0, 1, 1, "root <path>") {
                        root = Some(line.args[0].text.clone());
                    }
                } else {
                    diags.unknown_sub("storage file_system", &line.name, &["root"]);
                }
            }
            match root {
                Some(r) => g.storage = Some(r),
                None => diags.push(d.name.error("storage file_system needs a directory")),
            }
        }
        _ => return false,
    }
    true
}

/// `host:port` (or `[v6]:port`), the port 1..=65535.
fn host_port(t: &Token, diags: &mut Diags) -> Option<String> {
    let ok = t
        .text
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Some(t.text.clone())
    } else {
        diags.push(
            t.error(format!("'{}' is not host:port", t.text))
                .with_help("for example 127.0.0.1:6379 or redis.internal:6379"),
        );
        None
    }
}

/// `storage redis [<host:port>...] { ... }`.
fn redis_storage(d: &Directive, diags: &mut Diags) -> Option<crate::model::RedisStorage> {
    const OPTIONS: &[&str] = &[
        "address",
        "cluster",
        "sentinel",
        "db",
        "username",
        "password",
        "key_prefix",
        "tls",
        "dial_timeout",
        "command_timeout",
        "local_copy",
    ];
    let before = diags.error_count();
    let mut r = crate::model::RedisStorage {
        addresses: d.args[1..]
            .iter()
            .filter_map(|a| host_port(a, diags))
            .collect(),
        cluster: false,
        sentinel_master: None,
        db: 0,
        username: None,
        password: None,
        key_prefix: "dwaar".into(),
        tls: false,
        dial_timeout_ms: None,
        command_timeout_ms: None,
        local_copy: None,
    };
    let mut kinds = 0;
    for line in block_lines(&d.block) {
        let k = line.name.text.as_str();
        match k {
            "address" => {
                if diags.arity(line, 0, 1, usize::MAX, "address <host:port>...") {
                    r.addresses
                        .extend(line.args.iter().filter_map(|a| host_port(a, diags)));
                }
            }
            "cluster" => {
                if diags.arity(line, 0, 1, usize::MAX, "cluster <host:port>...") {
                    r.cluster = true;
                    kinds += 1;
                    r.addresses
                        .extend(line.args.iter().filter_map(|a| host_port(a, diags)));
                }
            }
            "sentinel" => {
                if diags.arity(
                    line,
                    0,
                    2,
                    usize::MAX,
                    "sentinel <master_name> <host:port>...",
                ) {
                    kinds += 1;
                    r.sentinel_master = Some(line.args[0].text.clone());
                    r.addresses
                        .extend(line.args[1..].iter().filter_map(|a| host_port(a, diags)));
                }
            }
            "db" => {
                if diags.arity(line, 0, 1, 1, "db <number>") {
                    if let Some(n) = diags.number::<u32>(&line.args[0], "database number") {
                        r.db = n;
                    }
                }
            }
            "username" | "password" | "key_prefix" | "local_copy" => {
                if diags.arity(line, 0, 1, 1, &format!("{k} <value>")) {
                    let v = line.args[0].text.clone();
                    match k {
                        "username" => r.username = Some(v),
                        "password" => r.password = Some(v),
                        "key_prefix" => r.key_prefix = v,
                        _ => r.local_copy = Some(v),
                    }
                }
            }
            "tls" => {
                if diags.arity(line, 0, 0, 0, "tls") {
                    r.tls = true;
                }
            }
            "dial_timeout" | "command_timeout" => {
                if diags.arity(line, 0, 1, 1, &format!("{k} <duration>")) {
                    match diags.duration(&line.args[0]) {
                        Some(0) => {
                            diags.push(line.args[0].error(format!("{k} must be above zero")))
                        }
                        Some(ms) if k == "dial_timeout" => r.dial_timeout_ms = Some(ms),
                        Some(ms) => r.command_timeout_ms = Some(ms),
                        None => {}
                    }
                }
            }
            _ => diags.unknown_sub("storage redis", &line.name, OPTIONS),
        }
    }
    if kinds > 1 {
        diags.push(
            d.name
                .error("storage redis is either a cluster or behind sentinels, not both"),
        );
    }
    if r.cluster && r.db != 0 {
        diags.push(d.name.error("Redis Cluster has only database 0"));
    }
    if r.addresses.is_empty() {
        r.addresses.push("127.0.0.1:6379".into());
    }
    (diags.error_count() == before).then_some(r)
}

/// An External Account Binding: a key identifier and a base64url HMAC key.
fn eab(key_id: &Token, mac_key: &Token, diags: &mut Diags) -> Option<crate::model::Eab> {
    use base64::Engine;
    let key =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac_key.text.trim_end_matches('='));
    match key {
        Ok(k) if !k.is_empty() && !key_id.text.is_empty() => Some(crate::model::Eab {
            key_id: key_id.text.clone(),
            mac_key: mac_key.text.clone(),
        }),
        _ => {
            diags.push(
                mac_key
                    .error("the EAB MAC key is not base64url text")
                    .with_help("copy the HMAC key exactly as the CA shows it"),
            );
            None
        }
    }
}

/// The key types Dwaar generates certificate keys of.
pub const KEY_TYPES: &[&str] = &["p256", "p384", "rsa2048", "rsa4096", "ed25519"];

fn key_type(t: &Token, diags: &mut Diags) -> Option<String> {
    let v = t.text.to_ascii_lowercase();
    if KEY_TYPES.contains(&v.as_str()) {
        Some(v)
    } else {
        diags.push(
            t.error(format!("unknown key type '{}'", t.text))
                .with_help("use p256, p384, rsa2048, rsa4096 or ed25519"),
        );
        None
    }
}

/// `tls { on_demand }` needs the global `on_demand_tls { ask }`: without it any name a
/// client sends would make Dwaar ask the CA.
pub fn check_on_demand(doc: &crate::parser::Document, g: &GlobalTls, diags: &mut Diags) {
    if g.on_demand.is_some() {
        return;
    }
    for sb in &doc.sites {
        for d in sb.block.directives.iter().filter(|d| d.name.text == "tls") {
            for l in block_lines(&d.block)
                .iter()
                .filter(|l| l.name.text == "on_demand")
            {
                diags.push(
                    l.name
                        .error("on_demand needs the global on_demand_tls option")
                        .with_help("{\n    on_demand_tls {\n        ask http://localhost:5555/check\n    }\n}"),
                );
            }
        }
    }
}

/// The block of the `acme_server` directive.
pub fn acme_server(d: &Directive, diags: &mut Diags) -> Option<crate::model::AcmeServerConfig> {
    const CHALLENGES: &[&str] = &["http-01", "tls-alpn-01", "dns-01"];
    const OPTIONS: &[&str] = &[
        "ca",
        "lifetime",
        "challenges",
        "allow_wildcard_names",
        "allow",
        "deny",
        "resolvers",
        "sign_with_root",
    ];
    let before = diags.error_count();
    let mut c = crate::model::AcmeServerConfig {
        ca: "local".into(),
        lifetime_ms: None,
        challenges: Vec::new(),
        allow_wildcard_names: false,
        allow_domains: Vec::new(),
        allow_ip_ranges: Vec::new(),
        deny_domains: Vec::new(),
        deny_ip_ranges: Vec::new(),
        resolvers: Vec::new(),
    };
    for line in block_lines(&d.block) {
        let k = line.name.text.as_str();
        match k {
            "ca" => {
                if diags.arity(line, 0, 1, 1, "ca local") && line.args[0].text != "local" {
                    diags.push(
                        line.args[0]
                            .error(format!("no CA named '{}'", line.args[0].text))
                            .with_help("Dwaar has one CA, 'local' (its local CA)"),
                    );
                }
            }
            "lifetime" => {
                if diags.arity(line, 0, 1, 1, "lifetime <duration>") {
                    match diags.duration(&line.args[0]) {
                        Some(ms) if ms >= 60_000 => c.lifetime_ms = Some(ms),
                        Some(_) => diags.push(line.args[0].error("lifetime must be at least 1m")),
                        None => {}
                    }
                }
            }
            "challenges" => {
                c.challenges
                    .extend(known_names(line, "<challenge>", CHALLENGES, diags))
            }
            "allow_wildcard_names" => {
                if diags.arity(line, 0, 0, 0, k) {
                    c.allow_wildcard_names = true;
                }
            }
            // Dwaar's local CA has no intermediate: it always signs with its root.
            "sign_with_root" => {
                diags.arity(line, 0, 0, 0, k);
            }
            "resolvers" => {
                let mut o = DnsOptions::default();
                if dns_option(line, &mut o, diags) {
                    c.resolvers = o.resolvers;
                }
            }
            "allow" | "deny" => {
                let (mut domains, mut ranges) = (Vec::new(), Vec::new());
                for sub in block_lines(&line.block) {
                    match sub.name.text.as_str() {
                        "domains" => {
                            if diags.arity(sub, 0, 1, usize::MAX, "domains <name>...") {
                                for a in &sub.args {
                                    let v = a.text.to_ascii_lowercase();
                                    if is_dns_name(v.strip_prefix("*.").unwrap_or(&v)) {
                                        domains.push(v);
                                    } else {
                                        diags.push(
                                            a.error(format!("'{}' is not a domain name", a.text)),
                                        );
                                    }
                                }
                            }
                        }
                        "ip_ranges" => {
                            if diags.arity(sub, 0, 1, usize::MAX, "ip_ranges <cidr>...") {
                                super::matchers::push_cidrs(&sub.args, &mut ranges, diags);
                            }
                        }
                        _ => diags.unknown_sub(k, &sub.name, &["domains", "ip_ranges"]),
                    }
                }
                if k == "allow" {
                    c.allow_domains.extend(domains);
                    c.allow_ip_ranges.extend(ranges);
                } else {
                    c.deny_domains.extend(domains);
                    c.deny_ip_ranges.extend(ranges);
                }
            }
            _ => diags.unknown_sub("acme_server", &line.name, OPTIONS),
        }
    }
    (diags.error_count() == before).then_some(c)
}
