//! The op graph: primitive operations in an arena, addressed by [`NodeId`],
//! in topological order (every node's inputs come before it).
//!
//! Tensors are f32 in NHWC layout. Node shapes are per example (batch left out):
//! `[h, w, c]` for feature maps and `[features]` after flatten or dense.
//! Parameters live in [`Graph::params`] and are referred to by [`ParamId`];
//! their names are the checkpoint tensor names (`conv2d/kernel`, `dense/bias`).

use crate::model::{Activation, Interpolation, Pads2d};
use serde::Serialize;

/// Index of a node in [`Graph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeId(pub usize);

/// Index of a parameter in [`Graph::params`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ParamId(pub usize);

/// How a parameter is initialised before training (Keras defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    /// Glorot/Xavier uniform: U(-l, l) with `l = sqrt(6 / (fan_in + fan_out))`
    /// (Glorot & Bengio 2010; Keras `GlorotUniform`). For a conv kernel
    /// `fan_in = kh * kw * in_channels`, `fan_out = kh * kw * filters`.
    GlorotUniform { fan_in: usize, fan_out: usize },
    /// All zeros (Keras's default bias initialiser; batch norm's `beta` and
    /// `moving_mean`).
    Zeros,
    /// All ones (batch norm's `gamma` and `moving_variance`, Keras `Ones`).
    Ones,
    /// Not initialised or loaded: computed from other parameters of the
    /// graph before it runs (constant folding, e.g. a batch norm folded into
    /// the preceding convolution). Only inference graphs have such
    /// parameters; they are never trained or written to checkpoints, and the
    /// parameters they read come before them in [`Graph::params`].
    Folded { fold: Fold },
}

/// The frozen statistics of an inference-mode batch norm, as read by a
/// [`Fold`]: per channel `o`, `scale[o] = gamma[o] / sqrt(moving_variance[o] + epsilon)`
/// (`gamma` 1 when absent) and `shift[o] = beta[o] - moving_mean[o] * scale[o]`
/// (`beta` 0 when absent). Every parameter is `[channels]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchNormStats {
    pub gamma: Option<ParamId>,
    pub beta: Option<ParamId>,
    pub moving_mean: ParamId,
    pub moving_variance: ParamId,
    /// Added to the variance exactly once, inside the square root.
    pub epsilon: f32,
}

impl BatchNormStats {
    /// The parameters read, in Keras's order (gamma, beta, moving mean, moving variance).
    pub fn params(&self) -> Vec<ParamId> {
        self.gamma
            .iter()
            .chain(&self.beta)
            .copied()
            .chain([self.moving_mean, self.moving_variance])
            .collect()
    }
}

/// How a [`Init::Folded`] parameter is computed from other parameters
/// (batch-norm folding, Jacob et al. 2018, "Quantization and Training of
/// Neural Networks for Efficient Integer-Arithmetic-Only Inference", sec. 3.2;
/// the same rewrite as TensorFlow's `fold_batch_norms` and ONNX Runtime's
/// `ConvBNFusion`). With `scale` / `shift` of [`BatchNormStats`]:
/// `bn(conv(x, k) + b) = conv(x, k * scale) + (b * scale + shift)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "fold", rename_all = "snake_case")]
pub enum Fold {
    /// `kernel * scale[o]`, where the output channel `o` is the kernel's
    /// flat row-major index modulo the number of channels: the last axis of
    /// a conv kernel `[kh, kw, in_channels, filters]` or a dense kernel
    /// `[in_features, units]`, the last two axes of a depthwise kernel
    /// `[kh, kw, in_channels, depth_multiplier]` (`o = c * depth_multiplier + m`).
    /// Same shape as `kernel`.
    BatchNormKernel {
        kernel: ParamId,
        stats: BatchNormStats,
    },
    /// `bias[o] * scale[o] + shift[o]` (`bias` 0 when absent), `[channels]`.
    BatchNormBias {
        bias: Option<ParamId>,
        stats: BatchNormStats,
    },
}

