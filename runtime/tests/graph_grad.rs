//! Whole-graph finite-difference checks of the executor on DAGs: fan-out
//! (gradients from several readers summed), batch norm in training and
//! inference mode, add / multiply / concatenate, nearest and bilinear
//! upsampling, reshape, several inputs and outputs; plus determinism across
//! thread counts and the errors of the multi-input API.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::ir::Graph;
use cnnc_compiler::model::{Activation, Interpolation};
use cnnc_runtime::executor::{ExecError, Executor, Mode};
use cnnc_runtime::tensor::Tensor;
use graph_support::*;
use ndarray::IxDyn;

const TRAIN: Mode = Mode::Train { seed: 5 };

/// A residual DAG on [4, 4, 2] inputs exercising every graph op:
///
/// ```text
/// x -> conv a -> bn a -> tanh = r            (r has four readers)
/// r -> conv b -> bn b -> add(r, .) = s
/// m = multiply(s, r); c = concat(m, r) on channels -> [4, 4, 6]
/// c -> up_sampling nearest [2, 1] -> conv 1x1 (2) -> up_sampling bilinear [1, 2]
///   -> reshape [16, 8] -> flatten -> dense 3
/// ```
///
/// Every op is smooth (no relu or max pooling), so central differences are
/// not disturbed by kinks. The bias of conv a feeds a batch norm with batch
/// statistics, so its gradient is zero (up to rounding) in training.
fn residual_dag(frozen_bn: bool) -> Graph {
    let mut g = Dag::new();
    let x = g.input(&[4, 4, 2]);
    let a = g.conv(x, 3, 3, true, true);
    let a = g.bn(a, 0.9, 1e-3, false, true);
    let r = g.act(a, Activation::Tanh);
    let b = g.conv(r, 3, 3, true, true);
    let b = g.bn(b, 0.8, 1e-3, frozen_bn, true);
    let s = g.add(&[r, b]);
    let m = g.multiply(&[s, r]);
    let c = g.concat(&[m, r], 2);
    let u = g.upsample(c, [2, 1], Interpolation::Nearest); // [8, 4, 6]
    let d = g.conv(u, 2, 1, false, true); // [8, 4, 2]
    let u = g.upsample(d, [1, 2], Interpolation::Bilinear); // [8, 8, 2]
    let rs = g.reshape(u, &[16, 8]);
    let f = g.flatten(rs);
    let y = g.dense(f, 3);
    g.outputs(&[y]);
    g.build()
}

#[test]
fn residual_dag_gradients_in_training() {
    let graph = residual_dag(false);
    let params = params_for(&graph, 3);
    let x = tensor(&[3, 4, 4, 2], 4);
    check_dag_grads(&graph, &params, &[x], TRAIN, 1e-3, 12, 3e-2, 3e-3);
}

#[test]
fn residual_dag_gradients_in_inference() {
    // Batch norms use their (fixed) moving statistics.
    let graph = residual_dag(false);
    let params = params_for(&graph, 6);
    let x = tensor(&[2, 4, 4, 2], 7);
    check_dag_grads(&graph, &params, &[x], Mode::Inference, 1e-3, 12, 3e-2, 3e-3);
}

