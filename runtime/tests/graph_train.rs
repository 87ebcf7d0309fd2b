//! Training graph models built by hand (checked `Model`s -> lowering ->
//! passes -> executor / `Trainer`): batch normalization's inference formula
//! and moving-statistics update, frozen layers, and a residual network that
//! learns.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::{lower, passes, Graph, Op};
use cnnc_compiler::model::{Activation, Layer, LayerKind, Model, Padding, Pads2d};
use cnnc_runtime::data::Dataset;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use cnnc_runtime::train::{FitConfig, Trainer};
use graph_support::{layer, model};
use kernels_support::assert_close;
use ndarray::IxDyn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `conv2d(filters, 3, padding=same)` from `[h, w, c]`.
fn conv(name: &str, input: &str, hwc: [usize; 3], filters: usize, trainable: bool) -> Layer {
    let [h, w, c] = hwc;
    let mut l = layer(
        name,
        LayerKind::Conv2d {
            filters,
            kernel_size: [3, 3],
            strides: [1, 1],
            padding: Padding::Same,
            dilation_rate: [1, 1],
            activation: Activation::Linear,
            use_bias: true,
        },
        &[input],
        &[h, w, c],
        &[h, w, filters],
        trainable,
    );
    l.pads = Some(Pads2d {
        top: 1,
        bottom: 1,
        left: 1,
        right: 1,
    });
    l
}

fn bn(name: &str, input: &str, shape: &[usize], momentum: f32, trainable: bool) -> Layer {
    layer(
        name,
        LayerKind::BatchNormalization {
            momentum,
            epsilon: 1e-3,
            center: true,
            scale: true,
        },
        &[input],
        shape,
        shape,
        trainable,
    )
}

fn act(name: &str, input: &str, shape: &[usize], activation: Activation) -> Layer {
    layer(
        name,
        LayerKind::Activation { activation },
        &[input],
        shape,
        shape,
        true,
    )
}

fn dense(name: &str, input: &str, inf: usize, units: usize) -> Layer {
    layer(
        name,
        LayerKind::Dense {
            units,
            activation: Activation::Softmax,
            use_bias: true,
        },
        &[input],
        &[inf],
        &[units],
        true,
    )
}

/// input [4, 4, 1] -> conv (2) -> bn -> relu -> flatten -> dense(4, softmax).
fn bn_net(conv_trainable: bool, bn_trainable: bool) -> Model {
    model(
        &[4, 4, 1],
        &["dense"],
        vec![
            conv("conv", "input", [4, 4, 1], 2, conv_trainable),
            bn("bn", "conv", &[4, 4, 2], 0.9, bn_trainable),
            act("relu", "bn", &[4, 4, 2], Activation::Relu),
            layer(
                "flatten",
                LayerKind::Flatten,
                &["relu"],
                &[4, 4, 2],
                &[32],
                true,
            ),
            dense("dense", "flatten", 32, 4),
        ],
    )
}

/// Training and inference graphs of a model.
fn graphs(model: &Model) -> (Graph, Graph) {
    let graph = lower::try_lower(model).expect("names resolve");
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    (training, inference)
}

/// `n` noisy 4 x 4 images; class k has its k-th 2 x 2 quadrant bright.
fn quadrants(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * 16);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.gen_range(0..4);
        let (qr, qc) = (class / 2, class % 2);
        for r in 0..4 {
            for c in 0..4 {
                let bright = r / 2 == qr && c / 2 == qc;
                let noise: f32 = rng.gen_range(0.0..0.3);
                pixels.push(if bright { 0.7 + noise } else { noise });
            }
        }
        labels.push(class);
    }
    let images = Tensor::from_shape_vec(IxDyn(&[n, 4, 4, 1]), pixels).unwrap();
    Dataset::new(images, labels).unwrap()
}

