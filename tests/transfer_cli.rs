//! End-to-end tests of transfer learning with `cnnc run`: an imported
//! ImageNet model classifying photos (top-5, against ONNX Runtime's
//! outputs), pretrained weights loaded by name, training phases that freeze
//! and then unfreeze layers, and image-folder data.

mod common;
use common::{cnnc, root};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn shared(path: &str) -> Option<PathBuf> {
    let p = root().join("..").join("shared").join(path);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent (../shared)", p.display());
        None
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = cnnc(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "cnnc {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("--format json prints one JSON object")
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// ONNX Runtime's logits for the photos (import/tests/reference/
/// mobilenet_v2.json, written by make_reference.py): photo -> (crop file,
/// probabilities).
fn ort_reference() -> BTreeMap<String, (String, Vec<f64>)> {
    let path = root().join("import/tests/reference/mobilenet_v2.json");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rows.iter()
        .map(|r| {
            let logits: Vec<f64> = r["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (
                r["photo"].as_str().unwrap().to_string(),
                (r["crop"].as_str().unwrap().to_string(), softmax(&logits)),
            )
        })
        .collect()
}

#[test]
fn imported_mobilenet_v2_predicts_top5_like_onnx_runtime() {
    let (Some(onnx), Some(_photos)) = (
        shared("models/mobilenet_v2_torchvision.onnx"),
        shared("data/photos"),
    ) else {
        return;
    };
    let dir = temp("transfer-imagenet");
    let out_dir = dir.display().to_string();
    ok(&[
        "import",
        &onnx.display().to_string(),
        "-o",
        &out_dir,
        "--name",
        "mobilenet_v2",
    ]);
    // The committed spec is exactly what `cnnc import` writes.
    assert_eq!(
        std::fs::read_to_string(dir.join("mobilenet_v2.cnn")).unwrap(),
        std::fs::read_to_string(root().join("specs/transfer/mobilenet_v2.cnn")).unwrap()
    );
    let checkpoint = format!(
        "checkpoint={}",
        dir.join("mobilenet_v2.safetensors").display()
    );
    let reference = ort_reference();

    // 1. The torchvision crops (224 x 224, already resized and cropped by
    // PIL): the pipeline's resize is the identity, so cnnc sees ONNX
    // Runtime's input up to float rounding: same probabilities within 1e-5,
    // same top-5 order.
    let crops: Vec<String> = reference
        .values()
        .map(|(crop, _)| {
            root()
                .join("import/tests/reference/crops")
                .join(crop)
                .display()
                .to_string()
        })
        .collect();
    let inputs = format!("predict.inputs=[{}]", crops.join(", "));
    let out = ok(&[
        "run",
        "specs/transfer/imagenet_predict.yaml",
        "--set",
        &checkpoint,
        "--set",
        &inputs,
        "--set",
        "data.resize_shorter=null",
        "--format",
        "json",
    ]);
    let report = json(&out);
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), reference.len());
    for ((photo, (_, expected)), prediction) in reference.iter().zip(predictions) {
        let probabilities: Vec<f64> = prediction["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let diff = probabilities
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-5, "{photo}: max probability difference {diff}");
        let mut order: Vec<usize> = (0..expected.len()).collect();
        order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
        let top: Vec<usize> = prediction["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["class"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top, order[..5], "{photo}");
    }

    // 2. The photos themselves, through the run file's pipeline (shorter
    // side to 256 with cnnc's antialiased bilinear, centre crop 224): the
    // resize differs from PIL's in rounding (PIL rounds to 8 bits), so the
    // probabilities agree less closely; the top class is ONNX Runtime's
    // wherever its lead over the second is clear (not the bus: minibus
    // 46.6% vs police van 44.5%).
    let out = ok(&[
        "run",
        "specs/transfer/imagenet_predict.yaml",
        "--set",
        &checkpoint,
        "--format",
        "json",
    ]);
    let report = json(&out);
    let names: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(shared("models/imagenet_classes.json").unwrap()).unwrap(),
    )
    .unwrap();
    for prediction in report["predictions"].as_array().unwrap() {
        let input = prediction["input"].as_str().unwrap();
        let photo = Path::new(input).file_name().unwrap().to_str().unwrap();
        let (_, expected) = &reference[photo];
        let mut order: Vec<usize> = (0..expected.len()).collect();
        order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
        let ours = prediction["class"].as_u64().unwrap() as usize;
        if expected[order[0]] - expected[order[1]] > 0.05 {
            assert_eq!(ours, order[0], "{photo}");
        } else {
            assert!(order[..2].contains(&ours), "{photo}");
        }
        assert!(
            (prediction["probabilities"][order[0]].as_f64().unwrap() - expected[order[0]]).abs()
                < 0.05,
            "{photo}"
        );
        assert_eq!(prediction["class_name"], names[ours].as_str());
        assert_eq!(prediction["top"].as_array().unwrap().len(), 5);
    }
    // The text output: the input, then five ranked classes with names.
    let out = ok(&[
        "run",
        "specs/transfer/imagenet_predict.yaml",
        "--set",
        &checkpoint,
        "--set",
        "predict.inputs=[../shared/data/photos/coffee.png]",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].ends_with("coffee.png:"), "{text}");
    assert!(lines[1].starts_with("  1. espresso ("), "{text}");
    assert!(lines[5].starts_with("  5. "), "{text}");
}