#[test]
fn frozen_batch_norm_uses_moving_statistics_in_training() {
    // The second batch norm is frozen: no gamma/beta gradients, and the same
    // output in training and inference mode up to the first (live) batch norm.
    let graph = residual_dag(true);
    let params = params_for(&graph, 8);
    let x = tensor(&[3, 4, 4, 2], 9);
    let grads = check_dag_grads(
        &graph,
        &params,
        std::slice::from_ref(&x),
        TRAIN,
        1e-3,
        12,
        3e-2,
        3e-3,
    );
    for (prm, g) in graph.params.iter().zip(&grads) {
        if prm.name.starts_with("bn") && !prm.trainable {
            assert!(g.iter().all(|v| *v == 0.0), "{}", prm.name);
        }
    }
    // A DAG of one frozen batch norm gives the inference formula in training mode.
    let mut d = Dag::new();
    let i = d.input(&[3]);
    let b = d.bn(i, 0.9, 1e-3, true, true);
    d.outputs(&[b]);
    let g = d.build();
    let p = params_for(&g, 10);
    let mut ex = Executor::new(g);
    let y_train = ex.forward(
        &p,
        &x.clone().into_shape_with_order(IxDyn(&[32, 3])).unwrap(),
        TRAIN,
    );
    let y_inf = ex.forward(
        &p,
        &x.into_shape_with_order(IxDyn(&[32, 3])).unwrap(),
        Mode::Inference,
    );
    assert_eq!(slice(&y_train), slice(&y_inf));
}

/// Two inputs, two outputs, a node that is both an output and read further
/// (`h`), a join reading one value twice, and concat along the height axis.
fn two_in_two_out() -> Graph {
    let mut g = Dag::new();
    let x1 = g.input(&[3, 3, 2]);
    let x2 = g.input(&[2, 3, 2]);
    let a = g.conv(x1, 2, 3, true, true);
    let b = g.conv(x2, 2, 1, false, false);
    let cat = g.concat(&[a, b], 0); // [5, 3, 2]
    let h = g.act(cat, Activation::Sigmoid);
    let sq = g.multiply(&[h, h]);
    let both = g.add(&[sq, h, cat]);
    let bn = g.bn(both, 0.99, 1e-3, false, false); // center = scale = false
    let f = g.flatten(bn);
    let y = g.dense(f, 4);
    g.outputs(&[y, h]);
    g.build()
}

#[test]
fn several_inputs_and_outputs_gradients() {
    let graph = two_in_two_out();
    let params = params_for(&graph, 12);
    let x1 = tensor(&[2, 3, 3, 2], 13);
    let x2 = tensor(&[2, 2, 3, 2], 14);
    for mode in [TRAIN, Mode::Inference] {
        check_dag_grads(
            &graph,
            &params,
            &[x1.clone(), x2.clone()],
            mode,
            1e-3,
            10,
            3e-2,
            3e-3,
        );
    }
}

#[test]
fn single_gradient_api_backpropagates_the_first_output_only() {
    let graph = two_in_two_out();
    let params = params_for(&graph, 15);
    let (x1, x2) = (tensor(&[2, 3, 3, 2], 16), tensor(&[2, 2, 3, 2], 17));
    let mut ex = Executor::new(graph);
    let ys = ex.try_forward_multi(&params, &[&x1, &x2], TRAIN).unwrap();
    assert_eq!(ys.len(), 2);
    assert_eq!(ys[0].shape(), &[2, 4]);
    assert_eq!(ys[1].shape(), &[2, 5, 3, 2]);
    let w = tensor(ys[0].shape(), 18);
    let single = ex.try_backward(&params, &w).unwrap();
    let zero = Tensor::zeros(IxDyn(ys[1].shape()));
    let multi = ex.try_backward_multi(&params, &[&w, &zero]).unwrap();
    for (a, b) in single.iter().zip(&multi) {
        assert_eq!(slice(a), slice(b));
    }
    // forward_multi_into reuses the caller's tensors and gives the same values.
    let mut outs = vec![];
    ex.forward_multi_into(&params, &[&x1, &x2], TRAIN, &mut outs)
        .unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(slice(&outs[0]), slice(&ys[0]));
    assert_eq!(slice(&outs[1]), slice(&ys[1]));
}

