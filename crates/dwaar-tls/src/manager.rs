//! The certificate manager: one per process, alive across reloads.
//!
//! [`TlsManager::compile`] turns a config into a [`TlsState`] (policies, manual
//! certificates) and makes sure every managed name already has what can be had
//! without waiting: stored certificates are loaded and local-CA certificates issued.
//! [`TlsManager::activate`] hands the wanted names to the maintenance thread
//! (`dwaar-certs`, its own small runtime), which obtains missing ACME certificates,
//! renews at a third of the lifetime left (or when the CA's renewal information says
//! so), retries failures with exponential back-off, and swaps results into the managed
//! map that every handshake reads. One issuance per name at a time: in-process by the
//! task table, across processes by a storage lock.
//!
//! A *follower* (a worker process) never talks to a CA: it picks up what the leader
//! stores, by watching file modification times.

use crate::acme::{self, Prefer};
use crate::ca::LocalCa;
use crate::certs::{Cert, CertMap};
use crate::challenge::ChallengeBoard;
use crate::plan::{AcmeSpec, IssuerSpec, ManagedName, Plan};
use crate::state::{Shared, StateInput, TlsState};
use crate::storage::{Secrecy, Storage};
use crate::tickets::TicketKeys;
use arc_swap::ArcSwap;
use dwaar_config::model::Config;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What a compiled config wants managed.
#[derive(Debug, Default)]
pub struct Wanted {
    pub names: Vec<ManagedName>,
    pub storage: Option<Storage>,
    pub ca: Option<Arc<LocalCa>>,
    /// Certificates from files: kept stapled, never renewed.
    pub manual: Vec<Arc<Cert>>,
    /// OCSP responses are fetched and stapled (not `ocsp_stapling off`).
    pub stapling: bool,
    /// `renew_interval`: certificates in hand are checked for renewal this often.
    pub renew_interval: Option<Duration>,
    /// `ocsp_interval`: the longest time between two OCSP checks of a certificate.
    pub ocsp_interval: Option<Duration>,
    /// `storage_clean_interval`: how often expired certificates leave storage.
    pub clean_interval: Duration,
}

impl Wanted {
    fn needs_maintenance(&self) -> bool {
        !self.names.is_empty()
            || (self.stapling && self.manual.iter().any(|c| c.ocsp_url.is_some()))
    }
}

/// A compiled config's TLS: the handshake state and the names to manage.
#[derive(Debug)]
pub struct Compiled {
    pub state: Arc<TlsState>,
    pub wanted: Arc<Wanted>,
}

pub struct TlsManager {
    shared: Shared,
    leader: bool,
    /// Local CAs by storage root, loaded once.
    cas: Mutex<HashMap<std::path::PathBuf, Arc<LocalCa>>>,
    wanted: watch::Sender<Arc<Wanted>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Certificates obtained or renewed since start (for metrics and tests).
    pub issued: std::sync::atomic::AtomicU64,
    /// Session ticket keys (`None` only if the system has no randomness).
    ticket_keys: Option<Arc<TicketKeys>>,
    /// On-demand issuances in flight, recent failures and counts, across reloads.
    on_demand: Arc<crate::on_demand::Progress>,
}

impl std::fmt::Debug for TlsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsManager")
            .field("leader", &self.leader)
            .finish()
    }
}

impl TlsManager {
    /// `leader`: this process obtains and renews certificates; otherwise it only reads
    /// what the leader stores.
    pub fn new(leader: bool) -> Arc<TlsManager> {
        crate::install_provider();
        let keys = TicketKeys::new().ok();
        let tickets: Arc<dyn rustls::server::ProducesTickets> = match &keys {
            Some(k) => k.clone(),
            None => Arc::new(NoTickets),
        };
        Arc::new(TlsManager {
            shared: Shared {
                managed: Arc::new(ArcSwap::from_pointee(CertMap::default())),
                staples: Arc::default(),
                challenges: Arc::new(ChallengeBoard::default()),
                tickets,
                sessions: rustls::server::ServerSessionMemoryCache::new(4096),
                handshakes: Arc::default(),
            },
            ticket_keys: keys,
            on_demand: Arc::default(),
            leader,
            cas: Mutex::new(HashMap::new()),
            wanted: watch::channel(Arc::new(Wanted::default())).0,
            thread: Mutex::new(None),
            issued: Default::default(),
        })
    }

