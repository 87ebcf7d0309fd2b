//! A small graph editor shared by the passes: remove nodes, redirect their
//! readers, replace nodes, then renumber into a compact topological arena.

use crate::graph::ir::{Graph, Node, NodeId};

pub(super) struct Editor {
    name: String,
    nodes: Vec<Option<Node>>,
    input: NodeId,
    output: NodeId,
    params: Vec<crate::graph::ir::Param>,
}

impl Editor {
    pub fn new(graph: Graph) -> Editor {
        Editor {
            name: graph.name,
            nodes: graph.nodes.into_iter().map(Some).collect(),
            input: graph.input,
            output: graph.output,
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

    /// Readers of each live node (the graph output counts as one).
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

    pub fn is_output(&self, id: NodeId) -> bool {
        self.output == id
    }

    /// Replaces the node at `id` in place (same position, same readers).
    pub fn replace(&mut self, id: NodeId, node: Node) {
        self.nodes[id.0] = Some(node);
    }

    /// Removes `id`; every reader of it (and the graph output) now reads `with`.
    /// `with` must come before every reader of `id`.
    pub fn remove_and_redirect(&mut self, id: NodeId, with: NodeId) {
        self.nodes[id.0] = None;
        for node in self.nodes.iter_mut().flatten() {
            for input in node.inputs.iter_mut() {
                if *input == id {
                    *input = with;
                }
            }
        }
        if self.output == id {
            self.output = with;
        }
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
        Graph {
            name: self.name,
            nodes,
            input: NodeId(new_index[self.input.0]),
            output: NodeId(new_index[self.output.0]),
            params: self.params,
        }
    }
}

impl Editor {
    /// Removes `id`, which must have no live readers left.
    pub fn remove(&mut self, id: NodeId) {
        self.nodes[id.0] = None;
    }
}
