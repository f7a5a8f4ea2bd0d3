//! Upstreams that move: `dynamic a` and `dynamic srv` sets looked up in DNS and
//! refreshed on their interval, and upstreams named by a host name (not an IP), whose
//! address is looked up again when its record's TTL runs out.
//!
//! Lookups run on the control runtime (the health-check service drives them); a request
//! only loads the current set, one atomic load. An address that stays in the set keeps
//! its [`UpstreamState`] (in-flight counts, passive health); a failed lookup keeps the
//! last good set and is retried sooner.

use super::dns::Resolver;
use super::UpstreamState;
use arc_swap::ArcSwap;
use dwaar_config::model::DynamicUpstreams;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retry a failed lookup after this long (or the refresh interval, if shorter).
const RETRY_FAILED: Duration = Duration::from_secs(5);
/// Host-name upstreams are looked up again after their TTL, but not more often than
/// this unless `dns_min_ttl` says otherwise.
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// A `dynamic` upstream set.
pub struct Dynamic {
    spec: DynamicUpstreams,
    scheme: String,
    resolver: Resolver,
    current: ArcSwap<Vec<Arc<UpstreamState>>>,
    /// States by address, so a refresh that keeps an address keeps its state.
    known: Mutex<HashMap<SocketAddr, Arc<UpstreamState>>>,
    next_due_ms: AtomicU64,
    in_flight: AtomicBool,
    /// Active health checks of the set's members (`health_uri` etc.), one target per
    /// address, kept while the address stays.
    health: Mutex<Option<Health>>,
}

struct Health {
    cfg: dwaar_config::model::ActiveHealth,
    transport: super::TransportOpts,
    targets: HashMap<SocketAddr, super::HealthTarget>,
}

impl std::fmt::Debug for Dynamic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dynamic({} {})", self.spec.kind, self.spec.name)
    }
}

