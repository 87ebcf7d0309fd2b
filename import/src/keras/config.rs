//! The Keras model config (the `model_config` JSON of a full `.h5` file, as
//! `model.get_config()` writes it): `Sequential` and `Functional` (Keras 2's
//! `Model` too) models, each layer turned into a cnnc [`LayerKind`].
//!
//! Keras 2 and Keras 3 configs differ in places, both are read:
//! `InputLayer` `batch_input_shape` / `batch_shape`; Functional
//! `inbound_nodes` as `[[["conv2d", 0, 0, {}], ...]]` (Keras 2) or
//! `[{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history":
//! ["conv2d", 0, 0]}}], "kwargs": {}}]` (Keras 3); `LeakyReLU` `alpha` /
//! `negative_slope`; activations as names or serialized objects.

use super::KerasError;
use cnnc_compiler::model::{Activation, Interpolation, LayerKind, Padding, Pads2d};
use serde_json::Value;

/// A model input.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasInput {
    /// The `InputLayer`'s name.
    pub name: String,
    /// The per-example shape (batch left out); `None` for a size Keras
    /// leaves open (`Input(shape=(None, None, 3))`).
    pub shape: Vec<Option<usize>>,
}

/// A layer of the model (inputs excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct KerasLayer {
    /// The Keras class (`Conv2D`).
    pub class_name: String,
    /// The Keras name (`conv2d_1`), kept in the spec.
    pub name: String,
    pub kind: LayerKind,
    /// Names of the layers or inputs it reads, in order.
    pub inputs: Vec<String>,
    /// Whether Keras trains it (`trainable` in the config).
    pub trainable: bool,
}

/// A Keras model as cnnc layers.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasModel {
    /// `Sequential`, `Functional` or `Model`.
    pub class_name: String,
    /// The model's name in Keras (`sequential`).
    pub name: String,
    pub inputs: Vec<KerasInput>,
    /// Layers in an order where each comes after what it reads.
    pub layers: Vec<KerasLayer>,
    /// Names of the output layers (or inputs).
    pub outputs: Vec<String>,
}

fn config_error(msg: impl Into<String>) -> KerasError {
    KerasError::Config(msg.into())
}

/// Reads `model_config`.
pub fn parse_model_config(json: &str) -> Result<KerasModel, KerasError> {
    let root: Value = serde_json::from_str(json)
        .map_err(|e| config_error(format!("`model_config` is not JSON: {e}")))?;
    let class_name = root["class_name"]
        .as_str()
        .ok_or_else(|| config_error("`model_config` has no `class_name`"))?
        .to_string();
    let config = &root["config"];
    let name = config["name"].as_str().unwrap_or("model").to_string();
    let layers = config["layers"]
        .as_array()
        .ok_or_else(|| config_error("the model config has no `layers` list"))?;
    match class_name.as_str() {
        "Sequential" => sequential(class_name, name, layers),
        "Functional" | "Model" => functional(class_name, name, config, layers),
        other => Err(KerasError::Unsupported {
            class_name: other.to_string(),
            layer: name,
            reason: "only Sequential and Functional models can be imported".into(),
        }),
    }
}

