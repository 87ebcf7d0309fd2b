//! Matrix multiply on f32 slices with explicit strides.
//!
//! On x86-64 CPUs with AVX-512F (detected at run time) the in-crate
//! [`super::sgemm`] kernel is used; otherwise the `gemm` crate, which picks
//! its own micro-kernel (AVX2+FMA, ...) at run time. No `target-cpu` flag is
//! needed either way. Both are deterministic for a given CPU: each output
//! element is accumulated in a fixed order, independent of the thread count.
//!
//! Entry points:
//! - [`matmul`]: `c (+)= a × b`, single-threaded (split over the current
//!   rayon pool with [`Parallelism::Rayon`]); a row-major `b` is read in
//!   place, without packing, when `a` has at most 16 rows (batch-1 dense);
//! - [`Rhs`] + [`matmul_rhs`]: a right-hand side prepared once for many
//!   products (a conv kernel shared by every row block);
//! - [`matmul_rhs_epilogue`]: the same with a fused [`Epilogue`]
//!   (`act(c + bias + residual)` applied to each tile while it is in registers);
//! - [`matmul_par`] / [`matmul_rhs_par`]: one product split over the current
//!   rayon pool (rows and, when there are few rows, columns), for a single
//!   large GEMM such as a batch-1 layer.

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

/// Activation applied by a fused [`Epilogue`] (the ones that need no
/// transcendental function; others are applied by the caller afterwards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EpilogueActivation {
    /// Identity.
    #[default]
    Linear,
    /// `max(x, 0)` (NaN gives 0, like `f32::max`).
    Relu,
    /// `clamp(x, 0, 6)` (Keras `relu6`; NaN stays NaN, like `f32::clamp`).
    Relu6,
}

impl EpilogueActivation {
    /// The fusable equivalent of a model activation, if any.
    pub fn from_activation(act: cnnc_compiler::model::Activation) -> Option<Self> {
        use cnnc_compiler::model::Activation;
        match act {
            Activation::Linear => Some(EpilogueActivation::Linear),
            Activation::Relu => Some(EpilogueActivation::Relu),
            Activation::Relu6 => Some(EpilogueActivation::Relu6),
            _ => None,
        }
    }

    fn apply(self, x: f32) -> f32 {
        match self {
            EpilogueActivation::Linear => x,
            EpilogueActivation::Relu => x.max(0.0),
            EpilogueActivation::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// Element-wise tail fused into a product: after `c (+)= a × b`, each
/// element becomes `activation((c[i, j] + bias[j]) + residual[i, j])`
/// (terms that are `None` are skipped), in that order, so the result has the
/// same bits as the unfused `bias_add`, `add` and activation ops.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// `[n]` (at least `b.cols` values), added to every row.
    pub bias: Option<&'a [f32]>,
    /// Same layout as `c` (row stride `c_row_stride`), e.g. a ResNet shortcut.
    pub residual: Option<&'a [f32]>,
    pub activation: EpilogueActivation,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none()
            && self.residual.is_none()
            && self.activation == EpilogueActivation::Linear
    }

    fn check(&self, m: usize, n: usize, ldc: usize) {
        if let Some(b) = self.bias {
            assert!(b.len() >= n, "gemm epilogue bias shorter than n");
        }
        if let Some(r) = self.residual {
            if m > 0 && n > 0 {
                assert!(
                    (m - 1) * ldc + n <= r.len(),
                    "gemm epilogue residual out of range"
                );
            }
        }
    }

    /// Applies the epilogue to rows `0..m`, columns `0..n` of `c` (scalar).
    fn apply(&self, c: &mut [f32], ldc: usize, m: usize, n: usize) {
        if self.is_identity() {
            return;
        }
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            for (j, v) in row.iter_mut().enumerate() {
                let mut x = *v;
                if let Some(b) = self.bias {
                    x += b[j];
                }
                if let Some(r) = self.residual {
                    x += r[i * ldc + j];
                }
                *v = self.activation.apply(x);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn raw(&self, ldc: usize) -> Option<super::sgemm::RawEpilogue> {
        if self.is_identity() {
            return None;
        }
        Some(super::sgemm::RawEpilogue {
            bias: self.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            residual: self.residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            ldr: ldc,
            act: self.activation,
        })
    }
}

static PORTABLE_ONLY: AtomicBool = AtomicBool::new(false);

/// Forces the portable `gemm`-crate path even on AVX-512 CPUs (for testing
/// and comparison; results differ in the last bits between the two paths).
/// An [`Rhs`] keeps the path it was created for.
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
/// sides (e.g. a conv kernel shared by every row block of a batch, or packed
/// once when a model is loaded for inference: `Rhs<'static>`).
pub enum Rhs<'a> {
    /// Portable path: the view itself.
    Plain(MatRef<'a>),
    /// AVX-512 path, packed.
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

    /// `(rows, cols)` of `b`, i.e. `(k, n)` of the products.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Rhs::Plain(b) => (b.rows, b.cols),
            #[cfg(target_arch = "x86_64")]
            Rhs::Packed(p) => (p.k(), p.n()),
        }
    }
}

/// `c = a × b` (or `c += a × b` when `accumulate`), `c` row-major
/// `[a.rows, b.cols]` with row stride `c_row_stride`. With
/// [`Parallelism::Rayon`] the product is split over the current rayon pool.
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
    if uses_avx512() {
        let parallel = !matches!(parallelism, Parallelism::None);
        avx512_plain(
            a,
            b,
            c,
            c_row_stride,
            accumulate,
            &Epilogue::default(),
            parallel,
        );
        return;
    }
    portable(a, b, c, c_row_stride, accumulate, parallelism);
}

