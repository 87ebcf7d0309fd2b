//! Weight layouts, checked against hand-computed values: ONNX OIHW conv
//! kernels become Keras HWIO, depthwise kernels `[kh, kw, in, multiplier]`,
//! dense kernels `[in, units]` with the rows of a flattened CHW map put in
//! cnnc's HWC order. The weights are given as `float_data` (the test models
//! of make_reference.py use `raw_data`).

use cnnc_import::proto::*;
use cnnc_import::{import_onnx, ImportOptions, Imported};
use prost::Message;

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        domain: String::new(),
        attribute,
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn io(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimensionValue::DimValue(d)),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn import(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    input: &[i64],
    output: &[i64],
) -> Imported {
    let bytes = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 11,
        }],
        producer_name: String::new(),
        producer_version: String::new(),
        graph: Some(GraphProto {
            node: nodes,
            name: "layouts".into(),
            initializer,
            input: vec![io("x", input)],
            output: vec![io("y", output)],
            value_info: vec![],
        }),
    }
    .encode_to_vec();
    import_onnx(&bytes, None, &ImportOptions::default()).unwrap()
}

fn weight<'a>(imported: &'a Imported, name: &str) -> (&'a [usize], &'a [f32]) {
    let t = imported
        .weights
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                imported.weights.iter().map(|t| &t.name).collect::<Vec<_>>()
            )
        });
    (&t.dims, &t.values)
}

#[test]
fn conv_kernels_become_hwio() {
    // W[o, i, h, w] = 2 * o + w for 2 filters, 1 input channel, 1 x 2 kernel.
    // HWIO (h, w, i, o) in row-major order: (w0, o0) = 0, (w0, o1) = 2,
    // (w1, o0) = 1, (w1, o1) = 3.
    let conv = node("Conv", "conv", &["x", "w", "b"], &["y"], vec![]);
    let imported = import(
        vec![conv],
        vec![
            tensor("w", &[2, 1, 1, 2], &[0.0, 1.0, 2.0, 3.0]),
            tensor("b", &[2], &[0.5, -0.5]),
        ],
        &[1, 1, 3, 3],
        &[1, 2, 3, 2],
    );
    assert_eq!(
        weight(&imported, "conv/kernel"),
        (&[1, 2, 1, 2][..], &[0.0, 2.0, 1.0, 3.0][..])
    );
    assert_eq!(weight(&imported, "conv/bias").1, &[0.5, -0.5]);
    assert!(
        imported.spec.contains("conv2d(2, (1, 2), name=\"conv\")"),
        "{}",
        imported.spec
    );
}

#[test]
fn depthwise_kernels_keep_channel_major_multipliers() {
    // group = 2 channels, 4 filters: depth multiplier 2; ONNX filter c * 2 + k
    // reads channel c; Keras's kernel[0, 0, c, k] is the same filter.
    let conv = node("Conv", "dw", &["x", "w"], &["y"], vec![int("group", 2)]);
    let imported = import(
        vec![conv],
        vec![tensor("w", &[4, 1, 1, 1], &[1.0, 2.0, 3.0, 4.0])],
        &[1, 2, 2, 2],
        &[1, 4, 2, 2],
    );
    assert_eq!(
        weight(&imported, "dw/depthwise_kernel"),
        (&[1, 1, 2, 2][..], &[1.0, 2.0, 3.0, 4.0][..])
    );
    assert!(
        imported
            .spec
            .contains("depthwise_conv2d(1, depth_multiplier=2, use_bias=false"),
        "{}",
        imported.spec
    );
}

#[test]
fn grouped_conv_kernel_is_block_diagonal() {
    // 4 input channels in 2 groups, 2 filters (one per group), 1x1: filter 0
    // reads channels 0, 1 (weights 1, 2), filter 1 channels 2, 3 (3, 4).
    // Kernel [1, 1, 4, 2] rows (input channels): [1, 0], [2, 0], [0, 3], [0, 4].
    let conv = node("Conv", "gc", &["x", "w"], &["y"], vec![int("group", 2)]);
    let imported = import(
        vec![conv],
        vec![tensor("w", &[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0])],
        &[1, 4, 2, 2],
        &[1, 2, 2, 2],
    );
    assert_eq!(
        weight(&imported, "gc/kernel").1,
        &[1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0]
    );
}

#[test]
fn dense_rows_follow_the_hwc_flatten_order() {
    // x [1, 2, 1, 2] (C = 2, H = 1, W = 2) flattened: ONNX features c * 2 + w;
    // cnnc flattens [1, 2, 2] as (w0 c0, w0 c1, w1 c0, w1 c1) = ONNX 0, 2, 1, 3.
    // Gemm with B = [10, 20, 30, 40] (4 x 1): cnnc kernel rows 10, 30, 20, 40.
    let flatten = node("Flatten", "flat", &["x"], &["f"], vec![]);
    let gemm = node("Gemm", "fc", &["f", "b"], &["y"], vec![]);
    let imported = import(
        vec![flatten, gemm],
        vec![tensor("b", &[4, 1], &[10.0, 20.0, 30.0, 40.0])],
        &[1, 2, 1, 2],
        &[1, 1],
    );
    assert_eq!(
        weight(&imported, "fc/kernel"),
        (&[4, 1][..], &[10.0, 30.0, 20.0, 40.0][..])
    );
}

#[test]
fn batch_norm_and_folded_affine() {
    // BatchNormalization then Mul by [2, 3] per channel and Add [1, 1]:
    // gamma * s, beta * s + t.
    let bn = node(
        "BatchNormalization",
        "bn",
        &["x", "g", "b", "m", "v"],
        &["z"],
        vec![],
    );
    let mul = node("Mul", "scale", &["z", "s"], &["zs"], vec![]);
    let add = node("Add", "shift", &["zs", "t"], &["y"], vec![]);
    let imported = import(
        vec![bn, mul, add],
        vec![
            tensor("g", &[2], &[1.0, 0.5]),
            tensor("b", &[2], &[0.25, -1.0]),
            tensor("m", &[2], &[0.0, 1.0]),
            tensor("v", &[2], &[1.0, 4.0]),
            tensor("s", &[2, 1, 1], &[2.0, 3.0]),
            tensor("t", &[2, 1, 1], &[1.0, 1.0]),
        ],
        &[1, 2, 2, 2],
        &[1, 2, 2, 2],
    );
    assert_eq!(weight(&imported, "bn/gamma").1, &[2.0, 1.5]);
    assert_eq!(weight(&imported, "bn/beta").1, &[1.5, -2.0]);
    assert_eq!(weight(&imported, "bn/moving_variance").1, &[1.0, 4.0]);
    assert_eq!(imported.model.layers.len(), 1);
    assert!(
        imported
            .spec
            .contains("batch_normalization(epsilon=1e-5, name=\"bn\")"),
        "{}",
        imported.spec
    );
}
