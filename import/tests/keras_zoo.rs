//! Keras weight files, laid out as the `keras.applications` downloads are
//! (legacy `save_weights` HDF5: `layer_names`, `weight_names`), loaded by
//! layer name into the zoo specs (specs/zoo/*.cnn, which keep Keras's layer
//! names) and run by cnnc's executor, against Keras's own outputs.
//!
//! The files are written by tests/reference/keras/make_zoo_h5.py (random
//! weights with a fixed seed, non-trivial batch-norm statistics; the real
//! downloads need the internet) into the folder `CNNC_KERAS_ZOO_DIR`
//! (default `/work/zoo-h5`; 14 MB to 100 MB each, not in the repository).
//! Each test says SKIPPED when the folder is absent.
//!
//! The input is the script's formula: batch 2, NHWC `[2, 224, 224, 3]`,
//! `x[i] = 0.5 * sin(i * i * 1e-7) + 0.25 * sin(i)` over the row-major flat
//! index, in f64 rounded to f32.

mod common;

use cnnc_compiler::graph::Param;
use cnnc_import::keras::WeightsLayout;
use cnnc_import::load_keras_weights;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use common::*;
use ndarray::IxDyn;
use serde_json::Value as Json;
use std::path::PathBuf;

const BATCH: usize = 2;

/// The folder of the generated files, or `None` (SKIPPED) when it or its
/// `expected.json` is absent.
fn zoo_dir() -> Option<PathBuf> {
    let dir = std::env::var("CNNC_KERAS_ZOO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/work/zoo-h5"));
    locate(
        "the Keras zoo weight files",
        Some(dir.join("expected.json")),
        "run `bench/.venv/bin/python import/tests/reference/keras/make_zoo_h5.py DIR` and \
         set CNNC_KERAS_ZOO_DIR=DIR",
    )
    .map(|p| p.parent().unwrap().to_path_buf())
}

/// The checked zoo spec `specs/zoo/<spec>`, lowered.
fn zoo_graph(spec: &str) -> cnnc_compiler::graph::Graph {
    let path = workspace_dir().join("specs/zoo").join(spec);
    let source = std::fs::read_to_string(&path).unwrap();
    let (_sources, checked) = cnnc_compiler::check_file(&path, &source);
    let model = checked.unwrap_or_else(|d| panic!("{spec} does not check: {d:?}"));
    cnnc_compiler::graph::lower::try_lower(&model).unwrap()
}

/// The script's input: `0.5 * sin(i * i * 1e-7) + 0.25 * sin(i)` for each
/// row-major index `i` of `[2, 224, 224, 3]` (f64, rounded to f32).
fn fixed_input() -> Tensor {
    let shape = [BATCH, 224, 224, 3];
    let data: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| {
            let i = i as f64;
            (0.5 * (i * i * 1e-7).sin() + 0.25 * i.sin()) as f32
        })
        .collect();
    Tensor::from_shape_vec(IxDyn(&shape), data).unwrap()
}

fn record<'a>(expected: &'a Json, file: &str) -> &'a Json {
    let r = &expected["files"][file];
    assert!(r.is_object(), "expected.json has no `{file}`");
    r
}

