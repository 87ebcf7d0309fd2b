//! 2-D convolution (NHWC input, HWIO kernel) by im2col + GEMM.
//!
//! Forward: the output `[batch * out_h * out_w, filters]` is computed in fixed
//! blocks of output pixels (rows). For each block, in parallel: im2col the
//! block's input patches into a per-thread buffer `[rows, kh*kw*cin]`, multiply
//! by the kernel viewed as `[kh*kw*cin, filters]` (single-threaded GEMM), then
//! the fused epilogue adds the bias and applies the activation to the block
//! while it is still in cache.
//!
//! Backward (`dz = dy ⊙ act'(y)`, computed from the saved output `y`):
//! - `d kernel = Σ_blocks im2col(x)ᵀ × dz` and `d bias = Σ_rows dz`, as partial
//!   sums over fixed row groups added in group order (deterministic);
//! - `d x = col2im(dz × kernelᵀ)`, parallel over groups of whole images so the
//!   scatter-add of overlapping patches never races.
//!
//! Padding is explicit zero padding (TensorFlow's `same` rule already applied
//! by the compiler): padded positions contribute zeros to the GEMM.
//!
//! Dilation (Keras `dilation_rate`, "atrous" convolution): kernel tap
//! `(ky, kx)` of output pixel `(oy, ox)` reads input pixel
//! `(oy * stride_h + ky * dilation_h - pad_top, ox * stride_w + kx * dilation_w - pad_left)`,
//! so the effective kernel extent is `dilation * (kernel - 1) + 1`.
//!
//! The same im2col / col2im machinery also runs the transposed convolution
//! ([`super::conv_transpose`]), whose forward pass is this module's
//! input-gradient pass and whose backward pass is this module's forward and
//! kernel-gradient passes.

use super::activation::{
    activation_backward_rows, add_rows_into, bias_activation_rows, bias_residual_activation_rows,
};
use super::gemm::{
    matmul, matmul_rhs, matmul_rhs_epilogue, matmul_rhs_par, Epilogue, EpilogueActivation, MatRef,
    Parallelism, Rhs,
};
use super::scratch::{with_partials, with_scratch};
use super::winograd::{
    self, winograd_forward_prepared, winograd_forward_transformed, PreparedWinograd,
};
use super::{check_len, window_output_size, KernelError};
use cnnc_compiler::graph::ir::Conv2dAttrs;
use cnnc_compiler::model::Activation;
use rayon::prelude::*;

/// Target number of floats in one im2col block (rows × patch length).
const COL_BLOCK_FLOATS: usize = 96 * 1024;
/// Target im2col floats per weight-gradient block: larger than forward
/// blocks, since each block re-reads and re-writes the whole `[patch, filters]`
/// partial gradient.
const DW_BLOCK_FLOATS: usize = 384 * 1024;
/// Fewest floats (im2col rows x patch, or output rows x filters) for which a
/// block's im2col copy or epilogue is split over the threads at batch 1.
const SPLIT_MIN_FLOATS: usize = 16 * 1024;
/// Bounds on the number of output pixels in one block.
const MIN_BLOCK_ROWS: usize = 56;
const MAX_BLOCK_ROWS: usize = 504;
/// Blocks are whole multiples of the GEMM micro-kernel's row count (14, see
/// `sgemm::MR`): a partial panel is computed zero-padded, so e.g. an 85-row
/// block would waste 13 of 98 rows of work.
const ROW_QUANTUM: usize = 14;
/// Minimum rows per weight-gradient partial sum, and maximum number of partials.
const MIN_GROUP_ROWS: usize = 1024;
const MAX_GROUPS: usize = 16;

