//! Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated kernels
//! (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks",
//! sec. 4): each 2x2 output tile is computed from a 4x4 input tile with 16
//! multiplies per (input channel, filter) pair instead of 36, so the GEMM
//! work is 2.25x smaller than im2col's.
//!
//! With `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`,
//! `G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]` and
//! `A^T = [[1,1,1,0],[0,1,-1,-1]]`:
//!
//! - kernel: `U = G g G^T` per (channel, filter), stored as 16 matrices
//!   `[in_channels, filters]` ([`WinogradKernel`]);
//! - input: `V = B^T d B` per 4x4 tile `d` (zero outside the image) and
//!   channel, stored as 16 matrices `[tiles, in_channels]`;
//! - product: `M[xi] = V[xi] x U[xi]` (16 GEMMs `[tiles, filters]`);
//! - output: `Y = A^T M A`, the 2x2 outputs of each tile.
//!
//! Layouts are NHWC as everywhere in the runtime. Tiles are processed in
//! groups of whole tile rows (two output rows each), so every task writes a
//! contiguous run of output rows, and the work of a task fits in cache. The
//! result does not depend on the thread count.

use super::conv::Conv2dShape;
use super::gemm::{matmul, MatRef, Parallelism};
use super::scratch::{with_scratch, with_stage};
use rayon::prelude::*;

/// Defines `fn $name(args)` that runs `$body(args)` compiled for AVX-512F
/// or AVX2 when the CPU has them (detected at run time, so no `target-cpu`
/// flag is needed), else for the baseline: the transforms are plain loops
/// over channels that the compiler vectorizes to the widest registers it is
/// allowed.
macro_rules! dispatch_simd {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Floats of transformed input and products one task works on at most
/// (`16 * tiles * (in_channels + filters)`): about 1 MiB, within L2.
const TASK_FLOATS: usize = 256 * 1024;

/// Below this many tiles per task, and when the Winograd domain of all
/// tiles (`16 * tiles * (in_channels + filters)` floats) is at most
/// [`WHOLE_FLOATS`], the layer runs in three stages over all its tiles
/// instead of tasks of whole tile rows (see [`forward_whole`]).
const WHOLE_MAX_TASK_TILES: usize = 28;
const WHOLE_FLOATS: usize = 1024 * 1024;

/// Transformed-input floats per input-transform task of [`forward_whole`]
/// (`16 * tiles * in_channels`, whole tile rows of one image): a 14x14x128
/// image is 7 tile rows of 14K floats, one task per tile row.
const TRANSFORM_TASK_FLOATS: usize = 16 * 1024;

/// A `[16, tile_stride, channels]` buffer whose rows (one tile of one
/// plane) several tasks write at once, each its own tiles.
pub(crate) struct Planes<'a> {
    ptr: *mut f32,
    len: usize,
    planes: usize,
    tile_stride: usize,
    channels: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Planes` only hands out rows through the unsafe `row`, whose
// callers guarantee that no two threads use the same row at once.
unsafe impl Sync for Planes<'_> {}

impl<'a> Planes<'a> {
    /// Borrows `buf` (at least `16 * tile_stride * channels` floats).
    fn new(buf: &'a mut [f32], tile_stride: usize, channels: usize) -> Planes<'a> {
        Planes::with_planes(buf, 16, tile_stride, channels)
    }

    /// Borrows `buf` as `planes` planes (at least `planes * tile_stride *
    /// channels` floats).
    fn with_planes(
        buf: &'a mut [f32],
        planes: usize,
        tile_stride: usize,
        channels: usize,
    ) -> Planes<'a> {
        assert!(
            buf.len() >= planes * tile_stride * channels,
            "winograd planes length"
        );
        Planes {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            planes,
            tile_stride,
            channels,
            _buf: std::marker::PhantomData,
        }
    }

    /// Row `tile` of plane `op` (`channels` floats).
    ///
    /// # Safety
    /// No other reference to this row may be alive while the result is.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn row(&self, op: usize, tile: usize) -> &mut [f32] {
        let start = (op * self.tile_stride + tile) * self.channels;
        assert!(op < self.planes && tile < self.tile_stride && start + self.channels <= self.len);
        // SAFETY: in bounds (checked above), the buffer is borrowed mutably
        // for 'a, and the caller guarantees the row is not aliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.channels) }
    }
}

/// Whether `s` is a convolution this module computes: a 3x3 kernel, stride 1,
/// no dilation, and enough channels for the transforms to pay off (at least 8
/// input channels and 8 filters; a first layer on an RGB image is not worth it).
pub fn applies(s: &Conv2dShape) -> bool {
    s.kernel_h == 3
        && s.kernel_w == 3
        && s.stride_h == 1
        && s.stride_w == 1
        && s.dilation_h == 1
        && s.dilation_w == 1
        && s.in_channels >= 8
        && s.filters >= 8
        && s.out_h >= 2
        && s.out_w >= 2
}

/// A 3x3 kernel `[3, 3, in_channels, filters]` in the Winograd domain:
/// `U = G g G^T`, 16 row-major matrices `[in_channels, filters]`
/// (`u[xi * in_channels * filters + c * filters + k]`, `xi = 4 * row + col`).
#[derive(Debug, Clone)]
pub struct WinogradKernel {
    u: Vec<f32>,
    in_channels: usize,
    filters: usize,
}

impl WinogradKernel {
    /// Transforms `kernel` (`[3, 3, in_channels, filters]`, HWIO).
    ///
    /// # Panics
    /// If `kernel.len() != 9 * in_channels * filters` (an internal invariant:
    /// callers check shapes first).
    pub fn new(kernel: &[f32], in_channels: usize, filters: usize) -> WinogradKernel {
        let mut u = vec![0.0f32; 16 * in_channels * filters];
        transform_kernel_into(kernel, in_channels, filters, &mut u);
        WinogradKernel {
            u,
            in_channels,
            filters,
        }
    }

    /// The kernel of the input gradient of a 3x3 stride-1 convolution:
    /// `dx = conv(dy, g')` with `g'[ky][kx][k][c] = g[2 - ky][2 - kx][c][k]`
    /// (the kernel rotated by 180 degrees, input and output channels
    /// swapped), on `dy` padded by `2 - pad` before (see
    /// [`input_gradient_shape`]). `kernel` is the forward kernel
    /// `[3, 3, in_channels, filters]`; the result maps `filters` channels to
    /// `in_channels`.
    pub fn input_gradient(kernel: &[f32], in_channels: usize, filters: usize) -> WinogradKernel {
        let mut u = vec![0.0f32; 16 * in_channels * filters];
        input_gradient_kernel_into(kernel, in_channels, filters, &mut u);
        WinogradKernel {
            u,
            in_channels: filters,
            filters: in_channels,
        }
    }

    /// The transformed kernel, `[16, in_channels, filters]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.u
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Filters (output channels).
    pub fn filters(&self) -> usize {
        self.filters
    }
}

/// Writes `U = G g G^T` of `kernel` (`[3, 3, in_channels, filters]`) into
/// `u` (`[16, in_channels, filters]`, see [`WinogradKernel`]), without
/// allocating.
///
/// # Panics
/// If a length does not match (an internal invariant).
pub fn transform_kernel_into(kernel: &[f32], in_channels: usize, filters: usize, u: &mut [f32]) {
    let (c_n, k_n) = (in_channels, filters);
    assert_eq!(kernel.len(), 9 * c_n * k_n, "winograd kernel length");
    assert_eq!(
        u.len(),
        16 * c_n * k_n,
        "winograd transformed kernel length"
    );
    // Row `c` of each plane (`filters` floats) is computed from row `c` of
    // each tap: tasks of whole rows, vectorized along the filters.
    let planes = Planes::new(u, c_n, k_n);
    par_ranges(c_n, KERNEL_TASK_PAIRS.div_ceil(k_n.max(1)), |c_range| {
        transform_kernel_rows(kernel, c_n, k_n, c_range, &planes)
    });
}

