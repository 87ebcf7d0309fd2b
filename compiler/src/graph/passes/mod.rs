//! Optimization passes over the op graph.

use super::ir::Graph;

/// What the optimized graph is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Forward and backward: fusions only; dropout stays.
    Training,
    /// Forward only: fusions and dropout elimination.
    Inference,
}

/// A rewrite made by a pass, for `--explain` style dumps and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewrite {
    pub rule: &'static str,
    pub description: String,
}

/// Runs the pass pipeline for `target`.
pub fn optimize(graph: Graph, target: Target) -> (Graph, Vec<Rewrite>) {
    let _ = target;
    (graph, vec![])
}
