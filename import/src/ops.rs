//! Op mapping: each ONNX node becomes zero or more cnnc layers (with
//! weights converted to Keras layouts), or a constant (folded), or a change
//! of [`Layout`] only (a transpose or reshape that cnnc's NHWC tensors do
//! not need).
//!
//! Semantics of each ONNX operator are those of its specification
//! (<https://onnx.ai/onnx/operators/>); the cnnc layers are those of
//! `grammar/README.md`. The mapping is exact (same arithmetic up to the
//! order of float summation) except where a layer's doc says otherwise
//! (per-channel constants folded into weights: one extra rounding).

use crate::error::ImportError;
use crate::fold::{self, normalize_axes, reshape_dims};
use crate::graph::{Dim, Graph, Node};
use crate::layers::{Input, Layer, Network, Op, Weight};
use crate::layout::{self, flatten_perm, shuffle_perm, Layout, PadPlan, Window};
use crate::names::Namer;
use crate::tensor::Tensor;
use cnnc_compiler::model::{Activation, Interpolation, LayerKind, Padding, Pads2d};
use std::collections::HashMap;

/// Largest feature count for which a pending feature permutation of a
/// vector is materialized as a dense permutation matrix (`n * n` weights).
const MAX_PERMUTATION_MATRIX: usize = 4096;

/// An activation tensor of the ONNX graph and the cnnc tensor holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The cnnc tensor: a layer name or a model input name.
    pub tensor: String,
    /// ONNX shape, batch first (a symbolic batch counts as 1).
    pub shape: Vec<usize>,
    pub layout: Layout,
    /// Known to be >= 0 everywhere (after ReLU, ReLU6, softmax, ...): a
    /// max pool may then pad with zeros instead of -infinity.
    pub nonneg: bool,
}

impl Value {
    fn cnnc_shape(&self) -> Vec<usize> {
        self.layout.cnnc_shape(&self.shape)
    }
}

/// What an ONNX tensor name refers to during mapping.
#[derive(Debug, Clone)]
enum Entry {
    Const(Tensor),
    Value(Value),
}

/// How the ONNX and cnnc memory orders of a model input or output relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoLayout {
    /// ONNX `[N, C, H, W]`, cnnc `[N, H, W, C]`: transpose with
    /// `(0, 2, 3, 1)` to go from ONNX to cnnc.
    ChannelsFirst,
    /// The same values in the same row-major order (NHWC images, vectors,
    /// 1x1 maps).
    SameOrder,
}

/// A model input or output: its ONNX and cnnc names and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct IoInfo {
    pub onnx_name: String,
    /// ONNX shape, batch first (`None` for a symbolic size).
    pub onnx_shape: Vec<Option<usize>>,
    /// The cnnc tensor (input or layer name).
    pub cnnc_name: String,
    /// cnnc per-example shape (NHWC without batch).
    pub cnnc_shape: Vec<usize>,
    pub layout: IoLayout,
}

/// The network and its inputs and outputs.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub net: Network,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
}

/// Maps every node of `graph` (see the module docs). `reserved` names may
/// not be used for layers (the model's name).
pub fn map_graph(graph: &Graph, reserved: &[&str]) -> Result<Mapped, ImportError> {
    let mut m = Mapper {
        graph,
        entries: graph
            .initializers
            .iter()
            .map(|(k, v)| (k.clone(), Entry::Const(v.clone())))
            .collect(),
        net: Network::default(),
        names: Namer::new(reserved),
        consumers: graph
            .consumer_counts()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    let inputs = m.inputs()?;
    for node in &graph.nodes {
        m.node(node)?;
    }
    let outputs = m.outputs()?;
    Ok(Mapped {
        net: m.net,
        inputs,
        outputs,
    })
}

struct Mapper<'g> {
    graph: &'g Graph<'g>,
    entries: HashMap<String, Entry>,
    net: Network,
    names: Namer,
    consumers: HashMap<String, usize>,
}

impl<'g> Mapper<'g> {
    // ---------------------------------------------------------------- inputs

