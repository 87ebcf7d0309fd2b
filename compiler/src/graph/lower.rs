//! Lowering: checked model -> op graph of primitive ops.
//!
//! Each layer becomes one or more primitive ops, in the order Keras computes
//! them: `conv2d` -> `bias_add` -> activation, `matmul` -> `bias_add` ->
//! activation, `depthwise_conv2d` -> `conv2d` (1x1, the pointwise step of a
//! separable conv) -> `bias_add` -> activation. A `softmax` activation becomes
//! a `Softmax` op (it is not element-wise); `linear` emits nothing.
//!
//! Layers are wired by name: each layer reads the nodes of the tensors named
//! in [`Layer::inputs`] (earlier layers or model inputs), and the graph
//! outputs are the nodes of [`Model::outputs`]. Parameters are created in
//! Keras's order (layer by layer; within a layer kernel, then bias; a
//! separable conv's depthwise kernel, pointwise kernel, bias; batch norm's
//! gamma, beta, moving mean, moving variance) and named as Keras names the
//! weights (`<layer>/kernel`, `<layer>/bias`, `<layer>/depthwise_kernel`,
//! `<layer>/pointwise_kernel`, `<layer>/gamma`, `<layer>/beta`,
//! `<layer>/moving_mean`, `<layer>/moving_variance`). A frozen layer's
//! parameters are not trainable; batch norm's moving statistics never are.

use super::ir::{
    effective_kernel_size, Conv2dAttrs, Conv2dTransposeAttrs, DepthwiseConv2dAttrs, Graph, Init,
    Node, NodeId, Op, Param, ParamId, Pool2dAttrs,
};
use crate::model::{Activation, Layer, LayerKind, Model, Padding, Pads2d};
use std::collections::HashMap;

/// A model that does not describe a graph: a layer reads a tensor that no
/// earlier layer or input defines, or an output names an unknown tensor.
/// The checker never produces such a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    /// `layer` reads `tensor`, which is neither a model input nor an earlier layer.
    #[error("layer `{layer}` reads `{tensor}`, which is not a model input or an earlier layer")]
    UnknownInput { layer: String, tensor: String },
    /// A model output names no layer or input.
    #[error("model output `{0}` is not a layer or input")]
    UnknownOutput(String),
    /// The tensor `{0}` has an unknown height or width (an `input [?, ?, c]`
    /// model): op graphs need every size.
    #[error("`{0}` has an unknown size (`?` in the input shape); the op graph needs fixed sizes")]
    UnknownSize(String),
}

/// The sizes of a checked shape, unknown ones as 0 (reported as
/// [`LowerError::UnknownSize`] by [`try_lower`]).
fn sizes(dims: &[crate::model::Dim]) -> Vec<usize> {
    dims.iter().map(|d| d.known().unwrap_or(0)).collect()
}

/// Lowers a checked model to primitive ops.
///
/// The model has been checked, so every name, shape and padding is known and
/// lowering does not fail. Should a layer nevertheless read an unknown tensor
/// (see [`try_lower`]), it reads the previous layer's output instead, and an
/// unknown output name is dropped; lowering never panics.
pub fn lower(model: &Model) -> Graph {
    lower_reporting(model).0
}

/// Lowers a checked model, reporting the first name that does not resolve
/// (see [`LowerError`]).
pub fn try_lower(model: &Model) -> Result<Graph, LowerError> {
    let (graph, errors) = lower_reporting(model);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(graph),
    }
}

