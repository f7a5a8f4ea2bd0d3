//! The Dwaarfile lexer: turns text into [`Token`]s that carry their byte span.
//!
//! The grammar follows Caddy's Caddyfile: tokens are separated by white space, a line
//! break ends a directive unless escaped with `\`, `#` starts a comment at the start of
//! a token, `"double quotes"` allow `\"` escapes, `` `backticks` `` are raw, and
//! `<<MARKER` heredocs run until a line holding only `MARKER` (whose indentation is
//! removed from every line). `{` and `}` are ordinary tokens; the parser gives them
//! meaning.

use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use std::sync::Arc;

/// One `import` a token came through: where the import was written and what it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSite {
    pub span: Span,
    /// The snippet name, or the canonical path of the imported file.
    pub target: Arc<str>,
}

/// The chain of imports (innermost first) that brought a token into the config.
pub type ImportChain = Arc<[ImportSite]>;

/// How a token was written; quoting turns off brace and matcher meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    Quoted,
    Backtick,
    Heredoc,
    /// Only produced when the lexer is asked to keep comments (for `fmt`).
    Comment,
}

/// One lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    /// The token's value after unquoting.
    pub text: String,
    pub span: Span,
    /// True when this token starts a new logical line (escaped line breaks do not count).
    pub line_start: bool,
    /// Number of line breaks between the previous token and this one (for `fmt`).
    pub breaks_before: u32,
    /// Imports this token came through; `None` for tokens of the main file.
    pub chain: Option<ImportChain>,
}

impl Token {
    pub fn is_word(&self, s: &str) -> bool {
        self.kind == TokenKind::Word && self.text == s
    }
    pub fn is_open_brace(&self) -> bool {
        self.is_word("{")
    }
    pub fn is_close_brace(&self) -> bool {
        self.is_word("}")
    }
    /// Import sites as spans, for diagnostics.
    pub fn chain_spans(&self) -> Vec<Span> {
        self.chain
            .as_deref()
            .map(|c| c.iter().map(|s| s.span).collect())
            .unwrap_or_default()
    }

    /// An error pointing at this token, carrying its import chain.
    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message, self.span).with_chain(&self.chain_spans())
    }

    pub fn warning(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(message, self.span).with_chain(&self.chain_spans())
    }

    pub fn quoted(&self) -> bool {
        matches!(
            self.kind,
            TokenKind::Quoted | TokenKind::Backtick | TokenKind::Heredoc
        )
    }
}

/// Splits `text` into tokens. Comments are dropped unless `keep_comments` is set.
/// Errors (an unterminated quote or heredoc) are collected; lexing goes on after them.
pub fn lex(file: FileId, text: &str, keep_comments: bool) -> (Vec<Token>, Vec<Diagnostic>) {
    let mut lx = Lexer {
        file,
        src: text.as_bytes(),
        text,
        pos: 0,
        tokens: Vec::new(),
        errors: Vec::new(),
        line_start: true,
        breaks: 0,
        keep_comments,
    };
    lx.run();
    (lx.tokens, lx.errors)
}

struct Lexer<'a> {
    file: FileId,
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    tokens: Vec<Token>,
    errors: Vec<Diagnostic>,
    line_start: bool,
    breaks: u32,
    keep_comments: bool,
}

