//! The fused ops the inference passes make, against the unfused graphs they
//! replace: `FusedConv2d` with `residual: true` (`act(conv(x) + bias + r)`)
//! and `FusedDepthwiseConv2d` (`act(depthwise(x) + bias)`), forward (on
//! both executors) and backward, plus finite-difference gradient checks.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::ir::{Conv2dAttrs, DepthwiseConv2dAttrs, Graph, Init, NodeId, Op};
use cnnc_compiler::model::Activation;
use cnnc_runtime::executor::{ExecError, Executor, Mode};
use graph_support::{check_dag_grads, params_for, slice, tensor, Dag};
use kernels_support::{assert_close, same_pads2d};

const TRAIN: Mode = Mode::Train { seed: 3 };

/// A conv node (no bias) with `same` padding: `x` `[h, w, c]` -> `[ceil(h / s), ceil(w / s), filters]`.
fn conv(d: &mut Dag, x: NodeId, filters: usize, k: usize, stride: usize) -> (NodeId, Op) {
    let [h, w, c] = <[usize; 3]>::try_from(d.shape(x)).unwrap();
    let pads = same_pads2d(h, w, [k, k], [stride, stride]);
    let idx = d.graph.params.len();
    let kernel = d.param(
        &format!("conv{idx}/kernel"),
        &[k, k, c, filters],
        Init::GlorotUniform {
            fan_in: k * k * c,
            fan_out: k * k * filters,
        },
        true,
    );
    let attrs = Conv2dAttrs {
        in_channels: c,
        filters,
        kernel_size: [k, k],
        strides: [stride, stride],
        pads,
        dilation_rate: [1, 1],
    };
    let op = Op::Conv2d { attrs, kernel };
    let id = d.node(
        op.clone(),
        &[x],
        vec![h.div_ceil(stride), w.div_ceil(stride), filters],
    );
    (id, op)
}

/// The residual block `act(conv(x_in) [+ bias] + r)` unfused and fused.
/// `x -> conv_a -> tanh = u` (the conv's input); the residual is `u` itself
/// (`shared`) or `v = sigmoid(conv_b(x))`, a second branch.
fn residual_pair(stride: usize, with_bias: bool, act: Activation, shared: bool) -> (Graph, Graph) {
    let build = |fused: bool| -> Graph {
        let mut d = Dag::new();
        let x = d.input(&[6, 5, 3]);
        let (a, _) = conv(&mut d, x, 4, 3, 1);
        let u = d.act(a, Activation::Tanh);
        let r = if shared {
            u
        } else {
            let (b, _) = conv(&mut d, x, 4, 1, stride);
            d.act(b, Activation::Sigmoid)
        };
        let (c, op) = conv(&mut d, u, 4, 3, stride);
        let shape = d.shape(c);
        let bias = with_bias.then(|| d.param("main/bias", &[4], Init::Zeros, true));
        let out = if fused {
            let Op::Conv2d { attrs, kernel } = op else {
                unreachable!()
            };
            // The plain conv node stays unread (dead) so parameter ids agree.
            d.node(
                Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation: act,
                    residual: true,
                },
                &[u, r],
                shape,
            )
        } else {
            let mut y = c;
            if let Some(b) = bias {
                y = d.node(Op::BiasAdd { bias: b }, &[y], shape.clone());
            }
            let s = d.add(&[y, r]);
            if act == Activation::Linear {
                s
            } else {
                d.act(s, act)
            }
        };
        d.outputs(&[out]);
        d.build()
    };
    (build(false), build(true))
}

/// Forward on both executors and backward of the fused graph equal the
/// unfused graph's (to float rounding).
fn check_pair(unfused: &Graph, fused: &Graph, batch: usize, what: &str) {
    let params = params_for(unfused, 21);
    let input = fused.node(fused.input).shape.clone();
    let mut shape = vec![batch];
    shape.extend_from_slice(&input);
    let x = tensor(&shape, 22);
    let mut eu = Executor::new(unfused.clone());
    let mut ef = Executor::new(fused.clone());
    for mode in [Mode::Inference, TRAIN] {
        let yu = eu.forward(&params, &x, mode);
        let yf = ef.forward(&params, &x, mode);
        assert_close(
            slice(&yf),
            slice(&yu),
            1e-5,
            &format!("{what} {mode:?} output"),
        );
        let w = tensor(yu.shape(), 23);
        let gu = eu.backward(&params, &w);
        let gf = ef.backward(&params, &w);
        assert!(gf.iter().any(|g| g.iter().any(|v| *v != 0.0)));
        for (k, (a, b)) in gf.iter().zip(&gu).enumerate() {
            let name = &unfused.params[k].name;
            assert_close(
                slice(a),
                slice(b),
                1e-5,
                &format!("{what} {mode:?} d {name}"),
            );
        }
    }
    let planned = Executor::for_inference(fused.clone()).forward(&params, &x, Mode::Inference);
    let yu = eu.forward(&params, &x, Mode::Inference);
    assert_close(
        slice(&planned),
        slice(&yu),
        1e-5,
        &format!("{what} planned"),
    );
}

