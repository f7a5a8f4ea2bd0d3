// `php_fastcgi` against Debian's php-fpm: a front controller with pretty URLs, POST
// forms, file uploads, headers and cookies set by PHP, PATH_INFO, statuses, redirects,
// static files next to PHP, unix sockets, and kept FastCGI connections.

mod common;
use common::*;
use dwaar_testkit::php::{self, PhpFpm};

const INDEX: &str = r#"<?php
header('X-Powered: dwaar-test');
setcookie('first', 'one');
setcookie('second', 'two');
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    echo 'post name=' . ($_POST['name'] ?? '');
    if (isset($_FILES['upload'])) {
        $f = $_FILES['upload'];
        echo ' file=' . $f['name'] . ' size=' . $f['size'] . ' md5=' . md5_file($f['tmp_name']);
    }
    exit;
}
echo json_encode([
    'uri' => $_SERVER['REQUEST_URI'],
    'script' => $_SERVER['SCRIPT_NAME'],
    'filename' => $_SERVER['SCRIPT_FILENAME'],
    'path_info' => $_SERVER['PATH_INFO'] ?? '',
    'query' => $_SERVER['QUERY_STRING'],
    'doc_root' => $_SERVER['DOCUMENT_ROOT'],
    'ua' => $_SERVER['HTTP_USER_AGENT'] ?? '',
    'env' => getenv('APP_ENV'),
    'method' => $_SERVER['REQUEST_METHOD'],
    'server_name' => $_SERVER['SERVER_NAME'],
    'server_port' => $_SERVER['SERVER_PORT'],
    'remote' => $_SERVER['REMOTE_ADDR'],
    'proxy' => $_SERVER['HTTP_PROXY'] ?? null,
]);
"#;

fn app() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let w = |p: &str, s: &str| {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap_or(d.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, s).unwrap_or_else(|e| panic!("{e}"));
    };
    w("index.php", INDEX);
    w("info.php", "<?php echo 'info path_info=' . ($_SERVER['PATH_INFO'] ?? '') . ' script=' . $_SERVER['SCRIPT_NAME'];");
    w("missing.php", "<?php http_response_code(404); echo 'nope';");
    w("go.php", "<?php header('Location: /elsewhere');");
    w("big.php", "<?php echo str_repeat('0123456789', 100000);");
    w("sub/index.php", "<?php echo 'sub index';");
    w("slow.php", "<?php sleep(3); echo 'late';");
    w("static.txt", "plain static file");
    d
}

