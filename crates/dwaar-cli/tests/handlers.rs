// End-to-end tests of the handler directives, through the real binary.

mod common;
use common::*;

#[test]
fn respond_with_status_body_and_placeholders() {
    let (_d, port) = serve(
        r#":PORT {
	respond /health 204
	respond /json `{"ok":true}`
	respond /who "host={host} path={path} q={query.name} m={method}" 201
	respond /closing "bye" {
		close
	}
	respond "default"
}"#,
    );
    let r = ok_get(port, "example.com", "/who?name=dw");
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "host=example.com path=/who q=dw m=GET");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = ok_get(port, "x", "/json");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(ok_get(port, "x", "/health").status, 204);
    assert_eq!(ok_get(port, "x", "/anything").text(), "default");
    let r = ok_get(port, "x", "/closing");
    assert_eq!(r.header("connection"), Some("close"));
    // HEAD gets the headers without a body.
    let r = raw(port, "HEAD /who HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 201);
    assert!(r.body.is_empty());
}

/// Caddy's global and request placeholders: the environment and machine, the clock,
/// file contents, escaped and prefixed URI parts, the original request, the request's
/// id (`{uuid}`), timings and the upstream's facts.
#[test]
fn global_and_request_placeholders() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("motd.txt");
    std::fs::write(&file, "hello from a file\n").unwrap_or_else(|e| panic!("{e}"));
    let o = origin::http("up");
    let (_d, port) = serve(&format!(
        r#":PORT {{
	handle /env {{
		respond "{{env.PATH}}|{{system.os}}|{{system.slash}}|{{file.{}}}|{{env.DWAAR_SURELY_UNSET}}."
	}}
	handle /clock {{
		respond "{{time.now.unix}}|{{time.now.unix_ms}}|{{time.now.year}}|{{time.now.common_log}}|{{time.now.http}}|{{time.now}}"
	}}
	rewrite /uri/* /rewritten{{path}}?r=1
	handle /rewritten/* {{
		respond "{{?query}}|{{%path}}|{{%query}}|{{%uri}}|{{orig_method}}|{{orig_dir}}|{{orig_file}}|{{orig_query}}|{{orig_?query}}|{{file.base}}|{{file.ext}}|{{http.request.local.port}}|{{http.shutting_down}}|{{http.request.local}}|{{http.time_until_shutdown}}"
	}}
	handle /id {{
		respond "{{uuid}} {{http.request.duration_ms}}"
	}}
	handle /proxied {{
		reverse_proxy 127.0.0.1:{} {{
			header_up X-Upstream "{{http.reverse_proxy.upstream.address}} {{http.reverse_proxy.upstream.host}} {{http.reverse_proxy.upstream.port}} {{http.reverse_proxy.retries}} {{http.reverse_proxy.upstream.fails}} {{http.reverse_proxy.upstream.duration_ms}} {{http.reverse_proxy.duration_ms}}"
		}}
	}}
}}"#,
        file.display(),
        o.port
    ));
    let path = std::env::var("PATH").unwrap_or_default();
    assert_eq!(
        ok_get(port, "x", "/env").text(),
        format!("{path}|linux|/|hello from a file|.")
    );
    let r = ok_get(port, "x", "/clock").text();
    let parts: Vec<&str> = r.split('|').collect();
    assert_eq!(parts.len(), 6, "{r}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let unix: u64 = parts[0].parse().unwrap_or(0);
    assert!(now.abs_diff(unix) < 5, "{r}");
    let ms: u64 = parts[1].parse().unwrap_or(0);
    assert!(ms / 1000 >= unix && ms / 1000 <= unix + 1, "{r}");
    assert!(
        parts[2].len() == 4 && parts[3].contains(&format!("/{}:", parts[2])),
        "{r}"
    );
    assert!(
        parts[3].ends_with(" +0000") && parts[4].ends_with(" GMT"),
        "{r}"
    );
    assert!(
        parts[5].ends_with(" +0000 UTC") && parts[5].starts_with(parts[2]),
        "{r}"
    );
    let r = ok_get(port, "x", "/uri/a%20b/c.tar.gz?x=1&y=a%20b").text();
    assert_eq!(
        r,
        format!("?r=1|%2Frewritten%2Furi%2Fa+b%2Fc.tar.gz|r%3D1|%2Frewritten%2Furi%2Fa%2520b%2Fc.tar.gz%3Fr%3D1|GET|/uri/a%20b/|c.tar.gz|x=1&y=a%20b|?x=1&y=a%20b|c.tar|.gz|{port}|false|127.0.0.1:{port}|")
    );
    let r = ok_get(port, "x", "/id");
    let text = r.text();
    let (id, ms) = text.split_once(' ').unwrap_or_default();
    assert_eq!(
        Some(id),
        r.header("x-request-id"),
        "{{uuid}} is the request's id"
    );
    assert!(ms.parse::<f64>().is_ok_and(|v| v >= 0.0), "{text}");
    let r = ok_get(port, "x", "/proxied");
    let text = r.text().to_ascii_lowercase();
    let prefix = format!("x-upstream: tcp/127.0.0.1:{0} 127.0.0.1 {0} 0 0 ", o.port);
    let line = text
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("{text}"));
    // The latest attempt's and the whole proxying's durations, in milliseconds.
    let ms: Vec<f64> = line.split(' ').map(|v| v.parse().unwrap_or(-1.0)).collect();
    assert!(ms.len() == 2 && ms[0] >= 0.0 && ms[1] >= ms[0], "{line}");
}

/// `method` changes what the upstream is asked (and `{orig_method}` keeps the original);
/// the `vars` and `vars_regexp` matchers choose routes by variables and placeholders.
#[test]
fn method_directive_and_vars_matchers() {
    let o = origin::http("up");
    let (_d, port) = serve(&format!(
        r#":PORT {{
	vars tier gold
	@gold vars tier gold
	@ver vars_regexp v {{header.X-Ver}} ^v(\d+)$
	method /put/* PUT
	handle /put/* {{
		reverse_proxy 127.0.0.1:{} {{
			header_up X-Was {{orig_method}}
		}}
	}}
	handle @ver {{
		respond "version {{re.v.1}}"
	}}
	handle @gold {{
		respond "gold"
	}}
}}"#,
        o.port
    ));
    let r = ok_get(port, "x", "/put/thing");
    let text = r.text().to_ascii_lowercase();
    assert!(text.contains("method: put"), "{text}");
    assert!(text.contains("x-was: get"), "{text}");
    let r =
        request(port, "GET", "x", "/v", &[("X-Ver", "v7")], b"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "version 7");
    assert_eq!(ok_get(port, "x", "/other").text(), "gold");
}

/// Named routes (`&(name) { ... }`) run where `invoke` says, with their own matchers, and
/// fall through like `route` when they answer nothing; what is wrong in one is reported
/// once at its line, invoked or not.
#[test]
fn named_routes_run_where_invoked() {
    let o = origin::http("up");
    let (_d, port) = serve(&format!(
        r#"&(app) {{
	@admin path /admin/*
	respond @admin "no admin here" 403
	reverse_proxy 127.0.0.1:{}
}}
&(tag) {{
	header X-Tagged yes
}}
:PORT {{
	invoke tag
	invoke /app/* app
	respond "site {{path}}"
}}"#,
        o.port
    ));
    // Like any directive, `invoke`s with a path matcher sort before those without: the
    // proxied answer ends the request before `tag` runs (as in Caddy).
    let r = ok_get(port, "x", "/app/hello");
    assert!(r.text().contains("uri: /app/hello"), "{}", r.text());
    assert_eq!(r.header("x-tagged"), None);
    let r = ok_get(port, "x", "/admin/x");
    assert_eq!((r.status, r.text().as_str()), (200, "site /admin/x"));
    assert_eq!(r.header("x-tagged"), Some("yes"));
    // The route's own `@admin` looks at the whole path.
    let r = ok_get(port, "x", "/app/admin/x");
    assert!(r.text().contains("uri: /app/admin/x"), "{}", r.text());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("Dwaarfile"),
        "&(loop) {\n\tinvoke loop\n}\n&(bad) {\n\trespnd x\n}\n:1 {\n\tinvoke bad\n\tinvoke nope\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = dwaar_cmd(&["validate"], dir.path());
    assert_eq!(code, 1);
    for want in [
        "Dwaarfile:2:9",
        "invokes itself",
        "Dwaarfile:5:2",
        "Dwaarfile:9:9",
        "no named route 'nope'",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert_eq!(
        err.matches("respnd").count(),
        2,
        "reported once (line and caret): {err}"
    );
}

/// `header -X-*` / `-*-Secret` and `request_header -X-Drop-*` delete every matching field
/// (they once deleted only a field literally named `X-*`).
#[test]
fn header_deletions_take_wildcards() {
    let o = origin::http("app");
    let (_d, port) = serve(&format!(
        ":PORT {{\n\theader -X-Origin*\n\theader -*-secret\n\trequest_header -X-Drop-*\n\treverse_proxy 127.0.0.1:{}\n}}",
        o.port
    ));
    let r = request(
        port,
        "GET",
        "x",
        "/",
        &[("X-Drop-A", "1"), ("X-Drop-B", "2"), ("X-Keep", "3")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body = r.text();
    assert!(!body.contains("h:x-drop-"), "{body}");
    assert!(body.contains("h:x-keep: 3"), "{body}");
    assert_eq!(r.header("x-origin"), None);
    assert_eq!(r.header("x-backend-secret"), None);
    assert_eq!(r.header("server"), Some("mock-origin"));
}

#[test]
fn redir_codes_and_html() {
    let (_d, port) = serve(
        r#":PORT {
	redir /old /new 301
	redir /tmp /elsewhere
	redir /perm https://example.org{uri} permanent
	redir /page /target html
	redir /evil //evil.example/x
}"#,
    );
    let r = ok_get(port, "x", "/old");
    assert_eq!((r.status, r.header("location")), (301, Some("/new")));
    let r = ok_get(port, "x", "/tmp");
    assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
    let r = ok_get(port, "x", "/perm?a=1");
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://example.org/perm?a=1"))
    );
    let r = ok_get(port, "x", "/page");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/target"));
    let r = ok_get(port, "x", "/evil");
    assert_eq!(
        r.header("location"),
        Some("/evil.example/x"),
        "protocol-relative redirect collapsed"
    );
}

#[test]
fn rewrite_uri_and_handle_path_reach_upstream() {
    let o = origin::http("app");
    let cfg = r#":PORT {
	rewrite /r /rewritten?x=1
	uri /strip/* strip_prefix /strip
	uri /sfx/* strip_suffix .html
	uri /rep/* replace foo bar
	uri /re/* path_regexp /re/(\d+) /num/$1
	handle_path /hp/* {
		reverse_proxy 127.0.0.1:ORIGIN
	}
	reverse_proxy 127.0.0.1:ORIGIN
}"#
    .replace("ORIGIN", &o.port.to_string());
    let (_d, port) = serve(&cfg);
    assert!(ok_get(port, "x", "/r")
        .text()
        .contains("uri: /rewritten?x=1"));
    assert!(ok_get(port, "x", "/strip/a/b?q=2")
        .text()
        .contains("uri: /a/b?q=2"));
    assert!(ok_get(port, "x", "/sfx/page.html")
        .text()
        .contains("uri: /sfx/page\n"));
    assert!(ok_get(port, "x", "/rep/foofoo")
        .text()
        .contains("uri: /rep/barbar"));
    assert!(ok_get(port, "x", "/re/42").text().contains("uri: /num/42"));
    assert!(ok_get(port, "x", "/hp/deep/x")
        .text()
        .contains("uri: /deep/x"));
}

#[test]
fn header_directive_set_add_delete_defer_and_request_header() {
    let o = origin::http("app");
    let cfg = r#":PORT {
	header X-Static "on"
	header +X-Multi one
	header +X-Multi two
	header -Server
	header ?X-Default fallback
	header >X-Origin replaced
	header /api/* X-Api yes
	header X-Secret-Find "abc-123" {
		X-Secret-Find abc xyz
	}
	request_header X-To-Backend "from {remote_host}"
	request_header -User-Agent
	reverse_proxy 127.0.0.1:ORIGIN {
		header_up X-Up 1
		header_down -X-Backend-Secret
		header_down X-Down added
	}
}"#
    .replace("ORIGIN", &o.port.to_string());
    let (_d, port) = serve(&cfg);
    let r = request(port, "GET", "x", "/api/a", &[("User-Agent", "curl")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    let body = r.text();
    assert!(body.contains("h:x-to-backend: from 127.0.0.1"), "{body}");
    assert!(!body.contains("h:user-agent"), "{body}");
    assert!(body.contains("h:x-up: 1"), "{body}");
    assert_eq!(r.header("x-static"), Some("on"));
    assert_eq!(r.headers_all("x-multi"), vec!["one", "two"]);
    assert_eq!(
        r.header("server"),
        None,
        "deleted (deferred) even though upstream sent it"
    );
    assert_eq!(r.header("x-default"), Some("fallback"));
    assert_eq!(
        r.header("x-origin"),
        Some("replaced"),
        "deferred set overrides upstream"
    );
    assert_eq!(r.header("x-api"), Some("yes"));
    assert_eq!(r.header("x-backend-secret"), None);
    assert_eq!(r.header("x-down"), Some("added"));
    let r = ok_get(port, "x", "/other");
    assert_eq!(r.header("x-api"), None);
}

#[test]
fn handle_blocks_are_exclusive_and_route_keeps_order() {
    let (_d, port) = serve(
        r#":PORT {
	handle /a/* {
		respond "A"
	}
	handle /a/b {
		respond "AB"
	}
	route /r {
		header X-First 1
		respond "route"
		header X-Never 1
	}
	respond "fallback"
}"#,
    );
    // Longest path first: /a/b beats /a/*.
    assert_eq!(ok_get(port, "x", "/a/b").text(), "AB");
    assert_eq!(ok_get(port, "x", "/a/c").text(), "A");
    assert_eq!(ok_get(port, "x", "/zzz").text(), "fallback");
    let r = ok_get(port, "x", "/r");
    assert_eq!(r.text(), "route");
    assert_eq!(r.header("x-first"), Some("1"));
    assert_eq!(r.header("x-never"), None);
}

#[test]
fn named_matchers_and_logic() {
    let (_d, port) = serve(
        r#":PORT {
	@post_api {
		method POST
		path /api/*
	}
	@mobile header User-Agent *Mobile*
	@notadmin not path /admin/*
	@q query debug=1
	@re path_regexp ver ^/v(\d+)/
	@hosts host a.example b.example
	@absent header !X-Token
	respond @post_api "post api"
	respond @mobile "mobile"
	respond @q "debug"
	respond @re "version {re.ver.1}"
	respond @hosts "host {host}"
	respond @absent "no token" 401
	respond @notadmin "public"
	respond "admin"
}"#,
    );
    let r = request(port, "POST", "x", "/api/x", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "post api");
    let r = request(
        port,
        "GET",
        "x",
        "/api/x",
        &[("User-Agent", "A Mobile browser"), ("X-Token", "t")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "mobile");
    let r = request(port, "GET", "x", "/p?debug=1", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "debug");
    let r = request(port, "GET", "x", "/v2/items", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "version 2");
    let r = request(port, "GET", "B.Example:80", "/", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    // The host matcher ignores case; `{host}` keeps the client's (as Caddy does).
    assert_eq!(r.text(), "host B.Example");
    let r = ok_get(port, "x", "/whatever");
    assert_eq!((r.status, r.text().as_str()), (401, "no token"));
    let r = request(port, "GET", "x", "/admin/x", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "admin");
    let r = request(port, "GET", "x", "/pub", &[("X-Token", "t")], b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.text(), "public");
}

#[test]
fn remote_ip_matcher_and_abort() {
    let (_d, port) = serve(
        r#":PORT {
	@blocked not remote_ip 10.0.0.0/8
	abort /secret
	respond @blocked "outsider"
	respond "insider"
}"#,
    );
    assert_eq!(ok_get(port, "x", "/").text(), "outsider");
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.read_response(false).is_err(),
        "abort closes without a response"
    );
}

#[test]
fn error_and_handle_errors() {
    let (_d, port) = serve(
        r#":PORT {
	error /gone "It is gone" 410
	error /forbidden 403
	error /plain 418
	respond "ok"
	handle_errors 4xx {
		@forb expression false
	}
}"#
        .replace(
            "\t\t@forb expression false\n",
            "\t\trespond \"{err.status_code} {err.message} custom\"\n",
        )
        .as_str(),
    );
    let r = ok_get(port, "x", "/gone");
    assert_eq!(
        (r.status, r.text().as_str()),
        (410, "410 It is gone custom")
    );
    let r = ok_get(port, "x", "/forbidden");
    assert_eq!(r.status, 403);
    assert_eq!(ok_get(port, "x", "/").text(), "ok");
}

#[test]
fn handle_errors_without_codes_catches_all() {
    let (_d, port) = serve(
        r#":PORT {
	error 500
	handle_errors {
		header X-Err yes
		respond "error page {http.error.status_code}"
	}
}"#,
    );
    let r = ok_get(port, "x", "/");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "error page 500");
    assert_eq!(r.header("x-err"), Some("yes"));
}

/// `{http.error.trace}` names the directive that raised the error.
#[test]
fn error_trace_names_the_raising_directive() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = format!(
        ":PORT {{\n\terror /boom 403\n\thandle /files/* {{\n\t\troot * {}\n\t\tfile_server\n\t}}\n\
         \thandle /up/* {{\n\t\treverse_proxy 127.0.0.1:1\n\t}}\n\trespond ok\n\
         \thandle_errors {{\n\t\trespond \"{{err.status_code}} by {{http.error.trace}}\"\n\t}}\n}}",
        dir.path().display()
    );
    let (_d, port) = serve(&cfg);
    for (path, want) in [
        ("/boom", "403 by error"),
        ("/files/none.txt", "404 by file_server"),
        ("/up/x", "502 by reverse_proxy"),
    ] {
        assert_eq!(ok_get(port, "x", path).text(), want, "{path}");
    }
    assert_eq!(ok_get(port, "x", "/").text(), "ok");
}

#[test]
fn vars_and_map() {
    let (_d, port) = serve(
        r#":PORT {
	vars env production
	vars /beta/* env beta
	map {path} {section} {tier} {
		/docs/intro docs free
		~^/shop/ shop paid
		default other none
	}
	respond "env={vars.env} section={vars.section} tier={vars.tier}"
}"#,
    );
    assert_eq!(
        ok_get(port, "x", "/docs/intro").text(),
        "env=production section=docs tier=free"
    );
    assert_eq!(
        ok_get(port, "x", "/shop/x").text(),
        "env=production section=shop tier=paid"
    );
    assert_eq!(
        ok_get(port, "x", "/beta/q").text(),
        "env=beta section=other tier=none"
    );
}

#[test]
fn request_body_limit() {
    let o = origin::http("app");
    let cfg = r#":PORT {
	request_body {
		max_size 10B
	}
	reverse_proxy 127.0.0.1:ORIGIN
}"#
    .replace("ORIGIN", &o.port.to_string());
    let (_d, port) = serve(&cfg);
    let r = request(port, "POST", "x", "/", &[], b"small").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("body: 5"));
    let r = request(port, "POST", "x", "/", &[], b"this body is too large")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413);
    // Chunked bodies have no length up front: counted as they stream.
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    c.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413);
    // A huge declared body is refused at once, without waiting for it.
    let mut c = Conn::open(port).unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    c.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n0123456789")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn host_routing_exact_wildcard_catchall_and_bind() {
    let port = free_port();
    let cfg = r#"http://a.example:PORT {
	respond "exact a"
}
http://*.example:PORT {
	respond "wildcard {labels.1}"
}
:PORT {
	bind 127.0.0.1
	respond "catch-all"
}"#
    .replace("PORT", &port.to_string());
    let _d = Dwaar::start(&bin(), &cfg, &[port]);
    assert_eq!(ok_get(port, "A.EXAMPLE", "/").text(), "exact a");
    assert_eq!(ok_get(port, "a.example:1234", "/").text(), "exact a");
    assert_eq!(ok_get(port, "b.example", "/").text(), "wildcard b");
    assert_eq!(
        ok_get(port, "x.b.example", "/").text(),
        "catch-all",
        "wildcards cover one label"
    );
    assert_eq!(ok_get(port, "other", "/").text(), "catch-all");
}

#[test]
fn missing_or_duplicate_host_is_400() {
    let (_d, port) = serve(":PORT {\n\trespond ok\n}");
    let r = raw(port, "GET / HTTP/1.1\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    let r =
        raw(port, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    // HTTP/1.0 may omit Host.
    let r = raw(port, "GET / HTTP/1.0\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
}

#[test]
fn order_global_option_changes_directive_order() {
    let (_d, port) = serve(
        r#"{
	order respond before handle
}
:PORT {
	handle {
		respond "handle"
	}
	respond /x "respond first"
}"#,
    );
    assert_eq!(ok_get(port, "x", "/x").text(), "respond first");
    assert_eq!(ok_get(port, "x", "/y").text(), "handle");
}

/// `tracing` over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`): a request without a
/// `traceparent` starts a trace of its own, exported as a root span.
#[test]
fn tracing_exports_over_grpc() {
    let receiver = dwaar_testkit::otlp::Receiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let port = free_port();
    let cfg = format!(
        ":{port} {{\n\ttracing {{\n\t\tspan root\n\t}}\n\trespond /fail 503\n\trespond \"trace={{http.vars.trace_id}} span={{http.vars.span_id}}\"\n}}\n"
    );
    let _d = Dwaar::start_env(
        &bin(),
        &cfg,
        &[port],
        &["--threads", "1"],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let r = request(port, "GET", "x", "/", &[], b"").unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let (trace, span) = text
        .strip_prefix("trace=")
        .and_then(|t| t.split_once(" span="))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!((trace.len(), span.len()), (32, 16), "{text}");
    let failed = request(port, "GET", "x", "/fail", &[], b"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failed.status, 503);
    let spans = receiver.wait_for(2, std::time::Duration::from_secs(10));
    let s = spans
        .iter()
        .find(|s| s.trace_id == trace)
        .unwrap_or_else(|| panic!("no span for {trace}: {spans:?}"));
    assert_eq!((s.span_id.as_str(), s.parent_span_id.as_str()), (span, ""));
    assert_eq!((s.name.as_str(), s.via), ("root", "grpc"));
    let f = spans
        .iter()
        .find(|s| s.attribute("url.path") == Some("/fail"))
        .unwrap_or_else(|| panic!("{spans:?}"));
    assert_eq!(f.status_code, 2, "a 5xx answer is an error span");
}
