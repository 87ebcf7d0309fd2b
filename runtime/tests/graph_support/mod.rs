//! Helpers for the graph (DAG) executor tests: a builder for op graphs with
//! several inputs, outputs and readers per node; parameter values that keep
//! batch norm's moving variance positive; and a whole-graph finite-difference
//! check over every trainable parameter.
#![allow(dead_code)]

use crate::kernels_support::{check_fd, rand_vec, same_pads2d, weighted_sum};
use cnnc_compiler::graph::ir::{Conv2dAttrs, Graph, Init, Node, NodeId, Op, Param, ParamId};
use cnnc_compiler::model::{
    Activation, Interpolation, Layer, LayerKind, Model, ModelInput, Pads2d, Span,
};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use ndarray::IxDyn;

/// Builds a DAG node by node; every op names its inputs explicitly.
pub struct Dag {
    pub graph: Graph,
}

impl Default for Dag {
    fn default() -> Self {
        Dag::new()
    }
}

impl Dag {
    pub fn new() -> Dag {
        Dag {
            graph: Graph {
                name: "dag".into(),
                nodes: vec![],
                input: NodeId(0),
                output: NodeId(0),
                params: vec![],
                inputs: vec![],
                outputs: vec![],
            },
        }
    }

    pub fn shape(&self, id: NodeId) -> Vec<usize> {
        self.graph.nodes[id.0].shape.clone()
    }

    /// A graph input of per-example shape `shape`.
    pub fn input(&mut self, shape: &[usize]) -> NodeId {
        let id = self.node(Op::Input, &[], shape.to_vec());
        self.graph.inputs.push(id);
        self.graph.input = self.graph.inputs[0];
        id
    }

    pub fn param(&mut self, name: &str, shape: &[usize], init: Init, trainable: bool) -> ParamId {
        self.graph.params.push(Param {
            name: name.into(),
            shape: shape.to_vec(),
            init,
            trainable,
        });
        ParamId(self.graph.params.len() - 1)
    }