/// Geometry of a batched 2-D convolution.
///
/// Input `[batch, in_h, in_w, in_channels]`, kernel
/// `[kernel_h, kernel_w, in_channels, filters]`, output
/// `[batch, out_h, out_w, filters]` with
/// `out = floor((in + pad_before + pad_after - (dilation * (kernel - 1) + 1)) / stride) + 1`
/// (TensorFlow / ONNX with explicit pads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_channels: usize,
    pub filters: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    /// Spacing of the kernel taps (1 = dense kernel).
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Conv2dShape {
    /// Geometry for `batch` inputs of `in_h × in_w × attrs.in_channels`,
    /// with kernel taps `attrs.dilation_rate` pixels apart (Keras `Conv2D`;
    /// `attrs.pads` are the explicit pads for the dilated kernel extent).
    pub fn new(
        attrs: &Conv2dAttrs,
        batch: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Conv2dShape, KernelError> {
        let [kh, kw] = attrs.kernel_size;
        let [sh, sw] = attrs.strides;
        let [dh, dw] = attrs.dilation_rate;
        let p = attrs.pads;
        let out_h = window_output_size(in_h, effective_kernel(kh, dh)?, sh, p.top, p.bottom)?;
        let out_w = window_output_size(in_w, effective_kernel(kw, dw)?, sw, p.left, p.right)?;
        if attrs.in_channels == 0 || attrs.filters == 0 {
            return Err(KernelError::Geometry(
                "in_channels and filters must be positive".into(),
            ));
        }
        Ok(Conv2dShape {
            batch,
            in_h,
            in_w,
            in_channels: attrs.in_channels,
            filters: attrs.filters,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: sh,
            stride_w: sw,
            dilation_h: dh,
            dilation_w: dw,
            pad_top: p.top,
            pad_left: p.left,
            out_h,
            out_w,
        })
    }

    /// `batch * in_h * in_w * in_channels`.
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }
    /// Values in one input image, `in_h * in_w * in_channels`.
    pub fn image_len(&self) -> usize {
        self.in_h * self.in_w * self.in_channels
    }
    /// `batch * out_h * out_w * filters`.
    pub fn output_len(&self) -> usize {
        self.rows() * self.filters
    }
    /// `kernel_h * kernel_w * in_channels * filters`.
    pub fn kernel_len(&self) -> usize {
        self.patch_len() * self.filters
    }
    /// Length of one im2col row, `kernel_h * kernel_w * in_channels`.
    pub fn patch_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.in_channels
    }
    /// Output pixels per image, `out_h * out_w`.
    pub fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }
    /// Total output pixels (GEMM rows), `batch * out_h * out_w`.
    pub fn rows(&self) -> usize {
        self.batch * self.out_pixels()
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.rows() * self.patch_len() * self.filters
    }

    /// Effective kernel height `dilation_h * (kernel_h - 1) + 1`.
    pub fn kernel_extent_h(&self) -> usize {
        self.dilation_h * (self.kernel_h.max(1) - 1) + 1
    }
    /// Effective kernel width `dilation_w * (kernel_w - 1) + 1`.
    pub fn kernel_extent_w(&self) -> usize {
        self.dilation_w * (self.kernel_w.max(1) - 1) + 1
    }

    /// The dense layer `[rows, in_features] × [in_features, units]` as the
    /// 1×1 convolution of `rows` images of 1×1 pixel.
    pub(crate) fn dense(rows: usize, in_features: usize, units: usize) -> Conv2dShape {
        Conv2dShape {
            batch: rows,
            in_h: 1,
            in_w: 1,
            in_channels: in_features,
            filters: units,
            kernel_h: 1,
            kernel_w: 1,
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 0,
            pad_left: 0,
            out_h: 1,
            out_w: 1,
        }
    }

    /// A 1×1, stride-1, unpadded conv: the input rows are already the im2col rows.
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }

    /// Output pixels per im2col/GEMM block (independent of the thread count).
    fn block_rows(&self) -> usize {
        let rows =
            (COL_BLOCK_FLOATS / self.patch_len().max(1)).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS);
        rows / ROW_QUANTUM * ROW_QUANTUM
    }

    /// Whole images per input-gradient task: about one block of rows, and if
    /// possible a multiple of [`ROW_QUANTUM`] rows (e.g. 2 images of 7×7).
    fn images_per_task(&self) -> usize {
        let opix = self.out_pixels().max(1);
        let block = self.block_rows().max(1);
        let imgs = (block / opix).max(1);
        // Smallest image count whose rows are a whole number of panels
        // (always found: 14 images qualify).
        let unit = (1..=ROW_QUANTUM)
            .find(|m| (m * opix).is_multiple_of(ROW_QUANTUM))
            .unwrap_or(1);
        let rounded = (imgs / unit).max(1) * unit;
        if rounded * opix <= 2 * block.max(opix) {
            rounded
        } else {
            imgs
        }
    }

    /// Output pixels per weight-gradient block (independent of the thread count).
    fn dw_block_rows(&self) -> usize {
        let rows =
            (DW_BLOCK_FLOATS / self.patch_len().max(1)).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS);
        rows / ROW_QUANTUM * ROW_QUANTUM
    }

    /// Rows per weight-gradient partial sum (independent of the thread count).
    fn group_rows(&self) -> usize {
        let rows = self.rows();
        let mut groups = 1;
        while groups * 2 <= MAX_GROUPS && rows / (groups * 2) >= MIN_GROUP_ROWS {
            groups *= 2;
        }
        rows.div_ceil(groups).max(1)
    }
}

/// `dst.copy_from_slice(src)`, with short lengths (small channel counts, e.g.
/// a 7-wide single-channel kernel row) copied by fixed-size moves instead of
/// a `memcpy` call per run.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => {
                    let s: &[f32; $n] = src.try_into().expect("equal lengths");
                    let d: &mut [f32; $n] = dst.try_into().expect("equal lengths");
                    *d = *s;
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

/// Effective (dilated) kernel size `dilation * (kernel - 1) + 1` along one
/// axis (Keras `conv_utils.conv_output_length`); both must be positive.
pub fn effective_kernel(kernel: usize, dilation: usize) -> Result<usize, KernelError> {
    if kernel == 0 || dilation == 0 {
        return Err(KernelError::Geometry(format!(
            "kernel size {kernel} and dilation rate {dilation} must be positive"
        )));
    }
    Ok(dilation * (kernel - 1) + 1)
}

