//! `basic_auth`: credentials checked against bcrypt hashes without blocking the
//! request path.
//!
//! bcrypt is slow on purpose (tens of milliseconds), so it never runs on a worker
//! thread: the pipeline looks the credentials up in a small cache of verdicts; on a
//! miss it returns [`Outcome::Verify`](crate::pipeline::Outcome::Verify), the front-end
//! runs [`verify`] on Tokio's blocking pool, records the verdict and runs the pipeline
//! again. The cache key is a SHA-256 of the realm, user, password and stored hash, so
//! a changed password or hash never matches an old verdict, and passwords are not kept.
//! Unknown users are checked against a dummy hash of the same cost, so they take as
//! long as known ones.

use std::collections::HashMap;
use std::sync::Mutex;

/// Verdicts kept at most (then the cache starts over).
const CACHE_MAX: usize = 4096;

/// A bcrypt hash (cost 10) of a random string no client can know: what unknown users'
/// passwords are checked against. Made once, on the blocking pool.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let secret = format!("{:032x}", rand::random::<u128>());
        bcrypt::hash(secret, 10).unwrap_or_default()
    })
}

/// The stored hash for `user`, or the dummy one (checked the same way).
pub const UNKNOWN_USER: &str = "";

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
        if hash == UNKNOWN_USER {
            // Same work as a real check, and never a match.
            let _ = bcrypt::verify(&password, dummy_hash());
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
    fn the_dummy_hash_is_a_real_bcrypt_hash() {
        assert!(bcrypt::verify("anything", dummy_hash()).is_ok_and(|ok| !ok));
    }
}
