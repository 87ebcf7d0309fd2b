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

    /// The same diagnostic with every label moved `by` bytes later (for a
    /// file placed at offset `by` in a [`crate::sources::Sources`] map).
    pub fn shifted(mut self, by: usize) -> Self {
        for l in &mut self.labels {
            l.span = Span::new(l.span.start + by, l.span.end + by);
        }
        self
    }

    /// The primary span (of the first label), or an empty span at 0.
    pub fn primary_span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// 1-based line and column (in characters) of byte offset `offset` in `source`.
///
/// Scans the source once: for many offsets into the same source build a
/// [`LineIndex`] instead (this function is linear in the source length).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(source).line_col(source, offset)
}

/// The byte offsets where the lines of a source start, computed once so that
/// converting a byte offset to a line and column is a binary search
/// (`O(log lines)`) plus, for non-ASCII sources, a count of the characters
/// before the offset on its line.
#[derive(Debug, Clone)]
pub struct LineIndex {
    /// Byte offset of the first character of each line; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
    /// Whether the source is ASCII (then a column is a byte difference).
    ascii: bool,
}

impl LineIndex {
    /// Indexes the lines of `source` (lines end at `\n`).
    pub fn new(source: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            source
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex {
            line_starts,
            ascii: source.is_ascii(),
        }
    }

