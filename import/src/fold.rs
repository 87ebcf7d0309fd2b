//! Constant folding: nodes whose inputs are all constants (initializers,
//! `Constant` nodes, earlier folded nodes) are evaluated at import time, so
//! that weights written as `Constant`, `ConstantOfShape`, `Unsqueeze`,
//! `Reshape`, `Cast`, ... subgraphs become plain tensors. Semantics follow
//! the ONNX operator specifications (<https://onnx.ai/onnx/operators/>).

use crate::error::ImportError;
use crate::graph::Node;
use crate::tensor::{self, Data, Tensor};

/// Whether [`fold`] evaluates `op_type` when all its inputs are constant.
pub fn is_foldable(op_type: &str) -> bool {
    matches!(
        op_type,
        "Constant"
            | "ConstantOfShape"
            | "Identity"
            | "Cast"
            | "Unsqueeze"
            | "Squeeze"
            | "Reshape"
            | "Flatten"
            | "Transpose"
            | "Concat"
            | "Gather"
            | "Shape"
            | "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Neg"
            | "Sqrt"
            | "Reciprocal"
    )
}

/// Evaluates a foldable node on constant inputs (`None` for an omitted
/// optional input). Returns the node's outputs.
pub fn fold(
    node: &Node,
    inputs: &[Option<&Tensor>],
    opset: i64,
) -> Result<Vec<Tensor>, ImportError> {
    let input = |i: usize| -> Result<&Tensor, ImportError> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| node.invalid(format!("input {i} is missing")))
    };
    let out = match node.op_type() {
        "Constant" => constant(node)?,
        "ConstantOfShape" => {
            let shape = dims_of(node, input(0)?)?;
            let count: usize = shape.iter().product();
            match node.attr_tensor("value") {
                Some(value) => {
                    let v = tensor::decode(value, None)?;
                    match v.data {
                        Data::F32(x) if x.len() == 1 => Tensor::f32(shape, vec![x[0]; count]),
                        Data::I64(x) if x.len() == 1 => Tensor::i64(shape, vec![x[0]; count]),
                        _ => return Err(node.invalid("`value` must hold one element")),
                    }
                }
                None => Tensor::f32(shape, vec![0.0; count]),
            }
        }
        "Identity" => input(0)?.clone(),
        "Cast" => {
            let to = node.attr_int("to").unwrap_or(1) as i32;
            let x = input(0)?;
            match to {
                1 | 10 | 11 | 16 => Tensor::f32(x.dims.clone(), x.to_f32()),
                2..=7 | 9 | 12 | 13 => {
                    let v: Vec<i64> = match &x.data {
                        Data::I64(v) => v.clone(),
                        // ONNX Cast from float to int truncates toward zero.
                        Data::F32(v) => v.iter().map(|&f| f as i64).collect(),
                    };
                    Tensor::i64(x.dims.clone(), v)
                }
                _ => return Err(node.unsupported(format!("cast of a constant to type code {to}"))),
            }
        }
        "Unsqueeze" => {
            let x = input(0)?;
            let axes = axes_of(node, inputs, opset, 13)?
                .ok_or_else(|| node.invalid("`axes` is required"))?;
            let rank = x.dims.len() + axes.len();
            let mut axes = normalize_axes(node, &axes, rank)?;
            axes.sort_unstable();
            let mut dims = x.dims.clone();
            for &a in &axes {
                if a > dims.len() {
                    return Err(node.invalid("axis out of range"));
                }
                dims.insert(a, 1);
            }
            x.reshaped(dims)
        }
        "Squeeze" => {
            let x = input(0)?;
            let axes = match axes_of(node, inputs, opset, 13)? {
                Some(a) => normalize_axes(node, &a, x.dims.len())?,
                None => (0..x.dims.len()).filter(|&i| x.dims[i] == 1).collect(),
            };
            if axes.iter().any(|&a| x.dims[a] != 1) {
                return Err(node.invalid("squeezed axes must have size 1"));
            }
            let dims = (0..x.dims.len())
                .filter(|i| !axes.contains(i))
                .map(|i| x.dims[i])
                .collect();
            x.reshaped(dims)
        }
        "Reshape" => {
            let x = input(0)?;
            let target = input(1)?
                .to_i64()
                .ok_or_else(|| node.invalid("the shape must be integers"))?;
            let allow_zero = node.attr_int("allowzero").unwrap_or(0) == 1;
            let dims = reshape_dims(&x.dims, &target, allow_zero).ok_or_else(|| {
                node.invalid(format!("cannot reshape {:?} to {target:?}", x.dims))
            })?;
            x.reshaped(dims)
        }
        "Flatten" => {
            let x = input(0)?;
            let rank = x.dims.len() as i64;
            let mut axis = node.attr_int("axis").unwrap_or(1);
            if axis < 0 {
                axis += rank;
            }
            if !(0..=rank).contains(&axis) {
                return Err(node.invalid("axis out of range"));
            }
            let a = axis as usize;
            let outer: usize = x.dims[..a].iter().product();
            x.reshaped(vec![outer, x.len() / outer.max(1)])
        }
        "Transpose" => {
            let x = input(0)?;
            let perm = match node.attr_ints("perm") {
                Some(p) => normalize_axes(node, p, x.dims.len())?,
                None => (0..x.dims.len()).rev().collect(),
            };
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.dims.len()).collect::<Vec<_>>() {
                return Err(node.invalid(format!("`perm` {perm:?} is not a permutation")));
            }
            x.transposed(&perm)
        }
        "Concat" => {
            let parts: Vec<&Tensor> = (0..inputs.len()).map(input).collect::<Result<_, _>>()?;
            let first = parts.first().ok_or_else(|| node.invalid("no inputs"))?;
            let rank = first.dims.len();
            let axis = normalize_axes(node, &[node.attr_int("axis").unwrap_or(0)], rank)?[0];
            concat(node, &parts, axis)?
        }
        "Gather" => {
            let x = input(0)?;
            let indices = input(1)?;
            let idx = indices
                .to_i64()
                .ok_or_else(|| node.invalid("indices must be integers"))?;
            let axis =
                normalize_axes(node, &[node.attr_int("axis").unwrap_or(0)], x.dims.len())?[0];
            gather(node, x, &idx, &indices.dims, axis)?
        }
        "Shape" => {
            let x = input(0)?;
            Tensor::i64(
                vec![x.dims.len()],
                x.dims.iter().map(|&d| d as i64).collect(),
            )
        }
        "Add" | "Sub" | "Mul" | "Div" => binary(node, input(0)?, input(1)?)?,
        "Neg" | "Sqrt" | "Reciprocal" => {
            let x = input(0)?;
            let f: fn(f32) -> f32 = match node.op_type() {
                "Neg" => |v| -v,
                "Sqrt" => f32::sqrt,
                _ => |v| 1.0 / v,
            };
            match &x.data {
                Data::I64(v) if node.op_type() == "Neg" => {
                    Tensor::i64(x.dims.clone(), v.iter().map(|&a| -a).collect())
                }
                _ => Tensor::f32(x.dims.clone(), x.to_f32().into_iter().map(f).collect()),
            }
        }
        other => return Err(node.unsupported(format!("`{other}` on constants"))),
    };
    Ok(vec![out])
}

