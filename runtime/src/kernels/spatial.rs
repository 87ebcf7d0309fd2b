//! Global pooling (Keras `GlobalAveragePooling2D`, `GlobalMaxPooling2D`;
//! ONNX `GlobalAveragePool`, `GlobalMaxPool`) and zero padding (Keras
//! `ZeroPadding2D`) over NHWC tensors, parallel over images.
//!
//! Global pooling reduces `[batch, h, w, c]` to `[batch, c]` over all `h × w`
//! pixels: `y[n, c] = (1 / (h w)) Σ_{i,j} x[n, i, j, c]` or
//! `y[n, c] = max_{i,j} x[n, i, j, c]`. Backward: the average spreads
//! `dy[n, c] / (h w)` to every pixel; the max sends `dy[n, c]` to the first
//! pixel (in row-major order) holding the maximum, as TensorFlow's max-pool
//! gradient does.
//!
//! Zero padding maps `[batch, h, w, c]` to
//! `[batch, top + h + bottom, left + w + right, c]` with zeros around the
//! image; its backward is the crop of `dy` back to `[batch, h, w, c]`.

use super::{check_len, KernelError};
use cnnc_compiler::model::Pads2d;
use rayon::prelude::*;

/// Geometry of a batched image: `[batch, height, width, channels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageShape {
    /// Number of values, `batch * height * width * channels`.
    pub fn len(&self) -> usize {
        self.batch * self.example_len()
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn example_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Number of values of the global pooling output, `batch * channels`.
    pub fn pooled_len(&self) -> usize {
        self.batch * self.channels
    }

    /// The shape after zero padding by `pads`.
    pub fn padded(&self, pads: &Pads2d) -> ImageShape {
        ImageShape {
            batch: self.batch,
            height: pads.top + self.height + pads.bottom,
            width: pads.left + self.width + pads.right,
            channels: self.channels,
        }
    }
}

/// `y[n, c]` = mean of `x[n, :, :, c]`; `x` `[batch, h, w, c]`, `y` `[batch, c]`.
pub fn global_avg_pool2d_forward(
    s: &ImageShape,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("global_avg_pool2d input", s.len(), x.len())?;
    check_len("global_avg_pool2d output", s.pooled_len(), y.len())?;
    y.fill(0.0);
    let c = s.channels;
    if c == 0 {
        return Ok(());
    }
    let pixels = s.height * s.width;
    let inv = if pixels == 0 {
        0.0
    } else {
        1.0 / pixels as f32
    };
    let ex = s.example_len().max(1);
    y.par_chunks_mut(c)
        .zip(x.par_chunks(ex))
        .for_each(|(yr, xe)| {
            yr.fill(0.0);
            for px in xe.chunks_exact(c) {
                for (o, v) in yr.iter_mut().zip(px) {
                    *o += v;
                }
            }
            yr.iter_mut().for_each(|o| *o *= inv);
        });
    Ok(())
}

/// `dx[n, i, j, c] = dy[n, c] / (h w)` (overwrites `dx`).
pub fn global_avg_pool2d_backward(
    s: &ImageShape,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    check_len(
        "global_avg_pool2d output gradient",
        s.pooled_len(),
        dy.len(),
    )?;
    check_len("global_avg_pool2d input gradient", s.len(), dx.len())?;
    let c = s.channels;
    if c == 0 || dx.is_empty() {
        return Ok(());
    }
    let inv = 1.0 / (s.height * s.width) as f32;
    dx.par_chunks_mut(s.example_len())
        .zip(dy.par_chunks(c))
        .for_each(|(de, dr)| {
            for px in de.chunks_exact_mut(c) {
                for (o, g) in px.iter_mut().zip(dr) {
                    *o = g * inv;
                }
            }
        });
    Ok(())
}

/// `y[n, c]` = max of `x[n, :, :, c]`; `argmax[n, c]` receives the pixel
/// index `i * w + j` of the first maximum (ties go to the earliest pixel).
/// An image with no pixels outputs 0 with argmax [`super::pool::NO_ARGMAX`].
pub fn global_max_pool2d_forward(
    s: &ImageShape,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) -> Result<(), KernelError> {
    check_len("global_max_pool2d input", s.len(), x.len())?;
    check_len("global_max_pool2d output", s.pooled_len(), y.len())?;
    check_len("global_max_pool2d argmax", s.pooled_len(), argmax.len())?;
    y.fill(0.0);
    argmax.fill(super::pool::NO_ARGMAX);
    let c = s.channels;
    if c == 0 {
        return Ok(());
    }
    if u32::try_from(s.height * s.width).is_err() {
        return Err(KernelError::Geometry(format!(
            "{} x {} pixels do not fit in 32-bit argmax indices",
            s.height, s.width
        )));
    }
    let ex = s.example_len().max(1);
    y.par_chunks_mut(c)
        .zip(argmax.par_chunks_mut(c))
        .zip(x.par_chunks(ex))
        .for_each(|((yr, ar), xe)| {
            yr.fill(0.0);
            ar.fill(super::pool::NO_ARGMAX);
            for (p, px) in xe.chunks_exact(c).enumerate() {
                for ((o, a), &v) in yr.iter_mut().zip(ar.iter_mut()).zip(px) {
                    if *a == super::pool::NO_ARGMAX || v > *o {
                        *o = v;
                        *a = p as u32;
                    }
                }
            }
        });
    Ok(())
}

