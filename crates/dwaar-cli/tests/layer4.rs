// Layer 4 with real servers and clients: PostgreSQL and psql through a `postgres`
// route, Redis and redis-cli through plain TCP routes (round robin, a reload), a real
// SSH server and an ssh client behind an `ssh` matcher next to HTTP on one port, SNI
// passthrough to two TLS servers on a site's HTTPS port (openssl s_client), TLS
// termination with subroutes, PROXY headers in and out, throttling, and DNS over UDP
// to dnsmasq.

mod common;
use common::*;
use dwaar_testkit::dnsmasq::{self, Dnsmasq};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A server process the test started (and the directory it works in, removed after it);
/// killed (by PID) when dropped.
struct Server(Child, #[allow(dead_code)] Option<tempfile::TempDir>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_port(port: u16) {
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nothing listens on {port}"
    );
}

fn redis(port: u16) -> Server {
    let child = spawn(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]));
    wait_port(port);
    Server(child, None)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let o = run(Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn redis_through_plain_tcp_routes() {
    if !have_tool("redis-server") || !have_tool("redis-cli") {
        return;
    }
    let (a, b) = (free_port(), free_port());
    let (_ra, _rb) = (redis(a), redis(b));
    let port = free_port();
    let config = |upstreams: &str| {
        format!(
            "{{\n\tlayer4 {{\n\t\t127.0.0.1:{port} {{\n\t\t\troute {{\n\t\t\t\tproxy {upstreams} {{\n\t\t\t\t\tlb_policy round_robin\n\t\t\t\t}}\n\t\t\t}}\n\t\t}}\n\t}}\n}}\n"
        )
    };
    let d = Dwaar::start(
        &bin(),
        &config(&format!("127.0.0.1:{a} 127.0.0.1:{b}")),
        &[port],
    );
    assert_eq!(redis_cli(port, &["set", "greeting", "hello"]), "OK");
    // Round robin: of four connections, two reach each server.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let out = redis_cli(port, &["config", "get", "port"]);
        seen.push(out.lines().last().unwrap_or("").to_string());
    }
    for p in [a, b] {
        let n = seen.iter().filter(|s| **s == p.to_string()).count();
        assert_eq!(n, 2, "round robin over {seen:?}");
    }
    // A value set through Dwaar is on one of the servers.
    let direct = [
        redis_cli(a, &["get", "greeting"]),
        redis_cli(b, &["get", "greeting"]),
    ];
    assert!(direct.contains(&"hello".to_string()), "{direct:?}");
    // A reload: new connections see the new routes.
    d.write_config(&config(&format!("127.0.0.1:{b}")));
    d.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            (0..4).all(|_| {
                redis_cli(port, &["config", "get", "port"]).lines().last() == Some(&b.to_string())
            })
        }),
        "the reloaded route sends everything to {b}"
    );
    assert!(d.metric("dwaar_layer4_connections_total").unwrap_or(0) >= 6);
    assert!(
        d.metric("dwaar_layer4_bytes_total{direction=\"to_client\"}")
            .unwrap_or(0)
            > 0
    );
    let log = d.log_text();
    assert!(
        log.contains("connection proxied") && log.contains(&format!("upstream=\"127.0.0.1:{a}\"")),
        "{log}"
    );
}

/// Where the PostgreSQL binaries are (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> Option<std::path::PathBuf> {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .find(|p| p.join("postgres").exists());
    assert!(
        found.is_some() || std::env::var("DWAAR_REQUIRE_E2E").as_deref() != Ok("1"),
        "PostgreSQL is required (scripts/bootstrap installs it)"
    );
    found
}

/// A PostgreSQL server on `port` with superuser `app` (trust authentication), run as
/// the `postgres` system user when the test runs as root.
fn postgres(port: u16) -> Option<Server> {
    let bin = postgres_bin()?;
    if !have_tool("psql") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let root = nix_is_root();
    let as_postgres = |program: &std::path::Path| {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.current_dir("/");
        c
    };
    if root {
        run(Command::new("chown").arg("postgres").arg(dir.path()));
    }
    let init = run(as_postgres(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "app", "-D"])
        .arg(&data));
    assert!(init.status.success(), "initdb: {}", text(&init));
    let child = spawn(
        as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path()),
    );
    wait_port(port);
    Some(Server(child, Some(dir)))
}

fn nix_is_root() -> bool {
    run(Command::new("id").arg("-u")).stdout.starts_with(b"0\n")
}

fn psql(port: u16, user: &str, sslmode: &str, query: &str) -> Output {
    run(Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=postgres sslmode={sslmode} connect_timeout=5"
        ))
        .args(["-tAc", query]))
}

