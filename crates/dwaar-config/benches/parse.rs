//! Parse-and-validate throughput for configs of 10, 100 and 1000 site blocks.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn config(sites: usize) -> String {
    let mut s = String::from("{\n\tservers {\n\t\ttrusted_proxies static private_ranges\n\t}\n}\n");
    for i in 0..sites {
        s.push_str(&format!(
            "http://site{i}.example.com {{\n\t@api path /api/*\n\theader X-Site {i}\n\thandle @api {{\n\t\treverse_proxy 127.0.0.1:{} {{\n\t\t\tlb_policy round_robin\n\t\t\theader_up X-Id {{remote_host}}\n\t\t}}\n\t}}\n\tredir /old /new 301\n\trespond \"site {i} {{path}}\"\n}}\n",
            3000 + i % 1000
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for n in [10usize, 100, 1000] {
        let text = config(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            b.iter(|| {
                dwaar_config::load_str("Dwaarfile", None, t, &|_| None)
                    .map(|l| l.config.sites.len())
                    .unwrap_or(0)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
