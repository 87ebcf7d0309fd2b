//! End-to-end tests of `cnnc run`: training on the shipped Fashion-MNIST
//! sample, then evaluate and predict from the checkpoint it wrote.
//!
//! A small CNN keeps these fast; one test also runs the book's model from
//! specs/fashion_mnist.yaml for a few batches.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{cnnc, sample};

const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const SMALL_SPEC: &str = "model small {
  input [28, 28, 1]
  conv2d(16, 3, activation=relu, padding=same)
  max_pool2d(2)
  flatten
  dense(10, activation=softmax)
}
";

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "cnnc failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// A folder with the small spec and a run file training it on the sample.
fn workspace(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("run-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small.cnn"), SMALL_SPEC).unwrap();
    let run_file = format!(
        "spec: small.cnn
mode: train
data:
  train_images: {}
  train_labels: {}
  test_images: {}
  test_labels: {}
  validation_split: 200
  train_limit: 2000
  class_names: [{}]
optimizer: {{ name: adam, learning_rate: 0.002 }}
batch_size: 32
epochs: 2
seed: 7
checkpoint: out/small.safetensors
history: out/history.csv
predict:
  count: 5
",
        sample("train-images-idx3-ubyte.gz"),
        sample("train-labels-idx1-ubyte.gz"),
        sample("t10k-images-idx3-ubyte.gz"),
        sample("t10k-labels-idx1-ubyte.gz"),
        CLASS_NAMES.join(", ")
    );
    std::fs::write(dir.join("run.yaml"), run_file).unwrap();
    dir
}

/// Trains the small model once for all tests: (workspace, JSON report).
fn trained() -> &'static (PathBuf, Value) {
    static TRAINED: OnceLock<(PathBuf, Value)> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = workspace("trained");
        let run_file = dir.join("run.yaml").display().to_string();
        let report = stdout_json(&cnnc(&["run", &run_file, "--format", "json"]));
        (dir, report)
    })
}