    fn inputs(&mut self) -> Result<Vec<IoInfo>, ImportError> {
        let graph = self.graph;
        if graph.inputs.is_empty() {
            return Err(ImportError::Input {
                name: String::new(),
                reason: "the model has no inputs".into(),
            });
        }
        let single = graph.inputs.len() == 1;
        let mut infos = Vec::new();
        for input in &graph.inputs {
            let err = |reason: String| ImportError::Input {
                name: input.name.clone(),
                reason,
            };
            if input.elem_type != crate::proto::data_type::FLOAT {
                return Err(err(format!(
                    "element type {} (cnnc inputs are FLOAT)",
                    crate::proto::data_type::name(input.elem_type)
                )));
            }
            let rank = input.dims.len();
            let mut sizes = Vec::with_capacity(rank);
            for (axis, d) in input.dims.iter().enumerate() {
                match d {
                    Dim::Known(n) => sizes.push(*n),
                    Dim::Symbolic if axis == 0 => sizes.push(1),
                    Dim::Symbolic => {
                        return Err(err(format!(
                            "axis {axis} has no fixed size; cnnc needs the input's size \
                             (re-export the model with a fixed input shape)"
                        )))
                    }
                }
            }
            // An NHWC image input is recognised by what reads it: only
            // Transposes to NCHW.
            let nhwc = rank == 4 && self.only_read_by_nchw_transposes(&input.name);
            let layout = match rank {
                4 if nhwc => Layout::Nhwc,
                4 => Layout::Image { perm: None },
                2 => Layout::Flat { perm: None },
                _ => {
                    return Err(err(format!(
                        "rank {rank} (cnnc inputs are images [N, C, H, W] / [N, H, W, C] or vectors [N, F])"
                    )))
                }
            };
            let name = if single {
                "input".to_string()
            } else {
                self.names.fresh(&input.name)
            };
            let value = Value {
                tensor: name.clone(),
                shape: sizes,
                layout: layout.clone(),
                nonneg: false,
            };
            let cnnc_shape = value.cnnc_shape();
            self.net.inputs.push(Input {
                name: name.clone(),
                shape: cnnc_shape.clone(),
            });
            infos.push(IoInfo {
                onnx_name: input.name.clone(),
                onnx_shape: input
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Known(n) => Some(*n),
                        Dim::Symbolic => None,
                    })
                    .collect(),
                cnnc_name: name,
                layout: if matches!(layout, Layout::Image { .. })
                    && cnnc_shape[0] * cnnc_shape[1] > 1
                {
                    IoLayout::ChannelsFirst
                } else {
                    IoLayout::SameOrder
                },
                cnnc_shape,
            });
            self.entries.insert(input.name.clone(), Entry::Value(value));
        }
        Ok(infos)
    }

    fn only_read_by_nchw_transposes(&self, name: &str) -> bool {
        let readers: Vec<&Node> = self
            .graph
            .nodes
            .iter()
            .filter(|n| n.proto.input.iter().any(|i| i == name))
            .collect();
        !readers.is_empty()
            && readers.iter().all(|n| {
                n.op_type() == "Transpose" && n.attr_ints("perm") == Some(&[0, 3, 1, 2][..])
            })
    }

    // --------------------------------------------------------------- outputs

    fn outputs(&mut self) -> Result<Vec<IoInfo>, ImportError> {
        let mut infos = Vec::new();
        for name in self.graph.outputs.clone() {
            let err = |reason: String| ImportError::Output {
                name: name.clone(),
                reason,
            };
            let value = match self.entries.get(&name) {
                Some(Entry::Value(v)) => v.clone(),
                Some(Entry::Const(_)) => {
                    return Err(err("it is a constant; cnnc outputs are computed".into()))
                }
                None => return Err(err("no node computes it".into())),
            };
            let value = match &value.layout {
                Layout::Groups { .. } | Layout::GroupsSwapped { .. } | Layout::Nhwc => {
                    return Err(err(format!(
                        "it is {}, which a cnnc output cannot hold",
                        value.layout.describe()
                    )))
                }
                _ => self.materialize(&value, &name)?,
            };
            if self.net.inputs.iter().any(|i| i.name == value.tensor) {
                return Err(err("it is a model input; the model computes nothing".into()));
            }
            let cnnc_shape = value.cnnc_shape();
            self.net.outputs.push(value.tensor.clone());
            infos.push(IoInfo {
                onnx_name: name.clone(),
                onnx_shape: value.shape.iter().map(|&d| Some(d)).collect(),
                cnnc_name: value.tensor.clone(),
                layout: if matches!(value.layout, Layout::Image { .. })
                    && cnnc_shape[0] * cnnc_shape[1] > 1
                {
                    IoLayout::ChannelsFirst
                } else {
                    IoLayout::SameOrder
                },
                cnnc_shape,
            });
        }
        Ok(infos)
    }

    // ----------------------------------------------------------------- nodes

    fn node(&mut self, node: &Node) -> Result<(), ImportError> {
        if !(node.proto.domain.is_empty() || node.proto.domain == "ai.onnx") {
            return Err(node.unsupported(format!(
                "operators of domain `{}` are not standard ONNX",
                node.proto.domain
            )));
        }
        // Inputs must be known (nodes are in topological order).
        let mut all_const = true;
        for name in node.proto.input.iter().filter(|n| !n.is_empty()) {
            match self.entries.get(name) {
                Some(Entry::Const(_)) => {}
                Some(Entry::Value(_)) => all_const = false,
                None => {
                    return Err(
                        node.invalid(format!("reads `{name}`, which nothing defines before it"))
                    )
                }
            }
        }
        if all_const && fold::is_foldable(node.op_type()) {
            let inputs: Vec<Option<&Tensor>> = node
                .proto
                .input
                .iter()
                .map(|n| match self.entries.get(n) {
                    Some(Entry::Const(t)) => Some(t),
                    _ => None,
                })
                .collect();
            let outs = fold::fold(node, &inputs, self.graph.opset)?;
            for (name, t) in node.proto.output.iter().zip(outs) {
                self.entries.insert(name.clone(), Entry::Const(t));
            }
            return Ok(());
        }
        let out = match node.op_type() {
            "Conv" => self.conv(node)?,
            "Relu" => self.activation(node, Activation::Relu, true)?,
            "Sigmoid" => self.activation(node, Activation::Sigmoid, true)?,
            "Tanh" => self.activation(node, Activation::Tanh, false)?,
            "Elu" => {
                let alpha = node.attr_float("alpha").unwrap_or(1.0);
                if !(alpha >= 0.0 && alpha.is_finite()) {
                    return Err(
                        node.unsupported(format!("alpha {alpha} (cnnc's elu needs alpha >= 0)"))
                    );
                }
                self.activation(node, Activation::Elu { alpha }, false)?
            }
            "LeakyRelu" => {
                let negative_slope = node.attr_float("alpha").unwrap_or(0.01);
                if !(negative_slope >= 0.0 && negative_slope.is_finite()) {
                    return Err(node.unsupported(format!(
                        "alpha {negative_slope} (cnnc's leaky_relu needs a slope >= 0)"
                    )));
                }
                self.activation(node, Activation::LeakyRelu { negative_slope }, false)?
            }
            "Clip" => self.clip(node)?,
            "Softmax" => self.softmax(node)?,
            "Add" | "Sum" | "Sub" | "Mul" | "Div" => self.arithmetic(node)?,
            "BatchNormalization" => self.batch_norm(node)?,
            "MaxPool" | "AveragePool" => self.pool(node)?,
            "GlobalAveragePool" | "GlobalMaxPool" => self.global_pool(node)?,
            "Flatten" => self.flatten_op(node)?,
            "Reshape" => {
                let target = self
                    .const_input(node, 1)?
                    .to_i64()
                    .ok_or_else(|| node.invalid("the shape must be integers"))?;
                let x = self.value(node, 0)?;
                let allow_zero = node.attr_int("allowzero").unwrap_or(0) == 1;
                let dims = reshape_dims(&x.shape, &target, allow_zero).ok_or_else(|| {
                    node.invalid(format!("cannot reshape {:?} to {target:?}", x.shape))
                })?;
                self.reshape(node, x, dims)?
            }
            "Squeeze" | "Unsqueeze" => self.squeeze(node)?,
            "Transpose" => self.transpose(node)?,
            "Concat" => self.concat(node)?,
            "Gemm" => self.gemm(node)?,
            "MatMul" => self.matmul(node)?,
            "Dropout" => self.dropout(node)?,
            "Identity" => self.value(node, 0)?,
            "Pad" => self.pad(node)?,
            "Upsample" | "Resize" => self.resize(node)?,
            "Shape" => {
                let x = self.value(node, 0)?;
                let t = Tensor::i64(
                    vec![x.shape.len()],
                    x.shape.iter().map(|&d| d as i64).collect(),
                );
                self.set_output(node, Entry::Const(t))?;
                return Ok(());
            }
            other => {
                return Err(node.unsupported(format!(
                    "cnnc has no layer for ONNX `{other}`{}",
                    hint(other)
                )))
            }
        };
        self.set_output(node, Entry::Value(out))
    }

    /// Records the node's first output; its other outputs must be unused.
    fn set_output(&mut self, node: &Node, entry: Entry) -> Result<(), ImportError> {
        for extra in node.proto.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.consumers.get(extra).copied().unwrap_or(0) > 0 {
                return Err(node.unsupported(format!(
                    "its output `{extra}` is used; cnnc computes only the first output"
                )));
            }
        }
        let first = node
            .proto
            .output
            .first()
            .ok_or_else(|| node.invalid("no outputs"))?;
        self.entries.insert(first.clone(), entry);
        Ok(())
    }

    // --------------------------------------------------------------- helpers

    /// Input `i` as an activation value.
    fn value(&self, node: &Node, i: usize) -> Result<Value, ImportError> {
        let name = node
            .input(i)
            .ok_or_else(|| node.invalid(format!("input {i} is missing")))?;
        match self.entries.get(name) {
            Some(Entry::Value(v)) => Ok(v.clone()),
            Some(Entry::Const(_)) => Err(node.unsupported(format!(
                "input {i} (`{name}`) is a constant where cnnc needs a computed tensor"
            ))),
            None => Err(node.invalid(format!("reads `{name}`, which nothing defines"))),
        }
    }

    /// Input `i` as a constant.
    fn const_input(&self, node: &Node, i: usize) -> Result<Tensor, ImportError> {
        let name = node
            .input(i)
            .ok_or_else(|| node.invalid(format!("input {i} is missing")))?;
        self.opt_const(node, i)?
            .ok_or_else(|| node.unsupported(format!("input {i} (`{name}`) must be a constant (weights computed at run time are not supported)")))
    }

    /// Optional constant input `i` (`None` when omitted).
    fn opt_const(&self, node: &Node, i: usize) -> Result<Option<Tensor>, ImportError> {
        match node.input(i) {
            None => Ok(None),
            Some(name) => match self.entries.get(name) {
                Some(Entry::Const(t)) => Ok(Some(t.clone())),
                Some(Entry::Value(_)) => Err(node.unsupported(format!(
                    "input {i} (`{name}`) must be a constant (weights computed at run time are not supported)"
                ))),
                None => Err(node.invalid(format!("reads `{name}`, which nothing defines"))),
            },
        }
    }

    /// The base of the names of the layers made for `node`: its name, else
    /// the common prefix of its constant inputs' names (`conv1_w_0`,
    /// `conv1_b_0` -> `conv1`), else its first output's name.
    fn base_name(&self, node: &Node) -> String {
        if !node.proto.name.is_empty() {
            return node.proto.name.clone();
        }
        let consts: Vec<&str> = node
            .proto
            .input
            .iter()
            .filter(|n| matches!(self.entries.get(*n), Some(Entry::Const(_))))
            .map(|s| s.as_str())
            .collect();
        if consts.len() >= 2 {
            let prefix = common_prefix(&consts);
            let trimmed = prefix.trim_end_matches(['_', '/', '.', ':']);
            if trimmed.len() >= 3 {
                return trimmed.to_string();
            }
        }
        node.proto
            .output
            .first()
            .cloned()
            .unwrap_or_else(|| node.op_type().to_lowercase())
    }

    /// Appends a layer named after `base` (made unique) and returns its name.
    fn emit(
        &mut self,
        base: &str,
        kind: LayerKind,
        inputs: Vec<String>,
        weights: Vec<Weight>,
        shape: Vec<usize>,
    ) -> String {
        let name = self.names.fresh(base);
        self.net.layers.push(Layer {
            name: name.clone(),
            op: Op::Layer(kind),
            inputs,
            weights,
            shape,
        });
        name
    }

    /// Appends a per-channel affine map (see [`Op::Affine`]).
    fn emit_affine(
        &mut self,
        base: &str,
        x: &Value,
        scale: Option<Vec<f32>>,
        shift: Option<Vec<f32>>,
    ) -> String {
        let name = self.names.fresh(base);
        self.net.layers.push(Layer {
            name: name.clone(),
            op: Op::Affine { scale, shift },
            inputs: vec![x.tensor.clone()],
            weights: vec![],
            shape: x.cnnc_shape(),
        });
        name
    }

    /// `x` without a pending permutation: a feature map gets a 1x1
    /// convolution whose kernel is the permutation matrix (output channel
    /// `perm[j]` = input channel `j`; exact, every output is one input
    /// times 1 plus zeros), a vector a dense layer with that matrix.
    fn materialize(&mut self, x: &Value, base: &str) -> Result<Value, ImportError> {
        let Some(perm) = x.layout.perm().map(|p| p.to_vec()) else {
            return Ok(x.clone());
        };
        let n = perm.len();
        let mut matrix = vec![0.0f32; n * n];
        for (j, &p) in perm.iter().enumerate() {
            matrix[j * n + p] = 1.0;
        }
        let shape = x.cnnc_shape();
        let name = match &x.layout {
            Layout::Image { .. } => self.emit(
                &format!("{base}_unpermute"),
                LayerKind::Conv2d {
                    filters: n,
                    kernel_size: [1, 1],
                    strides: [1, 1],
                    padding: Padding::Valid,
                    dilation_rate: [1, 1],
                    activation: Activation::Linear,
                    use_bias: false,
                },
                vec![x.tensor.clone()],
                vec![Weight {
                    suffix: "kernel",
                    tensor: Tensor::f32(vec![1, 1, n, n], matrix),
                }],
                shape,
            ),
            _ => {
                if n > MAX_PERMUTATION_MATRIX {
                    return Err(ImportError::Unsupported {
                        op_type: "Flatten".into(),
                        node: base.to_string(),
                        reason: format!(
                            "{n} features in ONNX's CHW order would need a {n} x {n} permutation \
                             matrix here; cnnc orders them HWC"
                        ),
                    });
                }
                self.emit(
                    &format!("{base}_unpermute"),
                    LayerKind::Dense {
                        units: n,
                        activation: Activation::Linear,
                        use_bias: false,
                    },
                    vec![x.tensor.clone()],
                    vec![Weight {
                        suffix: "kernel",
                        tensor: Tensor::f32(vec![n, n], matrix),
                    }],
                    shape,
                )
            }
        };
        Ok(Value {
            tensor: name,
            layout: x.layout.with_perm(None),
            ..x.clone()
        })
    }

    /// `x` as an NCHW feature map (a pooled `[N, C, 1, 1]` vector gets a
    /// `reshape` to `[1, 1, C]`).
    fn image(&mut self, node: &Node, x: Value) -> Result<Value, ImportError> {
        match &x.layout {
            Layout::Image { .. } => Ok(x),
            Layout::Pooled { perm } => {
                let c = x.shape[1];
                let base = format!("{}_reshape", self.base_name(node));
                let name = self.emit(
                    &base,
                    LayerKind::Reshape {
                        target_shape: vec![1, 1, c],
                    },
                    vec![x.tensor.clone()],
                    vec![],
                    vec![1, 1, c],
                );
                Ok(Value {
                    tensor: name,
                    layout: Layout::Image { perm: perm.clone() },
                    ..x
                })
            }
            other => Err(node.unsupported(format!(
                "its input is {}; cnnc needs an NCHW feature map here",
                other.describe()
            ))),
        }
    }

    // -------------------------------------------------------------- conv

    fn conv(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let x = self.image(node, x)?;
        let w = self.const_input(node, 1)?;
        let bias = self.opt_const(node, 2)?;
        if w.dims.len() != 4 {
            return Err(node.unsupported(format!(
                "a {}-D kernel; cnnc has 2-D convolutions only",
                w.dims.len().saturating_sub(2)
            )));
        }
        let (m, cg, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
        let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
        let group = node.attr_int("group").unwrap_or(1);
        let group = usize::try_from(group)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or_else(|| node.invalid("`group` must be >= 1"))?;
        if c % group != 0 || cg * group != c || m % group != 0 {
            return Err(node.invalid(format!(
                "kernel {:?} does not fit {c} input channels in {group} groups",
                w.dims
            )));
        }
        if let Some(k) = node.attr_ints("kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(node.invalid(format!(
                    "kernel_shape {k:?} differs from the kernel {:?}",
                    w.dims
                )));
            }
        }
        let strides = pair(node, "strides")?;
        let dilations = pair(node, "dilations")?;
        if strides.iter().any(|&s| s > 1) && dilations.iter().any(|&d| d > 1) {
            return Err(node.unsupported(
                "strides and dilations both above 1 (cnnc, like Keras, does not combine them)",
            ));
        }
        let effective = [dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1];
        let pads = self.window_pads(node, [h, wd], effective, strides)?;
        let (plan, out) = layout::plan_window(&Window {
            input: [h, wd],
            kernel: effective,
            strides,
            pads,
            ceil_mode: false,
        })
        .map_err(|r| node.invalid(r))?;
        if let Some(b) = &bias {
            if b.len() != m {
                return Err(node.invalid(format!("bias has {} values for {m} filters", b.len())));
            }
        }
        let base = self.base_name(node);
        let (source, padding) = self.apply_plan(&base, &x, plan)?;

        let w = w.to_f32();
        let bias = bias.map(|b| b.to_f32());
        let perm: Vec<usize> = x
            .layout
            .perm()
            .map_or_else(|| (0..c).collect(), |p| p.to_vec());
        let shape = vec![out[0], out[1], m];
        let depthwise = group == c && group > 1;
        let (kind, weights, out_perm) = if depthwise {
            // ONNX output channel `o = c * dm + k` reads input channel `c`;
            // cnnc's depthwise output channel `j * dm + k` reads cnnc channel `j`
            // (ONNX channel perm[j]).
            let dm = m / c;
            let mut kernel = vec![0.0f32; kh * kw * c * dm];
            for y in 0..kh {
                for xx in 0..kw {
                    for (j, &p) in perm.iter().enumerate() {
                        for k in 0..dm {
                            kernel[((y * kw + xx) * c + j) * dm + k] =
                                w[((p * dm + k) * kh + y) * kw + xx];
                        }
                    }
                }
            }
            let out_perm: Vec<usize> = perm
                .iter()
                .flat_map(|&p| (0..dm).map(move |k| p * dm + k))
                .collect();
            let mut weights = vec![Weight {
                suffix: "depthwise_kernel",
                tensor: Tensor::f32(vec![kh, kw, c, dm], kernel),
            }];
            if let Some(b) = &bias {
                weights.push(Weight {
                    suffix: "bias",
                    tensor: Tensor::f32(vec![m], out_perm.iter().map(|&o| b[o]).collect()),
                });
            }
            (
                LayerKind::DepthwiseConv2d {
                    kernel_size: [kh, kw],
                    strides,
                    padding,
                    depth_multiplier: dm,
                    dilation_rate: dilations,
                    activation: Activation::Linear,
                    use_bias: bias.is_some(),
                },
                weights,
                Some(out_perm),
            )
        } else {
            // Grouped convolution as a full one with a block-diagonal kernel
            // (zeros between groups): output channel o of group o / (m / group)
            // reads the input channels of that group only. group == 1 is
            // the plain case.
            let mg = m / group;
            let mut kernel = vec![0.0f32; kh * kw * c * m];
            for y in 0..kh {
                for xx in 0..kw {
                    for (j, &p) in perm.iter().enumerate() {
                        let g = p / cg;
                        for o in g * mg..(g + 1) * mg {
                            kernel[((y * kw + xx) * c + j) * m + o] =
                                w[((o * cg + p % cg) * kh + y) * kw + xx];
                        }
                    }
                }
            }
            let mut weights = vec![Weight {
                suffix: "kernel",
                tensor: Tensor::f32(vec![kh, kw, c, m], kernel),
            }];
            if let Some(b) = &bias {
                weights.push(Weight {
                    suffix: "bias",
                    tensor: Tensor::f32(vec![m], b.clone()),
                });
            }
            (
                LayerKind::Conv2d {
                    filters: m,
                    kernel_size: [kh, kw],
                    strides,
                    padding,
                    dilation_rate: dilations,
                    activation: Activation::Linear,
                    use_bias: bias.is_some(),
                },
                weights,
                None,
            )
        };
        let name = self.emit(&base, kind, vec![source], weights, shape);
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], m, out[0], out[1]],
            layout: Layout::Image { perm: None }.with_perm(out_perm),
            nonneg: false,
        })
    }

    /// ONNX `pads` (or `auto_pad`) of a window op as `[top, left, bottom, right]`.
    fn window_pads(
        &self,
        node: &Node,
        input: [usize; 2],
        kernel: [usize; 2],
        strides: [usize; 2],
    ) -> Result<[usize; 4], ImportError> {
        let auto = node.attr_string("auto_pad").unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => {
                let Some(p) = node.attr_ints("pads") else {
                    return Ok([0; 4]);
                };
                if p.len() != 4 {
                    return Err(
                        node.invalid(format!("`pads` {p:?} (expected 4 values for a 2-D window)"))
                    );
                }
                let mut out = [0; 4];
                for (o, &v) in out.iter_mut().zip(p) {
                    *o = usize::try_from(v)
                        .map_err(|_| node.unsupported(format!("negative padding {p:?}")))?;
                }
                Ok(out)
            }
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" => Ok(layout::auto_pads(input, kernel, strides, false)),
            "SAME_LOWER" => Ok(layout::auto_pads(input, kernel, strides, true)),
            other => Err(node.invalid(format!("unknown auto_pad `{other}`"))),
        }
    }

    /// Emits the `zero_padding2d` of an explicit plan; returns the tensor
    /// the window op reads and its `padding`.
    fn apply_plan(
        &mut self,
        base: &str,
        x: &Value,
        plan: PadPlan,
    ) -> Result<(String, Padding), ImportError> {
        Ok(match plan {
            PadPlan::Valid => (x.tensor.clone(), Padding::Valid),
            PadPlan::Same => (x.tensor.clone(), Padding::Same),
            PadPlan::Explicit { pads, .. } => {
                let [h, w, c] = <[usize; 3]>::try_from(x.cnnc_shape()).unwrap_or([0; 3]);
                let shape = vec![pads.top + h + pads.bottom, pads.left + w + pads.right, c];
                let name = self.emit(
                    &format!("{base}_pad"),
                    LayerKind::ZeroPadding2d { padding: pads },
                    vec![x.tensor.clone()],
                    vec![],
                    shape,
                );
                (name, Padding::Valid)
            }
        })
    }

    // --------------------------------------------------------- activations

    fn activation(
        &mut self,
        node: &Node,
        activation: Activation,
        nonneg: bool,
    ) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        if matches!(
            x.layout,
            Layout::Groups { .. } | Layout::GroupsSwapped { .. }
        ) {
            return Err(node.unsupported(format!("its input is {}", x.layout.describe())));
        }
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::Activation { activation },
            vec![x.tensor.clone()],
            vec![],
            x.cnnc_shape(),
        );
        // Activations that map [0, inf) into itself keep a value non-negative.
        let keeps = matches!(
            activation,
            Activation::Relu6 | Activation::Elu { .. } | Activation::LeakyRelu { .. }
        );
        Ok(Value {
            tensor: name,
            nonneg: nonneg || (x.nonneg && keeps),
            ..x
        })
    }

    fn clip(&mut self, node: &Node) -> Result<Value, ImportError> {
        let (min, max) = if self.graph.opset >= 11 {
            let read = |i: usize| -> Result<Option<f32>, ImportError> {
                match self.opt_const(node, i)? {
                    None => Ok(None),
                    Some(t) => t
                        .scalar_f32()
                        .map(Some)
                        .ok_or_else(|| node.invalid(format!("input {i} must be a scalar"))),
                }
            };
            (read(1)?, read(2)?)
        } else {
            (node.attr_float("min"), node.attr_float("max"))
        };
        let finite = |v: Option<f32>| v.filter(|x| x.abs() < 3.0e38);
        match (finite(min), finite(max)) {
            (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => {
                self.activation(node, Activation::Relu6, true)
            }
            (Some(0.0), None) => self.activation(node, Activation::Relu, true),
            (None, None) => self.value(node, 0),
            (lo, hi) => Err(node.unsupported(format!(
                "clipping to [{}, {}]; cnnc has relu (min 0) and relu6 (min 0, max 6)",
                lo.map_or("-inf".into(), |v| v.to_string()),
                hi.map_or("inf".into(), |v| v.to_string())
            ))),
        }
    }

    fn softmax(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let rank = x.shape.len();
        let default = if self.graph.opset >= 13 { -1 } else { 1 };
        let axis = normalize_axes(node, &[node.attr_int("axis").unwrap_or(default)], rank)?[0];
        // Before opset 13 the input is flattened to 2-D at `axis`: softmax
        // over all the following axes. From 13 on, over `axis` alone.
        let ok = match &x.layout {
            Layout::Flat { .. } => axis == 1,
            Layout::Pooled { .. } => axis == 1,
            Layout::Image { .. } => {
                axis == 1 && (self.graph.opset >= 13 || x.shape[2] * x.shape[3] == 1)
            }
            Layout::Nhwc => axis == 3,
            _ => false,
        };
        if !ok {
            return Err(node.unsupported(format!(
                "softmax over axis {axis} of {} (cnnc's softmax runs over the channels)",
                x.layout.describe()
            )));
        }
        self.activation(node, Activation::Softmax, true)
    }

    // ---------------------------------------------------------- arithmetic

    fn arithmetic(&mut self, node: &Node) -> Result<Value, ImportError> {
        let op = node.op_type();
        let count = node.proto.input.iter().filter(|n| !n.is_empty()).count();
        if op == "Sum" && count == 1 {
            return self.value(node, 0);
        }
        if op != "Sum" && count != 2 {
            return Err(node.invalid(format!("{count} inputs (expected 2)")));
        }
        let is_value = |m: &Self, i: usize| {
            node.input(i)
                .is_some_and(|n| matches!(m.entries.get(n), Some(Entry::Value(_))))
        };
        let all_values = (0..count).all(|i| is_value(self, i));
        if all_values {
            return self.join(node, count);
        }
        if op == "Sum" {
            return Err(node.unsupported("a sum with constant terms"));
        }
        // One value and one constant.
        let (vi, ci) = if is_value(self, 0) { (0, 1) } else { (1, 0) };
        let x = self.value(node, vi)?;
        let c = self.const_input(node, ci)?;
        let v = channel_vector(&x, &c).ok_or_else(|| {
            node.unsupported(format!(
                "{op} of {} {:?} and a constant of shape {:?}: cnnc applies only per-channel constants",
                x.layout.describe(),
                x.shape,
                c.dims
            ))
        })?;
        // In cnnc channel order.
        let v: Vec<f32> = match x.layout.perm() {
            Some(p) => p.iter().map(|&o| v[o]).collect(),
            None => v,
        };
        let n = v.len();
        let (scale, shift) = match (op, vi) {
            ("Add", _) => (None, Some(v.clone())),
            ("Sub", 0) => (None, Some(v.iter().map(|a| -a).collect())),
            ("Sub", _) => (Some(vec![-1.0; n]), Some(v.clone())),
            ("Mul", _) => (Some(v.clone()), None),
            ("Div", 0) => (Some(v.iter().map(|a| 1.0 / a).collect()), None),
            _ => return Err(node.unsupported("division of a constant by a computed tensor")),
        };
        let nonneg = x.nonneg
            && scale.as_ref().is_none_or(|s| s.iter().all(|&a| a >= 0.0))
            && shift.as_ref().is_none_or(|s| s.iter().all(|&a| a >= 0.0));
        if !matches!(
            x.layout,
            Layout::Image { .. } | Layout::Flat { .. } | Layout::Pooled { .. } | Layout::Nhwc
        ) {
            return Err(node.unsupported(format!("its input is {}", x.layout.describe())));
        }
        let base = self.base_name(node);
        let name = self.emit_affine(&base, &x, scale, shift);
        Ok(Value {
            tensor: name,
            nonneg,
            ..x
        })
    }

    /// `Add` / `Sum` / `Mul` / `Sub` of computed tensors of one shape.
    fn join(&mut self, node: &Node, count: usize) -> Result<Value, ImportError> {
        let op = node.op_type();
        let mut values: Vec<Value> = (0..count)
            .map(|i| self.value(node, i))
            .collect::<Result<_, _>>()?;
        let first = values[0].clone();
        for v in &values[1..] {
            if v.shape != first.shape {
                return Err(node.unsupported(format!(
                    "shapes {:?} and {:?}: cnnc joins tensors of one shape (no broadcasting)",
                    first.shape, v.shape
                )));
            }
            if std::mem::discriminant(&v.layout) != std::mem::discriminant(&first.layout) {
                return Err(node.unsupported("inputs in different layouts"));
            }
        }
        if matches!(
            first.layout,
            Layout::Groups { .. } | Layout::GroupsSwapped { .. }
        ) {
            return Err(node.unsupported(format!("its inputs are {}", first.layout.describe())));
        }
        let base = self.base_name(node);
        if values
            .iter()
            .any(|v| v.layout.perm() != first.layout.perm())
        {
            for v in &mut values {
                *v = self.materialize(v, &base)?;
            }
        }
        if op == "Div" {
            return Err(node.unsupported("division of computed tensors"));
        }
        if op == "Sub" {
            let negated = self.emit_affine(
                &format!("{base}_negate"),
                &values[1],
                Some(vec![
                    -1.0;
                    values[1].cnnc_shape().last().copied().unwrap_or(0)
                ]),
                None,
            );
            values[1] = Value {
                tensor: negated,
                nonneg: false,
                ..values[1].clone()
            };
        }
        let kind = if op == "Mul" {
            LayerKind::Multiply
        } else {
            LayerKind::Add
        };
        let nonneg = values.iter().all(|v| v.nonneg);
        let name = self.emit(
            &base,
            kind,
            values.iter().map(|v| v.tensor.clone()).collect(),
            vec![],
            first.cnnc_shape(),
        );
        Ok(Value {
            tensor: name,
            nonneg,
            layout: values[0].layout.clone(),
            shape: first.shape,
        })
    }

    // ---------------------------------------------------------- batch norm

    fn batch_norm(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        if !matches!(
            x.layout,
            Layout::Image { .. } | Layout::Flat { .. } | Layout::Pooled { .. }
        ) {
            return Err(node.unsupported(format!("its input is {}", x.layout.describe())));
        }
        if node.attr_int("training_mode").unwrap_or(0) != 0 {
            return Err(node.unsupported("training_mode = 1 (import inference graphs)"));
        }
        if node.attr_int("spatial").unwrap_or(1) != 1 {
            return Err(node.unsupported("spatial = 0 (per-pixel statistics)"));
        }
        let c = x.shape[1];
        let epsilon = node.attr_float("epsilon").unwrap_or(1e-5);
        let mut weights = Vec::new();
        for (i, suffix) in [
            (1, "gamma"),
            (2, "beta"),
            (3, "moving_mean"),
            (4, "moving_variance"),
        ] {
            let t = self.const_input(node, i)?;
            if t.len() != c {
                return Err(
                    node.invalid(format!("input {i} has {} values for {c} channels", t.len()))
                );
            }
            let v = t.to_f32();
            let v = match x.layout.perm() {
                Some(p) => p.iter().map(|&o| v[o]).collect(),
                None => v,
            };
            weights.push(Weight {
                suffix,
                tensor: Tensor::f32(vec![c], v),
            });
        }
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::BatchNormalization {
                momentum: 0.99,
                epsilon,
                center: true,
                scale: true,
            },
            vec![x.tensor.clone()],
            weights,
            x.cnnc_shape(),
        );
        Ok(Value {
            tensor: name,
            nonneg: false,
            ..x
        })
    }

    // ------------------------------------------------------------- pooling

    fn pool(&mut self, node: &Node) -> Result<Value, ImportError> {
        let max = node.op_type() == "MaxPool";
        let x = self.value(node, 0)?;
        let x = self.image(node, x)?;
        let kernel = node
            .attr_ints("kernel_shape")
            .ok_or_else(|| node.invalid("`kernel_shape` is required"))?;
        if kernel.len() != 2 {
            return Err(
                node.unsupported(format!("a {}-D window; cnnc pools 2-D maps", kernel.len()))
            );
        }
        let kernel = [to_size(node, kernel[0])?, to_size(node, kernel[1])?];
        let strides = pair(node, "strides")?;
        if pair(node, "dilations")? != [1, 1] {
            return Err(node.unsupported("dilated pooling windows"));
        }
        let (h, w) = (x.shape[2], x.shape[3]);
        let pads = self.window_pads(node, [h, w], kernel, strides)?;
        let ceil_mode = node.attr_int("ceil_mode").unwrap_or(0) == 1;
        let (mut plan, out) = layout::plan_window(&Window {
            input: [h, w],
            kernel,
            strides,
            pads,
            ceil_mode,
        })
        .map_err(|r| node.invalid(r))?;
        let count_include_pad = node.attr_int("count_include_pad").unwrap_or(0) == 1;
        if !max && count_include_pad && plan == PadPlan::Same && pads != [0; 4] {
            // `same` averages over the pixels inside the image only.
            let needed = layout::plan_window(&Window {
                input: [h, w],
                kernel,
                strides,
                pads,
                ceil_mode,
            });
            if let Ok((_, o)) = needed {
                let bottom = ((o[0] - 1) * strides[0] + kernel[0]).saturating_sub(h + pads[0]);
                let right = ((o[1] - 1) * strides[1] + kernel[1]).saturating_sub(w + pads[1]);
                plan = PadPlan::Explicit {
                    pads: Pads2d {
                        top: pads[0],
                        left: pads[1],
                        bottom,
                        right,
                    },
                    beyond_end: bottom > pads[2] || right > pads[3],
                };
            }
        }
        if let PadPlan::Explicit { beyond_end, .. } = plan {
            if max && !x.nonneg {
                return Err(node.unsupported(format!(
                    "padding {pads:?} that TensorFlow's `same` cannot express, on values that may be \
                     negative: cnnc's zero padding would change the maximum (ONNX pads with -inf)"
                )));
            }
            if !max && !count_include_pad {
                return self.average_excluding_padding(node, x, kernel, strides, pads, out);
            }
            if !max && beyond_end {
                return Err(node.unsupported(
                    "ceil_mode windows overhanging the padded input with count_include_pad = 1",
                ));
            }
        }
        let base = self.base_name(node);
        let (source, padding) = self.apply_plan(&base, &x, plan)?;
        let kind = if max {
            LayerKind::MaxPool2d {
                pool_size: kernel,
                strides,
                padding,
            }
        } else {
            LayerKind::AvgPool2d {
                pool_size: kernel,
                strides,
                padding,
            }
        };
        let c = x.shape[1];
        let name = self.emit(&base, kind, vec![source], vec![], vec![out[0], out[1], c]);
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], c, out[0], out[1]],
            layout: x.layout.clone(),
            nonneg: x.nonneg,
        })
    }

    /// ONNX `AveragePool` with `count_include_pad = 0` and padding that
    /// TensorFlow's `same` does not reproduce: the mean over each window's
    /// pixels inside the image, `sum / count(i, j)`. Written as
    /// `avg_pool2d` (valid) over the zero-padded input, which gives
    /// `sum / (kh * kw)`, times a map `F(i, j) = kh * kw / count(i, j)`.
    /// `F` is computed by the network itself: a map of ones (`conv2d` with a
    /// zero kernel and bias 1; NaN where the input is infinite or NaN),
    /// zero-padded like the input, convolved with the window's kernel
    /// `u[a] * v[b]`, where `u` solves `sum of u over the valid rows of the
    /// window = kh / number of valid rows` for every window position (and
    /// `v` the same for columns), so that the sum over the valid taps is
    /// `(kh / rows) * (kw / cols) = kh * kw / count`.
    fn average_excluding_padding(
        &mut self,
        node: &Node,
        x: Value,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        out: [usize; 2],
    ) -> Result<Value, ImportError> {
        let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3]);
        let mut taps = Vec::new();
        for axis in 0..2 {
            let n = [h, w][axis];
            let weights = tap_weights(n, kernel[axis], strides[axis], pads[axis], out[axis])
                .ok_or_else(|| {
                    node.unsupported(format!(
                    "padding {pads:?} with count_include_pad = 0: no tap weights reproduce the \
                     per-window pixel counts"
                ))
                })?;
            taps.push(weights);
        }
        let (kh, kw) = (kernel[0], kernel[1]);
        let pads2d = Pads2d {
            top: pads[0],
            left: pads[1],
            bottom: ((out[0] - 1) * strides[0] + kh).saturating_sub(h + pads[0]),
            right: ((out[1] - 1) * strides[1] + kw).saturating_sub(w + pads[1]),
        };
        let (ph, pw) = (
            pads2d.top + h + pads2d.bottom,
            pads2d.left + w + pads2d.right,
        );
        let base = self.base_name(node);
        // The average over the zero-padded windows: sum / (kh * kw).
        let padded = self.emit(
            &format!("{base}_pad"),
            LayerKind::ZeroPadding2d { padding: pads2d },
            vec![x.tensor.clone()],
            vec![],
            vec![ph, pw, c],
        );
        let average = self.emit(
            &base,
            LayerKind::AvgPool2d {
                pool_size: kernel,
                strides,
                padding: Padding::Valid,
            },
            vec![padded],
            vec![],
            vec![out[0], out[1], c],
        );
        // Ones where the image is, zeros in the padding.
        let ones = self.emit(
            &format!("{base}_ones"),
            LayerKind::Conv2d {
                filters: 1,
                kernel_size: [1, 1],
                strides: [1, 1],
                padding: Padding::Valid,
                dilation_rate: [1, 1],
                activation: Activation::Linear,
                use_bias: true,
            },
            vec![x.tensor.clone()],
            vec![
                Weight {
                    suffix: "kernel",
                    tensor: Tensor::f32(vec![1, 1, c, 1], vec![0.0; c]),
                },
                Weight {
                    suffix: "bias",
                    tensor: Tensor::f32(vec![1], vec![1.0]),
                },
            ],
            vec![h, w, 1],
        );
        let ones_padded = self.emit(
            &format!("{base}_ones_pad"),
            LayerKind::ZeroPadding2d { padding: pads2d },
            vec![ones],
            vec![],
            vec![ph, pw, 1],
        );
        let mut factor_kernel = Vec::with_capacity(kh * kw * c);
        for a in 0..kh {
            for b in 0..kw {
                let v = (taps[0][a] * taps[1][b]) as f32;
                factor_kernel.extend(std::iter::repeat_n(v, c));
            }
        }
        let factor = self.emit(
            &format!("{base}_count"),
            LayerKind::Conv2d {
                filters: c,
                kernel_size: kernel,
                strides,
                padding: Padding::Valid,
                dilation_rate: [1, 1],
                activation: Activation::Linear,
                use_bias: false,
            },
            vec![ones_padded],
            vec![Weight {
                suffix: "kernel",
                tensor: Tensor::f32(vec![kh, kw, 1, c], factor_kernel),
            }],
            vec![out[0], out[1], c],
        );
        let name = self.emit(
            &format!("{base}_exclude_pad"),
            LayerKind::Multiply,
            vec![average, factor],
            vec![],
            vec![out[0], out[1], c],
        );
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], c, out[0], out[1]],
            layout: x.layout.clone(),
            nonneg: x.nonneg,
        })
    }

    fn global_pool(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        if let Layout::Pooled { .. } = x.layout {
            return Ok(x);
        }
        if !matches!(x.layout, Layout::Image { .. }) {
            return Err(node.unsupported(format!("its input is {}", x.layout.describe())));
        }
        let kind = if node.op_type() == "GlobalMaxPool" {
            LayerKind::GlobalMaxPool2d
        } else {
            LayerKind::GlobalAvgPool2d
        };
        let c = x.shape[1];
        let base = self.base_name(node);
        let name = self.emit(&base, kind, vec![x.tensor.clone()], vec![], vec![c]);
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], c, 1, 1],
            layout: Layout::Pooled {
                perm: x.layout.perm().map(|p| p.to_vec()),
            },
            nonneg: x.nonneg,
        })
    }

    // ------------------------------------------------------------- shapes

    fn flatten_op(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let rank = x.shape.len();
        let axis = node.attr_int("axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        if axis != 1 {
            return Err(
                node.unsupported(format!("axis {axis}: cnnc flattens each example (axis 1)"))
            );
        }
        let features: usize = x.shape[1..].iter().product();
        self.flatten_to(node, x, features)
    }

    /// `x` as `[N, features]` (ONNX flattening of the per-example axes).
    fn flatten_to(&mut self, node: &Node, x: Value, features: usize) -> Result<Value, ImportError> {
        let shape = vec![x.shape[0], features];
        match &x.layout {
            Layout::Flat { .. } => Ok(x),
            Layout::Pooled { perm } => Ok(Value {
                layout: Layout::Flat { perm: perm.clone() },
                shape,
                ..x
            }),
            Layout::Image { .. } | Layout::Nhwc => {
                // ONNX flattens [C, H, W] (or NHWC's [H, W, C]); cnnc [H, W, C].
                let perm = match &x.layout {
                    Layout::Image { perm } => {
                        flatten_perm(x.shape[1], x.shape[2], x.shape[3], perm.as_deref())
                    }
                    _ => None,
                };
                let base = self.base_name(node);
                let name = self.emit(
                    &base,
                    LayerKind::Flatten,
                    vec![x.tensor.clone()],
                    vec![],
                    vec![features],
                );
                Ok(Value {
                    tensor: name,
                    shape,
                    layout: Layout::Flat { perm },
                    nonneg: x.nonneg,
                })
            }
            other => Err(node.unsupported(format!("flattening {}", other.describe()))),
        }
    }

    /// ONNX `Reshape` (and `Squeeze` / `Unsqueeze`) of `x` to `dims`
    /// (resolved, batch first).
    fn reshape(&mut self, node: &Node, x: Value, dims: Vec<usize>) -> Result<Value, ImportError> {
        if dims == x.shape {
            return Ok(x);
        }
        let batch = x.shape[0];
        let unsupported = |x: &Value| {
            node.unsupported(format!(
                "reshaping {} {:?} to {dims:?} (cnnc supports flattening, [N, C] <-> [N, C, 1, 1] \
                 and the reshapes of a channel shuffle)",
                x.layout.describe(),
                x.shape
            ))
        };
        if dims.first() != Some(&batch) {
            return Err(unsupported(&x));
        }
        match (&x.layout, dims.len()) {
            (
                Layout::Image { .. } | Layout::Nhwc | Layout::Pooled { .. } | Layout::Flat { .. },
                2,
            ) => self.flatten_to(node, x, dims[1]),
            (Layout::Flat { perm } | Layout::Pooled { perm }, 4)
                if dims[2] == 1 && dims[3] == 1 =>
            {
                Ok(Value {
                    layout: Layout::Pooled { perm: perm.clone() },
                    shape: dims,
                    ..x
                })
            }
            // A 1x1 map [N, C, 1, 1] viewed as NHWC [N, 1, 1, C] (TensorFlow
            // exports write the NCHW -> NHWC transpose of a pooled map this way):
            // the same values in the same order.
            (Layout::Image { .. } | Layout::Pooled { .. }, 4)
                if dims[1] == 1
                    && dims[2] == 1
                    && dims[3] == x.shape[1]
                    && x.shape[2..].iter().all(|&d| d == 1) =>
            {
                let base = self.base_name(node);
                let x = self.materialize(&x, &base)?;
                let x = self.image(node, x)?;
                Ok(Value {
                    layout: Layout::Nhwc,
                    shape: dims,
                    ..x
                })
            }
            (Layout::Image { .. }, 5)
                if dims[3] == x.shape[2]
                    && dims[4] == x.shape[3]
                    && dims[1] * dims[2] == x.shape[1] =>
            {
                let base = self.base_name(node);
                let x = self.materialize(&x, &base)?;
                Ok(Value {
                    layout: Layout::Groups { groups: dims[1] },
                    shape: dims,
                    ..x
                })
            }
            (Layout::GroupsSwapped { groups }, 4)
                if dims[1] == x.shape[1] * x.shape[2]
                    && dims[2] == x.shape[3]
                    && dims[3] == x.shape[4] =>
            {
                let perm = shuffle_perm(dims[1], *groups);
                Ok(Value {
                    layout: Layout::Image { perm: None }.with_perm(Some(perm)),
                    shape: dims,
                    ..x
                })
            }
            (Layout::Groups { .. }, 4)
                if dims[1] == x.shape[1] * x.shape[2] && dims[2] == x.shape[3] =>
            {
                Ok(Value {
                    layout: Layout::Image { perm: None },
                    shape: dims,
                    ..x
                })
            }
            _ => Err(unsupported(&x)),
        }
    }

    fn squeeze(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let axes_const = self.opt_const(node, 1)?;
        let inputs: Vec<Option<&Tensor>> = vec![None, axes_const.as_ref()];
        let axes = fold::axes_of(node, &inputs, self.graph.opset, 13)?;
        let dims = if node.op_type() == "Squeeze" {
            let axes = match axes {
                Some(a) => normalize_axes(node, &a, x.shape.len())?,
                None => (1..x.shape.len()).filter(|&i| x.shape[i] == 1).collect(),
            };
            if axes.contains(&0) || axes.iter().any(|&a| x.shape[a] != 1) {
                return Err(node.invalid("squeezed axes must have size 1 (and not be the batch)"));
            }
            (0..x.shape.len())
                .filter(|i| !axes.contains(i))
                .map(|i| x.shape[i])
                .collect()
        } else {
            let axes = axes.ok_or_else(|| node.invalid("`axes` is required"))?;
            let rank = x.shape.len() + axes.len();
            let mut axes = normalize_axes(node, &axes, rank)?;
            axes.sort_unstable();
            let mut dims = x.shape.clone();
            for a in axes {
                if a == 0 || a > dims.len() {
                    return Err(node.unsupported("unsqueezing before the batch axis"));
                }
                dims.insert(a, 1);
            }
            dims
        };
        self.reshape(node, x, dims)
    }

    fn transpose(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let rank = x.shape.len();
        let perm: Vec<usize> = match node.attr_ints("perm") {
            Some(p) => normalize_axes(node, p, rank)?,
            None => (0..rank).rev().collect(),
        };
        let shape: Vec<usize> = perm
            .iter()
            .map(|&p| x.shape.get(p).copied().unwrap_or(0))
            .collect();
        if layout::is_identity(&perm) {
            return Ok(x);
        }
        let layout = match (&x.layout, perm.as_slice()) {
            (Layout::Nhwc, [0, 3, 1, 2]) => Layout::Image { perm: None },
            (Layout::Image { .. }, [0, 2, 3, 1]) => {
                let base = self.base_name(node);
                let x = self.materialize(&x, &base)?;
                return Ok(Value {
                    layout: Layout::Nhwc,
                    shape,
                    ..x
                });
            }
            (Layout::Groups { groups }, [0, 2, 1, 3, 4]) => {
                Layout::GroupsSwapped { groups: *groups }
            }
            (Layout::GroupsSwapped { groups }, [0, 2, 1, 3, 4]) => {
                Layout::Groups { groups: *groups }
            }
            _ => {
                return Err(node.unsupported(format!(
                    "permutation {perm:?} of {} (cnnc supports NHWC <-> NCHW and channel shuffles)",
                    x.layout.describe()
                )))
            }
        };
        Ok(Value { layout, shape, ..x })
    }

    fn concat(&mut self, node: &Node) -> Result<Value, ImportError> {
        let count = node.proto.input.len();
        let values: Vec<Value> = (0..count)
            .map(|i| self.value(node, i))
            .collect::<Result<_, _>>()?;
        let first = values
            .first()
            .cloned()
            .ok_or_else(|| node.invalid("no inputs"))?;
        if values.len() == 1 {
            return Ok(first);
        }
        let rank = first.shape.len();
        let axis = normalize_axes(node, &[node.attr_int("axis").unwrap_or(1)], rank)?[0];
        let (channel_axis, cnnc_axis) = match first.layout {
            Layout::Image { .. } => (1, 2),
            Layout::Nhwc => (3, 2),
            Layout::Flat { .. } | Layout::Pooled { .. } => (1, 0),
            _ => (usize::MAX, 0),
        };
        if axis != channel_axis {
            return Err(node.unsupported(format!(
                "concatenation along axis {axis} of {} (cnnc concatenates channels)",
                first.layout.describe()
            )));
        }
        for v in &values {
            let same = v.shape.len() == rank
                && std::mem::discriminant(&v.layout) == std::mem::discriminant(&first.layout)
                && (0..rank).all(|i| i == axis || v.shape[i] == first.shape[i]);
            if !same {
                return Err(node.unsupported(format!(
                    "inputs {:?} and {:?} differ outside the channel axis or in layout",
                    first.shape, v.shape
                )));
            }
        }
        let mut perm = Vec::new();
        let mut offset = 0;
        for v in &values {
            let n = v.shape[axis];
            match v.layout.perm() {
                Some(p) => perm.extend(p.iter().map(|&q| offset + q)),
                None => perm.extend(offset..offset + n),
            }
            offset += n;
        }
        let mut shape = first.shape.clone();
        shape[axis] = offset;
        let layout = first.layout.with_perm(Some(perm));
        let cnnc_shape = layout.cnnc_shape(&shape);
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::Concatenate { axis: cnnc_axis },
            values.iter().map(|v| v.tensor.clone()).collect(),
            vec![],
            cnnc_shape,
        );
        Ok(Value {
            tensor: name,
            shape,
            layout,
            nonneg: values.iter().all(|v| v.nonneg),
        })
    }

    // -------------------------------------------------------------- dense

    /// `x` as a `[N, K]` matrix with its pending feature permutation.
    fn matrix(&mut self, node: &Node, x: Value) -> Result<Value, ImportError> {
        match &x.layout {
            Layout::Flat { .. } => Ok(x),
            Layout::Pooled { perm } => Ok(Value {
                layout: Layout::Flat { perm: perm.clone() },
                shape: vec![x.shape[0], x.shape[1]],
                ..x
            }),
            other => Err(node.unsupported(format!(
                "its input is {}; cnnc's dense layer needs [batch, features] (flatten first)",
                other.describe()
            ))),
        }
    }

    /// A dense layer `y = x K + b` with `K` given in ONNX feature order
    /// (`[K, N]`); its rows are permuted to cnnc's order of `x`.
    fn dense(
        &mut self,
        node: &Node,
        x: &Value,
        kernel: Vec<f32>,
        units: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Value, ImportError> {
        let k = x.shape[1];
        let kernel = match x.layout.perm() {
            Some(p) => {
                let mut out = Vec::with_capacity(k * units);
                for &row in p {
                    out.extend_from_slice(&kernel[row * units..(row + 1) * units]);
                }
                out
            }
            None => kernel,
        };
        let mut weights = vec![Weight {
            suffix: "kernel",
            tensor: Tensor::f32(vec![k, units], kernel),
        }];
        let use_bias = bias.is_some();
        if let Some(b) = bias {
            weights.push(Weight {
                suffix: "bias",
                tensor: Tensor::f32(vec![units], b),
            });
        }
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::Dense {
                units,
                activation: Activation::Linear,
                use_bias,
            },
            vec![x.tensor.clone()],
            weights,
            vec![units],
        );
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], units],
            layout: Layout::Flat { perm: None },
            nonneg: false,
        })
    }

    fn gemm(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let x = self.matrix(node, x)?;
        if node.attr_int("transA").unwrap_or(0) != 0 {
            return Err(node.unsupported("transA = 1 (the batch must be the rows)"));
        }
        let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
        let alpha = node.attr_float("alpha").unwrap_or(1.0);
        let beta = node.attr_float("beta").unwrap_or(1.0);
        let b = self.const_input(node, 1)?;
        if b.dims.len() != 2 {
            return Err(node.invalid(format!("B has shape {:?}", b.dims)));
        }
        let k = x.shape[1];
        let (bk, units) = if trans_b {
            (b.dims[1], b.dims[0])
        } else {
            (b.dims[0], b.dims[1])
        };
        if bk != k {
            return Err(node.invalid(format!("B {:?} does not fit {k} input features", b.dims)));
        }
        let bv = b.to_f32();
        let mut kernel = vec![0.0f32; k * units];
        for row in 0..k {
            for col in 0..units {
                let v = if trans_b {
                    bv[col * k + row]
                } else {
                    bv[row * units + col]
                };
                kernel[row * units + col] = if alpha == 1.0 { v } else { alpha * v };
            }
        }
        let bias = match self.opt_const(node, 2)? {
            None => None,
            Some(c) => {
                let values = c.to_f32();
                let per_unit: Vec<f32> = match (c.dims.as_slice(), values.len()) {
                    (_, 1) => vec![values[0]; units],
                    ([n] | [1, n], _) if *n == units => values,
                    _ => {
                        return Err(node.unsupported(format!(
                            "C of shape {:?} (cnnc's dense bias is one value per unit)",
                            c.dims
                        )))
                    }
                };
                Some(if beta == 1.0 {
                    per_unit
                } else {
                    per_unit.iter().map(|v| beta * v).collect()
                })
            }
        };
        self.dense(node, &x, kernel, units, bias)
    }

    fn matmul(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let x = self.matrix(node, x)?;
        let b = self.const_input(node, 1)?;
        if b.dims.len() != 2 || b.dims[0] != x.shape[1] {
            return Err(node.unsupported(format!(
                "B of shape {:?} for an input {:?} (cnnc's dense layer multiplies [N, K] by a constant [K, units])",
                b.dims, x.shape
            )));
        }
        let units = b.dims[1];
        self.dense(node, &x, b.to_f32(), units, None)
    }

    // -------------------------------------------------------------- misc

    fn dropout(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let rate = if self.graph.opset >= 12 {
            match self.opt_const(node, 1)? {
                Some(t) => t
                    .scalar_f32()
                    .ok_or_else(|| node.invalid("ratio must be a scalar"))?,
                None => 0.5,
            }
        } else {
            node.attr_float("ratio").unwrap_or(0.5)
        };
        if let Some(t) = self.opt_const(node, 2)? {
            if t.scalar_f32().unwrap_or(0.0) != 0.0 {
                return Err(node.unsupported("training_mode = true"));
            }
        }
        if !(0.0..1.0).contains(&rate) || rate == 0.0 {
            return Ok(x);
        }
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::Dropout { rate },
            vec![x.tensor.clone()],
            vec![],
            x.cnnc_shape(),
        );
        Ok(Value { tensor: name, ..x })
    }

    fn pad(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let x = self.image(node, x)?;
        let mode = node
            .attr_string("mode")
            .unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(node.unsupported(format!("mode `{mode}` (cnnc pads with zeros)")));
        }
        let (pads, value) = if self.graph.opset >= 11 {
            if node.input(3).is_some() {
                return Err(node.unsupported("the `axes` input"));
            }
            let pads = self
                .const_input(node, 1)?
                .to_i64()
                .ok_or_else(|| node.invalid("pads must be integers"))?;
            let value = match self.opt_const(node, 2)? {
                Some(t) => t
                    .scalar_f32()
                    .ok_or_else(|| node.invalid("constant_value must be a scalar"))?,
                None => 0.0,
            };
            (pads, value)
        } else {
            let pads = node
                .attr_ints("pads")
                .map(|p| p.to_vec())
                .unwrap_or_default();
            (pads, node.attr_float("value").unwrap_or(0.0))
        };
        if value != 0.0 {
            return Err(node.unsupported(format!("padding value {value} (cnnc pads with zeros)")));
        }
        if pads.len() != 8
            || pads[0] != 0
            || pads[1] != 0
            || pads[4] != 0
            || pads[5] != 0
            || pads.iter().any(|&p| p < 0)
        {
            return Err(node.unsupported(format!(
                "pads {pads:?} (cnnc pads height and width by non-negative amounts)"
            )));
        }
        let p = Pads2d {
            top: pads[2] as usize,
            left: pads[3] as usize,
            bottom: pads[6] as usize,
            right: pads[7] as usize,
        };
        let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3]);
        let (oh, ow) = (h + p.top + p.bottom, w + p.left + p.right);
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::ZeroPadding2d { padding: p },
            vec![x.tensor.clone()],
            vec![],
            vec![oh, ow, c],
        );
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], c, oh, ow],
            ..x
        })
    }

    /// `Upsample` / `Resize` by integer factors: `up_sampling2d`.
    fn resize(&mut self, node: &Node) -> Result<Value, ImportError> {
        let x = self.value(node, 0)?;
        let x = self.image(node, x)?;
        let opset = self.graph.opset;
        let mode = node.attr_string("mode").unwrap_or_else(|| "nearest".into());
        let scales: Vec<f32> = if node.op_type() == "Upsample" {
            match node.attr_floats("scales") {
                Some(s) => s.to_vec(),
                None => self.const_input(node, 1)?.to_f32(),
            }
        } else {
            let scales_input = if opset >= 11 { 2 } else { 1 };
            match self
                .opt_const(node, scales_input)?
                .filter(|t| !t.is_empty())
            {
                Some(s) => s.to_f32(),
                None => {
                    let sizes = self
                        .const_input(node, 3)?
                        .to_i64()
                        .ok_or_else(|| node.invalid("sizes must be integers"))?;
                    if sizes.len() != 4 {
                        return Err(node.invalid(format!("sizes {sizes:?}")));
                    }
                    sizes
                        .iter()
                        .zip(&x.shape)
                        .map(|(&s, &n)| s as f32 / n as f32)
                        .collect()
                }
            }
        };
        if scales.len() != 4 || scales[0] != 1.0 || scales[1] != 1.0 {
            return Err(node.unsupported(format!(
                "scales {scales:?} (cnnc upsamples height and width)"
            )));
        }
        let factor = |s: f32| (s >= 1.0 && s.fract() == 0.0).then_some(s as usize);
        let (Some(sh), Some(sw)) = (factor(scales[2]), factor(scales[3])) else {
            return Err(node.unsupported(format!(
                "scales {scales:?} (cnnc upsamples by whole factors)"
            )));
        };
        let interpolation = if node.op_type() == "Upsample" {
            match mode.as_str() {
                "nearest" => Interpolation::Nearest,
                other => return Err(node.unsupported(format!("mode `{other}` of Upsample"))),
            }
        } else {
            let coordinates = node
                .attr_string("coordinate_transformation_mode")
                .unwrap_or_else(|| "half_pixel".into());
            let nearest_mode = node
                .attr_string("nearest_mode")
                .unwrap_or_else(|| "round_prefer_floor".into());
            let half_pixel = coordinates == "half_pixel" || coordinates == "pytorch_half_pixel";
            match mode.as_str() {
                // With a whole factor s, output x maps to (x + 0.5) / s - 0.5
                // (half_pixel), within 0.5 of floor(x / s): rounding gives
                // the repeated pixel; `asymmetric` maps to x / s: floor does.
                "nearest"
                    if (half_pixel && nearest_mode.starts_with("round_prefer"))
                        || (coordinates == "asymmetric" && nearest_mode == "floor") =>
                {
                    Interpolation::Nearest
                }
                "linear" if half_pixel => Interpolation::Bilinear,
                _ => {
                    return Err(node.unsupported(format!(
                        "mode `{mode}` with coordinate_transformation_mode `{coordinates}` and \
                         nearest_mode `{nearest_mode}`"
                    )))
                }
            }
        };
        let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3]);
        let base = self.base_name(node);
        let name = self.emit(
            &base,
            LayerKind::UpSampling2d {
                size: [sh, sw],
                interpolation,
            },
            vec![x.tensor.clone()],
            vec![],
            vec![h * sh, w * sw, c],
        );
        Ok(Value {
            tensor: name,
            shape: vec![x.shape[0], c, h * sh, w * sw],
            ..x
        })
    }
}

