//! The op graph: primitive operations in an arena, addressed by [`NodeId`],
//! in topological order (every node's inputs come before it).
//!
//! Tensors are f32 in NHWC layout. Node shapes are per example (batch left out):
//! `[h, w, c]` for feature maps and `[features]` after flatten or dense.
//! Parameters live in [`Graph::params`] and are referred to by [`ParamId`];
//! their names are the checkpoint tensor names (`conv2d/kernel`, `dense/bias`).

use crate::model::{Activation, Pads2d};
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
    /// All zeros (Keras's default bias initialiser).
    Zeros,
}

/// A trainable (or frozen) tensor of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    /// Checkpoint name, `<layer>/kernel` or `<layer>/bias`.
    pub name: String,
    /// Shape: conv kernel `[kh, kw, in_channels, filters]`, dense kernel
    /// `[in_features, units]`, bias `[channels]`.
    pub shape: Vec<usize>,
    pub init: Init,
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

/// Attributes of a 2-D convolution (no dilation, no groups in this version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conv2dAttrs {
    pub in_channels: usize,
    pub filters: usize,
    pub kernel_size: [usize; 2],
    pub strides: [usize; 2],
    /// Explicit zero padding (TensorFlow's `same` rule already applied).
    pub pads: Pads2d,
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
    /// `Conv2d`, then `BiasAdd` (if `bias`), then `activation`, computed in
    /// one pass: bias and activation are applied to each output tile while
    /// it is still in cache.
    FusedConv2d {
        attrs: Conv2dAttrs,
        kernel: ParamId,
        bias: Option<ParamId>,
        activation: Activation,
    },
    /// `MatMul`, then `BiasAdd` (if `bias`), then `activation`, in one pass.
    #[serde(rename = "fused_matmul")]
    FusedMatMul {
        units: usize,
        kernel: ParamId,
        bias: Option<ParamId>,
        activation: Activation,
    },
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
        }
    }

    /// Parameters the op reads, in order (kernel, then bias).
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Conv2d { kernel, .. } | Op::MatMul { kernel, .. } => vec![*kernel],
            Op::BiasAdd { bias } => vec![*bias],
            Op::FusedConv2d { kernel, bias, .. } | Op::FusedMatMul { kernel, bias, .. } => {
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

/// An op graph with one input and one output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    pub input: NodeId,
    pub output: NodeId,
    pub params: Vec<Param>,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// How many nodes read each node's output (the graph output counts as a reader).
    pub fn consumer_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for node in &self.nodes {
            for input in &node.inputs {
                counts[input.0] += 1;
            }
        }
        counts[self.output.0] += 1;
        counts
    }

    /// Total number of parameter scalars.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(Param::len).sum()
    }
}
