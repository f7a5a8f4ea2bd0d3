//! The ACME DNS-01 challenge: publishing `_acme-challenge` TXT records through a DNS
//! provider, waiting until the zone's authoritative servers serve them, and removing
//! them after validation.
//!
//! A provider is anything implementing [`DnsProvider`] (`present` and `cleanup` of one
//! TXT value). Built in: [`rfc2136`] (dynamic updates with TSIG, for self-hosted DNS),
//! [`cloudflare`] and [`route53`] (their HTTP APIs, Route 53 signed by [`sigv4`]) and
//! [`exec`] (a program of the user's for anything else). [`lookup`] finds zones and
//! checks propagation; [`wire`] is the DNS message format both use.

pub mod cloudflare;
pub mod exec;
pub mod lookup;
pub mod rfc2136;
pub mod route53;
pub mod sigv4;
pub mod wire;

use dwaar_config::model::{DnsOptions, DnsProvider as ProviderConfig};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One TXT value to publish: the record's name and zone (lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    pub zone: String,
    pub name: String,
    pub value: String,
    pub ttl: u32,
}

pub type Pending<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A DNS service that can add and remove a TXT value. Other values of the same name
/// (a wildcard and its base name validate through the same record) must survive.
pub trait DnsProvider: Send + Sync {
    fn present<'a>(&'a self, r: &'a TxtRecord) -> Pending<'a>;
    fn cleanup<'a>(&'a self, r: &'a TxtRecord) -> Pending<'a>;
}

macro_rules! provider_impl {
    ($t:ty) => {
        impl DnsProvider for $t {
            fn present<'a>(&'a self, r: &'a TxtRecord) -> Pending<'a> {
                Box::pin(<$t>::present(self, r))
            }
            fn cleanup<'a>(&'a self, r: &'a TxtRecord) -> Pending<'a> {
                Box::pin(<$t>::cleanup(self, r))
            }
        }
    };
}
provider_impl!(rfc2136::Rfc2136);
provider_impl!(cloudflare::Cloudflare);
provider_impl!(route53::Route53);
provider_impl!(exec::Exec);

/// A configured value: `{env.NAME}` is read from the environment now.
fn resolve(v: &str) -> Result<String, String> {
    match v.strip_prefix("{env.").and_then(|r| r.strip_suffix('}')) {
        Some(name) => {
            std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))
        }
        None => Ok(v.to_string()),
    }
}

fn resolve_opt(v: &Option<String>) -> Result<Option<String>, String> {
    v.as_deref().map(resolve).transpose()
}

/// Builds the provider a config names.
pub fn provider(cfg: &ProviderConfig) -> Result<Box<dyn DnsProvider>, String> {
    Ok(match cfg {
        ProviderConfig::Rfc2136 {
            server,
            key_name,
            key_alg,
            key,
        } => {
            let key = match (key_name, key) {
                (Some(name), Some(secret)) => {
                    use base64::Engine;
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(resolve(secret)?.trim())
                        .map_err(|_| format!("the TSIG key {name} is not base64"))?;
                    Some(wire::TsigKey {
                        name: name.clone(),
                        algorithm: key_alg.clone(),
                        secret,
                    })
                }
                _ => None,
            };
            Box::new(rfc2136::Rfc2136 {
                server: resolve(server)?,
                key,
            })
        }
        ProviderConfig::Cloudflare {
            api_token,
            zone_token,
            endpoint,
        } => Box::new(cloudflare::Cloudflare {
            api_token: resolve(api_token)?,
            zone_token: resolve_opt(zone_token)?,
            endpoint: endpoint.clone().unwrap_or_else(|| cloudflare::API.into()),
            client: crate::https::Client::new(None)?,
        }),
        ProviderConfig::Route53 {
            access_key_id,
            secret_access_key,
            session_token,
            region,
            hosted_zone_id,
            endpoint,
        } => {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let (id, secret, token) =
                match (resolve_opt(access_key_id)?, resolve_opt(secret_access_key)?) {
                    (Some(i), Some(s)) => (i, s, resolve_opt(session_token)?),
                    _ => (
                        env("AWS_ACCESS_KEY_ID")
                            .ok_or("route53: no access_key_id and no AWS_ACCESS_KEY_ID")?,
                        env("AWS_SECRET_ACCESS_KEY")
                            .ok_or("route53: no secret_access_key and no AWS_SECRET_ACCESS_KEY")?,
                        resolve_opt(session_token)?.or_else(|| env("AWS_SESSION_TOKEN")),
                    ),
                };
            Box::new(route53::Route53 {
                creds: sigv4::Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: token,
                },
                region: resolve_opt(region)?
                    .or_else(|| env("AWS_REGION"))
                    .unwrap_or_else(|| "us-east-1".into()),
                hosted_zone_id: resolve_opt(hosted_zone_id)?,
                endpoint: endpoint.clone().unwrap_or_else(|| route53::API.into()),
                client: crate::https::Client::new(None)?,
            })
        }
        ProviderConfig::Exec { command } => Box::new(exec::Exec {
            command: command.clone(),
        }),
    })
}

/// DNS-01 for one ACME issuer: a provider and how records are placed and checked.
pub struct Dns01 {
    provider: Box<dyn DnsProvider>,
    options: DnsOptions,
    resolvers: lookup::Resolvers,
}

impl Dns01 {
    pub fn new(cfg: &ProviderConfig, options: &DnsOptions) -> Result<Dns01, String> {
        Ok(Dns01 {
            provider: provider(cfg)?,
            options: options.clone(),
            resolvers: lookup::Resolvers::new(&options.resolvers),
        })
    }

    /// Publishes `value` for the identifier `domain` (a wildcard's base name): at
    /// `_acme-challenge.<domain>` (or the override domain), after CNAMEs.
    pub async fn present(&self, domain: &str, value: &str) -> Result<TxtRecord, String> {
        let name = match &self.options.override_domain {
            Some(o) => o.clone(),
            None => format!("_acme-challenge.{}", domain.trim_end_matches('.')),
        };
        let at = lookup::place(&self.resolvers, &name).await?;
        let r = TxtRecord {
            zone: at.zone,
            name: at.name,
            value: value.to_string(),
            ttl: self.options.ttl_s.unwrap_or(120),
        };
        self.provider.present(&r).await?;
        tracing::info!(
            record = r.name,
            zone = r.zone,
            "published the DNS-01 TXT record"
        );
        Ok(r)
    }

    /// Waits `propagation_delay`, then until every authoritative server of each
    /// record's zone serves it (unless `propagation_timeout -1`).
    pub async fn wait(&self, records: &[TxtRecord]) -> Result<(), String> {
        if let Some(d) = self.options.propagation_delay_ms {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        let timeout = match self.options.propagation_timeout_ms {
            Some(0) => return Ok(()),
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(120),
        };
        let placed: Vec<(lookup::Placement, String)> = records
            .iter()
            .map(|r| {
                (
                    lookup::Placement {
                        name: r.name.clone(),
                        zone: r.zone.clone(),
                    },
                    r.value.clone(),
                )
            })
            .collect();
        lookup::wait_until_served(&self.resolvers, &placed, timeout).await
    }

    pub async fn cleanup(&self, r: &TxtRecord) {
        match self.provider.cleanup(r).await {
            Ok(()) => tracing::info!(record = r.name, "removed the DNS-01 TXT record"),
            Err(e) => tracing::warn!(
                record = r.name,
                "could not remove the DNS-01 TXT record: {e}"
            ),
        }
    }
}
