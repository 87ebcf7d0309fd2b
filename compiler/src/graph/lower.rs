//! Lowering: checked model -> op graph of primitive ops.
//!
//! Each layer becomes one or more primitive ops, in the order Keras computes
//! them: `conv2d` -> `bias_add` -> activation, `matmul` -> `bias_add` ->
//! activation. A `softmax` activation becomes a `Softmax` op (it is not
//! element-wise); `linear` emits nothing. Parameters are created in Keras's
//! order (kernel, then bias, layer by layer) and named `<layer>/kernel`,
//! `<layer>/bias`.

use super::ir::{Conv2dAttrs, Graph, Init, Node, NodeId, Op, Param, ParamId, Pool2dAttrs};
use crate::model::{Activation, Layer, LayerKind, Model};

/// Lowers a checked model to primitive ops.
///
/// The model has been shape-checked, so every shape and padding is known;
/// lowering itself cannot fail.
pub fn lower(model: &Model) -> Graph {
    let mut builder = Builder {
        nodes: Vec::new(),
        params: Vec::new(),
    };
    let input = builder.push(Op::Input, vec![], model.input_shape.clone(), "input");
    let mut current = input;
    for layer in &model.layers {
        current = builder.lower_layer(layer, current);
    }
    Graph {
        name: model.name.clone(),
        nodes: builder.nodes,
        input,
        output: current,
        params: builder.params,
    }
}

struct Builder {
    nodes: Vec<Node>,
    params: Vec<Param>,
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

    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) -> ParamId {
        self.params.push(Param {
            name,
            shape,
            init,
            trainable: true,
        });
        ParamId(self.params.len() - 1)
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
        let shape = layer.output_shape.clone();
        if use_bias {
            let bias = self.param(format!("{}/bias", layer.name), vec![channels], Init::Zeros);
            node = self.push(Op::BiasAdd { bias }, vec![node], shape.clone(), &layer.name);
        }
        self.activation(layer, node, activation)
    }

    fn activation(&mut self, layer: &Layer, node: NodeId, activation: Activation) -> NodeId {
        let shape = layer.output_shape.clone();
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

    fn lower_layer(&mut self, layer: &Layer, input: NodeId) -> NodeId {
        let shape = layer.output_shape.clone();
        let name = layer.name.as_str();
        let pads = layer.pads.unwrap_or_default();
        match &layer.kind {
            LayerKind::Conv2d {
                filters,
                kernel_size,
                strides,
                activation,
                use_bias,
                ..
            } => {
                let in_channels = *layer.input_shape.last().unwrap_or(&1);
                let [kh, kw] = *kernel_size;
                let kernel = self.param(
                    format!("{name}/kernel"),
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
                };
                let conv = self.push(Op::Conv2d { attrs, kernel }, vec![input], shape, name);
                self.epilogue(layer, conv, *filters, *use_bias, *activation)
            }
            LayerKind::Dense {
                units,
                activation,
                use_bias,
            } => {
                let in_features = *layer.input_shape.last().unwrap_or(&1);
                let kernel = self.param(
                    format!("{name}/kernel"),
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
                pool_size, strides, ..
            }
            | LayerKind::AvgPool2d {
                pool_size, strides, ..
            } => {
                let attrs = Pool2dAttrs {
                    pool_size: *pool_size,
                    strides: *strides,
                    pads,
                };
                let op = if matches!(layer.kind, LayerKind::MaxPool2d { .. }) {
                    Op::MaxPool2d { attrs }
                } else {
                    Op::AvgPool2d { attrs }
                };
                self.push(op, vec![input], shape, name)
            }
            LayerKind::Flatten => self.push(Op::Flatten, vec![input], shape, name),
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
        }
    }
}
