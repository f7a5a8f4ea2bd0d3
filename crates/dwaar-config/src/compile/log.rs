//! The `log` directive (site access logs) and the global `log` option (Dwaar's own log).

use super::args::{block_lines, Diags};
use crate::model::{
    EncoderOptions, FieldFilter, FilterAction, KeyAction, LogConfig, LogFormat, LogLevel,
    LogOutput, TransformTemplate,
};
use crate::parser::Directive;

const SUBDIRECTIVES: &[&str] = &[
    "output",
    "format",
    "level",
    "mask_ip",
    "hostnames",
    "no_hostname",
    "sampling",
    "include",
    "exclude",
];
const FILE_OPTIONS: &[&str] = &[
    "roll_size",
    "roll_keep",
    "roll_keep_for",
    "roll_disabled",
    "roll_uncompressed",
    "mode",
];

/// Where a `log` block stands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A site's access log.
    Site,
    /// Dwaar's own log (global options).
    Global,
}

/// Parses a `log [name] { ... }` block. A site's log name shows in its records
/// (`http.log.access.<name>`).
pub fn log_config(d: &Directive, diags: &mut Diags, scope: Scope) -> Option<LogConfig> {
    if !diags.arity(
        d,
        0,
        0,
        1,
        "log [<name>] { output ...; format ...; level ... }",
    ) {
        return None;
    }
    let mut c = LogConfig {
        name: d.args.first().map(|a| a.text.clone()),
        ..LogConfig::default()
    };
    let errors_before = diags.error_count();
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "output" => {
                if let Some(o) = output(line, diags) {
                    c.output = o;
                }
            }
            "format" if line.args.first().is_some_and(|a| a.text == "filter") => {
                if scope == Scope::Global {
                    diags.push(line.args[0].error(
                        "format filter applies to site access logs; Dwaar's own log has no request fields",
                    ));
                } else if diags.arity(line, 0, 1, 1, "format filter { ... }") {
                    filter_format(line, &mut c, diags);
                }
            }
            "format" if line.args.first().is_some_and(|a| a.text == "transform") => {
                if scope == Scope::Global {
                    diags.push(line.args[0].error(
                        "format transform applies to site access logs; Dwaar's own log has no request fields",
                    ));
                } else {
                    transform_format(line, &mut c, diags);
                }
            }
            "format" => {
                if diags.arity(
                    line,
                    0,
                    1,
                    1,
                    "format json|console|combined|filter|transform",
                ) {
                    match line.args[0].text.as_str() {
                        "json" => c.format = LogFormat::Json,
                        "console" => c.format = LogFormat::Console,
                        "combined" => c.format = LogFormat::Combined,
                        other => diags.push(
                            line.args[0]
                                .error(format!("unknown log format '{other}'"))
                                .with_help("use json, console, combined, filter or transform"),
                        ),
                    }
                    if line.block.is_some() {
                        if scope == Scope::Global {
                            diags.push(line.name.error("'format' takes no block here"));
                        } else if c.format == LogFormat::Combined {
                            diags
                                .push(line.args[0].error("format combined has no encoder options"));
                        } else {
                            c.encoder = encoder_options(line, diags, None);
                        }
                    }
                }
            }
            "level" => {
                if diags.arity(line, 0, 1, 1, "level DEBUG|INFO|WARN|ERROR") {
                    match line.args[0].text.to_ascii_uppercase().as_str() {
                        "DEBUG" => c.level = LogLevel::Debug,
                        "INFO" => c.level = LogLevel::Info,
                        "WARN" | "WARNING" => c.level = LogLevel::Warn,
                        "ERROR" => c.level = LogLevel::Error,
                        other => diags.push(
                            line.args[0]
                                .error(format!("unknown log level '{other}'"))
                                .with_help("use DEBUG, INFO, WARN or ERROR"),
                        ),
                    }
                }
            }
            "include" | "exclude" if scope == Scope::Site => diags.push(
                line.name
                    .error(format!("{} applies to global logs", line.name.text))
                    .with_help(
                        "a site's log takes its own requests; name it to collect it globally",
                    ),
            ),
            "include" | "exclude" => {
                if diags.arity(
                    line,
                    0,
                    1,
                    usize::MAX,
                    &format!("{} <logger names...>", line.name.text),
                ) {
                    let mut names = Vec::new();
                    for a in &line.args {
                        // Access loggers are the only ones Dwaar has Caddy's names for.
                        if a.text == "http.log.access" || a.text.starts_with("http.log.access.") {
                            names.push(a.text.clone());
                        } else {
                            diags.push(
                                a.error(format!("Dwaar has no logger named '{}'", a.text))
                                    .with_help("access loggers: http.log.access or http.log.access.<site log name>"),
                            );
                        }
                    }
                    if line.name.text == "include" {
                        c.include.extend(names);
                    } else {
                        c.exclude.extend(names);
                    }
                }
            }
            "sampling" if scope == Scope::Global => diags.push(
                line.name
                    .error("sampling applies to site access logs")
                    .with_help("Dwaar's own log is not sampled"),
            ),
            "sampling" => {
                if diags.arity(line, 0, 0, 0, "sampling { interval; first; thereafter }") {
                    c.sampling = sampling(line, diags);
                }
            }
            "hostnames" | "no_hostname" if scope == Scope::Global => diags.push(
                line.name
                    .error(format!("{} applies to site access logs", line.name.text)),
            ),
            "hostnames" => {
                if diags.arity(line, 0, 1, usize::MAX, "hostnames <names...>") {
                    c.hostnames = line
                        .args
                        .iter()
                        .map(|a| a.text.to_ascii_lowercase())
                        .collect();
                }
            }
            "no_hostname" => {
                if diags.arity(line, 0, 0, 0, "no_hostname") {
                    c.no_hostname = true;
                }
            }
            "mask_ip" if scope == Scope::Global => diags.push(line.name.error(
                "mask_ip applies to site access logs; Dwaar's own log has no client addresses",
            )),
            "mask_ip" => {
                if diags.arity(
                    line,
                    0,
                    0,
                    2,
                    "mask_ip [<ipv4 prefix bits>] [<ipv6 prefix bits>]",
                ) {
                    let v4 = line
                        .args
                        .first()
                        .and_then(|t| bits(t, 32, diags))
                        .unwrap_or(24);
                    let v6 = line
                        .args
                        .get(1)
                        .and_then(|t| bits(t, 128, diags))
                        .unwrap_or(48);
                    c.mask_ip = Some((v4, v6));
                }
            }
            _ => diags.unknown_sub("log", &line.name, SUBDIRECTIVES),
        }
    }
    (diags.error_count() == errors_before).then_some(c)
}

