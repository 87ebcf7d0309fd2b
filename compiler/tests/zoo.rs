//! The model zoo (`specs/zoo/`) against `keras.applications`: every variant
//! is checked through the compiler (imports included) and compared with the
//! reference data that `tests/zoo_reference/keras_zoo.py` wrote from Keras
//! 3.15 / TensorFlow 2.21 (`weights=None`):
//! (a) total, trainable and non-trainable parameters equal the issue-3 table;
//! (b) every layer's name, class, output shape, parameter counts, inbound
//!     layers and arguments (filters, kernel size, strides, padding, bias,
//!     activation, batch norm epsilon and momentum, ...) equal Keras's;
//! (c) a snapshot of the per-layer output shapes.
//! The examples (`specs/examples/`) are checked against hand-derived totals.

use cnnc_compiler::model::{Activation, LayerKind, Model, Padding};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;

fn specs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

/// Checks `specs/<path>` with its imports; panics with the rendered
/// diagnostics if it does not check.
fn check(path: &str) -> Model {
    let file = specs_dir().join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    let (sources, result) = cnnc_compiler::check_file(&file, &text);
    match result {
        Ok(model) => model,
        Err(diags) => panic!("{path} does not check:\n{}", sources.render(&diags, false)),
    }
}

/// Checks a spec written to a temporary file (imports by absolute path).
fn check_text(stem: &str, text: &str) -> Model {
    let dir = std::env::temp_dir().join(format!("cnnc-zoo-test-{stem}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{stem}.cnn"));
    std::fs::write(&file, text).unwrap();
    let (sources, result) = cnnc_compiler::check_file(&file, text);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|d| panic!("{}", sources.render(&d, false)))
}

/// `tests/zoo_reference/<name>.json`.
fn reference(name: &str) -> Value {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/zoo_reference")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file:?}: {e}"))
}

/// One zoo variant and its expected totals.
struct Variant {
    /// Spec path under `specs/`.
    spec: &'static str,
    /// Reference file stem under `tests/zoo_reference/`.
    reference: &'static str,
    input: [usize; 3],
    total: usize,
    trainable: usize,
    non_trainable: usize,
    output: &'static [usize],
    /// Whether the layers come in Keras's `model.layers` order. The specs list
    /// layers in the order the Keras source creates them; Keras 3's
    /// `Functional` lists them by depth, which moves each shortcut branch
    /// (ResNet's `_0_conv`/`_0_bn`, Xception's strided 1x1 conv and its batch
    /// norm) in among the main path's layers of the same depth.
    keras_order: bool,
}

// Classifier heads, for the include_top=false totals: global average pooling
// (ResNet50, Xception, MobileNetV2) or flatten + fc1 + fc2 (VGG16), then
// `predictions`, a dense layer of 1000 units: inputs * units + units.
const fn dense(inputs: usize, units: usize) -> usize {
    inputs * units + units
}

// Issue 3's table (Keras's model.summary() totals).
const RESNET50: usize = 25_636_712;
const XCEPTION: usize = 22_910_480;
const MOBILENET_V2: usize = 3_538_984;
const VGG16: usize = 138_357_544;