#[test]
fn postgres_by_user_through_a_postgres_route() {
    let pg_port = free_port();
    let Some(_pg) = postgres(pg_port) else {
        return;
    };
    let (port, other) = (free_port(), free_port());
    let config = format!(
        "{{
	layer4 {{
		127.0.0.1:{port} {{
			@app postgres {{
				user app
			}}
			@any_pg postgres
			route @app {{
				proxy 127.0.0.1:{pg_port}
			}}
			route @any_pg {{
				close
			}}
		}}
		127.0.0.1:{other} {{
			@pg postgres
			route @pg {{
				proxy 127.0.0.1:{pg_port}
			}}
		}}
	}}
}}
"
    );
    let _d = Dwaar::start(&bin(), &config, &[port, other]);
    let ok = psql(port, "app", "disable", "select 40 + 2");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "42",
        "{}",
        text(&ok)
    );
    // Another user's startup message matches only the closing route.
    let refused = psql(port, "mallory", "disable", "select 1");
    assert!(!refused.status.success());
    assert!(
        !text(&refused).contains("does not exist"),
        "the server must never see it: {}",
        text(&refused)
    );
    // A bare postgres matcher also takes the SSLRequest libpq sends first.
    let prefer = psql(other, "app", "prefer", "select current_user");
    assert_eq!(
        String::from_utf8_lossy(&prefer.stdout).trim(),
        "app",
        "{}",
        text(&prefer)
    );
    // Not PostgreSQL: closed without an answer.
    let mut s = TcpStream::connect(("127.0.0.1", other)).unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
}

/// An OpenSSH server on `port` with a new host key; returns it and the key's public line.
fn sshd(port: u16) -> Option<(Server, String)> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    assert!(
        sshd.is_some() || std::env::var("DWAAR_REQUIRE_E2E").as_deref() != Ok("1"),
        "sshd is required (scripts/bootstrap installs openssh-server)"
    );
    let sshd = sshd?;
    if !have_tool("ssh") || !have_tool("ssh-keygen") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("host_ed25519");
    let gen = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(gen.status.success(), "{}", text(&gen));
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\nPasswordAuthentication no\n",
            key.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Privilege separation needs its empty directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = spawn(Command::new(sshd).args(["-D", "-e", "-f"]).arg(&config));
    wait_port(port);
    let public = std::fs::read_to_string(dir.path().join("host_ed25519.pub"))
        .unwrap_or_else(|e| panic!("{e}"));
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Some((Server(child, Some(dir)), public))
}

#[test]
fn ssh_and_http_share_a_port() {
    let ssh_port = free_port();
    let Some((_sshd, host_key)) = sshd(ssh_port) else {
        return;
    };
    let web = origin::http("web");
    let port = free_port();
    let config = format!(
        "{{
	layer4 {{
		127.0.0.1:{port} {{
			@ssh ssh
			@web http host web.test
			route @ssh {{
				proxy 127.0.0.1:{ssh_port}
			}}
			route @web {{
				proxy 127.0.0.1:{}
			}}
		}}
	}}
}}
",
        web.port
    );
    let d = Dwaar::start(&bin(), &config, &[port]);
    // A real ssh client exchanges banners and keys with the server through Dwaar (and
    // fails to log in, having no key): the host key it learned is the server's.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let known = dir.path().join("known_hosts");
    let login = run(Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args([
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-p", &port.to_string(), "nobody@127.0.0.1", "true"]));
    assert!(
        text(&login).contains("Permission denied"),
        "{}",
        text(&login)
    );
    let learned = std::fs::read_to_string(&known).unwrap_or_default();
    assert!(learned.contains(&host_key), "{learned} vs {host_key}");
    let r = ok_get(port, "web.test", "/hello");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("web"), "{}", r.text());
    // Neither SSH nor web.test: closed.
    assert!(get(port, "other.test", "/").is_err());
    assert!(wait_until(Duration::from_secs(5), || d
        .log_text()
        .contains("route=\"@ssh\"")));
}

/// `openssl s_server` with a self-signed certificate for `name`.
fn tls_server(name: &str, port: u16) -> Server {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (crt, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let o = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt));
    assert!(o.status.success(), "{}", text(&o));
    let child = spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&crt)
            .arg("-key")
            .arg(&key),
    );
    wait_port(port);
    Server(child, Some(dir))
}