/// Writes the im2col rows of output pixels `r0 .. r0 + rows` (global index
/// `(n * out_h + oy) * out_w + ox`) into `col` (`[rows, patch_len]`, patch in
/// `(ky, kx, c)` order to match the HWIO kernel). Out-of-image taps are zero.
///
/// The rows are taken a run of one output line at a time, and each kernel
/// row `ky` of the run at once: the input line and the columns whose taps
/// all lie inside it are worked out once per run, and those columns' `kx, c`
/// values (one contiguous run of `kernel_w * in_channels` floats when the
/// dilation is 1) are copied by a loop of fixed-size moves. Xception's stem
/// (3x3, stride 2, 3 channels: 27 floats per row in runs of 9) copied
/// pixel by pixel took about as long as its GEMM.
fn im2col(s: &Conv2dShape, x: &[f32], r0: usize, rows: usize, col: &mut [f32]) {
    let c = s.in_channels;
    let k = s.patch_len();
    let kwc = s.kernel_w * c;
    let opix = s.out_pixels();
    let (sw, dh, dw) = (s.stride_w, s.dilation_h, s.dilation_w);
    let extent_w = s.kernel_extent_w();
    // Interior columns `lo .. hi`: `ox * sw >= pad_left` and
    // `ox * sw - pad_left + extent_w <= in_w`.
    let lo = s.pad_left.div_ceil(sw).min(s.out_w);
    let hi = if s.in_w + s.pad_left >= extent_w {
        ((s.in_w + s.pad_left - extent_w) / sw + 1).min(s.out_w)
    } else {
        0
    }
    .max(lo);
    let (end, mut r) = (r0 + rows, r0);
    while r < end {
        let (n, rem) = (r / opix, r % opix);
        let (oy, ox0) = (rem / s.out_w, rem % s.out_w);
        let ox1 = (ox0 + (end - r)).min(s.out_w);
        let img = &x[n * s.image_len()..(n + 1) * s.image_len()];
        let run = &mut col[(r - r0) * k..(r - r0 + ox1 - ox0) * k];
        let (lo, hi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
        for ky in 0..s.kernel_h {
            let dst = |ox: usize| (ox - ox0) * k + ky * kwc;
            let iy = (oy * s.stride_h + ky * dh) as isize - s.pad_top as isize;
            if iy < 0 || iy as usize >= s.in_h {
                for ox in ox0..ox1 {
                    run[dst(ox)..dst(ox) + kwc].fill(0.0);
                }
                continue;
            }
            let line = &img[iy as usize * s.in_w * c..(iy as usize + 1) * s.in_w * c];
            // Edge columns: tap by tap, zero outside the line.
            let edge = |run: &mut [f32], ox: usize| {
                let ix0 = (ox * sw) as isize - s.pad_left as isize;
                for (kx, d) in run[dst(ox)..dst(ox) + kwc].chunks_exact_mut(c).enumerate() {
                    let ix = ix0 + (kx * dw) as isize;
                    if ix < 0 || ix as usize >= s.in_w {
                        d.fill(0.0);
                    } else {
                        copy_run(d, &line[ix as usize * c..(ix as usize + 1) * c]);
                    }
                }
            };
            for ox in ox0..lo {
                edge(run, ox);
            }
            if dw == 1 && hi > lo {
                let src0 = (lo * sw - s.pad_left) * c;
                copy_runs(&mut run[dst(lo)..], k, &line[src0..], sw * c, kwc, hi - lo);
            } else {
                for ox in lo..hi {
                    let ix0 = ox * sw - s.pad_left;
                    for (kx, d) in run[dst(ox)..dst(ox) + kwc].chunks_exact_mut(c).enumerate() {
                        let ix = ix0 + kx * dw;
                        copy_run(d, &line[ix * c..(ix + 1) * c]);
                    }
                }
            }
            for ox in hi..ox1 {
                edge(run, ox);
            }
        }
        r += ox1 - ox0;
    }
}

/// Copies `count` runs of `len` floats: run `i` from `src[i * src_step..]`
/// to `dst[i * dst_step..]`. The run lengths listed below (the kernel rows
/// of small channel counts) are moved as fixed-size arrays, with no
/// `memcpy` call per run; other lengths are copied as slices.
#[inline(always)]
fn copy_runs(
    dst: &mut [f32],
    dst_step: usize,
    src: &[f32],
    src_step: usize,
    len: usize,
    count: usize,
) {
    if count == 0 {
        return;
    }
    assert!((count - 1) * dst_step + len <= dst.len() && (count - 1) * src_step + len <= src.len());
    macro_rules! fixed {
        ($($n:literal)*) => {
            match len {
                $($n => {
                    for i in 0..count {
                        // SAFETY: run `i` lies inside both slices (asserted
                        // for the last, and the runs step forward).
                        unsafe {
                            let sp = src.as_ptr().add(i * src_step) as *const [f32; $n];
                            let dp = dst.as_mut_ptr().add(i * dst_step) as *mut [f32; $n];
                            dp.write_unaligned(sp.read_unaligned());
                        }
                    }
                })*
                _ => {
                    for i in 0..count {
                        dst[i * dst_step..i * dst_step + len]
                            .copy_from_slice(&src[i * src_step..i * src_step + len]);
                    }
                }
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 18 20 21 24 27 28 30 32);
}

/// `dst += src` element-wise.
#[inline(always)]
fn add_run(dst: &mut [f32], src: &[f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += v;
    }
}

/// Adds the im2col-layout gradient `col` (`[rows, patch_len]`, rows `r0..`)
/// back into the input gradient `dx`, whose first image is `n0`
/// (the inverse scatter of [`im2col`]).
fn col2im_add(s: &Conv2dShape, col: &[f32], r0: usize, rows: usize, dx: &mut [f32], n0: usize) {
    let c = s.in_channels;
    let k = s.patch_len();
    let kwc = s.kernel_w * c;
    let opix = s.out_pixels();
    let (dh, dw) = (s.dilation_h, s.dilation_w);
    let extent_w = s.kernel_extent_w();
    let (mut n, rem) = (r0 / opix, r0 % opix);
    let (mut oy, mut ox) = (rem / s.out_w, rem % s.out_w);
    let il = s.image_len();
    for row in col[..rows * k].chunks_exact(k) {
        let img = &mut dx[(n - n0) * il..(n - n0 + 1) * il];
        let ix0 = (ox * s.stride_w) as isize - s.pad_left as isize;
        let row_inside = ix0 >= 0 && ix0 as usize + extent_w <= s.in_w;
        for (ky, src) in row.chunks_exact(kwc).enumerate() {
            let iy = (oy * s.stride_h + ky * dh) as isize - s.pad_top as isize;
            if iy < 0 || iy as usize >= s.in_h {
                continue;
            }
            let line = &mut img[iy as usize * s.in_w * c..(iy as usize + 1) * s.in_w * c];
            if row_inside && dw == 1 {
                let start = ix0 as usize * c;
                add_run(&mut line[start..start + kwc], src);
            } else if row_inside {
                for (kx, sv) in src.chunks_exact(c).enumerate() {
                    let ix = ix0 as usize + kx * dw;
                    add_run(&mut line[ix * c..(ix + 1) * c], sv);
                }
            } else {
                for (kx, sv) in src.chunks_exact(c).enumerate() {
                    let ix = ix0 + (kx * dw) as isize;
                    if ix >= 0 && (ix as usize) < s.in_w {
                        add_run(&mut line[ix as usize * c..(ix as usize + 1) * c], sv);
                    }
                }
            }
        }
        ox += 1;
        if ox == s.out_w {
            ox = 0;
            oy += 1;
            if oy == s.out_h {
                oy = 0;
                n += 1;
            }
        }
    }
}

/// Fused convolution forward: `y = act(conv(x, kernel) + bias)`.
///
/// `x`: `[batch, in_h, in_w, in_channels]`; `kernel`:
/// `[kernel_h, kernel_w, in_channels, filters]`; `bias`: `[filters]`;
/// `y`: `[batch, out_h, out_w, filters]` (overwritten). Bias and activation
/// are applied per row block right after the block's GEMM.
pub fn conv2d_forward(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    fused_conv2d_forward(s, x, ConvKernel::Hwio(kernel), bias, None, act, y)
}

/// The kernel of a convolution as a forward pass reads it.
#[derive(Clone, Copy)]
pub enum ConvKernel<'a> {
    /// Keras layout `[kernel_h, kernel_w, in_channels, filters]` (packed for
    /// the GEMM on every call).
    Hwio(&'a [f32]),
    /// Prepared once (e.g. when a model is loaded for inference): see
    /// [`PreparedKernel`].
    Prepared(&'a PreparedKernel),
}

/// A conv or dense kernel prepared once for the forward pass (by
/// [`crate::params::InferenceParams::prepare`]), in the form of the
/// algorithm chosen for the layer.
pub enum PreparedKernel {
    /// im2col + GEMM: the matrix `[kernel_h * kernel_w * in_channels,
    /// filters]` viewed from the HWIO kernel (a dense kernel:
    /// `[in_features, units]`), prepared for the GEMM (see
    /// [`super::gemm::Rhs`]).
    Gemm(Rhs<'static>),
    /// Winograd F(2x2, 3x3) for a 3x3 stride-1 undilated convolution (see
    /// [`winograd::applies`] and [`prepared_winograd_applies`]).
    Winograd(PreparedWinograd),
}

impl std::fmt::Debug for PreparedKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreparedKernel::Gemm(rhs) => {
                let (k, n) = rhs_dims(rhs);
                write!(f, "Gemm([{k}, {n}])")
            }
            PreparedKernel::Winograd(w) => write!(f, "{w:?}"),
        }
    }
}

impl PreparedKernel {
    /// Bytes held (panel padding included).
    pub fn bytes(&self) -> usize {
        match self {
            PreparedKernel::Gemm(Rhs::Plain(b)) => b.rows * b.cols * 4,
            #[cfg(target_arch = "x86_64")]
            PreparedKernel::Gemm(Rhs::Packed(p)) => {
                let nr = super::sgemm::NR;
                p.k() * p.n().div_ceil(nr) * nr * 4
            }
            PreparedKernel::Winograd(w) => w.bytes(),
        }
    }
}

/// `(rows, cols)` of a prepared right-hand side.
pub(crate) fn rhs_dims(rhs: &Rhs<'_>) -> (usize, usize) {
    match rhs {
        Rhs::Plain(b) => (b.rows, b.cols),
        #[cfg(target_arch = "x86_64")]
        Rhs::Packed(p) => (p.k(), p.n()),
    }
}

/// Fused convolution forward with an optional residual input:
/// `y = act(conv(x, kernel) + bias + residual)` (ONNX Runtime's
/// `FusedConv` with `Sum`; ResNet's `conv -> add -> relu` after batch-norm
/// folding). The bias, the residual and the activation are applied to each
/// block of output rows right after its GEMM, while it is in cache.
///
/// `x`: `[batch, in_h, in_w, in_channels]`; `kernel`: see [`ConvKernel`];
/// `bias`: `[filters]`; `residual` and `y`: `[batch, out_h, out_w, filters]`
/// (`y` overwritten; it must not alias `residual`).
pub fn fused_conv2d_forward(
    s: &Conv2dShape,
    x: &[f32],
    kernel: ConvKernel<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("conv2d input", s.input_len(), x.len())?;
    check_len("conv2d output", s.output_len(), y.len())?;
    if let Some(b) = bias {
        check_len("conv2d bias", s.filters, b.len())?;
    }
    if let Some(r) = residual {
        check_len("conv2d residual", s.output_len(), r.len())?;
    }
    let (k, f) = (s.patch_len(), s.filters);
    // Bias, residual and activation on each finished run of output rows
    // (`r0`: its first row), while it is in cache.
    let epilogue = |r0: usize, yblk: &mut [f32]| match residual {
        None => bias_activation_rows(yblk, f, bias, act),
        Some(r) => {
            let rb = &r[r0 * f..r0 * f + yblk.len()];
            bias_residual_activation_rows(yblk, f, bias, rb, act)
        }
    };
    let owned;
    let w = match kernel {
        ConvKernel::Hwio(kernel) if use_winograd(s) => {
            check_len("conv2d kernel", s.kernel_len(), kernel.len())?;
            // The transformed kernel lives in the calling thread's second
            // scratch buffer (the tasks use the first).
            with_partials(16 * s.in_channels * f, |u| {
                winograd::transform_kernel_into(kernel, s.in_channels, f, u);
                winograd_forward_transformed(s, x, u, y, epilogue)
            });
            return Ok(());
        }
        ConvKernel::Hwio(kernel) => {
            check_len("conv2d kernel", s.kernel_len(), kernel.len())?;
            owned = Rhs::new(MatRef::row_major(kernel, k, f));
            &owned
        }
        ConvKernel::Prepared(PreparedKernel::Gemm(rhs)) => {
            let (rows, cols) = rhs_dims(rhs);
            if (rows, cols) != (k, f) {
                return Err(KernelError::Geometry(format!(
                    "prepared conv2d kernel is [{rows}, {cols}], expected [{k}, {f}]"
                )));
            }
            rhs
        }
        ConvKernel::Prepared(PreparedKernel::Winograd(wk)) => {
            let (c, kf) = (wk.in_channels(), wk.filters());
            if !winograd::applies(s) || (c, kf) != (s.in_channels, f) {
                return Err(KernelError::Geometry(format!(
                    "a Winograd F(2x2, 3x3) kernel ({c} -> {kf} channels) cannot run the \
                     {}x{} stride-{}x{} convolution of {} -> {f} channels",
                    s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.in_channels
                )));
            }
            winograd_forward_prepared(s, x, wk, y, epilogue);
            return Ok(());
        }
    };
    let tile = EpilogueActivation::from_activation(act).map(|activation| TileEpilogue {
        bias,
        residual,
        activation,
    });
    forward_blocks_rhs(s, x, w, y, tile, epilogue);
    Ok(())
}

/// `y = conv(x, kernel)` by im2col + GEMM over fixed blocks of output rows
/// (parallel), calling `epilogue` on each finished block `[rows, filters]`.
/// Lengths must already be checked.
pub(crate) fn forward_blocks(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &[f32],
    y: &mut [f32],
    epilogue: impl Fn(&mut [f32]) + Sync,
) {
    let (k, f) = (s.patch_len(), s.filters);
    // The kernel is packed once and shared by every block.
    let w = Rhs::new(MatRef::row_major(kernel, k, f));
    forward_blocks_rhs(s, x, &w, y, None, |_, yblk| epilogue(yblk));
}

/// Rows per forward block on `threads` threads. A block's im2col copy is
/// bounded by [`Conv2dShape::block_rows`]. A pointwise conv reads its input
/// in place, so its blocks are as large as `MAX_BLOCK_ROWS` allows, in
/// nearly equal parts of whole tiles: every block reads the whole kernel,
/// and Xception's 10x10 layers at batch 1 (100 rows, kernels of 6 and 12
/// MB) were 2 blocks (84 + 16 and 56 + 44 rows), each reading the kernel
/// from memory (block14_sepconv1 / 2 on 1 thread: 2.48 / 4.93 -> 2.29 /
/// 4.63 ms). That size is then adjusted so that the blocks share out
/// evenly over the threads:
/// - when that leaves fewer than two blocks per thread, `2 * threads` equal
///   blocks if they have at least `MIN_BLOCK_ROWS` rows (a batch-1 28x28
///   map: 784 rows are 4 blocks of 196, one hand-off per layer, instead of 2
///   blocks whose products are each split over the threads);
/// - when there are fewer than 16 blocks per thread and their count is not
///   a multiple of `threads`, that count rounded up to one, in equal blocks
///   (11 blocks on 2 threads left one thread with 6 and the other with 5;
///   12 equal blocks are shorter, and even). With more blocks the
///   imbalance is small and blocks of whole tiles measured faster
///   (Fashion-MNIST training at batch 128, 2-5%).
///
/// Blocks need not be whole micro-kernel tiles: a block's last, shorter
/// tile costs about its share of rows. Each output row is computed the same
/// way whatever the blocking, so the bits do not depend on it.
fn forward_block_rows(s: &Conv2dShape, threads: usize) -> usize {
    let block = if s.is_pointwise() {
        // MAX_BLOCK_ROWS is whole tiles, so this never exceeds it.
        let rows = s.rows().max(1);
        rows.div_ceil(rows.div_ceil(MAX_BLOCK_ROWS))
            .next_multiple_of(ROW_QUANTUM)
    } else {
        s.block_rows()
    };
    let rows = s.rows();
    if threads <= 1 || rows == 0 {
        return block;
    }
    let blocks = rows.div_ceil(block);
    let want = 2 * threads;
    if blocks < want {
        let smaller = rows.div_ceil(want);
        return if smaller >= MIN_BLOCK_ROWS {
            smaller
        } else {
            block
        };
    }
    if blocks >= 16 * threads || blocks.is_multiple_of(threads) {
        // Whole tiles; an odd last block costs little among many.
        return block;
    }
    rows.div_ceil(blocks.next_multiple_of(threads))
}

/// Bias, residual and activation applied by the GEMM itself as it stores
/// each tile (`gemm::Epilogue`), for the activations it has: the same bits
/// as the row epilogue (`(v + bias) + residual`, then `max(0)` /
/// `clamp(0, 6)`), without a second pass over the output.
#[derive(Clone, Copy)]
struct TileEpilogue<'a> {
    bias: Option<&'a [f32]>,
    /// The whole output's residual, `[rows, filters]`.
    residual: Option<&'a [f32]>,
    activation: EpilogueActivation,
}

impl<'a> TileEpilogue<'a> {
    /// The GEMM epilogue of the output rows from `r0` on.
    fn at(&self, r0: usize, f: usize) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias,
            residual: self.residual.map(|r| &r[r0 * f..]),
            activation: self.activation,
        }
    }
}