fn index(graph: &Graph, name: &str) -> usize {
    graph
        .params
        .iter()
        .position(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

fn values(params: &ParamStore, graph: &Graph, name: &str) -> Vec<f32> {
    params.values[index(graph, name)].iter().copied().collect()
}

/// Per-channel mean and biased variance (f64) of a `[rows, c]` buffer.
fn moments(data: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (data.len() / c) as f64;
    let mut mean = vec![0.0; c];
    for r in data.chunks(c) {
        for j in 0..c {
            mean[j] += f64::from(r[j]) / rows;
        }
    }
    let mut var = vec![0.0; c];
    for r in data.chunks(c) {
        for j in 0..c {
            var[j] += (f64::from(r[j]) - mean[j]).powi(2) / rows;
        }
    }
    (mean, var)
}

/// input [3] -> batch_normalization (momentum 0.8), with hand-set parameters.
fn vector_bn(trainable: bool) -> (Graph, ParamStore) {
    let m = model(&[3], &["bn"], vec![bn("bn", "input", &[3], 0.8, trainable)]);
    let (g, _) = graphs(&m);
    let mut p = ParamStore::init(&g, 1);
    for (name, v) in [
        ("bn/gamma", [2.0, 0.5, -1.0]),
        ("bn/beta", [0.1, -0.2, 0.3]),
        ("bn/moving_mean", [1.0, 0.0, -2.0]),
        ("bn/moving_variance", [0.249, 3.999, 1.0 - 1e-3]),
    ] {
        p.values[index(&g, name)]
            .iter_mut()
            .zip(v)
            .for_each(|(d, s)| *d = s);
    }
    (g, p)
}

#[test]
fn batch_norm_inference_matches_the_formula() {
    let (g, p) = vector_bn(true);
    assert_eq!(
        g.params.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
        [
            "bn/gamma",
            "bn/beta",
            "bn/moving_mean",
            "bn/moving_variance"
        ]
    );
    let x = Tensor::from_shape_vec(IxDyn(&[2, 3]), vec![2.0, 1.0, 0.0, 0.5, -3.0, -1.0]).unwrap();
    let mut ex = Executor::new(g);
    let y = ex.forward(&p, &x, Mode::Inference);
    // y = gamma (x - mean) / sqrt(var + 0.001) + beta; sqrt(0.25) = 0.5, sqrt(4) = 2, sqrt(1) = 1.
    let expected = [
        2.0 * (2.0 - 1.0) / 0.5 + 0.1,
        0.5 * (1.0 - 0.0) / 2.0 - 0.2,
        -(0.0 + 2.0) / 1.0 + 0.3,
        2.0 * (0.5 - 1.0) / 0.5 + 0.1,
        0.5 * (-3.0 - 0.0) / 2.0 - 0.2,
        -(-1.0 + 2.0) / 1.0 + 0.3,
    ];
    assert_close(
        y.as_slice().unwrap(),
        &expected,
        1e-5,
        "inference batch norm",
    );
    // Inference never touches the moving statistics.
    let mut q = p.clone();
    assert_eq!(ex.update_moving_statistics(&mut q).unwrap(), 0);
    for (a, b) in q.values.iter().zip(&p.values) {
        assert_eq!(a, b);
    }
}

#[test]
fn batch_norm_training_normalizes_with_batch_statistics_and_updates_moving_ones() {
    let (g, p) = vector_bn(true);
    // Channel 0: 1, 3 (mean 2, var 1); channel 1: 0, 4 (mean 2, var 4);
    // channel 2: -1, -1 (mean -1, var 0).
    let x = Tensor::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 0.0, -1.0, 3.0, 4.0, -1.0]).unwrap();
    let mut ex = Executor::new(g.clone());
    let y = ex.forward(&p, &x, Mode::Train { seed: 1 });
    let eps = 1e-3f64;
    let norm =
        |x: f64, m: f64, v: f64, gamma: f64, beta: f64| gamma * (x - m) / (v + eps).sqrt() + beta;
    let expected = [
        norm(1.0, 2.0, 1.0, 2.0, 0.1),
        norm(0.0, 2.0, 4.0, 0.5, -0.2),
        norm(-1.0, -1.0, 0.0, -1.0, 0.3),
        norm(3.0, 2.0, 1.0, 2.0, 0.1),
        norm(4.0, 2.0, 4.0, 0.5, -0.2),
        norm(-1.0, -1.0, 0.0, -1.0, 0.3),
    ]
    .map(|v| v as f32);
    assert_close(
        y.as_slice().unwrap(),
        &expected,
        1e-5,
        "training batch norm",
    );

    let mut q = p.clone();
    assert_eq!(ex.update_moving_statistics(&mut q).unwrap(), 1);
    // moving = momentum * old + (1 - momentum) * batch, momentum 0.8.
    let mm: Vec<f32> = [(1.0, 2.0), (0.0, 2.0), (-2.0, -1.0)]
        .iter()
        .map(|(old, b)| 0.8 * old + 0.2 * b)
        .collect();
    let mv: Vec<f32> = [(0.249, 1.0), (3.999, 4.0), (0.999, 0.0)]
        .iter()
        .map(|(old, b)| 0.8 * old + 0.2 * b)
        .collect();
    assert_close(&values(&q, &g, "bn/moving_mean"), &mm, 1e-6, "moving mean");
    assert_close(
        &values(&q, &g, "bn/moving_variance"),
        &mv,
        1e-6,
        "moving variance",
    );
    // gamma and beta are the optimizer's business: unchanged here.
    assert_eq!(values(&q, &g, "bn/gamma"), values(&p, &g, "bn/gamma"));
    // A forward's statistics are applied once.
    let again = q.clone();
    assert_eq!(ex.update_moving_statistics(&mut q).unwrap(), 0);
    for (a, b) in q.values.iter().zip(&again.values) {
        assert_eq!(a, b);
    }
}

