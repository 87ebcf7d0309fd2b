//! The layer table (keywords, Keras argument names, positional order,
//! defaults) and argument binding: positional and named arguments to
//! parameters, reporting `E0003`, `E0011`-`E0014`.

use super::suggest::did_you_mean;
use super::values::{Ctx, FilterExpr};
use crate::diagnostics::Diagnostic;
use crate::model::{Activation, LayerKind, Padding, Pads2d, Span};
use crate::syntax::{LayerStmt, Value};

/// What a keyword builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Family {
    Conv2d,
    MaxPool,
    AvgPool,
    Flatten,
    Dense,
    Dropout,
    /// `activation(relu)`.
    ActivationLayer,
    /// `relu`, `softmax`, ...: an activation layer with a fixed function.
    Bare(Activation),
    GlobalAvgPool,
    GlobalMaxPool,
    ZeroPadding,
    /// `elu(alpha=1.0)` (Keras `ELU`).
    Elu,
    /// `leaky_relu(negative_slope=0.3)` (Keras `LeakyReLU`).
    LeakyRelu,
    DepthwiseConv,
    SeparableConv,
    ConvTranspose,
    BatchNorm,
    UpSampling,
    Reshape,
    /// `add`, `multiply`, `concatenate`: layers that join two or more tensors.
    Add,
    Multiply,
    Concatenate,
}

impl Family {
    /// Whether the layer reads two or more tensors.
    pub fn is_join(self) -> bool {
        matches!(self, Family::Add | Family::Multiply | Family::Concatenate)
    }
}

/// One layer keyword of the language.
#[derive(Debug)]
pub(crate) struct LayerDef {
    pub keyword: &'static str,
    pub family: Family,
    /// Parameter names in Keras's positional order (`name` is implicit).
    pub params: &'static [&'static str],
    /// How many of `params` may be given by position.
    pub positional: usize,
    /// How many leading `params` are required.
    pub required: usize,
    /// Prefix of generated names (Keras's snake-cased class name).
    pub default_name: &'static str,
    /// The call signature with defaults, for notes.
    pub signature: &'static str,
    /// A typical call, for help lines.
    pub example: &'static str,
}

const POOL_PARAMS: &[&str] = &["pool_size", "strides", "padding"];