/// Runs `f` on the consecutive ranges of `0..n`, `per_task` long (the last
/// shorter), in parallel.
fn par_ranges(n: usize, per_task: usize, f: impl Fn(std::ops::Range<usize>) + Sync + Send) {
    let per_task = per_task.max(1);
    (0..n.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| f(t * per_task..((t + 1) * per_task).min(n)));
}

/// (Channel, filter) pairs per task of the kernel transforms (64 KiB of
/// output each for the 16 planes of a transformed kernel, 36 KiB for the
/// nine taps of a kernel gradient).
const KERNEL_TASK_PAIRS: usize = 1024;

/// Lanes of the vectorized kernel transforms: (channel, filter) pairs
/// transformed at once (one AVX-512 register, two AVX2 ones).
const KV: usize = 16;

/// `U = G g G^T` of [`KV`] (channel, filter) pairs at once: `g[tap][lane]`
/// (taps in row-major 3x3 order) to `u[xi][lane]` (`xi = 4 row + col`).
#[inline(always)]
fn transform_lanes(g: &[[f32; KV]; 9], u: &mut [[f32; KV]; 16]) {
    for l in 0..KV {
        let gg = g_times(|ky, kx| g[ky * 3 + kx][l]);
        // (G g) G^T: each row (a, b, c) -> (a, (a + b + c) / 2, (a - b + c) / 2, c).
        for (r, [a, b, c]) in gg.into_iter().enumerate() {
            u[4 * r][l] = a;
            u[4 * r + 1][l] = 0.5 * (a + b + c);
            u[4 * r + 2][l] = 0.5 * (a - b + c);
            u[4 * r + 3][l] = c;
        }
    }
}

/// `dst[..n] = src[..n]` for `n <= KV`; a whole register's worth by fixed-size
/// moves (a `memcpy` call per row would cost more than the transform).
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32], n: usize) {
    if n == KV {
        dst[..KV].copy_from_slice(&src[..KV]);
    } else {
        dst[..n].copy_from_slice(&src[..n]);
    }
}

dispatch_simd! {
    /// [`transform_kernel_into`] for the channels `c_range`: rows `c` of
    /// the 16 planes of `planes` (`[16, in_channels, filters]`).
    fn transform_kernel_rows(
        kernel: &[f32],
        c_n: usize,
        k_n: usize,
        c_range: std::ops::Range<usize>,
        planes: &Planes<'_>
    ) => transform_kernel_rows_body
}

#[inline(always)]
fn transform_kernel_rows_body(
    kernel: &[f32],
    c_n: usize,
    k_n: usize,
    c_range: std::ops::Range<usize>,
    planes: &Planes<'_>,
) {
    let plane = c_n * k_n;
    let mut g = [[0.0f32; KV]; 9];
    let mut out = [[0.0f32; KV]; 16];
    for c in c_range {
        for k0 in (0..k_n).step_by(KV) {
            let n = KV.min(k_n - k0);
            for (t, gt) in g.iter_mut().enumerate() {
                copy_lanes(gt, &kernel[t * plane + c * k_n + k0..], n);
            }
            transform_lanes(&g, &mut out);
            for (op, o) in out.iter().enumerate() {
                // SAFETY: row `c` belongs to this task alone.
                let row = unsafe { planes.row(op, c) };
                copy_lanes(&mut row[k0..], o, n);
            }
        }
    }
}

/// `G g` for one (channel, filter) pair, `g(ky, kx)` the 3x3 kernel: rows
/// `g0`, `(g0 + g1 + g2) / 2`, `(g0 - g1 + g2) / 2`, `g2`.
#[inline(always)]
fn g_times(g: impl Fn(usize, usize) -> f32) -> [[f32; 3]; 4] {
    let col = |kx: usize| {
        let (g0, g1, g2) = (g(0, kx), g(1, kx), g(2, kx));
        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
    };
    let cols = [col(0), col(1), col(2)];
    std::array::from_fn(|r| [cols[0][r], cols[1][r], cols[2][r]])
}

/// Writes the transformed kernel of the input gradient (see
/// [`WinogradKernel::input_gradient`]: `[16, filters, in_channels]`) of the
/// forward kernel `[3, 3, in_channels, filters]` into `u`, without allocating.
///
/// # Panics
/// If a length does not match (an internal invariant).
pub fn input_gradient_kernel_into(
    kernel: &[f32],
    in_channels: usize,
    filters: usize,
    u: &mut [f32],
) {
    let (c_n, k_n) = (in_channels, filters);
    assert_eq!(kernel.len(), 9 * c_n * k_n, "winograd kernel length");
    assert_eq!(
        u.len(),
        16 * c_n * k_n,
        "winograd transformed kernel length"
    );
    // Row `k` of each plane (`in_channels` floats) gathers column `k` of
    // the kernel: tasks of whole blocks of [`KV`] filters, each block read
    // as [`KV`] x [`KV`] tiles (whole cache lines along the filters),
    // transposed in registers' worth, and written as whole lines along the
    // channels.
    let planes = Planes::new(u, k_n, c_n);
    let per_task = KERNEL_TASK_PAIRS / (KV * c_n.max(1));
    par_ranges(k_n.div_ceil(KV), per_task, |b_range| {
        input_gradient_kernel_blocks(kernel, c_n, k_n, b_range, &planes)
    });
}

dispatch_simd! {
    /// [`input_gradient_kernel_into`] for the filter blocks `b_range`
    /// (filters `KV * b ..`): rows `k` of the 16 planes of `planes`
    /// (`[16, filters, in_channels]`).
    fn input_gradient_kernel_blocks(
        kernel: &[f32],
        c_n: usize,
        k_n: usize,
        b_range: std::ops::Range<usize>,
        planes: &Planes<'_>
    ) => input_gradient_kernel_blocks_body
}

#[inline(always)]
fn input_gradient_kernel_blocks_body(
    kernel: &[f32],
    c_n: usize,
    k_n: usize,
    b_range: std::ops::Range<usize>,
    planes: &Planes<'_>,
) {
    let plane = c_n * k_n;
    // tile[kj][t][ci]: filter k0 + kj, tap t of the rotated kernel,
    // channel c0 + ci.
    let mut tile = [[[0.0f32; KV]; 9]; KV];
    let mut out = [[0.0f32; KV]; 16];
    for b in b_range {
        let k0 = b * KV;
        let nk = KV.min(k_n - k0);
        for c0 in (0..c_n).step_by(KV) {
            let nc = KV.min(c_n - c0);
            for t in 0..9 {
                // g'[ky][kx][k][c] = g[2 - ky][2 - kx][c][k]: tap 8 - t.
                for ci in 0..nc {
                    let src = &kernel[(8 - t) * plane + (c0 + ci) * k_n + k0..][..nk];
                    for (g, &v) in tile.iter_mut().zip(src) {
                        g[t][ci] = v;
                    }
                }
            }
            for (kj, g) in tile.iter().enumerate().take(nk) {
                transform_lanes(g, &mut out);
                for (op, o) in out.iter().enumerate() {
                    // SAFETY: row `k0 + kj` belongs to this task alone.
                    let row = unsafe { planes.row(op, k0 + kj) };
                    copy_lanes(&mut row[c0..], o, nc);
                }
            }
        }
    }
}