/// The graph, and every unresolved name (replaced as [`lower`] says).
fn lower_reporting(model: &Model) -> (Graph, Vec<LowerError>) {
    let mut builder = Builder {
        nodes: Vec::new(),
        params: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut tensors: HashMap<&str, NodeId> = HashMap::new();
    let mut inputs = Vec::new();
    if model.inputs.is_empty() {
        let id = builder.push(Op::Input, vec![], sizes(&model.input_shape), "input");
        tensors.insert("input", id);
        inputs.push(id);
    }
    for input in &model.inputs {
        let id = builder.push(Op::Input, vec![], sizes(&input.shape), &input.name);
        tensors.insert(input.name.as_str(), id);
        inputs.push(id);
    }
    for input in &model.inputs {
        if input.shape.iter().any(|d| !d.is_known()) {
            errors.push(LowerError::UnknownSize(input.name.clone()));
        }
    }
    let mut current = inputs[0];
    for layer in &model.layers {
        if layer.output_shape.iter().any(|d| !d.is_known()) {
            errors.push(LowerError::UnknownSize(layer.name.clone()));
        }
        let mut ids = Vec::with_capacity(layer.inputs.len().max(1));
        for name in &layer.inputs {
            match tensors.get(name.as_str()) {
                Some(&id) => ids.push(id),
                None => {
                    errors.push(LowerError::UnknownInput {
                        layer: layer.name.clone(),
                        tensor: name.clone(),
                    });
                    ids.push(current);
                }
            }
        }
        if ids.is_empty() {
            // A layer without named inputs reads the previous one (a chain).
            ids.push(current);
        }
        current = builder.lower_layer(layer, &ids);
        tensors.insert(layer.name.as_str(), current);
    }
    let mut outputs = Vec::with_capacity(model.outputs.len());
    for name in &model.outputs {
        match tensors.get(name.as_str()) {
            Some(&id) => outputs.push(id),
            None => errors.push(LowerError::UnknownOutput(name.clone())),
        }
    }
    if outputs.is_empty() {
        outputs.push(current);
    }
    let graph = Graph {
        name: model.name.clone(),
        nodes: builder.nodes,
        input: inputs[0],
        output: outputs[0],
        params: builder.params,
        inputs,
        outputs,
    };
    (graph, errors)
}

struct Builder {
    nodes: Vec<Node>,
    params: Vec<Param>,
}

/// TensorFlow's padding for a window of extent `k_eff` (the dilated kernel)
/// and `stride` taking `n` pixels to `out`: `same` pads
/// `max((out - 1) * stride + k_eff - n, 0)` in all, the odd pixel after;
/// `valid` pads nothing.
fn tf_pads(
    padding: Padding,
    input: &[usize],
    output: &[usize],
    k_eff: [usize; 2],
    strides: [usize; 2],
) -> Pads2d {
    if padding == Padding::Valid {
        return Pads2d::default();
    }
    let total = |a: usize| {
        let n = input.get(a).copied().unwrap_or(0);
        let out = output.get(a).copied().unwrap_or(0);
        (out.saturating_sub(1) * strides[a] + k_eff[a]).saturating_sub(n)
    };
    let (th, tw) = (total(0), total(1));
    Pads2d {
        top: th / 2,
        bottom: th - th / 2,
        left: tw / 2,
        right: tw - tw / 2,
    }
}

impl Builder {
    fn push(&mut self, op: Op, inputs: Vec<NodeId>, shape: Vec<usize>, layer: &str) -> NodeId {
        self.nodes.push(Node {
            op,
            inputs,
            shape,
            layer: layer.to_string(),
            fused: Vec::new(),
            rule: None,
        });
        NodeId(self.nodes.len() - 1)
    }

    fn param(&mut self, name: String, shape: Vec<usize>, init: Init, trainable: bool) -> ParamId {
        self.params.push(Param {
            name,
            shape,
            init,
            trainable,
        });
        ParamId(self.params.len() - 1)
    }

    /// A weight of `layer` named `<layer>/<suffix>`, trainable unless the layer is frozen.
    fn weight(&mut self, layer: &Layer, suffix: &str, shape: Vec<usize>, init: Init) -> ParamId {
        self.param(
            format!("{}/{suffix}", layer.name),
            shape,
            init,
            layer.trainable,
        )
    }

    /// Appends `bias_add` (if `use_bias`) and the activation after `node`.
    fn epilogue(
        &mut self,
        layer: &Layer,
        mut node: NodeId,
        channels: usize,
        use_bias: bool,
        activation: Activation,
    ) -> NodeId {
        let shape = sizes(&layer.output_shape);
        if use_bias {
            let bias = self.weight(layer, "bias", vec![channels], Init::Zeros);
            node = self.push(Op::BiasAdd { bias }, vec![node], shape.clone(), &layer.name);
        }
        self.activation(layer, node, activation)
    }

    fn activation(&mut self, layer: &Layer, node: NodeId, activation: Activation) -> NodeId {
        let shape = sizes(&layer.output_shape);
        match activation {
            Activation::Linear => node,
            Activation::Softmax => self.push(Op::Softmax, vec![node], shape, &layer.name),
            other => self.push(
                Op::Activation { activation: other },
                vec![node],
                shape,
                &layer.name,
            ),
        }
    }

    /// Lowers one layer reading `inputs` (at least one); returns its output node.
    fn lower_layer(&mut self, layer: &Layer, inputs: &[NodeId]) -> NodeId {
        let shape = sizes(&layer.output_shape);
        let name = layer.name.as_str();
        let input = inputs[0];
        let in_shape = self.nodes[input.0].shape.clone();
        let in_channels = in_shape.last().copied().unwrap_or(1);
        // Pads the checker computed, else TensorFlow's rule (the same numbers).
        let pads_or = |padding: Padding, k_eff: [usize; 2], strides: [usize; 2]| {
            layer
                .pads
                .unwrap_or_else(|| tf_pads(padding, &in_shape, &shape, k_eff, strides))
        };
        match &layer.kind {
            LayerKind::Conv2d {
                filters,
                kernel_size,
                strides,
                padding,
                dilation_rate,
                activation,
                use_bias,
            } => {
                let pads = pads_or(
                    *padding,
                    effective_kernel_size(*kernel_size, *dilation_rate),
                    *strides,
                );
                let [kh, kw] = *kernel_size;
                let kernel = self.weight(
                    layer,
                    "kernel",
                    vec![kh, kw, in_channels, *filters],
                    Init::GlorotUniform {
                        fan_in: kh * kw * in_channels,
                        fan_out: kh * kw * filters,
                    },
                );
                let attrs = Conv2dAttrs {
                    in_channels,
                    filters: *filters,
                    kernel_size: *kernel_size,
                    strides: *strides,
                    pads,
                    dilation_rate: *dilation_rate,
                };
                let conv = self.push(Op::Conv2d { attrs, kernel }, vec![input], shape, name);
                self.epilogue(layer, conv, *filters, *use_bias, *activation)
            }
            LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                depth_multiplier,
                dilation_rate,
                activation,
                use_bias,
            } => {
                let [kh, kw] = *kernel_size;
                // Keras's fans for a `[kh, kw, in, m]` kernel.
                let kernel = self.weight(
                    layer,
                    "depthwise_kernel",
                    vec![kh, kw, in_channels, *depth_multiplier],
                    Init::GlorotUniform {
                        fan_in: kh * kw * in_channels,
                        fan_out: kh * kw * depth_multiplier,
                    },
                );
                let pads = pads_or(
                    *padding,
                    effective_kernel_size(*kernel_size, *dilation_rate),
                    *strides,
                );
                let attrs = DepthwiseConv2dAttrs {
                    in_channels,
                    depth_multiplier: *depth_multiplier,
                    kernel_size: *kernel_size,
                    strides: *strides,
                    pads,
                    dilation_rate: *dilation_rate,
                };
                let channels = in_channels * depth_multiplier;
                let conv = self.push(
                    Op::DepthwiseConv2d { attrs, kernel },
                    vec![input],
                    shape,
                    name,
                );
                self.epilogue(layer, conv, channels, *use_bias, *activation)
            }
            LayerKind::SeparableConv2d {
                filters,
                kernel_size,
                strides,
                padding,
                depth_multiplier,
                dilation_rate,
                activation,
                use_bias,
            } => {
                let [kh, kw] = *kernel_size;
                let mid = in_channels * depth_multiplier;
                let depthwise = self.weight(
                    layer,
                    "depthwise_kernel",
                    vec![kh, kw, in_channels, *depth_multiplier],
                    Init::GlorotUniform {
                        fan_in: kh * kw * in_channels,
                        fan_out: kh * kw * depth_multiplier,
                    },
                );
                let pointwise = self.weight(
                    layer,
                    "pointwise_kernel",
                    vec![1, 1, mid, *filters],
                    Init::GlorotUniform {
                        fan_in: mid,
                        fan_out: *filters,
                    },
                );
                let pads = pads_or(
                    *padding,
                    effective_kernel_size(*kernel_size, *dilation_rate),
                    *strides,
                );
                let attrs = DepthwiseConv2dAttrs {
                    in_channels,
                    depth_multiplier: *depth_multiplier,
                    kernel_size: *kernel_size,
                    strides: *strides,
                    pads,
                    dilation_rate: *dilation_rate,
                };
                let mut mid_shape = shape.clone();
                if let Some(c) = mid_shape.last_mut() {
                    *c = mid;
                }
                let dw = self.push(
                    Op::DepthwiseConv2d {
                        attrs,
                        kernel: depthwise,
                    },
                    vec![input],
                    mid_shape,
                    name,
                );
                let attrs = Conv2dAttrs {
                    in_channels: mid,
                    filters: *filters,
                    kernel_size: [1, 1],
                    strides: [1, 1],
                    pads: Pads2d::default(),
                    dilation_rate: [1, 1],
                };
                let pw = self.push(
                    Op::Conv2d {
                        attrs,
                        kernel: pointwise,
                    },
                    vec![dw],
                    shape,
                    name,
                );
                self.epilogue(layer, pw, *filters, *use_bias, *activation)
            }
            LayerKind::Conv2dTranspose {
                filters,
                kernel_size,
                strides,
                padding,
                dilation_rate,
                activation,
                use_bias,
                ..
            } => {
                let [kh, kw] = *kernel_size;
                // Keras's fans for the `[kh, kw, filters, in]` kernel.
                let kernel = self.weight(
                    layer,
                    "kernel",
                    vec![kh, kw, *filters, in_channels],
                    Init::GlorotUniform {
                        fan_in: kh * kw * filters,
                        fan_out: kh * kw * in_channels,
                    },
                );
                // The transposed conv is the gradient of a conv from the
                // output size to the input size: TF's padding of that conv.
                let pads = tf_pads(
                    *padding,
                    &shape,
                    &in_shape,
                    effective_kernel_size(*kernel_size, *dilation_rate),
                    *strides,
                );
                let attrs = Conv2dTransposeAttrs {
                    in_channels,
                    filters: *filters,
                    kernel_size: *kernel_size,
                    strides: *strides,
                    pads,
                    dilation_rate: *dilation_rate,
                };
                let conv = self.push(
                    Op::Conv2dTranspose { attrs, kernel },
                    vec![input],
                    shape,
                    name,
                );
                self.epilogue(layer, conv, *filters, *use_bias, *activation)
            }
            LayerKind::BatchNormalization {
                momentum,
                epsilon,
                center,
                scale,
            } => {
                let c = in_channels;
                let gamma = scale.then(|| self.weight(layer, "gamma", vec![c], Init::Ones));
                let beta = center.then(|| self.weight(layer, "beta", vec![c], Init::Zeros));
                let moving_mean =
                    self.param(format!("{name}/moving_mean"), vec![c], Init::Zeros, false);
                let moving_variance = self.param(
                    format!("{name}/moving_variance"),
                    vec![c],
                    Init::Ones,
                    false,
                );
                self.push(
                    Op::BatchNorm {
                        epsilon: *epsilon,
                        momentum: *momentum,
                        gamma,
                        beta,
                        moving_mean,
                        moving_variance,
                        frozen: !layer.trainable,
                    },
                    vec![input],
                    shape,
                    name,
                )
            }
            LayerKind::Dense {
                units,
                activation,
                use_bias,
            } => {
                let in_features = in_channels;
                let kernel = self.weight(
                    layer,
                    "kernel",
                    vec![in_features, *units],
                    Init::GlorotUniform {
                        fan_in: in_features,
                        fan_out: *units,
                    },
                );
                let matmul = self.push(
                    Op::MatMul {
                        units: *units,
                        kernel,
                    },
                    vec![input],
                    shape,
                    name,
                );
                self.epilogue(layer, matmul, *units, *use_bias, *activation)
            }
            LayerKind::MaxPool2d {
                pool_size,
                strides,
                padding,
            }
            | LayerKind::AvgPool2d {
                pool_size,
                strides,
                padding,
            } => {
                let attrs = Pool2dAttrs {
                    pool_size: *pool_size,
                    strides: *strides,
                    pads: pads_or(*padding, *pool_size, *strides),
                };
                let op = if matches!(layer.kind, LayerKind::MaxPool2d { .. }) {
                    Op::MaxPool2d { attrs }
                } else {
                    Op::AvgPool2d { attrs }
                };
                self.push(op, vec![input], shape, name)
            }
            LayerKind::Flatten => self.push(Op::Flatten, vec![input], shape, name),
            LayerKind::Reshape { .. } => self.push(Op::Reshape, vec![input], shape, name),
            LayerKind::Dropout { rate } => {
                self.push(Op::Dropout { rate: *rate }, vec![input], shape, name)
            }
            LayerKind::Activation { activation } => self.activation(layer, input, *activation),
            LayerKind::GlobalAvgPool2d => self.push(Op::GlobalAvgPool2d, vec![input], shape, name),
            LayerKind::GlobalMaxPool2d => self.push(Op::GlobalMaxPool2d, vec![input], shape, name),
            LayerKind::ZeroPadding2d { padding } => self.push(
                Op::ZeroPadding2d { pads: *padding },
                vec![input],
                shape,
                name,
            ),
            LayerKind::UpSampling2d {
                size,
                interpolation,
            } => self.push(
                Op::UpSampling2d {
                    size: *size,
                    interpolation: *interpolation,
                },
                vec![input],
                shape,
                name,
            ),
            LayerKind::Add => self.push(Op::Add, inputs.to_vec(), shape, name),
            LayerKind::Multiply => self.push(Op::Multiply, inputs.to_vec(), shape, name),
            LayerKind::Concatenate { axis } => {
                self.push(Op::Concat { axis: *axis }, inputs.to_vec(), shape, name)
            }
        }
    }
}
