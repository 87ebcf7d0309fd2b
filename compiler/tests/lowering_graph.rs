//! Lowering of graph models (built by hand as checked `Model`s): wiring by
//! layer names, several inputs and outputs, the new layers' ops and Keras
//! parameter names / shapes / initialisers / trainability, and the passes on
//! DAGs (no fusion across a value with several readers).

use cnnc_compiler::graph::dump::render_text;
use cnnc_compiler::graph::ir::{Graph, Init, NodeId, Op};
use cnnc_compiler::graph::lower::{lower, try_lower, LowerError};
use cnnc_compiler::graph::passes::{optimize, Target};
use cnnc_compiler::model::{
    Activation, Interpolation, Layer, LayerKind, Model, ModelInput, Padding, Pads2d, Span,
};

fn layer(name: &str, kind: LayerKind, inputs: &[&str], input: &[usize], output: &[usize]) -> Layer {
    Layer {
        name: name.into(),
        kind,
        span: Span::default(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        input_shape: cnnc_compiler::model::dims(input),
        output_shape: cnnc_compiler::model::dims(output),
        pads: None,
        params: 0,
        trainable_params: 0,
        trainable: true,
        flops: 0,
    }
}

fn input(name: &str, shape: &[usize]) -> ModelInput {
    ModelInput {
        name: name.into(),
        shape: cnnc_compiler::model::dims(shape),
        span: Span::default(),
    }
}

fn model(inputs: Vec<ModelInput>, outputs: &[&str], layers: Vec<Layer>) -> Model {
    Model {
        name: "m".into(),
        input_shape: inputs[0].shape.clone(),
        inputs,
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        layers,
    }
}

fn conv(filters: usize, k: usize, activation: Activation) -> LayerKind {
    LayerKind::Conv2d {
        filters,
        kernel_size: [k, k],
        strides: [1, 1],
        padding: Padding::Same,
        dilation_rate: [1, 1],
        activation,
        use_bias: true,
    }
}

fn bn() -> LayerKind {
    LayerKind::BatchNormalization {
        momentum: 0.99,
        epsilon: 1.001e-5,
        center: true,
        scale: true,
    }
}

fn relu() -> LayerKind {
    LayerKind::Activation {
        activation: Activation::Relu,
    }
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.name()).collect()
}

fn param_names(g: &Graph) -> Vec<&str> {
    g.params.iter().map(|p| p.name.as_str()).collect()
}

/// A ResNet identity block on [8, 8, 4]:
/// conv1 (4, 1x1) -> bn1 -> relu1 = x; x -> conv2 (4, 3x3) -> bn2 -> add(x) -> out (relu).
fn residual() -> Model {
    let s = [8, 8, 4];
    model(
        vec![input("input", &s)],
        &["out"],
        vec![
            layer("conv1", conv(4, 1, Activation::Linear), &["input"], &s, &s),
            layer("bn1", bn(), &["conv1"], &s, &s),
            layer("relu1", relu(), &["bn1"], &s, &s),
            layer("conv2", conv(4, 3, Activation::Linear), &["relu1"], &s, &s),
            layer("bn2", bn(), &["conv2"], &s, &s),
            layer("add", LayerKind::Add, &["bn2", "relu1"], &s, &s),
            layer("out", relu(), &["add"], &s, &s),
        ],
    )
}

