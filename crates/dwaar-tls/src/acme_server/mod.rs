//! `acme_server`: a site that is an ACME CA (RFC 8555) for a private network, issuing
//! from Dwaar's local CA.
//!
//! Endpoints live under `/acme/<ca>/`: `directory`, `new-nonce`, `new-account`,
//! `new-order`, `revoke-cert`, and per object `account/<id>`, `order/<id>`,
//! `authz/<id>`, `chall/<authz>-<n>`, `finalize/<order>`, `cert/<order>`. Requests are
//! JWS-signed ([`jws`]); accounts are identified by their key's thumbprint.
//!
//! Accounts, orders, authorisations and certificates are JSON files in storage
//! (`acme_server/<ca>/`), so every worker process and a restarted server see them.
//! Nonces are stateless (a timestamp and random bytes, MACed with a key kept in the
//! same place): any process can check one; each process remembers those it consumed.
//! Challenges (HTTP-01, TLS-ALPN-01, DNS-01) are validated in the background
//! ([`validate`]); an order's status follows from its authorisations.

pub mod jws;
pub mod validate;

use crate::ca::LocalCa;
use crate::storage::{Secrecy, Storage};
use jws::{b64, Jws};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a nonce is accepted.
const NONCE_LIFE: Duration = Duration::from_secs(3600);
/// How long orders and authorisations stay pending.
const PENDING_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an `acme_server` block allows.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `local`: the CA's name in paths and storage.
    pub ca: String,
    pub lifetime: Duration,
    /// Challenge types offered: `http-01`, `tls-alpn-01`, `dns-01`.
    pub challenges: Vec<String>,
    pub allow_wildcard_names: bool,
    pub allow: NameRules,
    pub deny: NameRules,
    /// DNS servers for validation lookups; empty: the system's.
    pub resolvers: Vec<String>,
}

/// `allow` / `deny`: domain patterns (`*.example.com` covers names under it) and IP
/// ranges.
#[derive(Debug, Clone, Default)]
pub struct NameRules {
    pub domains: Vec<String>,
    pub ip_ranges: Vec<(std::net::IpAddr, u8)>,
}

impl NameRules {
    fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.ip_ranges.is_empty()
    }

    fn matches(&self, id_type: &str, value: &str) -> bool {
        match id_type {
            "ip" => value.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                self.ip_ranges
                    .iter()
                    .any(|(net, bits)| in_range(ip, *net, *bits))
            }),
            _ => self.domains.iter().any(|d| match d.strip_prefix("*.") {
                Some(parent) => value.ends_with(&format!(".{parent}")) || value == d,
                None => d == value,
            }),
        }
    }
}

fn in_range(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u8) -> bool {
    let (a, b, len) = match (ip, net) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            (u32::from(a) as u128, u32::from(b) as u128, 32u32)
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let bits = (bits as u32).min(len);
    if bits == 0 {
        return true;
    }
    let shift = len - bits;
    (a >> shift) == (b >> shift)
}

/// An HTTP answer of the ACME server.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// State that outlives a config reload: consumed nonces and the lock that orders
/// read-modify-write of stored objects within a process.
#[derive(Default)]
struct Live {
    used_nonces: Mutex<HashMap<String, SystemTime>>,
    write: Mutex<()>,
}

fn live(key: &str) -> Arc<Live> {
    static ALL: std::sync::OnceLock<Mutex<HashMap<String, Arc<Live>>>> = std::sync::OnceLock::new();
    let mut all = ALL
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(key.to_string()).or_default().clone()
}

pub struct AcmeServer {
    pub settings: Settings,
    /// `/acme/<ca>/`.
    prefix: String,
    ca: Arc<LocalCa>,
    storage: Storage,
    nonce_key: ring::hmac::Key,
    live: Arc<Live>,
}

impl std::fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeServer")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn random_id() -> String {
    b64(&rand::random::<[u8; 12]>())
}

