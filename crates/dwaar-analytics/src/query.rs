//! Answers to the analytics API: a site's report over a range (totals, a time series,
//! top lists, percentiles, live visitors), the list of sites, and the CSV export.
//! Ranges are answered by merging stored buckets, so visitors and percentiles are
//! exact to their sketches over any range.

use crate::bucket::{Bucket, Metric, DIGESTS, LISTS};
use crate::store::{Store, DAY, HOUR, MINUTE, MINUTE_RETENTION};
use serde_json::{json, Value};

/// Points a series may have.
pub const MAX_POINTS: i64 = 3000;
/// Rows each top list returns.
pub const TOP: usize = 10;

/// A parsed `?from=&to=&granularity=` request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
    pub res: i64,
}

/// A time: Unix seconds, or relative to `now` (`-24h`, `-7d`, `-30m`, `now`).
fn parse_time(v: &str, now: i64) -> Result<i64, String> {
    let v = v.trim();
    if v == "now" {
        return Ok(now);
    }
    if let Some(rel) = v.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = num.parse().map_err(|_| format!("bad time `{v}`"))?;
        let mult = match unit {
            "s" => 1,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            _ => return Err(format!("bad time `{v}`: use s, m, h or d")),
        };
        return Ok(now - n.saturating_mul(mult));
    }
    v.parse()
        .map_err(|_| format!("bad time `{v}`: Unix seconds or -24h style"))
}

impl Range {
    /// From the query string; defaults to the last 24 hours by hour.
    pub fn parse(query: &str, now: i64) -> Result<Range, String> {
        let (mut from, mut to, mut gran) = (None, None, None);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "from" => from = Some(parse_time(v, now)?),
                "to" => to = Some(parse_time(v, now)?),
                "granularity" => gran = Some(v),
                _ => {}
            }
        }
        let to = to.unwrap_or(now);
        let from = from.unwrap_or(to - DAY);
        if from >= to {
            return Err("`from` must be before `to`".into());
        }
        let span = to - from;
        let res = match gran {
            Some("minute") => MINUTE,
            Some("hour") => HOUR,
            Some("day") => DAY,
            Some(g) => return Err(format!("unknown granularity `{g}`: minute, hour or day")),
            None if span <= 3 * HOUR => MINUTE,
            None if span <= 14 * DAY => HOUR,
            None => DAY,
        };
        let from = from - from.rem_euclid(res);
        if (to - from) / res > MAX_POINTS {
            return Err(format!(
                "{} points is too many; use a coarser granularity",
                (to - from) / res
            ));
        }
        if res == MINUTE && from < now - MINUTE_RETENTION {
            return Err("minute data is kept for 2 days; use hour or day".into());
        }
        Ok(Range { from, to, res })
    }
}

fn round(v: Option<f64>, places: i32) -> Value {
    match v {
        Some(v) => {
            let m = 10f64.powi(places);
            json!((v * m).round() / m)
        }
        None => Value::Null,
    }
}

/// The JSON report of `site` over `r`.
pub fn report(store: &Store, site: &str, r: Range, now: i64) -> Result<Value, String> {
    let rows = store.range(site, r.res, r.from, r.to)?;
    let mut total = Bucket::default();
    let mut series = Vec::with_capacity(((r.to - r.from) / r.res) as usize + 1);
    let mut it = rows.iter().peekable();
    let mut t = r.from;
    while t < r.to {
        let b = match it.peek() {
            Some((s, _)) if *s == t => it.next().map(|x| &x.1),
            _ => None,
        };
        match b {
            Some(b) => {
                total.merge(b);
                series.push(json!({"t": t, "views": b.views, "js_views": b.js_views,
                    "visitors": b.visitors.estimate(), "requests": b.requests}));
            }
            None => series
                .push(json!({"t": t, "views": 0, "js_views": 0, "visitors": 0, "requests": 0})),
        }
        t += r.res;
    }
    let q = |m: Metric, p: f64| total.digests[m as usize].quantile(p);
    let mut top = serde_json::Map::new();
    for (i, name) in LISTS.iter().enumerate() {
        let rows: Vec<Value> = total.lists[i]
            .top(TOP)
            .into_iter()
            .map(|(k, c)| json!({"key": k, "count": c}))
            .collect();
        top.insert((*name).into(), Value::Array(rows));
    }
    let s = total.status;
    Ok(json!({
        "site": site,
        "from": r.from,
        "to": r.to,
        "granularity": match r.res { MINUTE => "minute", HOUR => "hour", _ => "day" },
        "live_visitors": live_visitors(store, site, now)?,
        "totals": {
            "views": total.views,
            "js_views": total.js_views,
            "visitors": total.visitors.estimate(),
            "requests": total.requests,
            "bytes": total.bytes,
            "status": {"1xx": s[0], "2xx": s[1], "3xx": s[2], "4xx": s[3], "5xx": s[4]},
            "latency_ms": {
                "p50": round(q(Metric::LatencyMs, 0.5), 2),
                "p90": round(q(Metric::LatencyMs, 0.9), 2),
                "p99": round(q(Metric::LatencyMs, 0.99), 2),
            },
            "vitals": {
                "lcp_ms": {"p75": round(q(Metric::LcpMs, 0.75), 0)},
                "cls": {"p75": round(q(Metric::Cls, 0.75), 3)},
                "inp_ms": {"p75": round(q(Metric::InpMs, 0.75), 0)},
            },
            "time_on_page_s": {"p50": round(q(Metric::TimeOnPageS, 0.5), 1)},
        },
        "series": series,
        "top": top,
    }))
}