/// The value of a `Constant` node (`value`, `value_float(s)`, `value_int(s)`).
fn constant(node: &Node) -> Result<Tensor, ImportError> {
    if let Some(t) = node.attr_tensor("value") {
        return tensor::decode(t, None);
    }
    if let Some(a) = node.attr("value_float") {
        return Ok(Tensor::f32(vec![], vec![a.f]));
    }
    if let Some(v) = node.attr_floats("value_floats") {
        return Ok(Tensor::f32(vec![v.len()], v.to_vec()));
    }
    if let Some(a) = node.attr("value_int") {
        return Ok(Tensor::i64(vec![], vec![a.i]));
    }
    if let Some(v) = node.attr_ints("value_ints") {
        return Ok(Tensor::i64(vec![v.len()], v.to_vec()));
    }
    Err(node.unsupported(
        "only dense `value`, `value_float(s)` and `value_int(s)` constants are supported",
    ))
}

/// A shape tensor's values as sizes.
fn dims_of(node: &Node, t: &Tensor) -> Result<Vec<usize>, ImportError> {
    t.to_i64()
        .ok_or_else(|| node.invalid("the shape must be integers"))?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| node.invalid(format!("negative size {d}"))))
        .collect()
}

/// `axes` of Squeeze/Unsqueeze (and ReduceMean, ...): an attribute before
/// `input_since` (opset 13), the second input from then on.
pub fn axes_of(
    node: &Node,
    inputs: &[Option<&Tensor>],
    opset: i64,
    input_since: i64,
) -> Result<Option<Vec<i64>>, ImportError> {
    if opset >= input_since {
        match inputs.get(1).copied().flatten() {
            Some(t) => Ok(Some(
                t.to_i64()
                    .ok_or_else(|| node.invalid("`axes` must be integers"))?,
            )),
            None => Ok(node.attr_ints("axes").map(|a| a.to_vec())),
        }
    } else {
        Ok(node.attr_ints("axes").map(|a| a.to_vec()))
    }
}

/// Axes with negative values counted from the end, checked against `rank`.
pub fn normalize_axes(node: &Node, axes: &[i64], rank: usize) -> Result<Vec<usize>, ImportError> {
    axes.iter()
        .map(|&a| {
            let r = rank as i64;
            let v = if a < 0 { a + r } else { a };
            if (0..r).contains(&v) {
                Ok(v as usize)
            } else {
                Err(node.invalid(format!("axis {a} is out of range for rank {rank}")))
            }
        })
        .collect()
}

