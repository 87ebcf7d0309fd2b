//! Runs an op graph forward and backward on batches of NHWC f32 tensors.
//!
//! The executor keeps one activation buffer per node (reused from step to step;
//! `Flatten` aliases its input's buffer), the max-pool argmax indices and
//! dropout masks of the last forward pass, and one gradient buffer per node for
//! the backward pass. Buffers are resized only when the batch size changes.
//!
//! Gradient conventions:
//! - in [`Mode::Train`], a graph whose output node is a softmax (a `Softmax`
//!   op, an `Activation { softmax }`, or a fused conv/matmul with a softmax
//!   activation) returns *logits* (the softmax is skipped: the loss applies
//!   log-softmax itself), and [`Executor::backward`] takes d loss / d logits;
//! - gradients of frozen parameters (`Param::trainable == false`) are not
//!   computed: they are returned as zeros;
//! - the gradient with respect to the graph input is not computed.

use crate::kernels::{
    activation_backward_inplace, activation_forward_inplace, avg_pool2d_backward,
    avg_pool2d_forward, bias_add_forward, column_sums, conv2d_backward, conv2d_forward,
    dropout_apply, dropout_mask, matmul_backward, matmul_forward, max_pool2d_backward,
    max_pool2d_forward, Conv2dShape, KernelError, MatMulShape, Pool2dShape,
};
use crate::kernels::{
    global_avg_pool2d_backward, global_avg_pool2d_forward, global_max_pool2d_backward,
    global_max_pool2d_forward, zero_padding2d_backward, zero_padding2d_forward, ImageShape,
};
use crate::params::{ParamError, ParamStore};
use crate::tensor::Tensor;
use cnnc_compiler::graph::ir::{Conv2dAttrs, Pool2dAttrs};
use cnnc_compiler::graph::{Graph, NodeId, Op, ParamId};
use cnnc_compiler::model::{Activation, Pads2d};
use ndarray::{CowArray, IxDyn};

/// Training or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout active (with masks drawn from a generator seeded by `seed`);
    /// a trailing `Softmax` is skipped so the output is logits;
    /// activations are kept for [`Executor::backward`].
    Train { seed: u64 },
    /// Dropout is identity; the full graph runs (probabilities out).
    Inference,
}

/// Errors from running a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// The input is not `[batch, ...model input shape]`.
    #[error("input has shape {got:?}, expected [batch, {}]", fmt_dims(expected))]
    InputShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The parameter store does not match the graph.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// The gradient passed to backward is not shaped like the last forward output.
    #[error("output gradient has shape {got:?}, expected {expected:?}")]
    GradShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// `backward` was called before any `forward`.
    #[error("backward called before forward")]
    NoForward,
    /// The graph is malformed (wrong arity, inconsistent shapes, bad ids).
    #[error("invalid graph at node {node} ({op}): {reason}")]
    Graph {
        node: usize,
        op: &'static str,
        reason: String,
    },
    /// A kernel rejected its arguments (should not happen for a valid graph).
    #[error("node {node} ({op}): {source}")]
    Kernel {
        node: usize,
        op: &'static str,
        source: KernelError,
    },
}

fn fmt_dims(d: &[usize]) -> String {
    d.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to run for one node (fused and unfused ops share kernels).
#[derive(Debug, Clone)]
enum Step {
    Input,
    Conv {
        attrs: Conv2dAttrs,
        in_h: usize,
        in_w: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        act: Activation,
    },
    MatMul {
        in_features: usize,
        units: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        act: Activation,
    },
    BiasAdd {
        bias: ParamId,
    },
    Act {
        act: Activation,
    },
    MaxPool {
        attrs: Pool2dAttrs,
        in_shape: [usize; 3],
    },
    AvgPool {
        attrs: Pool2dAttrs,
        in_shape: [usize; 3],
    },
    Flatten,
    Dropout {
        rate: f32,
    },
    GlobalAvgPool {
        in_shape: [usize; 3],
    },
    GlobalMaxPool {
        in_shape: [usize; 3],
    },
    ZeroPad {
        pads: Pads2d,
        in_shape: [usize; 3],
    },
}

/// The batched image geometry of an `[h, w, c]` example shape.
fn image(batch: usize, [height, width, channels]: [usize; 3]) -> ImageShape {
    ImageShape {
        batch,
        height,
        width,
        channels,
    }
}

/// The validated execution plan of a graph.
#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
    /// The node's single input (unused for `Input`).
    input_of: Vec<usize>,
    /// Values per example of each node's output.
    example_len: Vec<usize>,
    /// Size of the last axis of each node's output (1 for scalars).
    last_dim: Vec<usize>,
    /// The node whose buffer holds each node's value (`Flatten` aliases its input).
    storage: Vec<usize>,
    /// Whether a gradient must flow into each node's output (a trainable
    /// parameter is at or before the node).
    needs_grad: Vec<bool>,
    /// In training mode: the node whose value is returned (the softmax's
    /// input when a trailing `Softmax` / softmax activation node is skipped).
    train_output: usize,
    /// In training mode: a fused output node whose softmax activation is
    /// replaced by linear.
    train_linear_output: Option<usize>,
}

