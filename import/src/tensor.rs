//! Constant tensors: decoding ONNX `TensorProto`s (initializers, `Constant`
//! values) into dense row-major arrays, and the few array operations the
//! importer needs (axis permutation, broadcasting arithmetic).

use crate::error::ImportError;
use crate::proto::{data_type, TensorProto};
use std::path::Path;

/// The values of a constant tensor: floats (every floating-point ONNX type
/// is widened or narrowed to f32) or integers (every integer and boolean
/// type, as i64: shapes, axes, indices).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense constant tensor in row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    /// A float tensor; `data.len()` must equal the product of `dims`.
    pub fn f32(dims: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        Tensor {
            dims,
            data: Data::F32(data),
        }
    }

    /// An integer tensor; `data.len()` must equal the product of `dims`.
    pub fn i64(dims: Vec<usize>, data: Vec<i64>) -> Tensor {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        Tensor {
            dims,
            data: Data::I64(data),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64, if the tensor holds integers (or floats that are
    /// all whole numbers, as some exporters write shapes).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::F32(v) => v
                .iter()
                .map(|&x| (x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64))
                .collect(),
        }
    }

    /// The only value of a one-element tensor, as f32.
    pub fn scalar_f32(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.to_f32()[0])
    }

    /// Same values with new dims (same element count).
    pub fn reshaped(&self, dims: Vec<usize>) -> Tensor {
        debug_assert_eq!(dims.iter().product::<usize>(), self.len());
        Tensor {
            dims,
            data: self.data.clone(),
        }
    }

    /// The tensor with its axes permuted: output axis `i` is input axis
    /// `perm[i]` (numpy `transpose(perm)`, ONNX `Transpose`).
    pub fn transposed(&self, perm: &[usize]) -> Tensor {
        let out_dims: Vec<usize> = perm.iter().map(|&p| self.dims[p]).collect();
        let index = permuted_index(&self.dims, perm);
        let data = match &self.data {
            Data::F32(v) => Data::F32(index.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(index.iter().map(|&i| v[i]).collect()),
        };
        Tensor {
            dims: out_dims,
            data,
        }
    }
}

/// Row-major strides of `dims`.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    strides
}

/// For a transpose by `perm`, the source index of every output element in
/// row-major order.
pub fn permuted_index(dims: &[usize], perm: &[usize]) -> Vec<usize> {
    let in_strides = strides(dims);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let step: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let total: usize = out_dims.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut counter = vec![0usize; out_dims.len()];
    for _ in 0..total {
        out.push(counter.iter().zip(&step).map(|(c, s)| c * s).sum());
        for axis in (0..counter.len()).rev() {
            counter[axis] += 1;
            if counter[axis] < out_dims[axis] {
                break;
            }
            counter[axis] = 0;
        }
    }
    out
}

/// The shape numpy broadcasting gives `a` and `b` (aligned at the right;
/// each pair of sizes equal or one of them 1), or `None`.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// For every element of a tensor of shape `out` (row-major), the index of
/// the element of a tensor of shape `dims` broadcast to it.
pub fn broadcast_index(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let own = strides(dims);
    let step: Vec<usize> = (0..rank)
        .map(|i| {
            if i + dims.len() < rank {
                0
            } else {
                let axis = i + dims.len() - rank;
                if dims[axis] == 1 {
                    0
                } else {
                    own[axis]
                }
            }
        })
        .collect();
    let total: usize = out.iter().product();
    let mut index = Vec::with_capacity(total);
    let mut counter = vec![0usize; rank];
    for _ in 0..total {
        index.push(counter.iter().zip(&step).map(|(c, s)| c * s).sum());
        for axis in (0..rank).rev() {
            counter[axis] += 1;
            if counter[axis] < out[axis] {
                break;
            }
            counter[axis] = 0;
        }
    }
    index
}

/// Decodes an ONNX `TensorProto` (an initializer or a `Constant` value).
/// `base_dir` is the model file's folder, for tensors stored in external
/// files (`data_location` EXTERNAL); `None` rejects them.
pub fn decode(proto: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, ImportError> {
    let err = |reason: String| ImportError::Tensor {
        name: proto.name.clone(),
        reason,
    };
    let dims: Vec<usize> = proto
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| err(format!("shape {dims:?} is too large")))?;

    let external;
    let raw: Option<&[u8]> = if proto.data_location == 1 {
        external = read_external(proto, base_dir).map_err(err)?;
        Some(&external)
    } else if !proto.raw_data.is_empty() || typed_len(proto) == 0 && count > 0 {
        Some(&proto.raw_data)
    } else {
        None
    };

    let dtype = proto.data_type;
    let name = data_type::name(dtype);
    let tensor = match raw {
        Some(bytes) => {
            let width = match dtype {
                data_type::FLOAT | data_type::INT32 => 4,
                data_type::DOUBLE | data_type::INT64 => 8,
                data_type::FLOAT16 => 2,
                data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
                _ => return Err(err(format!("data type {name} is not supported"))),
            };
            if bytes.len() != count * width {
                return Err(err(format!(
                    "{} bytes of data for {count} {name} values",
                    bytes.len()
                )));
            }
            match dtype {
                data_type::FLOAT => Tensor::f32(
                    dims,
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                data_type::DOUBLE => Tensor::f32(
                    dims,
                    bytes
                        .chunks_exact(8)
                        .map(|b| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(b);
                            f64::from_le_bytes(a) as f32
                        })
                        .collect(),
                ),
                data_type::FLOAT16 => Tensor::f32(
                    dims,
                    bytes
                        .chunks_exact(2)
                        .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                        .collect(),
                ),
                data_type::INT32 => Tensor::i64(
                    dims,
                    bytes
                        .chunks_exact(4)
                        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                        .collect(),
                ),
                data_type::INT64 => Tensor::i64(
                    dims,
                    bytes
                        .chunks_exact(8)
                        .map(|b| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(b);
                            i64::from_le_bytes(a)
                        })
                        .collect(),
                ),
                data_type::INT8 => {
                    Tensor::i64(dims, bytes.iter().map(|&b| b as i8 as i64).collect())
                }
                _ => Tensor::i64(dims, bytes.iter().map(|&b| b as i64).collect()),
            }
        }
        None => {
            let typed = typed_len(proto);
            if typed != count {
                return Err(err(format!("{typed} values for shape {dims:?}")));
            }
            match dtype {
                data_type::FLOAT => Tensor::f32(dims, proto.float_data.clone()),
                data_type::DOUBLE => {
                    Tensor::f32(dims, proto.double_data.iter().map(|&x| x as f32).collect())
                }
                data_type::FLOAT16 => Tensor::f32(
                    dims,
                    proto
                        .int32_data
                        .iter()
                        .map(|&x| f16_to_f32(x as u16))
                        .collect(),
                ),
                data_type::INT32 | data_type::INT8 | data_type::UINT8 | data_type::BOOL => {
                    Tensor::i64(dims, proto.int32_data.iter().map(|&x| x as i64).collect())
                }
                data_type::INT64 => Tensor::i64(dims, proto.int64_data.clone()),
                _ => return Err(err(format!("data type {name} is not supported"))),
            }
        }
    };
    Ok(tensor)
}