/// `format filter { [wrap json|console] [fields] { <field> <filter> ... } }`: the
/// filters in Caddy's form, with or without the `fields` block around them.
fn filter_format(line: &Directive, c: &mut LogConfig, diags: &mut Diags) {
    c.format = LogFormat::Json;
    for l in block_lines(&line.block) {
        match l.name.text.as_str() {
            "wrap" if l.args.first().is_some_and(|a| a.text == "transform") => {
                transform_format(l, c, diags);
            }
            "wrap" => {
                if diags.arity(
                    l,
                    0,
                    1,
                    1,
                    "wrap json|console|transform [{ <encoder options> }]",
                ) {
                    match l.args[0].text.as_str() {
                        "json" => c.format = LogFormat::Json,
                        "console" => c.format = LogFormat::Console,
                        other => diags.push(
                            l.args[0]
                                .error(format!("format filter cannot wrap '{other}'"))
                                .with_help("wrap json, console or transform"),
                        ),
                    }
                    if l.block.is_some() {
                        c.encoder = encoder_options(l, diags, None);
                    }
                }
            }
            "fields" if l.args.is_empty() => {
                for f in block_lines(&l.block) {
                    if let Some(ff) = field_filter(f, diags) {
                        c.filters.push(ff);
                    }
                }
            }
            _ => {
                if let Some(ff) = field_filter(l, diags) {
                    c.filters.push(ff);
                }
            }
        }
    }
}