#[test]
fn frozen_batch_norm_runs_in_inference_mode_while_training() {
    let (g, p) = vector_bn(false);
    assert!(g.params.iter().all(|q| !q.trainable));
    assert!(matches!(g.nodes[1].op, Op::BatchNorm { frozen: true, .. }));
    let x = Tensor::from_shape_vec(IxDyn(&[2, 3]), vec![2.0, 1.0, 0.0, 0.5, -3.0, -1.0]).unwrap();
    let mut ex = Executor::new(g);
    let train = ex.forward(&p, &x, Mode::Train { seed: 1 });
    let mut q = p.clone();
    assert_eq!(ex.update_moving_statistics(&mut q).unwrap(), 0);
    let inference = ex.forward(&p, &x, Mode::Inference);
    assert_eq!(train, inference);
}

/// One epoch of SGD on 16 images in one batch.
fn one_step(model: &Model, seed: u64) -> (Graph, ParamStore, ParamStore) {
    let (training, inference) = graphs(model);
    let params = ParamStore::init(&training, seed);
    let mut trainer = Trainer::new(training.clone(), inference, params.clone()).unwrap();
    let config = OptimizerConfig::Sgd(SgdConfig {
        learning_rate: 0.1,
        ..SgdConfig::default()
    });
    let mut opt = Optimizer::new(config, &training.params).unwrap();
    let data = quadrants(16, 3);
    let fit = FitConfig {
        epochs: 1,
        batch_size: 16,
        ..FitConfig::default()
    };
    trainer.fit(&mut opt, &data, None, &fit, &mut ()).unwrap();
    (training, params, trainer.into_params())
}

#[test]
fn a_training_step_updates_moving_statistics_with_momentum() {
    let model = bn_net(true, true);
    let (g, before, after) = one_step(&model, 7);
    // The batch statistics of the batch norm's input under the initial
    // parameters (the step's one batch is all 16 images).
    let data = quadrants(16, 3);
    let mut ex = Executor::new(g.clone());
    ex.forward(
        &before,
        &data.gather(&(0..16).collect::<Vec<_>>()).0,
        Mode::Train { seed: 0 },
    );
    let bn_node = g
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::BatchNorm { .. }))
        .unwrap();
    let input = ex.node_value(g.nodes[bn_node].inputs[0]).unwrap();
    let (mean, var) = moments(input.as_slice().unwrap(), 2);
    let old_mm = values(&before, &g, "bn/moving_mean");
    let old_mv = values(&before, &g, "bn/moving_variance");
    assert_eq!(old_mm, [0.0, 0.0]);
    assert_eq!(old_mv, [1.0, 1.0]);
    let mm: Vec<f32> = (0..2)
        .map(|j| (0.9 * f64::from(old_mm[j]) + 0.1 * mean[j]) as f32)
        .collect();
    let mv: Vec<f32> = (0..2)
        .map(|j| (0.9 * f64::from(old_mv[j]) + 0.1 * var[j]) as f32)
        .collect();
    assert_close(
        &values(&after, &g, "bn/moving_mean"),
        &mm,
        1e-5,
        "moving mean",
    );
    assert_close(
        &values(&after, &g, "bn/moving_variance"),
        &mv,
        1e-5,
        "moving variance",
    );
    // Everything trainable moved.
    for name in [
        "conv/kernel",
        "bn/gamma",
        "bn/beta",
        "dense/kernel",
        "dense/bias",
    ] {
        assert_ne!(
            values(&after, &g, name),
            values(&before, &g, name),
            "{name}"
        );
    }
}

