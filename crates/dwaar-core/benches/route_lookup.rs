//! Host routing with 10,000 sites: exact names, a wildcard and the catch-all.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dwaar_core::route_table::{Registries, RouteTable};

fn bench(c: &mut Criterion) {
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "http://site{i}.example.com:8080 {{\n\trespond \"{i}\"\n}}\n"
        ));
    }
    text.push_str("http://*.wild.example.com:8080 {\n\trespond \"wild\"\n}\n");
    text.push_str(":8080 {\n\trespond \"default\"\n}\n");
    let loaded = dwaar_config::load_str("Dwaarfile", None, &text, &|_| None).expect("config");
    let table = RouteTable::compile(&loaded.config, &Registries::default()).expect("table");
    let port = table.port(8080).expect("port");
    let hosts: Vec<String> = (0..1024)
        .map(|i| format!("site{}.example.com", i * 9 % 10_000))
        .collect();
    let mut i = 0usize;
    c.bench_function("route_lookup/exact_10k_hosts", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(port.lookup(black_box(&hosts[i]), "/"))
        })
    });
    c.bench_function("route_lookup/wildcard", |b| {
        b.iter(|| black_box(port.lookup(black_box("api.wild.example.com"), "/")))
    });
    c.bench_function("route_lookup/catch_all", |b| {
        b.iter(|| black_box(port.lookup(black_box("unknown.example.org"), "/")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