const TIME_FORMATS: &[&str] = &[
    "unix_seconds_float",
    "unix_milli_float",
    "unix_nano",
    "iso8601",
    "rfc3339",
    "rfc3339_nano",
    "wall",
    "wall_milli",
    "wall_nano",
    "common_log",
];

const ENCODER_OPTIONS: &[&str] = &[
    "message_key",
    "level_key",
    "time_key",
    "name_key",
    "time_format",
    "duration_format",
    "level_format",
    "line_ending",
    "caller_key",
    "stacktrace_key",
    "time_local",
];

/// `format transform [<template>...] { placeholder <text>; unescape_strings; <encoder
/// options> }` (or the same after `wrap` in a filter): the template's parts joined by
/// spaces, Common Log Format when there are none.
fn transform_format(line: &Directive, c: &mut LogConfig, diags: &mut Diags) {
    c.format = LogFormat::Transform;
    let words: Vec<&str> = line.args[1..].iter().map(|a| a.text.as_str()).collect();
    let mut t = TransformTemplate {
        template: if words.is_empty() {
            "{common_log}".to_string()
        } else {
            words.join(" ")
        },
        placeholder: "-".to_string(),
        unescape_strings: false,
    };
    if let Some(bad) = crate::log_template::parse(&t.template).err() {
        diags.push(line.args.last().unwrap_or(&line.name).error(bad));
    }
    c.encoder = encoder_options(line, diags, Some(&mut t));
    c.transform = Some(t);
}

/// Caddy's encoder options in a `format json|console { ... }` (or `wrap`) block; with
/// `transform`, also the transform format's own options.
fn encoder_options(
    line: &Directive,
    diags: &mut Diags,
    mut transform: Option<&mut TransformTemplate>,
) -> Option<EncoderOptions> {
    let mut o = EncoderOptions::default();
    let before = diags.error_count();
    for l in block_lines(&line.block) {
        let name = l.name.text.as_str();
        if let Some(t) = transform.as_deref_mut() {
            match name {
                "placeholder" => {
                    if diags.arity(l, 0, 1, 1, "placeholder <text>") {
                        t.placeholder = l.args[0].text.clone();
                    }
                    continue;
                }
                "unescape_strings" => {
                    if diags.arity(l, 0, 0, 0, "unescape_strings") {
                        t.unescape_strings = true;
                    }
                    continue;
                }
                _ => {}
            }
        }
        let one = |diags: &mut Diags| diags.arity(l, 0, 1, 1, &format!("{name} <value>"));
        let choose = |diags: &mut Diags, allowed: &[&str]| -> Option<String> {
            let v = l.args[0].text.as_str();
            if allowed.contains(&v) {
                Some(v.to_string())
            } else {
                diags.push(
                    l.args[0]
                        .error(format!("unknown {name} '{v}'"))
                        .with_help(format!("one of: {}", allowed.join(", "))),
                );
                None
            }
        };
        match name {
            "message_key" | "level_key" | "time_key" | "name_key" if one(diags) => {
                let v = Some(l.args[0].text.clone());
                match name {
                    "message_key" => o.message_key = v,
                    "level_key" => o.level_key = v,
                    "time_key" => o.time_key = v,
                    _ => o.name_key = v,
                }
            }
            "line_ending" if one(diags) => o.line_ending = Some(l.args[0].text.clone()),
            "time_format" if one(diags) && !TIME_FORMATS.contains(&l.args[0].text.as_str()) => {
                // A Go layout; a word such as `iso-8601` is a misspelt name instead.
                let v = l.args[0].text.as_str();
                let word = v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
                if word || crate::time_layout::Layout::parse(v).is_none() {
                    diags.push(
                        l.args[0]
                            .error(format!("unknown time_format '{v}'"))
                            .with_help(format!(
                                "one of: {}, or a Go layout such as \"2006-01-02 15:04:05\"",
                                TIME_FORMATS.join(", ")
                            )),
                    );
                } else {
                    o.time_format = Some(v.to_string());
                }
            }
            "time_format" if one(diags) => o.time_format = Some(l.args[0].text.clone()),
            "duration_format" if one(diags) => {
                o.duration_format = choose(diags, &["seconds", "s", "ms", "nano", "ns", "string"]);
            }
            "level_format" if one(diags) => {
                o.level_format = choose(diags, &["lower", "upper", "color"]);
            }
            "caller_key" | "stacktrace_key" => diags.push(
                l.name
                    .error(format!(
                        "{name}: access records have no caller or stack trace"
                    ))
                    .with_help("remove the line"),
            ),
            "time_local" => {
                if diags.arity(l, 0, 0, 0, "time_local") {
                    o.time_local = true;
                }
            }
            n if ENCODER_OPTIONS.contains(&n) => {}
            _ => diags.unknown_sub("format", &l.name, ENCODER_OPTIONS),
        }
    }
    (diags.error_count() == before).then_some(o)
}

