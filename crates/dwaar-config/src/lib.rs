//! `dwaar-config`: the Dwaarfile language.
//!
//! Text goes through the [`lexer`] (tokens with byte spans), the [`parser`] (syntax tree,
//! imports expanded) and [`compile`] (validation into the [`model::Config`]). Every
//! problem becomes a [`diag::Diagnostic`] with `file:line:col`; all of them are collected
//! before loading fails. [`fmt`] formats a file. This crate does no I/O beyond reading
//! config files and knows nothing of the runtime.

pub mod compile;
pub mod diag;
pub mod fmt;
pub mod lexer;
pub mod log_template;
pub mod model;
pub mod parser;
pub mod placeholder;
pub mod source;
pub mod time_layout;
pub mod units;

use diag::{render_all, Diagnostic};
use source::{SourceFile, SourceMap};
use std::path::{Path, PathBuf};

/// A successfully loaded configuration.
#[derive(Debug)]
pub struct Loaded {
    pub config: model::Config,
    pub sources: SourceMap,
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    /// Warnings rendered as text (empty when there are none).
    pub fn render_warnings(&self) -> String {
        render_all(&self.warnings, &self.sources)
    }
}

/// A configuration that failed to load: every diagnostic, and the sources to render them.
#[derive(Debug)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
    pub sources: SourceMap,
}

impl LoadError {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render_all(&self.diagnostics, &self.sources))
    }
}

impl std::error::Error for LoadError {}

/// Reads and loads the Dwaarfile at `path` using the process environment.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let text = source::read_text(path).map_err(|e| LoadError {
        diagnostics: vec![Diagnostic::global(format!(
            "cannot read {}: {e}",
            path.display()
        ))],
        sources: SourceMap::new(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    load_str(&name, Some(abs), &text, &|k| std::env::var(k).ok())
}

/// Loads config text. `path` (when known) anchors relative imports; `env` supplies
/// environment variables.
pub fn load_str(
    name: &str,
    path: Option<PathBuf>,
    text: &str,
    env: parser::EnvLookup<'_>,
) -> Result<Loaded, LoadError> {
    let mut sources = SourceMap::new();
    let id = sources.add(SourceFile::new(name, path, text.to_string()));
    let (doc, mut diags) = parser::parse(&mut sources, id, env);
    let mut cd = compile::Diags::default();
    let config = compile::compile(&doc, &mut cd);
    diags.extend(cd.list);
    sort_diagnostics(&mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(LoadError {
            diagnostics: diags,
            sources,
        });
    }
    Ok(Loaded {
        config,
        sources,
        warnings: diags,
    })
}

/// Errors before warnings, then by file and position, without duplicates.
fn sort_diagnostics(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_key(|d| {
        let span = d.span.unwrap_or_default();
        (!d.is_error(), span.file, span.start)
    });
    diags.dedup();
}

/// The config file to use: `--config`, then `$DWAAR_CONFIG`, then `./Dwaarfile`, then
/// `./Caddyfile` (so a directory set up for Caddy runs as it is). On failure, the
/// message names every path tried.
pub fn resolve_config_path(flag: Option<&Path>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(p) = flag {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        return Err(format!(
            "config file not found: {} (from --config)",
            p.display()
        ));
    }
    if let Ok(p) = std::env::var("DWAAR_CONFIG") {
        if !p.is_empty() {
            let p = PathBuf::from(p);
            if p.exists() {
                return Ok(p);
            }
            tried.push(format!("{} (from $DWAAR_CONFIG)", p.display()));
        }
    }
    for default in ["Dwaarfile", "Caddyfile"] {
        let p = PathBuf::from(default);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("./{default}"));
    }
    Err(format!("no config file found; tried: {}", tried.join(", ")))
}
