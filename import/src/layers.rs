//! The network the op mapping builds: cnnc layers (the checker's own
//! [`LayerKind`]s) with their weights in Keras layouts, wired by name, plus
//! the clean-up passes that make the emitted spec read like a hand-written
//! one: per-channel affine maps folded into the layer before them,
//! activations fused into the convolution or dense layer before them, and
//! layers no output depends on dropped.

use crate::tensor::Tensor;
use cnnc_compiler::model::{Activation, LayerKind, Padding};
use std::collections::{HashMap, HashSet};

/// A weight of a layer: the checkpoint name is `<layer>/<suffix>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    /// `kernel`, `bias`, `depthwise_kernel`, `gamma`, `beta`,
    /// `moving_mean`, `moving_variance` (Keras's weight names).
    pub suffix: &'static str,
    /// f32 values in the Keras layout (conv kernel `[kh, kw, in, filters]`,
    /// depthwise `[kh, kw, in, depth_multiplier]`, dense `[in, units]`,
    /// vectors `[channels]`).
    pub tensor: Tensor,
}

/// What a layer computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A cnnc layer.
    Layer(LayerKind),
    /// `y = x * scale + shift` per channel (the last axis): ONNX `Mul` /
    /// `Add` / `Sub` / `Div` by a per-channel constant. Folded into the
    /// layer before it where possible ([`fold_affines`]); otherwise written
    /// as a 1x1 `depthwise_conv2d` (feature maps) or a diagonal `dense`
    /// (vectors).
    Affine {
        scale: Option<Vec<f32>>,
        shift: Option<Vec<f32>>,
    },
}

/// One layer of the imported network.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Unique name: a valid spec identifier, also used as the layer's
    /// tensor name.
    pub name: String,
    pub op: Op,
    /// Names of the layers (or model inputs) read, in order.
    pub inputs: Vec<String>,
    pub weights: Vec<Weight>,
    /// cnnc per-example output shape (NHWC without batch).
    pub shape: Vec<usize>,
}

impl Layer {
    fn weight_mut(&mut self, suffix: &str) -> Option<&mut Vec<f32>> {
        self.weights
            .iter_mut()
            .find(|w| w.suffix == suffix)
            .and_then(|w| match &mut w.tensor.data {
                crate::tensor::Data::F32(v) => Some(v),
                crate::tensor::Data::I64(_) => None,
            })
    }
}

/// A model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    /// cnnc per-example shape.
    pub shape: Vec<usize>,
}

/// The imported network, layers in topological order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    pub inputs: Vec<Input>,
    pub layers: Vec<Layer>,
    /// Names of the output layers (or inputs).
    pub outputs: Vec<String>,
}

