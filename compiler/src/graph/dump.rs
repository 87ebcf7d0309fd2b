//! Human- and machine-readable dumps of an op graph (`cnnc build --emit graph`).

use super::ir::{Graph, Op};
use super::passes::Rewrite;
use crate::model::{Activation, Interpolation, Pads2d};
use crate::summary::keras_shape;
use serde_json::{json, Value};

fn pads_text(p: &Pads2d) -> String {
    format!("pads=({}, {}, {}, {})", p.top, p.bottom, p.left, p.right)
}

/// ` dilation_rate=2x2`, or nothing for an undilated kernel.
fn dilation_text(d: [usize; 2]) -> String {
    if d == [1, 1] {
        String::new()
    } else {
        format!(" dilation_rate={}x{}", d[0], d[1])
    }
}

/// The attributes of an op, in words (`filters=64 kernel_size=7x7 ...`).
fn attrs_text(graph: &Graph, op: &Op) -> String {
    let param = |id: super::ParamId| graph.params[id.0].name.clone();
    match op {
        Op::Conv2d { attrs, kernel } | Op::FusedConv2d { attrs, kernel, .. } => {
            let mut s = format!(
                "filters={} kernel_size={}x{} strides={}x{} {}{} kernel={}",
                attrs.filters,
                attrs.kernel_size[0],
                attrs.kernel_size[1],
                attrs.strides[0],
                attrs.strides[1],
                pads_text(&attrs.pads),
                dilation_text(attrs.dilation_rate),
                param(*kernel)
            );
            if let Op::FusedConv2d {
                bias,
                activation,
                residual,
                ..
            } = op
            {
                if let Some(b) = bias {
                    s += &format!(" bias={}", param(*b));
                }
                if *residual {
                    s += " residual=add";
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
        Op::DepthwiseConv2d { attrs, kernel } | Op::FusedDepthwiseConv2d { attrs, kernel, .. } => {
            let mut s = format!(
                "depth_multiplier={} kernel_size={}x{} strides={}x{} {}{} kernel={}",
                attrs.depth_multiplier,
                attrs.kernel_size[0],
                attrs.kernel_size[1],
                attrs.strides[0],
                attrs.strides[1],
                pads_text(&attrs.pads),
                dilation_text(attrs.dilation_rate),
                param(*kernel)
            );
            if let Op::FusedDepthwiseConv2d {
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
        Op::Conv2dTranspose { attrs, kernel } => format!(
            "filters={} kernel_size={}x{} strides={}x{} {}{} kernel={}",
            attrs.filters,
            attrs.kernel_size[0],
            attrs.kernel_size[1],
            attrs.strides[0],
            attrs.strides[1],
            pads_text(&attrs.pads),
            dilation_text(attrs.dilation_rate),
            param(*kernel)
        ),
        Op::BatchNorm {
            epsilon,
            momentum,
            gamma,
            beta,
            moving_mean,
            moving_variance,
            frozen,
        } => {
            let mut s = format!("epsilon={epsilon} momentum={momentum}");
            if let Some(g) = gamma {
                s += &format!(" gamma={}", param(*g));
            }
            if let Some(b) = beta {
                s += &format!(" beta={}", param(*b));
            }
            s += &format!(
                " moving_mean={} moving_variance={}",
                param(*moving_mean),
                param(*moving_variance)
            );
            if *frozen {
                s += " frozen";
            }
            s
        }
        Op::Concat { axis } => format!("axis={axis}"),
        Op::UpSampling2d {
            size,
            interpolation,
        } => format!(
            "size={}x{} interpolation={}",
            size[0],
            size[1],
            match interpolation {
                Interpolation::Nearest => "nearest",
                Interpolation::Bilinear => "bilinear",
            }
        ),
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
        | Op::GlobalMaxPool2d
        | Op::Add
        | Op::Multiply
        | Op::Reshape => String::new(),
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
    let ids = |ids: Vec<super::NodeId>| -> String {
        ids.iter()
            .map(|id| format!("%{}", id.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let inputs = graph.input_ids();
    if inputs.len() > 1 {
        out += &format!("  inputs {}\n", ids(inputs));
    }
    let outputs = graph.output_ids();
    if outputs.len() > 1 {
        out += &format!("  outputs {}\n", ids(outputs));
    } else {
        out += &format!("  output %{}\n", graph.output.0);
    }
    if !rewrites.is_empty() {
        out += "rewrites:\n";
        for r in rewrites {
            out += &format!("  {}: {}\n", r.rule, r.description);
        }
    }
    out
}

/// The graph as JSON: `{"name", "ops": [{"id", "op", "inputs", "output_shape",
/// "layer", "fused", "rule", "attrs"}], "output", "inputs", "outputs",
/// "params": [{"name", "shape", "trainable"}], "rewrites"}` (`output` is the
/// first of `outputs`).
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
        "inputs": graph.input_ids().iter().map(|id| id.0).collect::<Vec<_>>(),
        "outputs": graph.output_ids().iter().map(|id| id.0).collect::<Vec<_>>(),
        "params": params,
        "rewrites": rewrites,
    })
}
