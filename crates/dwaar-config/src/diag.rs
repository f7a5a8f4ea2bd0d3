//! Diagnostics: the errors and warnings a config load produces, and their rendering.
//!
//! A [`Diagnostic`] points at a [`Span`]; when the span came through an `import`, the
//! chain of import sites travels with it so the user sees how the file was reached.
//! Rendering looks like a compiler error: message, `--> file:line:col`, the source
//! line, a caret under the token, and an optional `help:` line.

use crate::source::{SourceMap, Span};
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Option<Span>,
    pub help: Option<String>,
    /// Import sites, innermost first, through which `span` was reached.
    pub import_chain: Vec<Span>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: Some(span),
            help: None,
            import_chain: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Self::error(message, span)
        }
    }

    /// An error that belongs to no particular place (a missing file, say).
    pub fn global(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            help: None,
            import_chain: Vec::new(),
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_chain(mut self, chain: &[Span]) -> Self {
        self.import_chain = chain.to_vec();
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` of the primary span, if there is one.
    pub fn location(&self, sources: &SourceMap) -> Option<String> {
        let span = self.span?;
        let file = sources.file(span.file)?;
        let (line, col) = file.line_col(span.start);
        Some(format!("{}:{}:{}", file.name, line, col))
    }

    /// Renders the diagnostic as multi-line text.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}: {}", self.message);
        if let Some(span) = self.span {
            if let Some(file) = sources.file(span.file) {
                let (line, col) = file.line_col(span.start);
                let text = file.line_text(line);
                let gutter = line.to_string().len();
                let pad = " ".repeat(gutter);
                let _ = writeln!(out, "{pad}--> {}:{line}:{col}", file.name);
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{line} | {}", text.replace('\t', " "));
                let (end_line, end_col) = file.line_col(span.end.max(span.start + 1));
                let width = if end_line == line {
                    end_col.saturating_sub(col).max(1)
                } else {
                    text.chars().count().saturating_sub(col - 1).max(1)
                };
                let _ = writeln!(out, "{pad} | {}{}", " ".repeat(col - 1), "^".repeat(width));
                for site in &self.import_chain {
                    if let Some(f) = sources.file(site.file) {
                        let (l, c) = f.line_col(site.start);
                        let _ = writeln!(out, "{pad} = note: imported from {}:{l}:{c}", f.name);
                    }
                }
                if let Some(help) = &self.help {
                    let _ = writeln!(out, "{pad} = help: {help}");
                }
                return out;
            }
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "  = help: {help}");
        }
        out
    }
}

/// Renders every diagnostic, errors first in source order, separated by blank lines.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    diags
        .iter()
        .map(|d| d.render(sources))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceFile;

    #[test]
    fn renders_caret_under_token() {
        let mut sm = SourceMap::new();
        let id = sm.add(SourceFile::new(
            "Dwaarfile",
            None,
            "a {\n    revers_proxy x\n}\n".into(),
        ));
        let d = Diagnostic::error("unknown directive 'revers_proxy'", Span::new(id, 8, 20))
            .with_help("did you mean 'reverse_proxy'?");
        let r = d.render(&sm);
        assert!(r.contains("--> Dwaarfile:2:5"), "{r}");
        assert!(r.contains("2 |     revers_proxy x"), "{r}");
        assert!(r.contains("  |     ^^^^^^^^^^^^\n"), "{r}");
        assert!(r.contains("help: did you mean 'reverse_proxy'?"), "{r}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("revers_proxy", ["respond", "reverse_proxy"]),
            Some("reverse_proxy")
        );
        assert_eq!(did_you_mean("zzzzzz", ["respond"]), None);
    }
}
