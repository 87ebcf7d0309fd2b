//! The inference passes on hand-built graphs: what each rewrite changes, and
//! every place it must not apply. (Numerical equality of folded and
//! unfolded graphs is tested in the runtime, which computes folded values.)

use cnnc_compiler::graph::ir::{
    BatchNormStats, Conv2dAttrs, Conv2dTransposeAttrs, DepthwiseConv2dAttrs, Fold, Init,
};
use cnnc_compiler::graph::passes::{
    optimize, BatchNormFolding, DeadOpElimination, IdentityElimination, Pass, ResidualAddFusion,
    Target,
};
use cnnc_compiler::graph::{Graph, Node, NodeId, Op, Param, ParamId};
use cnnc_compiler::model::{Activation, Pads2d};

/// A graph under construction: nodes in topological order, with parameters.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    params: Vec<Param>,
}

impl Builder {
    fn param(&mut self, name: &str, shape: &[usize]) -> ParamId {
        self.params.push(Param {
            name: name.into(),
            shape: shape.to_vec(),
            init: Init::Zeros,
            trainable: true,
        });
        ParamId(self.params.len() - 1)
    }

    fn push(&mut self, layer: &str, op: Op, inputs: &[usize], shape: &[usize]) -> usize {
        self.nodes.push(Node {
            op,
            inputs: inputs.iter().map(|&i| NodeId(i)).collect(),
            shape: shape.to_vec(),
            layer: layer.into(),
            fused: vec![],
            rule: None,
        });
        self.nodes.len() - 1
    }

    fn input(&mut self, shape: &[usize]) -> usize {
        self.push("input", Op::Input, &[], shape)
    }

    /// A 3x3 same conv with `filters` outputs from `in_channels`.
    fn conv(&mut self, name: &str, x: usize, in_channels: usize, filters: usize) -> usize {
        let kernel = self.param(&format!("{name}/kernel"), &[3, 3, in_channels, filters]);
        let shape = spatial(&self.nodes[x].shape, filters);
        self.push(
            name,
            Op::Conv2d {
                attrs: conv_attrs(in_channels, filters),
                kernel,
            },
            &[x],
            &shape,
        )
    }

    fn bias(&mut self, name: &str, x: usize) -> usize {
        let c = *self.nodes[x].shape.last().unwrap();
        let bias = self.param(&format!("{name}/bias"), &[c]);
        let shape = self.nodes[x].shape.clone();
        self.push(name, Op::BiasAdd { bias }, &[x], &shape)
    }

    fn bn(&mut self, name: &str, x: usize) -> usize {
        let c = *self.nodes[x].shape.last().unwrap();
        let gamma = Some(self.param(&format!("{name}/gamma"), &[c]));
        let beta = Some(self.param(&format!("{name}/beta"), &[c]));
        let moving_mean = self.param(&format!("{name}/moving_mean"), &[c]);
        let moving_variance = self.param(&format!("{name}/moving_variance"), &[c]);
        let shape = self.nodes[x].shape.clone();
        self.push(
            name,
            Op::BatchNorm {
                epsilon: 1e-3,
                momentum: 0.99,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                frozen: false,
            },
            &[x],
            &shape,
        )
    }

    fn act(&mut self, name: &str, activation: Activation, x: usize) -> usize {
        let shape = self.nodes[x].shape.clone();
        self.push(name, Op::Activation { activation }, &[x], &shape)
    }

    fn add(&mut self, name: &str, xs: &[usize]) -> usize {
        let shape = self.nodes[xs[0]].shape.clone();
        self.push(name, Op::Add, xs, &shape)
    }

    fn graph(self, outputs: &[usize]) -> Graph {
        let outputs: Vec<NodeId> = outputs.iter().map(|&o| NodeId(o)).collect();
        Graph {
            name: "g".into(),
            nodes: self.nodes,
            input: NodeId(0),
            output: outputs[0],
            params: self.params,
            inputs: vec![NodeId(0)],
            outputs,
        }
    }
}

fn spatial(shape: &[usize], channels: usize) -> Vec<usize> {
    vec![shape[0], shape[1], channels]
}

fn same_pads() -> Pads2d {
    Pads2d {
        top: 1,
        bottom: 1,
        left: 1,
        right: 1,
    }
}

