//! Optimization passes over the op graph.
//!
//! Each pass is a small, named rewrite with its own legality check; it returns
//! the rewritten graph and a [`Rewrite`] record per change, so a dump can say
//! why the graph looks the way it does. [`optimize`] runs the pipeline for a
//! [`Target`].

mod dropout;
mod edit;
mod fusion;

pub use dropout::DropoutElimination;
pub use fusion::ConvBiasActivationFusion;

use super::ir::Graph;

/// What the optimized graph is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Forward and backward: fusions only; dropout stays.
    Training,
    /// Forward only: fusions and dropout elimination.
    Inference,
}

/// One change made by a pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewrite {
    /// The pass's name (`"ConvBiasActivationFusion"`, `"DropoutElimination"`).
    pub rule: &'static str,
    /// What changed, in words (layer names and ops).
    pub description: String,
}

/// A graph-to-graph rewrite.
pub trait Pass {
    /// The rule name recorded in [`Rewrite::rule`] and on rewritten nodes.
    fn name(&self) -> &'static str;
    /// Rewrites `graph`, returning the new graph and what changed.
    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>);
}

/// The passes run for `target`, in order.
pub fn pipeline(target: Target) -> Vec<Box<dyn Pass>> {
    match target {
        Target::Training => vec![Box::new(ConvBiasActivationFusion)],
        Target::Inference => vec![
            Box::new(DropoutElimination),
            Box::new(ConvBiasActivationFusion),
        ],
    }
}

/// Runs the pass pipeline for `target`; returns the optimized graph and every rewrite made.
pub fn optimize(graph: Graph, target: Target) -> (Graph, Vec<Rewrite>) {
    let mut graph = graph;
    let mut rewrites = Vec::new();
    for pass in pipeline(target) {
        let (next, mut made) = pass.run(graph);
        graph = next;
        rewrites.append(&mut made);
    }
    (graph, rewrites)
}

#[cfg(test)]
mod tests;
