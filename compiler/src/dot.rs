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
        LayerKind::DepthwiseConv2d {
            kernel_size,
            strides,
            padding,
            depth_multiplier,
            activation,
            ..
        } => {
            let mut parts = vec![format!("kernel_size={}x{}", kernel_size[0], kernel_size[1])];
            if *depth_multiplier != 1 {
                parts.push(format!("depth_multiplier={depth_multiplier}"));
            }
            window_parts(&mut parts, *strides, *padding, *activation);
            parts.join(", ")
        }
        LayerKind::SeparableConv2d {
            filters,
            kernel_size,
            strides,
            padding,
            activation,
            ..
        }
        | LayerKind::Conv2dTranspose {
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
            window_parts(&mut parts, *strides, *padding, *activation);
            parts.join(", ")
        }
        LayerKind::BatchNormalization { epsilon, .. } => format!("epsilon={epsilon}"),
        LayerKind::UpSampling2d { size, .. } => format!("size={}x{}", size[0], size[1]),
        LayerKind::Reshape { target_shape } => {
            format!("target_shape={}", keras_shape(target_shape))
        }
        LayerKind::Concatenate { axis } => {
            format!("axis={}", *axis as i64 - layer.output_shape.len() as i64)
        }
        LayerKind::Add | LayerKind::Multiply => String::new(),
    }
}

fn window_parts(
    parts: &mut Vec<String>,
    strides: [usize; 2],
    padding: Padding,
    activation: crate::model::Activation,
) {
    if strides != [1, 1] {
        parts.push(format!("strides={}x{}", strides[0], strides[1]));
    }
    parts.push(format!("padding={}", padding_name(padding)));
    parts.push(format!("activation={}", activation.spec()));
}

/// Renders the model as a DOT digraph, top to bottom: one node per input
/// and layer, edges labelled with the shape that flows along them, frozen
/// layers (`trainable=false`) grey and dashed, one `output` node per model
/// output.
pub fn render(model: &Model) -> String {
    let mut out = format!("digraph \"{}\" {{\n", escape(&model.name));
    out += "  rankdir=TB;\n";
    out += "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\"];\n";
    out += "  edge [fontname=\"Helvetica\", fontsize=10];\n";
    // Node ids are positional (`i0` inputs, `n1` layers), so no layer name can clash.
    let mut ids: std::collections::HashMap<&str, (String, &[crate::model::Dim])> =
        std::collections::HashMap::new();
    for (i, input) in model.inputs.iter().enumerate() {
        let id = format!("i{i}");
        out += &format!(
            "  {id} [label=\"{}\\n{}\", fillcolor=\"#ffffff\"];\n",
            escape(&input.name),
            escape(&keras_shape(&input.shape))
        );
        ids.insert(input.name.as_str(), (id, input.shape.as_slice()));
    }
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
        let style = if layer.trainable {
            String::new()
        } else {
            label += "\\nfrozen";
            ", style=\"rounded,filled,dashed\", fillcolor=\"#e4e4e4\"".to_string()
        };
        out += &format!("  {id} [label=\"{label}\"{style}];\n");
        for input in &layer.inputs {
            if let Some((from, shape)) = ids.get(input.as_str()) {
                out += &format!("  {from} -> {id} [label=\" {}\"];\n", keras_shape(shape));
            }
        }
        ids.insert(layer.name.as_str(), (id, layer.output_shape.as_slice()));
    }
    for (k, output) in model.outputs.iter().enumerate() {
        if let Some((from, shape)) = ids.get(output.as_str()) {
            let name = if model.outputs.len() == 1 {
                "output".to_string()
            } else {
                escape(output)
            };
            out += &format!(
                "  out{k} [shape=plaintext, style=\"\", label=\"{name}\"];\n  {from} -> out{k} [label=\" {}\"];\n",
                keras_shape(shape)
            );
        }
    }
    out += "}\n";
    out
}