impl Plan {
    fn build(graph: &Graph) -> Result<Plan, ExecError> {
        let n = graph.nodes.len();
        let err = |i: usize, reason: String| ExecError::Graph {
            node: i,
            op: graph.nodes.get(i).map(|nd| nd.op.name()).unwrap_or("?"),
            reason,
        };
        if graph.input.0 >= n || graph.output.0 >= n {
            return Err(err(
                graph.output.0.min(graph.input.0),
                format!(
                    "input {} / output {} out of range ({n} nodes)",
                    graph.input.0, graph.output.0
                ),
            ));
        }
        let mut steps = Vec::with_capacity(n);
        let mut input_of = vec![0; n];
        let mut example_len = vec![0; n];
        let mut last_dim = vec![1; n];
        let mut storage = vec![0; n];
        let mut needs_grad = vec![false; n];
        let param_shape = |i: usize, p: ParamId, expected: &[usize]| -> Result<(), ExecError> {
            let Some(param) = graph.params.get(p.0) else {
                return Err(err(i, format!("parameter id {} out of range", p.0)));
            };
            if param.shape != expected {
                return Err(err(
                    i,
                    format!(
                        "parameter `{}` has shape {:?}, expected {:?}",
                        param.name, param.shape, expected
                    ),
                ));
            }
            Ok(())
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            example_len[i] = node.shape.iter().product();
            last_dim[i] = node.shape.last().copied().unwrap_or(1);
            storage[i] = i;
            if let Op::Input = node.op {
                if !node.inputs.is_empty() || i != graph.input.0 {
                    return Err(err(
                        i,
                        "input node must be the graph input and have no inputs".into(),
                    ));
                }
                steps.push(Step::Input);
                continue;
            }
            if node.inputs.len() != 1 || node.inputs[0].0 >= i {
                return Err(err(
                    i,
                    "expected exactly one input defined before the node".into(),
                ));
            }
            let src = node.inputs[0].0;
            input_of[i] = src;
            let in_shape = graph.nodes[src].shape.clone();
            let same_shape = || -> Result<(), ExecError> {
                if node.shape != in_shape {
                    return Err(err(
                        i,
                        format!(
                            "output shape {:?} differs from input shape {:?}",
                            node.shape, in_shape
                        ),
                    ));
                }
                Ok(())
            };
            let spatial = |what: &str| -> Result<[usize; 3], ExecError> {
                match in_shape.as_slice() {
                    &[h, w, c] => Ok([h, w, c]),
                    _ => Err(err(
                        i,
                        format!("{what} needs an [h, w, c] input, got {in_shape:?}"),
                    )),
                }
            };
            let expect_shape = |expected: Vec<usize>| -> Result<(), ExecError> {
                if node.shape != expected {
                    return Err(err(
                        i,
                        format!("output shape {:?}, expected {:?}", node.shape, expected),
                    ));
                }
                Ok(())
            };
            let step = match &node.op {
                Op::Input => unreachable!("handled above"),
                Op::Conv2d { attrs, kernel } => {
                    let [h, w, _] = spatial("conv2d")?;
                    conv_step(attrs, h, w, *kernel, None, Activation::Linear)
                }
                Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                } => {
                    let [h, w, _] = spatial("fused_conv2d")?;
                    conv_step(attrs, h, w, *kernel, *bias, *activation)
                }
                Op::MatMul { units, kernel } => {
                    matmul_step(&in_shape, *units, *kernel, None, Activation::Linear)
                }
                Op::FusedMatMul {
                    units,
                    kernel,
                    bias,
                    activation,
                } => matmul_step(&in_shape, *units, *kernel, *bias, *activation),
                Op::BiasAdd { bias } => Step::BiasAdd { bias: *bias },
                Op::Activation { activation } => Step::Act { act: *activation },
                Op::Softmax => Step::Act {
                    act: Activation::Softmax,
                },
                Op::MaxPool2d { attrs } => Step::MaxPool {
                    attrs: *attrs,
                    in_shape: spatial("max_pool2d")?,
                },
                Op::AvgPool2d { attrs } => Step::AvgPool {
                    attrs: *attrs,
                    in_shape: spatial("avg_pool2d")?,
                },
                Op::Flatten => Step::Flatten,
                Op::Dropout { rate } => Step::Dropout { rate: *rate },
                Op::GlobalAvgPool2d => Step::GlobalAvgPool {
                    in_shape: spatial("global_avg_pool2d")?,
                },
                Op::GlobalMaxPool2d => Step::GlobalMaxPool {
                    in_shape: spatial("global_max_pool2d")?,
                },
                Op::ZeroPadding2d { pads } => Step::ZeroPad {
                    pads: *pads,
                    in_shape: spatial("zero_padding2d")?,
                },
            };
            // Shape checks per step.
            match &step {
                Step::Input => {}
                Step::Conv {
                    attrs,
                    kernel,
                    bias,
                    ..
                } => {
                    let [h, w, c] = spatial("conv2d")?;
                    if c != attrs.in_channels {
                        return Err(err(
                            i,
                            format!("input has {c} channels, attrs say {}", attrs.in_channels),
                        ));
                    }
                    let s = Conv2dShape::new(attrs, 1, h, w).map_err(|e| err(i, e.to_string()))?;
                    expect_shape(vec![s.out_h, s.out_w, s.filters])?;
                    let [kh, kw] = attrs.kernel_size;
                    param_shape(i, *kernel, &[kh, kw, c, attrs.filters])?;
                    if let Some(b) = bias {
                        param_shape(i, *b, &[attrs.filters])?;
                    }
                }
                Step::MatMul {
                    units,
                    kernel,
                    bias,
                    ..
                } => {
                    let Some((&inf, lead)) = in_shape.split_last() else {
                        return Err(err(i, "matmul needs a non-scalar input".into()));
                    };
                    let mut out = lead.to_vec();
                    out.push(*units);
                    expect_shape(out)?;
                    param_shape(i, *kernel, &[inf, *units])?;
                    if let Some(b) = bias {
                        param_shape(i, *b, &[*units])?;
                    }
                }
                Step::BiasAdd { bias } => {
                    same_shape()?;
                    let Some(&c) = in_shape.last() else {
                        return Err(err(i, "bias_add needs a non-scalar input".into()));
                    };
                    param_shape(i, *bias, &[c])?;
                }
                Step::Act { .. } => same_shape()?,
                Step::Dropout { rate } => {
                    same_shape()?;
                    if !(0.0..1.0).contains(rate) {
                        return Err(err(i, format!("dropout rate {rate} not in [0, 1)")));
                    }
                }
                Step::MaxPool { attrs, in_shape } | Step::AvgPool { attrs, in_shape } => {
                    let [h, w, c] = *in_shape;
                    let s =
                        Pool2dShape::new(attrs, 1, h, w, c).map_err(|e| err(i, e.to_string()))?;
                    expect_shape(vec![s.out_h, s.out_w, c])?;
                }
                Step::Flatten => {
                    expect_shape(vec![in_shape.iter().product()])?;
                    storage[i] = storage[src];
                }
                Step::GlobalAvgPool { in_shape } | Step::GlobalMaxPool { in_shape } => {
                    expect_shape(vec![in_shape[2]])?;
                }
                Step::ZeroPad { pads, in_shape } => {
                    let o = image(1, *in_shape).padded(pads);
                    expect_shape(vec![o.height, o.width, o.channels])?;
                }
            }
            let own_trainable = node
                .op
                .params()
                .iter()
                .any(|p| graph.params.get(p.0).is_some_and(|p| p.trainable));
            needs_grad[i] = own_trainable || needs_grad[src];
            steps.push(step);
        }
        if !matches!(steps[graph.input.0], Step::Input) {
            return Err(err(
                graph.input.0,
                "graph input is not an input node".into(),
            ));
        }
        let out = graph.output.0;
        let (mut train_output, mut train_linear_output) = (out, None);
        match &steps[out] {
            Step::Act {
                act: Activation::Softmax,
            } => train_output = input_of[out],
            Step::Conv {
                act: Activation::Softmax,
                ..
            }
            | Step::MatMul {
                act: Activation::Softmax,
                ..
            } => train_linear_output = Some(out),
            _ => {}
        }
        Ok(Plan {
            steps,
            input_of,
            example_len,
            last_dim,
            storage,
            needs_grad,
            train_output,
            train_linear_output,
        })
    }

    /// The activation a node applies in `mode`.
    fn act(&self, i: usize, act: Activation, mode: Mode) -> Activation {
        match mode {
            Mode::Train { .. } if self.train_linear_output == Some(i) => Activation::Linear,
            _ => act,
        }
    }
}

