//! Depthwise conv2d (Keras `DepthwiseConv2D`): a hand-computed case,
//! comparison with a naive direct loop (forward and backward, several depth
//! multipliers, strides, dilations, paddings), finite differences, optional
//! gradients, bit-identical results across thread counts, and bad input.

mod conv_family_support;

/// The tests (in a module so that `cargo test conv_family` selects them).
mod conv_family_depthwise {
    use super::conv_family_support::*;
    use cnnc_compiler::model::{Activation, Pads2d};
    use cnnc_runtime::kernels::depthwise::{
        depthwise_conv2d_backward, depthwise_conv2d_forward, DepthwiseConv2dShape,
    };
    use cnnc_runtime::kernels::KernelError;

    /// `(n, h, w, c, depth_multiplier, kernel, strides, dilation, same)`.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        bool,
    );

    fn cases() -> Vec<Case> {
        vec![
            (2, 7, 9, 3, 2, [3, 3], [2, 2], [1, 1], true),
            (1, 8, 7, 5, 1, [3, 3], [1, 1], [2, 2], true),
            (2, 6, 7, 2, 3, [2, 3], [1, 2], [1, 1], false),
            (1, 9, 9, 4, 1, [5, 5], [2, 2], [1, 1], true),
            (2, 5, 6, 3, 1, [3, 3], [1, 1], [1, 1], false),
            (1, 10, 8, 2, 2, [3, 2], [3, 1], [1, 2], true),
            // Strides and dilation together (Keras forbids it; must still be right).
            (1, 11, 10, 3, 1, [3, 3], [2, 2], [2, 2], true),
            // Many pixels (several tasks and weight-gradient groups) and wide channels.
            (8, 24, 21, 32, 1, [3, 3], [1, 1], [1, 1], true),
            (3, 14, 13, 37, 2, [3, 3], [2, 2], [1, 1], true),
            // 3x3 lines whose interior columns run four at a time, in channel
            // blocks of 32, 8 and 1 (45 = 32 + 8 + 5), stride 2 and dilation 2.
            (2, 12, 17, 45, 1, [3, 3], [2, 2], [1, 1], true),
            (1, 13, 19, 45, 1, [3, 3], [1, 1], [2, 2], true),
            // More than one 128-channel chunk (300 = 2 x 128 + 32 + 8 + 4):
            // edge columns in 128-wide blocks, interior groups of four (in
            // 64-channel blocks at unit stride) and a leftover interior
            // column (19 wide), 2- and 3-row lines.
            (1, 7, 19, 300, 1, [3, 3], [1, 1], [1, 1], true),
            // Stride 2, whose interior groups also take 64-channel blocks
            // (100 = 64 + 32 + 4).
            (1, 9, 21, 100, 1, [3, 3], [2, 2], [1, 1], true),
            // Kernel widths 1 and 2 (unrolled taps) and 5 (generic taps),
            // with uneven `same` padding.
            (2, 6, 13, 40, 1, [3, 1], [1, 1], [1, 1], true),
            (1, 7, 14, 41, 1, [2, 2], [1, 1], [1, 1], true),
            (1, 5, 15, 33, 1, [1, 5], [1, 1], [1, 1], true),
            (1, 6, 16, 9, 1, [1, 3], [1, 2], [1, 1], false),
            // Taller than the row-list forward path handles (9 rows).
            (1, 13, 6, 9, 1, [11, 2], [1, 1], [1, 1], true),
            // Wider than the register-blocked input-gradient path handles (16 taps).
            (1, 3, 20, 2, 1, [1, 17], [1, 1], [1, 1], true),
        ]
    }

    struct Setup {
        s: DepthwiseConv2dShape,
        g: Geo,
        c: usize,
        dm: usize,
    }

    fn setup(case: Case) -> Setup {
        let (n, h, w, c, dm, k, s, d, same) = case;
        let pads = pads2d(same, h, w, k, s, d);
        let attrs = depthwise_attrs(c, dm, k, s, d, pads);
        let shape = DepthwiseConv2dShape::new(&attrs, n, h, w).expect("geometry");
        let oh = (h + pads.top + pads.bottom - d[0] * (k[0] - 1) - 1) / s[0] + 1;
        let ow = (w + pads.left + pads.right - d[1] * (k[1] - 1) - 1) / s[1] + 1;
        assert_eq!((shape.out_h, shape.out_w), (oh, ow), "{case:?}");
        assert_eq!(shape.out_channels(), c * dm);
        assert_eq!(shape.output_len(), n * oh * ow * c * dm);
        assert_eq!(shape.kernel_len(), k[0] * k[1] * c * dm);
        let g = Geo {
            n,
            h,
            w,
            k,
            s,
            d,
            before: [pads.top, pads.left],
        };
        Setup { s: shape, g, c, dm }
    }

    #[test]
    fn hand_computed_depth_multiplier_2() {
        // x: 1 x 3 pixels, channels (1, 10), (2, 20), (3, 30). Kernel [1, 2, 2, 2]:
        // tap 0 = [c0: (1, 2), c1: (0.5, 0)], tap 1 = [c0: (-1, 1), c1: (0, 0.1)].
        // valid: out width 2; y[ox, c*2 + m] = x[ox, c] k0[c, m] + x[ox+1, c] k1[c, m]:
        // ox 0: (1 - 2, 2 + 2, 5 + 0, 0 + 2), ox 1: (2 - 3, 4 + 3, 10 + 0, 0 + 3).
        let attrs = depthwise_attrs(2, 2, [1, 2], [1, 1], [1, 1], Pads2d::default());
        let s = DepthwiseConv2dShape::new(&attrs, 1, 1, 3).unwrap();
        assert_eq!((s.out_h, s.out_w, s.out_channels()), (1, 2, 4));
        let x = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        let k = [1.0, 2.0, 0.5, 0.0, -1.0, 1.0, 0.0, 0.1];
        let mut y = vec![0.0; 8];
        depthwise_conv2d_forward(&s, &x, &k, None, Activation::Linear, &mut y).unwrap();
        assert_close(&y, &[-1.0, 4.0, 5.0, 2.0, -1.0, 7.0, 10.0, 3.0], 1e-6, "y");
        // With bias (1, 2, 3, 4) and relu: max(y + b, 0).
        depthwise_conv2d_forward(
            &s,
            &x,
            &k,
            Some(&[1.0, 2.0, 3.0, 4.0]),
            Activation::Relu,
            &mut y,
        )
        .unwrap();
        assert_close(
            &y,
            &[0.0, 6.0, 8.0, 6.0, 0.0, 9.0, 13.0, 7.0],
            1e-6,
            "relu(y + b)",
        );
    }

    #[test]
    fn forward_matches_naive() {
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, c, dm } = setup(case);
            let x = rand_vec(s.input_len(), 10 + ci as u64);
            let k = rand_vec(s.kernel_len(), 20 + ci as u64);
            let b = rand_vec(c * dm, 30 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Sigmoid] {
                for bias in [None, Some(b.as_slice())] {
                    let mut y = vec![f32::NAN; s.output_len()];
                    depthwise_conv2d_forward(&s, &x, &k, bias, act, &mut y).unwrap();
                    let (r, ..) =
                        naive_depthwise(&g, c, dm, s.out_h, s.out_w, &x, &k, bias, act, None);
                    assert_close(&y, &r, 1e-5, &format!("case {ci} {case:?} {act:?}"));
                }
            }
            // Softmax epilogue: over the c * dm channels of each pixel.
            let mut y = vec![0.0; s.output_len()];
            depthwise_conv2d_forward(&s, &x, &k, Some(&b), Activation::Softmax, &mut y).unwrap();
            let (z, ..) = naive_depthwise(
                &g,
                c,
                dm,
                s.out_h,
                s.out_w,
                &x,
                &k,
                Some(&b),
                Activation::Linear,
                None,
            );
            for (yr, zr) in y.chunks(c * dm).zip(z.chunks(c * dm)) {
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
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, c, dm } = setup(case);
            let x = rand_vec(s.input_len(), 40 + ci as u64);
            let k = rand_vec(s.kernel_len(), 50 + ci as u64);
            let b = rand_vec(c * dm, 60 + ci as u64);
            let gy = rand_vec(s.output_len(), 70 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Tanh] {
                let mut y = vec![0.0; s.output_len()];
                depthwise_conv2d_forward(&s, &x, &k, Some(&b), act, &mut y).unwrap();
                let dz = dz_from(act, &gy, &y);
                let (_, dx_r, dk_r, db_r) = naive_depthwise(
                    &g,
                    c,
                    dm,
                    s.out_h,
                    s.out_w,
                    &x,
                    &k,
                    Some(&b),
                    act,
                    Some(&dz),
                );
                let mut dy = gy.clone();
                let mut dx = vec![f32::NAN; s.input_len()];
                let mut dk = vec![f32::NAN; s.kernel_len()];
                let mut db = vec![f32::NAN; c * dm];
                depthwise_conv2d_backward(
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
                let what = format!("case {ci} {case:?} {act:?}");
                assert_close(&dy, &dz, 1e-6, &format!("{what} dz"));
                assert_close(&dx, &dx_r, 1e-4, &format!("{what} dx"));
                assert_close(&dk, &dk_r, 1e-4, &format!("{what} dkernel"));
                assert_close(&db, &db_r, 1e-4, &format!("{what} dbias"));
            }
        }
    }

    #[test]
    fn backward_optional_outputs() {
        // Each gradient alone equals the one computed together with the others.
        let Setup { s, c, dm, .. } = setup(cases()[0]);
        let x = rand_vec(s.input_len(), 1);
        let k = rand_vec(s.kernel_len(), 2);
        let gy = rand_vec(s.output_len(), 3);
        let mut y = vec![0.0; s.output_len()];
        depthwise_conv2d_forward(&s, &x, &k, None, Activation::Relu, &mut y).unwrap();
        let run = |want: [bool; 3]| {
            let mut dy = gy.clone();
            let mut dx = vec![0.0; s.input_len()];
            let mut dk = vec![0.0; s.kernel_len()];
            let mut db = vec![0.0; c * dm];
            depthwise_conv2d_backward(
                &s,
                &x,
                &k,
                &y,
                Activation::Relu,
                &mut dy,
                want[0].then_some(dx.as_mut_slice()),
                want[1].then_some(dk.as_mut_slice()),
                want[2].then_some(db.as_mut_slice()),
            )
            .unwrap();
            (dx, dk, db)
        };
        let all = run([true, true, true]);
        assert_eq!(run([true, false, false]).0, all.0);
        assert_eq!(run([false, true, false]).1, all.1);
        assert_eq!(run([false, false, true]).2, all.2);
    }

    /// Finite differences of `L = Σ w ⊙ act(depthwise(x, k) + b)`.
    fn fd_check(case: Case, act: Activation, seed: u64) {
        let Setup { s, c, dm, .. } = setup(case);
        let x = rand_vec(s.input_len(), seed);
        let k = rand_vec(s.kernel_len(), seed + 1);
        let b = rand_vec(c * dm, seed + 2);
        let w = rand_vec(s.output_len(), seed + 3);
        let fwd = |x: &[f32], k: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            depthwise_conv2d_forward(&s, x, k, Some(b), act, &mut y).unwrap();
            y
        };
        let y = fwd(&x, &k, &b);
        let mut dy = w.clone();
        let mut dx = vec![0.0; s.input_len()];
        let mut dk = vec![0.0; s.kernel_len()];
        let mut db = vec![0.0; c * dm];
        depthwise_conv2d_backward(
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
        let what = format!("{act:?} {case:?}");
        let loss_x = |v: &[f32]| weighted_sum(&fwd(v, &k, &b), &w);
        check_fd(&format!("{what} dx"), &x, &dx, loss_x, 1e-2, 60, 2e-2, 2e-3);
        let loss_k = |v: &[f32]| weighted_sum(&fwd(&x, v, &b), &w);
        check_fd(
            &format!("{what} dkernel"),
            &k,
            &dk,
            loss_k,
            1e-2,
            60,
            2e-2,
            2e-3,
        );
        let loss_b = |v: &[f32]| weighted_sum(&fwd(&x, &k, v), &w);
        check_fd(
            &format!("{what} dbias"),
            &b,
            &db,
            loss_b,
            1e-2,
            60,
            2e-2,
            2e-3,
        );
    }

    #[test]
    fn finite_differences() {
        let cs = cases();
        fd_check(cs[0], Activation::Linear, 100);
        fd_check(cs[1], Activation::Tanh, 110);
        fd_check(cs[2], Activation::Sigmoid, 120);
        fd_check(cs[5], Activation::Linear, 130);
        fd_check(cs[6], Activation::Tanh, 140);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let Setup { s, c, dm, .. } = setup(cases()[7]);
        let x = rand_vec(s.input_len(), 1);
        let k = rand_vec(s.kernel_len(), 2);
        let b = rand_vec(c * dm, 3);
        let gy = rand_vec(s.output_len(), 4);
        let run = || {
            let mut y = vec![0.0; s.output_len()];
            depthwise_conv2d_forward(&s, &x, &k, Some(&b), Activation::Relu6, &mut y).unwrap();
            let mut dy = gy.clone();
            let mut dx = vec![0.0; s.input_len()];
            let mut dk = vec![0.0; s.kernel_len()];
            let mut db = vec![0.0; c * dm];
            depthwise_conv2d_backward(
                &s,
                &x,
                &k,
                &y,
                Activation::Relu6,
                &mut dy,
                Some(&mut dx),
                Some(&mut dk),
                Some(&mut db),
            )
            .unwrap();
            (y, dx, dk, db)
        };
        let one = in_pool(1, run);
        assert_eq!(one, in_pool(2, run));
        assert_eq!(one, in_pool(3, run));
    }

    #[test]
    fn rejects_bad_lengths_and_geometry() {
        let Setup { s, .. } = setup(cases()[0]);
        let x = vec![0.0; s.input_len()];
        let k = vec![0.0; s.kernel_len() - 1];
        let mut y = vec![0.0; s.output_len()];
        let e = depthwise_conv2d_forward(&s, &x, &k, None, Activation::Linear, &mut y).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::Length {
                    what: "depthwise_conv2d kernel",
                    ..
                }
            ),
            "{e}"
        );
        let k = vec![0.0; s.kernel_len()];
        let e = depthwise_conv2d_forward(&s, &x, &k, Some(&[0.0; 5]), Activation::Linear, &mut y)
            .unwrap_err();
        assert!(matches!(e, KernelError::Length { .. }), "{e}");
        let mut dy = vec![0.0; s.output_len()];
        let mut dx = vec![0.0; s.input_len() + 1];
        let e = depthwise_conv2d_backward(
            &s,
            &x,
            &k,
            &y,
            Activation::Linear,
            &mut dy,
            Some(&mut dx),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Length { .. }), "{e}");
        let bad = [
            depthwise_attrs(0, 1, [3, 3], [1, 1], [1, 1], Pads2d::default()),
            depthwise_attrs(2, 0, [3, 3], [1, 1], [1, 1], Pads2d::default()),
            depthwise_attrs(2, 1, [3, 3], [0, 1], [1, 1], Pads2d::default()),
            depthwise_attrs(2, 1, [3, 3], [1, 1], [1, 0], Pads2d::default()),
            // Effective kernel 3*(3-1)+1 = 7 > 6.
            depthwise_attrs(2, 1, [3, 3], [1, 1], [3, 3], Pads2d::default()),
        ];
        for attrs in bad {
            assert!(
                matches!(
                    DepthwiseConv2dShape::new(&attrs, 1, 6, 6),
                    Err(KernelError::Geometry(_))
                ),
                "{attrs:?}"
            );
        }
    }
}
