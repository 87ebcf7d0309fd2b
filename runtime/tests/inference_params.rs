//! Parameters prepared for inference (`InferenceParams`): folded batch-norm
//! values from their formula, folded conv / depthwise / dense graphs against
//! the unfolded ones, what is dropped, the errors that keep snapshots from
//! being misused, and evaluation after training steps seeing the current
//! parameters.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::ir::{
    BatchNormStats, DepthwiseConv2dAttrs, Fold, Graph, Init, NodeId, Op, Param, ParamId,
};
use cnnc_compiler::graph::{lower, passes};
use cnnc_compiler::model::{Activation, Pads2d};
use cnnc_runtime::data::Dataset;
use cnnc_runtime::executor::{ExecError, Executor, Mode};
use cnnc_runtime::optim::{Optimizer, OptimizerConfig, SgdConfig};
use cnnc_runtime::params::{
    model_param_count, model_params, InferenceParams, ParamError, ParamStore, PrepareOptions,
};
use cnnc_runtime::tensor::Tensor;
use cnnc_runtime::train::{Classifier, FitConfig, Trainer};
use graph_support::{params_for, slice, tensor, Dag};
use ndarray::IxDyn;

/// `max |a - b| <= tol * max |b|` (relative to the output's scale).
#[track_caller]
fn assert_rel(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= tol * scale,
        "{what}: max |a - b| = {diff}, max |b| = {scale}"
    );
}

/// Appends a folded parameter to `g`.
fn push_folded(g: &mut Graph, name: &str, shape: &[usize], fold: Fold) -> ParamId {
    g.params.push(Param {
        name: name.into(),
        shape: shape.to_vec(),
        init: Init::Folded { fold },
        trainable: false,
    });
    ParamId(g.params.len() - 1)
}

/// The batch-norm statistics of a `Op::BatchNorm` node.
fn stats_of(op: &Op) -> BatchNormStats {
    let Op::BatchNorm {
        epsilon,
        gamma,
        beta,
        moving_mean,
        moving_variance,
        ..
    } = *op
    else {
        panic!("not a batch norm: {op:?}");
    };
    BatchNormStats {
        gamma,
        beta,
        moving_mean,
        moving_variance,
        epsilon,
    }
}

/// The unfolded graph `head(x) [+ bias] -> batch_norm` and its folded twin
/// `head'(x) -> bias_add(folded bias)` with the folded parameters appended,
/// built by hand (`set_kernel` points the head at the folded kernel).
fn fold_by_hand(
    unfolded: &Graph,
    head: usize,
    bias_add: Option<usize>,
    bn: usize,
    set_kernel: impl Fn(&mut Op, ParamId),
    kernel: ParamId,
) -> Graph {
    let mut g = unfolded.clone();
    let stats = stats_of(&g.nodes[bn].op);
    let shape = g.params[kernel.0].shape.clone();
    let channels = g.params[stats.moving_mean.0].shape.clone();
    let bias = bias_add.map(|b| match g.nodes[b].op {
        Op::BiasAdd { bias } => bias,
        _ => panic!("not a bias add"),
    });
    let fk = push_folded(
        &mut g,
        "folded/kernel",
        &shape,
        Fold::BatchNormKernel { kernel, stats },
    );
    let fb = push_folded(
        &mut g,
        "folded/bias",
        &channels,
        Fold::BatchNormBias { bias, stats },
    );
    set_kernel(&mut g.nodes[head].op, fk);
    // The batch norm becomes the folded bias add, reading the head directly.
    g.nodes[bn].op = Op::BiasAdd { bias: fb };
    g.nodes[bn].inputs = vec![NodeId(head)];
    if let Some(b) = bias_add {
        // Left unread (dead); the executor skips it.
        g.nodes[b].op = Op::Activation {
            activation: Activation::Linear,
        };
    }
    g
}

