//! DNS lookups of the DNS-01 challenge: which zone a record name falls in (following
//! a CNAME on the record, so `_acme-challenge` may be delegated), the zone's
//! authoritative servers, and whether each of them already serves the TXT value.
//!
//! Lookups go to the configured `resolvers` (else `/etc/resolv.conf`'s nameservers).
//! The propagation check asks the zone's authoritative servers themselves, so a
//! resolver's cache cannot hide a missing record; with `resolvers` configured it asks
//! those instead (as Caddy does: they are what the operator trusts to see the zone).

use super::wire::{self, Data, Message};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The DNS servers lookups go to, and whether the operator chose them.
#[derive(Debug, Clone)]
pub struct Resolvers(pub Vec<SocketAddr>, pub bool);

impl Resolvers {
    /// `configured` (`ip[:port]`), else the system's nameservers, else 127.0.0.1:53.
    pub fn new(configured: &[String]) -> Resolvers {
        let mut out: Vec<SocketAddr> = configured
            .iter()
            .filter_map(|s| dwaar_config::compile::resolver_addr(s))
            .collect();
        let chosen = !out.is_empty();
        if out.is_empty() {
            let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            out = system_nameservers(&conf);
        }
        if out.is_empty() {
            out.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        Resolvers(out, chosen)
    }

    /// Asks each resolver in turn until one answers.
    pub async fn ask(&self, name: &str, qtype: u16) -> Result<Message, String> {
        let mut last = String::from("no resolver");
        for server in &self.0 {
            let q = wire::query(rand::random(), name, qtype, true)?;
            match wire::exchange(*server, &q, QUERY_TIMEOUT).await {
                Ok(m) if m.rcode == 0 || m.rcode == 3 => return Ok(m),
                Ok(m) => last = format!("{server}: {}", wire::rcode_name(m.rcode)),
                Err(e) => last = e,
            }
        }
        Err(format!("looking up {name}: {last}"))
    }
}

fn system_nameservers(conf: &str) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect()
}

/// Where a record goes: its final name (after CNAMEs) and the zone holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub name: String,
    pub zone: String,
}

/// Finds the zone of `name`: the owner of the SOA record in the answer or the
/// authority section of a SOA query, after following CNAMEs of `name`.
pub async fn place(res: &Resolvers, name: &str) -> Result<Placement, String> {
    let mut name = name.trim_end_matches('.').to_ascii_lowercase();
    for _ in 0..8 {
        let m = res.ask(&name, wire::SOA).await?;
        if let Some(target) = m.answers.iter().find_map(|r| match &r.data {
            Data::Name(t) if r.rtype == wire::CNAME && r.name == name => Some(t.clone()),
            _ => None,
        }) {
            name = target;
            continue;
        }
        let soa = m
            .answers
            .iter()
            .chain(&m.authority)
            .find(|r| r.rtype == wire::SOA);
        return match soa {
            Some(s) => Ok(Placement {
                zone: s.name.clone(),
                name,
            }),
            None => Err(format!("no DNS zone found for {name}")),
        };
    }
    Err(format!("too many CNAMEs from {name}"))
}

/// The addresses (port 53) of `zone`'s authoritative servers.
pub async fn authoritative(res: &Resolvers, zone: &str) -> Result<Vec<SocketAddr>, String> {
    let m = res.ask(zone, wire::NS).await?;
    let names: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.rtype == wire::NS)
        .filter_map(|r| match &r.data {
            Data::Name(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(format!("the zone {zone} has no NS records"));
    }
    let mut out = Vec::new();
    for ns in &names {
        let glue: Vec<SocketAddr> = m
            .additional
            .iter()
            .filter(|r| &r.name == ns)
            .filter_map(|r| match r.data {
                Data::Addr(ip) => Some(SocketAddr::from((ip, 53))),
                _ => None,
            })
            .collect();
        if !glue.is_empty() {
            out.extend(glue);
            continue;
        }
        for qtype in [wire::A, wire::AAAA] {
            if let Ok(a) = res.ask(ns, qtype).await {
                out.extend(a.answers.iter().filter_map(|r| match r.data {
                    Data::Addr(ip) => Some(SocketAddr::from((ip, 53))),
                    _ => None,
                }));
            }
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!(
            "no address found for the name servers of {zone}: {names:?}"
        ));
    }
    Ok(out)
}

/// Whether `server` answers `name`'s TXT query with `value` among the values.
async fn serves(server: SocketAddr, recurse: bool, name: &str, value: &str) -> bool {
    let Ok(q) = wire::query(rand::random(), name, wire::TXT, recurse) else {
        return false;
    };
    match wire::exchange(server, &q, QUERY_TIMEOUT).await {
        Ok(m) => m
            .answers
            .iter()
            .any(|r| r.rtype == wire::TXT && r.data == Data::Txt(value.to_string())),
        Err(_) => false,
    }
}

/// Polls every authoritative server of each record's zone (the chosen resolvers, when
/// there are) until all serve the values, for at most `timeout`.
pub async fn wait_until_served(
    res: &Resolvers,
    records: &[(Placement, String)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut pending = Vec::new();
    for (p, value) in records {
        let servers = match res.1 {
            true => res.0.clone(),
            false => authoritative(res, &p.zone).await?,
        };
        for server in servers {
            pending.push((server, p.name.clone(), value.clone()));
        }
    }
    loop {
        let mut still = Vec::new();
        for (server, name, value) in pending {
            if !serves(server, res.1, &name, &value).await {
                still.push((server, name, value));
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (server, name, _) = &still[0];
            return Err(format!(
                "the TXT record {name} was not served by {server} within {timeout:?} (propagation_timeout)"
            ));
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_from_resolv_conf() {
        let conf = "# comment\nnameserver 10.0.0.2\nsearch lan\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            system_nameservers(conf),
            vec![
                SocketAddr::from(([10, 0, 0, 2], 53)),
                "[::1]:53".parse().unwrap()
            ]
        );
        let r = Resolvers::new(&["127.0.0.1:5353".into(), "9.9.9.9".into()]);
        assert_eq!(
            r.0,
            vec![
                SocketAddr::from(([127, 0, 0, 1], 5353)),
                SocketAddr::from(([9, 9, 9, 9], 53))
            ]
        );
    }
}
