//! `Hll`: a HyperLogLog counter of distinct visitors.
//!
//! 4096 one-byte registers (precision 12) give a standard error of about 1.6% and a
//! fixed 4 KiB per counter; two counters merge by taking the larger register, so the
//! visitors of any time range are counted by merging its buckets, never by adding
//! their totals. Input values are 64-bit hashes, already salted and mixed by the caller.

/// Bits of the hash that choose the register.
const P: u32 = 12;
/// Registers.
pub const M: usize = 1 << P;

#[derive(Clone, PartialEq, Eq)]
pub struct Hll {
    regs: Box<[u8; M]>,
}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hll(~{})", self.estimate())
    }
}

impl Default for Hll {
    fn default() -> Self {
        Hll {
            regs: Box::new([0; M]),
        }
    }
}

impl Hll {
    /// Records one hashed item.
    pub fn insert(&mut self, hash: u64) {
        let idx = (hash >> (64 - P)) as usize;
        // The remaining 52 bits; a set guard bit bounds the run of zeros.
        let rest = (hash << P) | (1 << (P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > self.regs[idx] {
            self.regs[idx] = rank;
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.regs.iter_mut().zip(other.regs.iter()) {
            if *b > *a {
                *a = *b;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.regs.iter().all(|r| *r == 0)
    }

    /// The estimated number of distinct items.
    pub fn estimate(&self) -> u64 {
        let m = M as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in self.regs.iter() {
            sum += 1.0 / (1u64 << r) as f64;
            if r == 0 {
                zeros += 1;
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        // Small ranges: linear counting over the empty registers is more accurate.
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }

    /// Appends the registers: sparse (index, value) pairs while few are set, else all.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let set = self.regs.iter().filter(|r| **r != 0).count();
        if set * 3 < M {
            out.push(1);
            out.extend_from_slice(&(set as u16).to_le_bytes());
            for (i, &r) in self.regs.iter().enumerate() {
                if r != 0 {
                    out.extend_from_slice(&(i as u16).to_le_bytes());
                    out.push(r);
                }
            }
        } else {
            out.push(0);
            out.extend_from_slice(&self.regs[..]);
        }
    }

    /// Reads what [`encode`](Self::encode) wrote; returns the counter and the bytes used.
    pub fn decode(buf: &[u8]) -> Option<(Hll, usize)> {
        let mut h = Hll::default();
        match *buf.first()? {
            0 => {
                let regs = buf.get(1..1 + M)?;
                h.regs.copy_from_slice(regs);
                Some((h, 1 + M))
            }
            1 => {
                let n = u16::from_le_bytes(buf.get(1..3)?.try_into().ok()?) as usize;
                let body = buf.get(3..3 + n * 3)?;
                for e in body.chunks_exact(3) {
                    let i = u16::from_le_bytes([e[0], e[1]]) as usize;
                    *h.regs.get_mut(i)? = e[2].min(64);
                }
                Some((h, 3 + n * 3))
            }
            _ => None,
        }
    }
}

/// A 64-bit mix (SplitMix64's finaliser) for tests and callers with small integers.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(n: u64) -> f64 {
        let mut h = Hll::default();
        for i in 0..n {
            h.insert(mix64(i.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        }
        (h.estimate() as f64 - n as f64).abs() / n as f64
    }

    #[test]
    fn a_million_visitors_within_the_stated_error() {
        // 1.6% is one standard error; three of them bound any single run.
        let e = error(1_000_000);
        assert!(e < 0.048, "error {e}");
    }

    #[test]
    fn small_counts_are_nearly_exact() {
        assert_eq!(Hll::default().estimate(), 0);
        for n in [1u64, 10] {
            assert!(error(n) == 0.0, "n={n} error {}", error(n));
        }
        for n in [100u64, 1000] {
            assert!(error(n) < 0.05, "n={n} error {}", error(n));
        }
    }

    #[test]
    fn merging_counts_the_union_once() {
        let (mut a, mut b) = (Hll::default(), Hll::default());
        for i in 0..50_000u64 {
            a.insert(mix64(i));
        }
        for i in 25_000..75_000u64 {
            b.insert(mix64(i));
        }
        a.merge(&b);
        let e = (a.estimate() as f64 - 75_000.0).abs() / 75_000.0;
        assert!(e < 0.05, "{e}");
    }

    #[test]
    fn encodes_sparse_and_dense() {
        for n in [0u64, 5, 100_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.insert(mix64(i));
            }
            let mut buf = Vec::new();
            h.encode(&mut buf);
            if n == 5 {
                assert!(buf.len() < 32);
            }
            let (back, used) = Hll::decode(&buf).unwrap();
            assert_eq!(used, buf.len());
            assert_eq!(back, h);
        }
        assert!(Hll::decode(&[1, 200, 0]).is_none());
        assert!(Hll::decode(&[9]).is_none());
    }
}