    pub fn challenges(&self) -> &Arc<ChallengeBoard> {
        &self.shared.challenges
    }

    /// The certificates currently managed (ACME and local CA).
    pub fn managed(&self) -> Arc<CertMap> {
        self.shared.managed.load_full()
    }

    /// Prometheus text: managed certificates, their expiry, issuance count, staples.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let managed = self.shared.managed.load();
        let _ = write!(
            out,
            "# HELP dwaar_tls_managed_certificates Certificates Dwaar obtains and renews (ACME and local CA).\n\
             # TYPE dwaar_tls_managed_certificates gauge\n\
             dwaar_tls_managed_certificates {}\n\
             # HELP dwaar_tls_certificates_obtained_total ACME certificates obtained or renewed since start.\n\
             # TYPE dwaar_tls_certificates_obtained_total counter\n\
             dwaar_tls_certificates_obtained_total {}\n\
             # HELP dwaar_tls_ocsp_staples Certificates with an OCSP response stapled.\n\
             # TYPE dwaar_tls_ocsp_staples gauge\n\
             dwaar_tls_ocsp_staples {}\n\
             # HELP dwaar_tls_handshakes_total Completed TLS handshakes (TCP), full or resumed from a session ticket or cache.\n\
             # TYPE dwaar_tls_handshakes_total counter\n\
             dwaar_tls_handshakes_total{{kind=\"full\"}} {}\n\
             dwaar_tls_handshakes_total{{kind=\"resumed\"}} {}\n\
             # HELP dwaar_tls_certificate_expiry_timestamp_seconds When each managed certificate expires.\n\
             # TYPE dwaar_tls_certificate_expiry_timestamp_seconds gauge\n",
            managed.len(),
            self.issued.load(std::sync::atomic::Ordering::Relaxed),
            self.shared.staples.load().len(),
            self.shared.handshakes.full.load(std::sync::atomic::Ordering::Relaxed),
            self.shared.handshakes.resumed.load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut names: Vec<(String, u64)> = managed
            .iter()
            .map(|(n, c)| {
                let t = c
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                (n, t)
            })
            .collect();
        names.sort();
        for (n, t) in names {
            let n: String = n
                .chars()
                .filter(|c| !matches!(c, '"' | '\\' | '\n'))
                .collect();
            let _ = writeln!(
                out,
                "dwaar_tls_certificate_expiry_timestamp_seconds{{name=\"{n}\"}} {t}"
            );
        }
    }

