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
    // The last token written would mean something else at the end of a line.
    let mut risky = false;
    // An `import` line runs to its end: a `}` on it is an argument, not a block's end.
    let mut import_line = false;
    for t in &tokens {
        let raw = text
            .get(t.span.start as usize..t.span.end as usize)
            .unwrap_or(&t.text);
        let new_line = first || t.line_start || t.breaks_before > 0;
        let is_close = t.kind == TokenKind::Word && t.text == "}" && (new_line || !import_line);
        let starts_line = new_line || is_close;
        if starts_line {
            import_line = t.kind == TokenKind::Word && t.text == "import";
        }
        if starts_line {
            if !first {
                end_line(&mut out, risky);
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
        risky = t.kind == TokenKind::Word && changes_at_line_end(raw);
        if t.kind == TokenKind::Word && t.text == "{" {
            depth += 1;
        }
        first = false;
    }
    if !out.is_empty() {
        end_line(&mut out, risky);
    }
    // A byte-order mark that starts the output would be dropped when the file is read
    // again; one that was a token (not the file's first character) stays a token.
    if out.starts_with('\u{feff}') {
        out.insert(0, '\n');
    }
    Ok(out)
}

/// Whether a word, written last on a line, would be read back as something else: one
/// ending in `\\` becomes an escaped newline, one like `<<END` opens a heredoc. (A word
/// the lexer read as such was never last on its line.)
fn changes_at_line_end(word: &str) -> bool {
    word.ends_with('\\')
        || word.strip_prefix("<<").is_some_and(|m| {
            !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Ends the current output line; after a word for which [`changes_at_line_end`] holds,
/// a space first keeps it a plain word.
fn end_line(out: &mut String, risky: bool) {
    if risky {
        out.push(' ');
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    /// Found by the `config` fuzz target: a `}` on an `import` line is an argument;
    /// moving it to a line of its own made a config that loaded one that does not.
    #[test]
    fn a_close_brace_on_an_import_line_stays_there() {
        let text = "import *res\0\0\0n; } ";
        let formatted = format(text).unwrap_or_else(|_| panic!("format"));
        assert_eq!(formatted, "import *res\0\0\0n; }\n");
        let load = |t: &str| crate::load_str("Dwaarfile", None, t, &|_| None).is_ok();
        assert_eq!(load(&formatted), load(text));
    }

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

    /// Found by `fuzz/config`: a byte-order mark after indentation is a token; moved to
    /// the start of the file by formatting it became a mark and vanished. And words that
    /// formatting put at the end of a line changed meaning: one ending in `\` became an
    /// escaped newline, `<<HTML` (followed by a form feed) opened a heredoc.
    #[test]
    fn a_byte_order_mark_inside_the_text_stays_a_token() {
        let load = |t: &str| crate::load_str("Dwaarfile", None, t, &|_| None).is_ok();
        for src in [
            "\t\u{feff}",
            "\u{feff}\u{feff}x",
            ":80 {\n\trespond ok\n}\n",
            "\\",
            ":80 {\n\trespond a\\ b\\\n}\n",
            ":80 {\n\trespond \\ \n\tb\n}\n",
            ":80 {\n\trespond <<HTML\x0c\n\t<p>x</p>\n}\n",
            ":80 {\n\trespond <<HTML\n\t<p>x</p>\n\tHTML 200\n}\n",
        ] {
            let out = format(src).unwrap_or_default();
            assert_eq!(load(&out), load(src), "{src:?} -> {out:?}");
            assert_eq!(format(&out).unwrap_or_default(), out);
        }
        // A real mark at the start is dropped (it is not part of the config).
        assert_eq!(format("\u{feff}:80\n").unwrap_or_default(), ":80\n");
    }
}
