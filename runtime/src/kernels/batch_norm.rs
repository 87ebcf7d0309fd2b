//! Batch normalization over the last axis (Ioffe & Szegedy 2015, "Batch
//! Normalization: Accelerating Deep Network Training by Reducing Internal
//! Covariate Shift"; Keras `BatchNormalization(axis=-1)`).
//!
//! The input is row-major `[rows, channels]`: an NHWC tensor has
//! `rows = batch * h * w`. With per-channel statistics `mean`, `var`:
//!
//! ```text
//! inv_std = 1 / sqrt(var + epsilon)
//! x_hat   = (x - mean) * inv_std
//! y       = gamma * x_hat + beta        (gamma = 1, beta = 0 when absent)
//! ```
//!
//! - training ([`batch_norm_train_forward`]): `mean` and the *biased*
//!   variance `var = (1 / rows) Σ (x - mean)²` of the batch (two passes, f64
//!   accumulators), as Keras 3 does (`ops.moments`); the caller folds them
//!   into the moving statistics;
//! - inference ([`batch_norm_inference_forward`]): the moving mean and
//!   variance.
//!
//! Backward ([`batch_norm_backward`]), with `M = rows`, sums over rows:
//! `dbeta = Σ dy`, `dgamma = Σ dy ⊙ x_hat`, and
//! - batch statistics (the paper's §3.1 derivation):
//!   `dx = gamma * inv_std * (dy - dbeta / M - x_hat * dgamma / M)`;
//! - fixed (moving) statistics: `dx = gamma * inv_std * dy`.
//!
//! Determinism: every per-channel sum is a sum of partial sums over fixed
//! blocks of [`STAT_ROWS`] rows, added in block order, so results do not depend
//! on the thread count. Element-wise passes are parallel over fixed chunks.

use super::{check_len, KernelError};
use rayon::prelude::*;

/// Rows per partial sum of the per-channel reductions (fixed, so the
/// summation order never depends on the thread count).
pub const STAT_ROWS: usize = 256;

/// Geometry of a batch-norm input: `[rows, channels]`, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNormShape {
    /// Positions normalized together per channel (`batch * h * w`).
    pub rows: usize,
    pub channels: usize,
}

impl BatchNormShape {
    /// `rows * channels`.
    pub fn len(&self) -> usize {
        self.rows * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, what: &'static str, buf: &[f32]) -> Result<(), KernelError> {
        check_len(what, self.len(), buf.len())
    }

    fn check_channels(&self, what: &'static str, buf: &[f32]) -> Result<(), KernelError> {
        check_len(what, self.channels, buf.len())
    }
}

/// Per-channel sums of `f(row, channel, value)` over all rows, in f64, as
/// ordered sums of fixed-block partials.
fn channel_sums<F>(s: &BatchNormShape, x: &[f32], f: F) -> Vec<f64>
where
    F: Fn(usize, f32) -> f64 + Sync,
{
    let c = s.channels;
    let mut total = vec![0.0f64; c];
    if c == 0 || s.rows == 0 {
        return total;
    }
    let partials: Vec<Vec<f64>> = x
        .par_chunks(STAT_ROWS * c)
        .map(|block| {
            let mut acc = vec![0.0f64; c];
            for row in block.chunks_exact(c) {
                for (j, (a, &v)) in acc.iter_mut().zip(row).enumerate() {
                    *a += f(j, v);
                }
            }
            acc
        })
        .collect();
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Per-channel sums of `dy` and `dy ⊙ x_hat` (f64, fixed-block order).
fn grad_sums(
    s: &BatchNormShape,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    inv_std: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let c = s.channels;
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dy_xhat = vec![0.0f64; c];
    if c == 0 || s.rows == 0 {
        return (sum_dy, sum_dy_xhat);
    }
    let partials: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(STAT_ROWS * c)
        .zip(dy.par_chunks(STAT_ROWS * c))
        .map(|(xb, db)| {
            let mut a = vec![0.0f64; c];
            let mut b = vec![0.0f64; c];
            for (xr, dr) in xb.chunks_exact(c).zip(db.chunks_exact(c)) {
                for j in 0..c {
                    let xhat = (xr[j] - mean[j]) * inv_std[j];
                    a[j] += f64::from(dr[j]);
                    b[j] += f64::from(dr[j] * xhat);
                }
            }
            (a, b)
        })
        .collect();
    for (a, b) in &partials {
        for j in 0..c {
            sum_dy[j] += a[j];
            sum_dy_xhat[j] += b[j];
        }
    }
    (sum_dy, sum_dy_xhat)
}

/// Element chunk of the parallel element-wise passes, in whole rows.
fn row_chunk(c: usize) -> usize {
    STAT_ROWS * c.max(1)
}

/// `y = gamma * (x - mean) * inv_std + beta`, element-wise per channel.
fn normalize(
    s: &BatchNormShape,
    x: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
) {
    let c = s.channels;
    if c == 0 {
        return;
    }
    y.par_chunks_mut(row_chunk(c))
        .zip(x.par_chunks(row_chunk(c)))
        .for_each(|(yb, xb)| {
            for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                for j in 0..c {
                    let g = gamma.map_or(1.0, |g| g[j]);
                    let b = beta.map_or(0.0, |b| b[j]);
                    yr[j] = g * ((xr[j] - mean[j]) * inv_std[j]) + b;
                }
            }
        });
}