#[test]
fn multi_input_api_errors_are_typed() {
    let graph = two_in_two_out();
    let params = params_for(&graph, 19);
    let mut ex = Executor::new(graph);
    let (x1, x2) = (tensor(&[2, 3, 3, 2], 20), tensor(&[2, 2, 3, 2], 21));
    assert_eq!(
        ex.try_forward(&params, &x1, TRAIN).unwrap_err(),
        ExecError::InputCount {
            expected: 2,
            got: 1
        }
    );
    let x2_batch3 = tensor(&[3, 2, 3, 2], 22);
    assert_eq!(
        ex.try_forward_multi(&params, &[&x1, &x2_batch3], TRAIN)
            .unwrap_err(),
        ExecError::InputBatch {
            input: 1,
            expected: 2,
            got: 3
        }
    );
    assert!(matches!(
        ex.try_forward_multi(&params, &[&x2, &x1], TRAIN),
        Err(ExecError::InputShape { .. })
    ));
    ex.try_forward_multi(&params, &[&x1, &x2], TRAIN).unwrap();
    let w = tensor(&[2, 4], 23);
    assert_eq!(
        ex.try_backward_multi(&params, &[&w]).unwrap_err(),
        ExecError::GradCount {
            expected: 2,
            got: 1
        }
    );
    assert!(matches!(
        ex.try_backward_multi(&params, &[&w, &w]),
        Err(ExecError::GradShape { .. })
    ));
}

