//! Optimization passes over the op graph.
//!
//! Each pass is a small, named rewrite with its own legality check; it returns
//! the rewritten graph and a [`Rewrite`] record per change, so a dump can say
//! why the graph looks the way it does. [`optimize`] runs the pipeline for a
//! [`Target`].

mod batch_norm;
mod dead;
mod dropout;
mod edit;
mod fusion;
mod residual;

pub use batch_norm::BatchNormFolding;
pub use dead::{DeadOpElimination, IdentityElimination};
pub use dropout::DropoutElimination;
pub use fusion::ConvBiasActivationFusion;
pub use residual::ResidualAddFusion;

use super::ir::Graph;

/// What the optimized graph is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Forward and backward: dead-op and identity elimination and the
    /// conv + bias + activation fusion; dropout and batch norm stay.
    Training,
    /// Forward only: also dropout elimination, batch-norm folding and
    /// residual-add fusion.
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
    /// What the rule rewrites and where it must not apply, in one sentence
    /// (`cnnc build --emit graph --explain`).
    fn explain(&self) -> &'static str;
    /// Rewrites `graph`, returning the new graph and what changed.
    fn run(&self, graph: Graph) -> (Graph, Vec<Rewrite>);
}

/// The passes run for `target`, in order.
pub fn pipeline(target: Target) -> Vec<Box<dyn Pass>> {
    match target {
        Target::Training => vec![
            Box::new(DeadOpElimination),
            Box::new(IdentityElimination),
            Box::new(ConvBiasActivationFusion),
        ],
        Target::Inference => vec![
            Box::new(DeadOpElimination),
            Box::new(DropoutElimination),
            Box::new(IdentityElimination),
            Box::new(BatchNormFolding),
            Box::new(ConvBiasActivationFusion),
            Box::new(ResidualAddFusion),
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
