//! Runs an op graph forward and backward on batches of NHWC f32 tensors.
//!
//! The graph is a DAG with one or more inputs and outputs: a node's value may
//! be read by several nodes (fan-out) and joins (`add`, `multiply`, `concat`)
//! read several. Only the nodes the requested outputs depend on are run.
//!
//! # Memory
//!
//! An executor made by [`Executor::new`] keeps one activation buffer per node
//! (reused from step to step; `Flatten` and `Reshape` alias their input's
//! buffer) and the max-pool argmax indices, dropout masks and batch-norm
//! statistics of the last forward pass, so it can differentiate the last
//! forward in either mode. The gradients of the nodes' values share buffers
//! by lifetime, following `cnnc_compiler::graph::memory::plan_gradients`
//! (seeded at the outputs of both modes): a gradient lives from the first
//! backward step that writes it (its latest reader, or the seeding of an
//! output) to its own node's step, and element-wise steps (activation, bias
//! add, dropout) turn d output into d input in the same buffer. Whether a
//! step overwrites or adds into a gradient is tracked per node, so sharing
//! changes no result: [`Executor::without_gradient_reuse`] (one gradient
//! buffer per node) gives the same bits. Buffers grow only when the batch
//! size does; in the steady state a training step allocates no activation
//! or gradient buffers.
//!
//! An executor made by [`Executor::for_inference`] runs [`Mode::Inference`]
//! only, on the memory plan of `cnnc_compiler::graph::memory::plan_inference`:
//! values that are never alive at the same time share a buffer ("slot"),
//! `Flatten` / `Reshape` alias their input, and element-wise ops (activation,
//! bias add, batch norm, softmax, dropout, add, multiply) overwrite an input
//! that nothing reads afterwards. Only the graph outputs are kept after a
//! forward ([`Executor::node_value`] of another node is `None`).
//!
//! # Parameters
//!
//! Forward passes take any [`ParamSource`]: a [`ParamStore`] (one tensor per
//! graph parameter), [`InferenceParams`] prepared from the model's parameters
//! (needed for graphs with folded batch norms; inference only), or a
//! [`ParamsRef`] such as [`InferenceParams::over`]. Only the
//! parameters the nodes read are checked, so a store may leave the others
//! empty. See [`crate::params`].
//!
//! # Fused ops
//!
//! - `FusedConv2d` with `residual: true` reads `[x, r]` and computes
//!   `act(conv(x) + bias + r)` in the conv's per-block epilogue. Backward is
//!   implemented too (the passes only make it for inference graphs, but a
//!   hand-built training graph may use it): `dz = dy ⊙ act'(y)` flows to the
//!   kernel, the bias, `x` (through the conv) and unchanged to `r`.
//! - `FusedDepthwiseConv2d` computes `act(depthwise(x) + bias)` with the bias
//!   and activation applied to each output line while in cache; backward
//!   gives `dx`, `d kernel` and `d bias`.
//!
//! Gradient conventions:
//! - in [`Mode::Train`], an output node that is a softmax (a `Softmax` op, an
//!   `Activation { softmax }`, or a fused conv/matmul with a softmax
//!   activation) read by nothing else returns *logits* (the softmax is
//!   skipped: the loss applies log-softmax itself), and backward takes
//!   d loss / d logits;
//! - a node read by several nodes receives the sum of their gradients,
//!   accumulated in a fixed (reverse topological) order, so gradients are
//!   bit-identical from run to run and across thread counts;
//! - gradients of frozen parameters (`Param::trainable == false`, which
//!   includes batch norm's moving statistics) are not computed: they are
//!   returned as zeros;
//! - the gradient with respect to the graph inputs is not computed.
//!
//! Batch normalization: in [`Mode::Train`] a batch norm that is not frozen
//! normalizes with the batch's statistics and remembers them;
//! [`Executor::update_moving_statistics`] then folds them into the moving
//! mean and variance (`moving = moving * momentum + batch * (1 - momentum)`,
//! Keras). In [`Mode::Inference`], and always for a frozen batch norm, the
//! moving statistics are used and nothing is updated.

use crate::buffer::AlignedBuf;
use crate::kernels::batch_norm::update_moving;
use crate::kernels::conv_transpose::{
    conv2d_transpose_backward, conv2d_transpose_forward, Conv2dTransposeShape,
};
use crate::kernels::depthwise::{
    depthwise_conv2d_backward, depthwise_conv2d_forward, DepthwiseConv2dShape,
};
use crate::kernels::{
    activation_backward_inplace, activation_forward, activation_forward_inplace,
    avg_pool2d_backward, avg_pool2d_forward, bias_add_forward, bias_add_inplace, column_sums,
    conv2d_backward, dropout_apply, dropout_mask, fused_conv2d_forward, matmul_backward,
    matmul_forward, matmul_forward_prepared, max_pool2d_backward, max_pool2d_forward, Conv2dShape,
    ConvKernel, KernelError, MatMulShape, Pool2dShape,
};
use crate::kernels::{
    add_forward, add_inplace, batch_norm_backward, batch_norm_inference_forward,
    batch_norm_inference_inplace, batch_norm_train_forward, concat_backward, concat_forward,
    multiply_backward, multiply_forward, multiply_inplace, up_sampling2d_backward,
    up_sampling2d_forward, BatchNormShape, ConcatShape,
};
use crate::kernels::{
    global_avg_pool2d_backward, global_avg_pool2d_forward, global_max_pool2d_backward,
    global_max_pool2d_forward, zero_padding2d_backward, zero_padding2d_forward, ImageShape,
};
#[allow(unused_imports)] // named in the docs
use crate::params::InferenceParams;
use crate::params::{recycle, ParamError, ParamSource, ParamStore, ParamsRef, Resolved};
use crate::tensor::Tensor;
use cnnc_compiler::graph::ir::{
    Conv2dAttrs, Conv2dTransposeAttrs, DepthwiseConv2dAttrs, Pool2dAttrs,
};
use cnnc_compiler::graph::memory::{
    plan_gradients, plan_gradients_without_reuse, plan_inference, MemoryPlan, Placement,
};
use cnnc_compiler::graph::{Graph, NodeId, Op, ParamId};
use cnnc_compiler::model::{Activation, Interpolation, Pads2d};
use ndarray::IxDyn;

/// Training or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout active (with masks drawn from a generator seeded by `seed`);
    /// batch norm uses batch statistics; a trailing `Softmax` is skipped so
    /// the output is logits; activations are kept for [`Executor::backward`].
    Train { seed: u64 },
    /// Dropout is identity; batch norm uses its moving statistics; the full
    /// graph runs (probabilities out).
    Inference,
}

