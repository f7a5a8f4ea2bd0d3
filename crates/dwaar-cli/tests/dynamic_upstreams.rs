// Backends that move: `dynamic a` and `dynamic srv` against a real DNS server
// (`dnsmasq`, started by the test on a local port, its records changed while Dwaar
// serves), host-name upstreams looked up again through `transport http { resolvers }`,
// and port ranges.

mod common;
use common::*;
use dwaar_testkit::dnsmasq::{self, Dnsmasq};
use std::time::Duration;

/// A dnsmasq answering for `*.svc.test` from a hosts file and the SRV records given
/// (`None` without dnsmasq, when the test may skip).
fn start_dns(hosts: &str, srv: &[String], port: Option<u16>) -> Option<Dnsmasq> {
    if !dnsmasq::available() {
        return None;
    }
    let srv: Vec<String> = srv.iter().map(|s| format!("--srv-host={s}")).collect();
    Some(Dnsmasq::start(hosts, &srv, port))
}

fn origin_of(port: u16, path: &str) -> String {
    request(port, "GET", "x", path, &[], b"")
        .map(|r| r.header("x-origin").unwrap_or("?").to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// `dynamic a` follows an A record that changes while a slow request is in flight to
/// the old address: the request completes, new requests go to the new address within
/// the refresh interval, and two records spread the load over both.
#[test]
fn dynamic_a_follows_the_record() {
    let shared_port = free_port();
    let two = origin::http_on("two", &format!("127.0.0.2:{shared_port}"));
    let three = origin::http_on("three", &format!("127.0.0.3:{shared_port}"));
    let Some(dns) = start_dns("127.0.0.2 svc.test\n", &[], None) else {
        return;
    };
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {{\n\t\tdynamic a svc.test {shared_port} {{\n\t\t\tresolvers 127.0.0.1:{}\n\t\t\trefresh 300ms\n\t\t}}\n\t\tlb_policy round_robin\n\t}}\n}}\n",
        dns.port
    ));
    assert!(
        wait_until(Duration::from_secs(5), || origin_of(port, "/") == "two"),
        "first answer"
    );
    let slow = std::thread::spawn(move || request(port, "GET", "x", "/slow/1500", &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    dns.set_hosts("127.0.0.3 svc.test\n");
    assert!(
        wait_until(Duration::from_secs(5), || (0..4)
            .all(|_| origin_of(port, "/") == "three")),
        "the new address within the refresh interval"
    );
    let r = slow.join().unwrap_or_else(|_| panic!("join"));
    assert_eq!(
        r.map(|r| r.status).unwrap_or(0),
        200,
        "the request in flight finished"
    );
    dns.set_hosts("127.0.0.2 svc.test\n127.0.0.3 svc.test\n");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let seen: std::collections::HashSet<String> =
                (0..6).map(|_| origin_of(port, "/")).collect();
            seen.contains("two") && seen.contains("three")
        }),
        "both addresses used"
    );
    let _ = (two.port, three.port);
}

/// `dynamic srv` takes ports (and targets) from SRV records; a changed record moves the
/// traffic. Host-name upstreams with `transport http { resolvers }` are looked up there
/// and again when the record changes.
#[test]
fn dynamic_srv_and_host_names_follow_dns() {
    let a = origin::http("a");
    let b = origin::http("b");
    let hosts = "127.0.0.1 target.svc.test\n127.0.0.1 app.svc.test\n";
    let srv_a = format!("_http._tcp.svc.test,target.svc.test,{},0,1", a.port);
    let Some(dns) = start_dns(hosts, &[srv_a], None) else {
        return;
    };
    let (_d, port) = serve(&format!(
        ":PORT {{\n\thandle /srv/* {{\n\t\treverse_proxy {{\n\t\t\tdynamic srv {{\n\t\t\t\tservice http\n\t\t\t\tproto tcp\n\t\t\t\tname svc.test\n\t\t\t\tresolvers 127.0.0.1:{0}\n\t\t\t\trefresh 300ms\n\t\t\t}}\n\t\t}}\n\t}}\n\
         \thandle /named/* {{\n\t\treverse_proxy app.svc.test:{1} {{\n\t\t\ttransport http {{\n\t\t\t\tresolvers 127.0.0.1:{0}\n\t\t\t}}\n\t\t}}\n\t}}\n}}\n",
        dns.port, b.port
    ));
    assert!(
        wait_until(Duration::from_secs(5), || origin_of(port, "/srv/x") == "a"),
        "SRV target and port"
    );
    assert!(
        wait_until(Duration::from_secs(5), || origin_of(port, "/named/x")
            == "b"),
        "a host name only the configured resolver knows"
    );
    // The SRV record now names b's port: dnsmasq restarted on the same port.
    let dns_port = dns.port;
    drop(dns);
    let srv_b = format!("_http._tcp.svc.test,target.svc.test,{},0,1", b.port);
    let Some(_dns2) = start_dns(hosts, &[srv_b], Some(dns_port)) else {
        return;
    };
    assert!(
        wait_until(Duration::from_secs(5), || (0..3)
            .all(|_| origin_of(port, "/srv/x") == "b")),
        "the SRV change reached the upstream set"
    );
}

