//! The tensor type: a dynamically-shaped, row-major f32 array. Activations are
//! NHWC (`[batch, height, width, channels]`) or `[batch, features]`.

/// Row-major (C order) f32 tensor; the first axis is the batch.
pub type Tensor = ndarray::ArrayD<f32>;