impl Network {
    /// How many layer inputs and model outputs read each name.
    fn readers(&self) -> HashMap<String, usize> {
        let mut count: HashMap<String, usize> = HashMap::new();
        for l in &self.layers {
            for i in &l.inputs {
                *count.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &self.outputs {
            *count.entry(o.clone()).or_default() += 1;
        }
        count
    }

    /// Index of the layer called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Replaces every read of `from` by `to`.
    fn rename_reads(&mut self, from: &str, to: &str) {
        for l in &mut self.layers {
            for i in &mut l.inputs {
                if i == from {
                    *i = to.to_string();
                }
            }
        }
        for o in &mut self.outputs {
            if o == from {
                *o = to.to_string();
            }
        }
    }

    /// Runs the clean-up passes: [`Network::prune`], [`fold_affines`],
    /// [`materialize_affines`], [`fuse_activations`].
    pub fn tidy(&mut self) {
        self.prune();
        fold_affines(self);
        materialize_affines(self);
        fuse_activations(self);
    }

    /// Drops layers that no output depends on (as cnnc's checker and
    /// Keras's `Model(inputs, outputs)` would).
    pub fn prune(&mut self) {
        let mut live: HashSet<String> = self.outputs.iter().cloned().collect();
        for l in self.layers.iter().rev() {
            if live.contains(&l.name) {
                live.extend(l.inputs.iter().cloned());
            }
        }
        self.layers.retain(|l| live.contains(&l.name));
    }
}

/// Folds each `Affine` into the layer it reads when that layer's output is
/// read by nothing else and is not a model output: into a `conv2d`,
/// `depthwise_conv2d` or `dense` without activation (kernel columns scaled,
/// bias `b * scale + shift`), a `batch_normalization` (`gamma * scale`,
/// `beta * scale + shift`), or another `Affine` (composed). The result is
/// the same function up to float rounding.
pub fn fold_affines(net: &mut Network) {
    let mut i = 0;
    while i < net.layers.len() {
        let Op::Affine { scale, shift } = net.layers[i].op.clone() else {
            i += 1;
            continue;
        };
        let source = net.layers[i].inputs[0].clone();
        let readers = net.readers();
        let Some(p) = net.position(&source) else {
            i += 1;
            continue;
        };
        if readers.get(&source).copied().unwrap_or(0) != 1
            || !apply_affine(&mut net.layers[p], scale.as_deref(), shift.as_deref())
        {
            i += 1;
            continue;
        }
        let name = net.layers.remove(i).name;
        net.rename_reads(&name, &source);
    }
}

/// Applies `y = x * scale + shift` (per last-axis channel) to the output of
/// `layer` by changing its weights; `false` if the layer cannot absorb it.
fn apply_affine(layer: &mut Layer, scale: Option<&[f32]>, shift: Option<&[f32]>) -> bool {
    let channels = *layer.shape.last().unwrap_or(&0);
    match &mut layer.op {
        Op::Layer(
            LayerKind::Conv2d {
                activation: Activation::Linear,
                use_bias,
                ..
            }
            | LayerKind::DepthwiseConv2d {
                activation: Activation::Linear,
                use_bias,
                ..
            }
            | LayerKind::Dense {
                activation: Activation::Linear,
                use_bias,
                ..
            },
        ) => {
            let had_bias = *use_bias;
            if shift.is_some() && !had_bias {
                *use_bias = true;
            }
            let kernel_name = if layer.weights.iter().any(|w| w.suffix == "depthwise_kernel") {
                "depthwise_kernel"
            } else {
                "kernel"
            };
            if let Some(s) = scale {
                if let Some(k) = layer.weight_mut(kernel_name) {
                    for (idx, v) in k.iter_mut().enumerate() {
                        *v *= s[idx % channels];
                    }
                }
            }
            if had_bias {
                if let Some(b) = layer.weight_mut("bias") {
                    affine_in_place(b, scale, shift);
                }
            } else if let Some(t) = shift {
                layer.weights.push(Weight {
                    suffix: "bias",
                    tensor: Tensor::f32(vec![channels], t.to_vec()),
                });
            }
            true
        }
        Op::Layer(LayerKind::BatchNormalization { .. }) => {
            if let Some(s) = scale {
                if let Some(g) = layer.weight_mut("gamma") {
                    for (v, s) in g.iter_mut().zip(s) {
                        *v *= s;
                    }
                }
            }
            if let Some(b) = layer.weight_mut("beta") {
                affine_in_place(b, scale, shift);
            }
            true
        }
        Op::Affine {
            scale: s1,
            shift: t1,
        } => {
            if let Some(t1) = t1.as_mut() {
                affine_in_place(t1, scale, None);
            }
            *s1 = match (s1.take(), scale) {
                (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(x, y)| x * y).collect()),
                (a, b) => a.or_else(|| b.map(|b| b.to_vec())),
            };
            *t1 = match (t1.take(), shift) {
                (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(x, y)| x + y).collect()),
                (a, b) => a.or_else(|| b.map(|b| b.to_vec())),
            };
            true
        }
        _ => false,
    }
}