/// The geometry of the input gradient of the 3x3 stride-1 convolution `s`
/// as a forward convolution of `dy` (`[batch, out_h, out_w, filters]`) with
/// [`WinogradKernel::input_gradient`], giving `dx` (`[batch, in_h, in_w,
/// in_channels]`): pads `2 - pad` before and whatever makes the output
/// `in_h x in_w` after. `None` when `s` is not such a convolution or a pad
/// exceeds 2.
pub fn input_gradient_shape(s: &Conv2dShape) -> Option<Conv2dShape> {
    if !(s.kernel_h == 3 && s.kernel_w == 3 && s.stride_h == 1 && s.stride_w == 1)
        || s.dilation_h != 1
        || s.dilation_w != 1
        || s.pad_top > 2
        || s.pad_left > 2
    {
        return None;
    }
    let (top, left) = (2 - s.pad_top, 2 - s.pad_left);
    // in = out + top + bottom - 2, so bottom = in - out - top + 2.
    let bottom = (s.in_h + 2).checked_sub(s.out_h + top)?;
    let right = (s.in_w + 2).checked_sub(s.out_w + left)?;
    let attrs = cnnc_compiler::graph::ir::Conv2dAttrs {
        in_channels: s.filters,
        filters: s.in_channels,
        kernel_size: [3, 3],
        strides: [1, 1],
        pads: cnnc_compiler::model::Pads2d {
            top,
            bottom,
            left,
            right,
        },
        dilation_rate: [1, 1],
    };
    let g = Conv2dShape::new(&attrs, s.batch, s.out_h, s.out_w).ok()?;
    (g.out_h == s.in_h && g.out_w == s.in_w && applies(&g)).then_some(g)
}

/// `y = conv(x, kernel)` for a geometry where [`applies`] holds, then
/// `epilogue(first_pixel, rows)` on each finished run of output pixels
/// (`rows` is `[pixels, filters]`, `first_pixel` its index among all
/// `batch * out_h * out_w` output pixels) to add a bias, a residual, an
/// activation.
///
/// `x`: `[batch, in_h, in_w, in_channels]`; `y`: `[batch, out_h, out_w,
/// filters]` (overwritten). Padding is `s.pad_top` / `s.pad_left` before and
/// whatever the output size implies after, zeros as in [`super::conv`].
///
/// # Panics
/// If the slices do not match `s` or the kernel (internal invariants).
pub fn winograd_forward(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &WinogradKernel,
    y: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert_eq!(
        (kernel.in_channels, kernel.filters),
        (s.in_channels, s.filters),
        "winograd kernel channels"
    );
    winograd_forward_transformed(s, x, &kernel.u, y, epilogue)
}

