//! Checkpoints: a [`ParamStore`] as a safetensors file
//! (<https://github.com/huggingface/safetensors>: an 8-byte little-endian
//! header length, a JSON header of names, dtypes, shapes and offsets, then
//! the raw little-endian data).
//!
//! Tensor names are [`Param::name`] (`conv2d/kernel`, `dense_1/bias`), shapes
//! as in `Param::shape` (conv kernels `[kh, kw, in_channels, filters]`, dense
//! kernels `[in_features, units]`, the Keras/TensorFlow layouts), dtype F32.
//!
//! Saving writes `<path>.tmp`, flushes it to disk and renames it over `path`,
//! so an interrupted save never leaves a half-written checkpoint.

use crate::params::ParamStore;
use crate::tensor::Tensor;
use cnnc_compiler::graph::Param;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor whose shape or dtype in the file differs from the graph's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMismatch {
    pub name: String,
    /// Shape the graph expects.
    pub expected: Vec<usize>,
    /// Shape in the file.
    pub found: Vec<usize>,
    /// Dtype in the file (`F32` expected).
    pub dtype: String,
}

impl fmt::Display for TensorMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: the model expects F32 {:?}, the file has {} {:?}",
            self.name, self.expected, self.dtype, self.found
        )
    }
}

/// An error saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {action} checkpoint `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a valid safetensors file.
    #[error("cannot read checkpoint `{}`: {message}", path.display())]
    Format { path: PathBuf, message: String },

    /// The values do not line up with the parameter list (a caller bug).
    #[error("{values} parameter values for {params} parameters")]
    CountMismatch { params: usize, values: usize },

    /// The file's tensors do not match the model's parameters.
    #[error("checkpoint `{}` does not match the model:{}", path.display(), describe(missing, unexpected, mismatched))]
    Mismatch {
        path: PathBuf,
        /// Parameters of the model absent from the file.
        missing: Vec<String>,
        /// Tensors in the file the model does not have.
        unexpected: Vec<String>,
        /// Tensors present in both whose shape or dtype differs.
        mismatched: Vec<TensorMismatch>,
    },
}

fn describe(missing: &[String], unexpected: &[String], mismatched: &[TensorMismatch]) -> String {
    let mut out = String::new();
    if !missing.is_empty() {
        out += &format!("\n  missing from the file: {}", missing.join(", "));
    }
    if !unexpected.is_empty() {
        out += &format!("\n  not in the model: {}", unexpected.join(", "));
    }
    for m in mismatched {
        out += &format!("\n  {m}");
    }
    out += "\n  (was it saved from a different spec?)";
    out
}

/// `<path>.tmp`, the file a save writes before renaming.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Saves `values` (aligned with `params`) to `path` atomically (see the module
/// docs). Creates the parent folder if needed.
pub fn save(path: &Path, params: &[Param], values: &ParamStore) -> Result<(), CheckpointError> {
    if params.len() != values.values.len() {
        return Err(CheckpointError::CountMismatch {
            params: params.len(),
            values: values.values.len(),
        });
    }
    let bytes: Vec<Vec<u8>> = values
        .values
        .iter()
        .map(|t| t.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(params.len());
    for ((param, value), data) in params.iter().zip(&values.values).zip(&bytes) {
        let view = TensorView::new(Dtype::F32, value.shape().to_vec(), data).map_err(|err| {
            CheckpointError::Format {
                path: path.to_path_buf(),
                message: format!("`{}`: {}", param.name, describe_safetensors(&err)),
            }
        })?;
        views.push((param.name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "cnnc".to_string())]);
    let buffer =
        safetensors::serialize(views, &Some(metadata)).map_err(|err| CheckpointError::Format {
            path: path.to_path_buf(),
            message: describe_safetensors(&err),
        })?;

    let io = |action, source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
    }
    let temporary = temporary_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&buffer)?;
        file.sync_all()?;
        Ok(())
    };
    if let Err(err) = write() {
        let _ = std::fs::remove_file(&temporary);
        return Err(io("write", err));
    }
    if let Err(err) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(io("rename the temporary file onto", err));
    }
    Ok(())
}

