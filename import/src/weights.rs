//! The weights writer: a cnnc checkpoint, the safetensors file that
//! `cnnc_runtime::checkpoint::load` reads (tensor names `<layer>/kernel`,
//! `<layer>/bias`, ...; dtype F32; little-endian; metadata
//! `format = cnnc`), see runtime/src/checkpoint.rs.

use crate::error::ImportError;
use crate::layers::Network;
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// One checkpoint tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// `<layer>/<weight>`.
    pub name: String,
    /// Shape in the Keras layout.
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every weight of the network, named `<layer>/<suffix>`, in layer order.
pub fn collect(net: &Network) -> Vec<NamedTensor> {
    net.layers
        .iter()
        .flat_map(|layer| {
            layer.weights.iter().map(move |w| NamedTensor {
                name: format!("{}/{}", layer.name, w.suffix),
                dims: w.tensor.dims.clone(),
                values: Tensor::to_f32(&w.tensor),
            })
        })
        .collect()
}

/// The checkpoint bytes (safetensors).
pub fn serialize(tensors: &[NamedTensor], source: &str) -> Result<Vec<u8>, ImportError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.dims.clone(), data)
            .map_err(|e| ImportError::WeightsMismatch(format!("`{}`: {e:?}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "cnnc".to_string()),
        ("source".to_string(), source.to_string()),
    ]);
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| ImportError::WeightsMismatch(format!("{e:?}")))
}

/// Writes `bytes` to `path` through `<path>.tmp` and a rename, so that a
/// failed write never leaves a truncated file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImportError> {
    let err = |source| ImportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn serialized_tensors_read_back() {
        let tensors = vec![NamedTensor {
            name: "conv/kernel".into(),
            dims: vec![1, 1, 1, 2],
            values: vec![0.5, -3.0],
        }];
        let bytes = serialize(&tensors, "test.onnx").unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let t = file.tensor("conv/kernel").unwrap();
        assert_eq!(t.shape(), &[1, 1, 1, 2]);
        assert_eq!(t.dtype(), Dtype::F32);
        assert_eq!(&t.data()[4..8], &(-3.0f32).to_le_bytes());
    }
}
