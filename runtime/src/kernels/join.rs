//! Joins of several tensors (Keras `Add`, `Multiply`, `Concatenate`; ONNX
//! `Sum`, `Mul`, `Concat`) and their backward passes.
//!
//! `Add` / `Multiply` take two or more inputs of one shape:
//! `y = Σ_k x_k` and `y = Π_k x_k`, element-wise. Backward:
//! `dx_k = dy` for the sum and `dx_k = dy ⊙ Π_{j≠k} x_j` for the product
//! (computed as a product, not a division, so zeros in the inputs are fine).
//!
//! `Concat` joins along one axis. With the batch axis leading, a row-major
//! tensor is `[outer, inner]` where `outer` is the product of the dimensions
//! before the axis (batch included) and `inner_k` the product of input `k`'s
//! dimensions from the axis on; the output row `r` is input 0's row `r`,
//! then input 1's row `r`, ... (`inner = Σ_k inner_k`). Backward slices
//! `dy` back into the same pieces.
//!
//! All kernels are element-wise or copies, parallel over fixed chunks: every
//! output element is written by exactly one task, in a fixed order, so
//! results do not depend on the thread count.

use super::{check_len, KernelError};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

fn check_inputs(what: &'static str, inputs: &[&[f32]], len: usize) -> Result<(), KernelError> {
    if inputs.is_empty() {
        return Err(KernelError::Geometry(format!(
            "{what} needs at least one input"
        )));
    }
    for x in inputs {
        check_len(what, len, x.len())?;
    }
    Ok(())
}

/// `y = Σ_k inputs[k]`, element-wise, summed in input order. Every input and
/// `y` have the same length.
pub fn add_forward(inputs: &[&[f32]], y: &mut [f32]) -> Result<(), KernelError> {
    check_inputs("add input", inputs, y.len())?;
    y.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK;
            let range = start..start + out.len();
            out.copy_from_slice(&inputs[0][range.clone()]);
            for x in &inputs[1..] {
                for (o, v) in out.iter_mut().zip(&x[range.clone()]) {
                    *o += v;
                }
            }
        });
    Ok(())
}

/// `y = Π_k inputs[k]`, element-wise, multiplied in input order.
pub fn multiply_forward(inputs: &[&[f32]], y: &mut [f32]) -> Result<(), KernelError> {
    check_inputs("multiply input", inputs, y.len())?;
    y.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK;
            let range = start..start + out.len();
            out.copy_from_slice(&inputs[0][range.clone()]);
            for x in &inputs[1..] {
                for (o, v) in out.iter_mut().zip(&x[range.clone()]) {
                    *o *= v;
                }
            }
        });
    Ok(())
}

/// Which element-wise join an in-place kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Join {
    Add,
    Multiply,
}

impl Join {
    #[inline(always)]
    fn apply(self, acc: f32, v: f32) -> f32 {
        match self {
            Join::Add => acc + v,
            Join::Multiply => acc * v,
        }
    }
}

/// [`add_forward`] overwriting input `target`: `data` holds
/// `inputs[target]` on entry and the sum on return; `inputs[target]` itself
/// is not read (pass an empty slice). The terms are added in input order,
/// exactly as [`add_forward`] does, so the results are identical.
pub fn add_inplace(data: &mut [f32], inputs: &[&[f32]], target: usize) -> Result<(), KernelError> {
    join_inplace(Join::Add, "add input", data, inputs, target)
}

/// [`multiply_forward`] overwriting input `target` (see [`add_inplace`]).
pub fn multiply_inplace(
    data: &mut [f32],
    inputs: &[&[f32]],
    target: usize,
) -> Result<(), KernelError> {
    join_inplace(Join::Multiply, "multiply input", data, inputs, target)
}

fn join_inplace(
    op: Join,
    what: &'static str,
    data: &mut [f32],
    inputs: &[&[f32]],
    target: usize,
) -> Result<(), KernelError> {
    if target >= inputs.len() {
        return Err(KernelError::Geometry(format!(
            "{what}: in-place input {target} out of range ({} inputs)",
            inputs.len()
        )));
    }
    for (k, x) in inputs.iter().enumerate() {
        if k != target {
            check_len(what, data.len(), x.len())?;
        }
    }
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK;
            let range = start..start + out.len();
            if target == 0 {
                // `out` already holds the first term: fold in the rest in order.
                for x in &inputs[1..] {
                    for (o, &v) in out.iter_mut().zip(&x[range.clone()]) {
                        *o = op.apply(*o, v);
                    }
                }
            } else if inputs.len() == 2 {
                // x0 (op) out, the same operation as the out-of-place kernel.
                for (o, &v) in out.iter_mut().zip(&inputs[0][range.clone()]) {
                    *o = op.apply(v, *o);
                }
            } else {
                for (e, o) in out.iter_mut().enumerate() {
                    let here = *o;
                    let term = |k: usize| {
                        if k == target {
                            here
                        } else {
                            inputs[k][start + e]
                        }
                    };
                    let mut acc = term(0);
                    for k in 1..inputs.len() {
                        acc = op.apply(acc, term(k));
                    }
                    *o = acc;
                }
            }
        });
    Ok(())
}

