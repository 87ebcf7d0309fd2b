//! Executor tests on hand-built graphs: whole-graph finite-difference checks
//! of d loss / d params, fused vs unfused equivalence, training vs inference
//! outputs, dropout, and frozen parameters.

mod kernels_support;

use cnnc_compiler::graph::Graph;
use cnnc_compiler::model::Activation;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use kernels_support::*;
use ndarray::IxDyn;

const TRAIN: Mode = Mode::Train { seed: 11 };

/// conv(3 filters, 3×3, same) -> bias -> relu -> maxpool 2 -> flatten ->
/// matmul 4 -> bias -> softmax, on [6, 6, 2] inputs; unfused or fused.
fn small_graph(fused: bool) -> Graph {
    let mut g = GraphBuilder::new(&[6, 6, 2]);
    if fused {
        g.conv(3, [3, 3], [1, 1], true, Some((true, Activation::Relu)));
    } else {
        g.conv(3, [3, 3], [1, 1], true, None);
        g.bias();
        g.act(Activation::Relu);
    }
    g.pool(true, [2, 2], [2, 2], false);
    g.flatten();
    if fused {
        g.matmul(4, Some((true, Activation::Linear)));
    } else {
        g.matmul(4, None);
        g.bias();
    }
    g.softmax();
    g.build()
}

/// Parameters from `ParamStore::init`, with biases made non-zero.
fn params_for(graph: &Graph, seed: u64) -> ParamStore {
    let mut p = ParamStore::init(graph, seed);
    for (i, v) in p.values.iter_mut().enumerate() {
        if v.ndim() == 1 {
            let r = rand_vec(v.len(), 1000 + i as u64);
            v.iter_mut().zip(r).for_each(|(a, b)| *a = 0.2 * b);
        }
    }
    p
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_shape_vec(IxDyn(shape), rand_vec(n, seed)).unwrap()
}

fn slice(t: &Tensor) -> &[f32] {
    t.as_slice().unwrap()
}

/// Checks every parameter gradient of `L = Σ w ⊙ forward(x)` (train mode)
/// against central differences.
fn check_graph_grads(
    graph: Graph,
    params: ParamStore,
    x: &Tensor,
    mode: Mode,
    eps: f32,
    samples: usize,
) {
    let mut ex = Executor::new(graph);
    let y = ex.forward(&params, x, mode);
    let w = tensor(y.shape(), 77);
    let grads = ex.backward(&params, &w);
    assert_eq!(grads.len(), params.values.len());
    for (pi, g) in grads.iter().enumerate() {
        assert_eq!(g.shape(), params.values[pi].shape());
        let name = ex.graph().params[pi].name.clone();
        let base = params.clone();
        let mut probe = Executor::new(ex.graph().clone());
        check_fd(
            &name,
            slice(&base.values[pi]),
            slice(g),
            |v| {
                let mut p = base.clone();
                p.values[pi].as_slice_mut().unwrap().copy_from_slice(v);
                weighted_sum(slice(&probe.forward(&p, x, mode)), slice(&w))
            },
            eps,
            samples,
            2e-2,
            2e-3,
        );
    }
}

#[test]
fn whole_graph_gradients_unfused() {
    let g = small_graph(false);
    let p = params_for(&g, 3);
    check_graph_grads(g, p, &tensor(&[3, 6, 6, 2], 5), TRAIN, 1e-3, 30);
}

#[test]
fn whole_graph_gradients_fused() {
    let g = small_graph(true);
    let p = params_for(&g, 3);
    check_graph_grads(g, p, &tensor(&[3, 6, 6, 2], 5), TRAIN, 1e-3, 30);
}

#[test]
fn whole_graph_gradients_through_softmax_in_inference() {
    // After an inference forward, backward differentiates the probabilities.
    let g = small_graph(true);
    let p = params_for(&g, 4);
    check_graph_grads(g, p, &tensor(&[2, 6, 6, 2], 6), Mode::Inference, 1e-3, 20);
}

