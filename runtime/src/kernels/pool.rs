//! Max and average pooling over NHWC tensors, parallel over images.
//!
//! Padding follows TensorFlow: padded positions never win a max, and an
//! average is the mean over the window's pixels that lie inside the image
//! (`count_include_pad = false` in ONNX terms). A window with no pixel inside
//! the image (only possible with unusual explicit pads) outputs 0.

use super::{check_len, window_output_size, KernelError};
use cnnc_compiler::graph::ir::Pool2dAttrs;
use rayon::prelude::*;

/// Marks an output whose window lies entirely in the padding (no argmax).
pub const NO_ARGMAX: u32 = u32::MAX;

/// Outputs per forward task (whole output rows of one image): a batch-1
/// ResNet-50 `pool1` (56x56x64) is 19 tasks of 3 rows.
const TASK_FLOATS: usize = 8 * 1024;

/// Geometry of a batched 2-D pooling.
///
/// Input `[batch, in_h, in_w, channels]`, output `[batch, out_h, out_w, channels]`,
/// `out = floor((in + pad_before + pad_after - pool) / stride) + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub pool_h: usize,
    pub pool_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Pool2dShape {
    /// Geometry for `batch` inputs of `in_h × in_w × channels`.
    pub fn new(
        attrs: &Pool2dAttrs,
        batch: usize,
        in_h: usize,
        in_w: usize,
        channels: usize,
    ) -> Result<Pool2dShape, KernelError> {
        let [ph, pw] = attrs.pool_size;
        let [sh, sw] = attrs.strides;
        let p = attrs.pads;
        Ok(Pool2dShape {
            batch,
            in_h,
            in_w,
            channels,
            pool_h: ph,
            pool_w: pw,
            stride_h: sh,
            stride_w: sw,
            pad_top: p.top,
            pad_left: p.left,
            out_h: window_output_size(in_h, ph, sh, p.top, p.bottom)?,
            out_w: window_output_size(in_w, pw, sw, p.left, p.right)?,
        })
    }

    /// Values in one input image.
    pub fn image_len(&self) -> usize {
        self.in_h * self.in_w * self.channels
    }
    /// Values in one output image.
    pub fn out_image_len(&self) -> usize {
        self.out_h * self.out_w * self.channels
    }
    /// `batch * in_h * in_w * channels`.
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }
    /// `batch * out_h * out_w * channels`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_image_len()
    }

    /// The in-image input rows `[y0, y1)` and columns `[x0, x1)` of output (oy, ox).
    fn window(&self, oy: usize, ox: usize) -> (usize, usize, usize, usize) {
        let ys = (oy * self.stride_h) as isize - self.pad_top as isize;
        let xs = (ox * self.stride_w) as isize - self.pad_left as isize;
        let y0 = ys.max(0) as usize;
        let x0 = xs.max(0) as usize;
        let y1 = ((ys + self.pool_h as isize).max(0) as usize).min(self.in_h);
        let x1 = ((xs + self.pool_w as isize).max(0) as usize).min(self.in_w);
        (y0, y1.max(y0), x0, x1.max(x0))
    }

    /// Output rows per forward task: about [`TASK_FLOATS`] outputs, at
    /// least one row.
    fn task_rows(&self) -> usize {
        (TASK_FLOATS / (self.out_w * self.channels).max(1)).max(1)
    }

    fn check(&self, x_len: usize, y_len: usize) -> Result<(), KernelError> {
        check_len("pool input", self.input_len(), x_len)?;
        check_len("pool output", self.output_len(), y_len)
    }
}

/// Max pooling forward. `argmax`, if given (`[batch, out_h, out_w, channels]`),
/// receives for each output the pixel index within its image
/// (`iy * in_w + ix`) of the winning input of that channel ([`NO_ARGMAX`]
/// for a window entirely in the padding); the first maximum in row-major
/// window order wins ties.
pub fn max_pool2d_forward(
    s: &Pool2dShape,
    x: &[f32],
    y: &mut [f32],
    argmax: Option<&mut [u32]>,
) -> Result<(), KernelError> {
    s.check(x.len(), y.len())?;
    if let Some(a) = argmax.as_deref() {
        check_len("max_pool argmax", s.output_len(), a.len())?;
    }
    if s.image_len() > u32::MAX as usize - 1 {
        return Err(KernelError::Geometry(
            "image too large for argmax indices".into(),
        ));
    }
    let (il, ol) = (s.image_len(), s.out_image_len());
    if ol == 0 || il == 0 {
        return Ok(());
    }
    // Tasks of whole output rows of one image (element-wise: the bits do
    // not depend on the split), so a batch of one image uses every thread.
    let part = s.task_rows() * s.out_w * s.channels;
    match argmax {
        Some(a) => y
            .par_chunks_mut(ol)
            .zip(x.par_chunks(il))
            .zip(a.par_chunks_mut(ol))
            .for_each(|((yi, xi), ai)| {
                yi.par_chunks_mut(part)
                    .zip(ai.par_chunks_mut(part))
                    .enumerate()
                    .for_each(|(t, (yr, ar))| {
                        max_image_simd(s, xi, yr, Some(ar), t * s.task_rows())
                    })
            }),
        None => y
            .par_chunks_mut(ol)
            .zip(x.par_chunks(il))
            .for_each(|(yi, xi)| {
                yi.par_chunks_mut(part)
                    .enumerate()
                    .for_each(|(t, yr)| max_image_simd(s, xi, yr, None, t * s.task_rows()))
            }),
    }
    Ok(())
}