/// [`forward_blocks`] with a prepared kernel `w` (`[patch_len, filters]`);
/// `epilogue` gets each block's first output row and the block, unless
/// `tile` is given: then the GEMM applies that epilogue and `epilogue` is
/// not called.
fn forward_blocks_rhs(
    s: &Conv2dShape,
    x: &[f32],
    w: &Rhs<'_>,
    y: &mut [f32],
    tile: Option<TileEpilogue<'_>>,
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (k, f) = (s.patch_len(), s.filters);
    let threads = rayon::current_num_threads();
    let block = forward_block_rows(s, threads);
    if f == 0 || y.is_empty() {
        return;
    }
    let epi_at = |r0: usize| tile.map(|t| t.at(r0, f)).unwrap_or_default();
    // Few blocks (batch 1, late stages: ResNet-50's 7x7 maps are one block)
    // would leave cores idle: then run the blocks one after the other, each
    // product split over the pool by rows and column panels (same bits).
    let blocks = y.len().div_ceil(block * f);
    if blocks < 2 * threads && threads > 1 {
        for (bi, yblk) in y.chunks_mut(block * f).enumerate() {
            let r0 = bi * block;
            let rows = yblk.len() / f;
            let epi = epi_at(r0);
            // The im2col copy and a row epilogue are split over the pool too
            // (by rows; element-wise, so the same bits), unless too small to
            // pay for the hand-off.
            let sub = if rows * f.max(k) >= SPLIT_MIN_FLOATS {
                rows.div_ceil(threads).max(1)
            } else {
                rows.max(1)
            };
            if s.is_pointwise() {
                let a = MatRef::row_major(&x[r0 * k..(r0 + rows) * k], rows, k);
                matmul_rhs_par(a, w, yblk, f, false, &epi);
            } else {
                with_scratch(rows * k, |col| {
                    col.par_chunks_mut(sub * k)
                        .enumerate()
                        .for_each(|(j, c)| im2col(s, x, r0 + j * sub, c.len() / k, c));
                    let a = MatRef::row_major(col, rows, k);
                    matmul_rhs_par(a, w, yblk, f, false, &epi);
                });
            }
            if tile.is_none() {
                yblk.par_chunks_mut(sub * f)
                    .enumerate()
                    .for_each(|(j, c)| epilogue(r0 + j * sub, c));
            }
        }
        return;
    }
    y.par_chunks_mut(block * f)
        .enumerate()
        .for_each(|(bi, yblk)| {
            let r0 = bi * block;
            let rows = yblk.len() / f;
            let epi = epi_at(r0);
            if s.is_pointwise() {
                let a = MatRef::row_major(&x[r0 * k..(r0 + rows) * k], rows, k);
                matmul_rhs_epilogue(a, w, yblk, f, false, &epi);
            } else {
                with_scratch(rows * k, |col| {
                    im2col(s, x, r0, rows, col);
                    let a = MatRef::row_major(col, rows, k);
                    matmul_rhs_epilogue(a, w, yblk, f, false, &epi);
                });
            }
            if tile.is_none() {
                epilogue(r0, yblk);
            }
        });
}

