//! Source files and byte spans: where every token and diagnostic points.
//!
//! A [`SourceMap`] owns the text of the Dwaarfile and of every file it imports. A
//! [`Span`] is a byte range inside one of them; turning it into `line:col` happens only
//! when a diagnostic is rendered, so the lexer never counts lines itself.

use std::path::{Path, PathBuf};

/// Index of a file inside a [`SourceMap`].
pub type FileId = u32;

/// A byte range `start..end` in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both `self` and `other` (same file assumed).
    pub fn to(self, other: Span) -> Span {
        if self.file != other.file {
            return self;
        }
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One loaded file: its display name, path on disk and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The name shown in diagnostics (as the user wrote it, or relative to the main file).
    pub name: String,
    /// Where the file lives; `None` for text that did not come from disk (admin API).
    pub path: Option<PathBuf>,
    pub text: String,
    line_starts: Vec<u32>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, path: Option<PathBuf>, text: String) -> Self {
        let mut line_starts = vec![0u32];
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i as u32 + 1);
            }
        }
        SourceFile {
            name: name.into(),
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (columns count characters, not bytes).
    pub fn line_col(&self, offset: u32) -> (usize, usize) {
        let offset = offset.min(self.text.len() as u32);
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line] as usize;
        let end = (offset as usize).max(start);
        let col = self
            .text
            .get(start..end)
            .map(|s| s.chars().count())
            .unwrap_or(end - start);
        (line + 1, col + 1)
    }

    /// The text of 1-based line `line`, without its line break.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let start = start as usize;
        let end = self
            .line_starts
            .get(line)
            .map(|&e| e as usize)
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches(['\n', '\r'])
    }

    /// The directory imports of this file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// All files that make up one configuration load.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        (self.files.len() - 1) as FileId
    }

    pub fn file(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The text a span covers, or "" when it points nowhere.
    pub fn snippet(&self, span: Span) -> &str {
        self.file(span.file)
            .and_then(|f| f.text.get(span.start as usize..span.end as usize))
            .unwrap_or("")
    }
}

/// Reads a config file as text. A file that is not UTF-8 (a binary by mistake, a
/// Latin-1 export) is refused with the position of its first bad byte.
pub fn read_text(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let valid = &e.as_bytes()[..at];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        format!(
            "not UTF-8 text: byte 0x{:02x} at line {line}, column {col} (offset {at})",
            e.as_bytes()[at]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_files_are_refused_at_their_first_bad_byte() {
        let dir = std::env::temp_dir().join(format!("dwaar-utf8-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("Dwaarfile");
        let _ = std::fs::write(&f, b":80 {\n\trespond \"h\xe9\"\n}\n");
        let e = super::read_text(&f).err().unwrap_or_default();
        assert!(e.contains("line 2, column 12") && e.contains("0xe9"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_col_counts_from_one() {
        let f = SourceFile::new("t", None, "ab\ncdé f\n".to_string());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(3), (2, 1));
        assert_eq!(f.line_col(8), (2, 5));
        assert_eq!(f.line_text(2), "cdé f");
        assert_eq!(f.line_text(9), "");
    }
}
