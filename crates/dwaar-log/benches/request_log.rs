//! Encoding one typical access-log record: the JSON line (Caddy's schema, through
//! sonic-rs's escaper), the same through `format filter`, and the console format.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dwaar_log::encode::{console_line, encode, json_line, Style};
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
        headers: vec![
            ("host".into(), "shop.example.com".into()),
            (
                "user-agent".into(),
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
            ),
            ("accept".into(), "*/*".into()),
        ],
        resp_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "4512".into()),
        ],
        ..RequestLog::default()
    }
}

fn bench(c: &mut Criterion) {
    let r = typical();
    let style = Style::of(&dwaar_config::model::LogConfig::default()).expect("style");
    let filtered = Style::of(&dwaar_config::model::LogConfig {
        filters: vec![dwaar_config::model::FieldFilter {
            field: "request>headers>User-Agent".into(),
            action: dwaar_config::model::FilterAction::Delete,
        }],
        ..Default::default()
    })
    .expect("style");
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("request_log/json_sonic_rs", |b| {
        b.iter(|| {
            buf.clear();
            json_line(black_box(&r), &style, &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("request_log/json_filtered", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&r), &filtered, &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("request_log/console", |b| {
        b.iter(|| {
            buf.clear();
            console_line(black_box(&r), &style, &mut buf);
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
