//! The `log` directive (site access logs) and the global `log` option (Dwaar's own log).

use super::args::{block_lines, Diags};
use crate::model::{LogConfig, LogFormat, LogLevel, LogOutput};
use crate::parser::Directive;

const SUBDIRECTIVES: &[&str] = &["output", "format", "level", "mask_ip"];
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

/// Parses a `log [name] { ... }` block. The name is a label, as in Caddy: a site has
/// one access log, so it changes nothing.
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
    let mut c = LogConfig::default();
    let errors_before = diags.error_count();
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "output" => {
                if let Some(o) = output(line, diags) {
                    c.output = o;
                }
            }
            "format" => {
                if diags.arity(line, 0, 1, 1, "format json|console|combined") {
                    match line.args[0].text.as_str() {
                        "json" => c.format = LogFormat::Json,
                        "console" => c.format = LogFormat::Console,
                        "combined" => c.format = LogFormat::Combined,
                        other => diags.push(
                            line.args[0]
                                .error(format!("unknown log format '{other}'"))
                                .with_help("use json, console or combined"),
                        ),
                    }
                    if line.block.is_some() {
                        diags.push(line.name.error("'format' takes no block here"));
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