/// Dense forward `y = act(x × kernel + bias)` with a prepared kernel
/// (`[in_features, units]`, e.g. packed once at load): the dense layer is
/// the 1×1 convolution of `rows` 1×1 images, so it shares the conv's row
/// blocks, GEMM and fused epilogue. `x` `[rows, in_features]`, `y`
/// `[rows, units]` (overwritten).
pub fn matmul_forward_prepared(
    rows: usize,
    x: &[f32],
    kernel: &PreparedKernel,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let PreparedKernel::Gemm(rhs) = kernel else {
        return Err(KernelError::Geometry(
            "a dense layer cannot run on a Winograd conv kernel".into(),
        ));
    };
    let (in_features, units) = rhs_dims(rhs);
    let s = Conv2dShape::dense(rows, in_features, units);
    check_len("matmul input", rows * in_features, x.len())?;
    fused_conv2d_forward(&s, x, ConvKernel::Prepared(kernel), bias, None, act, y)
}

/// Convolution backward for `y = act(conv(x, kernel) + bias)`.
///
/// `y` is the saved forward output and `dy` = d loss / d y, both
/// `[batch, out_h, out_w, filters]`. On return `dy` holds
/// `dz = dy ⊙ act'(y)` (d loss / d pre-activation). Each requested gradient is
/// overwritten: `dx` `[batch, in_h, in_w, in_channels]`, `dkernel`
/// `[kernel_h, kernel_w, in_channels, filters]`, `dbias` `[filters]`.
///
/// `dkernel` is `im2col(x)ᵀ × dz`, or for a 3x3 stride-1 conv with outputs of
/// at least 12x12 the same by Winograd F(2x2, 3x3)
/// ([`winograd::kernel_gradient`]); `dx` likewise (a Winograd convolution of
/// `dz` with the rotated kernel).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &[f32],
    y: &[f32],
    act: Activation,
    dy: &mut [f32],
    dx: Option<&mut [f32]>,
    dkernel: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    check_len("conv2d input", s.input_len(), x.len())?;
    check_len("conv2d kernel", s.kernel_len(), kernel.len())?;
    check_len("conv2d output", s.output_len(), y.len())?;
    check_len("conv2d output gradient", s.output_len(), dy.len())?;
    if let Some(d) = dx.as_deref() {
        check_len("conv2d input gradient", s.input_len(), d.len())?;
    }
    if let Some(d) = dkernel.as_deref() {
        check_len("conv2d kernel gradient", s.kernel_len(), d.len())?;
    }
    if let Some(d) = dbias.as_deref() {
        check_len("conv2d bias gradient", s.filters, d.len())?;
    }
    let (k, f) = (s.patch_len(), s.filters);

    // A large 3x3 stride-1 conv's kernel gradient is computed by Winograd
    // after pass 1 (it needs whole images, not row groups).
    let (dkernel, dkernel_winograd) = if use_winograd(s) {
        (None, dkernel)
    } else {
        (dkernel, None)
    };

    // Pass 1: dz in place, plus partial d kernel / d bias per fixed row group.
    let want_dk = dkernel.is_some();
    let want_db = dbias.is_some();
    if want_dk || want_db || act != Activation::Linear {
        let group = s.group_rows();
        let groups = s.rows().div_ceil(group);
        // Per group: d kernel partial (`k * f`, if wanted) then d bias partial
        // (`f`), in a buffer reused across calls.
        let dk_len = if want_dk { k * f } else { 0 };
        let db_len = if want_db { f } else { 0 };
        let stride = (dk_len + db_len).max(1);
        // Fewer groups than threads: each group's product is split instead.
        let split = groups < rayon::current_num_threads();
        with_partials(groups * stride, |partials| {
            partials
                .par_chunks_mut(stride)
                .zip(dy.par_chunks_mut(group * f).zip(y.par_chunks(group * f)))
                .enumerate()
                .for_each(|(gi, (part, (dz, yg)))| {
                    let (dk, rest) = part.split_at_mut(dk_len);
                    let db = &mut rest[..db_len];
                    if want_db && act == Activation::Relu {
                        // One pass: dz = dy ⊙ [y > 0] and its column sums.
                        db.fill(0.0);
                        for (dr, yr) in dz.chunks_exact_mut(f).zip(yg.chunks_exact(f)) {
                            for ((d, &yv), acc) in dr.iter_mut().zip(yr).zip(db.iter_mut()) {
                                *d = if yv > 0.0 { *d } else { 0.0 };
                                *acc += *d;
                            }
                        }
                    } else {
                        activation_backward_rows(act, yg, dz, f);
                        if want_db {
                            db.fill(0.0);
                            add_rows_into(dz, f, db);
                        }
                    }
                    if want_dk {
                        kernel_grad_rows(s, x, dz, gi * group, dk, split);
                    }
                });
            let parts = || partials.chunks_exact(stride).take(groups);
            if let Some(out) = dkernel {
                sum_partials(parts().map(|p| &p[..dk_len]), out);
            }
            if let Some(out) = dbias {
                sum_partials(parts().map(|p| &p[dk_len..dk_len + db_len]), out);
            }
        });
    }

    if let Some(dk) = dkernel_winograd {
        winograd::kernel_gradient(s, x, dy, dk);
    }

    // Pass 2: d x = col2im(dz × kernelᵀ), parallel over groups of whole
    // images; for a large 3x3 stride-1 conv, a Winograd convolution of dz
    // with the rotated kernel instead.
    if let Some(dx) = dx {
        match winograd::input_gradient_shape(s).filter(use_winograd) {
            Some(g) => with_partials(16 * s.in_channels * f, |u| {
                winograd::input_gradient_kernel_into(kernel, s.in_channels, f, u);
                winograd_forward_transformed(&g, dy, u, dx, |_, _| {});
            }),
            None => input_grad(s, dy, kernel, dx, |_| {}),
        }
    }
    Ok(())
}