/// Errors from running a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// An input is not `[batch, ...model input shape]`.
    #[error("input has shape {got:?}, expected [batch, {}]", fmt_dims(expected))]
    InputShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The number of input tensors differs from the graph's inputs.
    #[error("{got} input tensors for a graph with {expected} inputs")]
    InputCount { expected: usize, got: usize },
    /// The inputs do not share one batch size.
    #[error("input {input} has batch size {got}, input 0 has {expected}")]
    InputBatch {
        input: usize,
        expected: usize,
        got: usize,
    },
    /// The parameter store does not match the graph.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// A gradient passed to backward is not shaped like its forward output.
    #[error("output gradient has shape {got:?}, expected {expected:?}")]
    GradShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The number of output gradients differs from the graph's outputs.
    #[error("{got} output gradients for a graph with {expected} outputs")]
    GradCount { expected: usize, got: usize },
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
    /// Something only an executor made by [`Executor::new`] with a
    /// [`ParamStore`] does: training, or backward (an executor made by
    /// [`Executor::for_inference`] keeps only what its memory plan needs;
    /// prepared parameters may have batch norms folded away).
    #[error("inference only: {0}")]
    InferenceOnly(&'static str),
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
    /// Graph input number `index` (position in `Graph::input_ids`).
    Input {
        index: usize,
    },
    Conv {
        attrs: Conv2dAttrs,
        in_h: usize,
        in_w: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        act: Activation,
        /// Input 1 is added before the activation.
        residual: bool,
    },
    Depthwise {
        attrs: DepthwiseConv2dAttrs,
        in_h: usize,
        in_w: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        act: Activation,
    },
    Transpose {
        attrs: Conv2dTransposeAttrs,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
        kernel: ParamId,
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
    /// `Flatten` / `Reshape`: the value is the input's buffer.
    Alias,
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
    BatchNorm {
        channels: usize,
        epsilon: f32,
        momentum: f32,
        gamma: Option<ParamId>,
        beta: Option<ParamId>,
        moving_mean: ParamId,
        moving_variance: ParamId,
        frozen: bool,
    },
    Add,
    Multiply,
    Concat {
        /// Per example: product of the output dimensions before the axis.
        outer: usize,
        /// Per input: product of its dimensions from the axis on.
        inner: Vec<usize>,
    },
    UpSample {
        in_shape: [usize; 3],
        size: [usize; 2],
        interpolation: Interpolation,
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
    /// Each node's input nodes, in order (empty for inputs).
    inputs_of: Vec<Vec<usize>>,
    /// Values per example of each node's output.
    example_len: Vec<usize>,
    /// Size of the last axis of each node's output (1 for scalars).
    last_dim: Vec<usize>,
    /// The node whose buffer holds each node's value (aliases resolved).
    storage: Vec<usize>,
    /// Whether a gradient must flow into each node's output (a trainable
    /// parameter is at or before the node).
    needs_grad: Vec<bool>,
    /// The gradient buffer (slot) of each node's value, from
    /// `cnnc_compiler::graph::memory::plan_gradients` (`usize::MAX` where no
    /// gradient is ever written; aliases have their input's slot).
    grad_slot: Vec<usize>,
    /// Per gradient slot: values per example.
    grad_slot_len: Vec<usize>,
    /// The output nodes in inference.
    outputs: Vec<usize>,
    /// The output nodes in training (a softmax's input where an output
    /// softmax node is skipped).
    train_outputs: Vec<usize>,
    /// In training: fused output nodes whose softmax activation is replaced
    /// by linear.
    train_linear: Vec<bool>,
    /// Nodes the outputs depend on, in inference / in training.
    live: Vec<bool>,
    train_live: Vec<bool>,
    /// Which parameters the nodes read (the only ones validated).
    read: Vec<bool>,
    /// Which parameters are trainable.
    trainable: Vec<bool>,
    /// `crate::params::fingerprint` of the graph's parameter list.
    fingerprint: u64,
}

/// The validated memory plan of an inference-only executor.
#[derive(Debug, Clone)]
struct Memory {
    /// Per node: the slot holding its value (unused for skipped nodes).
    slot: Vec<usize>,
    /// Per node: the input it overwrites, if computed in place.
    in_place: Vec<Option<usize>>,
    /// Per slot: values per example.
    slot_len: Vec<usize>,
}

impl Memory {
    /// Checks `memory` against the plan's steps and shapes and keeps what the
    /// forward pass needs.
    fn build(plan: &Plan, memory: &MemoryPlan, graph: &Graph) -> Result<Memory, ExecError> {
        let n = plan.steps.len();
        let err = |i: usize, reason: String| ExecError::Graph {
            node: i,
            op: graph.nodes.get(i).map(|nd| nd.op.name()).unwrap_or("?"),
            reason: format!("memory plan: {reason}"),
        };
        if memory.placement.len() != n {
            return Err(err(
                0,
                format!("{} placements for {n} nodes", memory.placement.len()),
            ));
        }
        let slots = memory.slot_len.len();
        let mut slot = vec![usize::MAX; n];
        let mut in_place = vec![None; n];
        for (i, place) in memory.placement.iter().enumerate() {
            let live = plan.live[i];
            let Some(s) = place.slot() else {
                if live {
                    return Err(err(i, "a node an output needs is skipped".into()));
                }
                continue;
            };
            if !live {
                continue;
            }
            if s >= slots || memory.slot_len[s] < plan.example_len[i] {
                return Err(err(i, format!("slot {s} missing or too small")));
            }
            let input_slot = |k: usize| plan.inputs_of[i].get(k).map(|&j| slot[j]);
            match *place {
                Placement::Skipped => unreachable!("handled above"),
                Placement::Slot { .. } => {
                    if plan.inputs_of[i].iter().any(|&j| slot[j] == s) {
                        return Err(err(i, "output slot is also an input's slot".into()));
                    }
                }
                Placement::Alias { input, .. } => {
                    if !matches!(plan.steps[i], Step::Alias) || input_slot(input) != Some(s) {
                        return Err(err(i, "only flatten / reshape alias their input".into()));
                    }
                }
                Placement::InPlace { input, .. } => {
                    let ok = match plan.steps[i] {
                        Step::Act { .. }
                        | Step::BiasAdd { .. }
                        | Step::BatchNorm { .. }
                        | Step::Dropout { .. } => input == 0,
                        Step::Add | Step::Multiply => true,
                        _ => false,
                    };
                    let src = plan.inputs_of[i].get(input).copied();
                    let shares = plan.inputs_of[i]
                        .iter()
                        .enumerate()
                        .any(|(k, &j)| k != input && slot[j] == s);
                    if !ok
                        || input_slot(input) != Some(s)
                        || shares
                        || src.map(|j| plan.example_len[j]) != Some(plan.example_len[i])
                    {
                        return Err(err(
                            i,
                            format!("cannot compute in place over input {input}"),
                        ));
                    }
                    in_place[i] = Some(input);
                }
            }
            slot[i] = s;
        }
        Ok(Memory {
            slot,
            in_place,
            slot_len: memory.slot_len.clone(),
        })
    }
}

/// Marks the nodes `outputs` depend on (inputs come before readers).
fn live_nodes(inputs_of: &[Vec<usize>], outputs: &[usize]) -> Vec<bool> {
    let mut live = vec![false; inputs_of.len()];
    for &o in outputs {
        live[o] = true;
    }
    for i in (0..inputs_of.len()).rev() {
        if live[i] {
            for &j in &inputs_of[i] {
                live[j] = true;
            }
        }
    }
    live
}

impl Plan {
    /// Validates `graph` and plans its gradient buffers: shared by
    /// lifetime when `reuse_gradients`, else one per node.
    fn build(graph: &Graph, reuse_gradients: bool) -> Result<Plan, ExecError> {
        let n = graph.nodes.len();
        let err = |i: usize, reason: String| ExecError::Graph {
            node: i,
            op: graph.nodes.get(i).map(|nd| nd.op.name()).unwrap_or("?"),
            reason,
        };
        let graph_inputs: Vec<usize> = graph.input_ids().iter().map(|id| id.0).collect();
        let outputs: Vec<usize> = graph.output_ids().iter().map(|id| id.0).collect();
        for (what, ids) in [("input", &graph_inputs), ("output", &outputs)] {
            if let Some(&bad) = ids.iter().find(|&&id| id >= n) {
                return Err(err(
                    bad.min(n.saturating_sub(1)),
                    format!("graph {what} {bad} out of range ({n} nodes)"),
                ));
            }
        }
        if graph_inputs[0] != graph.input.0 || outputs[0] != graph.output.0 {
            return Err(err(
                graph.output.0.min(n.saturating_sub(1)),
                format!(
                    "`input` / `output` ({} / {}) are not the first of `inputs` / `outputs`",
                    graph.input.0, graph.output.0
                ),
            ));
        }
        let mut steps = Vec::with_capacity(n);
        let mut inputs_of = vec![Vec::new(); n];
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
                let index = graph_inputs.iter().position(|&g| g == i);
                match index {
                    Some(index) if node.inputs.is_empty() => {
                        steps.push(Step::Input { index });
                        continue;
                    }
                    _ => {
                        return Err(err(
                            i,
                            "input node must be a graph input and have no inputs".into(),
                        ))
                    }
                }
            }
            let joins = matches!(node.op, Op::Add | Op::Multiply | Op::Concat { .. });
            let residual = matches!(node.op, Op::FusedConv2d { residual: true, .. });
            let arity_ok = if joins {
                !node.inputs.is_empty()
            } else if residual {
                node.inputs.len() == 2
            } else {
                node.inputs.len() == 1
            };
            if !arity_ok || node.inputs.iter().any(|j| j.0 >= i) {
                return Err(err(
                    i,
                    if joins {
                        "expected one or more inputs defined before the node".into()
                    } else if residual {
                        "expected two inputs defined before the node (the conv's input \
                         and the residual)"
                            .into()
                    } else {
                        "expected exactly one input defined before the node".into()
                    },
                ));
            }
            inputs_of[i] = node.inputs.iter().map(|j| j.0).collect();
            let src = inputs_of[i][0];
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
                    conv_step(attrs, h, w, *kernel, None, Activation::Linear, false)
                }
                Op::FusedConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                    residual,
                } => {
                    let [h, w, _] = spatial("fused_conv2d")?;
                    if *residual {
                        let r = &graph.nodes[inputs_of[i][1]].shape;
                        if *r != node.shape {
                            return Err(err(
                                i,
                                format!(
                                    "residual input shape {r:?} differs from the output shape {:?}",
                                    node.shape
                                ),
                            ));
                        }
                    }
                    conv_step(attrs, h, w, *kernel, *bias, *activation, *residual)
                }
                Op::DepthwiseConv2d { attrs, kernel } => {
                    let [in_h, in_w, _] = spatial("depthwise_conv2d")?;
                    Step::Depthwise {
                        attrs: *attrs,
                        in_h,
                        in_w,
                        kernel: *kernel,
                        bias: None,
                        act: Activation::Linear,
                    }
                }
                Op::FusedDepthwiseConv2d {
                    attrs,
                    kernel,
                    bias,
                    activation,
                } => {
                    let [in_h, in_w, _] = spatial("fused_depthwise_conv2d")?;
                    Step::Depthwise {
                        attrs: *attrs,
                        in_h,
                        in_w,
                        kernel: *kernel,
                        bias: *bias,
                        act: *activation,
                    }
                }
                Op::Conv2dTranspose { attrs, kernel } => {
                    let [in_h, in_w, _] = spatial("conv2d_transpose")?;
                    let [out_h, out_w] = match node.shape.as_slice() {
                        &[h, w, _] => [h, w],
                        _ => {
                            return Err(err(
                                i,
                                format!(
                                    "conv2d_transpose output {:?} is not [h, w, c]",
                                    node.shape
                                ),
                            ))
                        }
                    };
                    Step::Transpose {
                        attrs: *attrs,
                        in_h,
                        in_w,
                        out_h,
                        out_w,
                        kernel: *kernel,
                    }
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
                Op::Flatten | Op::Reshape => Step::Alias,
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
                Op::BatchNorm {
                    epsilon,
                    momentum,
                    gamma,
                    beta,
                    moving_mean,
                    moving_variance,
                    frozen,
                } => Step::BatchNorm {
                    channels: in_shape.last().copied().unwrap_or(0),
                    epsilon: *epsilon,
                    momentum: *momentum,
                    gamma: *gamma,
                    beta: *beta,
                    moving_mean: *moving_mean,
                    moving_variance: *moving_variance,
                    frozen: *frozen,
                },
                Op::Add => Step::Add,
                Op::Multiply => Step::Multiply,
                Op::Concat { axis } => {
                    let rank = node.shape.len();
                    if *axis >= rank {
                        return Err(err(i, format!("axis {axis} out of range for rank {rank}")));
                    }
                    let mut inner = Vec::with_capacity(node.inputs.len());
                    let mut joined = 0;
                    for j in &node.inputs {
                        let s = &graph.nodes[j.0].shape;
                        if s.len() != rank
                            || s[..*axis] != node.shape[..*axis]
                            || s[axis + 1..] != node.shape[axis + 1..]
                        {
                            return Err(err(
                                i,
                                format!(
                                    "input shape {s:?} cannot be joined into {:?} along axis {axis}",
                                    node.shape
                                ),
                            ));
                        }
                        joined += s[*axis];
                        inner.push(s[*axis..].iter().product());
                    }
                    if joined != node.shape[*axis] {
                        return Err(err(
                            i,
                            format!(
                                "inputs give {joined} along axis {axis}, the output has {}",
                                node.shape[*axis]
                            ),
                        ));
                    }
                    Step::Concat {
                        outer: node.shape[..*axis].iter().product(),
                        inner,
                    }
                }
                Op::UpSampling2d {
                    size,
                    interpolation,
                } => Step::UpSample {
                    in_shape: spatial("up_sampling2d")?,
                    size: *size,
                    interpolation: *interpolation,
                },
            };
            // Shape checks per step.
            match &step {
                Step::Input { .. } => {}
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
                Step::Depthwise {
                    attrs,
                    in_h,
                    in_w,
                    kernel,
                    bias,
                    ..
                } => {
                    let [_, _, c] = spatial("depthwise_conv2d")?;
                    if c != attrs.in_channels {
                        return Err(err(
                            i,
                            format!("input has {c} channels, attrs say {}", attrs.in_channels),
                        ));
                    }
                    let s = DepthwiseConv2dShape::new(attrs, 1, *in_h, *in_w)
                        .map_err(|e| err(i, e.to_string()))?;
                    expect_shape(vec![s.out_h, s.out_w, s.out_channels()])?;
                    let [kh, kw] = attrs.kernel_size;
                    param_shape(i, *kernel, &[kh, kw, c, attrs.depth_multiplier])?;
                    if let Some(b) = bias {
                        param_shape(i, *b, &[s.out_channels()])?;
                    }
                }
                Step::Transpose {
                    attrs,
                    in_h,
                    in_w,
                    out_h,
                    out_w,
                    kernel,
                } => {
                    let [_, _, c] = spatial("conv2d_transpose")?;
                    if c != attrs.in_channels {
                        return Err(err(
                            i,
                            format!("input has {c} channels, attrs say {}", attrs.in_channels),
                        ));
                    }
                    Conv2dTransposeShape::new(attrs, 1, *in_h, *in_w, *out_h, *out_w)
                        .map_err(|e| err(i, e.to_string()))?;
                    expect_shape(vec![*out_h, *out_w, attrs.filters])?;
                    let [kh, kw] = attrs.kernel_size;
                    param_shape(i, *kernel, &[kh, kw, attrs.filters, c])?;
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
                Step::Alias => {
                    if node.op == Op::Flatten {
                        expect_shape(vec![in_shape.iter().product()])?;
                    } else if example_len[i] != example_len[src] {
                        return Err(err(
                            i,
                            format!(
                                "cannot reshape {in_shape:?} ({} values) to {:?}",
                                example_len[src], node.shape
                            ),
                        ));
                    }
                    storage[i] = storage[src];
                }
                Step::GlobalAvgPool { in_shape } | Step::GlobalMaxPool { in_shape } => {
                    expect_shape(vec![in_shape[2]])?;
                }
                Step::ZeroPad { pads, in_shape } => {
                    let o = image(1, *in_shape).padded(pads);
                    expect_shape(vec![o.height, o.width, o.channels])?;
                }
                Step::BatchNorm {
                    channels,
                    epsilon,
                    momentum,
                    gamma,
                    beta,
                    moving_mean,
                    moving_variance,
                    ..
                } => {
                    same_shape()?;
                    if in_shape.is_empty() {
                        return Err(err(i, "batch_norm needs a non-scalar input".into()));
                    }
                    if !(epsilon.is_finite() && *epsilon >= 0.0) {
                        return Err(err(i, format!("epsilon {epsilon} must be >= 0")));
                    }
                    if !momentum.is_finite() {
                        return Err(err(i, format!("momentum {momentum} must be finite")));
                    }
                    for p in gamma.iter().chain(beta) {
                        param_shape(i, *p, &[*channels])?;
                    }
                    param_shape(i, *moving_mean, &[*channels])?;
                    param_shape(i, *moving_variance, &[*channels])?;
                }
                Step::Add | Step::Multiply => {
                    for &j in &inputs_of[i] {
                        if graph.nodes[j].shape != node.shape {
                            return Err(err(
                                i,
                                format!(
                                    "input shape {:?} differs from output shape {:?}",
                                    graph.nodes[j].shape, node.shape
                                ),
                            ));
                        }
                    }
                }
                Step::Concat { .. } => {}
                Step::UpSample { in_shape, size, .. } => {
                    if size[0] == 0 || size[1] == 0 {
                        return Err(err(i, format!("size {size:?} must be positive")));
                    }
                    let [h, w, c] = *in_shape;
                    expect_shape(vec![h * size[0], w * size[1], c])?;
                }
            }
            let own_trainable = node
                .op
                .params()
                .iter()
                .any(|p| graph.params.get(p.0).is_some_and(|p| p.trainable));
            needs_grad[i] = own_trainable || inputs_of[i].iter().any(|&j| needs_grad[j]);
            steps.push(step);
        }
        // How many readers each node has (graph outputs included).
        let readers = graph.consumer_counts();
        let mut train_outputs = outputs.clone();
        let mut train_linear = vec![false; n];
        for t in train_outputs.iter_mut() {
            let o = *t;
            if readers[o] != 1 {
                continue; // the probabilities are read elsewhere too
            }
            match &steps[o] {
                Step::Act {
                    act: Activation::Softmax,
                } => *t = inputs_of[o][0],
                Step::Conv {
                    act: Activation::Softmax,
                    ..
                }
                | Step::Depthwise {
                    act: Activation::Softmax,
                    ..
                }
                | Step::MatMul {
                    act: Activation::Softmax,
                    ..
                } => train_linear[o] = true,
                _ => {}
            }
        }
        let live = live_nodes(&inputs_of, &outputs);
        let train_live = live_nodes(&inputs_of, &train_outputs);
        // Gradient buffers: a backward pass may follow a forward in either
        // mode, so the seeds are the outputs of both (the lifetimes of the
        // plan then cover those of either pass).
        let mut seeds: Vec<NodeId> = outputs.iter().map(|&o| NodeId(o)).collect();
        for &o in &train_outputs {
            if !outputs.contains(&o) {
                seeds.push(NodeId(o));
            }
        }
        let grads = if reuse_gradients {
            plan_gradients(graph, &seeds, &needs_grad)
        } else {
            plan_gradients_without_reuse(graph, &seeds, &needs_grad)
        };
        grads
            .validate(graph, &seeds, &needs_grad)
            .map_err(|reason| err(0, format!("gradient memory plan: {reason}")))?;
        let grad_slot = grads.slot.iter().map(|s| s.unwrap_or(usize::MAX)).collect();
        Ok(Plan {
            steps,
            inputs_of,
            example_len,
            last_dim,
            storage,
            needs_grad,
            grad_slot,
            grad_slot_len: grads.slot_len,
            outputs,
            train_outputs,
            train_linear,
            live,
            train_live,
            read: crate::params::read_by_nodes(graph),
            trainable: graph.params.iter().map(|p| p.trainable).collect(),
            fingerprint: crate::params::fingerprint(graph),
        })
    }

    /// The activation a node applies in `mode`.
    fn act(&self, i: usize, act: Activation, mode: Mode) -> Activation {
        match mode {
            Mode::Train { .. } if self.train_linear[i] => Activation::Linear,
            _ => act,
        }
    }

    /// The output nodes in `mode`.
    fn outputs(&self, mode: Mode) -> &[usize] {
        match mode {
            Mode::Train { .. } => &self.train_outputs,
            Mode::Inference => &self.outputs,
        }
    }

    /// Which nodes run in `mode`.
    fn live(&self, mode: Mode) -> &[bool] {
        match mode {
            Mode::Train { .. } => &self.train_live,
            Mode::Inference => &self.live,
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
    residual: bool,
) -> Step {
    Step::Conv {
        attrs: *attrs,
        in_h,
        in_w,
        kernel,
        bias,
        act,
        residual,
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

/// The `[rows, channels]` geometry of a batch norm over `len` values.
fn bn_shape(len: usize, channels: usize) -> BatchNormShape {
    BatchNormShape {
        rows: len.checked_div(channels).unwrap_or(0),
        channels,
    }
}

/// What a batch norm used in the last forward, for backward and for the
/// moving-statistics update.
#[derive(Debug, Clone, Default)]
struct BnSaved {
    /// The mean the forward subtracted (batch or moving), `[c]`.
    mean: Vec<f32>,
    /// The batch's biased variance (training only), `[c]`.
    var: Vec<f32>,
    /// `1 / sqrt(var + epsilon)` of the statistics used, `[c]`.
    inv_std: Vec<f32>,
    /// Whether the batch's statistics were used.
    batch_stats: bool,
    /// Whether `mean` / `var` still have to be folded into the moving statistics.
    pending: bool,
}

/// Per-batch buffers, reused across steps.
#[derive(Default)]
struct State {
    batch: usize,
    /// Mode of the last forward, if any.
    last: Option<Mode>,
    /// Activation buffers: one per node ([`Executor::new`]), or one per
    /// memory-plan slot ([`Executor::for_inference`]).
    values: Vec<AlignedBuf>,
    /// Activation-gradient buffers, one per gradient slot (`Plan::grad_slot`).
    grads: Vec<AlignedBuf>,
    /// Per node (not per slot): whether the node's gradient was written in
    /// this backward pass (the first write copies, later ones add).
    grad_ready: Vec<bool>,
    argmax: Vec<Vec<u32>>,
    masks: Vec<Vec<f32>>,
    bn: Vec<BnSaved>,
    /// Scratch for join gradients.
    scratch: AlignedBuf,
    /// Scratch for an input gradient added onto one already delivered.
    dx_scratch: AlignedBuf,
    /// Which parameter gradients the last backward wrote.
    written: Vec<bool>,
    /// Emptied vectors kept for their allocations (see `params::recycle`).
    spare_params: Option<Resolved<'static>>,
    spare_inputs: Vec<&'static [f32]>,
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

/// Copies `data` into node `node`'s gradient (in its slot `slot[node]`) if
/// nothing was delivered there yet in this backward pass, else adds it.
fn deliver(
    grads: &mut [AlignedBuf],
    slot: &[usize],
    ready: &mut [bool],
    node: usize,
    data: &[f32],
) {
    let buf = &mut grads[slot[node]][..data.len()];
    if ready[node] {
        for (t, v) in buf.iter_mut().zip(data) {
            *t += v;
        }
    } else {
        buf.copy_from_slice(data);
        ready[node] = true;
    }
}

/// Executes one graph; owns the activation buffers between forward and backward.
pub struct Executor {
    graph: Graph,
    plan: Result<Plan, ExecError>,
    /// The memory plan, for an executor made by [`Executor::for_inference`].
    memory: Option<Memory>,
    state: State,
}

impl Executor {
    /// Validates `graph` (errors are reported by the first forward or by
    /// [`Executor::validate`]) and prepares empty buffers. The executor keeps
    /// every activation of the last forward, so it can run backward after a
    /// forward in either mode. The gradients of the backward pass share
    /// buffers by lifetime (`cnnc_compiler::graph::memory::plan_gradients`;
    /// see the module docs).
    pub fn new(graph: Graph) -> Executor {
        Executor::with_gradient_reuse(graph, true)
    }

    /// [`Executor::new`] with one gradient buffer per node that receives a
    /// gradient instead of buffers shared by lifetime: the reference the
    /// gradient memory plan is tested against (results are bit-identical;
    /// only the memory differs).
    pub fn without_gradient_reuse(graph: Graph) -> Executor {
        Executor::with_gradient_reuse(graph, false)
    }

    fn with_gradient_reuse(graph: Graph, reuse: bool) -> Executor {
        let plan = Plan::build(&graph, reuse);
        let n = graph.nodes.len();
        let grad_slots = plan.as_ref().map_or(0, |p| p.grad_slot_len.len());
        let state = State {
            values: vec![AlignedBuf::new(); n],
            grads: vec![AlignedBuf::new(); grad_slots],
            grad_ready: vec![false; n],
            argmax: vec![Vec::new(); n],
            masks: vec![Vec::new(); n],
            bn: vec![BnSaved::default(); n],
            ..State::default()
        };
        Executor {
            graph,
            plan,
            memory: None,
            state,
        }
    }

    /// An executor for [`Mode::Inference`] only, whose activation buffers
    /// follow the memory plan of `plan_inference` (see the module docs):
    /// values that never live at the same time share memory and element-wise
    /// ops overwrite inputs nothing reads later. [`Mode::Train`] forwards and
    /// backward return [`ExecError::InferenceOnly`].
    pub fn for_inference(graph: Graph) -> Executor {
        let mut executor = Executor::new(graph);
        executor.state.grads = Vec::new();
        executor.state.grad_ready = Vec::new();
        executor.state.masks = Vec::new();
        let memory = match &executor.plan {
            Ok(plan) => Memory::build(plan, &plan_inference(&executor.graph), &executor.graph),
            Err(e) => Err(e.clone()),
        };
        match memory {
            Ok(memory) => {
                executor.state.values = vec![AlignedBuf::new(); memory.slot_len.len()];
                executor.memory = Some(memory);
            }
            Err(e) => executor.plan = Err(e),
        }
        executor
    }

    /// Whether the executor was made by [`Executor::for_inference`].
    pub fn is_inference_only(&self) -> bool {
        self.memory.is_some()
    }

    /// Bytes of activation buffers currently allocated: values (per node, or
    /// per memory-plan slot for [`Executor::for_inference`]) and activation
    /// gradients ([`Executor::gradient_bytes`]); f32 values.
    pub fn activation_bytes(&self) -> usize {
        self.state
            .values
            .iter()
            .map(|v| v.capacity() * 4)
            .sum::<usize>()
            + self.gradient_bytes()
    }

    /// Bytes of activation-gradient buffers currently allocated (allocated
    /// by the first backward pass: one per gradient slot, `slot_len * batch`
    /// f32 values each).
    pub fn gradient_bytes(&self) -> usize {
        self.state.grads.iter().map(|v| v.capacity() * 4).sum()
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

    /// Whether the graph is well formed (arity, shapes, parameter shapes,
    /// and for [`Executor::for_inference`] the memory plan).
    pub fn validate(&self) -> Result<(), ExecError> {
        self.plan.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The node whose value `forward` returns in `mode` (the softmax's input
    /// for a graph ending in a stand-alone softmax, in training): the first
    /// of [`Executor::output_nodes`].
    pub fn output_node(&self, mode: Mode) -> NodeId {
        self.output_nodes(mode)
            .first()
            .copied()
            .unwrap_or(self.graph.output)
    }

    /// The nodes whose values the forward returns in `mode`, one per graph output.
    pub fn output_nodes(&self, mode: Mode) -> Vec<NodeId> {
        match &self.plan {
            Ok(plan) => plan.outputs(mode).iter().map(|&o| NodeId(o)).collect(),
            Err(_) => self.graph.output_ids(),
        }
    }

    /// Checks that `input` is `[batch, ...first graph input's shape]`.
    pub fn check_input(&self, input: &Tensor) -> Result<(), ExecError> {
        let first = self.graph.input_ids()[0];
        self.check_one_input(first, input)
    }

    fn check_one_input(&self, node: NodeId, input: &Tensor) -> Result<(), ExecError> {
        let expected = self
            .graph
            .nodes
            .get(node.0)
            .map(|n| n.shape.clone())
            .unwrap_or_default();
        let got = input.shape();
        if got.len() != expected.len() + 1 || got[1..] != expected[..] {
            return Err(ExecError::InputShape {
                expected,
                got: got.to_vec(),
            });
        }
        Ok(())
    }

    /// Checks one tensor per graph input, in order, each
    /// `[batch, ...input shape]` with one batch size.
    pub fn check_inputs(&self, inputs: &[&Tensor]) -> Result<(), ExecError> {
        let ids = self.graph.input_ids();
        if inputs.len() != ids.len() {
            return Err(ExecError::InputCount {
                expected: ids.len(),
                got: inputs.len(),
            });
        }
        for (k, (id, t)) in ids.iter().zip(inputs).enumerate() {
            self.check_one_input(*id, t)?;
            let (b0, b) = (inputs[0].shape()[0], t.shape()[0]);
            if b != b0 {
                return Err(ExecError::InputBatch {
                    input: k,
                    expected: b0,
                    got: b,
                });
            }
        }
        Ok(())
    }

    /// Runs the graph on `input` (`[batch, h, w, c]`). Returns the first
    /// output, `[batch, ...output shape]`. `params`: a [`ParamStore`],
    /// prepared [`InferenceParams`], or a [`ParamsRef`] (see [`ParamSource`]).
    ///
    /// # Panics
    /// If the graph is invalid, the input shape is wrong or `params` does not
    /// match the graph; use [`Executor::try_forward`] (or [`Executor::check_input`]
    /// first) to get these as errors.
    pub fn forward<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        input: &Tensor,
        mode: Mode,
    ) -> Tensor {
        match self.try_forward(params, input, mode) {
            Ok(t) => t,
            Err(e) => panic!("forward: {e}"),
        }
    }

    /// [`Executor::forward`] returning errors instead of panicking. The graph
    /// must have one input.
    pub fn try_forward<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        input: &Tensor,
        mode: Mode,
    ) -> Result<Tensor, ExecError> {
        self.run_forward(params.param_ref(), &[input], mode)?;
        let out = self.output_node(mode).0;
        Ok(self.value_tensor(out))
    }

    /// Runs the graph on one tensor per graph input (in `Graph::input_ids`
    /// order); returns one tensor per graph output (in `Graph::output_ids`
    /// order; logits for a skipped softmax in training).
    pub fn try_forward_multi<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        inputs: &[&Tensor],
        mode: Mode,
    ) -> Result<Vec<Tensor>, ExecError> {
        self.run_forward(params.param_ref(), inputs, mode)?;
        Ok(self
            .output_nodes(mode)
            .iter()
            .map(|o| self.value_tensor(o.0))
            .collect())
    }

    /// Like [`Executor::try_forward`] but writes the first output into
    /// `output` (reshaped if needed) instead of allocating a new tensor.
    pub fn forward_into<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        input: &Tensor,
        mode: Mode,
        output: &mut Tensor,
    ) -> Result<(), ExecError> {
        self.run_forward(params.param_ref(), &[input], mode)?;
        let out = self.output_node(mode).0;
        self.copy_value(out, output);
        Ok(())
    }

    /// Like [`Executor::try_forward_multi`] but writes into `outputs`
    /// (resized to one tensor per output, each reshaped if needed).
    pub fn forward_multi_into<P: ParamSource + ?Sized>(
        &mut self,
        params: &P,
        inputs: &[&Tensor],
        mode: Mode,
        outputs: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        self.run_forward(params.param_ref(), inputs, mode)?;
        let nodes = self.output_nodes(mode);
        outputs.truncate(nodes.len());
        while outputs.len() < nodes.len() {
            outputs.push(Tensor::zeros(IxDyn(&[0])));
        }
        for (node, out) in nodes.iter().zip(outputs.iter_mut()) {
            self.copy_value(node.0, out);
        }
        Ok(())
    }

    /// The buffer holding node `i`'s value.
    fn buffer(&self, plan: &Plan, i: usize) -> usize {
        match &self.memory {
            Some(memory) => memory.slot[i],
            None => plan.storage[i],
        }
    }

    /// Node `i`'s value from the last forward (`batch * example_len` values).
    fn value_slice(&self, i: usize) -> &[f32] {
        let Ok(plan) = &self.plan else {
            return &[];
        };
        let len = self.state.batch * plan.example_len[i];
        self.state
            .values
            .get(self.buffer(plan, i))
            .and_then(|v| v.get(..len))
            .unwrap_or(&[])
    }

    fn copy_value(&self, node: usize, output: &mut Tensor) {
        let shape = self.value_shape(node);
        if output.shape() != shape.as_slice() || !output.is_standard_layout() {
            *output = Tensor::zeros(IxDyn(&shape));
        }
        let src = self.value_slice(node);
        match output.as_slice_mut() {
            Some(dst) if dst.len() == src.len() => dst.copy_from_slice(src),
            _ => output.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        }
    }

    /// The value of node `i` from the last forward as a `[batch, ...]` tensor
    /// (`None` before any forward, for an out-of-range node, or for a node
    /// the last forward did not run; for [`Executor::for_inference`], `None`
    /// for every node but the graph outputs, whose buffers others reuse).
    pub fn node_value(&self, node: NodeId) -> Option<Tensor> {
        let plan = self.plan.as_ref().ok()?;
        let mode = self.state.last?;
        let live = plan.live(mode).get(node.0).copied()?;
        let kept = self.memory.is_none() || plan.outputs.contains(&node.0);
        (live && kept).then(|| self.value_tensor(node.0))
    }

    fn value_shape(&self, i: usize) -> Vec<usize> {
        let mut shape = vec![self.state.batch];
        shape.extend_from_slice(&self.graph.nodes[i].shape);
        shape
    }

    fn value_tensor(&self, i: usize) -> Tensor {
        let data = self.value_slice(i).to_vec();
        Tensor::from_shape_vec(IxDyn(&self.value_shape(i)), data).expect("buffer matches shape")
    }

    /// Folds the batch statistics of the last [`Mode::Train`] forward into
    /// the moving statistics of every batch norm that used them (those not
    /// frozen): `moving_mean = moving_mean * momentum + mean * (1 - momentum)`
    /// and likewise `moving_variance` with the batch's biased variance
    /// (Keras 3 `BatchNormalization`). Each forward's statistics are applied
    /// at most once; after an inference forward, or a forward on an empty
    /// batch, nothing changes. Returns how many batch norms were updated.
    pub fn update_moving_statistics(
        &mut self,
        params: &mut ParamStore,
    ) -> Result<usize, ExecError> {
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        params.check(&self.graph)?;
        let mut updated = 0;
        for (i, step) in plan.steps.iter().enumerate() {
            let Step::BatchNorm {
                momentum,
                moving_mean,
                moving_variance,
                ..
            } = step
            else {
                continue;
            };
            let saved = &mut self.state.bn[i];
            if !saved.pending {
                continue;
            }
            saved.pending = false;
            for (id, batch) in [(moving_mean, &saved.mean), (moving_variance, &saved.var)] {
                let t = &mut params.values[id.0];
                let kerr = |source| ExecError::Kernel {
                    node: i,
                    op: "batch_norm",
                    source,
                };
                match t.as_slice_mut() {
                    Some(m) => update_moving(m, batch, *momentum).map_err(kerr)?,
                    None => {
                        let mut m: Vec<f32> = t.iter().copied().collect();
                        update_moving(&mut m, batch, *momentum).map_err(kerr)?;
                        t.iter_mut().zip(m).for_each(|(d, s)| *d = s);
                    }
                }
            }
            updated += 1;
        }
        Ok(updated)
    }

    fn run_forward(
        &mut self,
        params: ParamsRef<'_>,
        inputs: &[&Tensor],
        mode: Mode,
    ) -> Result<(), ExecError> {
        crate::threads::on_worker(|| self.run_forward_on_worker(params, inputs, mode))
    }

    /// [`Executor::run_forward`], on a worker of the current rayon pool.
    fn run_forward_on_worker(
        &mut self,
        params: ParamsRef<'_>,
        inputs: &[&Tensor],
        mode: Mode,
    ) -> Result<(), ExecError> {
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        if let Mode::Train { .. } = mode {
            if self.memory.is_some() {
                return Err(ExecError::InferenceOnly(
                    "an executor made by Executor::for_inference runs Mode::Inference only",
                ));
            }
            if params.is_prepared() {
                return Err(ExecError::InferenceOnly(
                    "prepared InferenceParams run Mode::Inference only (batch norms may be \
                     folded into the kernels); train on the model's ParamStore",
                ));
            }
        }
        self.check_inputs(inputs)?;
        let st = &mut self.state;
        let spare = st.spare_params.take().unwrap_or(Resolved {
            data: Vec::new(),
            packed: Vec::new(),
        });
        let spare = Resolved {
            data: recycle(spare.data),
            packed: recycle(spare.packed),
        };
        let resolved = params.resolve(&self.graph, &plan.read, plan.fingerprint, spare)?;
        let result = forward_steps(
            plan,
            self.memory.as_ref(),
            &self.graph,
            st,
            &resolved,
            inputs,
            mode,
        );
        st.spare_params = Some(Resolved {
            data: recycle(resolved.data),
            packed: recycle(resolved.packed),
        });
        result
    }

    /// Back-propagates `grad_output` (d loss / d first output of the last
    /// forward, same shape) and returns d loss / d param for every parameter,
    /// aligned with `Graph::params`. Other outputs (if any) get no gradient.
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

    /// Back-propagates one gradient per graph output (d loss / d each output
    /// of the last forward, in `Graph::output_ids` order); returns d loss /
    /// d param for every parameter.
    pub fn try_backward_multi(
        &mut self,
        params: &ParamStore,
        grad_outputs: &[&Tensor],
    ) -> Result<Vec<Tensor>, ExecError> {
        let mut grads = ParamStore::zeros_like(&self.graph).values;
        self.backward_multi_into(params, grad_outputs, &mut grads)?;
        Ok(grads)
    }

    /// Back-propagates into caller-owned gradient tensors (one per parameter,
    /// re-created if missing or misshaped; every element is overwritten), so a
    /// training loop can reuse them from step to step. `grad_output` is
    /// d loss / d the first output; other outputs get no gradient.
    ///
    /// Gradients are accumulated in a fixed order, so they are bit-identical
    /// from run to run for the same inputs.
    pub fn backward_into(
        &mut self,
        params: &ParamStore,
        grad_output: &Tensor,
        grads: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        self.run_backward(params, &[(0, grad_output)], grads)
    }

    /// [`Executor::backward_into`] with one gradient per graph output.
    pub fn backward_multi_into(
        &mut self,
        params: &ParamStore,
        grad_outputs: &[&Tensor],
        grads: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let expected = self.graph.output_ids().len();
        if grad_outputs.len() != expected {
            return Err(ExecError::GradCount {
                expected,
                got: grad_outputs.len(),
            });
        }
        let seeds: Vec<(usize, &Tensor)> = grad_outputs.iter().copied().enumerate().collect();
        self.run_backward(params, &seeds, grads)
    }

    /// Backward from `seeds`: (output number, d loss / d that output).
    fn run_backward(
        &mut self,
        params: &ParamStore,
        seeds: &[(usize, &Tensor)],
        grads: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        crate::threads::on_worker(|| self.run_backward_on_worker(params, seeds, grads))
    }

    /// [`Executor::run_backward`], on a worker of the current rayon pool.
    fn run_backward_on_worker(
        &mut self,
        params: &ParamStore,
        seeds: &[(usize, &Tensor)],
        grads: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let plan = self.plan.as_ref().map_err(Clone::clone)?;
        if self.memory.is_some() {
            return Err(ExecError::InferenceOnly(
                "backward needs an executor made by Executor::new (Executor::for_inference \
                 keeps only the values its memory plan needs)",
            ));
        }
        let Some(mode) = self.state.last else {
            return Err(ExecError::NoForward);
        };
        let outputs = plan.outputs(mode);
        for &(k, g) in seeds {
            let Some(&o) = outputs.get(k) else {
                return Err(ExecError::GradCount {
                    expected: outputs.len(),
                    got: k + 1,
                });
            };
            let expected = self.value_shape(o);
            if g.shape() != expected.as_slice() {
                return Err(ExecError::GradShape {
                    expected,
                    got: g.shape().to_vec(),
                });
            }
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
        let spare = self.state.spare_params.take().unwrap_or(Resolved {
            data: Vec::new(),
            packed: Vec::new(),
        });
        let spare = Resolved {
            data: recycle(spare.data),
            packed: recycle(spare.packed),
        };
        let resolved =
            ParamsRef::Store(params).resolve(&self.graph, &plan.read, plan.fingerprint, spare)?;
        let p = |id: ParamId| -> &[f32] { &resolved.data[id.0] };
        let trainable: &[bool] = &plan.trainable;
        let batch = self.state.batch;
        let st = &mut self.state;
        let mut written = std::mem::take(&mut st.written);
        written.clear();
        written.resize(grads.len(), false);
        st.grad_ready.iter_mut().for_each(|r| *r = false);
        if let Some(prof) = st.profile.as_mut() {
            prof.iter_mut().for_each(|t| t.backward_s = 0.0);
        }
        // Gradient slots for this batch (allocated once per batch size; a
        // slot only grows).
        for (buf, &len) in st.grads.iter_mut().zip(&plan.grad_slot_len) {
            let need = len * batch;
            if buf.len() < need {
                buf.reserve_exact(need - buf.len());
                buf.resize(need, 0.0);
            }
        }
        let gs: &[usize] = &plan.grad_slot;

        // Seed the output gradients (summed where outputs share a buffer).
        for &(k, g) in seeds {
            let so = plan.storage[outputs[k]];
            match g.as_slice() {
                Some(s) => deliver(&mut st.grads, gs, &mut st.grad_ready, so, s),
                None => {
                    let v: Vec<f32> = g.iter().copied().collect();
                    deliver(&mut st.grads, gs, &mut st.grad_ready, so, &v);
                }
            }
        }

        let live = plan.live(mode);
        for i in (0..plan.steps.len()).rev() {
            let step = &plan.steps[i];
            if !live[i]
                || matches!(step, Step::Input { .. } | Step::Alias)
                || !plan.needs_grad[i]
                || !st.grad_ready[i]
            {
                continue; // nothing to do, or no path from this node to an output
            }
            let started = st.profile.is_some().then(std::time::Instant::now);
            let kerr = |source: KernelError| ExecError::Kernel {
                node: i,
                op: self.graph.nodes[i].op.name(),
                source,
            };
            // d output, taken out of its slot while the step runs (no other
            // gradient alive now shares the slot; see plan_gradients).
            let own = gs[i];
            let mut dy_buf = std::mem::take(&mut st.grads[own]);
            let dy = &mut dy_buf[..batch * plan.example_len[i]];
            if let Step::Add | Step::Multiply | Step::Concat { .. } = step {
                let xs: Vec<&[f32]> = plan.inputs_of[i]
                    .iter()
                    .map(|&j| &st.values[plan.storage[j]][..])
                    .collect();
                let mut scratch = std::mem::take(&mut st.scratch);
                for (k, &src) in plan.inputs_of[i].iter().enumerate() {
                    if !plan.needs_grad[src] {
                        continue;
                    }
                    let ps = plan.storage[src];
                    scratch.resize(batch * plan.example_len[src], 0.0);
                    let contribution: &[f32] = match step {
                        Step::Add => &*dy,
                        Step::Multiply => {
                            multiply_backward(&xs, k, dy, &mut scratch).map_err(kerr)?;
                            &scratch
                        }
                        Step::Concat { outer, inner } => {
                            let s = ConcatShape {
                                outer: batch * outer,
                                inner: inner.clone(),
                            };
                            concat_backward(&s, k, dy, &mut scratch).map_err(kerr)?;
                            &scratch
                        }
                        _ => unreachable!("join steps only"),
                    };
                    deliver(&mut st.grads, gs, &mut st.grad_ready, ps, contribution);
                }
                st.scratch = scratch;
                st.grads[own] = dy_buf;
                if let (Some(t0), Some(prof)) = (started, st.profile.as_mut()) {
                    prof[i].backward_s = t0.elapsed().as_secs_f64();
                }
                continue;
            }

            let src = plan.inputs_of[i][0];
            let ps = plan.storage[src];
            let need_dx = plan.needs_grad[src];
            let in_len = batch * plan.example_len[src];
            let accumulate = st.grad_ready[ps];
            // Shape-preserving element-wise steps turn dy into d input in
            // dy's buffer.
            let dx_is_dy = matches!(
                step,
                Step::BiasAdd { .. } | Step::Act { .. } | Step::Dropout { .. }
            );
            // d input computed in place over dy: the plan gave d input this
            // step's slot, which it does only where this step writes it first.
            let in_place = need_dx && gs[ps] == own;
            if in_place && (!dx_is_dy || accumulate) {
                return Err(ExecError::Graph {
                    node: i,
                    op: self.graph.nodes[i].op.name(),
                    reason: "gradient memory plan: an input gradient shares the output \
                             gradient's buffer"
                        .into(),
                });
            }
            // The buffer receiving d input when a kernel writes it: its slot
            // (overwritten) if no other reader wrote it yet, else a temporary
            // added afterwards.
            let separate_dx = need_dx && !dx_is_dy;
            let mut dx_buf = if !separate_dx {
                AlignedBuf::new()
            } else if accumulate {
                let mut b = std::mem::take(&mut st.dx_scratch);
                if b.len() < in_len {
                    b.resize(in_len, 0.0);
                }
                b
            } else {
                std::mem::take(&mut st.grads[gs[ps]])
            };
            let dx = &mut dx_buf[..if separate_dx { in_len } else { 0 }];
            let x: &[f32] = &st.values[ps];
            let y: &[f32] = &st.values[i];
            match step {
                Step::Input { .. }
                | Step::Alias
                | Step::Add
                | Step::Multiply
                | Step::Concat { .. } => unreachable!("handled above"),
                Step::Conv {
                    attrs,
                    in_h,
                    in_w,
                    kernel,
                    bias,
                    act,
                    ..
                } => {
                    // With a residual input, dz (left in dy) is also its
                    // gradient: delivered below.
                    let s = Conv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                    let act = plan.act(i, *act, mode);
                    let mut dk = GradBuf::take(grads, &mut written, trainable, Some(*kernel));
                    let mut db = GradBuf::take(grads, &mut written, trainable, *bias);
                    conv2d_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        act,
                        &mut *dy,
                        need_dx.then_some(&mut *dx),
                        dk.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
                    db.finish(grads, *bias);
                }
                Step::Depthwise {
                    attrs,
                    in_h,
                    in_w,
                    kernel,
                    bias,
                    act,
                } => {
                    let s = DepthwiseConv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                    let act = plan.act(i, *act, mode);
                    let mut dk = GradBuf::take(grads, &mut written, trainable, Some(*kernel));
                    let mut db = GradBuf::take(grads, &mut written, trainable, *bias);
                    depthwise_conv2d_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        act,
                        &mut *dy,
                        need_dx.then_some(&mut *dx),
                        dk.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
                    db.finish(grads, *bias);
                }
                Step::Transpose {
                    attrs,
                    in_h,
                    in_w,
                    out_h,
                    out_w,
                    kernel,
                } => {
                    let s = Conv2dTransposeShape::new(attrs, batch, *in_h, *in_w, *out_h, *out_w)
                        .map_err(kerr)?;
                    let mut dk = GradBuf::take(grads, &mut written, trainable, Some(*kernel));
                    conv2d_transpose_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        Activation::Linear,
                        &mut *dy,
                        need_dx.then_some(&mut *dx),
                        dk.slice(),
                        None,
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
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
                    let mut dk = GradBuf::take(grads, &mut written, trainable, Some(*kernel));
                    let mut db = GradBuf::take(grads, &mut written, trainable, *bias);
                    matmul_backward(
                        &s,
                        x,
                        p(*kernel),
                        y,
                        act,
                        &mut *dy,
                        need_dx.then_some(&mut *dx),
                        dk.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dk.finish(grads, Some(*kernel));
                    db.finish(grads, *bias);
                }
                Step::BiasAdd { bias } => {
                    let mut db = GradBuf::take(grads, &mut written, trainable, Some(*bias));
                    if let Some(buf) = db.slice() {
                        column_sums(dy, plan.last_dim[i], buf).map_err(kerr)?;
                    }
                    db.finish(grads, Some(*bias));
                }
                Step::Act { act } => {
                    if need_dx {
                        activation_backward_inplace(*act, y, dy, plan.last_dim[i]).map_err(kerr)?;
                    }
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
                }
                Step::MaxPool { attrs, in_shape } => {
                    if need_dx {
                        let [h, w, c] = *in_shape;
                        let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                        max_pool2d_backward(&s, &st.argmax[i], dy, dx).map_err(kerr)?;
                    }
                }
                Step::AvgPool { attrs, in_shape } => {
                    if need_dx {
                        let [h, w, c] = *in_shape;
                        let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                        avg_pool2d_backward(&s, dy, dx).map_err(kerr)?;
                    }
                }
                Step::GlobalAvgPool { in_shape } => {
                    if need_dx {
                        global_avg_pool2d_backward(&image(batch, *in_shape), dy, dx)
                            .map_err(kerr)?;
                    }
                }
                Step::GlobalMaxPool { in_shape } => {
                    if need_dx {
                        let s = image(batch, *in_shape);
                        global_max_pool2d_backward(&s, &st.argmax[i], dy, dx).map_err(kerr)?;
                    }
                }
                Step::ZeroPad { pads, in_shape } => {
                    if need_dx {
                        zero_padding2d_backward(&image(batch, *in_shape), pads, dy, dx)
                            .map_err(kerr)?;
                    }
                }
                Step::BatchNorm {
                    channels,
                    gamma,
                    beta,
                    ..
                } => {
                    let s = bn_shape(batch * plan.example_len[i], *channels);
                    let saved = &st.bn[i];
                    let mut dg = GradBuf::take(grads, &mut written, trainable, *gamma);
                    let mut db = GradBuf::take(grads, &mut written, trainable, *beta);
                    batch_norm_backward(
                        &s,
                        x,
                        &saved.mean,
                        &saved.inv_std,
                        gamma.map(p),
                        saved.batch_stats,
                        dy,
                        need_dx.then_some(&mut *dx),
                        dg.slice(),
                        db.slice(),
                    )
                    .map_err(kerr)?;
                    dg.finish(grads, *gamma);
                    db.finish(grads, *beta);
                }
                Step::UpSample {
                    in_shape,
                    size,
                    interpolation,
                } => {
                    if need_dx {
                        up_sampling2d_backward(
                            &image(batch, *in_shape),
                            *size,
                            *interpolation,
                            dy,
                            dx,
                        )
                        .map_err(kerr)?;
                    }
                }
            }
            if need_dx {
                // d input is in dy (element-wise steps) or in dx.
                let d_input: &[f32] = if dx_is_dy { dy } else { dx };
                if in_place {
                    // Already in its slot (this step's own).
                    st.grad_ready[ps] = true;
                } else if accumulate {
                    let target = &mut st.grads[gs[ps]][..in_len];
                    for (t, v) in target.iter_mut().zip(d_input) {
                        *t += v;
                    }
                } else if dx_is_dy {
                    st.grads[gs[ps]][..in_len].copy_from_slice(d_input);
                    st.grad_ready[ps] = true;
                } else {
                    st.grad_ready[ps] = true;
                }
                if separate_dx {
                    if accumulate {
                        st.dx_scratch = dx_buf;
                    } else {
                        st.grads[gs[ps]] = dx_buf;
                    }
                }
            }
            if let Step::Conv { residual: true, .. } = step {
                // d residual = dz, left in dy by the conv's backward.
                let r = plan.inputs_of[i][1];
                if plan.needs_grad[r] {
                    deliver(&mut st.grads, gs, &mut st.grad_ready, plan.storage[r], dy);
                }
            }
            st.grads[own] = dy_buf;
            if let (Some(t0), Some(prof)) = (started, st.profile.as_mut()) {
                prof[i].backward_s = t0.elapsed().as_secs_f64();
            }
        }
        // Parameters never reached (frozen, or off the path to the outputs) get zeros.
        for (g, w) in grads.iter_mut().zip(&written) {
            if !*w {
                g.fill(0.0);
            }
        }
        st.written = written;
        st.spare_params = Some(Resolved {
            data: recycle(resolved.data),
            packed: recycle(resolved.packed),
        });
        Ok(())
    }
}

/// One forward pass over the nodes `mode` needs, writing each value into
/// its buffer (per node, or per memory-plan slot when `memory` is given,
/// computing in place where the plan says so).
fn forward_steps(
    plan: &Plan,
    memory: Option<&Memory>,
    graph: &Graph,
    st: &mut State,
    params: &Resolved<'_>,
    inputs: &[&Tensor],
    mode: Mode,
) -> Result<(), ExecError> {
    let p = |id: ParamId| -> &[f32] { &params.data[id.0] };
    let packed = |id: ParamId| params.packed[id.0];
    let batch = inputs[0].shape()[0];
    st.batch = batch;
    st.last = None;
    st.bn.iter_mut().for_each(|b| b.pending = false);
    if let Some(prof) = st.profile.as_mut() {
        prof.iter_mut()
            .for_each(|t| (t.forward_s, t.backward_s) = (0.0, 0.0));
    }
    if let Some(m) = memory {
        for (buf, &len) in st.values.iter_mut().zip(&m.slot_len) {
            buf.resize(len * batch, 0.0);
        }
    }
    let live = plan.live(mode);
    let mut spare_inputs = std::mem::take(&mut st.spare_inputs);
    for (i, step) in plan.steps.iter().enumerate() {
        if !live[i] || matches!(step, Step::Alias) {
            continue;
        }
        let started = st.profile.is_some().then(std::time::Instant::now);
        let len = batch * plan.example_len[i];
        let (b, in_place) = match memory {
            Some(m) => (m.slot[i], m.in_place[i]),
            None => (i, None),
        };
        let buffer_of = |j: usize| match memory {
            Some(m) => m.slot[j],
            None => plan.storage[j],
        };
        let mut buf = std::mem::take(&mut st.values[b]);
        if memory.is_none() {
            buf.resize(len, 0.0);
        }
        let out = &mut buf[..len];
        // The inputs' values (the one overwritten in place is `out` itself).
        let mut xs: Vec<&[f32]> = recycle(std::mem::take(&mut spare_inputs));
        for (k, &j) in plan.inputs_of[i].iter().enumerate() {
            if in_place == Some(k) {
                xs.push(&[]);
            } else {
                xs.push(&st.values[buffer_of(j)][..batch * plan.example_len[j]]);
            }
        }
        let x: &[f32] = xs.first().copied().unwrap_or(&[]);
        let kerr = |source: KernelError| ExecError::Kernel {
            node: i,
            op: graph.nodes[i].op.name(),
            source,
        };
        match step {
            Step::Input { index } => {
                let input = inputs[*index];
                match input.as_slice() {
                    Some(s) => out.copy_from_slice(s),
                    None => out.iter_mut().zip(input.iter()).for_each(|(d, s)| *d = *s),
                }
            }
            Step::Conv {
                attrs,
                in_h,
                in_w,
                kernel,
                bias,
                act,
                residual,
            } => {
                let s = Conv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                let act = plan.act(i, *act, mode);
                let k = match packed(*kernel) {
                    Some(rhs) => ConvKernel::Prepared(rhs),
                    None => ConvKernel::Hwio(p(*kernel)),
                };
                let r = residual.then(|| xs[1]);
                fused_conv2d_forward(&s, x, k, bias.map(p), r, act, out).map_err(kerr)?;
            }
            Step::Depthwise {
                attrs,
                in_h,
                in_w,
                kernel,
                bias,
                act,
            } => {
                let s = DepthwiseConv2dShape::new(attrs, batch, *in_h, *in_w).map_err(kerr)?;
                let act = plan.act(i, *act, mode);
                depthwise_conv2d_forward(&s, x, p(*kernel), bias.map(p), act, out).map_err(kerr)?;
            }
            Step::Transpose {
                attrs,
                in_h,
                in_w,
                out_h,
                out_w,
                kernel,
            } => {
                let s = Conv2dTransposeShape::new(attrs, batch, *in_h, *in_w, *out_h, *out_w)
                    .map_err(kerr)?;
                conv2d_transpose_forward(&s, x, p(*kernel), None, Activation::Linear, out)
                    .map_err(kerr)?;
            }
            Step::MatMul {
                in_features,
                units,
                kernel,
                bias,
                act,
            } => {
                let rows = len / units.max(&1);
                let act = plan.act(i, *act, mode);
                match packed(*kernel) {
                    Some(rhs) => matmul_forward_prepared(rows, x, rhs, bias.map(p), act, out)
                        .map_err(kerr)?,
                    None => {
                        let s = MatMulShape {
                            batch: rows,
                            in_features: *in_features,
                            units: *units,
                        };
                        matmul_forward(&s, x, p(*kernel), bias.map(p), act, out).map_err(kerr)?;
                    }
                }
            }
            Step::BiasAdd { bias } => match in_place {
                Some(_) => bias_add_inplace(out, p(*bias)).map_err(kerr)?,
                None => bias_add_forward(x, p(*bias), out).map_err(kerr)?,
            },
            Step::Act { act } => match in_place {
                Some(_) => activation_forward_inplace(*act, out, plan.last_dim[i]).map_err(kerr)?,
                None => activation_forward(*act, x, out, plan.last_dim[i]).map_err(kerr)?,
            },
            Step::MaxPool { attrs, in_shape } => {
                let [h, w, c] = *in_shape;
                let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                if memory.is_some() {
                    // An inference-only executor never runs a backward pass,
                    // so no argmax (the pooling without it is about twice as
                    // fast: Xception's pools 2.0 -> 1.0 ms).
                    max_pool2d_forward(&s, x, out, None).map_err(kerr)?;
                } else {
                    let mut am = std::mem::take(&mut st.argmax[i]);
                    am.resize(len, 0);
                    max_pool2d_forward(&s, x, out, Some(&mut am)).map_err(kerr)?;
                    st.argmax[i] = am;
                }
            }
            Step::AvgPool { attrs, in_shape } => {
                let [h, w, c] = *in_shape;
                let s = Pool2dShape::new(attrs, batch, h, w, c).map_err(kerr)?;
                avg_pool2d_forward(&s, x, out).map_err(kerr)?;
            }
            Step::GlobalAvgPool { in_shape } => {
                global_avg_pool2d_forward(&image(batch, *in_shape), x, out).map_err(kerr)?;
            }
            Step::GlobalMaxPool { in_shape } => {
                let mut am = std::mem::take(&mut st.argmax[i]);
                am.resize(len, 0);
                global_max_pool2d_forward(&image(batch, *in_shape), x, out, &mut am)
                    .map_err(kerr)?;
                st.argmax[i] = am;
            }
            Step::ZeroPad { pads, in_shape } => {
                zero_padding2d_forward(&image(batch, *in_shape), pads, x, out).map_err(kerr)?;
            }
            Step::Alias => unreachable!("skipped above"),
            Step::Dropout { rate } => match mode {
                Mode::Train { seed } => {
                    let mut mask = std::mem::take(&mut st.masks[i]);
                    mask.resize(len, 0.0);
                    dropout_mask(*rate, seed, i as u64, &mut mask).map_err(kerr)?;
                    dropout_apply(x, &mask, out).map_err(kerr)?;
                    st.masks[i] = mask;
                }
                // Identity (already in place when the plan overwrites the input).
                Mode::Inference => {
                    if in_place.is_none() {
                        out.copy_from_slice(x);
                    }
                }
            },
            Step::BatchNorm {
                channels,
                epsilon,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                frozen,
                ..
            } => {
                let c = *channels;
                let s = bn_shape(len, c);
                let saved = &mut st.bn[i];
                saved.mean.resize(c, 0.0);
                saved.var.resize(c, 0.0);
                saved.inv_std.resize(c, 0.0);
                let batch_stats = matches!(mode, Mode::Train { .. }) && !*frozen;
                if batch_stats {
                    batch_norm_train_forward(
                        &s,
                        x,
                        gamma.map(p),
                        beta.map(p),
                        *epsilon,
                        out,
                        &mut saved.mean,
                        &mut saved.var,
                        &mut saved.inv_std,
                    )
                    .map_err(kerr)?;
                } else if in_place.is_some() {
                    batch_norm_inference_inplace(
                        &s,
                        out,
                        gamma.map(p),
                        beta.map(p),
                        p(*moving_mean),
                        p(*moving_variance),
                        *epsilon,
                        &mut saved.inv_std,
                    )
                    .map_err(kerr)?;
                } else {
                    batch_norm_inference_forward(
                        &s,
                        x,
                        gamma.map(p),
                        beta.map(p),
                        p(*moving_mean),
                        p(*moving_variance),
                        *epsilon,
                        out,
                        &mut saved.inv_std,
                    )
                    .map_err(kerr)?;
                }
                if !batch_stats {
                    saved.mean.copy_from_slice(p(*moving_mean));
                }
                saved.batch_stats = batch_stats;
                saved.pending = batch_stats && s.rows > 0;
            }
            Step::Add => match in_place {
                Some(k) => add_inplace(out, &xs, k).map_err(kerr)?,
                None => add_forward(&xs, out).map_err(kerr)?,
            },
            Step::Multiply => match in_place {
                Some(k) => multiply_inplace(out, &xs, k).map_err(kerr)?,
                None => multiply_forward(&xs, out).map_err(kerr)?,
            },
            Step::Concat { outer, inner } => {
                let s = ConcatShape {
                    outer: batch * outer,
                    inner: inner.clone(),
                };
                concat_forward(&s, &xs, out).map_err(kerr)?;
            }
            Step::UpSample {
                in_shape,
                size,
                interpolation,
            } => {
                up_sampling2d_forward(&image(batch, *in_shape), *size, *interpolation, x, out)
                    .map_err(kerr)?;
            }
        }
        spare_inputs = recycle(xs);
        st.values[b] = buf;
        if let (Some(t0), Some(prof)) = (started, st.profile.as_mut()) {
            prof[i].forward_s = t0.elapsed().as_secs_f64();
        }
    }
    st.spare_inputs = spare_inputs;
    st.last = Some(mode);
    Ok(())
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
