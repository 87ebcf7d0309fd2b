//! An AVX-512 single-precision GEMM (`c = a × b` or `c += a × b`, with an
//! optional fused bias / residual / relu epilogue), used when the CPU reports
//! `avx512f` at run time (the `gemm` crate's AVX-512 kernels need a nightly
//! compiler, so on stable it stops at AVX2).
//!
//! Goto/BLIS blocking (Goto & van de Geijn 2008, "Anatomy of
//! high-performance matrix multiplication"; Van Zee & van de Geijn 2015,
//! "BLIS"), transposed for a row-major `c`:
//!
//! - the micro-kernel computes an [`MR`]×[`NR`] = 14×32 tile of `c` in 28 zmm
//!   accumulators: per depth step it loads two 16-lane vectors of `b` and
//!   broadcasts one `a` value per row (28 FMAs, 16 loads: the two FMA ports
//!   stay busy while the loads fit the load ports); narrower variants (1..14
//!   rows, 16 columns) handle edge tiles without computing padding;
//! - `b` is packed once into depth blocks of at most [`KC`] rows (split evenly,
//!   so no short leftover block) of [`NR`]-column panels ([`PackedB`], shared
//!   by every row block of a conv layer and by all threads), or, for products
//!   with few rows, read in place (packing would cost more than the product);
//! - `a` is read in place when its rows are contiguous (im2col buffers,
//!   activations) and copied panel by panel otherwise (transposed views);
//! - the micro-kernel prefetches `b` `PF_B` depth steps ahead, and fetches
//!   into L2 the next packed `b` panel while it works on one already in
//!   cache (see `Tile::ahead`), or the next row panel of an `a` whose rows
//!   are one contiguous run, and the tile of `c` below its own
//!   (`Tile::below`): a batch-1 layer's operands come from memory;
//! - loops, outermost first: column blocks of `NC_PANELS` panels, row blocks
//!   of at most `MC` rows (split evenly), depth blocks, then either column
//!   panels over row panels (one `b` panel stays in L1 while the `a` panels
//!   stream from L2: long depth blocks, many rows, `a` not one contiguous
//!   run per panel) or row panels over column panels (one `a` panel stays
//!   in L1 while the next is fetched: short depths, few rows, or contiguous
//!   `a` rows); the `c` block stays in L2 across depth blocks.
//!
//! Determinism: every element of `c` is computed by the same sequence of
//! operations (depth blocks in order; within a block, FMAs in depth order
//! into a zeroed accumulator, then added to `c`) whatever the tile shape,
//! the loop blocking, the packing choice and the thread split, so serial,
//! parallel, packed and in-place products give identical bits.

#![cfg(target_arch = "x86_64")]

