//! `cnnc run` error reporting: run-file mistakes point at the file and line
//! (exit 1), usage mistakes exit 2, and data, spec and checkpoint problems
//! name the file at fault.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sample(name: &str) -> String {
    root()
        .join("data/fashion-mnist-sample")
        .join(name)
        .display()
        .to_string()
}

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("cnnc runs")
}

/// Runs `cnnc run FILE ARGS...`; returns (exit code, stderr).
fn run(file: &Path, args: &[&str]) -> (i32, String) {
    let file = file.display().to_string();
    let mut all = vec!["run", file.as_str()];
    all.extend_from_slice(args);
    let out = cnnc(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("run-errors-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A valid run file for a tiny model, training on 64 sample images; `extra`
/// lines are appended.
fn write_run_file(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(
        dir.join("tiny.cnn"),
        "model tiny { input [28, 28, 1] flatten dense(10, activation=softmax) }\n",
    )
    .unwrap();
    let text = format!(
        "spec: tiny.cnn
data:
  train_images: {}
  train_labels: {}
  test_images: {}
  test_labels: {}
  train_limit: 64
  validation_split: 16
batch_size: 16
checkpoint: tiny.safetensors
{extra}",
        sample("train-images-idx3-ubyte.gz"),
        sample("train-labels-idx1-ubyte.gz"),
        sample("t10k-images-idx3-ubyte.gz"),
        sample("t10k-labels-idx1-ubyte.gz"),
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_field_names_file_line_and_suggestion() {
    let dir = dir("unknown");
    // `epoch: 3` is on line 11 (10 lines before `extra`).
    let file = write_run_file(&dir, "epoch: 3\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:11:1", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `epoch`"), "{stderr}");
    assert!(stderr.contains("did you mean `epochs`?"), "{stderr}");
}

#[test]
fn misspelt_optimizer_is_located() {
    let dir = dir("optimizer");
    let file = write_run_file(&dir, "optimizer:\n  name: sgd\n  learning_rat: 0.1\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:13:3", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `learning_rate`?"), "{stderr}");

    let file = write_run_file(&dir, "optimizer: { name: adma }\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did you mean `adam`?"), "{stderr}");

    let file = write_run_file(&dir, "optimizer: { name: sgd, momentum: 1.5 }\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("momentum") && stderr.contains("[0, 1)"),
        "{stderr}"
    );
}

#[test]
fn wrong_value_type_is_located() {
    let dir = dir("type");
    let file = write_run_file(&dir, "epochs: many\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:11:9", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("epochs: many"),
        "the source line is shown: {stderr}"
    );
}

#[test]
fn set_overrides_are_checked() {
    let dir = dir("set");
    let file = write_run_file(&dir, "");
    // Malformed: usage error.
    let (code, stderr) = run(&file, &["--set", "epochs"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEY=VALUE"), "{stderr}");
    // Unknown key: run-file error naming the override, with a suggestion.
    let (code, stderr) = run(&file, &["--set", "data.train_imgs=x"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--set data.train_imgs=x"), "{stderr}");
    assert!(stderr.contains("did you mean `train_images`?"), "{stderr}");
    // A bad validation split.
    let (code, stderr) = run(&file, &["--set", "data.validation_split=64"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("validation"), "{stderr}");
}

#[test]
fn unreadable_files_are_usage_errors() {
    let dir = dir("missing");
    let (code, stderr) = run(&dir.join("nope.yaml"), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nope.yaml"), "{stderr}");

    let file = write_run_file(&dir, "");
    let (code, stderr) = run(&file, &["--set", "data.train_images=/nonexistent/train.gz"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/train.gz") && stderr.contains("data.train_images"),
        "{stderr}"
    );

    // Evaluate without a trained checkpoint.
    let (code, stderr) = run(&file, &["--set", "mode=evaluate"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tiny.safetensors"), "{stderr}");
}

#[test]
fn corrupt_data_is_reported_by_file() {
    let dir = dir("data");
    let file = write_run_file(&dir, "");
    // Images and labels swapped: wrong IDX magic.
    let labels = format!("data.train_images={}", sample("train-labels-idx1-ubyte.gz"));
    let (code, stderr) = run(&file, &["--set", &labels]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("train-labels-idx1-ubyte.gz") && stderr.contains("0x00000801"),
        "{stderr}"
    );

    // A truncated gzip file.
    let bytes = std::fs::read(sample("t10k-labels-idx1-ubyte.gz")).unwrap();
    let cut = dir.join("cut-labels.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, stderr) = run(
        &file,
        &["--set", &format!("data.test_labels={}", cut.display())],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cut-labels.gz") && stderr.contains("data.test_labels"),
        "{stderr}"
    );
}

#[test]
fn spec_errors_are_rendered_diagnostics() {
    let dir = dir("spec");
    let file = write_run_file(&dir, "");
    std::fs::write(
        dir.join("tiny.cnn"),
        "model tiny { input [28, 28, 1] flaten dense(10, activation=softmax) }\n",
    )
    .unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("tiny.cnn"), "{stderr}");
    assert!(stderr.contains("flaten"), "{stderr}");
}

#[test]
fn class_names_must_match_the_model() {
    let dir = dir("classes");
    let file = write_run_file(&dir, "");
    let (code, stderr) = run(&file, &["--set", "data.class_names=[a, b, c]"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("3 names") && stderr.contains("10 classes"),
        "{stderr}"
    );
}

#[test]
fn checkpoint_of_another_model_is_rejected() {
    let dir = dir("checkpoint");
    let file = write_run_file(&dir, "epochs: 0\n");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.join("tiny.safetensors").is_file());
    // A hidden layer changes `dense/kernel` to [784, 32] and adds `dense_1/*`.
    std::fs::write(
        dir.join("tiny.cnn"),
        "model tiny { input [28, 28, 1] flatten dense(32) dense(10, activation=softmax) }\n",
    )
    .unwrap();
    let (code, stderr) = run(&file, &["--set", "mode=evaluate"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains("dense/kernel"), "{stderr}");
    assert!(stderr.contains("dense_1/kernel"), "{stderr}");
}

#[test]
fn png_of_the_wrong_size_is_rejected() {
    let dir = dir("png");
    let file = write_run_file(&dir, "epochs: 0\n");
    assert_eq!(run(&file, &[]).0, 0);
    let png = cnnc_runtime::data::image::encode_grey_png(32, 32, &[0; 32 * 32]).unwrap();
    std::fs::write(dir.join("big.png"), png).unwrap();
    let inputs = format!("predict.inputs=[{}]", dir.join("big.png").display());
    let (code, stderr) = run(&file, &["--set", "mode=predict", "--set", &inputs]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("big.png") && stderr.contains("32 x 32") && stderr.contains("28 x 28"),
        "{stderr}"
    );
}