/// Runs `unfolded` on the model's parameters and `folded` on prepared ones
/// (consumed, packed) and on folds over the model's store; all agree to
/// 1e-5 of the output's scale.
fn check_folded(unfolded: &Graph, folded: &Graph, input: &[usize], what: &str) {
    let params = params_for(unfolded, 5);
    let x = tensor(input, 6);
    let expected = Executor::new(unfolded.clone())
        .try_forward(&params, &x, Mode::Inference)
        .unwrap();
    let prepared = InferenceParams::prepare(folded, params.clone()).unwrap();
    let got = Executor::for_inference(folded.clone())
        .try_forward(&prepared, &x, Mode::Inference)
        .unwrap();
    assert_rel(&got, &expected, 1e-5, what);
    let folds = InferenceParams::fold(folded, &params).unwrap();
    let over = Executor::new(folded.clone())
        .try_forward(&folds.over(&params), &x, Mode::Inference)
        .unwrap();
    assert_rel(&over, &expected, 1e-5, what);
}

#[test]
fn folded_values_follow_the_batch_norm_formula() {
    // conv 1x1, 2 -> 3 filters, bias, batch norm with gamma and beta.
    let mut d = Dag::new();
    let x = d.input(&[2, 2, 2]);
    let y = d.conv(x, 3, 1, false, true);
    let z = d.bn(y, 0.9, 0.001, false, true);
    d.outputs(&[z]);
    let mut g = d.build();
    let (head, bias_add, bn) = (1, 2, 3);
    let kernel = ParamId(0);
    let folded = fold_by_hand(
        &g,
        head,
        Some(bias_add),
        bn,
        |op, k| {
            if let Op::Conv2d { kernel, .. } = op {
                *kernel = k
            }
        },
        kernel,
    );
    g = folded;
    let mut params = ParamStore::init(&g, 3);
    assert_eq!(params.values.len(), model_param_count(&g));
    assert_eq!(model_param_count(&g), 6);
    // Hand-picked values: kernel [1, 1, 2, 3], bias [3], gamma, beta,
    // moving mean, moving variance.
    let set = |params: &mut ParamStore, i: usize, v: &[f32]| {
        params.values[i].as_slice_mut().unwrap().copy_from_slice(v)
    };
    set(&mut params, 0, &[1.0, -2.0, 0.5, 3.0, 0.25, -1.0]);
    set(&mut params, 1, &[0.1, 0.2, -0.3]);
    set(&mut params, 2, &[2.0, 0.5, -1.0]);
    set(&mut params, 3, &[0.0, 1.0, -2.0]);
    set(&mut params, 4, &[0.5, -1.5, 4.0]);
    set(&mut params, 5, &[0.999, 3.999, 0.249]);
    // epsilon is the batch norm's f32 0.001, added once inside the root.
    let eps = f64::from(0.001f32);
    // scale[o] = gamma / sqrt(var + eps): about 2 / 1, 0.5 / 2, -1 / 0.5.
    let scale = [
        2.0 / (f64::from(0.999f32) + eps).sqrt(),
        0.5 / (f64::from(3.999f32) + eps).sqrt(),
        -1.0 / (f64::from(0.249f32) + eps).sqrt(),
    ];
    let kernel_in = [1.0f64, -2.0, 0.5, 3.0, 0.25, -1.0];
    let expected_kernel: Vec<f32> = kernel_in
        .iter()
        .enumerate()
        .map(|(i, k)| (k * scale[i % 3]) as f32)
        .collect();
    let (bias, beta, mean) = (
        [0.1f32, 0.2, -0.3],
        [0.0f64, 1.0, -2.0],
        [0.5f64, -1.5, 4.0],
    );
    // bias * scale + shift, shift = beta - mean * scale.
    let expected_bias: Vec<f32> = (0..3)
        .map(|o| (f64::from(bias[o]) * scale[o] + (beta[o] - mean[o] * scale[o])) as f32)
        .collect();
    // The folds as computed (no packing, so the kernel's value is kept).
    let prepared = InferenceParams::prepare_with(
        &g,
        params.clone(),
        PrepareOptions {
            pack_kernels: false,
        },
    )
    .unwrap();
    let fk = prepared.value(ParamId(6)).unwrap();
    let fb = prepared.value(ParamId(7)).unwrap();
    kernels_support::assert_close(slice(fk), &expected_kernel, 1e-7, "folded kernel");
    kernels_support::assert_close(slice(fb), &expected_bias, 1e-7, "folded bias");
    // Roughly: 1 * 2 = 2, -2 * 0.25 = -0.5, 0.5 * -2 = -1.
    assert!((slice(fk)[0] - 2.0).abs() < 1e-3 && (slice(fk)[2] + 1.0).abs() < 1e-3);
    // The original kernel, bias and batch-norm vectors are dropped.
    for i in 0..6 {
        assert!(prepared.value(ParamId(i)).is_none(), "parameter {i} kept");
    }
    assert_eq!(prepared.bytes(), (6 + 3) * 4);
    // And the graph computes bn(conv(x) + b), on random values.
    let unfolded = {
        let mut d = Dag::new();
        let x = d.input(&[2, 2, 2]);
        let y = d.conv(x, 3, 1, false, true);
        let z = d.bn(y, 0.9, 0.001, false, true);
        d.outputs(&[z]);
        d.build()
    };
    check_folded(&unfolded, &g, &[2, 2, 2, 2], "conv 1x1");
}