use super::gemm::{EpilogueActivation, MatRef};
use crate::buffer::AlignedBuf;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Depth steps of `b` the micro-kernel fetches ahead (`prefetcht0`, one
/// per 64-byte line). A batch-1 layer's weights are read once per pass,
/// from memory rather than cache, and the hardware prefetcher alone left
/// the kernel waiting on them: ResNet-50's 7x7 stage at batch 1 ran at
/// about 85 GFLOP/s (e.g. conv5_block3_2, 2.6 ms), 115 with this (2.1
/// ms). ResNet-50 batch 1 on 1 thread: 58-59 -> 52-53 ms; Fashion-MNIST
/// CNN inference at batch 256: +8%; its training: +2-4%. 16 and 32 steps
/// measured alike.
const PF_B: usize = 32;

/// Rows of `a` (and `c`) per micro-kernel tile.
pub const MR: usize = 14;
/// Columns of `b` (and `c`) per micro-kernel tile (two zmm vectors).
pub const NR: usize = 32;
/// Maximum depth per block; `k` is split into `ceil(k / KC)` blocks of
/// nearly equal length.
pub const KC: usize = 256;
/// Most rows per cache block of `c` (a multiple of [`MR`]); a task's rows
/// are split into the fewest such blocks, of equal whole panels (361 rows:
/// 126 + 126 + 109, not 168 + 168 + 25, whose last block read each `b`
/// block for 25 rows; Xception's 19x19 pointwise convs, 1 thread, 7
/// alternating runs: convs 106.9 -> 105.2 ms on average, within the noise).
const MC: usize = MR * 12;
/// Column panels per cache block (512 columns).
const NC_PANELS: usize = 16;
/// Loop order switch of [`run_rect`]: `b`-panel-outer needs depth blocks of
/// at least this many steps and this many row panels per block, and rows
/// of `a` that are not one contiguous run per panel (those are fetched
/// ahead in the row-outer order, which then measured faster: GEMM bench, 1
/// thread, Xception's 74x74 256 -> 256 product 148-151 -> 161-162 GFLOP/s,
/// ResNet-50's 56x56 256 -> 64 144-145 -> 157-159).
const B_OUTER_MIN_DEPTH: usize = 192;
const B_OUTER_MIN_PANELS: usize = 8;
/// A `b` of at least this many floats (padded) is packed in parallel.
const PAR_PACK_FLOATS: usize = 64 * 1024;
/// Products with at most this many rows read a row-major `b` in place
/// instead of packing it.
pub const SMALL_M: usize = 16;
/// Below this many multiply-adds a parallel call runs serially, unless `b`
/// has at least [`PAR_MIN_B_FLOATS`] elements.
const PAR_MIN_MACS: usize = 1 << 20;
/// A product reading a `b` this large (e.g. a batch-1 dense layer's
/// weights, 2304 x 128) is split even when it has few multiply-adds: it is
/// bound by reading `b`, and each task reads its own columns.
const PAR_MIN_B_FLOATS: usize = 128 * 1024;

thread_local! {
    /// Per-thread panel buffers of [`run_rect`].
    static PANELS: RefCell<Panels> = const { RefCell::new(Panels { a: AlignedBuf::new(), b: AlignedBuf::new() }) };
    /// Packed `b` of the plain [`gemm`] entry point.
    static PACK_B: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// Storage of dropped [`PackedB`]s, reused by the next [`pack_b`] on this
    /// thread (a conv kernel is packed once per layer per pass).
    static PACKED_POOL: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// The packed matrices of [`with_packed`], reused from call to call.
    static PACKED_SET: RefCell<Vec<PackedB>> = const { RefCell::new(Vec::new()) };
}

/// Whether the AVX-512 path can run on this CPU.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// The depth blocks of a `k`-deep product: `ceil(k / KC)` blocks, the first
/// `k % blocks` of them one longer than the rest.
#[derive(Clone, Copy, Debug)]
struct Depth {
    blocks: usize,
    base: usize,
    extra: usize,
}

impl Depth {
    fn new(k: usize) -> Depth {
        let blocks = k.div_ceil(KC).max(1);
        Depth {
            blocks,
            base: k / blocks,
            extra: k % blocks,
        }
    }

    /// `(start, length)` of block `i`.
    fn block(&self, i: usize) -> (usize, usize) {
        (
            i * self.base + i.min(self.extra),
            self.base + usize::from(i < self.extra),
        )
    }
}

/// `b` (`[k, n]`) packed for the micro-kernel, reusable across many `a`
/// blocks (e.g. a conv kernel shared by all row blocks of a batch).
pub struct PackedB {
    data: AlignedBuf,
    k: usize,
    n: usize,
}

impl Drop for PackedB {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        let _ = PACKED_POOL.try_with(|p| {
            if let Ok(mut v) = p.try_borrow_mut() {
                if v.capacity() < data.capacity() {
                    *v = data;
                }
            }
        });
    }
}

impl PackedB {
    /// Depth (rows of `b`).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns of `b`.
    pub fn n(&self) -> usize {
        self.n
    }
}

