//! Parameter storage. KERNELS HELPER: implement.

use crate::tensor::Tensor;
use cnnc_compiler::graph::Graph;

/// The values of a graph's parameters, aligned with `Graph::params`.
#[derive(Debug, Clone)]
pub struct ParamStore {
    pub values: Vec<Tensor>,
}

impl ParamStore {
    /// Initialises every parameter with its `Init` (Glorot uniform kernels,
    /// zero biases) from a ChaCha8 generator seeded with `seed`.
    pub fn init(graph: &Graph, seed: u64) -> ParamStore {
        let _ = (graph, seed);
        ParamStore { values: vec![] }
    }
}