/// `input [4, 4, 2] -> conv 3x3 (5 filters, bias) -> batch_norm -> relu`.
fn conv_bn() -> Graph {
    let mut d = Dag::new();
    let x = d.input(&[4, 4, 2]);
    let y = d.conv(x, 5, 3, true, true);
    let z = d.bn(y, 0.9, 0.001, false, true);
    let r = d.act(z, Activation::Relu);
    d.outputs(&[r]);
    d.build()
}

fn fold_conv_bn() -> Graph {
    let g = conv_bn();
    fold_by_hand(
        &g,
        1,
        Some(2),
        3,
        |op, k| {
            if let Op::Conv2d { kernel, .. } = op {
                *kernel = k
            }
        },
        ParamId(0),
    )
}

#[test]
fn folded_conv_equals_conv_bias_batch_norm() {
    check_folded(&conv_bn(), &fold_conv_bn(), &[3, 4, 4, 2], "conv 3x3");
}

#[test]
fn folded_conv_without_bias_or_affine_terms() {
    // conv (no bias) -> batch_norm(center=false, scale=false) -> output.
    let mut d = Dag::new();
    let x = d.input(&[5, 5, 3]);
    let y = d.conv(x, 4, 3, false, false);
    let z = d.bn(y, 0.99, 1e-3, false, false);
    d.outputs(&[z]);
    let g = d.build();
    let folded = fold_by_hand(
        &g,
        1,
        None,
        2,
        |op, k| {
            if let Op::Conv2d { kernel, .. } = op {
                *kernel = k
            }
        },
        ParamId(0),
    );
    check_folded(&g, &folded, &[2, 5, 5, 3], "conv without bias");
}

#[test]
fn folded_depthwise_equals_depthwise_bias_batch_norm() {
    // depthwise 3x3, depth_multiplier 2 (channel o = c * 2 + m), bias, bn.
    let mut d = Dag::new();
    let x = d.input(&[6, 6, 3]);
    let attrs = DepthwiseConv2dAttrs {
        in_channels: 3,
        depth_multiplier: 2,
        kernel_size: [3, 3],
        strides: [2, 2],
        pads: Pads2d {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1,
        },
        dilation_rate: [1, 1],
    };
    let kernel = d.param(
        "dw/depthwise_kernel",
        &[3, 3, 3, 2],
        Init::GlorotUniform {
            fan_in: 27,
            fan_out: 18,
        },
        true,
    );
    let bias = d.param("dw/bias", &[6], Init::Zeros, true);
    let y = d.node(Op::DepthwiseConv2d { attrs, kernel }, &[x], vec![3, 3, 6]);
    let yb = d.node(Op::BiasAdd { bias }, &[y], vec![3, 3, 6]);
    let z = d.bn(yb, 0.9, 0.001, false, true);
    d.outputs(&[z]);
    let g = d.build();
    let folded = fold_by_hand(
        &g,
        1,
        Some(2),
        3,
        |op, k| {
            if let Op::DepthwiseConv2d { kernel, .. } = op {
                *kernel = k
            }
        },
        kernel,
    );
    check_folded(&g, &folded, &[2, 6, 6, 3], "depthwise");
    // Fused with the bias and an activation (what the passes make).
    let mut fused = folded.clone();
    let Op::DepthwiseConv2d { attrs, kernel } = fused.nodes[1].op else {
        unreachable!()
    };
    let Op::BiasAdd { bias } = fused.nodes[3].op else {
        unreachable!()
    };
    fused.nodes[1].op = Op::FusedDepthwiseConv2d {
        attrs,
        kernel,
        bias: Some(bias),
        activation: Activation::Linear,
    };
    fused.nodes[3].op = Op::Activation {
        activation: Activation::Linear,
    };
    check_folded(&g, &fused, &[2, 6, 6, 3], "fused depthwise");
}