/// `localhost:8001-8003` is three upstreams; `dynamic` config errors point at their line.
#[test]
fn port_ranges_and_dynamic_config_errors() {
    let os: Vec<_> = (0..3).map(|i| origin::http(&format!("r{i}"))).collect();
    // Three consecutive ports are needed; bind them as a range from the first free one.
    let base = free_port();
    let ranged: Vec<_> = (0..3)
        .filter_map(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i))
                .ok()
                .map(|l| (i, l))
        })
        .collect();
    if ranged.len() == 3 {
        drop(ranged);
        let on: Vec<_> = (0..3)
            .map(|i| origin::http_on(&format!("p{i}"), &format!("127.0.0.1:{}", base + i)))
            .collect();
        let (_d, port) = serve(&format!(
            ":PORT {{\n\treverse_proxy localhost:{}-{} {{\n\t\tlb_policy round_robin\n\t}}\n}}\n",
            base,
            base + 2
        ));
        let seen: std::collections::HashSet<String> =
            (0..6).map(|_| origin_of(port, "/")).collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        drop(on);
    }
    drop(os);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (body, want) in [
        ("reverse_proxy localhost:9-1", "invalid port range"),
        (
            "reverse_proxy {\n\t\tdynamic a svc.test\n\t}",
            "dynamic a needs a port",
        ),
        ("reverse_proxy {\n\t\tdynamic mx svc.test\n\t}", "mx"),
        (
            "reverse_proxy 127.0.0.1:1 {\n\t\tdynamic a svc.test 80\n\t}",
            "not both",
        ),
        (
            "reverse_proxy {\n\t\tdynamic a svc.test 80 {\n\t\t\tresolvers dns.example\n\t\t}\n\t}",
            "not an IP address",
        ),
        (
            "reverse_proxy {\n\t\tdynamic srv {\n\t\t\tservice http\n\t\t}\n\t}",
            "both service and proto",
        ),
    ] {
        std::fs::write(
            dir.path().join("Dwaarfile"),
            format!(":1 {{\n\t{body}\n}}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
        assert_eq!(code, 1, "{body}");
        assert!(
            err.contains(want) && err.contains("Dwaarfile:"),
            "{body}: {err}"
        );
    }
}

/// Active health checks probe every member of a `dynamic a` set: a member whose
/// `/health` fails gets no traffic while the other serves.
#[test]
fn active_health_checks_cover_dynamic_members() {
    let shared_port = free_port();
    let two = origin::http_on("two", &format!("127.0.0.2:{shared_port}"));
    let _three = origin::http_on("three", &format!("127.0.0.3:{shared_port}"));
    let Some(dns) = start_dns("127.0.0.2 svc.test\n127.0.0.3 svc.test\n", &[], None) else {
        return;
    };
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy {{\n\t\tdynamic a svc.test {shared_port} {{\n\t\t\tresolvers 127.0.0.1:{}\n\t\t\trefresh 300ms\n\t\t}}\n\t\tlb_policy round_robin\n\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t}}\n}}\n",
        dns.port
    ));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let seen: std::collections::HashSet<String> =
                (0..6).map(|_| origin_of(port, "/")).collect();
            seen.contains("two") && seen.contains("three")
        }),
        "both members serve"
    );
    two.set_healthy(false);
    assert!(
        wait_until(Duration::from_secs(5), || (0..6)
            .all(|_| origin_of(port, "/") == "three")),
        "the failing member is out"
    );
}

/// A host-name upstream follows its record after the record's TTL (1 s from dnsmasq),
/// bounded below by `dns_min_ttl` (default 5 s): with `dns_min_ttl 1s` a change shows
/// within a few seconds.
#[test]
fn host_names_follow_their_ttl_with_a_configurable_minimum() {
    let shared_port = free_port();
    let _two = origin::http_on("two", &format!("127.0.0.2:{shared_port}"));
    let _three = origin::http_on("three", &format!("127.0.0.3:{shared_port}"));
    let Some(dns) = start_dns("127.0.0.2 app.svc.test\n", &[], None) else {
        return;
    };
    let (_d, port) = serve(&format!(
        ":PORT {{\n\treverse_proxy app.svc.test:{shared_port} {{\n\t\ttransport http {{\n\t\t\tresolvers 127.0.0.1:{}\n\t\t\tdns_min_ttl 1s\n\t\t}}\n\t}}\n}}\n",
        dns.port
    ));
    assert!(
        wait_until(Duration::from_secs(5), || origin_of(port, "/") == "two"),
        "first address"
    );
    dns.set_hosts("127.0.0.3 app.svc.test\n");
    assert!(
        wait_until(Duration::from_millis(3500), || origin_of(port, "/")
            == "three"),
        "the new address after about a second"
    );
}