/// Tap weights `u` (length `k`) of one axis of a count-excluding average
/// pool (see `Mapper::average_excluding_padding`): for each output position
/// `i`, the window's taps `a` with `0 <= i * s - begin + a < n` are the
/// valid ones, a contiguous range `[lo, hi]`, and the weights must satisfy
/// `u[lo] + ... + u[hi] = k / (hi - lo + 1)`. Solved exactly (Gauss-Jordan
/// elimination in f64, free weights 0); `None` if the equations of the
/// distinct ranges are inconsistent.
fn tap_weights(n: usize, k: usize, s: usize, begin: usize, out: usize) -> Option<Vec<f64>> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for i in 0..out {
        let start = (i * s) as i64 - begin as i64;
        let lo = (-start).max(0) as usize;
        let hi = ((n as i64 - 1 - start).min(k as i64 - 1)).max(-1);
        if hi < lo as i64 {
            return None; // a window entirely in the padding
        }
        let range = (lo, hi as usize);
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }
    // Rows of [coefficients | target].
    let mut rows: Vec<Vec<f64>> = ranges
        .iter()
        .map(|&(lo, hi)| {
            let mut row = vec![0.0; k + 1];
            row[lo..=hi].iter_mut().for_each(|v| *v = 1.0);
            row[k] = k as f64 / (hi - lo + 1) as f64;
            row
        })
        .collect();
    let mut pivots = Vec::new();
    let mut r = 0;
    for col in 0..k {
        let Some(p) = (r..rows.len()).find(|&i| rows[i][col].abs() > 1e-12) else {
            continue;
        };
        rows.swap(r, p);
        let pivot = rows[r][col];
        rows[r].iter_mut().for_each(|v| *v /= pivot);
        for i in 0..rows.len() {
            if i != r && rows[i][col].abs() > 1e-12 {
                let f = rows[i][col];
                let pivot_row = rows[r].clone();
                rows[i]
                    .iter_mut()
                    .zip(&pivot_row)
                    .for_each(|(v, p)| *v -= f * p);
            }
        }
        pivots.push(col);
        r += 1;
    }
    if rows[r..].iter().any(|row| row[k].abs() > 1e-9) {
        return None;
    }
    let mut u = vec![0.0; k];
    for (i, &col) in pivots.iter().enumerate() {
        u[col] = rows[i][k];
    }
    // Check every range's equation.
    ranges
        .iter()
        .all(|&(lo, hi)| {
            (u[lo..=hi].iter().sum::<f64>() - k as f64 / (hi - lo + 1) as f64).abs() < 1e-9
        })
        .then_some(u)
}

