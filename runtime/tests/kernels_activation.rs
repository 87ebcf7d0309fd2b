//! Element-wise kernels: activations, softmax, bias add, column sums, dropout.

mod kernels_support;

use cnnc_compiler::model::Activation;
use cnnc_runtime::kernels::{
    activation_backward_inplace, activation_forward, activation_forward_inplace, bias_add_backward,
    bias_add_forward, column_sums, dropout_apply, dropout_mask, KernelError,
};
use kernels_support::*;

const ELEMENTWISE: [Activation; 9] = [
    Activation::Linear,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Relu6,
    Activation::Elu { alpha: 1.0 },
    Activation::Elu { alpha: 0.5 },
    Activation::LeakyRelu {
        negative_slope: 0.2,
    },
    Activation::LeakyRelu {
        negative_slope: 0.3,
    },
];

#[test]
fn activations_match_formulas() {
    let x: Vec<f32> = (-20..=20).map(|i| i as f32 * 0.37).collect();
    for act in ELEMENTWISE {
        let mut y = x.clone();
        activation_forward_inplace(act, &mut y, 1).unwrap();
        let r: Vec<f32> = x.iter().map(|&v| act_ref(act, v as f64) as f32).collect();
        assert_close(&y, &r, 1e-6, &format!("{act:?}"));
    }
    // Hand values: sigmoid(0) = 1/2, tanh(0) = 0, relu(-1) = 0.
    let mut v = vec![0.0, -1.0];
    activation_forward_inplace(Activation::Sigmoid, &mut v, 2).unwrap();
    assert_eq!(v[0], 0.5);
    let mut v = vec![0.0, -1.0];
    activation_forward_inplace(Activation::Relu, &mut v, 2).unwrap();
    assert_eq!(v, vec![0.0, 0.0]);
}

#[test]
fn out_of_place_matches_formulas_and_leaves_the_input() {
    // 70,000 values (several 32K-element tasks) in rows of 7; softmax too.
    let x: Vec<f32> = (0..70_000)
        .map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0)
        .collect();
    for act in ELEMENTWISE.into_iter().chain([Activation::Softmax]) {
        let mut y = vec![f32::NAN; x.len()];
        activation_forward(act, &x, &mut y, 7).unwrap();
        let r: Vec<f32> = match act {
            Activation::Softmax => x
                .chunks(7)
                .flat_map(|row| {
                    let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.into_iter().map(move |v| (v / s) as f32)
                })
                .collect(),
            _ => x.iter().map(|&v| act_ref(act, v as f64) as f32).collect(),
        };
        assert_close(&y, &r, 1e-6, &format!("{act:?}"));
        // The same bits as the in-place kernel on a copy.
        let mut z = x.clone();
        activation_forward_inplace(act, &mut z, 7).unwrap();
        assert_eq!(y, z, "{act:?}");
    }
    let mut short = vec![0.0; 6];
    assert!(matches!(
        activation_forward(Activation::Relu, &x[..7], &mut short, 7),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        activation_forward(Activation::Relu, &x[..7], &mut [0.0; 7], 2),
        Err(KernelError::Length { .. })
    ));
}

#[test]
fn relu6_elu_leaky_relu_hand_values() {
    // relu6: clamp to [0, 6].
    let mut v = vec![-2.0, 0.0, 3.5, 6.0, 7.25];
    activation_forward_inplace(Activation::Relu6, &mut v, 5).unwrap();
    assert_eq!(v, vec![0.0, 0.0, 3.5, 6.0, 6.0]);
    // elu(alpha = 1): elu(2) = 2, elu(0) = 0, elu(-ln 2) = 1/2 - 1 = -1/2;
    // with alpha = 2, elu(-ln 2) = -1.
    let ln2 = 2.0f32.ln();
    let mut v = vec![2.0, 0.0, -ln2];
    activation_forward_inplace(Activation::Elu { alpha: 1.0 }, &mut v, 3).unwrap();
    assert_close(&v, &[2.0, 0.0, -0.5], 1e-6, "elu");
    let mut v = vec![-ln2];
    activation_forward_inplace(Activation::Elu { alpha: 2.0 }, &mut v, 1).unwrap();
    assert_close(&v, &[-1.0], 1e-6, "elu alpha 2");
    // leaky_relu(slope 0.3): -10 -> -3, 4 -> 4.
    let leaky = Activation::LeakyRelu {
        negative_slope: 0.3,
    };
    let mut v = vec![-10.0, 4.0, 0.0];
    activation_forward_inplace(leaky, &mut v, 3).unwrap();
    assert_close(&v, &[-3.0, 4.0, 0.0], 1e-6, "leaky_relu");
    // Derivatives from the outputs: relu6' = [0 < y < 6]; elu' = y + alpha
    // for y <= 0 (at x = -ln 2: e^x = 1/2); leaky' = slope for y <= 0.
    let y = vec![0.0, 3.0, 6.0];
    let mut dy = vec![1.0, 1.0, 1.0];
    activation_backward_inplace(Activation::Relu6, &y, &mut dy, 3).unwrap();
    assert_eq!(dy, vec![0.0, 1.0, 0.0]);
    let y = vec![2.0, -0.5];
    let mut dy = vec![3.0, 3.0];
    activation_backward_inplace(Activation::Elu { alpha: 1.0 }, &y, &mut dy, 2).unwrap();
    assert_close(&dy, &[3.0, 1.5], 1e-6, "elu'");
    let y = vec![-3.0, 4.0];
    let mut dy = vec![2.0, 2.0];
    activation_backward_inplace(leaky, &y, &mut dy, 2).unwrap();
    assert_close(&dy, &[0.6, 2.0], 1e-6, "leaky_relu'");
}

