//! `ResidualAddFusion`: the `add` of a residual block (and the activation
//! after it) is done by the convolution that produces one of its inputs, in
//! that convolution's epilogue, so the sum is never a separate pass over
//! memory (ONNX Runtime's `Conv + Add (+ Relu)` fusion; ResNet's
//! `conv -> bn -> add -> relu` after batch-norm folding).

use super::edit::Editor;
use super::{Pass, Rewrite};
use crate::graph::ir::{Graph, Node, NodeId, Op};
use crate::model::Activation;

/// Rewrites `add(fused_conv2d(x), r) -> [activation]` into
/// `fused_conv2d(x, r)` with `residual: true` (and the activation).
///
/// Legality: the `add` has exactly two inputs; the conv has no activation of
/// its own (the sum comes before any activation), has the `add` as its only
/// reader and is not a graph output; the other input `r` is a different node;
/// the activation is element-wise (never softmax) and is absorbed only when
/// the `add` is its only reader and not a graph output. When both inputs are
/// such convs (ResNet's projection blocks), the later one is fused.
/// Inference graphs only.
pub struct ResidualAddFusion;

impl Pass for ResidualAddFusion {
    fn name(&self) -> &'static str {
        "ResidualAddFusion"
    }

    fn explain(&self) -> &'static str {
        "add(conv(x), r) and the element-wise activation after it are computed in the conv's \
         epilogue (out = act(conv(x) + bias + r)); only when the conv has no activation of its \
         own and nothing but the add reads it, and the add has exactly two inputs"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        // A fusion rewires only the add's own conv and activation, each read
        // by one node, so readers computed once stay valid (a fused conv that
        // replaced an activation is read by the activation's readers).
        let readers = editor.consumers();
        for i in 0..editor.len() {
            let add = NodeId(i);
            if !editor.is_live(add) || !matches!(editor.node(add).op, Op::Add) {
                continue;
            }
            let inputs = editor.node(add).inputs.clone();
            let [a, b] = inputs[..] else {
                continue;
            };
            if a == b {
                continue;
            }
            let fusable = |id: NodeId| -> bool {
                editor.is_live(id)
                    && matches!(readers[id.0].as_slice(), [only] if *only == add)
                    && !editor.is_output(id)
                    && matches!(
                        editor.node(id).op,
                        Op::FusedConv2d {
                            activation: Activation::Linear,
                            residual: false,
                            ..
                        } | Op::Conv2d { .. }
                    )
            };
            let (conv, other) = match (fusable(a), fusable(b)) {
                (_, true) if b.0 > a.0 || !fusable(a) => (b, a),
                (true, _) => (a, b),
                _ => continue,
            };
            // The activation after the add, if it can be absorbed.
            let mut tail = add;
            let mut activation = Activation::Linear;
            if let [only] = readers[add.0].as_slice() {
                if !editor.is_output(add) {
                    if let Op::Activation { activation: act } = editor.node(*only).op {
                        if act != Activation::Linear && act != Activation::Softmax {
                            activation = act;
                            tail = *only;
                        }
                    }
                }
            }
            let conv_node = editor.node(conv).clone();
            let (attrs, kernel, bias) = match conv_node.op {
                Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    ..
                } => (attrs, kernel, bias),
                Op::Conv2d { attrs, kernel } => (attrs, kernel, None),
                _ => continue,
            };
            let mut parts = if conv_node.fused.is_empty() {
                vec![conv_node.op.name().to_string()]
            } else {
                conv_node.fused.clone()
            };
            parts.push("add".to_string());
            if tail != add {
                parts.push(activation.name().to_string());
            }
            rewrites.push(Rewrite {
                rule: self.name(),
                description: format!(
                    "fused add `{}`{} into the epilogue of `{}`",
                    editor.node(add).layer,
                    if tail != add {
                        format!(" and its {}", activation.name())
                    } else {
                        String::new()
                    },
                    conv_node.layer
                ),
            });
            let fused = Node {
                op: Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                    residual: true,
                },
                inputs: vec![conv_node.inputs[0], other],
                shape: editor.node(tail).shape.clone(),
                layer: conv_node.layer.clone(),
                fused: parts,
                rule: Some(self.name().to_string()),
            };
            editor.remove(conv);
            if tail != add {
                editor.remove(add);
            }
            editor.replace(tail, fused);
        }
        (editor.finish(), rewrites)
    }
}
