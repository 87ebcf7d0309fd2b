//! Runs an op graph forward and backward. KERNELS HELPER: implement.

use crate::params::ParamStore;
use crate::tensor::Tensor;
use cnnc_compiler::graph::Graph;

/// Training or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout active (with masks drawn from a generator seeded by `seed`);
    /// a trailing `Softmax` is skipped so the output is logits;
    /// activations are kept for [`Executor::backward`].
    Train { seed: u64 },
    /// Dropout is identity; the full graph runs (probabilities out).
    Inference,
}

/// Executes one graph; owns the activation buffers between forward and backward.
pub struct Executor {
    graph: Graph,
}

impl Executor {
    pub fn new(graph: Graph) -> Executor {
        Executor { graph }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the graph on `input` (`[batch, h, w, c]`). Returns `[batch, ...output shape]`.
    pub fn forward(&mut self, params: &ParamStore, input: &Tensor, mode: Mode) -> Tensor {
        let _ = (params, mode);
        input.clone()
    }

    /// Back-propagates `grad_output` (d loss / d output of the last `Train`
    /// forward, same shape) and returns d loss / d param for every parameter,
    /// aligned with `Graph::params`.
    pub fn backward(&mut self, params: &ParamStore, grad_output: &Tensor) -> Vec<Tensor> {
        let _ = (params, grad_output);
        vec![]
    }
}
