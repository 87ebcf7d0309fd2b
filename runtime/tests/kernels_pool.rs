//! Pooling kernel tests: naive references (TensorFlow padding rules) and
//! finite differences on tie-free inputs.

mod kernels_support;

use cnnc_compiler::graph::ir::Pool2dAttrs;
use cnnc_compiler::model::Pads2d;
use cnnc_runtime::kernels::{
    avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward, Pool2dShape,
};
use kernels_support::*;

/// (n, h, w, c, pool, strides, same).
type Case = (usize, usize, usize, usize, [usize; 2], [usize; 2], bool);

/// Odd sizes, overlapping windows, stride 1 and 2, same and valid padding.
fn cases() -> Vec<Case> {
    vec![
        (2, 4, 4, 3, [2, 2], [2, 2], false),
        (2, 5, 7, 3, [2, 2], [2, 2], true),
        (1, 7, 6, 2, [3, 3], [2, 2], true),
        (3, 6, 5, 4, [3, 2], [1, 2], false),
        (1, 5, 5, 1, [3, 3], [1, 1], true),
        (2, 9, 9, 5, [2, 3], [2, 3], true),
    ]
}

/// [`cases`] plus images whose outputs are several forward tasks of
/// whole rows (8K floats each: 20 rows of 20x64 are 4 tasks of 6, 6, 6, 2
/// rows; 29 rows of 29x32 are 4 tasks of 8, 8, 8, 5).
fn naive_cases() -> Vec<Case> {
    let mut v = cases();
    v.push((1, 40, 40, 64, [2, 2], [2, 2], false));
    v.push((1, 57, 57, 32, [3, 3], [2, 2], true));
    // Channel blocks of 64, 16 and 1 in the inference path (83 = 64 + 16 + 3).
    v.push((2, 9, 11, 83, [3, 3], [2, 2], true));
    v
}

fn setup(case: Case) -> (Pool2dShape, Pool2dAttrs) {
    let (n, h, w, c, p, s, same) = case;
    let pads = if same {
        same_pads2d(h, w, p, s)
    } else {
        Pads2d::default()
    };
    let attrs = Pool2dAttrs {
        pool_size: p,
        strides: s,
        pads,
    };
    (Pool2dShape::new(&attrs, n, h, w, c).unwrap(), attrs)
}

#[test]
fn hand_computed_same_padding_average_excludes_padding() {
    // [1, 2, 3] as [1, 1, 3, 1], pool [1, 2], strides [1, 2], same:
    // out = ceil(3 / 2) = 2, total pad (2 - 1) * 2 + 2 - 3 = 1 -> right 1.
    // Windows {1, 2} and {3, pad}: avg [1.5, 3] (pad not counted), max [2, 3].
    let attrs = Pool2dAttrs {
        pool_size: [1, 2],
        strides: [1, 2],
        pads: same_pads2d(1, 3, [1, 2], [1, 2]),
    };
    assert_eq!(attrs.pads.right, 1);
    let s = Pool2dShape::new(&attrs, 1, 1, 3, 1).unwrap();
    let x = [1.0, 2.0, 3.0];
    let mut y = vec![0.0; 2];
    avg_pool2d_forward(&s, &x, &mut y).unwrap();
    assert_eq!(y, vec![1.5, 3.0]);
    max_pool2d_forward(&s, &[-1.0, -2.0, -3.0], &mut y, None).unwrap();
    // Padded pixels never win: the second window's max is -3, not 0.
    assert_eq!(y, vec![-1.0, -3.0]);
}

