//! Messages to every instance of the fleet over Redis pub/sub (channel
//! `<key_prefix>:<name>`): what one instance's admin API does (a cache purge), the
//! others do too. One subscriber thread per fleet and channel reconnects with back-off;
//! the handler can be replaced (a reload builds new caches). Messages published while
//! Redis is down are kept (at most [`MAX_PENDING`]) and sent when it is back.

use crate::Fleet;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Handler = Arc<dyn Fn(&str) + Send + Sync>;

/// Messages kept for a Redis that is down.
pub const MAX_PENDING: usize = 10_000;

#[derive(Default)]
struct Channels {
    handlers: HashMap<String, Handler>,
    pending: VecDeque<(String, String)>,
}

fn channels() -> &'static Mutex<HashMap<String, Channels>> {
    static ALL: std::sync::OnceLock<Mutex<HashMap<String, Channels>>> = std::sync::OnceLock::new();
    ALL.get_or_init(Mutex::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `msg` on `name` to every instance (this one included); kept for later when
/// Redis cannot take it now.
pub fn publish(fleet: &Arc<Fleet>, name: &str, msg: &str) {
    let channel = fleet.key(name);
    flush(fleet);
    let sent: Result<i64, String> =
        fleet.with_sync(|c| redis::cmd("PUBLISH").arg(&channel).arg(msg).query(c));
    if sent.is_err() {
        let mut all = lock(channels());
        let ch = all.entry(fleet.cfg.key_prefix.clone()).or_default();
        if ch.pending.len() >= MAX_PENDING {
            ch.pending.pop_front();
        }
        ch.pending.push_back((channel, msg.to_string()));
    }
}

/// Sends what was kept while Redis was down.
fn flush(fleet: &Arc<Fleet>) {
    loop {
        let next = lock(channels())
            .get_mut(&fleet.cfg.key_prefix)
            .and_then(|c| c.pending.pop_front());
        let Some((channel, msg)) = next else { return };
        let sent: Result<i64, String> =
            fleet.with_sync(|c| redis::cmd("PUBLISH").arg(&channel).arg(&msg).query(c));
        if sent.is_err() {
            if let Some(c) = lock(channels()).get_mut(&fleet.cfg.key_prefix) {
                c.pending.push_front((channel, msg));
            }
            return;
        }
    }
}

/// Calls `handler` for every message on `name` (replacing an earlier handler).
pub fn subscribe(fleet: &Arc<Fleet>, name: &str, handler: Handler) {
    let channel = fleet.key(name);
    let first = {
        let mut all = lock(channels());
        let ch = all.entry(fleet.cfg.key_prefix.clone()).or_default();
        ch.handlers.insert(channel.clone(), handler).is_none()
    };
    if !first {
        return;
    }
    let (fleet, prefix) = (fleet.clone(), fleet.cfg.key_prefix.clone());
    let _ = std::thread::Builder::new()
        .name("dwaar-fleet-bus".into())
        .spawn(move || {
            let mut wait = Duration::from_millis(500);
            loop {
                if let Err(e) = listen(&fleet, &channel, &prefix) {
                    tracing::debug!(channel, "fleet messages: {e}");
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
                flush(&fleet);
            }
        });
}

/// One subscription until its connection fails.
fn listen(fleet: &Fleet, channel: &str, prefix: &str) -> Result<(), String> {
    let client = fleet.pubsub_client()?;
    let mut conn = client.get_connection().map_err(|e| e.to_string())?;
    let mut ps = conn.as_pubsub();
    ps.subscribe(channel).map_err(|e| e.to_string())?;
    ps.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    loop {
        match ps.get_message() {
            Ok(m) => {
                let payload: String = m.get_payload().unwrap_or_default();
                let handler = lock(channels())
                    .get(prefix)
                    .and_then(|c| c.handlers.get(channel).cloned());
                if let Some(h) = handler {
                    h(&payload);
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
