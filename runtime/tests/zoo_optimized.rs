//! Optimized and unoptimized graphs of every zoo model compute the same
//! outputs (to 1e-4 relative): the passes (conv + bias + activation fusion,
//! dropout elimination) must not change what the network computes. Each
//! model is imported at a small resolution (a model called like a block
//! takes the size of its input), with random weights, biases and batch-norm
//! statistics so that every fused bias and activation matters.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::{lower, passes};
use cnnc_runtime::executor::{Executor, Mode};
use graph_support::{params_for, tensor};
use std::path::PathBuf;

/// Checks `spec` (which imports from specs/zoo), runs the raw and the
/// inference-optimized graph on one batch, and compares the outputs.
fn agree(name: &str, spec: &str, input: &[usize]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs/zoo");
    // The spec lives next to the zoo for its import, under a unique name.
    let path = std::env::temp_dir().join(format!("cnnc-zoo-opt-{}-{name}.cnn", std::process::id()));
    let spec = spec.replace("ZOO", &dir.display().to_string());
    std::fs::write(&path, &spec).unwrap();
    let (sources, checked) = cnnc_compiler::check_file(&path, &spec);
    std::fs::remove_file(&path).ok();
    let model = match checked {
        Ok(m) => m,
        Err(d) => panic!("{name}: {}", sources.render(&d, false)),
    };
    let raw = lower::try_lower(&model).unwrap();
    let (optimized, rewrites) = passes::optimize(raw.clone(), passes::Target::Inference);
    assert!(!rewrites.is_empty(), "{name}: nothing was optimized");
    assert!(optimized.nodes.len() < raw.nodes.len(), "{name}");
    let params = params_for(&raw, 11);
    let x = tensor(input, 12);
    let a = Executor::new(raw)
        .try_forward(&params, &x, Mode::Inference)
        .unwrap();
    let b = Executor::new(optimized)
        .try_forward(&params, &x, Mode::Inference)
        .unwrap();
    assert_eq!(a.shape(), b.shape(), "{name}");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    assert!(
        diff <= 1e-4 * scale,
        "{name}: max |raw - optimized| = {diff}, max |raw| = {scale}"
    );
}

#[test]
fn resnet50() {
    agree(
        "resnet50",
        "import \"ZOO/resnet50.cnn\"\nmodel r { input [64, 64, 3]\n resnet50(classes=10) }\n",
        &[2, 64, 64, 3],
    );
}

#[test]
fn xception() {
    agree(
        "xception",
        "import \"ZOO/xception.cnn\"\nmodel x { input [80, 80, 3]\n xception(classes=10) }\n",
        &[1, 80, 80, 3],
    );
}

#[test]
fn mobilenet_v2() {
    agree(
        "mobilenet_v2",
        "import \"ZOO/mobilenet_v2.cnn\"\nmodel m { input [64, 64, 3]\n mobilenet_v2(classes=10) }\n",
        &[2, 64, 64, 3],
    );
}

#[test]
fn vgg16_without_top() {
    agree(
        "vgg16",
        "import \"ZOO/vgg16.cnn\"\nmodel v { input [64, 64, 3]\n vgg16(include_top=false)\n global_average_pooling2d\n dense(10, activation=softmax) }\n",
        &[2, 64, 64, 3],
    );
}

#[test]
fn fcn_example() {
    let fcn = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs/examples/fcn.cnn");
    agree(
        "fcn",
        &format!(
            "import \"{}\"\nmodel f {{ input [32, 32, 3]\n fcn(n_classes=4) }}\n",
            fcn.display()
        ),
        &[2, 32, 32, 3],
    );
}