#[test]
fn folded_dense_equals_dense_bias_batch_norm() {
    let mut d = Dag::new();
    let x = d.input(&[7]);
    let y = d.dense(x, 5);
    let z = d.bn(y, 0.9, 0.001, false, true);
    d.outputs(&[z]);
    let g = d.build();
    let folded = fold_by_hand(
        &g,
        1,
        Some(2),
        3,
        |op, k| {
            if let Op::MatMul { kernel, .. } = op {
                *kernel = k
            }
        },
        ParamId(0),
    );
    check_folded(&g, &folded, &[4, 7], "dense");
}

/// A small conv -> batch norm -> relu classifier, its training graph and its
/// inference graph (batch norm folded by the passes).
const BN_NET: &str = "model bn_net {
  input [4, 4, 1]
  conv2d(3, 3, padding=same)
  batch_normalization
  relu
  flatten
  dense(4, activation=softmax)
}";

fn bn_graphs() -> (Graph, Graph) {
    let model = cnnc_compiler::check_source(BN_NET).expect("valid spec");
    let graph = lower::lower(&model);
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    (training, inference)
}

#[test]
fn the_passes_fold_and_the_runtime_agrees_with_the_training_graph() {
    let (training, inference) = bn_graphs();
    let folded = inference.params.len() - model_param_count(&inference);
    assert!(folded >= 2, "the batch norm was not folded");
    assert_eq!(model_params(&inference), training.params.as_slice());
    let params = params_for(&training, 9);
    let x = tensor(&[3, 4, 4, 1], 10);
    let expected = Executor::new(training)
        .try_forward(&params, &x, Mode::Inference)
        .unwrap();
    let prepared = InferenceParams::prepare(&inference, params.clone()).unwrap();
    let got = Executor::for_inference(inference)
        .try_forward(&prepared, &x, Mode::Inference)
        .unwrap();
    assert_rel(&got, &expected, 1e-5, "bn_net");
}

#[test]
fn misuse_is_a_typed_error() {
    let (training, inference) = bn_graphs();
    let folded = inference.params.len() - model_param_count(&inference);
    let params = params_for(&training, 1);
    let x = tensor(&[1, 4, 4, 1], 2);
    let mut ex = Executor::new(inference.clone());
    // A plain store cannot run a graph with folded parameters, whatever its length.
    assert_eq!(
        ex.try_forward(&params, &x, Mode::Inference).unwrap_err(),
        ExecError::Params(ParamError::Unprepared { folded })
    );
    let mut full = params.clone();
    for p in &inference.params[model_param_count(&inference)..] {
        full.values.push(Tensor::zeros(IxDyn(&p.shape)));
    }
    assert!(matches!(
        ex.try_forward(&full, &x, Mode::Inference),
        Err(ExecError::Params(ParamError::Unprepared { .. }))
    ));
    // Folds alone lack the model's parameters.
    let folds = InferenceParams::fold(&inference, &params).unwrap();
    assert!(matches!(
        ex.try_forward(&folds, &x, Mode::Inference),
        Err(ExecError::Params(ParamError::Missing { .. }))
    ));
    assert!(ex
        .try_forward(&folds.over(&params), &x, Mode::Inference)
        .is_ok());
    // Prepared parameters belong to one graph.
    let prepared = InferenceParams::prepare(&inference, params.clone()).unwrap();
    let mut other = Executor::new(training.clone());
    assert_eq!(
        other
            .try_forward(&prepared, &x, Mode::Inference)
            .unwrap_err(),
        ExecError::Params(ParamError::OtherGraph)
    );
    // Inference only.
    assert!(matches!(
        ex.try_forward(&prepared, &x, Mode::Train { seed: 1 }),
        Err(ExecError::InferenceOnly(_))
    ));
    // The model's parameters: count and shapes are checked.
    let mut short = params.clone();
    short.values.pop();
    assert_eq!(
        InferenceParams::prepare(&inference, short).unwrap_err(),
        ParamError::Count {
            expected: model_param_count(&inference),
            got: model_param_count(&inference) - 1
        }
    );
    let mut bad = params.clone();
    bad.values[0] = Tensor::zeros(IxDyn(&[2]));
    assert!(matches!(
        InferenceParams::prepare(&inference, bad),
        Err(ParamError::Shape { .. })
    ));
    // A fold whose kernel does not match its declared shape.
    let mut broken = inference.clone();
    let last = broken.params.len() - 2;
    broken.params[last].shape = vec![1, 2, 3];
    assert!(matches!(
        InferenceParams::prepare(&broken, params),
        Err(ParamError::Fold { .. })
    ));
}