/// Every layer keyword.
pub(crate) const LAYERS: &[LayerDef] = &[
    LayerDef {
        keyword: "conv2d",
        family: Family::Conv2d,
        params: &["filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias"],
        positional: 4,
        required: 2,
        default_name: "conv2d",
        signature: "conv2d(filters, kernel_size, strides=1, padding=valid, dilation_rate=1, activation=linear, use_bias=true, name=...)",
        example: "conv2d(32, 3, activation=relu, padding=same)",
    },
    LayerDef {
        keyword: "max_pool2d",
        family: Family::MaxPool,
        params: POOL_PARAMS,
        positional: 3,
        required: 0,
        default_name: "max_pooling2d",
        signature: "max_pool2d(pool_size=2, strides=pool_size, padding=valid, name=...)",
        example: "max_pool2d(2)",
    },
    LayerDef {
        keyword: "avg_pool2d",
        family: Family::AvgPool,
        params: POOL_PARAMS,
        positional: 3,
        required: 0,
        default_name: "average_pooling2d",
        signature: "avg_pool2d(pool_size=2, strides=pool_size, padding=valid, name=...)",
        example: "avg_pool2d(2)",
    },
    LayerDef {
        keyword: "flatten",
        family: Family::Flatten,
        params: &[],
        positional: 0,
        required: 0,
        default_name: "flatten",
        signature: "flatten(name=...)",
        example: "flatten",
    },
    LayerDef {
        keyword: "dense",
        family: Family::Dense,
        params: &["units", "activation", "use_bias"],
        positional: 2,
        required: 1,
        default_name: "dense",
        signature: "dense(units, activation=linear, use_bias=true, name=...)",
        example: "dense(64, activation=relu)",
    },
    LayerDef {
        keyword: "dropout",
        family: Family::Dropout,
        params: &["rate"],
        positional: 1,
        required: 1,
        default_name: "dropout",
        signature: "dropout(rate, name=...)",
        example: "dropout(0.5)",
    },
    LayerDef {
        keyword: "activation",
        family: Family::ActivationLayer,
        params: &["activation"],
        positional: 1,
        required: 1,
        default_name: "activation",
        signature: "activation(activation, name=...)",
        example: "activation(relu)",
    },
    LayerDef {
        keyword: "global_average_pooling2d",
        family: Family::GlobalAvgPool,
        params: &[],
        positional: 0,
        required: 0,
        default_name: "global_average_pooling2d",
        signature: "global_average_pooling2d(name=...)",
        example: "global_average_pooling2d",
    },
    LayerDef {
        keyword: "global_max_pooling2d",
        family: Family::GlobalMaxPool,
        params: &[],
        positional: 0,
        required: 0,
        default_name: "global_max_pooling2d",
        signature: "global_max_pooling2d(name=...)",
        example: "global_max_pooling2d",
    },
    LayerDef {
        keyword: "zero_padding2d",
        family: Family::ZeroPadding,
        params: &["padding"],
        positional: 1,
        required: 0,
        default_name: "zero_padding2d",
        signature: "zero_padding2d(padding=1, name=...)",
        example: "zero_padding2d(1)",
    },
    LayerDef {
        keyword: "depthwise_conv2d",
        family: Family::DepthwiseConv,
        params: &["kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate", "activation", "use_bias"],
        positional: 4,
        required: 1,
        default_name: "depthwise_conv2d",
        signature: "depthwise_conv2d(kernel_size, strides=1, padding=valid, depth_multiplier=1, dilation_rate=1, activation=linear, use_bias=true, name=...)",
        example: "depthwise_conv2d(3, padding=same)",
    },
    LayerDef {
        keyword: "separable_conv2d",
        family: Family::SeparableConv,
        params: &["filters", "kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate", "activation", "use_bias"],
        positional: 4,
        required: 2,
        default_name: "separable_conv2d",
        signature: "separable_conv2d(filters, kernel_size, strides=1, padding=valid, depth_multiplier=1, dilation_rate=1, activation=linear, use_bias=true, name=...)",
        example: "separable_conv2d(128, 3, padding=same)",
    },
    LayerDef {
        keyword: "conv2d_transpose",
        family: Family::ConvTranspose,
        params: &["filters", "kernel_size", "strides", "padding", "output_padding", "dilation_rate", "activation", "use_bias"],
        positional: 5,
        required: 2,
        default_name: "conv2d_transpose",
        signature: "conv2d_transpose(filters, kernel_size, strides=1, padding=valid, output_padding=none, dilation_rate=1, activation=linear, use_bias=true, name=...)",
        example: "conv2d_transpose(64, 3, strides=2, padding=same)",
    },
    LayerDef {
        keyword: "batch_normalization",
        family: Family::BatchNorm,
        params: &["axis", "momentum", "epsilon", "center", "scale"],
        positional: 5,
        required: 0,
        default_name: "batch_normalization",
        signature: "batch_normalization(axis=-1, momentum=0.99, epsilon=0.001, center=true, scale=true, name=...)",
        example: "batch_normalization",
    },
    LayerDef {
        keyword: "up_sampling2d",
        family: Family::UpSampling,
        params: &["size", "interpolation"],
        positional: 2,
        required: 0,
        default_name: "up_sampling2d",
        signature: "up_sampling2d(size=2, interpolation=nearest, name=...)",
        example: "up_sampling2d(2)",
    },
    LayerDef {
        keyword: "reshape",
        family: Family::Reshape,
        params: &["target_shape"],
        positional: 1,
        required: 1,
        default_name: "reshape",
        signature: "reshape(target_shape, name=...)",
        example: "reshape([7, 7, 64])",
    },
    LayerDef {
        keyword: "add",
        family: Family::Add,
        params: &[],
        positional: 0,
        required: 0,
        default_name: "add",
        signature: "add(tensor, tensor, ..., name=...)",
        example: "add(x, shortcut)",
    },
    LayerDef {
        keyword: "multiply",
        family: Family::Multiply,
        params: &[],
        positional: 0,
        required: 0,
        default_name: "multiply",
        signature: "multiply(tensor, tensor, ..., name=...)",
        example: "multiply(x, gate)",
    },
    LayerDef {
        keyword: "concatenate",
        family: Family::Concatenate,
        params: &["axis"],
        positional: 0,
        required: 0,
        default_name: "concatenate",
        signature: "concatenate(tensor, tensor, ..., axis=-1, name=...)",
        example: "concatenate(a, b)",
    },
    bare("relu", Activation::Relu, "relu(name=...)"),
    bare("softmax", Activation::Softmax, "softmax(name=...)"),
    bare("sigmoid", Activation::Sigmoid, "sigmoid(name=...)"),
    bare("tanh", Activation::Tanh, "tanh(name=...)"),
    bare("linear", Activation::Linear, "linear(name=...)"),
    bare("relu6", Activation::Relu6, "relu6(name=...)"),
    LayerDef {
        keyword: "elu",
        family: Family::Elu,
        params: &["alpha"],
        positional: 1,
        required: 0,
        default_name: "elu",
        signature: "elu(alpha=1.0, name=...)",
        example: "elu(1.0)",
    },
    LayerDef {
        keyword: "leaky_relu",
        family: Family::LeakyRelu,
        params: &["negative_slope"],
        positional: 1,
        required: 0,
        // Keras 3 snake-cases the class name `LeakyReLU` this way.
        default_name: "leaky_re_lu",
        signature: "leaky_relu(negative_slope=0.3, name=...)",
        example: "leaky_relu(0.3)",
    },
];

