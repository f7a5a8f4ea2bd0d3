//! Load-balancing policies (Caddy's set): random, random_choose, round_robin,
//! least_conn, first, ip_hash, client_ip_hash, uri_hash, header and cookie.
//! Hash policies use rendezvous hashing so a backend going down only moves its own keys.

use super::ProxyHandler;
use crate::context::RequestContext;
use crate::request::HttpRequest;
use dwaar_config::model::LbPolicy;
use rand::Rng;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

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
) -> Option<usize> {
    let n = h.upstreams.len();
    if n == 0 {
        return None;
    }
    let avail: Vec<usize> = (0..n).filter(|&i| h.available(i, ctx)).collect();
    if avail.is_empty() {
        return None;
    }
    let random = |avail: &[usize]| avail[rand::thread_rng().gen_range(0..avail.len())];
    let by_key = |key: &[u8], avail: &[usize]| -> usize {
        *avail
            .iter()
            .max_by_key(|&&i| hash_of(&[key, h.upstreams[i].dial.as_bytes()]))
            .unwrap_or(&avail[0])
    };
    let least = |cands: &[usize]| -> usize {
        let min = cands
            .iter()
            .map(|&i| h.upstreams[i].active.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let ties: Vec<usize> = cands
            .iter()
            .copied()
            .filter(|&i| h.upstreams[i].active.load(Ordering::Relaxed) == min)
            .collect();
        random(&ties)
    };
    Some(match &h.policy {
        LbPolicy::Random => random(&avail),
        LbPolicy::RandomChoose { choose } => {
            let mut pool = avail.clone();
            let mut picked = Vec::new();
            let mut rng = rand::thread_rng();
            while picked.len() < (*choose as usize).max(1) && !pool.is_empty() {
                picked.push(pool.swap_remove(rng.gen_range(0..pool.len())));
            }
            least(&picked)
        }
        LbPolicy::RoundRobin => {
            // Advance past unavailable upstreams so the rotation stays fair.
            let mut chosen = avail[0];
            for _ in 0..n {
                let i = h.rr.fetch_add(1, Ordering::Relaxed) % n;
                if avail.contains(&i) {
                    chosen = i;
                    break;
                }
            }
            chosen
        }
        LbPolicy::LeastConn => least(&avail),
        LbPolicy::First => avail[0],
        LbPolicy::IpHash => {
            let ip = ctx.conn.remote.ip().to_string();
            by_key(ip.as_bytes(), &avail)
        }
        LbPolicy::ClientIpHash => {
            let ip = ctx.client_ip().to_string();
            by_key(ip.as_bytes(), &avail)
        }
        LbPolicy::UriHash => {
            let mut key = req.path().to_string();
            if let Some(q) = req.query() {
                key.push('?');
                key.push_str(q);
            }
            by_key(key.as_bytes(), &avail)
        }
        LbPolicy::Header { field } => match req.header(field) {
            Some(v) => by_key(v.as_bytes(), &avail),
            None => random(&avail),
        },
        LbPolicy::Cookie { name, secret } => {
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
                    .find(|&i| cookie_value(&h.upstreams[i].dial, secret.as_deref()) == w)
            });
            match hit {
                Some(i) => i,
                None => {
                    let i = random(&avail);
                    ctx.resp.set_cookie = Some(format!(
                        "{name}={}; Path=/",
                        cookie_value(&h.upstreams[i].dial, secret.as_deref())
                    ));
                    i
                }
            }
        }
    })
}