const FILTERS: &[&str] = &[
    "delete", "replace", "ip_mask", "query", "cookie", "regexp", "hash", "rename",
];

/// One `<field> <filter> [args] [{ ... }]` line.
fn field_filter(l: &Directive, diags: &mut Diags) -> Option<FieldFilter> {
    let field = l.name.text.clone();
    if field.split('>').any(str::is_empty) {
        diags.push(
            l.name
                .error(format!("'{field}' is not a field path"))
                .with_help("name fields like request>headers>Authorization"),
        );
        return None;
    }
    let Some(kind) = l.args.first() else {
        diags.push(
            l.name
                .error(format!("field '{field}' needs a filter"))
                .with_help(format!("one of: {}", FILTERS.join(", "))),
        );
        return None;
    };
    let rest = &l.args[1..];
    let usage = |diags: &mut Diags, min: usize, max: usize, text: &str| {
        if rest.len() < min || rest.len() > max {
            diags.push(kind.error(format!("usage: {field} {text}")));
            false
        } else {
            true
        }
    };
    let action = match kind.text.as_str() {
        "delete" if usage(diags, 0, 0, "delete") => FilterAction::Delete,
        "hash" if usage(diags, 0, 0, "hash") => FilterAction::Hash,
        "replace" if usage(diags, 0, 1, "replace [<value>]") => FilterAction::Replace {
            value: rest.first().map(|t| t.text.clone()).unwrap_or_default(),
        },
        "rename" if usage(diags, 1, 1, "rename <name>") => FilterAction::Rename {
            name: rest[0].text.clone(),
        },
        "regexp" if usage(diags, 2, 2, "regexp <pattern> <replacement>") => {
            if let Err(e) = regex::Regex::new(&rest[0].text) {
                let why = e.to_string();
                let why = why.lines().last().unwrap_or_default().trim().to_string();
                diags.push(rest[0].error(format!("invalid regular expression: {why}")));
                return None;
            }
            FilterAction::Regexp {
                pattern: rest[0].text.clone(),
                replacement: rest[1].text.clone(),
            }
        }
        "ip_mask"
            if usage(
                diags,
                0,
                2,
                "ip_mask [<ipv4 bits> [<ipv6 bits>]] | { ipv4 <bits>; ipv6 <bits> }",
            ) =>
        {
            let (mut v4, mut v6) = (
                rest.first().and_then(|t| bits(t, 32, diags)).unwrap_or(32),
                rest.get(1).and_then(|t| bits(t, 128, diags)).unwrap_or(128),
            );
            for b in block_lines(&l.block) {
                match b.name.text.as_str() {
                    "ipv4" if diags.arity(b, 0, 1, 1, "ipv4 <bits>") => {
                        v4 = bits(&b.args[0], 32, diags).unwrap_or(v4);
                    }
                    "ipv6" if diags.arity(b, 0, 1, 1, "ipv6 <bits>") => {
                        v6 = bits(&b.args[0], 128, diags).unwrap_or(v6);
                    }
                    "ipv4" | "ipv6" => {}
                    _ => diags.unknown_sub("ip_mask", &b.name, &["ipv4", "ipv6"]),
                }
            }
            FilterAction::IpMask { ipv4: v4, ipv6: v6 }
        }
        "query" | "cookie"
            if usage(
                diags,
                0,
                0,
                &format!("{} {{ delete|replace|hash <key> [<value>] }}", kind.text),
            ) =>
        {
            let mut actions = Vec::new();
            for b in block_lines(&l.block) {
                let op = b.name.text.as_str();
                let ok = match op {
                    "delete" | "hash" => diags.arity(b, 0, 1, 1, &format!("{op} <key>")),
                    "replace" => diags.arity(b, 0, 2, 2, "replace <key> <value>"),
                    _ => {
                        diags.unknown_sub(&kind.text, &b.name, &["delete", "replace", "hash"]);
                        false
                    }
                };
                if ok {
                    actions.push(KeyAction {
                        op: op.to_string(),
                        key: b.args[0].text.clone(),
                        value: b.args.get(1).map(|t| t.text.clone()).unwrap_or_default(),
                    });
                }
            }
            if kind.text == "query" {
                FilterAction::Query { actions }
            } else {
                FilterAction::Cookie { actions }
            }
        }
        k if FILTERS.contains(&k) => return None,
        _ => {
            diags.unknown_sub("format filter", kind, FILTERS);
            return None;
        }
    };
    if l.block.is_some() && !matches!(kind.text.as_str(), "ip_mask" | "query" | "cookie") {
        diags.push(kind.error(format!("the {} filter takes no block", kind.text)));
        return None;
    }
    Some(FieldFilter { field, action })
}

