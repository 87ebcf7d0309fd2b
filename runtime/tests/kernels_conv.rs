//! Convolution kernel tests: a hand-computed case, comparison with a naive
//! direct-loop convolution (forward and backward), and finite differences.

mod kernels_support;

use cnnc_compiler::model::{Activation, Pads2d};
use cnnc_runtime::kernels::{conv2d_backward, conv2d_forward, Conv2dShape, KernelError};
use kernels_support::*;

/// Convolution geometries covering odd sizes, stride 2, same and valid
/// padding, 1×1 (pointwise) kernels, non-square kernels and strides, and
/// enough rows for several GEMM blocks and gradient groups.
fn cases() -> Vec<NaiveConv> {
    let mk = |n, h, w, c, f, kh, kw, sh, sw, same: bool| {
        let pads = if same {
            same_pads2d(h, w, [kh, kw], [sh, sw])
        } else {
            Pads2d::default()
        };
        NaiveConv {
            n,
            h,
            w,
            c,
            f,
            kh,
            kw,
            sh,
            sw,
            pads,
        }
    };
    vec![
        mk(2, 5, 7, 3, 4, 3, 3, 1, 1, true),
        mk(2, 5, 7, 3, 4, 3, 3, 1, 1, false),
        mk(3, 9, 8, 2, 5, 3, 3, 2, 2, true),
        mk(1, 9, 9, 1, 3, 4, 2, 2, 1, true),
        mk(2, 7, 6, 3, 2, 5, 5, 2, 2, false),
        mk(2, 6, 5, 4, 3, 1, 1, 1, 1, false),
        mk(1, 11, 13, 1, 6, 7, 7, 1, 1, true),
        mk(2, 4, 4, 5, 7, 2, 2, 2, 2, true),
        // Many rows (several blocks and gradient groups, blocks straddling images).
        mk(5, 23, 25, 3, 8, 3, 3, 1, 1, true),
        // Stems: 3 channels, stride 2 (kernel rows of 9 and 21 floats,
        // copied as fixed-size runs).
        mk(2, 11, 9, 3, 4, 3, 3, 2, 2, false),
        mk(1, 15, 13, 3, 4, 7, 7, 2, 2, true),
        // Long patches (small blocks): 3*3*72 = 648 per row.
        mk(3, 10, 9, 72, 5, 3, 3, 1, 1, true),
    ]
}

fn shape_of(c: &NaiveConv) -> Conv2dShape {
    Conv2dShape::new(&c.attrs(), c.n, c.h, c.w).expect("valid geometry")
}

#[test]
fn hand_computed_stride_2_same_padding() {
    // Input [1, 2, 3, 4, 5, 6] as [1, 1, 6, 1]; kernel_size [1, 3] of ones;
    // strides [1, 2]; same padding: out = ceil(6 / 2) = 3, total pad
    // (3 - 1) * 2 + 3 - 6 = 1 -> left 0, right 1. Windows: 1+2+3, 3+4+5, 5+6+0.
    let c = NaiveConv {
        n: 1,
        h: 1,
        w: 6,
        c: 1,
        f: 1,
        kh: 1,
        kw: 3,
        sh: 1,
        sw: 2,
        pads: Pads2d {
            top: 0,
            bottom: 0,
            left: 0,
            right: 1,
        },
    };
    assert_eq!(same_pads2d(1, 6, [1, 3], [1, 2]), c.pads);
    let s = shape_of(&c);
    assert_eq!((s.out_h, s.out_w), (1, 3));
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let k = [1.0, 1.0, 1.0];
    let mut y = vec![0.0; 3];
    conv2d_forward(&s, &x, &k, Some(&[0.0]), Activation::Linear, &mut y).unwrap();
    assert_eq!(y, vec![6.0, 12.0, 11.0]);
}