/// A safetensors error in words (the crate's `Display` is its `Debug`).
/// Header layout per the safetensors format: 8-byte little-endian header
/// length, then that many bytes of JSON, then the tensor data.
pub fn describe_safetensors(err: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match err {
        E::HeaderTooLarge => {
            "not a safetensors file or truncated: header too large (its first 8 bytes \
             announce a header of over 100 MB)"
                .to_string()
        }
        E::HeaderTooSmall => {
            "not a safetensors file or truncated: the file is shorter than the 8-byte header length"
                .to_string()
        }
        E::InvalidHeaderLength => {
            "not a safetensors file or truncated: the header length is larger than the file"
                .to_string()
        }
        E::InvalidHeader => "not a safetensors file: the header is not UTF-8 text".to_string(),
        E::InvalidHeaderStart => {
            "not a safetensors file: the header does not start with `{`".to_string()
        }
        E::InvalidHeaderDeserialization => {
            "not a safetensors file: the header is not valid JSON".to_string()
        }
        E::JsonError(err) => format!("the header is not valid JSON: {err}"),
        E::TensorNotFound(name) => format!("no tensor named `{name}`"),
        E::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its data offsets".to_string()
        }
        E::InvalidOffset(name) => {
            format!("the data offsets of tensor `{name}` are invalid (truncated file?)")
        }
        E::IoError(err) => err.to_string(),
        E::InvalidTensorView(dtype, shape, size) => {
            format!("a {dtype:?} tensor of shape {shape:?} cannot hold {size} bytes")
        }
        E::MetadataIncompleteBuffer => {
            "the tensor data does not cover the rest of the file (truncated or padded file?)"
                .to_string()
        }
        E::ValidationOverflow => "a tensor's shape or size overflows (corrupt header)".to_string(),
    }
}

/// The bytes of the checkpoint file at `path`.
fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// The tensors of a safetensors file's bytes, by name.
fn tensors<'a>(
    path: &Path,
    buffer: &'a [u8],
) -> Result<BTreeMap<String, TensorView<'a>>, CheckpointError> {
    let file = SafeTensors::deserialize(buffer).map_err(|err| CheckpointError::Format {
        path: path.to_path_buf(),
        message: describe_safetensors(&err),
    })?;
    Ok(file.tensors().into_iter().collect())
}

/// How the file's tensor differs from `param` (dtype F32 and its shape
/// expected), if it does.
fn mismatch(param: &Param, view: &TensorView<'_>) -> Option<TensorMismatch> {
    (view.dtype() != Dtype::F32 || view.shape() != param.shape.as_slice()).then(|| TensorMismatch {
        name: param.name.clone(),
        expected: param.shape.clone(),
        found: view.shape().to_vec(),
        dtype: format!("{:?}", view.dtype()),
    })
}

/// An F32 tensor's values (little-endian in the file).
fn f32_values(view: &TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// What [`load_by_name`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ByName {
    /// Parameters given their value from the file.
    pub loaded: Vec<String>,
    /// Parameters the file does not hold (they keep their value: a new
    /// head, typically).
    pub not_in_file: Vec<String>,
    /// Tensors of the file that no parameter has (the old head,
    /// typically).
    pub unused: Vec<String>,
}

