//! `dwaar fmt`: canonical layout of a Dwaarfile.
//!
//! Works on the token stream of one file (comments kept, imports and environment
//! variables left as written): one tab per nesting level, single spaces between tokens,
//! `}` on its own line, at most one blank line in a row, comments preserved. Every
//! token is re-emitted exactly as written, so quoting never changes, and formatting
//! formatted output changes nothing.

use crate::diag::Diagnostic;
use crate::lexer::{lex, TokenKind};

/// Formats `text`. Fails only when the text does not lex (an unterminated quote).
pub fn format(text: &str) -> Result<String, Vec<Diagnostic>> {
    let (tokens, errors) = lex(0, text, true);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut first = true;
    for t in &tokens {
        let raw = text
            .get(t.span.start as usize..t.span.end as usize)
            .unwrap_or(&t.text);
        let is_close = t.kind == TokenKind::Word && t.text == "}";
        let starts_line = first || t.line_start || t.breaks_before > 0 || is_close;
        if starts_line {
            if !first {
                out.push('\n');
                if t.breaks_before >= 2 && !is_close {
                    out.push('\n');
                }
            }
            if is_close {
                depth = depth.saturating_sub(1);
            }
            for _ in 0..depth {
                out.push('\t');
            }
        } else {
            out.push(' ');
        }
        out.push_str(raw);
        if t.kind == TokenKind::Word && t.text == "{" {
            depth += 1;
        }
        first = false;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indents_and_keeps_comments() {
        let src = "# top\nexample.com   {\n  respond   \"hi there\"  # say hi\n\n\n\n  handle /api/* {\nreverse_proxy a:1\n}\n}\n";
        let out = format(src).unwrap_or_default();
        assert_eq!(
            out,
            "# top\nexample.com {\n\trespond \"hi there\" # say hi\n\n\thandle /api/* {\n\t\treverse_proxy a:1\n\t}\n}\n"
        );
        assert_eq!(format(&out).unwrap_or_default(), out);
    }
}