    /// 1-based line of byte `offset` (offsets past the end are on the last line).
    pub fn line(&self, offset: usize) -> usize {
        // The number of line starts at or before `offset`.
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// 1-based line and column (in characters) of byte `offset` in `source`,
    /// which must be the text this index was built from.
    pub fn line_col(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(source, offset.min(source.len()));
        let line = self.line(offset);
        let start = self.line_starts[line - 1].min(offset);
        let col = if self.ascii {
            offset - start
        } else {
            source.get(start..offset).map_or(0, |t| t.chars().count())
        };
        (line, col + 1)
    }
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

/// Lines longer than this many characters are shown cut to a window of about
/// this width around the first label on them, with `…` marking the cuts.
pub const MAX_SHOWN_LINE_CHARS: usize = 200;

/// What replaces a character that would garble the terminal (control
/// characters other than tab, newline and the `\r` of a `\r\n`, Unicode line and paragraph
/// separators and bidirectional-text overrides) in a source snippet.
pub const REPLACEMENT_CHAR: char = '\u{FFFD}';

/// Whether `c` is shown as [`REPLACEMENT_CHAR`] in snippets.
fn is_unprintable(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// One piece of the displayed source: either copied from the original
/// (`copy == true`, byte for byte) or a replacement (a `\u{FFFD}` for an
/// unprintable character, or `…` for a cut part of a long line).
#[derive(Debug, Clone)]
struct Piece {
    orig: std::ops::Range<usize>,
    shown: std::ops::Range<usize>,
    copy: bool,
}

/// The source as shown in snippets, and how byte offsets of the original
/// map into it. Line breaks are kept, so line numbers are the same.
struct Shown {
    text: String,
    pieces: Vec<Piece>,
}

impl Shown {
    /// Builds the displayed text of `source`. `anchors` are byte offsets of
    /// labels, primary labels first: a long line is cut around the first
    /// anchor on it (or kept from its start when it has none).
    fn new(source: &str, lines: &LineIndex, anchors: &[usize]) -> Self {
        // The window start (in bytes) of each long line that has an anchor.
        let mut window_at: std::collections::HashMap<usize, usize> = Default::default();
        for &a in anchors {
            let a = floor_char_boundary(source, a.min(source.len()));
            window_at.entry(lines.line(a)).or_insert(a);
        }
        let mut shown = Shown {
            text: String::with_capacity(source.len()),
            pieces: Vec::new(),
        };
        let mut line_start = 0;
        for (n, line) in source.split_inclusive('\n').enumerate() {
            let body = line.strip_suffix('\n').unwrap_or(line);
            let keep = if body.len() > MAX_SHOWN_LINE_CHARS
                && body.chars().count() > MAX_SHOWN_LINE_CHARS
            {
                let anchor = window_at.get(&(n + 1)).map_or(0, |a| a - line_start);
                window(body, anchor)
            } else {
                0..body.len()
            };
            if keep.start > 0 {
                shown.replace(line_start..line_start + keep.start, "…");
            }
            let mut run = line_start + keep.start;
            for (i, c) in body[keep.clone()].char_indices() {
                let at = line_start + keep.start + i;
                // The `\r` of a `\r\n` ends the line, as it does for ariadne.
                let crlf = c == '\r' && at + 1 == line_start + body.len() && line.ends_with('\n');
                if is_unprintable(c) && !crlf {
                    shown.copy(source, run..at);
                    shown.replace(
                        at..at + c.len_utf8(),
                        REPLACEMENT_CHAR.encode_utf8(&mut [0; 4]),
                    );
                    run = at + c.len_utf8();
                }
            }
            shown.copy(source, run..line_start + keep.end);
            if keep.end < body.len() {
                shown.replace(line_start + keep.end..line_start + body.len(), "…");
            }
            shown.copy(source, line_start + body.len()..line_start + line.len());
            line_start += line.len();
        }
        shown
    }

    fn copy(&mut self, source: &str, orig: std::ops::Range<usize>) {
        if orig.is_empty() {
            return;
        }
        let at = self.text.len();
        self.text.push_str(&source[orig.clone()]);
        self.pieces.push(Piece {
            shown: at..self.text.len(),
            orig,
            copy: true,
        });
    }

    fn replace(&mut self, orig: std::ops::Range<usize>, with: &str) {
        let at = self.text.len();
        self.text.push_str(with);
        self.pieces.push(Piece {
            shown: at..self.text.len(),
            orig,
            copy: false,
        });
    }

    /// The displayed offset of original byte `offset`. Inside a replaced
    /// piece, a start maps to the start of the replacement and an end to its
    /// end, so a label stays on (at least) the replacement.
    fn map(&self, offset: usize, is_end: bool) -> usize {
        let i = self.pieces.partition_point(|p| p.orig.start <= offset);
        let Some(p) = i.checked_sub(1).map(|i| &self.pieces[i]) else {
            return 0;
        };
        if offset >= p.orig.end {
            return p.shown.end;
        }
        if p.copy {
            p.shown.start + (offset - p.orig.start)
        } else if is_end && offset > p.orig.start {
            p.shown.end
        } else {
            p.shown.start
        }
    }

    fn map_range(&self, r: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let start = self.map(r.start, false);
        let end = if r.end == r.start {
            start
        } else {
            self.map(r.end, true).max(start)
        };
        start..end
    }
}

/// The byte range of `line` to show: about [`MAX_SHOWN_LINE_CHARS`]
/// characters, starting a quarter window before byte `anchor` (and
/// never before the line), on character boundaries.
fn window(line: &str, anchor: usize) -> std::ops::Range<usize> {
    let anchor = floor_char_boundary(line, anchor.min(line.len()));
    let before = MAX_SHOWN_LINE_CHARS / 4;
    let start = line[..anchor]
        .char_indices()
        .rev()
        .nth(before.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    let start = if line[..start].chars().count() < 8 {
        0
    } else {
        start
    };
    let end = line[start..]
        .char_indices()
        .nth(MAX_SHOWN_LINE_CHARS)
        .map_or(line.len(), |(i, _)| start + i);
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
///
/// In the snippets, control characters (and other characters that would
/// garble a terminal) are shown as `\u{FFFD}`, and lines longer than
/// [`MAX_SHOWN_LINE_CHARS`] characters are cut to a window around the first
/// label on them (`…` marks the cuts; a later label of another report on the
/// same line that falls outside the window points at a `…`). The
/// `path:line:column` in each header is that of the original source.
/// The cost is linear in the source length plus the size of the reports.
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
    let lines = LineIndex::new(source);
    // Primary labels first, so that a long line is cut around an error
    // rather than around a note.
    let anchors: Vec<usize> = diagnostics
        .iter()
        .filter_map(|d| d.labels.first())
        .chain(diagnostics.iter().flat_map(|d| d.labels.iter().skip(1)))
        .map(|l| sanitize(source, l.span).start)
        .collect();
    let shown = Shown::new(source, &lines, &anchors);
    let shown_source = Source::from(shown.text.as_str());
    let shown_lines = LineIndex::new(&shown.text);
    for (n, d) in diagnostics.iter().enumerate() {
        if n > 0 {
            out.push(b'\n');
        }
        let primary = sanitize(source, d.primary_span());
        let primary_shown = shown.map_range(primary.clone());
        // rustc's header: `error[E0002]: message`.
        let header = format!("error[{}]", d.code);
        let kind = ReportKind::Custom(&header, Color::Red);
        let mut report = Report::build(kind, (path, primary_shown.clone()))
            .with_config(config)
            .with_message(&d.message);
        for (i, label) in d.labels.iter().enumerate() {
            let range = shown.map_range(sanitize(source, label.span));
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
        let write = report.finish().write((path, &shown_source), &mut buf);
        let (line, col) = lines.line_col(source, primary.start);
        if write.is_err() || buf.is_empty() {
            // Fall back to a plain rendering rather than losing the error.
            buf = format!(
                "error[{}]: {}\n  --> {path}:{line}:{col}\n",
                d.code, d.message
            )
            .into_bytes();
        } else {
            // The header's column counts characters of the displayed line;
            // where the line was cut, give the column in the original.
            let (_, shown_col) = shown_lines.line_col(&shown.text, primary_shown.start);
            if shown_col != col {
                let text = String::from_utf8_lossy(&buf).into_owned();
                let wrong = format!("{path}:{line}:{shown_col}");
                let right = format!("{path}:{line}:{col}");
                buf = text.replacen(&wrong, &right, 1).into_bytes();
            }
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
