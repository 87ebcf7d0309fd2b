//! The source files of one check: the root spec and every file it imports,
//! laid out one after another in a single byte-offset space, so that a
//! [`Span`] names both a file and a place in it.

use crate::diagnostics::{render_diagnostics, Diagnostic, Label, LineIndex};
use crate::model::Span;
use std::path::{Path, PathBuf};

/// One file of a [`Sources`] map.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path used to read the file.
    pub path: PathBuf,
    /// The path as shown in messages.
    pub display: String,
    pub text: String,
    /// Offset of the file's first byte in the shared span space.
    pub base: usize,
    lines: LineIndex,
}

/// The files of one check. File `0` is the root spec.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    /// A map holding only `text` (as `display`), at offset 0.
    pub fn single(display: &str, text: &str) -> Sources {
        let mut s = Sources::default();
        s.add(Path::new(display), display.to_string(), text.to_string());
        s
    }

    /// Adds a file after the others and returns its index. One byte is left
    /// between files so that an end-of-file span never touches the next file.
    pub fn add(&mut self, path: &Path, display: String, text: String) -> usize {
        let base = self
            .files
            .last()
            .map(|f| f.base + f.text.len() + 1)
            .unwrap_or(0);
        let lines = LineIndex::new(&text);
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            display,
            text,
            base,
            lines,
        });
        self.files.len() - 1
    }

    /// All files' text in one string, each at its `base` offset (files are
    /// separated by one newline), so that any span indexes it directly.
    pub fn combined(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            while out.len() < f.base {
                out.push('\n');
            }
            out += &f.text;
        }
        out
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    pub fn file(&self, index: usize) -> Option<&SourceFile> {
        self.files.get(index)
    }

    /// The index of the file that contains `offset`.
    pub fn file_of(&self, offset: usize) -> usize {
        self.files
            .iter()
            .rposition(|f| f.base <= offset)
            .unwrap_or(0)
    }

    /// 1-based line of a span's start in its file.
    pub fn line(&self, span: Span) -> usize {
        match self.files.get(self.file_of(span.start)) {
            Some(f) => f.lines.line(span.start - f.base),
            None => 1,
        }
    }

    /// "line 12" for the root file, "`blocks.cnn` line 12" for another one.
    pub fn where_(&self, span: Span) -> String {
        let file = self.file_of(span.start);
        let line = self.line(span);
        match (file, self.files.get(file)) {
            (0, _) | (_, None) => format!("line {line}"),
            (_, Some(f)) => format!("{} line {line}", f.display),
        }
    }

    /// `path:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        match self.files.get(self.file_of(span.start)) {
            Some(f) => {
                let local = (span.start - f.base).min(f.text.len());
                let (line, col) = f.lines.line_col(&f.text, local);
                format!("{}:{line}:{col}", f.display)
            }
            None => "?".to_string(),
        }
    }

    /// Renders diagnostics rustc-style, each in the file of its primary
    /// label; labels that point into another file become notes giving their
    /// `path:line:col`.
    pub fn render(&self, diagnostics: &[Diagnostic], color: bool) -> String {
        let mut out = String::new();
        for (n, d) in diagnostics.iter().enumerate() {
            let index = self.file_of(d.primary_span().start);
            let Some(file) = self.files.get(index) else {
                continue;
            };
            let mut local = d.clone();
            local.labels.clear();
            let mut elsewhere = Vec::new();
            for label in &d.labels {
                if self.file_of(label.span.start) == index {
                    local.labels.push(Label {
                        span: Span::new(
                            label.span.start.saturating_sub(file.base),
                            label.span.end.saturating_sub(file.base),
                        ),
                        message: label.message.clone(),
                    });
                } else {
                    elsewhere.push(format!("{}: {}", self.location(label.span), label.message));
                }
            }
            // Notes about other files come first: they say where the labels are.
            elsewhere.extend(local.notes);
            local.notes = elsewhere;
            if n > 0 {
                out.push('\n');
            }
            out += &render_diagnostics(&[local], &file.display, &file.text, color);
        }
        out
    }
}