/// Smallest output height and width for which Winograd F(2x2, 3x3) is used
/// for a conv given in HWIO (training, and inference without packed
/// kernels). Measured here (`winograd_timing`, 2 threads): 1.2-1.5x faster
/// than im2col + GEMM at 56x56 and 28x28 for batch 1-8, 2.4x at 14x14 for
/// batch 1-8 but only 1.0x for batch 256, and no faster at 7x7 (a 7x7 map
/// wastes 23% of its 4x4 tiles and its GEMMs have few rows). Fashion-MNIST
/// CNN training, batch 128: 487 vs 437-469 images/s with it; batch 32: equal.
const WINOGRAD_MIN_SIZE: usize = 12;

/// Whether the convolution `s` runs as Winograd F(2x2, 3x3).
fn use_winograd(s: &Conv2dShape) -> bool {
    winograd::applies(s) && s.out_h.min(s.out_w) >= WINOGRAD_MIN_SIZE
}

/// Smallest output height and width for which a kernel prepared for
/// inference ([`PreparedKernel`]) is prepared as Winograd F(2x2, 3x3)
/// rather than packed for im2col + GEMM, whatever its channels; see
/// [`prepared_winograd_applies`].
pub const PREPARED_WINOGRAD_MIN_SIZE: usize = 12;