/// Loads into `values` (aligned with `params`) every tensor of the
/// checkpoint at `path` whose name is a parameter's, like Keras's
/// `model.load_weights(path, by_name=True)`: the pretrained base of a
/// transfer-learning model gets its weights, the parameters the file lacks
/// keep theirs. Errors: [`CheckpointError::Io`] / `Format` for an unreadable
/// file, `CountMismatch` if `values` is not aligned with `params`,
/// `Mismatch` (listing them all) when a name matches but the shape or dtype
/// differs, or when no name matches at all (`missing` then lists the
/// model's parameters and `unexpected` the file's tensors).
pub fn load_by_name(
    path: &Path,
    params: &[Param],
    values: &mut ParamStore,
) -> Result<ByName, CheckpointError> {
    if values.values.len() != params.len() {
        return Err(CheckpointError::CountMismatch {
            params: params.len(),
            values: values.values.len(),
        });
    }
    let buffer = read(path)?;
    let tensors = tensors(path, &buffer)?;
    let mut report = ByName::default();
    let mut mismatched = Vec::new();
    let mut found = Vec::new();
    for (i, param) in params.iter().enumerate() {
        let Some(view) = tensors.get(&param.name) else {
            report.not_in_file.push(param.name.clone());
            continue;
        };
        if let Some(mismatch) = mismatch(param, view) {
            mismatched.push(mismatch);
            continue;
        }
        found.push((i, view));
    }
    report.unused = tensors
        .keys()
        .filter(|name| !params.iter().any(|p| &p.name == *name))
        .cloned()
        .collect();
    if !mismatched.is_empty() || found.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            missing: if found.is_empty() && mismatched.is_empty() {
                report.not_in_file
            } else {
                Vec::new()
            },
            unexpected: if found.is_empty() && mismatched.is_empty() {
                report.unused
            } else {
                Vec::new()
            },
            mismatched,
        });
    }
    for (i, view) in found {
        let target = values.values[i]
            .as_slice_mut()
            .expect("parameter values are contiguous");
        target.copy_from_slice(&f32_values(view));
        report.loaded.push(params[i].name.clone());
    }
    Ok(report)
}

