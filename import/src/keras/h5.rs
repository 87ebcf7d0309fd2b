//! The HDF5 side of Keras files, through the pure-Rust `hdf5-pure` reader
//! (no libhdf5): string attributes (fixed-length or variable-length, scalar
//! or arrays, and Keras's split attributes `layer_names0`, `layer_names1`,
//! ... that `save_attributes_to_hdf5_group` writes when a list exceeds the
//! 64 KB object-header limit) and float datasets (contiguous, compact or
//! chunked, deflate / shuffle filtered; F16 / F32 / F64 read as f32).

use super::KerasError;
use hdf5_pure::{AttrValue, File, Group};
use std::collections::HashMap;

/// The 8-byte HDF5 format signature (`\x89HDF\r\n\x1a\n`), found at offset
/// 0 or, after a user block, at 512, 1024, 2048, ... (HDF5 File Format
/// Specification, "Format Signature").
pub const SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// Whether `bytes` (a file's start, at least its first 8 bytes) is an HDF5
/// file: the signature at 0, 512, 1024, 2048, ...
pub fn is_hdf5(bytes: &[u8]) -> bool {
    let mut offset = 0usize;
    loop {
        match bytes.get(offset..offset + 8) {
            Some(s) if s == SIGNATURE => return true,
            Some(_) => {}
            None => return false,
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
}

/// An open Keras HDF5 file.
pub struct H5 {
    pub(crate) file: File,
}

/// A dataset found in the file, read on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRef {
    /// Path from the root, e.g. `model_weights/conv2d/conv2d/kernel:0`.
    pub path: String,
    /// Shape as stored (Keras layouts: conv kernels `[kh, kw, in, filters]`).
    pub dims: Vec<usize>,
}

fn hdf5_error(what: &str, err: impl std::fmt::Display) -> KerasError {
    KerasError::Hdf5(format!("{what}: {err}"))
}

impl H5 {
    /// Parses an HDF5 file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<H5, KerasError> {
        if !is_hdf5(&bytes) {
            return Err(KerasError::NotHdf5);
        }
        let file = File::from_bytes(bytes).map_err(|e| hdf5_error("cannot open the file", e))?;
        Ok(H5 { file })
    }

    pub fn root(&self) -> Group {
        self.file.root()
    }

    /// The group at `path` (`""` or `/`: the root), if there is one.
    pub fn group(&self, path: &str) -> Option<Group> {
        if path.is_empty() || path == "/" {
            return Some(self.file.root());
        }
        self.file.group(path).ok()
    }

    /// The shape of the dataset at `path`, if there is one.
    pub fn dataset(&self, path: &str) -> Option<DatasetRef> {
        let ds = self.file.dataset(path).ok()?;
        let dims = ds.shape().ok()?;
        Some(DatasetRef {
            path: path.to_string(),
            dims: dims.iter().map(|&d| d as usize).collect(),
        })
    }

    /// All values of a float dataset as f32, row-major.
    pub fn read_f32(&self, dataset: &DatasetRef) -> Result<Vec<f32>, KerasError> {
        let ds = self
            .file
            .dataset(&dataset.path)
            .map_err(|e| hdf5_error(&format!("dataset `{}`", dataset.path), e))?;
        let values = ds
            .read_f32()
            .map_err(|e| hdf5_error(&format!("cannot read dataset `{}`", dataset.path), e))?;
        let expected: usize = dataset.dims.iter().product();
        if values.len() != expected {
            return Err(KerasError::Hdf5(format!(
                "dataset `{}` holds {} values for shape {:?}",
                dataset.path,
                values.len(),
                dataset.dims
            )));
        }
        Ok(values)
    }
}

/// The attributes of a group (an unreadable set reads as none).
pub fn attributes(group: &Group) -> HashMap<String, AttrValue> {
    group.attrs().unwrap_or_default()
}

/// An attribute as a list of strings: string arrays of any encoding, a
/// single string as a one-element list, an empty numeric array (what Keras
/// writes for a layer without weights) as an empty list. `None` for other
/// values.
pub fn strings(value: &AttrValue) -> Option<Vec<String>> {
    use AttrValue as V;
    Some(match value {
        V::String(s) | V::AsciiString(s) | V::VarLenString(s) | V::VarLenAsciiString(s) => {
            vec![s.clone()]
        }
        V::StringSized { value, .. } | V::AsciiStringSized { value, .. } => vec![value.clone()],
        V::StringArray(v)
        | V::AsciiStringArray(v)
        | V::VarLenStringArray(v)
        | V::VarLenAsciiStringArray(v)
        | V::VarLenAsciiCharArray(v) => v.clone(),
        V::StringArraySized { values, .. } | V::AsciiStringArraySized { values, .. } => {
            values.clone()
        }
        V::F64Array(v) if v.is_empty() => Vec::new(),
        V::F32Array(v) if v.is_empty() => Vec::new(),
        V::U8Array(bytes) => vec![String::from_utf8_lossy(bytes)
            .trim_end_matches('\0')
            .to_string()],
        _ => return None,
    })
}

/// A string-list attribute of Keras (`layer_names`, `weight_names`): the
/// attribute itself, or its chunks `name0`, `name1`, ... joined in order
/// (Keras `load_attributes_from_hdf5_group`). `None` when absent.
pub fn string_list(attrs: &HashMap<String, AttrValue>, name: &str) -> Option<Vec<String>> {
    if let Some(value) = attrs.get(name) {
        return strings(value);
    }
    let mut out = Vec::new();
    let mut found = false;
    for i in 0.. {
        match attrs.get(&format!("{name}{i}")) {
            Some(value) => {
                found = true;
                out.extend(strings(value)?);
            }
            None => break,
        }
    }
    found.then_some(out)
}

/// A scalar string attribute (`model_config`, `keras_version`, ...).
pub fn string(attrs: &HashMap<String, AttrValue>, name: &str) -> Option<String> {
    let list = strings(attrs.get(name)?)?;
    (list.len() == 1).then(|| list.into_iter().next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_found_at_zero_and_after_a_user_block() {
        let mut bytes = SIGNATURE.to_vec();
        assert!(is_hdf5(&bytes));
        bytes[1] = b'X';
        assert!(!is_hdf5(&bytes));
        let mut with_block = vec![0u8; 512];
        with_block.extend_from_slice(&SIGNATURE);
        assert!(is_hdf5(&with_block));
        assert!(!is_hdf5(b"PK\x03\x04 not hdf5"));
    }

    #[test]
    fn split_string_lists_are_joined() {
        let mut attrs = HashMap::new();
        attrs.insert(
            "layer_names0".to_string(),
            AttrValue::StringArray(vec!["a".into(), "b".into()]),
        );
        attrs.insert(
            "layer_names1".to_string(),
            AttrValue::VarLenStringArray(vec!["c".into()]),
        );
        assert_eq!(
            string_list(&attrs, "layer_names"),
            Some(vec!["a".to_string(), "b".into(), "c".into()])
        );
        attrs.insert("weight_names".to_string(), AttrValue::F64Array(vec![]));
        assert_eq!(string_list(&attrs, "weight_names"), Some(vec![]));
        assert_eq!(string_list(&attrs, "missing"), None);
    }
}
