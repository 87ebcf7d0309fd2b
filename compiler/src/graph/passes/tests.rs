//! Tests of the passes: which ops are fused or removed, and where a rewrite must not apply.

use super::*;
use crate::graph::ir::{Conv2dAttrs, Graph, Init, Node, NodeId, Op, Param, ParamId};
use crate::graph::lower::lower;
use crate::model::{Activation, Layer, LayerKind, Model, Padding, Pads2d, Span};

fn layer(name: &str, kind: LayerKind, input: &[usize], output: &[usize]) -> Layer {
    Layer {
        name: name.into(),
        kind,
        span: Span::default(),
        inputs: vec![],
        input_shape: crate::model::dims(input),
        output_shape: crate::model::dims(output),
        pads: Some(Pads2d::default()),
        params: 0,
        trainable_params: 0,
        trainable: true,
        flops: 0,
    }
}

fn conv(filters: usize, activation: Activation) -> LayerKind {
    LayerKind::Conv2d {
        filters,
        kernel_size: [3, 3],
        strides: [1, 1],
        padding: Padding::Same,
        dilation_rate: [1, 1],
        activation,
        use_bias: true,
    }
}

fn dense(units: usize, activation: Activation) -> LayerKind {
    LayerKind::Dense {
        units,
        activation,
        use_bias: true,
    }
}

/// conv(relu) -> flatten -> dense(relu) -> dropout -> dense(softmax), by hand.
/// A chain model: each layer reads the one before it.
fn chain(name: &str, input_shape: &[usize], mut layers: Vec<Layer>) -> Model {
    let mut prev = "input".to_string();
    for l in &mut layers {
        l.inputs = vec![prev.clone()];
        prev = l.name.clone();
    }
    Model {
        name: name.into(),
        input_shape: crate::model::dims(input_shape),
        inputs: vec![crate::model::ModelInput {
            name: "input".into(),
            shape: crate::model::dims(input_shape),
            span: Span::default(),
        }],
        outputs: vec![prev],
        layers,
    }
}

fn small_model() -> Model {
    chain(
        "small",
        &[4, 4, 1],
        vec![
            layer("conv2d", conv(2, Activation::Relu), &[4, 4, 1], &[4, 4, 2]),
            layer("flatten", LayerKind::Flatten, &[4, 4, 2], &[32]),
            layer("dense", dense(8, Activation::Relu), &[32], &[8]),
            layer("dropout", LayerKind::Dropout { rate: 0.5 }, &[8], &[8]),
            layer("dense_1", dense(3, Activation::Softmax), &[8], &[3]),
        ],
    )
}

fn op_names(graph: &Graph) -> Vec<&'static str> {
    graph.nodes.iter().map(|n| n.op.name()).collect()
}

#[test]
fn lowering_emits_primitive_ops_in_keras_order() {
    let graph = lower(&small_model());
    assert_eq!(
        op_names(&graph),
        [
            "input", "conv2d", "bias_add", "relu", "flatten", "matmul", "bias_add", "relu",
            "dropout", "matmul", "bias_add", "softmax"
        ]
    );
    let names: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv2d/kernel",
            "conv2d/bias",
            "dense/kernel",
            "dense/bias",
            "dense_1/kernel",
            "dense_1/bias"
        ]
    );
    assert_eq!(graph.params[0].shape, [3, 3, 1, 2]);
    assert_eq!(
        graph.params[0].init,
        Init::GlorotUniform {
            fan_in: 9,
            fan_out: 18
        }
    );
    assert_eq!(graph.params[2].shape, [32, 8]);
    assert_eq!(graph.params[1].init, Init::Zeros);
}

#[test]
fn inference_pipeline_fuses_and_drops_dropout() {
    let (graph, rewrites) = optimize(lower(&small_model()), Target::Inference);
    assert_eq!(
        op_names(&graph),
        [
            "input",
            "fused_conv2d",
            "flatten",
            "fused_matmul",
            "fused_matmul",
            "softmax"
        ]
    );
    assert_eq!(graph.nodes[1].fused, ["conv2d", "bias_add", "relu"]);
    assert_eq!(graph.nodes[3].fused, ["matmul", "bias_add", "relu"]);
    // softmax is not element-wise: the last dense fuses only its bias.
    assert_eq!(graph.nodes[4].fused, ["matmul", "bias_add"]);
    assert!(matches!(
        graph.nodes[4].op,
        Op::FusedMatMul {
            activation: Activation::Linear,
            bias: Some(_),
            ..
        }
    ));
    assert_eq!(
        graph.nodes[1].rule.as_deref(),
        Some("ConvBiasActivationFusion")
    );
    assert_eq!(graph.output, NodeId(5));
    // Inputs were renumbered consistently.
    for (i, node) in graph.nodes.iter().enumerate().skip(1) {
        assert_eq!(node.inputs, [NodeId(i - 1)]);
    }
    let rules: Vec<&str> = rewrites.iter().map(|r| r.rule).collect();
    assert_eq!(
        rules,
        [
            "DropoutElimination",
            "ConvBiasActivationFusion",
            "ConvBiasActivationFusion",
            "ConvBiasActivationFusion"
        ]
    );
}