fn affine_in_place(v: &mut [f32], scale: Option<&[f32]>, shift: Option<&[f32]>) {
    for (i, x) in v.iter_mut().enumerate() {
        if let Some(s) = scale {
            *x *= s[i];
        }
        if let Some(t) = shift {
            *x += t[i];
        }
    }
}

/// Writes each remaining `Affine` as a cnnc layer: on a feature map
/// `[h, w, c]` a 1x1 `depthwise_conv2d` (kernel `[1, 1, c, 1]` = scale,
/// bias = shift: exactly `x * scale + shift`), on a vector `[c]` a `dense`
/// with a diagonal kernel (exact: the off-diagonal products are zeros).
pub fn materialize_affines(net: &mut Network) {
    for layer in &mut net.layers {
        let Op::Affine { scale, shift } = layer.op.clone() else {
            continue;
        };
        let c = *layer.shape.last().unwrap_or(&0);
        let scale = scale.clone().unwrap_or_else(|| vec![1.0; c]);
        let use_bias = shift.is_some();
        let mut weights = Vec::new();
        if layer.shape.len() == 3 {
            weights.push(Weight {
                suffix: "depthwise_kernel",
                tensor: Tensor::f32(vec![1, 1, c, 1], scale),
            });
            layer.op = Op::Layer(LayerKind::DepthwiseConv2d {
                kernel_size: [1, 1],
                strides: [1, 1],
                padding: Padding::Valid,
                depth_multiplier: 1,
                dilation_rate: [1, 1],
                activation: Activation::Linear,
                use_bias,
            });
        } else {
            let mut kernel = vec![0.0; c * c];
            for (i, s) in scale.iter().enumerate() {
                kernel[i * c + i] = *s;
            }
            weights.push(Weight {
                suffix: "kernel",
                tensor: Tensor::f32(vec![c, c], kernel),
            });
            layer.op = Op::Layer(LayerKind::Dense {
                units: c,
                activation: Activation::Linear,
                use_bias,
            });
        }
        if let Some(t) = shift {
            weights.push(Weight {
                suffix: "bias",
                tensor: Tensor::f32(vec![c], t),
            });
        }
        layer.weights = weights;
    }
}

