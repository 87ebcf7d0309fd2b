//! `BatchNormFolding`: at inference a batch norm is a fixed per-channel
//! affine map, so when it directly follows a convolution (or a dense layer)
//! it is folded into that op's kernel and bias and disappears.
//!
//! `bn(conv(x, k) + b) = conv(x, k * scale) + (b * scale + shift)`, with
//! `scale = gamma / sqrt(moving_variance + epsilon)` and
//! `shift = beta - moving_mean * scale` per output channel (Jacob et al.
//! 2018, sec. 3.2; TensorFlow's `fold_batch_norms`, ONNX Runtime's
//! `ConvBNFusion`). The new kernel and bias are [`Init::Folded`] parameters,
//! computed once from the model's own parameters when the runtime loads them.

use super::edit::Editor;
use super::{Pass, Rewrite};
use crate::graph::ir::{BatchNormStats, Fold, Graph, Init, Node, NodeId, Op, Param, ParamId};

/// Folds `conv2d | depthwise_conv2d | matmul -> [bias_add] -> batch_norm`
/// into the op's kernel and a bias. Inference graphs only (in training the
/// batch statistics change every step).
///
/// Legality: each folded value (the conv's output, the bias add's output)
/// must have the next op of the pattern as its only reader and must not be a
/// graph output, so no one ever sees the unnormalized value; nothing is
/// folded across an activation (a conv with `activation=relu` lowers to
/// conv -> bias_add -> relu, and the batch norm then reads the relu). A
/// transposed convolution is not folded (its kernel's output channels are
/// not the innermost axis).
pub struct BatchNormFolding;

impl Pass for BatchNormFolding {
    fn name(&self) -> &'static str {
        "BatchNormFolding"
    }

    fn explain(&self) -> &'static str {
        "an inference batch norm right after conv2d / depthwise_conv2d / dense (with or without \
         its bias) is folded into the kernel and bias: kernel * gamma / sqrt(var + epsilon), \
         (bias - mean) * gamma / sqrt(var + epsilon) + beta, computed once at load; never across \
         an activation, nor when another op or a graph output reads the value before the batch norm"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        // Folding only rewires a head's own bias/batch-norm chain, whose
        // nodes have a single reader, so readers computed once stay valid.
        let readers = editor.consumers();
        for i in 0..editor.len() {
            let head = NodeId(i);
            if !editor.is_live(head) {
                continue;
            }
            let kernel = match editor.node(head).op {
                Op::Conv2d { kernel, .. }
                | Op::MatMul { kernel, .. }
                | Op::DepthwiseConv2d { kernel, .. } => kernel,
                _ => continue,
            };
            let sole_reader = |id: NodeId| -> Option<NodeId> {
                match readers[id.0].as_slice() {
                    [only] if !editor.is_output(id) => Some(*only),
                    _ => None,
                }
            };
            let Some(mut next) = sole_reader(head) else {
                continue;
            };
            let mut bias_node = None;
            if let Op::BiasAdd { bias } = editor.node(next).op {
                bias_node = Some((next, bias));
                match sole_reader(next) {
                    Some(after) => next = after,
                    None => continue,
                }
            }
            let bn = next;
            let Op::BatchNorm {
                epsilon,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                ..
            } = editor.node(bn).op
            else {
                continue;
            };
            let stats = BatchNormStats {
                gamma,
                beta,
                moving_mean,
                moving_variance,
                epsilon,
            };
            let channels = editor.param(moving_mean).shape.clone();
            let kernel_param = editor.param(kernel).clone();
            let bn_layer = editor.node(bn).layer.clone();
            let folded_kernel = editor.push_param(Param {
                name: format!("{}*{bn_layer}", kernel_param.name),
                shape: kernel_param.shape.clone(),
                init: Init::Folded {
                    fold: Fold::BatchNormKernel { kernel, stats },
                },
                trainable: false,
            });
            let bias = bias_node.map(|(_, b)| b);
            let bias_name = match bias {
                Some(b) => format!("{}*{bn_layer}", editor.param(b).name),
                None => format!("{bn_layer}/shift"),
            };
            let folded_bias = editor.push_param(Param {
                name: bias_name,
                shape: channels,
                init: Init::Folded {
                    fold: Fold::BatchNormBias { bias, stats },
                },
                trainable: false,
            });

            let mut head_node = editor.node(head).clone();
            set_kernel(&mut head_node.op, folded_kernel);
            head_node.rule = Some(self.name().to_string());
            let head_layer = head_node.layer.clone();
            // The batch norm's position now holds the bias add (same readers).
            let bias_add = Node {
                op: Op::BiasAdd { bias: folded_bias },
                inputs: vec![head],
                shape: editor.node(bn).shape.clone(),
                layer: head_layer.clone(),
                fused: vec![],
                rule: Some(self.name().to_string()),
            };
            editor.replace(head, head_node);
            if let Some((old_bias, _)) = bias_node {
                editor.remove(old_bias);
            }
            editor.replace(bn, bias_add);
            rewrites.push(Rewrite {
                rule: self.name(),
                description: format!(
                    "folded batch norm `{bn_layer}` into the kernel and bias of `{head_layer}`"
                ),
            });
        }
        (editor.finish(), rewrites)
    }
}

/// Points a conv / depthwise / matmul op at another kernel parameter.
fn set_kernel(op: &mut Op, new: ParamId) {
    match op {
        Op::Conv2d { kernel, .. }
        | Op::MatMul { kernel, .. }
        | Op::DepthwiseConv2d { kernel, .. } => *kernel = new,
        _ => {}
    }
}
