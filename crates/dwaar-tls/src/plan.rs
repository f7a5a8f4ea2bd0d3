//! Automatic HTTPS planning: which names need which certificate from whom.
//!
//! Caddy's rules: a site served over HTTPS whose name qualifies for a public
//! certificate gets one from an ACME CA; `localhost`, `*.localhost`, `.local`,
//! `.internal`, `.home.arpa` names and IP addresses get one from the local CA;
//! `tls cert key` sites bring their own; `local_certs` sends everything to the local CA;
//! `auto_https disable_certs` and `off` turn certificate management off.

use dwaar_config::model::{AcmeIssuer, Config, Issuer, SiteTls};

/// Let's Encrypt's production directory: the default ACME CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// An ACME CA and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeSpec {
    pub dir: String,
    /// A staging directory: after a failure, the next attempt is first rehearsed there
    /// (so repeated failures do not use up the production CA's rate limits).
    pub test_dir: Option<String>,
    pub email: Option<String>,
    pub ca_root: Option<String>,
    pub http01: bool,
    pub tls_alpn01: bool,
    /// External Account Binding for new accounts at this CA.
    pub eab: Option<dwaar_config::model::Eab>,
    /// The DNS-01 provider; when set, DNS-01 is the only challenge answered.
    pub dns: Option<dwaar_config::model::DnsProvider>,
    pub dns_options: dwaar_config::model::DnsOptions,
    pub preferred_chains: Option<dwaar_config::model::PreferredChains>,
}

impl AcmeSpec {
    /// The same CA settings pointed at the staging directory, if there is one.
    pub fn staging(&self) -> Option<AcmeSpec> {
        self.test_dir.as_ref().map(|t| AcmeSpec {
            dir: t.clone(),
            test_dir: None,
            ..self.clone()
        })
    }

    /// A directory name for this CA under `certificates/` and `acme/`.
    pub fn key(&self) -> String {
        let s = self
            .dir
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        crate::storage::safe_name(&s.replace('/', "-"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(clippy::large_enum_variant)] // built once per config, compared by value
pub enum IssuerSpec {
    Internal,
    Acme(AcmeSpec),
}

/// A name whose certificate Dwaar obtains and renews.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManagedName {
    pub name: String,
    pub issuer: IssuerSpec,
    /// Tried in order when `issuer` fails (further `issuer` lines, `cert_issuer`).
    pub fallbacks: Vec<IssuerSpec>,
    /// The key its certificates are made for (`key_type`).
    pub key: crate::ca::KeyType,
}

/// The names of an on-demand site and where their certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemandSite {
    /// Lowercase hosts (`*.example.com` covers one label); empty: every name.
    pub hosts: Vec<String>,
    pub issuer: IssuerSpec,
    pub fallbacks: Vec<IssuerSpec>,
    pub key: crate::ca::KeyType,
}

impl OnDemandSite {
    pub fn covers(&self, name: &str) -> bool {
        self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(parent) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => h == name,
            })
    }
}

/// One HTTPS site's TLS settings and the hosts they apply to.
#[derive(Debug, Clone)]
pub struct SitePolicy {
    /// Lowercase hosts; empty for a catch-all site.
    pub hosts: Vec<String>,
    pub tls: SiteTls,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub sites: Vec<SitePolicy>,
    pub managed: Vec<ManagedName>,
    /// A catch-all HTTPS site with `tls internal`: certificates issued at handshake time.
    pub on_demand_internal: bool,
    /// `example.localhost` for a `*.example.localhost` site with local certificates:
    /// each name under it gets its own certificate at handshake time (browsers and
    /// TLS libraries refuse wildcards directly under `localhost`-like names).
    pub on_demand_suffixes: Vec<String>,
    /// Sites with `tls { on_demand }`: their names get certificates during their first
    /// handshake (when the `ask` endpoint agrees), not at start.
    pub on_demand: Vec<OnDemandSite>,
    /// Whether certificate management is on at all.
    pub automate: bool,
}