/// Fuses an activation layer into the `conv2d`, `depthwise_conv2d` or
/// `dense` it reads (Keras's `activation=` argument) when that layer has
/// no activation, is read by nothing else and is not a model output.
/// Softmax is fused into `dense` only (on a feature map it is a separate
/// layer, as Keras writes it); `elu` and `leaky_relu` are never fused
/// (`activation=` cannot carry their parameters).
pub fn fuse_activations(net: &mut Network) {
    let mut i = 0;
    while i < net.layers.len() {
        let Op::Layer(LayerKind::Activation { activation }) = net.layers[i].op else {
            i += 1;
            continue;
        };
        // `activation=elu` / `activation=leaky_relu` take Keras's default
        // parameters only: keep parameterized ones as layers.
        if matches!(
            activation,
            Activation::Elu { .. } | Activation::LeakyRelu { .. }
        ) {
            i += 1;
            continue;
        }
        let source = net.layers[i].inputs[0].clone();
        let readers = net.readers();
        let fusable = net.position(&source).filter(|&p| {
            readers.get(&source).copied().unwrap_or(0) == 1
                && match &net.layers[p].op {
                    Op::Layer(LayerKind::Dense {
                        activation: Activation::Linear,
                        ..
                    }) => true,
                    Op::Layer(
                        LayerKind::Conv2d {
                            activation: Activation::Linear,
                            ..
                        }
                        | LayerKind::DepthwiseConv2d {
                            activation: Activation::Linear,
                            ..
                        },
                    ) => activation != Activation::Softmax,
                    _ => false,
                }
        });
        let Some(p) = fusable else {
            i += 1;
            continue;
        };
        if let Op::Layer(
            LayerKind::Dense { activation: a, .. }
            | LayerKind::Conv2d { activation: a, .. }
            | LayerKind::DepthwiseConv2d { activation: a, .. },
        ) = &mut net.layers[p].op
        {
            *a = activation;
        }
        let name = net.layers.remove(i).name;
        net.rename_reads(&name, &source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(name: &str, input: &str, kernel: Vec<f32>, bias: Vec<f32>) -> Layer {
        let units = bias.len();
        let inputs = kernel.len() / units;
        Layer {
            name: name.into(),
            op: Op::Layer(LayerKind::Dense {
                units,
                activation: Activation::Linear,
                use_bias: true,
            }),
            inputs: vec![input.into()],
            weights: vec![
                Weight {
                    suffix: "kernel",
                    tensor: Tensor::f32(vec![inputs, units], kernel),
                },
                Weight {
                    suffix: "bias",
                    tensor: Tensor::f32(vec![units], bias),
                },
            ],
            shape: vec![units],
        }
    }

    fn affine(name: &str, input: &str, scale: Vec<f32>, shift: Vec<f32>) -> Layer {
        Layer {
            name: name.into(),
            op: Op::Affine {
                scale: Some(scale.clone()),
                shift: Some(shift),
            },
            inputs: vec![input.into()],
            weights: vec![],
            shape: vec![scale.len()],
        }
    }

    #[test]
    fn affine_folds_into_dense() {
        // y = x K + b with K = [[1, 2], [3, 4]], b = [1, 1]; then y * [2, 10] + [0, 1]:
        // K columns scaled: [[2, 20], [6, 40]], b = [2, 11].
        let mut net = Network {
            inputs: vec![Input {
                name: "input".into(),
                shape: vec![2],
            }],
            layers: vec![
                dense("d", "input", vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 1.0]),
                affine("a", "d", vec![2.0, 10.0], vec![0.0, 1.0]),
            ],
            outputs: vec!["a".into()],
        };
        net.tidy();
        assert_eq!(net.layers.len(), 1);
        assert_eq!(net.outputs, vec!["d".to_string()]);
        assert_eq!(
            net.layers[0].weights[0].tensor.to_f32(),
            vec![2.0, 20.0, 6.0, 40.0]
        );
        assert_eq!(net.layers[0].weights[1].tensor.to_f32(), vec![2.0, 11.0]);
    }

    #[test]
    fn affine_on_a_shared_tensor_becomes_a_diagonal_dense() {
        let mut net = Network {
            inputs: vec![Input {
                name: "input".into(),
                shape: vec![2],
            }],
            layers: vec![
                dense("d", "input", vec![1.0, 0.0, 0.0, 1.0], vec![0.0, 0.0]),
                affine("a", "d", vec![3.0, 5.0], vec![1.0, 2.0]),
            ],
            outputs: vec!["a".into(), "d".into()],
        };
        net.tidy();
        assert_eq!(net.layers.len(), 2);
        assert_eq!(
            net.layers[1].weights[0].tensor.to_f32(),
            vec![3.0, 0.0, 0.0, 5.0]
        );
        assert_eq!(net.layers[1].weights[1].tensor.to_f32(), vec![1.0, 2.0]);
    }

    #[test]
    fn activation_fuses_and_dead_layers_go() {
        let relu = Layer {
            name: "r".into(),
            op: Op::Layer(LayerKind::Activation {
                activation: Activation::Relu,
            }),
            inputs: vec!["d".into()],
            weights: vec![],
            shape: vec![2],
        };
        let mut net = Network {
            inputs: vec![Input {
                name: "input".into(),
                shape: vec![2],
            }],
            layers: vec![
                dense("d", "input", vec![1.0; 4], vec![0.0; 2]),
                relu,
                dense("unused", "input", vec![1.0; 4], vec![0.0; 2]),
            ],
            outputs: vec!["r".into()],
        };
        net.tidy();
        assert_eq!(net.layers.len(), 1);
        assert_eq!(
            net.layers[0].op,
            Op::Layer(LayerKind::Dense {
                units: 2,
                activation: Activation::Relu,
                use_bias: true
            })
        );
        assert_eq!(net.outputs, vec!["d".to_string()]);
    }
}
