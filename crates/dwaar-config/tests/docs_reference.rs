//! The docs cannot drift from the config language: every directive and global option
//! the compiler supports has a reference page (and no page describes a name it does not
//! know), and every `caddyfile` example in the docs and the README loads without an
//! error or a warning.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pages(folder: &str) -> Vec<String> {
    let dir = repo().join("docs/reference").join(folder);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".md"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_directive_and_global_option_has_a_page_and_every_page_a_name() {
    let v = dwaar_config::compile::vocabulary();
    for (folder, names) in [("directives", &v.directives), ("global", &v.global_options)] {
        let have = pages(folder);
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !have.iter().any(|h| h == *n))
            .collect();
        let unknown: Vec<_> = have
            .iter()
            .filter(|h| !names.iter().any(|n| n == h))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/reference/{folder}/ lacks pages for {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "docs/reference/{folder}/ has pages for names the config does not support: {unknown:?}"
        );
    }
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

/// The ```caddyfile blocks of a Markdown text, with the line each starts on.
fn examples(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```caddyfile") => current = Some((i + 1, String::new())),
            Some(_) if fence.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_caddyfile_example_in_the_docs_loads_cleanly() {
    let mut files = vec![repo().join("README.md")];
    markdown_files(&repo().join("docs"), &mut files);
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (line, example) in examples(&text) {
            checked += 1;
            let name = format!("{}:{line}", f.display());
            match dwaar_config::load_str(&name, None, &example, &|_| None) {
                Ok(l) if l.warnings.is_empty() => {}
                Ok(l) => failures.push(format!("{name}: warnings\n{}", l.render_warnings())),
                Err(e) => failures.push(format!("{name}:\n{e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The reference alone has one or more per page.
    assert!(checked >= 100, "only {checked} examples found");
}
