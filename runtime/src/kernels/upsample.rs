//! 2-D upsampling (Keras `UpSampling2D`) of NHWC tensors and its backward
//! pass, parallel over images.
//!
//! `[batch, h, w, c]` -> `[batch, h * size_h, w * size_w, c]`:
//! - `nearest`: `y[n, oy, ox, c] = x[n, oy / size_h, ox / size_w, c]` (Keras
//!   repeats rows and columns); backward sums each `size_h × size_w` block of
//!   `dy` into its source pixel;
//! - `bilinear`: TensorFlow's `tf.image.resize(method="bilinear")` with
//!   half-pixel centres (what Keras `UpSampling2D(interpolation="bilinear")`
//!   calls). Per axis, with `scale = in / out` (as f32), output index `o`
//!   samples `p = (o + 0.5) * scale - 0.5`; `lower = max(floor(p), 0)`,
//!   `upper = min(ceil(p), in - 1)`, `lerp = p - floor(p)` (TensorFlow's
//!   `compute_interpolation_weights`), and
//!   `top = tl + (tr - tl) * x_lerp`, `bottom = bl + (br - bl) * x_lerp`,
//!   `y = top + (bottom - top) * y_lerp`. Backward (TensorFlow's
//!   `ResizeBilinearGrad`) adds `dy * (1 - y_lerp) * (1 - x_lerp)` to the
//!   top-left source, `dy * (1 - y_lerp) * x_lerp` to the top-right, and so on.
//!
//! Each image is processed by one task in a fixed order, so results do not
//! depend on the thread count.

use super::spatial::ImageShape;
use super::{check_len, KernelError};
use cnnc_compiler::model::Interpolation;
use rayon::prelude::*;

/// The output geometry of upsampling `s` by `size` (`[size_h, size_w]`).
pub fn upsampled(s: &ImageShape, size: [usize; 2]) -> ImageShape {
    ImageShape {
        batch: s.batch,
        height: s.height * size[0],
        width: s.width * size[1],
        channels: s.channels,
    }
}

/// Source positions and weight of one output index along an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lower: usize,
    upper: usize,
    lerp: f32,
}

/// TensorFlow's half-pixel bilinear weights for `out` samples of `n` pixels.
fn taps(n: usize, out: usize) -> Vec<Tap> {
    let scale = if out == 0 { 0.0 } else { n as f32 / out as f32 };
    (0..out)
        .map(|o| {
            let p = (o as f32 + 0.5) * scale - 0.5;
            let floor = p.floor();
            let last = n.saturating_sub(1);
            Tap {
                lower: (floor.max(0.0) as usize).min(last),
                upper: (p.ceil().max(0.0) as usize).min(last),
                lerp: p - floor,
            }
        })
        .collect()
}

fn check_size(size: [usize; 2]) -> Result<(), KernelError> {
    if size[0] == 0 || size[1] == 0 {
        return Err(KernelError::Geometry(format!(
            "up_sampling2d size {}x{} must be positive",
            size[0], size[1]
        )));
    }
    Ok(())
}

