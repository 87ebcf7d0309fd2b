//! Kernels of the graph ops: batch normalization, add / multiply /
//! concatenate, and nearest / bilinear upsampling, against hand-computed
//! values and finite differences of their backward passes.

mod kernels_support;

use cnnc_compiler::model::Interpolation;
use cnnc_runtime::kernels::batch_norm::{inverse_std, update_moving};
use cnnc_runtime::kernels::{
    add_forward, batch_norm_backward, batch_norm_inference_forward, batch_norm_train_forward,
    concat_backward, concat_forward, multiply_backward, multiply_forward, up_sampling2d_backward,
    up_sampling2d_forward, BatchNormShape, ConcatShape, ImageShape,
};
use kernels_support::*;

#[test]
fn add_and_multiply_on_hand_values() {
    let a = [1.0, -2.0, 3.0];
    let b = [0.5, 4.0, -1.0];
    let c = [2.0, 0.0, 10.0];
    let mut y = [0.0; 3];
    add_forward(&[&a, &b, &c], &mut y).unwrap();
    assert_eq!(y, [3.5, 2.0, 12.0]);
    multiply_forward(&[&a, &b, &c], &mut y).unwrap();
    assert_eq!(y, [1.0, 0.0, -30.0]);
    // d(abc)/db = a c, times dy.
    let dy = [1.0, 2.0, -1.0];
    let mut dx = [0.0; 3];
    multiply_backward(&[&a, &b, &c], 1, &dy, &mut dx).unwrap();
    assert_eq!(dx, [2.0, 0.0, -30.0]);
    // d(abc)/da = b c; the zero in `c` is fine (a product, not a division).
    multiply_backward(&[&a, &b, &c], 0, &dy, &mut dx).unwrap();
    assert_eq!(dx, [1.0, 0.0, 10.0]);
    // Length mismatches are errors, not panics.
    assert!(add_forward(&[&a, &[1.0]], &mut y).is_err());
    assert!(add_forward(&[], &mut y).is_err());
    assert!(multiply_backward(&[&a, &b], 2, &dy, &mut dx).is_err());
}

