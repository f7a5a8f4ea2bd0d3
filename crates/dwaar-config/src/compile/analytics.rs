//! `analytics` (site block and global option) and `metrics` (handler directive).

use super::args::{block_lines, Diags};
use crate::model::{GlobalAnalytics, SiteAnalytics};
use crate::parser::Directive;

const SITE_SUBS: &[&str] = &["exclude_paths", "respect_dnt", "sample", "dashboard"];
const GLOBAL_SUBS: &[&str] = &["retention", "flush_interval", "geoip"];

fn on_off(d: &Directive, diags: &mut Diags) -> Option<bool> {
    if !diags.arity(d, 0, 1, 1, &format!("{} on|off", d.name.text)) {
        return None;
    }
    match d.args[0].text.as_str() {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => {
            diags.unknown_sub(&d.name.text, &d.args[0], &["on", "off"]);
            None
        }
    }
}

/// A sample rate: `0.25`, `25%`; in parts per thousand (1..=1000).
fn sample(d: &Directive, diags: &mut Diags) -> Option<u16> {
    if !diags.arity(d, 0, 1, 1, "sample <rate>  (0.1 or 10%)") {
        return None;
    }
    let t = &d.args[0];
    let v = match t.text.strip_suffix('%') {
        Some(p) => p.parse::<f64>().ok().map(|p| p / 100.0),
        None => t.text.parse::<f64>().ok(),
    };
    match v {
        Some(v) if v > 0.0 && v <= 1.0 => Some(((v * 1000.0).round() as u16).max(1)),
        _ => {
            diags.push(
                t.error(format!("invalid sample rate '{}'", t.text))
                    .with_help("a fraction above 0 and at most 1 (0.1) or a percentage (10%)"),
            );
            None
        }
    }
}

/// `analytics [on|off] { exclude_paths <path>...; respect_dnt on|off; sample <rate>;
/// dashboard <path> }` in a site block.
pub fn site(d: &Directive, diags: &mut Diags) -> Option<SiteAnalytics> {
    if !diags.arity(d, 0, 0, 1, "analytics [on|off] { ... }") {
        return None;
    }
    let mut a = SiteAnalytics::default();
    if let Some(t) = d.args.first() {
        match t.text.as_str() {
            "on" => {}
            "off" => {
                a.enabled = false;
                if d.block.is_some() {
                    diags.push(t.error("'analytics off' does not take a block"));
                }
                return Some(a);
            }
            _ => {
                diags.unknown_sub("analytics", t, &["on", "off"]);
                return None;
            }
        }
    }
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "exclude_paths" => {
                if diags.arity(line, 0, 1, usize::MAX, "exclude_paths <path>...") {
                    for p in &line.args {
                        if !p.text.starts_with('/') {
                            diags.push(
                                p.error(format!("path '{}' must start with '/'", p.text))
                                    .with_help("exclude_paths /admin/* /health"),
                            );
                        } else {
                            a.exclude_paths.push(p.text.clone());
                        }
                    }
                }
            }
            "respect_dnt" => {
                if let Some(v) = on_off(line, diags) {
                    a.respect_dnt = v;
                }
            }
            "sample" => {
                if let Some(v) = sample(line, diags) {
                    a.sample_permille = v;
                }
            }
            "dashboard" => {
                if diags.arity(line, 0, 1, 1, "dashboard <path>") {
                    let p = &line.args[0];
                    let path = p.text.trim_end_matches('/');
                    if !p.text.starts_with('/') || path.is_empty() || path.contains(['*', '?', ' '])
                    {
                        diags.push(
                            p.error(format!("invalid dashboard path '{}'", p.text))
                                .with_help("a plain path such as /stats"),
                        );
                    } else if path.starts_with("/_dwaar") {
                        diags.push(p.error("paths under /_dwaar are Dwaar's own"));
                    } else {
                        a.dashboard = Some(path.to_string());
                    }
                }
            }
            _ => diags.unknown_sub("analytics", &line.name, SITE_SUBS),
        }
    }
    Some(a)
}

/// The global `analytics { retention <days>d; flush_interval <dur>; geoip <csv> }`.
pub fn global(d: &Directive, g: &mut GlobalAnalytics, diags: &mut Diags) {
    if !diags.arity(d, 0, 0, 0, "analytics { retention 400d; geoip <file> }") {
        return;
    }
    for line in block_lines(&d.block) {
        match line.name.text.as_str() {
            "retention" => {
                if diags.arity(line, 0, 1, 1, "retention <days>d") {
                    if let Some(ms) = diags.duration(&line.args[0]) {
                        let days = ms / 86_400_000;
                        if days == 0 || days > 36_500 {
                            diags.push(
                                line.args[0]
                                    .error("retention must be between 1 day and 100 years")
                                    .with_help("retention 400d"),
                            );
                        } else {
                            g.retention_days = days as u32;
                        }
                    }
                }
            }
            "flush_interval" => {
                if diags.arity(line, 0, 1, 1, "flush_interval <duration>") {
                    if let Some(ms) = diags.duration(&line.args[0]) {
                        if !(100..=600_000).contains(&ms) {
                            diags.push(
                                line.args[0].error("flush_interval must be between 100ms and 10m"),
                            );
                        } else {
                            g.flush_interval_ms = ms;
                        }
                    }
                }
            }
            "geoip" => {
                if diags.arity(line, 0, 1, 1, "geoip <ip-to-country.csv>") {
                    g.geoip = Some(line.args[0].text.clone());
                }
            }
            _ => diags.unknown_sub("analytics", &line.name, GLOBAL_SUBS),
        }
    }
}