/// Upsamples `x` (`[batch, h, w, c]`, geometry `s`) into `y`
/// (`[batch, h * size_h, w * size_w, c]`).
pub fn up_sampling2d_forward(
    s: &ImageShape,
    size: [usize; 2],
    interpolation: Interpolation,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_size(size)?;
    let o = upsampled(s, size);
    check_len("up_sampling2d input", s.len(), x.len())?;
    check_len("up_sampling2d output", o.len(), y.len())?;
    let c = s.channels;
    let in_image = s.height * s.width * c;
    let out_image = o.height * o.width * c;
    if out_image == 0 || c == 0 {
        return Ok(());
    }
    match interpolation {
        Interpolation::Nearest => {
            y.par_chunks_mut(out_image)
                .zip(x.par_chunks(in_image))
                .for_each(|(yi, xi)| {
                    for (oy, yrow) in yi.chunks_exact_mut(o.width * c).enumerate() {
                        let iy = oy / size[0];
                        for (ox, px) in yrow.chunks_exact_mut(c).enumerate() {
                            let ix = ox / size[1];
                            let src = (iy * s.width + ix) * c;
                            px.copy_from_slice(&xi[src..src + c]);
                        }
                    }
                });
        }
        Interpolation::Bilinear => {
            let ty = taps(s.height, o.height);
            let tx = taps(s.width, o.width);
            y.par_chunks_mut(out_image)
                .zip(x.par_chunks(in_image))
                .for_each(|(yi, xi)| {
                    for (oy, yrow) in yi.chunks_exact_mut(o.width * c).enumerate() {
                        let t = ty[oy];
                        let top_row = &xi[t.lower * s.width * c..(t.lower + 1) * s.width * c];
                        let bot_row = &xi[t.upper * s.width * c..(t.upper + 1) * s.width * c];
                        for (ox, px) in yrow.chunks_exact_mut(c).enumerate() {
                            let u = tx[ox];
                            let (l, r) = (u.lower * c, u.upper * c);
                            for (ch, out) in px.iter_mut().enumerate() {
                                let (tl, tr) = (top_row[l + ch], top_row[r + ch]);
                                let (bl, br) = (bot_row[l + ch], bot_row[r + ch]);
                                let top = tl + (tr - tl) * u.lerp;
                                let bottom = bl + (br - bl) * u.lerp;
                                *out = top + (bottom - top) * t.lerp;
                            }
                        }
                    }
                });
        }
    }
    Ok(())
}

/// d loss / d input of [`up_sampling2d_forward`]; overwrites `dx`
/// (`[batch, h, w, c]`) from `dy` (`[batch, h * size_h, w * size_w, c]`).
pub fn up_sampling2d_backward(
    s: &ImageShape,
    size: [usize; 2],
    interpolation: Interpolation,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    check_size(size)?;
    let o = upsampled(s, size);
    check_len("up_sampling2d output gradient", o.len(), dy.len())?;
    check_len("up_sampling2d input gradient", s.len(), dx.len())?;
    dx.fill(0.0);
    let c = s.channels;
    let in_image = s.height * s.width * c;
    let out_image = o.height * o.width * c;
    if in_image == 0 || out_image == 0 {
        return Ok(());
    }
    match interpolation {
        Interpolation::Nearest => {
            dx.par_chunks_mut(in_image)
                .zip(dy.par_chunks(out_image))
                .for_each(|(di, gi)| {
                    for (oy, grow) in gi.chunks_exact(o.width * c).enumerate() {
                        let iy = oy / size[0];
                        for (ox, px) in grow.chunks_exact(c).enumerate() {
                            let dst = (iy * s.width + ox / size[1]) * c;
                            for (d, g) in di[dst..dst + c].iter_mut().zip(px) {
                                *d += g;
                            }
                        }
                    }
                });
        }
        Interpolation::Bilinear => {
            let ty = taps(s.height, o.height);
            let tx = taps(s.width, o.width);
            dx.par_chunks_mut(in_image)
                .zip(dy.par_chunks(out_image))
                .for_each(|(di, gi)| {
                    for (oy, grow) in gi.chunks_exact(o.width * c).enumerate() {
                        let t = ty[oy];
                        for (ox, px) in grow.chunks_exact(c).enumerate() {
                            let u = tx[ox];
                            let top = t.lower * s.width;
                            let bot = t.upper * s.width;
                            let corners = [
                                (top + u.lower, (1.0 - t.lerp) * (1.0 - u.lerp)),
                                (top + u.upper, (1.0 - t.lerp) * u.lerp),
                                (bot + u.lower, t.lerp * (1.0 - u.lerp)),
                                (bot + u.upper, t.lerp * u.lerp),
                            ];
                            for (pixel, weight) in corners {
                                let dst = &mut di[pixel * c..(pixel + 1) * c];
                                for (d, g) in dst.iter_mut().zip(px) {
                                    *d += g * weight;
                                }
                            }
                        }
                    }
                });
        }
    }
    Ok(())
}