const fn bare(keyword: &'static str, a: Activation, signature: &'static str) -> LayerDef {
    LayerDef {
        keyword,
        family: Family::Bare(a),
        params: &[],
        positional: 0,
        required: 0,
        default_name: "activation",
        signature,
        example: keyword,
    }
}

/// Other spellings people use for our layers (Keras class names, PyTorch
/// names), normalised: lower case, no underscores.
const ALIASES: &[(&str, &str)] = &[
    ("convolution2d", "conv2d"),
    ("conv", "conv2d"),
    ("maxpooling2d", "max_pool2d"),
    ("maxpool", "max_pool2d"),
    ("averagepooling2d", "avg_pool2d"),
    ("avgpool", "avg_pool2d"),
    ("fc", "dense"),
    ("linear2d", "dense"),
    ("fullyconnected", "dense"),
    ("relu", "relu"),
    ("leakyrelu", "leaky_relu"),
    ("globalaveragepooling2d", "global_average_pooling2d"),
    ("globalavgpool2d", "global_average_pooling2d"),
    ("globalavgpool", "global_average_pooling2d"),
    ("globalaveragepool", "global_average_pooling2d"),
    ("adaptiveavgpool2d", "global_average_pooling2d"),
    ("globalmaxpooling2d", "global_max_pooling2d"),
    ("globalmaxpool2d", "global_max_pooling2d"),
    ("globalmaxpool", "global_max_pooling2d"),
    ("zeropadding2d", "zero_padding2d"),
    ("zeropad2d", "zero_padding2d"),
    ("batchnormalization", "batch_normalization"),
    ("batchnorm", "batch_normalization"),
    ("batchnorm2d", "batch_normalization"),
    ("bn", "batch_normalization"),
    ("conv2dtranspose", "conv2d_transpose"),
    ("convtranspose2d", "conv2d_transpose"),
    ("deconv2d", "conv2d_transpose"),
    ("deconvolution2d", "conv2d_transpose"),
    ("separableconv2d", "separable_conv2d"),
    ("depthwiseconv2d", "depthwise_conv2d"),
    ("upsampling2d", "up_sampling2d"),
    ("upsample", "up_sampling2d"),
    ("concat", "concatenate"),
    ("cat", "concatenate"),
    ("sum", "add"),
    ("mul", "multiply"),
];