#[test]
fn training_pipeline_keeps_dropout() {
    let (graph, _) = optimize(lower(&small_model()), Target::Training);
    assert_eq!(
        op_names(&graph),
        [
            "input",
            "fused_conv2d",
            "flatten",
            "fused_matmul",
            "dropout",
            "fused_matmul",
            "softmax"
        ]
    );
}

fn node(op: Op, inputs: &[usize], shape: &[usize]) -> Node {
    Node {
        op,
        inputs: inputs.iter().map(|&i| NodeId(i)).collect(),
        shape: shape.to_vec(),
        layer: "l".into(),
        fused: vec![],
        rule: None,
    }
}

/// input -> conv2d -> bias_add -> relu, plus whatever `extra` adds.
fn conv_chain(extra: Vec<Node>, output: usize) -> Graph {
    let attrs = Conv2dAttrs {
        in_channels: 1,
        filters: 2,
        kernel_size: [3, 3],
        strides: [1, 1],
        pads: Pads2d {
            top: 1,
            bottom: 1,
            left: 1,
            right: 1,
        },
        dilation_rate: [1, 1],
    };
    let mut nodes = vec![
        node(Op::Input, &[], &[4, 4, 1]),
        node(
            Op::Conv2d {
                attrs,
                kernel: ParamId(0),
            },
            &[0],
            &[4, 4, 2],
        ),
        node(Op::BiasAdd { bias: ParamId(1) }, &[1], &[4, 4, 2]),
        node(
            Op::Activation {
                activation: Activation::Relu,
            },
            &[2],
            &[4, 4, 2],
        ),
    ];
    nodes.extend(extra);
    Graph {
        name: "g".into(),
        nodes,
        input: NodeId(0),
        output: NodeId(output),
        inputs: vec![NodeId(0)],
        outputs: vec![NodeId(output)],
        params: vec![
            Param {
                name: "k".into(),
                shape: vec![3, 3, 1, 2],
                init: Init::Zeros,
                trainable: true,
            },
            Param {
                name: "b".into(),
                shape: vec![2],
                init: Init::Zeros,
                trainable: true,
            },
        ],
    }
}

#[test]
fn no_activation_fusion_when_pre_activation_has_another_reader() {
    // node 4 also reads the bias_add output (the pre-activation value).
    let extra = vec![node(
        Op::Activation {
            activation: Activation::Sigmoid,
        },
        &[2],
        &[4, 4, 2],
    )];
    let (graph, _) = ConvBiasActivationFusion.run(conv_chain(extra, 3));
    assert_eq!(
        op_names(&graph),
        ["input", "fused_conv2d", "relu", "sigmoid"]
    );
    assert_eq!(graph.nodes[1].fused, ["conv2d", "bias_add"]);
    assert_eq!(graph.nodes[2].inputs, [NodeId(1)]);
    assert_eq!(graph.nodes[3].inputs, [NodeId(1)]);
}

#[test]
fn no_fusion_when_conv_output_has_another_reader() {
    let extra = vec![node(
        Op::Activation {
            activation: Activation::Tanh,
        },
        &[1],
        &[4, 4, 2],
    )];
    let (graph, rewrites) = ConvBiasActivationFusion.run(conv_chain(extra, 3));
    assert_eq!(
        op_names(&graph),
        ["input", "conv2d", "bias_add", "relu", "tanh"]
    );
    assert!(rewrites.is_empty());
}

#[test]
fn no_fusion_past_the_graph_output() {
    // The bias_add value is the graph output: relu reads it too, so only conv + bias fuse.
    let (graph, _) = ConvBiasActivationFusion.run(conv_chain(vec![], 2));
    assert_eq!(op_names(&graph), ["input", "fused_conv2d", "relu"]);
    assert_eq!(graph.output, NodeId(1));
}

#[test]
fn dropout_elimination_rewires_readers() {
    let graph = lower(&small_model());
    let (graph, rewrites) = DropoutElimination.run(graph);
    assert!(!op_names(&graph).contains(&"dropout"));
    assert_eq!(rewrites.len(), 1);
    // The matmul after the dropout now reads the relu before it.
    let matmul = graph
        .nodes
        .iter()
        .rposition(|n| n.op.name() == "matmul")
        .unwrap();
    assert_eq!(graph.node(graph.nodes[matmul].inputs[0]).op.name(), "relu");
}