/// A 2-element INTS attribute (`strides`, `dilations`), default `[1, 1]`.
fn pair(node: &Node, name: &str) -> Result<[usize; 2], ImportError> {
    match node.attr_ints(name) {
        None => Ok([1, 1]),
        Some([a, b]) => Ok([to_size(node, *a)?, to_size(node, *b)?]),
        Some(other) => Err(node.unsupported(format!("`{name}` {other:?} (cnnc has 2-D windows)"))),
    }
}

fn to_size(node: &Node, v: i64) -> Result<usize, ImportError> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| node.invalid(format!("size {v} must be >= 1")))
}

/// The per-channel vector (ONNX channel order) that constant `c` is when
/// broadcast against `x`: `c` must broadcast to `x`'s shape without
/// enlarging it and vary along the channel axis only (axis 1 of NCHW maps
/// and matrices, axis 3 of NHWC tensors). A scalar gives a constant vector.
fn channel_vector(x: &Value, c: &Tensor) -> Option<Vec<f32>> {
    let rank = x.shape.len();
    if c.dims.len() > rank || crate::tensor::broadcast_shape(&x.shape, &c.dims)? != x.shape {
        return None;
    }
    let channel_axis = match x.layout {
        Layout::Nhwc => 3,
        _ => 1,
    };
    let channels = x.shape[channel_axis];
    let offset = rank - c.dims.len();
    for (i, &d) in c.dims.iter().enumerate() {
        if d != 1 && i + offset != channel_axis {
            return None;
        }
    }
    let values = c.to_f32();
    Some(if values.len() == 1 {
        vec![values[0]; channels]
    } else {
        values
    })
}

