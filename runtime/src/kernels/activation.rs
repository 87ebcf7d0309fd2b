//! Element-wise activations, softmax over the last axis, bias add, and their
//! derivatives. Buffers are row-major `[rows, row_len]` where `row_len` is the
//! last axis (channels or features).
//!
//! Derivatives are written in terms of the *output* `y` (so backward needs only
//! the saved output): relu' = `[y > 0]`, sigmoid' = `y (1 - y)`,
//! tanh' = `1 - y²`, linear' = 1, relu6' = `[0 < y < 6]`,
//! elu' = `1` if `y > 0` else `y + alpha` (since `y = alpha (e^x - 1)`, `alpha >= 0`),
//! leaky_relu' = `1` if `y > 0` else `negative_slope` (`negative_slope >= 0`, so
//! `y <= 0` exactly when `x <= 0`; the kink at 0 takes the left slope), and for softmax over a row
//! `dx = y ⊙ (dy - <dy, y>)` (the softmax Jacobian `diag(y) - y yᵀ` applied to `dy`).

use super::{check_len, KernelError};
use cnnc_compiler::model::Activation;
use rayon::prelude::*;

/// Elements per parallel task of element-wise kernels (rounded to whole rows).
const ELEMWISE_CHUNK: usize = 1 << 15;
/// Rows per partial sum of [`column_sums`]; fixed so the summation order never
/// depends on the thread count.
const COLSUM_ROWS: usize = 256;

/// `Ok` if `len` is a whole number of rows of `row_len > 0` values, else
/// [`KernelError::Length`] naming `what`.
fn check_rows(what: &'static str, len: usize, row_len: usize) -> Result<(), KernelError> {
    if row_len == 0 || !len.is_multiple_of(row_len) {
        return Err(KernelError::Length {
            what,
            expected: row_len,
            got: len,
        });
    }
    Ok(())
}