#[test]
fn unread_parameters_may_be_left_empty_in_a_store() {
    // A store only needs the parameters the nodes read: the dead bias add's
    // parameter may be an empty tensor.
    let mut d = Dag::new();
    let x = d.input(&[3]);
    let y = d.dense(x, 2);
    d.outputs(&[y]);
    let mut g = d.build();
    g.params.push(Param {
        name: "unused/bias".into(),
        shape: vec![9],
        init: Init::Zeros,
        trainable: true,
    });
    let mut params = ParamStore::init(&g, 1);
    let expected = Executor::new(g.clone()).forward(&params, &tensor(&[2, 3], 3), Mode::Inference);
    params.values[2] = Tensor::zeros(IxDyn(&[0]));
    let got = Executor::new(g).forward(&params, &tensor(&[2, 3], 3), Mode::Inference);
    assert_eq!(got, expected);
}

fn quadrants(n: usize) -> Dataset {
    let images = tensor(&[n, 4, 4, 1], 40);
    let labels = (0..n).map(|i| i % 4).collect();
    Dataset::new(images, labels).unwrap()
}

#[test]
fn evaluation_after_training_uses_the_current_parameters() {
    // The inference graph has the batch norm folded: after training steps
    // (which change the kernel, gamma, beta and the moving statistics) the
    // trainer's evaluation must equal a fresh preparation of the trained
    // parameters, not the folds of the initial ones.
    let (training, inference) = bn_graphs();
    let params = ParamStore::init(&training, 4);
    let data = quadrants(16);
    let mut trainer = Trainer::new(training.clone(), inference.clone(), params.clone()).unwrap();
    let before = trainer.evaluate(&data, 8).unwrap();
    let mut optimizer = Optimizer::new(
        OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 0.5,
            ..SgdConfig::default()
        }),
        &training.params,
    )
    .unwrap();
    let fit = FitConfig {
        epochs: 2,
        batch_size: 4,
        ..FitConfig::default()
    };
    trainer
        .fit(&mut optimizer, &data, Some(&data), &fit, &mut ())
        .unwrap();
    let after = trainer.evaluate(&data, 8).unwrap();
    assert_ne!(after.loss, before.loss);
    let fresh = InferenceParams::prepare(&inference, trainer.params().clone()).unwrap();
    let mut classifier = Classifier::new(inference.clone()).unwrap();
    let expected = classifier.evaluate(&fresh, &data, 8).unwrap();
    assert_eq!(after, expected);
    // The unfolded training graph in inference mode agrees too.
    let mut plain = Executor::new(training);
    let logits_plain = plain
        .try_forward(trainer.params(), &data.images, Mode::Inference)
        .unwrap();
    let probabilities = classifier
        .predict(trainer.params(), &data.images, 5)
        .unwrap();
    assert_rel(&probabilities, &logits_plain, 1e-5, "predict vs unfolded");
}