fn layer_name(layer: &Value) -> Result<String, KerasError> {
    layer["config"]["name"]
        .as_str()
        .or_else(|| layer["name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| config_error("a layer without a name"))
}

fn layer_class(layer: &Value) -> Result<String, KerasError> {
    layer["class_name"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| config_error("a layer without a `class_name`"))
}

/// `[null, 32, 32, 3]` -> `[Some(32), Some(32), Some(3)]`.
fn batch_shape(value: &Value) -> Option<Vec<Option<usize>>> {
    let dims = value.as_array()?;
    if dims.is_empty() {
        return None;
    }
    Some(
        dims[1..]
            .iter()
            .map(|d| d.as_u64().map(|n| n as usize))
            .collect(),
    )
}

fn input_shape_of(config: &Value) -> Option<Vec<Option<usize>>> {
    batch_shape(&config["batch_input_shape"]).or_else(|| batch_shape(&config["batch_shape"]))
}

fn sequential(
    class_name: String,
    name: String,
    layers: &[Value],
) -> Result<KerasModel, KerasError> {
    let mut inputs = Vec::new();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for layer in layers {
        let class = layer_class(layer)?;
        let lname = layer_name(layer)?;
        if class == "InputLayer" {
            let shape =
                input_shape_of(&layer["config"]).ok_or_else(|| KerasError::InvalidLayer {
                    class_name: class.clone(),
                    layer: lname.clone(),
                    reason: "no input shape".into(),
                })?;
            if current.is_some() {
                return Err(KerasError::Unsupported {
                    class_name: class,
                    layer: lname,
                    reason: "an InputLayer after other layers".into(),
                });
            }
            inputs.push(KerasInput {
                name: lname.clone(),
                shape,
            });
            current = Some(lname);
            continue;
        }
        if current.is_none() {
            // Older Sequential configs give the first layer the input shape.
            let shape =
                input_shape_of(&layer["config"]).ok_or_else(|| KerasError::InvalidLayer {
                    class_name: class.clone(),
                    layer: lname.clone(),
                    reason: "the first layer of a Sequential model has no input shape".into(),
                })?;
            let input = format!("{lname}_input");
            inputs.push(KerasInput {
                name: input.clone(),
                shape,
            });
            current = Some(input);
        }
        let reads = vec![current.clone().unwrap_or_default()];
        out.push(convert(layer, &class, &lname, reads)?);
        current = Some(lname);
    }
    let Some(last) = current else {
        return Err(config_error("the Sequential model has no layers"));
    };
    Ok(KerasModel {
        class_name,
        name,
        inputs,
        layers: out,
        outputs: vec![last],
    })
}

/// `["name", node_index, tensor_index, ...]` of Keras 2 inbound nodes and
/// model inputs / outputs, checked to be a layer's first call and first
/// output (shared layers and multi-output layers are not expressible).
fn history(entry: &Value, layer: &str) -> Result<String, KerasError> {
    let items = entry
        .as_array()
        .ok_or_else(|| config_error(format!("layer `{layer}`: malformed input reference")))?;
    let name = items
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| config_error(format!("layer `{layer}`: malformed input reference")))?;
    let node = items.get(1).and_then(Value::as_u64).unwrap_or(0);
    let tensor = items.get(2).and_then(Value::as_u64).unwrap_or(0);
    if node != 0 || tensor != 0 {
        return Err(KerasError::Unsupported {
            class_name: "(shared layer)".into(),
            layer: layer.to_string(),
            reason: format!(
                "reads output {tensor} of call {node} of `{name}`: layers called more than once \
                 or with several outputs have no cnnc equivalent"
            ),
        });
    }
    Ok(name.to_string())
}

/// Keras 3: every `__keras_tensor__` in the call's arguments, in order.
fn collect_keras_tensors(
    value: &Value,
    layer: &str,
    out: &mut Vec<String>,
) -> Result<(), KerasError> {
    match value {
        Value::Object(map) => {
            if map.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") {
                out.push(history(&value["config"]["keras_history"], layer)?);
            } else {
                for v in map.values() {
                    collect_keras_tensors(v, layer, out)?;
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_keras_tensors(v, layer, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn inbound(layer: &Value, name: &str) -> Result<Vec<String>, KerasError> {
    let nodes = layer["inbound_nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if nodes.len() > 1 {
        return Err(KerasError::Unsupported {
            class_name: layer_class(layer)?,
            layer: name.to_string(),
            reason: format!(
                "the layer is called {} times (shared weights): cnnc layers are called once",
                nodes.len()
            ),
        });
    }
    let Some(node) = nodes.first() else {
        return Ok(Vec::new());
    };
    let mut reads = Vec::new();
    if node.is_object() {
        collect_keras_tensors(&node["args"], name, &mut reads)?;
    } else if let Some(entries) = node.as_array() {
        for entry in entries {
            reads.push(history(entry, name)?);
        }
    }
    Ok(reads)
}

/// Keras 2 `[["a", 0, 0], ...]`, or Keras 3's single `["a", 0, 0]`.
fn endpoints(value: &Value, what: &str) -> Result<Vec<String>, KerasError> {
    let items = value
        .as_array()
        .ok_or_else(|| config_error(format!("the model config has no `{what}`")))?;
    if items.first().is_some_and(Value::is_string) {
        return Ok(vec![history(value, what)?]);
    }
    items.iter().map(|e| history(e, what)).collect()
}

fn functional(
    class_name: String,
    name: String,
    config: &Value,
    layers: &[Value],
) -> Result<KerasModel, KerasError> {
    let mut inputs = Vec::new();
    let mut pending = Vec::new();
    for layer in layers {
        let class = layer_class(layer)?;
        let lname = layer_name(layer)?;
        if class == "InputLayer" {
            let shape =
                input_shape_of(&layer["config"]).ok_or_else(|| KerasError::InvalidLayer {
                    class_name: class.clone(),
                    layer: lname.clone(),
                    reason: "no input shape".into(),
                })?;
            inputs.push(KerasInput { name: lname, shape });
            continue;
        }
        let reads = inbound(layer, &lname)?;
        if reads.is_empty() {
            return Err(KerasError::InvalidLayer {
                class_name: class,
                layer: lname,
                reason: "the layer reads no tensor".into(),
            });
        }
        pending.push((layer, class, lname, reads));
    }
    // Topological order (the config's order normally is one already).
    let mut known: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for (layer, class, lname, reads) in pending {
            if reads.iter().all(|r| known.contains(r)) {
                out.push(convert(layer, &class, &lname, reads)?);
                known.push(lname);
            } else {
                rest.push((layer, class, lname, reads));
            }
        }
        if rest.len() == before {
            let (_, class, lname, reads) = &rest[0];
            return Err(KerasError::InvalidLayer {
                class_name: class.clone(),
                layer: lname.clone(),
                reason: format!("reads {reads:?}, which no layer or input produces"),
            });
        }
        pending = rest;
    }
    let declared_inputs = endpoints(&config["input_layers"], "input_layers")?;
    let mut ordered = Vec::new();
    for n in &declared_inputs {
        match inputs.iter().find(|i| &i.name == n) {
            Some(i) => ordered.push(i.clone()),
            None => {
                return Err(config_error(format!(
                    "model input `{n}` is not an InputLayer"
                )))
            }
        }
    }
    let outputs = endpoints(&config["output_layers"], "output_layers")?;
    for o in &outputs {
        if !known.contains(o) {
            return Err(config_error(format!("model output `{o}` is not a layer")));
        }
    }
    Ok(KerasModel {
        class_name,
        name,
        inputs: ordered,
        layers: out,
        outputs,
    })
}

/// Reads a layer config's fields, with errors naming the layer.
struct Fields<'a> {
    config: &'a Value,
    class: &'a str,
    layer: &'a str,
}

impl Fields<'_> {
    fn invalid(&self, reason: String) -> KerasError {
        KerasError::InvalidLayer {
            class_name: self.class.to_string(),
            layer: self.layer.to_string(),
            reason,
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> KerasError {
        KerasError::Unsupported {
            class_name: self.class.to_string(),
            layer: self.layer.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str, default: Option<usize>) -> Result<usize, KerasError> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.invalid(format!("`{key}` is {v}, not a whole number"))),
            None => default.ok_or_else(|| self.invalid(format!("no `{key}`"))),
        }
    }

    fn f32(&self, key: &str, default: f32) -> Result<f32, KerasError> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| self.invalid(format!("`{key}` is {v}, not a number"))),
            None => Ok(default),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, KerasError> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.invalid(format!("`{key}` is {v}, not true / false"))),
            None => Ok(default),
        }
    }

    /// `3` or `[3, 5]`.
    fn pair(&self, key: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], KerasError> {
        let Some(v) = self.get(key) else {
            return default.ok_or_else(|| self.invalid(format!("no `{key}`")));
        };
        if let Some(n) = v.as_u64() {
            return Ok([n as usize; 2]);
        }
        match v
            .as_array()
            .map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>())
        {
            Some(items) if items.len() == 2 && items.iter().all(Option::is_some) => Ok([
                items[0].unwrap_or(0) as usize,
                items[1].unwrap_or(0) as usize,
            ]),
            Some(items) if items.len() != 2 => Err(self.unsupported(format!(
                "`{key}` has {} values: only 2-D layers are expressible",
                items.len()
            ))),
            _ => Err(self.invalid(format!("`{key}` is {v}"))),
        }
    }

    fn padding(&self) -> Result<Padding, KerasError> {
        match self
            .get("padding")
            .and_then(Value::as_str)
            .unwrap_or("valid")
        {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(self.unsupported(format!("padding `{other}`"))),
        }
    }

    fn channels_last(&self) -> Result<(), KerasError> {
        match self.get("data_format").and_then(Value::as_str) {
            None | Some("channels_last") => Ok(()),
            Some(other) => Err(self.unsupported(format!(
                "data_format `{other}`: cnnc is channels_last (NHWC)"
            ))),
        }
    }

    fn activation(&self, key: &str) -> Result<Activation, KerasError> {
        let Some(v) = self.get(key) else {
            return Ok(Activation::Linear);
        };
        // Keras 3 may serialize a function as {"class_name": "function", "config": "relu"}.
        let name = v
            .as_str()
            .or_else(|| v["config"].as_str())
            .ok_or_else(|| self.unsupported(format!("activation {v}")))?;
        activation_named(name).ok_or_else(|| {
            self.unsupported(format!(
                "activation `{name}` (cnnc has linear, relu, relu6, sigmoid, tanh, softmax, elu, \
                 leaky_relu)"
            ))
        })
    }
}

