//! `cnnc-import`: converts a trained ONNX model into an equivalent `.cnn`
//! spec plus its weights as a cnnc safetensors checkpoint.
//!
//! The stages, one module each, in the order data flows:
//! - [`proto`]: the ONNX protobuf messages (hand-written `prost` structs)
//!   and decoding of the file;
//! - [`tensor`]: constant tensors (initializers, `Constant` values) and the
//!   array operations on them; [`fold`]: constant folding of nodes whose
//!   inputs are all constant;
//! - [`graph`]: the decoded graph (real inputs, outputs, opset, node
//!   attributes); [`layout`]: NCHW -> NHWC layout, pending channel
//!   permutations and the translation of ONNX padding;
//! - [`ops`]: the op mapping (ONNX node -> cnnc layers with Keras-layout
//!   weights); [`layers`]: the resulting network and its clean-up passes;
//! - [`spec`]: the `.cnn` writer ([`names`]: identifiers); [`weights`]:
//!   the checkpoint writer.
//!
//! [`import_onnx`] runs them and then checks its own work: the spec must
//! pass cnnc's checker with exactly the layers (kinds, arguments, inputs,
//! shapes) the mapping built, and the lowered graph's parameters must be
//! exactly the checkpoint's tensors (names and shapes).

pub mod error;
pub mod fold;
pub mod graph;
pub mod keras;
pub mod layers;
pub mod layout;
pub mod names;
pub mod ops;
pub mod proto;
pub mod spec;
pub mod tensor;
pub mod weights;

pub use error::ImportError;
pub use keras::{import_keras_file, load_keras_weights, KerasError, KerasWeights};
pub use ops::{IoInfo, IoLayout};
pub use weights::NamedTensor;

use cnnc_compiler::model::{Dim, Model};
use std::path::{Path, PathBuf};

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The spec's model name (made an identifier); default: the ONNX
    /// graph's name, else `imported`.
    pub model_name: Option<String>,
    /// How the source file is named in the spec's header comment.
    pub source_name: Option<String>,
}

/// An imported model.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model's name in the spec (an identifier).
    pub model_name: String,
    /// The `.cnn` text.
    pub spec: String,
    /// The checkpoint tensors, `<layer>/<weight>`, Keras layouts.
    pub weights: Vec<NamedTensor>,
    /// The model inputs and outputs, ONNX side and cnnc side.
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// The spec as cnnc's checker read it.
    pub model: Model,
    /// Written into the checkpoint's metadata (`source`).
    pub source_name: String,
}

/// Where [`Imported::write`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub spec: PathBuf,
    pub checkpoint: PathBuf,
}

impl Imported {
    /// File name of the checkpoint next to the spec: `<model>.safetensors`.
    pub fn checkpoint_file_name(&self) -> String {
        format!("{}.safetensors", self.model_name)
    }

    /// The checkpoint as safetensors bytes.
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>, ImportError> {
        weights::serialize(&self.weights, &self.source_name)
    }

