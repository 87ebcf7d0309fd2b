//! Human- and machine-readable dumps of an op graph (`cnnc build --emit graph`).

use super::ir::{Graph, Op};
use super::passes::Rewrite;
use crate::model::{Activation, Pads2d};
use crate::summary::keras_shape;
use serde_json::{json, Value};

fn pads_text(p: &Pads2d) -> String {
    format!("pads=({}, {}, {}, {})", p.top, p.bottom, p.left, p.right)
}

/// The attributes of an op, in words (`filters=64 kernel_size=7x7 ...`).
fn attrs_text(graph: &Graph, op: &Op) -> String {
    let param = |id: super::ParamId| graph.params[id.0].name.clone();
    match op {
        Op::Conv2d { attrs, kernel } | Op::FusedConv2d { attrs, kernel, .. } => {
            let mut s = format!(
                "filters={} kernel_size={}x{} strides={}x{} {} kernel={}",
                attrs.filters,
                attrs.kernel_size[0],
                attrs.kernel_size[1],
                attrs.strides[0],
                attrs.strides[1],
                pads_text(&attrs.pads),
                param(*kernel)
            );
            if let Op::FusedConv2d {
                bias, activation, ..
            } = op
            {
                if let Some(b) = bias {
                    s += &format!(" bias={}", param(*b));
                }
                s += &format!(" activation={}", activation.spec());
            }
            s
        }
        Op::MatMul { units, kernel } | Op::FusedMatMul { units, kernel, .. } => {
            let mut s = format!("units={units} kernel={}", param(*kernel));
            if let Op::FusedMatMul {
                bias, activation, ..
            } = op
            {
                if let Some(b) = bias {
                    s += &format!(" bias={}", param(*b));
                }
                s += &format!(" activation={}", activation.spec());
            }
            s
        }
        Op::BiasAdd { bias } => format!("bias={}", param(*bias)),
        Op::MaxPool2d { attrs } | Op::AvgPool2d { attrs } => format!(
            "pool_size={}x{} strides={}x{} {}",
            attrs.pool_size[0],
            attrs.pool_size[1],
            attrs.strides[0],
            attrs.strides[1],
            pads_text(&attrs.pads)
        ),
        Op::Dropout { rate } => format!("rate={rate}"),
        Op::ZeroPadding2d { pads } => pads_text(pads),
        Op::Activation {
            activation: Activation::Elu { alpha },
        } => format!("alpha={alpha}"),
        Op::Activation {
            activation: Activation::LeakyRelu { negative_slope },
        } => format!("negative_slope={negative_slope}"),
        Op::Input
        | Op::Activation { .. }
        | Op::Softmax
        | Op::Flatten
        | Op::GlobalAvgPool2d
        | Op::GlobalMaxPool2d => String::new(),
    }
}

/// One line per op: `%3 = fused_conv2d(%2) [conv2d + bias_add + relu] ... -> (None, 14, 14, 128)`,
/// then the rewrites that produced the graph.
pub fn render_text(graph: &Graph, rewrites: &[Rewrite]) -> String {
    let mut out = format!("graph \"{}\"\n", graph.name);
    for (i, node) in graph.nodes.iter().enumerate() {
        let inputs: Vec<String> = node.inputs.iter().map(|id| format!("%{}", id.0)).collect();
        let mut line = format!("  %{i} = {}({})", node.op.name(), inputs.join(", "));
        if !node.fused.is_empty() {
            line += &format!(" [{}]", node.fused.join(" + "));
        }
        let attrs = attrs_text(graph, &node.op);
        if !attrs.is_empty() {
            line += &format!(" {attrs}");
        }
        line += &format!(" -> {}  # {}", keras_shape(&node.shape), node.layer);
        out += &line;
        out.push('\n');
    }
    out += &format!("  output %{}\n", graph.output.0);
    if !rewrites.is_empty() {
        out += "rewrites:\n";
        for r in rewrites {
            out += &format!("  {}: {}\n", r.rule, r.description);
        }
    }
    out
}

/// The graph as JSON: `{"name", "ops": [{"id", "op", "inputs", "output_shape",
/// "layer", "fused", "rule", "attrs"}], "output", "params": [{"name", "shape"}], "rewrites"}`.
/// Shapes include the batch as `null`.
pub fn to_json(graph: &Graph, rewrites: &[Rewrite]) -> Value {
    let ops: Vec<Value> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut shape = vec![Value::Null];
            shape.extend(node.shape.iter().map(|d| json!(d)));
            let attrs = serde_json::to_value(&node.op).unwrap_or(Value::Null);
            json!({
                "id": i,
                "op": node.op.name(),
                "inputs": node.inputs.iter().map(|id| id.0).collect::<Vec<_>>(),
                "output_shape": shape,
                "layer": node.layer,
                "fused": node.fused,
                "rule": node.rule,
                "attrs": attrs,
            })
        })
        .collect();
    let params: Vec<Value> = graph
        .params
        .iter()
        .map(|p| json!({"name": p.name, "shape": p.shape, "trainable": p.trainable}))
        .collect();
    json!({
        "name": graph.name,
        "ops": ops,
        "output": graph.output.0,
        "params": params,
        "rewrites": rewrites,
    })
}