#[test]
fn residual_block_lowers_to_a_dag_with_keras_parameter_names() {
    let g = try_lower(&residual()).unwrap();
    assert_eq!(
        ops(&g),
        [
            "input",
            "conv2d",
            "bias_add",
            "batch_norm",
            "relu",
            "conv2d",
            "bias_add",
            "batch_norm",
            "add",
            "relu"
        ]
    );
    // The add reads bn2 and the shortcut (relu1), in that order.
    assert_eq!(g.nodes[8].inputs, [NodeId(7), NodeId(4)]);
    assert_eq!(g.nodes[5].inputs, [NodeId(4)]);
    assert_eq!((g.input, g.output), (NodeId(0), NodeId(9)));
    assert_eq!(g.inputs, [NodeId(0)]);
    assert_eq!(g.outputs, [NodeId(9)]);
    assert_eq!(
        param_names(&g),
        [
            "conv1/kernel",
            "conv1/bias",
            "bn1/gamma",
            "bn1/beta",
            "bn1/moving_mean",
            "bn1/moving_variance",
            "conv2/kernel",
            "conv2/bias",
            "bn2/gamma",
            "bn2/beta",
            "bn2/moving_mean",
            "bn2/moving_variance"
        ]
    );
    let inits: Vec<Init> = g.params[2..6].iter().map(|p| p.init).collect();
    assert_eq!(inits, [Init::Ones, Init::Zeros, Init::Zeros, Init::Ones]);
    let trainable: Vec<bool> = g.params[2..6].iter().map(|p| p.trainable).collect();
    assert_eq!(trainable, [true, true, false, false]);
    assert!(g.params[2..6].iter().all(|p| p.shape == [4]));
    match &g.nodes[3].op {
        Op::BatchNorm {
            epsilon,
            momentum,
            gamma,
            beta,
            frozen,
            ..
        } => {
            assert_eq!((*epsilon, *momentum, *frozen), (1.001e-5, 0.99, false));
            assert!(gamma.is_some() && beta.is_some());
        }
        other => panic!("expected batch_norm, got {other:?}"),
    }
    // Keras's parameter count: conv1 1*1*4*4 + 4, bn1 4 * 4, conv2
    // 3*3*4*4 + 4, bn2 4 * 4 (moving statistics included).
    assert_eq!(g.param_count(), (4 * 4 + 4) + 16 + (9 * 16 + 4) + 16);
    // The 3x3 same conv got TensorFlow's pads though the model gave none.
    match &g.nodes[5].op {
        Op::Conv2d { attrs, .. } => {
            assert_eq!(
                attrs.pads,
                Pads2d {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1
                }
            );
            assert_eq!(attrs.dilation_rate, [1, 1]);
        }
        other => panic!("expected conv2d, got {other:?}"),
    }
}

#[test]
fn fusion_stops_at_values_with_several_readers() {
    // Training: relu1 has two readers (conv2, add): it may end a fused chain
    // (it is the chain's output) but bn sits between conv and relu, so conv
    // fuses only its bias.
    let (g, _) = optimize(lower(&residual()), Target::Training);
    assert_eq!(
        ops(&g),
        [
            "input",
            "fused_conv2d",
            "batch_norm",
            "relu",
            "fused_conv2d",
            "batch_norm",
            "add",
            "relu"
        ]
    );
    assert_eq!(g.nodes[6].inputs, [NodeId(5), NodeId(3)]);
    assert_eq!(g.outputs, [NodeId(7)]);

    // Inference: both batch norms fold into their convs; conv1 then fuses
    // its relu (the relu's value may have several readers, it is the chain's
    // end), and conv2 fuses the add with relu1 and the final relu.
    let (g, _) = optimize(lower(&residual()), Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "fused_conv2d"]);
    assert_eq!(g.nodes[1].fused, ["conv2d", "bias_add", "relu"]);
    assert_eq!(g.nodes[2].fused, ["conv2d", "bias_add", "add", "relu"]);
    assert_eq!(g.nodes[2].inputs, [NodeId(1), NodeId(1)]);
    match &g.nodes[2].op {
        Op::FusedConv2d {
            residual,
            activation,
            ..
        } => assert_eq!((*residual, *activation), (true, Activation::Relu)),
        other => panic!("expected fused_conv2d, got {other:?}"),
    }
    assert_eq!(g.outputs, [NodeId(2)]);

    // conv -> bias -> relu where the pre-activation value is also a graph
    // output and read by an add: only conv + bias fuse.
    let s = [4, 4, 2];
    let m = model(
        vec![input("input", &s)],
        &["conv", "sum"],
        vec![
            layer("conv", conv(2, 3, Activation::Linear), &["input"], &s, &s),
            layer("act", relu(), &["conv"], &s, &s),
            layer("sum", LayerKind::Add, &["act", "conv"], &s, &s),
        ],
    );
    let (g, _) = optimize(lower(&m), Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "relu", "add"]);
    assert_eq!(g.nodes[1].fused, ["conv2d", "bias_add"]);
    assert_eq!(g.outputs, [NodeId(1), NodeId(3)]);
    assert_eq!(g.output, NodeId(1));

    // The conv output itself read twice: nothing fuses.
    let m = model(
        vec![input("input", &s)],
        &["sum"],
        vec![
            layer(
                "conv",
                LayerKind::Conv2d {
                    filters: 2,
                    kernel_size: [3, 3],
                    strides: [1, 1],
                    padding: Padding::Same,
                    dilation_rate: [1, 1],
                    activation: Activation::Relu,
                    use_bias: false,
                },
                &["input"],
                &s,
                &s,
            ),
            layer("sum", LayerKind::Multiply, &["conv", "input"], &s, &s),
        ],
    );
    let (g, rewrites) = optimize(lower(&m), Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "multiply"]);
    assert_eq!(g.nodes[1].fused, ["conv2d", "relu"]);
    assert_eq!(rewrites.len(), 1);
}