/// Keras layers the language does not have (normalised spelling).
const UNSUPPORTED: &[&str] = &[
    "layernormalization",
    "conv1d",
    "conv3d",
    "lstm",
    "gru",
    "simplernn",
    "embedding",
    "prelu",
    "attention",
    "multiheadattention",
];

/// Keras arguments the language does not have.
const UNSUPPORTED_ARGS: &[&str] = &[
    "groups",
    "data_format",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "noise_shape",
    "seed",
    "dtype",
    "input_shape",
    "keepdims",
];

/// The definition of `keyword`, if it is a layer keyword.
pub(crate) fn lookup(keyword: &str) -> Option<&'static LayerDef> {
    LAYERS.iter().find(|d| d.keyword == keyword)
}

fn layer_list() -> String {
    LAYERS
        .iter()
        .map(|d| d.keyword)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `E0002` for an unknown layer keyword, with a suggestion among the layers
/// and `blocks` (block and model names in scope).
pub(crate) fn unknown_layer(layer: &LayerStmt, blocks: &[&str]) -> Diagnostic {
    let word = &layer.keyword.name;
    let norm = word.to_ascii_lowercase().replace('_', "");
    let mut keywords: Vec<&str> = LAYERS.iter().map(|d| d.keyword).collect();
    keywords.extend_from_slice(blocks);
    let suggestion = ALIASES
        .iter()
        .find(|(alias, _)| *alias == norm)
        .map(|(_, k)| *k)
        .or_else(|| did_you_mean(word, &keywords));
    let what = if blocks.is_empty() {
        "not a layer of the cnnc language"
    } else {
        "not a layer of the cnnc language nor a block"
    };
    let mut d = Diagnostic::error("E0002", format!("unknown layer `{word}`"))
        .with_label(layer.keyword.span, what);
    if word == "input" {
        d = d.with_help("the input is declared with a shape: `input [28, 28, 1]`");
        return d;
    }
    if UNSUPPORTED.contains(&norm.as_str()) {
        d = d.with_note(format!(
            "`{word}` is a Keras layer that cnnc does not support"
        ));
    }
    if let Some(s) = suggestion {
        if word.chars().any(|c| c.is_ascii_uppercase()) && s.replace('_', "") == norm {
            d = d.with_note("layer keywords are lower case");
        }
        d = d.with_help(format!("did you mean `{s}`?"));
    } else if UNSUPPORTED.contains(&norm.as_str()) {
        d = d.with_help("remove this layer");
    } else {
        d = d.with_help("use one of the layers listed below");
    }
    let d = d.with_note(format!("the layers are: {}", layer_list()));
    if blocks.is_empty() {
        d
    } else {
        d.with_note(format!("the blocks and models are: {}", blocks.join(", ")))
    }
}

/// Arguments bound to a layer's parameters.
pub(crate) struct Bound<'a> {
    /// One slot per `LayerDef::params` entry.
    pub values: Vec<Option<&'a Value>>,
    /// The `name = "..."` argument.
    pub name: Option<&'a Value>,
    /// Whether every required parameter was given.
    pub complete: bool,
}

impl Bound<'_> {
    pub fn get(&self, def: &LayerDef, param: &str) -> Option<&Value> {
        def.params
            .iter()
            .position(|p| *p == param)
            .and_then(|i| self.values[i])
    }
}