fn get_h(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", "php.test", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn php_front_controller_forms_uploads_headers_and_path_info() {
    let Some(bin) = php::binary() else {
        eprintln!("skipping: php-fpm is not installed");
        return;
    };
    let fpm = PhpFpm::start(&bin);
    let a = app();
    let root = a.path().display().to_string();
    let (d, port) = serve(&format!(
        ":PORT {{\n\troot * {root}\n\
         \treverse_proxy /fpm-status 127.0.0.1:{p} {{\n\t\ttransport fastcgi {{\n\t\t\tsplit /fpm-status\n\t\t}}\n\t}}\n\
         \tphp_fastcgi 127.0.0.1:{p} {{\n\t\tenv APP_ENV testing\n\t}}\n\
         \tfile_server\n}}\n",
        p = fpm.port
    ));

    // Pretty URL -> front controller.
    let r = get_h(
        port,
        "/blog/hello-world?x=1&y=2",
        &[("User-Agent", "dwaar-test/1"), ("Proxy", "http://evil:1")],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), d.log_text());
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    assert_eq!(v["uri"], "/blog/hello-world?x=1&y=2");
    assert_eq!(v["script"], "/index.php");
    assert_eq!(v["filename"], format!("{root}/index.php"));
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["doc_root"], root);
    assert_eq!(v["ua"], "dwaar-test/1");
    assert_eq!(v["env"], "testing");
    assert_eq!(v["server_name"], "php.test");
    assert_eq!(v["server_port"], "80");
    assert_eq!(v["remote"], "127.0.0.1");
    assert_eq!(
        v["proxy"],
        serde_json::Value::Null,
        "the Proxy header must not reach PHP"
    );
    // Headers and cookies set by PHP.
    assert_eq!(r.header("x-powered"), Some("dwaar-test"));
    let cookies = r.headers_all("set-cookie");
    assert!(
        cookies.iter().any(|c| c.starts_with("first=one")),
        "{cookies:?}"
    );
    assert!(
        cookies.iter().any(|c| c.starts_with("second=two")),
        "{cookies:?}"
    );

    // PATH_INFO.
    let r = get_h(port, "/info.php/extra/path", &[]);
    assert_eq!(r.text(), "info path_info=/extra/path script=/info.php");

    // POST form data.
    let r = request(
        port,
        "POST",
        "php.test",
        "/submit",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=dwaar&other=1",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.text().starts_with("post name=dwaar"), "{}", r.text());

    // A file upload (multipart), 200 KB.
    let file: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let boundary = "dwaarboundary1234";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nuploader\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(
        port,
        "POST",
        "php.test",
        "/upload",
        &[("Content-Type", &ct)],
        &body,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let md5 = md5_hex(&file);
    assert_eq!(
        r.text(),
        format!("post name=uploader file=data.bin size=200000 md5={md5}")
    );

    // Status codes and redirects set by PHP.
    let r = get_h(port, "/missing.php", &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "nope"));
    let r = get_h(port, "/go.php", &[]);
    assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
    // A directory with index.php: canonical redirect, then its index.
    let r = get_h(port, "/sub?k=v", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/sub/?k=v")));
    assert_eq!(get_h(port, "/sub/", &[]).text(), "sub index");
    // Static files are served by file_server, not PHP.
    assert_eq!(get_h(port, "/static.txt", &[]).text(), "plain static file");
    // A large response without Content-Length streams through.
    let r = get_h(port, "/big.php", &[]);
    assert_eq!(r.body.len(), 1_000_000);

    // `reverse_proxy` with the FastCGI transport: php-fpm's own status page.
    let st = get_h(port, "/fpm-status", &[]).text();
    assert!(
        st.contains("pool:") && st.contains("accepted conn:"),
        "{st}"
    );

    // FastCGI connections are kept: 30 more requests close no connection to php-fpm
    // (a closed one would linger in TIME_WAIT).
    let before = time_wait(fpm.port);
    for _ in 0..30 {
        assert_eq!(get_h(port, "/info.php/x", &[]).status, 200);
    }
    let after = time_wait(fpm.port);
    assert!(
        after <= before + 2,
        "connections closed: TIME_WAIT {before} -> {after}"
    );
}

/// TCP connections to or from `port` in TIME_WAIT (from /proc/net/tcp).
fn time_wait(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "06" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
        .count()
}

#[test]
fn php_over_a_unix_socket() {
    let Some(bin) = php::binary() else {
        eprintln!("skipping: php-fpm is not installed");
        return;
    };
    let fpm = PhpFpm::start(&bin);
    let a = app();
    let (_d, port) = serve(&format!(
        ":PORT {{\n\troot * {}\n\tphp_fastcgi unix/{} {{\n\t\tread_timeout 1s\n\t\ttry_files {{path}} index.php\n\t}}\n}}\n",
        a.path().display(),
        fpm.socket.display()
    ));
    assert_eq!(
        get_h(port, "/info.php/u", &[]).text(),
        "info path_info=/u script=/info.php"
    );
    // try_files override: unknown paths go to index.php.
    let r = get_h(port, "/some/page", &[]);
    assert!(
        r.text().contains("\"script\":\"\\/index.php\""),
        "{}",
        r.text()
    );
    // A responder slower than read_timeout: 504.
    let t = std::time::Instant::now();
    assert_eq!(get_h(port, "/slow.php", &[]).status, 504);
    assert!(t.elapsed() < std::time::Duration::from_millis(2500));
    // A responder that is not there: 502.
    let sock = fpm.socket.clone();
    drop(fpm);
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        std::os::unix::net::UnixStream::connect(&sock).is_err()
    }));
    assert_eq!(get_h(port, "/info.php", &[]).status, 502);
}

fn md5_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("md5sum: {e}"));
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        i.write_all(data).unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