fn conv_attrs(in_channels: usize, filters: usize) -> Conv2dAttrs {
    Conv2dAttrs {
        in_channels,
        filters,
        kernel_size: [3, 3],
        strides: [1, 1],
        pads: same_pads(),
        dilation_rate: [1, 1],
    }
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.name()).collect()
}

fn param_id(g: &Graph, name: &str) -> ParamId {
    ParamId(g.params.iter().position(|p| p.name == name).unwrap())
}

fn stats(g: &Graph, bn: &str) -> BatchNormStats {
    BatchNormStats {
        gamma: Some(param_id(g, &format!("{bn}/gamma"))),
        beta: Some(param_id(g, &format!("{bn}/beta"))),
        moving_mean: param_id(g, &format!("{bn}/moving_mean")),
        moving_variance: param_id(g, &format!("{bn}/moving_variance")),
        epsilon: 1e-3,
    }
}

/// input [4, 4, 2] -> conv (3 filters) -> bias -> bn -> relu.
fn conv_bias_bn_relu() -> Graph {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 3);
    let y = b.bias("conv", c);
    let n = b.bn("bn", y);
    let r = b.act("relu", Activation::Relu, n);
    b.graph(&[r])
}

#[test]
fn batch_norm_folds_into_conv_kernel_and_bias() {
    let g = conv_bias_bn_relu();
    let before = g.params.len();
    let (g, rewrites) = BatchNormFolding.run(g);
    assert_eq!(ops(&g), ["input", "conv2d", "bias_add", "relu"]);
    assert_eq!(g.params.len(), before + 2);
    let st = stats(&g, "bn");
    let Op::Conv2d { kernel, .. } = g.nodes[1].op else {
        panic!("expected conv2d, got {:?}", g.nodes[1].op)
    };
    let folded = &g.params[kernel.0];
    assert_eq!(folded.name, "conv/kernel*bn");
    assert_eq!(folded.shape, [3, 3, 2, 3]);
    assert!(!folded.trainable);
    assert_eq!(
        folded.init,
        Init::Folded {
            fold: Fold::BatchNormKernel {
                kernel: param_id(&g, "conv/kernel"),
                stats: st
            }
        }
    );
    let Op::BiasAdd { bias } = g.nodes[2].op else {
        panic!("expected bias_add")
    };
    assert_eq!(g.params[bias.0].name, "conv/bias*bn");
    assert_eq!(g.params[bias.0].shape, [3]);
    assert_eq!(
        g.params[bias.0].init,
        Init::Folded {
            fold: Fold::BatchNormBias {
                bias: Some(param_id(&g, "conv/bias")),
                stats: st
            }
        }
    );
    // Folded parameters come after everything they read.
    for p in &g.params {
        if let Init::Folded { fold } = p.init {
            let own = param_id(&g, &p.name);
            assert!(fold.sources().iter().all(|s| s.0 < own.0), "{}", p.name);
        }
    }
    assert_eq!(g.nodes[3].inputs, [NodeId(2)]);
    assert_eq!(g.output, NodeId(3));
    assert_eq!(rewrites.len(), 1);
    assert_eq!(rewrites[0].rule, "BatchNormFolding");
    assert!(rewrites[0].description.contains("`bn`"));

    // The whole inference pipeline: one fused op is left.
    let (g, _) = optimize(conv_bias_bn_relu(), Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d"]);
    assert_eq!(g.nodes[1].fused, ["conv2d", "bias_add", "relu"]);
}

#[test]
fn batch_norm_folds_into_a_conv_without_bias_and_into_depthwise_and_dense() {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let n = b.bn("bn", c);
    let dk = b.param("dw/depthwise_kernel", &[3, 3, 2, 2]);
    let d = b.push(
        "dw",
        Op::DepthwiseConv2d {
            attrs: DepthwiseConv2dAttrs {
                in_channels: 2,
                depth_multiplier: 2,
                kernel_size: [3, 3],
                strides: [1, 1],
                pads: same_pads(),
                dilation_rate: [1, 1],
            },
            kernel: dk,
        },
        &[n],
        &[4, 4, 4],
    );
    let n2 = b.bn("bn2", d);
    let f = b.push("flatten", Op::Flatten, &[n2], &[64]);
    let mk = b.param("dense/kernel", &[64, 5]);
    let m = b.push(
        "dense",
        Op::MatMul {
            units: 5,
            kernel: mk,
        },
        &[f],
        &[5],
    );
    let n3 = b.bn("bn3", m);
    let g = b.graph(&[n3]);
    let (g, rewrites) = BatchNormFolding.run(g);
    assert_eq!(
        ops(&g),
        [
            "input",
            "conv2d",
            "bias_add",
            "depthwise_conv2d",
            "bias_add",
            "flatten",
            "matmul",
            "bias_add"
        ]
    );
    assert_eq!(rewrites.len(), 3);
    // No bias before the batch norm: the folded bias is the shift alone.
    let Op::BiasAdd { bias } = g.nodes[2].op else {
        panic!()
    };
    assert_eq!(g.params[bias.0].name, "bn/shift");
    assert!(matches!(
        g.params[bias.0].init,
        Init::Folded {
            fold: Fold::BatchNormBias { bias: None, .. }
        }
    ));
    let Op::DepthwiseConv2d { kernel, .. } = g.nodes[3].op else {
        panic!()
    };
    assert_eq!(g.params[kernel.0].shape, [3, 3, 2, 2]);
    assert_eq!(g.params[kernel.0].name, "dw/depthwise_kernel*bn2");
    // The depthwise output has 4 channels: so has its folded bias.
    let Op::BiasAdd { bias } = g.nodes[4].op else {
        panic!()
    };
    assert_eq!(g.params[bias.0].shape, [4]);
    let Op::MatMul { kernel, .. } = g.nodes[6].op else {
        panic!()
    };
    assert_eq!(g.params[kernel.0].name, "dense/kernel*bn3");
    assert_eq!(g.output, NodeId(7));
}

#[test]
fn batch_norm_is_not_folded_across_an_activation_or_a_shared_value() {
    // conv -> bias -> relu -> bn: the relu sits between.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let y = b.bias("conv", c);
    let r = b.act("relu", Activation::Relu, y);
    let n = b.bn("bn", r);
    let (g, rewrites) = BatchNormFolding.run(b.graph(&[n]));
    assert!(rewrites.is_empty());
    assert_eq!(
        ops(&g),
        ["input", "conv2d", "bias_add", "relu", "batch_norm"]
    );

    // The conv's output is also read by another op.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let n = b.bn("bn", c);
    let s = b.add("sum", &[n, c]);
    let (_, rewrites) = BatchNormFolding.run(b.graph(&[s]));
    assert!(rewrites.is_empty());

    // The pre-normalization value (after the bias) is a graph output.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let y = b.bias("conv", c);
    let n = b.bn("bn", y);
    let (g, rewrites) = BatchNormFolding.run(b.graph(&[n, y]));
    assert!(rewrites.is_empty());
    assert_eq!(g.params.len(), 6);

    // A batch norm after a transposed convolution is left alone.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let k = b.param("up/kernel", &[3, 3, 2, 2]);
    let t = b.push(
        "up",
        Op::Conv2dTranspose {
            attrs: Conv2dTransposeAttrs {
                in_channels: 2,
                filters: 2,
                kernel_size: [3, 3],
                strides: [1, 1],
                pads: same_pads(),
                dilation_rate: [1, 1],
            },
            kernel: k,
        },
        &[x],
        &[4, 4, 2],
    );
    let n = b.bn("bn", t);
    let (_, rewrites) = BatchNormFolding.run(b.graph(&[n]));
    assert!(rewrites.is_empty());
}

#[test]
fn training_graphs_keep_batch_norm_and_add() {
    let (g, rewrites) = optimize(conv_bias_bn_relu(), Target::Training);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "batch_norm", "relu"]);
    assert!(rewrites.iter().all(|r| r.rule != "BatchNormFolding"));
    assert!(g
        .params
        .iter()
        .all(|p| !matches!(p.init, Init::Folded { .. })));
}

