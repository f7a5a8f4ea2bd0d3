//! On-demand TLS: a certificate obtained during the first handshake for a name, for
//! sites with `tls { on_demand }` (platforms serving their customers' domains).
//!
//! Before each issuance the `ask` endpoint of `on_demand_tls` is asked
//! (`GET <ask>?domain=<name>`, a 2xx answer allows it), then a rate limit (`burst`
//! per `interval`, 10 a minute by default) and a cap on the certificates this process
//! obtains this way apply. Concurrent handshakes for one name wait for one issuance;
//! a name that just failed fails at once for a while. The handshake waits at most
//! [`WAIT`]. Issuance runs in whichever process takes the handshake: the storage lock
//! keeps it to one per name across worker processes, and HTTP-01 answers go through the
//! shared storage so any process can give them.

use crate::acme::Prefer;
use crate::ca::LocalCa;
use crate::certs::Cert;
use crate::manager::{Accounts, Issue};
use crate::plan::{IssuerSpec, OnDemandSite};
use crate::state::Shared;
use crate::storage::Storage;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The longest a handshake waits for its certificate.
pub const WAIT: Duration = Duration::from_secs(45);
/// Certificates one process obtains on demand, at most.
pub const CAP: usize = 10_000;
/// How long a name whose issuance failed is refused without trying again.
const FAILED_FOR: Duration = Duration::from_secs(60);

/// The on-demand issuer of a compiled config.
pub struct OnDemand {
    pub sites: Vec<OnDemandSite>,
    ask: String,
    /// At most `burst` issuances per `interval`.
    interval: Duration,
    burst: usize,
    recent: Mutex<VecDeque<Instant>>,
    shared: Shared,
    storage: Storage,
    ca: Option<Arc<LocalCa>>,
    state: Arc<Progress>,
    /// The `ask` endpoint's client, made on first use.
    client: std::sync::OnceLock<crate::https::Client>,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand").field("ask", &self.ask).finish()
    }
}

/// What outlives a config: issuances in flight, recent failures, the count, accounts.
#[derive(Default)]
pub struct Progress {
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failed: Mutex<HashMap<String, Instant>>,
    issued: std::sync::atomic::AtomicUsize,
    accounts: Accounts,
}

impl OnDemand {
    pub fn new(
        sites: Vec<OnDemandSite>,
        cfg: &dwaar_config::model::OnDemandTls,
        shared: Shared,
        storage: Storage,
        ca: Option<Arc<LocalCa>>,
        state: Arc<Progress>,
    ) -> OnDemand {
        OnDemand {
            sites,
            ask: cfg.ask.clone(),
            interval: Duration::from_millis(cfg.interval_ms.unwrap_or(60_000)),
            burst: cfg.burst.unwrap_or(10) as usize,
            recent: Mutex::new(VecDeque::new()),
            shared,
            storage,
            ca,
            state,
            client: std::sync::OnceLock::new(),
        }
    }

    /// The on-demand site a name belongs to, if any.
    pub fn site_for(&self, name: &str) -> Option<&OnDemandSite> {
        self.sites.iter().find(|s| s.covers(name))
    }

    /// Makes sure `name` has a current certificate, obtaining one if the `ask`
    /// endpoint and the limits allow it.
    pub async fn obtain(&self, name: &str, site: &OnDemandSite) -> Result<(), String> {
        if let Some(t) = lock(&self.state.failed).get(name) {
            if t.elapsed() < FAILED_FOR {
                return Err(format!("on-demand issuance for {name} failed recently"));
            }
        }
        let turn = lock(&self.state.inflight)
            .entry(name.to_string())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        let current = self.shared.managed.load().exact(name).cloned();
        if current.is_some_and(|c| !c.needs_renewal(SystemTime::now())) {
            return Ok(());
        }
        let result = self.issue(name, site).await;
        lock(&self.state.inflight).remove(name);
        match result {
            Ok(cert) => {
                tracing::info!(name, "certificate obtained on demand");
                let cert = Arc::new(cert);
                self.shared.managed.rcu(|m| {
                    let mut m = (**m).clone();
                    m.insert(cert.clone(), Some(&[name.to_string()]));
                    m
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(name, "no certificate on demand: {e}");
                let mut failed = lock(&self.state.failed);
                failed.retain(|_, t| t.elapsed() < FAILED_FOR);
                failed.insert(name.to_string(), Instant::now());
                Err(e)
            }
        }
    }

    async fn issue(&self, name: &str, site: &OnDemandSite) -> Result<Cert, String> {
        // Another process (or an earlier run) may have stored one already.
        if let IssuerSpec::Acme(spec) = &site.issuer {
            let stored = crate::acme::load_stored(&self.storage, spec, name);
            if let Some(c) = stored.filter(|c| !c.needs_renewal(SystemTime::now())) {
                return Ok(c);
            }
        }
        self.ask(name).await?;
        self.take_turn()?;
        match &site.issuer {
            IssuerSpec::Internal => {
                let ca = self.ca.as_ref().ok_or("no local CA")?;
                ca.issue(&[name.to_string()], site.key)
            }
            IssuerSpec::Acme(spec) => {
                Issue {
                    shared: self.shared.clone(),
                    spec: spec.clone(),
                    name: name.to_string(),
                    key: site.key,
                    storage: self.storage.clone(),
                    accounts: self.state.accounts.clone(),
                    prefer: Prefer::Http01,
                    rehearse: false,
                    fallbacks: site.fallbacks.clone(),
                    ca: self.ca.clone(),
                }
                .run()
                .await
            }
        }
    }

    /// The rate limit and the cap.
    fn take_turn(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self.state.issued.load(Ordering::Relaxed) >= CAP {
            return Err(format!(
                "{CAP} certificates were already obtained on demand"
            ));
        }
        let mut recent = lock(&self.recent);
        while recent.front().is_some_and(|t| t.elapsed() >= self.interval) {
            recent.pop_front();
        }
        if recent.len() >= self.burst {
            return Err(format!(
                "on-demand issuance is limited to {} per {:?}",
                self.burst, self.interval
            ));
        }
        recent.push_back(Instant::now());
        self.state.issued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `GET <ask>?domain=<name>`: a 2xx answer allows the name.
    async fn ask(&self, name: &str) -> Result<(), String> {
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let c = crate::https::Client::new(None)?;
                self.client.get_or_init(|| c)
            }
        };
        let sep = if self.ask.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{sep}domain={}",
            self.ask,
            crate::https::uri_encode(name, false)
        );
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client.send("GET", &url, &[("user-agent", "dwaar")], Vec::new()),
        )
        .await
        .map_err(|_| "the ask endpoint did not answer in 10 s".to_string())?
        .map_err(|e| format!("ask endpoint: {e}"))?;
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            Err(format!("the ask endpoint refused {name} ({})", resp.status))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
