//! The matrix-multiply layer: the AVX-512 kernel (when the CPU has it) and
//! the portable `gemm`-crate path, against a naive triple loop, on odd
//! shapes, transposed views, accumulation, and prepared right-hand sides.
//! One test function only: it toggles the process-wide portable switch.

mod kernels_support;

use cnnc_runtime::kernels::gemm::{
    force_portable_gemm, matmul, matmul_rhs, uses_avx512, MatRef, Parallelism, Rhs,
};
use kernels_support::*;

/// `c[i, j] = Σ_p a(i, p) b(p, j)` in f64.
fn naive(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let mut c = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0f64;
            for p in 0..a.cols {
                s += a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
            }
            c[i * b.cols + j] = s as f32;
        }
    }
    c
}

fn check_shapes() {
    // (m, n, k): below / at / above the 14-row and 32-column tiles, the 256
    // depth block, and the 336-row block.
    let shapes = [
        (1, 1, 1),
        (13, 31, 7),
        (14, 32, 16),
        (15, 33, 255),
        (29, 64, 257),
        (350, 40, 300),
        (3, 100, 600),
        (57, 10, 49),
    ];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        let ad = rand_vec(m * k, si as u64);
        let bd = rand_vec(k * n, 100 + si as u64);
        for ta in [false, true] {
            for tb in [false, true] {
                let a = if ta {
                    MatRef::row_major(&ad, k, m).t()
                } else {
                    MatRef::row_major(&ad, m, k)
                };
                let b = if tb {
                    MatRef::row_major(&bd, n, k).t()
                } else {
                    MatRef::row_major(&bd, k, n)
                };
                let r = naive(a, b);
                let what = format!("m {m} n {n} k {k} ta {ta} tb {tb} avx512 {}", uses_avx512());
                let mut c = vec![f32::NAN; m * n];
                matmul(a, b, &mut c, n, false, Parallelism::None);
                assert_close(&c, &r, 1e-4, &what);
                // Accumulate into an existing value, with a wider row stride.
                let ldc = n + 3;
                let mut c2 = vec![1.0f32; m * ldc];
                matmul(a, b, &mut c2, ldc, true, Parallelism::None);
                let got: Vec<f32> = (0..m)
                    .flat_map(|i| c2[i * ldc..i * ldc + n].to_vec())
                    .collect();
                let want: Vec<f32> = r.iter().map(|v| v + 1.0).collect();
                assert_close(&got, &want, 1e-4, &format!("{what} accumulate"));
                // Prepared right-hand side gives the same bits as the plain call.
                let rhs = Rhs::new(b);
                let mut c3 = vec![f32::NAN; m * n];
                matmul_rhs(a, &rhs, &mut c3, n, false);
                assert_eq!(c3, c, "{what} prepared rhs");
            }
        }
    }
}

#[test]
fn matmul_matches_naive_on_both_paths() {
    check_shapes();
    force_portable_gemm(true);
    assert!(!uses_avx512());
    check_shapes();
    force_portable_gemm(false);
}
