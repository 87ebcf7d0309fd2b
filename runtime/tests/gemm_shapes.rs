//! GEMM correctness on many odd shapes against a naive f64 triple loop, on
//! the AVX-512 kernel (when the CPU has it) and the forced-portable path:
//! all four transpose combinations, accumulate on and off, a wider `c` row
//! stride, prepared right-hand sides (packed and read in place), fused
//! epilogues, and parallel splits (same bits as serial).
//!
//! One test function only: it toggles the process-wide portable switch.

use cnnc_runtime::kernels::gemm::{
    force_portable_gemm, matmul, matmul_par, matmul_rhs, matmul_rhs_epilogue, matmul_rhs_par,
    uses_avx512, Epilogue, EpilogueActivation, MatRef, Parallelism, Rhs,
};

/// xorshift64* values uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }
}

/// `(c[i, j], Σ_p |a(i, p) b(p, j)|)` in f64.
fn naive(a: MatRef<'_>, b: MatRef<'_>) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; a.rows * b.cols];
    let mut mag = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            let (mut s, mut t) = (0.0f64, 0.0f64);
            for p in 0..a.cols {
                let x = a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
                s += x;
                t += x.abs();
            }
            c[i * b.cols + j] = s;
            mag[i * b.cols + j] = t;
        }
    }
    (c, mag)
}

/// Asserts `got` (row stride `ldc`) matches `want + offset` within the f32
/// dot-product error bound `k · 2⁻²³ · Σ|a b|` (Higham, "Accuracy and
/// Stability of Numerical Algorithms", §3.1), plus the rounding of `offset`.
#[allow(clippy::too_many_arguments)]
fn check(
    got: &[f32],
    ldc: usize,
    want: &[f64],
    mag: &[f64],
    offset: f64,
    m: usize,
    n: usize,
    k: usize,
    what: &str,
) {
    for i in 0..m {
        for j in 0..n {
            let g = got[i * ldc + j] as f64;
            let w = want[i * n + j] + offset;
            let tol =
                (k as f64 + 2.0) * f32::EPSILON as f64 * (mag[i * n + j] + offset.abs()) + 1e-30;
            assert!(
                (g - w).abs() <= tol,
                "{what}: c[{i}, {j}] = {g}, expected {w} (tol {tol})"
            );
        }
    }
}

/// A `[rows, cols]` view of `data`, transposed storage if `t`.
fn view(data: &[f32], rows: usize, cols: usize, t: bool) -> MatRef<'_> {
    if t {
        MatRef::row_major(data, cols, rows).t()
    } else {
        MatRef::row_major(data, rows, cols)
    }
}

fn one_shape(m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let ad = rng.vec(m * k);
    let bd = rng.vec(k * n);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = view(&ad, m, k, ta);
        let b = view(&bd, k, n, tb);
        let (want, mag) = naive(a, b);
        let what = format!("m {m} n {n} k {k} ta {ta} tb {tb} avx512 {}", uses_avx512());
        let mut c = vec![f32::NAN; m * n];
        matmul(a, b, &mut c, n, false, Parallelism::None);
        check(&c, n, &want, &mag, 0.0, m, n, k, &what);
        // Accumulate into an existing value, with a wider row stride.
        let ldc = n + 5;
        let mut c2 = vec![0.5f32; m * ldc];
        matmul(a, b, &mut c2, ldc, true, Parallelism::None);
        check(
            &c2,
            ldc,
            &want,
            &mag,
            0.5,
            m,
            n,
            k,
            &format!("{what} accumulate"),
        );
        // Prepared right-hand side: same bits as the plain call.
        let rhs = Rhs::new(b);
        let mut c3 = vec![f32::NAN; m * n];
        matmul_rhs(a, &rhs, &mut c3, n, false);
        assert_eq!(
            c3.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{what} prepared rhs"
        );
        assert_eq!(rhs.dims(), (k, n));
    }
}

/// Odd shapes around the tile sizes (14 rows, 16/32 columns), the depth
/// block (256) and the in-place threshold (16 rows), plus random ones.
fn shapes_suite() {
    let edge = [
        1usize, 2, 3, 7, 13, 14, 15, 16, 17, 27, 28, 29, 31, 32, 33, 47, 48, 63, 64, 65, 70,
    ];
    let mut seed = 1u64;
    // Every (m, n) pair of the edge sizes at a few depths.
    for &m in &edge {
        for &n in &edge {
            let k = [1usize, 5, 16, 33, 70][(m + n) % 5];
            one_shape(m, n, k, seed);
            seed += 1;
        }
    }
    // Depth across block boundaries (256: one block; 257: two of 129/128),
    // and row counts that switch the loop order (>= 8 row panels with depth
    // blocks >= 192, last panel partial).
    for &(m, n, k) in &[
        (15, 33, 255),
        (29, 64, 256),
        (30, 40, 257),
        (14, 17, 513),
        (5, 70, 600),
        (17, 3, 300),
        (113, 47, 384),
        (126, 64, 200),
        // More rows than one cache block (168): split evenly into blocks
        // of whole panels (126 + 126 + 109; 112 + 88).
        (361, 40, 300),
        (200, 33, 70),
    ] {
        one_shape(m, n, k, seed);
        seed += 1;
    }
    // Random shapes in 1..=70.
    let mut rng = Rng(12345);
    for _ in 0..150 {
        let (m, n, k) = (1 + rng.below(70), 1 + rng.below(70), 1 + rng.below(70));
        one_shape(m, n, k, seed);
        seed += 1;
    }
    // Empty depth: c = 0, or unchanged when accumulating.
    let a = MatRef::row_major(&[], 3, 0);
    let b = MatRef::row_major(&[], 0, 4);
    let mut c = vec![7.0f32; 12];
    matmul(a, b, &mut c, 4, true, Parallelism::None);
    assert_eq!(c, vec![7.0; 12]);
    matmul(a, b, &mut c, 4, false, Parallelism::None);
    assert_eq!(c, vec![0.0; 12]);
}

