//! Located diagnostics and their rendering (rustc-style reports via `ariadne`).
//!
//! FRONTEND HELPER: flesh this out (stable codes, labels, notes, help, rendering).

use crate::model::Span;
use serde::Serialize;

/// A label pointing at a span of the source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One error found in a spec, with a stable code (`E0001`, ...), a primary
/// message, labels pointing at the source, notes and an optional fix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

/// Renders diagnostics as a rustc-style report naming `path`, line and column.
/// `color` adds ANSI colours (off for snapshots and pipes).
pub fn render_diagnostics(diagnostics: &[Diagnostic], path: &str, source: &str, color: bool) -> String {
    let _ = (color, source);
    diagnostics
        .iter()
        .map(|d| format!("error[{}]: {} ({path})\n", d.code, d.message))
        .collect()
}
