//! Stand-ins for the Cloudflare and Route 53 DNS APIs (test doubles, not the real
//! services): each implements only the documented endpoints Dwaar's providers call,
//! checks the credentials the way the service would see them, and applies record
//! changes to a real [`Bind`] server with `nsupdate`, so a real CA can validate them.
//! Every request is recorded as `METHOD path` for assertions.

use crate::bind::Bind;
use crate::stub::{Request, StandIn};
use std::sync::{Arc, Mutex};

/// The string value of `"key":"..."` in a flat JSON object.
fn json_str(body: &str, key: &str) -> Option<String> {
    let at = body.find(&format!("\"{key}\""))?;
    let rest = body[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// The zone of `bind` holding `name`, by suffix.
fn zone_of<'a>(zones: &'a [String], name: &str) -> Option<&'a String> {
    let name = name.trim_end_matches('.');
    zones
        .iter()
        .find(|z| name == z.as_str() || name.ends_with(&format!(".{z}")))
}

/// A stand-in for Cloudflare's API v4 (`/client/v4/zones...`), accepting `token`.
pub fn cloudflare(bind: &Arc<Bind>, zones: &[&str], token: &str) -> StandIn {
    // Weak: the test's drop of its Bind stops named even while this server runs.
    let bind = Arc::downgrade(bind);
    let zones: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    let token = format!("Bearer {token}");
    // Records: (id, zone, name, content).
    type Records = Mutex<Vec<(String, String, String, String)>>;
    let records: Arc<Records> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    StandIn::start(Arc::new(move |r: &Request| {
        let Some(bind) = bind.upgrade() else {
            return (503, String::new());
        };
        let ok = |result: String| {
            (
                200,
                format!("{{\"success\":true,\"errors\":[],\"result\":{result}}}"),
            )
        };
        if r.header("authorization") != Some(token.as_str()) {
            return (
                403,
                "{\"success\":false,\"errors\":[{\"code\":9109,\"message\":\"Invalid access token\"}]}".into(),
            );
        }
        let path = r.path().trim_start_matches("/client/v4");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("GET", ["zones"]) => {
                let name = r.query("name").unwrap_or_default();
                let found: Vec<String> = zones
                    .iter()
                    .filter(|z| **z == name)
                    .map(|z| format!("{{\"id\":\"zone-{z}\",\"name\":\"{z}\"}}"))
                    .collect();
                ok(format!("[{}]", found.join(",")))
            }
            ("POST", ["zones", id, "dns_records"]) => {
                let zone = id.trim_start_matches("zone-").to_string();
                let (Some(name), Some(content)) = (json_str(&r.body, "name"), json_str(&r.body, "content")) else {
                    return (400, "{\"success\":false,\"errors\":[{\"code\":1004,\"message\":\"DNS Validation Error\"}]}".into());
                };
                if json_str(&r.body, "type").as_deref() != Some("TXT") || zone_of(&zones, &name) != Some(&zone) {
                    return (400, "{\"success\":false,\"errors\":[{\"code\":1004,\"message\":\"DNS Validation Error\"}]}".into());
                }
                let cmd = format!("update add {name}. 60 TXT \"{content}\"");
                if let Err(e) = bind.nsupdate(&zone, &[cmd]) {
                    return (500, format!("{{\"success\":false,\"errors\":[{{\"code\":1,\"message\":{e:?}}}]}}"));
                }
                let id = format!("rec{}", next.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
                if let Ok(mut recs) = records.lock() {
                    recs.push((id.clone(), zone, name.clone(), content.clone()));
                }
                ok(format!("{{\"id\":\"{id}\",\"type\":\"TXT\",\"name\":\"{name}\",\"content\":\"{content}\"}}"))
            }
            ("GET", ["zones", id, "dns_records"]) => {
                let zone = id.trim_start_matches("zone-");
                let (name, content) = (r.query("name"), r.query("content"));
                let recs = records.lock().map(|r| r.clone()).unwrap_or_default();
                let found: Vec<String> = recs
                    .iter()
                    .filter(|(_, z, n, c)| {
                        z == zone
                            && name.as_ref().is_none_or(|x| x == n)
                            && content.as_ref().is_none_or(|x| x == c)
                    })
                    .map(|(id, _, n, c)| format!("{{\"id\":\"{id}\",\"type\":\"TXT\",\"name\":\"{n}\",\"content\":\"{c}\"}}"))
                    .collect();
                ok(format!("[{}]", found.join(",")))
            }
            ("DELETE", ["zones", _, "dns_records", rid]) => {
                let mut recs = match records.lock() {
                    Ok(r) => r,
                    Err(_) => return (500, String::new()),
                };
                let Some(at) = recs.iter().position(|(id, ..)| id == rid) else {
                    return (404, "{\"success\":false,\"errors\":[{\"code\":81044,\"message\":\"Record does not exist.\"}]}".into());
                };
                let (id, zone, name, content) = recs.remove(at);
                let cmd = format!("update delete {name}. TXT \"{content}\"");
                if let Err(e) = bind.nsupdate(&zone, &[cmd]) {
                    return (500, format!("{{\"success\":false,\"errors\":[{{\"code\":1,\"message\":{e:?}}}]}}"));
                }
                ok(format!("{{\"id\":\"{id}\"}}"))
            }
            _ => (404, "{\"success\":false,\"errors\":[{\"code\":7003,\"message\":\"No route for that URI\"}]}".into()),
        }
    }))
}

