//! Every Dwaarfile under `examples/` must validate, and the quickstart must serve.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn dwaarfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            dwaarfiles(&p, out);
        } else if p.file_name().is_some_and(|n| n == "Dwaarfile") {
            out.push(p);
        }
    }
}

#[test]
fn all_examples_validate() {
    let mut files = Vec::new();
    dwaarfiles(&examples_dir(), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let f = f.to_string_lossy().into_owned();
        let (code, out, err) = dwaar_cmd(&["validate", "--config", &f], Path::new("."));
        assert_eq!(code, 0, "{f}: {out}{err}");
        let (code, _, err) = dwaar_cmd(&["fmt", "--check", &f], Path::new("."));
        assert_eq!(code, 0, "{f} is not formatted: {err}");
    }
}

#[test]
fn quickstart_serves_page_and_proxies_api() {
    let text = std::fs::read_to_string(examples_dir().join("quickstart/Dwaarfile"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (front, api) = (free_port(), free_port());
    let text = text
        .replace("8081", &api.to_string())
        .replace(":8080", &format!(":{front}"));
    // Analytics data goes to the user's data directory: a temporary one here.
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_dir = data.path().to_string_lossy().into_owned();
    let _d = Dwaar::start_env(
        &bin(),
        &text,
        &[front, api],
        &["--threads", "1"],
        &[("XDG_DATA_HOME", &data_dir)],
    );
    let page = ok_get(front, "localhost", "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("<h1>Dwaar is running</h1>"));
    assert!(page.text().contains("on <code>localhost</code>"));
    let api_resp = ok_get(front, "localhost", "/api/hello");
    assert_eq!(api_resp.status, 200);
    assert_eq!(api_resp.header("content-type"), Some("application/json"));
    let v: serde_json::Value =
        serde_json::from_slice(&api_resp.body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["path"], "/api/hello");
    assert_eq!(
        v["request_id"].as_str().map(str::len),
        Some(36),
        "request id forwarded upstream"
    );
    assert_eq!(ok_get(front, "localhost", "/api/nope").status, 404);
    let stats = ok_get(front, "localhost", "/stats");
    assert_eq!(stats.status, 200);
    assert!(stats.text().contains("Dwaar Analytics"));
    assert!(data.path().join("dwaar/analytics/analytics.db").exists());
}
