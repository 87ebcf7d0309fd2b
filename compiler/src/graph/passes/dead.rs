//! `DeadOpElimination` (ops no graph output depends on) and
//! `IdentityElimination` (ops that return their input unchanged).

use super::edit::Editor;
use super::{Pass, Rewrite};
use crate::graph::ir::{Graph, NodeId, Op};
use crate::model::Activation;

/// Removes every op that no graph output depends on (e.g. what is left when
/// an output head is cut off). Graph inputs are kept even when unread, so
/// the graph's signature does not change. Valid for training and inference.
pub struct DeadOpElimination;

impl Pass for DeadOpElimination {
    fn name(&self) -> &'static str {
        "DeadOpElimination"
    }

    fn explain(&self) -> &'static str {
        "ops whose values reach no graph output are removed (graph inputs are kept)"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let n = editor.len();
        let mut needed = vec![false; n];
        for (i, need) in needed.iter_mut().enumerate() {
            *need = editor.is_output(NodeId(i));
        }
        for i in (0..n).rev() {
            if needed[i] && editor.is_live(NodeId(i)) {
                for input in editor.node(NodeId(i)).inputs.clone() {
                    needed[input.0] = true;
                }
            }
        }
        let mut rewrites = Vec::new();
        // Readers come after their inputs: removing from the back never
        // leaves a live reader of a removed node.
        for i in (0..n).rev() {
            let id = NodeId(i);
            if needed[i] || !editor.is_live(id) || matches!(editor.node(id).op, Op::Input) {
                continue;
            }
            let node = editor.node(id);
            rewrites.push(Rewrite {
                rule: self.name(),
                description: format!(
                    "removed {} of `{}`: no output depends on it",
                    node.op.name(),
                    node.layer
                ),
            });
            editor.remove(id);
        }
        rewrites.reverse();
        (editor.finish(), rewrites)
    }
}

/// Removes ops that return their input unchanged: a linear activation, a
/// dropout of rate 0, a flatten or reshape to the same shape, zero padding
/// of 0, pooling with a 1x1 window, stride 1 and no padding, upsampling by
/// 1x1. Readers (and graph outputs) read the op's input instead; an op whose
/// input is a graph input and that is itself a graph output is kept, so no
/// output is ever an input. Valid for training and inference (the
/// gradient of the identity is the identity).
pub struct IdentityElimination;

/// Whether `op` (with per-example input shape `input` and output `output`)
/// returns its input unchanged.
fn is_identity(op: &Op, input: &[usize], output: &[usize]) -> bool {
    match op {
        Op::Activation {
            activation: Activation::Linear,
        } => true,
        Op::Dropout { rate } => *rate == 0.0,
        Op::Flatten | Op::Reshape => input == output,
        Op::ZeroPadding2d { pads } => pads.top + pads.bottom + pads.left + pads.right == 0,
        Op::MaxPool2d { attrs } | Op::AvgPool2d { attrs } => {
            attrs.pool_size == [1, 1]
                && attrs.strides == [1, 1]
                && attrs.pads.top + attrs.pads.bottom + attrs.pads.left + attrs.pads.right == 0
        }
        Op::UpSampling2d { size, .. } => *size == [1, 1],
        _ => false,
    }
}

impl Pass for IdentityElimination {
    fn name(&self) -> &'static str {
        "IdentityElimination"
    }

    fn explain(&self) -> &'static str {
        "ops that return their input unchanged (linear activation, dropout(0), flatten/reshape to \
         the same shape, zero padding of 0, 1x1 pooling with stride 1, upsampling by 1) are \
         removed and their readers read the input"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        // `alias[i]`: what reads of node `i` now read (linear time, as in
        // DropoutElimination).
        let mut alias: Vec<NodeId> = (0..editor.len()).map(NodeId).collect();
        for i in 0..editor.len() {
            let id = NodeId(i);
            if !editor.is_live(id) {
                continue;
            }
            let mut node = editor.node(id).clone();
            for input in node.inputs.iter_mut() {
                *input = alias[input.0];
            }
            if let [input] = node.inputs[..] {
                let input_node = editor.node(input);
                let removable = is_identity(&node.op, &input_node.shape, &node.shape)
                    && !(editor.is_output(id) && matches!(input_node.op, Op::Input));
                if removable {
                    rewrites.push(Rewrite {
                        rule: self.name(),
                        description: format!(
                            "removed {} `{}`: it returns its input unchanged",
                            node.op.name(),
                            node.layer
                        ),
                    });
                    alias[i] = input;
                    editor.remove(id);
                    continue;
                }
            }
            editor.replace(id, node);
        }
        editor.redirect_outputs(|o| alias[o.0]);
        (editor.finish(), rewrites)
    }
}
