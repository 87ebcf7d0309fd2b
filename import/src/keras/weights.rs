//! Keras weights in an HDF5 file, matched by layer name to cnnc parameters.
//!
//! Three layouts are read:
//! - a full saved model (`model.save("x.h5")`): group `model_weights` with
//!   attribute `layer_names`; each layer's group has attribute
//!   `weight_names` (`conv2d/kernel:0`, ...) naming its datasets, in the
//!   order of the layer's `weights`;
//! - a weights-only file (`save_weights` in the legacy h5 format, the
//!   `keras.applications` downloads): the same with `layer_names` on the
//!   root (old files name weights `block1_conv1_W_1:0`, ...);
//! - Keras 3 `.weights.h5`: `layers/<path>/vars/0`, `vars/1`, ... in the
//!   layer's weight order, the layer's name in attribute `name` of `vars`
//!   when the file has it (else the group's name); nested models under
//!   `layers/<model>/layers/...`.
//!
//! Within a layer, Keras's own loader (`load_weights_from_hdf5_group`) pairs
//! the file's weights with the layer's by position. Here, when every weight
//! of the file has a recognisable name (`.../kernel:0` -> `kernel`), they
//! are paired by name (Keras 3 calls a depthwise kernel `kernel`, cnnc and
//! Keras 2 `depthwise_kernel`); otherwise by position, cnnc's per-layer
//! order being Keras's (kernel, bias; depthwise, pointwise, bias; gamma,
//! beta, moving mean, moving variance).

use super::h5::{self, DatasetRef, H5};
use super::KerasError;
use crate::weights::NamedTensor;
use cnnc_compiler::graph::ir::Init;
use cnnc_compiler::graph::Param;
use std::collections::HashMap;
use std::fmt;

/// How the file stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsLayout {
    /// `model.save("x.h5")`: `model_weights/<layer>/...`.
    FullModel,
    /// Legacy `save_weights` / `keras.applications`: `<layer>/...`.
    LegacyWeights,
    /// Keras 3 `.weights.h5`: `layers/<path>/vars/<i>`.
    Keras3,
}

/// One layer's weights in the file, in the layer's weight order.
#[derive(Debug, Clone, PartialEq)]
pub struct FileLayer {
    /// The Keras layer name.
    pub name: String,
    /// The weights' names as the file gives them (`conv2d/kernel:0`, or
    /// `0`, `1`, ... in a Keras 3 file) and their datasets.
    pub weights: Vec<(String, DatasetRef)>,
}

/// A parameter whose shape differs from the file's tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The cnnc parameter (`conv2d/kernel`).
    pub param: String,
    /// The dataset in the file.
    pub dataset: String,
    /// Shape the model needs.
    pub expected: Vec<usize>,
    /// Shape in the file.
    pub found: Vec<usize>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: the model needs {:?}, `{}` in the file is {:?}",
            self.param, self.expected, self.dataset, self.found
        )
    }
}

/// A layer that has a different number of weights in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMismatch {
    pub layer: String,
    /// The cnnc parameters of the layer.
    pub expected: Vec<String>,
    /// The file's weight names for the layer.
    pub found: Vec<String>,
}

impl fmt::Display for CountMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer `{}`: the model has {} weights ({}), the file {} ({})",
            self.layer,
            self.expected.len(),
            self.expected.join(", "),
            self.found.len(),
            self.found.join(", ")
        )
    }
}

/// Everything that keeps a file's weights from fitting a model, listed in
/// [`KerasError::WeightsMismatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Layers of the model (with parameters) that the file does not have.
    pub missing_layers: Vec<String>,
    /// Layers whose number of weights differs.
    pub counts: Vec<CountMismatch>,
    /// Parameters whose shape differs.
    pub shapes: Vec<ShapeMismatch>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing_layers.is_empty() && self.counts.is_empty() && self.shapes.is_empty()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.missing_layers.is_empty() {
            write!(
                f,
                "\n  layers missing from the file: {}",
                self.missing_layers.join(", ")
            )?;
        }
        for c in &self.counts {
            write!(f, "\n  {c}")?;
        }
        for s in &self.shapes {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}

/// The weights a model gets from a Keras file.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasWeights {
    /// One tensor per parameter, in the order of the `params` given (those
    /// with [`Init::Folded`] left out), named as the parameter, with its
    /// shape; values row-major in the Keras layout (= cnnc's).
    pub tensors: Vec<NamedTensor>,
    /// Layers of the file with weights that the model has no parameters for
    /// (e.g. the classifier of a full `keras.applications` file loaded into
    /// an `include_top=false` spec): not an error, as with Keras's
    /// `load_weights(by_name=True)`.
    pub unused_layers: Vec<String>,
    pub layout: WeightsLayout,
}

