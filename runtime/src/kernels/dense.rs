//! Dense layer: `y = act(x × kernel + bias)` with `x` `[batch, in_features]`,
//! `kernel` `[in_features, units]`, `bias` `[units]`, `y` `[batch, units]`.
//!
//! Forward is the 1×1 convolution of `batch` images of 1×1 pixel
//! ([`super::conv::fused_conv2d_forward`]): blocks of rows, the bias and
//! activation fused into the GEMM's tiles (softmax after each block), and a
//! batch too small to share out over the threads is one product that the
//! GEMM splits by rows and column panels.
//! Backward: `dz = dy ⊙ act'(y)`, `d kernel = xᵀ × dz` (parallel over fixed
//! chunks of `in_features`, each one GEMM over the whole batch, so the batch
//! reduction order is fixed), `d bias = Σ_rows dz`, `d x = dz × kernelᵀ`
//! (blocks of rows, or for a small batch one product split by the GEMM).

use super::activation::{activation_backward_inplace, column_sums};
use super::conv::{fused_conv2d_forward, Conv2dShape, ConvKernel};
use super::gemm::{matmul, matmul_rhs, matmul_rhs_par, Epilogue, MatRef, Parallelism, Rhs};
use super::{check_len, KernelError};
use cnnc_compiler::model::Activation;
use rayon::prelude::*;

/// Rows of `x` per input-gradient task.
const ROW_BLOCK: usize = 64;
/// Input features per weight-gradient task.
const FEATURE_BLOCK: usize = 256;

/// Geometry of a dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulShape {
    pub batch: usize,
    pub in_features: usize,
    pub units: usize,
}

impl MatMulShape {
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.batch * self.in_features * self.units
    }
}

/// Fused dense forward `y = act(x × kernel + bias)` (softmax is over each row).
pub fn matmul_forward(
    s: &MatMulShape,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let (n, i, u) = (s.batch, s.in_features, s.units);
    check_len("matmul input", n * i, x.len())?;
    check_len("matmul kernel", i * u, kernel.len())?;
    check_len("matmul output", n * u, y.len())?;
    if let Some(b) = bias {
        check_len("matmul bias", u, b.len())?;
    }
    if u == 0 {
        return Ok(());
    }
    let s = Conv2dShape::dense(n, i, u);
    fused_conv2d_forward(&s, x, ConvKernel::Hwio(kernel), bias, None, act, y)
}

/// Dense backward for `y = act(x × kernel + bias)`.
///
/// `y` is the saved output, `dy` = d loss / d y (`[batch, units]`); on return
/// `dy` holds `dz = dy ⊙ act'(y)`. Requested gradients are overwritten:
/// `dx` `[batch, in_features]`, `dkernel` `[in_features, units]`, `dbias` `[units]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    s: &MatMulShape,
    x: &[f32],
    kernel: &[f32],
    y: &[f32],
    act: Activation,
    dy: &mut [f32],
    dx: Option<&mut [f32]>,
    dkernel: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let (n, i, u) = (s.batch, s.in_features, s.units);
    check_len("matmul input", n * i, x.len())?;
    check_len("matmul kernel", i * u, kernel.len())?;
    check_len("matmul output", n * u, y.len())?;
    check_len("matmul output gradient", n * u, dy.len())?;
    if u == 0 || i == 0 {
        if let Some(d) = dx {
            d.fill(0.0);
        }
        if let Some(d) = dkernel {
            d.fill(0.0);
        }
        if let Some(d) = dbias {
            check_len("matmul bias gradient", u, d.len())?;
            d.fill(0.0);
        }
        return Ok(());
    }
    activation_backward_inplace(act, y, dy, u)?;
    let dz: &[f32] = dy;
    if let Some(db) = dbias {
        check_len("matmul bias gradient", u, db.len())?;
        column_sums(dz, u, db)?;
    }
    if let Some(dk) = dkernel {
        check_len("matmul kernel gradient", i * u, dk.len())?;
        let d = MatRef::row_major(dz, n, u);
        dk.par_chunks_mut(FEATURE_BLOCK * u)
            .enumerate()
            .for_each(|(ci, dkc)| {
                let f0 = ci * FEATURE_BLOCK;
                let nf = dkc.len() / u;
                if n == 0 {
                    dkc.fill(0.0);
                    return;
                }
                // xᵀ restricted to features f0..f0+nf: element (j, b) = x[b * i + f0 + j].
                let xt = MatRef {
                    data: &x[f0..],
                    rows: nf,
                    cols: n,
                    row_stride: 1,
                    col_stride: i,
                };
                matmul(xt, d, dkc, u, false, Parallelism::None);
            });
    }
    if let Some(dx) = dx {
        check_len("matmul input gradient", n * i, dx.len())?;
        let wt = Rhs::new(MatRef::row_major(kernel, i, u).t());
        if n.div_ceil(ROW_BLOCK) < 2 * rayon::current_num_threads() {
            // Too few blocks to keep every thread busy (training at batch
            // 32 ran this serially): one product, split by the GEMM over
            // rows and column panels (the same bits).
            let d = MatRef::row_major(dz, n, u);
            matmul_rhs_par(d, &wt, dx, i, false, &Epilogue::default());
            return Ok(());
        }
        dx.par_chunks_mut(ROW_BLOCK * i)
            .enumerate()
            .for_each(|(bi, dxb)| {
                let rows = dxb.len() / i;
                let r0 = bi * ROW_BLOCK;
                let d = MatRef::row_major(&dz[r0 * u..(r0 + rows) * u], rows, u);
                matmul_rhs(d, &wt, dxb, i, false);
            });
    }
    Ok(())
}