#[test]
fn softmax_rows() {
    // softmax([0, ln 3]) = [1/4, 3/4]; softmax([1000, 1001]) = [1/(1+e), e/(1+e)]
    // (the max is subtracted first, so no overflow).
    let mut v = vec![0.0, 3.0f32.ln(), 1000.0, 1001.0];
    activation_forward_inplace(Activation::Softmax, &mut v, 2).unwrap();
    let e = std::f32::consts::E;
    assert_close(
        &v,
        &[0.25, 0.75, 1.0 / (1.0 + e), e / (1.0 + e)],
        1e-6,
        "softmax",
    );
}

#[test]
fn activation_gradients_finite_differences() {
    let rows = 6;
    let len = 5;
    // Keep inputs away from relu's kink at 0.
    let x: Vec<f32> = rand_vec(rows * len, 7)
        .into_iter()
        .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
        .collect();
    let w = rand_vec(rows * len, 8);
    for act in ELEMENTWISE.into_iter().chain([Activation::Softmax]) {
        let fwd = |v: &[f32]| {
            let mut y = v.to_vec();
            activation_forward_inplace(act, &mut y, len).unwrap();
            weighted_sum(&y, &w)
        };
        let mut y = x.clone();
        activation_forward_inplace(act, &mut y, len).unwrap();
        let mut dy = w.clone();
        activation_backward_inplace(act, &y, &mut dy, len).unwrap();
        check_fd(&format!("{act:?}"), &x, &dy, fwd, 1e-3, 30, 1e-2, 1e-3);
    }
}

#[test]
fn bias_add_forward_and_gradient() {
    let (rows, c) = (7, 3);
    let x = rand_vec(rows * c, 1);
    let b = vec![1.0, -2.0, 0.5];
    let mut y = vec![0.0; rows * c];
    bias_add_forward(&x, &b, &mut y).unwrap();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, x[i] + b[i % c]);
    }
    let w = rand_vec(rows * c, 2);
    let mut db = vec![0.0; c];
    bias_add_backward(&w, &mut db).unwrap();
    let fwd = |v: &[f32]| {
        let mut y = vec![0.0; rows * c];
        bias_add_forward(&x, v, &mut y).unwrap();
        weighted_sum(&y, &w)
    };
    check_fd("bias", &b, &db, fwd, 1e-2, 3, 1e-3, 1e-4);
}

#[test]
fn column_sums_hand_and_large() {
    let mut out = vec![0.0; 2];
    column_sums(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, &mut out).unwrap();
    assert_eq!(out, vec![9.0, 12.0]);
    // Many rows (several fixed partial blocks) against an f64 sum.
    let (rows, cols) = (1000, 13);
    let d = rand_vec(rows * cols, 3);
    let mut out = vec![0.0; cols];
    column_sums(&d, cols, &mut out).unwrap();
    let r: Vec<f32> = (0..cols)
        .map(|j| (0..rows).map(|i| d[i * cols + j] as f64).sum::<f64>() as f32)
        .collect();
    assert_close(&out, &r, 1e-4, "column sums");
    assert!(matches!(
        column_sums(&d[..5], cols, &mut out),
        Err(KernelError::Length { .. })
    ));
}

#[test]
fn dropout_masks() {
    let n = 200_000;
    let rate = 0.3f32;
    let mut m = vec![0.0; n];
    dropout_mask(rate, 42, 5, &mut m).unwrap();
    let scale = 1.0 / (1.0 - rate);
    assert!(m.iter().all(|&v| v == 0.0 || v == scale));
    let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    // Binomial: std of the kept fraction is sqrt(0.7 * 0.3 / n) ≈ 0.001.
    assert!((kept - 0.7).abs() < 0.006, "kept fraction {kept}");
    // Same seed and stream: same mask; another stream or seed: different.
    let mut m2 = vec![0.0; n];
    dropout_mask(rate, 42, 5, &mut m2).unwrap();
    assert_eq!(m, m2);
    dropout_mask(rate, 42, 6, &mut m2).unwrap();
    assert_ne!(m, m2);
    dropout_mask(rate, 43, 5, &mut m2).unwrap();
    assert_ne!(m, m2);
    // A prefix of a longer mask equals the shorter mask (chunked generation
    // follows one sequential stream).
    let mut short = vec![0.0; 1000];
    dropout_mask(rate, 42, 5, &mut short).unwrap();
    assert_eq!(short, m[..1000]);
    // rate 0 keeps everything unscaled; rate 1 is rejected.
    dropout_mask(0.0, 1, 0, &mut short).unwrap();
    assert!(short.iter().all(|&v| v == 1.0));
    assert!(dropout_mask(1.0, 1, 0, &mut short).is_err());
}

#[test]
fn dropout_gradient_with_fixed_mask() {
    let n = 50;
    let mut mask = vec![0.0; n];
    dropout_mask(0.5, 9, 0, &mut mask).unwrap();
    let x = rand_vec(n, 1);
    let w = rand_vec(n, 2);
    let mut dx = vec![0.0; n];
    dropout_apply(&w, &mask, &mut dx).unwrap();
    let fwd = |v: &[f32]| {
        let mut y = vec![0.0; n];
        dropout_apply(v, &mask, &mut y).unwrap();
        weighted_sum(&y, &w)
    };
    check_fd("dropout", &x, &dx, fwd, 1e-2, n, 1e-3, 1e-4);
    let mut y = vec![0.0; n];
    dropout_apply(&x, &mask, &mut y).unwrap();
    for i in 0..n {
        assert_eq!(y[i], if mask[i] == 0.0 { 0.0 } else { 2.0 * x[i] });
    }
}