/// An ACME problem document answer.
fn problem(status: u16, kind: &str, detail: impl Into<String>) -> Answer {
    let body = json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail.into(),
        "status": status,
    });
    Answer {
        status,
        headers: vec![("content-type", "application/problem+json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn json_answer(status: u16, v: &Value) -> Answer {
    Answer {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: v.to_string().into_bytes(),
    }
}

/// A request's account and payload after its JWS checked out.
struct Signed {
    payload: Value,
    raw_payload: Vec<u8>,
    /// The account's id (its key thumbprint).
    account: String,
    /// The key of a `jwk`-signed request (new accounts).
    jwk: Option<Value>,
}

impl AcmeServer {
    pub fn new(
        settings: Settings,
        ca: Arc<LocalCa>,
        storage: Storage,
    ) -> Result<AcmeServer, String> {
        let base = format!("acme_server/{}", settings.ca);
        let key_rel = format!("{base}/nonce.key");
        let secret = match storage.read(&key_rel) {
            Some(k) if k.len() == 32 => k,
            _ => {
                let k = rand::random::<[u8; 32]>().to_vec();
                storage.write(&key_rel, &k, Secrecy::Secret)?;
                // Another process may have written first: use what is stored.
                storage.read(&key_rel).unwrap_or(k)
            }
        };
        Ok(AcmeServer {
            prefix: format!("/acme/{}/", settings.ca),
            live: live(&format!("{}/{base}", storage.root().display())),
            settings,
            ca,
            storage,
            nonce_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        })
    }

    /// Whether `path` is one of this server's.
    pub fn handles(&self, path: &str) -> bool {
        path.starts_with(&self.prefix)
    }

    fn rel(&self, kind: &str, id: &str) -> String {
        format!(
            "acme_server/{}/{kind}/{}.json",
            self.settings.ca,
            crate::storage::safe_name(id)
        )
    }

    fn load(&self, kind: &str, id: &str) -> Option<Value> {
        serde_json::from_slice(&self.storage.read(&self.rel(kind, id))?).ok()
    }

    fn save(&self, kind: &str, id: &str, v: &Value) -> Result<(), String> {
        self.storage.write(
            &self.rel(kind, id),
            v.to_string().as_bytes(),
            Secrecy::Public,
        )
    }

    fn new_nonce(&self) -> String {
        let mut raw = now_secs().to_be_bytes().to_vec();
        raw.extend_from_slice(&rand::random::<[u8; 8]>());
        let tag = ring::hmac::sign(&self.nonce_key, &raw);
        raw.extend_from_slice(&tag.as_ref()[..16]);
        b64(&raw)
    }

    /// Checks and consumes a nonce.
    fn take_nonce(&self, nonce: &str) -> bool {
        let Ok(raw) = jws::unb64(nonce) else {
            return false;
        };
        if raw.len() != 32 {
            return false;
        }
        let tag = ring::hmac::sign(&self.nonce_key, &raw[..16]);
        if !ring_eq(&tag.as_ref()[..16], &raw[16..]) {
            return false;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let issued = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(ts));
        if SystemTime::now()
            .duration_since(issued)
            .map_or(true, |age| age > NONCE_LIFE)
        {
            return false;
        }
        let mut used = self
            .live
            .used_nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if used.len() > 10_000 {
            let cutoff = SystemTime::now() - NONCE_LIFE;
            used.retain(|_, t| *t > cutoff);
        }
        used.insert(nonce.to_string(), issued).is_none()
    }

    /// Answers one request. `base` is `https://host[:port]` as the client reached it.
    pub fn handle(self: &Arc<Self>, method: &str, base: &str, path: &str, body: &[u8]) -> Answer {
        let url = format!("{base}{path}");
        let dir = format!("{base}{}", self.prefix);
        let rest = path.strip_prefix(&self.prefix).unwrap_or("");
        let mut a = match (method, rest) {
            ("GET", "directory") => json_answer(
                200,
                &json!({
                    "newNonce": format!("{dir}new-nonce"),
                    "newAccount": format!("{dir}new-account"),
                    "newOrder": format!("{dir}new-order"),
                    "revokeCert": format!("{dir}revoke-cert"),
                    "keyChange": format!("{dir}key-change"),
                    "meta": {"externalAccountRequired": false},
                }),
            ),
            ("HEAD", "new-nonce") => Answer {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            },
            ("GET", "new-nonce") => Answer {
                status: 204,
                headers: Vec::new(),
                body: Vec::new(),
            },
            ("POST", _) => match self.post(&url, &dir, rest, body) {
                Ok(a) | Err(a) => a,
            },
            (_, "directory" | "new-nonce") => problem(405, "malformed", "method not allowed"),
            ("GET", _) => problem(405, "malformed", "use POST-as-GET (RFC 8555 §6.3)"),
            _ => problem(405, "malformed", "method not allowed"),
        };
        a.headers.push(("replay-nonce", self.new_nonce()));
        a.headers.push(("cache-control", "no-store".into()));
        a.headers
            .push(("link", format!("<{dir}directory>;rel=\"index\"")));
        a
    }

    fn verify(&self, url: &str, body: &[u8], new_account: bool) -> Result<Signed, Answer> {
        let jws = Jws::parse(body).map_err(|e| problem(400, "malformed", e))?;
        if jws.header_str("url") != Some(url) {
            return Err(problem(
                401,
                "unauthorized",
                "the JWS url is not this request's URL",
            ));
        }
        let nonce = jws.header_str("nonce").unwrap_or("");
        if !self.take_nonce(nonce) {
            return Err(problem(
                400,
                "badNonce",
                "the nonce is unknown, used or expired",
            ));
        }
        let (key, account, jwk) = match (&jws.header["jwk"], jws.header_str("kid")) {
            (Value::Object(_), None) if new_account => {
                let k = jws.header["jwk"].clone();
                let id = jws::thumbprint(&k).map_err(|e| problem(400, "badPublicKey", e))?;
                (k.clone(), id, Some(k))
            }
            (Value::Null, Some(kid)) if !new_account => {
                let id = kid.rsplit('/').next().unwrap_or("").to_string();
                let acct = self
                    .load("accounts", &id)
                    .filter(|_| kid.ends_with(&format!("account/{id}")))
                    .ok_or_else(|| problem(400, "accountDoesNotExist", "no such account"))?;
                if acct["status"] != "valid" {
                    return Err(problem(401, "unauthorized", "the account is deactivated"));
                }
                (acct["key"].clone(), id, None)
            }
            _ => {
                return Err(problem(
                    400,
                    "malformed",
                    if new_account {
                        "new accounts are signed with a jwk"
                    } else {
                        "requests are signed with a kid"
                    },
                ))
            }
        };
        jws.verify(&key).map_err(|e| problem(400, "malformed", e))?;
        let payload = if jws.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&jws.payload)
                .map_err(|_| problem(400, "malformed", "the payload is not JSON"))?
        };
        Ok(Signed {
            payload,
            raw_payload: jws.payload,
            account,
            jwk,
        })
    }

    fn post(
        self: &Arc<Self>,
        url: &str,
        dir: &str,
        rest: &str,
        body: &[u8],
    ) -> Result<Answer, Answer> {
        let new_account = rest == "new-account";
        let s = self.verify(url, body, new_account)?;
        let _w = self.live.write.lock().unwrap_or_else(|p| p.into_inner());
        let (kind, id) = rest.split_once('/').unwrap_or((rest, ""));
        match kind {
            "new-account" => self.new_account(dir, s),
            "account" => {
                if id != s.account {
                    return Err(problem(403, "unauthorized", "not your account"));
                }
                let mut acct = self
                    .load("accounts", id)
                    .ok_or_else(|| problem(404, "malformed", "no such account"))?;
                if let Some(c) = s.payload.get("contact") {
                    acct["contact"] = c.clone();
                }
                if s.payload["status"] == "deactivated" {
                    acct["status"] = json!("deactivated");
                }
                self.save("accounts", id, &acct)
                    .map_err(|e| problem(500, "serverInternal", e))?;
                Ok(json_answer(200, &account_view(&acct, dir, id)))
            }
            "new-order" => self.new_order(dir, s),
            "order" => {
                let order = self.owned("orders", id, &s)?;
                Ok(json_answer(200, &self.order_view(&order, dir, id)))
            }
            "authz" => {
                let authz = self.owned("authz", id, &s)?;
                Ok(json_answer(200, &authz_view(&authz, dir, id)))
            }
            "chall" => self.challenge(dir, id, s),
            "finalize" => self.finalize(dir, id, s),
            "cert" => {
                self.owned("orders", id, &s)?;
                let pem = self
                    .storage
                    .read(&format!(
                        "acme_server/{}/certs/{}.pem",
                        self.settings.ca,
                        crate::storage::safe_name(id)
                    ))
                    .ok_or_else(|| problem(404, "malformed", "no certificate for this order"))?;
                Ok(Answer {
                    status: 200,
                    headers: vec![("content-type", "application/pem-certificate-chain".into())],
                    body: pem,
                })
            }
            "revoke-cert" => {
                // Certificates from a private CA are short-lived; a revocation is
                // recorded (and refused for certificates of other accounts' orders).
                let cert = s.payload["certificate"].as_str().unwrap_or("");
                if cert.is_empty() {
                    return Err(problem(400, "malformed", "no certificate to revoke"));
                }
                let rel = format!(
                    "acme_server/{}/revoked/{}",
                    self.settings.ca,
                    crate::storage::safe_name(&s.account)
                );
                let mut list = self.storage.read(&rel).unwrap_or_default();
                list.extend_from_slice(cert.as_bytes());
                list.push(b'\n');
                self.storage
                    .write(&rel, &list, Secrecy::Public)
                    .map_err(|e| problem(500, "serverInternal", e))?;
                Ok(Answer {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                })
            }
            "key-change" => Err(problem(
                501,
                "malformed",
                "key rollover is not supported by this CA; register a new account",
            )),
            _ => {
                let _ = s.raw_payload;
                Err(problem(404, "malformed", "no such resource"))
            }
        }
    }

    /// A stored object that belongs to the requesting account.
    fn owned(&self, kind: &str, id: &str, s: &Signed) -> Result<Value, Answer> {
        let v = self
            .load(kind, id)
            .ok_or_else(|| problem(404, "malformed", format!("no such {kind} object")))?;
        if v["account"] != s.account.as_str() {
            return Err(problem(
                403,
                "unauthorized",
                "this object belongs to another account",
            ));
        }
        Ok(v)
    }

    fn new_account(&self, dir: &str, s: Signed) -> Result<Answer, Answer> {
        let id = s.account.clone();
        let location = format!("{dir}account/{id}");
        if let Some(acct) = self.load("accounts", &id) {
            let mut a = json_answer(200, &account_view(&acct, dir, &id));
            a.headers.push(("location", location));
            return Ok(a);
        }
        if s.payload["onlyReturnExisting"] == true {
            return Err(problem(
                400,
                "accountDoesNotExist",
                "no account for this key",
            ));
        }
        let acct = json!({
            "key": s.jwk,
            "status": "valid",
            "contact": s.payload.get("contact").cloned().unwrap_or(json!([])),
            "created": now_secs(),
        });
        self.save("accounts", &id, &acct)
            .map_err(|e| problem(500, "serverInternal", e))?;
        tracing::info!(account = id, "ACME server: new account");
        let mut a = json_answer(201, &account_view(&acct, dir, &id));
        a.headers.push(("location", location));
        Ok(a)
    }

    /// Why the CA refuses an identifier, if it does.
    fn refuse(&self, id_type: &str, value: &str) -> Option<String> {
        if id_type != "dns" && id_type != "ip" {
            return Some(format!("identifier type '{id_type}' is not supported"));
        }
        if id_type == "ip" && value.parse::<std::net::IpAddr>().is_err() {
            return Some(format!("'{value}' is not an IP address"));
        }
        if id_type == "dns" {
            let base = value.strip_prefix("*.").unwrap_or(value);
            let ok = !base.is_empty()
                && base.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Some(format!("'{value}' is not a DNS name"));
            }
            if value.starts_with("*.") && !self.settings.allow_wildcard_names {
                return Some("wildcard names are not allowed by this CA".into());
            }
        }
        if self.settings.deny.matches(id_type, value) {
            return Some(format!("'{value}' is denied by this CA's policy"));
        }
        if !self.settings.allow.is_empty() && !self.settings.allow.matches(id_type, value) {
            return Some(format!("'{value}' is not allowed by this CA's policy"));
        }
        None
    }

    fn new_order(&self, dir: &str, s: Signed) -> Result<Answer, Answer> {
        let ids = s.payload["identifiers"]
            .as_array()
            .filter(|a| !a.is_empty() && a.len() <= 100)
            .ok_or_else(|| problem(400, "malformed", "an order names 1 to 100 identifiers"))?;
        let mut identifiers = Vec::new();
        for i in ids {
            let (t, v) = (
                i["type"].as_str().unwrap_or(""),
                i["value"].as_str().unwrap_or("").to_ascii_lowercase(),
            );
            if let Some(why) = self.refuse(t, &v) {
                return Err(problem(400, "rejectedIdentifier", why));
            }
            identifiers.push(json!({"type": t, "value": v}));
        }
        let order_id = random_id();
        let expires = now_secs() + PENDING_LIFE.as_secs();
        let mut authzs = Vec::new();
        for ident in &identifiers {
            let value = ident["value"].as_str().unwrap_or("");
            let wildcard = value.starts_with("*.");
            let authz_id = random_id();
            let challenges: Vec<Value> = self
                .settings
                .challenges
                .iter()
                .filter(|c| !wildcard || *c == "dns-01")
                .filter(|c| ident["type"] == "dns" || *c != "dns-01")
                .map(|c| json!({"type": c, "token": random_id() + &random_id(), "status": "pending"}))
                .collect();
            if challenges.is_empty() {
                return Err(problem(
                    400,
                    "rejectedIdentifier",
                    format!("no challenge this CA offers can validate '{value}'"),
                ));
            }
            let authz = json!({
                "account": s.account,
                "identifier": {"type": ident["type"], "value": value.trim_start_matches("*.")},
                "wildcard": wildcard,
                "status": "pending",
                "expires": expires,
                "challenges": challenges,
            });
            self.save("authz", &authz_id, &authz)
                .map_err(|e| problem(500, "serverInternal", e))?;
            authzs.push(authz_id);
        }
        let order = json!({
            "account": s.account,
            "identifiers": identifiers,
            "authorizations": authzs,
            "expires": expires,
        });
        self.save("orders", &order_id, &order)
            .map_err(|e| problem(500, "serverInternal", e))?;
        let mut a = json_answer(201, &self.order_view(&order, dir, &order_id));
        a.headers
            .push(("location", format!("{dir}order/{order_id}")));
        Ok(a)
    }

    /// An order's status, from its authorisations and certificate.
    fn order_status(&self, order: &Value) -> &'static str {
        if order["certificate"].is_string() {
            return "valid";
        }
        if order["error"].is_object() {
            return "invalid";
        }
        let mut all_valid = true;
        for id in order["authorizations"].as_array().into_iter().flatten() {
            let st = id
                .as_str()
                .and_then(|id| self.load("authz", id))
                .map(|a| a["status"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            match st.as_str() {
                "valid" => {}
                "invalid" | "" => return "invalid",
                _ => all_valid = false,
            }
        }
        if order["expires"].as_u64().is_some_and(|e| e < now_secs()) && !all_valid {
            return "invalid";
        }
        if all_valid {
            "ready"
        } else {
            "pending"
        }
    }

    fn order_view(&self, order: &Value, dir: &str, id: &str) -> Value {
        let mut v = json!({
            "status": self.order_status(order),
            "expires": rfc3339(order["expires"].as_u64().unwrap_or(0)),
            "identifiers": order["identifiers"],
            "authorizations": order["authorizations"].as_array().into_iter().flatten()
                .map(|a| format!("{dir}authz/{}", a.as_str().unwrap_or(""))).collect::<Vec<_>>(),
            "finalize": format!("{dir}finalize/{id}"),
        });
        if order["certificate"].is_string() {
            v["certificate"] = json!(format!("{dir}cert/{id}"));
        }
        if order["error"].is_object() {
            v["error"] = order["error"].clone();
        }
        v
    }

    fn challenge(self: &Arc<Self>, dir: &str, chall_id: &str, s: Signed) -> Result<Answer, Answer> {
        let (authz_id, n) = chall_id
            .rsplit_once('-')
            .and_then(|(a, n)| Some((a, n.parse::<usize>().ok()?)))
            .ok_or_else(|| problem(404, "malformed", "no such challenge"))?;
        let mut authz = self.owned("authz", authz_id, &s)?;
        let ch = authz["challenges"]
            .get(n)
            .cloned()
            .ok_or_else(|| problem(404, "malformed", "no such challenge"))?;
        // A POST with `{}` asks for validation; POST-as-GET only reads.
        if s.payload.is_object() && ch["status"] == "pending" && authz["status"] == "pending" {
            authz["challenges"][n]["status"] = json!("processing");
            self.save("authz", authz_id, &authz)
                .map_err(|e| problem(500, "serverInternal", e))?;
            let thumb = self
                .load("accounts", &s.account)
                .and_then(|a| jws::thumbprint(&a["key"]).ok())
                .ok_or_else(|| problem(500, "serverInternal", "the account key is gone"))?;
            let key_auth = format!("{}.{thumb}", ch["token"].as_str().unwrap_or(""));
            let job = validate::Job {
                kind: ch["type"].as_str().unwrap_or("").to_string(),
                identifier: authz["identifier"]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                token: ch["token"].as_str().unwrap_or("").to_string(),
                key_auth,
                resolvers: self.settings.resolvers.clone(),
            };
            let (me, authz_id) = (self.clone(), authz_id.to_string());
            let run = async move {
                let result = job.run().await;
                me.record(&authz_id, n, result);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(run);
                }
                Err(_) => return Err(problem(500, "serverInternal", "no runtime to validate in")),
            }
        }
        let authz = self.load("authz", authz_id).unwrap_or(authz);
        let mut a = json_answer(
            200,
            &challenge_view(&authz["challenges"][n], dir, authz_id, n),
        );
        a.headers
            .push(("link", format!("<{dir}authz/{authz_id}>;rel=\"up\"")));
        Ok(a)
    }

    /// Stores a validation's outcome.
    fn record(&self, authz_id: &str, n: usize, result: Result<(), String>) {
        let _w = self.live.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut authz) = self.load("authz", authz_id) else {
            return;
        };
        let who = authz["identifier"]["value"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match result {
            Ok(()) => {
                tracing::info!(identifier = who, "ACME server: challenge validated");
                authz["challenges"][n]["status"] = json!("valid");
                authz["challenges"][n]["validated"] = json!(rfc3339(now_secs()));
                authz["status"] = json!("valid");
            }
            Err(e) => {
                tracing::warn!(identifier = who, "ACME server: challenge failed: {e}");
                authz["challenges"][n]["status"] = json!("invalid");
                authz["challenges"][n]["error"] = json!({
                    "type": "urn:ietf:params:acme:error:incorrectResponse",
                    "detail": e,
                    "status": 403,
                });
                authz["status"] = json!("invalid");
            }
        }
        let _ = self.save("authz", authz_id, &authz);
    }

    fn finalize(&self, dir: &str, order_id: &str, s: Signed) -> Result<Answer, Answer> {
        let mut order = self.owned("orders", order_id, &s)?;
        match self.order_status(&order) {
            "ready" => {}
            "valid" => {
                return Err(problem(
                    403,
                    "orderNotReady",
                    "the order is already finalized",
                ))
            }
            other => {
                return Err(problem(
                    403,
                    "orderNotReady",
                    format!("the order is {other}"),
                ))
            }
        }
        let csr = s.payload["csr"]
            .as_str()
            .and_then(|c| jws::unb64(c).ok())
            .ok_or_else(|| problem(400, "malformed", "no csr"))?;
        let wanted: Vec<String> = order["identifiers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["value"].as_str().map(str::to_string))
            .collect();
        let asked = csr_names(&csr).map_err(|e| problem(400, "badCSR", e))?;
        let (mut a, mut b) = (asked.clone(), wanted.clone());
        a.sort();
        a.dedup();
        b.sort();
        b.dedup();
        if a != b {
            return Err(problem(
                400,
                "badCSR",
                format!("the CSR names {asked:?}, the order {wanted:?}"),
            ));
        }
        let chain = self
            .ca
            .sign_csr(&csr, &wanted, self.settings.lifetime)
            .map_err(|e| problem(400, "badCSR", e))?;
        self.storage
            .write(
                &format!(
                    "acme_server/{}/certs/{}.pem",
                    self.settings.ca,
                    crate::storage::safe_name(order_id)
                ),
                chain.as_bytes(),
                Secrecy::Public,
            )
            .map_err(|e| problem(500, "serverInternal", e))?;
        order["certificate"] = json!("issued");
        self.save("orders", order_id, &order)
            .map_err(|e| problem(500, "serverInternal", e))?;
        tracing::info!(names = ?wanted, "ACME server: issued a certificate");
        let mut a = json_answer(200, &self.order_view(&order, dir, order_id));
        a.headers
            .push(("location", format!("{dir}order/{order_id}")));
        Ok(a)
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn account_view(acct: &Value, dir: &str, id: &str) -> Value {
    json!({
        "status": acct["status"],
        "contact": acct["contact"],
        "orders": format!("{dir}account/{id}/orders"),
    })
}

fn challenge_view(ch: &Value, dir: &str, authz_id: &str, n: usize) -> Value {
    let mut v = json!({
        "type": ch["type"],
        "url": format!("{dir}chall/{authz_id}-{n}"),
        "token": ch["token"],
        "status": ch["status"],
    });
    for k in ["validated", "error"] {
        if !ch[k].is_null() {
            v[k] = ch[k].clone();
        }
    }
    v
}

fn authz_view(authz: &Value, dir: &str, id: &str) -> Value {
    let challenges: Vec<Value> = authz["challenges"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(n, c)| challenge_view(c, dir, id, n))
        .collect();
    let mut v = json!({
        "status": authz["status"],
        "expires": rfc3339(authz["expires"].as_u64().unwrap_or(0)),
        "identifier": authz["identifier"],
        "challenges": challenges,
    });
    if authz["wildcard"] == true {
        v["wildcard"] = json!(true);
    }
    v
}

/// The DNS names and IP addresses a CSR asks for (subject alternative names, and the
/// common name).
fn csr_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| "the CSR does not parse")?;
    let mut names = Vec::new();
    for cn in csr.certification_request_info.subject.iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_ascii_lowercase());
        }
    }
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => names.push(
                            std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                        ),
                        16 => names.push(
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                        ),
                        _ => return Err("a malformed IP address in the CSR".into()),
                    },
                    _ => return Err("the CSR asks for a name type this CA does not issue".into()),
                }
            }
        }
    }
    if names.is_empty() {
        return Err("the CSR names nothing".into());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        let r = NameRules {
            domains: vec!["*.corp.example".into(), "exact.example".into()],
            ip_ranges: vec![("10.0.0.0".parse().unwrap(), 8)],
        };
        assert!(r.matches("dns", "a.corp.example"));
        assert!(r.matches("dns", "a.b.corp.example"));
        assert!(!r.matches("dns", "corp.example"));
        assert!(r.matches("dns", "exact.example"));
        assert!(!r.matches("dns", "other.example"));
        assert!(r.matches("ip", "10.2.3.4"));
        assert!(!r.matches("ip", "11.0.0.1"));
        assert!(!r.matches("ip", "::1"));
    }
}
