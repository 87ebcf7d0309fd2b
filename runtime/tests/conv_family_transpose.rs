//! Transposed conv2d (Keras `Conv2DTranspose`): hand-computed cases, the
//! Keras/TF output-size and crop rule, adjointness with conv2d, comparison
//! with a naive scatter loop (forward and backward), finite differences,
//! optional gradients, bit-identical results across thread counts, and bad
//! input.

mod conv_family_support;

/// The tests (in a module so that `cargo test conv_family` selects them).
mod conv_family_transpose {
    use super::conv_family_support::*;
    use cnnc_compiler::model::{Activation, Padding, Pads2d};
    use cnnc_runtime::kernels::conv_transpose::{
        conv2d_transpose_axis, conv2d_transpose_backward, conv2d_transpose_forward,
        Conv2dTransposeShape,
    };
    use cnnc_runtime::kernels::{conv2d_forward, Conv2dShape, KernelError};

    /// `(n, h, w, cin, filters, kernel, strides, dilation, padding, output_padding)`.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        Padding,
        Option<[usize; 2]>,
    );

    fn cases() -> Vec<Case> {
        use Padding::{Same, Valid};
        vec![
            (2, 4, 5, 3, 2, [3, 3], [2, 2], [1, 1], Same, None),
            (2, 4, 5, 3, 2, [3, 3], [2, 2], [1, 1], Valid, None),
            (1, 5, 4, 2, 3, [3, 2], [2, 2], [1, 1], Same, Some([1, 1])),
            (1, 3, 4, 2, 2, [2, 3], [2, 2], [1, 1], Valid, Some([1, 0])),
            (1, 3, 4, 2, 2, [4, 5], [2, 3], [1, 1], Same, None),
            // 1x1 kernel, stride 2: half the output pixels receive nothing.
            (1, 3, 3, 2, 2, [1, 1], [2, 2], [1, 1], Same, Some([1, 1])),
            // Stride larger than the kernel (gaps in the output).
            (2, 3, 2, 2, 2, [2, 2], [3, 3], [1, 1], Valid, None),
            // Dilation, and dilation with strides.
            (1, 5, 6, 2, 3, [3, 3], [1, 1], [2, 2], Same, None),
            (1, 4, 3, 2, 2, [3, 2], [2, 2], [2, 3], Valid, None),
            // 1x1 stride 1: the pointwise path.
            (2, 5, 4, 6, 3, [1, 1], [1, 1], [1, 1], Valid, None),
            // Many rows and channels (several GEMM blocks, image groups, partial sums).
            (5, 12, 11, 24, 16, [3, 3], [2, 2], [1, 1], Same, None),
            (3, 9, 10, 8, 40, [4, 4], [2, 2], [1, 1], Same, None),
        ]
    }

    struct Setup {
        s: Conv2dTransposeShape,
        g: Geo,
        cin: usize,
        f: usize,
    }

    fn setup(case: Case) -> Setup {
        let (n, h, w, cin, f, k, s, d, padding, op) = case;
        let (oh, crop_h) =
            conv2d_transpose_axis(h, k[0], s[0], d[0], padding, op.map(|o| o[0])).expect("axis h");
        let (ow, crop_w) =
            conv2d_transpose_axis(w, k[1], s[1], d[1], padding, op.map(|o| o[1])).expect("axis w");
        let attrs = transpose_attrs(cin, f, k, s, d, [crop_h, crop_w]);
        let shape = Conv2dTransposeShape::new(&attrs, n, h, w, oh, ow).expect("geometry");
        let g = Geo {
            n,
            h,
            w,
            k,
            s,
            d,
            before: [crop_h, crop_w],
        };
        Setup {
            s: shape,
            g,
            cin,
            f,
        }
    }

    #[test]
    fn output_size_and_crop_rule() {
        use Padding::{Same, Valid};
        // (in, k, s, d, padding, output_padding) -> (out, crop), by the formulas:
        // valid: (in-1)s + k_eff + (op or max(s - k_eff, 0)); same: in*s, or
        // (in-1)s + k_eff%2 + op; crop = max((in-1)s + k_eff - out, 0) / 2 for same.
        let table = [
            ((4, 3, 2, 1, Same, None), (8, 0)),     // full 9, total 1
            ((4, 3, 2, 1, Valid, None), (9, 0)),    // 6 + 3
            ((4, 4, 2, 1, Same, None), (8, 1)),     // full 10, total 2
            ((3, 5, 3, 1, Same, None), (9, 1)),     // full 11, total 2
            ((3, 1, 2, 1, Valid, None), (6, 0)),    // 4 + 1 + max(2-1, 0)
            ((5, 3, 2, 1, Same, Some(1)), (10, 0)), // 8 + 1 + 1; full 11, total 1
            ((3, 2, 2, 1, Valid, Some(1)), (7, 0)), // 4 + 2 + 1
            ((3, 1, 2, 1, Same, Some(1)), (6, 0)),  // 4 + 1 + 1; full 5 < 6
            ((5, 3, 1, 2, Same, None), (5, 2)),     // k_eff 5, full 9, total 4
            ((4, 3, 2, 2, Valid, None), (11, 0)),   // k_eff 5: 6 + 5
        ];
        for ((n, k, s, d, p, op), want) in table {
            assert_eq!(
                conv2d_transpose_axis(n, k, s, d, p, op).unwrap(),
                want,
                "{:?}",
                (n, k, s, d, p, op)
            );
        }
        // Same with output_padding 0 and an even kernel: out = 5*2 + 0 + 0 = 10,
        // full = 5*2 + 4 = 14, crop = (14 - 10) / 2 = 2.
        assert_eq!(
            conv2d_transpose_axis(6, 4, 2, 1, Same, Some(0)).unwrap(),
            (10, 2)
        );
        // output_padding must be smaller than the stride.
        assert!(matches!(
            conv2d_transpose_axis(4, 3, 2, 1, Same, Some(2)),
            Err(KernelError::Geometry(_))
        ));
        assert!(matches!(
            conv2d_transpose_axis(4, 3, 0, 1, Same, None),
            Err(KernelError::Geometry(_))
        ));
        assert!(matches!(
            conv2d_transpose_axis(4, 0, 1, 1, Valid, None),
            Err(KernelError::Geometry(_))
        ));
    }

    #[test]
    fn hand_computed_1d() {
        // x = [1, 2] (1 x 2 x 1), kernel [1, 10, 100], stride 2.
        // valid: out 5, y = [1, 10, 100 + 2, 20, 200]; same: out 4, crop 0.
        let k = [1.0, 10.0, 100.0];
        let x = [1.0, 2.0];
        for (padding, want) in [
            (Padding::Valid, vec![1.0, 10.0, 102.0, 20.0, 200.0]),
            (Padding::Same, vec![1.0, 10.0, 102.0, 20.0]),
        ] {
            let (ow, crop) = conv2d_transpose_axis(2, 3, 2, 1, padding, None).unwrap();
            let attrs = transpose_attrs(1, 1, [1, 3], [1, 2], [1, 1], [0, crop]);
            let s = Conv2dTransposeShape::new(&attrs, 1, 1, 2, 1, ow).unwrap();
            let mut y = vec![f32::NAN; ow];
            conv2d_transpose_forward(&s, &x, &k, None, Activation::Linear, &mut y).unwrap();
            assert_eq!(y, want, "{padding:?}");
            // Backward for dy = 1: dx[i] = Σ taps that landed inside, dk[t] = Σ x.
            let mut dy = vec![1.0; ow];
            let mut dx = vec![0.0; 2];
            let mut dk = vec![0.0; 3];
            let mut db = vec![0.0; 1];
            conv2d_transpose_backward(
                &s,
                &x,
                &k,
                &y,
                Activation::Linear,
                &mut dy,
                Some(&mut dx),
                Some(&mut dk),
                Some(&mut db),
            )
            .unwrap();
            assert_eq!(db, vec![ow as f32]);
            if padding == Padding::Valid {
                assert_eq!(dx, vec![111.0, 111.0]);
                assert_eq!(dk, vec![3.0, 3.0, 3.0]);
            } else {
                // Output 4 drops x[1]'s tap 2 (position 4).
                assert_eq!(dx, vec![111.0, 11.0]);
                assert_eq!(dk, vec![3.0, 3.0, 1.0]);
            }
        }
        // Crop at the start: crop 1 drops position 0.
        let attrs = transpose_attrs(1, 1, [1, 3], [1, 2], [1, 1], [0, 1]);
        let s = Conv2dTransposeShape::new(&attrs, 1, 1, 2, 1, 4).unwrap();
        let mut y = vec![0.0; 4];
        conv2d_transpose_forward(&s, &x, &k, Some(&[0.5]), Activation::Linear, &mut y).unwrap();
        assert_eq!(y, vec![10.5, 102.5, 20.5, 200.5]);
    }

    #[test]
    fn adjoint_of_conv2d() {
        // <conv2d(u), v> == <u, conv2d_transpose(v)> for the same kernel read as
        // HWIO [kh, kw, filters, cin], when the conv maps [oh, ow, filters] to
        // [h, w, cin] with pads (crop_top, crop_left, rest).
        let mut checked = 0;
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, cin, f, .. } = setup(case);
            let (kh, kw) = (s.kernel_h, s.kernel_w);
            let full = |n: usize, k: usize, st: usize, d: usize| (n - 1) * st + d * (k - 1) + 1;
            // Bottom/right pads so that the conv's output is exactly [h, w].
            let pad_after = |inp: usize, out: usize, crop: usize, k: usize, st: usize, d: usize| {
                (full(out, k, st, d)).saturating_sub(inp + crop)
            };
            let pads = Pads2d {
                top: s.crop_top,
                bottom: pad_after(s.out_h, s.in_h, s.crop_top, kh, s.stride_h, s.dilation_h),
                left: s.crop_left,
                right: pad_after(s.out_w, s.in_w, s.crop_left, kw, s.stride_w, s.dilation_w),
            };
            let attrs = conv_attrs(
                f,
                cin,
                [kh, kw],
                [s.stride_h, s.stride_w],
                [s.dilation_h, s.dilation_w],
                pads,
            );
            let Ok(cs) = Conv2dShape::new(&attrs, s.batch, s.out_h, s.out_w) else {
                continue;
            };
            if (cs.out_h, cs.out_w) != (s.in_h, s.in_w) {
                continue; // the conv's floor drops a row: not an exact adjoint pair
            }
            let k = rand_vec(s.kernel_len(), 5 + ci as u64);
            let u = rand_vec(s.output_len(), 6 + ci as u64);
            let v = rand_vec(s.input_len(), 7 + ci as u64);
            let mut cu = vec![0.0; s.input_len()];
            conv2d_forward(&cs, &u, &k, None, Activation::Linear, &mut cu).unwrap();
            let mut tv = vec![0.0; s.output_len()];
            conv2d_transpose_forward(&s, &v, &k, None, Activation::Linear, &mut tv).unwrap();
            let (a, b) = (weighted_sum(&cu, &v), weighted_sum(&u, &tv));
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "case {ci} {case:?}: {a} vs {b}"
            );
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} adjoint pairs checked");
    }

    #[test]
    fn forward_matches_naive() {
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, cin, f } = setup(case);
            let x = rand_vec(s.input_len(), 10 + ci as u64);
            let k = rand_vec(s.kernel_len(), 20 + ci as u64);
            let b = rand_vec(f, 30 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Tanh] {
                for bias in [None, Some(b.as_slice())] {
                    let mut y = vec![f32::NAN; s.output_len()];
                    conv2d_transpose_forward(&s, &x, &k, bias, act, &mut y).unwrap();
                    let (r, ..) =
                        naive_transpose(&g, cin, f, s.out_h, s.out_w, &x, &k, bias, act, None);
                    assert_close(&y, &r, 1e-4, &format!("case {ci} {case:?} {act:?}"));
                }
            }
        }
    }

    #[test]
    fn backward_matches_naive() {
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, cin, f } = setup(case);
            let x = rand_vec(s.input_len(), 40 + ci as u64);
            let k = rand_vec(s.kernel_len(), 50 + ci as u64);
            let b = rand_vec(f, 60 + ci as u64);
            let gy = rand_vec(s.output_len(), 70 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Sigmoid] {
                let mut y = vec![0.0; s.output_len()];
                conv2d_transpose_forward(&s, &x, &k, Some(&b), act, &mut y).unwrap();
                let dz = dz_from(act, &gy, &y);
                let (_, dx_r, dk_r, db_r) = naive_transpose(
                    &g,
                    cin,
                    f,
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
                let mut db = vec![f32::NAN; f];
                conv2d_transpose_backward(
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
        let Setup { s, f, .. } = setup(cases()[0]);
        let x = rand_vec(s.input_len(), 1);
        let k = rand_vec(s.kernel_len(), 2);
        let gy = rand_vec(s.output_len(), 3);
        let mut y = vec![0.0; s.output_len()];
        conv2d_transpose_forward(&s, &x, &k, None, Activation::Tanh, &mut y).unwrap();
        let run = |want: [bool; 3]| {
            let mut dy = gy.clone();
            let mut dx = vec![0.0; s.input_len()];
            let mut dk = vec![0.0; s.kernel_len()];
            let mut db = vec![0.0; f];
            conv2d_transpose_backward(
                &s,
                &x,
                &k,
                &y,
                Activation::Tanh,
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

    /// Finite differences of `L = Σ w ⊙ act(conv2d_transpose(x, k) + b)`.
    fn fd_check(case: Case, act: Activation, seed: u64) {
        let Setup { s, f, .. } = setup(case);
        let x = rand_vec(s.input_len(), seed);
        let k = rand_vec(s.kernel_len(), seed + 1);
        let b = rand_vec(f, seed + 2);
        let w = rand_vec(s.output_len(), seed + 3);
        let fwd = |x: &[f32], k: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            conv2d_transpose_forward(&s, x, k, Some(b), act, &mut y).unwrap();
            y
        };
        let y = fwd(&x, &k, &b);
        let mut dy = w.clone();
        let mut dx = vec![0.0; s.input_len()];
        let mut dk = vec![0.0; s.kernel_len()];
        let mut db = vec![0.0; f];
        conv2d_transpose_backward(
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
        fd_check(cs[2], Activation::Tanh, 110);
        fd_check(cs[4], Activation::Sigmoid, 120);
        fd_check(cs[7], Activation::Linear, 130);
        fd_check(cs[8], Activation::Tanh, 140);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let Setup { s, f, .. } = setup(cases()[10]);
        let x = rand_vec(s.input_len(), 1);
        let k = rand_vec(s.kernel_len(), 2);
        let b = rand_vec(f, 3);
        let gy = rand_vec(s.output_len(), 4);
        let run = || {
            let mut y = vec![0.0; s.output_len()];
            conv2d_transpose_forward(&s, &x, &k, Some(&b), Activation::Relu, &mut y).unwrap();
            let mut dy = gy.clone();
            let mut dx = vec![0.0; s.input_len()];
            let mut dk = vec![0.0; s.kernel_len()];
            let mut db = vec![0.0; f];
            conv2d_transpose_backward(
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
        let k = vec![0.0; s.kernel_len()];
        let mut y = vec![0.0; s.output_len() + 1];
        let e = conv2d_transpose_forward(&s, &x, &k, None, Activation::Linear, &mut y).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::Length {
                    what: "conv2d_transpose output",
                    ..
                }
            ),
            "{e}"
        );
        let ok = transpose_attrs(2, 2, [3, 3], [2, 2], [1, 1], [0, 0]);
        assert!(Conv2dTransposeShape::new(&ok, 1, 4, 4, 8, 8).is_ok());
        let bad = [
            transpose_attrs(0, 2, [3, 3], [2, 2], [1, 1], [0, 0]),
            transpose_attrs(2, 0, [3, 3], [2, 2], [1, 1], [0, 0]),
            transpose_attrs(2, 2, [0, 3], [2, 2], [1, 1], [0, 0]),
            transpose_attrs(2, 2, [3, 3], [2, 0], [1, 1], [0, 0]),
            transpose_attrs(2, 2, [3, 3], [2, 2], [0, 1], [0, 0]),
        ];
        for attrs in bad {
            assert!(
                matches!(
                    Conv2dTransposeShape::new(&attrs, 1, 4, 4, 8, 8),
                    Err(KernelError::Geometry(_))
                ),
                "{attrs:?}"
            );
        }
        assert!(matches!(
            Conv2dTransposeShape::new(&ok, 1, 4, 4, 0, 8),
            Err(KernelError::Geometry(_))
        ));
    }
}