impl Fold {
    /// The parameters the folded value is computed from.
    pub fn sources(&self) -> Vec<ParamId> {
        match self {
            Fold::BatchNormKernel { kernel, stats } => {
                std::iter::once(*kernel).chain(stats.params()).collect()
            }
            Fold::BatchNormBias { bias, stats } => {
                bias.iter().copied().chain(stats.params()).collect()
            }
        }
    }
}

/// A trainable (or frozen) tensor of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    /// Checkpoint name, as Keras names the layer's weights: `<layer>/kernel`,
    /// `<layer>/bias`, `<layer>/depthwise_kernel`, `<layer>/pointwise_kernel`
    /// (separable conv), `<layer>/gamma`, `<layer>/beta`,
    /// `<layer>/moving_mean`, `<layer>/moving_variance` (batch norm).
    pub name: String,
    /// Shape: conv kernel `[kh, kw, in_channels, filters]`, depthwise kernel
    /// `[kh, kw, in_channels, depth_multiplier]`, transposed-conv kernel
    /// `[kh, kw, filters, in_channels]`, dense kernel `[in_features, units]`,
    /// bias and batch-norm vectors `[channels]`.
    pub shape: Vec<usize>,
    pub init: Init,
    /// Whether the optimizer updates it: false for the weights of a frozen
    /// (`trainable=false`) layer and always for batch norm's moving
    /// statistics (which the executor updates itself in training).
    pub trainable: bool,
}

impl Param {
    /// Number of scalars in the parameter.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attributes of a 2-D convolution (no groups in this version).
///
/// Output pixel `o` (per axis) reads input pixels
/// `o * strides - pad_before + t * dilation_rate` for taps `t` in
/// `0..kernel_size`; the effective (dilated) kernel size is
/// `dilation_rate * (kernel_size - 1) + 1` (Keras `Conv2D`, ONNX `Conv`
/// `dilations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conv2dAttrs {
    pub in_channels: usize,
    pub filters: usize,
    pub kernel_size: [usize; 2],
    pub strides: [usize; 2],
    /// Explicit zero padding (TensorFlow's `same` rule already applied).
    pub pads: Pads2d,
    /// Spacing of the kernel taps, `[1, 1]` for an ordinary convolution.
    pub dilation_rate: [usize; 2],
}

impl Conv2dAttrs {
    /// The dilated kernel extent per axis, `dilation_rate * (kernel_size - 1) + 1`
    /// (`0` for a zero-sized kernel).
    pub fn effective_kernel_size(&self) -> [usize; 2] {
        effective_kernel_size(self.kernel_size, self.dilation_rate)
    }
}

/// `d * (k - 1) + 1` per axis (0 when `k` is 0): the extent of a dilated kernel.
pub fn effective_kernel_size(kernel_size: [usize; 2], dilation_rate: [usize; 2]) -> [usize; 2] {
    [0, 1].map(|a| {
        if kernel_size[a] == 0 {
            0
        } else {
            dilation_rate[a] * (kernel_size[a] - 1) + 1
        }
    })
}

/// Attributes of a depthwise 2-D convolution (Keras `DepthwiseConv2D`):
/// input channel `c` is convolved with its own `depth_multiplier` filters,
/// giving output channel `c * depth_multiplier + m`. Kernel
/// `[kh, kw, in_channels, depth_multiplier]`; output
/// `[oh, ow, in_channels * depth_multiplier]`. Geometry (strides, pads,
/// dilation) as in [`Conv2dAttrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DepthwiseConv2dAttrs {
    pub in_channels: usize,
    pub depth_multiplier: usize,
    pub kernel_size: [usize; 2],
    pub strides: [usize; 2],
    /// Explicit zero padding (TensorFlow's `same` rule already applied).
    pub pads: Pads2d,
    pub dilation_rate: [usize; 2],
}