/// The certificate subject and issuer `openssl s_client` sees for `sni`.
fn peer_certificate(port: u16, sni: &str) -> String {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        sni,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c.spawn().unwrap_or_else(|e| panic!("s_client: {e}"));
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    text(&out)
        .lines()
        .filter(|l| l.starts_with("subject=") || l.starts_with("issuer="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sni_passthrough_beside_https_sites() {
    if !have_tool("openssl") || !have_tool("curl") {
        return;
    }
    let (a, b) = (free_port(), free_port());
    let (_a, _b) = (tls_server("a.test", a), tls_server("b.test", b));
    let port = free_port();
    let config = format!(
        "{{
	servers :{port} {{
		protocols h1 h2
		listener_wrappers {{
			layer4 {{
				@a tls sni a.test
				@b tls sni *.b.test b.test
				route @a {{
					proxy 127.0.0.1:{a}
				}}
				route @b {{
					proxy 127.0.0.1:{b}
				}}
			}}
			tls
		}}
	}}
}}

https://localhost:{port} {{
	tls internal
	respond \"dwaar {{http.request.proto}}\"
}}
"
    );
    let _d = Dwaar::start(&bin(), &config, &[port]);
    let seen_a = peer_certificate(port, "a.test");
    assert!(
        seen_a.contains("subject=CN = a.test") || seen_a.contains("subject=CN=a.test"),
        "{seen_a}"
    );
    let seen_b = peer_certificate(port, "x.b.test");
    assert!(seen_b.contains("b.test"), "{seen_b}");
    let own = peer_certificate(port, "localhost");
    assert!(own.contains("Dwaar Local CA"), "{own}");
    // Every other name reaches Dwaar's own TLS and HTTP, over HTTP/1.1 and HTTP/2.
    for (flag, proto) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let o = run(Command::new("curl")
            .args([
                "-sk",
                flag,
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
            ])
            .arg(format!("https://localhost:{port}/")));
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("dwaar {proto}"));
    }
}

#[test]
fn tls_termination_then_subroutes_and_proxy_headers() {
    if !have_tool("curl") {
        return;
    }
    let web = origin::http("plain-web");
    let (port, pp_port, site, pp_site) = (free_port(), free_port(), free_port(), free_port());
    // One server terminates TLS with the certificate of a site's name, then routes the
    // plaintext by Host. Another reads a PROXY header, matches the address it names
    // and sends the upstream (an HTTP site reading PROXY headers) a v2 header.
    let config = format!(
        "{{
	servers :{pp_site} {{
		listener_wrappers {{
			proxy_protocol {{
				allow 127.0.0.1/32
			}}
		}}
	}}
	layer4 {{
		127.0.0.1:{port} {{
			route {{
				tls
				subroute {{
					@web http host web.test
					route @web {{
						proxy 127.0.0.1:{}
					}}
				}}
				close
			}}
		}}
		127.0.0.1:{pp_port} {{
			route {{
				proxy_protocol {{
					allow 127.0.0.1/32
				}}
				subroute {{
					@far remote_ip 203.0.113.0/24
					route @far {{
						proxy 127.0.0.1:{pp_site} {{
							proxy_protocol v2
						}}
					}}
				}}
				close
			}}
		}}
	}}
}}

https://localhost:{site}, https://web.test:{site} {{
	tls internal
	respond \"site\"
}}

http://:{pp_site} {{
	respond \"client {{remote_host}}\"
}}
",
        web.port
    );
    let _d = Dwaar::start(&bin(), &config, &[port, pp_port, site, pp_site]);
    let curl = |host: &str, path: &str| {
        let o = run(Command::new("curl")
            .args(["-sk", "--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}{path}")));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let r = curl("web.test", "/x");
    assert!(
        r.contains("origin: plain-web") && r.contains("uri: /x"),
        "{r}"
    );
    // A request no subroute takes falls to `close`.
    assert_eq!(curl("localhost", "/"), "");
    // The address in the PROXY header is the client's from then on.
    let ask = |source: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", pp_port)).unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let req = format!(
            "PROXY TCP4 {source} 127.0.0.1 5555 {pp_port}\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let far = ask("203.0.113.9");
    assert!(far.ends_with("client 203.0.113.9"), "{far}");
    // An address outside the matcher's range: closed.
    assert_eq!(ask("198.51.100.1"), "");
}

#[test]
fn throttle_limits_what_the_client_sends() {
    let port = free_port();
    let config = format!(
        "{{
	layer4 {{
		127.0.0.1:{port} {{
			route {{
				throttle {{
					read_bytes_per_second 64KB
					read_burst_size 16KB
				}}
				echo
			}}
		}}
	}}
}}
"
    );
    let _d = Dwaar::start(&bin(), &config, &[port]);
    // Without throttling, echo is instant; here 192 KB take about 3 s at 64 KB/s.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let data = vec![7u8; 192 * 1000];
    let start = Instant::now();
    let mut w = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let sender = std::thread::spawn(move || w.write_all(&data).is_ok());
    let mut got = 0;
    let mut buf = [0u8; 16384];
    while got < 192 * 1000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(sender.join().unwrap_or(false));
    assert_eq!(got, 192 * 1000);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(2500), "took {took:?}");
}

