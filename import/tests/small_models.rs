//! Parity of small ONNX models (built by tests/reference/make_reference.py
//! with onnx.helper, one per importer feature) with ONNX Runtime: the
//! imported spec and checkpoint, run by cnnc's runtime on the recorded
//! input, reproduce ONNX Runtime's recorded outputs.

mod common;

use cnnc_import::IoLayout;
use common::*;

/// Imports `models/<name>.onnx`, runs it on the input of
/// `small/<name>.json` and checks every output against ONNX Runtime's
/// (max abs difference <= 1e-5). Returns
/// the runner (for checks on the spec).
fn parity(name: &str) -> Runner {
    let dir = reference_dir();
    let record = read_json(&dir.join(format!("small/{name}.json")));
    let mut runner = Runner::new(&dir.join(format!("models/{name}.onnx")), name);
    let inputs: Vec<_> = record["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(json_array)
        .collect();
    let expected: Vec<_> = record["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(json_array)
        .collect();
    let outputs = runner.run(&inputs);
    assert_eq!(outputs.len(), expected.len());
    for (i, (got, (_, want))) in outputs.iter().zip(&expected).enumerate() {
        let diff = max_abs_diff(got, want);
        eprintln!("{name} output {i}: max abs diff {diff:e}");
        assert!(diff <= 1e-5, "{name} output {i}: max abs diff {diff}");
    }
    runner
}

fn spec(runner: &Runner) -> &str {
    &runner.imported.spec
}

#[test]
fn flatten_of_a_chw_map_permutes_the_dense_rows() {
    let runner = parity("flatten_gemm");
    let spec = spec(&runner);
    // conv2 has pads (0, 0, 1, 1) at stride 2 on 8 x 8: TensorFlow's `same`.
    assert!(
        spec.contains("conv2d(4, 3, strides=2, padding=same, name=\"conv2\")"),
        "{spec}"
    );
    assert!(spec.contains("flatten(name=\"flat\")"), "{spec}");
    // Gemm with alpha and beta, softmax fused into the dense layer.
    assert!(
        spec.contains("dense(5, activation=softmax, name=\"fc\")"),
        "{spec}"
    );
    assert_eq!(runner.imported.inputs[0].layout, IoLayout::ChannelsFirst);
    assert_eq!(runner.imported.inputs[0].cnnc_shape, vec![8, 8, 3]);
}

#[test]
fn padding_that_same_cannot_express_becomes_zero_padding() {
    let runner = parity("pads");
    let spec = spec(&runner);
    // Conv pads (top 2, left 1, bottom 0, right 1).
    assert!(
        spec.contains("zero_padding2d(((2, 0), (1, 1)), name=\"conv_asym_pad\")"),
        "{spec}"
    );
    // Max pool 3x3 / 2 with pad 1 on 15 x 14 (ReLU before it): 8 x 7 windows
    // starting at -1; on the width TF's `same` would pad 0 before. Explicit
    // padding: 1 before, and after (8 - 1) * 2 + 3 - 15 - 1 = 1 row,
    // (7 - 1) * 2 + 3 - 14 - 1 = 0 columns.
    assert!(
        spec.contains("zero_padding2d(((1, 1), (1, 0)), name=\"pool_pad1_pad\")"),
        "{spec}"
    );
    // Average pool 3x3 / 2, pad 1, count_include_pad on 8 x 7 -> 4 x 4:
    // after (4 - 1) * 2 + 3 - 8 - 1 = 0 rows, (4 - 1) * 2 + 3 - 7 - 1 = 1 column.
    assert!(
        spec.contains("zero_padding2d(((1, 0), (1, 1)), name=\"avg_incl_pad\")"),
        "{spec}"
    );
    assert!(
        spec.contains("avg_pool2d(3, strides=1, padding=same, name=\"avg_same\")"),
        "{spec}"
    );
    assert!(spec.contains("dilation_rate=2"), "{spec}");
    assert!(
        spec.contains("max_pool2d(3, strides=2, padding=same, name=\"pool_ceil\")"),
        "{spec}"
    );
}

#[test]
fn depthwise_relu6_and_residual() {
    let runner = parity("depthwise");
    let spec = spec(&runner);
    assert!(
        spec.contains("depthwise_conv2d(3, padding=same, activation=relu6, name=\"dw\")"),
        "{spec}"
    );
    assert!(
        spec.contains(
            "depthwise_conv2d(3, strides=2, depth_multiplier=2, use_bias=false, name=\"dw_mult2\")"
        ) || spec.contains("depth_multiplier=2"),
        "{spec}"
    );
    assert!(
        spec.contains("add(input, project, name=\"residual\")"),
        "{spec}"
    );
    assert!(spec.contains("activation=relu"), "{spec}");
}

#[test]
fn nhwc_input_transpose_is_absorbed() {
    let runner = parity("nhwc_input");
    let spec = spec(&runner);
    assert!(spec.contains("input [12, 12, 3]"), "{spec}");
    assert_eq!(runner.imported.inputs[0].layout, IoLayout::SameOrder);
    assert!(!spec.contains("to_nchw"), "{spec}");
    // MatMul + Add -> one dense layer with a bias, softmax fused.
    assert!(
        spec.contains("dense(2, activation=softmax, name=\"matmul\")"),
        "{spec}"
    );
}

#[test]
fn batch_norm_concat_grouped_conv_and_channel_shuffle() {
    let runner = parity("shuffle_bn_concat");
    let spec = spec(&runner);
    // Mul / Add by per-channel constants folded into the batch norm.
    assert!(!spec.contains("name=\"scale\""), "{spec}");
    assert!(
        spec.contains("batch_normalization(epsilon=0.001, name=\"bn1\")"),
        "{spec}"
    );
    assert!(
        spec.contains("concatenate(relu1, conv2, name=\"cat\")"),
        "{spec}"
    );
    // Two outputs.
    assert!(spec.contains("output "), "{spec}");
    assert_eq!(runner.imported.outputs.len(), 2);
}

#[test]
fn elementwise_ops_resize_and_constants() {
    let runner = parity("elementwise");
    let spec = spec(&runner);
    // ONNX names that are layer keywords get a suffix (they are also tensor names).
    for needle in [
        "sigmoid(name=\"sigmoid_1\")",
        "tanh(name=\"tanh_1\")",
        "multiply(sigmoid_1, tanh_1, name=\"gate\")",
        "leaky_relu(negative_slope=0.1, name=\"leaky\")",
        "depthwise_conv2d(1, name=\"sub_const\")",
        "elu(alpha=0.7, name=\"elu_1\")",
        "dropout(0.5, name=\"dropout_1\")",
        "zero_padding2d(((1, 0), (0, 1)), name=\"pad\")",
        "up_sampling2d(2, name=\"resize_nearest\")",
        "up_sampling2d(2, interpolation=bilinear, name=\"resize_linear\")",
    ] {
        assert!(spec.contains(needle), "{needle} not in\n{spec}");
    }
}

#[test]
fn opset9_clip_attributes_upsample_and_auto_pad() {
    let runner = parity("opset9");
    let spec = spec(&runner);
    assert!(spec.contains("activation=relu6"), "{spec}");
    assert!(
        spec.contains("up_sampling2d((3, 2), name=\"up\")"),
        "{spec}"
    );
    assert!(spec.contains("padding=same"), "{spec}");
}

#[test]
fn average_pools_that_exclude_padding() {
    let runner = parity("avg_exclude_pad");
    let spec = spec(&runner);
    // avg * (kh * kw / count): zero padding, a valid average, the count map.
    assert!(
        spec.contains("avg_pool2d(3, strides=2, name=\"avg_s2\")"),
        "{spec}"
    );
    assert!(
        spec.contains("multiply(avg_s2, avg_s2_count, name=\"avg_s2_exclude_pad\")"),
        "{spec}"
    );
    assert!(spec.contains("name=\"avg_end_exclude_pad\""), "{spec}");
    // ceil_mode on 3 x 3 with a 2 x 2 / 2 window: TF `same`.
    assert!(
        spec.contains("avg_pool2d(2, padding=same, name=\"avg_ceil\")"),
        "{spec}"
    );
}

#[test]
fn unsupported_operator_in_a_model_file() {
    let path = reference_dir().join("models/unsupported_lrn.onnx");
    let err = cnnc_import::import_onnx_file(&path, &Default::default()).unwrap_err();
    assert_eq!(err.op_type(), Some("LRN"));
    let message = err.to_string();
    assert!(
        message.contains("`LRN`") && message.contains("`norm1`"),
        "{message}"
    );
}