/// Loads a checkpoint for `params`, checking that the file holds exactly the
/// model's tensors with the model's shapes (F32); every difference is listed
/// in [`CheckpointError::Mismatch`].
pub fn load(path: &Path, params: &[Param]) -> Result<ParamStore, CheckpointError> {
    let buffer = read(path)?;
    let tensors = tensors(path, &buffer)?;

    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut values = Vec::with_capacity(params.len());
    for param in params {
        let Some(view) = tensors.get(&param.name) else {
            missing.push(param.name.clone());
            continue;
        };
        if let Some(mismatch) = mismatch(param, view) {
            mismatched.push(mismatch);
            continue;
        }
        let data = f32_values(view);
        values.push(
            Tensor::from_shape_vec(ndarray::IxDyn(&param.shape), data)
                .expect("safetensors checked data length against the shape"),
        );
    }
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|name| !params.iter().any(|p| &p.name == *name))
        .cloned()
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        });
    }
    Ok(ParamStore { values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::graph::ir::Init;
    use ndarray::IxDyn;

    fn param(name: &str, shape: &[usize]) -> Param {
        Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            init: Init::Zeros,
            trainable: true,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn store() -> (Vec<Param>, ParamStore) {
        let params = vec![
            param("conv2d/kernel", &[3, 3, 1, 2]),
            param("conv2d/bias", &[2]),
        ];
        let kernel = Tensor::from_shape_vec(
            IxDyn(&[3, 3, 1, 2]),
            (0..18).map(|i| i as f32 * 0.5 - 3.0).collect(),
        )
        .unwrap();
        let bias = Tensor::from_shape_vec(IxDyn(&[2]), vec![0.25, -1e-8]).unwrap();
        (
            params,
            ParamStore {
                values: vec![kernel, bias],
            },
        )
    }

    #[test]
    fn load_by_name_fills_matching_params_and_keeps_the_rest() {
        let dir = dir("byname");
        let path = dir.join("base.safetensors");
        let (params, values) = store();
        save(&path, &params, &values).unwrap();
        // A model with the same conv plus a new head.
        let mut model = params.clone();
        model.push(param("head/kernel", &[2, 5]));
        let head = Tensor::from_elem(IxDyn(&[2, 5]), 7.0);
        let mut target = ParamStore {
            values: vec![
                Tensor::zeros(IxDyn(&[3, 3, 1, 2])),
                Tensor::zeros(IxDyn(&[2])),
                head.clone(),
            ],
        };
        let report = load_by_name(&path, &model, &mut target).unwrap();
        assert_eq!(report.loaded, ["conv2d/kernel", "conv2d/bias"]);
        assert_eq!(report.not_in_file, ["head/kernel"]);
        assert!(report.unused.is_empty());
        assert_eq!(target.values[0], values.values[0]);
        assert_eq!(target.values[1], values.values[1]);
        assert_eq!(target.values[2], head);

        // Same name, other shape: an error naming it, nothing half-loaded.
        let wrong = vec![param("conv2d/kernel", &[3, 3, 2, 2]), param("x", &[1])];
        let mut fresh = ParamStore {
            values: vec![
                Tensor::zeros(IxDyn(&[3, 3, 2, 2])),
                Tensor::zeros(IxDyn(&[1])),
            ],
        };
        match load_by_name(&path, &wrong, &mut fresh) {
            Err(CheckpointError::Mismatch { mismatched, .. }) => {
                assert_eq!(mismatched[0].name, "conv2d/kernel");
                assert_eq!(mismatched[0].found, [3, 3, 1, 2]);
            }
            other => panic!("{other:?}"),
        }
        assert!(fresh.values[0].iter().all(|&v| v == 0.0));
        // No name in common: an error listing both sides.
        let other = vec![param("dense/kernel", &[4, 2])];
        let mut fresh = ParamStore {
            values: vec![Tensor::zeros(IxDyn(&[4, 2]))],
        };
        match load_by_name(&path, &other, &mut fresh) {
            Err(CheckpointError::Mismatch {
                missing,
                unexpected,
                ..
            }) => {
                assert_eq!(missing, ["dense/kernel"]);
                assert_eq!(unexpected, ["conv2d/bias", "conv2d/kernel"]);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_is_exact_and_leaves_no_temporary() {
        let dir = dir("round");
        let path = dir.join("nested/model.safetensors");
        let (params, values) = store();
        save(&path, &params, &values).unwrap();
        assert!(!temporary_path(&path).exists());
        let loaded = load(&path, &params).unwrap();
        assert_eq!(loaded.values, values.values);
        // Overwriting works too.
        save(&path, &params, &values).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_is_readable_safetensors_with_param_names() {
        let dir = dir("names");
        let path = dir.join("m.safetensors");
        let (params, values) = store();
        save(&path, &params, &values).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<_> = file.names().into_iter().cloned().collect();
        names.sort();
        assert_eq!(names, vec!["conv2d/bias", "conv2d/kernel"]);
        let bias = file.tensor("conv2d/bias").unwrap();
        assert_eq!(bias.shape(), &[2]);
        assert_eq!(&bias.data()[..4], &0.25f32.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatches_are_all_listed() {
        let dir = dir("mismatch");
        let path = dir.join("m.safetensors");
        let (params, values) = store();
        save(&path, &params, &values).unwrap();
        let other = vec![
            param("conv2d/kernel", &[5, 5, 1, 2]),
            param("dense/kernel", &[4, 10]),
        ];
        let err = load(&path, &other).unwrap_err();
        let CheckpointError::Mismatch {
            missing,
            unexpected,
            mismatched,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(missing, &vec!["dense/kernel".to_string()]);
        assert_eq!(unexpected, &vec!["conv2d/bias".to_string()]);
        assert_eq!(mismatched.len(), 1);
        assert_eq!(mismatched[0].found, vec![3, 3, 1, 2]);
        let message = err.to_string();
        assert!(
            message.contains("dense/kernel") && message.contains("[5, 5, 1, 2]"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_and_missing_files_are_errors() {
        let dir = dir("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, b"definitely not safetensors").unwrap();
        let (params, _) = store();
        assert!(matches!(
            load(&path, &params),
            Err(CheckpointError::Format { .. })
        ));
        assert!(matches!(
            load(&dir.join("none"), &params),
            Err(CheckpointError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        let dir = dir("atomic");
        let path = dir.join("m.safetensors");
        let (params, values) = store();
        save(&path, &params, &values).unwrap();
        let before = std::fs::read(&path).unwrap();
        // A count mismatch fails before anything is written.
        let err = save(&path, &params, &ParamStore { values: vec![] }).unwrap_err();
        assert!(matches!(err, CheckpointError::CountMismatch { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A temporary path that cannot be created (a folder is in the way) fails
        // and the old checkpoint is untouched.
        std::fs::create_dir_all(temporary_path(&path)).unwrap();
        let mut changed = values.clone();
        changed.values[1][0] = 9.0;
        assert!(matches!(
            save(&path, &params, &changed),
            Err(CheckpointError::Io { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