#[test]
fn forward_matches_naive() {
    for (ci, c) in cases().into_iter().enumerate() {
        let s = shape_of(&c);
        let (oh, ow) = c.out_hw();
        assert_eq!((s.out_h, s.out_w), (oh, ow), "case {ci}");
        let x = rand_vec(s.input_len(), 10 + ci as u64);
        let k = rand_vec(s.kernel_len(), 20 + ci as u64);
        let b = rand_vec(c.f, 30 + ci as u64);
        for act in [
            Activation::Linear,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            for bias in [None, Some(b.as_slice())] {
                let mut y = vec![f32::NAN; s.output_len()];
                conv2d_forward(&s, &x, &k, bias, act, &mut y).unwrap();
                let r = c.forward(&x, &k, bias, act);
                assert_close(
                    &y,
                    &r,
                    1e-4,
                    &format!("case {ci} {act:?} bias {}", bias.is_some()),
                );
            }
        }
        // Softmax epilogue: over the filters of each output pixel.
        let mut y = vec![0.0; s.output_len()];
        conv2d_forward(&s, &x, &k, Some(&b), Activation::Softmax, &mut y).unwrap();
        let z = c.forward(&x, &k, Some(&b), Activation::Linear);
        for (yr, zr) in y.chunks(c.f).zip(z.chunks(c.f)) {
            let m = zr.iter().copied().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = zr.iter().map(|v| (*v as f64 - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let r: Vec<f32> = e.iter().map(|v| (v / sum) as f32).collect();
            assert_close(yr, &r, 1e-5, &format!("case {ci} softmax"));
        }
    }
}

#[test]
fn backward_matches_naive() {
    for (ci, c) in cases().into_iter().enumerate() {
        let s = shape_of(&c);
        let x = rand_vec(s.input_len(), 40 + ci as u64);
        let k = rand_vec(s.kernel_len(), 50 + ci as u64);
        let b = rand_vec(c.f, 60 + ci as u64);
        let g = rand_vec(s.output_len(), 70 + ci as u64);
        for act in [Activation::Linear, Activation::Relu, Activation::Tanh] {
            let mut y = vec![0.0; s.output_len()];
            conv2d_forward(&s, &x, &k, Some(&b), act, &mut y).unwrap();
            // dz = g * act'(y), from the output.
            let dz_ref: Vec<f32> = g
                .iter()
                .zip(&y)
                .map(|(&gv, &yv)| match act {
                    Activation::Relu => {
                        if yv > 0.0 {
                            gv
                        } else {
                            0.0
                        }
                    }
                    Activation::Tanh => gv * (1.0 - yv * yv),
                    _ => gv,
                })
                .collect();
            let (dx_r, dk_r, db_r) = c.backward(&x, &k, &dz_ref);
            let mut dy = g.clone();
            let (mut dx, mut dk, mut db) = (
                vec![f32::NAN; s.input_len()],
                vec![f32::NAN; s.kernel_len()],
                vec![f32::NAN; c.f],
            );
            conv2d_backward(
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
            let what = format!("case {ci} {act:?}");
            assert_close(&dy, &dz_ref, 1e-6, &format!("{what} dz"));
            assert_close(&dx, &dx_r, 1e-4, &format!("{what} dx"));
            assert_close(&dk, &dk_r, 1e-4, &format!("{what} dkernel"));
            assert_close(&db, &db_r, 1e-4, &format!("{what} dbias"));
        }
    }
}

#[test]
fn backward_optional_outputs() {
    // Each gradient can be requested alone and equals the full computation.
    let c = cases()[2];
    let s = shape_of(&c);
    let x = rand_vec(s.input_len(), 1);
    let k = rand_vec(s.kernel_len(), 2);
    let g = rand_vec(s.output_len(), 3);
    let mut y = vec![0.0; s.output_len()];
    conv2d_forward(&s, &x, &k, None, Activation::Relu, &mut y).unwrap();
    let (mut dx, mut dk, mut db) = (
        vec![0.0; s.input_len()],
        vec![0.0; s.kernel_len()],
        vec![0.0; c.f],
    );
    let mut dy = g.clone();
    conv2d_backward(
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
    let mut dx1 = vec![0.0; s.input_len()];
    let mut dy = g.clone();
    conv2d_backward(
        &s,
        &x,
        &k,
        &y,
        Activation::Relu,
        &mut dy,
        Some(&mut dx1),
        None,
        None,
    )
    .unwrap();
    assert_eq!(dx, dx1);
    let mut dk1 = vec![0.0; s.kernel_len()];
    let mut dy = g.clone();
    conv2d_backward(
        &s,
        &x,
        &k,
        &y,
        Activation::Relu,
        &mut dy,
        None,
        Some(&mut dk1),
        None,
    )
    .unwrap();
    assert_eq!(dk, dk1);
    let mut db1 = vec![0.0; c.f];
    let mut dy = g;
    conv2d_backward(
        &s,
        &x,
        &k,
        &y,
        Activation::Relu,
        &mut dy,
        None,
        None,
        Some(&mut db1),
    )
    .unwrap();
    assert_eq!(db, db1);
}

/// Finite differences of `L = Σ w ⊙ act(conv(x, k) + b)` w.r.t. x, k and b.
fn fd_check(c: NaiveConv, act: Activation, seed: u64) {
    let s = shape_of(&c);
    let x = rand_vec(s.input_len(), seed);
    let k = rand_vec(s.kernel_len(), seed + 1);
    let b = rand_vec(c.f, seed + 2);
    let w = rand_vec(s.output_len(), seed + 3);
    let fwd = |x: &[f32], k: &[f32], b: &[f32]| {
        let mut y = vec![0.0; s.output_len()];
        conv2d_forward(&s, x, k, Some(b), act, &mut y).unwrap();
        y
    };
    let y = fwd(&x, &k, &b);
    let mut dy = w.clone();
    let (mut dx, mut dk, mut db) = (
        vec![0.0; s.input_len()],
        vec![0.0; s.kernel_len()],
        vec![0.0; c.f],
    );
    conv2d_backward(
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
    let what = format!("{act:?} {c:?}");
    let eps = 1e-2;
    check_fd(
        &format!("{what} d input"),
        &x,
        &dx,
        |v| weighted_sum(&fwd(v, &k, &b), &w),
        eps,
        40,
        2e-2,
        2e-3,
    );
    check_fd(
        &format!("{what} d kernel"),
        &k,
        &dk,
        |v| weighted_sum(&fwd(&x, v, &b), &w),
        eps,
        40,
        2e-2,
        2e-3,
    );
    check_fd(
        &format!("{what} d bias"),
        &b,
        &db,
        |v| weighted_sum(&fwd(&x, &k, v), &w),
        eps,
        40,
        2e-2,
        2e-3,
    );
}

#[test]
fn finite_differences_linear_conv() {
    fd_check(cases()[2], Activation::Linear, 100);
    fd_check(cases()[3], Activation::Linear, 110);
    fd_check(cases()[1], Activation::Linear, 120);
}

#[test]
fn finite_differences_fused_conv() {
    for (i, act) in [Activation::Relu, Activation::Sigmoid, Activation::Tanh]
        .into_iter()
        .enumerate()
    {
        fd_check(cases()[0], act, 200 + 10 * i as u64);
        fd_check(cases()[4], act, 300 + 10 * i as u64);
    }
}

#[test]
fn rejects_bad_lengths_and_geometry() {
    let c = cases()[0];
    let s = shape_of(&c);
    let x = vec![0.0; s.input_len() - 1];
    let k = vec![0.0; s.kernel_len()];
    let mut y = vec![0.0; s.output_len()];
    let e = conv2d_forward(&s, &x, &k, None, Activation::Linear, &mut y).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Length {
                what: "conv2d input",
                ..
            }
        ),
        "{e}"
    );
    let mut attrs = c.attrs();
    attrs.kernel_size = [9, 9];
    attrs.pads = Pads2d::default();
    assert!(matches!(
        Conv2dShape::new(&attrs, 1, 5, 7),
        Err(KernelError::Geometry(_))
    ));
    attrs.kernel_size = [3, 3];
    attrs.strides = [0, 1];
    assert!(matches!(
        Conv2dShape::new(&attrs, 1, 5, 7),
        Err(KernelError::Geometry(_))
    ));
}
