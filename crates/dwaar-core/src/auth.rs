//! `basic_auth`: credentials checked against bcrypt hashes without blocking the
//! request path.
//!
//! bcrypt is slow on purpose (its work doubles with each step of the cost), so it never runs on a worker
//! thread: the pipeline looks the credentials up in a small cache of verdicts; on a
//! miss it returns [`Outcome::Check`](crate::pipeline::Outcome::Check), the lifecycle
//! runs [`verify`] on Tokio's blocking pool, records the verdict and runs the pipeline
//! again. The cache key is a SHA-256 of the realm, user, password and stored hash, so
//! a changed password or hash never matches an old verdict, and passwords are not kept.
//! Unknown users are checked against a dummy hash of the same cost as the accounts'
//! (the highest among them), so they take as long as known ones and a timing does not
//! tell which user names exist.

use std::collections::HashMap;
use std::sync::Mutex;

/// Verdicts kept at most (then the cache starts over).
const CACHE_MAX: usize = 4096;

/// The marker that stands for an unknown user's hash: checked against a dummy hash of
/// this cost.
const UNKNOWN_PREFIX: &str = "unknown-user:";

/// The hash an unknown user is checked against for accounts with these hashes: a marker
/// naming their highest bcrypt cost (10 when none can be read).
pub fn unknown_user<'a>(hashes: impl Iterator<Item = &'a str>) -> String {
    let cost = hashes.filter_map(bcrypt_cost).max().unwrap_or(10);
    format!("{UNKNOWN_PREFIX}{cost}")
}

/// The cost of a `$2b$14$...` hash.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let mut parts = hash.split('$');
    let (_, _, cost) = (parts.next()?, parts.next()?, parts.next()?);
    cost.parse().ok().filter(|c| (4..=31).contains(c))
}

/// A bcrypt hash of `cost` over a random string no client can know, made once per cost
/// (on the blocking pool, where checks run).
fn dummy_hash(cost: u32) -> String {
    static HASHES: Mutex<Option<HashMap<u32, String>>> = Mutex::new(None);
    if let Some(h) = HASHES
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&cost).cloned()))
    {
        return h;
    }
    let secret = format!("{:032x}", rand::random::<u128>());
    let h = bcrypt::hash(secret, cost).unwrap_or_default();
    if let Ok(mut m) = HASHES.lock() {
        m.get_or_insert_with(HashMap::new).insert(cost, h.clone());
    }
    h
}

static VERDICTS: Mutex<Option<HashMap<[u8; 32], bool>>> = Mutex::new(None);

/// What the front-end must check off the request path.
#[derive(Debug, Clone)]
pub struct PasswordCheck {
    pub key: [u8; 32],
    pub password: String,
    pub hash: String,
}

