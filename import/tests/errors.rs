//! What cnnc cannot express is a typed error naming the ONNX operator type
//! and node, never a panic. The models are built here with the importer's
//! own protobuf messages.

use cnnc_import::proto::*;
use cnnc_import::{import_onnx, ImportError, ImportOptions};
use prost::Message;

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 1,
        f: v,
        ..Default::default()
    }
}

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

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
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

fn weights(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: (0..n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect(),
        ..Default::default()
    }
}

/// A model reading `x` [1, 3, 8, 8] (or `input_dims`) and writing `y`.
fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>, input_dims: &[i64]) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "cnnc tests".into(),
        producer_version: String::new(),
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer,
            input: vec![value_info("x", input_dims)],
            output: vec![value_info("y", &[])],
            value_info: vec![],
        }),
    }
    .encode_to_vec()
}

fn import(bytes: &[u8]) -> Result<cnnc_import::Imported, ImportError> {
    import_onnx(bytes, None, &ImportOptions::default())
}

fn expect_unsupported(bytes: &[u8], op: &str, node_name: &str) -> String {
    match import(bytes) {
        Err(ImportError::Unsupported {
            op_type,
            node,
            reason,
        }) => {
            assert_eq!(op_type, op);
            assert!(node.contains(node_name), "{node}");
            let message = ImportError::Unsupported {
                op_type,
                node,
                reason: reason.clone(),
            }
            .to_string();
            assert!(
                message.contains(op) && message.contains(node_name),
                "{message}"
            );
            reason
        }
        Err(other) => panic!("expected Unsupported {op}, got {other}"),
        Ok(_) => panic!("expected Unsupported {op}, the import succeeded"),
    }
}

#[test]
fn lrn_is_unsupported_with_its_node_name() {
    let bytes = model(
        vec![node(
            "LRN",
            "norm1",
            &["x"],
            &["y"],
            vec![attr_int("size", 5)],
        )],
        vec![],
        &[1, 3, 8, 8],
    );
    let reason = expect_unsupported(&bytes, "LRN", "norm1");
    assert!(reason.contains("local response normalization"), "{reason}");
}

#[test]
fn unnamed_nodes_are_named_by_their_output() {
    let bytes = model(
        vec![node("Erf", "", &["x"], &["y"], vec![])],
        vec![],
        &[1, 3, 8, 8],
    );
    expect_unsupported(&bytes, "Erf", "output `y`");
}

#[test]
fn max_pool_padding_on_possibly_negative_values() {
    // Pad 1 at stride 2 on 8 x 8: TF `same` pads 0 before, ONNX 1: not `same`;
    // the input may be negative (no ReLU before), so zero padding is not exact.
    let pool = node(
        "MaxPool",
        "pool",
        &["x"],
        &["y"],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let reason = expect_unsupported(
        &model(vec![pool.clone()], vec![], &[1, 3, 8, 8]),
        "MaxPool",
        "pool",
    );
    assert!(reason.contains("negative"), "{reason}");
    // After a ReLU the same pool imports (zero padding + valid).
    let relu = node("Relu", "relu", &["x"], &["r"], vec![]);
    let mut pool = pool;
    pool.input = vec!["r".into()];
    let imported = import(&model(vec![relu, pool], vec![], &[1, 3, 8, 8])).unwrap();
    assert!(
        imported.spec.contains("zero_padding2d(((1, 0), (1, 0))"),
        "{}",
        imported.spec
    );
}

#[test]
fn dilated_pooling_and_unknown_auto_pad() {
    let pool = node(
        "MaxPool",
        "pool",
        &["x"],
        &["y"],
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("dilations", &[2, 2]),
        ],
    );
    expect_unsupported(&model(vec![pool], vec![], &[1, 3, 8, 8]), "MaxPool", "pool");
    let mut pool = node(
        "AveragePool",
        "avg",
        &["x"],
        &["y"],
        vec![attr_ints("kernel_shape", &[2, 2])],
    );
    pool.attribute.push(AttributeProto {
        name: "auto_pad".into(),
        r#type: 3,
        s: b"SIDEWAYS".to_vec(),
        ..Default::default()
    });
    assert!(matches!(
        import(&model(vec![pool], vec![], &[1, 3, 8, 8])),
        Err(ImportError::InvalidNode { .. })
    ));
}

#[test]
fn weights_computed_at_run_time() {
    // The conv's kernel is the graph input itself.
    let conv = node("Conv", "conv", &["x", "x"], &["y"], vec![]);
    let reason = expect_unsupported(&model(vec![conv], vec![], &[1, 3, 8, 8]), "Conv", "conv");
    assert!(reason.contains("constant"), "{reason}");
}

