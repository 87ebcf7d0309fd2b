//! Parameter storage and Keras-default initialisation.

use crate::tensor::Tensor;
use cnnc_compiler::graph::ir::Init;
use cnnc_compiler::graph::Graph;
use ndarray::IxDyn;
use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A parameter value does not match the graph's declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("expected {expected} parameter tensors, got {got}")]
    Count { expected: usize, got: usize },
    #[error("parameter `{name}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
}

/// The values of a graph's parameters, aligned with `Graph::params`
/// (conv kernels `[kh, kw, in_channels, filters]`, depthwise kernels
/// `[kh, kw, in_channels, depth_multiplier]`, transposed-conv kernels
/// `[kh, kw, filters, in_channels]`, dense kernels `[in_features, units]`,
/// biases and batch-norm vectors `[channels]`), trainable or not (batch
/// norm's moving statistics are stored here too).
#[derive(Debug, Clone)]
pub struct ParamStore {
    pub values: Vec<Tensor>,
}

impl ParamStore {
    /// Initialises every parameter with its `Init`, in graph order, from one
    /// ChaCha8 generator seeded with `seed`:
    /// - `GlorotUniform { fan_in, fan_out }`: U(-l, l) with
    ///   `l = sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010, Keras
    ///   `GlorotUniform`), values drawn in row-major order;
    /// - `Zeros`: zeros, `Ones`: ones (draw nothing).
    pub fn init(graph: &Graph, seed: u64) -> ParamStore {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values = graph
            .params
            .iter()
            .map(|p| match p.init {
                Init::GlorotUniform { fan_in, fan_out } => {
                    let limit = glorot_limit(fan_in, fan_out);
                    if limit > 0.0 {
                        let dist = Uniform::new(-limit, limit);
                        let data: Vec<f32> = (0..p.len()).map(|_| dist.sample(&mut rng)).collect();
                        Tensor::from_shape_vec(IxDyn(&p.shape), data)
                            .expect("length equals the product of the shape")
                    } else {
                        Tensor::zeros(IxDyn(&p.shape))
                    }
                }
                Init::Zeros => Tensor::zeros(IxDyn(&p.shape)),
                Init::Ones => Tensor::ones(IxDyn(&p.shape)),
            })
            .collect();
        ParamStore { values }
    }

    /// All-zero tensors shaped like the graph's parameters (e.g. gradient or
    /// optimizer-state buffers).
    pub fn zeros_like(graph: &Graph) -> ParamStore {
        ParamStore {
            values: graph
                .params
                .iter()
                .map(|p| Tensor::zeros(IxDyn(&p.shape)))
                .collect(),
        }
    }

    /// Checks that there is one tensor per graph parameter with the declared shape.
    pub fn check(&self, graph: &Graph) -> Result<(), ParamError> {
        if self.values.len() != graph.params.len() {
            return Err(ParamError::Count {
                expected: graph.params.len(),
                got: self.values.len(),
            });
        }
        for (p, v) in graph.params.iter().zip(&self.values) {
            if v.shape() != p.shape.as_slice() {
                return Err(ParamError::Shape {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    got: v.shape().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// Glorot uniform limit `sqrt(6 / (fan_in + fan_out))` (0 if both fans are 0).
pub fn glorot_limit(fan_in: usize, fan_out: usize) -> f32 {
    let fans = (fan_in + fan_out) as f64;
    if fans == 0.0 {
        0.0
    } else {
        (6.0 / fans).sqrt() as f32
    }
}