/// Smallest output height and width for which a kernel with at most
/// [`PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS`] input channels x filters is
/// prepared as Winograd.
pub const PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE: usize = 7;

/// See [`PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE`]: `in_channels * filters`
/// (the transformed kernel is 16 times that, here at most 4 MiB).
pub const PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS: usize = 256 * 256;

/// Whether an inference kernel for the convolution `s` is prepared as
/// Winograd F(2x2, 3x3) ([`winograd::applies`], and the output size and
/// channels below). The choice is made once per layer, for every batch
/// size, so it must not lose at either end.
///
/// Measured with prepared kernels on both sides (`cargo test --release -p
/// cnnc-runtime --test winograd_prepared -- --ignored --nocapture`; bias +
/// relu epilogue; 2-core VM shared with other jobs, load 5-7, medians of
/// interleaved runs; im2col time / Winograd time):
///
/// | output, channels | batch 1 | batch 32-256 |
/// |---|---|---|
/// | 56x56, 64 -> 64 | 1.66-1.68x | 1.53-1.58x |
/// | 28x28, 128 -> 128 | 1.80-1.82x | 1.61-1.80x |
/// | 14x14, 64 -> 128 / 128 -> 128 | 1.68-1.83x | 1.67-1.91x |
/// | 14x14, 256 -> 256 / 512 -> 512 | 1.42-1.64x | 1.55-1.76x |
/// | 10x10, 256 -> 256 | 1.69x | |
/// | 7x7, 128 -> 256 / 256 -> 256 | 1.08-1.25x | 1.20-1.25x |
/// | 7x7 / 8x8, 512 -> 512 | 0.49-0.84x | 1.11-1.13x |
/// | 4x4, 256 -> 256 | 1.01x | 0.77x |
///
/// So: every output of at least [`PREPARED_WINOGRAD_MIN_SIZE`]; from
/// [`PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE`] (a 7x7 map wastes 23% of its
/// 4x4 tiles) when `in_channels * filters` is at most
/// [`PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS`] (a batch-1 layer with a
/// larger kernel reads 16 large matrices for few tiles and loses).
pub fn prepared_winograd_applies(s: &Conv2dShape) -> bool {
    let size = s.out_h.min(s.out_w);
    winograd::applies(s)
        && (size >= PREPARED_WINOGRAD_MIN_SIZE
            || (size >= PREPARED_WINOGRAD_SMALL_MAP_MIN_SIZE
                && s.in_channels * s.filters <= PREPARED_WINOGRAD_SMALL_MAP_MAX_WEIGHTS))
}