#[test]
fn max_forward_backward_match_naive() {
    for (ci, case) in naive_cases().into_iter().enumerate() {
        let (s, attrs) = setup(case);
        let (n, h, w, c, ..) = case;
        let x = rand_vec(s.input_len(), ci as u64);
        let (r, arg) = naive_pool(&x, n, h, w, c, &attrs, true);
        let mut y = vec![f32::NAN; s.output_len()];
        let mut am = vec![0u32; s.output_len()];
        max_pool2d_forward(&s, &x, &mut y, Some(&mut am)).unwrap();
        assert_eq!(y, r, "case {ci}");
        let mut y2 = vec![0.0; s.output_len()];
        max_pool2d_forward(&s, &x, &mut y2, None).unwrap();
        assert_eq!(y2, r, "case {ci} without argmax");
        let g = rand_vec(s.output_len(), 100 + ci as u64);
        let mut dx_r = vec![0.0f32; x.len()];
        for (o, &i) in arg.iter().enumerate() {
            dx_r[i] += g[o];
        }
        let mut dx = vec![f32::NAN; x.len()];
        max_pool2d_backward(&s, &am, &g, &mut dx).unwrap();
        assert_close(&dx, &dx_r, 1e-6, &format!("case {ci} dx"));
    }
}

#[test]
fn avg_forward_backward_match_naive() {
    for (ci, case) in naive_cases().into_iter().enumerate() {
        let (s, attrs) = setup(case);
        let (n, h, w, c, ..) = case;
        let x = rand_vec(s.input_len(), 10 + ci as u64);
        let (r, _) = naive_pool(&x, n, h, w, c, &attrs, false);
        let mut y = vec![f32::NAN; s.output_len()];
        avg_pool2d_forward(&s, &x, &mut y).unwrap();
        assert_close(&y, &r, 1e-6, &format!("case {ci}"));
        // Backward is the transpose of the (linear) forward: <dy, A x> = <Aᵀ dy, x>
        // checked on every unit vector via finite differences below; here the
        // adjoint identity on random vectors.
        let g = rand_vec(s.output_len(), 200 + ci as u64);
        let mut dx = vec![f32::NAN; x.len()];
        avg_pool2d_backward(&s, &g, &mut dx).unwrap();
        let lhs = weighted_sum(&y, &g);
        let rhs = weighted_sum(&x, &dx);
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "case {ci}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn finite_differences() {
    for (ci, case) in cases().into_iter().enumerate() {
        let (s, _) = setup(case);
        // Distinct values 0.1 apart: eps = 1e-2 never changes a window's winner.
        let x = distinct_vec(s.input_len(), 300 + ci as u64);
        let w = rand_vec(s.output_len(), 400 + ci as u64);
        let max_fwd = |v: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            max_pool2d_forward(&s, v, &mut y, None).unwrap();
            weighted_sum(&y, &w)
        };
        let avg_fwd = |v: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            avg_pool2d_forward(&s, v, &mut y).unwrap();
            weighted_sum(&y, &w)
        };
        let mut y = vec![0.0; s.output_len()];
        let mut am = vec![0u32; s.output_len()];
        max_pool2d_forward(&s, &x, &mut y, Some(&mut am)).unwrap();
        let mut dx = vec![0.0; x.len()];
        max_pool2d_backward(&s, &am, &w, &mut dx).unwrap();
        check_fd(
            &format!("max case {ci}"),
            &x,
            &dx,
            max_fwd,
            1e-2,
            60,
            1e-2,
            1e-3,
        );
        avg_pool2d_backward(&s, &w, &mut dx).unwrap();
        check_fd(
            &format!("avg case {ci}"),
            &x,
            &dx,
            avg_fwd,
            1e-2,
            60,
            1e-2,
            1e-3,
        );
    }
}

#[test]
fn ties_go_to_first_maximum() {
    let attrs = Pool2dAttrs {
        pool_size: [2, 2],
        strides: [2, 2],
        pads: Pads2d::default(),
    };
    let s = Pool2dShape::new(&attrs, 1, 2, 2, 1).unwrap();
    let x = [5.0, 5.0, 5.0, 1.0];
    let (mut y, mut am) = (vec![0.0], vec![0u32]);
    max_pool2d_forward(&s, &x, &mut y, Some(&mut am)).unwrap();
    assert_eq!((y[0], am[0]), (5.0, 0));
    let mut dx = vec![0.0; 4];
    max_pool2d_backward(&s, &am, &[2.0], &mut dx).unwrap();
    assert_eq!(dx, vec![2.0, 0.0, 0.0, 0.0]);
}
