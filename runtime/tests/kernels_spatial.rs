//! Global pooling and zero padding kernels: hand values, naive references
//! and finite differences.

mod kernels_support;

use cnnc_compiler::model::Pads2d;
use cnnc_runtime::kernels::{
    global_avg_pool2d_backward, global_avg_pool2d_forward, global_max_pool2d_backward,
    global_max_pool2d_forward, zero_padding2d_backward, zero_padding2d_forward, ImageShape,
    KernelError,
};
use kernels_support::*;

fn shape(batch: usize, height: usize, width: usize, channels: usize) -> ImageShape {
    ImageShape {
        batch,
        height,
        width,
        channels,
    }
}

#[test]
fn global_pooling_hand_values() {
    // One image 2 x 3, 2 channels; channel 0 = 1..6, channel 1 = -(1..6).
    let s = shape(1, 2, 3, 2);
    let x: Vec<f32> = (1..=6).flat_map(|v| [v as f32, -(v as f32)]).collect();
    let mut y = vec![0.0; 2];
    global_avg_pool2d_forward(&s, &x, &mut y).unwrap();
    // mean(1..6) = 21 / 6 = 3.5.
    assert_eq!(y, vec![3.5, -3.5]);
    let mut am = vec![0; 2];
    global_max_pool2d_forward(&s, &x, &mut y, &mut am).unwrap();
    assert_eq!(y, vec![6.0, -1.0]);
    // Pixel indices i * w + j: 6 is the last pixel (5), -1 the first (0).
    assert_eq!(am, vec![5, 0]);
    // Backward: the average spreads dy / 6, the max routes dy to the argmax.
    let dy = vec![6.0, 12.0];
    let mut dx = vec![9.0; 12];
    global_avg_pool2d_backward(&s, &dy, &mut dx).unwrap();
    assert_eq!(dx, [1.0, 2.0].repeat(6));
    global_max_pool2d_backward(&s, &am, &dy, &mut dx).unwrap();
    let mut expect = vec![0.0; 12];
    expect[5 * 2] = 6.0;
    expect[1] = 12.0;
    assert_eq!(dx, expect);
}

#[test]
fn global_max_ties_go_to_the_first_pixel() {
    let s = shape(1, 2, 2, 1);
    let mut y = vec![0.0];
    let mut am = vec![0];
    global_max_pool2d_forward(&s, &[1.0, 3.0, 3.0, 2.0], &mut y, &mut am).unwrap();
    assert_eq!((y[0], am[0]), (3.0, 1));
}

/// Naive references over a batch of non-square images.
#[test]
fn global_pooling_matches_naive() {
    for (n, h, w, c) in [(3, 4, 7, 5), (2, 1, 1, 3), (1, 5, 2, 1)] {
        let s = shape(n, h, w, c);
        let x = distinct_vec(n * h * w * c, 3);
        let mut avg = vec![0.0; n * c];
        let mut max = vec![0.0; n * c];
        let mut am = vec![0; n * c];
        global_avg_pool2d_forward(&s, &x, &mut avg).unwrap();
        global_max_pool2d_forward(&s, &x, &mut max, &mut am).unwrap();
        for b in 0..n {
            for ch in 0..c {
                let vals: Vec<f64> = (0..h * w)
                    .map(|p| x[(b * h * w + p) * c + ch] as f64)
                    .collect();
                let mean = vals.iter().sum::<f64>() / (h * w) as f64;
                let m = vals.iter().copied().fold(f64::MIN, f64::max);
                assert!((avg[b * c + ch] as f64 - mean).abs() < 1e-5);
                assert_eq!(max[b * c + ch] as f64, m);
            }
        }
    }
}

#[test]
fn global_pooling_gradients_finite_differences() {
    let s = shape(2, 3, 5, 4);
    let x = distinct_vec(s.len(), 5);
    let wts = rand_vec(s.pooled_len(), 6);
    let mut dx = vec![0.0; s.len()];
    global_avg_pool2d_backward(&s, &wts, &mut dx).unwrap();
    let avg = |v: &[f32]| {
        let mut y = vec![0.0; s.pooled_len()];
        global_avg_pool2d_forward(&s, v, &mut y).unwrap();
        weighted_sum(&y, &wts)
    };
    check_fd("global_avg_pool2d", &x, &dx, avg, 1e-3, 40, 1e-2, 1e-4);
    let mut y = vec![0.0; s.pooled_len()];
    let mut am = vec![0; s.pooled_len()];
    global_max_pool2d_forward(&s, &x, &mut y, &mut am).unwrap();
    global_max_pool2d_backward(&s, &am, &wts, &mut dx).unwrap();
    let max = |v: &[f32]| {
        let mut y = vec![0.0; s.pooled_len()];
        let mut am = vec![0; s.pooled_len()];
        global_max_pool2d_forward(&s, v, &mut y, &mut am).unwrap();
        weighted_sum(&y, &wts)
    };
    // Every index, so each channel's argmax is probed.
    check_fd("global_max_pool2d", &x, &dx, max, 1e-2, s.len(), 1e-2, 1e-4);
}