fn n_panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// Takes this thread's value out of `key` (the default when the thread's
/// value is in use further up the stack or already destroyed).
fn take_local<T: Default>(key: &'static std::thread::LocalKey<RefCell<T>>) -> T {
    key.try_with(|cell| {
        cell.try_borrow_mut()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// Packs `b` into its depth blocks; within a block starting at `p0` (length
/// `kb`), panel `jp` starts at `p0 * n_pad + jp * kb * NR` and holds
/// `b[p0 + p, jp * NR + c]` at `p * NR + c` (zero beyond `n`), where
/// `n_pad = ceil(n / NR) * NR`.
///
/// A large `b` (64 Ki floats or more) is packed over the current rayon
/// pool: call this from the thread that owns the product, not from inside
/// one of its tasks.
pub fn pack_b(b: MatRef<'_>) -> PackedB {
    pack_b_on(b, true)
}

/// [`pack_b`], over the pool only if `parallel`.
fn pack_b_on(b: MatRef<'_>, parallel: bool) -> PackedB {
    let mut data = take_local(&PACKED_POOL);
    pack_b_into(b, &mut data, parallel);
    PackedB {
        data,
        k: b.rows,
        n: b.cols,
    }
}

/// Runs `f` with the `count` matrices `b(0) .. b(count - 1)` packed as by
/// [`pack_b`], in this thread's storage reused from call to call (no
/// allocation once warm; fresh storage if the thread's set is already in
/// use further up the stack). For products that share right-hand sides
/// across many tasks (the 16 Winograd matrices of a layer): each is packed
/// once per call rather than once per task.
pub fn with_packed<'a, R>(
    count: usize,
    b: impl Fn(usize) -> MatRef<'a>,
    f: impl FnOnce(&[PackedB]) -> R,
) -> R {
    let mut set = take_local(&PACKED_SET);
    while set.len() < count {
        set.push(PackedB {
            data: AlignedBuf::new(),
            k: 0,
            n: 0,
        });
    }
    for (i, pb) in set.iter_mut().take(count).enumerate() {
        let m = b(i);
        pack_b_into(m, &mut pb.data, false);
        (pb.k, pb.n) = (m.rows, m.cols);
    }
    let r = f(&set[..count]);
    let _ = PACKED_SET.try_with(|cell| {
        if let Ok(mut v) = cell.try_borrow_mut() {
            if v.is_empty() {
                *v = set;
            }
        }
    });
    r
}

/// Packs `b` as [`pack_b`] into `out`; over the current rayon pool when
/// `parallel` and `b` is large.
fn pack_b_into(b: MatRef<'_>, out: &mut AlignedBuf, parallel: bool) {
    let (k, n) = (b.rows, b.cols);
    let n_pad = n_panels(n) * NR;
    // Every element is written below (padding included), so no zero fill.
    out.resize(k * n_pad, 0.0);
    if k == 0 || n == 0 {
        return;
    }
    let depth = Depth::new(k);
    // Panel `jp` of the depth block at `p0` (length `kb`) into `dst`.
    let panel = |p0: usize, kb: usize, jp: usize, dst: &mut [f32]| {
        let j0 = jp * NR;
        let cols = NR.min(n - j0);
        if b.col_stride == 1 {
            for (p, d) in dst.chunks_exact_mut(NR).enumerate() {
                let s = (p0 + p) * b.row_stride + j0;
                if cols == NR {
                    let src: &[f32; NR] = b.data[s..s + NR].try_into().expect("NR floats");
                    d.copy_from_slice(src);
                } else {
                    d[..cols].copy_from_slice(&b.data[s..s + cols]);
                    d[cols..].fill(0.0);
                }
            }
        } else {
            // Column by column: reads run along `b`'s contiguous axis
            // when it is a transposed row-major matrix.
            for c in 0..cols {
                let base = (j0 + c) * b.col_stride + p0 * b.row_stride;
                for p in 0..kb {
                    dst[p * NR + c] = b.data[base + p * b.row_stride];
                }
            }
            if cols < NR {
                for d in dst.chunks_exact_mut(NR) {
                    d[cols..].fill(0.0);
                }
            }
        }
    };
    // A large `b` (a training step's conv kernel, packed once per call on
    // the calling thread while the pool waited) is packed by panels over
    // the pool; it is a copy, so the result is the same.
    let parallel = parallel && k * n_pad >= PAR_PACK_FLOATS && rayon::current_num_threads() > 1;
    let mut rest: &mut [f32] = out;
    for bi in 0..depth.blocks {
        let (p0, kb) = depth.block(bi);
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(kb * n_pad);
        rest = tail;
        if parallel {
            use rayon::prelude::*;
            block
                .par_chunks_mut(kb * NR)
                .enumerate()
                .for_each(|(jp, dst)| panel(p0, kb, jp, dst));
        } else {
            for (jp, dst) in block.chunks_mut(kb * NR).enumerate() {
                panel(p0, kb, jp, dst);
            }
        }
    }
}

/// Copies rows `i0 .. i1` and depth `p0 .. p0 + kb` of `a` into panels of
/// [`MR`] rows: panel `ip` holds `a[i0 + ip * MR + r, p0 + p]` at
/// `ip * kb * MR + p * MR + r` (rows past `i1` in the last panel are not
/// written and never read).
fn pack_a_block(a: MatRef<'_>, i0: usize, i1: usize, p0: usize, kb: usize, out: &mut AlignedBuf) {
    let panels = (i1 - i0).div_ceil(MR);
    if out.len() < panels * kb * MR {
        out.resize(panels * kb * MR, 0.0);
    }
    for ip in 0..panels {
        let r0 = i0 + ip * MR;
        let mr = MR.min(i1 - r0);
        let dst = &mut out[ip * kb * MR..(ip + 1) * kb * MR];
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            let base = (p0 + p) * a.col_stride + r0 * a.row_stride;
            if a.row_stride == 1 && mr == MR {
                let src: &[f32; MR] = a.data[base..base + MR].try_into().expect("MR floats");
                d.copy_from_slice(src);
            } else {
                for (r, v) in d[..mr].iter_mut().enumerate() {
                    *v = a.data[base + r * a.row_stride];
                }
            }
        }
    }
}

/// The fused epilogue as raw pointers: `bias` at column 0 (or null),
/// `residual` at row 0, column 0 with row stride `ldr` (or null).
#[derive(Clone, Copy)]
pub(crate) struct RawEpilogue {
    pub bias: *const f32,
    pub residual: *const f32,
    pub ldr: usize,
    pub act: EpilogueActivation,
}

/// One micro-kernel call: `b[p, j]` is read at `b + p * ldb + j`; `c` holds
/// the tile's top-left element; see [`tile_kernel`] for `a`.
#[derive(Clone, Copy)]
struct Tile {
    kb: usize,
    a: *const f32,
    /// Row stride of `a` read in place (unused for a packed panel).
    rs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    /// Valid columns (`1..=NR`).
    nr: usize,
    /// Add the accumulators to the existing `c` (else overwrite).
    load_c: bool,
    /// Prefetch the tile of `c` before the depth loop (when it is read:
    /// prefetching a tile that is only written measured slower).
    prefetch: bool,
    /// Apply the epilogue (last depth block only); pointers already offset
    /// to the tile.
    epi: Option<RawEpilogue>,
    /// Lines `0 .. ahead_lines` (64 bytes each) from `ahead` to fetch into
    /// L2 during this tile (`prefetcht1`, never read), spread evenly over
    /// its depth steps: this tile's share of the next packed `b` panel. A
    /// batch-1 layer reads its weights from memory; the kernel's own
    /// prefetch (`PF_B` steps ahead, into L1) is capped by the L1's few
    /// outstanding misses, so the first tile of each panel waited on them.
    /// In the `b`-panel-outer order the tiles after a panel's first (which
    /// run from cache) share the next panel; in the row-outer order each
    /// first-row tile fetches the first half of the next panel while it
    /// streams its own. 1 thread, alternating runs: Xception's 19x19
    /// pointwise convs 64.1-64.8 -> 61.4-61.7 ms; ResNet-50's conv5 stage at
    /// batch 1 12.2-12.8 -> 11.4-12.1 ms. The row-outer order's later rows
    /// of tiles fetch the next row panel of `a` instead, when it is one
    /// contiguous run (see `run_rect`).
    ahead: *const f32,
    ahead_lines: usize,
    /// Rows `0 .. below_rows` of the tile of `c` under this one (same
    /// columns, row stride `ldc`) to fetch into L2 before this tile's depth
    /// loop (`prefetcht1` of the lines of each row's columns); 0 rows
    /// for none. A batch-1 layer's output buffer was last touched a whole
    /// pass earlier, so its lines come from memory and every store of a
    /// tile missed. GEMM bench, `c` cycled through 512 MiB of buffers
    /// (`coldc`), 1 thread: Xception's 147x147 64 -> 128 product 106-109
    /// -> 120-125 GFLOP/s, unchanged with `c` in cache. Spreading these
    /// fetches over the depth steps (as `ahead` is) cost 5-8% on the
    /// in-cache shapes: the loop's extra counters spilled.
    below: *const f32,
    below_rows: usize,
}

/// The `M × (16 · NV)` micro-kernel (`M ≤ 14`, `NV ∈ {1, 2}`), with `a`
/// either packed (`PACKED_A`: `a[r, p]` at `a + p * MR + r`) or read in
/// place (`a[r, p]` at `a + r * rs + p`). Rows and vectors are expanded by
/// macros with literal indices so that the accumulators live in registers.
///
/// # Safety
/// AVX-512F must be available; `a` must be readable at the positions above
/// for `r < M`, `p < kb`; `b` at `p * ldb + j` for `p < kb`, `j < 16 · NV`;
/// `c` rows `0..M`, columns `0..nr` with stride `ldc` readable and writable;
/// epilogue pointers valid for the same rows and columns. `ahead` and
/// `below` may hold any address: they are only prefetched.
#[target_feature(enable = "avx512f")]
unsafe fn tile_kernel<const M: usize, const NV: usize, const PACKED_A: bool>(t: &Tile) {
    let (rs, cs) = if PACKED_A { (1, MR) } else { (t.rs, 1) };
    let lanes0 = t.nr.min(16);
    let lanes1 = t.nr.saturating_sub(16).min(16);
    let mask = [
        ((1u32 << lanes0) - 1) as __mmask16,
        ((1u32 << lanes1) - 1) as __mmask16,
    ];
    let (c, ldc) = (t.c, t.ldc);
    // The tile of `c` is needed at the end: start fetching it now.
    for r in 0..if t.prefetch { M } else { 0 } {
        let cp = c.add(r * ldc);
        _mm_prefetch::<_MM_HINT_T0>(cp as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(16 * NV - 1) as *const i8);
    }
    let zero = _mm512_setzero_ps();
    let mut acc = [[zero; 2]; MR];
    let (mut a, mut b) = (t.a, t.b);
    for r in 0..t.below_rows {
        let cp = t.below.wrapping_add(r * ldc);
        _mm_prefetch::<_MM_HINT_T1>(cp as *const i8);
        if NV == 2 {
            // The middle line, when the row is not 64-byte aligned.
            _mm_prefetch::<_MM_HINT_T1>(cp.wrapping_add(16) as *const i8);
        }
        _mm_prefetch::<_MM_HINT_T1>(cp.wrapping_add(16 * NV - 1) as *const i8);
    }
    // The lines to fetch, spread evenly over the depth steps: after step
    // `p`, `floor((p + 1) * ahead_lines / kb)` of them.
    let (mut due, mut line) = (0usize, 0usize);
    for _ in 0..t.kb {
        due += t.ahead_lines;
        while due >= t.kb && line < t.ahead_lines {
            _mm_prefetch::<_MM_HINT_T1>(t.ahead.wrapping_add(16 * line) as *const i8);
            line += 1;
            due -= t.kb;
        }
        // Fetch `b` ahead (packed panels are contiguous, so past a panel's
        // end this fetches the next panel; a prefetch never faults).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PF_B * t.ldb) as *const i8);
        if NV == 2 {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PF_B * t.ldb + 16) as *const i8);
        }
        let b0 = _mm512_loadu_ps(b);
        let b1 = if NV == 2 {
            _mm512_loadu_ps(b.add(16))
        } else {
            zero
        };
        macro_rules! rows {
            ($($r:literal)*) => {$(
                if $r < M {
                    let av = _mm512_set1_ps(*a.add($r * rs));
                    acc[$r][0] = _mm512_fmadd_ps(av, b0, acc[$r][0]);
                    if NV == 2 {
                        acc[$r][1] = _mm512_fmadd_ps(av, b1, acc[$r][1]);
                    }
                }
            )*};
        }
        rows!(0 1 2 3 4 5 6 7 8 9 10 11 12 13);
        // Past the last step these point one step beyond the block (for a
        // `b` read in place, possibly past its slice): never read there.
        a = a.wrapping_add(cs);
        b = b.wrapping_add(t.ldb);
    }
    let load_c = t.load_c;
    let epi = t.epi;
    macro_rules! store {
        ($r:literal, $v:literal) => {{
            let cp = c.add($r * ldc + 16 * $v);
            let m = mask[$v];
            let mut x = acc[$r][$v];
            if load_c {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
            }
            if let Some(e) = &epi {
                if !e.bias.is_null() {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, e.bias.add(16 * $v)));
                }
                if !e.residual.is_null() {
                    let rp = e.residual.add($r * e.ldr + 16 * $v);
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, rp));
                }
                // `max(x, 0)` returns 0 for NaN like `f32::max`; `max(0, x)`
                // then `min(6, ·)` keeps NaN like `f32::clamp`.
                match e.act {
                    EpilogueActivation::Linear => {}
                    EpilogueActivation::Relu => x = _mm512_max_ps(x, zero),
                    EpilogueActivation::Relu6 => {
                        x = _mm512_min_ps(_mm512_set1_ps(6.0), _mm512_max_ps(zero, x))
                    }
                }
            }
            _mm512_mask_storeu_ps(cp, m, x);
        }};
    }
    macro_rules! store_rows {
        ($($r:literal)*) => {$(
            if $r < M {
                store!($r, 0);
                if NV == 2 {
                    store!($r, 1);
                }
            }
        )*};
    }
    store_rows!(0 1 2 3 4 5 6 7 8 9 10 11 12 13);
}

