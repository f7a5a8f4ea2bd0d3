//! Load-balancing policies (Caddy's set): random, random_choose, round_robin,
//! weighted_round_robin, least_conn, first, ip_hash, client_ip_hash, uri_hash, header,
//! cookie and query (the last three with a fallback policy).
//! Hash policies use rendezvous hashing so a backend going down only moves its own keys.

use super::{ProxyHandler, UpstreamState};
use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_config::model::LbPolicy;
use rand::Rng;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// The cookie value that names upstream `dial` (stable, not reversible without the secret).
pub fn cookie_value(dial: &str, secret: Option<&str>) -> String {
    format!(
        "{:016x}",
        hash_of(&[secret.unwrap_or("").as_bytes(), dial.as_bytes()])
    )
}

pub(super) fn select(
    h: &ProxyHandler,
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
) -> Option<Arc<UpstreamState>> {
    let list = h.current(ctx);
    let avail: Vec<usize> = (0..list.len())
        .filter(|&i| h.available(&list[i], ctx))
        .collect();
    if avail.is_empty() {
        return None;
    }
    let i = choose(&h.policy, h, &list, req, ctx, &avail)?;
    list.get(i).cloned()
}

fn random(avail: &[usize]) -> usize {
    avail[rand::thread_rng().gen_range(0..avail.len())]
}

/// Rendezvous hashing: the available upstream whose hash with `key` is highest.
fn by_key(list: &[Arc<UpstreamState>], key: &[u8], avail: &[usize]) -> usize {
    *avail
        .iter()
        .max_by_key(|&&i| hash_of(&[key, list[i].dial.as_bytes()]))
        .unwrap_or(&avail[0])
}

fn least(list: &[Arc<UpstreamState>], cands: &[usize]) -> usize {
    let min = cands
        .iter()
        .map(|&i| list[i].active.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let ties: Vec<usize> = cands
        .iter()
        .copied()
        .filter(|&i| list[i].active.load(Ordering::Relaxed) == min)
        .collect();
    random(&ties)
}

/// The choice of `policy` among the available upstreams (a fallback policy is chosen
/// the same way, among the same upstreams).
fn choose(
    policy: &LbPolicy,
    h: &ProxyHandler,
    list: &[Arc<UpstreamState>],
    req: &dyn HttpRequest,
    ctx: &mut RequestContext,
    avail: &[usize],
) -> Option<usize> {
    let fall_back = |fallback: &Option<Box<LbPolicy>>, ctx: &mut RequestContext| match fallback {
        Some(f) => choose(f, h, list, req, ctx, avail),
        None => Some(random(avail)),
    };
    Some(match policy {
        LbPolicy::Random
        | LbPolicy::RandomChoose { .. }
        | LbPolicy::RoundRobin
        | LbPolicy::WeightedRoundRobin { .. }
        | LbPolicy::LeastConn
        | LbPolicy::First
        | LbPolicy::IpHash => {
            choose_by_connection(policy, list, &h.rr, ctx.conn.remote.ip(), avail)?
        }
        LbPolicy::ClientIpHash => {
            let ip = ctx.client_ip().to_string();
            by_key(list, ip.as_bytes(), avail)
        }
        LbPolicy::UriHash => {
            let mut key = req.path().to_string();
            if let Some(q) = req.query() {
                key.push('?');
                key.push_str(q);
            }
            by_key(list, key.as_bytes(), avail)
        }
        LbPolicy::Header { field, fallback } => match req.header(field) {
            Some(v) => by_key(list, v.as_bytes(), avail),
            None => fall_back(fallback, ctx)?,
        },
        LbPolicy::Query { key, fallback } => {
            let value = req.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == key).then_some(v)
                })
            });
            match value {
                Some(v) => by_key(list, v.as_bytes(), avail),
                None => fall_back(fallback, ctx)?,
            }
        }
        LbPolicy::Cookie {
            name,
            secret,
            fallback,
        } => {
            let mut wanted: Option<String> = None;
            req.any_header_value("cookie", &mut |v| {
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name {
                            wanted = Some(val.to_string());
                            return true;
                        }
                    }
                }
                false
            });
            let hit = wanted.and_then(|w| {
                avail
                    .iter()
                    .copied()
                    .find(|&i| cookie_value(&list[i].dial, secret.as_deref()) == w)
            });
            match hit {
                Some(i) => i,
                None => {
                    let i = fall_back(fallback, ctx)?;
                    ctx.resp.set_cookie = Some(format!(
                        "{name}={}; Path=/",
                        cookie_value(&list[i].dial, secret.as_deref())
                    ));
                    i
                }
            }
        }
    })
}

/// The choice of a policy that needs no request, only the connection: random,
/// random_choose, round_robin, weighted_round_robin, least_conn, first and ip_hash
/// (`None` for the others). Layer-4 proxies choose with this too.
pub(crate) fn choose_by_connection(
    policy: &LbPolicy,
    list: &[Arc<UpstreamState>],
    rr: &std::sync::atomic::AtomicUsize,
    remote: std::net::IpAddr,
    avail: &[usize],
) -> Option<usize> {
    if avail.is_empty() {
        return None;
    }
    let n = list.len();
    Some(match policy {
        LbPolicy::Random => random(avail),
        LbPolicy::RandomChoose { choose } => {
            let mut pool = avail.to_vec();
            let mut picked = Vec::new();
            let mut rng = rand::thread_rng();
            while picked.len() < (*choose as usize).max(1) && !pool.is_empty() {
                picked.push(pool.swap_remove(rng.gen_range(0..pool.len())));
            }
            least(list, &picked)
        }
        LbPolicy::RoundRobin => {
            // Advance past unavailable upstreams so the rotation stays fair.
            let mut chosen = avail[0];
            for _ in 0..n {
                let i = rr.fetch_add(1, Ordering::Relaxed) % n;
                if avail.contains(&i) {
                    chosen = i;
                    break;
                }
            }
            chosen
        }
        LbPolicy::WeightedRoundRobin { weights } => {
            // Each turn of the counter is one slot of a cycle of `total` slots, upstream
            // i owning `weights[i]` consecutive ones; unavailable owners pass the turn on.
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let owner = |slot: u64| {
                let mut left = slot;
                weights.iter().position(|w| {
                    let w = u64::from(*w);
                    if left < w {
                        true
                    } else {
                        left -= w;
                        false
                    }
                })
            };
            let mut chosen = None;
            for _ in 0..total {
                let slot = rr.fetch_add(1, Ordering::Relaxed) as u64 % total.max(1);
                if let Some(i) = owner(slot).filter(|i| avail.contains(i)) {
                    chosen = Some(i);
                    break;
                }
            }
            chosen?
        }
        LbPolicy::LeastConn => least(list, avail),
        LbPolicy::First => avail[0],
        LbPolicy::IpHash | LbPolicy::ClientIpHash => {
            let ip = remote.to_string();
            by_key(list, ip.as_bytes(), avail)
        }
        _ => return None,
    })
}