    /// Builds the TLS state of `config`; `Ok(None)` when no site uses HTTPS.
    /// Errors name the offending file or site; nothing changes for running sites.
    pub fn compile(&self, config: &Config) -> Result<Option<Compiled>, String> {
        let plan = Plan::new(config)?;
        if plan.sites.is_empty() {
            return Ok(None);
        }
        let storage = Storage::for_config(&config.global.tls);
        self.shared.challenges.set_storage(storage.clone());
        if let Some(k) = &self.ticket_keys {
            k.use_storage(storage.clone(), self.leader);
        }
        let mut manual = CertMap::default();
        let mut manual_list = Vec::new();
        let mut fallback_cert = None;
        for site in &plan.sites {
            if !site.tls.load.is_empty() {
                let mut loaded = CertMap::default();
                for cert in load_dirs(&site.tls.load)? {
                    let cert = Arc::new(cert);
                    if site.hosts.is_empty() {
                        fallback_cert.get_or_insert_with(|| cert.clone());
                    }
                    manual_list.push(cert.clone());
                    loaded.insert(cert.clone(), None);
                    manual.insert(cert, None);
                }
                if let Some(h) = site.hosts.iter().find(|h| loaded.get(h).is_none()) {
                    return Err(format!(
                        "tls load {}: no certificate there covers {h}",
                        site.tls.load.join(" ")
                    ));
                }
                continue;
            }
            let (Some(c), Some(k)) = (&site.tls.cert_file, &site.tls.key_file) else {
                continue;
            };
            let cert = Arc::new(Cert::from_files(c, k)?);
            manual_list.push(cert.clone());
            if site.hosts.is_empty() {
                fallback_cert.get_or_insert_with(|| cert.clone());
            }
            manual.insert(cert.clone(), None);
            // The site's hosts get this certificate even if it does not name them.
            manual.insert(cert, Some(&site.hosts));
        }
        let needs_ca = plan.on_demand.iter().any(|s| {
            s.issuer == IssuerSpec::Internal || s.fallbacks.contains(&IssuerSpec::Internal)
        }) || plan.on_demand_internal
            || !plan.on_demand_suffixes.is_empty()
            || plan.managed.iter().any(|m| {
                m.issuer == IssuerSpec::Internal || m.fallbacks.contains(&IssuerSpec::Internal)
            });
        let ca = if needs_ca {
            Some(self.local_ca(&storage)?)
        } else {
            None
        };
        let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // `servers { protocols }` for the HTTPS port (or for every server) decides
        // whether h2 is offered.
        let https_port = config.global.https_port.to_string();
        let servers = &config.global.servers;
        let protocols = servers
            .iter()
            .find(|s| {
                s.listener
                    .as_deref()
                    .is_some_and(|l| l.trim_start_matches(':') == https_port)
            })
            .or_else(|| servers.iter().find(|s| s.listener.is_none()))
            .map(|s| &s.protocols);
        if let Some(p) = protocols.filter(|p| !p.is_empty()) {
            if !p.iter().any(|x| x == "h2") {
                alpn.retain(|a| a != b"h2");
            }
        }
        let state = TlsState::build(
            StateInput {
                sites: plan
                    .sites
                    .iter()
                    .map(|s| (s.hosts.clone(), &s.tls))
                    .collect(),
                manual,
                fallback_cert,
                on_demand: if plan.on_demand_internal || !plan.on_demand_suffixes.is_empty() {
                    ca.clone()
                } else {
                    None
                },
                on_demand_all: plan.on_demand_internal,
                on_demand_suffixes: plan.on_demand_suffixes.clone(),
                default_alpn: alpn,
                on_demand_issuer: match (&config.global.tls.on_demand, plan.on_demand.is_empty()) {
                    (_, true) => None,
                    (Some(cfg), false) => Some(Arc::new(crate::on_demand::OnDemand::new(
                        plan.on_demand.clone(),
                        cfg,
                        self.shared.clone(),
                        storage.clone(),
                        ca.clone(),
                        self.on_demand.clone(),
                    ))),
                    (None, false) => {
                        return Err("a site has 'tls { on_demand }' but there is no global \
                                    'on_demand_tls { ask <url> }'"
                            .into())
                    }
                },
                default_sni: config.global.tls.default_sni.clone(),
                fallback_sni: config.global.tls.fallback_sni.clone(),
            },
            self.shared.clone(),
        )?;
        let wanted = Arc::new(Wanted {
            names: plan.managed,
            storage: Some(storage),
            ca,
            manual: manual_list,
            stapling: !config.global.tls.ocsp_stapling_off,
            renew_interval: config
                .global
                .tls
                .renew_interval_ms
                .map(Duration::from_millis),
            ocsp_interval: config
                .global
                .tls
                .ocsp_interval_ms
                .map(Duration::from_millis),
            clean_interval: Duration::from_millis(
                config
                    .global
                    .tls
                    .storage_clean_interval_ms
                    .unwrap_or(24 * 3600 * 1000),
            ),
        });
        self.prepare(&wanted)?;
        Ok(Some(Compiled {
            state: Arc::new(state),
            wanted,
        }))
    }