/// The weight layers of the file: its layout and the layers in file order.
pub fn file_layers(file: &H5) -> Result<(WeightsLayout, Vec<FileLayer>), KerasError> {
    if let Some(group) = file.group("model_weights") {
        if let Some(names) = h5::string_list(&h5::attributes(&group), "layer_names") {
            return Ok((
                WeightsLayout::FullModel,
                legacy(file, "model_weights", &names)?,
            ));
        }
    }
    if let Some(names) = h5::string_list(&h5::attributes(&file.root()), "layer_names") {
        return Ok((WeightsLayout::LegacyWeights, legacy(file, "", &names)?));
    }
    if file.group("layers").is_some() {
        let mut layers = Vec::new();
        keras3(file, "layers", &mut layers, 0)?;
        return Ok((WeightsLayout::Keras3, layers));
    }
    Err(KerasError::NotKeras(
        "no `layer_names` attribute (on the root or on `model_weights`) and no `layers` group"
            .into(),
    ))
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn legacy(file: &H5, base: &str, names: &[String]) -> Result<Vec<FileLayer>, KerasError> {
    let mut layers = Vec::with_capacity(names.len());
    for name in names {
        let path = join(base, name);
        let Some(group) = file.group(&path) else {
            return Err(KerasError::NotKeras(format!(
                "`layer_names` lists `{name}` but there is no group `{path}`"
            )));
        };
        let weight_names =
            h5::string_list(&h5::attributes(&group), "weight_names").unwrap_or_default();
        let mut weights = Vec::with_capacity(weight_names.len());
        for weight in weight_names {
            let dataset_path = join(&path, &weight);
            let Some(dataset) = file.dataset(&dataset_path) else {
                return Err(KerasError::NotKeras(format!(
                    "layer `{name}` lists weight `{weight}` but there is no dataset `{dataset_path}`"
                )));
            };
            weights.push((weight, dataset));
        }
        layers.push(FileLayer {
            name: name.clone(),
            weights,
        });
    }
    Ok(layers)
}

fn keras3(file: &H5, path: &str, out: &mut Vec<FileLayer>, depth: usize) -> Result<(), KerasError> {
    if depth > 32 {
        return Err(KerasError::NotKeras(format!(
            "`{path}` is nested too deeply"
        )));
    }
    let Some(group) = file.group(path) else {
        return Ok(());
    };
    let mut children = group.groups().unwrap_or_default();
    children.sort();
    for child in children {
        let layer_path = join(path, &child);
        let vars_path = join(&layer_path, "vars");
        if let Some(vars) = file.group(&vars_path) {
            let name = h5::string(&h5::attributes(&vars), "name").unwrap_or(child.clone());
            let mut weights = Vec::new();
            for i in 0.. {
                let dataset_path = join(&vars_path, &i.to_string());
                match file.dataset(&dataset_path) {
                    Some(dataset) => weights.push((i.to_string(), dataset)),
                    None => break,
                }
            }
            if !weights.is_empty() {
                out.push(FileLayer { name, weights });
            }
        }
        let nested = join(&layer_path, "layers");
        if file.group(&nested).is_some() {
            keras3(file, &nested, out, depth + 1)?;
        }
    }
    Ok(())
}

/// The Keras weight name reduced to what cnnc calls it: the last path
/// component without the `:0` TensorFlow suffix (`conv2d/kernel:0` ->
/// `kernel`).
pub fn weight_suffix(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rfind(':') {
        Some(i) if last[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &last[..i],
        _ => last,
    }
}

/// Pairs a layer's cnnc suffixes with the file's weights: by name when
/// every suffix finds its weight, else by position. Returns, per suffix,
/// the index into `found`.
fn pair(suffixes: &[&str], found: &[(String, DatasetRef)]) -> Vec<usize> {
    let names: Vec<&str> = found.iter().map(|(n, _)| weight_suffix(n)).collect();
    let mut by_name = Vec::with_capacity(suffixes.len());
    for s in suffixes {
        let hit = names.iter().position(|n| n == s).or_else(|| {
            // Keras 3 names a depthwise kernel `kernel`.
            (*s == "depthwise_kernel" && !suffixes.contains(&"kernel"))
                .then(|| names.iter().position(|n| *n == "kernel"))
                .flatten()
        });
        match hit {
            Some(i) if !by_name.contains(&i) => by_name.push(i),
            _ => return (0..suffixes.len()).collect(),
        }
    }
    by_name
}

/// The layer and suffix of a cnnc parameter name (`block1_conv1/kernel`).
fn split_param(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

/// Matches the file's weights to `params` by layer name (see the module
/// docs) and reads them. Parameters with [`Init::Folded`] (computed in
/// inference graphs, never stored) are skipped. A layer of the model is
/// looked up among the file's layer groups; failing that, among weights
/// whose own names are `<layer>/<weight>` (the layers of a nested model,
/// which legacy files store under the nested model's group).
///
/// Errors: [`KerasError::WeightsMismatch`] listing every layer of the model
/// that the file lacks, every layer whose weight count differs and every
/// parameter whose shape differs; decoding errors of the file.
pub fn match_weights(file: &H5, params: &[Param]) -> Result<KerasWeights, KerasError> {
    let (layout, layers) = file_layers(file)?;
    let by_layer: HashMap<&str, &FileLayer> = layers
        .iter()
        .filter(|l| !l.weights.is_empty())
        .map(|l| (l.name.as_str(), l))
        .collect();
    // Fallback index: weights named `<layer>/<weight>` in any group.
    let mut by_prefix: HashMap<String, Vec<(String, DatasetRef)>> = HashMap::new();
    for layer in &layers {
        for (name, dataset) in &layer.weights {
            if let Some(i) = name.rfind('/') {
                by_prefix
                    .entry(name[..i].to_string())
                    .or_default()
                    .push((name.clone(), dataset.clone()));
            }
        }
    }

    // The model's layers with their parameters, in order.
    let mut model_layers: Vec<(&str, Vec<&Param>)> = Vec::new();
    for p in params {
        if matches!(p.init, Init::Folded { .. }) {
            continue;
        }
        let (layer, _) = split_param(&p.name);
        match model_layers.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, ps)) => ps.push(p),
            None => model_layers.push((layer, vec![p])),
        }
    }

    let mut mismatch = Mismatch::default();
    let mut chosen: HashMap<&str, DatasetRef> = HashMap::new();
    let mut used: Vec<&str> = Vec::new();
    for (layer, ps) in &model_layers {
        let found: Vec<(String, DatasetRef)> = match by_layer.get(layer) {
            Some(l) => {
                used.push(l.name.as_str());
                l.weights.clone()
            }
            None => match by_prefix.get(*layer) {
                Some(w) => w.clone(),
                None => {
                    mismatch.missing_layers.push(layer.to_string());
                    continue;
                }
            },
        };
        if found.len() != ps.len() {
            mismatch.counts.push(CountMismatch {
                layer: layer.to_string(),
                expected: ps.iter().map(|p| p.name.clone()).collect(),
                found: found.iter().map(|(n, _)| n.clone()).collect(),
            });
            continue;
        }
        let suffixes: Vec<&str> = ps.iter().map(|p| split_param(&p.name).1).collect();
        for (p, index) in ps.iter().zip(pair(&suffixes, &found)) {
            let dataset = &found[index].1;
            if dataset.dims != p.shape {
                mismatch.shapes.push(ShapeMismatch {
                    param: p.name.clone(),
                    dataset: dataset.path.clone(),
                    expected: p.shape.clone(),
                    found: dataset.dims.clone(),
                });
            } else {
                chosen.insert(p.name.as_str(), dataset.clone());
            }
        }
    }
    if !mismatch.is_empty() {
        return Err(KerasError::WeightsMismatch(mismatch));
    }
    let mut tensors = Vec::with_capacity(chosen.len());
    for p in params {
        if let Some(dataset) = chosen.get(p.name.as_str()) {
            tensors.push(NamedTensor {
                name: p.name.clone(),
                dims: p.shape.clone(),
                values: file.read_f32(dataset)?,
            });
        }
    }
    let unused_layers = layers
        .iter()
        .filter(|l| !l.weights.is_empty() && !used.contains(&l.name.as_str()))
        .filter(|l| {
            // Layers whose weights were all taken through the prefix index
            // (a nested model's group) are used too.
            !l.weights.iter().all(|(n, _)| {
                n.rfind('/')
                    .is_some_and(|i| model_layers.iter().any(|(m, _)| *m == &n[..i]))
            })
        })
        .map(|l| l.name.clone())
        .collect();
    Ok(KerasWeights {
        tensors,
        unused_layers,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(path: &str) -> (String, DatasetRef) {
        (
            path.to_string(),
            DatasetRef {
                path: path.into(),
                dims: vec![1],
            },
        )
    }

    #[test]
    fn suffixes_drop_scope_and_tensor_index() {
        assert_eq!(weight_suffix("conv2d/kernel:0"), "kernel");
        assert_eq!(weight_suffix("bn/moving_mean"), "moving_mean");
        assert_eq!(weight_suffix("block1_conv1_W_1:0"), "block1_conv1_W_1");
        assert_eq!(weight_suffix("0"), "0");
    }

    #[test]
    fn pairing_by_name_then_by_position() {
        // Stored in another order than Keras's: paired by name.
        let found = [ds("bn/beta:0"), ds("bn/gamma:0")];
        assert_eq!(pair(&["gamma", "beta"], &found), vec![1, 0]);
        // Keras 3's depthwise `kernel`.
        let found = [ds("dw/kernel"), ds("dw/bias")];
        assert_eq!(pair(&["depthwise_kernel", "bias"], &found), vec![0, 1]);
        // Old keras.applications names: by position.
        let found = [ds("c1_W_1:0"), ds("c1_b_1:0")];
        assert_eq!(pair(&["kernel", "bias"], &found), vec![0, 1]);
        // Keras 3 `.weights.h5`: `0`, `1`.
        let found = [ds("0"), ds("1")];
        assert_eq!(pair(&["kernel", "bias"], &found), vec![0, 1]);
    }
}
