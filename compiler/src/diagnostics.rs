//! Located diagnostics and their rendering (rustc-style reports via `ariadne`).
//!
//! Every error has a stable code (`E0001` ...; the list with examples and
//! fixes is `docs/errors.md`), a one-line message, labels pointing at byte
//! ranges of the source (the first label is the primary one: the text that
//! is wrong; the others give context), notes explaining how the situation
//! arose, and an optional help line with the fix.

use crate::model::Span;
use ariadne::{CharSet, Color, Config, IndexType, Label as ALabel, Report, ReportKind, Source};
use serde::Serialize;

/// A label pointing at a span of the source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One error found in a spec, with a stable code (`E0001`, ...), a primary
/// message, labels pointing at the source, notes and an optional fix.
///
/// `labels[0]` is the primary label (what is wrong); further labels are
/// secondary (related places, such as the layer that produced a shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// A new error with `code` (see `docs/errors.md`) and a one-line message.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// Adds a label (the first one added is the primary label).
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a note (context: how a shape came about, what Keras would do, ...).
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Sets the help line (the suggested fix).
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Sets the help line if `help` is `Some`.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// The primary span (of the first label), or an empty span at 0.
    pub fn primary_span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// 1-based line and column (in characters) of byte offset `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Makes a span safe to hand to the renderer: inside the source, on char
/// boundaries, and not empty at the very end of the file (an end-of-file
/// position is shown on the last character instead, so that the line is
/// displayed).
fn sanitize(source: &str, span: Span) -> std::ops::Range<usize> {
    let len = source.len();
    let mut start = floor_char_boundary(source, span.start.min(len));
    let mut end = ceil_char_boundary(source, span.end.min(len).max(start));
    if start == len && len > 0 {
        // Point at the last visible character of the file.
        let trimmed = source.trim_end();
        let last = if trimmed.is_empty() { source } else { trimmed };
        let last_start = last.char_indices().last().map(|(i, _)| i).unwrap_or(0);
        start = last_start;
        end = last.len();
    }
    if end < start {
        end = start;
    }
    start..end
}

/// Renders diagnostics as a rustc-style report naming `path`, line and column.
/// `color` adds ANSI colours (off for snapshots and pipes).
///
/// Each diagnostic becomes one report:
/// ```text
/// error[E0002]: unknown layer `conv2`
///    ╭─[ model.cnn:5:3 ]
///    │
///  5 │   conv2(64, 3)
///    │   ──┬──
///    │     ╰──── not a layer
///    │
///    │ Help: did you mean `conv2d`?
/// ───╯
/// ```
pub fn render_diagnostics(
    diagnostics: &[Diagnostic],
    path: &str,
    source: &str,
    color: bool,
) -> String {
    let mut out = Vec::new();
    let config = Config::default()
        .with_color(color)
        .with_index_type(IndexType::Byte)
        .with_char_set(CharSet::Unicode);
    for (n, d) in diagnostics.iter().enumerate() {
        if n > 0 {
            out.push(b'\n');
        }
        let primary = sanitize(source, d.primary_span());
        // rustc's header: `error[E0002]: message`.
        let header = format!("error[{}]", d.code);
        let kind = ReportKind::Custom(&header, Color::Red);
        let mut report = Report::build(kind, (path, primary.clone()))
            .with_config(config)
            .with_message(&d.message);
        for (i, label) in d.labels.iter().enumerate() {
            let range = sanitize(source, label.span);
            let color_of = if i == 0 { Color::Red } else { Color::Blue };
            let mut l = ALabel::new((path, range))
                .with_message(&label.message)
                .with_order(i as i32);
            if color {
                l = l.with_color(color_of);
            }
            if i == 0 {
                l = l.with_priority(1);
            }
            report = report.with_label(l);
        }
        for note in &d.notes {
            report = report.with_note(note);
        }
        if let Some(help) = &d.help {
            report = report.with_help(help);
        }
        let mut buf = Vec::new();
        let write = report
            .finish()
            .write((path, Source::from(source)), &mut buf);
        if write.is_err() || buf.is_empty() {
            // Fall back to a plain rendering rather than losing the error.
            let (line, col) = line_col(source, primary.start);
            buf = format!(
                "error[{}]: {}\n  --> {path}:{line}:{col}\n",
                d.code, d.message
            )
            .into_bytes();
        }
        out.extend_from_slice(&buf);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    if color {
        text
    } else {
        // ariadne colours a custom report kind even when colours are off.
        strip_ansi(&text)
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