/// Whether `host` gets a certificate from the local CA rather than a public one.
pub fn is_internal_name(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h.parse::<std::net::IpAddr>().is_ok()
        || h == "localhost"
        || [".localhost", ".local", ".internal", ".home.arpa"]
            .iter()
            .any(|s| h.ends_with(s))
        || !h.contains('.')
}

impl Plan {
    pub fn new(config: &Config) -> Result<Plan, String> {
        let g = &config.global;
        let mode = g.auto_https.as_deref();
        let automate = !matches!(mode, Some("off") | Some("disable_certs"));
        let mut plan = Plan {
            automate,
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for site in &config.sites {
            let https: Vec<_> = site
                .addresses
                .iter()
                .filter(|a| a.scheme.as_deref() == Some("https"))
                .collect();
            if https.is_empty() {
                continue;
            }
            let tls = site.tls.clone().unwrap_or_default();
            let hosts: Vec<String> = https
                .iter()
                .filter(|a| !a.host.is_empty())
                .map(|a| a.host.clone())
                .collect();
            let catch_all = https.iter().any(|a| a.host.is_empty());
            // Certificates from files, directories or a `get_certificate` service are
            // not issued by Dwaar.
            let manual =
                tls.cert_file.is_some() || !tls.load.is_empty() || !tls.get_certificate.is_empty();
            let key = tls
                .key_type
                .as_deref()
                .or(g.tls.key_type.as_deref())
                .and_then(crate::ca::KeyType::parse)
                .unwrap_or_default();
            if tls.on_demand && automate && !manual {
                // Names are issued one by one as clients ask for them.
                let mut issuers = on_demand_issuers(&tls, config);
                plan.on_demand.push(OnDemandSite {
                    hosts: hosts.clone(),
                    issuer: issuers.remove(0),
                    fallbacks: issuers,
                    key,
                });
                plan.sites.push(SitePolicy { hosts, tls });
                continue;
            }
            if catch_all && !manual {
                match (&tls.issuer, g.tls.local_certs) {
                    (Some(Issuer::Internal), _) | (None, true) => plan.on_demand_internal = true,
                    _ => {
                        let a = https.iter().find(|a| a.host.is_empty()).map(|a| a.port);
                        return Err(format!(
                            "the HTTPS site on port {} has no host name to get a certificate for: \
                             give it a host, 'tls internal' or 'tls <cert_file> <key_file>'",
                            a.unwrap_or(g.https_port)
                        ));
                    }
                }
            }
            if automate && !manual {
                for h in &hosts {
                    let mut issuers = issuers_for(h, &tls, config)?;
                    let issuer = issuers.remove(0);
                    if let (IssuerSpec::Internal, Some(suffix)) = (&issuer, h.strip_prefix("*.")) {
                        plan.on_demand_suffixes.push(suffix.to_string());
                        continue;
                    }
                    if seen.insert(h.clone()) {
                        plan.managed.push(ManagedName {
                            name: h.clone(),
                            issuer,
                            fallbacks: issuers,
                            key,
                        });
                    }
                }
            }
            plan.sites.push(SitePolicy { hosts, tls });
        }
        if mode == Some("prefer_wildcard") {
            // Names a managed wildcard covers are served by it instead of their own.
            let wildcards: Vec<String> = plan
                .managed
                .iter()
                .filter(|m| m.name.starts_with("*."))
                .map(|m| m.name.clone())
                .collect();
            plan.managed.retain(|m| {
                m.name.starts_with("*.")
                    || !wildcards
                        .iter()
                        .any(|w| crate::certs::name_matches(w, &m.name))
            });
        }
        Ok(plan)
    }
}

/// The ACME CA settings of an issuer, the global options filling in what it leaves out.
fn acme_spec(a: &AcmeIssuer, g: &dwaar_config::model::GlobalTls) -> AcmeSpec {
    AcmeSpec {
        dir: a
            .dir
            .clone()
            .or_else(|| g.acme_ca.clone())
            .unwrap_or_else(|| LETS_ENCRYPT.to_string()),
        test_dir: a.test_dir.clone(),
        email: a.email.clone().or_else(|| g.email.clone()),
        ca_root: a.ca_root.clone().or_else(|| g.acme_ca_root.clone()),
        http01: !a.disable_http_challenge,
        tls_alpn01: !a.disable_tlsalpn_challenge,
        eab: a.eab.clone().or_else(|| g.eab.clone()),
        dns: a.dns.clone().or_else(|| g.acme_dns.clone()),
        dns_options: a.dns_options.clone(),
        preferred_chains: a
            .preferred_chains
            .clone()
            .or_else(|| g.preferred_chains.clone()),
    }
}

fn spec_of(i: &Issuer, g: &dwaar_config::model::GlobalTls) -> IssuerSpec {
    match i {
        Issuer::Internal => IssuerSpec::Internal,
        Issuer::Acme(a) => IssuerSpec::Acme(acme_spec(a, g)),
    }
}

/// A site's own issuers in order, if it names any.
fn site_issuers(tls: &SiteTls, g: &dwaar_config::model::GlobalTls) -> Option<Vec<IssuerSpec>> {
    let first = tls.issuer.as_ref()?;
    Some(
        std::iter::once(first)
            .chain(&tls.fallback_issuers)
            .map(|i| spec_of(i, g))
            .collect(),
    )
}

/// Where an on-demand site's certificates come from, in order: its issuers, else the
/// local CA with `local_certs`, else `cert_issuer`, else the ACME CA.
fn on_demand_issuers(tls: &SiteTls, config: &Config) -> Vec<IssuerSpec> {
    let g = &config.global.tls;
    if let Some(list) = site_issuers(tls, g) {
        return list;
    }
    if g.local_certs {
        return vec![IssuerSpec::Internal];
    }
    if !g.cert_issuers.is_empty() {
        return g.cert_issuers.iter().map(|i| spec_of(i, g)).collect();
    }
    vec![IssuerSpec::Acme(acme_spec(&AcmeIssuer::default(), g))]
}

/// The issuers of `host`, in the order they are tried (never empty).
fn issuers_for(host: &str, tls: &SiteTls, config: &Config) -> Result<Vec<IssuerSpec>, String> {
    let g = &config.global.tls;
    let issuers = match site_issuers(tls, g) {
        Some(list) => list,
        None if g.local_certs || is_internal_name(host) => vec![IssuerSpec::Internal],
        None if !g.cert_issuers.is_empty() => {
            g.cert_issuers.iter().map(|i| spec_of(i, g)).collect()
        }
        None => vec![IssuerSpec::Acme(acme_spec(&AcmeIssuer::default(), g))],
    };
    for issuer in &issuers {
        let IssuerSpec::Acme(a) = issuer else {
            continue;
        };
        if host.starts_with("*.") && a.dns.is_none() {
            return Err(format!(
                "'{host}' needs a wildcard certificate, which ACME CAs issue only through the DNS \
                 challenge: configure a DNS provider ('tls {{ dns <provider> ... }}' or the \
                 'acme_dns' global option), or use 'tls internal'"
            ));
        }
        if a.dns.is_none() && !a.dns_options.is_empty() {
            return Err(format!(
                "the site of '{host}' sets DNS challenge options but has no DNS provider: \
                 add 'dns <provider> ...' to its tls block or the 'acme_dns' global option"
            ));
        }
    }
    Ok(issuers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names() {
        for n in [
            "localhost",
            "a.localhost",
            "printer.local",
            "db.internal",
            "127.0.0.1",
            "::1",
            "box",
        ] {
            assert!(is_internal_name(n), "{n}");
        }
        for n in ["example.com", "a.example.test"] {
            assert!(!is_internal_name(n), "{n}");
        }
    }
}