fn conv_step(
    attrs: &Conv2dAttrs,
    in_h: usize,
    in_w: usize,
    kernel: ParamId,
    bias: Option<ParamId>,
    act: Activation,
) -> Step {
    Step::Conv {
        attrs: *attrs,
        in_h,
        in_w,
        kernel,
        bias,
        act,
    }
}

/// A dense step on the last axis of `in_shape` (0 features for a scalar
/// input, rejected by the shape check).
fn matmul_step(
    in_shape: &[usize],
    units: usize,
    kernel: ParamId,
    bias: Option<ParamId>,
    act: Activation,
) -> Step {
    Step::MatMul {
        in_features: in_shape.last().copied().unwrap_or(0),
        units,
        kernel,
        bias,
        act,
    }
}

/// Per-batch buffers, reused across steps.
#[derive(Default)]
struct State {
    batch: usize,
    /// Mode and output node of the last forward, if any.
    last: Option<(Mode, usize)>,
    values: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    grad_ready: Vec<bool>,
    argmax: Vec<Vec<u32>>,
    masks: Vec<Vec<f32>>,
    /// Per-node seconds of the last forward / backward, when profiling.
    profile: Option<Vec<NodeTime>>,
}

/// Wall-clock time spent in one node during the last forward and backward
/// (see [`Executor::set_profiling`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    pub node: NodeId,
    /// The op name (`fused_conv2d`, ...).
    pub op: &'static str,
    pub forward_s: f64,
    pub backward_s: f64,
}