/// Every `<tag>...</tag>` text in `xml`.
fn xml_tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v))
        .collect()
}

/// A stand-in for the Route 53 API (`/2013-04-01/...`), accepting SigV4-signed
/// requests from `access_key_id` (the signature's form is checked; its value is the
/// signer's unit tests' business, against AWS's published vectors).
pub fn route53(bind: &Arc<Bind>, zones: &[&str], access_key_id: &str) -> StandIn {
    let bind = Arc::downgrade(bind);
    let zones: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    let akid = access_key_id.to_string();
    let err = |code: u16, kind: &str, msg: &str| {
        (
            code,
            format!("<?xml version=\"1.0\"?>\n<ErrorResponse><Error><Type>Sender</Type><Code>{kind}</Code><Message>{msg}</Message></Error></ErrorResponse>"),
        )
    };
    StandIn::start(Arc::new(move |r: &Request| {
        let Some(bind) = bind.upgrade() else {
            return (503, String::new());
        };
        let auth = r.header("authorization").unwrap_or("");
        let date = r.header("x-amz-date").unwrap_or("");
        let signed = auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={akid}/{}/",
            date.get(..8).unwrap_or("-")
        )) && auth.contains("/route53/aws4_request, SignedHeaders=")
            && auth.contains("host;")
            && auth.contains("x-amz-date")
            && auth.contains("Signature=");
        if !signed {
            return err(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            );
        }
        let parts: Vec<&str> = r
            .path()
            .trim_start_matches('/')
            .trim_end_matches('/')
            .split('/')
            .collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("GET", ["2013-04-01", "hostedzonesbyname"]) => {
                let name = r.query("dnsname").unwrap_or_default();
                let found: String = zones
                    .iter()
                    .filter(|z| format!("{z}.") == name)
                    .map(|z| format!("<HostedZone><Id>/hostedzone/Z{}</Id><Name>{z}.</Name><CallerReference>t</CallerReference></HostedZone>", z.replace('.', "-")))
                    .collect();
                (200, format!("<?xml version=\"1.0\"?>\n<ListHostedZonesByNameResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><HostedZones>{found}</HostedZones><IsTruncated>false</IsTruncated><MaxItems>1</MaxItems></ListHostedZonesByNameResponse>"))
            }
            ("GET", ["2013-04-01", "hostedzone", _, "rrset"]) => {
                let name = r.query("name").unwrap_or_default();
                let values = bind.dig(name.trim_end_matches('.'), "TXT");
                let set = if values.is_empty() {
                    String::new()
                } else {
                    let recs: String = values
                        .iter()
                        .map(|v| format!("<ResourceRecord><Value>&quot;{v}&quot;</Value></ResourceRecord>"))
                        .collect();
                    format!("<ResourceRecordSet><Name>{name}</Name><Type>TXT</Type><TTL>60</TTL><ResourceRecords>{recs}</ResourceRecords></ResourceRecordSet>")
                };
                (200, format!("<?xml version=\"1.0\"?>\n<ListResourceRecordSetsResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ResourceRecordSets>{set}</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>1</MaxItems></ListResourceRecordSetsResponse>"))
            }
            ("POST", ["2013-04-01", "hostedzone", _, "rrset"]) => {
                let action = xml_tags(&r.body, "Action").first().map(|s| s.to_string()).unwrap_or_default();
                let name = xml_tags(&r.body, "Name").first().map(|s| s.trim_end_matches('.').to_string()).unwrap_or_default();
                let Some(zone) = zone_of(&zones, &name).cloned() else {
                    return err(400, "InvalidChangeBatch", "name outside the zone");
                };
                let values: Vec<String> = xml_tags(&r.body, "Value")
                    .iter()
                    .map(|v| v.replace("&quot;", "\"").trim_matches('"').to_string())
                    .collect();
                let mut cmds = vec![format!("update delete {name}. TXT")];
                match action.as_str() {
                    "UPSERT" | "CREATE" => cmds.extend(values.iter().map(|v| format!("update add {name}. 60 TXT \"{v}\""))),
                    "DELETE" => {
                        let current = bind.dig(&name, "TXT");
                        let mut a = current.clone();
                        let mut b = values.clone();
                        a.sort();
                        b.sort();
                        if a != b {
                            return err(400, "InvalidChangeBatch", "Tried to delete resource record set but the values provided do not match the current values");
                        }
                    }
                    _ => return err(400, "InvalidInput", "unknown action"),
                }
                if let Err(e) = bind.nsupdate(&zone, &cmds) {
                    return err(500, "InternalFailure", &e);
                }
                (200, "<?xml version=\"1.0\"?>\n<ChangeResourceRecordSetsResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeInfo><Id>/change/C0001</Id><Status>PENDING</Status><SubmittedAt>2026-01-01T00:00:00Z</SubmittedAt></ChangeInfo></ChangeResourceRecordSetsResponse>".into())
            }
            ("GET", ["2013-04-01", "change", id]) => (
                200,
                format!("<?xml version=\"1.0\"?>\n<GetChangeResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeInfo><Id>/change/{id}</Id><Status>INSYNC</Status><SubmittedAt>2026-01-01T00:00:00Z</SubmittedAt></ChangeInfo></GetChangeResponse>"),
            ),
            _ => err(404, "NotFound", "no such endpoint"),
        }
    }))
}