/// A DNS query for `name` (type A) with id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn dns_over_udp_to_dnsmasq() {
    if !dnsmasq::available() {
        return;
    }
    let dns = Dnsmasq::start("", &["--address=/l4.test/10.20.30.40".to_string()], None);
    let dns_port = dns.port;
    let port = dnsmasq::free_udp_port();
    let http = free_port();
    let config = format!(
        "{{
	layer4 {{
		udp/127.0.0.1:{port} {{
			idle_timeout 5s
			@local remote_ip 127.0.0.1
			route @local {{
				proxy udp/127.0.0.1:{dns_port}
			}}
		}}
	}}
}}

http://127.0.0.1:{http} {{
	respond ok
}}
"
    );
    let d = Dwaar::start(&bin(), &config, &[http]);
    // 1,000 queries from 10 clients (10 sessions), each answered with the address.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in 0..10u16 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
        for i in 0..100u16 {
            let id = c * 100 + i;
            let mut tries = 0;
            loop {
                tries += 1;
                sock.send_to(
                    &dns_query(id, &format!("h{id}.l4.test")),
                    ("127.0.0.1", port),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                let mut buf = [0u8; 512];
                match sock.recv(&mut buf) {
                    Ok(n) if n > 12 && buf[..2] == id.to_be_bytes() => {
                        assert!(
                            buf[..n].ends_with(&[10, 20, 30, 40]),
                            "answer {:?}",
                            &buf[..n]
                        );
                        answered += 1;
                        break;
                    }
                    // The UDP service binds within a second of start; retry until then.
                    _ if tries < 5 && Instant::now() < deadline => continue,
                    _ => panic!("query {id} unanswered"),
                }
            }
        }
    }
    assert_eq!(answered, 1000);
    assert!(d.metric("dwaar_layer4_udp_sessions_total").unwrap_or(0) >= 10);
}

#[test]
fn health_checks_and_retries_skip_a_dead_upstream() {
    let live = origin::http("live");
    // Two dead addresses: upstream state is shared by proxies naming the same address.
    let (dead, dead2) = (free_port(), free_port());
    let (active, passive) = (free_port(), free_port());
    let config = format!(
        "{{
	layer4 {{
		127.0.0.1:{active} {{
			route {{
				proxy 127.0.0.1:{dead} 127.0.0.1:{live} {{
					lb_policy round_robin
					health_interval 200ms
					health_timeout 500ms
				}}
			}}
		}}
		127.0.0.1:{passive} {{
			route {{
				proxy 127.0.0.1:{dead2} 127.0.0.1:{live} {{
					lb_policy round_robin
					lb_try_duration 2s
					lb_try_interval 50ms
					fail_duration 30s
					max_fails 1
				}}
			}}
		}}
	}}
}}
",
        live = live.port
    );
    let d = Dwaar::start(&bin(), &config, &[active, passive]);
    // Active checks (TCP connects) take the dead upstream out within a few intervals.
    assert!(
        wait_until(Duration::from_secs(5), || (0..6)
            .all(|_| get(active, "x", "/").is_ok())),
        "every connection reaches the live upstream"
    );
    // Without active checks, a failed dial is retried on the other upstream and the
    // dead one is left out for fail_duration.
    for i in 0..10 {
        let r = get(passive, "x", "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(r.text().contains("origin: live"));
    }
    // Connections before the first probe may have failed; the counter shows them.
    assert!(d.metric("dwaar_layer4_dial_failures_total").is_some());
    let log = d.log_text();
    assert!(
        !log.contains(&format!("upstream=\"127.0.0.1:{dead2}\"")),
        "{log}"
    );
}

/// A TCP echo server on a thread; its port.
fn echo_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn idle_and_stream_timeouts_end_relays() {
    let upstream = echo_server();
    let (idle, total) = (free_port(), free_port());
    let config = format!(
        "{{
	layer4 {{
		127.0.0.1:{idle} {{
			idle_timeout 400ms
			route {{
				proxy 127.0.0.1:{upstream}
			}}
		}}
		127.0.0.1:{total} {{
			stream_timeout 1s
			route {{
				proxy 127.0.0.1:{upstream}
			}}
		}}
	}}
}}
"
    );
    let _d = Dwaar::start(&bin(), &config, &[idle, total]);
    let echo = |s: &mut TcpStream| -> bool {
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && s.read(&mut b).is_ok_and(|n| n == 1)
    };
    let open = |port| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s
    };
    // Traffic keeps an idle timeout away; silence ends the relay.
    let mut s = open(idle);
    for _ in 0..5 {
        assert!(echo(&mut s));
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(900));
    assert!(!echo(&mut s), "an idle relay is closed");
    // The total timeout ends a busy relay.
    let mut s = open(total);
    let start = Instant::now();
    while echo(&mut s) {
        assert!(start.elapsed() < Duration::from_secs(5), "never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}