impl Dynamic {
    /// Builds the set and looks it up once (on a thread of its own, so this works
    /// inside or outside a runtime); an empty set when the lookup fails.
    pub fn new(spec: &DynamicUpstreams, scheme: &str) -> Result<Arc<Dynamic>, String> {
        let d = Arc::new(Dynamic {
            spec: spec.clone(),
            scheme: scheme.to_string(),
            resolver: Resolver::new(&spec.resolvers)?,
            current: ArcSwap::from_pointee(Vec::new()),
            known: Mutex::new(HashMap::new()),
            next_due_ms: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            health: Mutex::new(None),
        });
        let first = d.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(first.refresh());
            }
        })
        .join();
        Ok(d)
    }

    /// The upstreams now.
    pub fn current(&self) -> arc_swap::Guard<Arc<Vec<Arc<UpstreamState>>>> {
        self.current.load()
    }

    /// Probes every member with these active health checks.
    pub fn set_health(
        &self,
        cfg: dwaar_config::model::ActiveHealth,
        transport: super::TransportOpts,
    ) {
        if let Ok(mut h) = self.health.lock() {
            *h = Some(Health {
                cfg,
                transport,
                targets: HashMap::new(),
            });
        }
        let members = self.current.load_full();
        self.sync_targets(&members);
    }

    /// The health targets of the current members (for the health-check service).
    pub fn health_targets(&self) -> Vec<super::HealthTarget> {
        self.health
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.targets.values().cloned().collect()))
            .unwrap_or_default()
    }

    /// One target per member: new members get one, departed ones lose theirs.
    fn sync_targets(&self, members: &[Arc<UpstreamState>]) {
        let Ok(mut guard) = self.health.lock() else {
            return;
        };
        let Some(h) = guard.as_mut() else {
            return;
        };
        let mut keep = HashMap::new();
        for u in members {
            let Some(addr) = u.addr() else { continue };
            let t = h.targets.remove(&addr).unwrap_or_else(|| {
                super::HealthTarget::new(u.clone(), h.cfg.clone(), h.transport.clone())
            });
            keep.insert(addr, t);
        }
        h.targets = keep;
    }

    /// Starts a refresh when one is due and none is running.
    pub fn refresh_if_due(self: &Arc<Self>, now_ms: u64) {
        if now_ms < self.next_due_ms.load(Ordering::Relaxed)
            || self.in_flight.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.refresh().await;
            me.in_flight.store(false, Ordering::Release);
        });
    }

    /// Looks the set up now and swaps it in.
    pub async fn refresh(&self) {
        let refresh = Duration::from_millis(self.spec.refresh_ms);
        let next = match self.lookup().await {
            Ok(addrs) => {
                self.install(&addrs);
                refresh
            }
            Err(e) => {
                tracing::warn!(
                    "dynamic {} {}: {e}; keeping the last known upstreams",
                    self.spec.kind,
                    self.spec.name
                );
                refresh.min(RETRY_FAILED)
            }
        };
        self.next_due_ms
            .store(super::now_ms() + next.as_millis() as u64, Ordering::Relaxed);
    }

    async fn lookup(&self) -> Result<Vec<SocketAddr>, String> {
        let v4 = self.spec.versions.is_empty() || self.spec.versions.iter().any(|v| v == "ipv4");
        let v6 = self.spec.versions.is_empty() || self.spec.versions.iter().any(|v| v == "ipv6");
        match self.spec.kind.as_str() {
            "srv" => {
                let srv = self.resolver.lookup_srv(&self.spec.name).await?;
                let mut out = Vec::new();
                for s in srv.records {
                    match s.target.parse::<std::net::IpAddr>() {
                        Ok(ip) => out.push(SocketAddr::new(ip, s.port)),
                        Err(_) => {
                            let ips = self.resolver.lookup_ip(&s.target, true, true).await?;
                            out.extend(
                                ips.records
                                    .into_iter()
                                    .map(|ip| SocketAddr::new(ip, s.port)),
                            );
                        }
                    }
                }
                Ok(out)
            }
            _ => {
                let port = self.spec.port.unwrap_or(80);
                let ips = self.resolver.lookup_ip(&self.spec.name, v4, v6).await?;
                Ok(ips
                    .records
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect())
            }
        }
    }

    fn install(&self, addrs: &[SocketAddr]) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let mut set = Vec::with_capacity(addrs.len());
        for a in addrs {
            let state = known
                .entry(*a)
                .or_insert_with(|| {
                    Arc::new(UpstreamState::new(&a.to_string(), false, &self.scheme))
                })
                .clone();
            if !set
                .iter()
                .any(|s: &Arc<UpstreamState>| Arc::ptr_eq(s, &state))
            {
                set.push(state);
            }
        }
        known.retain(|a, _| addrs.contains(a));
        let before = self.current.load();
        let changed =
            before.len() != set.len() || before.iter().zip(&set).any(|(x, y)| !Arc::ptr_eq(x, y));
        if changed {
            tracing::info!(
                "dynamic {} {}: {} upstream{} ({})",
                self.spec.kind,
                self.spec.name,
                set.len(),
                if set.len() == 1 { "" } else { "s" },
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.sync_targets(&set);
        self.current.store(Arc::new(set));
    }
}

/// The host name of a `host:port` dial string, when it is not an IP address.
pub fn host_name(dial: &str) -> Option<&str> {
    let host = dial.rsplit_once(':').map_or(dial, |(h, _)| h);
    let bare = host.trim_matches(['[', ']']);
    (bare.parse::<std::net::IpAddr>().is_err() && !bare.is_empty()).then_some(host)
}

/// Looks up a host-name upstream again: with the DNS resolver (for the record's TTL),
/// else the system's resolver (`/etc/hosts` names); the address changes in place.
pub async fn refresh_named(u: &UpstreamState, resolver: &Resolver) {
    let Some(host) = host_name(&u.dial) else {
        return;
    };
    let port = u
        .dial
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(80);
    let (addr, ttl) = match resolver.lookup_ip(host, true, true).await {
        Ok(a) => (
            a.records.first().map(|ip| SocketAddr::new(*ip, port)),
            a.ttl,
        ),
        Err(_) => {
            let dial = u.dial.clone();
            let found = tokio::task::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                dial.to_socket_addrs().ok().and_then(|mut a| a.next())
            })
            .await
            .ok()
            .flatten();
            (found, Duration::from_secs(30))
        }
    };
    if let Some(a) = addr {
        if u.addr() != Some(a) {
            tracing::info!(upstream = %u.dial, address = %a, "upstream address changed");
        }
        u.set_addr(Some(a));
    }
    u.next_lookup_ms.store(
        super::now_ms()
            + ttl
                .max(Duration::from_millis(u.min_ttl_ms.load(Ordering::Relaxed)))
                .as_millis() as u64,
        Ordering::Relaxed,
    );
}