    /// Writes `<dir>/<model>.cnn` and `<dir>/<model>.safetensors` (creating
    /// `dir`; each file replaced atomically).
    pub fn write(&self, dir: &Path) -> Result<Written, ImportError> {
        std::fs::create_dir_all(dir).map_err(|source| ImportError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let spec = dir.join(format!("{}.cnn", self.model_name));
        let checkpoint = dir.join(self.checkpoint_file_name());
        weights::write_atomic(&checkpoint, &self.checkpoint_bytes()?)?;
        weights::write_atomic(&spec, self.spec.as_bytes())?;
        Ok(Written { spec, checkpoint })
    }
}

/// Reads and imports the ONNX model at `path` (external tensor data is read
/// relative to its folder). The model name defaults to the file's stem.
pub fn import_onnx_file(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut options = options.clone();
    if options.model_name.is_none() {
        options.model_name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    if options.source_name.is_none() {
        options.source_name = path.file_name().map(|s| s.to_string_lossy().into_owned());
    }
    import_onnx(&bytes, path.parent(), &options)
}

/// Imports a serialized ONNX model. `base_dir` is where external tensor
/// data files are looked up (`None`: such tensors are an error).
pub fn import_onnx(
    bytes: &[u8],
    base_dir: Option<&Path>,
    options: &ImportOptions,
) -> Result<Imported, ImportError> {
    let model = proto::decode_model(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    let graph = graph::Graph::new(&model, base_dir)?;
    let raw_name = options
        .model_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| Some(graph.name.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "imported".to_string());
    let mut model_name = names::sanitize(&raw_name);
    if names::RESERVED.contains(&model_name.as_str()) {
        model_name.push_str("_model");
    }
    let mut mapped = ops::map_graph(&graph, &[model_name.as_str()])?;
    mapped.net.tidy();
    // Clean-up passes may rename an output to the layer it was fused into;
    // outputs are in the same order in both lists.
    for (info, name) in mapped.outputs.iter_mut().zip(&mapped.net.outputs) {
        info.cnnc_name = name.clone();
    }
    let source_name = options
        .source_name
        .clone()
        .unwrap_or_else(|| "an ONNX model".to_string());
    let header = header(&model_name, &source_name, &model, graph.opset, &mapped);
    let text = spec::write_spec(&model_name, &header, &mapped.net);
    let checked = verify_spec(&text, &mapped.net)?;
    let weights = weights::collect(&mapped.net);
    verify_weights(&checked, &weights)?;
    Ok(Imported {
        model_name,
        spec: text,
        weights,
        inputs: mapped.inputs,
        outputs: mapped.outputs,
        model: checked,
        source_name,
    })
}

fn shape_text(dims: &[Option<usize>]) -> String {
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(n) if i > 0 => n.to_string(),
            _ => "N".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn header(
    model_name: &str,
    source: &str,
    model: &proto::ModelProto,
    opset: i64,
    mapped: &ops::Mapped,
) -> Vec<String> {
    let producer = if model.producer_name.is_empty() {
        String::new()
    } else {
        format!(
            "producer {} {}, ",
            model.producer_name, model.producer_version
        )
        .replace(" ,", ",")
    };
    let mut lines = vec![
        format!(
            "Imported by `cnnc import` from the ONNX model `{source}` ({producer}IR version {}, opset {opset}).",
            model.ir_version
        ),
        format!("Weights: `{model_name}.safetensors` (a cnnc checkpoint: Keras layouts, NHWC)."),
    ];
    for io in &mapped.inputs {
        lines.push(format!(
            "Input `{}`: ONNX [{}]{}, here [{}].",
            io.onnx_name,
            shape_text(&io.onnx_shape),
            if io.layout == IoLayout::ChannelsFirst {
                " NCHW: feed it as NHWC"
            } else {
                ""
            },
            io.cnnc_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for io in &mapped.outputs {
        lines.push(format!(
            "Output `{}`: ONNX [{}]{}, here layer `{}` [{}].",
            io.onnx_name,
            shape_text(&io.onnx_shape),
            if io.layout == IoLayout::ChannelsFirst {
                " NCHW"
            } else {
                ""
            },
            io.cnnc_name,
            io.cnnc_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(start) = spec::top_start(&mapped.net) {
        let top = &mapped.net.layers[start..];
        lines.push(format!(
            "Without its top ({}): call `{model_name}(include_top=false)`, output `{}` {:?}.",
            top.iter()
                .map(|l| format!("`{}`", l.name))
                .collect::<Vec<_>>()
                .join(", "),
            mapped.net.layers[start - 1].name,
            mapped.net.layers[start - 1].shape
        ));
    }
    lines
}

/// Checks the spec with cnnc's checker and compares the checked layers
/// with the network: same names, kinds and arguments, inputs and shapes.
fn verify_spec(text: &str, net: &layers::Network) -> Result<Model, ImportError> {
    let (model, mut problems) = check_layers(text, &net.layers, &net.outputs)?;
    for layer in &net.layers {
        let Some(checked) = model.layers.iter().find(|l| l.name == layer.name) else {
            continue;
        };
        let shape: Vec<Dim> = layer.shape.iter().map(|&d| Dim::from(d)).collect();
        if checked.output_shape != shape {
            problems.push(format!(
                "layer `{}` has shape {:?}, meant {:?}",
                layer.name, checked.output_shape, layer.shape
            ));
        }
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(ImportError::SpecRejected(problems.join("\n")))
    }
}

/// Runs cnnc's checker on an imported spec (a rejection is
/// [`ImportError::SpecRejected`] with the rendered diagnostics) and lists
/// how the checked model differs from the layers meant: layer count,
/// missing layers, kinds with their arguments, inputs, outputs. Shared by
/// the ONNX and Keras imports, which add their own checks.
pub(crate) fn check_layers(
    text: &str,
    layers: &[layers::Layer],
    outputs: &[String],
) -> Result<(Model, Vec<String>), ImportError> {
    let model = cnnc_compiler::check_source(text).map_err(|diags| {
        ImportError::SpecRejected(cnnc_compiler::render_diagnostics(
            &diags,
            "<imported spec>",
            text,
            false,
        ))
    })?;
    let mut problems = Vec::new();
    if model.layers.len() != layers.len() {
        problems.push(format!(
            "{} layers checked, {} built",
            model.layers.len(),
            layers.len()
        ));
    }
    for layer in layers {
        let Some(checked) = model.layers.iter().find(|l| l.name == layer.name) else {
            problems.push(format!("layer `{}` is missing", layer.name));
            continue;
        };
        if let layers::Op::Layer(kind) = &layer.op {
            if *kind != checked.kind {
                problems.push(format!(
                    "layer `{}` is {:?}, meant {:?}",
                    layer.name, checked.kind, kind
                ));
            }
        }
        if checked.inputs != layer.inputs {
            problems.push(format!(
                "layer `{}` reads {:?}, meant {:?}",
                layer.name, checked.inputs, layer.inputs
            ));
        }
    }
    if model.outputs != outputs {
        problems.push(format!("outputs {:?}, meant {:?}", model.outputs, outputs));
    }
    Ok((model, problems))
}

/// Compares the lowered graph's parameters with the checkpoint tensors.
fn verify_weights(model: &Model, tensors: &[NamedTensor]) -> Result<(), ImportError> {
    let graph = cnnc_compiler::graph::lower::try_lower(model)
        .map_err(|e| ImportError::WeightsMismatch(e.to_string()))?;
    let mut problems = Vec::new();
    for p in &graph.params {
        match tensors.iter().find(|t| t.name == p.name) {
            None => problems.push(format!("`{}` has no weights", p.name)),
            Some(t) if t.dims != p.shape => problems.push(format!(
                "`{}`: the spec needs {:?}, the weights are {:?}",
                p.name, p.shape, t.dims
            )),
            Some(_) => {}
        }
    }
    for t in tensors {
        if !graph.params.iter().any(|p| p.name == t.name) {
            problems.push(format!("`{}` is not a parameter of the spec", t.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ImportError::WeightsMismatch(problems.join("; ")))
    }
}