/// The largest constant the importer accepts (4 Gi elements, 16 GiB of f32).
const MAX_ELEMENTS: usize = 1 << 32;

/// Number of values in the typed field that `data_type` uses.
fn typed_len(proto: &TensorProto) -> usize {
    match proto.data_type {
        data_type::FLOAT => proto.float_data.len(),
        data_type::DOUBLE => proto.double_data.len(),
        data_type::INT64 => proto.int64_data.len(),
        _ => proto.int32_data.len(),
    }
}

/// The bytes of a tensor stored outside the model file (ONNX external data:
/// keys `location`, a path relative to the model's folder, and optional
/// `offset` and `length` in bytes).
fn read_external(proto: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let Some(base) = base_dir else {
        return Err("stored in an external file, which this importer was not given".into());
    };
    let entry = |key: &str| {
        proto
            .external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = entry("location").ok_or("external data without a `location`")?;
    let relative = Path::new(location);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "external data location `{location}` is outside the model's folder"
        ));
    }
    let parse = |key: &str| -> Result<Option<usize>, String> {
        entry(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("external data `{key}` is not a byte count: `{v}`"))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    let path = base.join(relative);
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read external data `{}`: {e}", path.display()))?;
    let end = match length {
        Some(n) => offset.checked_add(n),
        None => Some(bytes.len()),
    }
    .filter(|&end| end <= bytes.len() && offset <= end)
    .ok_or_else(|| {
        format!(
            "external data `{}` is shorter than its offset and length",
            path.display()
        )
    })?;
    Ok(bytes[offset..end].to_vec())
}

/// IEEE 754 half precision to single precision (exact).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let value = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24.
            let magnitude = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_hand_computation() {
        // [[0, 1, 2], [3, 4, 5]] transposed is [[0, 3], [1, 4], [2, 5]].
        let t = Tensor::f32(vec![2, 3], (0..6).map(|x| x as f32).collect());
        let u = t.transposed(&[1, 0]);
        assert_eq!(u.dims, vec![3, 2]);
        assert_eq!(u.to_f32(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // OIHW [1, 2, 1, 2] -> HWIO [1, 2, 2, 1]: element (o, i, h, w) = 2i + w.
        let k = Tensor::f32(vec![1, 2, 1, 2], vec![0.0, 1.0, 2.0, 3.0]);
        let h = k.transposed(&[2, 3, 1, 0]);
        assert_eq!(h.dims, vec![1, 2, 2, 1]);
        // HWIO order (w, i): (0,0)=0, (0,1)=2, (1,0)=1, (1,1)=3.
        assert_eq!(h.to_f32(), vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast_shape(&[3, 1, 1], &[1, 3, 4, 5]),
            Some(vec![1, 3, 4, 5])
        );
        assert_eq!(broadcast_shape(&[2], &[3]), None);
        // A [2, 1] column against [2, 3]: each row repeats its element.
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn raw_and_typed_data_decode() {
        let raw = TensorProto {
            dims: vec![2],
            data_type: data_type::FLOAT,
            raw_data: [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
            ..Default::default()
        };
        assert_eq!(decode(&raw, None).unwrap().to_f32(), vec![1.5, -2.0]);
        let typed = TensorProto {
            dims: vec![3],
            data_type: data_type::INT64,
            int64_data: vec![1, -1, 7],
            ..Default::default()
        };
        assert_eq!(
            decode(&typed, None).unwrap().to_i64().unwrap(),
            vec![1, -1, 7]
        );
        let short = TensorProto {
            dims: vec![3],
            data_type: data_type::FLOAT,
            raw_data: vec![0; 8],
            ..Default::default()
        };
        assert!(matches!(
            decode(&short, None),
            Err(ImportError::Tensor { .. })
        ));
        let scalar = TensorProto {
            dims: vec![],
            data_type: data_type::FLOAT,
            float_data: vec![6.0],
            ..Default::default()
        };
        assert_eq!(decode(&scalar, None).unwrap().scalar_f32(), Some(6.0));
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95); // 1365/4096
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
