//! `DropoutElimination`: dropout is the identity at inference, so remove it.

use super::edit::Editor;
use super::{Pass, Rewrite};
use crate::graph::ir::{Graph, NodeId, Op};

/// Removes every `Dropout` node, wiring its readers to its input. Only for
/// inference graphs: in training dropout is live.
pub struct DropoutElimination;

impl Pass for DropoutElimination {
    fn name(&self) -> &'static str {
        "DropoutElimination"
    }

    fn explain(&self) -> &'static str {
        "dropout is the identity at inference: every dropout is removed and its readers read its \
         input (inference graphs only)"
    }

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        // One pass in topological order: `alias[i]` is what reads of node `i`
        // now read (a removed dropout's own, already resolved, input), so a
        // chain of dropouts costs linear time.
        let mut alias: Vec<NodeId> = (0..editor.len()).map(NodeId).collect();
        for i in 0..editor.len() {
            let id = NodeId(i);
            if !editor.is_live(id) {
                continue;
            }
            let node = editor.node(id);
            let rewired = node.inputs.iter().any(|input| alias[input.0] != *input);
            let node = if rewired {
                let mut node = node.clone();
                for input in node.inputs.iter_mut() {
                    *input = alias[input.0];
                }
                node
            } else if let Op::Dropout { .. } = node.op {
                node.clone()
            } else {
                continue;
            };
            if let Op::Dropout { rate } = node.op {
                rewrites.push(Rewrite {
                    rule: self.name(),
                    description: format!(
                        "removed dropout `{}` (rate {rate}): identity at inference",
                        node.layer
                    ),
                });
                alias[i] = node.inputs[0];
                editor.remove(id);
                continue;
            }
            editor.replace(id, node);
        }
        editor.redirect_outputs(|o| alias[o.0]);
        (editor.finish(), rewrites)
    }
}
