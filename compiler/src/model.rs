//! The checked model: every layer resolved (Keras defaults filled in, names bound)
//! and every tensor shape known. This is the output of the front end
//! (`syntax` -> `check`) and the input of lowering (`graph::lower`).
//!
//! Shapes are per example in NHWC order with the batch dimension left out
//! (it is symbolic and printed as `None`, as Keras does): a conv output is
//! `[height, width, channels]`, a dense output is `[units]`.

use serde::Serialize;

/// One dimension of a per-example shape: a size, or unknown (`?` in an
/// `input` shape, printed `None` as Keras does) for models whose spatial
/// size is only fixed when they run (fully convolutional networks).
///
/// Compares equal to a `usize` when it is that known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct Dim(pub Option<usize>);

impl Dim {
    /// An unknown size.
    pub const UNKNOWN: Dim = Dim(None);

    /// The size, if known.
    pub fn known(self) -> Option<usize> {
        self.0
    }

    pub fn is_known(self) -> bool {
        self.0.is_some()
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim(Some(n))
    }
}

impl PartialEq<usize> for Dim {
    fn eq(&self, other: &usize) -> bool {
        self.0 == Some(*other)
    }
}

impl std::fmt::Display for Dim {
    /// The size, or `?` when unknown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("?"),
        }
    }
}

/// The sizes of `dims`, if all are known.
pub fn known_shape(dims: &[Dim]) -> Option<Vec<usize>> {
    dims.iter().map(|d| d.0).collect()
}

/// `dims` as known sizes.
pub fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&n| Dim(Some(n))).collect()
}

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

/// Interpolation of `up_sampling2d` (Keras's `interpolation` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Each pixel repeated `size` times (the default).
    Nearest,
    /// Bilinear, with TensorFlow's half-pixel centres (`tf.image.resize`).
    Bilinear,
}