/// The cache key for these credentials.
pub fn key(realm: &str, user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [realm, user, password, hash] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A cached verdict.
pub fn cached(key: &[u8; 32]) -> Option<bool> {
    VERDICTS.lock().ok()?.as_ref()?.get(key).copied()
}

fn remember(key: [u8; 32], ok: bool) {
    if let Ok(mut v) = VERDICTS.lock() {
        let map = v.get_or_insert_with(HashMap::new);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(key, ok);
    }
}

/// Checks the password on the blocking pool and records the verdict.
pub async fn verify(check: PasswordCheck) -> bool {
    let PasswordCheck {
        key,
        password,
        hash,
    } = check;
    let ok = tokio::task::spawn_blocking(move || {
        if let Some(cost) = hash.strip_prefix(UNKNOWN_PREFIX) {
            // Same work as a real check, and never a match.
            let cost = cost.parse().unwrap_or(10);
            let _ = bcrypt::verify(&password, &dummy_hash(cost));
            return false;
        }
        bcrypt::verify(password, &hash).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    remember(key, ok);
    ok
}

/// `Authorization: Basic ...` decoded into user and password.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = dwaar_config::units::base64_decode(rest.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials() {
        // "alice:s3cr:et" (a colon inside the password is kept)
        assert_eq!(
            parse_basic("Basic YWxpY2U6czNjcjpldA=="),
            Some(("alice".into(), "s3cr:et".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn the_dummy_hash_is_a_real_bcrypt_hash_of_the_accounts_cost() {
        assert!(bcrypt::verify("anything", &dummy_hash(4)).is_ok_and(|ok| !ok));
        assert_eq!(bcrypt_cost(&dummy_hash(5)), Some(5));
        let a = bcrypt::hash("x", 6).unwrap_or_default();
        let b = bcrypt::hash("y", 5).unwrap_or_default();
        assert_eq!(
            unknown_user([a.as_str(), b.as_str()].into_iter()),
            "unknown-user:6"
        );
        assert_eq!(unknown_user(["not a hash"].into_iter()), "unknown-user:10");
    }
}

/// The request header that tells a second pipeline run which `forward_auth` already
/// said yes (its value holds a per-process secret, so clients cannot forge it).
pub const FORWARD_MARKER: &str = "x-dwaar-forward-auth";

/// The marker value for the `forward_auth` rule `id`.
pub fn marker(id: u64) -> String {
    static SECRET: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    format!("{:032x}-{id}", SECRET.get_or_init(rand::random::<u128>))
}

/// A question to an authentication service (`forward_auth`).
#[derive(Debug, Clone)]
pub struct AuthCall {
    /// `host:port`.
    pub addr: String,
    /// The whole request to send.
    pub request: Vec<u8>,
    /// Response fields to copy into the request: (from, to).
    pub copy: Vec<(String, String)>,
    pub marker: String,
}

/// Something the pipeline needs answered off the request path.
#[derive(Debug, Clone)]
pub enum Check {
    Password(PasswordCheck),
    Forward(AuthCall),
    /// Another request is fetching this `cache` key: wait for it, then look again.
    CacheWait(crate::cache::Wait, std::time::Duration),
    /// An exact distributed rate limit: the fleet decides (boxed: rare and large).
    FleetLimit(Box<crate::security::FleetCall>),
}

/// Marks a request that already waited for a `cache` fetch (it does not wait twice).
pub const CACHE_WAITED: &str = "x-dwaar-cache-waited";

/// How a check ended.
pub enum Checked {
    /// Run the pipeline again on the original request with these header changes
    /// (`None`: remove the field).
    Resume(Vec<(String, Option<String>)>),
    /// Answer with this instead.
    Answer(crate::pipeline::Reply),
}

/// Performs a check (bcrypt on the blocking pool, or the authentication request).
pub async fn run(check: Check) -> Checked {
    match check {
        Check::Password(p) => {
            verify(p).await;
            Checked::Resume(Vec::new())
        }
        // Boxed: the Redis exchange's state stays out of every request's future.
        Check::FleetLimit(call) => {
            Checked::Resume(vec![Box::pin(crate::security::ask_fleet(*call)).await])
        }
        Check::CacheWait(w, timeout) => {
            w.wait(timeout).await;
            Checked::Resume(vec![(CACHE_WAITED.to_string(), Some(marker(u64::MAX)))])
        }
        Check::Forward(call) => match ask(&call).await {
            Err(e) => {
                tracing::warn!(service = call.addr, "forward_auth failed: {e}");
                Checked::Answer(crate::pipeline::Reply::status(502))
            }
            Ok((status, headers, body)) if (200..300).contains(&status) => {
                let mut edits: Vec<(String, Option<String>)> = Vec::new();
                // Client-sent copies of the fields go first, then the service's values.
                for (_, to) in &call.copy {
                    edits.push((to.clone(), None));
                }
                for (from, to) in &call.copy {
                    if let Some((_, v)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(from))
                    {
                        edits.push((to.clone(), Some(v.clone())));
                    }
                }
                edits.push((FORWARD_MARKER.to_string(), Some(call.marker.clone())));
                let _ = body;
                Checked::Resume(edits)
            }
            Ok((status, headers, body)) => {
                let mut r = crate::pipeline::Reply::status(status);
                for (k, v) in headers {
                    let lower = k.to_ascii_lowercase();
                    if matches!(
                        lower.as_str(),
                        "connection"
                            | "keep-alive"
                            | "transfer-encoding"
                            | "content-length"
                            | "te"
                            | "trailer"
                            | "upgrade"
                            | "proxy-connection"
                    ) {
                        continue;
                    }
                    r.headers.push((compact_str::CompactString::new(&lower), v));
                }
                r.body = body;
                Checked::Answer(r)
            }
        },
    }
}

/// Sends the authentication request; returns status, headers and body (at most 1 MiB).
async fn ask(call: &AuthCall) -> Result<(u16, Vec<(String, String)>, bytes::Bytes), String> {
    use tokio::io::AsyncWriteExt;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(&call.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", call.addr))?;
        s.write_all(&call.request)
            .await
            .map_err(|e| e.to_string())?;
        dwaar_tls::http1::read_response(&mut s, (1 << 20) + 65536, "authentication").await
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("{} did not answer in time", call.addr))??;
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let n = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("malformed authentication response".into()),
    };
    let headers = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                crate::request::sanitize_header_value(&String::from_utf8_lossy(h.value))
                    .into_owned(),
            )
        })
        .collect();
    Ok((
        resp.code.unwrap_or(502),
        headers,
        bytes::Bytes::copy_from_slice(&raw[n..]),
    ))
}
