//! `GeoDb`: country lookups from an IP-range CSV file, loaded once into sorted ranges.
//!
//! The format is the common "ip-to-country" CSV (`first,last,CC` per line, IPv4 or
//! IPv6, as published for example by DB-IP's free country database). Addresses are only
//! looked up on the analytics thread and never stored.

use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Default)]
pub struct GeoDb {
    /// (first, last, country) sorted by first; IPv4 as IPv4-mapped IPv6.
    ranges: Vec<(u128, u128, [u8; 2])>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl GeoDb {
    /// Loads `path`; the error names the file and line of the first bad row.
    pub fn load(path: &Path) -> Result<GeoDb, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut ranges = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                format!(
                    "{}:{}: expected `first_ip,last_ip,CC`",
                    path.display(),
                    n + 1
                )
            };
            let mut f = line.split(',').map(|s| s.trim().trim_matches('"'));
            let (Some(a), Some(b), Some(cc)) = (f.next(), f.next(), f.next()) else {
                return Err(bad());
            };
            let a: IpAddr = a.parse().map_err(|_| bad())?;
            let b: IpAddr = b.parse().map_err(|_| bad())?;
            let cc = cc.as_bytes();
            if cc.len() != 2 || !cc.iter().all(u8::is_ascii_alphabetic) {
                return Err(bad());
            }
            ranges.push((
                key(a),
                key(b),
                [cc[0].to_ascii_uppercase(), cc[1].to_ascii_uppercase()],
            ));
        }
        ranges.sort_by_key(|r| r.0);
        Ok(GeoDb { ranges })
    }

    /// The two-letter country code for `ip`.
    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        let k = key(ip);
        let i = self.ranges.partition_point(|r| r.0 <= k);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (k <= r.1).then(|| std::str::from_utf8(&r.2).ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_v4_and_v6_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("geo.csv");
        std::fs::write(
            &p,
            "1.0.0.0,1.0.0.255,AU\n10.0.0.0,10.255.255.255,zz\n2001:db8::,2001:db8::ffff,NL\n",
        )
        .unwrap();
        let db = GeoDb::load(&p).unwrap();
        assert_eq!(db.country("1.0.0.7".parse().unwrap()), Some("AU"));
        assert_eq!(db.country("10.1.2.3".parse().unwrap()), Some("ZZ"));
        assert_eq!(db.country("2001:db8::5".parse().unwrap()), Some("NL"));
        assert_eq!(db.country("1.0.1.0".parse().unwrap()), None);
        assert_eq!(db.country("0.0.0.1".parse().unwrap()), None);
        std::fs::write(&p, "1.0.0.0,nope,AU\n").unwrap();
        assert!(GeoDb::load(&p).unwrap_err().contains("geo.csv:1"));
    }
}