/// `sampling { interval <duration>; first <n>; thereafter <n> }` (Caddy's defaults for
/// what is left out: 1s, 100, 100).
fn sampling(line: &Directive, diags: &mut Diags) -> Option<crate::model::LogSampling> {
    let mut s = crate::model::LogSampling {
        interval_ms: 1000,
        first: 100,
        thereafter: 100,
    };
    let before = diags.error_count();
    for l in block_lines(&line.block) {
        let name = l.name.text.as_str();
        if !matches!(name, "interval" | "first" | "thereafter") {
            diags.unknown_sub("sampling", &l.name, &["interval", "first", "thereafter"]);
            continue;
        }
        if !diags.arity(l, 0, 1, 1, &format!("{name} <value>")) {
            continue;
        }
        match name {
            "interval" => {
                if let Some(v) = diags.duration(&l.args[0]).filter(|v| *v > 0) {
                    s.interval_ms = v;
                }
            }
            _ => {
                if let Some(n) = diags.number::<u64>(&l.args[0], "count") {
                    if name == "first" {
                        s.first = n;
                    } else {
                        s.thereafter = n;
                    }
                }
            }
        }
    }
    (diags.error_count() == before).then_some(s)
}

fn bits(t: &crate::lexer::Token, max: u8, diags: &mut Diags) -> Option<u8> {
    let v = diags.number::<u8>(t, "prefix length")?;
    if v > max {
        diags.push(t.error(format!("prefix length {v} is longer than {max} bits")));
        return None;
    }
    Some(v)
}

