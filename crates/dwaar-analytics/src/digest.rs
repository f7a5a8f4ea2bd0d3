//! `Digest`: a merging t-digest for latency, Web Vitals and time-on-page percentiles.
//!
//! Values are kept as weighted centroids, small near the tails and larger in the middle,
//! so p50..p99 stay accurate with at most a few hundred centroids (8 bytes each) however
//! many values arrive. Digests merge, so percentiles over any time range come from
//! merging its buckets' digests.

/// Compression: the larger, the more centroids and the more accurate.
const DELTA: f64 = 100.0;
/// Values buffered before they are folded into the centroids.
const BUFFER: usize = 128;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Digest {
    /// (mean, weight), sorted by mean after [`compress`](Self::compress).
    centroids: Vec<(f32, u32)>,
    buffer: Vec<f32>,
}

impl Digest {
    pub fn insert(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.buffer.push(v as f32);
        if self.buffer.len() >= BUFFER {
            self.compress();
        }
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.centroids.iter().map(|c| c.1 as u64).sum::<u64>() + self.buffer.len() as u64
    }

    pub fn centroids(&self) -> usize {
        self.centroids.len()
    }

    pub fn merge(&mut self, other: &Digest) {
        self.centroids.extend_from_slice(&other.centroids);
        self.buffer.extend_from_slice(&other.buffer);
        self.compress();
    }

    /// Folds the buffer into the centroids. A centroid may grow while the quantile
    /// range it covers spans at most one unit of the arcsine scale `k(q) = DELTA/(2π) ·
    /// asin(2q - 1)`, which keeps the tails fine and bounds the count near `DELTA`.
    pub fn compress(&mut self) {
        if self.buffer.is_empty() && self.centroids.windows(2).all(|w| w[0].0 <= w[1].0) {
            return;
        }
        let mut all: Vec<(f32, u32)> = std::mem::take(&mut self.centroids);
        all.extend(self.buffer.drain(..).map(|v| (v, 1)));
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = all.iter().map(|c| c.1 as f64).sum();
        let limit_after = |q0: f64| {
            let step = 2.0 * std::f64::consts::PI / DELTA;
            let a =
                ((2.0 * q0 - 1.0).clamp(-1.0, 1.0).asin() + step).min(std::f64::consts::FRAC_PI_2);
            (a.sin() + 1.0) / 2.0
        };
        let mut out: Vec<(f32, u32)> = Vec::with_capacity(all.len().min(2 * DELTA as usize));
        let mut seen = 0.0;
        let mut q_limit = limit_after(0.0);
        for (mean, w) in all {
            if let Some(last) = out.last_mut() {
                let q = (seen + last.1 as f64 + w as f64) / total;
                if q <= q_limit {
                    let nw = last.1 as f64 + w as f64;
                    last.0 = ((last.0 as f64 * last.1 as f64 + mean as f64 * w as f64) / nw) as f32;
                    last.1 += w;
                    continue;
                }
                seen += last.1 as f64;
                q_limit = limit_after(seen / total);
            }
            out.push((mean, w));
        }
        self.centroids = out;
    }

    /// The value below which a fraction `q` of the values lie; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut d = self.clone();
        d.compress();
        let c = &d.centroids;
        let total = d.count() as f64;
        if c.is_empty() {
            return None;
        }
        if c.len() == 1 {
            return Some(c[0].0 as f64);
        }
        let target = q.clamp(0.0, 1.0) * total;
        // Each centroid's mass is centred on its mean; interpolate between centres.
        let mut cum = 0.0;
        for i in 0..c.len() {
            let centre = cum + c[i].1 as f64 / 2.0;
            if target < centre {
                if i == 0 {
                    return Some(c[0].0 as f64);
                }
                let prev_centre = cum - c[i - 1].1 as f64 / 2.0;
                let t = (target - prev_centre) / (centre - prev_centre);
                return Some(c[i - 1].0 as f64 + t * (c[i].0 as f64 - c[i - 1].0 as f64));
            }
            cum += c[i].1 as f64;
        }
        c.last().map(|l| l.0 as f64)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut d = self.clone();
        d.compress();
        out.extend_from_slice(&(d.centroids.len() as u16).to_le_bytes());
        for (m, w) in &d.centroids {
            out.extend_from_slice(&m.to_le_bytes());
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    pub fn decode(buf: &[u8]) -> Option<(Digest, usize)> {
        let n = u16::from_le_bytes(buf.get(..2)?.try_into().ok()?) as usize;
        let body = buf.get(2..2 + n * 8)?;
        let centroids = body
            .chunks_exact(8)
            .map(|c| {
                (
                    f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .filter(|c| c.0.is_finite())
            .collect();
        Some((
            Digest {
                centroids,
                buffer: Vec::new(),
            },
            2 + n * 8,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hll::mix64;

    #[test]
    fn percentiles_of_a_uniform_stream() {
        let mut d = Digest::default();
        for i in 0..100_000u64 {
            d.insert((mix64(i) % 10_000) as f64);
        }
        for (q, want) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = d.quantile(q).unwrap();
            assert!((got - want).abs() < 150.0, "q{q}: {got}");
        }
        assert!(d.centroids() <= DELTA as usize, "{}", d.centroids());
        assert_eq!(d.count(), 100_000);
    }

    #[test]
    fn merged_digests_match_one_digest() {
        let (mut a, mut b) = (Digest::default(), Digest::default());
        for i in 0..20_000u64 {
            let v = (mix64(i) % 1000) as f64;
            if i % 2 == 0 {
                a.insert(v)
            } else {
                b.insert(v)
            }
        }
        a.merge(&b);
        let p50 = a.quantile(0.5).unwrap();
        assert!((p50 - 500.0).abs() < 25.0, "{p50}");
        assert_eq!(a.count(), 20_000);
    }

    #[test]
    fn empty_single_and_roundtrip() {
        assert_eq!(Digest::default().quantile(0.5), None);
        let mut d = Digest::default();
        d.insert(42.0);
        d.insert(f64::NAN);
        assert_eq!(d.quantile(0.99), Some(42.0));
        for i in 0..1000 {
            d.insert(i as f64);
        }
        let mut buf = Vec::new();
        d.encode(&mut buf);
        let (back, used) = Digest::decode(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(back.count(), d.count());
        assert!(Digest::decode(&[5, 0, 1]).is_none());
    }
}
