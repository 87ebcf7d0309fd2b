//! Depthwise 2-D convolution (Keras `DepthwiseConv2D`; Howard et al. 2017,
//! "MobileNets"), NHWC, by a direct loop (no im2col).
//!
//! Input `x` `[batch, in_h, in_w, channels]`, kernel
//! `[kernel_h, kernel_w, channels, depth_multiplier]` (Keras layout), output
//! `y` `[batch, out_h, out_w, channels * depth_multiplier]`:
//!
//! `y[n, oy, ox, c*dm + m] = Σ_{ky,kx} x[n, oy*sh + ky*dh - pad_top, ox*sw + kx*dw - pad_left, c]
//!                                     * kernel[ky, kx, c, m]`
//!
//! (taps outside the image read zero). The kernel slice of one tap,
//! `kernel[ky, kx, ..]`, is laid out exactly like an output pixel
//! (`c*dm + m`), so every inner loop runs along the channel axis and
//! vectorizes. The inner loops are compiled three times (baseline, AVX2 with
//! FMA, AVX-512) and chosen at run time. None of them reorders a sum (there
//! is no reduction along the vectorized axis); the AVX2 and AVX-512 builds
//! fuse each multiply-add of the `depth_multiplier = 1` paths (`vfmadd`, one
//! rounding, as the GEMM does) and so agree with each other bit for bit, while
//! the baseline build rounds the product and the sum separately.
//!
//! Forward: parallel over fixed chunks of output lines `(n, oy)`; the bias and
//! activation epilogue is applied to each line while it is in cache.
//!
//! Backward (`dz = dy ⊙ act'(y)`, from the saved output `y`):
//! - `d kernel[ky, kx, c, m] = Σ_pixels dz[.., c*dm + m] * x[.., c]` and
//!   `d bias = Σ_pixels dz`: partial sums over fixed groups of output lines
//!   (independent of the thread count), added in group order (deterministic);
//! - `d x`: parallel over input lines `(n, iy)`; each line gathers from the
//!   output lines whose taps reach it, in a fixed order (no races, no atomics).

use super::activation::{activation_backward_rows, add_rows_into, bias_activation_rows};
use super::conv::{effective_kernel, sum_partials};
use super::scratch::with_partials;
use super::{check_len, window_output_size, KernelError};
use cnnc_compiler::graph::ir::DepthwiseConv2dAttrs;
use cnnc_compiler::model::Activation;
use rayon::prelude::*;

/// Target floats of output (or input-gradient) per parallel task.
const TASK_FLOATS: usize = 16 * 1024;
/// Minimum multiply-adds per weight-gradient partial sum, and maximum number
/// of partials (each partial is only `kernel_len` floats, so many are cheap).
const MIN_GROUP_MACS: usize = 1 << 18;
const MAX_GROUPS: usize = 64;

/// Geometry of a batched depthwise 2-D convolution.
///
/// Input `[batch, in_h, in_w, channels]`, kernel
/// `[kernel_h, kernel_w, channels, depth_multiplier]`, output
/// `[batch, out_h, out_w, channels * depth_multiplier]` with
/// `out = floor((in + pad_before + pad_after - (dilation * (kernel - 1) + 1)) / stride) + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConv2dShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub depth_multiplier: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl DepthwiseConv2dShape {
    /// Geometry for `batch` inputs of `in_h × in_w × attrs.in_channels`
    /// (`attrs.pads` explicit, computed for the dilated kernel extent).
    pub fn new(
        attrs: &DepthwiseConv2dAttrs,
        batch: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<DepthwiseConv2dShape, KernelError> {
        let [kh, kw] = attrs.kernel_size;
        let [sh, sw] = attrs.strides;
        let [dh, dw] = attrs.dilation_rate;
        let p = attrs.pads;
        let out_h = window_output_size(in_h, effective_kernel(kh, dh)?, sh, p.top, p.bottom)?;
        let out_w = window_output_size(in_w, effective_kernel(kw, dw)?, sw, p.left, p.right)?;
        if attrs.in_channels == 0 || attrs.depth_multiplier == 0 {
            return Err(KernelError::Geometry(
                "in_channels and depth_multiplier must be positive".into(),
            ));
        }
        Ok(DepthwiseConv2dShape {
            batch,
            in_h,
            in_w,
            channels: attrs.in_channels,
            depth_multiplier: attrs.depth_multiplier,
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

    /// Output channels, `channels * depth_multiplier`.
    pub fn out_channels(&self) -> usize {
        self.channels * self.depth_multiplier
    }
    /// `batch * in_h * in_w * channels`.
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }
    /// Values in one input image, `in_h * in_w * channels`.
    pub fn image_len(&self) -> usize {
        self.in_h * self.in_w * self.channels
    }
    /// `batch * out_h * out_w * channels * depth_multiplier`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.out_channels()
    }
    /// `kernel_h * kernel_w * channels * depth_multiplier`.
    pub fn kernel_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.out_channels()
    }
    /// Multiply-adds of the forward pass (taps falling into padding included).
    pub fn macs(&self) -> usize {
        self.output_len() * self.kernel_h * self.kernel_w
    }

    /// Values in one output line `(n, oy)`: `out_w * channels * depth_multiplier`.
    fn out_line(&self) -> usize {
        self.out_w * self.out_channels()
    }
    /// Values in one input line `(n, iy)`: `in_w * channels`.
    fn in_line(&self) -> usize {
        self.in_w * self.channels
    }
    /// Whole lines of `line` floats per parallel task (thread-count independent).
    fn lines_per_task(line: usize) -> usize {
        (TASK_FLOATS / line.max(1)).max(1)
    }
    /// Output lines per weight-gradient partial sum (depends only on the
    /// geometry, never on the thread count).
    fn group_lines(&self) -> usize {
        let lines = self.batch * self.out_h;
        let macs = self.macs();
        let mut groups = 1;
        while groups * 2 <= MAX_GROUPS.min(lines) && macs / (groups * 2) >= MIN_GROUP_MACS {
            groups *= 2;
        }
        lines.div_ceil(groups).max(1)
    }
    /// Input line `iy` read by tap `ky` of output line `oy`, if inside the image.
    #[inline]
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride_h + ky * self.dilation_h).checked_sub(self.pad_top)?;
        (iy < self.in_h).then_some(iy)
    }
    /// Input column read by tap `kx` of output column `ox`, if inside the image.
    #[inline]
    fn input_col(&self, ox: usize, kx: usize) -> Option<usize> {
        let ix = (ox * self.stride_w + kx * self.dilation_w).checked_sub(self.pad_left)?;
        (ix < self.in_w).then_some(ix)
    }
}