/// d loss / d `inputs[k]` of [`multiply_forward`]: `dx = dy ⊙ Π_{j≠k} inputs[j]`
/// (the other inputs multiplied in input order). Overwrites `dx`.
pub fn multiply_backward(
    inputs: &[&[f32]],
    k: usize,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    check_inputs("multiply input", inputs, dy.len())?;
    check_len("multiply input gradient", dy.len(), dx.len())?;
    if k >= inputs.len() {
        return Err(KernelError::Geometry(format!(
            "multiply input {k} out of range ({} inputs)",
            inputs.len()
        )));
    }
    dx.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK;
            let range = start..start + out.len();
            out.copy_from_slice(&dy[range.clone()]);
            for (j, x) in inputs.iter().enumerate() {
                if j != k {
                    for (o, v) in out.iter_mut().zip(&x[range.clone()]) {
                        *o *= v;
                    }
                }
            }
        });
    Ok(())
}

/// The row geometry of a concatenation: `outer` rows; input `k` contributes
/// `inner[k]` values to each output row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcatShape {
    /// Product of the dimensions before the axis, batch included.
    pub outer: usize,
    /// Per input: product of its dimensions from the axis on.
    pub inner: Vec<usize>,
}

impl ConcatShape {
    /// Values per output row, `Σ_k inner[k]`.
    pub fn row_len(&self) -> usize {
        self.inner.iter().sum()
    }

    /// Offset of input `k`'s piece within an output row.
    fn offset(&self, k: usize) -> usize {
        self.inner[..k].iter().sum()
    }
}

/// Rows per parallel task for rows of `row_len` values.
fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len.max(1)).max(1)
}

/// Concatenates `inputs` (`[outer, inner[k]]` each) into `y` (`[outer, Σ inner]`).
pub fn concat_forward(
    s: &ConcatShape,
    inputs: &[&[f32]],
    y: &mut [f32],
) -> Result<(), KernelError> {
    if inputs.len() != s.inner.len() || inputs.is_empty() {
        return Err(KernelError::Geometry(format!(
            "concat: {} inputs for {} pieces",
            inputs.len(),
            s.inner.len()
        )));
    }
    for (x, &inner) in inputs.iter().zip(&s.inner) {
        check_len("concat input", s.outer * inner, x.len())?;
    }
    let row = s.row_len();
    check_len("concat output", s.outer * row, y.len())?;
    if row == 0 {
        return Ok(());
    }
    let rows = rows_per_task(row);
    y.par_chunks_mut(rows * row)
        .enumerate()
        .for_each(|(chunk, out)| {
            for (r, out_row) in out.chunks_exact_mut(row).enumerate() {
                let r = chunk * rows + r;
                let mut at = 0;
                for (x, &inner) in inputs.iter().zip(&s.inner) {
                    out_row[at..at + inner].copy_from_slice(&x[r * inner..(r + 1) * inner]);
                    at += inner;
                }
            }
        });
    Ok(())
}

/// d loss / d input `k` of [`concat_forward`]: input `k`'s piece of every row
/// of `dy`. Overwrites `dx` (`[outer, inner[k]]`).
pub fn concat_backward(
    s: &ConcatShape,
    k: usize,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    let Some(&inner) = s.inner.get(k) else {
        return Err(KernelError::Geometry(format!(
            "concat input {k} out of range ({} inputs)",
            s.inner.len()
        )));
    };
    let row = s.row_len();
    check_len("concat output gradient", s.outer * row, dy.len())?;
    check_len("concat input gradient", s.outer * inner, dx.len())?;
    if inner == 0 {
        return Ok(());
    }
    let offset = s.offset(k);
    let rows = rows_per_task(inner);
    dx.par_chunks_mut(rows * inner)
        .enumerate()
        .for_each(|(chunk, out)| {
            for (r, out_row) in out.chunks_exact_mut(inner).enumerate() {
                let r = chunk * rows + r;
                let start = r * row + offset;
                out_row.copy_from_slice(&dy[start..start + inner]);
            }
        });
    Ok(())
}