    pub fn node(&mut self, op: Op, inputs: &[NodeId], shape: Vec<usize>) -> NodeId {
        let id = NodeId(self.graph.nodes.len());
        self.graph.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            shape,
            layer: format!("node{}", id.0),
            fused: vec![],
            rule: None,
        });
        id
    }

    /// Stride-1 conv with `same` (or `valid`) padding, optional bias node.
    pub fn conv(&mut self, x: NodeId, filters: usize, k: usize, same: bool, bias: bool) -> NodeId {
        let [h, w, c] = <[usize; 3]>::try_from(self.shape(x)).expect("[h, w, c]");
        let pads = if same {
            same_pads2d(h, w, [k, k], [1, 1])
        } else {
            Pads2d::default()
        };
        let idx = self.graph.params.len();
        let kernel = self.param(
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
            strides: [1, 1],
            pads,
            dilation_rate: [1, 1],
        };
        let (oh, ow) = (
            h + pads.top + pads.bottom + 1 - k,
            w + pads.left + pads.right + 1 - k,
        );
        let y = self.node(Op::Conv2d { attrs, kernel }, &[x], vec![oh, ow, filters]);
        if bias {
            let b = self.param(&format!("conv{idx}/bias"), &[filters], Init::Zeros, true);
            self.node(Op::BiasAdd { bias: b }, &[y], vec![oh, ow, filters])
        } else {
            y
        }
    }

    /// Dense layer (matmul + bias) on the last axis.
    pub fn dense(&mut self, x: NodeId, units: usize) -> NodeId {
        let shape = self.shape(x);
        let inf = *shape.last().expect("non-scalar");
        let idx = self.graph.params.len();
        let kernel = self.param(
            &format!("dense{idx}/kernel"),
            &[inf, units],
            Init::GlorotUniform {
                fan_in: inf,
                fan_out: units,
            },
            true,
        );
        let mut out = shape.clone();
        *out.last_mut().unwrap() = units;
        let y = self.node(Op::MatMul { units, kernel }, &[x], out.clone());
        let b = self.param(&format!("dense{idx}/bias"), &[units], Init::Zeros, true);
        self.node(Op::BiasAdd { bias: b }, &[y], out)
    }

    /// Batch norm over the last axis (gamma and beta unless `affine` is false).
    pub fn bn(
        &mut self,
        x: NodeId,
        momentum: f32,
        epsilon: f32,
        frozen: bool,
        affine: bool,
    ) -> NodeId {
        let shape = self.shape(x);
        let c = *shape.last().expect("non-scalar");
        let idx = self.graph.params.len();
        let (gamma, beta) = if affine {
            (
                Some(self.param(&format!("bn{idx}/gamma"), &[c], Init::Ones, !frozen)),
                Some(self.param(&format!("bn{idx}/beta"), &[c], Init::Zeros, !frozen)),
            )
        } else {
            (None, None)
        };
        let moving_mean = self.param(&format!("bn{idx}/moving_mean"), &[c], Init::Zeros, false);
        let moving_variance =
            self.param(&format!("bn{idx}/moving_variance"), &[c], Init::Ones, false);
        self.node(
            Op::BatchNorm {
                epsilon,
                momentum,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                frozen,
            },
            &[x],
            shape,
        )
    }

    pub fn act(&mut self, x: NodeId, activation: Activation) -> NodeId {
        let s = self.shape(x);
        self.node(Op::Activation { activation }, &[x], s)
    }

    pub fn add(&mut self, xs: &[NodeId]) -> NodeId {
        let s = self.shape(xs[0]);
        self.node(Op::Add, xs, s)
    }

    pub fn multiply(&mut self, xs: &[NodeId]) -> NodeId {
        let s = self.shape(xs[0]);
        self.node(Op::Multiply, xs, s)
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> NodeId {
        let mut s = self.shape(xs[0]);
        s[axis] = xs.iter().map(|x| self.shape(*x)[axis]).sum();
        self.node(Op::Concat { axis }, xs, s)
    }

    pub fn upsample(
        &mut self,
        x: NodeId,
        size: [usize; 2],
        interpolation: Interpolation,
    ) -> NodeId {
        let [h, w, c] = <[usize; 3]>::try_from(self.shape(x)).expect("[h, w, c]");
        self.node(
            Op::UpSampling2d {
                size,
                interpolation,
            },
            &[x],
            vec![h * size[0], w * size[1], c],
        )
    }

    pub fn max_pool2(&mut self, x: NodeId) -> NodeId {
        let [h, w, c] = <[usize; 3]>::try_from(self.shape(x)).expect("[h, w, c]");
        let attrs = cnnc_compiler::graph::ir::Pool2dAttrs {
            pool_size: [2, 2],
            strides: [2, 2],
            pads: Pads2d::default(),
        };
        self.node(Op::MaxPool2d { attrs }, &[x], vec![h / 2, w / 2, c])
    }

    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> NodeId {
        self.node(Op::Reshape, &[x], shape.to_vec())
    }

    pub fn flatten(&mut self, x: NodeId) -> NodeId {
        let n = self.shape(x).iter().product();
        self.node(Op::Flatten, &[x], vec![n])
    }

    /// Sets the graph outputs (in order).
    pub fn outputs(&mut self, ids: &[NodeId]) {
        self.graph.outputs = ids.to_vec();
        self.graph.output = ids[0];
    }

    pub fn build(self) -> Graph {
        self.graph
    }
}

/// `input [8, 8, 3]` -> `layers` x (conv 3x3 `same`, 3 filters, no bias ->
/// relu), the last relu the output: nodes 1 ..= 2 * layers of 192 values
/// each.
pub fn conv_relu_chain(layers: usize) -> Graph {
    let mut d = Dag::new();
    let mut x = d.input(&[8, 8, 3]);
    for _ in 0..layers {
        let y = d.conv(x, 3, 3, true, false);
        x = d.act(y, Activation::Relu);
    }
    d.outputs(&[x]);
    d.build()
}