/// Attributes of a transposed 2-D convolution (Keras `Conv2DTranspose`): the
/// gradient of a [`Conv2dAttrs`] convolution with respect to its input.
///
/// Input `[h, w, in_channels]`, kernel `[kh, kw, filters, in_channels]`
/// (Keras's layout), output `[oh, ow, filters]` (the node's shape). Along each
/// axis input pixel `i` adds `x[i] * kernel[t]` to output pixel
/// `o = i * strides + t * dilation_rate - pad_before` for every tap `t`;
/// contributions falling outside `0..out` are dropped and output pixels that
/// no tap reaches stay 0 (before the bias). `pads.top` / `pads.left` are the
/// `pad_before` of each axis (TensorFlow's `conv2d_transpose` padding: for
/// `same`, half of `max((in - 1) * strides + k_eff - out, 0)`, rounded down;
/// 0 for `valid`); `pads.bottom` / `pads.right` are the rest of that total,
/// recorded for dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conv2dTransposeAttrs {
    pub in_channels: usize,
    pub filters: usize,
    pub kernel_size: [usize; 2],
    pub strides: [usize; 2],
    pub pads: Pads2d,
    pub dilation_rate: [usize; 2],
}

/// Attributes of a 2-D pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pool2dAttrs {
    pub pool_size: [usize; 2],
    pub strides: [usize; 2],
    /// Padded positions never win a max and are not counted in an average.
    pub pads: Pads2d,
}

