//! End-to-end tests of `cnnc build`: the summary totals Keras reports, the
//! optimized graph (snapshot + which ops were fused), and exit codes.

use serde_json::Value;
use std::path::Path;

mod common;
use common::cnnc;

fn json(args: &[&str]) -> Value {
    let out = cnnc(args);
    assert!(
        out.status.success(),
        "cnnc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON on stdout")
}

#[test]
fn summary_json_matches_keras_totals() {
    let summary = json(&["build", "specs/fashion_mnist.cnn", "--format", "json"]);
    // Keras's model.summary() for the book's model: 1,413,834 params, all trainable.
    assert_eq!(summary["total_params"], 1_413_834);
    assert_eq!(summary["trainable_params"], 1_413_834);
    assert_eq!(summary["non_trainable_params"], 0);
    // 2 x multiply-adds: convs 2*(28*28*64*49*1 + 14*14*128*9*64 + 14*14*128*9*128
    // + 7*7*256*9*128 + 7*7*256*9*256) + dense 2*(2304*128 + 128*64 + 64*10).
    let expected_flops: u64 = 2
        * (28 * 28 * 64 * 49
            + 14 * 14 * 128 * 9 * 64
            + 14 * 14 * 128 * 9 * 128
            + 7 * 7 * 256 * 9 * 128
            + 7 * 7 * 256 * 9 * 256
            + 2304 * 128
            + 128 * 64
            + 64 * 10);
    assert_eq!(summary["flops"], expected_flops);
    assert_eq!(summary["output_shape"], serde_json::json!([null, 10]));
    let layers = summary["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 14);
    assert_eq!(layers[0]["name"], "conv2d");
    assert_eq!(
        layers[0]["output_shape"],
        serde_json::json!([null, 28, 28, 64])
    );
    assert_eq!(layers[8]["output_shape"], serde_json::json!([null, 2304]));
}

#[test]
fn inference_graph_fuses_conv_bias_relu_and_drops_dropout() {
    let graph = json(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--emit",
        "graph",
        "--format",
        "json",
    ]);
    let ops = graph["ops"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|op| op["op"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "input",
            "fused_conv2d",
            "max_pool2d",
            "fused_conv2d",
            "fused_conv2d",
            "max_pool2d",
            "fused_conv2d",
            "fused_conv2d",
            "max_pool2d",
            "flatten",
            "fused_matmul",
            "fused_matmul",
            "fused_matmul",
            "softmax"
        ]
    );
    for op in ops.iter().filter(|op| op["op"] == "fused_conv2d") {
        assert_eq!(
            op["fused"],
            serde_json::json!(["conv2d", "bias_add", "relu"])
        );
        assert_eq!(op["rule"], "ConvBiasActivationFusion");
    }
    assert_eq!(ops[12]["fused"], serde_json::json!(["matmul", "bias_add"]));
    assert_eq!(ops[13]["output_shape"], serde_json::json!([null, 10]));
    assert_eq!(ops[1]["inputs"], serde_json::json!([0]));
}

#[test]
fn training_graph_keeps_dropout() {
    let graph = json(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--emit",
        "graph",
        "--target",
        "training",
        "--format",
        "json",
    ]);
    let dropouts = graph["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["op"] == "dropout")
        .count();
    assert_eq!(dropouts, 2);
}

