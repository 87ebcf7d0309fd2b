//! Graphviz DOT of a checked model (`cnnc build --emit dot`): one box per
//! layer (name, Keras class, key arguments, parameters), edges labelled with
//! the tensor shape that flows along them (batch shown as `None`).

use crate::model::{Layer, LayerKind, Model, Padding};
use crate::summary::{keras_shape, thousands};

/// Escapes a string for a double-quoted DOT label.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn padding_name(padding: Padding) -> &'static str {
    match padding {
        Padding::Same => "same",
        Padding::Valid => "valid",
    }
}

/// The layer's key arguments in Keras's words, e.g. `64, 7x7, same, relu`.
fn arguments(layer: &Layer) -> String {
    match &layer.kind {
        LayerKind::Conv2d {
            filters,
            kernel_size,
            strides,
            padding,
            activation,
            ..
        } => {
            let mut parts = vec![
                format!("filters={filters}"),
                format!("kernel_size={}x{}", kernel_size[0], kernel_size[1]),
            ];
            if *strides != [1, 1] {
                parts.push(format!("strides={}x{}", strides[0], strides[1]));
            }
            parts.push(format!("padding={}", padding_name(*padding)));
            parts.push(format!("activation={}", activation.spec()));
            parts.join(", ")
        }
        LayerKind::MaxPool2d {
            pool_size,
            strides,
            padding,
        }
        | LayerKind::AvgPool2d {
            pool_size,
            strides,
            padding,
        } => format!(
            "pool_size={}x{}, strides={}x{}, padding={}",
            pool_size[0],
            pool_size[1],
            strides[0],
            strides[1],
            padding_name(*padding)
        ),
        LayerKind::Dense {
            units, activation, ..
        } => {
            format!("units={units}, activation={}", activation.spec())
        }
        LayerKind::Dropout { rate } => format!("rate={rate}"),
        LayerKind::Activation { activation } => activation.spec(),
        LayerKind::Flatten | LayerKind::GlobalAvgPool2d | LayerKind::GlobalMaxPool2d => {
            String::new()
        }
        LayerKind::ZeroPadding2d { padding } => format!(
            "padding=(({}, {}), ({}, {}))",
            padding.top, padding.bottom, padding.left, padding.right
        ),
    }
}

/// Renders the model as a DOT digraph, top to bottom.
pub fn render(model: &Model) -> String {
    let mut out = format!("digraph \"{}\" {{\n", escape(&model.name));
    out += "  rankdir=TB;\n";
    out += "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\"];\n";
    out += "  edge [fontname=\"Helvetica\", fontsize=10];\n";
    out += &format!(
        "  n0 [label=\"input\\n{}\", fillcolor=\"#ffffff\"];\n",
        escape(&keras_shape(&model.input_shape))
    );
    // Node ids are positional (`n0` is the input), so no layer name can clash.
    let mut previous = ("n0".to_string(), model.input_shape.clone());
    for (i, layer) in model.layers.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let mut label = format!("{} ({})", escape(&layer.name), layer.kind.keras_class());
        let args = arguments(layer);
        if !args.is_empty() {
            label += &format!("\\n{}", escape(&args));
        }
        if layer.params > 0 {
            label += &format!("\\n{} params", thousands(layer.params as u64));
        }
        out += &format!("  {id} [label=\"{label}\"];\n");
        out += &format!(
            "  {} -> {id} [label=\" {}\"];\n",
            previous.0,
            keras_shape(&previous.1)
        );
        previous = (id, layer.output_shape.clone());
    }
    out += &format!(
        "  output [shape=plaintext, style=\"\", label=\"output\"];\n  {} -> output [label=\" {}\"];\n",
        previous.0,
        keras_shape(&previous.1)
    );
    out += "}\n";
    out
}