/// Runs the micro-kernel variant for `mr` rows (`1..=MR`) and `t.nr` columns.
///
/// # Safety
/// As [`tile_kernel`].
unsafe fn run_tile(mr: usize, t: &Tile, packed_a: bool) {
    let wide = t.nr > 16;
    macro_rules! dispatch {
        ($($m:literal)*) => {
            match (mr, wide, packed_a) {
                $(
                    ($m, true, false) => tile_kernel::<$m, 2, false>(t),
                    ($m, false, false) => tile_kernel::<$m, 1, false>(t),
                    ($m, true, true) => tile_kernel::<$m, 2, true>(t),
                    ($m, false, true) => tile_kernel::<$m, 1, true>(t),
                )*
                _ => unreachable!("tile rows {mr} outside 1..=MR"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// The right-hand side of a product.
#[derive(Clone, Copy)]
pub(crate) enum BSrc<'x> {
    Packed(&'x PackedB),
    /// Row-major `b` (`col_stride == 1`) read in place.
    InPlace(MatRef<'x>),
}

/// A checked product `c (+)= a × b`, `c` at `c` with row stride `ldc`.
#[derive(Clone, Copy)]
pub(crate) struct Job<'x> {
    pub a: MatRef<'x>,
    pub b: BSrc<'x>,
    pub c: *mut f32,
    pub ldc: usize,
    pub n: usize,
    pub k: usize,
    pub accumulate: bool,
    pub epi: Option<RawEpilogue>,
}

/// `Job` shared by the tasks of a parallel product: each task writes a
/// disjoint set of tiles of `c`, and everything else is read-only.
struct SharedJob<'x>(Job<'x>);
// SAFETY: see the type's doc; the raw pointers are only dereferenced inside
// each task's own tiles (writes) or read-only inputs.
unsafe impl Sync for SharedJob<'_> {}

/// Computes rows `i_lo .. i_hi` and column panels `jp_lo .. jp_hi` of `c`.
///
/// # Safety
/// The job's views and pointers must be valid for the whole product (checked
/// by the callers in `gemm.rs`), `k > 0`, AVX-512F available, and no other
/// thread may write the same tiles.
unsafe fn run_rect(
    job: &Job<'_>,
    i_lo: usize,
    i_hi: usize,
    jp_lo: usize,
    jp_hi: usize,
    bufs: &mut Panels,
) {
    let a = job.a;
    let n_pad = n_panels(job.n) * NR;
    let depth = Depth::new(job.k);
    let packed_a = a.col_stride != 1;
    let mut jc = jp_lo;
    while jc < jp_hi {
        let jc_hi = (jc + NC_PANELS).min(jp_hi);
        let mut ic = i_lo;
        let mc = {
            let rows = i_hi - i_lo;
            rows.div_ceil(rows.div_ceil(MC)).next_multiple_of(MR)
        };
        while ic < i_hi {
            let ic_hi = (ic + mc).min(i_hi);
            let panels = (ic_hi - ic).div_ceil(MR);
            for bi in 0..depth.blocks {
                let (p0, kb) = depth.block(bi);
                let load_c = job.accumulate || bi > 0;
                let last = bi + 1 == depth.blocks;
                if packed_a {
                    pack_a_block(a, ic, ic_hi, p0, kb, &mut bufs.a);
                }
                // The packed panel after `jp` in the order the tiles visit
                // them (the next depth block's first after the last), or
                // null (`b` read in place, or the last panel).
                let next_panel = |jp: usize| -> *const f32 {
                    let BSrc::Packed(pb) = job.b else {
                        return std::ptr::null();
                    };
                    let (q0, qb, qp) = if jp + 1 < jc_hi {
                        (p0, kb, jp + 1)
                    } else if bi + 1 < depth.blocks {
                        let (q0, qb) = depth.block(bi + 1);
                        (q0, qb, jc)
                    } else {
                        return std::ptr::null();
                    };
                    pb.data.as_ptr().wrapping_add(q0 * n_pad + qp * qb * NR)
                };
                let tile = |ip: usize,
                            jp: usize,
                            ahead: (*const f32, usize),
                            bufb: &mut AlignedBuf| {
                    let i0 = ic + ip * MR;
                    let mr = MR.min(ic_hi - i0);
                    let (ap, rs) = if packed_a {
                        (bufs.a.as_ptr().add(ip * kb * MR), 1)
                    } else {
                        (a.data.as_ptr().add(i0 * a.row_stride + p0), a.row_stride)
                    };
                    let j0 = jp * NR;
                    let nr = NR.min(job.n - j0);
                    let (bp, ldb) = match job.b {
                        BSrc::Packed(pb) => (pb.data.as_ptr().add(p0 * n_pad + jp * kb * NR), NR),
                        BSrc::InPlace(b) if nr == NR => {
                            (b.data.as_ptr().add(p0 * b.row_stride + j0), b.row_stride)
                        }
                        BSrc::InPlace(b) => {
                            // Right edge: copy the partial panel (zero-padded)
                            // so the kernel never reads past the row.
                            let w = if nr > 16 { NR } else { 16 };
                            bufb.clear();
                            bufb.resize(kb * w, 0.0);
                            for (p, d) in bufb.chunks_exact_mut(w).enumerate() {
                                let s = (p0 + p) * b.row_stride + j0;
                                d[..nr].copy_from_slice(&b.data[s..s + nr]);
                            }
                            (bufb.as_ptr(), w)
                        }
                    };
                    let epi = match (last, job.epi) {
                        (true, Some(e)) => Some(RawEpilogue {
                            bias: if e.bias.is_null() {
                                e.bias
                            } else {
                                e.bias.add(j0)
                            },
                            residual: if e.residual.is_null() {
                                e.residual
                            } else {
                                e.residual.add(i0 * e.ldr + j0)
                            },
                            ..e
                        }),
                        _ => None,
                    };
                    let t = Tile {
                        kb,
                        a: ap,
                        rs,
                        b: bp,
                        ldb,
                        c: job.c.add(i0 * job.ldc + j0),
                        ldc: job.ldc,
                        nr,
                        load_c,
                        prefetch: load_c,
                        epi,
                        ahead: ahead.0,
                        ahead_lines: ahead.1,
                        below: job.c.wrapping_add((i0 + mr) * job.ldc + j0),
                        below_rows: if bi == 0 {
                            MR.min(i_hi - (i0 + mr).min(i_hi))
                        } else {
                            0
                        },
                    };
                    run_tile(mr, &t, packed_a);
                };
                // Rows of `a` read in place that form one contiguous run
                // per row panel (a single depth block over rows of exactly
                // that length: a pointwise conv's input, an im2col block).
                let a_runs = !packed_a && depth.blocks == 1 && a.row_stride == kb;
                if kb >= B_OUTER_MIN_DEPTH && panels >= B_OUTER_MIN_PANELS && !a_runs {
                    // Long depth, many row panels: one `b` panel (NR × kb)
                    // stays in L1 across the block's `a` panels, which
                    // stream from L2.
                    // The tiles after the first (which reads the panel into
                    // L1) fetch the next panel into L2, each its share.
                    let lines = kb * NR / 16;
                    let share = lines.div_ceil(panels - 1);
                    for jp in jc..jc_hi {
                        let next = next_panel(jp);
                        for ip in 0..panels {
                            let ahead = if ip == 0 || next.is_null() {
                                (std::ptr::null(), 0)
                            } else {
                                let first = (ip - 1) * share;
                                (
                                    next.wrapping_add(16 * first),
                                    share.min(lines.saturating_sub(first)),
                                )
                            };
                            tile(ip, jp, ahead, &mut bufs.b);
                        }
                    }
                } else {
                    // Short depth, few row panels, or `a` rows in one run
                    // per panel: one `a` panel stays in L1 across the `b`
                    // panels (measured faster there: e.g. the 7×7
                    // single-channel conv, K = 49, batch-1 layers with 4
                    // row panels, and contiguous `a` fetched ahead, below).
                    // The first row of tiles reads each panel first; each of
                    // them fetches the first half of the next one (the whole
                    // panel, twice the lines, measured 5% slower on
                    // ResNet-50's conv5 stage: it competes with the tile's
                    // own stream from memory).
                    let lines = kb * NR / 32;
                    // Rows of `a` that form one contiguous run per row
                    // panel come from memory too, 14 rows at a
                    // time: the tiles of row panel `ip >= 1` fetch panel
                    // `ip + 1` into L2, each its share (the first row's
                    // tiles fetch `b`). GEMM bench, 1 thread: Xception's
                    // 147x147 64 -> 128 / 128 -> 128 products 131-135 /
                    // 132-137 -> 140-144 / 147-157 GFLOP/s, ResNet-50's stem
                    // 141-144 -> 156; in the model, block2_sepconv1 / 2
                    // 3.36-3.77 / 5.33-5.76 -> 2.89-3.01 / 4.72-4.80 ms.
                    // In the row blocks after the first, whose `b` block is
                    // already in L2, the first row's tiles fetch `a` panel 1
                    // instead (GEMM bench, 147x147 64 -> 128 with `c` from
                    // memory: 116-129 -> 126-129 GFLOP/s).
                    let tiles = jc_hi - jc;
                    let fetch_b = |ip: usize| ip == 0 && (ic == i_lo || !a_runs);
                    for ip in 0..panels {
                        let a_next = ic + (ip + 1) * MR;
                        let a_lines = if !fetch_b(ip) && a_runs && a_next < i_hi {
                            (MR.min(i_hi - a_next) * kb).div_ceil(16)
                        } else {
                            0
                        };
                        let a_share = a_lines.div_ceil(tiles);
                        for jp in jc..jc_hi {
                            let next = if fetch_b(ip) {
                                next_panel(jp)
                            } else {
                                std::ptr::null()
                            };
                            let ahead = if !next.is_null() {
                                (next, lines)
                            } else if a_lines > 0 {
                                let first = (jp - jc) * a_share;
                                (
                                    a.data.as_ptr().wrapping_add(a_next * kb + 16 * first),
                                    a_share.min(a_lines.saturating_sub(first)),
                                )
                            } else {
                                (next, 0)
                            };
                            tile(ip, jp, ahead, &mut bufs.b);
                        }
                    }
                }
            }
            ic = ic_hi;
        }
        jc = jc_hi;
    }
}

/// Scratch panels of one thread: an `a` panel (`MR × KC`) for views whose
/// rows are strided, and the zero-padded right-edge panel of a `b` read in
/// place.
struct Panels {
    a: AlignedBuf,
    b: AlignedBuf,
}

/// Runs `f` with this thread's panel buffers (or fresh ones when they are
/// already borrowed further up the stack).
fn with_panels<R>(f: impl FnOnce(&mut Panels) -> R) -> R {
    PANELS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Panels {
            a: AlignedBuf::new(),
            b: AlignedBuf::new(),
        }),
    })
}

/// Runs a checked job (`m = job.a.rows > 0`, `n > 0`, `k > 0`), on the
/// current rayon pool if `parallel`.
///
/// # Safety
/// As [`run_rect`] for the whole of `c`; the caller holds `c` exclusively.
pub(crate) unsafe fn run(job: Job<'_>, parallel: bool) {
    let m = job.a.rows;
    let np = n_panels(job.n);
    let threads = rayon::current_num_threads();
    let small = m * job.n * job.k < PAR_MIN_MACS && job.n * job.k < PAR_MIN_B_FLOATS;
    if !parallel || threads <= 1 || small {
        with_panels(|ap| run_rect(&job, 0, m, 0, np, ap));
        return;
    }
    // About 4 tasks per thread. Rows are split in whole cache blocks of
    // `MC` rows (each task then reuses its `b` blocks across them); when
    // there are too few row blocks, columns too (a batch-1 layer: every
    // task reads a disjoint part of `b`, which is read once overall).
    let target = 4 * threads;
    let row_blocks = m.div_ceil(MC);
    let (rows_per, cols_per) = if row_blocks >= target {
        (m.div_ceil(target).div_ceil(MR) * MR, np)
    } else {
        // Row parts of equal size (at most `MC`): 196 rows are 2 x 98, not
        // 168 + 28, which left one thread idle for most of the product.
        let cparts = np.min(target.div_ceil(row_blocks));
        (
            m.div_ceil(row_blocks).div_ceil(MR) * MR,
            np.div_ceil(cparts),
        )
    };
    let rparts = m.div_ceil(rows_per);
    let cparts = np.div_ceil(cols_per);
    let shared = SharedJob(job);
    let shared = &shared;
    use rayon::prelude::*;
    (0..rparts * cparts).into_par_iter().for_each(|t| {
        let (ri, ci) = (t / cparts, t % cparts);
        let i_lo = ri * rows_per;
        let jp_lo = ci * cols_per;
        // SAFETY: tasks cover disjoint rectangles of tiles; the rest is the
        // caller's contract.
        with_panels(|ap| unsafe {
            run_rect(
                &shared.0,
                i_lo,
                (i_lo + rows_per).min(m),
                jp_lo,
                (jp_lo + cols_per).min(np),
                ap,
            )
        });
    });
}

/// `c = a × pb` (or `+=` when `accumulate`) with `c` row-major, row stride `ldc`.
///
/// # Panics
/// On inconsistent dimensions or if a view or `c` is too short (internal
/// invariants). Must only be called when [`available`] is true.
pub fn gemm_packed(a: MatRef<'_>, pb: &PackedB, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(available(), "AVX-512F required");
    assert_eq!(a.cols, pb.k, "inner dimensions");
    let (m, n, k) = (a.rows, pb.n, pb.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "c out of range");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let last = (m - 1) * a.row_stride + (k - 1) * a.col_stride;
    assert!(last < a.data.len(), "a out of range");
    let job = Job {
        a,
        b: BSrc::Packed(pb),
        c: c.as_mut_ptr(),
        ldc,
        n,
        k,
        accumulate,
        epi: None,
    };
    // SAFETY: extents checked above; `c` is exclusively borrowed.
    unsafe { run(job, false) }
}

/// Whether a product with `m` rows should read `b` in place instead of
/// packing it (packing costs more than a product with so few rows).
fn reads_b_in_place(m: usize, b: MatRef<'_>) -> bool {
    m <= SMALL_M && b.col_stride == 1
}

/// Runs `f` with `b` prepared for an `m`-row product: read in place for few
/// rows, else packed into this thread's buffer (over the pool when
/// `parallel`: the product itself is split over it).
pub(crate) fn with_b<R>(
    m: usize,
    b: MatRef<'_>,
    parallel: bool,
    f: impl FnOnce(BSrc<'_>) -> R,
) -> R {
    if reads_b_in_place(m, b) {
        return f(BSrc::InPlace(b));
    }
    PACK_B.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let mut pb = PackedB {
                data: std::mem::take(&mut *buf),
                k: b.rows,
                n: b.cols,
            };
            pack_b_into(b, &mut pb.data, parallel);
            let r = f(BSrc::Packed(&pb));
            *buf = std::mem::take(&mut pb.data);
            r
        }
        Err(_) => f(BSrc::Packed(&pack_b_on(b, parallel))),
    })
}

/// `c = a × b` (or `+=`): `b` read in place for few rows, else packed into a
/// per-thread buffer, then as [`gemm_packed`].
///
/// # Panics
/// As [`gemm_packed`].
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(available(), "AVX-512F required");
    assert_eq!(a.cols, b.rows, "inner dimensions");
    let (m, n, k) = (a.rows, b.cols, b.rows);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "c out of range");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        (m - 1) * a.row_stride + (k - 1) * a.col_stride < a.data.len(),
        "a out of range"
    );
    assert!(
        (k - 1) * b.row_stride + (n - 1) * b.col_stride < b.data.len(),
        "b out of range"
    );
    with_b(m, b, false, |bs| {
        let job = Job {
            a,
            b: bs,
            c: c.as_mut_ptr(),
            ldc,
            n,
            k,
            accumulate,
            epi: None,
        };
        // SAFETY: extents checked above; `c` is exclusively borrowed.
        unsafe { run(job, false) }
    })
}
