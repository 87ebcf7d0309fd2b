//! Graph models written in the spec language, end to end: every zoo model
//! and example (`specs/zoo`, `specs/examples`) is checked, lowered and
//! validated by the executor (every node's shape and parameter shape agree
//! with the checker's), with the parameter totals of the checked model; and
//! a small graph spec (blocks, joins, batch norm, separable / transposed
//! convolution, upsampling, reshape, freezing, two outputs) runs forward and
//! backward, with gradients checked by finite differences.

mod graph_support;
mod kernels_support;

use cnnc_compiler::graph::{lower, passes, Graph};
use cnnc_compiler::model::Model;
use cnnc_runtime::executor::{Executor, Mode};
use graph_support::*;
use std::path::{Path, PathBuf};

fn check(path: &Path) -> Model {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let (sources, result) = cnnc_compiler::check_file(path, &text);
    match result {
        Ok(model) => model,
        Err(diags) => panic!(
            "{path:?} does not check:\n{}",
            sources.render(&diags, false)
        ),
    }
}

/// The raw, training and inference graphs of `model`, each validated.
fn validated_graphs(model: &Model, what: &str) -> [Graph; 3] {
    let raw = lower::try_lower(model).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (training, _) = passes::optimize(raw.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(raw.clone(), passes::Target::Inference);
    for (g, kind) in [
        (&raw, "raw"),
        (&training, "training"),
        (&inference, "inference"),
    ] {
        if let Err(e) = Executor::new(g.clone()).validate() {
            panic!("{what} ({kind} graph): {e}");
        }
    }
    [raw, training, inference]
}

fn trainable_count(g: &Graph) -> usize {
    g.params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.len())
        .sum()
}

#[test]
fn zoo_and_examples_lower_to_valid_graphs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs");
    let mut checked = 0;
    for dir in ["zoo", "examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cnn"))
            .collect();
        paths.sort();
        for path in paths {
            let model = check(&path);
            let what = path.display().to_string();
            let [raw, training, inference] = validated_graphs(&model, &what);
            assert_eq!(
                raw.param_count(),
                model.total_params(),
                "{what}: total params"
            );
            assert_eq!(
                trainable_count(&raw),
                model.trainable_params(),
                "{what}: trainable"
            );
            // The passes keep the model's parameters (inference folding only
            // appends `Init::Folded` ones after them).
            assert_eq!(training.params, raw.params, "{what}");
            assert_eq!(
                cnnc_runtime::params::model_params(&inference),
                raw.params.as_slice(),
                "{what}"
            );
            assert_eq!(raw.output_ids().len(), model.outputs.len().max(1), "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} specs found");
}

const SMALL: &str = r#"
block conv_bn(filters, name) {
  conv2d(filters, 3, padding=same, name="{name}_conv")
  batch_normalization(name="{name}_bn") -> relu
}

model small {
  input image [8, 8, 2]
  input gate [4, 4, 6]
  stem = conv_bn(4, name="stem")                         # 8 x 8 x 4
  x = stem -> separable_conv2d(6, 3, strides=2, padding=same, depth_multiplier=2)   # 4 x 4 x 6
  y = x -> batch_normalization(center=false) -> tanh
  g = multiply(y, gate)
  s = add(g, x, y)
  up = s -> conv2d_transpose(4, 3, strides=2, padding=same, trainable=false)       # 8 x 8 x 4
  cat = concatenate(up, stem)                            # 8 x 8 x 8
  z = cat -> up_sampling2d(2, interpolation=bilinear) -> depthwise_conv2d(3, strides=2, padding=same, dilation_rate=1)
  head = z -> global_average_pooling2d -> dense(3, activation=softmax, name="head")
  aux = z -> reshape([16, 32]) -> flatten -> dense(2, name="aux")
  output head, aux
}
"#;

#[test]
fn a_small_graph_spec_trains_end_to_end() {
    let dir = std::env::temp_dir().join(format!("cnnc-graph-specs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("small.cnn");
    std::fs::write(&file, SMALL).unwrap();
    let (sources, result) = cnnc_compiler::check_file(&file, SMALL);
    let _ = std::fs::remove_dir_all(&dir);
    let model = match result {
        Ok(m) => m,
        Err(d) => panic!("{}", sources.render(&d, false)),
    };
    let [raw, training, _] = validated_graphs(&model, "small");
    assert_eq!(raw.input_ids().len(), 2);
    assert_eq!(raw.output_ids().len(), 2);
    // The frozen transposed conv's weights are not trainable.
    for p in &raw.params {
        let frozen = p.name.starts_with("conv2d_transpose");
        let stat = p.name.ends_with("moving_mean") || p.name.ends_with("moving_variance");
        assert_eq!(p.trainable, !(frozen || stat), "{}", p.name);
    }
    let x1 = tensor(&[3, 8, 8, 2], 60);
    let x2 = tensor(&[3, 4, 4, 6], 61);
    for g in [&raw, &training] {
        let params = params_for(g, 62);
        let grads = check_dag_grads(
            g,
            &params,
            &[x1.clone(), x2.clone()],
            Mode::Train { seed: 3 },
            1e-3,
            6,
            5e-2,
            5e-3,
        );
        assert_eq!(grads.len(), g.params.len());
    }
}