/// ONNX `Reshape`'s target: `0` copies the input size (unless `allow_zero`),
/// one `-1` is inferred. `None` if the element counts disagree.
pub fn reshape_dims(dims: &[usize], target: &[i64], allow_zero: bool) -> Option<Vec<usize>> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(*dims.get(i)?),
            t if t >= 0 => out.push(t as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

fn concat(node: &Node, parts: &[&Tensor], axis: usize) -> Result<Tensor, ImportError> {
    let first = parts[0];
    for p in parts {
        let same = p.dims.len() == first.dims.len()
            && (0..first.dims.len()).all(|i| i == axis || p.dims[i] == first.dims[i]);
        if !same {
            return Err(node.invalid("inputs differ outside the concatenation axis"));
        }
    }
    let outer: usize = first.dims[..axis].iter().product();
    let inner: usize = first.dims[axis + 1..].iter().product();
    let mut dims = first.dims.clone();
    dims[axis] = parts.iter().map(|p| p.dims[axis]).sum();
    let floats = parts.iter().any(|p| matches!(p.data, Data::F32(_)));
    if floats {
        let values: Vec<Vec<f32>> = parts.iter().map(|p| p.to_f32()).collect();
        let mut out = Vec::new();
        for o in 0..outer {
            for (p, v) in parts.iter().zip(&values) {
                let chunk = p.dims[axis] * inner;
                out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
            }
        }
        Ok(Tensor::f32(dims, out))
    } else {
        let values: Vec<Vec<i64>> = parts.iter().filter_map(|p| p.to_i64()).collect();
        let mut out = Vec::new();
        for o in 0..outer {
            for (p, v) in parts.iter().zip(&values) {
                let chunk = p.dims[axis] * inner;
                out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
            }
        }
        Ok(Tensor::i64(dims, out))
    }
}

fn gather(
    node: &Node,
    x: &Tensor,
    indices: &[i64],
    index_dims: &[usize],
    axis: usize,
) -> Result<Tensor, ImportError> {
    let n = x.dims[axis] as i64;
    let idx: Vec<usize> = indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n } else { i };
            if (0..n).contains(&j) {
                Ok(j as usize)
            } else {
                Err(node.invalid(format!("index {i} out of range for size {n}")))
            }
        })
        .collect::<Result<_, _>>()?;
    let outer: usize = x.dims[..axis].iter().product();
    let inner: usize = x.dims[axis + 1..].iter().product();
    let mut dims: Vec<usize> = x.dims[..axis].to_vec();
    dims.extend_from_slice(index_dims);
    dims.extend_from_slice(&x.dims[axis + 1..]);
    let pick = |len: usize| -> Vec<usize> {
        let mut order = Vec::with_capacity(len);
        for o in 0..outer {
            for &i in &idx {
                for k in 0..inner {
                    order.push((o * x.dims[axis] + i) * inner + k);
                }
            }
        }
        order
    };
    let order = pick(outer * idx.len() * inner);
    Ok(match &x.data {
        Data::F32(v) => Tensor::f32(dims, order.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Tensor::i64(dims, order.iter().map(|&i| v[i]).collect()),
    })
}

/// Element-wise arithmetic with numpy broadcasting (integers stay integers;
/// integer division truncates as ONNX `Div` does).
fn binary(node: &Node, a: &Tensor, b: &Tensor) -> Result<Tensor, ImportError> {
    let dims = tensor::broadcast_shape(&a.dims, &b.dims).ok_or_else(|| {
        node.invalid(format!(
            "shapes {:?} and {:?} do not broadcast",
            a.dims, b.dims
        ))
    })?;
    let ia = tensor::broadcast_index(&a.dims, &dims);
    let ib = tensor::broadcast_index(&b.dims, &dims);
    let op = node.op_type();
    match (&a.data, &b.data) {
        (Data::I64(x), Data::I64(y)) => {
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                out.push(match op {
                    "Add" => x[i].wrapping_add(y[j]),
                    "Sub" => x[i].wrapping_sub(y[j]),
                    "Mul" => x[i].wrapping_mul(y[j]),
                    _ => {
                        if y[j] == 0 {
                            return Err(node.invalid("integer division by zero"));
                        }
                        x[i].wrapping_div(y[j])
                    }
                });
            }
            Ok(Tensor::i64(dims, out))
        }
        _ => {
            let (x, y) = (a.to_f32(), b.to_f32());
            let out = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| match op {
                    "Add" => x[i] + y[j],
                    "Sub" => x[i] - y[j],
                    "Mul" => x[i] * y[j],
                    _ => x[i] / y[j],
                })
                .collect();
            Ok(Tensor::f32(dims, out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_dims(&[1, 512, 7, 7], &[1, -1], false),
            Some(vec![1, 25088])
        );
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false), Some(vec![2, 12]));
        assert_eq!(reshape_dims(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshape_dims(&[2, 3], &[-1, -1], false), None);
    }
}