/// `dx[n, argmax[n, c], c] = dy[n, c]`, zero elsewhere (overwrites `dx`).
pub fn global_max_pool2d_backward(
    s: &ImageShape,
    argmax: &[u32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    check_len("global_max_pool2d argmax", s.pooled_len(), argmax.len())?;
    check_len(
        "global_max_pool2d output gradient",
        s.pooled_len(),
        dy.len(),
    )?;
    check_len("global_max_pool2d input gradient", s.len(), dx.len())?;
    let c = s.channels;
    if c == 0 || dx.is_empty() {
        return Ok(());
    }
    let pixels = s.height * s.width;
    dx.par_chunks_mut(s.example_len())
        .zip(dy.par_chunks(c).zip(argmax.par_chunks(c)))
        .for_each(|(de, (dr, ar))| {
            de.fill(0.0);
            for (ch, (&g, &a)) in dr.iter().zip(ar).enumerate() {
                let p = a as usize;
                if a != super::pool::NO_ARGMAX && p < pixels {
                    de[p * c + ch] = g;
                }
            }
        });
    Ok(())
}

/// Zero padding: `x` `[batch, h, w, c]` -> `y` `[batch, top + h + bottom,
/// left + w + right, c]`, `y[n, top + i, left + j, c] = x[n, i, j, c]`, zeros
/// elsewhere.
pub fn zero_padding2d_forward(
    s: &ImageShape,
    pads: &Pads2d,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    let o = s.padded(pads);
    check_len("zero_padding2d input", s.len(), x.len())?;
    check_len("zero_padding2d output", o.len(), y.len())?;
    if y.is_empty() {
        return Ok(());
    }
    let row = s.width * s.channels;
    let orow = o.width * o.channels;
    let offset = pads.left * s.channels;
    // Tasks of whole output rows of one image (about 8K floats), so a batch
    // of one image uses every thread; each output row is written once.
    let rows_per_task = (8 * 1024 / orow.max(1)).max(1);
    y.par_chunks_mut(o.example_len())
        .enumerate()
        .for_each(|(n, ye)| {
            let xe = &x[n * s.example_len()..(n + 1) * s.example_len()];
            ye.par_chunks_mut(rows_per_task * orow)
                .enumerate()
                .for_each(|(t, yrows)| {
                    for (k, yr) in yrows.chunks_exact_mut(orow).enumerate() {
                        let oy = t * rows_per_task + k;
                        match oy
                            .checked_sub(pads.top)
                            .filter(|&i| i < s.height && row > 0)
                        {
                            Some(i) => {
                                yr[..offset].fill(0.0);
                                yr[offset..offset + row].copy_from_slice(&xe[i * row..][..row]);
                                yr[offset + row..].fill(0.0);
                            }
                            None => yr.fill(0.0),
                        }
                    }
                });
        });
    Ok(())
}

/// Backward of [`zero_padding2d_forward`]: `dx[n, i, j, c] =
/// dy[n, top + i, left + j, c]` (overwrites `dx`).
pub fn zero_padding2d_backward(
    s: &ImageShape,
    pads: &Pads2d,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    let o = s.padded(pads);
    check_len("zero_padding2d output gradient", o.len(), dy.len())?;
    check_len("zero_padding2d input gradient", s.len(), dx.len())?;
    let row = s.width * s.channels;
    if dx.is_empty() || row == 0 {
        return Ok(());
    }
    let orow = o.width * o.channels;
    let offset = pads.left * s.channels;
    dx.par_chunks_mut(s.example_len())
        .enumerate()
        .for_each(|(n, de)| {
            let ye = &dy[n * o.example_len()..(n + 1) * o.example_len()];
            for (i, dr) in de.chunks_exact_mut(row).enumerate() {
                let start = (pads.top + i) * orow + offset;
                dr.copy_from_slice(&ye[start..start + row]);
            }
        });
    Ok(())
}
