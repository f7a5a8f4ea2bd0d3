//! RFC 2136 dynamic updates: the TXT record is added to and removed from the zone on
//! its primary server (BIND, Knot, PowerDNS...), signed with TSIG when a key is set.
//! Updates go over TCP; the answer's response code says whether the server applied it.

use super::wire::{self, Change, TsigKey};
use super::TxtRecord;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub struct Rfc2136 {
    pub server: String,
    pub key: Option<TsigKey>,
}

impl Rfc2136 {
    fn server(&self) -> Result<SocketAddr, String> {
        let s = &self.server;
        let with_port = if s.parse::<std::net::IpAddr>().is_ok() {
            SocketAddr::new(s.parse().map_err(|_| format!("bad server {s}"))?, 53).to_string()
        } else if s
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            s.clone()
        } else {
            format!("{s}:53")
        };
        with_port
            .to_socket_addrs()
            .map_err(|e| format!("DNS server {s}: {e}"))?
            .next()
            .ok_or_else(|| format!("DNS server {s} has no address"))
    }

    async fn send(&self, zone: &str, change: Change<'_>) -> Result<(), String> {
        let server = self.server()?;
        let mut msg = wire::update(rand::random(), zone, &[change])?;
        if let Some(k) = &self.key {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            k.sign(&mut msg, now)?;
        }
        let answer = wire::exchange_tcp(server, &msg, Duration::from_secs(10)).await?;
        if answer.rcode != 0 {
            return Err(format!(
                "{server} refused the update of zone {zone}: {}",
                wire::rcode_name(answer.rcode)
            ));
        }
        Ok(())
    }

    pub async fn present(&self, r: &TxtRecord) -> Result<(), String> {
        self.send(
            &r.zone,
            Change::AddTxt {
                name: &r.name,
                ttl: r.ttl,
                value: &r.value,
            },
        )
        .await
    }

    pub async fn cleanup(&self, r: &TxtRecord) -> Result<(), String> {
        self.send(
            &r.zone,
            Change::DeleteTxt {
                name: &r.name,
                value: &r.value,
            },
        )
        .await
    }
}