/// Checks the optional `[channels]` vectors.
fn check_affine(
    s: &BatchNormShape,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Result<(), KernelError> {
    if let Some(g) = gamma {
        s.check_channels("batch_norm gamma", g)?;
    }
    if let Some(b) = beta {
        s.check_channels("batch_norm beta", b)?;
    }
    Ok(())
}

/// Training forward: normalizes `x` with the batch's statistics and writes
/// them out: `mean` and biased `var` (`[channels]` each, used to update the
/// moving statistics) and `inv_std = 1 / sqrt(var + epsilon)` (for
/// backward). With no rows, `mean = 0`, `var = 0`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_forward(
    s: &BatchNormShape,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    epsilon: f32,
    y: &mut [f32],
    mean: &mut [f32],
    var: &mut [f32],
    inv_std: &mut [f32],
) -> Result<(), KernelError> {
    s.check("batch_norm input", x)?;
    s.check("batch_norm output", y)?;
    s.check_channels("batch_norm mean", mean)?;
    s.check_channels("batch_norm variance", var)?;
    s.check_channels("batch_norm inv_std", inv_std)?;
    check_affine(s, gamma, beta)?;
    let m = s.rows.max(1) as f64;
    let sums = channel_sums(s, x, |_, v| f64::from(v));
    for (dst, sum) in mean.iter_mut().zip(&sums) {
        *dst = (sum / m) as f32;
    }
    let mean_ref: &[f32] = mean;
    let sq = channel_sums(s, x, |j, v| {
        let d = f64::from(v) - f64::from(mean_ref[j]);
        d * d
    });
    for ((v, q), is) in var.iter_mut().zip(&sq).zip(inv_std.iter_mut()) {
        *v = (q / m) as f32;
        *is = (1.0 / (f64::from(*v) + f64::from(epsilon)).sqrt()) as f32;
    }
    normalize(s, x, mean, inv_std, gamma, beta, y);
    Ok(())
}

/// `1 / sqrt(var + epsilon)` per channel.
pub fn inverse_std(var: &[f32], epsilon: f32, inv_std: &mut [f32]) -> Result<(), KernelError> {
    check_len("batch_norm inv_std", var.len(), inv_std.len())?;
    for (is, v) in inv_std.iter_mut().zip(var) {
        *is = (1.0 / (f64::from(*v) + f64::from(epsilon)).sqrt()) as f32;
    }
    Ok(())
}

/// Inference forward: normalizes `x` with the moving statistics; writes
/// `inv_std = 1 / sqrt(moving_variance + epsilon)` (for backward).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_inference_forward(
    s: &BatchNormShape,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    moving_mean: &[f32],
    moving_variance: &[f32],
    epsilon: f32,
    y: &mut [f32],
    inv_std: &mut [f32],
) -> Result<(), KernelError> {
    s.check("batch_norm input", x)?;
    s.check("batch_norm output", y)?;
    s.check_channels("batch_norm moving_mean", moving_mean)?;
    s.check_channels("batch_norm moving_variance", moving_variance)?;
    s.check_channels("batch_norm inv_std", inv_std)?;
    check_affine(s, gamma, beta)?;
    inverse_std(moving_variance, epsilon, inv_std)?;
    normalize(s, x, moving_mean, inv_std, gamma, beta, y);
    Ok(())
}