#[test]
fn dropout_elimination_rewires_every_output_and_reader() {
    let s = [6];
    let m = model(
        vec![input("input", &s)],
        &["drop", "dense"],
        vec![
            layer("drop", LayerKind::Dropout { rate: 0.5 }, &["input"], &s, &s),
            layer(
                "dense",
                LayerKind::Dense {
                    units: 2,
                    activation: Activation::Linear,
                    use_bias: true,
                },
                &["drop"],
                &s,
                &[2],
            ),
        ],
    );
    let (g, _) = optimize(lower(&m), Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_matmul"]);
    assert_eq!(g.outputs, [NodeId(0), NodeId(1)]);
    assert_eq!(g.nodes[1].inputs, [NodeId(0)]);
    let (g, _) = optimize(lower(&m), Target::Training);
    assert_eq!(ops(&g), ["input", "dropout", "fused_matmul"]);
    assert_eq!(g.outputs, [NodeId(1), NodeId(2)]);
}

#[test]
fn separable_conv_is_depthwise_then_pointwise() {
    let m = model(
        vec![input("input", &[9, 9, 3])],
        &["sep"],
        vec![layer(
            "sep",
            LayerKind::SeparableConv2d {
                filters: 5,
                kernel_size: [3, 3],
                strides: [2, 2],
                padding: Padding::Same,
                depth_multiplier: 2,
                dilation_rate: [1, 1],
                activation: Activation::Relu,
                use_bias: true,
            },
            &["input"],
            &[9, 9, 3],
            &[5, 5, 5],
        )],
    );
    let g = lower(&m);
    assert_eq!(
        ops(&g),
        ["input", "depthwise_conv2d", "conv2d", "bias_add", "relu"]
    );
    assert_eq!(
        param_names(&g),
        ["sep/depthwise_kernel", "sep/pointwise_kernel", "sep/bias"]
    );
    assert_eq!(g.params[0].shape, [3, 3, 3, 2]);
    assert_eq!(g.params[1].shape, [1, 1, 6, 5]);
    assert_eq!(g.params[2].shape, [5]);
    // Keras's fans: depthwise [3, 3, 3, 2] -> (3*3*3, 3*3*2); pointwise (6, 5).
    assert_eq!(
        g.params[0].init,
        Init::GlorotUniform {
            fan_in: 27,
            fan_out: 18
        }
    );
    assert_eq!(
        g.params[1].init,
        Init::GlorotUniform {
            fan_in: 6,
            fan_out: 5
        }
    );
    // The depthwise step does the striding and padding ([9, 9, 3] -> [5, 5, 6]);
    // the pointwise step is a plain 1x1 conv.
    assert_eq!(g.nodes[1].shape, [5, 5, 6]);
    match &g.nodes[1].op {
        Op::DepthwiseConv2d { attrs, .. } => {
            assert_eq!(attrs.depth_multiplier, 2);
            assert_eq!(attrs.strides, [2, 2]);
            // total = (5 - 1) * 2 + 3 - 9 = 2: one pixel on each side.
            assert_eq!(
                attrs.pads,
                Pads2d {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1
                }
            );
        }
        other => panic!("expected depthwise_conv2d, got {other:?}"),
    }
    match &g.nodes[2].op {
        Op::Conv2d { attrs, .. } => {
            assert_eq!(
                (attrs.in_channels, attrs.filters, attrs.kernel_size),
                (6, 5, [1, 1])
            );
            assert_eq!((attrs.strides, attrs.pads), ([1, 1], Pads2d::default()));
        }
        other => panic!("expected conv2d, got {other:?}"),
    }
    // The pointwise conv fuses with the bias and the activation.
    let (opt, _) = optimize(g, Target::Inference);
    assert_eq!(ops(&opt), ["input", "depthwise_conv2d", "fused_conv2d"]);
    assert_eq!(opt.nodes[2].fused, ["conv2d", "bias_add", "relu"]);
}

#[test]
fn depthwise_transpose_dilation_upsampling_reshape() {
    let m = model(
        vec![input("input", &[6, 6, 2])],
        &["reshape"],
        vec![
            layer(
                "dw",
                LayerKind::DepthwiseConv2d {
                    kernel_size: [3, 3],
                    strides: [1, 1],
                    padding: Padding::Same,
                    depth_multiplier: 3,
                    dilation_rate: [2, 2],
                    activation: Activation::Relu6,
                    use_bias: false,
                },
                &["input"],
                &[6, 6, 2],
                &[6, 6, 6],
            ),
            layer(
                "up",
                LayerKind::Conv2dTranspose {
                    filters: 4,
                    kernel_size: [3, 3],
                    strides: [2, 2],
                    padding: Padding::Same,
                    output_padding: None,
                    dilation_rate: [1, 1],
                    activation: Activation::Linear,
                    use_bias: true,
                },
                &["dw"],
                &[6, 6, 6],
                &[12, 12, 4],
            ),
            layer(
                "grow",
                LayerKind::UpSampling2d {
                    size: [2, 1],
                    interpolation: Interpolation::Bilinear,
                },
                &["up"],
                &[12, 12, 4],
                &[24, 12, 4],
            ),
            layer(
                "reshape",
                LayerKind::Reshape {
                    target_shape: vec![48, 24],
                },
                &["grow"],
                &[24, 12, 4],
                &[48, 24],
            ),
        ],
    );
    let g = lower(&m);
    assert_eq!(
        ops(&g),
        [
            "input",
            "depthwise_conv2d",
            "relu6",
            "conv2d_transpose",
            "bias_add",
            "up_sampling2d",
            "reshape"
        ]
    );
    assert_eq!(
        param_names(&g),
        ["dw/depthwise_kernel", "up/kernel", "up/bias"]
    );
    assert_eq!(g.params[0].shape, [3, 3, 2, 3]);
    // Keras's transposed-conv kernel layout [kh, kw, filters, in_channels].
    assert_eq!(g.params[1].shape, [3, 3, 4, 6]);
    assert_eq!(
        g.params[1].init,
        Init::GlorotUniform {
            fan_in: 36,
            fan_out: 54
        }
    );
    match &g.nodes[1].op {
        Op::DepthwiseConv2d { attrs, .. } => {
            assert_eq!(attrs.dilation_rate, [2, 2]);
            // Dilated extent 5: total pad (6 - 1) + 5 - 6 = 4.
            assert_eq!((attrs.pads.top, attrs.pads.bottom), (2, 2));
        }
        other => panic!("expected depthwise_conv2d, got {other:?}"),
    }
    match &g.nodes[3].op {
        Op::Conv2dTranspose { attrs, .. } => {
            assert_eq!((attrs.in_channels, attrs.filters), (6, 4));
            // (6 - 1) * 2 + 3 - 12 = 1 in all: none before, one after.
            assert_eq!((attrs.pads.top, attrs.pads.bottom), (0, 1));
        }
        other => panic!("expected conv2d_transpose, got {other:?}"),
    }
    assert_eq!(
        g.nodes[5].op,
        Op::UpSampling2d {
            size: [2, 1],
            interpolation: Interpolation::Bilinear
        }
    );
    assert_eq!(g.nodes[6].shape, [48, 24]);
    // The dump names the new ops' attributes.
    let text = render_text(&g, &[]);
    assert!(text.contains(
        "depth_multiplier=3 kernel_size=3x3 strides=1x1 pads=(2, 2, 2, 2) dilation_rate=2x2"
    ));
    assert!(text.contains("size=2x1 interpolation=bilinear"));
}

#[test]
fn two_inputs_two_outputs_and_concatenate() {
    let m = model(
        vec![input("image", &[4, 4, 3]), input("mask", &[4, 4, 1])],
        &["cat", "scaled"],
        vec![
            layer(
                "cat",
                LayerKind::Concatenate { axis: 2 },
                &["image", "mask"],
                &[4, 4, 3],
                &[4, 4, 4],
            ),
            layer(
                "bn",
                LayerKind::BatchNormalization {
                    momentum: 0.9,
                    epsilon: 1e-3,
                    center: false,
                    scale: false,
                },
                &["cat"],
                &[4, 4, 4],
                &[4, 4, 4],
            ),
            layer(
                "scaled",
                LayerKind::Multiply,
                &["bn", "cat", "bn"],
                &[4, 4, 4],
                &[4, 4, 4],
            ),
        ],
    );
    let g = try_lower(&m).unwrap();
    assert_eq!(
        ops(&g),
        ["input", "input", "concat", "batch_norm", "multiply"]
    );
    assert_eq!(g.inputs, [NodeId(0), NodeId(1)]);
    assert_eq!(g.outputs, [NodeId(2), NodeId(4)]);
    assert_eq!(g.nodes[1].layer, "mask");
    assert_eq!(g.nodes[2].inputs, [NodeId(0), NodeId(1)]);
    assert_eq!(g.nodes[2].op, Op::Concat { axis: 2 });
    assert_eq!(g.nodes[4].inputs, [NodeId(3), NodeId(2), NodeId(3)]);
    // center = scale = false: only the moving statistics.
    assert_eq!(param_names(&g), ["bn/moving_mean", "bn/moving_variance"]);
    // cat is read by bn, multiply and the outputs.
    assert_eq!(g.consumer_counts()[2], 3);
    let text = render_text(&g, &[]);
    assert!(text.contains("  inputs %0, %1\n"), "{text}");
    assert!(text.contains("  outputs %2, %4\n"), "{text}");
    let json = cnnc_compiler::graph::dump::to_json(&g, &[]);
    assert_eq!(json["outputs"], serde_json::json!([2, 4]));
    assert_eq!(json["inputs"], serde_json::json!([0, 1]));
}

#[test]
fn frozen_layers_lower_to_frozen_parameters() {
    let s = [4, 4, 2];
    let mut frozen_conv = layer("conv", conv(2, 3, Activation::Relu), &["input"], &s, &s);
    frozen_conv.trainable = false;
    let mut frozen_bn = layer("bn", bn(), &["conv"], &s, &s);
    frozen_bn.trainable = false;
    let m = model(
        vec![input("input", &s)],
        &["bn_2"],
        vec![frozen_conv, frozen_bn, layer("bn_2", bn(), &["bn"], &s, &s)],
    );
    let g = lower(&m);
    let flags: Vec<(&str, bool)> = g
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.trainable))
        .collect();
    assert_eq!(
        flags,
        [
            ("conv/kernel", false),
            ("conv/bias", false),
            ("bn/gamma", false),
            ("bn/beta", false),
            ("bn/moving_mean", false),
            ("bn/moving_variance", false),
            ("bn_2/gamma", true),
            ("bn_2/beta", true),
            ("bn_2/moving_mean", false),
            ("bn_2/moving_variance", false),
        ]
    );
    let frozen: Vec<bool> = g
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::BatchNorm { frozen, .. } => Some(frozen),
            _ => None,
        })
        .collect();
    assert_eq!(frozen, [true, false]);
}

