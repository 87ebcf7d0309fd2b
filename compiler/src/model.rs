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
///
/// `Eq` holds because the checker only admits finite `alpha` /
/// `negative_slope` values (never NaN).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Identity (Keras `linear`, the default).
    Linear,
    Relu,
    Sigmoid,
    Tanh,
    /// Softmax over the last axis.
    Softmax,
    /// `min(max(x, 0), 6)` (Keras `relu6`).
    Relu6,
    /// Exponential linear unit (Clevert et al. 2015; Keras `elu` / `ELU`):
    /// `x` for `x > 0`, `alpha * (exp(x) - 1)` otherwise. `alpha >= 0`
    /// (Keras's default 1.0 for both the activation and the layer).
    Elu {
        #[serde(serialize_with = "f32_shortest")]
        alpha: f32,
    },
    /// Leaky ReLU (Maas et al. 2013): `x` for `x >= 0`, `negative_slope * x`
    /// otherwise, `negative_slope >= 0`. The activation name `leaky_relu`
    /// uses Keras's `keras.activations.leaky_relu` default 0.2; the
    /// `leaky_relu` layer uses `keras.layers.LeakyReLU`'s default 0.3.
    #[serde(rename = "leaky_relu")]
    LeakyRelu {
        #[serde(serialize_with = "f32_shortest")]
        negative_slope: f32,
    },
}

impl Eq for Activation {}

/// Serializes an f32 as the f64 with the same shortest decimal form, so that
/// JSON shows `0.2` rather than `0.20000000298023224`.
fn f32_shortest<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse::<f64>().unwrap_or(f64::from(*v)))
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
            Activation::Relu6 => "relu6",
            Activation::Elu { .. } => "elu",
            Activation::LeakyRelu { .. } => "leaky_relu",
        }
    }

    /// The name with its argument, if it has one: `elu(alpha=1)`,
    /// `leaky_relu(negative_slope=0.3)`, `relu`.
    pub fn spec(self) -> String {
        match self {
            Activation::Elu { alpha } => format!("elu(alpha={alpha})"),
            Activation::LeakyRelu { negative_slope } => {
                format!("leaky_relu(negative_slope={negative_slope})")
            }
            other => other.name().to_string(),
        }
    }

    /// All activations with the defaults of their Keras activation
    /// functions (`elu` alpha 1.0, `leaky_relu` negative_slope 0.2), for
    /// `activation=` names, "did you mean" suggestions and docs.
    pub const ALL: [Activation; 8] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Softmax,
        Activation::Relu6,
        Activation::Elu { alpha: 1.0 },
        Activation::LeakyRelu {
            negative_slope: 0.2,
        },
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
    /// `[h, w, c]` -> `[c]`: the mean over all `h x w` pixels of each channel
    /// (Keras `GlobalAveragePooling2D` with `keepdims=False`).
    GlobalAvgPool2d,
    /// `[h, w, c]` -> `[c]`: the maximum over all `h x w` pixels of each
    /// channel (Keras `GlobalMaxPooling2D` with `keepdims=False`).
    GlobalMaxPool2d,
    /// `[h, w, c]` -> `[top + h + bottom, left + w + right, c]` with zeros
    /// around the image (Keras `ZeroPadding2D`).
    ZeroPadding2d { padding: Pads2d },
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
            LayerKind::GlobalAvgPool2d => "GlobalAveragePooling2D",
            LayerKind::GlobalMaxPool2d => "GlobalMaxPooling2D",
            LayerKind::ZeroPadding2d { .. } => "ZeroPadding2D",
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
            LayerKind::GlobalAvgPool2d => "global_average_pooling2d",
            LayerKind::GlobalMaxPool2d => "global_max_pooling2d",
            LayerKind::ZeroPadding2d { .. } => "zero_padding2d",
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
    /// Padding actually applied (conv and pooling: computed with
    /// TensorFlow's `same` rule; zero padding: its `padding` argument).
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
