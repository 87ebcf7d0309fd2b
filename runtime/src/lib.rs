//! cnnc runtime: executes an op graph from `cnnc-compiler` on the CPU.
//!
//! - [`tensor`]: the f32 NHWC tensor type;
//! - [`params`]: parameter storage and Keras-default initialisation;
//! - [`kernels`]: forward and backward kernels (GEMM via the `gemm` crate, rayon-parallel);
//! - [`executor`]: runs a graph forward and backward;
//! - [`loss`], [`metrics`], [`optim`]: training pieces;
//! - [`data`]: IDX reading, PNG reading, batching with background prefetch;
//! - [`checkpoint`]: safetensors save/load (atomic);
//! - [`train`]: the fit / evaluate / predict loops.

pub mod buffer;
pub mod checkpoint;
pub mod data;
pub mod executor;
pub mod kernels;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod tensor;
mod threads;
pub mod train;
