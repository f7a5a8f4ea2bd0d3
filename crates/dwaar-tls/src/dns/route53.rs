//! The Route 53 DNS provider, on the Route 53 REST API signed with Signature Version 4.
//! The hosted zone is the configured one or found by name
//! (`GET /2013-04-01/hostedzonesbyname`). A TXT record set holds every value of a
//! name, so presenting reads the set (`GET .../rrset?name=&type=TXT`), adds the value
//! and `UPSERT`s; cleaning up removes the value (`UPSERT` of the rest, or `DELETE` of
//! the last). Each change is waited on until Route 53 reports it `INSYNC`.

use super::sigv4::{self, canonical_query, Credentials};
use super::TxtRecord;
use crate::https::Client;
use std::time::{Duration, Instant};

pub const API: &str = "https://route53.amazonaws.com";
const VERSION: &str = "2013-04-01";

pub struct Route53 {
    pub creds: Credentials,
    pub region: String,
    pub hosted_zone_id: Option<String>,
    pub endpoint: String,
    pub client: Client,
}

/// The text of each `<tag>...</tag>` in `xml`, in order (Route 53's answers have no
/// attributes or nesting of equal tags where Dwaar reads them).
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

impl Route53 {
    async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &str,
    ) -> Result<String, String> {
        let host = self
            .endpoint
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .unwrap_or(&self.endpoint)
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let date = sigv4::amz_date(now);
        let mut headers: Vec<(&str, &str)> = vec![("host", &host), ("x-amz-date", &date)];
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token", t));
        }
        if !body.is_empty() {
            headers.push(("content-type", "text/xml"));
        }
        let req = sigv4::Request {
            method,
            path,
            query,
            headers: &headers,
            payload: body.as_bytes(),
        };
        let auth = sigv4::authorization(&self.creds, &self.region, "route53", &req, &date);
        let q = canonical_query(query);
        let url = format!(
            "{}{path}{}{q}",
            self.endpoint.trim_end_matches('/'),
            if q.is_empty() { "" } else { "?" }
        );
        let mut send: Vec<(&str, &str)> =
            headers.into_iter().filter(|(k, _)| *k != "host").collect();
        send.push(("authorization", &auth));
        let r = self
            .client
            .send(method, &url, &send, body.as_bytes().to_vec())
            .await?;
        let text = r.text();
        if r.status >= 300 {
            let msg = tags(&text, "Message")
                .first()
                .map(|m| xml_unescape(m))
                .unwrap_or(text.clone());
            return Err(format!(
                "Route 53 {method} {path}: HTTP {}: {msg}",
                r.status
            ));
        }
        Ok(text)
    }

    async fn zone_id(&self, zone: &str) -> Result<String, String> {
        if let Some(id) = &self.hosted_zone_id {
            return Ok(id.trim_start_matches("/hostedzone/").to_string());
        }
        let dns = format!("{zone}.");
        let xml = self
            .call(
                "GET",
                &format!("/{VERSION}/hostedzonesbyname"),
                &[("dnsname", &dns), ("maxitems", "1")],
                "",
            )
            .await?;
        for hz in tags(&xml, "HostedZone") {
            let name = tags(hz, "Name").first().copied().unwrap_or_default();
            if name.trim_end_matches('.').eq_ignore_ascii_case(zone) {
                if let Some(id) = tags(hz, "Id").first() {
                    return Ok(id.trim_start_matches("/hostedzone/").to_string());
                }
            }
        }
        Err(format!(
            "Route 53 has no hosted zone {zone} for these credentials"
        ))
    }

    /// The TXT values (quoted, as Route 53 stores them) and TTL now set for `name`.
    async fn current(
        &self,
        zone_id: &str,
        name: &str,
    ) -> Result<(Vec<String>, Option<u32>), String> {
        let fqdn = format!("{name}.");
        let xml = self
            .call(
                "GET",
                &format!("/{VERSION}/hostedzone/{zone_id}/rrset"),
                &[("name", &fqdn), ("type", "TXT"), ("maxitems", "1")],
                "",
            )
            .await?;
        for set in tags(&xml, "ResourceRecordSet") {
            let same_name = tags(set, "Name")
                .first()
                .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name));
            let txt = tags(set, "Type").first() == Some(&"TXT");
            if same_name && txt {
                let ttl = tags(set, "TTL").first().and_then(|t| t.parse().ok());
                let values = tags(set, "Value").into_iter().map(xml_unescape).collect();
                return Ok((values, ttl));
            }
        }
        Ok((Vec::new(), None))
    }

    async fn change(
        &self,
        zone_id: &str,
        action: &str,
        name: &str,
        ttl: u32,
        values: &[String],
    ) -> Result<(), String> {
        let records: String = values
            .iter()
            .map(|v| {
                format!(
                    "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                    xml_escape(v)
                )
            })
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/{VERSION}/\">\
<ChangeBatch><Changes><Change><Action>{action}</Action><ResourceRecordSet>\
<Name>{name}.</Name><Type>TXT</Type><TTL>{ttl}</TTL><ResourceRecords>{records}</ResourceRecords>\
</ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
        );
        let xml = self
            .call(
                "POST",
                &format!("/{VERSION}/hostedzone/{zone_id}/rrset/"),
                &[],
                &body,
            )
            .await?;
        let Some(change) = tags(&xml, "Id")
            .first()
            .map(|i| i.trim_start_matches("/change/").to_string())
        else {
            return Ok(());
        };
        // Route 53 applies changes to its servers within about a minute.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let xml = self
                .call("GET", &format!("/{VERSION}/change/{change}"), &[], "")
                .await?;
            if tags(&xml, "Status").first() == Some(&"INSYNC") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Route 53 change {change} not in sync after 2 minutes"
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    pub async fn present(&self, r: &TxtRecord) -> Result<(), String> {
        let zone = self.zone_id(&r.zone).await?;
        let (mut values, _) = self.current(&zone, &r.name).await?;
        let quoted = format!("\"{}\"", r.value);
        if !values.contains(&quoted) {
            values.push(quoted);
        }
        self.change(&zone, "UPSERT", &r.name, r.ttl, &values).await
    }

    pub async fn cleanup(&self, r: &TxtRecord) -> Result<(), String> {
        let zone = self.zone_id(&r.zone).await?;
        let (values, ttl) = self.current(&zone, &r.name).await?;
        let quoted = format!("\"{}\"", r.value);
        if !values.contains(&quoted) {
            return Ok(());
        }
        let rest: Vec<String> = values.iter().filter(|v| **v != quoted).cloned().collect();
        let ttl = ttl.unwrap_or(r.ttl);
        if rest.is_empty() {
            self.change(&zone, "DELETE", &r.name, ttl, &values).await
        } else {
            self.change(&zone, "UPSERT", &r.name, ttl, &rest).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tags() {
        let xml = "<ListHostedZonesByNameResponse><HostedZones><HostedZone><Id>/hostedzone/Z1</Id><Name>example.com.</Name></HostedZone></HostedZones></ListHostedZonesByNameResponse>";
        let zones = tags(xml, "HostedZone");
        assert_eq!(zones.len(), 1);
        assert_eq!(tags(zones[0], "Id"), vec!["/hostedzone/Z1"]);
        assert_eq!(tags("<a>1</a><a>2</a><a>3", "a"), vec!["1", "2"]);
        assert_eq!(xml_unescape(&xml_escape("\"a&b<c>\"")), "\"a&b<c>\"");
    }
}