/// Partial kernel gradient of the output rows `g0 .. g0 + dz.len() / filters`:
/// `dk = im2col(x)[rows]ᵀ × dz` (overwritten), in fixed sub-blocks added in
/// order. With `split`, each sub-block's im2col and product are spread over
/// the rayon pool (for when there are fewer row groups than threads, e.g.
/// a 7x7 map at batch 32 is one group); the bits are the same either way,
/// since the GEMM computes every element of `dk` by the same sequence of
/// operations whatever its thread split.
fn kernel_grad_rows(
    s: &Conv2dShape,
    x: &[f32],
    dz: &[f32],
    g0: usize,
    dk: &mut [f32],
    split: bool,
) {
    let (k, f) = (s.patch_len(), s.filters);
    let block = s.dw_block_rows();
    let par = if split {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // The first block overwrites the partial, later ones add.
    for (bi, dzb) in dz.chunks(block * f).enumerate() {
        let r0 = g0 + bi * block;
        let rows = dzb.len() / f;
        let d = MatRef::row_major(dzb, rows, f);
        if s.is_pointwise() {
            let a = MatRef::row_major(&x[r0 * k..(r0 + rows) * k], rows, k);
            matmul(a.t(), d, dk, f, bi > 0, par);
        } else {
            with_scratch(rows * k, |col| {
                if split {
                    let sub = rows.div_ceil(rayon::current_num_threads()).max(1);
                    col.par_chunks_mut(sub * k)
                        .enumerate()
                        .for_each(|(j, c)| im2col(s, x, r0 + j * sub, c.len() / k, c));
                } else {
                    im2col(s, x, r0, rows, col);
                }
                let a = MatRef::row_major(col, rows, k);
                matmul(a.t(), d, dk, f, bi > 0, par);
            });
        }
    }
}

/// `dk = im2col(x)ᵀ × dz` (overwritten; `dz` `[rows, filters]`), as partial
/// sums over the same fixed row groups as [`conv2d_backward`], added in group
/// order (deterministic, independent of the thread count). Lengths must
/// already be checked.
pub(crate) fn kernel_grad(s: &Conv2dShape, x: &[f32], dz: &[f32], dk: &mut [f32]) {
    let f = s.filters;
    let klen = s.kernel_len();
    let group = s.group_rows();
    let groups = s.rows().div_ceil(group);
    let split = groups < rayon::current_num_threads();
    with_partials(groups * klen, |partials| {
        partials
            .par_chunks_mut(klen)
            .zip(dz.par_chunks(group * f))
            .enumerate()
            .for_each(|(gi, (part, dzg))| kernel_grad_rows(s, x, dzg, gi * group, part, split));
        sum_partials(partials.chunks_exact(klen).take(groups), dk);
    });
}

/// `dx = col2im(dz × kernelᵀ)` (overwritten), parallel over groups of whole
/// images; `epilogue` is called on each finished group of images
/// (`[images * in_h * in_w, in_channels]`) while it is still in cache.
/// Lengths must already be checked.
pub(crate) fn input_grad(
    s: &Conv2dShape,
    dz: &[f32],
    kernel: &[f32],
    dx: &mut [f32],
    epilogue: impl Fn(&mut [f32]) + Sync,
) {
    let (k, f) = (s.patch_len(), s.filters);
    let block = s.block_rows();
    let opix = s.out_pixels();
    let il = s.image_len();
    if opix == 0 || il == 0 {
        dx.fill(0.0);
        epilogue(dx);
        return;
    }
    let wt = Rhs::new(MatRef::row_major(kernel, k, f).t());
    let imgs = s.images_per_task();
    dx.par_chunks_mut(imgs * il)
        .enumerate()
        .for_each(|(ti, dxc)| {
            let n0 = ti * imgs;
            let nimg = dxc.len() / il;
            let (t0, t1) = (n0 * opix, (n0 + nimg) * opix);
            if s.is_pointwise() {
                let d = MatRef::row_major(&dz[t0 * f..t1 * f], t1 - t0, f);
                matmul_rhs(d, &wt, dxc, k, false);
            } else {
                dxc.fill(0.0);
                let mut r0 = t0;
                while r0 < t1 {
                    let rows = block.min(t1 - r0);
                    let d = MatRef::row_major(&dz[r0 * f..(r0 + rows) * f], rows, f);
                    with_scratch(rows * k, |col| {
                        matmul_rhs(d, &wt, col, k, false);
                        col2im_add(s, col, r0, rows, dxc, n0);
                    });
                    r0 += rows;
                }
            }
            epilogue(dxc);
        });
}

/// `out = Σ partials` added in iteration order (deterministic).
pub(crate) fn sum_partials<'a>(mut partials: impl Iterator<Item = &'a [f32]>, out: &mut [f32]) {
    match partials.next() {
        Some(first) => out.copy_from_slice(first),
        None => {
            out.fill(0.0);
            return;
        }
    }
    for p in partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::graph::ir::Conv2dAttrs;
    use cnnc_compiler::model::Pads2d;

    fn naive_row(s: &Conv2dShape, x: &[f32], r: usize, out: &mut [f32]) {
        let opix = s.out_pixels();
        let (n, rem) = (r / opix, r % opix);
        let (oy, ox) = (rem / s.out_w, rem % s.out_w);
        let c = s.in_channels;
        for ky in 0..s.kernel_h {
            for kx in 0..s.kernel_w {
                let iy = (oy * s.stride_h + ky * s.dilation_h) as isize - s.pad_top as isize;
                let ix = (ox * s.stride_w + kx * s.dilation_w) as isize - s.pad_left as isize;
                for ch in 0..c {
                    let v = if iy < 0 || ix < 0 || iy as usize >= s.in_h || ix as usize >= s.in_w {
                        0.0
                    } else {
                        x[((n * s.in_h + iy as usize) * s.in_w + ix as usize) * c + ch]
                    };
                    out[(ky * s.kernel_w + kx) * c + ch] = v;
                }
            }
        }
    }

    /// `im2col` against a tap-by-tap reference over random geometries
    /// (kernels 1-4 x 1-11, dilation 1-3, strides 1-3 x 1-4, each pad 0-6,
    /// maps down to 1x1, so interiors may be empty and kernels wider than
    /// the input), each over its whole rows and random sub-ranges (blocks
    /// that start mid-line and span images), never writing past the rows.
    #[test]
    fn im2col_matches_naive_random_geometries() {
        let mut seed = 12345u64;
        let mut rnd = |m: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % m
        };
        let mut tested = 0;
        for _ in 0..5000 {
            let (kh, kw) = (1 + rnd(4), 1 + rnd(11));
            let (dh, dw) = (1 + rnd(3), 1 + rnd(3));
            let (sh, sw) = (1 + rnd(3), 1 + rnd(4));
            let (in_h, in_w) = (1 + rnd(7), 1 + rnd(14));
            let pads = Pads2d {
                top: rnd(5),
                bottom: rnd(5),
                left: rnd(7),
                right: rnd(7),
            };
            let c = [1, 2, 3, 4, 5, 8, 16][rnd(7)];
            let batch = 1 + rnd(3);
            let attrs = Conv2dAttrs {
                in_channels: c,
                filters: 1,
                kernel_size: [kh, kw],
                strides: [sh, sw],
                pads,
                dilation_rate: [dh, dw],
            };
            let Ok(s) = Conv2dShape::new(&attrs, batch, in_h, in_w) else {
                continue;
            };
            tested += 1;
            let x: Vec<f32> = (0..s.input_len()).map(|i| i as f32 + 1.0).collect();
            let k = s.patch_len();
            let rows = s.rows();
            let mut want = vec![0.0f32; rows * k];
            for r in 0..rows {
                naive_row(&s, &x, r, &mut want[r * k..(r + 1) * k]);
            }
            // A few (r0, len) sub-ranges, plus the whole.
            let mut ranges = vec![(0, rows)];
            for _ in 0..6 {
                let r0 = rnd(rows);
                let len = 1 + rnd(rows - r0);
                ranges.push((r0, len));
            }
            for (r0, len) in ranges {
                let mut col = vec![f32::NAN; len * k + 3];
                im2col(&s, &x, r0, len, &mut col);
                assert_eq!(
                    &col[..len * k],
                    &want[r0 * k..(r0 + len) * k],
                    "{s:?} r0 {r0} len {len}"
                );
                assert!(
                    col[len * k..].iter().all(|v| v.is_nan()),
                    "wrote past rows: {s:?}"
                );
            }
        }
        assert!(tested > 200, "{tested}");
    }
}