/// Binds positional and named arguments of `layer` to the parameters of `def`.
pub(crate) fn bind<'a>(ctx: &mut Ctx<'_>, def: &LayerDef, layer: &'a LayerStmt) -> Bound<'a> {
    let mut values: Vec<Option<&'a Value>> = vec![None; def.params.len()];
    let mut origin: Vec<Option<Span>> = vec![None; def.params.len()];
    let mut name: Option<&'a Value> = None;
    let mut name_span: Option<Span> = None;
    let mut positional = 0usize;
    let mut first_named: Option<Span> = None;
    let kw = def.keyword;
    for arg in &layer.args {
        match &arg.name {
            None => {
                if let Some(named) = first_named {
                    let d = Diagnostic::error(
                        "E0014",
                        "positional argument after a named argument",
                    )
                    .with_label(arg.span, "positional argument")
                    .with_label(named, "named argument before it")
                    .with_help(
                        "put positional arguments first, or name this one as well (`key = value`)",
                    );
                    ctx.diags.push(d);
                }
                if positional >= def.positional {
                    let taken = if def.positional == 0 {
                        format!("`{kw}` takes no positional arguments")
                    } else {
                        let names = def.params[..def.positional].join(", ");
                        format!(
                            "`{kw}` takes at most {} positional argument{} ({names})",
                            def.positional,
                            if def.positional == 1 { "" } else { "s" }
                        )
                    };
                    let mut d =
                        Diagnostic::error("E0013", format!("too many arguments for `{kw}`"))
                            .with_label(arg.value.span, "unexpected argument")
                            .with_note(taken)
                            .with_note(format!("signature: {}", def.signature));
                    if let Some(h) = Ctx::keyword_hint(&arg.value, def.params) {
                        d = d.with_help(h);
                    } else if def.params.len() > def.positional {
                        d = d.with_help(format!(
                            "pass the other arguments by name, e.g. `{}=...`",
                            def.params[def.positional]
                        ));
                    } else {
                        d = d.with_help("remove this argument");
                    }
                    ctx.diags.push(d);
                } else {
                    values[positional] = Some(&arg.value);
                    origin[positional] = Some(arg.span);
                }
                positional += 1;
            }
            Some(key) => {
                first_named.get_or_insert(key.span);
                let slot = def.params.iter().position(|p| *p == key.name);
                if key.name == "name" {
                    if let Some(prev) = name_span {
                        ctx.diags.push(given_twice("name", arg.span, prev));
                    } else {
                        name = Some(&arg.value);
                        name_span = Some(arg.span);
                    }
                } else if let Some(i) = slot {
                    if let Some(prev) = origin[i] {
                        ctx.diags.push(given_twice(&key.name, arg.span, prev));
                    } else {
                        values[i] = Some(&arg.value);
                        origin[i] = Some(arg.span);
                    }
                } else {
                    ctx.diags.push(unknown_argument(def, &key.name, key.span));
                }
            }
        }
    }
    let missing: Vec<&str> = (0..def.required)
        .filter(|&i| values[i].is_none())
        .map(|i| def.params[i])
        .collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(" and ");
        let plural = if missing.len() == 1 { "" } else { "s" };
        let span = layer.span;
        let d = Diagnostic::error(
            "E0011",
            format!("`{kw}` is missing its {list} argument{plural}"),
        )
        .with_label(span, format!("missing {list}"))
        .with_note(format!("signature: {}", def.signature))
        .with_help(format!("for example `{}`", def.example));
        ctx.diags.push(d);
    }
    Bound {
        values,
        name,
        complete: missing.is_empty(),
    }
}

fn given_twice(param: &str, again: Span, first: Span) -> Diagnostic {
    Diagnostic::error(
        "E0012",
        format!("argument `{param}` is given more than once"),
    )
    .with_label(again, "given again here")
    .with_label(first, "first given here")
    .with_help("remove one of them")
}

fn unknown_argument(def: &LayerDef, key: &str, span: Span) -> Diagnostic {
    let mut all: Vec<&str> = def.params.to_vec();
    all.push("name");
    let mut d = Diagnostic::error(
        "E0003",
        format!("unknown argument `{key}` for `{}`", def.keyword),
    )
    .with_label(span, "unknown argument");
    if UNSUPPORTED_ARGS.contains(&key) {
        d = d.with_note(format!(
            "`{key}` is a Keras argument that cnnc does not support"
        ));
    }
    let accepted = all
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    d = d.with_note(format!("`{}` accepts {accepted}", def.keyword));
    match did_you_mean(key, &all) {
        Some(s) => d.with_help(format!("did you mean `{s}`?")),
        None => d.with_help("remove this argument"),
    }
}

