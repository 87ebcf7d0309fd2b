//! Keras-style model summary. FRONTEND HELPER: implement.

use crate::model::Model;

/// The `model.summary()` table with a FLOPs column, then totals.
pub fn render_text(model: &Model) -> String {
    format!("Model: \"{}\"\n", model.name)
}

/// The summary as JSON: `name`, `input_shape`, `output_shape`, `total_params`,
/// `trainable_params`, `non_trainable_params`, `flops`, and `layers` (each with
/// `name`, `kind`, `output_shape`, `params`, `flops`). Shapes include the batch as `null`.
pub fn to_json(model: &Model) -> serde_json::Value {
    serde_json::json!({ "name": model.name })
}