#[test]
fn layers_without_inputs_form_a_chain_and_unknown_names_are_reported() {
    let s = [3];
    let mut a = layer("a", relu(), &[], &s, &s);
    let b = layer("b", relu(), &[], &s, &s);
    a.inputs.clear();
    let g = lower(&model(vec![input("input", &s)], &[], vec![a, b]));
    assert_eq!(g.nodes[1].inputs, [NodeId(0)]);
    assert_eq!(g.nodes[2].inputs, [NodeId(1)]);
    assert_eq!(g.outputs, [NodeId(2)]);

    let bad = model(
        vec![input("input", &s)],
        &["b"],
        vec![
            layer("a", relu(), &["input"], &s, &s),
            layer("b", LayerKind::Add, &["a", "nope"], &s, &s),
        ],
    );
    assert_eq!(
        try_lower(&bad).unwrap_err(),
        LowerError::UnknownInput {
            layer: "b".into(),
            tensor: "nope".into()
        }
    );
    // `lower` does not panic: the unknown name reads the previous tensor.
    let g = lower(&bad);
    assert_eq!(g.nodes[2].inputs, [NodeId(1), NodeId(1)]);
    let missing_out = model(
        vec![input("input", &s)],
        &["zzz"],
        vec![layer("a", relu(), &["input"], &s, &s)],
    );
    assert_eq!(
        try_lower(&missing_out).unwrap_err(),
        LowerError::UnknownOutput("zzz".into())
    );
    assert_eq!(lower(&missing_out).outputs, [NodeId(1)]);
}