    fn local_ca(&self, storage: &Storage) -> Result<Arc<LocalCa>, String> {
        let mut cas = self.cas.lock().map_err(|_| "poisoned")?;
        if let Some(ca) = cas.get(storage.root()) {
            return Ok(ca.clone());
        }
        let ca = Arc::new(LocalCa::load_or_create(storage)?);
        cas.insert(storage.root().to_path_buf(), ca.clone());
        Ok(ca)
    }

    /// Gives every wanted name what it can have right now: a stored certificate or a
    /// fresh local one.
    fn prepare(&self, wanted: &Wanted) -> Result<(), String> {
        let now = SystemTime::now();
        let current = self.shared.managed.load();
        let mut add: Vec<(String, Arc<Cert>)> = Vec::new();
        for m in &wanted.names {
            let have = current
                .exact(&m.name)
                .filter(|c| !c.needs_renewal(now) && c.covers(&m.name));
            if have.is_some() {
                continue;
            }
            match (&m.issuer, &wanted.ca, &wanted.storage) {
                (IssuerSpec::Internal, Some(ca), _) => {
                    add.push((
                        m.name.clone(),
                        Arc::new(ca.issue(std::slice::from_ref(&m.name), m.key)?),
                    ));
                }
                (IssuerSpec::Acme(_), _, Some(storage)) => {
                    // What any of its ACME issuers stored, the latest first.
                    let stored = std::iter::once(&m.issuer)
                        .chain(&m.fallbacks)
                        .filter_map(|i| match i {
                            IssuerSpec::Acme(spec) => acme::load_stored(storage, spec, &m.name),
                            IssuerSpec::Internal => None,
                        })
                        .filter(|c| c.not_after > now)
                        .max_by_key(|c| c.not_after);
                    if let Some(c) = stored {
                        add.push((m.name.clone(), Arc::new(c)));
                    }
                }
                _ => {}
            }
        }
        if !add.is_empty() {
            self.install(add);
        }
        Ok(())
    }

    fn install(&self, certs: Vec<(String, Arc<Cert>)>) {
        self.shared.managed.rcu(|m| {
            let mut m = (**m).clone();
            for (name, c) in &certs {
                m.insert(c.clone(), Some(std::slice::from_ref(name)));
            }
            m
        });
    }

    /// Makes `wanted` the set the maintenance thread keeps valid.
    pub fn activate(self: &Arc<Self>, wanted: &Arc<Wanted>) {
        self.wanted.send_replace(wanted.clone());
        let mut t = match self.thread.lock() {
            Ok(t) => t,
            Err(_) => return,
        };
        if t.is_none() && wanted.needs_maintenance() {
            let me = Arc::downgrade(self);
            let rx = self.wanted.subscribe();
            let spawned = std::thread::Builder::new()
                .name("dwaar-certs".into())
                .spawn(move || maintain(me, rx));
            match spawned {
                Ok(h) => *t = Some(h),
                Err(e) => tracing::error!("cannot start certificate maintenance: {e}"),
            }
        }
    }
}

#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Per-name bookkeeping of the maintenance loop.
#[derive(Debug, Default)]
struct NameState {
    running: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// Followers: the stored file time last loaded.
    seen: Option<SystemTime>,
    /// When the CA's renewal information was last asked (ACME only).
    ari_checked: Option<Instant>,
    /// When the certificate in hand was last checked for renewal (`renew_interval`).
    renewal_checked: Option<Instant>,
    ari_renew_at: Option<SystemTime>,
}

/// Back-off after `failures` failed attempts: 5 s doubling, at most an hour.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.min(20).saturating_sub(1));
    Duration::from_secs(secs.min(3600))
}

type Done = (String, Result<Cert, String>);

