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

    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>) {
        let mut editor = Editor::new(graph);
        let mut rewrites = Vec::new();
        for i in 0..editor.len() {
            let id = NodeId(i);
            let node = editor.node(id);
            if let Op::Dropout { rate } = node.op {
                let source = node.inputs[0];
                rewrites.push(Rewrite {
                    rule: self.name(),
                    description: format!(
                        "removed dropout `{}` (rate {rate}): identity at inference",
                        node.layer
                    ),
                });
                editor.remove_and_redirect(id, source);
            }
        }
        (editor.finish(), rewrites)
    }
}
