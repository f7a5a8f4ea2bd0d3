//! Golden tests for the Dwaarfile language.
//!
//! `tests/golden/ok/NAME.Dwaarfile` must load, and its `adapt` JSON must equal
//! `NAME.json`; `tests/golden/err/NAME.Dwaarfile` must fail with exactly the diagnostics
//! in `NAME.txt`. Set `DWAAR_BLESS=1` to rewrite the expected files, then review the diff.

use std::path::{Path, PathBuf};

fn golden_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir(kind))
        .unwrap_or_else(|e| panic!("read golden dir: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "Dwaarfile"))
        .collect();
    v.sort();
    v
}

/// A fixed environment so results do not depend on the machine.
fn env(key: &str) -> Option<String> {
    match key {
        "DWAAR_GOLDEN_NAME" => Some("golden".into()),
        _ => None,
    }
}

fn load(path: &Path) -> Result<dwaar_config::Loaded, dwaar_config::LoadError> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dwaar_config::load_str(&name, Some(path.to_path_buf()), &text, &env)
}

fn check(expected_path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var("DWAAR_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(expected_path, actual)
            .unwrap_or_else(|e| panic!("write {}: {e}", expected_path.display()));
        return;
    }
    match std::fs::read_to_string(expected_path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        )),
        Err(_) => failures.push(format!(
            "{} is missing (run with DWAAR_BLESS=1)\n{actual}",
            expected_path.display()
        )),
    }
}

#[test]
fn ok_cases_match_their_json() {
    let mut failures = Vec::new();
    let all = cases("ok");
    assert!(all.len() >= 8, "too few ok cases");
    for path in all {
        match load(&path) {
            Ok(l) => {
                let json = serde_json::to_string_pretty(&l.config).unwrap_or_default() + "\n";
                check(&path.with_extension("json"), &json, &mut failures);
                // The model survives a JSON round trip unchanged (the admin API loads it),
                // except the admin token, which is never written out.
                let back: dwaar_config::model::Config = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let mut expected = l.config.clone();
                expected.global.admin.token = None;
                assert_eq!(back, expected, "{}", path.display());
                assert!(
                    !json.contains("0123456789abcdef"),
                    "admin token leaked into JSON"
                );
            }
            Err(e) => failures.push(format!("{} failed to load:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn err_cases_match_their_diagnostics() {
    let mut failures = Vec::new();
    let all = cases("err");
    assert!(
        all.len() >= 40,
        "the issue asks for at least 40 error cases, found {}",
        all.len()
    );
    for path in all {
        match load(&path) {
            Ok(_) => failures.push(format!("{} loaded but must fail", path.display())),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("error: "), "{text}");
                check(&path.with_extension("txt"), &text, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn fmt_is_idempotent_on_every_golden_file() {
    for path in cases("ok").into_iter().chain(cases("err")) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let Ok(once) = dwaar_config::fmt::format(&text) else {
            continue;
        };
        let twice = dwaar_config::fmt::format(&once)
            .unwrap_or_else(|_| panic!("{}: formatted output does not lex", path.display()));
        assert_eq!(once, twice, "{}", path.display());
    }
}

#[test]
fn formatting_ok_files_keeps_their_meaning() {
    for path in cases("ok") {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let formatted =
            dwaar_config::fmt::format(&text).unwrap_or_else(|_| panic!("{}", path.display()));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let a = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let b = dwaar_config::load_str(&name, Some(path.clone()), &formatted, &env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.config, b.config, "{}", path.display());
    }
}