#[test]
fn avg_pool_sigmoid_tanh_graph_gradients() {
    let mut g = GraphBuilder::new(&[7, 5, 2]);
    g.conv(3, [3, 2], [2, 1], true, Some((true, Activation::Sigmoid)));
    g.pool(false, [2, 2], [1, 2], true);
    g.act(Activation::Tanh);
    g.conv(2, [2, 2], [1, 1], false, Some((false, Activation::Tanh)));
    g.flatten();
    g.matmul(3, Some((true, Activation::Sigmoid)));
    let graph = g.build();
    let p = params_for(&graph, 8);
    check_graph_grads(graph, p, &tensor(&[2, 7, 5, 2], 9), TRAIN, 1e-2, 25);
}

#[test]
fn dropout_graph_gradients_with_fixed_seed() {
    let mut g = GraphBuilder::new(&[8]);
    g.matmul(16, Some((true, Activation::Relu)));
    g.dropout(0.5);
    g.matmul(3, None);
    g.bias();
    g.softmax();
    let graph = g.build();
    let p = params_for(&graph, 14);
    // The mask depends only on the seed, so every probe forward sees the same one.
    check_graph_grads(
        graph,
        p,
        &tensor(&[5, 8], 13),
        Mode::Train { seed: 99 },
        1e-3,
        40,
    );
}

#[test]
fn fused_and_unfused_agree() {
    let (gu, gf) = (small_graph(false), small_graph(true));
    let p = params_for(&gu, 21);
    assert_eq!(
        gu.params.iter().map(|q| &q.shape).collect::<Vec<_>>(),
        gf.params.iter().map(|q| &q.shape).collect::<Vec<_>>()
    );
    let x = tensor(&[4, 6, 6, 2], 22);
    let (mut eu, mut ef) = (Executor::new(gu), Executor::new(gf));
    for mode in [Mode::Inference, TRAIN] {
        let yu = eu.forward(&p, &x, mode);
        let yf = ef.forward(&p, &x, mode);
        assert_eq!(yu.shape(), yf.shape());
        assert_close(slice(&yf), slice(&yu), 1e-5, &format!("{mode:?} output"));
        let w = tensor(yu.shape(), 23);
        let gu = eu.backward(&p, &w);
        let gf = ef.backward(&p, &w);
        for (a, b) in gf.iter().zip(&gu) {
            assert_close(slice(a), slice(b), 1e-5, &format!("{mode:?} gradient"));
        }
    }
}

