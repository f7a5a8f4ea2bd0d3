//! The page script (`/_dwaar/a.js`), embedded in the binary, and its SHA-256 for
//! Content-Security-Policy hashes and `integrity` attributes.

/// The script's source.
pub const SCRIPT: &str = include_str!("../assets/a.js");

/// The dashboard page; `__DWAAR_API__` and `__DWAAR_SITE__` are filled in when served.
pub const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// Base64 of the script's SHA-256.
pub fn script_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        base64(ring::digest::digest(&ring::digest::SHA256, SCRIPT.as_bytes()).as_ref())
    })
}

/// A strong validator for the script (it only changes with the binary).
pub fn script_etag() -> &'static str {
    static E: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    E.get_or_init(|| format!("\"{}\"", &script_hash()[..16]))
}

/// The dashboard page for the API at `api` (and one fixed site, or a site picker).
pub fn dashboard(api: &str, site: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '"' | '<' | '>' | '&' | '\'') && !c.is_control())
            .collect()
    };
    DASHBOARD
        .replace("__DWAAR_API__", &clean(api))
        .replace("__DWAAR_SITE__", &clean(site.unwrap_or("")))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(script_hash().len(), 44);
    }

    #[test]
    fn dashboard_placeholders_are_filled_safely() {
        let d = dashboard("/stats/api", Some("a.test\"><x"));
        assert!(d.contains("/stats/api"));
        assert!(!d.contains("__DWAAR_API__"));
        assert!(!d.contains("a.test\"><x"));
    }
}