/// A Keras activation function by name, with its default arguments.
pub fn activation_named(name: &str) -> Option<Activation> {
    Some(match name {
        "linear" | "identity" => Activation::Linear,
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "softmax" => Activation::Softmax,
        "elu" => Activation::Elu { alpha: 1.0 },
        "leaky_relu" => Activation::LeakyRelu {
            negative_slope: 0.2,
        },
        _ => return None,
    })
}

/// The Keras layer as a cnnc layer.
fn convert(
    layer: &Value,
    class: &str,
    name: &str,
    inputs: Vec<String>,
) -> Result<KerasLayer, KerasError> {
    let f = Fields {
        config: &layer["config"],
        class,
        layer: name,
    };
    let trainable = f.bool("trainable", true)?;
    let single = |kind: LayerKind| -> Result<LayerKind, KerasError> {
        if inputs.len() != 1 {
            return Err(f.invalid(format!("reads {} tensors, expected 1", inputs.len())));
        }
        Ok(kind)
    };
    let kind = match class {
        "Conv2D" | "Convolution2D" => {
            f.channels_last()?;
            let groups = f.usize("groups", Some(1))?;
            if groups != 1 {
                return Err(f.unsupported(format!("groups={groups} (grouped convolution)")));
            }
            single(LayerKind::Conv2d {
                filters: f.usize("filters", None)?,
                kernel_size: f.pair("kernel_size", None)?,
                strides: f.pair("strides", Some([1, 1]))?,
                padding: f.padding()?,
                dilation_rate: f.pair("dilation_rate", Some([1, 1]))?,
                activation: f.activation("activation")?,
                use_bias: f.bool("use_bias", true)?,
            })?
        }
        "DepthwiseConv2D" => {
            f.channels_last()?;
            single(LayerKind::DepthwiseConv2d {
                kernel_size: f.pair("kernel_size", None)?,
                strides: f.pair("strides", Some([1, 1]))?,
                padding: f.padding()?,
                depth_multiplier: f.usize("depth_multiplier", Some(1))?,
                dilation_rate: f.pair("dilation_rate", Some([1, 1]))?,
                activation: f.activation("activation")?,
                use_bias: f.bool("use_bias", true)?,
            })?
        }
        "SeparableConv2D" | "SeparableConvolution2D" => {
            f.channels_last()?;
            single(LayerKind::SeparableConv2d {
                filters: f.usize("filters", None)?,
                kernel_size: f.pair("kernel_size", None)?,
                strides: f.pair("strides", Some([1, 1]))?,
                padding: f.padding()?,
                depth_multiplier: f.usize("depth_multiplier", Some(1))?,
                dilation_rate: f.pair("dilation_rate", Some([1, 1]))?,
                activation: f.activation("activation")?,
                use_bias: f.bool("use_bias", true)?,
            })?
        }
        "Conv2DTranspose" | "Convolution2DTranspose" => {
            f.channels_last()?;
            single(LayerKind::Conv2dTranspose {
                filters: f.usize("filters", None)?,
                kernel_size: f.pair("kernel_size", None)?,
                strides: f.pair("strides", Some([1, 1]))?,
                padding: f.padding()?,
                output_padding: match f.get("output_padding") {
                    None => None,
                    Some(_) => Some(f.pair("output_padding", None)?),
                },
                dilation_rate: f.pair("dilation_rate", Some([1, 1]))?,
                activation: f.activation("activation")?,
                use_bias: f.bool("use_bias", true)?,
            })?
        }
        "Dense" => single(LayerKind::Dense {
            units: f.usize("units", None)?,
            activation: f.activation("activation")?,
            use_bias: f.bool("use_bias", true)?,
        })?,
        "BatchNormalization" => {
            if f.bool("renorm", false)? {
                return Err(f.unsupported("batch renormalization (renorm=True)"));
            }
            // The axis must be the channels (last) one: -1, or Keras 2's
            // explicit `[3]` for 4-D inputs. The last-axis check for explicit
            // indices needs the rank, which the checker knows: an index other
            // than -1 and 3 is refused here.
            let axis = match f.get("axis") {
                None => -1,
                Some(Value::Array(items)) if items.len() == 1 => items[0].as_i64().unwrap_or(0),
                Some(v) => v.as_i64().unwrap_or(0),
            };
            if axis != -1 && axis != 3 {
                return Err(f.unsupported(format!("axis={axis}: cnnc normalizes the channels")));
            }
            single(LayerKind::BatchNormalization {
                momentum: f.f32("momentum", 0.99)?,
                epsilon: f.f32("epsilon", 1e-3)?,
                center: f.bool("center", true)?,
                scale: f.bool("scale", true)?,
            })?
        }
        "MaxPooling2D" | "MaxPool2D" | "AveragePooling2D" | "AvgPool2D" => {
            f.channels_last()?;
            let pool_size = f.pair("pool_size", Some([2, 2]))?;
            let strides = f.pair("strides", Some(pool_size))?;
            let padding = f.padding()?;
            single(if class.starts_with("Max") {
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
            })?
        }
        "GlobalAveragePooling2D" | "GlobalAvgPool2D" | "GlobalMaxPooling2D" | "GlobalMaxPool2D" => {
            f.channels_last()?;
            if f.bool("keepdims", false)? {
                return Err(f.unsupported("keepdims=True"));
            }
            single(if class.contains("Max") {
                LayerKind::GlobalMaxPool2d
            } else {
                LayerKind::GlobalAvgPool2d
            })?
        }
        "Flatten" => {
            f.channels_last()?;
            single(LayerKind::Flatten)?
        }
        "Dropout" => single(LayerKind::Dropout {
            rate: f.f32("rate", 0.0)?,
        })?,
        "Activation" => single(LayerKind::Activation {
            activation: f.activation("activation")?,
        })?,
        "ReLU" => {
            let max_value = f.get("max_value").and_then(Value::as_f64);
            let slope = f.f32("negative_slope", 0.0)?;
            let threshold = f.f32("threshold", 0.0)?;
            if threshold != 0.0 {
                return Err(f.unsupported(format!("threshold={threshold}")));
            }
            if slope < 0.0 {
                return Err(f.unsupported(format!("negative_slope={slope} (cnnc's is >= 0)")));
            }
            let activation = match (max_value, slope) {
                (None, 0.0) => Activation::Relu,
                (Some(m), s) if m == 6.0 && s == 0.0 => Activation::Relu6,
                (None, s) => Activation::LeakyRelu { negative_slope: s },
                (Some(m), s) => {
                    return Err(f.unsupported(format!("max_value={m} with negative_slope={s}")))
                }
            };
            single(LayerKind::Activation { activation })?
        }
        "LeakyReLU" => {
            let slope = match f.get("negative_slope") {
                Some(_) => f.f32("negative_slope", 0.3)?,
                None => f.f32("alpha", 0.3)?,
            };
            single(LayerKind::Activation {
                activation: Activation::LeakyRelu {
                    negative_slope: slope,
                },
            })?
        }
        "ELU" => single(LayerKind::Activation {
            activation: Activation::Elu {
                alpha: f.f32("alpha", 1.0)?,
            },
        })?,
        "Softmax" => {
            let axis = f.get("axis").and_then(Value::as_i64).unwrap_or(-1);
            if axis != -1 {
                return Err(
                    f.unsupported(format!("axis={axis}: cnnc's softmax is over the last axis"))
                );
            }
            single(LayerKind::Activation {
                activation: Activation::Softmax,
            })?
        }
        "ZeroPadding2D" => {
            f.channels_last()?;
            let v = f.get("padding").cloned().unwrap_or(Value::from(1));
            let p = |x: &Value| x.as_u64().map(|n| n as usize);
            let pads = if let Some(n) = p(&v) {
                Pads2d {
                    top: n,
                    bottom: n,
                    left: n,
                    right: n,
                }
            } else {
                let items = v.as_array().cloned().unwrap_or_default();
                match items.as_slice() {
                    [h, w] if p(h).is_some() && p(w).is_some() => {
                        let (h, w) = (p(h).unwrap_or(0), p(w).unwrap_or(0));
                        Pads2d {
                            top: h,
                            bottom: h,
                            left: w,
                            right: w,
                        }
                    }
                    [h, w] => {
                        let pair = |x: &Value| -> Option<(usize, usize)> {
                            let a = x.as_array()?;
                            Some((p(a.first()?)?, p(a.get(1)?)?))
                        };
                        match (pair(h), pair(w)) {
                            (Some((top, bottom)), Some((left, right))) => Pads2d {
                                top,
                                bottom,
                                left,
                                right,
                            },
                            _ => return Err(f.invalid(format!("`padding` is {v}"))),
                        }
                    }
                    _ => return Err(f.invalid(format!("`padding` is {v}"))),
                }
            };
            single(LayerKind::ZeroPadding2d { padding: pads })?
        }
        "UpSampling2D" => {
            f.channels_last()?;
            let interpolation = match f.get("interpolation").and_then(Value::as_str) {
                None | Some("nearest") => Interpolation::Nearest,
                Some("bilinear") => Interpolation::Bilinear,
                Some(other) => return Err(f.unsupported(format!("interpolation `{other}`"))),
            };
            single(LayerKind::UpSampling2d {
                size: f.pair("size", Some([2, 2]))?,
                interpolation,
            })?
        }
        "Reshape" => {
            let target = f
                .get("target_shape")
                .and_then(Value::as_array)
                .ok_or_else(|| f.invalid("no `target_shape`".into()))?;
            let mut dims = Vec::with_capacity(target.len());
            for d in target {
                match d.as_u64() {
                    Some(n) => dims.push(n as usize),
                    None => {
                        return Err(f.unsupported(format!(
                            "target_shape {}: only whole sizes (no -1) are imported",
                            Value::Array(target.clone())
                        )))
                    }
                }
            }
            single(LayerKind::Reshape { target_shape: dims })?
        }
        "Add" | "Multiply" | "Concatenate" => {
            if inputs.len() < 2 {
                return Err(f.invalid(format!(
                    "joins {} tensors, expected 2 or more",
                    inputs.len()
                )));
            }
            match class {
                "Add" => LayerKind::Add,
                "Multiply" => LayerKind::Multiply,
                _ => {
                    // Resolved against the rank when the spec is written;
                    // `usize::MAX` stands for Keras's default -1.
                    let axis = f.get("axis").and_then(Value::as_i64).unwrap_or(-1);
                    LayerKind::Concatenate {
                        axis: if axis < 0 {
                            usize::MAX - (-axis - 1) as usize
                        } else if axis == 0 {
                            return Err(f.unsupported("axis=0 (the batch)"));
                        } else {
                            axis as usize - 1
                        },
                    }
                }
            }
        }
        "Sequential" | "Functional" | "Model" => {
            return Err(f.unsupported(
                "a nested model: import the inner model's own file, or save the model flattened",
            ))
        }
        other => {
            return Err(f.unsupported(format!(
                "no cnnc layer for Keras `{other}`; importable classes: InputLayer, Conv2D, \
                 DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, Dense, BatchNormalization, \
                 MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, \
                 Flatten, Dropout, Activation, ReLU, LeakyReLU, ELU, Softmax, ZeroPadding2D, \
                 UpSampling2D, Reshape, Add, Multiply, Concatenate"
            )))
        }
    };
    Ok(KerasLayer {
        class_name: class.to_string(),
        name: name.to_string(),
        kind,
        inputs,
        trainable,
    })
}