/// input -> conv_a (relu) = r; conv_b(r) -> bias -> add(·, r) -> `after`.
fn residual_block(after: Option<Activation>) -> (Graph, usize) {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let a = b.conv("conv_a", x, 2, 2);
    let ab = b.bias("conv_a", a);
    let r = b.act("relu_a", Activation::Relu, ab);
    let c = b.conv("conv_b", r, 2, 2);
    let cb = b.bias("conv_b", c);
    let s = b.add("add", &[cb, r]);
    let out = match after {
        Some(act) => b.act("out", act, s),
        None => s,
    };
    (b.graph(&[out]), r)
}

#[test]
fn residual_add_and_relu_fuse_into_the_conv() {
    let (g, _) = residual_block(Some(Activation::Relu));
    let (g, rewrites) = optimize(g, Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "fused_conv2d"]);
    assert_eq!(g.nodes[2].fused, ["conv2d", "bias_add", "add", "relu"]);
    // Inputs: the conv's own input, then the residual.
    assert_eq!(g.nodes[2].inputs, [NodeId(1), NodeId(1)]);
    match g.nodes[2].op {
        Op::FusedConv2d {
            residual,
            activation,
            bias,
            ..
        } => {
            assert!(residual);
            assert_eq!(activation, Activation::Relu);
            assert_eq!(bias, Some(param_id(&g, "conv_b/bias")));
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(g.output, NodeId(2));
    let last = rewrites.last().unwrap();
    assert_eq!(last.rule, "ResidualAddFusion");
    assert_eq!(
        last.description,
        "fused add `add` and its relu into the epilogue of `conv_b`"
    );
}

#[test]
fn residual_fusion_leaves_softmax_and_graph_outputs_alone() {
    // Softmax after the add is not element-wise: the add fuses, softmax stays.
    let (g, _) = residual_block(Some(Activation::Softmax));
    let (g, _) = optimize(g, Target::Inference);
    assert_eq!(
        ops(&g),
        ["input", "fused_conv2d", "fused_conv2d", "softmax"]
    );
    assert!(matches!(
        g.nodes[2].op,
        Op::FusedConv2d {
            residual: true,
            activation: Activation::Linear,
            ..
        }
    ));

    // The add's value is itself a graph output: its relu is not absorbed.
    let (mut g, _) = residual_block(Some(Activation::Relu));
    let add = g.nodes.iter().position(|n| n.op == Op::Add).unwrap();
    g.outputs.push(NodeId(add));
    let (g, _) = optimize(g, Target::Inference);
    assert_eq!(ops(&g), ["input", "fused_conv2d", "fused_conv2d", "relu"]);
    assert_eq!(g.outputs, [NodeId(3), NodeId(2)]);
}

#[test]
fn residual_fusion_needs_a_linear_conv_read_only_by_a_two_input_add() {
    // conv with its own relu before the add: the sum must come after it.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let r = b.act("relu", Activation::Relu, c);
    let s = b.add("add", &[r, x]);
    let (g, rewrites) = optimize(b.graph(&[s]), Target::Inference);
    assert!(rewrites.iter().all(|r| r.rule != "ResidualAddFusion"));
    assert_eq!(ops(&g), ["input", "fused_conv2d", "add"]);

    // The conv is read by the add and by another op.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let s = b.add("add", &[c, x]);
    let m = b.push("mul", Op::Multiply, &[s, c], &[4, 4, 2]);
    let (_, rewrites) = ResidualAddFusion.run(b.graph(&[m]));
    assert!(rewrites.is_empty());

    // An add of three values.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let s = b.add("add", &[c, x, x]);
    let (_, rewrites) = ResidualAddFusion.run(b.graph(&[s]));
    assert!(rewrites.is_empty());

    // Without the rewrite the graph runs the add: the conv stays a conv.
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let s = b.add("add", &[c, x]);
    let (g, rewrites) = ResidualAddFusion.run(b.graph(&[s]));
    assert_eq!(rewrites.len(), 1);
    assert_eq!(ops(&g), ["input", "fused_conv2d"]);
    assert_eq!(g.nodes[1].fused, ["conv2d", "add"]);
    assert_eq!(g.nodes[1].inputs, [NodeId(0), NodeId(0)]);
}

#[test]
fn dead_ops_are_removed_but_inputs_are_kept() {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let second = b.push("aux", Op::Input, &[], &[4, 4, 2]);
    let c = b.conv("conv", x, 2, 2);
    let _unused = b.act("side", Activation::Tanh, c);
    let r = b.act("relu", Activation::Relu, c);
    let mut g = b.graph(&[r]);
    g.inputs = vec![NodeId(x), NodeId(second)];
    let (g, rewrites) = DeadOpElimination.run(g);
    assert_eq!(ops(&g), ["input", "input", "conv2d", "relu"]);
    assert_eq!(g.inputs, [NodeId(0), NodeId(1)]);
    assert_eq!(g.outputs, [NodeId(3)]);
    assert_eq!(g.nodes[3].inputs, [NodeId(2)]);
    assert_eq!(rewrites.len(), 1);
    assert_eq!(
        rewrites[0].description,
        "removed tanh of `side`: no output depends on it"
    );
}

#[test]
fn identity_ops_are_removed_and_readers_rewired() {
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let l = b.act("linear", Activation::Linear, x);
    let c = b.conv("conv", l, 2, 2);
    let p = b.push(
        "pad",
        Op::ZeroPadding2d {
            pads: Pads2d::default(),
        },
        &[c],
        &[4, 4, 2],
    );
    let g1 = b.push("gap", Op::GlobalAvgPool2d, &[p], &[2]);
    let f = b.push("flatten", Op::Flatten, &[g1], &[2]);
    let d = b.push("drop", Op::Dropout { rate: 0.0 }, &[f], &[2]);
    let (g, rewrites) = IdentityElimination.run(b.graph(&[d]));
    assert_eq!(ops(&g), ["input", "conv2d", "global_avg_pool2d"]);
    assert_eq!(g.nodes[1].inputs, [NodeId(0)]);
    assert_eq!(g.nodes[2].inputs, [NodeId(1)]);
    assert_eq!(g.outputs, [NodeId(2)]);
    assert_eq!(rewrites.len(), 4);

    // A real flatten ([4, 4, 2] -> [32]) and a non-zero dropout stay (in training).
    let mut b = Builder::default();
    let x = b.input(&[4, 4, 2]);
    let f = b.push("flatten", Op::Flatten, &[x], &[32]);
    let d = b.push("drop", Op::Dropout { rate: 0.5 }, &[f], &[32]);
    let (g, rewrites) = IdentityElimination.run(b.graph(&[d]));
    assert!(rewrites.is_empty());
    assert_eq!(ops(&g), ["input", "flatten", "dropout"]);

    // An identity that is the graph output and reads the graph input stays:
    // an output is never the input itself.
    let mut b = Builder::default();
    let x = b.input(&[4]);
    let l = b.act("linear", Activation::Linear, x);
    let (g, rewrites) = IdentityElimination.run(b.graph(&[l]));
    assert!(rewrites.is_empty());
    assert_eq!(g.outputs, [NodeId(1)]);
}

#[test]
fn every_pass_explains_itself() {
    for target in [Target::Training, Target::Inference] {
        for pass in cnnc_compiler::graph::passes::pipeline(target) {
            assert!(pass.explain().len() > 40, "{}", pass.name());
        }
    }
}

/// The optimized inference graph of every zoo model and example: the memory
/// plan replays without overwriting a live value, and it is no larger than
/// one buffer per op nor smaller than the values alive at once.
#[test]
fn memory_plans_of_the_zoo_are_valid() {
    use cnnc_compiler::graph::{lower, memory};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for spec in [
        "specs/zoo/resnet50.cnn",
        "specs/zoo/xception.cnn",
        "specs/zoo/mobilenet_v2.cnn",
        "specs/zoo/vgg16.cnn",
        "specs/examples/fcn.cnn",
        "specs/examples/fashion_resnet.cnn",
        "specs/examples/classification_localization.cnn",
        "specs/fashion_mnist.cnn",
    ] {
        let path = root.join(spec);
        let source = std::fs::read_to_string(&path).unwrap();
        let (_, model) = cnnc_compiler::check_file(&path, &source);
        let graph = lower::lower(&model.unwrap_or_else(|_| panic!("{spec} checks")));
        let (graph, _) = optimize(graph, Target::Inference);
        let plan = memory::plan_inference(&graph);
        plan.validate(&graph)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(plan.peak_live_len <= plan.planned_len, "{spec}");
        assert!(plan.planned_len < plan.unplanned_len, "{spec}");
        // Every computed op's output fits its slot.
        for (node, place) in graph.nodes.iter().zip(&plan.placement) {
            if let Some(slot) = place.slot() {
                assert!(plan.slot_len[slot] >= node.shape.iter().product::<usize>());
            }
        }
    }
}