/// Max pooling backward: `dx` (overwritten) receives each `dy` at its argmax
/// (summed where windows overlap).
pub fn max_pool2d_backward(
    s: &Pool2dShape,
    argmax: &[u32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    s.check(dx.len(), dy.len())?;
    check_len("max_pool argmax", s.output_len(), argmax.len())?;
    let (il, ol, c) = (s.image_len(), s.out_image_len(), s.channels);
    if il == 0 {
        return Ok(());
    }
    if ol == 0 {
        dx.fill(0.0);
        return Ok(());
    }
    dx.par_chunks_mut(il)
        .zip(dy.par_chunks(ol))
        .zip(argmax.par_chunks(ol))
        .for_each(|((dxi, dyi), ai)| {
            dxi.fill(0.0);
            for (gs, as_) in dyi.chunks_exact(c).zip(ai.chunks_exact(c)) {
                for (ch, (&g, &a)) in gs.iter().zip(as_).enumerate() {
                    if a != NO_ARGMAX {
                        dxi[a as usize * c + ch] += g;
                    }
                }
            }
        });
    Ok(())
}

/// Average pooling forward: mean over each window's in-image pixels.
pub fn avg_pool2d_forward(s: &Pool2dShape, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    s.check(x.len(), y.len())?;
    let (il, ol) = (s.image_len(), s.out_image_len());
    if ol == 0 || il == 0 {
        return Ok(());
    }
    let part = s.task_rows() * s.out_w * s.channels;
    y.par_chunks_mut(ol)
        .zip(x.par_chunks(il))
        .for_each(|(yi, xi)| {
            yi.par_chunks_mut(part)
                .enumerate()
                .for_each(|(t, yr)| avg_image_simd(s, xi, yr, t * s.task_rows()))
        });
    Ok(())
}

/// Average pooling backward: each `dy` is spread evenly over its window's
/// in-image pixels (`dx` overwritten).
pub fn avg_pool2d_backward(s: &Pool2dShape, dy: &[f32], dx: &mut [f32]) -> Result<(), KernelError> {
    s.check(dx.len(), dy.len())?;
    let (il, ol) = (s.image_len(), s.out_image_len());
    if il == 0 {
        return Ok(());
    }
    if ol == 0 {
        dx.fill(0.0);
        return Ok(());
    }
    dx.par_chunks_mut(il)
        .zip(dy.par_chunks(ol))
        .for_each(|(dxi, dyi)| avg_back_image_simd(s, dyi, dxi));
    Ok(())
}

/// Defines `$name`, which runs `$inner` compiled for the widest vector
/// extension the CPU reports at run time (AVX-512F, else AVX2, else the
/// baseline): the channel-innermost loops autovectorize to that width. The
/// per-element operations and their order are the same on every path, so
/// the results are identical.
macro_rules! multiversion {
    ($name:ident, $inner:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn mid($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F was detected on this CPU.
                    return unsafe { wide($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 was detected on this CPU.
                    return unsafe { mid($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

multiversion!(max_image_simd, max_image, (s: &Pool2dShape, xi: &[f32], yi: &mut [f32], ai: Option<&mut [u32]>, oy0: usize));
multiversion!(avg_image_simd, avg_image, (s: &Pool2dShape, xi: &[f32], yi: &mut [f32], oy0: usize));
multiversion!(avg_back_image_simd, avg_back_image, (s: &Pool2dShape, dyi: &[f32], dxi: &mut [f32]));

/// Max pooling of output rows `oy0 ..` of one image (see
/// [`max_pool2d_forward`]): `yi` and `ai` hold those rows.
#[inline(always)]
fn max_image(s: &Pool2dShape, xi: &[f32], yi: &mut [f32], mut ai: Option<&mut [u32]>, oy0: usize) {
    let c = s.channels;
    let rows = yi.len() / (s.out_w * c).max(1);
    for oy in oy0..oy0 + rows {
        for ox in 0..s.out_w {
            let o = ((oy - oy0) * s.out_w + ox) * c;
            let yo = &mut yi[o..o + c];
            let (y0, y1, x0, x1) = s.window(oy, ox);
            if y0 == y1 || x0 == x1 {
                yo.fill(0.0);
                if let Some(ai) = ai.as_deref_mut() {
                    ai[o..o + c].fill(NO_ARGMAX);
                }
                continue;
            }
            // Start from the window's first in-image pixel; later pixels
            // replace it only when strictly greater (first max wins),
            // with branch-free selects.
            let first = (y0 * s.in_w + x0) * c;
            yo.copy_from_slice(&xi[first..first + c]);
            match ai.as_deref_mut() {
                Some(ai) => {
                    let ao = &mut ai[o..o + c];
                    ao.fill((y0 * s.in_w + x0) as u32);
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let pix = iy * s.in_w + ix;
                            if pix * c == first {
                                continue;
                            }
                            let xs = &xi[pix * c..pix * c + c];
                            let pix = pix as u32;
                            // Arithmetic selects so the loop vectorizes
                            // (no per-lane conditional stores).
                            for ((m, a), &v) in yo.iter_mut().zip(ao.iter_mut()).zip(xs) {
                                let mask = 0u32.wrapping_sub((v > *m) as u32);
                                *a = (*a & !mask) | (pix & mask);
                                *m = m.max(v);
                            }
                        }
                    }
                }
                None => {
                    let win = (y0, y1, x0, x1);
                    let mut cb = 0;
                    while cb + 64 <= c {
                        max_block::<64>(s, xi, win, cb, yo);
                        cb += 64;
                    }
                    while cb + 16 <= c {
                        max_block::<16>(s, xi, win, cb, yo);
                        cb += 16;
                    }
                    while cb < c {
                        max_block::<1>(s, xi, win, cb, yo);
                        cb += 1;
                    }
                }
            }
        }
    }
}

/// Channels `cb .. cb + B` of one max-pooling output `yo` (holding the
/// window's first pixel on entry) over the window `(y0, y1, x0, x1)`: the
/// running maximum stays in registers instead of going through `yo` once per
/// window pixel (criterion, one thread: Xception's 147x147x128 3x3 stride-2
/// pool 692 -> 582 µs, ResNet-50's 112x112x64 232 -> 204 µs). Same pixels in
/// the same order as the argmax path, so the same bits.
#[inline(always)]
fn max_block<const B: usize>(
    s: &Pool2dShape,
    xi: &[f32],
    (y0, y1, x0, x1): (usize, usize, usize, usize),
    cb: usize,
    yo: &mut [f32],
) {
    let c = s.channels;
    let m: &mut [f32; B] = (&mut yo[cb..cb + B]).try_into().expect("block length");
    let mut acc = *m;
    for iy in y0..y1 {
        for ix in x0..x1 {
            let base = (iy * s.in_w + ix) * c + cb;
            let v: &[f32; B] = xi[base..base + B].try_into().expect("block length");
            for i in 0..B {
                acc[i] = acc[i].max(v[i]);
            }
        }
    }
    *m = acc;
}

/// Average pooling of output rows `oy0 ..` of one image (see
/// [`avg_pool2d_forward`]): `yi` holds those rows.
#[inline(always)]
fn avg_image(s: &Pool2dShape, xi: &[f32], yi: &mut [f32], oy0: usize) {
    let c = s.channels;
    let rows = yi.len() / (s.out_w * c).max(1);
    for oy in oy0..oy0 + rows {
        for ox in 0..s.out_w {
            let o = ((oy - oy0) * s.out_w + ox) * c;
            let yo = &mut yi[o..o + c];
            yo.fill(0.0);
            let (y0, y1, x0, x1) = s.window(oy, ox);
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let base = (iy * s.in_w + ix) * c;
                    for (m, &v) in yo.iter_mut().zip(&xi[base..base + c]) {
                        *m += v;
                    }
                }
            }
            let count = (y1 - y0) * (x1 - x0);
            if count > 0 {
                let inv = 1.0 / count as f32;
                yo.iter_mut().for_each(|m| *m *= inv);
            }
        }
    }
}

/// Average pooling backward of one image (see [`avg_pool2d_backward`]).
#[inline(always)]
fn avg_back_image(s: &Pool2dShape, dyi: &[f32], dxi: &mut [f32]) {
    let c = s.channels;
    dxi.fill(0.0);
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let o = (oy * s.out_w + ox) * c;
            let (y0, y1, x0, x1) = s.window(oy, ox);
            let count = (y1 - y0) * (x1 - x0);
            if count == 0 {
                continue;
            }
            let inv = 1.0 / count as f32;
            let g = &dyi[o..o + c];
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let base = (iy * s.in_w + ix) * c;
                    for (d, &gv) in dxi[base..base + c].iter_mut().zip(g) {
                        *d += gv * inv;
                    }
                }
            }
        }
    }
}