const VARIANTS: &[Variant] = &[
    Variant {
        spec: "zoo/resnet50.cnn",
        reference: "resnet50",
        input: [224, 224, 3],
        total: RESNET50,
        trainable: 25_583_592,
        non_trainable: 53_120,
        output: &[1000],
        keras_order: false,
    },
    Variant {
        spec: "zoo/resnet50_notop.cnn",
        reference: "resnet50_notop",
        input: [224, 224, 3],
        total: RESNET50 - dense(2048, 1000), // 23,587,712
        trainable: 23_534_592,
        non_trainable: 53_120,
        output: &[7, 7, 2048],
        keras_order: false,
    },
    Variant {
        spec: "zoo/xception.cnn",
        reference: "xception",
        input: [299, 299, 3],
        total: XCEPTION,
        trainable: 22_855_952,
        non_trainable: 54_528,
        output: &[1000],
        keras_order: false,
    },
    Variant {
        spec: "zoo/xception_notop.cnn",
        reference: "xception_notop",
        input: [299, 299, 3],
        total: XCEPTION - dense(2048, 1000), // 20,861,480
        trainable: 20_806_952,
        non_trainable: 54_528,
        output: &[10, 10, 2048],
        keras_order: false,
    },
    Variant {
        spec: "zoo/mobilenet_v2.cnn",
        reference: "mobilenet_v2",
        input: [224, 224, 3],
        total: MOBILENET_V2,
        trainable: 3_504_872,
        non_trainable: 34_112,
        output: &[1000],
        keras_order: true,
    },
    Variant {
        spec: "zoo/mobilenet_v2_notop.cnn",
        reference: "mobilenet_v2_notop",
        input: [224, 224, 3],
        total: MOBILENET_V2 - dense(1280, 1000), // 2,257,984
        trainable: 3_504_872 - dense(1280, 1000),
        non_trainable: 34_112,
        output: &[7, 7, 1280],
        keras_order: true,
    },
    Variant {
        spec: "zoo/vgg16.cnn",
        reference: "vgg16",
        input: [224, 224, 3],
        total: VGG16,
        trainable: VGG16,
        non_trainable: 0,
        output: &[1000],
        keras_order: true,
    },
    Variant {
        spec: "zoo/vgg16_notop.cnn",
        reference: "vgg16_notop",
        input: [224, 224, 3],
        // 14,714,688
        total: VGG16 - dense(7 * 7 * 512, 4096) - dense(4096, 4096) - dense(4096, 1000),
        trainable: VGG16 - dense(7 * 7 * 512, 4096) - dense(4096, 4096) - dense(4096, 1000),
        non_trainable: 0,
        output: &[7, 7, 512],
        keras_order: true,
    },
];

fn variant(spec: &str) -> &'static Variant {
    VARIANTS
        .iter()
        .find(|v| v.spec == spec)
        .expect("known variant")
}

/// (a) The totals, input and output shapes equal the table, and Keras's
/// reference data agrees with the table too.
fn assert_totals(v: &Variant, model: &Model, keras: &Value) {
    assert_eq!(keras["total_params"], v.total, "{}: Keras total", v.spec);
    assert_eq!(
        keras["trainable_params"], v.trainable,
        "{}: Keras trainable",
        v.spec
    );
    assert_eq!(
        keras["non_trainable_params"], v.non_trainable,
        "{}: Keras non-trainable",
        v.spec
    );
    assert_eq!(model.input_shape, v.input, "{}: input shape", v.spec);
    assert_eq!(model.total_params(), v.total, "{}: total params", v.spec);
    assert_eq!(
        model.trainable_params(),
        v.trainable,
        "{}: trainable params",
        v.spec
    );
    assert_eq!(
        model.non_trainable_params(),
        v.non_trainable,
        "{}: non-trainable",
        v.spec
    );
    assert_eq!(model.outputs.len(), 1, "{}: one output", v.spec);
    assert_eq!(model.output_shape(), v.output, "{}: output shape", v.spec);
}

/// The Keras `get_config()` entries that a cnnc layer kind determines, under
/// Keras's keys (only those `keras_zoo.py` records).
fn keras_config(kind: &LayerKind, keras_class: &str) -> Map<String, Value> {
    let pad = |p: Padding| match p {
        Padding::Same => "same",
        Padding::Valid => "valid",
    };
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match kind {
        LayerKind::Conv2d {
            filters,
            kernel_size,
            strides,
            padding,
            dilation_rate,
            activation,
            use_bias,
        }
        | LayerKind::Conv2dTranspose {
            filters,
            kernel_size,
            strides,
            padding,
            dilation_rate,
            activation,
            use_bias,
            ..
        } => {
            put("filters", json!(filters));
            put("kernel_size", json!(kernel_size));
            put("strides", json!(strides));
            put("padding", json!(pad(*padding)));
            put("dilation_rate", json!(dilation_rate));
            put("activation", json!(activation.name()));
            put("use_bias", json!(use_bias));
        }
        LayerKind::DepthwiseConv2d {
            kernel_size,
            strides,
            padding,
            depth_multiplier,
            dilation_rate,
            activation,
            use_bias,
        } => {
            put("kernel_size", json!(kernel_size));
            put("strides", json!(strides));
            put("padding", json!(pad(*padding)));
            put("depth_multiplier", json!(depth_multiplier));
            put("dilation_rate", json!(dilation_rate));
            put("activation", json!(activation.name()));
            put("use_bias", json!(use_bias));
        }
        LayerKind::SeparableConv2d {
            filters,
            kernel_size,
            strides,
            padding,
            depth_multiplier,
            dilation_rate,
            activation,
            use_bias,
        } => {
            put("filters", json!(filters));
            put("kernel_size", json!(kernel_size));
            put("strides", json!(strides));
            put("padding", json!(pad(*padding)));
            put("depth_multiplier", json!(depth_multiplier));
            put("dilation_rate", json!(dilation_rate));
            put("activation", json!(activation.name()));
            put("use_bias", json!(use_bias));
        }
        LayerKind::BatchNormalization {
            momentum,
            epsilon,
            center,
            scale,
        } => {
            put("momentum", json!(momentum));
            put("epsilon", json!(epsilon));
            put("center", json!(center));
            put("scale", json!(scale));
        }
        LayerKind::MaxPool2d {
            pool_size,
            strides,
            padding,
        }
        | LayerKind::AvgPool2d {
            pool_size,
            strides,
            padding,
        } => {
            put("pool_size", json!(pool_size));
            put("strides", json!(strides));
            put("padding", json!(pad(*padding)));
        }
        LayerKind::Dense {
            units,
            activation,
            use_bias,
        } => {
            put("units", json!(units));
            put("activation", json!(activation.name()));
            put("use_bias", json!(use_bias));
        }
        LayerKind::Activation { activation } => {
            if keras_class == "ReLU" && *activation == Activation::Relu6 {
                put("max_value", json!(6.0));
            } else {
                put("activation", json!(activation.name()));
            }
        }
        LayerKind::ZeroPadding2d { padding } => {
            put(
                "padding",
                json!([[padding.top, padding.bottom], [padding.left, padding.right]]),
            );
        }
        _ => {}
    }
    m
}

