//! Keras HDF5 files: full saved models (`model.save("x.h5")`) imported as a
//! `.cnn` spec plus a cnnc checkpoint, and weight files (legacy
//! `save_weights`, the `keras.applications` downloads, Keras 3
//! `.weights.h5`) matched by layer name to the parameters of a spec.
//!
//! - [`h5`]: the HDF5 access (pure-Rust `hdf5-pure`, no libhdf5);
//! - [`config`]: the `model_config` JSON -> cnnc layers;
//! - [`weights`]: the weight layouts and the matching by layer name.
//!
//! Keras layer names are kept: a spec layer is `name="conv2d_1"` and its
//! parameters are `conv2d_1/kernel`, ..., exactly Keras's weight names, in
//! Keras's layouts (conv `[kh, kw, in, filters]`, dense `[in, units]`,
//! NHWC), so no tensor is transposed.

pub mod config;
pub mod h5;
pub mod weights;

pub use config::{KerasInput, KerasLayer, KerasModel};
pub use weights::{CountMismatch, KerasWeights, Mismatch, ShapeMismatch, WeightsLayout};

use crate::layers::{Layer, Op};
use crate::ops::{IoInfo, IoLayout};
use crate::{names, spec, ImportError, ImportOptions, Imported};
use cnnc_compiler::graph::Param;
use cnnc_compiler::model::{Dim, LayerKind, Model};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Why a Keras file could not be imported or its weights loaded.
#[derive(Debug, thiserror::Error)]
pub enum KerasError {
    /// The file cannot be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not an HDF5 file (no format signature).
    #[error("not an HDF5 file (no HDF5 signature)")]
    NotHdf5,

    /// The HDF5 structure cannot be decoded.
    #[error("cannot decode the HDF5 file: {0}")]
    Hdf5(String),

    /// An HDF5 file without what Keras writes (`model_config`,
    /// `layer_names`, ...).
    #[error("not a Keras file: {0}")]
    NotKeras(String),

    /// `model_config` is malformed.
    #[error("the Keras model config cannot be read: {0}")]
    Config(String),

    /// A layer (or a use of it: an argument value, a shared call) that cnnc
    /// cannot express. `class_name` is the Keras class (`LSTM`), `layer` the
    /// layer's name.
    #[error("unsupported Keras layer `{class_name}` (layer `{layer}`): {reason}")]
    Unsupported {
        class_name: String,
        layer: String,
        reason: String,
    },

    /// A layer config that is inconsistent (missing arguments, wrong types).
    #[error("invalid Keras layer `{layer}` ({class_name}): {reason}")]
    InvalidLayer {
        class_name: String,
        layer: String,
        reason: String,
    },

    /// The file's weights do not fit the model's parameters: every layer
    /// missing from the file, every weight count and every shape that
    /// differs.
    #[error("the Keras weights do not match the model:{0}")]
    WeightsMismatch(Mismatch),

    /// The spec or checkpoint could not be built or written (the shared
    /// importer checks, file writing).
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// An open Keras HDF5 file.
pub struct KerasFile {
    pub h5: h5::H5,
    /// Where it was read from (for messages).
    pub path: Option<PathBuf>,
}

impl KerasFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: &Path) -> Result<KerasFile, KerasError> {
        let bytes = std::fs::read(path).map_err(|source| KerasError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(KerasFile {
            h5: h5::H5::from_bytes(bytes)?,
            path: Some(path.to_path_buf()),
        })
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<KerasFile, KerasError> {
        Ok(KerasFile {
            h5: h5::H5::from_bytes(bytes)?,
            path: None,
        })
    }

    /// A root attribute as a string (`keras_version`, `backend`).
    pub fn root_string(&self, name: &str) -> Option<String> {
        h5::string(&h5::attributes(&self.h5.root()), name)
    }

    /// The model's architecture, from the root attribute `model_config`
    /// (full saved models only).
    pub fn model(&self) -> Result<KerasModel, KerasError> {
        let json = self.root_string("model_config").ok_or_else(|| {
            KerasError::NotKeras(
                "no `model_config` attribute, so no architecture to import: a \
                 weights-only file (`save_weights`, `keras.applications`) or not a Keras \
                 model; give weights-only files to a spec as `weights:` in a run file"
                    .into(),
            )
        })?;
        config::parse_model_config(&json)
    }

    /// The weights for `params`, matched by layer name: see
    /// [`load_keras_weights`].
    pub fn weights_for(&self, params: &[Param]) -> Result<KerasWeights, KerasError> {
        weights::match_weights(&self.h5, params)
    }
}

/// Loads the weights of the Keras file at `path` (a full `.h5` model, a
/// legacy or `keras.applications` weights file, or a Keras 3
/// `.weights.h5`) for the parameters of a cnnc model, matched by layer name.
///
/// `params` is the lowered graph's parameter list
/// (`cnnc_compiler::graph::lower::try_lower(&model)?.params`, the list
/// `cnnc_runtime::checkpoint::load` takes); parameters with `Init::Folded`
/// are skipped. Each parameter `<layer>/<weight>` gets the file's weight of
/// layer `<layer>` (within a layer paired by weight name, else by position
/// as Keras does; see [`weights`]), which must have the parameter's exact
/// shape (Keras layouts are cnnc's; nothing is transposed).
///
/// Returns one tensor per (non-folded) parameter, in `params` order, plus
/// the file's layers that nothing used (not an error). Errors:
/// [`KerasError::WeightsMismatch`] listing every model layer absent from the
/// file, every layer whose weight count differs and every parameter whose
/// shape differs; [`KerasError::Read`], [`KerasError::NotHdf5`],
/// [`KerasError::Hdf5`], [`KerasError::NotKeras`] for unreadable files.
pub fn load_keras_weights(path: &Path, params: &[Param]) -> Result<KerasWeights, KerasError> {
    KerasFile::open(path)?.weights_for(params)
}

/// Whether the file at `path` starts like an HDF5 file (how `cnnc import`
/// tells a Keras file from an ONNX model).
pub fn is_hdf5_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 2048 + 8];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    h5::is_hdf5(&head[..filled])
}

