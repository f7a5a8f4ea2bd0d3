//! Costs of the analytics hot spots: folding one page view into a bucket, and the
//! injector over a megabyte of HTML.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dwaar_analytics::bucket::{Bucket, List, Metric};
use dwaar_analytics::hll::mix64;
use dwaar_analytics::inject::Injector;

fn ingest(c: &mut Criterion) {
    let mut b = Bucket::default();
    let mut i = 0u64;
    c.bench_function("bucket: one page view", |bench| {
        bench.iter(|| {
            i += 1;
            b.views += 1;
            b.requests += 1;
            b.visitors.insert(mix64(i));
            b.digest(Metric::LatencyMs).insert((i % 1000) as f64);
            b.list(List::Pages)
                .add(if i.is_multiple_of(3) { "/" } else { "/about" }, 1);
            b.list(List::Browsers).add("Firefox", 1);
        })
    });
}

fn injector(c: &mut Criterion) {
    let mut page = String::from("<html><head><title>x</title></head><body>");
    while page.len() < 1 << 20 {
        page.push_str("<p>Lorem ipsum dolor sit amet, <b>consectetur</b> adipiscing elit.</p>\n");
    }
    page.push_str("</body></html>");
    let chunks: Vec<Bytes> = page
        .as_bytes()
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let mut g = c.benchmark_group("injector");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function("1 MiB page in 16 KiB chunks", |bench| {
        bench.iter(|| {
            let mut inj = Injector::new(b"<script src=\"/_dwaar/a.js\" defer></script>".to_vec());
            let mut n = 0;
            for ch in &chunks {
                n += inj.feed(ch.clone()).len();
            }
            n + inj.finish().len()
        })
    });
    g.finish();
}

criterion_group!(benches, ingest, injector);
criterion_main!(benches);