#[test]
fn training_lowers_the_loss_and_beats_chance() {
    let (dir, report) = trained();
    assert_eq!(report["mode"], "train");
    let losses: Vec<f64> = report["history"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 2);
    assert!(losses[1] < losses[0], "{losses:?}");
    // Chance is 0.1 for 10 balanced classes.
    let test_accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(test_accuracy > 0.5, "test accuracy {test_accuracy}");
    assert!(report["val_accuracy"].as_f64().unwrap() > 0.5);
    assert!(
        report["test_loss"].as_f64().unwrap() < std::f64::consts::LN_10,
        "below ln 10"
    );
    assert_eq!(report["examples"]["train"], 1800);
    assert_eq!(report["examples"]["validation"], 200);
    assert_eq!(report["examples"]["test"], 1000);
    assert_eq!(report["loss"], report["history"]["loss"][1]);

    // The checkpoint and a CSV history were written (no temporary left over).
    assert!(dir.join("out/small.safetensors").is_file());
    assert!(!dir.join("out/small.safetensors.tmp").exists());
    let csv = std::fs::read_to_string(dir.join("out/history.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,loss,accuracy,val_loss,val_accuracy,seconds"
    );
    assert_eq!(lines.len(), 3);
    let first_loss: f64 = lines[1].split(',').nth(1).unwrap().parse().unwrap();
    // serde_json's default float parser may be off by one ulp (it is not
    // built with `float_roundtrip`): compare to that precision.
    assert!(
        (first_loss - losses[0]).abs() <= 1e-15 * losses[0].abs(),
        "{first_loss} vs {}",
        losses[0]
    );
}

#[test]
fn training_is_reproducible_for_a_seed() {
    let (_, report) = trained();
    let dir = workspace("again");
    let run_file = dir.join("run.yaml").display().to_string();
    let again = stdout_json(&cnnc(&["run", &run_file, "--format", "json"]));
    assert_eq!(again["history"]["loss"], report["history"]["loss"]);
    assert_eq!(again["test_accuracy"], report["test_accuracy"]);
}

#[test]
fn evaluate_reloads_the_checkpoint() {
    let (dir, report) = trained();
    let run_file = dir.join("run.yaml").display().to_string();
    let evaluation = stdout_json(&cnnc(&[
        "run",
        &run_file,
        "--set",
        "mode=evaluate",
        "--format",
        "json",
    ]));
    assert_eq!(evaluation["mode"], "evaluate");
    assert_eq!(evaluation["examples"], 1000);
    // Same parameters (exact f32 round trip), same data, same batches. The
    // end-of-training evaluation runs the 14x14 3x3 convs as Winograd on the
    // kernels as trained, `evaluate` as im2col + GEMM on kernels packed at
    // load: the same loss up to float rounding.
    assert_eq!(evaluation["test_accuracy"], report["test_accuracy"]);
    let (a, b) = (
        evaluation["test_loss"].as_f64().unwrap(),
        report["test_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
}

#[test]
fn predict_prints_class_names() {
    let (dir, _) = trained();
    let run_file = dir.join("run.yaml").display().to_string();
    let out = cnnc(&["run", &run_file, "--set", "mode=predict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for line in lines {
        assert!(
            CLASS_NAMES
                .iter()
                .any(|name| line.contains(&format!(": {name} ("))),
            "{line}"
        );
        assert!(line.contains("%)") && line.contains("[label: "), "{line}");
    }
}

#[test]
fn predict_reads_png_files_like_idx_images() {
    let (dir, _) = trained();
    // Write the first two test images as 8-bit grey PNGs.
    let images =
        cnnc_runtime::data::idx::read_images(Path::new(&sample("t10k-images-idx3-ubyte.gz")))
            .unwrap();
    let mut inputs = Vec::new();
    for i in 0..2 {
        let pixels: Vec<u8> = images
            .outer_iter()
            .nth(i)
            .unwrap()
            .iter()
            .map(|&p| (p * 255.0).round() as u8)
            .collect();
        let png = cnnc_runtime::data::image::encode_grey_png(28, 28, &pixels).unwrap();
        let path = dir.join(format!("test{i}.png"));
        std::fs::write(&path, png).unwrap();
        inputs.push(path.display().to_string());
    }
    let run_file = dir.join("run.yaml").display().to_string();
    let set_inputs = format!("predict.inputs=[{}]", inputs.join(", "));
    let from_png = stdout_json(&cnnc(&[
        "run",
        &run_file,
        "--set",
        "mode=predict",
        "--set",
        &set_inputs,
        "--format",
        "json",
    ]));
    let from_idx = stdout_json(&cnnc(&[
        "run",
        &run_file,
        "--set",
        "mode=predict",
        "--set",
        "predict.count=2",
        "--format",
        "json",
    ]));
    let png_predictions = from_png["predictions"].as_array().unwrap();
    let idx_predictions = from_idx["predictions"].as_array().unwrap();
    assert_eq!(png_predictions.len(), 2);
    assert_eq!(idx_predictions.len(), 2);
    for (png, idx) in png_predictions.iter().zip(idx_predictions) {
        // Same pixels (k / 255 both ways), same probabilities.
        assert_eq!(png["probabilities"], idx["probabilities"]);
        assert_eq!(
            png["class_name"],
            CLASS_NAMES[png["class"].as_u64().unwrap() as usize]
        );
        assert!(png["label"].is_null());
        assert!(idx["label"].is_u64());
        let probabilities: f64 = png["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((probabilities - 1.0).abs() < 1e-5);
    }
}

#[test]
fn text_output_is_keras_style_when_piped() {
    let dir = workspace("text");
    let run_file = dir.join("run.yaml").display().to_string();
    let out = cnnc(&[
        "run",
        &run_file,
        "--set",
        "epochs=1",
        "--set",
        "data.train_limit=300",
        "--set",
        "data.validation_split=100",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0]
            .starts_with("Training `small` (31,530 parameters) on 200 images, validating on 100"),
        "{text}"
    );
    assert_eq!(lines[1], "Epoch 1/1");
    // ceil(200 / 32) = 7 steps; stdout is a pipe, so one plain line per epoch.
    assert!(lines[2].starts_with("7/7 - "), "{text}");
    for metric in [
        "loss: ",
        "accuracy: ",
        "val_loss: ",
        "val_accuracy: ",
        "ms/step",
    ] {
        assert!(
            lines[2].contains(metric),
            "{metric} missing in {}",
            lines[2]
        );
    }
    // The checkpoint and history are saved before the test evaluation.
    assert!(lines[3].starts_with("Saved checkpoint to "), "{text}");
    assert!(lines[4].starts_with("Saved history to "), "{text}");
    assert!(
        lines[5].starts_with("Test on 1,000 images: test_loss: "),
        "{text}"
    );
    assert!(lines[5].contains(" - test_accuracy: "));
}

#[test]
fn shipped_run_file_trains_the_book_model() {
    // The README command with the run cut to a few batches.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-shipped");
    let _ = std::fs::remove_dir_all(&dir);
    let checkpoint = format!("checkpoint={}", dir.join("book.safetensors").display());
    let history = format!("history={}", dir.join("book.json").display());
    let report = stdout_json(&cnnc(&[
        "run",
        "specs/fashion_mnist.yaml",
        "--set",
        "epochs=1",
        "--set",
        "data.train_limit=96",
        "--set",
        "data.validation_split=32",
        "--set",
        "data.test_limit=32",
        "--set",
        &checkpoint,
        "--set",
        &history,
        "--format",
        "json",
    ]));
    assert_eq!(report["examples"]["train"], 64);
    assert_eq!(report["history"]["epoch"], serde_json::json!([1]));
    assert!(report["test_loss"].as_f64().unwrap().is_finite());
    assert!(dir.join("book.safetensors").is_file());
    let history: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("book.json")).unwrap()).unwrap();
    assert_eq!(history["loss"], report["history"]["loss"]);
}
