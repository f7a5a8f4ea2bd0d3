//! Durations and sizes as written in a Dwaarfile (`1m30s`, `250ms`, `2d`, `10MB`, `1GiB`).
//!
//! Durations follow Go's syntax (which Caddy uses) plus `d` for days; a bare `0` is
//! allowed. Sizes accept SI (`kb`, `mb`, `gb`: powers of 1000) and IEC (`kib`, `mib`,
//! `gib`: powers of 1024) suffixes in any case. Every multiplication is checked, so a
//! huge number is an error, never a wrapped tiny limit.

/// Parses a duration into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ns: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "invalid duration '{s}': expected a number before the unit"
            ));
        }
        let num: f64 = s[start..i]
            .parse()
            .map_err(|_| format!("invalid duration '{s}': bad number '{}'", &s[start..i]))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic()
            || (i < bytes.len() && bytes[i] == 0xc2)
            || (i < bytes.len() && bytes[i] == 0xb5)
        {
            i += 1;
        }
        let unit = &s[ustart..i];
        let ns_per: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "" => {
                return Err(format!(
                    "invalid duration '{s}': missing unit (use ms, s, m, h or d, e.g. '{s}s')"
                ))
            }
            other => return Err(format!("invalid duration '{s}': unknown unit '{other}'")),
        };
        let v = num * ns_per;
        if !v.is_finite() || v > 1e21 {
            return Err(format!("duration '{s}' is too large"));
        }
        total_ns += v as u128;
    }
    let ms = total_ns / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("duration '{s}' is too large"))
}

/// Parses a byte size into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size '{s}': expected a number, e.g. 10MB"));
    }
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{other}' (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
        let v = f * mult as f64;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(format!("size '{s}' is too large"));
        }
        return Ok(v as u64);
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Decodes standard base64 (padding optional). `None` on a character outside the alphabet.
/// (The encoder is `dwaar_analytics::script::base64`.)
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = T.iter().position(|t| *t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("99999999999999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("99999999999999999999tb").is_err());
        assert!(parse_size("18446744073709551615kb").is_err());
        assert!(parse_size("mb").is_err());
    }
}