/// Executes one graph; owns the activation buffers between forward and backward.
pub struct Executor {
    graph: Graph,
    plan: Result<Plan, ExecError>,
    state: State,
}

impl Executor {
    /// Validates `graph` (errors are reported by the first forward or by
    /// [`Executor::validate`]) and prepares empty buffers.
    pub fn new(graph: Graph) -> Executor {
        let plan = Plan::build(&graph);
        let n = graph.nodes.len();
        let state = State {
            values: vec![Vec::new(); n],
            grads: vec![Vec::new(); n],
            grad_ready: vec![false; n],
            argmax: vec![Vec::new(); n],
            masks: vec![Vec::new(); n],
            ..State::default()
        };
        Executor { graph, plan, state }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Turns per-node timing on or off (off by default).
    pub fn set_profiling(&mut self, on: bool) {
        self.state.profile = on.then(|| {
            self.graph
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeTime {
                    node: NodeId(i),
                    op: n.op.name(),
                    forward_s: 0.0,
                    backward_s: 0.0,
                })
                .collect()
        });
    }

    /// Per-node times of the last forward and backward, if profiling is on.
    pub fn profile(&self) -> Option<&[NodeTime]> {
        self.state.profile.as_deref()
    }

    /// Whether the graph is well formed (arity, shapes, parameter shapes).
    pub fn validate(&self) -> Result<(), ExecError> {
        self.plan.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The node whose value `forward` returns in `mode` (the softmax's input
    /// for a graph ending in a stand-alone softmax, in training).
    pub fn output_node(&self, mode: Mode) -> NodeId {
        match (&self.plan, mode) {
            (Ok(plan), Mode::Train { .. }) => NodeId(plan.train_output),
            _ => self.graph.output,
        }
    }

    /// Checks that `input` is `[batch, ...graph input shape]`.
    pub fn check_input(&self, input: &Tensor) -> Result<(), ExecError> {
        let expected = &self.graph.node(self.graph.input).shape;
        let got = input.shape();
        if got.len() != expected.len() + 1 || &got[1..] != expected.as_slice() {
            return Err(ExecError::InputShape {
                expected: expected.clone(),
                got: got.to_vec(),
            });
        }
        Ok(())
    }

    /// Runs the graph on `input` (`[batch, h, w, c]`). Returns `[batch, ...output shape]`.
    ///
    /// # Panics
    /// If the graph is invalid, the input shape is wrong or `params` does not
    /// match the graph; use [`Executor::try_forward`] (or [`Executor::check_input`]
    /// first) to get these as errors.
    pub fn forward(&mut self, params: &ParamStore, input: &Tensor, mode: Mode) -> Tensor {
        match self.try_forward(params, input, mode) {
            Ok(t) => t,
            Err(e) => panic!("forward: {e}"),
        }
    }

    /// [`Executor::forward`] returning errors instead of panicking.
    pub fn try_forward(
        &mut self,
        params: &ParamStore,
        input: &Tensor,
        mode: Mode,
    ) -> Result<Tensor, ExecError> {
        self.run_forward(params, input, mode)?;
        let (_, out) = self.state.last.expect("set by run_forward");
        Ok(self.value_tensor(out))
    }

    /// Like [`Executor::try_forward`] but writes the output into `output`
    /// (reshaped if needed) instead of allocating a new tensor.
    pub fn forward_into(
        &mut self,
        params: &ParamStore,
        input: &Tensor,
        mode: Mode,
        output: &mut Tensor,
    ) -> Result<(), ExecError> {
        self.run_forward(params, input, mode)?;
        let (_, out) = self.state.last.expect("set by run_forward");
        let shape = self.value_shape(out);
        if output.shape() != shape.as_slice() {
            *output = Tensor::zeros(IxDyn(&shape));
        }
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        let src = &self.state.values[plan.storage[out]];
        match output.as_slice_mut() {
            Some(dst) => dst.copy_from_slice(src),
            None => output.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        }
        Ok(())
    }

    /// The value of node `i` from the last forward as a `[batch, ...]` tensor
    /// (`None` before any forward or for an out-of-range node).
    pub fn node_value(&self, node: NodeId) -> Option<Tensor> {
        let plan = self.plan.as_ref().ok()?;
        self.state.last?;
        (node.0 < plan.steps.len()).then(|| self.value_tensor(node.0))
    }

    fn value_shape(&self, i: usize) -> Vec<usize> {
        let mut shape = vec![self.state.batch];
        shape.extend_from_slice(&self.graph.nodes[i].shape);
        shape
    }

    fn value_tensor(&self, i: usize) -> Tensor {
        let plan = self.plan.as_ref().expect("valid plan");
        let data = self.state.values[plan.storage[i]].clone();
        Tensor::from_shape_vec(IxDyn(&self.value_shape(i)), data).expect("buffer matches shape")
    }

    fn run_forward(
        &mut self,
        params: &ParamStore,
        input: &Tensor,
        mode: Mode,
    ) -> Result<(), ExecError> {
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        self.check_input(input)?;
        params.check(&self.graph)?;
        let pv: Vec<CowArray<'_, f32, IxDyn>> = params
            .values
            .iter()
            .map(|v| v.as_standard_layout())
            .collect();
        let p = |id: ParamId| -> &[f32] { pv[id.0].as_slice().expect("standard layout") };
        let batch = input.shape()[0];
        let st = &mut self.state;
        st.batch = batch;
        st.last = None;
        if let Some(prof) = st.profile.as_mut() {
            prof.iter_mut()
                .for_each(|t| (t.forward_s, t.backward_s) = (0.0, 0.0));
        }
        let out_node = match mode {
            Mode::Train { .. } => plan.train_output,
            Mode::Inference => self.graph.output.0,
        };
        for i in 0..=out_node {
            let step = &plan.steps[i];
            if matches!(step, Step::Flatten) {
                continue;
            }
            let started = st.profile.is_some().then(std::time::Instant::now);
            let len = batch * plan.example_len[i];
            let mut out = std::mem::take(&mut st.values[i]);
            out.resize(len, 0.0);
            let x: &[f32] = &st.values[plan.storage[plan.input_of[i]]];
            let kerr = |source: KernelError| ExecError::Kernel {
                node: i,
                op: self.graph.nodes[i].op.name(),
                source,
            };
            match step {
                Step::Input => match input.as_slice() {
                    Some(s) => out.copy_from_slice(s),
                    None => out.iter_mut().zip(input.iter()).for_each(|(d, s)| *d = *s),
                },
                Step::Conv {
                    attrs,
                    in_h,
                    in_w,
                    kernel,
                    bias,
                    act,
                } => {
                    let s = Conv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                    let act = plan.act(i, *act, mode);
                    conv2d_forward(&s, x, p(*kernel), bias.map(p), act, &mut out).map_err(kerr)?;
                }
                Step::MatMul {
                    in_features,
                    units,
                    kernel,
                    bias,
                    act,
                } => {
                    let s = MatMulShape {
                        batch: len / units.max(&1),
                        in_features: *in_features,
                        units: *units,
                    };
                    let act = plan.act(i, *act, mode);
                    matmul_forward(&s, x, p(*kernel), bias.map(p), act, &mut out).map_err(kerr)?;
                }
                Step::BiasAdd { bias } => bias_add_forward(x, p(*bias), &mut out).map_err(kerr)?,
                Step::Act { act } => {
                    out.copy_from_slice(x);
                    activation_forward_inplace(*act, &mut out, plan.last_dim[i]).map_err(kerr)?;
                }
                Step::MaxPool { attrs, in_shape } => {
                    let [h, w, c] = *in_shape;
                    let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                    let mut am = std::mem::take(&mut st.argmax[i]);
                    am.resize(len, 0);
                    max_pool2d_forward(&s, x, &mut out, Some(&mut am)).map_err(kerr)?;
                    st.argmax[i] = am;
                }
                Step::AvgPool { attrs, in_shape } => {
                    let [h, w, c] = *in_shape;
                    let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                    avg_pool2d_forward(&s, x, &mut out).map_err(kerr)?;
                }
                Step::GlobalAvgPool { in_shape } => {
                    global_avg_pool2d_forward(&image(batch, *in_shape), x, &mut out)
                        .map_err(kerr)?;
                }
                Step::GlobalMaxPool { in_shape } => {
                    let mut am = std::mem::take(&mut st.argmax[i]);
                    am.resize(len, 0);
                    global_max_pool2d_forward(&image(batch, *in_shape), x, &mut out, &mut am)
                        .map_err(kerr)?;
                    st.argmax[i] = am;
                }
                Step::ZeroPad { pads, in_shape } => {
                    zero_padding2d_forward(&image(batch, *in_shape), pads, x, &mut out)
                        .map_err(kerr)?;
                }
                Step::Flatten => unreachable!("skipped above"),
                Step::Dropout { rate } => match mode {
                    Mode::Train { seed } => {
                        let mut mask = std::mem::take(&mut st.masks[i]);
                        mask.resize(len, 0.0);
                        dropout_mask(*rate, seed, i as u64, &mut mask).map_err(kerr)?;
                        dropout_apply(x, &mask, &mut out).map_err(kerr)?;
                        st.masks[i] = mask;
                    }
                    Mode::Inference => out.copy_from_slice(x),
                },
            }
            st.values[i] = out;
            if let (Some(t0), Some(prof)) = (started, st.profile.as_mut()) {
                prof[i].forward_s = t0.elapsed().as_secs_f64();
            }
        }
        st.last = Some((mode, out_node));
        Ok(())
    }

    /// Back-propagates `grad_output` (d loss / d output of the last `Train`
    /// forward, same shape) and returns d loss / d param for every parameter,
    /// aligned with `Graph::params`.
    ///
    /// # Panics
    /// If there was no forward pass or `grad_output` has the wrong shape; use
    /// [`Executor::try_backward`] to get these as errors.
    pub fn backward(&mut self, params: &ParamStore, grad_output: &Tensor) -> Vec<Tensor> {
        match self.try_backward(params, grad_output) {
            Ok(g) => g,
            Err(e) => panic!("backward: {e}"),
        }
    }

    /// [`Executor::backward`] returning errors instead of panicking.
    pub fn try_backward(
        &mut self,
        params: &ParamStore,
        grad_output: &Tensor,
    ) -> Result<Vec<Tensor>, ExecError> {
        let mut grads = ParamStore::zeros_like(&self.graph).values;
        self.backward_into(params, grad_output, &mut grads)?;
        Ok(grads)
    }

    /// Back-propagates into caller-owned gradient tensors (one per parameter,
    /// re-created if missing or misshaped; every element is overwritten), so a
    /// training loop can reuse them from step to step.
    ///
    /// Gradients are accumulated in a fixed order, so they are bit-identical
    /// from run to run for the same inputs.
    pub fn backward_into(
        &mut self,
        params: &ParamStore,
        grad_output: &Tensor,
        grads: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        params.check(&self.graph)?;
        let Some((mode, out_node)) = self.state.last else {
            return Err(ExecError::NoForward);
        };
        let expected = self.value_shape(out_node);
        if grad_output.shape() != expected.as_slice() {
            return Err(ExecError::GradShape {
                expected,
                got: grad_output.shape().to_vec(),
            });
        }
        // Gradient tensors: right count and shapes.
        grads.truncate(self.graph.params.len());
        for (k, prm) in self.graph.params.iter().enumerate() {
            if k >= grads.len() {
                grads.push(Tensor::zeros(IxDyn(&prm.shape)));
            } else if grads[k].shape() != prm.shape.as_slice() || !grads[k].is_standard_layout() {
                grads[k] = Tensor::zeros(IxDyn(&prm.shape));
            }
        }
        let mut written = vec![false; grads.len()];
        let pv: Vec<CowArray<'_, f32, IxDyn>> = params
            .values
            .iter()
            .map(|v| v.as_standard_layout())
            .collect();
        let p = |id: ParamId| -> &[f32] { pv[id.0].as_slice().expect("standard layout") };
        let trainable: Vec<bool> = self.graph.params.iter().map(|q| q.trainable).collect();
        let batch = self.state.batch;
        let st = &mut self.state;
        st.grad_ready.iter_mut().for_each(|r| *r = false);
        if let Some(prof) = st.profile.as_mut() {
            prof.iter_mut().for_each(|t| t.backward_s = 0.0);
        }

        // Seed the output gradient.
        let so = plan.storage[out_node];
        let mut g0 = std::mem::take(&mut st.grads[so]);
        g0.clear();
        match grad_output.as_slice() {
            Some(s) => g0.extend_from_slice(s),
            None => g0.extend(grad_output.iter().copied()),
        }
        st.grads[so] = g0;
        st.grad_ready[so] = true;

        for i in (0..=out_node).rev() {
            let step = &plan.steps[i];
            if matches!(step, Step::Input | Step::Flatten) || !plan.needs_grad[i] {
                continue;
            }
            if !st.grad_ready[i] {
                continue; // no path from this node to the output
            }
            let started = st.profile.is_some().then(std::time::Instant::now);
            let src = plan.input_of[i];
            let ps = plan.storage[src];
            let need_dx = plan.needs_grad[src];
            let in_len = batch * plan.example_len[src];
            let kerr = |source: KernelError| ExecError::Kernel {
                node: i,
                op: self.graph.nodes[i].op.name(),
                source,
            };
            let mut dy = std::mem::take(&mut st.grads[i]);
            // The buffer receiving d input: the real one (overwritten) if no
            // other consumer wrote it yet, else a temporary added afterwards.
            let accumulate = st.grad_ready[ps];
            let mut dx = if need_dx {
                let mut b = if accumulate {
                    Vec::new()
                } else {
                    std::mem::take(&mut st.grads[ps])
                };
                b.resize(in_len, 0.0);
                b
            } else {
                Vec::new()
            };
            let x: &[f32] = &st.values[ps];
            let y: &[f32] = &st.values[i];
            // Whether `dy` itself became d input (moved, no copy).
            let mut dx_is_dy = false;
            match step {
                Step::Input | Step::Flatten => unreachable!("skipped above"),
                Step::Conv {
                    attrs,
                    in_h,
                    in_w,
                    kernel,
                    bias,
                    act,
                } => {
                    let s = Conv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                    let act = plan.act(i, *act, mode);
                    let mut dk = GradBuf::take(grads, &mut written, &trainable, Some(*kernel));
                    let mut db = GradBuf::take(grads, &mut written, &trainable, *bias);
                    conv2d_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        act,
                        &mut dy,
                        need_dx.then_some(dx.as_mut_slice()),
                        dk.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
                    db.finish(grads, *bias);
                }
                Step::MatMul {
                    in_features,
                    units,
                    kernel,
                    bias,
                    act,
                } => {
                    let s = MatMulShape {
                        batch: batch * plan.example_len[i] / units.max(&1),
                        in_features: *in_features,
                        units: *units,
                    };
                    let act = plan.act(i, *act, mode);
                    let mut dk = GradBuf::take(grads, &mut written, &trainable, Some(*kernel));
                    let mut db = GradBuf::take(grads, &mut written, &trainable, *bias);
                    matmul_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        act,
                        &mut dy,
                        need_dx.then_some(dx.as_mut_slice()),
                        dk.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
                    db.finish(grads, *bias);
                }
                Step::BiasAdd { bias } => {
                    let mut db = GradBuf::take(grads, &mut written, &trainable, Some(*bias));
                    if let Some(buf) = db.slice() {
                        column_sums(&dy, plan.last_dim[i], buf).map_err(kerr)?;
                    }
                    db.finish(grads, Some(*bias));
                    dx_is_dy = true;
                }
                Step::Act { act } => {
                    if need_dx {
                        activation_backward_inplace(*act, y, &mut dy, plan.last_dim[i])
                            .map_err(kerr)?;
                    }
                    dx_is_dy = true;
                }
                Step::Dropout { .. } => {
                    if need_dx {
                        if let Mode::Train { .. } = mode {
                            let mask = &st.masks[i];
                            for (d, m) in dy.iter_mut().zip(mask) {
                                *d *= m;
                            }
                        }
                    }
                    dx_is_dy = true;
                }
                Step::MaxPool { attrs, in_shape } => {
                    if need_dx {
                        let [h, w, c] = *in_shape;
                        let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                        max_pool2d_backward(&s, &st.argmax[i], &dy, &mut dx).map_err(kerr)?;
                    }
                }
                Step::AvgPool { attrs, in_shape } => {
                    if need_dx {
                        let [h, w, c] = *in_shape;
                        let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                        avg_pool2d_backward(&s, &dy, &mut dx).map_err(kerr)?;
                    }
                }
                Step::GlobalAvgPool { in_shape } => {
                    if need_dx {
                        global_avg_pool2d_backward(&image(batch, *in_shape), &dy, &mut dx)
                            .map_err(kerr)?;
                    }
                }
                Step::GlobalMaxPool { in_shape } => {
                    if need_dx {
                        let s = image(batch, *in_shape);
                        global_max_pool2d_backward(&s, &st.argmax[i], &dy, &mut dx)
                            .map_err(kerr)?;
                    }
                }
                Step::ZeroPad { pads, in_shape } => {
                    if need_dx {
                        zero_padding2d_backward(&image(batch, *in_shape), pads, &dy, &mut dx)
                            .map_err(kerr)?;
                    }
                }
            }
            if need_dx {
                if dx_is_dy {
                    // d input = dy (shape-preserving op): move instead of copying.
                    std::mem::swap(&mut dx, &mut dy);
                }
                if accumulate {
                    for (t, v) in st.grads[ps].iter_mut().zip(&dx) {
                        *t += v;
                    }
                    if dx_is_dy {
                        dy = dx;
                    }
                } else {
                    st.grads[ps] = dx;
                    st.grad_ready[ps] = true;
                }
            }
            if st.grads[i].capacity() < dy.capacity() {
                st.grads[i] = dy;
            }
            if let (Some(t0), Some(prof)) = (started, st.profile.as_mut()) {
                prof[i].backward_s = t0.elapsed().as_secs_f64();
            }
        }
        // Parameters never reached (frozen, or off the path to the output) get zeros.
        for (g, w) in grads.iter_mut().zip(&written) {
            if !*w {
                g.fill(0.0);
            }
        }
        Ok(())
    }
}

/// A parameter-gradient destination for one node: the output tensor itself,
/// taken out of the gradient list (first writer), a temporary added to it
/// afterwards (a parameter read by several nodes), or nothing (frozen).
enum GradBuf {
    Skip,
    Direct(Tensor),
    Accumulate(Vec<f32>),
}

impl GradBuf {
    fn take(
        grads: &mut [Tensor],
        written: &mut [bool],
        trainable: &[bool],
        id: Option<ParamId>,
    ) -> GradBuf {
        let Some(id) = id else {
            return GradBuf::Skip;
        };
        if !trainable[id.0] {
            GradBuf::Skip
        } else if written[id.0] {
            GradBuf::Accumulate(vec![0.0; grads[id.0].len()])
        } else {
            written[id.0] = true;
            GradBuf::Direct(std::mem::replace(
                &mut grads[id.0],
                Tensor::zeros(IxDyn(&[0])),
            ))
        }
    }

    fn slice(&mut self) -> Option<&mut [f32]> {
        match self {
            GradBuf::Skip => None,
            GradBuf::Direct(t) => t.as_slice_mut(),
            GradBuf::Accumulate(v) => Some(v.as_mut_slice()),
        }
    }

    fn finish(self, grads: &mut [Tensor], id: Option<ParamId>) {
        let Some(id) = id else { return };
        match self {
            GradBuf::Skip => {}
            GradBuf::Direct(t) => grads[id.0] = t,
            GradBuf::Accumulate(v) => grads[id.0].iter_mut().zip(&v).for_each(|(g, d)| *g += d),
        }
    }
}