impl Lexer<'_> {
    fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.file, start, end)
    }

    fn push(&mut self, kind: TokenKind, text: String, start: usize) {
        let tok = Token {
            kind,
            text,
            span: self.span(start, self.pos),
            line_start: self.line_start,
            breaks_before: self.breaks,
            chain: None,
        };
        self.tokens.push(tok);
        self.line_start = false;
        self.breaks = 0;
    }

    fn run(&mut self) {
        // A UTF-8 byte-order mark is not part of the config.
        if self.text.starts_with('\u{feff}') {
            self.pos = 3;
        }
        while self.pos < self.src.len() {
            let b = self.src[self.pos];
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.line_start = true;
                    self.breaks += 1;
                }
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'\\' if self.escaped_newline_len().is_some() => {
                    self.pos += self.escaped_newline_len().unwrap_or(1);
                }
                b'#' => self.comment(),
                b'"' => self.quoted(),
                b'`' => self.backtick(),
                b'<' if self.src[self.pos..].starts_with(b"<<")
                    && self.heredoc_marker().is_some() =>
                {
                    self.heredoc()
                }
                _ => self.word(),
            }
        }
    }

    /// Length of `\` + optional `\r` + `\n` at the cursor, if that is what is there.
    fn escaped_newline_len(&self) -> Option<usize> {
        let rest = &self.src[self.pos..];
        if rest.starts_with(b"\\\n") {
            Some(2)
        } else if rest.starts_with(b"\\\r\n") {
            Some(3)
        } else {
            None
        }
    }

    fn comment(&mut self) {
        let start = self.pos;
        while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.keep_comments {
            let text = self.text[start..self.pos].trim_end().to_string();
            let saved = self.line_start;
            self.push(TokenKind::Comment, text, start);
            // A comment does not consume the logical line start of what follows it.
            self.line_start = saved;
        }
    }

    fn word(&mut self) {
        let start = self.pos;
        let mut out = String::new();
        while self.pos < self.src.len() {
            let b = self.src[self.pos];
            if b.is_ascii_whitespace() {
                break;
            }
            if b == b'\\' && self.escaped_newline_len().is_some() {
                break;
            }
            // Advance one whole UTF-8 character.
            let ch_len = utf8_len(b);
            let end = (self.pos + ch_len).min(self.src.len());
            out.push_str(self.text.get(self.pos..end).unwrap_or(""));
            self.pos = end;
        }
        self.push(TokenKind::Word, out, start);
    }

    fn quoted(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            if self.pos >= self.src.len() {
                self.errors.push(
                    Diagnostic::error("unterminated quoted string", self.span(start, start + 1))
                        .with_help("add the closing '\"'"),
                );
                break;
            }
            let b = self.src[self.pos];
            if b == b'\\' && self.src.get(self.pos + 1) == Some(&b'"') {
                out.push('"');
                self.pos += 2;
                continue;
            }
            if b == b'"' {
                self.pos += 1;
                break;
            }
            let end = (self.pos + utf8_len(b)).min(self.src.len());
            out.push_str(self.text.get(self.pos..end).unwrap_or(""));
            self.pos = end;
        }
        self.push(TokenKind::Quoted, out, start);
    }

    fn backtick(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let body_start = self.pos;
        while self.pos < self.src.len() && self.src[self.pos] != b'`' {
            self.pos += 1;
        }
        let body = self
            .text
            .get(body_start..self.pos)
            .unwrap_or("")
            .to_string();
        if self.pos >= self.src.len() {
            self.errors.push(
                Diagnostic::error("unterminated backtick string", self.span(start, start + 1))
                    .with_help("add the closing '`'"),
            );
        } else {
            self.pos += 1;
        }
        self.push(TokenKind::Backtick, body, start);
    }

    /// The heredoc marker after `<<`, when the rest of the line is exactly a marker.
    fn heredoc_marker(&self) -> Option<&str> {
        let rest = &self.text[self.pos + 2..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let marker = rest[..line_end].trim_end_matches('\r');
        let valid = !marker.is_empty()
            && marker
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        valid.then_some(marker)
    }

    fn heredoc(&mut self) {
        let start = self.pos;
        let marker = self.heredoc_marker().unwrap_or("").to_string();
        let rest_start = self.pos + 2 + marker.len();
        // Skip to the line after the marker.
        let body_start = match self.text[rest_start..].find('\n') {
            Some(i) => rest_start + i + 1,
            None => self.text.len(),
        };
        let mut line_begin = body_start;
        let mut found = None;
        while line_begin < self.text.len() {
            let line_end = self.text[line_begin..]
                .find('\n')
                .map(|i| line_begin + i)
                .unwrap_or(self.text.len());
            let line = self.text[line_begin..line_end].trim_end_matches('\r');
            let trimmed = line.trim_start();
            let closes = trimmed
                .strip_prefix(marker.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
            if closes {
                let indent = &line[..line.len() - trimmed.len()];
                // Tokens may follow the marker on its line (`HTML 200`).
                let marker_end = line_begin + indent.len() + marker.len();
                found = Some((line_begin, marker_end, indent.to_string()));
                break;
            }
            line_begin = line_end + 1;
        }
        let Some((close_begin, close_end, indent)) = found else {
            self.errors.push(
                Diagnostic::error(
                    format!("heredoc is never closed: no line starts with '{marker}'"),
                    self.span(start, rest_start),
                )
                .with_help(format!("end the heredoc with a line holding '{marker}'")),
            );
            self.pos = self.text.len();
            return;
        };
        let body = &self.text[body_start..close_begin.max(body_start)];
        let mut out = String::new();
        for (i, line) in body.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
        }
        // The line break before the closing marker is not part of the value.
        if out.ends_with('\n') {
            out.pop();
            if out.ends_with('\r') {
                out.pop();
            }
        }
        self.pos = close_end;
        self.push(TokenKind::Heredoc, out, start);
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<(String, bool)> {
        let (toks, errs) = lex(0, src, false);
        assert!(errs.is_empty(), "{errs:?}");
        toks.into_iter().map(|t| (t.text, t.line_start)).collect()
    }

    #[test]
    fn words_lines_and_comments() {
        let t = texts("a b # c\n  d {\n}\n");
        assert_eq!(
            t,
            vec![
                ("a".into(), true),
                ("b".into(), false),
                ("d".into(), true),
                ("{".into(), false),
                ("}".into(), true)
            ]
        );
    }

    #[test]
    fn hash_inside_word_is_not_a_comment() {
        let t = texts("respond a#b");
        assert_eq!(t[1].0, "a#b");
    }

    #[test]
    fn quotes_and_escapes() {
        let t = texts(r#"respond "hello \"world\"" `raw \" {x}`"#);
        assert_eq!(t[1].0, "hello \"world\"");
        assert_eq!(t[2].0, "raw \\\" {x}");
    }

    #[test]
    fn line_continuation_keeps_one_logical_line() {
        let t = texts("a \\\n  b\nc");
        assert_eq!(t[1], ("b".into(), false));
        assert_eq!(t[2], ("c".into(), true));
    }

    #[test]
    fn heredoc_strips_closing_indent() {
        let t = texts("respond <<HTML\n    <p>hi</p>\n      x\n    HTML 200\n");
        assert_eq!(t[1].0, "<p>hi</p>\n  x");
        assert_eq!(t[2], ("200".into(), false));
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let (_, errs) = lex(0, "respond \"abc", false);
        assert_eq!(errs.len(), 1);
    }
}