fn common_prefix<'a>(names: &[&'a str]) -> &'a str {
    let first = names[0];
    let mut len = first.len();
    for n in &names[1..] {
        len = len.min(
            first
                .char_indices()
                .zip(n.chars())
                .take_while(|((_, a), b)| a == b)
                .count(),
        );
    }
    let end = first
        .char_indices()
        .nth(len)
        .map_or(first.len(), |(i, _)| i);
    &first[..end]
}

/// Why a common operator has no cnnc equivalent, for the error message.
fn hint(op: &str) -> &'static str {
    match op {
        "LRN" => " (local response normalization: cnnc has no power or cross-channel normalization layer)",
        "ConvTranspose" => " yet (the importer does not map transposed convolutions)",
        "LogSoftmax" | "Exp" | "Log" | "Pow" | "Sqrt" => " (cnnc has no such element-wise function)",
        "Slice" | "Split" | "Gather" => " (cnnc cannot slice computed tensors)",
        "ReduceMean" | "ReduceSum" | "ReduceMax" => " (only global pooling over height and width exists)",
        "InstanceNormalization" | "LayerNormalization" | "GroupNormalization" => {
            " (cnnc normalizes with batch_normalization only)"
        }
        "HardSigmoid" | "HardSwish" | "PRelu" | "Selu" | "Softplus" | "Mish" | "Gelu" => {
            " (cnnc's activations are relu, relu6, sigmoid, tanh, softmax, elu and leaky_relu)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_of_weight_names() {
        assert_eq!(common_prefix(&["conv1_w_0", "conv1_b_0"]), "conv1_");
        assert_eq!(common_prefix(&["W_1", "B_2"]), "");
    }

    #[test]
    fn tap_weights_reproduce_window_counts() {
        // n = 56, k = 3, s = 2, pad 1 before: window 0 covers rows -1..1
        // (valid taps 1..2: 2 rows), the others 3 rows. u[1] + u[2] = 3 / 2,
        // u[0] + u[1] + u[2] = 1: u[0] = -1/2, and (free u[2] = 0) u[1] = 3/2.
        let u = tap_weights(56, 3, 2, 1, 28).unwrap();
        assert_eq!(u, vec![-0.5, 1.5, 0.0]);
        // 7 x 7 window, stride 1, pad 1 after on 7: windows 0..6 and 1..7.
        let u = tap_weights(7, 7, 1, 0, 2).unwrap();
        let full: f64 = u.iter().sum();
        let truncated: f64 = u[..6].iter().sum();
        assert!((full - 1.0).abs() < 1e-12 && (truncated - 7.0 / 6.0).abs() < 1e-12);
        // A window entirely in the padding has no count.
        assert_eq!(tap_weights(2, 2, 1, 2, 2), None);
    }

    #[test]
    fn per_channel_constants() {
        let x = Value {
            tensor: "x".into(),
            shape: vec![1, 3, 4, 4],
            layout: Layout::Image { perm: None },
            nonneg: false,
        };
        let c = Tensor::f32(vec![3, 1, 1], vec![1.0, 2.0, 3.0]);
        assert_eq!(channel_vector(&x, &c), Some(vec![1.0, 2.0, 3.0]));
        let s = Tensor::f32(vec![], vec![2.0]);
        assert_eq!(channel_vector(&x, &s), Some(vec![2.0; 3]));
        // Varies along the width: not per-channel.
        let w = Tensor::f32(vec![4], vec![0.0; 4]);
        assert_eq!(channel_vector(&x, &w), None);
    }
}
