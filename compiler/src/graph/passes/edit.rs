//! A small graph editor shared by the passes: remove nodes, redirect their
//! readers, replace nodes, then renumber into a compact topological arena.

use crate::graph::ir::{Graph, Node, NodeId};

pub(super) struct Editor {
    name: String,
    nodes: Vec<Option<Node>>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
    params: Vec<crate::graph::ir::Param>,
}

impl Editor {
    pub fn new(graph: Graph) -> Editor {
        let (inputs, outputs) = (graph.input_ids(), graph.output_ids());
        Editor {
            name: graph.name,
            inputs,
            outputs,
            nodes: graph.nodes.into_iter().map(Some).collect(),
            params: graph.params,
        }
    }

    /// The live node `id` (panics only on an internal bug: a pass reading a node it removed).
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.0].as_ref().expect("pass read a removed node")
    }

    pub fn is_live(&self, id: NodeId) -> bool {
        self.nodes[id.0].is_some()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Readers of each live node (graph outputs are not listed: see [`Editor::is_output`]).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut readers = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                for input in &node.inputs {
                    readers[input.0].push(NodeId(i));
                }
            }
        }
        readers
    }

    /// Whether `id` is one of the graph outputs.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.contains(&id)
    }

    /// Replaces the node at `id` in place (same position, same readers).
    pub fn replace(&mut self, id: NodeId, node: Node) {
        self.nodes[id.0] = Some(node);
    }

    /// Renumbers the live nodes (order kept, so still topological).
    pub fn finish(self) -> Graph {
        let mut new_index = vec![usize::MAX; self.nodes.len()];
        let mut nodes = Vec::new();
        for (i, node) in self.nodes.into_iter().enumerate() {
            if let Some(node) = node {
                new_index[i] = nodes.len();
                nodes.push(node);
            }
        }
        for node in nodes.iter_mut() {
            for input in node.inputs.iter_mut() {
                *input = NodeId(new_index[input.0]);
            }
        }
        let renumber = |ids: Vec<NodeId>| -> Vec<NodeId> {
            ids.into_iter().map(|id| NodeId(new_index[id.0])).collect()
        };
        let inputs = renumber(self.inputs);
        let outputs = renumber(self.outputs);
        Graph {
            name: self.name,
            nodes,
            input: inputs[0],
            output: outputs[0],
            params: self.params,
            inputs,
            outputs,
        }
    }
}

impl Editor {
    /// Maps every graph output through `f` (after nodes were removed and
    /// their readers redirected).
    pub fn redirect_outputs(&mut self, f: impl Fn(NodeId) -> NodeId) {
        for output in self.outputs.iter_mut() {
            *output = f(*output);
        }
    }

    /// Appends a parameter (e.g. a folded one) and returns its id.
    pub fn push_param(&mut self, param: crate::graph::ir::Param) -> crate::graph::ir::ParamId {
        self.params.push(param);
        crate::graph::ir::ParamId(self.params.len() - 1)
    }

    /// The parameter `id`.
    pub fn param(&self, id: crate::graph::ir::ParamId) -> &crate::graph::ir::Param {
        &self.params[id.0]
    }

    /// Removes `id`, which must have no live readers left.
    pub fn remove(&mut self, id: NodeId) {
        self.nodes[id.0] = None;
    }
}