/// A primitive (or fused) operation. Each variant documents its input and
/// output shapes per example.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The model input, `[h, w, c]`.
    Input,
    /// `[h, w, in_channels]` -> `[oh, ow, filters]`, kernel `[kh, kw, in_channels, filters]`.
    Conv2d { attrs: Conv2dAttrs, kernel: ParamId },
    /// `[in_features]` -> `[units]`, kernel `[in_features, units]`.
    #[serde(rename = "matmul")]
    MatMul { units: usize, kernel: ParamId },
    /// Adds `bias` (`[c]`) along the last axis; shape unchanged.
    BiasAdd { bias: ParamId },
    /// Element-wise activation (never `Softmax`, never `Linear` when emitted
    /// by lowering); shape unchanged.
    Activation { activation: Activation },
    /// Softmax over the last axis; shape unchanged.
    Softmax,
    /// `[h, w, c]` -> `[oh, ow, c]`.
    MaxPool2d { attrs: Pool2dAttrs },
    /// `[h, w, c]` -> `[oh, ow, c]`.
    AvgPool2d { attrs: Pool2dAttrs },
    /// `[h, w, c]` -> `[h * w * c]` (row-major NHWC order; no data movement).
    Flatten,
    /// Inverted dropout (training only); shape unchanged.
    Dropout { rate: f32 },
    /// `[h, w, c]` -> `[c]`: mean over all pixels of each channel.
    GlobalAvgPool2d,
    /// `[h, w, c]` -> `[c]`: maximum over all pixels of each channel.
    GlobalMaxPool2d,
    /// `[h, w, c]` -> `[pads.top + h + pads.bottom, pads.left + w + pads.right, c]`,
    /// zeros around the image.
    ZeroPadding2d { pads: Pads2d },
    /// `Conv2d`, then `BiasAdd` (if `bias`), then (if `residual`) the
    /// element-wise sum with the node's second input, then `activation`,
    /// computed in one pass: bias, residual and activation are applied to
    /// each output tile while it is still in cache.
    ///
    /// Inputs: `[h, w, in_channels]`, and when `residual` a second input of
    /// the output's shape `[oh, ow, filters]` (a fused residual `add`, as in
    /// ResNet's `add -> relu`).
    FusedConv2d {
        attrs: Conv2dAttrs,
        kernel: ParamId,
        bias: Option<ParamId>,
        activation: Activation,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        residual: bool,
    },
    /// `MatMul`, then `BiasAdd` (if `bias`), then `activation`, in one pass.
    #[serde(rename = "fused_matmul")]
    FusedMatMul {
        units: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        activation: Activation,
    },
    /// `[h, w, in_channels]` -> `[oh, ow, in_channels * depth_multiplier]`,
    /// kernel `[kh, kw, in_channels, depth_multiplier]` (no bias: a
    /// `BiasAdd` follows when the layer has one).
    DepthwiseConv2d {
        attrs: DepthwiseConv2dAttrs,
        kernel: ParamId,
    },
    /// `DepthwiseConv2d`, then `BiasAdd` (if `bias`, `[in_channels *
    /// depth_multiplier]`), then `activation`, in one pass.
    FusedDepthwiseConv2d {
        attrs: DepthwiseConv2dAttrs,
        kernel: ParamId,
        bias: Option<ParamId>,
        activation: Activation,
    },
    /// `[h, w, in_channels]` -> `[oh, ow, filters]`, kernel
    /// `[kh, kw, filters, in_channels]` (no bias: a `BiasAdd` follows).
    Conv2dTranspose {
        attrs: Conv2dTransposeAttrs,
        kernel: ParamId,
    },
    /// Batch normalization over the last axis (Ioffe & Szegedy 2015; Keras
    /// `BatchNormalization`); shape unchanged, every parameter `[c]`:
    /// `y = gamma * (x - mean) / sqrt(var + epsilon) + beta` (`gamma` 1 when
    /// absent, `beta` 0 when absent).
    ///
    /// In training (and unless `frozen`) `mean` / `var` are the batch's mean
    /// and biased variance over all `batch * h * w` positions, and the
    /// moving statistics are updated as
    /// `moving = moving * momentum + batch_stat * (1 - momentum)`;
    /// in inference, or always when `frozen` (a `trainable=false` layer,
    /// which Keras runs in inference mode), `mean` / `var` are
    /// `moving_mean` / `moving_variance` and nothing is updated.
    BatchNorm {
        epsilon: f32,
        momentum: f32,
        gamma: Option<ParamId>,
        beta: Option<ParamId>,
        moving_mean: ParamId,
        moving_variance: ParamId,
        frozen: bool,
    },
    /// Element-wise sum of two or more inputs of the same shape (Keras `Add`).
    Add,
    /// Element-wise product of two or more inputs of the same shape (Keras `Multiply`).
    Multiply,
    /// Joins two or more inputs along `axis` (an index into the per-example
    /// shape: `2` is the channel axis of `[h, w, c]`); every other dimension
    /// agrees (Keras `Concatenate`, ONNX `Concat`).
    Concat { axis: usize },
    /// `[h, w, c]` -> `[h * size[0], w * size[1], c]` (Keras `UpSampling2D`):
    /// `nearest` repeats each pixel; `bilinear` interpolates with
    /// TensorFlow's half-pixel centres (`tf.image.resize`).
    UpSampling2d {
        size: [usize; 2],
        interpolation: Interpolation,
    },
    /// Any shape -> the node's shape, with the same number of values in the
    /// same row-major order (Keras `Reshape`; no data movement).
    Reshape,
}