/// A layer with its arguments converted. `kind` is `None` when an argument
/// that the shape depends on is invalid (the error has been reported);
/// invalid arguments that do not affect shapes (activation, use_bias) are
/// reported and replaced by their default so that checking can go on.
pub(crate) struct Resolved {
    pub kind: Option<LayerKind>,
    /// `filters` given as a channel expression (then `kind`'s `filters` is a
    /// placeholder until shape inference resolves it).
    pub filters_expr: Option<FilterExpr>,
    /// The window argument's value span (`kernel_size` / `pool_size`), for shape errors.
    pub window_span: Option<Span>,
    /// The explicit `name = "..."`, with the span of its value.
    pub name: Option<(String, Span)>,
    /// `reshape`'s target with `-1` as `None` (and its span); `kind` holds a placeholder.
    pub target_shape: Option<(Vec<Option<usize>>, Span)>,
    /// `concatenate`'s `axis` as written (default -1), and its span if written.
    pub axis: (i64, Option<Span>),
    /// Whether any argument of this layer was invalid.
    pub had_error: bool,
}

/// Converts bound arguments to a [`LayerKind`], filling Keras defaults.
pub(crate) fn resolve(ctx: &mut Ctx<'_>, def: &LayerDef, bound: &Bound<'_>) -> Resolved {
    let errors_before = ctx.diags.len();
    let p = def.params;
    let get = |name: &str| bound.get(def, name);
    let name = bound
        .name
        .and_then(|v| ctx.layer_name(v).map(|n| (n, v.span)));
    let mut filters_expr = None;
    let mut window_span = None;
    let mut target_shape = None;
    let mut axis = (-1i64, None);
    let pair_or = |ctx: &mut Ctx<'_>, param: &str, default: [usize; 2]| -> Option<[usize; 2]> {
        match get(param) {
            Some(v) => ctx.pair(v, param, p),
            None => Some(default),
        }
    };
    let padding_arg = |ctx: &mut Ctx<'_>| -> Option<Padding> {
        match get("padding") {
            Some(v) => ctx.padding(v, p),
            None => Some(Padding::Valid),
        }
    };
    let activation = |ctx: &mut Ctx<'_>| -> Activation {
        get("activation")
            .and_then(|v| ctx.activation(v, "activation", p))
            .unwrap_or(Activation::Linear)
    };
    let use_bias = |ctx: &mut Ctx<'_>| -> bool {
        get("use_bias")
            .and_then(|v| ctx.boolean(v, "use_bias", p))
            .unwrap_or(true)
    };
    let kind = match def.family {
        Family::Conv2d => {
            let filters = get("filters").and_then(|v| ctx.filters(v, p));
            let kernel_size = get("kernel_size").and_then(|v| ctx.pair(v, "kernel_size", p));
            window_span = get("kernel_size").map(|v| v.span);
            let strides = pair_or(ctx, "strides", [1, 1]);
            let padding = padding_arg(ctx);
            let dilation_rate = pair_or(ctx, "dilation_rate", [1, 1]);
            let activation = activation(ctx);
            let use_bias = use_bias(ctx);
            let filters = match filters {
                Some(Ok(n)) => Some(n),
                Some(Err(expr)) => {
                    filters_expr = Some(expr);
                    Some(0)
                }
                None => None,
            };
            match (filters, kernel_size, strides, padding, dilation_rate) {
                (
                    Some(filters),
                    Some(kernel_size),
                    Some(strides),
                    Some(padding),
                    Some(dilation_rate),
                ) => Some(LayerKind::Conv2d {
                    filters,
                    kernel_size,
                    strides,
                    padding,
                    dilation_rate,
                    activation,
                    use_bias,
                }),
                _ => None,
            }
        }
        Family::DepthwiseConv | Family::SeparableConv | Family::ConvTranspose => {
            let filters = if def.family == Family::DepthwiseConv {
                Some(0)
            } else {
                match get("filters").and_then(|v| ctx.filters(v, p)) {
                    Some(Ok(n)) => Some(n),
                    Some(Err(expr)) => {
                        filters_expr = Some(expr);
                        Some(0)
                    }
                    None => None,
                }
            };
            let kernel_size = get("kernel_size").and_then(|v| ctx.pair(v, "kernel_size", p));
            window_span = get("kernel_size").map(|v| v.span);
            let strides = pair_or(ctx, "strides", [1, 1]);
            let padding = padding_arg(ctx);
            let dilation_rate = pair_or(ctx, "dilation_rate", [1, 1]);
            let depth_multiplier = match get("depth_multiplier") {
                Some(v) => ctx.positive_int(v, "depth_multiplier", p),
                None => Some(1),
            };
            let output_padding = match get("output_padding") {
                Some(v) if matches!(&v.kind, crate::syntax::ValueKind::Ident(n) if n == "none") => {
                    Some(None)
                }
                Some(v) => ctx.non_negative_pair(v, "output_padding").map(Some),
                None => Some(None),
            };
            let activation = activation(ctx);
            let use_bias = use_bias(ctx);
            match (
                filters,
                kernel_size,
                strides,
                padding,
                dilation_rate,
                depth_multiplier,
                output_padding,
            ) {
                (
                    Some(filters),
                    Some(kernel_size),
                    Some(strides),
                    Some(padding),
                    Some(dilation_rate),
                    Some(depth_multiplier),
                    Some(output_padding),
                ) => Some(match def.family {
                    Family::DepthwiseConv => LayerKind::DepthwiseConv2d {
                        kernel_size,
                        strides,
                        padding,
                        depth_multiplier,
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                    Family::SeparableConv => LayerKind::SeparableConv2d {
                        filters,
                        kernel_size,
                        strides,
                        padding,
                        depth_multiplier,
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                    _ => LayerKind::Conv2dTranspose {
                        filters,
                        kernel_size,
                        strides,
                        padding,
                        output_padding,
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                }),
                _ => None,
            }
        }
        Family::BatchNorm => {
            // Only the channel axis (Keras's default, -1) is supported; shape
            // inference reports other values against the input's rank.
            if let Some(v) = get("axis") {
                axis = (ctx.integer(v, "axis", p).unwrap_or(-1), Some(v.span));
            }
            let momentum = match get("momentum") {
                Some(v) => ctx.number_in(v, "momentum", (0.0, false), 1.0, p),
                None => Some(0.99),
            };
            let epsilon = match get("epsilon") {
                Some(v) => ctx.number_in(v, "epsilon", (0.0, true), f64::INFINITY, p),
                None => Some(1e-3),
            };
            let center = get("center")
                .and_then(|v| ctx.boolean(v, "center", p))
                .unwrap_or(true);
            let scale = get("scale")
                .and_then(|v| ctx.boolean(v, "scale", p))
                .unwrap_or(true);
            match (momentum, epsilon) {
                (Some(momentum), Some(epsilon)) => Some(LayerKind::BatchNormalization {
                    momentum,
                    epsilon,
                    center,
                    scale,
                }),
                _ => None,
            }
        }
        Family::UpSampling => {
            let size = pair_or(ctx, "size", [2, 2]);
            let interpolation = match get("interpolation") {
                Some(v) => ctx.interpolation(v, p),
                None => Some(crate::model::Interpolation::Nearest),
            };
            match (size, interpolation) {
                (Some(size), Some(interpolation)) => Some(LayerKind::UpSampling2d {
                    size,
                    interpolation,
                }),
                _ => None,
            }
        }
        Family::Reshape => {
            let v = get("target_shape");
            target_shape = v.and_then(|v| ctx.target_shape(v).map(|t| (t, v.span)));
            target_shape.as_ref().map(|_| LayerKind::Reshape {
                target_shape: Vec::new(),
            })
        }
        Family::Add => Some(LayerKind::Add),
        Family::Multiply => Some(LayerKind::Multiply),
        Family::Concatenate => {
            if let Some(v) = get("axis") {
                match ctx.integer(v, "axis", p) {
                    Some(a) => axis = (a, Some(v.span)),
                    None => {
                        return Resolved {
                            kind: None,
                            filters_expr,
                            window_span,
                            name,
                            target_shape,
                            axis,
                            had_error: true,
                        }
                    }
                }
            }
            Some(LayerKind::Concatenate { axis: 0 })
        }
        Family::MaxPool | Family::AvgPool => {
            let pool_size = match get("pool_size") {
                Some(v) => ctx.pair(v, "pool_size", p),
                None => Some([2, 2]),
            };
            window_span = get("pool_size").map(|v| v.span);
            let strides = match get("strides") {
                Some(v) => ctx.pair(v, "strides", p),
                None => pool_size,
            };
            let padding = match get("padding") {
                Some(v) => ctx.padding(v, p),
                None => Some(Padding::Valid),
            };
            match (pool_size, strides, padding) {
                (Some(pool_size), Some(strides), Some(padding)) => {
                    Some(if def.family == Family::MaxPool {
                        LayerKind::MaxPool2d {
                            pool_size,
                            strides,
                            padding,
                        }
                    } else {
                        LayerKind::AvgPool2d {
                            pool_size,
                            strides,
                            padding,
                        }
                    })
                }
                _ => None,
            }
        }
        Family::Flatten => Some(LayerKind::Flatten),
        Family::Dense => {
            let units = get("units").and_then(|v| ctx.positive_int(v, "units", p));
            let activation = activation(ctx);
            let use_bias = use_bias(ctx);
            units.map(|units| LayerKind::Dense {
                units,
                activation,
                use_bias,
            })
        }
        Family::Dropout => {
            // An invalid rate does not change shapes: keep checking with 0.
            let rate = get("rate").and_then(|v| ctx.rate(v)).unwrap_or(0.0);
            Some(LayerKind::Dropout { rate })
        }
        Family::ActivationLayer => {
            let activation = activation(ctx);
            Some(LayerKind::Activation { activation })
        }
        Family::Bare(activation) => Some(LayerKind::Activation { activation }),
        Family::GlobalAvgPool => Some(LayerKind::GlobalAvgPool2d),
        Family::GlobalMaxPool => Some(LayerKind::GlobalMaxPool2d),
        Family::ZeroPadding => {
            let padding = match get("padding") {
                Some(v) => ctx.zero_padding(v),
                None => Some(Pads2d {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1,
                }),
            };
            padding.map(|padding| LayerKind::ZeroPadding2d { padding })
        }
        Family::Elu => {
            // An invalid alpha does not change shapes: keep checking with the default.
            let alpha = get("alpha")
                .and_then(|v| ctx.non_negative_number(v, "alpha", p))
                .unwrap_or(1.0);
            Some(LayerKind::Activation {
                activation: Activation::Elu { alpha },
            })
        }
        Family::LeakyRelu => {
            let negative_slope = get("negative_slope")
                .and_then(|v| ctx.non_negative_number(v, "negative_slope", p))
                .unwrap_or(0.3);
            Some(LayerKind::Activation {
                activation: Activation::LeakyRelu { negative_slope },
            })
        }
    };
    // A missing dropout rate or activation does not change shapes.
    let shape_preserving = matches!(def.family, Family::Dropout | Family::ActivationLayer);
    let kind = if bound.complete || shape_preserving {
        kind
    } else {
        None
    };
    Resolved {
        kind,
        filters_expr,
        window_span,
        name,
        target_shape,
        axis,
        had_error: ctx.diags.len() > errors_before || !bound.complete,
    }
}
