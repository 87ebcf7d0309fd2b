//! Forward and backward kernels on raw f32 slices.
//!
//! Every kernel works on row-major (C order) buffers; activations are NHWC
//! (`[batch, height, width, channels]`) or `[batch, features]`; conv kernels are
//! `[kernel_h, kernel_w, in_channels, filters]` (Keras HWIO) and dense kernels
//! `[in_features, units]`.
//!
//! Parallelism: kernels use the current rayon pool. Every reduction over the
//! batch (weight and bias gradients) is computed as partial sums over *fixed*
//! row chunks whose boundaries do not depend on the number of threads, and the
//! partials are added in chunk order, so results are bit-identical from run to
//! run, and even across thread counts.
//!
//! - [`gemm`]: safe matrix multiply: the in-crate AVX-512 kernel ([`sgemm`]) when
//!   the CPU has it, else the `gemm` crate (both chosen at run time);
//! - [`conv`]: 2-D convolution by im2col + GEMM with a fused
//!   bias/residual/activation epilogue per row block, and its backward pass
//!   (col2im);
//! - [`dense`]: matrix multiply (dense layer) with the same fused epilogue;
//! - [`activation`]: element-wise activations, softmax, bias add, and their derivatives;
//! - [`pool`]: max and average pooling;
//! - [`dropout`]: inverted dropout masks;
//! - [`spatial`]: global average / max pooling and zero padding;
//! - [`batch_norm`]: batch normalization (batch or moving statistics);
//! - [`join`]: add, multiply and concatenate of several tensors (add and
//!   multiply also in place over one input, for the inference memory plan);
//! - [`upsample`]: nearest and bilinear 2-D upsampling.

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod conv_transpose;
pub mod dense;
pub mod depthwise;
pub mod dropout;
pub mod gemm;
pub mod join;
pub mod pool;
mod scratch;
#[cfg(target_arch = "x86_64")]
pub mod sgemm;
pub mod spatial;
pub mod upsample;
pub mod winograd;

pub use activation::{
    activation_backward_inplace, activation_forward, activation_forward_inplace, bias_add_backward,
    bias_add_forward, bias_add_inplace, column_sums,
};
pub use batch_norm::{
    batch_norm_backward, batch_norm_inference_forward, batch_norm_inference_inplace,
    batch_norm_train_forward, BatchNormShape,
};
pub use conv::{
    conv2d_backward, conv2d_forward, fused_conv2d_forward, matmul_forward_prepared, Conv2dShape,
    ConvKernel,
};
pub use dense::{matmul_backward, matmul_forward, MatMulShape};
pub use dropout::{dropout_apply, dropout_mask};
pub use join::{
    add_forward, add_inplace, concat_backward, concat_forward, multiply_backward, multiply_forward,
    multiply_inplace, ConcatShape,
};
pub use pool::{
    avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward, Pool2dShape,
};
pub use spatial::{
    global_avg_pool2d_backward, global_avg_pool2d_forward, global_max_pool2d_backward,
    global_max_pool2d_forward, zero_padding2d_backward, zero_padding2d_forward, ImageShape,
};
pub use upsample::{up_sampling2d_backward, up_sampling2d_forward};

/// Errors from kernels: inconsistent geometry or buffer lengths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A buffer does not have the length its shape requires.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The window/stride/padding combination does not produce an output.
    #[error("invalid geometry: {0}")]
    Geometry(String),
}

/// Checks `buf_len == expected`, naming the buffer in the error.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Output size of a sliding window along one axis:
/// `floor((n + pad_before + pad_after - k) / stride) + 1` (the formula used by
/// TensorFlow and ONNX once explicit pads are known).
pub fn window_output_size(
    n: usize,
    k: usize,
    stride: usize,
    pad_before: usize,
    pad_after: usize,
) -> Result<usize, KernelError> {
    if k == 0 || stride == 0 {
        return Err(KernelError::Geometry(format!(
            "window size {k} and stride {stride} must be positive"
        )));
    }
    let padded = n + pad_before + pad_after;
    if padded < k {
        return Err(KernelError::Geometry(format!(
            "window {k} larger than padded input {padded}"
        )));
    }
    Ok((padded - k) / stride + 1)
}
