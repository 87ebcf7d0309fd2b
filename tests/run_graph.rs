//! End to end on real data with the graph form: the residual network of
//! `specs/examples/fashion_resnet.cnn` (blocks, `if`, named tensors, `add`,
//! batch normalization) trains on the shipped Fashion-MNIST sample, its
//! checkpoint holds batch norm's moving statistics, and evaluating the
//! checkpoint reproduces the test accuracy (so inference really uses the
//! saved moving statistics).

use serde_json::Value;
use std::path::Path;

mod common;
use common::cnnc;

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "cnnc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Tensor names in a safetensors file (8-byte little-endian header length, then JSON).
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let mut names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn residual_network_trains_and_its_checkpoint_evaluates_the_same() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-graph");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = dir.join("resnet.safetensors").display().to_string();
    let history = dir.join("history.json").display().to_string();
    let sets = [
        "epochs=2".to_string(),
        "data.train_limit=2000".to_string(),
        "data.validation_split=200".to_string(),
        format!("checkpoint={checkpoint}"),
        format!("history={history}"),
    ];
    let mut args = vec![
        "run",
        "specs/examples/fashion_resnet.yaml",
        "--format",
        "json",
    ];
    for s in &sets {
        args.push("--set");
        args.push(s);
    }
    let report = json(&cnnc(&args));
    let losses: Vec<f64> = report["history"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(losses[1] < losses[0], "{losses:?}");
    // Ten classes: chance is 0.1. Two epochs on 1,800 images reach about 0.66.
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5, "test accuracy {accuracy}");

    // 11 batch norms: conv_bn in the stem (1), residual(32) (2), the two
    // projecting residuals (3 each) and residual(64) (2); four tensors each.
    let names = tensor_names(Path::new(&checkpoint));
    let moving: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/moving_variance"))
        .collect();
    assert_eq!(moving.len(), 11, "{names:?}");
    assert!(names.contains(&"batch_normalization/moving_mean".to_string()));
    assert!(names.contains(&"batch_normalization_10/gamma".to_string()));

    // Evaluating the checkpoint gives the same figures as the end of training.
    let mut args = vec![
        "run",
        "specs/examples/fashion_resnet.yaml",
        "--format",
        "json",
    ];
    let eval_sets = [
        "mode=evaluate".to_string(),
        format!("checkpoint={checkpoint}"),
        format!("history={history}"),
    ];
    for s in &eval_sets {
        args.push("--set");
        args.push(s);
    }
    let evaluation = json(&cnnc(&args));
    assert_eq!(evaluation["test_accuracy"], report["test_accuracy"]);
    // The end-of-training evaluation reads the kernels as trained (its 3x3
    // convs at 28x28 and 14x14 run as Winograd), `evaluate` reads them
    // packed at load (im2col + GEMM): the same loss up to float rounding.
    let (a, b) = (
        evaluation["test_loss"].as_f64().unwrap(),
        report["test_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
}

/// A model with two outputs is refused before any training, with the reason.
#[test]
fn run_refuses_several_outputs_up_front() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-two-heads");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("heads.cnn"),
        "model heads {\n input [28, 28, 1]\n f = flatten\n a = f -> dense(10)\n b = f -> dense(3)\n output a, b\n}\n",
    )
    .unwrap();
    let run = format!(
        "spec: heads.cnn\nmode: train\ndata:\n  train_images: {}\n  train_labels: {}\n  test_images: {}\n  test_labels: {}\nepochs: 1\ncheckpoint: out/heads.safetensors\n",
        common::sample("train-images-idx3-ubyte.gz"),
        common::sample("train-labels-idx1-ubyte.gz"),
        common::sample("t10k-images-idx3-ubyte.gz"),
        common::sample("t10k-labels-idx1-ubyte.gz"),
    );
    std::fs::write(dir.join("run.yaml"), run).unwrap();
    let out = cnnc(&["run", dir.join("run.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 input and 2 outputs"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Epoch"));
}