/// `c (+)= a × b` split over the current rayon pool (rows, and columns when
/// there are few rows: a batch-1 layer keeps every core busy). Same bits as
/// [`matmul`].
///
/// # Panics
/// As [`matmul`].
pub fn matmul_par(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
) {
    matmul(a, b, c, c_row_stride, accumulate, pool_parallelism());
}

/// `c (+)= a × rhs` for a prepared right-hand side (single-threaded).
///
/// # Panics
/// As [`matmul`].
pub fn matmul_rhs(
    a: MatRef<'_>,
    rhs: &Rhs<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
) {
    matmul_rhs_epilogue(a, rhs, c, c_row_stride, accumulate, &Epilogue::default());
}

/// `c = epilogue(c' + a × rhs)` where `c'` is `c` if `accumulate` else 0
/// (single-threaded); see [`Epilogue`].
///
/// # Panics
/// As [`matmul`], or if the bias has fewer than `n` values or the residual
/// is shorter than `c`'s extent.
pub fn matmul_rhs_epilogue(
    a: MatRef<'_>,
    rhs: &Rhs<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
    epilogue: &Epilogue<'_>,
) {
    rhs_product(a, rhs, c, c_row_stride, accumulate, epilogue, false);
}

/// [`matmul_rhs_epilogue`] split over the current rayon pool (rows, and
/// columns when there are few rows). Same bits as the serial call.
///
/// # Panics
/// As [`matmul_rhs_epilogue`].
pub fn matmul_rhs_par(
    a: MatRef<'_>,
    rhs: &Rhs<'_>,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
    epilogue: &Epilogue<'_>,
) {
    rhs_product(a, rhs, c, c_row_stride, accumulate, epilogue, true);
}

fn rhs_product(
    a: MatRef<'_>,
    rhs: &Rhs<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    epilogue: &Epilogue<'_>,
    parallel: bool,
) {
    let (k, n) = rhs.dims();
    assert_eq!(a.cols, k, "gemm inner dimensions");
    match rhs {
        Rhs::Plain(b) => {
            let par = if parallel {
                pool_parallelism()
            } else {
                Parallelism::None
            };
            portable(a, *b, c, ldc, accumulate, par);
            epilogue.check(a.rows, n, ldc);
            epilogue.apply(c, ldc, a.rows, n);
        }
        #[cfg(target_arch = "x86_64")]
        Rhs::Packed(p) => avx512_run(
            a,
            super::sgemm::BSrc::Packed(p),
            n,
            c,
            ldc,
            accumulate,
            epilogue,
            parallel,
        ),
    }
}

/// `matmul` on the AVX-512 path with `b` packed (or read in place) here.
#[cfg(target_arch = "x86_64")]
fn avx512_plain(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    epilogue: &Epilogue<'_>,
    parallel: bool,
) {
    assert_eq!(b.rows, a.cols, "gemm inner dimensions");
    b.check("rhs");
    if a.rows == 0 || b.cols == 0 || b.rows == 0 {
        // No packing needed: handled (zero fill / epilogue) below.
        avx512_run(
            a,
            super::sgemm::BSrc::InPlace(b),
            b.cols,
            c,
            ldc,
            accumulate,
            epilogue,
            parallel,
        );
        return;
    }
    super::sgemm::with_b(a.rows, b, parallel, |src| {
        avx512_run(a, src, b.cols, c, ldc, accumulate, epilogue, parallel)
    });
}

/// Checks extents, handles empty products, and runs the AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn avx512_run(
    a: MatRef<'_>,
    b: super::sgemm::BSrc<'_>,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    epilogue: &Epilogue<'_>,
    parallel: bool,
) {
    let (m, k) = (a.rows, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "gemm dst out of range");
    epilogue.check(m, n, ldc);
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        epilogue.apply(c, ldc, m, n);
        return;
    }
    a.check("lhs");
    if let super::sgemm::BSrc::InPlace(b) = b {
        assert!(
            b.col_stride == 1 && b.rows == k && b.cols == n,
            "gemm rhs layout"
        );
        b.check("rhs");
    }
    let job = super::sgemm::Job {
        a,
        b,
        c: c.as_mut_ptr(),
        ldc,
        n,
        k,
        accumulate,
        epi: epilogue.raw(ldc),
    };
    // SAFETY: `a`, `b` (checked here or when packed), `c` and the epilogue
    // slices were checked to cover every element the product touches; `c`
    // is exclusively borrowed and does not alias the inputs; AVX-512F is
    // available (`uses_avx512` / the prepared rhs).
    unsafe { super::sgemm::run(job, parallel) }
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
