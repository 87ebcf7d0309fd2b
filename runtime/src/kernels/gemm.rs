//! Matrix multiply on f32 slices with explicit strides.
//!
//! On x86-64 CPUs with AVX-512F (detected at run time) the in-crate
//! [`super::sgemm`] kernel is used; otherwise the `gemm` crate, which picks
//! its own micro-kernel (AVX2+FMA, ...) at run time. No `target-cpu` flag is
//! needed either way. Both are deterministic for a given CPU: each output
//! element is accumulated in a fixed order.

pub use gemm::Parallelism;
use std::sync::atomic::{AtomicBool, Ordering};

/// A read-only strided matrix view: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix (row stride `cols`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose view (no data movement).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn max_index(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            None
        } else {
            Some((self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride)
        }
    }

    fn check(&self, what: &str) {
        if let Some(i) = self.max_index() {
            assert!(i < self.data.len(), "gemm {what} view out of range");
        }
    }
}

static PORTABLE_ONLY: AtomicBool = AtomicBool::new(false);

/// Forces the portable `gemm`-crate path even on AVX-512 CPUs (for testing
/// and comparison; results differ in the last bits between the two paths).
pub fn force_portable_gemm(on: bool) {
    PORTABLE_ONLY.store(on, Ordering::SeqCst);
}

/// Whether the AVX-512 kernel is in use.
pub fn uses_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !PORTABLE_ONLY.load(Ordering::Relaxed) && super::sgemm::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A right-hand side prepared once for many products with different left
/// sides (e.g. a conv kernel shared by every row block of a batch).
pub enum Rhs<'a> {
    Plain(MatRef<'a>),
    #[cfg(target_arch = "x86_64")]
    Packed(super::sgemm::PackedB),
}

impl<'a> Rhs<'a> {
    /// Packs `b` if the AVX-512 kernel is in use, else keeps the view.
    pub fn new(b: MatRef<'a>) -> Rhs<'a> {
        b.check("rhs");
        #[cfg(target_arch = "x86_64")]
        if uses_avx512() {
            return Rhs::Packed(super::sgemm::pack_b(b));
        }
        Rhs::Plain(b)
    }

    fn dims(&self) -> (usize, usize) {
        match self {
            Rhs::Plain(b) => (b.rows, b.cols),
            #[cfg(target_arch = "x86_64")]
            Rhs::Packed(p) => (p.k(), p.n()),
        }
    }
}

/// `c = a × b` (or `c += a × b` when `accumulate`), `c` row-major
/// `[a.rows, b.cols]` with row stride `c_row_stride`.
///
/// # Panics
/// If the inner dimensions disagree or a view reaches past its slice
/// (internal invariants; callers check user-facing shapes first).
pub fn matmul(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if uses_avx512() && matches!(parallelism, Parallelism::None) {
        assert_eq!(b.rows, a.cols, "gemm inner dimensions");
        a.check("lhs");
        b.check("rhs");
        super::sgemm::gemm(a, b, c, c_row_stride, accumulate);
        return;
    }
    portable(a, b, c, c_row_stride, accumulate, parallelism);
}

/// `c (+)= a × rhs` for a prepared right-hand side (single-threaded).
pub fn matmul_rhs(
    a: MatRef<'_>,
    rhs: &Rhs<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
) {
    let (k, _) = rhs.dims();
    assert_eq!(a.cols, k, "gemm inner dimensions");
    match rhs {
        Rhs::Plain(b) => portable(a, *b, c, c_row_stride, accumulate, Parallelism::None),
        #[cfg(target_arch = "x86_64")]
        Rhs::Packed(p) => {
            a.check("lhs");
            super::sgemm::gemm_packed(a, p, c, c_row_stride, accumulate)
        }
    }
}

fn portable(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm inner dimensions");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * c_row_stride + n <= c.len(),
        "gemm dst out of range"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_row_stride..i * c_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    a.check("lhs");
    b.check("rhs");
    // SAFETY: all accessed indices were checked to lie within the slices above;
    // `c` is exclusively borrowed and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The parallelism to give one large GEMM call: all threads of the current
/// rayon pool, or none if the pool has one thread.
pub fn pool_parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}
