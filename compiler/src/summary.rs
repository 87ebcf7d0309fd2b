//! Keras-style model summary: the `model.summary()` table of Keras 2 with a
//! FLOPs column, and the same information as JSON.

use crate::model::Model;
use serde_json::{json, Value};

/// `1413834` -> `"1,413,834"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count as Keras 3 prints it: powers of 1024, two decimals
/// (`0.00 B`, `5.39 MB`).
pub fn readable_bytes(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    for unit in &units[..units.len() - 1] {
        if size / 1024.0 < 1.0 {
            return format!("{size:.2} {unit}");
        }
        size /= 1024.0;
    }
    format!("{size:.2} {}", units[units.len() - 1])
}

/// A FLOP count with a unit chosen so that the number is at least 0.1:
/// `178932992` -> `0.179 GFLOP`.
pub fn readable_flops(flops: u64) -> String {
    let f = flops as f64;
    if f >= 1e8 {
        format!("{:.3} GFLOP", f / 1e9)
    } else if f >= 1e5 {
        format!("{:.3} MFLOP", f / 1e6)
    } else if f >= 1e2 {
        format!("{:.3} kFLOP", f / 1e3)
    } else {
        format!("{flops} FLOP")
    }
}

/// `(None, 28, 28, 64)`: a per-example shape with the batch as `None`, as
/// Keras prints it; unknown sizes are `None` too (`(None, None, None, 3)`).
/// Takes sizes (`usize`) or checked dimensions ([`crate::model::Dim`]).
pub fn keras_shape<D: Copy + Into<crate::model::Dim>>(shape: &[D]) -> String {
    let mut parts = vec!["None".to_string()];
    parts.extend(shape.iter().map(|&d| match d.into().known() {
        Some(n) => n.to_string(),
        None => "None".to_string(),
    }));
    format!("({})", parts.join(", "))
}

/// The `model.summary()` table with a FLOPs column, then totals.
///
/// Parameter memory assumes float32 (4 bytes per parameter), as Keras does.
/// FLOPs are per example for the forward pass (see [`crate::model::Layer::flops`]).
///
/// A model that is not a plain chain (joins, several inputs or outputs)
/// gets Keras's functional-model layout: a row per input (`InputLayer`) and
/// a "Connected to" column listing each layer's inputs; frozen layers are
/// marked `(frozen)`.
pub fn render_text(model: &Model) -> String {
    let graph = !model.is_chain();
    let mut rows: Vec<[String; 5]> = Vec::new();
    if graph {
        for input in &model.inputs {
            rows.push([
                format!(" {} (InputLayer)", input.name),
                keras_shape(&input.shape),
                "0".to_string(),
                "0".to_string(),
                String::new(),
            ]);
        }
    }
    rows.extend(model.layers.iter().map(|l| {
        let frozen = if l.trainable { "" } else { " (frozen)" };
        let known = l.output_shape.iter().all(|d| d.is_known());
        [
            format!(" {} ({}){frozen}", l.name, l.kind.keras_class()),
            keras_shape(&l.output_shape),
            thousands(l.params as u64),
            if known {
                thousands(l.flops)
            } else {
                "?".to_string()
            },
            if graph {
                l.inputs.join(", ")
            } else {
                String::new()
            },
        ]
    }));
    // Column widths of the Keras 2 table (widened for long names).
    let name_w = rows
        .iter()
        .map(|r| r[0].chars().count() + 1)
        .max()
        .unwrap_or(0)
        .max(33);
    let shape_w = rows
        .iter()
        .map(|r| r[1].chars().count() + 1)
        .max()
        .unwrap_or(0)
        .max(26);
    let param_w = rows
        .iter()
        .map(|r| r[2].chars().count() + 1)
        .max()
        .unwrap_or(0)
        .max(9);
    let flops_w = rows
        .iter()
        .map(|r| r[3].chars().count())
        .max()
        .unwrap_or(0)
        .max(13);
    let connected_w = if graph {
        rows.iter()
            .map(|r| r[4].chars().count() + 2)
            .max()
            .unwrap_or(0)
            .max(14)
    } else {
        0
    };
    let width = name_w + shape_w + param_w + flops_w + connected_w;

    let mut out = String::new();
    let row = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        let line = if graph {
            format!("{a:<name_w$}{b:<shape_w$}{c:<param_w$}{d:>flops_w$}  {e}")
        } else {
            format!("{a:<name_w$}{b:<shape_w$}{c:<param_w$}{d:>flops_w$}")
        };
        format!("{}\n", line.trim_end())
    };
    out.push_str(&format!("Model: \"{}\"\n", model.name));
    out.push_str(&format!("{}\n", "_".repeat(width)));
    out.push_str(&row(
        " Layer (type)",
        "Output Shape",
        "Param #",
        "FLOPs",
        "Connected to",
    ));
    out.push_str(&format!("{}\n", "=".repeat(width)));
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&row(&r[0], &r[1], &r[2], &r[3], &r[4]));
    }
    out.push_str(&format!("{}\n", "=".repeat(width)));
    let total = model.total_params() as u64;
    let trainable = model.trainable_params() as u64;
    let non_trainable = model.non_trainable_params() as u64;
    let bytes = |n: u64| readable_bytes(n.saturating_mul(4));
    out.push_str(&format!(
        "Total params: {} ({})\n",
        thousands(total),
        bytes(total)
    ));
    out.push_str(&format!(
        "Trainable params: {} ({})\n",
        thousands(trainable),
        bytes(trainable)
    ));
    out.push_str(&format!(
        "Non-trainable params: {} ({})\n",
        thousands(non_trainable),
        bytes(non_trainable)
    ));
    if model.is_fully_known() {
        out.push_str(&format!(
            "FLOPs per image (forward): {} ({})\n",
            thousands(model.flops()),
            readable_flops(model.flops())
        ));
    } else {
        out.push_str("FLOPs per image (forward): unknown (they depend on the input's `?` sizes)\n");
    }
    out.push_str(&format!("{}\n", "_".repeat(width)));
    out
}

