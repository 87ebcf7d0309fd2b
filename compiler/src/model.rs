//! The checked model: every layer resolved (Keras defaults filled in, names bound)
//! and every tensor shape known. This is the output of the front end
//! (`syntax` -> `check`) and the input of lowering (`graph::lower`).
//!
//! Shapes are per example in NHWC order with the batch dimension left out
//! (it is symbolic and printed as `None`, as Keras does): a conv output is
//! `[height, width, channels]`, a dense output is `[units]`.

use serde::Serialize;

/// A byte range `[start, end)` in the spec's source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
}

/// Convolution / pooling padding mode, as in Keras and TensorFlow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Output size `ceil(n / stride)`; total padding
    /// `max((out - 1) * stride + k - n, 0)`, the odd pixel at the bottom/right
    /// (TensorFlow's rule).
    Same,
    /// No padding; output size `floor((n - k) / stride) + 1`.
    Valid,
}

/// Explicit padding amounts in pixels, before and after, for each spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Pads2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

/// An activation function, by its Keras name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Identity (Keras `linear`, the default).
    Linear,
    Relu,
    Sigmoid,
    Tanh,
    /// Softmax over the last axis.
    Softmax,
}

impl Activation {
    /// The Keras name (`"relu"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }

    /// All activations, for "did you mean" suggestions and docs.
    pub const ALL: [Activation; 5] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Softmax,
    ];

    /// Parses a Keras activation name.
    pub fn from_name(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// What a layer computes, with every argument resolved to its final value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    /// 2-D convolution. Kernel `[kh, kw, in_channels, filters]` (Keras HWIO),
    /// bias `[filters]`.
    Conv2d {
        filters: usize,
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        activation: Activation,
        use_bias: bool,
    },
    /// Max pooling; `strides` defaults to `pool_size` (Keras).
    MaxPool2d {
        pool_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    },
    /// Average pooling; with `same` padding the mean is over the window's
    /// pixels inside the image only (TensorFlow's rule).
    AvgPool2d {
        pool_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    },
    /// `[h, w, c]` -> `[h * w * c]`, in NHWC (row-major) order.
    Flatten,
    /// Fully connected layer on the last axis. Kernel `[in, units]`, bias `[units]`.
    Dense {
        units: usize,
        activation: Activation,
        use_bias: bool,
    },
    /// Inverted dropout: at training time zero each value with probability
    /// `rate` and scale the rest by `1 / (1 - rate)`; identity at inference.
    Dropout { rate: f32 },
    /// A stand-alone activation layer.
    Activation { activation: Activation },
}

impl LayerKind {
    /// The Keras class name shown in summaries (`Conv2D`, `MaxPooling2D`, ...).
    pub fn keras_class(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "Conv2D",
            LayerKind::MaxPool2d { .. } => "MaxPooling2D",
            LayerKind::AvgPool2d { .. } => "AveragePooling2D",
            LayerKind::Flatten => "Flatten",
            LayerKind::Dense { .. } => "Dense",
            LayerKind::Dropout { .. } => "Dropout",
            LayerKind::Activation { .. } => "Activation",
        }
    }

    /// The spec-language keyword (`conv2d`, `max_pool2d`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::MaxPool2d { .. } => "max_pool2d",
            LayerKind::AvgPool2d { .. } => "avg_pool2d",
            LayerKind::Flatten => "flatten",
            LayerKind::Dense { .. } => "dense",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Activation { .. } => "activation",
        }
    }
}

/// One resolved, shape-checked layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layer {
    /// Unique name: given with `name = "..."` or generated as Keras does
    /// (`conv2d`, `conv2d_1`, `max_pooling2d`, ...).
    pub name: String,
    pub kind: LayerKind,
    /// Where the layer is written in the spec.
    #[serde(skip)]
    pub span: Span,
    /// Per-example input shape (NHWC without batch).
    pub input_shape: Vec<usize>,
    /// Per-example output shape (NHWC without batch).
    pub output_shape: Vec<usize>,
    /// Padding actually applied (conv and pooling only), computed with
    /// TensorFlow's `same` rule.
    pub pads: Option<Pads2d>,
    /// Trainable parameter count (weights + biases).
    pub params: usize,
    /// Floating-point operations per example, forward: 2 x multiply-adds of
    /// conv and dense layers (the convention of Keras-era FLOP counters);
    /// zero for other layers.
    pub flops: u64,
}

/// A checked model: a named chain of layers from one input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub name: String,
    /// Per-example input shape, NHWC without batch (e.g. `[28, 28, 1]`).
    pub input_shape: Vec<usize>,
    pub layers: Vec<Layer>,
}

impl Model {
    /// Per-example output shape of the last layer (or the input if there are no layers).
    pub fn output_shape(&self) -> &[usize] {
        self.layers
            .last()
            .map(|l| l.output_shape.as_slice())
            .unwrap_or(&self.input_shape)
    }

    /// Total parameter count.
    pub fn total_params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Trainable parameter count (all parameters are trainable in this version).
    pub fn trainable_params(&self) -> usize {
        self.total_params()
    }

    /// Non-trainable parameter count.
    pub fn non_trainable_params(&self) -> usize {
        self.total_params() - self.trainable_params()
    }

    /// Forward FLOPs per example (see [`Layer::flops`]).
    pub fn flops(&self) -> u64 {
        self.layers.iter().map(|l| l.flops).sum()
    }
}