/// [`winograd_forward`] with the kernel already transformed into `u`
/// (`[16, in_channels, filters]`, e.g. by [`transform_kernel_into`]).
/// Allocates nothing once the per-thread scratch buffers are warm.
pub fn winograd_forward_transformed(
    s: &Conv2dShape,
    x: &[f32],
    u: &[f32],
    y: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (c_n, k_n) = (s.in_channels, s.filters);
    assert_eq!(
        u.len(),
        16 * c_n * k_n,
        "winograd transformed kernel length"
    );
    // The AVX-512 GEMM: the 16 matrices packed once for all tasks (packed
    // per task, they cost 1/tiles of a task's multiply-adds, but as a
    // scalar-speed copy: about 7% of Fashion-MNIST training at batch 128).
    #[cfg(target_arch = "x86_64")]
    if super::gemm::uses_avx512() {
        let plane = c_n * k_n;
        let u_xi = |xi: usize| MatRef::row_major(&u[xi * plane..][..plane], c_n, k_n);
        return super::sgemm::with_packed(16, u_xi, |packed| {
            forward_tiles(
                s,
                x,
                |xi, a, c| super::sgemm::gemm_packed(a, &packed[xi], c, k_n, false),
                y,
                epilogue,
            )
        });
    }
    // Elsewhere each task's GEMMs read these in place or pack them through
    // the GEMM's per-thread buffers.
    let rhs: [MatRef<'_>; 16] =
        std::array::from_fn(|xi| MatRef::row_major(&u[xi * c_n * k_n..][..c_n * k_n], c_n, k_n));
    forward_tiles(
        s,
        x,
        |xi, a, c| matmul(a, rhs[xi], c, k_n, false, Parallelism::None),
        y,
        epilogue,
    )
}

/// A 3x3 kernel transformed into the Winograd domain once (e.g. when a
/// model is loaded for inference), with each of the 16 matrices `U[xi]`
/// (`[in_channels, filters]`, see [`WinogradKernel`]) prepared for the GEMM
/// ([`super::gemm::Rhs`]: packed into the AVX-512 kernel's panels where it runs), so a
/// forward pass neither transforms nor packs the kernel.
pub struct PreparedWinograd {
    u: PreparedU,
    in_channels: usize,
    filters: usize,
}

enum PreparedU {
    /// The 16 matrices, packed (AVX-512 path).
    #[cfg(target_arch = "x86_64")]
    Packed(Vec<super::sgemm::PackedB>),
    /// `[16, in_channels, filters]` row-major (portable GEMM path, which
    /// reads the right-hand side in place).
    Plain(Vec<f32>),
}

impl PreparedWinograd {
    /// Transforms `kernel` (`[3, 3, in_channels, filters]`, HWIO) and
    /// prepares the 16 matrices for the GEMM in use
    /// ([`super::gemm::uses_avx512`]).
    ///
    /// # Panics
    /// If `kernel.len() != 9 * in_channels * filters` (callers check shapes
    /// first).
    pub fn new(kernel: &[f32], in_channels: usize, filters: usize) -> PreparedWinograd {
        let mut u = vec![0.0f32; 16 * in_channels * filters];
        transform_kernel_into(kernel, in_channels, filters, &mut u);
        #[cfg(target_arch = "x86_64")]
        if super::gemm::uses_avx512() {
            let plane = in_channels * filters;
            let packed = (0..16)
                .map(|xi| {
                    super::sgemm::pack_b(MatRef::row_major(
                        &u[xi * plane..][..plane],
                        in_channels,
                        filters,
                    ))
                })
                .collect();
            return PreparedWinograd {
                u: PreparedU::Packed(packed),
                in_channels,
                filters,
            };
        }
        PreparedWinograd {
            u: PreparedU::Plain(u),
            in_channels,
            filters,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Filters (output channels).
    pub fn filters(&self) -> usize {
        self.filters
    }

    /// Bytes held (panel padding included).
    pub fn bytes(&self) -> usize {
        match &self.u {
            #[cfg(target_arch = "x86_64")]
            PreparedU::Packed(p) => {
                let nr = super::sgemm::NR;
                p.iter().map(|b| b.k() * b.n().div_ceil(nr) * nr * 4).sum()
            }
            PreparedU::Plain(u) => u.len() * 4,
        }
    }
}

impl std::fmt::Debug for PreparedWinograd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedWinograd")
            .field("in_channels", &self.in_channels)
            .field("filters", &self.filters)
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// [`winograd_forward`] with a [`PreparedWinograd`] kernel: no kernel
/// transform or packing per call; allocates nothing once the per-thread
/// scratch buffers are warm.
///
/// # Panics
/// If the slices or the kernel's channels do not match `s`, or [`applies`]
/// does not hold (internal invariants: callers check first).
pub fn winograd_forward_prepared(
    s: &Conv2dShape,
    x: &[f32],
    kernel: &PreparedWinograd,
    y: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (c_n, k_n) = (s.in_channels, s.filters);
    assert_eq!(
        (kernel.in_channels, kernel.filters),
        (c_n, k_n),
        "winograd kernel channels"
    );
    match &kernel.u {
        #[cfg(target_arch = "x86_64")]
        PreparedU::Packed(p) => forward_tiles(
            s,
            x,
            |xi, a, c| super::sgemm::gemm_packed(a, &p[xi], c, k_n, false),
            y,
            epilogue,
        ),
        PreparedU::Plain(u) => winograd_forward_transformed(s, x, u, y, epilogue),
    }
}

/// The Winograd forward pass with `product(xi, v, m)` computing the GEMM
/// `m = v x U[xi]` (`v` `[tiles, in_channels]`, `m` `[tiles, filters]`
/// row-major, single-threaded).
fn forward_tiles(
    s: &Conv2dShape,
    x: &[f32],
    product: impl Fn(usize, MatRef<'_>, &mut [f32]) + Sync,
    y: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert!(applies(s), "winograd geometry");
    assert_eq!(x.len(), s.input_len(), "winograd input length");
    assert_eq!(y.len(), s.output_len(), "winograd output length");
    let (c_n, k_n) = (s.in_channels, s.filters);
    let (tiles_h, tiles_w) = (s.out_h.div_ceil(2), s.out_w.div_ceil(2));
    // Tile rows per task: as many as fit the cache budget, and for small
    // batches few enough that every image splits into several tasks.
    let fit = (TASK_FLOATS / (16 * (c_n + k_n) * tiles_w)).max(1);
    let group = if s.batch < 4 {
        fit.min(tiles_h.div_ceil(4)).max(1)
    } else {
        fit
    };
    let image_out = s.out_h * s.out_w * k_n;
    let all_tiles = s.batch * tiles_h * tiles_w;
    if group * tiles_w < WHOLE_MAX_TASK_TILES && 16 * all_tiles * (c_n + k_n) <= WHOLE_FLOATS {
        forward_whole(s, x, product, y, epilogue);
        return;
    }
    let rows_per_task = 2 * group;
    y.par_chunks_mut(image_out)
        .enumerate()
        .for_each(|(n, y_img)| {
            let x_img = &x[n * s.image_len()..][..s.image_len()];
            y_img
                .par_chunks_mut(rows_per_task * s.out_w * k_n)
                .enumerate()
                .for_each(|(task, y_rows)| {
                    let tr0 = task * group;
                    let tile_rows = (tiles_h - tr0).min(group);
                    let tiles = tile_rows * tiles_w;
                    let work = 16 * tiles * (c_n + k_n) + 17 * c_n + 8 * k_n;
                    with_scratch(work, |buf| {
                        let (v, rest) = buf.split_at_mut(16 * tiles * c_n);
                        let (m, rest) = rest.split_at_mut(16 * tiles * k_n);
                        let (tmp, srow) = rest.split_at_mut(17 * c_n);
                        input_transform(
                            s,
                            x_img,
                            tr0,
                            tile_rows,
                            tiles_w,
                            &Planes::new(v, tiles, c_n),
                            0,
                            tmp,
                        );
                        for xi in 0..16 {
                            let a = MatRef::row_major(
                                &v[xi * tiles * c_n..][..tiles * c_n],
                                tiles,
                                c_n,
                            );
                            product(xi, a, &mut m[xi * tiles * k_n..][..tiles * k_n]);
                        }
                        output_transform(s, m, tiles, 0, tr0, tiles, tiles_w, y_rows, srow);
                    });
                    let first_pixel = n * s.out_h * s.out_w + 2 * tr0 * s.out_w;
                    epilogue(first_pixel, y_rows);
                });
        });
}

/// [`forward_tiles`] in three stages over all tiles of the batch, for few
/// small images (batch 1, 7x7 to 14x14 maps), where tasks of whole tile
/// rows would run GEMMs of a handful of rows, each reading all of `U`:
/// 1. the input transform of every tile (`V`: `[16, tiles, in_channels]`);
/// 2. the 16 GEMMs `M[xi] = V[xi] x U[xi]`, each over all tiles, split
///    over the pool by `xi` (each part of `U` is read once);
/// 3. the output transform and `epilogue`, split by tile rows.
fn forward_whole(
    s: &Conv2dShape,
    x: &[f32],
    product: impl Fn(usize, MatRef<'_>, &mut [f32]) + Sync,
    y: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (c_n, k_n) = (s.in_channels, s.filters);
    let (tiles_h, tiles_w) = (s.out_h.div_ceil(2), s.out_w.div_ceil(2));
    let per_image = tiles_h * tiles_w;
    let all = s.batch * per_image;
    with_stage(16 * all * (c_n + k_n), |buf| {
        let (v, m) = buf.split_at_mut(16 * all * c_n);
        // The input transform in tasks of whole tile rows of one image
        // (each writes its own tiles of every plane), so one image uses
        // every thread.
        let task_rows = (TRANSFORM_TASK_FLOATS / (16 * tiles_w * c_n).max(1)).clamp(1, tiles_h);
        let tasks = tiles_h.div_ceil(task_rows);
        let planes = Planes::new(v, all, c_n);
        (0..s.batch * tasks).into_par_iter().for_each(|t| {
            let (n, tr0) = (t / tasks, (t % tasks) * task_rows);
            let x_img = &x[n * s.image_len()..][..s.image_len()];
            with_scratch(17 * c_n, |tmp| {
                let rows = task_rows.min(tiles_h - tr0);
                input_transform(
                    s,
                    x_img,
                    tr0,
                    rows,
                    tiles_w,
                    &planes,
                    n * per_image + tr0 * tiles_w,
                    tmp,
                );
            });
        });
        let v: &[f32] = v;
        m.par_chunks_mut(all * k_n)
            .enumerate()
            .for_each(|(xi, mc)| {
                let a = MatRef::row_major(&v[xi * all * c_n..][..all * c_n], all, c_n);
                product(xi, a, mc);
            });
        let m: &[f32] = m;
        let image_out = s.out_h * s.out_w * k_n;
        y.par_chunks_mut(image_out)
            .enumerate()
            .for_each(|(n, y_img)| {
                y_img
                    .par_chunks_mut(2 * s.out_w * k_n)
                    .enumerate()
                    .for_each(|(tr, y_rows)| {
                        with_scratch(8 * k_n, |srow| {
                            let tile0 = n * per_image + tr * tiles_w;
                            output_transform(s, m, all, tile0, tr, tiles_w, tiles_w, y_rows, srow);
                        });
                        epilogue(n * s.out_h * s.out_w + 2 * tr * s.out_w, y_rows);
                    });
            });
    });
}

dispatch_simd! {
    /// Fills rows `tile0 ..` of `v` (`[16, tile_stride, in_channels]`) with
    /// `B^T d B` of the input tiles of tile rows `tr0 .. tr0 + tile_rows` of
    /// one image. Calls running at once must write disjoint tiles.
    fn input_transform(
        s: &Conv2dShape,
        x_img: &[f32],
        tr0: usize,
        tile_rows: usize,
        tiles_w: usize,
        v: &Planes<'_>,
        tile0: usize,
        tmp: &mut [f32]
    ) => input_transform_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_transform_body(
    s: &Conv2dShape,
    x_img: &[f32],
    tr0: usize,
    tile_rows: usize,
    tiles_w: usize,
    v: &Planes<'_>,
    tile0: usize,
    tmp: &mut [f32],
) {
    let c_n = s.in_channels;
    // `tmp`: a row of zeros (`in_channels`), then `B^T d` (`[4][4][in_channels]`).
    let (zeros, t) = tmp.split_at_mut(c_n);
    zeros.fill(0.0);
    let zeros: &[f32] = zeros;
    // The 16 input pixels of a tile (rows of `in_channels` values, zeros
    // outside the image), then B^T d B channel by channel.
    let mut d: [&[f32]; 16] = [zeros; 16];
    for tr in 0..tile_rows {
        for tc in 0..tiles_w {
            let tile = tile0 + tr * tiles_w + tc;
            let iy0 = (2 * (tr0 + tr)) as isize - s.pad_top as isize;
            let ix0 = (2 * tc) as isize - s.pad_left as isize;
            for (i, row) in d.chunks_exact_mut(4).enumerate() {
                let iy = iy0 + i as isize;
                for (j, px) in row.iter_mut().enumerate() {
                    let ix = ix0 + j as isize;
                    *px = if iy < 0 || ix < 0 || iy as usize >= s.in_h || ix as usize >= s.in_w {
                        zeros
                    } else {
                        &x_img[((iy as usize) * s.in_w + ix as usize) * c_n..][..c_n]
                    };
                }
            }
            // t = B^T d: row 0 = d0 - d2, row 1 = d1 + d2, row 2 = d2 - d1, row 3 = d1 - d3.
            for j in 0..4 {
                let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
                let (t01, rest) = t.split_at_mut(8 * c_n);
                let (t0, t1) = t01.split_at_mut(4 * c_n);
                let (t2, t3) = rest.split_at_mut(4 * c_n);
                let (t0, t1, t2, t3) = (
                    &mut t0[j * c_n..][..c_n],
                    &mut t1[j * c_n..][..c_n],
                    &mut t2[j * c_n..][..c_n],
                    &mut t3[j * c_n..][..c_n],
                );
                for c in 0..c_n {
                    t0[c] = d0[c] - d2[c];
                    t1[c] = d1[c] + d2[c];
                    t2[c] = d2[c] - d1[c];
                    t3[c] = d1[c] - d3[c];
                }
            }
            // V = t B: per row (e0..e3) -> (e0 - e2, e1 + e2, e2 - e1, e1 - e3).
            for i in 0..4 {
                let row = &t[i * 4 * c_n..][..4 * c_n];
                let (e0, e1, e2, e3) = (
                    &row[..c_n],
                    &row[c_n..2 * c_n],
                    &row[2 * c_n..3 * c_n],
                    &row[3 * c_n..],
                );
                for (j, op) in (0..4).map(|j| (j, 4 * i + j)) {
                    // SAFETY: this call is the only writer of its tiles
                    // (see `input_transform`'s callers).
                    let dst = unsafe { v.row(op, tile) };
                    // (The length as `c_n`, so the loops below vectorize.)
                    let dst = &mut dst[..c_n];
                    match j {
                        0 => dst
                            .iter_mut()
                            .enumerate()
                            .for_each(|(c, o)| *o = e0[c] - e2[c]),
                        1 => dst
                            .iter_mut()
                            .enumerate()
                            .for_each(|(c, o)| *o = e1[c] + e2[c]),
                        2 => dst
                            .iter_mut()
                            .enumerate()
                            .for_each(|(c, o)| *o = e2[c] - e1[c]),
                        _ => dst
                            .iter_mut()
                            .enumerate()
                            .for_each(|(c, o)| *o = e1[c] - e3[c]),
                    }
                }
            }
        }
    }
}

dispatch_simd! {
    /// Writes `A^T M A` of tiles `tile0 .. tile0 + tiles` (`m`: `[16,
    /// tile_stride, filters]`) into the output rows of the task (`y_rows`:
    /// from output row `2 * tr0`, whole rows).
    fn output_transform(
        s: &Conv2dShape,
        m: &[f32],
        tile_stride: usize,
        tile0: usize,
        tr0: usize,
        tiles: usize,
        tiles_w: usize,
        y_rows: &mut [f32],
        srow: &mut [f32]
    ) => output_transform_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_transform_body(
    s: &Conv2dShape,
    m: &[f32],
    tile_stride: usize,
    tile0: usize,
    tr0: usize,
    tiles: usize,
    tiles_w: usize,
    y_rows: &mut [f32],
    srow: &mut [f32],
) {
    let k_n = s.filters;
    // `srow`: A^T M, `[2][4][filters]`.
    for tile in 0..tiles {
        let (tr, tc) = (tile / tiles_w, tile % tiles_w);
        let mm = |xi: usize| &m[(xi * tile_stride + tile0 + tile) * k_n..][..k_n];
        // s = A^T M: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (rows of 4).
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mm(j), mm(4 + j), mm(8 + j), mm(12 + j));
            let (s0, s1) = srow.split_at_mut(4 * k_n);
            let (s0, s1) = (&mut s0[j * k_n..][..k_n], &mut s1[j * k_n..][..k_n]);
            for k in 0..k_n {
                s0[k] = m0[k] + m1[k] + m2[k];
                s1[k] = m1[k] - m2[k] - m3[k];
            }
        }
        // Y = s A: per row (f0..f3) -> (f0 + f1 + f2, f1 - f2 - f3).
        for r in 0..2 {
            let oy = 2 * tr + r; // row within the task's rows
            if 2 * tr0 + oy >= s.out_h {
                continue;
            }
            let row = &srow[r * 4 * k_n..][..4 * k_n];
            let (f0, f1, f2, f3) = (
                &row[..k_n],
                &row[k_n..2 * k_n],
                &row[2 * k_n..3 * k_n],
                &row[3 * k_n..],
            );
            let ox = 2 * tc;
            let dst = &mut y_rows[(oy * s.out_w + ox) * k_n..][..k_n];
            for k in 0..k_n {
                dst[k] = f0[k] + f1[k] + f2[k];
            }
            if ox + 1 < s.out_w {
                let dst = &mut y_rows[(oy * s.out_w + ox + 1) * k_n..][..k_n];
                for k in 0..k_n {
                    dst[k] = f1[k] - f2[k] - f3[k];
                }
            }
        }
    }
}

/// Floats of one kernel-gradient block's Winograd domain, `16 * tiles *
/// (in_channels + filters)` (4 MiB; 2 MiB was 2-3% slower, 8 MiB 6-16%): the block
/// is this many floats' worth of whole images, at least one.
const DK_BLOCK_FLOATS: usize = 1024 * 1024;

/// Kernel-gradient groups of whole images (partial sums of `16 *
/// in_channels * filters` floats each, added in order): at most this many,
/// each at least [`DK_MIN_GROUP_TILES`] tiles. 8 rather than im2col's 16
/// (`Conv2dShape::group_rows` in [`super::conv`]): Fashion-MNIST training
/// at batch 128 peaks 12-19 MB lower, at the same speed on 1 and 2 threads.
const DK_MAX_GROUPS: usize = 8;
const DK_MIN_GROUP_TILES: usize = 256;

/// The kernel gradient of the 3x3 stride-1 convolution `s` ([`applies`]) by
/// Winograd F(2x2, 3x3), overwriting `dk` (`[3, 3, in_channels, filters]`,
/// HWIO) with `d loss / d kernel` for `x` (`[batch, in_h, in_w,
/// in_channels]`) and `dz` (`[batch, out_h, out_w, filters]`, d loss / d
/// the pre-activation output).
///
/// Differentiating the forward pass `Y = A^T [(G g G^T) ⊙ (B^T d B)] A`
/// (Lavin & Gray 2016) per tile gives:
/// - `dM = A dY A^T` per 2x2 output tile of `dz` (zero beyond the output);
/// - `dU[xi] = Σ_tiles V[xi]ᵀ × dM[xi]`: 16 GEMMs `[in_channels, tiles] x
///   [tiles, filters]`, 2.25x fewer multiply-adds than im2col's `colᵀ x dz`;
/// - `dg = G^T dU G` per (channel, filter).
///
/// The tiles are summed in fixed groups of whole images (partial sums added
/// in group order) and, within a group, in fixed blocks, so the result does
/// not depend on the thread count. Groups run in parallel; when there are
/// fewer groups than threads, each block's transforms and GEMMs are split
/// over the pool instead (the same bits).
///
/// # Panics
/// If [`applies`] does not hold or a length does not match (internal
/// invariants: callers check first).
pub fn kernel_gradient(s: &Conv2dShape, x: &[f32], dz: &[f32], dk: &mut [f32]) {
    assert!(applies(s), "winograd geometry");
    assert_eq!(x.len(), s.input_len(), "winograd input length");
    assert_eq!(dz.len(), s.output_len(), "winograd output gradient length");
    assert_eq!(dk.len(), s.kernel_len(), "winograd kernel gradient length");
    let (c_n, k_n) = (s.in_channels, s.filters);
    let (tiles_h, tiles_w) = (s.out_h.div_ceil(2), s.out_w.div_ceil(2));
    let per_image = tiles_h * tiles_w;
    let plane = c_n * k_n;
    if s.batch == 0 || per_image == 0 {
        dk.fill(0.0);
        return;
    }
    // Fixed groups of whole images (independent of the thread count).
    let all_tiles = s.batch * per_image;
    let mut groups = 1;
    while groups * 2 <= DK_MAX_GROUPS && all_tiles / (groups * 2) >= DK_MIN_GROUP_TILES {
        groups *= 2;
    }
    let group_imgs = s.batch.div_ceil(groups.min(s.batch));
    let groups = s.batch.div_ceil(group_imgs);
    let block_imgs = (DK_BLOCK_FLOATS / (16 * per_image * (c_n + k_n))).clamp(1, group_imgs);
    let split = groups < rayon::current_num_threads();
    let image_in = s.image_len();
    let image_out = s.out_h * s.out_w * k_n;
    super::scratch::with_partials(groups * 16 * plane, |partials| {
        partials
            .par_chunks_mut(16 * plane)
            .enumerate()
            .for_each(|(gi, du)| {
                let n_end = ((gi + 1) * group_imgs).min(s.batch);
                let mut n0 = gi * group_imgs;
                let mut first = true;
                while n0 < n_end {
                    let imgs = block_imgs.min(n_end - n0);
                    let tiles = imgs * per_image;
                    with_scratch(16 * tiles * (c_n + k_n), |buf| {
                        let (v, dm) = buf.split_at_mut(16 * tiles * c_n);
                        // The transforms, one image at a time (`tmp`: the
                        // input transform's `17 * in_channels` floats, then a
                        // row of `filters` zeros).
                        with_stage(17 * c_n + k_n, |tmp| {
                            let (tmp, zeros) = tmp.split_at_mut(17 * c_n);
                            zeros.fill(0.0);
                            for i in 0..imgs {
                                let n = n0 + i;
                                let x_img = &x[n * image_in..][..image_in];
                                let dz_img = &dz[n * image_out..][..image_out];
                                let t0 = i * per_image;
                                input_transform(
                                    s,
                                    x_img,
                                    0,
                                    tiles_h,
                                    tiles_w,
                                    &Planes::new(v, tiles, c_n),
                                    t0,
                                    tmp,
                                );
                                output_gradient_transform(s, dz_img, zeros, dm, tiles, t0);
                            }
                        });
                        let par = if split {
                            Parallelism::Rayon(0)
                        } else {
                            Parallelism::None
                        };
                        for xi in 0..16 {
                            let a = MatRef::row_major(
                                &v[xi * tiles * c_n..][..tiles * c_n],
                                tiles,
                                c_n,
                            );
                            let b = MatRef::row_major(
                                &dm[xi * tiles * k_n..][..tiles * k_n],
                                tiles,
                                k_n,
                            );
                            matmul(a.t(), b, &mut du[xi * plane..][..plane], k_n, !first, par);
                        }
                    });
                    first = false;
                    n0 += imgs;
                }
            });
        // dU = Σ partials (in group order), then dg = G^T dU G, in tasks
        // of whole rows `c` of dk's nine planes.
        let partials = &partials[..groups * 16 * plane];
        let planes = Planes::with_planes(dk, 9, c_n, k_n);
        par_ranges(c_n, KERNEL_TASK_PAIRS.div_ceil(k_n), |c_range| {
            kernel_gradient_rows(partials, c_n, k_n, c_range, &planes)
        });
    });
}

dispatch_simd! {
    /// `dk = G^T dU G` for the channels `c_range`, with `dU` the sum of
    /// `partials` (whole `[16, plane]` sums, `xi = 4 row + col`, added in
    /// order; `plane = in_channels * filters`): rows `c` of the nine planes
    /// of `dk` (`[3, 3, in_channels, filters]`, HWIO).
    ///
    /// With `G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]`, a
    /// row or column `(e0, e1, e2, e3)` maps to
    /// `(e0 + (e1 + e2) / 2, (e1 - e2) / 2, (e1 + e2) / 2 + e3)`.
    fn kernel_gradient_rows(
        partials: &[f32],
        c_n: usize,
        k_n: usize,
        c_range: std::ops::Range<usize>,
        dk: &Planes<'_>
    ) => kernel_gradient_rows_body
}

#[inline(always)]
fn kernel_gradient_rows_body(
    partials: &[f32],
    c_n: usize,
    k_n: usize,
    c_range: std::ops::Range<usize>,
    dk: &Planes<'_>,
) {
    let plane = c_n * k_n;
    let gt = |e: [f32; 4]| {
        [
            e[0] + 0.5 * (e[1] + e[2]),
            0.5 * (e[1] - e[2]),
            0.5 * (e[1] + e[2]) + e[3],
        ]
    };
    let mut du = [[0.0f32; KV]; 16];
    let mut out = [[0.0f32; KV]; 9];
    for c in c_range {
        for k0 in (0..k_n).step_by(KV) {
            let n = KV.min(k_n - k0);
            for (xi, d) in du.iter_mut().enumerate() {
                let at = xi * plane + c * k_n + k0;
                let mut sums = partials.chunks_exact(16 * plane);
                if let Some(first) = sums.next() {
                    copy_lanes(d, &first[at..], n);
                }
                for p in sums {
                    for (o, v) in d[..n].iter_mut().zip(&p[at..at + n]) {
                        *o += v;
                    }
                }
            }
            for l in 0..KV {
                let u = |xi: usize| du[xi][l];
                // Columns first: G^T applied to each column j of dU.
                let cols: [[f32; 3]; 4] =
                    std::array::from_fn(|j| gt([u(j), u(4 + j), u(8 + j), u(12 + j)]));
                // Then each row i of (G^T dU) times G.
                for i in 0..3 {
                    let row = gt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                    for (j, v) in row.into_iter().enumerate() {
                        out[3 * i + j][l] = v;
                    }
                }
            }
            for (tap, o) in out.iter().enumerate() {
                // SAFETY: row `c` belongs to this task alone.
                let row = unsafe { dk.row(tap, c) };
                copy_lanes(&mut row[k0..], o, n);
            }
        }
    }
}

dispatch_simd! {
    /// Writes `dM = A dY A^T` of every 2x2 output tile of one image's output
    /// gradient `dz_img` (`[out_h, out_w, filters]`; `zeros`, a row of
    /// `filters` zeros, beyond the output) into rows `tile0 ..` of `dm`
    /// (`[16, tile_stride, filters]`).
    fn output_gradient_transform(
        s: &Conv2dShape,
        dz_img: &[f32],
        zeros: &[f32],
        dm: &mut [f32],
        tile_stride: usize,
        tile0: usize
    ) => output_gradient_transform_body
}

#[inline(always)]
fn output_gradient_transform_body(
    s: &Conv2dShape,
    dz_img: &[f32],
    zeros: &[f32],
    dm: &mut [f32],
    tile_stride: usize,
    tile0: usize,
) {
    let k_n = s.filters;
    let (tiles_h, tiles_w) = (s.out_h.div_ceil(2), s.out_w.div_ceil(2));
    let px = |oy: usize, ox: usize| -> &[f32] {
        if oy < s.out_h && ox < s.out_w {
            &dz_img[(oy * s.out_w + ox) * k_n..][..k_n]
        } else {
            zeros
        }
    };
    // Row `i` of `A dY` is `(p, q)` = `sign * (u ± v)` of two output pixels
    // (rows (a, b), (a + c, b + d), (a - c, b - d), -(c, d)); times `A^T` it
    // gives `(p, p + q, p - q, -q)` in planes `4i .. 4i + 3`. Negation is
    // exact, so `-(c + d)` has the bits of `-c - d`.
    #[inline(always)]
    fn row(
        dm: &mut [f32],
        at: impl Fn(usize) -> usize,
        k_n: usize,
        p: impl Fn(usize) -> f32,
        q: impl Fn(usize) -> f32,
    ) {
        // The four destination rows, in increasing planes.
        let (o0, o1, o2, o3) = (at(0), at(1), at(2), at(3));
        let (r0, rest) = dm[o0..].split_at_mut(o1 - o0);
        let (r1, rest) = rest.split_at_mut(o2 - o1);
        let (r2, r3) = rest.split_at_mut(o3 - o2);
        let (r0, r1, r2, r3) = (
            &mut r0[..k_n],
            &mut r1[..k_n],
            &mut r2[..k_n],
            &mut r3[..k_n],
        );
        for k in 0..k_n {
            let (pk, qk) = (p(k), q(k));
            r0[k] = pk;
            r1[k] = pk + qk;
            r2[k] = pk - qk;
            r3[k] = -qk;
        }
    }
    for tr in 0..tiles_h {
        for tc in 0..tiles_w {
            let tile = tile0 + tr * tiles_w + tc;
            let (a, b) = (px(2 * tr, 2 * tc), px(2 * tr, 2 * tc + 1));
            let (c, d) = (px(2 * tr + 1, 2 * tc), px(2 * tr + 1, 2 * tc + 1));
            let (a, b, c, d) = (&a[..k_n], &b[..k_n], &c[..k_n], &d[..k_n]);
            let at = |i: usize| move |j: usize| ((4 * i + j) * tile_stride + tile) * k_n;
            row(dm, at(0), k_n, |k| a[k], |k| b[k]);
            row(dm, at(1), k_n, |k| a[k] + c[k], |k| b[k] + d[k]);
            row(dm, at(2), k_n, |k| a[k] - c[k], |k| b[k] - d[k]);
            row(dm, at(3), k_n, |k| -c[k], |k| -d[k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv2d_forward;
    use cnnc_compiler::graph::ir::Conv2dAttrs;
    use cnnc_compiler::model::{Activation, Pads2d};

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The geometry of a 3x3 stride-1 convolution of `batch` `h x w x c`
    /// inputs to `k` filters.
    fn shape3x3(batch: usize, h: usize, w: usize, c: usize, k: usize, pads: Pads2d) -> Conv2dShape {
        let attrs = Conv2dAttrs {
            in_channels: c,
            filters: k,
            kernel_size: [3, 3],
            strides: [1, 1],
            pads,
            dilation_rate: [1, 1],
        };
        Conv2dShape::new(&attrs, batch, h, w).unwrap()
    }

    fn check(batch: usize, h: usize, w: usize, c: usize, k: usize, pads: Pads2d) {
        let s = shape3x3(batch, h, w, c, k, pads);
        let x = lcg(1, s.input_len());
        let kernel = lcg(2, s.kernel_len());
        let mut want = vec![0.0; s.output_len()];
        conv2d_forward(&s, &x, &kernel, None, Activation::Linear, &mut want).unwrap();
        let wk = WinogradKernel::new(&kernel, c, k);
        let mut got = vec![f32::NAN; s.output_len()];
        let seen = std::sync::Mutex::new(Vec::new());
        winograd_forward(&s, &x, &wk, &mut got, |first, rows| {
            seen.lock().unwrap().push((first, rows.len() / k));
        });
        // Sums of 9 * c products of values in [-1, 1]: compare to that scale.
        let scale = (9.0 * c as f32).sqrt();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 * scale * 9.0,
                "{batch}x{h}x{w}x{c}->{k} {pads:?}: element {i}: {a} vs {b}"
            );
        }
        // The epilogue saw every output pixel exactly once, in runs.
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        let mut next = 0;
        for (first, len) in seen {
            assert_eq!(first, next);
            next += len;
        }
        assert_eq!(next, s.rows());
    }

    const SAME: Pads2d = Pads2d {
        top: 1,
        bottom: 1,
        left: 1,
        right: 1,
    };

    #[test]
    fn matches_im2col_convolution_for_same_padding() {
        check(1, 14, 14, 16, 24, SAME);
        check(2, 7, 7, 8, 8, SAME);
        check(3, 5, 9, 12, 17, SAME);
        check(5, 8, 8, 32, 16, SAME);
    }

    #[test]
    fn matches_im2col_convolution_for_valid_and_uneven_padding() {
        let none = Pads2d::default();
        check(2, 9, 6, 8, 8, none);
        check(1, 4, 4, 8, 9, none);
        // TensorFlow's `same` on an even input with stride 1 is symmetric; an
        // asymmetric (0, 2) padding exercises the bottom/right edge tiles.
        check(
            2,
            6,
            7,
            9,
            8,
            Pads2d {
                top: 0,
                bottom: 2,
                left: 2,
                right: 0,
            },
        );
    }

    #[test]
    fn input_gradient_matches_the_im2col_backward_pass() {
        use crate::kernels::conv::conv2d_backward;
        for (batch, h, w, c, k, pads) in [
            (2, 7, 9, 8, 12, SAME),
            (1, 12, 12, 16, 8, Pads2d::default()),
            (
                3,
                6,
                5,
                9,
                10,
                Pads2d {
                    top: 0,
                    bottom: 2,
                    left: 1,
                    right: 1,
                },
            ),
        ] {
            let s = shape3x3(batch, h, w, c, k, pads);
            let x = lcg(3, s.input_len());
            let kernel = lcg(4, s.kernel_len());
            let y = vec![0.0; s.output_len()];
            let dy0 = lcg(5, s.output_len());
            let mut dy = dy0.clone();
            let mut want = vec![0.0; s.input_len()];
            conv2d_backward(
                &s,
                &x,
                &kernel,
                &y,
                Activation::Linear,
                &mut dy,
                Some(&mut want),
                None,
                None,
            )
            .unwrap();
            let g = input_gradient_shape(&s).expect("a 3x3 stride-1 conv");
            let wk = WinogradKernel::input_gradient(&kernel, c, k);
            let mut got = vec![f32::NAN; s.input_len()];
            winograd_forward(&g, &dy0, &wk, &mut got, |_, _| {});
            let scale = (9.0 * k as f32).sqrt();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 2e-4 * scale, "{i}: {a} vs {b}");
            }
        }
    }

    /// `dk[ky][kx][c][f] = Σ x[n, oy + ky - top, ox + kx - left, c] ·
    /// dz[n, oy, ox, f]` in f64, and `Σ |x · dz|` per element (the error
    /// scale).
    fn direct_kernel_gradient(s: &Conv2dShape, x: &[f32], dz: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (c_n, k_n) = (s.in_channels, s.filters);
        let mut dk = vec![0.0f64; s.kernel_len()];
        let mut mag = vec![0.0f64; s.kernel_len()];
        for n in 0..s.batch {
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy + ky) as isize - s.pad_top as isize;
                            let ix = (ox + kx) as isize - s.pad_left as isize;
                            if iy < 0 || ix < 0 || iy as usize >= s.in_h || ix as usize >= s.in_w {
                                continue;
                            }
                            let xp = &x
                                [((n * s.in_h + iy as usize) * s.in_w + ix as usize) * c_n..]
                                [..c_n];
                            let dp = &dz[((n * s.out_h + oy) * s.out_w + ox) * k_n..][..k_n];
                            for (c, &xv) in xp.iter().enumerate() {
                                for (f, &dv) in dp.iter().enumerate() {
                                    let i = ((ky * 3 + kx) * c_n + c) * k_n + f;
                                    let p = xv as f64 * dv as f64;
                                    dk[i] += p;
                                    mag[i] += p.abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        (dk, mag)
    }

    #[test]
    fn kernel_gradient_matches_the_direct_sum_and_not_the_thread_count() {
        let asym = Pads2d {
            top: 0,
            bottom: 2,
            left: 1,
            right: 1,
        };
        // (batch, h, w, c, k, pads): odd sizes (partial edge tiles), valid
        // and uneven padding; 12 images of 14x14 are 2 groups, and 64 + 64
        // channels make blocks of 5 images (groups of 6: blocks 5 + 1).
        for (batch, h, w, c, k, pads) in [
            (2, 7, 9, 8, 12, SAME),
            (1, 12, 12, 16, 8, Pads2d::default()),
            (3, 6, 5, 9, 10, asym),
            (12, 14, 14, 64, 64, SAME),
        ] {
            let s = shape3x3(batch, h, w, c, k, pads);
            let x = lcg(7, s.input_len());
            let dz = lcg(8, s.output_len());
            let (want, mag) = direct_kernel_gradient(&s, &x, &dz);
            let mut bits = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut got = vec![f32::NAN; s.kernel_len()];
                pool.install(|| kernel_gradient(&s, &x, &dz, &mut got));
                for (i, ((&a, &b), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    let tol = 64.0 * f32::EPSILON as f64 * m;
                    assert!(
                        (a as f64 - b).abs() <= tol,
                        "{batch}x{h}x{w}x{c}->{k} {pads:?}, {threads} threads: dk[{i}] = {a}, want {b} (tolerance {tol:e})"
                    );
                }
                bits.push(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
            assert!(
                bits.windows(2).all(|p| p[0] == p[1]),
                "bits depend on the thread count"
            );
        }
    }

    /// `U = G g G^T` of one 3x3 kernel `g(ky, kx)`, in f64 (`xi = 4 row + col`).
    fn reference_u(g: impl Fn(usize, usize) -> f64) -> [f64; 16] {
        let gm = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        std::array::from_fn(|xi| {
            let (i, j) = (xi / 4, xi % 4);
            (0..9)
                .map(|t| gm[i][t / 3] * g(t / 3, t % 3) * gm[j][t % 3])
                .sum()
        })
    }

    #[test]
    fn kernel_transforms_match_g_g_gt_and_not_the_thread_count() {
        // Channel and filter counts below, at and past the 16 lanes, and
        // products spanning several tasks (written by a reviewer).
        for (c_n, k_n) in [
            (8, 8),
            (9, 17),
            (16, 16),
            (24, 40),
            (64, 128),
            (3, 130),
            (70, 33),
            (1, 2000),
        ] {
            let p = c_n * k_n;
            let w = lcg(9, 9 * p);
            let mut bits = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (mut f, mut i) = (vec![f32::NAN; 16 * p], vec![f32::NAN; 16 * p]);
                pool.install(|| {
                    transform_kernel_into(&w, c_n, k_n, &mut f);
                    input_gradient_kernel_into(&w, c_n, k_n, &mut i)
                });
                for c in 0..c_n {
                    for k in 0..k_n {
                        let uf = reference_u(|y, x| w[(y * 3 + x) * p + c * k_n + k] as f64);
                        // The rotated kernel, channels and filters swapped.
                        let ui =
                            reference_u(|y, x| w[((2 - y) * 3 + 2 - x) * p + c * k_n + k] as f64);
                        for xi in 0..16 {
                            let (gf, gi) = (f[xi * p + c * k_n + k], i[xi * p + k * c_n + c]);
                            assert!(
                                (gf as f64 - uf[xi]).abs() <= 2e-6,
                                "fwd {c_n}x{k_n} {xi} {c} {k}"
                            );
                            assert!(
                                (gi as f64 - ui[xi]).abs() <= 2e-6,
                                "igrad {c_n}x{k_n} {xi} {c} {k}"
                            );
                        }
                    }
                }
                bits.push(
                    [f, i]
                        .concat()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                );
            }
            assert!(
                bits.windows(2).all(|b| b[0] == b[1]),
                "{c_n}x{k_n}: the thread count changes the bits"
            );
        }
    }

    #[test]
    fn applies_only_to_3x3_stride_1_undilated() {
        let mut attrs = Conv2dAttrs {
            in_channels: 16,
            filters: 16,
            kernel_size: [3, 3],
            strides: [1, 1],
            pads: SAME,
            dilation_rate: [1, 1],
        };
        assert!(applies(&Conv2dShape::new(&attrs, 1, 8, 8).unwrap()));
        attrs.strides = [2, 2];
        assert!(!applies(&Conv2dShape::new(&attrs, 1, 8, 8).unwrap()));
        attrs.strides = [1, 1];
        attrs.dilation_rate = [2, 2];
        attrs.pads = Pads2d {
            top: 2,
            bottom: 2,
            left: 2,
            right: 2,
        };
        assert!(!applies(&Conv2dShape::new(&attrs, 1, 8, 8).unwrap()));
        attrs.dilation_rate = [1, 1];
        attrs.in_channels = 3;
        attrs.pads = SAME;
        assert!(!applies(&Conv2dShape::new(&attrs, 1, 8, 8).unwrap()));
    }

    /// Wall time of im2col + GEMM vs Winograd on the shapes of the Fashion
    /// CNN and ResNet-50 (a measurement, not a check: `cargo test --release
    /// -p cnnc-runtime --lib winograd_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn winograd_timing() {
        for &(batch, hw, c, k) in &[
            (256, 14, 64, 128),
            (256, 14, 128, 128),
            (256, 7, 128, 256),
            (256, 7, 256, 256),
            (1, 14, 128, 128),
            (1, 56, 64, 64),
            (1, 28, 128, 128),
            (1, 14, 256, 256),
            (1, 7, 512, 512),
            (8, 56, 64, 64),
            (8, 14, 256, 256),
        ] {
            let s = shape3x3(batch, hw, hw, c, k, SAME);
            let x = lcg(1, s.input_len());
            let kernel = lcg(2, s.kernel_len());
            let mut y = vec![0.0; s.output_len()];
            let reps = (2e9 / (2.0 * s.macs() as f64)).clamp(1.0, 200.0) as usize;
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            };
            let direct = time(&mut || {
                conv2d_forward(&s, &x, &kernel, None, Activation::Linear, &mut y).unwrap()
            });
            let wk = WinogradKernel::new(&kernel, c, k);
            let wino = time(&mut || winograd_forward(&s, &x, &wk, &mut y, |_, _| {}));
            let transform = time(&mut || {
                std::hint::black_box(WinogradKernel::new(&kernel, c, k));
            });
            let gflops = |t: f64| 2.0 * s.macs() as f64 / t / 1e9;
            println!(
                "b{batch} {hw}x{hw}x{c}->{k}: im2col {:.3} ms ({:.0} GFLOP/s), winograd {:.3} ms ({:.0} effective GFLOP/s), x{:.2}; kernel transform {:.3} ms",
                direct * 1e3,
                gflops(direct),
                wino * 1e3,
                gflops(wino),
                direct / wino,
                transform * 1e3
            );
        }
    }
}
