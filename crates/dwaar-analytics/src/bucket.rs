//! `Bucket`: everything counted for one site over one interval (a minute, an hour or a
//! day), mergeable and stored as a compact binary value.
//!
//! Counts add up; visitors (HyperLogLog), percentiles (t-digests) and top lists
//! (Space-Saving) merge, so any range is answered by merging buckets. Memory is fixed:
//! 4 KiB of visitor registers, at most 256 centroids per digest (5 digests) and 32
//! keys per top list (11 lists), about 35 KiB at the very worst and usually far less.

use crate::digest::Digest;
use crate::hll::Hll;
use crate::topk::TopK;

/// The top lists, in storage order.
pub const LISTS: [&str; 11] = [
    "pages",
    "referrers",
    "countries",
    "browsers",
    "os",
    "devices",
    "screens",
    "languages",
    "utm_source",
    "utm_medium",
    "utm_campaign",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Pages = 0,
    Referrers,
    Countries,
    Browsers,
    Os,
    Devices,
    Screens,
    Languages,
    UtmSource,
    UtmMedium,
    UtmCampaign,
}

/// The digests, in storage order.
pub const DIGESTS: [&str; 5] = ["latency_ms", "lcp_ms", "cls", "inp_ms", "time_on_page_s"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    LatencyMs = 0,
    LcpMs,
    Cls,
    InpMs,
    TimeOnPageS,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    /// HTML pages served (2xx `text/html` to a GET), from the request path.
    pub views: u64,
    /// Page views the script confirmed (beacons).
    pub js_views: u64,
    pub requests: u64,
    pub bytes: u64,
    /// Responses by class: 1xx..5xx.
    pub status: [u64; 5],
    pub visitors: Hll,
    pub digests: [Digest; 5],
    pub lists: [TopK; 11],
}

const VERSION: u8 = 1;

impl Bucket {
    pub fn list(&mut self, l: List) -> &mut TopK {
        &mut self.lists[l as usize]
    }

    pub fn digest(&mut self, m: Metric) -> &mut Digest {
        &mut self.digests[m as usize]
    }

    pub fn merge(&mut self, o: &Bucket) {
        self.views += o.views;
        self.js_views += o.js_views;
        self.requests += o.requests;
        self.bytes += o.bytes;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.visitors.merge(&o.visitors);
        for (a, b) in self.digests.iter_mut().zip(&o.digests) {
            a.merge(b);
        }
        for (a, b) in self.lists.iter_mut().zip(&o.lists) {
            a.merge(b);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.push(VERSION);
        for n in [self.views, self.js_views, self.requests, self.bytes] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in self.status {
            out.extend_from_slice(&n.to_le_bytes());
        }
        self.visitors.encode(&mut out);
        for d in &self.digests {
            d.encode(&mut out);
        }
        for l in &self.lists {
            l.encode(&mut out);
        }
        out
    }

    /// `None` for bytes this version did not write (a damaged row is skipped, not fatal).
    pub fn decode(buf: &[u8]) -> Option<Bucket> {
        if *buf.first()? != VERSION {
            return None;
        }
        let mut at = 1;
        let mut num = || {
            let v = u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?);
            at += 8;
            Some(v)
        };
        let mut b = Bucket {
            views: num()?,
            js_views: num()?,
            requests: num()?,
            bytes: num()?,
            ..Default::default()
        };
        for s in b.status.iter_mut() {
            *s = num()?;
        }
        let (h, n) = Hll::decode(buf.get(at..)?)?;
        b.visitors = h;
        at += n;
        for d in b.digests.iter_mut() {
            let (x, n) = Digest::decode(buf.get(at..)?)?;
            *d = x;
            at += n;
        }
        for l in b.lists.iter_mut() {
            let (x, n) = TopK::decode(buf.get(at..)?)?;
            *l = x;
            at += n;
        }
        Some(b)
    }

    /// Heap and inline bytes this bucket holds (for the fixed-memory test and docs).
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Bucket>()
            + crate::hll::M
            + self
                .digests
                .iter()
                .map(|d| d.centroids() * 8 + 128 * 4)
                .sum::<usize>()
            + self
                .lists
                .iter()
                .map(|l| {
                    l.top(usize::MAX)
                        .iter()
                        .map(|(k, _)| 32 + k.len())
                        .sum::<usize>()
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hll::mix64;

    fn busy() -> Bucket {
        let mut b = Bucket::default();
        for i in 0..200_000u64 {
            b.views += 1;
            b.requests += 2;
            b.status[1] += 1;
            b.visitors.insert(mix64(i % 50_000));
            b.digest(Metric::LatencyMs).insert((i % 977) as f64);
            b.digest(Metric::LcpMs).insert((i % 4000) as f64);
            b.list(List::Pages).add(&format!("/page/{}", i % 5000), 1);
            b.list(List::Referrers)
                .add(&format!("site{}.example", i % 300), 1);
        }
        b
    }

    #[test]
    fn memory_stays_fixed_under_load() {
        let b = busy();
        assert!(b.footprint() < 40 * 1024, "{}", b.footprint());
        assert!(b.lists[0].top(usize::MAX).len() <= crate::topk::CAPACITY);
    }

    #[test]
    fn roundtrip_and_merge() {
        let b = busy();
        let bytes = b.encode();
        let back = Bucket::decode(&bytes).unwrap();
        assert_eq!(back.views, b.views);
        assert_eq!(back.visitors, b.visitors);
        assert_eq!(back.lists, b.lists);
        let mut two = back.clone();
        two.merge(&back);
        assert_eq!(two.views, 2 * b.views);
        // The same visitors twice are still the same visitors.
        assert_eq!(two.visitors.estimate(), b.visitors.estimate());
        assert!(Bucket::decode(&bytes[..bytes.len() - 3]).is_none());
        assert!(Bucket::decode(&[]).is_none());
    }
}