/// Fused epilogues equal the unfused sequence `act((c + bias) + residual)`
/// bit for bit, on packed and in-place right-hand sides.
fn epilogue_suite() {
    let mut rng = Rng(777);
    for &(m, n, k) in &[
        (1, 10, 9),
        (5, 33, 20),
        (16, 40, 7),
        (17, 47, 300),
        (60, 64, 31),
    ] {
        let ad = rng.vec(m * k);
        let bd = rng.vec(k * n);
        let bias = rng.vec(n);
        let ldc = n + 2;
        let res = rng.vec(m * ldc);
        let start = rng.vec(m * ldc);
        let a = MatRef::row_major(&ad, m, k);
        let rhs = Rhs::new(MatRef::row_major(&bd, k, n));
        for act in [
            EpilogueActivation::Linear,
            EpilogueActivation::Relu,
            EpilogueActivation::Relu6,
        ] {
            for (use_bias, use_res) in [(true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    let epi = Epilogue {
                        bias: use_bias.then_some(&bias[..]),
                        residual: use_res.then_some(&res[..]),
                        activation: act,
                    };
                    let mut fused = start.clone();
                    matmul_rhs_epilogue(a, &rhs, &mut fused, ldc, accumulate, &epi);
                    let mut plain = start.clone();
                    matmul_rhs(a, &rhs, &mut plain, ldc, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let mut x = plain[i * ldc + j];
                            if use_bias {
                                x += bias[j];
                            }
                            if use_res {
                                x += res[i * ldc + j];
                            }
                            plain[i * ldc + j] = match act {
                                EpilogueActivation::Linear => x,
                                EpilogueActivation::Relu => x.max(0.0),
                                EpilogueActivation::Relu6 => x.clamp(0.0, 6.0),
                            };
                        }
                    }
                    assert_eq!(
                        fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "epilogue m {m} n {n} k {k} {act:?} bias {use_bias} residual {use_res} \
                         accumulate {accumulate} avx512 {}",
                        uses_avx512()
                    );
                    // Relu6 really clamps: some pre-activations exceed 6 when k is large.
                    if act == EpilogueActivation::Relu6 {
                        assert!((0..m).all(|i| fused[i * ldc..i * ldc + n]
                            .iter()
                            .all(|v| (0.0..=6.0).contains(v))));
                    }
                }
            }
        }
    }
}

/// Parallel splits (rows, columns) give the same bits as the serial product.
fn parallel_suite() {
    let mut rng = Rng(99);
    for &(m, n, k) in &[
        (200, 96, 130),
        (5, 1000, 64),
        (49, 512, 600),
        (1, 2048, 300),
        (300, 17, 700),
    ] {
        let ad = rng.vec(m * k);
        let bd = rng.vec(k * n);
        let bias = rng.vec(n);
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            for tb in [false, true] {
                let a = MatRef::row_major(&ad, m, k);
                let b = view(&bd, k, n, tb);
                let mut serial = vec![0.0f32; m * n];
                matmul(a, b, &mut serial, n, false, Parallelism::None);
                let mut par = vec![0.0f32; m * n];
                pool.install(|| matmul_par(a, b, &mut par, n, false));
                assert_eq!(
                    serial, par,
                    "matmul_par m {m} n {n} k {k} tb {tb} threads {threads}"
                );
                let rhs = Rhs::new(b);
                let epi = Epilogue {
                    bias: Some(&bias),
                    residual: None,
                    activation: EpilogueActivation::Relu,
                };
                let mut s2 = vec![0.0f32; m * n];
                matmul_rhs_epilogue(a, &rhs, &mut s2, n, false, &epi);
                let mut p2 = vec![0.0f32; m * n];
                pool.install(|| matmul_rhs_par(a, &rhs, &mut p2, n, false, &epi));
                assert_eq!(
                    s2, p2,
                    "matmul_rhs_par m {m} n {n} k {k} tb {tb} threads {threads}"
                );
                let (want, mag) = naive(a, b);
                check(&serial, n, &want, &mag, 0.0, m, n, k, "parallel vs naive");
            }
        }
    }
}

#[test]
fn gemm_matches_naive_on_odd_shapes_on_both_paths() {
    shapes_suite();
    epilogue_suite();
    parallel_suite();
    force_portable_gemm(true);
    assert!(!uses_avx512());
    shapes_suite();
    epilogue_suite();
    parallel_suite();
    force_portable_gemm(false);
}
