//! `cnnc run` error reporting: run-file mistakes point at the file and line
//! (exit 1), usage mistakes exit 2, and data, spec and checkpoint problems
//! name the file at fault.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{cnnc, root, sample};

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
    // The images key is at fault, though the labels file is the one given.
    assert!(stderr.contains("`data.train_images`"), "{stderr}");
    assert!(!stderr.contains("data.train_labels"), "{stderr}");

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
    let file = write_run_file(&dir, "epochs: 1\n");
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
    let file = write_run_file(&dir, "epochs: 1\n");
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

/// `cnnc run FILE ARGS...` with stdout going to `stdout`; returns the exit
/// code and stderr.
fn run_to(file: &Path, args: &[&str], stdout: std::process::Stdio) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .arg("run")
        .arg(file)
        .args(args)
        .current_dir(root())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cnnc starts")
        .wait_with_output()
        .expect("cnnc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn closed_or_full_stdout_never_panics() {
    let dir = dir("pipe");
    let file = write_run_file(&dir, "epochs: 1\n");
    assert_eq!(run(&file, &[]).0, 0);
    // A reader that has gone (`| head -1`): a quiet exit 0. The read end is
    // closed before cnnc writes: it is dropped as soon as the child starts.
    for format in ["text", "json"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(["run", &file.display().to_string(), "--set", "mode=predict"])
            .args(["--format", format])
            .current_dir(root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
    }
    // A full disk: an error message and exit 1, no panic.
    if Path::new("/dev/full").exists() {
        for args in [&["--set", "mode=predict"][..], &["--set", "epochs=1"][..]] {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let (code, stderr) = run_to(&file, args, full.into());
            assert_eq!(code, 1, "{stderr}");
            assert!(
                stderr.contains("cannot write to standard output"),
                "{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        // Training saved the checkpoint before its output failed.
        assert!(dir.join("tiny.safetensors").is_file());
    }
}

#[test]
fn predict_reports_softmax_of_logits_for_models_without_softmax() {
    let dir = dir("logits");
    let file = write_run_file(&dir, "epochs: 1\n");
    std::fs::write(
        dir.join("tiny.cnn"),
        "model tiny { input [28, 28, 1] flatten dense(10) }\n",
    )
    .unwrap();
    assert_eq!(run(&file, &[]).0, 0);
    let out = cnnc(&[
        "run",
        &file.display().to_string(),
        "--set",
        "mode=predict",
        "--set",
        "predict.count=4",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 4);
    for prediction in predictions {
        let p: Vec<f64> = prediction["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // softmax: every entry in [0, 1], summing to 1; the reported
        // probability is the largest.
        assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)), "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
        let max = p.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(prediction["probability"].as_f64().unwrap(), max);
    }
}

#[test]
fn outputs_may_not_overwrite_inputs_or_folders() {
    let dir = dir("clobber");
    let spec_before = "model tiny { input [28, 28, 1] flatten dense(10, activation=softmax) }\n";
    // `checkpoint:` is line 10 of the run file.
    let file = write_run_file(&dir, "");
    let text = std::fs::read_to_string(&file).unwrap();
    let in_file = |from: &str, to: &str| {
        std::fs::write(&file, text.replace(from, to)).unwrap();
    };
    in_file("checkpoint: tiny.safetensors", "checkpoint: tiny.cnn");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`checkpoint`") && stderr.contains("the spec"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:10:1", file.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("tiny.cnn")).unwrap(),
        spec_before
    );

    in_file("checkpoint: tiny.safetensors", "checkpoint: run.yaml");
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("the run file"), "{stderr}");

    let labels = sample("t10k-labels-idx1-ubyte.gz");
    std::fs::write(
        &file,
        format!(
            "{}history: h.json\n",
            text.replace("tiny.safetensors", "h.json")
        ),
    )
    .unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`history` and `checkpoint` are the same file"),
        "{stderr}"
    );

    std::fs::write(&file, format!("{text}history: h.txt\n")).unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(".json or .csv"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:11:1", file.display())),
        "{stderr}"
    );

    // With --set, the override is named instead of a line.
    std::fs::write(&file, &text).unwrap();
    let (code, stderr) = run(&file, &["--set", &format!("checkpoint={labels}")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`data.test_labels`"), "{stderr}");
    assert!(
        stderr.contains(&format!("--set checkpoint={labels}")),
        "{stderr}"
    );

    // Folders: the checkpoint itself or the temporary file it is written through.
    std::fs::create_dir_all(dir.join("tiny.safetensors.tmp")).unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("tiny.safetensors.tmp") && stderr.contains("folder"),
        "{stderr}"
    );
    std::fs::remove_dir(dir.join("tiny.safetensors.tmp")).unwrap();
    in_file(
        "checkpoint: tiny.safetensors",
        "checkpoint: run.yaml/tiny.safetensors",
    );
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot create the folder"), "{stderr}");
}

#[test]
fn epochs_zero_is_rejected_and_keeps_the_checkpoint() {
    let dir = dir("epochs0");
    let file = write_run_file(&dir, "epochs: 0\n");
    std::fs::write(dir.join("tiny.safetensors"), b"trained weights").unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:11:1", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("epochs"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("tiny.safetensors")).unwrap(),
        b"trained weights"
    );
}