/// Reads and imports the full Keras model saved at `path`
/// (`model.save("x.h5")`). The model name defaults to the file's stem.
pub fn import_keras_file(path: &Path, options: &ImportOptions) -> Result<Imported, KerasError> {
    let file = KerasFile::open(path)?;
    let mut options = options.clone();
    if options.model_name.is_none() {
        options.model_name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    if options.source_name.is_none() {
        options.source_name = path.file_name().map(|s| s.to_string_lossy().into_owned());
    }
    import_keras(&file, &options)
}

/// Imports a full saved Keras model: the spec from `model_config`
/// (Keras layer names kept), checked by cnnc's checker, then the weights
/// matched by layer name to the lowered graph's parameters.
///
/// The returned [`Imported`]'s `inputs` / `outputs` use `onnx_name` for the
/// Keras name and `onnx_shape` for Keras's shape (batch first); a size
/// Keras leaves open is `None` there and 0 in `cnnc_shape`. Layouts are
/// always [`IoLayout::SameOrder`] (Keras is NHWC too).
pub fn import_keras(file: &KerasFile, options: &ImportOptions) -> Result<Imported, KerasError> {
    let keras = file.model()?;
    let raw_name = options
        .model_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| keras.name.clone());
    let mut model_name = names::sanitize(&raw_name);
    if names::RESERVED.contains(&model_name.as_str())
        || keras.layers.iter().any(|l| l.name == model_name)
        || keras.inputs.iter().any(|i| i.name == model_name)
    {
        model_name.push_str("_model");
    }
    let net = Net::new(&keras)?;
    let source_name = options
        .source_name
        .clone()
        .unwrap_or_else(|| "a Keras model".to_string());
    let version = file
        .root_string("keras_version")
        .map(|v| format!("Keras {v}"))
        .unwrap_or_else(|| "Keras".into());
    let mut header = vec![
        format!(
            "Imported by `cnnc import` from the Keras model `{source_name}` ({version}, {} `{}`).",
            keras.class_name, keras.name
        ),
        format!("Weights: `{model_name}.safetensors` (a cnnc checkpoint: Keras layouts, NHWC)."),
    ];
    for (input, cnnc) in keras.inputs.iter().zip(&net.input_names) {
        header.push(format!(
            "Input `{}`: Keras [N, {}], here `{cnnc}`.",
            input.name,
            dims_text(&input.shape)
        ));
    }
    let mut text = net.write_spec(&model_name, &header, None)?;
    let mut checked = verify(&text, &net)?;
    // A classifier top after the last [H, W, C] layer goes behind Keras's
    // `include_top` (the checker gave the shapes the config does not).
    let mut net = net;
    for layer in &mut net.layers {
        if let Some(c) = checked.layers.iter().find(|c| c.name == layer.name) {
            layer.shape = c.output_shape.iter().map(|d| d.0.unwrap_or(0)).collect();
        }
    }
    if let Some(start) = spec::top_of_layers(&net.layers, &net.outputs) {
        let top: Vec<String> = net.layers[start..]
            .iter()
            .map(|l| format!("`{}`", l.name))
            .collect();
        header.push(format!(
            "Without its top ({}): call `{model_name}(include_top=false)`, output `{}` {:?}.",
            top.join(", "),
            net.layers[start - 1].name,
            net.layers[start - 1].shape
        ));
        text = net.write_spec(&model_name, &header, Some(start))?;
        checked = verify(&text, &net)?;
    }

    let graph = cnnc_compiler::graph::lower::try_lower(&checked)
        .map_err(|e| ImportError::WeightsMismatch(e.to_string()))?;
    let loaded = file.weights_for(&graph.params)?;
    crate::verify_weights(&checked, &loaded.tensors)?;

    let inputs = keras
        .inputs
        .iter()
        .zip(&net.input_names)
        .map(|(input, cnnc)| IoInfo {
            onnx_name: input.name.clone(),
            onnx_shape: std::iter::once(None)
                .chain(input.shape.iter().copied())
                .collect(),
            cnnc_name: cnnc.clone(),
            cnnc_shape: input.shape.iter().map(|d| d.unwrap_or(0)).collect(),
            layout: IoLayout::SameOrder,
        })
        .collect();
    let outputs = net
        .outputs
        .iter()
        .map(|o| {
            let shape: Vec<Option<usize>> = checked
                .shape_of(o)
                .map(|dims| dims.iter().map(|d| d.0).collect())
                .unwrap_or_default();
            IoInfo {
                onnx_name: keras_name(&keras, &net, o),
                onnx_shape: std::iter::once(None).chain(shape.iter().copied()).collect(),
                cnnc_name: o.clone(),
                cnnc_shape: shape.iter().map(|d| d.unwrap_or(0)).collect(),
                layout: IoLayout::SameOrder,
            }
        })
        .collect();
    Ok(Imported {
        model_name,
        spec: text,
        weights: loaded.tensors,
        inputs,
        outputs,
        model: checked,
        source_name,
    })
}