#[test]
fn broadcasting_joins_and_unflattened_gemm() {
    let gap = node("GlobalAveragePool", "gap", &["x"], &["p"], vec![]);
    let mul = node("Mul", "excite", &["x", "p"], &["y"], vec![]);
    let reason = expect_unsupported(
        &model(vec![gap, mul], vec![], &[1, 3, 8, 8]),
        "Mul",
        "excite",
    );
    assert!(reason.contains("broadcasting"), "{reason}");

    let gemm = node("Gemm", "fc", &["x", "w"], &["y"], vec![]);
    let reason = expect_unsupported(
        &model(vec![gemm], vec![weights("w", &[192, 4])], &[1, 3, 8, 8]),
        "Gemm",
        "fc",
    );
    assert!(reason.contains("flatten"), "{reason}");
}

#[test]
fn clip_ranges_other_than_relu_and_relu6() {
    let lo = weights("lo", &[]);
    let mut hi = weights("hi", &[]);
    hi.float_data = vec![1.0];
    let clip = node("Clip", "clip", &["x", "lo", "hi"], &["y"], vec![]);
    let reason = expect_unsupported(
        &model(vec![clip], vec![lo, hi], &[1, 3, 8, 8]),
        "Clip",
        "clip",
    );
    assert!(reason.contains("relu6"), "{reason}");
}

#[test]
fn other_domains_and_attributes() {
    let mut custom = node("Relu", "custom", &["x"], &["y"], vec![]);
    custom.domain = "com.microsoft".into();
    expect_unsupported(
        &model(vec![custom], vec![], &[1, 3, 8, 8]),
        "Relu",
        "custom",
    );

    let lrelu = node(
        "LeakyRelu",
        "lrelu",
        &["x"],
        &["y"],
        vec![attr_float("alpha", -0.5)],
    );
    expect_unsupported(
        &model(vec![lrelu], vec![], &[1, 3, 8, 8]),
        "LeakyRelu",
        "lrelu",
    );

    let conv = node("Conv", "conv3d", &["x", "w"], &["y"], vec![]);
    expect_unsupported(
        &model(
            vec![conv],
            vec![weights("w", &[2, 3, 1, 1, 1])],
            &[1, 3, 8, 8],
        ),
        "Conv",
        "conv3d",
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    assert!(matches!(
        import(b"\xff\xff\xff\xff not onnx"),
        Err(ImportError::Decode(_))
    ));
    assert!(matches!(
        import(&ModelProto::default().encode_to_vec()),
        Err(ImportError::NoGraph)
    ));
    // A node reading an undefined tensor.
    let relu = node("Relu", "relu", &["nothing"], &["y"], vec![]);
    assert!(matches!(
        import(&model(vec![relu], vec![], &[1, 3, 8, 8])),
        Err(ImportError::InvalidNode { .. })
    ));
    // A kernel that does not fit the input channels.
    let conv = node("Conv", "conv", &["x", "w"], &["y"], vec![]);
    assert!(matches!(
        import(&model(
            vec![conv],
            vec![weights("w", &[2, 5, 3, 3])],
            &[1, 3, 8, 8]
        )),
        Err(ImportError::InvalidNode { .. })
    ));
    // A kernel larger than the input.
    let conv = node("Conv", "conv", &["x", "w"], &["y"], vec![]);
    assert!(import(&model(
        vec![conv],
        vec![weights("w", &[2, 3, 9, 9])],
        &[1, 3, 8, 8]
    ))
    .is_err());
    // Truncated weights.
    let mut w = weights("w", &[2, 3, 3, 3]);
    w.float_data.truncate(5);
    let conv = node("Conv", "conv", &["x", "w"], &["y"], vec![]);
    assert!(matches!(
        import(&model(vec![conv], vec![w], &[1, 3, 8, 8])),
        Err(ImportError::Tensor { .. })
    ));
    // An output nothing computes, an input of unknown size, a rank-3 input.
    let relu = node("Relu", "relu", &["x"], &["z"], vec![]);
    assert!(matches!(
        import(&model(vec![relu.clone()], vec![], &[1, 3, 8, 8])),
        Err(ImportError::Output { .. })
    ));
    let mut bytes =
        ModelProto::decode(model(vec![relu.clone()], vec![], &[1, 3, 8, 8]).as_slice()).unwrap();
    let graph = bytes.graph.as_mut().unwrap();
    graph.input[0] = value_info("x", &[1, 3, 8, 8]);
    if let Some(t) = graph.input[0]
        .r#type
        .as_mut()
        .and_then(|t| t.tensor_type.as_mut())
    {
        t.shape.as_mut().unwrap().dim[2].value = Some(DimensionValue::DimParam("H".into()));
    }
    assert!(matches!(
        import(&bytes.encode_to_vec()),
        Err(ImportError::Input { .. })
    ));
    assert!(matches!(
        import(&model(vec![relu], vec![], &[1, 3, 8])),
        Err(ImportError::Input { .. })
    ));
}
