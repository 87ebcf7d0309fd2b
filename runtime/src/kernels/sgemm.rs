//! An AVX-512 single-precision GEMM (`c = a × b` or `c += a × b`), used when
//! the CPU reports `avx512f` at run time (the `gemm` crate's AVX-512 kernels
//! need a nightly compiler, so on stable it stops at AVX2).
//!
//! Classic Goto/BLIS blocking (Goto & van de Geijn 2008, "Anatomy of
//! high-performance matrix multiplication"): `b` is packed into panels of
//! [`NR`] = 32 columns per depth block of [`KC`] rows, `a` into panels of
//! [`MR`] = 14 rows, and a 14×32 micro-kernel keeps 28 zmm accumulators in
//! registers, broadcasting one `a` value per row and loading two 16-lane `b`
//! vectors per depth step. Each output element is accumulated in a fixed
//! order (depth blocks in order, then depth within a block), independent of
//! threads: the routine itself is single-threaded.

#![cfg(target_arch = "x86_64")]

use super::gemm::MatRef;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of `a` per micro-kernel.
pub const MR: usize = 14;
/// Columns of `b` per micro-kernel (two zmm vectors).
pub const NR: usize = 32;
/// Depth per packed block.
pub const KC: usize = 256;
/// Rows of `a` packed at once (a multiple of MR).
const MC: usize = MR * 24;

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Storage of dropped [`PackedB`]s, reused by the next [`pack_b`] on this
    /// thread (a conv kernel is packed once per layer per pass).
    static PACKED_POOL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether the AVX-512 path can run on this CPU.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `b` (`[k, n]`) packed for the micro-kernel, reusable across many `a`
/// blocks (e.g. a conv kernel shared by all row blocks of a batch).
pub struct PackedB {
    data: Vec<f32>,
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
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
}

fn n_panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// Packs `b` into depth blocks of [`KC`]; within a block starting at `p0`
/// (length `kb`), panel `jp` starts at `p0 * n_pad + jp * kb * NR` and holds
/// `b[p0 + p, jp * NR + c]` at `p * NR + c` (zero beyond `n`).
pub fn pack_b(b: MatRef<'_>) -> PackedB {
    let mut data = PACKED_POOL
        .try_with(|p| {
            p.try_borrow_mut()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    pack_b_into(b, &mut data);
    PackedB {
        data,
        k: b.rows,
        n: b.cols,
    }
}

fn pack_b_into(b: MatRef<'_>, out: &mut Vec<f32>) {
    let (k, n) = (b.rows, b.cols);
    let n_pad = n_panels(n) * NR;
    // Every element is written below (padding included), so no zero fill.
    out.resize(k * n_pad, 0.0);
    let mut p0 = 0;
    while p0 < k {
        let kb = KC.min(k - p0);
        for jp in 0..n_panels(n) {
            let j0 = jp * NR;
            let cols = NR.min(n - j0);
            let dst = &mut out[p0 * n_pad + jp * kb * NR..p0 * n_pad + (jp + 1) * kb * NR];
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
                for c in 0..cols {
                    let base = (j0 + c) * b.col_stride;
                    for p in 0..kb {
                        dst[p * NR + c] = b.data[base + (p0 + p) * b.row_stride];
                    }
                }
                if cols < NR {
                    for d in dst.chunks_exact_mut(NR) {
                        d[cols..].fill(0.0);
                    }
                }
            }
        }
        p0 += kb;
    }
}

/// Packs rows `i0 .. i0 + mb` and depth `p0 .. p0 + kb` of `a` into panels of
/// [`MR`] rows: panel `ip` holds `a[i0 + ip * MR + r, p0 + p]` at
/// `ip * kb * MR + p * MR + r` (zero beyond the last row).
fn pack_a(a: MatRef<'_>, i0: usize, mb: usize, p0: usize, kb: usize, out: &mut Vec<f32>) {
    let panels = mb.div_ceil(MR);
    // Every element is written below (padding included), so no zero fill.
    out.resize(panels * kb * MR, 0.0);
    for ip in 0..panels {
        let r0 = ip * MR;
        let rows = MR.min(mb - r0);
        let dst = &mut out[ip * kb * MR..(ip + 1) * kb * MR];
        if a.col_stride == 1 {
            for r in 0..rows {
                let s = (i0 + r0 + r) * a.row_stride + p0;
                let src = &a.data[s..s + kb];
                for (p, &v) in src.iter().enumerate() {
                    dst[p * MR + r] = v;
                }
            }
            if rows < MR {
                for d in dst.chunks_exact_mut(MR) {
                    d[rows..].fill(0.0);
                }
            }
        } else {
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                let base = (p0 + p) * a.col_stride + (i0 + r0) * a.row_stride;
                if a.row_stride == 1 && rows == MR {
                    let src: &[f32; MR] = a.data[base..base + MR].try_into().expect("MR floats");
                    d.copy_from_slice(src);
                } else {
                    for (r, v) in d[..rows].iter_mut().enumerate() {
                        *v = a.data[base + r * a.row_stride];
                    }
                    d[rows..].fill(0.0);
                }
            }
        }
    }
}