#[test]
fn optimized_graph_snapshot() {
    let out = cnnc(&["build", "specs/fashion_mnist.cnn", "--emit", "graph"]);
    assert!(out.status.success());
    insta::assert_snapshot!(
        "fashion_mnist_inference_graph",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_spec_exits_1_with_located_error() {
    let dir = std::env::temp_dir().join(format!("cnnc-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.cnn");
    std::fs::write(&path, "model m {\n  input [28, 28, 1]\n  conv2d(0, 3)\n}\n").unwrap();
    let out = cnnc(&["build", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.cnn:3"),
        "error should name file and line:\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_file_is_a_usage_error() {
    let out = cnnc(&["build", "no/such/file.cnn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.cnn"));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs").exists());
}

#[test]
fn dot_snapshot_has_a_node_per_layer_and_shapes_on_edges() {
    let out = cnnc(&["build", "specs/fashion_mnist.cnn", "--emit", "dot"]);
    assert!(out.status.success());
    let dot = String::from_utf8_lossy(&out.stdout).into_owned();
    // A box for the input and each of the 14 layers, a plain `output` node, and
    // one edge into each layer and one into the output.
    let nodes = dot
        .lines()
        .filter(|l| l.contains("[label=") && !l.contains(" -> "))
        .count();
    assert_eq!(nodes, 15);
    assert!(dot.contains("  out0 [shape=plaintext, style=\"\", label=\"output\"]"));
    assert_eq!(dot.matches(" -> ").count(), 15);
    assert!(dot.contains("n8 -> n9 [label=\" (None, 3, 3, 256)\"]"));
    insta::assert_snapshot!("fashion_mnist_dot", dot);
}

#[test]
fn dot_of_a_graph_marks_frozen_layers_and_joins() {
    let dir = std::env::temp_dir().join(format!("cnnc-dot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("frozen.cnn");
    std::fs::write(
        &spec,
        "model frozen {\n input [8, 8, 3]\n a = conv2d(4, 3, padding=same, trainable=false)\n b = input -> conv2d(4, 1)\n s = add(a, b)\n output a, s\n}\n",
    )
    .unwrap();
    let out = cnnc(&["build", spec.to_str().unwrap(), "--emit", "dot"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dot = String::from_utf8_lossy(&out.stdout).into_owned();
    // The frozen conv is drawn dashed and grey; the add reads both convs.
    let frozen_line = dot.lines().find(|l| l.starts_with("  n1 [")).unwrap();
    assert!(
        frozen_line.contains("frozen") && frozen_line.contains("dashed"),
        "{frozen_line}"
    );
    assert!(!dot
        .lines()
        .find(|l| l.starts_with("  n2 ["))
        .unwrap()
        .contains("dashed"));
    assert!(dot.contains("  n1 -> n3 [label=\" (None, 8, 8, 4)\"]"));
    assert!(dot.contains("  n2 -> n3 [label=\" (None, 8, 8, 4)\"]"));
    // Two outputs, named by their tensors.
    assert!(dot.contains("out0 [shape=plaintext, style=\"\", label=\"conv2d\"]"));
    assert!(dot.contains("out1 [shape=plaintext, style=\"\", label=\"add\"]"));
}

#[test]
fn dot_has_no_json_form() {
    let out = cnnc(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--emit",
        "dot",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_input_sizes_build_but_have_no_op_graph() {
    let dir = std::env::temp_dir().join(format!("cnnc-fcn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("fcn.cnn");
    std::fs::write(
        &spec,
        "model fcn {\n input [?, ?, 3]\n conv2d(8, 3, padding=same)\n conv2d(2, 1, activation=softmax)\n}\n",
    )
    .unwrap();
    let path = spec.to_str().unwrap();
    let summary = cnnc(&["build", path]);
    let graph = cnnc(&["build", path, "--emit", "graph"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(summary.status.success());
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(text.contains("(None, None, None, 8)"), "{text}");
    // 3*3*3*8 + 8 = 224 and 8*2 + 2 = 18.
    assert!(text.contains("Total params: 242"), "{text}");
    assert_eq!(graph.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&graph.stderr).contains("unknown size"));
}

#[test]
fn explain_lists_every_pass_and_its_rewrites() {
    let out = cnnc(&[
        "build",
        "specs/zoo/resnet50.cnn",
        "--emit",
        "graph",
        "--explain",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph: Value = serde_json::from_slice(&out.stdout).unwrap();
    let passes = graph["passes"].as_array().unwrap();
    let names: Vec<&str> = passes.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "DeadOpElimination",
            "DropoutElimination",
            "IdentityElimination",
            "BatchNormFolding",
            "ConvBiasActivationFusion",
            "ResidualAddFusion"
        ]
    );
    let count = |name: &str| {
        passes.iter().find(|p| p["name"] == name).unwrap()["rewrites"]
            .as_array()
            .unwrap()
            .len()
    };
    // ResNet-50 has 53 batch norms, each right after a conv (conv1, three
    // per bottleneck block x 16, one per projection shortcut x 4), and 16
    // residual adds, each followed by a relu.
    assert_eq!(count("BatchNormFolding"), 53);
    assert_eq!(count("ResidualAddFusion"), 16);
    assert_eq!(count("DropoutElimination"), 0);
    let ops = graph["ops"].as_array().unwrap();
    assert!(ops
        .iter()
        .all(|op| op["op"] != "batch_norm" && op["op"] != "add"));
    // 53 convs + the dense layer, all fused.
    let fused_convs = ops.iter().filter(|op| op["op"] == "fused_conv2d").count();
    assert_eq!(fused_convs, 53);

    // The text form says what each pass does.
    let out = cnnc(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--emit",
        "graph",
        "--explain",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("passes (inference):"));
    assert!(text.contains("  DropoutElimination (2 rewrites)\n"));
    assert!(text.contains("    - removed dropout `dropout` (rate 0.5): identity at inference\n"));
    assert!(text.contains("  BatchNormFolding (0 rewrites)\n    what: "));

    // --explain without the graph is a usage error.
    let out = cnnc(&["build", "specs/fashion_mnist.cnn", "--explain"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn summary_reports_activation_memory_of_the_memory_plan() {
    let summary = json(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--format",
        "json",
        "--batch-size",
        "10",
    ]);
    let memory = &summary["activation_memory"];
    assert_eq!(memory["batch_size"], 10);
    // Per image, in f32 values: input 784, conv 28*28*64 = 50,176, pool
    // 12,544, convs 25,088 x 2, pool 6,272, convs 12,544 x 2, pool 2,304,
    // dense 128, 64, 10, softmax 10 (flatten aliases its input).
    let values = [
        784, 50_176, 12_544, 25_088, 25_088, 6_272, 12_544, 12_544, 2_304, 128, 64, 10, 10,
    ];
    let unplanned: usize = values.iter().sum();
    assert_eq!(memory["inference_unplanned_bytes_per_image"], unplanned * 4);
    // The plan ping-pongs between two buffers: the largest values that ever
    // share one are the 28x28x64 conv output and the 14x14x128 ones.
    assert_eq!(memory["inference_bytes_per_image"], (50_176 + 25_088) * 4);
    // Training keeps every output (plus the two dropouts' [128] and [64]).
    let kept = unplanned + 128 + 64;
    // Gradients: every output but the input's gets one (the flatten shares
    // the pool's).
    let gradients = kept - 784;
    // Shared by lifetime (backward runs last node first): a step reads its
    // output's gradient while writing its input's, so they alternate between
    // two buffers (dropout and the stand-alone softmax turn one into the
    // other in place). The input gradients written from the last dense
    // backwards are 64, 128, 2,304 (flatten), 12,544, 12,544, 6,272,
    // 25,088, 25,088, 12,544 and 50,176 values: one buffer ends up holding
    // the 28x28x64 one, the other the 14x14x128 ones.
    let planned_gradients = 50_176 + 25_088;
    assert_eq!(memory["training_gradient_buffers"], 2);
    assert_eq!(
        memory["training_bytes_per_image"],
        (kept + planned_gradients) * 4
    );
    assert_eq!(
        memory["training_unplanned_bytes_per_image"],
        (kept + gradients) * 4
    );
    // And for the batch.
    assert_eq!(memory["inference_bytes"], (50_176 + 25_088) * 4 * 10);
    assert_eq!(
        memory["training_bytes"],
        (kept + planned_gradients) * 4 * 10
    );

    // --batch-size sizes the summary only.
    let out = cnnc(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--batch-size",
        "4",
        "--emit",
        "graph",
    ]);
    assert_eq!(out.status.code(), Some(2));

    let out = cnnc(&["build", "specs/fashion_mnist.cnn", "--batch-size", "10"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Activation memory, inference: 301.1 KB per image, 3.01 MB at batch 10"),
        "{text}"
    );
    // (147,748 + 75,264) values * 4 bytes = 892,048 bytes per image; without
    // reuse (147,748 + 146,964) * 4 = 1,178,848.
    assert!(
        text.contains(
            "Activation memory, training: 892.0 KB per image, 8.92 MB at batch 10 (outputs kept \
             for backward, gradients in 2 shared buffers; 1.18 MB per image without reuse)"
        ),
        "{text}"
    );
}

#[test]
fn residual_network_inference_graph_snapshot() {
    // Every batch norm folded, every residual add fused with its relu.
    let out = cnnc(&[
        "build",
        "specs/examples/fashion_resnet.cnn",
        "--emit",
        "graph",
        "--explain",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("residual=add").count(), 4);
    assert!(!text.contains("batch_norm("));
    insta::assert_snapshot!("fashion_resnet_inference_graph_explained", text);
}