/// Negative concatenation axes (`usize::MAX - k` for Keras's `-(k + 1)`)
/// resolved for a per-example rank.
pub fn resolve_axis(axis: usize, rank: usize) -> Option<usize> {
    if axis > usize::MAX / 2 {
        let from_end = usize::MAX - axis; // 0 for -1
        rank.checked_sub(from_end + 1)
    } else {
        (axis < rank).then_some(axis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras2_functional_config_is_read() {
        let json = r#"{"class_name": "Model", "config": {"name": "m",
          "layers": [
            {"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [null, 8, 8, 3], "name": "in"}, "inbound_nodes": []},
            {"class_name": "Conv2D", "name": "c", "config": {"name": "c", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "activation": "relu", "use_bias": true},
             "inbound_nodes": [[["in", 0, 0, {}]]]},
            {"class_name": "Add", "name": "sum", "config": {"name": "sum"}, "inbound_nodes": [[["c", 0, 0, {}], ["in2", 0, 0, {}]]]},
            {"class_name": "InputLayer", "name": "in2", "config": {"batch_input_shape": [null, 8, 8, 4], "name": "in2"}, "inbound_nodes": []}
          ],
          "input_layers": [["in", 0, 0], ["in2", 0, 0]], "output_layers": [["sum", 0, 0]]}}"#;
        let m = parse_model_config(json).unwrap();
        assert_eq!(m.inputs.len(), 2);
        assert_eq!(m.inputs[1].shape, vec![Some(8), Some(8), Some(4)]);
        assert_eq!(m.layers[1].inputs, vec!["c".to_string(), "in2".to_string()]);
        assert_eq!(m.outputs, vec!["sum".to_string()]);
        assert!(matches!(
            m.layers[0].kind,
            LayerKind::Conv2d {
                filters: 4,
                padding: Padding::Same,
                activation: Activation::Relu,
                ..
            }
        ));
    }

    #[test]
    fn shared_layers_and_unknown_classes_are_refused() {
        let json = r#"{"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [null, 4], "name": "i"}},
            {"class_name": "LSTM", "config": {"name": "rnn", "units": 3}}]}}"#;
        let err = parse_model_config(json).unwrap_err();
        assert!(
            matches!(&err, KerasError::Unsupported { class_name, layer, .. } if class_name == "LSTM" && layer == "rnn"),
            "{err}"
        );
        let json = r#"{"class_name": "Functional", "config": {"name": "m", "layers": [
            {"class_name": "InputLayer", "name": "i", "config": {"batch_shape": [null, 4], "name": "i"}, "inbound_nodes": []},
            {"class_name": "Dense", "name": "d", "config": {"name": "d", "units": 4},
             "inbound_nodes": [[["i", 0, 0, {}]], [["i", 0, 0, {}]]]}],
            "input_layers": [["i", 0, 0]], "output_layers": [["d", 1, 0]]}}"#;
        let err = parse_model_config(json).unwrap_err();
        assert!(
            matches!(&err, KerasError::Unsupported { layer, .. } if layer == "d"),
            "{err}"
        );
    }

    #[test]
    fn axes_resolve_from_the_end() {
        assert_eq!(resolve_axis(usize::MAX, 3), Some(2));
        assert_eq!(resolve_axis(usize::MAX - 1, 3), Some(1));
        assert_eq!(resolve_axis(1, 3), Some(1));
        assert_eq!(resolve_axis(3, 3), None);
        assert_eq!(resolve_axis(usize::MAX - 3, 3), None);
    }
}