/// What a layer computes, with every argument resolved to its final value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    /// 2-D convolution. Kernel `[kh, kw, in_channels, filters]` (Keras HWIO),
    /// bias `[filters]`. With `dilation_rate` `d` the kernel taps are `d`
    /// pixels apart: the effective kernel size is `d * (k - 1) + 1`
    /// (Keras `Conv2D`; strides and dilation above 1 cannot be combined).
    Conv2d {
        filters: usize,
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        dilation_rate: [usize; 2],
        activation: Activation,
        use_bias: bool,
    },
    /// Depthwise 2-D convolution (Keras `DepthwiseConv2D`): each input channel
    /// `c` is convolved with its own `depth_multiplier` filters; output channel
    /// `c * depth_multiplier + m`. Kernel `[kh, kw, in_channels,
    /// depth_multiplier]`, bias `[in_channels * depth_multiplier]`.
    DepthwiseConv2d {
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        depth_multiplier: usize,
        dilation_rate: [usize; 2],
        activation: Activation,
        use_bias: bool,
    },
    /// Depthwise then pointwise (1x1) convolution (Keras `SeparableConv2D`,
    /// Chollet 2017). Depthwise kernel `[kh, kw, in_channels,
    /// depth_multiplier]`, pointwise kernel `[1, 1, in_channels *
    /// depth_multiplier, filters]`, bias `[filters]`; no bias between the two.
    SeparableConv2d {
        filters: usize,
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        depth_multiplier: usize,
        dilation_rate: [usize; 2],
        activation: Activation,
        use_bias: bool,
    },
    /// Transposed convolution (Keras `Conv2DTranspose`), the gradient of a
    /// convolution with respect to its input. Kernel `[kh, kw, filters,
    /// in_channels]` (Keras's layout), bias `[filters]`. Output size per axis
    /// (Keras `conv_utils.deconv_output_length`): without `output_padding`,
    /// `same` gives `in * stride` and `valid` gives
    /// `in * stride + max(k - stride, 0)`; with it,
    /// `(in - 1) * stride + k - 2 * (pad) + output_padding` where `pad` is
    /// `k / 2` for `same` and 0 for `valid` (`k` the dilated kernel size).
    Conv2dTranspose {
        filters: usize,
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        output_padding: Option<[usize; 2]>,
        dilation_rate: [usize; 2],
        activation: Activation,
        use_bias: bool,
    },
    /// Batch normalization over the last axis (Ioffe & Szegedy 2015; Keras
    /// `BatchNormalization`, axis -1): `gamma * (x - mean) / sqrt(var +
    /// epsilon) + beta`. Training uses the batch's mean and (biased) variance
    /// and updates `moving = moving * momentum + batch * (1 - momentum)`;
    /// inference uses the moving statistics. Parameters `gamma` (if `scale`),
    /// `beta` (if `center`), `moving_mean`, `moving_variance`, each `[c]`;
    /// the two moving statistics are never trainable.
    BatchNormalization {
        momentum: f32,
        epsilon: f32,
        center: bool,
        scale: bool,
    },
    /// Repeats rows and columns (Keras `UpSampling2D`): `[h, w, c]` ->
    /// `[h * size[0], w * size[1], c]`.
    UpSampling2d {
        size: [usize; 2],
        interpolation: Interpolation,
    },
    /// `[...]` -> `target_shape` with the same number of values, in row-major
    /// (NHWC) order (Keras `Reshape`; a `-1` in the spec is resolved).
    Reshape { target_shape: Vec<usize> },
    /// Element-wise sum of two or more inputs of the same shape (Keras `Add`).
    Add,
    /// Element-wise product of two or more inputs of the same shape (Keras `Multiply`).
    Multiply,
    /// Joins inputs along `axis` (an index into the per-example shape, so
    /// Keras's default `axis=-1` is the channel axis `2` of `[h, w, c]`);
    /// all other dimensions must agree (Keras `Concatenate`).
    Concatenate { axis: usize },
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
            LayerKind::DepthwiseConv2d { .. } => "DepthwiseConv2D",
            LayerKind::SeparableConv2d { .. } => "SeparableConv2D",
            LayerKind::Conv2dTranspose { .. } => "Conv2DTranspose",
            LayerKind::BatchNormalization { .. } => "BatchNormalization",
            LayerKind::UpSampling2d { .. } => "UpSampling2D",
            LayerKind::Reshape { .. } => "Reshape",
            LayerKind::Add => "Add",
            LayerKind::Multiply => "Multiply",
            LayerKind::Concatenate { .. } => "Concatenate",
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
            LayerKind::DepthwiseConv2d { .. } => "depthwise_conv2d",
            LayerKind::SeparableConv2d { .. } => "separable_conv2d",
            LayerKind::Conv2dTranspose { .. } => "conv2d_transpose",
            LayerKind::BatchNormalization { .. } => "batch_normalization",
            LayerKind::UpSampling2d { .. } => "up_sampling2d",
            LayerKind::Reshape { .. } => "reshape",
            LayerKind::Add => "add",
            LayerKind::Multiply => "multiply",
            LayerKind::Concatenate { .. } => "concatenate",
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
    /// The tensors this layer reads, in order: names of earlier layers or of
    /// model inputs ([`ModelInput::name`]). One for every layer but the
    /// joins (`add`, `multiply`, `concatenate`), which read two or more.
    pub inputs: Vec<String>,
    /// Per-example input shape (NHWC without batch) of the first input.
    pub input_shape: Vec<Dim>,
    /// Per-example output shape (NHWC without batch); spatial sizes may be
    /// unknown (see [`Dim`]).
    pub output_shape: Vec<Dim>,
    /// Padding actually applied (conv and pooling: computed with
    /// TensorFlow's `same` rule; zero padding: its `padding` argument).
    /// `None` for a `same` window over an unknown size (the padding depends
    /// on the size; lowering computes it).
    pub pads: Option<Pads2d>,
    /// Parameter count, trainable or not (Keras's `Param #` column):
    /// weights, biases, and batch norm's moving statistics.
    pub params: usize,
    /// How many of `params` are trained: 0 for a frozen layer
    /// (`trainable=false`); batch norm's moving mean and variance never are.
    pub trainable_params: usize,
    /// Whether the layer's weights are updated in training (`trainable=false`
    /// freezes a layer, a block or an imported model; a frozen batch norm
    /// also runs in inference mode, as in Keras).
    pub trainable: bool,
    /// Floating-point operations per example, forward: 2 x multiply-adds of
    /// conv and dense layers (the convention of Keras-era FLOP counters);
    /// zero for other layers, and for layers whose output size is unknown.
    pub flops: u64,
}