/// The 14×32 micro-kernel: `c[0..mr, 0..nr] (+)= a × bpanel` over depth `kb`,
/// where `a[r, p]` is read at `a + r * rs + p * cs` (a packed panel has
/// `rs = 1, cs = MR`; a row-major matrix read in place has `rs = lda, cs = 1`).
///
/// # Safety
/// `a` must be readable at every `r * rs + p * cs` for `r < MR`, `p < kb`;
/// `b` must hold `kb * NR` floats; `c` rows `0..mr` of `nr <= 32` columns
/// with row stride `ldc` must be writable; AVX-512F must be available.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const IN_PLACE: bool>(
    kb: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load_c: bool,
) {
    let (rs, cs) = if IN_PLACE { (lda, 1) } else { (1, MR) };
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kb {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let ap = a.add(p * cs);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * rs));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    let m0: __mmask16 = if nr >= 16 {
        0xFFFF
    } else {
        ((1u32 << nr) - 1) as u16
    };
    let m1: __mmask16 = if nr >= 32 {
        0xFFFF
    } else if nr > 16 {
        ((1u32 << (nr - 16)) - 1) as u16
    } else {
        0
    };
    for (r, row) in acc.iter().enumerate().take(mr) {
        let cp = c.add(r * ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if load_c {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
        }
        _mm512_mask_storeu_ps(cp, m0, v0);
        _mm512_mask_storeu_ps(cp.add(16), m1, v1);
    }
}

/// `c = a × pb` (or `+=` when `accumulate`) with `c` row-major, row stride `ldc`.
///
/// # Panics
/// On inconsistent dimensions or if `c` is too short (internal invariants).
/// Must only be called when [`available`] is true.
pub fn gemm_packed(a: MatRef<'_>, pb: &PackedB, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(available(), "AVX-512F required");
    assert_eq!(a.cols, pb.k, "inner dimensions");
    let (m, n, k) = (a.rows, pb.n, pb.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "c out of range");
    if k > 0 {
        let last = (m - 1) * a.row_stride + (k - 1) * a.col_stride;
        assert!(last < a.data.len(), "a out of range");
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let n_pad = n_panels(n) * NR;
    PACK_A.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut local = Vec::new();
        let apack: &mut Vec<f32> = match guard.as_deref_mut() {
            Ok(v) => v,
            Err(_) => &mut local,
        };
        // Row-major `a` is read in place (no packing) except for a last
        // partial panel of rows, which is copied into a zero-padded block.
        let in_place = a.col_stride == 1;
        let mut p0 = 0;
        while p0 < k {
            let kb = KC.min(k - p0);
            let load_c = accumulate || p0 > 0;
            let mut i0 = 0;
            while i0 < m {
                let mb = MC.min(m - i0);
                let panels = mb.div_ceil(MR);
                if in_place {
                    let tail = mb % MR;
                    apack.clear();
                    if tail != 0 {
                        apack.resize(MR * kb, 0.0);
                        for r in 0..tail {
                            let s = (i0 + mb - tail + r) * a.row_stride + p0;
                            apack[r * kb..(r + 1) * kb].copy_from_slice(&a.data[s..s + kb]);
                        }
                    }
                } else {
                    pack_a(a, i0, mb, p0, kb, apack);
                }
                for jp in 0..n_panels(n) {
                    let j0 = jp * NR;
                    let nr = NR.min(n - j0);
                    let bp = &pb.data[p0 * n_pad + jp * kb * NR..p0 * n_pad + (jp + 1) * kb * NR];
                    for ip in 0..panels {
                        let r0 = ip * MR;
                        let mr = MR.min(mb - r0);
                        let off = (i0 + r0) * ldc + j0;
                        let cp = c.as_mut_ptr();
                        // SAFETY: panel sizes were set by the packers; rows
                        // i0+r0 .. +mr and columns j0 .. j0+nr lie inside `c`
                        // (checked above); in place, full panels read rows
                        // i0+r0 .. +MR (< m) at columns p0 .. p0+kb (< k) of
                        // `a`, whose extent was checked by the caller; the
                        // partial panel reads the padded copy. AVX-512F
                        // was checked by `available`.
                        unsafe {
                            if !in_place {
                                let ap = &apack[ip * kb * MR..(ip + 1) * kb * MR];
                                kernel::<false>(
                                    kb,
                                    ap.as_ptr(),
                                    0,
                                    bp.as_ptr(),
                                    cp.add(off),
                                    ldc,
                                    mr,
                                    nr,
                                    load_c,
                                );
                            } else if mr == MR {
                                let ap = a.data.as_ptr().add((i0 + r0) * a.row_stride + p0);
                                kernel::<true>(
                                    kb,
                                    ap,
                                    a.row_stride,
                                    bp.as_ptr(),
                                    cp.add(off),
                                    ldc,
                                    mr,
                                    nr,
                                    load_c,
                                );
                            } else {
                                kernel::<true>(
                                    kb,
                                    apack.as_ptr(),
                                    kb,
                                    bp.as_ptr(),
                                    cp.add(off),
                                    ldc,
                                    mr,
                                    nr,
                                    load_c,
                                );
                            }
                        }
                    }
                }
                i0 += mb;
            }
            p0 += kb;
        }
    });
}

/// `c = a × b` (or `+=`): packs `b` into a per-thread buffer, then [`gemm_packed`].
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    PACK_B.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let mut pb = PackedB {
                data: std::mem::take(&mut *buf),
                k: b.rows,
                n: b.cols,
            };
            pack_b_into(b, &mut pb.data);
            gemm_packed(a, &pb, c, ldc, accumulate);
            *buf = std::mem::take(&mut pb.data);
        }
        Err(_) => gemm_packed(a, &pack_b(b), c, ldc, accumulate),
    })
}