fn chunk_len(row_len: usize) -> usize {
    let rows = (ELEMWISE_CHUNK / row_len.max(1)).max(1);
    rows * row_len.max(1)
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Applies `act` in place to rows of length `row_len` (single-threaded; used
/// on cache-resident tiles by the fused epilogues).
pub(crate) fn activation_rows(act: Activation, data: &mut [f32], row_len: usize) {
    match act {
        Activation::Linear => {}
        Activation::Relu => {
            for v in data.iter_mut() {
                *v = v.max(0.0);
            }
        }
        Activation::Sigmoid => {
            for v in data.iter_mut() {
                *v = sigmoid(*v);
            }
        }
        Activation::Tanh => {
            for v in data.iter_mut() {
                *v = v.tanh();
            }
        }
        Activation::Softmax => {
            if row_len == 0 {
                return;
            }
            for row in data.chunks_exact_mut(row_len) {
                softmax_row(row);
            }
        }
        Activation::Relu6 => {
            for v in data.iter_mut() {
                *v = v.clamp(0.0, 6.0);
            }
        }
        Activation::Elu { alpha } => {
            for v in data.iter_mut() {
                if *v <= 0.0 {
                    *v = alpha * v.exp_m1();
                }
            }
        }
        Activation::LeakyRelu { negative_slope } => {
            for v in data.iter_mut() {
                if *v < 0.0 {
                    *v *= negative_slope;
                }
            }
        }
    }
}

/// Numerically stable softmax of one row: `exp(x - max) / sum(exp(x - max))`.
fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Adds `bias` (length `row_len`) to each row, then applies `act` — the fused
/// epilogue run on each output tile right after its GEMM.
pub(crate) fn bias_activation_rows(
    data: &mut [f32],
    row_len: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    if let Some(b) = bias {
        if act == Activation::Relu {
            // One pass for the common conv/dense + relu case.
            for row in data.chunks_exact_mut(row_len) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v = (*v + bb).max(0.0);
                }
            }
            return;
        }
        for row in data.chunks_exact_mut(row_len) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    activation_rows(act, data, row_len);
}

/// `data = act((data + bias) + residual)` row by row (`residual` has
/// `data`'s length): the epilogue of a convolution fused with a residual
/// `add` (and the activation after it). The sum is formed in the order of
/// the unfused graph (`conv + bias`, then `+ residual`; two-operand float
/// addition is commutative, so the add's input order does not matter).
pub(crate) fn bias_residual_activation_rows(
    data: &mut [f32],
    row_len: usize,
    bias: Option<&[f32]>,
    residual: &[f32],
    act: Activation,
) {
    if row_len == 0 {
        return;
    }
    for (row, rrow) in data
        .chunks_exact_mut(row_len)
        .zip(residual.chunks_exact(row_len))
    {
        match (bias, act) {
            (Some(b), Activation::Relu) => {
                for ((v, &bb), &r) in row.iter_mut().zip(b).zip(rrow) {
                    *v = ((*v + bb) + r).max(0.0);
                }
            }
            (Some(b), _) => {
                for ((v, &bb), &r) in row.iter_mut().zip(b).zip(rrow) {
                    *v = (*v + bb) + r;
                }
            }
            (None, Activation::Relu) => {
                for (v, &r) in row.iter_mut().zip(rrow) {
                    *v = (*v + r).max(0.0);
                }
            }
            (None, _) => {
                for (v, &r) in row.iter_mut().zip(rrow) {
                    *v += r;
                }
            }
        }
    }
    if act != Activation::Relu {
        activation_rows(act, data, row_len);
    }
}

/// Replaces `dy` by `dy ⊙ act'(·)` given the activation's output `y`, rows of
/// length `row_len` (single-threaded tile version).
pub(crate) fn activation_backward_rows(act: Activation, y: &[f32], dy: &mut [f32], row_len: usize) {
    match act {
        Activation::Linear => {}
        Activation::Relu => {
            // Branch-free select (half the values are zero: a branch would
            // mispredict constantly).
            for (d, &yv) in dy.iter_mut().zip(y) {
                *d = if yv > 0.0 { *d } else { 0.0 };
            }
        }
        Activation::Sigmoid => {
            for (d, &yv) in dy.iter_mut().zip(y) {
                *d *= yv * (1.0 - yv);
            }
        }
        Activation::Tanh => {
            for (d, &yv) in dy.iter_mut().zip(y) {
                *d *= 1.0 - yv * yv;
            }
        }
        Activation::Softmax => {
            if row_len == 0 {
                return;
            }
            for (drow, yrow) in dy.chunks_exact_mut(row_len).zip(y.chunks_exact(row_len)) {
                let dot: f32 = drow.iter().zip(yrow).map(|(a, b)| a * b).sum();
                for (d, &yv) in drow.iter_mut().zip(yrow) {
                    *d = yv * (*d - dot);
                }
            }
        }
        Activation::Relu6 => {
            for (d, &yv) in dy.iter_mut().zip(y) {
                *d = if yv > 0.0 && yv < 6.0 { *d } else { 0.0 };
            }
        }
        Activation::Elu { alpha } => {
            for (d, &yv) in dy.iter_mut().zip(y) {
                if yv <= 0.0 {
                    *d *= yv + alpha;
                }
            }
        }
        Activation::LeakyRelu { negative_slope } => {
            for (d, &yv) in dy.iter_mut().zip(y) {
                if yv <= 0.0 {
                    *d *= negative_slope;
                }
            }
        }
    }
}

/// `data = act(data)` in place; `data` is `[rows, row_len]` (softmax is over
/// each row). Parallel over row chunks.
pub fn activation_forward_inplace(
    act: Activation,
    data: &mut [f32],
    row_len: usize,
) -> Result<(), KernelError> {
    check_rows(
        "activation input (multiple of row length)",
        data.len(),
        row_len,
    )?;
    if act == Activation::Linear {
        return Ok(());
    }
    data.par_chunks_mut(chunk_len(row_len))
        .for_each(|c| activation_rows(act, c, row_len));
    Ok(())
}

/// `y = act(x)`, both `[rows, row_len]` (softmax over each row), in one
/// parallel pass: each task copies its rows of `x` and applies `act` to them
/// while they are in cache (the same operations as
/// [`activation_forward_inplace`] on a copy, so the same bits). For an
/// activation whose input is still needed (e.g. Xception's `relu` before
/// each separable conv, whose input is the residual branch): a serial copy
/// followed by the parallel in-place pass did not scale with threads.
pub fn activation_forward(
    act: Activation,
    x: &[f32],
    y: &mut [f32],
    row_len: usize,
) -> Result<(), KernelError> {
    check_len("activation output", x.len(), y.len())?;
    check_rows(
        "activation input (multiple of row length)",
        x.len(),
        row_len,
    )?;
    let cl = chunk_len(row_len);
    y.par_chunks_mut(cl)
        .zip(x.par_chunks(cl))
        .for_each(|(yc, xc)| match act {
            // One pass (the common case): the same `max(0)` as `activation_rows`.
            Activation::Relu => {
                for (o, &i) in yc.iter_mut().zip(xc) {
                    *o = i.max(0.0);
                }
            }
            _ => {
                yc.copy_from_slice(xc);
                activation_rows(act, yc, row_len);
            }
        });
    Ok(())
}

/// `dy = dy ⊙ act'(x)` in place, computed from the saved output `y = act(x)`;
/// both `[rows, row_len]`. Relu uses `y > 0` (gradient 0 at the kink).
pub fn activation_backward_inplace(
    act: Activation,
    y: &[f32],
    dy: &mut [f32],
    row_len: usize,
) -> Result<(), KernelError> {
    check_len("activation gradient", y.len(), dy.len())?;
    check_rows(
        "activation output (multiple of row length)",
        y.len(),
        row_len,
    )?;
    if act == Activation::Linear {
        return Ok(());
    }
    let cl = chunk_len(row_len);
    dy.par_chunks_mut(cl)
        .zip(y.par_chunks(cl))
        .for_each(|(d, yv)| activation_backward_rows(act, yv, d, row_len));
    Ok(())
}

/// `y = x + bias` broadcast over rows: `x`, `y` are `[rows, bias.len()]`.
pub fn bias_add_forward(x: &[f32], bias: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    let c = bias.len();
    check_len("bias_add output", x.len(), y.len())?;
    if c == 0 || !x.len().is_multiple_of(c) {
        return Err(KernelError::Length {
            what: "bias_add input (multiple of bias length)",
            expected: c,
            got: x.len(),
        });
    }
    let cl = chunk_len(c);
    y.par_chunks_mut(cl)
        .zip(x.par_chunks(cl))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                for ((o, &i), &b) in yr.iter_mut().zip(xr).zip(bias) {
                    *o = i + b;
                }
            }
        });
    Ok(())
}