/// A model input (Keras `Input`): a named tensor of a fixed per-example shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInput {
    /// `input` unless named (`input image [224, 224, 3]`).
    pub name: String,
    /// Per-example shape, NHWC without batch (e.g. `[28, 28, 1]`, or
    /// `[?, ?, 3]` with unknown height and width).
    pub shape: Vec<Dim>,
    #[serde(skip)]
    pub span: Span,
}

/// A checked model: layers in topological order (every layer after the
/// layers it reads), from one or more inputs to one or more outputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub name: String,
    /// Per-example shape of the first input, NHWC without batch (e.g. `[28, 28, 1]`).
    pub input_shape: Vec<Dim>,
    /// All inputs, in declaration order (the first has `input_shape`).
    pub inputs: Vec<ModelInput>,
    /// The model's outputs: names of layers (or of inputs), in order. A
    /// chain has one, its last layer.
    pub outputs: Vec<String>,
    pub layers: Vec<Layer>,
}

impl Layer {
    /// Freezes (`false`) or unfreezes (`true`) the layer, like Keras's
    /// `layer.trainable = ...` between two `fit` calls (transfer learning:
    /// train a new head on a frozen base, then fine-tune). Keeps
    /// `trainable_params` consistent: every parameter of a trainable layer
    /// but batch norm's moving mean and variance (`2 x channels`, never
    /// trained); 0 for a frozen one. A frozen batch norm also runs in
    /// inference mode once lowered.
    pub fn set_trainable(&mut self, trainable: bool) {
        let always_frozen = match self.kind {
            LayerKind::BatchNormalization { .. } => {
                2 * self
                    .output_shape
                    .last()
                    .and_then(|d| d.known())
                    .unwrap_or(0)
            }
            _ => 0,
        };
        self.trainable = trainable;
        self.trainable_params = if trainable {
            self.params.saturating_sub(always_frozen)
        } else {
            0
        };
    }
}

impl Model {
    /// Per-example shape of the tensor called `name` (a layer or an input).
    pub fn shape_of(&self, name: &str) -> Option<&[Dim]> {
        self.layers
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.output_shape.as_slice())
            .or_else(|| {
                self.inputs
                    .iter()
                    .find(|i| i.name == name)
                    .map(|i| i.shape.as_slice())
            })
    }

    /// Per-example shape of the first output.
    pub fn output_shape(&self) -> &[Dim] {
        self.outputs
            .first()
            .and_then(|o| self.shape_of(o))
            .or_else(|| self.layers.last().map(|l| l.output_shape.as_slice()))
            .unwrap_or(&self.input_shape)
    }

    /// Whether the model is a plain chain: one input, one output (the last
    /// layer), every layer reading the one before it.
    pub fn is_chain(&self) -> bool {
        self.inputs.len() == 1
            && self.outputs.len() == 1
            && self
                .layers
                .last()
                .is_some_and(|l| l.name == self.outputs[0])
            && self.layers.iter().enumerate().all(|(i, l)| {
                let prev = if i == 0 {
                    self.inputs[0].name.as_str()
                } else {
                    self.layers[i - 1].name.as_str()
                };
                l.inputs.len() == 1 && l.inputs[0] == prev
            })
    }

    /// Total parameter count (Keras's "Total params").
    pub fn total_params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Trainable parameter count (Keras's "Trainable params").
    pub fn trainable_params(&self) -> usize {
        self.layers.iter().map(|l| l.trainable_params).sum()
    }

    /// Non-trainable parameter count.
    pub fn non_trainable_params(&self) -> usize {
        self.total_params() - self.trainable_params()
    }

    /// Whether every shape in the model is known (no `?` input sizes): only
    /// then can it be lowered and run.
    pub fn is_fully_known(&self) -> bool {
        self.inputs
            .iter()
            .all(|i| i.shape.iter().all(|d| d.is_known()))
            && self
                .layers
                .iter()
                .all(|l| l.output_shape.iter().all(|d| d.is_known()))
    }

    /// Forward FLOPs per example (see [`Layer::flops`]).
    pub fn flops(&self) -> u64 {
        self.layers.iter().map(|l| l.flops).sum()
    }
}