/// [`batch_norm_inference_forward`] overwriting its input: `data` is `x`
/// on entry and `y` on return (`[rows, channels]`; every value is read
/// before it is written, so the result equals the out-of-place kernel's).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_inference_inplace(
    s: &BatchNormShape,
    data: &mut [f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    moving_mean: &[f32],
    moving_variance: &[f32],
    epsilon: f32,
    inv_std: &mut [f32],
) -> Result<(), KernelError> {
    s.check("batch_norm input", data)?;
    s.check_channels("batch_norm moving_mean", moving_mean)?;
    s.check_channels("batch_norm moving_variance", moving_variance)?;
    s.check_channels("batch_norm inv_std", inv_std)?;
    check_affine(s, gamma, beta)?;
    inverse_std(moving_variance, epsilon, inv_std)?;
    let c = s.channels;
    if c == 0 {
        return Ok(());
    }
    let inv_std: &[f32] = inv_std;
    data.par_chunks_mut(row_chunk(c)).for_each(|block| {
        for row in block.chunks_exact_mut(c) {
            for j in 0..c {
                let g = gamma.map_or(1.0, |g| g[j]);
                let b = beta.map_or(0.0, |b| b[j]);
                row[j] = g * ((row[j] - moving_mean[j]) * inv_std[j]) + b;
            }
        }
    });
    Ok(())
}

/// Backward of either forward. `mean` / `inv_std` are the statistics the
/// forward used; `batch_stats` says whether they were the batch's (their
/// dependence on `x` is then differentiated) or fixed moving statistics.
/// Each requested gradient is overwritten: `dx` `[rows, channels]`,
/// `dgamma` / `dbeta` `[channels]`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    s: &BatchNormShape,
    x: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: Option<&[f32]>,
    batch_stats: bool,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    s.check("batch_norm input", x)?;
    s.check("batch_norm output gradient", dy)?;
    s.check_channels("batch_norm mean", mean)?;
    s.check_channels("batch_norm inv_std", inv_std)?;
    check_affine(s, gamma, None)?;
    let c = s.channels;
    let need_sums = dgamma.is_some() || dbeta.is_some() || (batch_stats && dx.is_some());
    let (sum_dy, sum_dy_xhat) = if need_sums {
        grad_sums(s, x, dy, mean, inv_std)
    } else {
        (vec![0.0; c], vec![0.0; c])
    };
    if let Some(dg) = dgamma {
        s.check_channels("batch_norm gamma gradient", dg)?;
        for (d, v) in dg.iter_mut().zip(&sum_dy_xhat) {
            *d = *v as f32;
        }
    }
    if let Some(db) = dbeta {
        s.check_channels("batch_norm beta gradient", db)?;
        for (d, v) in db.iter_mut().zip(&sum_dy) {
            *d = *v as f32;
        }
    }
    let Some(dx) = dx else {
        return Ok(());
    };
    s.check("batch_norm input gradient", dx)?;
    if c == 0 {
        return Ok(());
    }
    let m = s.rows.max(1) as f64;
    // Per channel: scale = gamma * inv_std; the batch-statistics terms.
    let scale: Vec<f32> = (0..c)
        .map(|j| gamma.map_or(1.0, |g| g[j]) * inv_std[j])
        .collect();
    let mean_dy: Vec<f32> = sum_dy.iter().map(|v| (v / m) as f32).collect();
    let mean_dy_xhat: Vec<f32> = sum_dy_xhat.iter().map(|v| (v / m) as f32).collect();
    dx.par_chunks_mut(row_chunk(c))
        .zip(x.par_chunks(row_chunk(c)))
        .zip(dy.par_chunks(row_chunk(c)))
        .for_each(|((dxb, xb), dyb)| {
            for ((dr, xr), gr) in dxb
                .chunks_exact_mut(c)
                .zip(xb.chunks_exact(c))
                .zip(dyb.chunks_exact(c))
            {
                for j in 0..c {
                    dr[j] = if batch_stats {
                        let xhat = (xr[j] - mean[j]) * inv_std[j];
                        scale[j] * (gr[j] - mean_dy[j] - xhat * mean_dy_xhat[j])
                    } else {
                        scale[j] * gr[j]
                    };
                }
            }
        });
    Ok(())
}

/// Folds batch statistics into moving ones (Keras):
/// `moving = moving * momentum + batch * (1 - momentum)`.
pub fn update_moving(moving: &mut [f32], batch: &[f32], momentum: f32) -> Result<(), KernelError> {
    check_len("moving statistic", moving.len(), batch.len())?;
    for (m, b) in moving.iter_mut().zip(batch) {
        *m = *m * momentum + *b * (1.0 - momentum);
    }
    Ok(())
}
