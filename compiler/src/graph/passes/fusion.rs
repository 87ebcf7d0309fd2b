//! `ConvBiasActivationFusion`: `conv2d` (or `depthwise_conv2d`, or `matmul`)
//! followed by `bias_add` and an element-wise activation becomes one fused
//! op, so the runtime applies bias and activation to each output tile while
//! it is still in cache.

use super::edit::Editor;
use super::{Pass, Rewrite};
use crate::graph::ir::{Graph, Node, NodeId, Op};
use crate::model::Activation;

/// Fuses `conv2d -> [bias_add] -> [activation]` into `fused_conv2d`,
/// `depthwise_conv2d -> [bias_add] -> [activation]` into
/// `fused_depthwise_conv2d` and `matmul -> [bias_add] -> [activation]` into
/// `fused_matmul`.
///
/// Legality: a value is folded into the fused op only when the fused op is its
/// sole reader and it is not the graph output; so the pre-activation value is
/// never fused away while something else reads it (the chain then stops before
/// the activation). `softmax` is not element-wise and is never fused.
pub struct ConvBiasActivationFusion;

impl Pass for ConvBiasActivationFusion {
    fn name(&self) -> &'static str {
        "ConvBiasActivationFusion"
    }

    fn explain(&self) -> &'static str {
        "conv2d / depthwise_conv2d / dense followed by its bias add and an element-wise \
         activation (relu, relu6, sigmoid, tanh, ...) becomes one op that applies bias and \
         activation to each output tile while it is in cache; not when another op or a graph \
         output reads an intermediate value; softmax is never fused"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        // Readers are computed once (linear time in all): a fusion only
        // rewires a head's own bias/activation chain, whose nodes read a
        // single input, so the readers of every later head stay valid.
        let readers = editor.consumers();
        for i in 0..editor.len() {
            let head = NodeId(i);
            if !editor.is_live(head)
                || !matches!(
                    editor.node(head).op,
                    Op::Conv2d { .. } | Op::MatMul { .. } | Op::DepthwiseConv2d { .. }
                )
            {
                continue;
            }
            // The single node that reads `id`, when `id` may be folded away.
            let sole_reader = |id: NodeId| -> Option<NodeId> {
                match readers[id.0].as_slice() {
                    [only] if !editor.is_output(id) => Some(*only),
                    _ => None,
                }
            };

            let mut chain = vec![head];
            let mut bias = None;
            let mut activation = Activation::Linear;
            if let Some(next) = sole_reader(head) {
                if let Op::BiasAdd { bias: b } = editor.node(next).op {
                    bias = Some(b);
                    chain.push(next);
                }
            }
            let tail = *chain.last().unwrap_or(&head);
            if let Some(next) = sole_reader(tail) {
                if let Op::Activation { activation: a } = editor.node(next).op {
                    if a != Activation::Linear && a != Activation::Softmax {
                        activation = a;
                        chain.push(next);
                    }
                }
            }
            if chain.len() == 1 {
                continue;
            }

            let head_node = editor.node(head).clone();
            let tail = *chain.last().unwrap_or(&head);
            let op = match head_node.op {
                Op::Conv2d { attrs, kernel } => Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                    residual: false,
                },
                Op::DepthwiseConv2d { attrs, kernel } => Op::FusedDepthwiseConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                },
                Op::MatMul { units, kernel } => Op::FusedMatMul {
                    units,
                    kernel,
                    bias,
                    activation,
                },
                _ => continue,
            };
            let parts: Vec<String> = chain
                .iter()
                .map(|id| editor.node(*id).op.name().to_string())
                .collect();
            rewrites.push(Rewrite {
                rule: self.name(),
                description: format!(
                    "fused {} of `{}` into {}",
                    parts.join(" + "),
                    head_node.layer,
                    op.name()
                ),
            });
            let fused = Node {
                op,
                inputs: head_node.inputs.clone(),
                shape: editor.node(tail).shape.clone(),
                layer: head_node.layer.clone(),
                fused: parts,
                rule: Some(self.name().to_string()),
            };
            for id in &chain[..chain.len() - 1] {
                editor.remove(*id);
            }
            editor.replace(tail, fused);
        }
        (editor.finish(), rewrites)
    }
}