/// The tensors of a safetensors checkpoint, by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// A tiny transfer-learning setup on the 3-class image-folder fixture:
/// a "base" conv declared frozen, a new head.
const SPEC: &str = r#"model tiny_transfer {
  input [8, 8, 3]
  conv2d(4, 3, padding=same, activation=relu, name="base_conv", trainable=false)
  global_average_pooling2d(name="pool")
  dense(3, activation=softmax, name="head")
}
"#;

fn run_file(dir: &Path) -> PathBuf {
    let spec = dir.join("tiny.cnn");
    std::fs::write(&spec, SPEC).unwrap();
    let fixture = root().join("runtime/tests/fixtures/image_folder");
    let yaml = format!(
        "spec: tiny.cnn\n\
         data:\n  format: folder\n  directory: {}\n  test_split: 0.0\n  validation_split: 0.0\n  preprocess: unit\n\
         optimizer: {{ name: sgd, learning_rate: 0.5, momentum: 0.9 }}\n\
         batch_size: 4\n\
         checkpoint: out.safetensors\n\
         history: history.json\n",
        fixture.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn phases_train_the_head_on_a_frozen_base_then_unfreeze_it() {
    let dir = temp("transfer-phases");
    let run = run_file(&dir).display().to_string();
    let checkpoint = dir.join("out.safetensors");

    // "Pretraining": everything trainable (phase 1 unfreezes the spec's
    // frozen conv).
    ok(&["run", &run, "--set", "phases=[{epochs: 2, unfreeze: all}]"]);
    let pretrained = dir.join("pretrained.safetensors");
    std::fs::rename(&checkpoint, &pretrained).unwrap();
    let weights = format!("weights={}", pretrained.display());
    let a = tensors(&pretrained);

    // Phase 1 alone: the base keeps the pretrained values bit for bit, the
    // head trains.
    let out = ok(&[
        "run",
        &run,
        "--set",
        &weights,
        "--set",
        "phases=[{name: head, epochs: 1}]",
        "--format",
        "json",
    ]);
    let report = json(&out);
    let b = tensors(&checkpoint);
    assert_eq!(b["base_conv/kernel"], a["base_conv/kernel"]);
    assert_eq!(b["base_conv/bias"], a["base_conv/bias"]);
    assert_ne!(b["head/kernel"], a["head/kernel"]);
    // Trainable parameters: the head only, 4 * 3 + 3 = 15.
    assert_eq!(report["phases"][0]["trainable_params"], 15);
    assert_eq!(report["phases"][0]["name"], "head");

    // Both phases: phase 2 unfreezes the base (3*3*3*4 + 4 = 112 more), so
    // it moves; the history numbers the epochs 1, 2 across the phases.
    let out = ok(&[
        "run",
        &run,
        "--set",
        &weights,
        "--set",
        "phases=[{epochs: 1}, {epochs: 1, unfreeze: [base_conv], optimizer: {name: sgd, learning_rate: 0.1}}]",
        "--format",
        "json",
    ]);
    let report = json(&out);
    let c = tensors(&checkpoint);
    assert_ne!(c["base_conv/kernel"], a["base_conv/kernel"]);
    assert_eq!(report["phases"][1]["trainable_params"], 127);
    let rate = report["phases"][1]["optimizer"]["learning_rate"]
        .as_f64()
        .unwrap();
    assert!((rate - 0.1).abs() < 1e-7, "{rate}");
    assert_eq!(report["history"]["epoch"], serde_json::json!([1, 2]));
    assert_eq!(report["examples"]["train"], 8);
    let text = ok(&[
        "run",
        &run,
        "--set",
        &weights,
        "--set",
        "phases=[{epochs: 1}, {epochs: 1, unfreeze_from: base_conv}]",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Phase 1/2 `phase 1`: 1 epoch"), "{text}");
    assert!(text.contains("15 of 127 parameters trainable"), "{text}");
    assert!(text.contains("Phase 2/2 `phase 2`"), "{text}");
    assert!(text.contains("127 of 127 parameters trainable"), "{text}");
    assert!(
        text.contains("Loaded 4 of the model's 4 parameter tensors"),
        "{text}"
    );
}

#[test]
fn phase_and_folder_mistakes_are_located_errors() {
    let dir = temp("transfer-errors");
    let run = run_file(&dir).display().to_string();
    let fails = |sets: &[&str], needle: &str| {
        let mut args = vec!["run", run.as_str()];
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        let out = cnnc(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sets:?}: {stderr}");
        assert!(stderr.contains(needle), "{sets:?}: {stderr}");
    };
    fails(
        &["phases=[{epochs: 1, unfreeze: [base_cnv]}]"],
        "has no layer `base_cnv`; did you mean `base_conv`?",
    );
    fails(&["phases=[{epochs: 1, unfreeze: most}]"], "write `all`");
    fails(&["phases=[{epochs: 0}]"], "phases[0].epochs is 0");
    fails(
        &["phases=[{epochs: 1, unfreeze: all, unfreeze_from: base_conv}]"],
        "sets both `unfreeze` and `unfreeze_from`",
    );
    fails(&["phases=[{epochs: 1, freeze: none}]"], "freeze is `none`");
    fails(
        &["data.resize_shorter=4"],
        "data.resize_shorter is 4, smaller than the 8 x 8 crop",
    );
    fails(
        &["phases=[{epochs: 1}]", "epochs=3"],
        "`epochs` and `phases`",
    );
    fails(&["data.validation_split=100"], "not a count");
    fails(
        &["data.format=idx"],
        "`data.directory` is for image folders, but data.format is idx",
    );
    fails(
        &["data.image_size=[16, 16]"],
        "the model takes [8, 8] images",
    );
    fails(
        &["data.augment={random_crop: true}"],
        "set data.resize_shorter",
    );
    // A checkpoint of another model: a short summary naming `weights`.
    let other = dir.join("other.cnn");
    std::fs::write(
        &other,
        "model other {\n  input [8, 8, 3]\n  flatten\n  dense(3, name=\"fc\")\n}\n",
    )
    .unwrap();
    let other_yaml = dir.join("other.yaml");
    std::fs::write(
        &other_yaml,
        std::fs::read_to_string(dir.join("run.yaml"))
            .unwrap()
            .replace("spec: tiny.cnn", "spec: other.cnn")
            .replace("out.safetensors", "other.safetensors"),
    )
    .unwrap();
    ok(&[
        "run",
        &other_yaml.display().to_string(),
        "--set",
        "epochs=1",
    ]);
    let foreign = format!("weights={}", dir.join("other.safetensors").display());
    fails(&[foreign.as_str()], "weights: none of the 2 tensors of");
    // Not a checkpoint (the run file itself): exit 1, naming it.
    let not_weights = format!("weights={}", dir.join("run.yaml").display());
    fails(&[not_weights.as_str()], "cannot read checkpoint");
    // A model whose output does not match the folder's class count.
    std::fs::write(dir.join("tiny.cnn"), SPEC.replace("dense(3,", "dense(5,")).unwrap();
    fails(
        &[],
        "has 3 class folders (Zebra, ant, bee) but the model has 5 outputs",
    );
}

#[test]
fn folder_evaluate_and_predict_use_the_same_split() {
    let dir = temp("transfer-eval");
    let run = run_file(&dir).display().to_string();
    // Hold out floor(0.4 * n) images per class for the test: ant 3 -> 1,
    // bee 2 -> 0, Zebra 3 -> 1. A validation fraction of 0.1 rounds down to
    // nothing for 2-3 images per class: a warning.
    let trained = ok(&[
        "run",
        &run,
        "--set",
        "data.test_split=0.4",
        "--set",
        "data.validation_split=0.1",
        "--set",
        "epochs=1",
    ]);
    let text = String::from_utf8_lossy(&trained.stdout);
    assert!(
        text.contains("warning: the validation part is empty"),
        "{text}"
    );
    assert!(!text.contains("warning: the test part"), "{text}");
    let out = ok(&[
        "run",
        &run,
        "--set",
        "data.test_split=0.4",
        "--set",
        "mode=evaluate",
        "--format",
        "json",
    ]);
    assert_eq!(json(&out)["examples"], 2);
    let out = ok(&[
        "run",
        &run,
        "--set",
        "data.test_split=0.4",
        "--set",
        "mode=predict",
        "--format",
        "json",
    ]);
    let report = json(&out);
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    // Labels come with the test images; class names are the folder names.
    assert_eq!(
        report["class_names"],
        serde_json::json!(["Zebra", "ant", "bee"])
    );
    for p in predictions {
        assert!(p["label"].is_u64());
    }
}
