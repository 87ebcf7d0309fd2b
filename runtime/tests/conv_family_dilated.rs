//! Dilated conv2d (Keras `Conv2D(dilation_rate=...)`): a hand-computed case,
//! comparison with a naive direct loop (forward and backward), finite
//! differences, and bit-identical results across thread counts.

mod conv_family_support;

/// The tests (in a module so that `cargo test conv_family` selects them).
mod conv_family_dilated {
    use super::conv_family_support::*;
    use cnnc_compiler::model::{Activation, Pads2d};
    use cnnc_runtime::kernels::{conv2d_backward, conv2d_forward, Conv2dShape, KernelError};

    /// `(n, h, w, c, f, kernel, strides, dilation, same)`.
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
            (2, 9, 8, 3, 4, [3, 3], [1, 1], [2, 2], true),
            (1, 10, 9, 2, 3, [3, 2], [1, 1], [2, 3], false),
            (2, 7, 6, 2, 2, [2, 4], [1, 1], [3, 2], true),
            (1, 11, 11, 3, 5, [3, 3], [1, 1], [4, 1], true),
            // Strides and dilation together (Keras forbids it; must still be right).
            (2, 9, 10, 2, 3, [3, 3], [2, 2], [2, 2], true),
            // 1x1 kernel: dilation changes nothing.
            (2, 5, 4, 3, 2, [1, 1], [1, 1], [3, 3], false),
            // Many rows: several GEMM blocks and weight-gradient groups.
            (6, 17, 19, 4, 8, [3, 3], [1, 1], [2, 2], true),
            // Long patches: 3*3*40 per im2col row.
            (2, 8, 9, 40, 6, [3, 3], [1, 1], [3, 2], true),
        ]
    }

    struct Setup {
        s: Conv2dShape,
        g: Geo,
        c: usize,
        f: usize,
    }

    fn setup(case: Case) -> Setup {
        let (n, h, w, c, f, k, s, d, same) = case;
        let pads = pads2d(same, h, w, k, s, d);
        let shape = Conv2dShape::new(&conv_attrs(c, f, k, s, d, pads), n, h, w).expect("geometry");
        let g = Geo {
            n,
            h,
            w,
            k,
            s,
            d,
            before: [pads.top, pads.left],
        };
        // Expected output size, per axis: floor((n + pads - d*(k-1) - 1) / s) + 1.
        let oh = (h + pads.top + pads.bottom - d[0] * (k[0] - 1) - 1) / s[0] + 1;
        let ow = (w + pads.left + pads.right - d[1] * (k[1] - 1) - 1) / s[1] + 1;
        assert_eq!((shape.out_h, shape.out_w), (oh, ow), "{case:?}");
        if same {
            assert_eq!((oh, ow), (h.div_ceil(s[0]), w.div_ceil(s[1])), "{case:?}");
        }
        Setup { s: shape, g, c, f }
    }

    #[test]
    fn hand_computed_dilated_row() {
        // x = 1..=7 as [1, 1, 7, 1]; kernel [1, 2] = [1, 10], dilation 3, valid:
        // effective width 4, out = 7 - 4 + 1 = 4, y[o] = x[o] + 10 x[o + 3].
        let attrs = conv_attrs(1, 1, [1, 2], [1, 1], [1, 3], Pads2d::default());
        let s = Conv2dShape::new(&attrs, 1, 1, 7).unwrap();
        assert_eq!((s.out_h, s.out_w), (1, 4));
        let x: Vec<f32> = (1..=7).map(|v| v as f32).collect();
        let mut y = vec![0.0; 4];
        conv2d_forward(&s, &x, &[1.0, 10.0], None, Activation::Linear, &mut y).unwrap();
        assert_eq!(y, vec![41.0, 52.0, 63.0, 74.0]);
        // d x for dy = 1: x[i] gets 1 from tap 0 (i <= 3) and 10 from tap 1 (i >= 3).
        let mut dy = vec![1.0; 4];
        let mut dx = vec![0.0; 7];
        let mut dk = vec![0.0; 2];
        conv2d_backward(
            &s,
            &x,
            &[1.0, 10.0],
            &y,
            Activation::Linear,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            None,
        )
        .unwrap();
        assert_eq!(dx, vec![1.0, 1.0, 1.0, 11.0, 10.0, 10.0, 10.0]);
        // d kernel = (1+2+3+4, 4+5+6+7).
        assert_eq!(dk, vec![10.0, 22.0]);
    }

    #[test]
    fn forward_matches_naive() {
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, c, f } = setup(case);
            let x = rand_vec(s.input_len(), 10 + ci as u64);
            let k = rand_vec(s.kernel_len(), 20 + ci as u64);
            let b = rand_vec(f, 30 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Tanh] {
                for bias in [None, Some(b.as_slice())] {
                    let mut y = vec![f32::NAN; s.output_len()];
                    conv2d_forward(&s, &x, &k, bias, act, &mut y).unwrap();
                    let (r, ..) = naive_conv(&g, c, f, s.out_h, s.out_w, &x, &k, bias, act, None);
                    assert_close(&y, &r, 1e-4, &format!("case {ci} {case:?} {act:?}"));
                }
            }
        }
    }

    #[test]
    fn backward_matches_naive() {
        for (ci, case) in cases().into_iter().enumerate() {
            let Setup { s, g, c, f } = setup(case);
            let x = rand_vec(s.input_len(), 40 + ci as u64);
            let k = rand_vec(s.kernel_len(), 50 + ci as u64);
            let b = rand_vec(f, 60 + ci as u64);
            let gy = rand_vec(s.output_len(), 70 + ci as u64);
            for act in [Activation::Linear, Activation::Relu, Activation::Tanh] {
                let mut y = vec![0.0; s.output_len()];
                conv2d_forward(&s, &x, &k, Some(&b), act, &mut y).unwrap();
                let dz = dz_from(act, &gy, &y);
                let (_, dx_r, dk_r, db_r) =
                    naive_conv(&g, c, f, s.out_h, s.out_w, &x, &k, Some(&b), act, Some(&dz));
                let mut dy = gy.clone();
                let mut dx = vec![f32::NAN; s.input_len()];
                let mut dk = vec![f32::NAN; s.kernel_len()];
                let mut db = vec![f32::NAN; f];
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
                let what = format!("case {ci} {case:?} {act:?}");
                assert_close(&dy, &dz, 1e-6, &format!("{what} dz"));
                assert_close(&dx, &dx_r, 1e-4, &format!("{what} dx"));
                assert_close(&dk, &dk_r, 1e-4, &format!("{what} dkernel"));
                assert_close(&db, &db_r, 1e-4, &format!("{what} dbias"));
            }
        }
    }

    /// Finite differences of `L = Σ w ⊙ act(conv(x, k) + b)` w.r.t. x, k and b.
    fn fd_check(case: Case, act: Activation, seed: u64) {
        let Setup { s, f, .. } = setup(case);
        let x = rand_vec(s.input_len(), seed);
        let k = rand_vec(s.kernel_len(), seed + 1);
        let b = rand_vec(f, seed + 2);
        let w = rand_vec(s.output_len(), seed + 3);
        let fwd = |x: &[f32], k: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            conv2d_forward(&s, x, k, Some(b), act, &mut y).unwrap();
            y
        };
        let y = fwd(&x, &k, &b);
        let mut dy = w.clone();
        let mut dx = vec![0.0; s.input_len()];
        let mut dk = vec![0.0; s.kernel_len()];
        let mut db = vec![0.0; f];
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
        fd_check(cs[2], Activation::Linear, 120);
        fd_check(cs[4], Activation::Tanh, 130);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let Setup { s, f, .. } = setup(cases()[6]);
        let x = rand_vec(s.input_len(), 1);
        let k = rand_vec(s.kernel_len(), 2);
        let b = rand_vec(f, 3);
        let gy = rand_vec(s.output_len(), 4);
        let run = || {
            let mut y = vec![0.0; s.output_len()];
            conv2d_forward(&s, &x, &k, Some(&b), Activation::Relu, &mut y).unwrap();
            let mut dy = gy.clone();
            let mut dx = vec![0.0; s.input_len()];
            let mut dk = vec![0.0; s.kernel_len()];
            let mut db = vec![0.0; f];
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
            (y, dx, dk, db)
        };
        let one = in_pool(1, run);
        assert_eq!(one, in_pool(2, run));
        assert_eq!(one, in_pool(3, run));
    }

    #[test]
    fn rejects_zero_dilation_and_oversized_kernel() {
        let attrs = conv_attrs(2, 2, [3, 3], [1, 1], [0, 1], Pads2d::default());
        assert!(matches!(
            Conv2dShape::new(&attrs, 1, 8, 8),
            Err(KernelError::Geometry(_))
        ));
        // Effective kernel 2*(3-1)+1 = 5 > 4 without padding.
        let attrs = conv_attrs(2, 2, [3, 3], [1, 1], [2, 2], Pads2d::default());
        assert!(matches!(
            Conv2dShape::new(&attrs, 1, 4, 4),
            Err(KernelError::Geometry(_))
        ));
        assert!(Conv2dShape::new(&attrs, 1, 5, 5).is_ok());
    }
}
