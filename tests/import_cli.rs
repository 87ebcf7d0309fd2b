//! End-to-end tests of `cnnc import`: the written spec builds with cnnc's
//! own checker, and each kind of bad input has its exit code and message.
//! (Numerical parity with ONNX Runtime is tested in import/tests/.)

mod common;
use common::cnnc;
use std::path::Path;

#[test]
fn imported_spec_and_checkpoint_are_written_and_build() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("import-flatten-gemm");
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.display().to_string();
    let out = cnnc(&[
        "import",
        "import/tests/reference/models/flatten_gemm.onnx",
        "-o",
        &out_dir,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = dir.join("flatten_gemm.cnn");
    assert!(spec.is_file());
    assert!(dir.join("flatten_gemm.safetensors").is_file());
    let built = cnnc(&["build", &spec.display().to_string(), "--format", "json"]);
    assert_eq!(built.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    // The parameters the import reports are the ones the spec declares.
    let reported = String::from_utf8_lossy(&out.stdout).to_string();
    let total = summary["total_params"].as_u64().unwrap();
    assert!(total > 0);
    assert!(
        reported.contains(&format!("{total} parameters")),
        "{reported}"
    );
}

#[test]
fn bad_inputs_have_their_exit_codes() {
    // An op cnnc cannot express: exit 1, naming it.
    let out = cnnc(&[
        "import",
        "import/tests/reference/models/unsupported_lrn.onnx",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LRN"));
    // Not an ONNX model: exit 1.
    let out = cnnc(&["import", "README.md"]);
    assert_eq!(out.status.code(), Some(1));
    // A missing file, and `-o` naming a file: usage errors.
    let out = cnnc(&["import", "no/such/model.onnx"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cnnc(&[
        "import",
        "import/tests/reference/models/flatten_gemm.onnx",
        "-o",
        "README.md",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file"));
}

#[test]
fn keras_h5_models_are_imported() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("import-keras-small");
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.display().to_string();
    let out = cnnc(&[
        "import",
        "import/tests/reference/keras/small_full.h5",
        "-o",
        &out_dir,
        "--name",
        "small",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = dir.join("small.cnn");
    assert!(dir.join("small.safetensors").is_file());
    let built = cnnc(&["build", &spec.display().to_string(), "--format", "json"]);
    assert_eq!(built.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    // Keras 3.15 counts 2,857 parameters for this model (see
    // import/tests/reference/keras/make_keras_reference.py).
    assert_eq!(summary["total_params"].as_u64(), Some(2857));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2857 parameters"));

    // A weights-only file has no architecture: exit 1, saying so.
    let out = cnnc(&[
        "import",
        "import/tests/reference/keras/small_weights.h5",
        "-o",
        &out_dir,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model_config"));
}
