//! `cnnc bench --profile`: per-node times of the optimized graph.

mod common;

use common::{cnnc_ok, root};
use serde_json::Value;

/// `cnnc bench specs/fashion_mnist.cnn --profile` on the shipped sample.
fn bench_profile(mode: &str, batch: &str, steps: &str, warmup: &str, extra: &[&str]) -> String {
    let data = root()
        .join("data/fashion-mnist-sample")
        .display()
        .to_string();
    let mut args = vec![
        "bench",
        "specs/fashion_mnist.cnn",
        "--mode",
        mode,
        "--batch-size",
        batch,
        "--steps",
        steps,
        "--warmup",
        warmup,
        "--profile",
        "--data-dir",
        &data,
    ];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&cnnc_ok(&args).stdout).into_owned()
}

fn bench_json(mode: &str) -> Value {
    let out = bench_profile(mode, "2", "2", "1", &["--format", "json"]);
    serde_json::from_str(&out).expect("one JSON object")
}

/// The graph `cnnc build --emit graph` prints for the same target, as
/// (op, layer) per node.
fn graph_nodes(target: &str) -> Vec<(String, String)> {
    let out = cnnc_ok(&[
        "build",
        "specs/fashion_mnist.cnn",
        "--emit",
        "graph",
        "--target",
        target,
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("graph JSON");
    v["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|n| {
            (
                n["op"].as_str().unwrap_or_default().to_string(),
                n["layer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn training_profile_times_every_conv_and_dense_both_ways() {
    let v = bench_json("train");
    let rows = v["profile"].as_array().expect("profile rows");
    let nodes = graph_nodes("training");
    for r in rows {
        let i = r["node"].as_u64().unwrap() as usize;
        let (op, layer) = &nodes[i];
        assert_eq!(r["op"].as_str(), Some(op.as_str()), "node {i}");
        assert_eq!(r["layer"].as_str(), Some(layer.as_str()), "node {i}");
    }
    // The 5 convolutions and 3 dense layers of the spec, fused with their
    // bias and activation, each run forward and backward.
    let timed = |op: &str| {
        rows.iter()
            .filter(|r| r["op"] == op)
            .filter(|r| r["forward_ms"].as_f64().unwrap() > 0.0)
            .filter(|r| r["backward_ms"].as_f64().unwrap() > 0.0)
            .count()
    };
    assert_eq!(timed("fused_conv2d"), 5, "{rows:?}");
    assert_eq!(timed("fused_matmul"), 3, "{rows:?}");
    // A whole profiled step takes at least the time of its nodes.
    let nodes_ms: f64 = rows
        .iter()
        .map(|r| r["forward_ms"].as_f64().unwrap() + r["backward_ms"].as_f64().unwrap())
        .sum();
    let step_ms = v["profile_step_ms"].as_f64().expect("profile_step_ms");
    assert!(
        step_ms >= nodes_ms,
        "step {step_ms} ms < nodes {nodes_ms} ms"
    );
}

#[test]
fn inference_profile_has_no_backward_and_no_dropout() {
    let v = bench_json("infer");
    let rows = v["profile"].as_array().expect("profile rows");
    assert!(rows.iter().all(|r| r["backward_ms"].as_f64() == Some(0.0)));
    assert!(rows.iter().all(|r| r["op"] != "dropout"), "{rows:?}");
    let convs = rows.iter().filter(|r| r["op"] == "fused_conv2d").count();
    assert_eq!(convs, 5);
}

#[test]
fn text_profile_is_a_table_after_the_summary() {
    let text = bench_profile("infer", "1", "1", "0", &[]);
    assert!(
        text.contains("profile      mean per step over 1 profiled step\n"),
        "{text}"
    );
    assert!(
        text.contains(" ms of it outside the nodes (between nodes)\n"),
        "{text}"
    );
    // conv2d_4 runs on the 7x7 maps with 256 filters.
    assert!(
        text.lines()
            .any(|l| l.contains("fused_conv2d") && l.contains("conv2d_4") && l.contains("7x7x256")),
        "{text}"
    );
}