/// The Keras name of a cnnc tensor (an input's cnnc name maps back).
fn keras_name(keras: &KerasModel, net: &Net, cnnc: &str) -> String {
    keras
        .inputs
        .iter()
        .zip(&net.input_names)
        .find(|(_, c)| *c == cnnc)
        .map(|(i, _)| i.name.clone())
        .unwrap_or_else(|| cnnc.to_string())
}

fn dims_text(dims: &[Option<usize>]) -> String {
    dims.iter()
        .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The network in cnnc terms: inputs renamed to spec identifiers, layers
/// reading checker-level names (layer names or input names).
struct Net {
    /// cnnc input names (`input` for a single input), aligned with the
    /// Keras inputs.
    input_names: Vec<String>,
    input_shapes: Vec<Vec<Option<usize>>>,
    layers: Vec<Layer>,
    outputs: Vec<String>,
}

impl Net {
    fn new(keras: &KerasModel) -> Result<Net, KerasError> {
        if keras.inputs.is_empty() {
            return Err(KerasError::Config("the model has no input".into()));
        }
        let layer_names: HashSet<&str> = keras.layers.iter().map(|l| l.name.as_str()).collect();
        let mut input_names = Vec::new();
        if keras.inputs.len() == 1 {
            input_names.push("input".to_string());
        } else {
            let mut used: HashSet<String> = layer_names.iter().map(|s| s.to_string()).collect();
            for input in &keras.inputs {
                let mut n = names::sanitize(&input.name);
                while names::RESERVED.contains(&n.as_str()) || used.contains(&n) {
                    n.push_str("_in");
                }
                used.insert(n.clone());
                input_names.push(n);
            }
        }
        let rename: HashMap<String, String> = keras
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .zip(input_names.iter().cloned())
            .collect();
        let read = |n: &String| rename.get(n).cloned().unwrap_or_else(|| n.clone());

        // Ranks, to resolve negative concatenation axes.
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (input, name) in keras.inputs.iter().zip(&input_names) {
            rank.insert(name.clone(), input.shape.len());
        }
        let mut layers = Vec::with_capacity(keras.layers.len());
        for l in &keras.layers {
            if l.name == "input" || l.name.contains('"') || l.name.contains('\n') {
                return Err(KerasError::Unsupported {
                    class_name: l.class_name.clone(),
                    layer: l.name.clone(),
                    reason: "this layer name cannot be written in a spec".into(),
                });
            }
            let inputs: Vec<String> = l.inputs.iter().map(read).collect();
            let in_rank = rank.get(&inputs[0]).copied().unwrap_or(0);
            let mut kind = l.kind.clone();
            if let LayerKind::Concatenate { axis } = kind {
                let resolved = config::resolve_axis(axis, in_rank).ok_or_else(|| {
                    KerasError::InvalidLayer {
                        class_name: l.class_name.clone(),
                        layer: l.name.clone(),
                        reason: format!("axis out of range for rank-{} inputs", in_rank + 1),
                    }
                })?;
                kind = LayerKind::Concatenate { axis: resolved };
            }
            let out_rank = match &kind {
                LayerKind::Flatten | LayerKind::GlobalAvgPool2d | LayerKind::GlobalMaxPool2d => 1,
                LayerKind::Reshape { target_shape } => target_shape.len(),
                _ => in_rank,
            };
            rank.insert(l.name.clone(), out_rank);
            layers.push(Layer {
                name: l.name.clone(),
                op: Op::Layer(kind),
                inputs,
                weights: Vec::new(),
                // Only the rank is known here (sizes are the checker's):
                // the writer reads it to leave a default `axis` out.
                shape: vec![0; out_rank],
            });
        }
        Ok(Net {
            input_names,
            input_shapes: keras.inputs.iter().map(|i| i.shape.clone()).collect(),
            layers,
            outputs: keras.outputs.iter().map(read).collect(),
        })
    }

    /// The spec text: chain form where a layer reads the one written just
    /// before it, tensor names elsewhere (spec identifiers derived from
    /// the layer names, never a reserved word); every layer keeps its Keras
    /// name with `name = "..."`. With `top`, the layers from that index on
    /// are wrapped in `if include_top { ... }` and the model takes
    /// `include_top=true`.
    fn write_spec(
        &self,
        model_name: &str,
        header: &[String],
        top: Option<usize>,
    ) -> Result<String, KerasError> {
        let single = self.input_names.len() == 1;
        let inputs: Vec<(String, String)> = self
            .input_names
            .iter()
            .zip(&self.input_shapes)
            .map(|(name, shape)| (name.clone(), dims_text(shape)))
            .collect();
        let mut out = String::new();
        spec::write_head(&mut out, model_name, header, top.is_some(), &inputs, single);
        let body = spec::Body {
            layers: &self.layers,
            outputs: &self.outputs,
            single_input: single,
            top,
        };
        let named = body.named_tensors();
        // Tensor identifiers for the named layers.
        let mut ident: HashMap<&str, String> = HashMap::new();
        let mut taken: HashSet<String> = self.input_names.iter().cloned().collect();
        taken.insert(model_name.to_string());
        for name in &self.input_names {
            ident.insert(name.as_str(), name.clone());
        }
        for layer in &self.layers {
            if !named.contains(layer.name.as_str()) {
                continue;
            }
            let mut id = names::sanitize(&layer.name);
            while names::RESERVED.contains(&id.as_str())
                || taken.contains(&id)
                || self
                    .layers
                    .iter()
                    .any(|l| l.name == id && l.name != layer.name)
            {
                id.push_str("_t");
            }
            taken.insert(id.clone());
            ident.insert(layer.name.as_str(), id);
        }
        let id_of = |n: &str| ident.get(n).cloned().unwrap_or_else(|| n.to_string());
        body.write(&mut out, &named, &id_of, &|layer| layer_call(layer, &id_of))?;
        Ok(out)
    }
}

/// The layer as a spec call: [`spec::layer_call_with`], except batch norm,
/// written with Keras's defaults left out.
fn layer_call(layer: &Layer, id_of: &dyn Fn(&str) -> String) -> Result<String, KerasError> {
    let Op::Layer(kind) = &layer.op else {
        return Err(
            ImportError::SpecRejected(format!("layer `{}` is not a layer", layer.name)).into(),
        );
    };
    // Batch norm with every Keras setting that differs from the default
    // (the shared writer always writes `epsilon`, for ONNX's 1e-5).
    if let LayerKind::BatchNormalization {
        momentum,
        epsilon,
        center,
        scale,
    } = kind
    {
        let mut args: Vec<String> = Vec::new();
        if *momentum != 0.99 {
            args.push(format!("momentum={}", spec::float(*momentum)));
        }
        if *epsilon != 1e-3 {
            args.push(format!("epsilon={}", spec::float(*epsilon)));
        }
        if !center {
            args.push("center=false".into());
        }
        if !scale {
            args.push("scale=false".into());
        }
        args.push(format!("name=\"{}\"", layer.name));
        return Ok(format!("batch_normalization({})", args.join(", ")));
    }
    Ok(spec::layer_call_with(layer, id_of))
}

/// Checks the spec with cnnc's checker and compares the checked layers
/// with the network: same names, kinds (with every argument), inputs and
/// outputs. Shapes are the checker's (Keras's configs do not carry them).
fn verify(text: &str, net: &Net) -> Result<Model, KerasError> {
    let (model, mut problems) = crate::check_layers(text, &net.layers, &net.outputs)?;
    for (input, shape) in model.inputs.iter().zip(&net.input_shapes) {
        let want: Vec<Dim> = shape.iter().map(|d| Dim(*d)).collect();
        if input.shape != want {
            problems.push(format!(
                "input `{}` is {:?}, meant {:?}",
                input.name, input.shape, want
            ));
        }
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(ImportError::SpecRejected(problems.join("\n")).into())
    }
}