impl Op {
    /// The op's name in graph dumps (`conv2d`, `bias_add`, `fused_conv2d`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d { .. } => "conv2d",
            Op::MatMul { .. } => "matmul",
            Op::BiasAdd { .. } => "bias_add",
            Op::Activation { activation } => activation.name(),
            Op::Softmax => "softmax",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::Flatten => "flatten",
            Op::Dropout { .. } => "dropout",
            Op::GlobalAvgPool2d => "global_avg_pool2d",
            Op::GlobalMaxPool2d => "global_max_pool2d",
            Op::ZeroPadding2d { .. } => "zero_padding2d",
            Op::FusedConv2d { .. } => "fused_conv2d",
            Op::FusedMatMul { .. } => "fused_matmul",
            Op::DepthwiseConv2d { .. } => "depthwise_conv2d",
            Op::FusedDepthwiseConv2d { .. } => "fused_depthwise_conv2d",
            Op::Conv2dTranspose { .. } => "conv2d_transpose",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Add => "add",
            Op::Multiply => "multiply",
            Op::Concat { .. } => "concat",
            Op::UpSampling2d { .. } => "up_sampling2d",
            Op::Reshape => "reshape",
        }
    }

    /// Parameters the op reads, in order (kernel, then bias; batch norm:
    /// gamma, beta, moving mean, moving variance, as Keras orders them).
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Conv2d { kernel, .. }
            | Op::MatMul { kernel, .. }
            | Op::DepthwiseConv2d { kernel, .. }
            | Op::Conv2dTranspose { kernel, .. } => vec![*kernel],
            Op::BatchNorm {
                gamma,
                beta,
                moving_mean,
                moving_variance,
                ..
            } => gamma
                .iter()
                .chain(beta)
                .copied()
                .chain([*moving_mean, *moving_variance])
                .collect(),
            Op::BiasAdd { bias } => vec![*bias],
            Op::FusedConv2d { kernel, bias, .. }
            | Op::FusedMatMul { kernel, bias, .. }
            | Op::FusedDepthwiseConv2d { kernel, bias, .. } => {
                std::iter::once(*kernel).chain(*bias).collect()
            }
            _ => vec![],
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    /// Producers of this node's inputs (empty for `Input`).
    pub inputs: Vec<NodeId>,
    /// Per-example output shape (NHWC without batch).
    pub shape: Vec<usize>,
    /// The spec layer this node came from (`"input"` for the input).
    pub layer: String,
    /// For a fused node: the primitive ops it replaced, in order
    /// (e.g. `["conv2d", "bias_add", "relu"]`); empty otherwise.
    pub fused: Vec<String>,
    /// The pass rule that created this node, if any (e.g. `"ConvBiasActivationFusion"`).
    pub rule: Option<String>,
}

/// An op graph with one or more inputs and outputs (a DAG: a node's value
/// may be read by several nodes and be a graph output at the same time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// The first input (`inputs[0]` when `inputs` is not empty).
    pub input: NodeId,
    /// The first output (`outputs[0]` when `outputs` is not empty).
    pub output: NodeId,
    pub params: Vec<Param>,
    /// All `Input` nodes, in the model's input order. Empty means `[input]`
    /// (graphs built by hand with one input); see [`Graph::input_ids`].
    pub inputs: Vec<NodeId>,
    /// All outputs, in the model's output order (a node may appear more than
    /// once). Empty means `[output]`; see [`Graph::output_ids`].
    pub outputs: Vec<NodeId>,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// The graph inputs: `inputs`, or `[input]` when `inputs` is empty.
    pub fn input_ids(&self) -> Vec<NodeId> {
        if self.inputs.is_empty() {
            vec![self.input]
        } else {
            self.inputs.clone()
        }
    }

    /// The graph outputs: `outputs`, or `[output]` when `outputs` is empty.
    pub fn output_ids(&self) -> Vec<NodeId> {
        if self.outputs.is_empty() {
            vec![self.output]
        } else {
            self.outputs.clone()
        }
    }

    /// How many nodes read each node's output (each graph output counts as a
    /// reader; a node reading the same value twice counts twice).
    pub fn consumer_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for node in &self.nodes {
            for input in &node.inputs {
                if let Some(c) = counts.get_mut(input.0) {
                    *c += 1;
                }
            }
        }
        for output in self.output_ids() {
            if let Some(c) = counts.get_mut(output.0) {
                *c += 1;
            }
        }
        counts
    }

    /// Total number of parameter scalars.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(Param::len).sum()
    }
}
