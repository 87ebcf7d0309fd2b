//! Optimized and unoptimized graphs of every zoo model compute the same
//! outputs (to 1e-4 relative): the passes (dead-op and identity elimination,
//! dropout elimination, batch-norm folding, conv + bias + activation and
//! residual-add fusion) must not change what the network computes. Each
//! model is imported at a small resolution (a model called like a block
//! takes the size of its input), with random weights, biases and batch-norm
//! statistics so that every fused bias, folded batch norm and activation
//! matters.
//!
//! The optimized graph runs on parameters prepared from the model's own
//! (`InferenceParams::prepare`: folds computed, unread parameters dropped,
//! kernels packed), three ways that must agree exactly: the inference memory
//! plan (`Executor::for_inference`), one buffer per node (`Executor::new`),
//! and prepared parameters without packing over the model's store
//! (`InferenceParams::fold(..).over(..)`).

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::ir::Init;
use cnnc_compiler::graph::{lower, passes};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::{model_param_count, InferenceParams, PrepareOptions};
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
    // The optimized graph's own parameters are the raw graph's, in order.
    assert_eq!(model_param_count(&optimized), raw.params.len(), "{name}");
    let folded = optimized
        .params
        .iter()
        .filter(|p| matches!(p.init, Init::Folded { .. }))
        .count();
    let params = params_for(&raw, 11);
    let x = tensor(input, 12);
    let a = Executor::new(raw)
        .try_forward(&params, &x, Mode::Inference)
        .unwrap();

    let prepared = InferenceParams::prepare(&optimized, params.clone()).unwrap();
    let model_bytes: usize = params.values.iter().map(|t| t.len() * 4).sum();
    // Nothing is held twice: the prepared parameters (folded kernels in place
    // of the originals, batch-norm vectors dropped) are no larger than the
    // model's, up to the packed panels' padding (filters rounded up to 32).
    // Winograd F(2x2, 3x3) kernels (3x3 stride-1 convs on large enough
    // maps) hold 16 values per 9 taps.
    let winograd_extra: usize = optimized
        .params
        .iter()
        .enumerate()
        .filter(|(i, _)| prepared.is_winograd(cnnc_compiler::graph::ir::ParamId(*i)))
        .map(|(_, p)| p.len() * 4 * 7 / 9)
        .sum();
    assert!(
        prepared.bytes() <= model_bytes + model_bytes / 10 + winograd_extra,
        "{name}: prepared {} bytes, model {model_bytes}",
        prepared.bytes()
    );
    let mut planned = Executor::for_inference(optimized.clone());
    let b = planned.try_forward(&prepared, &x, Mode::Inference).unwrap();
    let mut per_node = Executor::new(optimized.clone());
    let c = per_node
        .try_forward(&prepared, &x, Mode::Inference)
        .unwrap();
    assert_eq!(b, c, "{name}: memory plan and per-node buffers differ");
    assert!(
        planned.activation_bytes() < per_node.activation_bytes(),
        "{name}: the plan allocates {} bytes, per node {}",
        planned.activation_bytes(),
        per_node.activation_bytes()
    );
    // Unpacked kernels read from the model's store.
    let folds = InferenceParams::fold(&optimized, &params).unwrap();
    let d = Executor::for_inference(optimized.clone())
        .try_forward(&folds.over(&params), &x, Mode::Inference)
        .unwrap();
    // Unpacked 3x3 stride-1 kernels on maps of 12x12 or more run as
    // Winograd F(2x2, 3x3), packed ones as im2col + GEMM: equal up to rounding.
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = b
        .iter()
        .zip(d.iter())
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        worst <= 1e-4 * scale,
        "{name}: packed and unpacked kernels differ by {worst} (outputs up to {scale})"
    );
    let unpacked = InferenceParams::prepare_with(
        &optimized,
        params.clone(),
        PrepareOptions {
            pack_kernels: false,
        },
    )
    .unwrap();
    let e = planned.try_forward(&unpacked, &x, Mode::Inference).unwrap();
    // Unpacked either way: the same kernels, bit for bit.
    assert_eq!(
        d, e,
        "{name}: unpacked prepared and folded-over-store kernels differ"
    );

    assert_eq!(a.shape(), b.shape(), "{name}");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    assert!(
        diff <= 1e-4 * scale,
        "{name}: max |raw - optimized| = {diff}, max |raw| = {scale} ({folded} folded parameters)"
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