#[test]
fn multiply_backward_matches_finite_differences() {
    let n = 40;
    let xs: Vec<Vec<f32>> = (0..3).map(|k| rand_vec(n, 10 + k)).collect();
    let w = rand_vec(n, 20);
    for k in 0..3 {
        let refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
        let mut dx = vec![0.0; n];
        multiply_backward(&refs, k, &w, &mut dx).unwrap();
        check_fd(
            &format!("multiply input {k}"),
            &xs[k],
            &dx,
            |v| {
                let mut refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
                refs[k] = v;
                let mut y = vec![0.0; n];
                multiply_forward(&refs, &mut y).unwrap();
                weighted_sum(&y, &w)
            },
            1e-2,
            n,
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn concat_channels_and_rows_by_hand() {
    // Two images [1, 2, 2, c] with c = 1 and 2, joined on channels (axis 2 of
    // [h, w, c]): outer = batch * h * w = 4, inner = [1, 2].
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0];
    let s = ConcatShape {
        outer: 4,
        inner: vec![1, 2],
    };
    let mut y = vec![0.0; 12];
    concat_forward(&s, &[&a, &b], &mut y).unwrap();
    assert_eq!(
        y,
        [1.0, 10.0, 11.0, 2.0, 20.0, 21.0, 3.0, 30.0, 31.0, 4.0, 40.0, 41.0]
    );
    let mut db = vec![0.0; 8];
    concat_backward(&s, 1, &y, &mut db).unwrap();
    assert_eq!(db, b);
    let mut da = vec![0.0; 4];
    concat_backward(&s, 0, &y, &mut da).unwrap();
    assert_eq!(da, a);

    // Along the height axis (axis 0 of [h, w, c]) with batch 2: outer = 2,
    // inner = h_k * w * c.
    let a = [1.0, 2.0, 3.0, 4.0]; // 2 images of [1, 2, 1]
    let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]; // 2 images of [2, 2, 1]
    let s = ConcatShape {
        outer: 2,
        inner: vec![2, 4],
    };
    let mut y = vec![0.0; 12];
    concat_forward(&s, &[&a, &b], &mut y).unwrap();
    assert_eq!(
        y,
        [1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]
    );
    assert!(concat_forward(&s, &[&a], &mut y).is_err());
    assert!(concat_backward(&s, 2, &y, &mut da).is_err());
}

fn img(batch: usize, height: usize, width: usize, channels: usize) -> ImageShape {
    ImageShape {
        batch,
        height,
        width,
        channels,
    }
}

#[test]
fn nearest_upsampling_repeats_pixels() {
    let s = img(1, 2, 2, 1);
    let x = [1.0, 2.0, 3.0, 4.0];
    let mut y = vec![0.0; 2 * 3 * 2];
    up_sampling2d_forward(&s, [1, 3], Interpolation::Nearest, &x, &mut y).unwrap();
    assert_eq!(
        y,
        [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0]
    );
    let mut y = vec![0.0; 16];
    up_sampling2d_forward(&s, [2, 2], Interpolation::Nearest, &x, &mut y).unwrap();
    assert_eq!(
        y,
        [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]
    );
    // Backward sums each 2 x 2 block.
    let dy: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let mut dx = vec![0.0; 4];
    up_sampling2d_backward(&s, [2, 2], Interpolation::Nearest, &dy, &mut dx).unwrap();
    assert_eq!(
        dx,
        [
            0.0 + 1.0 + 4.0 + 5.0,
            2.0 + 3.0 + 6.0 + 7.0,
            8.0 + 9.0 + 12.0 + 13.0,
            10.0 + 11.0 + 14.0 + 15.0
        ]
    );
    assert!(up_sampling2d_forward(&s, [0, 2], Interpolation::Nearest, &x, &mut y).is_err());
}

#[test]
fn bilinear_upsampling_uses_half_pixel_centres() {
    // Per axis, 2 -> 4 with scale 1/2: output o samples p = (o + 0.5) / 2 - 0.5
    // = -0.25, 0.25, 0.75, 1.25, i.e. (clamped) weights
    // [x0, 0.75 x0 + 0.25 x1, 0.25 x0 + 0.75 x1, x1].
    let s = img(1, 2, 2, 1);
    let x = [1.0, 2.0, 3.0, 4.0];
    let mut y = vec![0.0; 16];
    up_sampling2d_forward(&s, [2, 2], Interpolation::Bilinear, &x, &mut y).unwrap();
    let row = |a: f32, b: f32| [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b];
    let r0 = row(1.0, 2.0);
    let r1 = row(3.0, 4.0);
    let mut expected = Vec::new();
    for wy in [(1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0)] {
        for j in 0..4 {
            expected.push(wy.0 * r0[j] + wy.1 * r1[j]);
        }
    }
    assert_close(&y, &expected, 1e-6, "bilinear 2x2 -> 4x4");
    assert_eq!(&y[..4], &[1.0, 1.25, 1.75, 2.0]);

    // Size 3 along one axis (scale 1/3, two channels): p = (o + 0.5) / 3 - 0.5.
    let s = img(1, 1, 2, 2);
    let x = [0.0, 10.0, 3.0, 40.0]; // pixel 0 = (0, 10), pixel 1 = (3, 40)
    let mut y = vec![0.0; 12];
    up_sampling2d_forward(&s, [1, 3], Interpolation::Bilinear, &x, &mut y).unwrap();
    let mut expected = Vec::new();
    for o in 0..6 {
        let p = (o as f32 + 0.5) / 3.0 - 0.5;
        let (lo, hi) = (p.floor().max(0.0) as usize, (p.ceil() as usize).min(1));
        let t = p - p.floor();
        for ch in 0..2 {
            let (a, b) = (x[lo * 2 + ch], x[hi * 2 + ch]);
            expected.push(a + (b - a) * t);
        }
    }
    assert_close(&y, &expected, 1e-6, "bilinear 1x2 -> 1x6");
    // The edges are the edge pixels.
    assert_eq!(&y[..2], &[0.0, 10.0]);
    assert_eq!(&y[10..], &[3.0, 40.0]);
}

#[test]
fn upsampling_backward_matches_finite_differences() {
    for interpolation in [Interpolation::Nearest, Interpolation::Bilinear] {
        for (s, size) in [(img(2, 3, 2, 2), [2, 3]), (img(1, 2, 3, 1), [3, 2])] {
            let x = rand_vec(s.len(), 31);
            let out = s.len() * size[0] * size[1];
            let w = rand_vec(out, 32);
            let mut dx = vec![0.0; s.len()];
            up_sampling2d_backward(&s, size, interpolation, &w, &mut dx).unwrap();
            check_fd(
                &format!("{interpolation:?} {size:?}"),
                &x,
                &dx,
                |v| {
                    let mut y = vec![0.0; out];
                    up_sampling2d_forward(&s, size, interpolation, v, &mut y).unwrap();
                    weighted_sum(&y, &w)
                },
                1e-2,
                s.len(),
                1e-3,
                1e-4,
            );
        }
    }
}

#[test]
fn batch_norm_inference_is_the_formula() {
    // Two rows, two channels: y = gamma (x - mean) / sqrt(var + eps) + beta.
    let s = BatchNormShape {
        rows: 2,
        channels: 2,
    };
    let x = [1.0, 2.0, 3.0, -4.0];
    let gamma = [2.0, 0.5];
    let beta = [0.25, -1.0];
    let mean = [1.0, -2.0];
    let var = [3.999, 0.249];
    let eps = 0.001;
    let mut y = [0.0; 4];
    let mut inv = [0.0; 2];
    batch_norm_inference_forward(
        &s,
        &x,
        Some(&gamma),
        Some(&beta),
        &mean,
        &var,
        eps,
        &mut y,
        &mut inv,
    )
    .unwrap();
    // sqrt(4) = 2, sqrt(0.25) = 0.5.
    let expected = [
        2.0 * (1.0 - 1.0) / 2.0 + 0.25,
        0.5 * (2.0 + 2.0) / 0.5 - 1.0,
        2.0 * (3.0 - 1.0) / 2.0 + 0.25,
        0.5 * (-4.0 + 2.0) / 0.5 - 1.0,
    ];
    assert_close(&y, &expected, 1e-5, "inference batch norm");
    assert_close(&inv, &[0.5, 2.0], 1e-5, "inv_std");
    // Without gamma / beta (scale=false, center=false).
    batch_norm_inference_forward(&s, &x, None, None, &mean, &var, eps, &mut y, &mut inv).unwrap();
    assert_close(&y, &[0.0, 8.0, 1.0, -4.0], 1e-5, "no affine");
    // Wrong lengths are errors.
    assert!(batch_norm_inference_forward(
        &s,
        &x,
        None,
        None,
        &mean[..1],
        &var,
        eps,
        &mut y,
        &mut inv
    )
    .is_err());
}

#[test]
fn batch_norm_training_uses_batch_mean_and_biased_variance() {
    // Channel 0 values 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    // Channel 1 values 0, 0, 4, 4: mean 2, variance 4.
    let s = BatchNormShape {
        rows: 4,
        channels: 2,
    };
    let x = [1.0, 0.0, 2.0, 0.0, 3.0, 4.0, 6.0, 4.0];
    let eps = 0.5;
    let (mut y, mut mean, mut var, mut inv) = (vec![0.0; 8], [0.0; 2], [0.0; 2], [0.0; 2]);
    batch_norm_train_forward(
        &s,
        &x,
        None,
        Some(&[1.0, 0.0]),
        eps,
        &mut y,
        &mut mean,
        &mut var,
        &mut inv,
    )
    .unwrap();
    assert_close(&mean, &[3.0, 2.0], 1e-6, "mean");
    assert_close(&var, &[3.5, 4.0], 1e-6, "variance");
    let i0 = 1.0 / (3.5f32 + 0.5).sqrt();
    let i1 = 1.0 / (4.0f32 + 0.5).sqrt();
    assert_close(&inv, &[i0, i1], 1e-6, "inv_std");
    let expected: Vec<f32> = x
        .chunks(2)
        .flat_map(|r| [(r[0] - 3.0) * i0 + 1.0, (r[1] - 2.0) * i1])
        .collect();
    assert_close(&y, &expected, 1e-6, "normalized");
    // Moving update: moving * momentum + batch * (1 - momentum).
    let mut moving = [1.0, -1.0];
    update_moving(&mut moving, &mean, 0.9).unwrap();
    assert_close(&moving, &[0.9 + 0.3, -0.9 + 0.2], 1e-6, "moving mean");
    let mut inv2 = [0.0; 2];
    inverse_std(&[3.5, 4.0], 0.5, &mut inv2).unwrap();
    assert_close(&inv2, &inv, 1e-7, "inverse_std");
}

/// L = Σ w ⊙ bn(x) with batch statistics (train) or fixed statistics.
fn bn_loss(
    s: &BatchNormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    w: &[f32],
    fixed: Option<(&[f32], &[f32])>,
) -> f64 {
    let mut y = vec![0.0; x.len()];
    let c = s.channels;
    let (mut m, mut v, mut inv) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    match fixed {
        None => batch_norm_train_forward(
            s,
            x,
            Some(gamma),
            Some(beta),
            1e-3,
            &mut y,
            &mut m,
            &mut v,
            &mut inv,
        )
        .unwrap(),
        Some((mm, mv)) => batch_norm_inference_forward(
            s,
            x,
            Some(gamma),
            Some(beta),
            mm,
            mv,
            1e-3,
            &mut y,
            &mut inv,
        )
        .unwrap(),
    }
    weighted_sum(&y, w)
}

#[test]
fn batch_norm_backward_matches_finite_differences() {
    // 300 rows: more than one fixed-size reduction block.
    let s = BatchNormShape {
        rows: 300,
        channels: 3,
    };
    let x: Vec<f32> = rand_vec(s.len(), 41)
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let gamma = [1.5, -0.7, 0.9];
    let beta = [0.1, 0.2, -0.3];
    let w = rand_vec(s.len(), 42);
    let mm = [0.2, -0.1, 0.4];
    let mv = [1.2, 0.8, 1.5];
    for fixed in [None, Some((&mm[..], &mv[..]))] {
        let c = s.channels;
        let (mut y, mut mean, mut var, mut inv) =
            (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        match fixed {
            None => batch_norm_train_forward(
                &s,
                &x,
                Some(&gamma),
                Some(&beta),
                1e-3,
                &mut y,
                &mut mean,
                &mut var,
                &mut inv,
            )
            .unwrap(),
            Some((m, v)) => {
                batch_norm_inference_forward(
                    &s,
                    &x,
                    Some(&gamma),
                    Some(&beta),
                    m,
                    v,
                    1e-3,
                    &mut y,
                    &mut inv,
                )
                .unwrap();
                mean.copy_from_slice(m);
            }
        }
        let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_backward(
            &s,
            &x,
            &mean,
            &inv,
            Some(&gamma),
            fixed.is_none(),
            &w,
            Some(&mut dx),
            Some(&mut dg),
            Some(&mut db),
        )
        .unwrap();
        let what = if fixed.is_none() {
            "train"
        } else {
            "inference"
        };
        check_fd(
            &format!("{what} dx"),
            &x,
            &dx,
            |v| bn_loss(&s, v, &gamma, &beta, &w, fixed),
            1e-2,
            60,
            2e-2,
            2e-3,
        );
        check_fd(
            &format!("{what} dgamma"),
            &gamma,
            &dg,
            |v| bn_loss(&s, &x, v, &beta, &w, fixed),
            1e-2,
            3,
            1e-2,
            1e-3,
        );
        check_fd(
            &format!("{what} dbeta"),
            &beta,
            &db,
            |v| bn_loss(&s, &x, &gamma, v, &w, fixed),
            1e-2,
            3,
            1e-2,
            1e-3,
        );
        // With batch statistics the output of every channel has zero mean,
        // so d loss / d x sums to zero per channel.
        if fixed.is_none() {
            for ch in 0..c {
                let sum: f32 = dx.iter().skip(ch).step_by(c).sum();
                assert!(sum.abs() < 1e-3, "channel {ch}: Σ dx = {sum}");
            }
        }
    }
}

#[test]
fn batch_norm_is_deterministic_across_thread_counts() {
    let s = BatchNormShape {
        rows: 2000,
        channels: 5,
    };
    let x = rand_vec(s.len(), 51);
    let w = rand_vec(s.len(), 52);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let c = s.channels;
            let (mut y, mut m, mut v, mut inv) =
                (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
            batch_norm_train_forward(&s, &x, None, None, 1e-3, &mut y, &mut m, &mut v, &mut inv)
                .unwrap();
            let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
            batch_norm_backward(
                &s,
                &x,
                &m,
                &inv,
                None,
                true,
                &w,
                Some(&mut dx),
                Some(&mut dg),
                Some(&mut db),
            )
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (
                bits(&y),
                bits(&m),
                bits(&v),
                bits(&dx),
                bits(&dg),
                bits(&db),
            )
        })
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(1), run(3));
}