/// `data += bias` broadcast over rows, in place (`data` is
/// `[rows, bias.len()]`): [`bias_add_forward`] overwriting its input, as an
/// inference memory plan asks when the input is read by nothing else.
pub fn bias_add_inplace(data: &mut [f32], bias: &[f32]) -> Result<(), KernelError> {
    let c = bias.len();
    if c == 0 || !data.len().is_multiple_of(c) {
        return Err(KernelError::Length {
            what: "bias_add input (multiple of bias length)",
            expected: c,
            got: data.len(),
        });
    }
    data.par_chunks_mut(chunk_len(c)).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(c) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
    Ok(())
}

/// d bias of `y = x + bias`: the column sums of `dy` (`[rows, dbias.len()]`).
/// (d x is `dy` itself.)
pub fn bias_add_backward(dy: &[f32], dbias: &mut [f32]) -> Result<(), KernelError> {
    column_sums(dy, dbias.len(), dbias)
}

/// `out[j] = Σ_i data[i, j]` for row-major `data` `[rows, cols]`.
///
/// Deterministic: partial sums over fixed blocks of 256 rows (computed in
/// parallel) are added in block order.
pub fn column_sums(data: &[f32], cols: usize, out: &mut [f32]) -> Result<(), KernelError> {
    check_len("column sums output", cols, out.len())?;
    if cols == 0 {
        return Ok(());
    }
    if !data.len().is_multiple_of(cols) {
        return Err(KernelError::Length {
            what: "column sums input (multiple of cols)",
            expected: cols,
            got: data.len(),
        });
    }
    let block = COLSUM_ROWS * cols;
    let partials: Vec<Vec<f32>> = data
        .par_chunks(block)
        .map(|chunk| {
            let mut acc = vec![0.0f32; cols];
            add_rows_into(chunk, cols, &mut acc);
            acc
        })
        .collect();
    out.fill(0.0);
    for p in &partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    Ok(())
}

/// `acc[j] += Σ_i rows[i, j]`, sequentially over rows.
pub(crate) fn add_rows_into(rows: &[f32], cols: usize, acc: &mut [f32]) {
    for r in rows.chunks_exact(cols) {
        for (a, v) in acc.iter_mut().zip(r) {
            *a += v;
        }
    }
}
