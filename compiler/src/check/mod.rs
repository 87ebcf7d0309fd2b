//! Name resolution, defaults, validation and shape inference.
//!
//! FRONTEND HELPER: implement.

use crate::diagnostics::Diagnostic;
use crate::model::Model;

/// Parses and checks a `.cnn` source text. Returns the checked model, or every
/// error found (as many as possible in one run).
pub fn check_source(source: &str) -> Result<Model, Vec<Diagnostic>> {
    let _ = source;
    Err(vec![])
}