#[test]
fn malformed_dags_are_reported() {
    // A join whose inputs disagree in shape.
    let mut g = Dag::new();
    let x = g.input(&[2, 2, 1]);
    let y = g.input(&[2, 2, 2]);
    let bad = g.node(cnnc_compiler::graph::Op::Add, &[x, y], vec![2, 2, 1]);
    g.outputs(&[bad]);
    assert!(matches!(
        Executor::new(g.build()).validate(),
        Err(ExecError::Graph { .. })
    ));
    // Concat whose output does not add up.
    let mut g = Dag::new();
    let x = g.input(&[2, 2, 1]);
    let bad = g.node(
        cnnc_compiler::graph::Op::Concat { axis: 2 },
        &[x, x],
        vec![2, 2, 3],
    );
    g.outputs(&[bad]);
    assert!(Executor::new(g.build()).validate().is_err());
    // An input node that is not listed as a graph input.
    let mut g = Dag::new();
    let x = g.input(&[2]);
    let stray = g.node(cnnc_compiler::graph::Op::Input, &[], vec![2]);
    let s = g.add(&[x, stray]);
    g.outputs(&[s]);
    assert!(Executor::new(g.build()).validate().is_err());
    // A reshape that changes the number of values.
    let mut g = Dag::new();
    let x = g.input(&[2, 3]);
    let r = g.reshape(x, &[4]);
    g.outputs(&[r]);
    assert!(Executor::new(g.build()).validate().is_err());
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn dag_step_is_bit_identical_across_thread_counts() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let graph = residual_dag(false);
            let params = params_for(&graph, 30);
            let x = tensor(&[16, 4, 4, 2], 31);
            let mut ex = Executor::new(graph);
            let y = ex.forward(&params, &x, TRAIN);
            let w = tensor(y.shape(), 32);
            let grads = ex.backward(&params, &w);
            let mut p = params.clone();
            ex.update_moving_statistics(&mut p).unwrap();
            let mut out = vec![bits(&y)];
            out.extend(grads.iter().map(bits));
            out.extend(p.values.iter().map(bits));
            out
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// The conv family through lowering, on [5, 5, 2] inputs:
/// separable_conv2d(3, 3, same, depth_multiplier=2, relu) -> [5, 5, 3]
/// -> depthwise_conv2d(3, valid) -> [3, 3, 3]
/// -> conv2d_transpose(2, 3, strides=2, same) -> [6, 6, 2]
/// -> conv2d(2, 3, same, dilation_rate=2, tanh) -> [6, 6, 2] -> flatten -> dense(3, softmax).
fn conv_family_model() -> cnnc_compiler::model::Model {
    use cnnc_compiler::model::{LayerKind, Padding};
    let l = |name: &str, kind, input: &str, i: &[usize], o: &[usize]| {
        layer(name, kind, &[input], i, o, true)
    };
    model(
        &[5, 5, 2],
        &["dense"],
        vec![
            l(
                "sep",
                LayerKind::SeparableConv2d {
                    filters: 3,
                    kernel_size: [3, 3],
                    strides: [1, 1],
                    padding: Padding::Same,
                    depth_multiplier: 2,
                    dilation_rate: [1, 1],
                    activation: Activation::Relu,
                    use_bias: true,
                },
                "input",
                &[5, 5, 2],
                &[5, 5, 3],
            ),
            l(
                "dw",
                LayerKind::DepthwiseConv2d {
                    kernel_size: [3, 3],
                    strides: [1, 1],
                    padding: Padding::Valid,
                    depth_multiplier: 1,
                    dilation_rate: [1, 1],
                    activation: Activation::Linear,
                    use_bias: true,
                },
                "sep",
                &[5, 5, 3],
                &[3, 3, 3],
            ),
            l(
                "up",
                LayerKind::Conv2dTranspose {
                    filters: 2,
                    kernel_size: [3, 3],
                    strides: [2, 2],
                    padding: Padding::Same,
                    output_padding: None,
                    dilation_rate: [1, 1],
                    activation: Activation::Linear,
                    use_bias: true,
                },
                "dw",
                &[3, 3, 3],
                &[6, 6, 2],
            ),
            l(
                "atrous",
                LayerKind::Conv2d {
                    filters: 2,
                    kernel_size: [3, 3],
                    strides: [1, 1],
                    padding: Padding::Same,
                    dilation_rate: [2, 2],
                    activation: Activation::Tanh,
                    use_bias: true,
                },
                "up",
                &[6, 6, 2],
                &[6, 6, 2],
            ),
            l("flatten", LayerKind::Flatten, "atrous", &[6, 6, 2], &[72]),
            l(
                "dense",
                LayerKind::Dense {
                    units: 3,
                    activation: Activation::Softmax,
                    use_bias: true,
                },
                "flatten",
                &[72],
                &[3],
            ),
        ],
    )
}

#[test]
fn conv_family_gradients_through_lowering() {
    use cnnc_compiler::graph::{lower, passes};
    let graph = lower::try_lower(&conv_family_model()).unwrap();
    let names: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sep/depthwise_kernel",
            "sep/pointwise_kernel",
            "sep/bias",
            "dw/depthwise_kernel",
            "dw/bias",
            "up/kernel",
            "up/bias",
            "atrous/kernel",
            "atrous/bias",
            "dense/kernel",
            "dense/bias"
        ]
    );
    // The transposed conv's crop agrees with the runtime's Keras/TF rule:
    // `same`, 3 -> 6 with stride 2 and kernel 3 crops max((3 - 1) * 2 + 3 - 6, 0) / 2 = 0
    // at the start (the 1 left over at the end).
    let up = graph
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            cnnc_compiler::graph::Op::Conv2dTranspose { attrs, .. } => Some(*attrs),
            _ => None,
        })
        .unwrap();
    let rule = cnnc_runtime::kernels::conv_transpose::conv2d_transpose_axis(
        3,
        3,
        2,
        1,
        cnnc_compiler::model::Padding::Same,
        None,
    )
    .unwrap();
    assert_eq!(rule, (6, 0));
    assert_eq!((up.pads.top, up.pads.bottom, up.pads.left), (0, 1, 0));
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    for g in [graph, training] {
        let params = params_for(&g, 40);
        let x = tensor(&[2, 5, 5, 2], 41);
        check_dag_grads(
            &g,
            &params,
            std::slice::from_ref(&x),
            TRAIN,
            1e-3,
            10,
            3e-2,
            3e-3,
        );
        check_dag_grads(&g, &params, &[x], Mode::Inference, 1e-3, 10, 3e-2, 3e-3);
    }
}