/// `ParamStore::init` values, then: trainable vectors (biases, gamma, beta)
/// random in `[-0.5, 0.5)` (gamma around 1), moving means random and moving
/// variances in `[0.5, 1.5)`, so every code path sees non-trivial values.
pub fn params_for(graph: &Graph, seed: u64) -> ParamStore {
    let mut p = ParamStore::init(graph, seed);
    for (i, (v, prm)) in p.values.iter_mut().zip(&graph.params).enumerate() {
        if v.ndim() != 1 {
            continue;
        }
        let r = rand_vec(v.len(), 1000 + i as u64);
        let base = if prm.name.ends_with("gamma") {
            1.0
        } else {
            0.0
        };
        let shift = if prm.name.ends_with("moving_variance") {
            1.0
        } else {
            base
        };
        v.iter_mut().zip(r).for_each(|(a, b)| *a = shift + 0.5 * b);
    }
    p
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_shape_vec(IxDyn(shape), rand_vec(n, seed)).unwrap()
}

pub fn slice(t: &Tensor) -> &[f32] {
    t.as_slice().unwrap()
}

/// Checks d loss / d every trainable parameter of
/// `L = Σ_k Σ w_k ⊙ output_k(inputs)` against central differences (each
/// probe runs a fresh forward in `mode`), and that non-trainable parameters
/// get zero gradients. Returns the analytic gradients.
#[allow(clippy::too_many_arguments)]
pub fn check_dag_grads(
    graph: &Graph,
    params: &ParamStore,
    inputs: &[Tensor],
    mode: Mode,
    eps: f32,
    samples: usize,
    rtol: f64,
    atol: f64,
) -> Vec<Tensor> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let mut ex = Executor::new(graph.clone());
    ex.validate().expect("valid graph");
    let ys = ex.try_forward_multi(params, &refs, mode).expect("forward");
    let ws: Vec<Tensor> = ys
        .iter()
        .enumerate()
        .map(|(k, y)| tensor(y.shape(), 77 + k as u64))
        .collect();
    let wrefs: Vec<&Tensor> = ws.iter().collect();
    let grads = ex.try_backward_multi(params, &wrefs).expect("backward");
    assert_eq!(grads.len(), params.values.len());
    assert!(
        grads.iter().any(|g| g.iter().any(|v| *v != 0.0)),
        "every gradient is zero"
    );
    let loss = |probe: &mut Executor, p: &ParamStore| -> f64 {
        let ys = probe.try_forward_multi(p, &refs, mode).expect("forward");
        ys.iter()
            .zip(&ws)
            .map(|(y, w)| weighted_sum(slice(y), slice(w)))
            .sum()
    };
    for (pi, g) in grads.iter().enumerate() {
        assert_eq!(g.shape(), params.values[pi].shape());
        let prm = &graph.params[pi];
        if !prm.trainable {
            assert!(
                g.iter().all(|v| *v == 0.0),
                "{}: a frozen parameter's gradient must be zero",
                prm.name
            );
            continue;
        }
        let mut probe = Executor::new(graph.clone());
        check_fd(
            &prm.name,
            slice(&params.values[pi]),
            slice(g),
            |v| {
                let mut p = params.clone();
                p.values[pi].as_slice_mut().unwrap().copy_from_slice(v);
                loss(&mut probe, &p)
            },
            eps,
            samples,
            rtol,
            atol,
        );
    }
    grads
}

/// A checked layer reading `inputs`, with `pads: None` (lowering then
/// applies TensorFlow's padding rule itself).
pub fn layer(
    name: &str,
    kind: LayerKind,
    inputs: &[&str],
    input_shape: &[usize],
    output_shape: &[usize],
    trainable: bool,
) -> Layer {
    Layer {
        name: name.into(),
        kind,
        span: Span::default(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        input_shape: cnnc_compiler::model::dims(input_shape),
        output_shape: cnnc_compiler::model::dims(output_shape),
        pads: None,
        params: 0,
        trainable_params: 0,
        trainable,
        flops: 0,
    }
}

/// A checked model with one input `input` of `input_shape`.
pub fn model(input_shape: &[usize], outputs: &[&str], layers: Vec<Layer>) -> Model {
    Model {
        name: "m".into(),
        input_shape: cnnc_compiler::model::dims(input_shape),
        inputs: vec![ModelInput {
            name: "input".into(),
            shape: cnnc_compiler::model::dims(input_shape),
            span: Span::default(),
        }],
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        layers,
    }
}
