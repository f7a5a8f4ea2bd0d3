//! Encoding one typical access-log record: sonic-rs (what Dwaar uses) next to
//! serde_json on the same `Serialize` implementation, plus the console format.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dwaar_log::encode::{console_line, json_line, JsonRecord, Style};
use dwaar_log::RequestLog;

fn typical() -> RequestLog {
    RequestLog {
        ts_ms: 1_795_986_600_123,
        request_id: Some(uuid::Uuid::now_v7()),
        method: "GET".into(),
        host: "shop.example.com".into(),
        path: "/api/v1/products/42".into(),
        query: "page=2&sort=price".into(),
        proto: "HTTP/1.1",
        status: 200,
        duration_us: 1_234,
        upstream_duration_us: Some(987),
        upstream_addr: Some("10.0.0.12:8080".into()),
        remote_ip: "203.0.113.9".parse().expect("ip"),
        remote_port: 53_124,
        client_ip: "203.0.113.9".parse().expect("ip"),
        user_agent: Some(http::HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )),
        referer: Some(http::HeaderValue::from_static("https://shop.example.com/")),
        bytes_read: 312,
        bytes_written: 4_512,
        ..RequestLog::default()
    }
}

fn bench(c: &mut Criterion) {
    let r = typical();
    let style = Style {
        format: dwaar_config::model::LogFormat::Json,
        mask_ip: None,
    };
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("request_log/json_sonic_rs", |b| {
        b.iter(|| {
            buf.clear();
            json_line(black_box(&r), style, &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("request_log/json_serde_json", |b| {
        b.iter(|| {
            buf.clear();
            let _ = serde_json::to_writer(&mut buf, &JsonRecord(black_box(&r), style));
            buf.push(b'\n');
            black_box(buf.len())
        })
    });
    c.bench_function("request_log/console", |b| {
        b.iter(|| {
            buf.clear();
            console_line(black_box(&r), style, &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("request_log/build_record", |b| {
        let ua = http::HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        );
        b.iter(|| {
            let rec = RequestLog {
                method: black_box("GET").into(),
                host: black_box("shop.example.com").into(),
                path: black_box("/api/v1/products/42").into(),
                user_agent: Some(ua.clone()),
                status: 200,
                ..RequestLog::default()
            };
            black_box(rec)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