#[test]
fn train_returns_logits_inference_returns_probabilities() {
    let g = small_graph(true);
    let p = params_for(&g, 31);
    let x = tensor(&[3, 6, 6, 2], 32);
    let mut ex = Executor::new(g);
    let logits = ex.forward(&p, &x, TRAIN);
    let probs = ex.forward(&p, &x, Mode::Inference);
    assert_eq!(logits.shape(), &[3, 4]);
    assert_eq!(probs.shape(), &[3, 4]);
    for (l, pr) in slice(&logits).chunks(4).zip(slice(&probs).chunks(4)) {
        let m = l.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f32> = l.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        let r: Vec<f32> = e.iter().map(|v| v / s).collect();
        assert_close(pr, &r, 1e-6, "softmax of logits");
        assert!((pr.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn fused_softmax_output_is_skipped_in_training() {
    // A dense layer with a softmax activation as the graph output.
    let mut b = GraphBuilder::new(&[5]);
    b.matmul(4, Some((true, Activation::Softmax)));
    let g = b.build();
    let mut lin = g.clone();
    if let cnnc_compiler::graph::Op::FusedMatMul { activation, .. } = &mut lin.nodes[1].op {
        *activation = Activation::Linear;
    }
    let p = params_for(&g, 41);
    let x = tensor(&[3, 5], 42);
    let logits = Executor::new(lin.clone()).forward(&p, &x, Mode::Inference);
    let mut ex = Executor::new(g.clone());
    assert_eq!(ex.forward(&p, &x, TRAIN), logits);
    let probs = ex.forward(&p, &x, Mode::Inference);
    assert!((slice(&probs)[..4].iter().sum::<f32>() - 1.0).abs() < 1e-5);
    check_graph_grads(g, p, &x, Mode::Inference, 1e-3, 20);
}

#[test]
fn dropout_masks_follow_the_seed_and_inference_is_identity() {
    let mut b = GraphBuilder::new(&[6]);
    b.matmul(32, Some((true, Activation::Relu)));
    b.dropout(0.5);
    let g = b.build();
    let mut b = GraphBuilder::new(&[6]);
    b.matmul(32, Some((true, Activation::Relu)));
    let g_plain = b.build();
    let p = params_for(&g, 51);
    let x = tensor(&[4, 6], 52);
    let mut ex = Executor::new(g);
    let a = ex.forward(&p, &x, Mode::Train { seed: 1 });
    let a2 = ex.forward(&p, &x, Mode::Train { seed: 1 });
    let c = ex.forward(&p, &x, Mode::Train { seed: 2 });
    assert_eq!(a, a2);
    assert_ne!(a, c);
    let plain = Executor::new(g_plain).forward(&p, &x, Mode::Inference);
    assert_eq!(ex.forward(&p, &x, Mode::Inference), plain);
    // Train outputs are 0 or 2x the plain output (rate 0.5).
    for (t, q) in slice(&a).iter().zip(slice(&plain)) {
        assert!(*t == 0.0 || *t == 2.0 * q, "{t} vs {q}");
    }
}

#[test]
fn frozen_parameters_get_zero_gradients() {
    let g = small_graph(true);
    let mut frozen = g.clone();
    frozen.params[0].trainable = false; // conv kernel
    let p = params_for(&g, 61);
    let x = tensor(&[2, 6, 6, 2], 62);
    let mut e1 = Executor::new(g);
    let mut e2 = Executor::new(frozen);
    let y = e1.forward(&p, &x, TRAIN);
    assert_eq!(e2.forward(&p, &x, TRAIN), y);
    let w = tensor(y.shape(), 63);
    let g1 = e1.backward(&p, &w);
    let g2 = e2.backward(&p, &w);
    assert!(g2[0].iter().all(|&v| v == 0.0));
    assert!(g1[0].iter().any(|&v| v != 0.0));
    for i in 1..g1.len() {
        assert_eq!(g1[i], g2[i], "param {i}");
    }
}

#[test]
fn backward_into_reuses_buffers_and_matches_backward() {
    let g = small_graph(true);
    let p = params_for(&g, 71);
    let x = tensor(&[3, 6, 6, 2], 72);
    let mut ex = Executor::new(g);
    let y = ex.forward(&p, &x, TRAIN);
    let w = tensor(y.shape(), 73);
    let fresh = ex.backward(&p, &w);
    let mut reused: Vec<Tensor> = fresh.iter().map(|t| t.mapv(|_| f32::NAN)).collect();
    ex.backward_into(&p, &w, &mut reused).unwrap();
    assert_eq!(fresh, reused);
    // A second batch size reuses the executor.
    let x2 = tensor(&[5, 6, 6, 2], 74);
    let y2 = ex.forward(&p, &x2, TRAIN);
    assert_eq!(y2.shape(), &[5, 4]);
    let mut out = Tensor::zeros(IxDyn(&[1]));
    ex.forward_into(&p, &x2, TRAIN, &mut out).unwrap();
    assert_eq!(out, y2);
}

/// conv (3×3, 3 filters) -> bias -> `act` -> flatten -> matmul 4 -> bias ->
/// `act`, on [5, 5, 2] inputs; fused or unfused.
fn act_graph(act: Activation, fused: bool) -> Graph {
    let mut g = GraphBuilder::new(&[5, 5, 2]);
    if fused {
        g.conv(3, [3, 3], [1, 1], true, Some((true, act)));
    } else {
        g.conv(3, [3, 3], [1, 1], true, None);
        g.bias();
        g.act(act);
    }
    g.flatten();
    if fused {
        g.matmul(4, Some((true, act)));
    } else {
        g.matmul(4, None);
        g.bias();
        g.act(act);
    }
    g.build()
}

const NEW_ACTS: [Activation; 3] = [
    Activation::Relu6,
    Activation::Elu { alpha: 1.0 },
    Activation::LeakyRelu {
        negative_slope: 0.3,
    },
];

#[test]
fn relu6_elu_leaky_relu_graph_gradients_fused_and_unfused() {
    for act in NEW_ACTS {
        for fused in [false, true] {
            let g = act_graph(act, fused);
            // Inputs scaled by 4 so that relu6 also reaches its upper clamp.
            let mut x = tensor(&[2, 5, 5, 2], 41);
            x.mapv_inplace(|v| 4.0 * v);
            let p = params_for(&g, 40);
            check_graph_grads(g, p, &x, TRAIN, 1e-3, 25);
        }
    }
}

#[test]
fn relu6_elu_leaky_relu_fused_matches_unfused() {
    for act in NEW_ACTS {
        let (gu, gf) = (act_graph(act, false), act_graph(act, true));
        let p = params_for(&gu, 42);
        let mut x = tensor(&[3, 5, 5, 2], 43);
        x.mapv_inplace(|v| 4.0 * v);
        let (mut eu, mut ef) = (Executor::new(gu), Executor::new(gf));
        let yu = eu.forward(&p, &x, TRAIN);
        let yf = ef.forward(&p, &x, TRAIN);
        assert_close(slice(&yf), slice(&yu), 1e-5, &format!("{act:?} output"));
        let w = tensor(yu.shape(), 44);
        let gu = eu.backward(&p, &w);
        let gf = ef.backward(&p, &w);
        for (a, b) in gf.iter().zip(&gu) {
            assert_close(slice(a), slice(b), 1e-5, &format!("{act:?} gradient"));
        }
    }
}

/// zero_padding2d ((1, 0), (2, 1)) -> conv (3×3, 4, valid, bias, elu) ->
/// global average or max pooling -> matmul 3 -> bias, on [5, 4, 2] inputs:
/// shapes [6, 7, 2] -> [4, 5, 4] -> [4] -> [3].
fn global_pool_graph(max: bool) -> Graph {
    use cnnc_compiler::graph::Op;
    use cnnc_compiler::model::Pads2d;
    let mut g = GraphBuilder::new(&[5, 4, 2]);
    let pads = Pads2d {
        top: 1,
        bottom: 0,
        left: 2,
        right: 1,
    };
    g.push(Op::ZeroPadding2d { pads }, vec![6, 7, 2]);
    g.conv(
        4,
        [3, 3],
        [1, 1],
        false,
        Some((true, Activation::Elu { alpha: 1.0 })),
    );
    let op = if max {
        Op::GlobalMaxPool2d
    } else {
        Op::GlobalAvgPool2d
    };
    g.push(op, vec![4]);
    g.matmul(3, None);
    g.bias();
    g.build()
}

#[test]
fn zero_padding_and_global_pooling_graph_gradients() {
    for max in [false, true] {
        let g = global_pool_graph(max);
        let p = params_for(&g, 50);
        let mut ex = Executor::new(g.clone());
        let y = ex.forward(&p, &tensor(&[3, 5, 4, 2], 51), TRAIN);
        assert_eq!(y.shape(), &[3, 3]);
        check_graph_grads(g, p, &tensor(&[3, 5, 4, 2], 51), TRAIN, 1e-3, 30);
    }
}
