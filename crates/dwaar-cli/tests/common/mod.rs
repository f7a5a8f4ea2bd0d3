//! Shared helpers for the end-to-end tests of the `dwaar` binary.
#![allow(dead_code, unused_imports)]

pub use dwaar_testkit::client::{get, raw, request, Conn, Response};
pub use dwaar_testkit::origin;
pub use dwaar_testkit::proxy::Dwaar;
pub use dwaar_testkit::{free_port, wait_until};
use std::path::PathBuf;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwaar"))
}

/// Starts dwaar with `config`, where every `PORT` is replaced by a fresh port.
pub fn serve(config: &str) -> (Dwaar, u16) {
    let port = free_port();
    let text = config.replace("PORT", &port.to_string());
    (Dwaar::start(&bin(), &text, &[port]), port)
}

pub fn ok_get(port: u16, host: &str, path: &str) -> Response {
    get(port, host, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Runs the dwaar binary with arguments; returns (exit code, stdout, stderr).
pub fn dwaar_cmd(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("DWAAR_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("run dwaar: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the outside program `name` is installed. With `DWAAR_REQUIRE_E2E=1` a missing
/// one fails the test; otherwise the caller skips.
pub fn have_tool(name: &str) -> bool {
    dwaar_testkit::have_tools(&[name])
}

/// A Python that can import `module` (`scripts/bootstrap` puts h2 and aioquic in
/// `target/pyenv`; `DWAAR_PYTHON` may name another). With `DWAAR_REQUIRE_E2E=1` a
/// missing one fails the test; otherwise it is skipped.
pub fn python_with(module: &str) -> Option<String> {
    let candidates = [
        std::env::var("DWAAR_PYTHON").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/pyenv/bin/python").to_string()),
    ];
    for p in candidates.into_iter().flatten() {
        if std::process::Command::new(&p)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(p);
        }
    }
    assert!(
        std::env::var("DWAAR_REQUIRE_E2E").as_deref() != Ok("1"),
        "a Python with `{module}` is required (scripts/bootstrap installs it in target/pyenv)"
    );
    eprintln!("skipping: no Python with {module}");
    None
}