#[test]
fn empty_data_sets_name_the_key() {
    let dir = dir("empty");
    let file = write_run_file(&dir, "");
    let text = std::fs::read_to_string(&file).unwrap();
    // `train_limit: 64` is on line 7; add `test_limit: 0` as line 8.
    std::fs::write(
        &file,
        text.replace("  validation_split", "  test_limit: 0\n  validation_split"),
    )
    .unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`data.test_limit` is 0"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:8:3", file.display())),
        "{stderr}"
    );
    assert!(
        !dir.join("tiny.safetensors").exists(),
        "nothing was trained"
    );

    std::fs::write(&file, &text).unwrap();
    let (code, stderr) = run(&file, &["--set", "data.train_limit=0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`data.train_limit` is 0"), "{stderr}");
    assert!(stderr.contains("--set data.train_limit=0"), "{stderr}");
}

#[test]
fn semantic_errors_point_at_the_line() {
    let dir = dir("semantic");
    for (extra, location, words) in [
        (
            "optimizer:\n  name: sgd\n  learning_rate: -1\n",
            "13:3",
            "learning_rate",
        ),
        (
            "optimizer: { name: sgd, momentum: 1.5 }\n",
            "11:25",
            "[0, 1)",
        ),
    ] {
        let file = write_run_file(&dir, extra);
        let (code, stderr) = run(&file, &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{}:{location}", file.display())),
            "{stderr}"
        );
        assert!(stderr.contains(words), "{stderr}");
        assert!(!stderr.contains("--set"), "{stderr}");
    }
    // `batch_size: 16` is line 9.
    let file = write_run_file(&dir, "");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("batch_size: 16", "batch_size: 0")).unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("batch_size must be at least 1"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:9:1", file.display())),
        "{stderr}"
    );
    // One class name for a 10-class model, given in the file.
    let file = write_run_file(&dir, "");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("  train_limit", "  class_names: [a]\n  train_limit"),
    )
    .unwrap();
    let (code, stderr) = run(&file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("has 1 name but") && stderr.contains("10 classes"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:7:3", file.display())),
        "{stderr}"
    );
}

#[test]
fn type_errors_use_words_and_blame_the_right_place() {
    let dir = dir("words");
    let file = write_run_file(&dir, "epochs: 2\nseed: -1\n");
    // In the file, with an unrelated --set: located, no --set claimed.
    for args in [&[][..], &["--set", "mode=train"][..]] {
        let (code, stderr) = run(&file, args);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{}:12:7", file.display())),
            "{stderr}"
        );
        assert!(stderr.contains("a whole number >= 0"), "{stderr}");
        assert!(
            !stderr.contains("u64") && !stderr.contains("--set"),
            "{stderr}"
        );
    }
    // From a --set: only that one is named.
    let file = write_run_file(&dir, "");
    let (code, stderr) = run(&file, &["--set", "mode=train", "--set", "epochs=-1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("(with --set epochs=-1)"), "{stderr}");
    assert!(
        !stderr.contains("mode=train") && !stderr.contains("usize"),
        "{stderr}"
    );
    // Empty values and wrong shapes in words.
    for (extra, words) in [
        ("epochs:\n", "an empty value"),
        (
            "optimizer: {name: sgd, learning_rate: x}\n",
            "expected a number",
        ),
        ("predict: [a]\n", "expected a mapping"),
    ] {
        let file = write_run_file(&dir, extra);
        let (code, stderr) = run(&file, &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(words), "{extra}: {stderr}");
        for rust in ["usize", "f32", "unit value", "struct ", "internally tagged"] {
            assert!(!stderr.contains(rust), "{extra}: {stderr}");
        }
    }
}

#[test]
fn bare_optimizer_names_are_accepted() {
    let dir = dir("bare");
    let file = write_run_file(&dir, "optimizer: adam\nepochs: 1\n");
    let out = cnnc(&["run", &file.display().to_string(), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bare name means Keras's defaults: Adam(learning_rate=0.001).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Adam(learning_rate=0.001)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_cnn_spec_is_not_a_run_file() {
    let out = cnnc(&["run", "specs/fashion_mnist.cnn"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("looks like a .cnn spec"), "{stderr}");
    assert!(stderr.contains("specs/fashion_mnist.yaml"), "{stderr}");
}

#[test]
fn set_exit_codes_follow_the_file_rules() {
    let dir = dir("setcodes");
    let file = write_run_file(&dir, "epochs: 2\n");
    // Malformed syntax: 2.
    for bad in ["epochs", "=1", "epochs=[1"] {
        assert_eq!(run(&file, &["--set", bad]).0, 2, "{bad}");
    }
    // Well-formed, naming a field that does not exist: 1, as in the file.
    for unknown in ["epochs.x=1", "nope=1", "data.nope=1"] {
        let (code, stderr) = run(&file, &["--set", unknown]);
        assert_eq!(code, 1, "{unknown}: {stderr}");
    }
}

#[test]
fn bad_inputs_are_described_in_words() {
    let dir = dir("words-data");
    let file = write_run_file(&dir, "epochs: 1\n");
    assert_eq!(run(&file, &[]).0, 0);
    // A text file named .png.
    std::fs::write(dir.join("fake.png"), "hello there\n").unwrap();
    let inputs = format!("predict.inputs=[{}]", dir.join("fake.png").display());
    let (code, stderr) = run(&file, &["--set", "mode=predict", "--set", &inputs]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not a PNG file (it starts with"),
        "{stderr}"
    );
    assert!(!stderr.contains("magic"), "{stderr}");
    // A checkpoint that is not safetensors: 8 bytes of 'x' announce a header
    // of 0x7878787878787878 bytes, over safetensors' 100 MB limit.
    std::fs::write(dir.join("bad.safetensors"), "xxxxxxxxxxxxxxxx").unwrap();
    let checkpoint = format!("checkpoint={}", dir.join("bad.safetensors").display());
    let (code, stderr) = run(&file, &["--set", "mode=evaluate", "--set", &checkpoint]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not a safetensors file or truncated: header too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("HeaderTooLarge"), "{stderr}");
}
