//! Dense (matmul) kernel tests against a naive triple loop, and finite differences.

mod kernels_support;

use cnnc_compiler::model::Activation;
use cnnc_runtime::kernels::{matmul_backward, matmul_forward, MatMulShape};
use kernels_support::*;

/// (rows, in_features, units): odd sizes, more rows than one block (64), more
/// features than one gradient chunk (256).
const CASES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (3, 5, 7),
    (65, 17, 9),
    (130, 300, 11),
    (7, 513, 3),
];

#[test]
fn forward_matches_naive() {
    for (ci, &(n, i, u)) in CASES.iter().enumerate() {
        let s = MatMulShape {
            batch: n,
            in_features: i,
            units: u,
        };
        let x = rand_vec(n * i, ci as u64);
        let k = rand_vec(i * u, 10 + ci as u64);
        let b = rand_vec(u, 20 + ci as u64);
        for act in [
            Activation::Linear,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            for bias in [None, Some(b.as_slice())] {
                let mut y = vec![f32::NAN; n * u];
                matmul_forward(&s, &x, &k, bias, act, &mut y).unwrap();
                let r = naive_matmul(&x, &k, bias, act, n, i, u);
                assert_close(&y, &r, 1e-4, &format!("case {ci} {act:?}"));
            }
        }
        // Softmax rows sum to one and are ordered like the logits.
        let mut y = vec![0.0; n * u];
        matmul_forward(&s, &x, &k, Some(&b), Activation::Softmax, &mut y).unwrap();
        let z = naive_matmul(&x, &k, Some(&b), Activation::Linear, n, i, u);
        for (yr, zr) in y.chunks(u).zip(z.chunks(u)) {
            let sum: f32 = yr.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            let e: Vec<f64> = zr.iter().map(|v| (*v as f64).exp()).collect();
            let t: f64 = e.iter().sum();
            let r: Vec<f32> = e.iter().map(|v| (v / t) as f32).collect();
            assert_close(yr, &r, 1e-5, "softmax");
        }
    }
}

#[test]
fn backward_matches_naive() {
    for (ci, &(n, i, u)) in CASES.iter().enumerate() {
        let s = MatMulShape {
            batch: n,
            in_features: i,
            units: u,
        };
        let x = rand_vec(n * i, 30 + ci as u64);
        let k = rand_vec(i * u, 40 + ci as u64);
        let b = rand_vec(u, 50 + ci as u64);
        let g = rand_vec(n * u, 60 + ci as u64);
        let mut y = vec![0.0; n * u];
        matmul_forward(&s, &x, &k, Some(&b), Activation::Relu, &mut y).unwrap();
        let dz: Vec<f32> = g
            .iter()
            .zip(&y)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        // dx = dz kᵀ, dk = xᵀ dz, db = Σ_rows dz (direct loops in f64).
        let mut dx_r = vec![0.0f32; n * i];
        let mut dk_r = vec![0.0f32; i * u];
        let mut db_r = vec![0.0f32; u];
        for r in 0..n {
            for f in 0..i {
                dx_r[r * i + f] = (0..u)
                    .map(|c| dz[r * u + c] as f64 * k[f * u + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        for f in 0..i {
            for c in 0..u {
                dk_r[f * u + c] = (0..n)
                    .map(|r| x[r * i + f] as f64 * dz[r * u + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        for c in 0..u {
            db_r[c] = (0..n).map(|r| dz[r * u + c] as f64).sum::<f64>() as f32;
        }
        let mut dy = g.clone();
        let (mut dx, mut dk, mut db) = (
            vec![f32::NAN; n * i],
            vec![f32::NAN; i * u],
            vec![f32::NAN; u],
        );
        matmul_backward(
            &s,
            &x,
            &k,
            &y,
            Activation::Relu,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            Some(&mut db),
        )
        .unwrap();
        assert_close(&dy, &dz, 0.0, "dz");
        assert_close(&dx, &dx_r, 1e-4, &format!("case {ci} dx"));
        assert_close(&dk, &dk_r, 1e-4, &format!("case {ci} dk"));
        assert_close(&db, &db_r, 1e-4, &format!("case {ci} db"));
    }
}

#[test]
fn finite_differences_plain_and_fused() {
    let (n, i, u) = (5, 7, 4);
    let s = MatMulShape {
        batch: n,
        in_features: i,
        units: u,
    };
    let x = rand_vec(n * i, 1);
    let k = rand_vec(i * u, 2);
    let b = rand_vec(u, 3);
    let w = rand_vec(n * u, 4);
    for act in [
        Activation::Linear,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Softmax,
    ] {
        let fwd = |x: &[f32], k: &[f32], b: &[f32]| {
            let mut y = vec![0.0; n * u];
            matmul_forward(&s, x, k, Some(b), act, &mut y).unwrap();
            y
        };
        let y = fwd(&x, &k, &b);
        let mut dy = w.clone();
        let (mut dx, mut dk, mut db) = (vec![0.0; n * i], vec![0.0; i * u], vec![0.0; u]);
        matmul_backward(
            &s,
            &x,
            &k,
            &y,
            act,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            Some(&mut db),
        )
        .unwrap();
        let what = format!("{act:?}");
        check_fd(
            &format!("{what} dx"),
            &x,
            &dx,
            |v| weighted_sum(&fwd(v, &k, &b), &w),
            1e-2,
            35,
            2e-2,
            1e-3,
        );
        check_fd(
            &format!("{what} dk"),
            &k,
            &dk,
            |v| weighted_sum(&fwd(&x, v, &b), &w),
            1e-2,
            28,
            2e-2,
            1e-3,
        );
        check_fd(
            &format!("{what} db"),
            &b,
            &db,
            |v| weighted_sum(&fwd(&x, &k, v), &w),
            1e-2,
            4,
            2e-2,
            1e-3,
        );
    }
}
