//! Upstream attempts: one loop for every kind of upstream (HTTP/1 pooled or direct,
//! HTTP/2, FastCGI) and every front-end.
//!
//! [`pick`] chooses an upstream by the handler's load-balancing policy, skipping those
//! already tried and unhealthy ones, and waits within `lb_try_duration` when none is
//! available. The chosen upstream is claimed: an [`UpstreamClaim`] in the context counts
//! the request in the upstream's in-flight requests (what `least_conn` and
//! `unhealthy_request_count` read) until it is dropped, so no path can forget to release
//! it. [`connect_failed`] records a failure that happened before the request reached
//! the upstream and says whether another attempt is allowed; [`passive_check`] judges a
//! response by the handler's passive health rules.

use crate::context::{RequestContext, UpstreamFailure};
use crate::request::HttpRequest;
use crate::upstream::{ProxyHandler, UpstreamState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request in flight to an upstream: counted in its `active` requests until dropped.
#[derive(Debug)]
pub struct UpstreamClaim(Arc<UpstreamState>);

impl UpstreamClaim {
    fn new(up: Arc<UpstreamState>) -> UpstreamClaim {
        up.active.fetch_add(1, Ordering::Relaxed);
        UpstreamClaim(up)
    }
}

impl Drop for UpstreamClaim {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request is on its way to `up`: claimed (in-flight) until [`release`] or the
/// context is dropped, one more attempt, timed from now.
#[inline]
pub fn claim(ctx: &mut RequestContext, up: Arc<UpstreamState>) {
    ctx.attempt.claim = Some(UpstreamClaim::new(up.clone()));
    ctx.attempt.upstream = Some(up);
    ctx.attempt.count += 1;
    let now = Instant::now();
    ctx.attempt.started = Some(now);
    ctx.attempt.first_started.get_or_insert(now);
}

/// The request no longer occupies its upstream (its exchange ended or failed).
#[inline]
pub fn release(ctx: &mut RequestContext) {
    ctx.attempt.claim = None;
}

/// The shortest pause between two looks for an available upstream.
const MIN_WAIT: Duration = Duration::from_millis(10);
/// How long a request waits for an upstream below `max_conns_per_host` before 503.
const MAX_CONNS_WAIT: Duration = Duration::from_secs(30);

/// Picks and claims the next upstream for this request; `None` when none is available
/// (every one tried, unhealthy or at its request limit) even after waiting up to
/// `lb_try_duration` for one. Before a retry, waits `lb_try_interval` when
/// `lb_try_duration` is set.
pub async fn pick(
    p: &ProxyHandler,
    req: &(dyn HttpRequest + Sync),
    ctx: &mut RequestContext,
) -> Option<Arc<UpstreamState>> {
    if ctx.attempt.count > 0 && !p.try_interval.is_zero() && !p.try_duration.is_zero() {
        tokio::time::sleep(p.try_interval).await;
    }
    let start = ctx.start.unwrap_or_else(Instant::now);
    p.render_upstreams(req, ctx).await;
    loop {
        if let Some(up) = p.select(req, ctx) {
            ctx.attempt.tried.push(crate::upstream::tried_id(&up));
            claim(ctx, up.clone());
            return Some(up);
        }
        // `max_conns_per_host`: an upstream that is only busy frees up soon; wait for it
        // (as a client of Caddy's transport waits for a connection), within a bound.
        if p.busy_only(ctx) && start.elapsed() < MAX_CONNS_WAIT {
            tokio::time::sleep(MIN_WAIT).await;
            continue;
        }
        // With lb_try_duration, keep looking (any upstream, again) until it runs out.
        if !p.try_duration.is_zero() && start.elapsed() + p.try_interval < p.try_duration {
            ctx.attempt.tried.clear();
            tokio::time::sleep(p.try_interval.max(MIN_WAIT)).await;
            continue;
        }
        ctx.attempt.failure = UpstreamFailure::NoneAvailable;
        return None;
    }
}

/// The connection to the claimed upstream failed before the request reached it
/// (nothing was processed, so a retry is always safe): passive health counts it, the
/// claim is released, and the answer says whether another attempt is allowed by
/// `lb_retries` / `lb_try_duration`.
pub fn connect_failed(p: &ProxyHandler, ctx: &mut RequestContext, timed_out: bool) -> bool {
    ctx.attempt.failure = if timed_out {
        UpstreamFailure::Timeout
    } else {
        UpstreamFailure::Connect
    };
    if let (Some(passive), Some(u)) = (&p.passive, &ctx.attempt.upstream) {
        u.record_failure(passive);
    }
    release(ctx);
    let start = ctx.start.unwrap_or_else(Instant::now);
    if !p.may_retry(ctx.attempt.count, start) {
        return false;
    }
    let n = p.current(ctx).len();
    if ctx.attempt.tried.len() >= n && !p.try_duration.is_zero() {
        // Every upstream failed once; within lb_try_duration they may be tried again.
        ctx.attempt.tried.clear();
    }
    ctx.attempt.tried.len() < n
}

/// The upstream failed after it had the request, before any of the response reached the
/// client: passive health counts it, the claim is released, and the answer says whether
/// the request goes to another upstream (`lb_retries`/`lb_try_duration` allow it, it
/// is a `GET` or matches `lb_retry_match`, and an untried upstream remains). The caller
/// must be able to send the request again (its body kept, or none).
pub fn sent_failed(p: &ProxyHandler, req: &dyn HttpRequest, ctx: &mut RequestContext) -> bool {
    count_failure(ctx);
    release(ctx);
    let start = ctx.start.unwrap_or_else(Instant::now);
    if !p.may_retry(ctx.attempt.count, start) || !p.retry_after_sent(req, ctx) {
        return false;
    }
    let n = p.current(ctx).len();
    if ctx.attempt.tried.len() >= n && !p.try_duration.is_zero() {
        ctx.attempt.tried.clear();
    }
    ctx.attempt.tried.len() < n
}

/// The upstream failed after it had the request: passive health counts it.
pub fn count_failure(ctx: &RequestContext) {
    if let (Some(p), Some(u)) = (&ctx.proxy, &ctx.attempt.upstream) {
        if let Some(passive) = &p.passive {
            u.record_failure(passive);
        }
    }
}

/// Passive health: a response status or latency that counts as a failure. Also marks
/// the moment the response head arrived (`upstream_duration`).
#[inline]
pub fn passive_check(ctx: &mut RequestContext, code: u16) {
    ctx.attempt.duration = ctx.attempt.sent.map(|t| t.elapsed());
    if let (Some(p), Some(u)) = (&ctx.proxy, &ctx.attempt.upstream) {
        if let Some(passive) = &p.passive {
            let bad_status = passive
                .unhealthy_status
                .iter()
                .any(|s| status_matches(s, code));
            let slow = match (passive.unhealthy_latency_ms, ctx.attempt.started) {
                (Some(limit), Some(t)) => t.elapsed().as_millis() as u64 >= limit,
                _ => false,
            };
            if bad_status || slow {
                u.record_failure(passive);
            }
        }
    }
}

/// `502`, `5xx`: whether a status matches a passive-health pattern.
/// Whether `code` is `pattern` (`404`) or in its class (`4xx`).
pub fn status_matches(pattern: &str, code: u16) -> bool {
    if let Some(class) = pattern.strip_suffix("xx") {
        class
            .parse::<u16>()
            .map(|c| c == code / 100)
            .unwrap_or(false)
    } else {
        pattern.parse::<u16>().map(|c| c == code).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patterns() {
        assert!(status_matches("5xx", 503));
        assert!(!status_matches("5xx", 404));
        assert!(status_matches("404", 404));
        assert!(!status_matches("x", 404));
    }
}