#[test]
fn zero_padding_hand_values() {
    // 1 x 2 image, 1 channel [[1, 2]], padding ((1, 0), (2, 1)) -> 2 x 5.
    let s = shape(1, 1, 2, 1);
    let pads = Pads2d {
        top: 1,
        bottom: 0,
        left: 2,
        right: 1,
    };
    let o = s.padded(&pads);
    assert_eq!((o.height, o.width, o.channels), (2, 5, 1));
    let mut y = vec![7.0; o.len()];
    zero_padding2d_forward(&s, &pads, &[1.0, 2.0], &mut y).unwrap();
    assert_eq!(y, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0]);
    let dy: Vec<f32> = (0..10).map(|v| v as f32).collect();
    let mut dx = vec![0.0; 2];
    zero_padding2d_backward(&s, &pads, &dy, &mut dx).unwrap();
    assert_eq!(dx, vec![7.0, 8.0]);
}

/// Zero-pads `x` and checks every output value bit for bit: the input's
/// inside the padding, zero outside.
fn check_zero_padding(s: &ImageShape, pads: &Pads2d, x: &[f32]) {
    let o = s.padded(pads);
    let mut y = vec![f32::NAN; o.len()];
    zero_padding2d_forward(s, pads, x, &mut y).unwrap();
    let c = s.channels;
    for b in 0..s.batch {
        for i in 0..o.height {
            for j in 0..o.width {
                for ch in 0..c {
                    let got = y[((b * o.height + i) * o.width + j) * c + ch];
                    let (ii, jj) = (i.checked_sub(pads.top), j.checked_sub(pads.left));
                    let want = match (ii, jj) {
                        (Some(ii), Some(jj)) if ii < s.height && jj < s.width => {
                            x[((b * s.height + ii) * s.width + jj) * c + ch]
                        }
                        _ => 0.0,
                    };
                    assert_eq!(got.to_bits(), want.to_bits(), "[{b}, {i}, {j}, {ch}]");
                }
            }
        }
    }
}

#[test]
fn zero_padding_matches_naive_and_gradient() {
    let s = shape(2, 3, 4, 3);
    let pads = Pads2d {
        top: 2,
        bottom: 1,
        left: 0,
        right: 3,
    };
    let o = s.padded(&pads);
    let x = rand_vec(s.len(), 9);
    check_zero_padding(&s, &pads, &x);
    let wts = rand_vec(o.len(), 10);
    let mut dx = vec![0.0; s.len()];
    zero_padding2d_backward(&s, &pads, &wts, &mut dx).unwrap();
    let f = |v: &[f32]| {
        let mut y = vec![0.0; o.len()];
        zero_padding2d_forward(&s, &pads, v, &mut y).unwrap();
        weighted_sum(&y, &wts)
    };
    check_fd("zero_padding2d", &x, &dx, f, 1e-3, 30, 1e-2, 1e-4);
}

/// One image whose padded rows are several forward tasks (about 8K floats
/// of whole rows each: 43 rows of 33x64 are 15 tasks of 3 rows and one of
/// 1).
#[test]
fn zero_padding_of_many_row_tasks_matches_naive() {
    let s = shape(1, 40, 30, 64);
    let pads = Pads2d {
        top: 1,
        bottom: 2,
        left: 3,
        right: 0,
    };
    check_zero_padding(&s, &pads, &rand_vec(s.len(), 11));
}

#[test]
fn wrong_lengths_are_errors() {
    let s = shape(1, 2, 2, 1);
    let mut y = vec![0.0; 2];
    assert!(matches!(
        global_avg_pool2d_forward(&s, &[0.0; 4], &mut y),
        Err(KernelError::Length { .. })
    ));
    let mut y = vec![0.0; 8];
    assert!(matches!(
        zero_padding2d_forward(&s, &Pads2d::default(), &[0.0; 4], &mut y),
        Err(KernelError::Length { .. })
    ));
}
