//! `TopK`: the most frequent keys of a stream (pages, referrers, browsers, UTM values)
//! in fixed memory, with the Space-Saving algorithm.
//!
//! At most [`CAPACITY`] keys are tracked. A new key when full replaces the least
//! counted one and inherits its count (as an upper bound on its error), so a key that
//! is truly frequent is never lost. Keys are cut to [`MAX_KEY`] bytes.

use compact_str::CompactString;

/// Keys tracked per list.
pub const CAPACITY: usize = 32;
/// Longest key kept, in bytes.
pub const MAX_KEY: usize = 120;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopK {
    entries: Vec<(CompactString, u64)>,
}

fn clip(key: &str) -> &str {
    if key.len() <= MAX_KEY {
        return key;
    }
    let mut i = MAX_KEY;
    while !key.is_char_boundary(i) {
        i -= 1;
    }
    &key[..i]
}

impl TopK {
    pub fn add(&mut self, key: &str, n: u64) {
        let key = clip(key);
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == key) {
            e.1 += n;
            return;
        }
        if self.entries.len() < CAPACITY {
            self.entries.push((CompactString::new(key), n));
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|e| e.1) {
            min.1 += n;
            min.0 = CompactString::new(key);
        }
    }

    pub fn merge(&mut self, other: &TopK) {
        for (k, n) in &other.entries {
            if let Some(e) = self.entries.iter_mut().find(|e| e.0 == *k) {
                e.1 += n;
            } else {
                self.entries.push((k.clone(), *n));
            }
        }
        if self.entries.len() > CAPACITY {
            self.entries
                .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            self.entries.truncate(CAPACITY);
        }
    }

    /// Keys by count, highest first.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.entries.len() as u8);
        for (k, n) in &self.entries {
            out.push(k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    pub fn decode(buf: &[u8]) -> Option<(TopK, usize)> {
        let n = *buf.first()? as usize;
        let mut at = 1;
        let mut entries = Vec::with_capacity(n.min(CAPACITY));
        for _ in 0..n {
            let len = *buf.get(at)? as usize;
            let key = std::str::from_utf8(buf.get(at + 1..at + 1 + len)?).ok()?;
            at += 1 + len;
            let count = u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?);
            at += 8;
            if entries.len() < CAPACITY {
                entries.push((CompactString::new(clip(key)), count));
            }
        }
        Some((TopK { entries }, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million distinct keys (long ones too) in, a fixed amount of memory kept.
    #[test]
    fn frequent_keys_survive_a_long_tail() {
        let mut t = TopK::default();
        let pad = "x".repeat(300);
        for i in 0..1_000_000u64 {
            if i % 10 == 0 {
                t.add("/popular", 1);
            } else if i % 20 == 5 {
                t.add("/second", 1);
            } else {
                t.add(&format!("/tail/{i}/{pad}"), 1);
            }
        }
        let top = t.top(2);
        assert_eq!(top[0].0, "/popular");
        assert!(top[0].1 >= 100_000);
        // Space-Saving keeps every key above N / CAPACITY (here 31,250); "/second" has
        // 50,000.
        assert_eq!(top[1].0, "/second");
        assert!(t.entries.len() <= CAPACITY);
        assert!(t.entries.iter().all(|(k, _)| k.len() <= MAX_KEY));
    }

    #[test]
    fn merge_adds_counts_and_roundtrips() {
        let (mut a, mut b) = (TopK::default(), TopK::default());
        a.add("x", 3);
        b.add("x", 4);
        b.add("y", 1);
        a.merge(&b);
        assert_eq!(a.top(5), vec![("x", 7), ("y", 1)]);
        let long = "é".repeat(200);
        a.add(&long, 1);
        let mut buf = Vec::new();
        a.encode(&mut buf);
        let (back, used) = TopK::decode(&buf).unwrap();
        assert_eq!((back, used), (a, buf.len()));
        assert!(TopK::decode(&[1, 5, b'a']).is_none());
    }
}