/// A shape with the batch dimension (and unknown sizes) as `null`:
/// `[null, 28, 28, 64]`.
fn json_shape(shape: &[crate::model::Dim]) -> Value {
    let mut v = vec![Value::Null];
    v.extend(shape.iter().map(|d| json!(d.known())));
    Value::Array(v)
}

/// The summary as JSON: `name`, `input_shape` and `output_shape` (of the
/// first input and output), `inputs` and `outputs` (each `name` and
/// `shape`), `total_params`, `trainable_params`, `non_trainable_params`,
/// `flops`, and `layers` (each with `name`, `kind` (the spec keyword),
/// `class` (the Keras class), `inputs` (names of the tensors it reads),
/// `input_shape`, `output_shape`, `params`, `trainable_params`,
/// `trainable`, `flops`, and `config`: the resolved arguments,
/// defaults included, plus `pads` for conv and pooling layers). Shapes include
/// the batch as `null`.
pub fn to_json(model: &Model) -> serde_json::Value {
    let layers: Vec<Value> = model
        .layers
        .iter()
        .map(|l| {
            let mut config = serde_json::to_value(&l.kind).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut config {
                map.remove("kind");
                if let Some(p) = &l.pads {
                    map.insert(
                        "pads".into(),
                        serde_json::to_value(p).unwrap_or(Value::Null),
                    );
                }
            }
            json!({
                "name": l.name,
                "kind": l.kind.keyword(),
                "class": l.kind.keras_class(),
                "inputs": l.inputs,
                "input_shape": json_shape(&l.input_shape),
                "output_shape": json_shape(&l.output_shape),
                "params": l.params,
                "trainable_params": l.trainable_params,
                "trainable": l.trainable,
                "flops": l.output_shape.iter().all(|d| d.is_known()).then_some(l.flops),
                "config": config,
            })
        })
        .collect();
    let inputs: Vec<Value> = model
        .inputs
        .iter()
        .map(|i| json!({"name": i.name, "shape": json_shape(&i.shape)}))
        .collect();
    let outputs: Vec<Value> = model
        .outputs
        .iter()
        .map(|o| json!({"name": o, "shape": model.shape_of(o).map(json_shape)}))
        .collect();
    json!({
        "name": model.name,
        "input_shape": json_shape(&model.input_shape),
        "output_shape": json_shape(model.output_shape()),
        "inputs": inputs,
        "outputs": outputs,
        "total_params": model.total_params(),
        "trainable_params": model.trainable_params(),
        "non_trainable_params": model.non_trainable_params(),
        "flops": model.is_fully_known().then(|| model.flops()),
        "layers": layers,
    })
}