fn output(line: &Directive, diags: &mut Diags) -> Option<LogOutput> {
    let usage = "output stdout|stderr|discard|file <path>|net <address>";
    if !diags.arity(line, 0, 1, 2, usage) {
        return None;
    }
    let kind = line.args[0].text.as_str();
    let simple = match kind {
        "stdout" => Some(LogOutput::Stdout),
        "stderr" => Some(LogOutput::Stderr),
        "discard" => Some(LogOutput::Discard),
        _ => None,
    };
    if let Some(o) = simple {
        if line.args.len() > 1 || line.block.is_some() {
            diags.push(line.args[0].error(format!("'output {kind}' takes no further arguments")));
            return None;
        }
        return Some(o);
    }
    let Some(target) = line.args.get(1) else {
        diags.push(line.args[0].error(format!(
            "'output {kind}' needs a {}",
            if kind == "net" {
                "network address"
            } else {
                "path"
            }
        )));
        return None;
    };
    match kind {
        "file" => {
            let (mut roll_size, mut roll_keep, mut roll_keep_for_ms, mut mode) =
                (100 * 1024 * 1024, 10, 90 * 24 * 3600 * 1000, 0o600);
            for o in block_lines(&line.block) {
                match o.name.text.as_str() {
                    "roll_size" => {
                        if diags.arity(o, 0, 1, 1, "roll_size <size>") {
                            if let Some(v) = diags.size(&o.args[0]) {
                                roll_size = v;
                            }
                        }
                    }
                    "roll_keep" => {
                        if diags.arity(o, 0, 1, 1, "roll_keep <count>") {
                            if let Some(v) = diags.number::<u32>(&o.args[0], "count") {
                                roll_keep = v;
                            }
                        }
                    }
                    "roll_keep_for" => {
                        if diags.arity(o, 0, 1, 1, "roll_keep_for <duration>") {
                            if let Some(v) = diags.duration(&o.args[0]) {
                                roll_keep_for_ms = v;
                            }
                        }
                    }
                    "roll_disabled" => {
                        if diags.arity(o, 0, 0, 0, "roll_disabled") {
                            roll_size = 0;
                        }
                    }
                    // Rolled files are never compressed, so this is what happens anyway.
                    "roll_uncompressed" => {
                        diags.arity(o, 0, 0, 0, "roll_uncompressed");
                    }
                    "mode" => {
                        if diags.arity(o, 0, 1, 1, "mode <octal>") {
                            match u32::from_str_radix(&o.args[0].text, 8) {
                                Ok(m) if m <= 0o777 => mode = m,
                                _ => diags.push(
                                    o.args[0]
                                        .error(format!("invalid file mode '{}'", o.args[0].text))
                                        .with_help("an octal mode such as 0640"),
                                ),
                            }
                        }
                    }
                    _ => diags.unknown_sub("output file", &o.name, FILE_OPTIONS),
                }
            }
            Some(LogOutput::File {
                path: target.text.clone(),
                roll_size,
                roll_keep,
                roll_keep_for_ms,
                mode,
            })
        }
        "net" => {
            let mut dial_timeout_ms = 10_000;
            let mut soft_start = false;
            for o in block_lines(&line.block) {
                match o.name.text.as_str() {
                    "dial_timeout" => {
                        if diags.arity(o, 0, 1, 1, "dial_timeout <duration>") {
                            if let Some(v) = diags.duration(&o.args[0]) {
                                dial_timeout_ms = v;
                            }
                        }
                    }
                    "soft_start" => {
                        if diags.arity(o, 0, 0, 0, "soft_start") {
                            soft_start = true;
                        }
                    }
                    _ => diags.unknown_sub("output net", &o.name, &["dial_timeout", "soft_start"]),
                }
            }
            let a = target.text.as_str();
            let ok = a.strip_prefix("unix/").is_some_and(|p| !p.is_empty())
                || a.trim_start_matches("tcp/")
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                diags.push(
                    target
                        .error(format!("invalid log address '{a}'"))
                        .with_help("use host:port or unix//path/to/socket"),
                );
                return None;
            }
            Some(LogOutput::Net {
                address: a.trim_start_matches("tcp/").to_string(),
                dial_timeout_ms,
                soft_start,
            })
        }
        other => {
            diags.push(
                line.args[0]
                    .error(format!("unknown log output '{other}'"))
                    .with_help("use stdout, stderr, discard, file or net"),
            );
            None
        }
    }
}