/// Equal JSON values, floats within a relative 1e-6 (f32 arguments against
/// Keras's Python floats).
fn same_value(ours: &Value, keras: &Value) -> bool {
    match (ours.as_f64(), keras.as_f64()) {
        (Some(a), Some(b)) if ours.is_f64() || keras.is_f64() => {
            (a - b).abs() <= 1e-6 * b.abs().max(1e-30)
        }
        _ => ours == keras,
    }
}

/// Keras's class for a cnnc layer, where the language has no layer of the
/// exact Keras class: cnnc's `relu6` is Keras `Activation("relu6")`, while
/// keras.applications.MobileNetV2 writes `ReLU(6.0)` (the same function, no
/// weights). Only that pair is accepted as equal.
fn same_class(ours: &LayerKind, keras_class: &str) -> bool {
    ours.keras_class() == keras_class
        || (keras_class == "ReLU"
            && *ours
                == LayerKind::Activation {
                    activation: Activation::Relu6,
                })
}

/// (b) Per layer: the same names (Keras's `InputLayer` aside), and for each
/// the class, output shape, parameter counts, inbound layers and arguments.
/// Collects every difference, then fails with the list.
fn assert_layers_match(v: &Variant, model: &Model, keras: &Value) {
    let rows = keras["layers"].as_array().expect("layers");
    let ours: HashMap<&str, usize> = model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let mut diffs = Vec::new();
    if rows.len() != model.layers.len() {
        diffs.push(format!(
            "{} layers in Keras, {} here",
            rows.len(),
            model.layers.len()
        ));
    }
    for row in rows {
        let name = row["name"].as_str().expect("name");
        let Some(&i) = ours.get(name) else {
            diffs.push(format!("{name}: missing"));
            continue;
        };
        let layer = &model.layers[i];
        let class = row["class"].as_str().expect("class");
        if !same_class(&layer.kind, class) {
            diffs.push(format!(
                "{name}: class {}, Keras {class}",
                layer.kind.keras_class()
            ));
        }
        if json!(layer.output_shape) != row["output_shape"] {
            diffs.push(format!(
                "{name}: output shape {:?}, Keras {}",
                layer.output_shape, row["output_shape"]
            ));
        }
        if json!(layer.params) != row["params"] {
            diffs.push(format!(
                "{name}: {} params, Keras {}",
                layer.params, row["params"]
            ));
        }
        if json!(layer.trainable_params) != row["trainable_params"] {
            diffs.push(format!(
                "{name}: {} trainable params, Keras {}",
                layer.trainable_params, row["trainable_params"]
            ));
        }
        if json!(layer.inputs) != row["inbound"] {
            diffs.push(format!(
                "{name}: reads {:?}, Keras {}",
                layer.inputs, row["inbound"]
            ));
        }
        for (key, value) in keras_config(&layer.kind, class) {
            match row["config"].get(&key) {
                Some(k) if same_value(&value, k) => {}
                k => diffs.push(format!("{name}: {key} = {value}, Keras {k:?}")),
            }
        }
    }
    let keras_names: std::collections::HashSet<&str> =
        rows.iter().filter_map(|r| r["name"].as_str()).collect();
    for l in &model.layers {
        if !keras_names.contains(l.name.as_str()) {
            diffs.push(format!("{}: not in Keras", l.name));
        }
    }
    if v.keras_order {
        let order: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
        let ours: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
        if order != ours {
            diffs.push("layers not in Keras's order".to_string());
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differs from Keras:\n  {}",
        v.spec,
        diffs.join("\n  ")
    );
}

/// Every layer comes after the layers it reads (the model's contract).
fn assert_topological(model: &Model) {
    let mut seen: std::collections::HashSet<&str> =
        model.inputs.iter().map(|i| i.name.as_str()).collect();
    for l in &model.layers {
        for input in &l.inputs {
            assert!(
                seen.contains(input.as_str()),
                "{} reads {input} before it is made",
                l.name
            );
        }
        seen.insert(&l.name);
    }
}

/// (c) One line per layer: name, Keras class, output shape.
fn shapes_text(model: &Model) -> String {
    let fmt = |dims: &[cnnc_compiler::model::Dim]| {
        let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", parts.join(", "))
    };
    let mut out = format!(
        "{} input {}, {} layers, {} params ({} trainable)\n",
        model.name,
        fmt(&model.input_shape),
        model.layers.len(),
        model.total_params(),
        model.trainable_params()
    );
    for l in &model.layers {
        out += &format!(
            "{:<28} {:<22} {}\n",
            l.name,
            l.kind.keras_class(),
            fmt(&l.output_shape)
        );
    }
    out
}

fn zoo_variant(spec: &str) {
    let v = variant(spec);
    let model = check(v.spec);
    let keras = reference(v.reference);
    assert_totals(v, &model, &keras);
    assert_topological(&model);
    assert_layers_match(v, &model, &keras);
    insta::assert_snapshot!(format!("{}_shapes", v.reference), shapes_text(&model));
}

#[test]
fn resnet50() {
    zoo_variant("zoo/resnet50.cnn");
}

#[test]
fn resnet50_notop() {
    zoo_variant("zoo/resnet50_notop.cnn");
}

#[test]
fn xception() {
    zoo_variant("zoo/xception.cnn");
}

#[test]
fn xception_notop() {
    zoo_variant("zoo/xception_notop.cnn");
}

#[test]
fn mobilenet_v2() {
    zoo_variant("zoo/mobilenet_v2.cnn");
}

#[test]
fn mobilenet_v2_notop() {
    zoo_variant("zoo/mobilenet_v2_notop.cnn");
}

#[test]
fn vgg16() {
    zoo_variant("zoo/vgg16.cnn");
}

#[test]
fn vgg16_notop() {
    zoo_variant("zoo/vgg16_notop.cnn");
}

/// ResNet-50 is written with blocks: the spec stays short.
#[test]
fn resnet50_spec_is_short() {
    let text = std::fs::read_to_string(specs_dir().join("zoo/resnet50.cnn")).unwrap();
    assert!(text.lines().count() < 100, "{} lines", text.lines().count());
}

/// The zoo models take Keras's `classes`: ResNet-50 for 10 classes has the
/// base's 23,587,712 params plus 2048 * 10 + 10 in `predictions`.
#[test]
fn resnet50_classes() {
    let resnet = specs_dir().join("zoo/resnet50.cnn");
    let text = format!(
        "import \"{}\"\nmodel resnet50_10 {{\n  input [224, 224, 3]\n  resnet50(classes=10)\n}}\n",
        resnet.display()
    );
    let model = check_text("classes", &text);
    assert_eq!(model.output_shape(), [10]);
    assert_eq!(
        model.total_params(),
        RESNET50 - dense(2048, 1000) + dense(2048, 10)
    );
}

/// Xception without top plus two dense heads on its global average pooling
/// (Géron ch. 14): 20,861,480 + (2048 * 5 + 5) + (2048 * 4 + 4) params, of
/// which the base's 54,528 batch-norm moving statistics are not trained.
#[test]
fn classification_localization() {
    let model = check("examples/classification_localization.cnn");
    assert_eq!(model.input_shape, [224, 224, 3]);
    assert_eq!(model.outputs, ["class", "box"]);
    assert_eq!(model.shape_of("class").unwrap(), [5]);
    assert_eq!(model.shape_of("box").unwrap(), [4]);
    // 224 -> 111 -> 109 -> 55 -> 28 -> 14 -> 7 through the strided stages.
    assert_eq!(
        model.shape_of("block14_sepconv2_act").unwrap(),
        [7, 7, 2048]
    );
    let heads = dense(2048, 5) + dense(2048, 4);
    assert_eq!(model.total_params(), XCEPTION - dense(2048, 1000) + heads);
    assert_eq!(model.total_params(), 20_879_921);
    assert_eq!(model.non_trainable_params(), 54_528);
    for head in ["class", "box"] {
        let l = model.layers.iter().find(|l| l.name == head).unwrap();
        assert_eq!(l.inputs, ["avg"], "{head} reads the pooled features");
    }
}

/// The example as its comment suggests for the first phase of transfer
/// learning (Géron ch. 14): `xception(include_top=false, trainable=false)`
/// freezes the whole base, as Keras's `base_model.trainable = False`, so only
/// the two heads train: (2048 * 5 + 5) + (2048 * 4 + 4) = 18,441 params.
#[test]
fn classification_localization_frozen_base() {
    let example = specs_dir().join("examples/classification_localization.cnn");
    let text = std::fs::read_to_string(&example).unwrap();
    let xception = specs_dir().join("zoo/xception.cnn");
    let frozen = text
        .replace(
            "import \"../zoo/xception.cnn\"",
            &format!("import \"{}\"", xception.display()),
        )
        .replace(
            "xception(include_top=false)",
            "xception(include_top=false, trainable=false)",
        );
    assert!(frozen.contains("trainable=false") && !frozen.contains("../zoo"));
    let model = check_text("frozen", &frozen);
    let heads = dense(2048, 5) + dense(2048, 4);
    assert_eq!(model.trainable_params(), heads);
    assert_eq!(model.trainable_params(), 18_441);
    assert_eq!(model.non_trainable_params(), XCEPTION - dense(2048, 1000));
    // Every layer of the base is frozen, parameters or not; the pooling and
    // the heads, written in the example itself, are not.
    for l in &model.layers {
        let own = ["avg", "class", "box"].contains(&l.name.as_str());
        assert_eq!(l.trainable, own, "{}", l.name);
        if !own {
            assert_eq!(l.trainable_params, 0, "{}", l.name);
        }
    }
}

/// Conv k x k: k * k * in * filters + filters; transposed conv the same with
/// in and filters swapped in the kernel (same count).
const fn conv(k: usize, inputs: usize, filters: usize) -> usize {
    k * k * inputs * filters + filters
}

/// The small FCN: back to 128 x 128 with a softmax over 5 classes per pixel.
#[test]
fn fcn() {
    let model = check("examples/fcn.cnn");
    assert_eq!(model.input_shape, [128, 128, 3]);
    assert_eq!(model.output_shape(), [128, 128, 5]);
    let expected = conv(3, 3, 32)
        + conv(3, 32, 32)
        + conv(3, 32, 64)
        + conv(3, 64, 64)
        + conv(3, 64, 128)
        + conv(3, 128, 128)
        + conv(3, 128, 64) // conv2d_transpose(64, 3): kernel [3, 3, 64, 128]
        + conv(3, 64, 32) // conv2d_transpose(32, 3)
        + conv(1, 32, 5);
    assert_eq!(model.total_params(), expected);
    assert_eq!(model.total_params(), 379_429);
    let last = model.layers.last().unwrap();
    assert_eq!(
        last.kind,
        LayerKind::Conv2d {
            filters: 5,
            kernel_size: [1, 1],
            strides: [1, 1],
            padding: Padding::Valid,
            dilation_rate: [1, 1],
            activation: Activation::Softmax,
            use_bias: true,
        }
    );
    let joins: Vec<_> = model
        .layers
        .iter()
        .filter(|l| l.kind == LayerKind::Add)
        .map(|l| {
            (
                l.inputs.len(),
                cnnc_compiler::model::known_shape(&l.output_shape).unwrap(),
            )
        })
        .collect();
    assert_eq!(joins, [(2, vec![64, 64, 64]), (2, vec![128, 128, 32])]);
}
