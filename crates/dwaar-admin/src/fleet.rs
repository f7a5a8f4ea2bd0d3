//! What the admin API of one instance does for the fleet (`storage redis`):
//!
//! - **Purges**: `DELETE /cache` purges here and publishes the purge on the fleet's
//!   `purge` channel; every other instance applies it (messages carry the sender's id,
//!   so the sender does not purge twice).
//! - **Pushed configs**: `dwaar push` stores a validated Dwaarfile at
//!   `<prefix>:config/current` with a version and announces it on `config`; every
//!   instance loads it like `POST /load` and reports `ok` or the error under
//!   `<prefix>:config/reports` (a hash by instance). A config that fails to load leaves
//!   the instance on its last good one. An instance that starts (or reloads into
//!   `storage redis`) loads the newest pushed config.
//!
//! The subscriptions follow the current config: checked every few seconds.

use dwaar_core::dwaar_fleet::{self, bus, Fleet};
use dwaar_core::server::control::{Control, Purge};
use std::sync::Arc;
use std::time::Duration;

/// This process's id in fleet messages and reports.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!(
            "{}-{}-{:08x}",
            host.trim(),
            std::process::id(),
            rand::random::<u32>()
        )
    })
}

/// The fleet of the current config, if it has `storage redis`.
fn current_fleet(control: &Control) -> Option<Arc<Fleet>> {
    let cfg = control.reloader.current();
    let redis = cfg.global.tls.redis.as_ref()?;
    dwaar_fleet::fleet(redis).ok()
}

/// `host\tpath\tprefix\tsender`, empty fields for "any".
fn encode(p: &Purge) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        p.host.as_deref().unwrap_or(""),
        p.path.as_deref().unwrap_or(""),
        p.prefix.as_deref().unwrap_or(""),
        instance_id()
    )
}

fn decode(msg: &str) -> Option<(Purge, String)> {
    let mut it = msg.split('\t');
    let mut field = || {
        it.next()
            .map(|s| Some(s.to_string()).filter(|s| !s.is_empty()))
    };
    let (host, path, prefix) = (field()?, field()?, field()?);
    let sender = field()??;
    Some((Purge { host, path, prefix }, sender))
}

/// Sends a purge done here to the rest of the fleet (off the async threads).
pub async fn publish_purge(control: &Arc<Control>, p: &Purge) {
    let Some(fleet) = current_fleet(control) else {
        return;
    };
    let msg = encode(p);
    let _ = tokio::task::spawn_blocking(move || bus::publish(&fleet, "purge", &msg)).await;
}

/// Keeps this instance subscribed to its fleet's purges and pushed configs.
pub async fn follow(control: Arc<Control>) {
    let mut last_applied = 0u64;
    loop {
        if let Some(fleet) = current_fleet(&control) {
            let c = control.clone();
            bus::subscribe(
                &fleet,
                "purge",
                Arc::new(move |msg: &str| {
                    if let Some((p, sender)) = decode(msg) {
                        if sender != instance_id() {
                            let n = c.purge_cache(&p);
                            tracing::info!(removed = n, from = sender, "cache purged by the fleet");
                        }
                    }
                }),
            );
            let c = control.clone();
            let f = fleet.clone();
            let applied = Arc::new(std::sync::atomic::AtomicU64::new(last_applied));
            let seen = applied.clone();
            bus::subscribe(
                &fleet,
                "config",
                Arc::new(move |_msg: &str| apply_pushed(&c, &f, &seen)),
            );
            // A config pushed while this instance was away.
            let (c, f) = (control.clone(), fleet.clone());
            let seen = applied.clone();
            let _ = tokio::task::spawn_blocking(move || apply_pushed(&c, &f, &seen)).await;
            last_applied = applied.load(std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Loads the newest pushed config if it is newer than `seen`, and reports the result.
/// The stored value is `<version>\n<config as JSON>`.
fn apply_pushed(control: &Control, fleet: &Fleet, seen: &std::sync::atomic::AtomicU64) {
    use std::sync::atomic::Ordering::Relaxed;
    let stored: Option<String> = fleet
        .with_sync(|c| redis_get(c, &fleet.key("config/current")))
        .ok()
        .flatten();
    let Some((version, json)) = stored.as_deref().and_then(|s| s.split_once('\n')) else {
        return;
    };
    let Ok(version) = version.parse::<u64>() else {
        return;
    };
    if version <= seen.load(Relaxed) {
        return;
    }
    seen.store(version, Relaxed);
    let loaded = serde_json::from_str::<dwaar_config::model::Config>(json)
        .map_err(|e| format!("unreadable: {e}"))
        .and_then(|cfg| control.reloader.load_config(cfg).map_err(|e| e.to_string()));
    let report = match loaded {
        Ok(_) => {
            tracing::info!(version, "loaded the config pushed to the fleet");
            format!("{version} ok")
        }
        Err(e) => {
            tracing::error!(
                version,
                "the config pushed to the fleet does not load here; keeping the current one: {e}"
            );
            format!("{version} error: {e}")
        }
    };
    let _ = fleet.with_sync(|c| {
        dwaar_fleet::redis::cmd("HSET")
            .arg(fleet.key("config/reports"))
            .arg(instance_id())
            .arg(&report)
            .query::<()>(c)
    });
}

fn redis_get<T: dwaar_fleet::redis::FromRedisValue>(
    c: &mut dyn dwaar_fleet::redis::ConnectionLike,
    key: &str,
) -> dwaar_fleet::redis::RedisResult<T> {
    dwaar_fleet::redis::cmd("GET").arg(key).query(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_round_trip() {
        let p = Purge {
            host: Some("example.com".into()),
            path: None,
            prefix: Some("/img/".into()),
        };
        let (q, sender) = decode(&encode(&p)).unwrap();
        assert_eq!((q.host, q.path, q.prefix), (p.host, p.path, p.prefix));
        assert_eq!(sender, instance_id());
        assert!(decode("a\tb").is_none());
    }
}