#[test]
fn frozen_layers_keep_their_parameters_while_others_train() {
    let model = bn_net(false, false);
    let (g, before, after) = one_step(&model, 8);
    for prm in &g.params {
        let frozen = prm.name.starts_with("conv/") || prm.name.starts_with("bn/");
        assert_eq!(prm.trainable, !frozen, "{}", prm.name);
        let (b, a) = (
            values(&before, &g, &prm.name),
            values(&after, &g, &prm.name),
        );
        if frozen {
            assert_eq!(a, b, "{} must not change", prm.name);
        } else {
            assert_ne!(a, b, "{} must change", prm.name);
        }
    }
}

/// A small residual network on [4, 4, 1]:
/// conv(8) -> bn -> relu = r; r -> conv(8) -> bn -> add(r) -> relu
/// -> concatenate(r) -> global average pool -> dense(4, softmax).
fn residual_net() -> Model {
    let s8 = [4, 4, 8];
    let add = layer("add", LayerKind::Add, &["bn_2", "relu_1"], &s8, &s8, true);
    model(
        &[4, 4, 1],
        &["dense"],
        vec![
            conv("conv_1", "input", [4, 4, 1], 8, true),
            bn("bn_1", "conv_1", &s8, 0.9, true),
            act("relu_1", "bn_1", &s8, Activation::Relu),
            conv("conv_2", "relu_1", s8, 8, true),
            bn("bn_2", "conv_2", &s8, 0.9, true),
            add,
            act("relu_2", "add", &s8, Activation::Relu),
            layer(
                "concat",
                LayerKind::Concatenate { axis: 2 },
                &["relu_2", "relu_1"],
                &s8,
                &[4, 4, 16],
                true,
            ),
            layer(
                "gap",
                LayerKind::GlobalAvgPool2d,
                &["concat"],
                &[4, 4, 16],
                &[16],
                true,
            ),
            dense("dense", "gap", 16, 4),
        ],
    )
}

#[test]
fn residual_network_learns_quadrants() {
    let (training, inference) = graphs(&residual_net());
    // Fan-out: relu_1's output is read by conv_2, add and concat, so its
    // activation cannot be fused away.
    let params = ParamStore::init(&training, 11);
    let mut trainer = Trainer::new(training.clone(), inference, params).unwrap();
    let mut opt = Optimizer::new(
        OptimizerConfig::Adam(AdamConfig {
            learning_rate: 0.01,
            ..AdamConfig::default()
        }),
        &training.params,
    )
    .unwrap();
    let train = quadrants(256, 1);
    let test = quadrants(128, 2);
    let before = trainer.evaluate(&test, 64).unwrap();
    let fit = FitConfig {
        epochs: 8,
        batch_size: 16,
        ..FitConfig::default()
    };
    let history = trainer.fit(&mut opt, &train, None, &fit, &mut ()).unwrap();
    let after = trainer.evaluate(&test, 64).unwrap();
    let first = history.epochs.first().unwrap().loss;
    let last = history.epochs.last().unwrap().loss;
    assert!(last < first * 0.5, "training loss {first} -> {last}");
    assert!(
        after.loss < before.loss,
        "test loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(after.accuracy >= 0.9, "test accuracy {}", after.accuracy);
    // The moving statistics moved away from their initial 0 / 1.
    let p = trainer.params();
    assert!(values(p, &training, "bn_1/moving_mean")
        .iter()
        .any(|v| *v != 0.0));
    assert!(values(p, &training, "bn_2/moving_variance")
        .iter()
        .any(|v| *v != 1.0));
}