/// Distinct visitors in the last five minutes.
pub fn live_visitors(store: &Store, site: &str, now: i64) -> Result<u64, String> {
    let mut b = Bucket::default();
    for (_, x) in store.range(site, MINUTE, now - 5 * MINUTE, now + MINUTE)? {
        b.visitors.merge(&x.visitors);
    }
    Ok(b.visitors.estimate())
}

/// Every site with data or configured, with its last 24 hours.
pub fn sites(store: &Store, configured: &[String], now: i64) -> Result<Value, String> {
    let mut names: Vec<String> = store.sites()?;
    for c in configured {
        if !names.contains(c) {
            names.push(c.clone());
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let mut b = Bucket::default();
        for (_, x) in store.range(&n, HOUR, now - DAY - HOUR, now + HOUR)? {
            b.merge(&x);
        }
        out.push(json!({"site": n, "views_24h": b.views, "visitors_24h": b.visitors.estimate()}));
    }
    Ok(json!({ "sites": out }))
}

/// The range as CSV: one line per interval.
pub fn csv(store: &Store, site: &str, r: Range) -> Result<String, String> {
    let mut out = String::from(
        "start,views,js_views,visitors,requests,bytes,status_1xx,status_2xx,status_3xx,status_4xx,status_5xx",
    );
    for d in DIGESTS {
        out.push_str(&format!(",{d}_p50,{d}_p90"));
    }
    out.push('\n');
    for (t, b) in store.range(site, r.res, r.from, r.to)? {
        out.push_str(&format!(
            "{t},{},{},{},{},{}",
            b.views,
            b.js_views,
            b.visitors.estimate(),
            b.requests,
            b.bytes
        ));
        for s in b.status {
            out.push_str(&format!(",{s}"));
        }
        for d in &b.digests {
            for p in [0.5, 0.9] {
                match d.quantile(p) {
                    Some(v) => out.push_str(&format!(",{v:.3}")),
                    None => out.push(','),
                }
            }
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hll::mix64;

    #[test]
    fn ranges_parse_and_refuse() {
        let now = 1_800_000_000;
        let r = Range::parse("from=-1h", now).unwrap();
        assert_eq!((r.res, r.to), (MINUTE, now));
        assert_eq!(Range::parse("", now).unwrap().res, HOUR);
        assert_eq!(Range::parse("from=-90d", now).unwrap().res, DAY);
        assert!(Range::parse("from=-400d&granularity=hour", now).is_err());
        assert!(Range::parse("from=10&to=5", now).is_err());
        assert!(Range::parse("granularity=week", now).is_err());
        assert!(Range::parse("from=-5y", now).is_err());
    }

    #[test]
    fn merged_range_counts_visitors_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        let now = 1_800_000_000 - 1_800_000_000 % HOUR;
        // The same 1000 visitors in each of three hours, 10 new ones in the last.
        let mut deltas = Vec::new();
        for h in 0..3 {
            let mut b = Bucket {
                views: 1000,
                ..Default::default()
            };
            for i in 0..1000u64 {
                b.visitors.insert(mix64(i));
            }
            if h == 2 {
                for i in 5000..5010u64 {
                    b.visitors.insert(mix64(i));
                }
            }
            b.digests[Metric::LatencyMs as usize].insert(h as f64);
            deltas.push(b);
        }
        let rows: Vec<(&str, i64, &Bucket)> = deltas
            .iter()
            .enumerate()
            .map(|(h, b)| ("x", now - (3 - h as i64) * HOUR, b))
            .collect();
        s.add(&rows).unwrap();
        let r = Range::parse(
            &format!("from={}&to={now}&granularity=hour", now - 3 * HOUR),
            now,
        )
        .unwrap();
        let rep = report(&s, "x", r, now).unwrap();
        assert_eq!(rep["totals"]["views"], 3000);
        let v = rep["totals"]["visitors"].as_u64().unwrap();
        assert!((990..=1030).contains(&v), "{v}");
        assert_eq!(rep["series"].as_array().unwrap().len(), 3);
        let csv = csv(&s, "x", r).unwrap();
        assert_eq!(csv.lines().count(), 4);
        let sites = sites(&s, &["y".to_string()], now).unwrap();
        assert_eq!(sites["sites"].as_array().unwrap().len(), 2);
    }
}
