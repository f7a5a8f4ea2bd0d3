//! Caddy parity: the same Caddyfile served by Caddy 2 and by Dwaar must give the same
//! status, body and key headers for a set of requests. Needs the `caddy` binary (Debian
//! package); when `DWAAR_REQUIRE_E2E=1` a missing binary fails the test.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn caddy_bin() -> Option<String> {
    let found = Command::new("caddy")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some("caddy".into());
    }
    if std::env::var("DWAAR_REQUIRE_E2E").is_ok_and(|v| v == "1") {
        panic!("caddy is not installed but DWAAR_REQUIRE_E2E=1 (apt-get install caddy)");
    }
    eprintln!("skipping: caddy not installed");
    None
}

/// A running caddy; its config directory lives as long as it does.
struct Caddy(Child, #[allow(dead_code)] tempfile::TempDir);

/// A request to replay: method, path, headers.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_caddy(bin: &str, config: &str, port: u16) -> Caddy {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(bin)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn caddy: {e}"));
    assert!(
        wait_until(Duration::from_secs(15), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "caddy did not start"
    );
    Caddy(child, dir)
}

const SITE: &str = r#"{
	admin off
	auto_https off
}

:PORT {
	@api path /api/*
	@post method POST
	@hdr header X-Mode test
	@q query tab=*
	@re path_regexp item ^/items/(\d+)$
	@not not path /public/*

	header X-Site demo
	header /api/* X-Api yes
	redir /old /new 301
	redir /moved https://example.org{uri}
	rewrite /r /rewritten?from=r
	uri /u/* strip_prefix /u
	vars greeting hello
	map {path} {section} {
		/map/a alpha
		~^/map/b beta
		default other
	}

	handle /rewritten {
		respond "rewritten {path} {query}"
	}
	handle /h/* {
		respond "handle {path}" 202
	}
	handle_path /hp/* {
		respond "handle_path {path}"
	}
	handle /json {
		respond `{"a": 1}`
	}
	handle /err {
		error "bad thing" 418
	}
	handle /map/* {
		respond "section={section}"
	}
	handle /vars {
		respond "{vars.greeting} {method} {host} {query}"
	}
	handle @re {
		respond "item {re.item.1}"
	}
	handle @api {
		respond @post "api post" 201
		respond "api {path}"
	}
	handle @hdr {
		respond "header matched"
	}
	handle @q {
		respond "query {query.tab}"
	}
	handle {
		respond @not "private {uri}" 403
		respond "public {path}"
	}

	handle_errors {
		respond "error {err.status_code}"
	}
}
"#;

#[test]
fn same_responses_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let (cp, dp) = (free_port(), free_port());
    let _c = start_caddy(&caddy, &SITE.replace("PORT", &cp.to_string()), cp);
    let _d = Dwaar::start(&bin(), &SITE.replace("PORT", &dp.to_string()), &[dp]);
    let cases: &[Case<'_>] = &[
        ("GET", "/old", &[]),
        ("GET", "/moved?x=1", &[]),
        ("GET", "/r", &[]),
        ("GET", "/h/x", &[]),
        ("GET", "/hp/deep/path", &[]),
        ("GET", "/json", &[]),
        ("GET", "/err", &[]),
        ("GET", "/map/a", &[]),
        ("GET", "/map/bee", &[]),
        ("GET", "/map/zzz", &[]),
        ("GET", "/vars?k=v", &[]),
        ("GET", "/items/42", &[]),
        ("GET", "/items/x", &[]),
        ("GET", "/api/thing", &[]),
        ("POST", "/api/thing", &[]),
        ("GET", "/other", &[("X-Mode", "test")]),
        ("GET", "/other?tab=2", &[]),
        ("GET", "/public/page", &[]),
        ("GET", "/private?a=b", &[]),
        ("GET", "/u/public/x", &[]),
        ("HEAD", "/public/x", &[]),
    ];
    let mut diffs = Vec::new();
    for (method, path, headers) in cases {
        let a = request(cp, method, "localhost", path, headers, b"")
            .unwrap_or_else(|e| panic!("caddy {path}: {e}"));
        let b = request(dp, method, "localhost", path, headers, b"")
            .unwrap_or_else(|e| panic!("dwaar {path}: {e}"));
        let key = |r: &Response| {
            let ct = r.header("content-type").map(|v| v.to_ascii_lowercase());
            (
                r.status,
                r.text(),
                r.header("location").map(str::to_string),
                ct,
                r.header("x-site").map(str::to_string),
                r.header("x-api").map(str::to_string),
            )
        };
        if key(&a) != key(&b) {
            diffs.push(format!(
                "{method} {path}\n  caddy: {:?}\n  dwaar: {:?}",
                key(&a),
                key(&b)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "responses differ from Caddy:\n{}",
        diffs.join("\n")
    );
}

const PROXY_SITE: &str = r#"{
	admin off
	auto_https off
}

:PORT {
	header X-Origin from-header
	header -X-Backend-Secret
	header /both +X-Both added
	request_header X-Req added
	request_header -X-Drop
	reverse_proxy 127.0.0.1:ORIGIN {
		header_up X-Up {method}
		header_down X-Down d
		header_down -Server
	}
}
"#;

#[test]
fn same_proxy_header_semantics_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let o = origin::http("origin");
    let (cp, dp) = (free_port(), free_port());
    let site = PROXY_SITE.replace("ORIGIN", &o.port.to_string());
    let _c = start_caddy(&caddy, &site.replace("PORT", &cp.to_string()), cp);
    let _d = Dwaar::start(&bin(), &site.replace("PORT", &dp.to_string()), &[dp]);
    let mut diffs = Vec::new();
    for path in ["/", "/both", "/status/404"] {
        let hdrs: &[(&str, &str)] = &[("X-Drop", "1"), ("X-Forwarded-For", "1.2.3.4")];
        let a = request(cp, "GET", "localhost", path, hdrs, b"").unwrap_or_else(|e| panic!("{e}"));
        let b = request(dp, "GET", "localhost", path, hdrs, b"").unwrap_or_else(|e| panic!("{e}"));
        let key = |r: &Response| {
            let mut origin = r
                .headers_all("x-origin")
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            origin.sort();
            let mut seen: Vec<String> = r
                .text()
                .lines()
                .filter(|l| {
                    [
                        "h:x-req:",
                        "h:x-drop",
                        "h:x-up",
                        "h:x-forwarded-for",
                        "h:x-forwarded-proto",
                        "h:x-forwarded-host",
                        "h:host",
                        "uri:",
                        "method:",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .map(str::to_string)
                .collect();
            seen.sort();
            // Caddy brands responses with `Server: Caddy`; Dwaar sends no Server header.
            (
                r.status,
                origin,
                r.header("content-type").map(str::to_string),
                r.header("x-backend-secret").map(str::to_string),
                r.header("x-down").map(str::to_string),
                r.header("x-both").map(str::to_string),
                seen,
            )
        };
        if key(&a) != key(&b) {
            diffs.push(format!(
                "GET {path}\n  caddy: {:?}\n  dwaar: {:?}",
                key(&a),
                key(&b)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "responses differ from Caddy:\n{}",
        diffs.join("\n")
    );
}

/// Global and path placeholders Caddy 2.6 has, rendered the same by both.
#[test]
fn same_placeholders_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let site = "{\n\tadmin off\n\tauto_https off\n}\n\n:PORT {\n\trespond \"{system.os}|{system.arch}|{system.slash}|{time.now.year}|{env.PATH}|{file.base}|{file.ext}|{http.request.uri.path.file.base}|{http.request.uri.path.file.ext}|{http.shutting_down}\"\n}\n";
    let (cp, dp) = (free_port(), free_port());
    let _c = start_caddy(&caddy, &site.replace("PORT", &cp.to_string()), cp);
    let _d = Dwaar::start(&bin(), &site.replace("PORT", &dp.to_string()), &[dp]);
    for path in ["/", "/a/b/c.tar.gz?x=1", "/dir/", "/noext", "/.hidden"] {
        let a = request(cp, "GET", "localhost", path, &[], b"")
            .unwrap_or_else(|e| panic!("caddy {path}: {e}"));
        let b = request(dp, "GET", "localhost", path, &[], b"")
            .unwrap_or_else(|e| panic!("dwaar {path}: {e}"));
        assert_eq!((a.status, a.text()), (b.status, b.text()), "{path}");
    }
}

/// Serves `site` (with `PORT`) from Caddy and from Dwaar and checks that each request
/// gets the same status and body from both.
fn same_status_and_body(caddy: &str, site: &str, cases: &[Case<'_>]) {
    let (cp, dp) = (free_port(), free_port());
    let _c = start_caddy(caddy, &site.replace("PORT", &cp.to_string()), cp);
    let _d = Dwaar::start(&bin(), &site.replace("PORT", &dp.to_string()), &[dp]);
    for (method, path, headers) in cases {
        let a = request(cp, method, "localhost", path, headers, b"")
            .unwrap_or_else(|e| panic!("caddy {path}: {e}"));
        let b = request(dp, method, "localhost", path, headers, b"")
            .unwrap_or_else(|e| panic!("dwaar {path}: {e}"));
        assert_eq!(
            (a.status, a.text()),
            (b.status, b.text()),
            "{method} {path} {headers:?}"
        );
    }
}

/// The `method` directive and the `vars` / `vars_regexp` matchers answer as Caddy's do.
#[test]
fn same_method_and_vars_matching_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let site = r#"{
	admin off
	auto_https off
}

:PORT {
	vars tier gold
	map {path} {section} {
		/maps/a alpha
		default other
	}
	@gold vars tier gold silver
	@ph vars {query.x} yes maybe
	@mapped vars section alpha
	@re vars_regexp ver {header.X-Ver} ^v(\d+)$
	@two {
		vars tier gold
		vars {method} POST
	}
	method /m PUT
	handle /m {
		respond "{method} {http.request.orig_method}"
	}
	handle @re {
		respond "version {re.ver.1}"
	}
	handle @two {
		respond "gold post"
	}
	handle @ph {
		respond "query {query.x}"
	}
	handle @mapped {
		respond "mapped"
	}
	handle @gold {
		respond "gold tier"
	}
}
"#;
    let cases: &[Case<'_>] = &[
        ("GET", "/m", &[]),
        ("GET", "/x?x=yes", &[]),
        ("GET", "/x?x=maybe", &[]),
        ("GET", "/x?x=no", &[]),
        ("GET", "/maps/a", &[]),
        ("POST", "/p", &[]),
        ("GET", "/v", &[("X-Ver", "v42")]),
        ("GET", "/v", &[("X-Ver", "x42")]),
    ];
    same_status_and_body(&caddy, site, cases);
}

/// `try_files ... =404`: a missing file is an error with that status (through
/// `handle_errors`), as in Caddy.
#[test]
fn same_try_files_fallback_status_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("here.txt"), "here").unwrap_or_else(|e| panic!("{e}"));
    let site = format!(
        "{{\n\tadmin off\n\tauto_https off\n}}\n\n:PORT {{\n\troot * {}\n\ttry_files {{path}} {{path}}.txt =404\n\tfile_server\n\thandle_errors {{\n\t\trespond \"missing {{err.status_code}}\"\n\t}}\n}}\n",
        dir.path().display()
    );
    let (cp, dp) = (free_port(), free_port());
    let _c = start_caddy(&caddy, &site.replace("PORT", &cp.to_string()), cp);
    let _d = Dwaar::start(&bin(), &site.replace("PORT", &dp.to_string()), &[dp]);
    for path in ["/here.txt", "/here", "/gone"] {
        let a = request(cp, "GET", "localhost", path, &[], b"")
            .unwrap_or_else(|e| panic!("caddy {path}: {e}"));
        let b = request(dp, "GET", "localhost", path, &[], b"")
            .unwrap_or_else(|e| panic!("dwaar {path}: {e}"));
        assert_eq!((a.status, a.text()), (b.status, b.text()), "{path}");
        if path == "/gone" {
            assert_eq!((b.status, b.text().as_str()), (404, "missing 404"));
        }
    }
}

/// The `expression` matcher (CEL with placeholders and matcher functions, both its
/// forms) answers as Caddy's does, in `handle_errors` too.
#[test]
fn same_expression_matching_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let site = r#"{
	admin off
	auto_https off
}

:PORT {
	@post expression {method} == "POST" && path('/api/*')
	@keyed `header({'X-Key': ['a', 'b']}) && {query.x} == "1"`
	@long expression {path}.startsWith("/long/") && size({path}) > 8
	@either {
		expression method('PUT', 'PATCH') || host('other.test')
	}
	@any expression path_regexp('id', '^/items/(\\d+)$')
	error /missing 404
	handle @post {
		respond "post api"
	}
	handle @keyed {
		respond "keyed {header.X-Key}"
	}
	handle @long {
		respond "long"
	}
	handle @either {
		respond "either {method}"
	}
	handle @any {
		respond "item {re.id.1}"
	}
	handle_errors {
		@nf expression {http.error.status_code} == 404
		respond @nf "not found {http.error.status_code}"
		respond "other error"
	}
	respond "none"
}
"#;
    let cases: &[Case<'_>] = &[
        ("POST", "/api/x", &[]),
        ("GET", "/api/x", &[]),
        ("GET", "/k?x=1", &[("X-Key", "b")]),
        ("GET", "/k?x=2", &[("X-Key", "b")]),
        ("GET", "/k?x=1", &[("X-Key", "c")]),
        ("GET", "/long/abc", &[]),
        ("GET", "/long/", &[]),
        ("PATCH", "/p", &[]),
        ("GET", "/items/42", &[]),
        ("GET", "/missing", &[]),
        ("GET", "/", &[]),
    ];
    same_status_and_body(&caddy, site, cases);
}

/// `templates` renders like Caddy 2.6's: includes with arguments, front matter, Markdown
/// (tables, lists, task items, footnotes, autolinks, heading ids; not syntax
/// highlighting, which Dwaar does not do), `httpInclude`, request facts, Go's
/// `text/template` rules and the sprig functions in `tests/templates_site`.
#[test]
fn same_templates_as_caddy() {
    let Some(caddy) = caddy_bin() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/templates_site");
    let site = format!(
        "{{\n\tadmin off\n\tauto_https off\n}}\n\n:PORT {{\n\troot * {}\n\ttemplates\n\tfile_server\n}}\n",
        root.display()
    );
    same_status_and_body(
        &caddy,
        &site,
        &[
            ("GET", "/?q=42", &[("Cookie", "sid=abc")]),
            ("GET", "/md.html", &[]),
            ("GET", "/engine.html", &[("X-A", "hdr")]),
            ("GET", "/post.md", &[]),
        ],
    );
}