/// Instruction set of the inner loops, detected once per call.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Base,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Base
}

/// Defines `$name` (dispatching on [`Isa`]) over an `#[inline(always)]` body
/// `$generic`, compiled once per instruction set.
macro_rules! multiversion {
    ($name:ident => $generic:ident ($($arg:ident: $ty:ty),*)) => {
        multiversion!($name => $generic [false] [true] [true] ($($arg: $ty),*));
    };
    // The const generic arguments of each build: base, AVX2, AVX-512.
    ($name:ident => $generic:ident [$($base:expr),*] [$($mid:expr),*] [$($wide:expr),*]
        ($($arg:ident: $ty:ty),*)) => {
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) {
                $generic::<$($mid),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,fma")]
            fn avx512($($arg: $ty),*) {
                $generic::<$($wide),*>($($arg),*)
            }
            match isa {
                Isa::Base => $generic::<$($base),*>($($arg),*),
                // SAFETY: the features were detected at run time by `isa()`.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}

/// `acc[c*dm + m] += x[c] * k[c*dm + m]` (one tap of one output pixel).
#[inline(always)]
fn tap_fwd(acc: &mut [f32], x: &[f32], k: &[f32], dm: usize) {
    if dm == 1 {
        for ((a, &xv), &kv) in acc.iter_mut().zip(x).zip(k) {
            *a += xv * kv;
        }
    } else {
        for ((a, &xv), kk) in acc.chunks_exact_mut(dm).zip(x).zip(k.chunks_exact(dm)) {
            for (a, &kv) in a.iter_mut().zip(kk) {
                *a += xv * kv;
            }
        }
    }
}

/// `dk[c*dm + m] += x[c] * dz[c*dm + m]` (same access pattern as [`tap_fwd`]).
#[inline(always)]
fn tap_dk(dk: &mut [f32], x: &[f32], dz: &[f32], dm: usize) {
    tap_fwd(dk, x, dz, dm)
}

/// `dx[c] += Σ_m dz[c*dm + m] * k[c*dm + m]` (m in order).
#[inline(always)]
fn tap_dx(dx: &mut [f32], dz: &[f32], k: &[f32], dm: usize) {
    if dm == 1 {
        for ((d, &g), &kv) in dx.iter_mut().zip(dz).zip(k) {
            *d += g * kv;
        }
    } else {
        for ((d, gg), kk) in dx
            .iter_mut()
            .zip(dz.chunks_exact(dm))
            .zip(k.chunks_exact(dm))
        {
            let mut acc = *d;
            for (&g, &kv) in gg.iter().zip(kk) {
                acc += g * kv;
            }
            *d = acc;
        }
    }
}

/// Output line `oy` of image `img` into `yl` (`[out_w, c*dm]`, overwritten).
#[inline(always)]
fn forward_line_any(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    kernel: &[f32],
    oy: usize,
    yl: &mut [f32],
) {
    let (c, oc, dm) = (s.channels, s.out_channels(), s.depth_multiplier);
    yl.fill(0.0);
    for ky in 0..s.kernel_h {
        let Some(iy) = s.input_row(oy, ky) else {
            continue;
        };
        let xline = &img[iy * s.in_line()..(iy + 1) * s.in_line()];
        let krow = &kernel[ky * s.kernel_w * oc..(ky + 1) * s.kernel_w * oc];
        for (ox, yo) in yl.chunks_exact_mut(oc).enumerate() {
            for (kx, kt) in krow.chunks_exact(oc).enumerate() {
                if let Some(ix) = s.input_col(ox, kx) {
                    tap_fwd(yo, &xline[ix * c..(ix + 1) * c], kt, dm);
                }
            }
        }
    }
}

/// `o` in `0..count` with `0 <= o * stride + offset - pad < size`: the
/// contiguous range of output positions (or taps) whose input lies inside the
/// image.
#[inline(always)]
fn valid_range(
    size: usize,
    stride: usize,
    offset: usize,
    pad: usize,
    count: usize,
) -> (usize, usize) {
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    let hi = if size + pad > offset {
        (size + pad - offset).div_ceil(stride).min(count)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Channels per register block of the `depth_multiplier = 1` paths (two
/// AVX-512 vectors); tails use blocks of 8, then 1. The block size never
/// changes the order in which a value's terms are added.
const CB: usize = 32;
/// Channels per register block of [`pixels_taps`] when the stride along
/// the width is a compile-time constant (1 or 2, dilation 1): four AVX-512
/// vectors, 16 accumulators over [`PIXELS`] columns. With the offsets known
/// multiples of the channel count they stay in registers, so the wider
/// block no longer spills them. Both changes together, on 1 thread, in the
/// models (`cnnc bench --profile`, depthwise layers summed, alternating
/// runs): Xception 8.1-8.5 -> 7.5-7.6 ms, MobileNetV2 1.58-1.61 -> 1.45-1.52
/// ms. Other strides and dilations keep [`CB`], and so do the builds
/// without AVX-512 (16 vector registers: 64-channel blocks made the AVX2
/// build's 19x19x728 layer 150-165 -> 250 µs).
const CB_WIDE: usize = 64;

/// `acc += a ⊙ b` on fixed-size blocks (kept in registers by the compiler),
/// fused (one rounding: `vfmadd`) when `F`.
#[inline(always)]
fn mac_block<const B: usize, const F: bool>(acc: &mut [f32; B], a: &[f32], b: &[f32]) {
    let a: &[f32; B] = a[..B].try_into().expect("block length");
    let b: &[f32; B] = b[..B].try_into().expect("block length");
    for i in 0..B {
        if F {
            acc[i] = a[i].mul_add(b[i], acc[i]);
        } else {
            acc[i] += a[i] * b[i];
        }
    }
}

/// Runs `f::<B>(cb)` over the channel blocks of `0..c` (or `c0..c`): blocks
/// of [`CB`], then 8, then single channels; with `wide:`, blocks of
/// [`CB_WIDE`] first.
macro_rules! channel_blocks {
    // Whole blocks of `$size` channels from `$cb` while they fit below `$c`.
    (@blocks $size:expr, $cb:ident, $c:ident, $b:ident, $body:expr) => {
        while $cb + $size <= $c {
            const $b: usize = $size;
            $body;
            $cb += $size;
        }
    };
    ($c:expr, |$cb:ident, $b:ident| $body:expr) => {
        channel_blocks!(0, $c, |$cb, $b| $body)
    };
    (wide: $c0:expr, $c:expr, |$cb:ident, $b:ident| $body:expr) => {{
        let c = $c;
        let mut $cb = $c0;
        channel_blocks!(@blocks CB_WIDE, $cb, c, $b, $body);
        channel_blocks!($cb, c, |$cb, $b| $body)
    }};
    ($c0:expr, $c:expr, |$cb:ident, $b:ident| $body:expr) => {{
        let c = $c;
        let mut $cb = $c0;
        channel_blocks!(@blocks CB, $cb, c, $b, $body);
        channel_blocks!(@blocks 8, $cb, c, $b, $body);
        while $cb < c {
            const $b: usize = 1;
            $body;
            $cb += 1;
        }
    }};
}

/// [`forward_line_any`] for `depth_multiplier = 1` and kernels taller than
/// [`MAX_ROWS`]: per output pixel and channel block, all taps accumulate in
/// registers (taps in `(ky, kx)` order, the same order as the general path).
#[inline(always)]
fn forward_line_dm1<const F: bool>(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    kernel: &[f32],
    oy: usize,
    yl: &mut [f32],
) {
    let (c, kw, il) = (s.channels, s.kernel_w, s.in_line());
    for (ox, yo) in yl.chunks_exact_mut(c).enumerate() {
        let (k0, k1) = valid_range(s.in_w, s.dilation_w, ox * s.stride_w, s.pad_left, kw);
        channel_blocks!(c, |cb, B| {
            let mut acc = [0.0f32; B];
            for ky in 0..s.kernel_h {
                let Some(iy) = s.input_row(oy, ky) else {
                    continue;
                };
                let xl = &img[iy * il..(iy + 1) * il];
                for kx in k0..k1 {
                    let ix = ox * s.stride_w + kx * s.dilation_w - s.pad_left;
                    let k = (ky * kw + kx) * c + cb;
                    mac_block::<B, F>(&mut acc, &xl[ix * c + cb..], &kernel[k..]);
                }
            }
            yo[cb..cb + B].copy_from_slice(&acc);
        });
    }
}

/// [`dk_line_any`] for `depth_multiplier = 1`: per tap and channel block, the
/// sum over the line's output pixels accumulates in registers (pixels in
/// order, added onto the partial as in the general path).
#[inline(always)]
fn dk_line_dm1<const F: bool>(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    dzl: &[f32],
    oy: usize,
    dk: &mut [f32],
) {
    let (c, kw, il) = (s.channels, s.kernel_w, s.in_line());
    for ky in 0..s.kernel_h {
        let Some(iy) = s.input_row(oy, ky) else {
            continue;
        };
        let xl = &img[iy * il..(iy + 1) * il];
        for kx in 0..kw {
            let (o0, o1) = valid_range(s.in_w, s.stride_w, kx * s.dilation_w, s.pad_left, s.out_w);
            let dkt = &mut dk[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
            channel_blocks!(c, |cb, B| {
                let mut acc: [f32; B] = dkt[cb..cb + B].try_into().expect("block length");
                for ox in o0..o1 {
                    let ix = ox * s.stride_w + kx * s.dilation_w - s.pad_left;
                    mac_block::<B, F>(&mut acc, &dzl[ox * c + cb..], &xl[ix * c + cb..]);
                }
                dkt[cb..cb + B].copy_from_slice(&acc);
            });
        }
    }
}

/// Largest kernel width the register-blocked input-gradient path handles
/// (wider kernels use the general path).
const MAX_DX_TAPS: usize = 16;

/// [`dx_line_any`] for `depth_multiplier = 1` and `kernel_w <= 16`: per input
/// pixel and channel block, gathers every `(ky, kx)` tap that reads it
/// (in that order) in registers.
#[inline(always)]
fn dx_line_dm1<const F: bool>(
    s: &DepthwiseConv2dShape,
    dz: &[f32],
    kernel: &[f32],
    n: usize,
    iy: usize,
    dxl: &mut [f32],
) {
    let (c, kw, ol) = (s.channels, s.kernel_w, s.out_line());
    // Output line of each kernel row that reads input line iy (if any).
    let out_row = |ky: usize| {
        let t = (iy + s.pad_top).checked_sub(ky * s.dilation_h)?;
        (t % s.stride_h == 0 && t / s.stride_h < s.out_h).then(|| n * s.out_h + t / s.stride_h)
    };
    let mut taps = [(0usize, 0usize); MAX_DX_TAPS];
    for (ix, dxp) in dxl.chunks_exact_mut(c).enumerate() {
        // (kx, ox) with ox * sw + kx * dw - pad_left == ix.
        let mut nt = 0;
        for kx in 0..kw {
            let Some(t) = (ix + s.pad_left).checked_sub(kx * s.dilation_w) else {
                continue;
            };
            if t % s.stride_w == 0 && t / s.stride_w < s.out_w {
                taps[nt] = (kx, t / s.stride_w);
                nt += 1;
            }
        }
        channel_blocks!(c, |cb, B| {
            let mut acc = [0.0f32; B];
            for ky in 0..s.kernel_h {
                let Some(l) = out_row(ky) else {
                    continue;
                };
                let dzl = &dz[l * ol..(l + 1) * ol];
                for &(kx, ox) in &taps[..nt] {
                    let k = (ky * kw + kx) * c + cb;
                    mac_block::<B, F>(&mut acc, &dzl[ox * c + cb..], &kernel[k..]);
                }
            }
            dxp[cb..cb + B].copy_from_slice(&acc);
        });
    }
}

/// Most kernel rows [`forward_line_dm1_small`] lists (any width: widths
/// 1-3 run unrolled, wider ones through [`pixels_dm1`]).
const MAX_ROWS: usize = 9;

/// Output columns computed together by [`pixels_dm1`].
const PIXELS: usize = 4;

/// Output columns `ox0 .. ox0 + P` of one line, channel block `cb .. cb + B`,
/// for `depth_multiplier = 1`: every column adds the taps `(ky, kx)` for
/// `ky` in `rows` (the kernel rows whose input line lies in the image, in
/// order) and `kx` in `k0 .. k1`, in `(ky, kx)` order onto a zeroed
/// accumulator (the same order, so the same bits, as [`forward_line_any`]).
/// The `P` accumulators are independent, so the adds of one column no
/// longer wait on each other.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pixels_dm1<const B: usize, const P: usize, const F: bool>(
    s: &DepthwiseConv2dShape,
    rows: &[(usize, &[f32])],
    kernel: &[f32],
    cb: usize,
    ox0: usize,
    (k0, k1): (usize, usize),
    yl: &mut [f32],
) {
    let (c, kw, sw, dw) = (s.channels, s.kernel_w, s.stride_w, s.dilation_w);
    let mut acc = [[0.0f32; B]; P];
    for &(ky, xl) in rows {
        for kx in k0..k1 {
            let tap = &kernel[(ky * kw + kx) * c + cb..];
            for (p, a) in acc.iter_mut().enumerate() {
                let ix = (ox0 + p) * sw + kx * dw - s.pad_left;
                mac_block::<B, F>(a, &xl[ix * c + cb..], tap);
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        let o = (ox0 + p) * c + cb;
        yl[o..o + B].copy_from_slice(a);
    }
}

/// [`pixels_dm1`] for the `K` taps `k0 .. k0 + K` of each kernel row, with
/// the tap loops unrolled and the addresses computed by pointer steps. The
/// bounds are checked once per kernel row, not per load (per load they
/// cost more than the arithmetic). `SW > 0`: the stride along the width is
/// `SW` and the dilation 1, so the offsets are constant multiples of the
/// channel count (0: both read from `s`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pixels_taps<const B: usize, const P: usize, const K: usize, const F: bool, const SW: usize>(
    s: &DepthwiseConv2dShape,
    rows: &[(usize, &[f32])],
    kernel: &[f32],
    cb: usize,
    ox0: usize,
    k0: usize,
    yl: &mut [f32],
) {
    let (c, kw) = (s.channels, s.kernel_w);
    let (sw, dw) = if SW > 0 {
        (SW, 1)
    } else {
        (s.stride_w, s.dilation_w)
    };
    // The caller picks columns whose taps k0 .. k0 + K all lie in the image.
    let ix0 = ox0 * sw + k0 * dw - s.pad_left;
    let last_x = ((P - 1) * sw + (K - 1) * dw + ix0) * c + cb + B;
    let mut acc = [[0.0f32; B]; P];
    for &(ky, xl) in rows {
        let kt = (ky * kw + k0) * c + cb;
        assert!(last_x <= xl.len() && kt + (K - 1) * c + B <= kernel.len());
        // SAFETY: every offset below is at most `last_x - B` into `xl` and
        // `kt + (K - 1) * c` into `kernel`, checked above.
        unsafe {
            let xp = xl.as_ptr().add(ix0 * c + cb);
            let kp = kernel.as_ptr().add(kt);
            for kx in 0..K {
                let tap = std::slice::from_raw_parts(kp.add(kx * c), B);
                for (p, a) in acc.iter_mut().enumerate() {
                    let xv = std::slice::from_raw_parts(xp.add((p * sw + kx * dw) * c), B);
                    mac_block::<B, F>(a, xv, tap);
                }
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        let o = (ox0 + p) * c + cb;
        yl[o..o + B].copy_from_slice(a);
    }
}

/// Channels per pass of [`forward_line_dm1_small`] over a line: the chunk's
/// part of the input lines (128 channels × the line width × the kernel
/// rows) stays in cache while every column of the chunk is computed
/// (measured at 19x19x728: chunks of 32 / 64 / 128 / 256 / all channels
/// took 167 / 160 / 155 / 156 / 179 µs).
const CHUNK: usize = 128;

/// One output column `ox` (taps `k0 .. k1` of each kernel row inside the
/// image) over channels `c0 .. c1`. A single column's accumulators form one
/// dependent chain per vector, so the widest block (128 channels, eight
/// independent vectors) comes first.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn column_dm1<const F: bool>(
    s: &DepthwiseConv2dShape,
    rows: &[(usize, &[f32])],
    kernel: &[f32],
    (c0, c1): (usize, usize),
    ox: usize,
    (k0, k1): (usize, usize),
    yl: &mut [f32],
) {
    macro_rules! taps {
        ($k:literal) => {{
            let mut cb = c0;
            while cb + CHUNK <= c1 {
                pixels_taps::<CHUNK, 1, $k, F, 0>(s, rows, kernel, cb, ox, k0, yl);
                cb += CHUNK;
            }
            channel_blocks!(cb, c1, |cb, B| {
                pixels_taps::<B, 1, $k, F, 0>(s, rows, kernel, cb, ox, k0, yl)
            });
        }};
    }
    match k1 - k0 {
        1 => taps!(1),
        2 => taps!(2),
        3 => taps!(3),
        _ => channel_blocks!(c0, c1, |cb, B| {
            pixels_dm1::<B, 1, F>(s, rows, kernel, cb, ox, (k0, k1), yl)
        }),
    }
}

/// [`forward_line_dm1`] for kernels of at most [`MAX_ROWS`] rows, in
/// chunks of [`CHUNK`] channels with the channel blocks innermost: the
/// interior columns (all taps inside the image) [`PIXELS`] at a time, the
/// others one at a time. The column geometry is worked out once per line
/// (no division per column). Each output adds its taps in `(ky, kx)` order
/// onto a zeroed accumulator, as [`forward_line_dm1`] does. `SW > 0`: the
/// stride along the width is `SW` and the dilation 1 (constants in the
/// interior columns' offsets). `W`: the AVX-512 build, whose 32 vector
/// registers hold [`CB_WIDE`]-channel blocks.
#[inline(always)]
fn forward_line_dm1_small<const F: bool, const SW: usize, const W: bool>(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    kernel: &[f32],
    oy: usize,
    yl: &mut [f32],
) {
    let (c, kh, kw, il) = (s.channels, s.kernel_h, s.kernel_w, s.in_line());
    let mut rows: [(usize, &[f32]); MAX_ROWS] = [(0, &[]); MAX_ROWS];
    let mut nr = 0;
    for ky in 0..kh {
        if let Some(iy) = s.input_row(oy, ky) {
            rows[nr] = (ky, &img[iy * il..(iy + 1) * il]);
            nr += 1;
        }
    }
    let rows = &rows[..nr];
    // Interior columns lo .. hi: ox * sw >= pad_left and
    // ox * sw + (kw - 1) * dw - pad_left < in_w.
    let (sw, span) = (s.stride_w, (kw - 1) * s.dilation_w);
    let lo = s.pad_left.div_ceil(sw).min(s.out_w);
    let hi = if s.in_w + s.pad_left > span {
        ((s.in_w + s.pad_left - span - 1) / sw + 1).min(s.out_w)
    } else {
        0
    }
    .max(lo);
    let edge = |ox: usize| valid_range(s.in_w, s.dilation_w, ox * sw, s.pad_left, kw);
    let groups = (hi - lo) / PIXELS;
    let mut c0 = 0;
    while c0 < c {
        let cs = (c0, (c0 + CHUNK).min(c));
        for ox in 0..lo {
            column_dm1::<F>(s, rows, kernel, cs, ox, edge(ox), yl);
        }
        for g in 0..groups {
            let ox = lo + g * PIXELS;
            macro_rules! interior {
                ($k:literal) => {
                    if SW > 0 && W {
                        channel_blocks!(wide: cs.0, cs.1, |cb, B| {
                            pixels_taps::<B, PIXELS, $k, F, SW>(s, rows, kernel, cb, ox, 0, yl)
                        })
                    } else {
                        channel_blocks!(cs.0, cs.1, |cb, B| {
                            pixels_taps::<B, PIXELS, $k, F, SW>(s, rows, kernel, cb, ox, 0, yl)
                        })
                    }
                };
            }
            match kw {
                1 => interior!(1),
                2 => interior!(2),
                3 => interior!(3),
                _ => channel_blocks!(cs.0, cs.1, |cb, B| {
                    pixels_dm1::<B, PIXELS, F>(s, rows, kernel, cb, ox, (0, kw), yl)
                }),
            }
        }
        for ox in lo + groups * PIXELS..hi {
            column_dm1::<F>(s, rows, kernel, cs, ox, (0, kw), yl);
        }
        for ox in hi..s.out_w {
            column_dm1::<F>(s, rows, kernel, cs, ox, edge(ox), yl);
        }
        c0 = cs.1;
    }
}

#[inline(always)]
fn forward_line_generic<const F: bool, const W: bool>(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    kernel: &[f32],
    oy: usize,
    yl: &mut [f32],
) {
    if s.depth_multiplier == 1 && s.kernel_h <= MAX_ROWS {
        match (s.stride_w, s.dilation_w) {
            (1, 1) => forward_line_dm1_small::<F, 1, W>(s, img, kernel, oy, yl),
            (2, 1) => forward_line_dm1_small::<F, 2, W>(s, img, kernel, oy, yl),
            _ => forward_line_dm1_small::<F, 0, W>(s, img, kernel, oy, yl),
        }
    } else if s.depth_multiplier == 1 {
        forward_line_dm1::<F>(s, img, kernel, oy, yl)
    } else {
        forward_line_any(s, img, kernel, oy, yl)
    }
}

#[inline(always)]
fn dk_line_generic<const F: bool>(
    s: &DepthwiseConv2dShape,
    img: &[f32],
    dzl: &[f32],
    oy: usize,
    dk: &mut [f32],
) {
    if s.depth_multiplier == 1 {
        dk_line_dm1::<F>(s, img, dzl, oy, dk)
    } else {
        dk_line_any(s, img, dzl, oy, dk)
    }
}

#[inline(always)]
fn dx_line_generic<const F: bool>(
    s: &DepthwiseConv2dShape,
    dz: &[f32],
    kernel: &[f32],
    n: usize,
    iy: usize,
    dxl: &mut [f32],
) {
    if s.depth_multiplier == 1 && s.kernel_w <= MAX_DX_TAPS {
        dx_line_dm1::<F>(s, dz, kernel, n, iy, dxl)
    } else {
        dx_line_any(s, dz, kernel, n, iy, dxl)
    }
}

multiversion!(forward_line => forward_line_generic [false, false] [true, false] [true, true] (s: &DepthwiseConv2dShape, img: &[f32], kernel: &[f32], oy: usize, yl: &mut [f32]));

/// Adds output line `oy`'s kernel gradient (`dzl` `[out_w, c*dm]`) into `dk`.
#[inline(always)]
fn dk_line_any(s: &DepthwiseConv2dShape, img: &[f32], dzl: &[f32], oy: usize, dk: &mut [f32]) {
    let (c, oc, dm) = (s.channels, s.out_channels(), s.depth_multiplier);
    for ky in 0..s.kernel_h {
        let Some(iy) = s.input_row(oy, ky) else {
            continue;
        };
        let xline = &img[iy * s.in_line()..(iy + 1) * s.in_line()];
        let dkrow = &mut dk[ky * s.kernel_w * oc..(ky + 1) * s.kernel_w * oc];
        for (ox, g) in dzl.chunks_exact(oc).enumerate() {
            for (kx, dkt) in dkrow.chunks_exact_mut(oc).enumerate() {
                if let Some(ix) = s.input_col(ox, kx) {
                    tap_dk(dkt, &xline[ix * c..(ix + 1) * c], g, dm);
                }
            }
        }
    }
}
multiversion!(dk_line => dk_line_generic(s: &DepthwiseConv2dShape, img: &[f32], dzl: &[f32], oy: usize, dk: &mut [f32]));

/// Input-gradient line `iy` of image `n` into `dxl` (`[in_w, c]`,
/// overwritten), gathered from the output lines whose taps read it.
#[inline(always)]
fn dx_line_any(
    s: &DepthwiseConv2dShape,
    dz: &[f32],
    kernel: &[f32],
    n: usize,
    iy: usize,
    dxl: &mut [f32],
) {
    let (c, oc, dm) = (s.channels, s.out_channels(), s.depth_multiplier);
    dxl.fill(0.0);
    for ky in 0..s.kernel_h {
        // Output line oy with oy * sh + ky * dh - pad_top == iy.
        let Some(t) = (iy + s.pad_top).checked_sub(ky * s.dilation_h) else {
            continue;
        };
        if t % s.stride_h != 0 || t / s.stride_h >= s.out_h {
            continue;
        }
        let oy = t / s.stride_h;
        let l = n * s.out_h + oy;
        let dzl = &dz[l * s.out_line()..(l + 1) * s.out_line()];
        let krow = &kernel[ky * s.kernel_w * oc..(ky + 1) * s.kernel_w * oc];
        for (ox, g) in dzl.chunks_exact(oc).enumerate() {
            for (kx, kt) in krow.chunks_exact(oc).enumerate() {
                if let Some(ix) = s.input_col(ox, kx) {
                    tap_dx(&mut dxl[ix * c..(ix + 1) * c], g, kt, dm);
                }
            }
        }
    }
}
multiversion!(dx_line => dx_line_generic(s: &DepthwiseConv2dShape, dz: &[f32], kernel: &[f32], n: usize, iy: usize, dxl: &mut [f32]));

/// Fused depthwise convolution forward: `y = act(depthwise(x, kernel) + bias)`.
///
/// `x`: `[batch, in_h, in_w, channels]`; `kernel`:
/// `[kernel_h, kernel_w, channels, depth_multiplier]`; `bias`:
/// `[channels * depth_multiplier]`; `y`:
/// `[batch, out_h, out_w, channels * depth_multiplier]` (overwritten), output
/// channel `c * depth_multiplier + m`. Softmax (if asked) is over the output
/// channels of each pixel.
pub fn depthwise_conv2d_forward(
    s: &DepthwiseConv2dShape,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("depthwise_conv2d input", s.input_len(), x.len())?;
    check_len("depthwise_conv2d kernel", s.kernel_len(), kernel.len())?;
    check_len("depthwise_conv2d output", s.output_len(), y.len())?;
    if let Some(b) = bias {
        check_len("depthwise_conv2d bias", s.out_channels(), b.len())?;
    }
    let (line, oc, il) = (s.out_line(), s.out_channels(), s.image_len());
    let lpt = DepthwiseConv2dShape::lines_per_task(line);
    let isa = isa();
    y.par_chunks_mut(lpt * line)
        .enumerate()
        .for_each(|(ti, yc)| {
            for (li, yl) in yc.chunks_exact_mut(line).enumerate() {
                let l = ti * lpt + li;
                let (n, oy) = (l / s.out_h, l % s.out_h);
                forward_line(isa, s, &x[n * il..(n + 1) * il], kernel, oy, yl);
                bias_activation_rows(yl, oc, bias, act);
            }
        });
    Ok(())
}

/// Depthwise convolution backward for `y = act(depthwise(x, kernel) + bias)`.
///
/// `y` is the saved forward output and `dy` = d loss / d y, both
/// `[batch, out_h, out_w, channels * depth_multiplier]`. On return `dy` holds
/// `dz = dy ⊙ act'(y)`. Each requested gradient is overwritten: `dx`
/// `[batch, in_h, in_w, channels]`, `dkernel`
/// `[kernel_h, kernel_w, channels, depth_multiplier]`, `dbias`
/// `[channels * depth_multiplier]`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_backward(
    s: &DepthwiseConv2dShape,
    x: &[f32],
    kernel: &[f32],
    y: &[f32],
    act: Activation,
    dy: &mut [f32],
    dx: Option<&mut [f32]>,
    dkernel: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    check_len("depthwise_conv2d input", s.input_len(), x.len())?;
    check_len("depthwise_conv2d kernel", s.kernel_len(), kernel.len())?;
    check_len("depthwise_conv2d output", s.output_len(), y.len())?;
    check_len("depthwise_conv2d output gradient", s.output_len(), dy.len())?;
    if let Some(d) = dx.as_deref() {
        check_len("depthwise_conv2d input gradient", s.input_len(), d.len())?;
    }
    if let Some(d) = dkernel.as_deref() {
        check_len("depthwise_conv2d kernel gradient", s.kernel_len(), d.len())?;
    }
    if let Some(d) = dbias.as_deref() {
        check_len("depthwise_conv2d bias gradient", s.out_channels(), d.len())?;
    }
    let (line, oc, il) = (s.out_line(), s.out_channels(), s.image_len());
    let isa = isa();

    // Pass 1: dz in place, plus partial d kernel / d bias per fixed line group.
    let want_dk = dkernel.is_some();
    let want_db = dbias.is_some();
    if want_dk || want_db || act != Activation::Linear {
        let group = s.group_lines();
        let groups = (s.batch * s.out_h).div_ceil(group);
        let dk_len = if want_dk { s.kernel_len() } else { 0 };
        let db_len = if want_db { oc } else { 0 };
        let stride = (dk_len + db_len).max(1);
        with_partials(groups * stride, |partials| {
            partials
                .par_chunks_mut(stride)
                .zip(
                    dy.par_chunks_mut(group * line)
                        .zip(y.par_chunks(group * line)),
                )
                .enumerate()
                .for_each(|(gi, (part, (dz, yg)))| {
                    let (dk, rest) = part.split_at_mut(dk_len);
                    let db = &mut rest[..db_len];
                    activation_backward_rows(act, yg, dz, oc);
                    if want_db {
                        db.fill(0.0);
                        add_rows_into(dz, oc, db);
                    }
                    if want_dk {
                        dk.fill(0.0);
                        for (li, dzl) in dz.chunks_exact(line).enumerate() {
                            let l = gi * group + li;
                            let (n, oy) = (l / s.out_h, l % s.out_h);
                            dk_line(isa, s, &x[n * il..(n + 1) * il], dzl, oy, dk);
                        }
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

    // Pass 2: d x, parallel over chunks of input lines.
    if let Some(dx) = dx {
        let dz: &[f32] = dy;
        let in_line = s.in_line();
        if in_line == 0 {
            return Ok(()); // an empty input has an empty gradient
        }
        let lpt = DepthwiseConv2dShape::lines_per_task(in_line);
        dx.par_chunks_mut(lpt * in_line)
            .enumerate()
            .for_each(|(ti, dxc)| {
                for (li, dxl) in dxc.chunks_exact_mut(in_line).enumerate() {
                    let l = ti * lpt + li;
                    let (n, iy) = (l / s.in_h, l % s.in_h);
                    dx_line(isa, s, dz, kernel, n, iy, dxl);
                }
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::model::Pads2d;

    /// Every instruction-set build this CPU can run (the base build always)
    /// computes the same output lines, up to the fused multiply-add's
    /// rounding. The AVX-512 build takes 64-channel blocks in the interior
    /// columns at width strides 1 and 2 where the others keep 32, and the
    /// tests elsewhere only reach the build the CPU picks.
    #[test]
    fn instruction_set_builds_agree() {
        let mut isas = vec![Isa::Base];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx512);
            }
        }
        for (stride, dilation, c, w) in [(1, 1, 100, 13), (2, 1, 100, 21), (1, 2, 72, 15)] {
            let attrs = DepthwiseConv2dAttrs {
                in_channels: c,
                depth_multiplier: 1,
                kernel_size: [3, 3],
                strides: [stride, stride],
                pads: Pads2d {
                    top: dilation,
                    bottom: dilation,
                    left: dilation,
                    right: dilation,
                },
                dilation_rate: [dilation, dilation],
            };
            let s = DepthwiseConv2dShape::new(&attrs, 1, 7, w).expect("geometry");
            let x: Vec<f32> = (0..s.input_len())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let k: Vec<f32> = (0..s.kernel_len())
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 40.0)
                .collect();
            let line = |isa: Isa, oy: usize| {
                let mut yl = vec![0.0f32; s.out_line()];
                forward_line(isa, &s, &x, &k, oy, &mut yl);
                yl
            };
            for oy in 0..s.out_h {
                let base = line(Isa::Base, oy);
                for &isa in &isas[1..] {
                    for (i, (a, b)) in line(isa, oy).iter().zip(&base).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{isa:?} stride {stride} line {oy} value {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