fn maintain(me: std::sync::Weak<TlsManager>, mut rx: watch::Receiver<Arc<Wanted>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("certificate maintenance has no runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut states: HashMap<String, NameState> = HashMap::new();
        let accounts: Accounts = Arc::default();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
        let mut stapling = Stapling::default();
        let mut cleaned_at: Option<Instant> = None;
        loop {
            let Some(mgr) = me.upgrade() else { return };
            let wanted = rx.borrow_and_update().clone();
            states.retain(|n, _| wanted.names.iter().any(|m| &m.name == n));
            let now = SystemTime::now();
            for m in &wanted.names {
                let st = states.entry(m.name.clone()).or_default();
                if st.running || st.retry_at.is_some_and(|t| t > Instant::now()) {
                    continue;
                }
                let current = mgr.shared.managed.load().exact(&m.name).cloned();
                // With `renew_interval`, a certificate in hand is looked at that often;
                // a missing one is always sought at once.
                if let (Some(every), Some(_)) = (wanted.renew_interval, &current) {
                    if st.renewal_checked.is_some_and(|t| t.elapsed() < every) {
                        continue;
                    }
                    st.renewal_checked = Some(Instant::now());
                }
                match &m.issuer {
                    IssuerSpec::Internal => {
                        let due = current.as_ref().is_none_or(|c| c.needs_renewal(now));
                        if let (true, Some(ca)) = (due, &wanted.ca) {
                            match ca.issue(std::slice::from_ref(&m.name), m.key) {
                                Ok(c) => {
                                    tracing::info!(name = m.name, "renewed local certificate");
                                    mgr.install(vec![(m.name.clone(), Arc::new(c))]);
                                }
                                Err(e) => tracing::error!(name = m.name, "{e}"),
                            }
                        }
                    }
                    IssuerSpec::Acme(spec) => {
                        let Some(storage) = wanted.storage.clone() else {
                            continue;
                        };
                        if !mgr.leader {
                            follow(&mgr, st, &storage, spec, &m.name);
                            continue;
                        }
                        let mut due = current.as_ref().is_none_or(|c| c.needs_renewal(now));
                        if let (false, Some(c)) = (due, &current) {
                            due = ari_due(st, &accounts, spec, c).await;
                        }
                        if !due {
                            continue;
                        }
                        st.running = true;
                        let task = Issue {
                            shared: mgr.shared.clone(),
                            spec: spec.clone(),
                            name: m.name.clone(),
                            key: m.key,
                            storage,
                            accounts: accounts.clone(),
                            rehearse: st.failures > 0,
                            fallbacks: m.fallbacks.clone(),
                            ca: wanted.ca.clone(),
                            // After a failure, try the other challenge type.
                            prefer: if st.failures.is_multiple_of(2) {
                                Prefer::Http01
                            } else {
                                Prefer::TlsAlpn01
                            },
                        };
                        let tx = done_tx.clone();
                        tokio::spawn(async move {
                            let name = task.name.clone();
                            let r = task.run().await;
                            let _ = tx.send((name, r));
                        });
                    }
                }
            }
            stapling.run(&mgr, &wanted);
            // The leader removes certificates that expired a day ago (Caddy's
            // storage cleaning), at start and then every `storage_clean_interval`.
            if let (true, Some(storage)) = (mgr.leader, &wanted.storage) {
                if cleaned_at.is_none_or(|t: Instant| t.elapsed() >= wanted.clean_interval) {
                    cleaned_at = Some(Instant::now());
                    let storage = storage.clone();
                    tokio::task::spawn_blocking(move || {
                        let n = crate::storage::clean_expired(&storage, SystemTime::now());
                        if n > 0 {
                            tracing::info!(removed = n, "removed expired certificates from storage");
                        }
                    });
                }
            }
            drop(mgr);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                Some((name, result)) = done_rx.recv() => {
                    let Some(mgr) = me.upgrade() else { return };
                    let st = states.entry(name.clone()).or_default();
                    st.running = false;
                    match result {
                        Ok(cert) => {
                            st.failures = 0;
                            st.retry_at = None;
                            st.ari_renew_at = None;
                            let valid_secs = cert
                                .not_after
                                .duration_since(SystemTime::now())
                                .map(|d| d.as_secs())
                                .unwrap_or(0);
                            tracing::info!(name, valid_secs, "certificate obtained");
                            mgr.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            mgr.install(vec![(name, Arc::new(cert))]);
                        }
                        Err(e) => {
                            st.failures += 1;
                            let wait = backoff(st.failures);
                            st.retry_at = Some(Instant::now() + wait);
                            tracing::error!(name, retry_in = ?wait, "could not obtain a certificate: {e}");
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
}

/// ACME accounts by CA, shared by the loop and its issuance tasks. The async lock is
/// held while an account is created, so concurrent first issuances create one.
pub(crate) type Accounts = Arc<tokio::sync::Mutex<HashMap<AcmeSpec, Arc<instant_acme::Account>>>>;

/// Whether the CA's renewal information asks for renewal now (checked every 6 hours).
async fn ari_due(st: &mut NameState, accounts: &Accounts, spec: &AcmeSpec, cert: &Cert) -> bool {
    if let Some(at) = st.ari_renew_at {
        return SystemTime::now() >= at;
    }
    if st
        .ari_checked
        .is_some_and(|t| t.elapsed() < Duration::from_secs(6 * 3600))
    {
        return false;
    }
    let Some(account) = accounts.lock().await.get(spec).cloned() else {
        return false;
    };
    st.ari_checked = Some(Instant::now());
    st.ari_renew_at = acme::suggested_renewal(&account, cert).await;
    st.ari_renew_at.is_some_and(|at| SystemTime::now() >= at)
}

/// Keeps OCSP responses fresh for every certificate that names a responder.
#[derive(Default)]
struct Stapling {
    /// Next fetch time by leaf serial; set ten minutes ahead while a fetch runs (and
    /// after a failure), to the middle of the response's validity after a success.
    next: Arc<Mutex<HashMap<Vec<u8>, SystemTime>>>,
}

impl Stapling {
    fn run(&mut self, mgr: &Arc<TlsManager>, wanted: &Wanted) {
        if !wanted.stapling {
            if !mgr.shared.staples.load().is_empty() {
                mgr.shared.staples.store(Arc::default());
            }
            return;
        }
        let managed = mgr.shared.managed.load();
        let certs: Vec<Arc<Cert>> = managed
            .iter()
            .map(|(_, c)| c.clone())
            .chain(wanted.manual.iter().cloned())
            .filter(|c| c.ocsp_url.is_some() && c.key.cert.len() > 1)
            .collect();
        let live: std::collections::HashSet<&Vec<u8>> = certs.iter().map(|c| &c.serial).collect();
        let stale = mgr.shared.staples.load().keys().any(|s| !live.contains(s));
        if stale {
            mgr.shared.staples.rcu(|m| {
                let mut m = (**m).clone();
                m.retain(|s, _| live.contains(s));
                m
            });
        }
        let Ok(mut next) = self.next.lock() else {
            return;
        };
        next.retain(|s, _| live.contains(s));
        let now = SystemTime::now();
        for c in certs {
            if next.get(&c.serial).is_some_and(|t| *t > now) {
                continue;
            }
            next.insert(c.serial.clone(), now + Duration::from_secs(600));
            let (mgr, next) = (mgr.clone(), self.next.clone());
            let ocsp_interval = wanted.ocsp_interval;
            let storage = wanted.storage.clone();
            let current = mgr
                .shared
                .staples
                .load()
                .get(&c.serial)
                .and_then(|k| k.ocsp.clone());
            tokio::spawn(async move {
                match shared_or_fetched_staple(&c, storage, current).await {
                    Ok(s) => {
                        tracing::info!(names = ?c.names, "stapled an OCSP response");
                        if let Ok(mut n) = next.lock() {
                            let at = match ocsp_interval {
                                Some(every) => s.refresh_at().min(SystemTime::now() + every),
                                None => s.refresh_at(),
                            };
                            n.insert(c.serial.clone(), at);
                        }
                        let key = Arc::new(rustls::sign::CertifiedKey {
                            cert: c.key.cert.clone(),
                            key: c.key.key.clone(),
                            ocsp: Some(s.der),
                        });
                        mgr.shared.staples.rcu(|m| {
                            let mut m = (**m).clone();
                            m.insert(c.serial.clone(), key.clone());
                            m
                        });
                    }
                    Err(e) => tracing::warn!(names = ?c.names, "no OCSP staple: {e}"),
                }
            });
        }
    }
}

/// A staple for `c`: a newer one than `current` that another process or fleet
/// instance stored, while it is fresh; else a fetched one (stored for the others).
async fn shared_or_fetched_staple(
    c: &Arc<Cert>,
    storage: Option<Storage>,
    current: Option<Vec<u8>>,
) -> Result<crate::ocsp::Staple, String> {
    let rel = format!(
        "ocsp/{}",
        c.serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if let Some(st) = storage.clone() {
        let (rel, serial) = (rel.clone(), c.serial.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let der = st.read(&rel).filter(|d| Some(d) != current.as_ref())?;
            crate::ocsp::check(&der, &serial)
                .ok()
                .filter(|s| s.refresh_at() > SystemTime::now())
        })
        .await
        .ok()
        .flatten();
        if let Some(s) = stored {
            return Ok(s);
        }
    }
    let s = staple(c).await?;
    if let Some(st) = storage {
        let der = s.der.clone();
        let _ = tokio::task::spawn_blocking(move || st.write(&rel, &der, Secrecy::Public)).await;
    }
    Ok(s)
}

/// Fetches and checks an OCSP response for `c`.
async fn staple(c: &Cert) -> Result<crate::ocsp::Staple, String> {
    let url = c.ocsp_url.as_deref().ok_or("no OCSP URL")?;
    let issuer = c
        .key
        .cert
        .get(1)
        .ok_or("no issuer certificate in the chain")?;
    let req = crate::ocsp::request(&c.key.cert[0], issuer)?;
    let der = crate::ocsp::fetch(url, &req).await?;
    crate::ocsp::check(&der, &c.serial)
}

/// A follower loads what the leader stored when the file changes.
fn follow(mgr: &TlsManager, st: &mut NameState, storage: &Storage, spec: &AcmeSpec, name: &str) {
    let (crt, _) = acme::cert_paths(spec, name);
    let t = storage.modified(&crt);
    if t.is_none() || t == st.seen {
        return;
    }
    st.seen = t;
    if let Some(c) = acme::load_stored(storage, spec, name) {
        tracing::info!(name, "loaded a certificate stored by the leader");
        mgr.install(vec![(name.to_string(), Arc::new(c))]);
    }
}

/// One ACME issuance for one name (the maintenance loop's, or an on-demand one).
pub(crate) struct Issue {
    pub(crate) shared: crate::state::Shared,
    pub(crate) spec: AcmeSpec,
    pub(crate) name: String,
    pub(crate) key: crate::ca::KeyType,
    pub(crate) storage: Storage,
    pub(crate) accounts: Accounts,
    pub(crate) prefer: Prefer,
    /// Rehearse on the staging directory first (after a failure, when there is one).
    pub(crate) rehearse: bool,
    /// Issuers tried in order when `spec` fails, and the local CA for an internal one.
    pub(crate) fallbacks: Vec<IssuerSpec>,
    pub(crate) ca: Option<Arc<LocalCa>>,
}

impl Issue {
    async fn account(&self, spec: &AcmeSpec) -> Result<Arc<instant_acme::Account>, String> {
        let mut all = self.accounts.lock().await;
        if let Some(a) = all.get(spec) {
            return Ok(a.clone());
        }
        let a = Arc::new(acme::account(spec, &self.storage).await?);
        all.insert(spec.clone(), a.clone());
        Ok(a)
    }

    /// Obtains the certificate from the first issuer that gives one.
    pub(crate) async fn run(self) -> Result<Cert, String> {
        let mut errors = match self.attempt(&self.spec).await {
            Ok(c) => return Ok(c),
            Err(e) => vec![format!("{}: {e}", self.spec.dir)],
        };
        for issuer in &self.fallbacks {
            let (who, r) = match issuer {
                IssuerSpec::Acme(spec) => (spec.dir.as_str(), self.attempt(spec).await),
                IssuerSpec::Internal => (
                    "the local CA",
                    match &self.ca {
                        Some(ca) => ca.issue(std::slice::from_ref(&self.name), self.key),
                        None => Err("no local CA".into()),
                    },
                ),
            };
            match r {
                Ok(c) => {
                    tracing::warn!(
                        name = self.name,
                        issuer = who,
                        "obtained the certificate from a fallback issuer after: {}",
                        errors.join("; ")
                    );
                    return Ok(c);
                }
                Err(e) => errors.push(format!("{who}: {e}")),
            }
        }
        Err(errors.join("; then "))
    }

    /// One try at `spec`'s CA.
    async fn attempt(&self, spec: &AcmeSpec) -> Result<Cert, String> {
        // Across processes (and, with `storage redis`, across the fleet): one issuer per
        // name. Another may have finished while this one waited; then its certificate
        // is used.
        let storage = self.storage.clone();
        let name = self.name.clone();
        let lock = tokio::task::spawn_blocking(move || storage.lock(&format!("cert-{name}"))).await;
        let lock = lock.map_err(|e| e.to_string())??;
        let stored = {
            let (storage, spec, name) = (self.storage.clone(), spec.clone(), self.name.clone());
            tokio::task::spawn_blocking(move || acme::load_stored(&storage, &spec, &name))
                .await
                .ok()
                .flatten()
        };
        if let Some(c) = stored {
            let current = self.shared.managed.load().exact(&self.name).cloned();
            let newer = current.is_none_or(|cur| c.not_after > cur.not_after);
            if newer && !c.needs_renewal(SystemTime::now()) {
                tracing::info!(
                    name = self.name,
                    "using the certificate another instance stored"
                );
                return Ok(c);
            }
        }
        let account = self.account(spec).await?;
        let result = self.order(spec, &account).await;
        if result.is_ok() && !lock.still_held() {
            tracing::warn!(
                name = self.name,
                "the fleet lock expired during issuance; another instance may have ordered too"
            );
        }
        result
    }

    async fn order(
        &self,
        spec: &AcmeSpec,
        account: &Arc<instant_acme::Account>,
    ) -> Result<Cert, String> {
        if let (true, Some(staging)) = (self.rehearse, spec.staging()) {
            tracing::info!(
                name = self.name,
                ca = staging.dir,
                "rehearsing on the staging CA"
            );
            let test_account = self.account(&staging).await?;
            acme::obtain(
                &test_account,
                &staging,
                &self.name,
                self.key,
                self.prefer,
                &self.shared.challenges,
                &self.storage,
            )
            .await
            .map_err(|e| format!("staging rehearsal failed: {e}"))?;
        }
        tracing::info!(name = self.name, ca = spec.dir, "obtaining a certificate");
        acme::obtain(
            account,
            spec,
            &self.name,
            self.key,
            self.prefer,
            &self.shared.challenges,
            &self.storage,
        )
        .await
    }
}

/// `tls { load <dir>... }`: every file of the directories (in name order) holds a
/// certificate chain and its private key in PEM.
fn load_dirs(dirs: &[String]) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for d in dirs {
        let before = out.len();
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("tls load {d}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let pem = std::fs::read_to_string(&f)
                .map_err(|e| format!("tls load {}: {e}", f.display()))?;
            out.push(
                Cert::from_pem(&pem, &pem).map_err(|e| format!("tls load {}: {e}", f.display()))?,
            );
        }
        if out.len() == before {
            return Err(format!("tls load {d}: no certificate files there"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(30), Duration::from_secs(3600));
    }
}