/// Loads `file` into the zoo spec its record names, runs the batch in
/// inference mode and compares with Keras: returns the max abs diff.
fn check_file(file: &str, tolerance: f32) -> Option<f32> {
    let dir = zoo_dir()?;
    let expected = read_json(&dir.join("expected.json"));
    let r = record(&expected, file);
    let spec = r["spec"].as_str().unwrap();
    let graph = zoo_graph(spec);
    let params: Vec<Param> = graph.params.clone();
    // The spec's totals are Keras's (issue 3).
    let total: usize = params.iter().map(|p| p.len()).sum();
    assert_eq!(total as u64, r["params"].as_u64().unwrap(), "{spec}");

    let loaded = load_keras_weights(&dir.join(file), &params)
        .unwrap_or_else(|e| panic!("{file} into {spec}: {e}"));
    assert_eq!(loaded.layout, WeightsLayout::LegacyWeights, "{file}");
    assert!(
        loaded.unused_layers.is_empty(),
        "{file}: unused {:?}",
        loaded.unused_layers
    );
    let names: Vec<&str> = loaded.tensors.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, want, "{file}");
    let store = ParamStore {
        values: loaded
            .tensors
            .into_iter()
            .map(|t| Tensor::from_shape_vec(IxDyn(&t.dims), t.values).unwrap())
            .collect(),
    };

    let mut executor = Executor::new(graph);
    let input = fixed_input();
    let outputs = executor
        .try_forward_multi(&store, &[&input], Mode::Inference)
        .unwrap();
    let got: Vec<f32> = outputs[0].iter().copied().collect();
    let shape: Vec<usize> = r["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(outputs[0].shape(), &shape[..], "{file}");
    let want: Vec<f32> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let diff = max_abs_diff(&got, &want);
    let per = got.len() / BATCH;
    // top-1 of the classifier outputs (the script records none for feature
    // maps).
    for b in (0..BATCH).filter(|_| !r["top1"].is_null()) {
        let top = argmax(&got[b * per..(b + 1) * per]);
        assert_eq!(
            top as u64,
            r["top1"][b].as_u64().unwrap(),
            "{file}: example {b}"
        );
    }
    let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{file} -> specs/zoo/{spec}: max abs diff vs Keras {diff:e} (largest |output| {largest}), \
         top-1 {}",
        r["top1"]
    );
    assert!(diff <= tolerance, "{file}: max abs diff {diff}");
    Some(diff)
}

#[test]
fn mobilenet_v2_keras_h5_matches_keras() {
    check_file("mobilenet_v2.h5", 1e-4);
}

#[test]
fn mobilenet_v2_keras3_legacy_h5_matches_keras() {
    // Keras 3's own legacy writer: weight names without `:0`, depthwise
    // kernels named `kernel`, plus a `top_level_model_weights` group that
    // is not a layer.
    check_file("mobilenet_v2_k3.h5", 1e-4);
}

#[test]
fn mobilenet_v2_notop_keras_h5_matches_keras() {
    // Features of ReLU6, values in [0, 6], not probabilities: 1e-4 relative
    // to that range (f32 sums through 50-odd layers; measured 1.1e-4).
    check_file("mobilenet_v2_notop.h5", 6e-4);
}

#[test]
fn resnet50_keras_h5_matches_keras() {
    check_file("resnet50.h5", 1e-4);
}

/// The include_top file loads into the `_notop` spec by name: the same
/// tensors for every shared layer, the classifier reported unused.
#[test]
fn include_top_file_loads_into_notop_spec() {
    let Some(dir) = zoo_dir() else {
        return;
    };
    let top = zoo_graph("mobilenet_v2.cnn");
    let notop = zoo_graph("mobilenet_v2_notop.cnn");
    let file = dir.join("mobilenet_v2.h5");
    let full = load_keras_weights(&file, &top.params).unwrap();
    let loaded = load_keras_weights(&file, &notop.params)
        .unwrap_or_else(|e| panic!("include_top file into the notop spec: {e}"));
    assert_eq!(loaded.unused_layers, vec!["predictions".to_string()]);
    assert_eq!(loaded.tensors.len(), notop.params.len());
    // The notop parameters are the top ones less `predictions/kernel`,
    // `predictions/bias`; each gets the same values.
    assert_eq!(loaded.tensors.len() + 2, full.tensors.len());
    for t in &loaded.tensors {
        let same = full
            .tensors
            .iter()
            .find(|f| f.name == t.name)
            .unwrap_or_else(|| panic!("`{}` not in the include_top load", t.name));
        assert_eq!(t, same, "{}", t.name);
    }
}