#[test]
fn residual_conv_matches_conv_bias_add_relu() {
    for (stride, bias, act, shared) in [
        (1, true, Activation::Relu, false),
        (2, true, Activation::Relu, false),
        (1, false, Activation::Linear, false),
        (2, true, Activation::Tanh, false),
        (1, true, Activation::Relu, true),
        (1, true, Activation::Relu6, true),
    ] {
        let (unfused, fused) = residual_pair(stride, bias, act, shared);
        let what = format!("stride {stride} bias {bias} {act:?} shared {shared}");
        check_pair(&unfused, &fused, 3, &what);
    }
}

#[test]
fn residual_conv_gradients_match_finite_differences() {
    // A strided conv with a second-branch residual, and a residual that is
    // also the conv's input (its gradient gets both contributions).
    for (stride, shared) in [(2, false), (1, true)] {
        let (_, fused) = residual_pair(stride, true, Activation::Tanh, shared);
        let params = params_for(&fused, 31);
        let x = tensor(&[2, 6, 5, 3], 32);
        check_dag_grads(&fused, &params, &[x], TRAIN, 1e-3, 12, 3e-2, 3e-3);
    }
}

#[test]
fn residual_conv_needs_two_inputs_of_the_output_shape() {
    let (_, mut fused) = residual_pair(1, true, Activation::Relu, false);
    let out = fused.output.0;
    let mut one = fused.clone();
    one.nodes[out].inputs.pop();
    assert!(matches!(
        Executor::new(one).validate(),
        Err(ExecError::Graph { .. })
    ));
    // A residual of another shape (the network input, [6, 5, 3]).
    fused.nodes[out].inputs[1] = fused.input;
    assert!(matches!(
        Executor::new(fused).validate(),
        Err(ExecError::Graph { .. })
    ));
}

/// `x -> depthwise (+ bias) -> act`, unfused and fused.
fn depthwise_pair(dm: usize, stride: usize, act: Activation, with_bias: bool) -> (Graph, Graph) {
    let build = |fused: bool| -> Graph {
        let mut d = Dag::new();
        let x = d.input(&[7, 6, 3]);
        let pads = same_pads2d(7, 6, [3, 3], [stride, stride]);
        let attrs = DepthwiseConv2dAttrs {
            in_channels: 3,
            depth_multiplier: dm,
            kernel_size: [3, 3],
            strides: [stride, stride],
            pads,
            dilation_rate: [1, 1],
        };
        let kernel = d.param(
            "dw/depthwise_kernel",
            &[3, 3, 3, dm],
            Init::GlorotUniform {
                fan_in: 27,
                fan_out: 9 * dm,
            },
            true,
        );
        let bias = with_bias.then(|| d.param("dw/bias", &[3 * dm], Init::Zeros, true));
        let shape = vec![7usize.div_ceil(stride), 6usize.div_ceil(stride), 3 * dm];
        let out = if fused {
            d.node(
                Op::FusedDepthwiseConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation: act,
                },
                &[x],
                shape,
            )
        } else {
            let mut y = d.node(Op::DepthwiseConv2d { attrs, kernel }, &[x], shape.clone());
            if let Some(b) = bias {
                y = d.node(Op::BiasAdd { bias: b }, &[y], shape);
            }
            if act == Activation::Linear {
                y
            } else {
                d.act(y, act)
            }
        };
        d.outputs(&[out]);
        d.build()
    };
    (build(false), build(true))
}

#[test]
fn fused_depthwise_matches_depthwise_bias_activation() {
    for (dm, stride, act, bias) in [
        (1, 1, Activation::Relu6, true),
        (2, 2, Activation::Relu, true),
        (1, 2, Activation::Tanh, false),
        (3, 1, Activation::Linear, true),
    ] {
        let (unfused, fused) = depthwise_pair(dm, stride, act, bias);
        check_pair(
            &unfused,
            &fused,
            2,
            &format!("depthwise dm {dm} stride {stride} {act:?} bias {bias}"),
        );
    }
}

#[test]
fn fused_depthwise_gradients_match_finite_differences() {
    let (_, fused) = depthwise_pair(2, 2, Activation::Tanh, true);
    let params = params_for(&fused, 41);
    let x = tensor(&[2, 7, 6, 3], 42);
    check_dag_grads(&fused, &params, &[x], TRAIN, 1e-3, 12, 3e-2, 3e-3);
}

#[test]
fn fused_depthwise_softmax_output_is_logits_in_training() {
    // As for fused convs: a softmax output read by nothing else is skipped
    // in training, so the fused depthwise then outputs logits.
    let (_, logits) = depthwise_pair(1, 1, Activation::Linear, true);
    let (_, softmax) = depthwise_pair(1, 1, Activation::Softmax, true);
    let params = params_for(&logits, 51);
    let x = tensor(&[2, 7, 6, 3], 52);
    let l = Executor::new(logits).forward(&params, &x, Mode::Inference);
    let t = Executor::new(softmax.clone()).forward(&params, &x, TRAIN);
    assert_eq!(l, t);
    let p = Executor::new(softmax).forward(&params, &x, Mode::Inference);
    for row in slice(&p).chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
