//! The graph form, blocks, imports and the layers added with them: shapes
//! and parameter counts are asserted from the formulas in Keras's
//! documentation (worked out by hand in the comments), never from output.

use cnnc_compiler::model::{LayerKind, Model};
use cnnc_compiler::{check_file, check_source};
use std::path::PathBuf;

fn ok(src: &str) -> Model {
    match check_source(src) {
        Ok(m) => m,
        Err(d) => panic!("{src}\n{d:#?}"),
    }
}

fn codes(src: &str) -> Vec<&'static str> {
    match check_source(src) {
        Ok(_) => panic!("should not check:\n{src}"),
        Err(d) => d.iter().map(|d| d.code).collect(),
    }
}

fn layer<'m>(m: &'m Model, name: &str) -> &'m cnnc_compiler::model::Layer {
    m.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn residual_block_with_parameters_and_names() {
    let m = ok(r#"
block bottleneck(filters, strides=1, name="b") {
  shortcut = input -> conv2d(filters * 4, 1, strides=strides, name="{name}_0_conv")
  input -> conv2d(filters, 1, strides=strides, name="{name}_1_conv") -> relu
  conv2d(filters * 4, 3, padding=same, name="{name}_2_conv")
  add(shortcut, name="{name}_add")
}
model m {
  input [56, 56, 64]
  bottleneck(16, strides=2, name="s1")
}
"#);
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "s1_0_conv",
            "s1_1_conv",
            "activation",
            "s1_2_conv",
            "s1_add"
        ]
    );
    // 1x1 conv 64 -> 64 filters: 64*64 + 64 = 4,160; strided: 56 -> 28.
    assert_eq!(layer(&m, "s1_0_conv").params, 4_160);
    assert_eq!(layer(&m, "s1_0_conv").output_shape, [28, 28, 64]);
    // 1x1 conv 64 -> 16: 64*16 + 16 = 1,040.
    assert_eq!(layer(&m, "s1_1_conv").params, 1_040);
    // 3x3 conv 16 -> 64: 9*16*64 + 64 = 9,280.
    assert_eq!(layer(&m, "s1_2_conv").params, 9_280);
    assert_eq!(layer(&m, "s1_add").inputs, ["s1_2_conv", "s1_0_conv"]);
    assert_eq!(layer(&m, "s1_0_conv").inputs, ["input"]);
    assert_eq!(layer(&m, "s1_1_conv").inputs, ["input"]);
    assert_eq!(m.outputs, ["s1_add"]);
    assert!(!m.is_chain());
}

#[test]
fn set_trainable_matches_a_spec_written_frozen_or_not() {
    // Unfreezing a layer declared `trainable=false` must give the counts the
    // checker gives the same layer declared trainable, and back.
    let layers = "conv2d(8, 3, name=\"c\")\n batch_normalization(name=\"bn\")\n batch_normalization(center=false, name=\"bn2\")";
    let frozen_src = format!(
        "model m {{\n input [8, 8, 4]\n {}\n}}\n",
        layers.replace("\")", "\", trainable=false)")
    );
    let trainable = ok(&format!("model m {{\n input [8, 8, 4]\n {layers}\n}}\n"));
    let mut m = ok(&frozen_src);
    assert_eq!(m.trainable_params(), 0);
    for layer in &mut m.layers {
        layer.set_trainable(true);
    }
    // conv 3*3*4*8 + 8 = 296; bn 2*8 trainable (+16 moving); bn2 8 (+16).
    assert_eq!(m.trainable_params(), 296 + 16 + 8);
    for (a, b) in m.layers.iter().zip(&trainable.layers) {
        assert_eq!(
            (a.trainable, a.trainable_params),
            (b.trainable, b.trainable_params)
        );
    }
    for layer in &mut m.layers {
        layer.set_trainable(false);
    }
    assert_eq!(m.trainable_params(), 0);
    assert_eq!(m.total_params(), trainable.total_params());
}

#[test]
fn batch_normalization_counts_moving_statistics_as_non_trainable() {
    let m = ok("model m {\n input [8, 8, 32]\n batch_normalization\n batch_normalization(center=false)\n batch_normalization(scale=false, center=false)\n}\n");
    // Keras: 4 * 32 = 128 params, 64 of them (moving mean, variance) non-trainable.
    assert_eq!(m.layers[0].params, 128);
    assert_eq!(m.layers[0].trainable_params, 64);
    assert_eq!(m.layers[1].params, 96);
    assert_eq!(m.layers[1].trainable_params, 32);
    assert_eq!(m.layers[2].params, 64);
    assert_eq!(m.layers[2].trainable_params, 0);
    assert_eq!(m.total_params(), 288);
    assert_eq!(m.non_trainable_params(), 192);
    match m.layers[0].kind {
        LayerKind::BatchNormalization {
            momentum,
            epsilon,
            center,
            scale,
        } => {
            assert_eq!((momentum, epsilon, center, scale), (0.99, 1e-3, true, true));
        }
        ref k => panic!("{k:?}"),
    }
    assert_eq!(
        codes("model m {\n input [8, 8, 4]\n batch_normalization(axis=1)\n}\n"),
        ["E0005"]
    );
    // Keras's NHWC channel axis is 3 (axis 0 is the batch).
    ok("model m {\n input [8, 8, 4]\n batch_normalization(axis=3)\n}\n");
    ok("model m {\n input [16]\n batch_normalization(axis=1)\n}\n");
    assert_eq!(
        codes("model m {\n input [8, 8, 4]\n batch_normalization(momentum=1.5)\n}\n"),
        ["E0005"]
    );
}

#[test]
fn depthwise_separable_and_dilated_convolutions() {
    let m = ok("model m {
  input [15, 15, 8]
  depthwise_conv2d(3, strides=2, padding=same, depth_multiplier=2)
  separable_conv2d(32, 3, padding=same, use_bias=false)
  conv2d(4, 3, dilation_rate=2)
}");
    // Depthwise: ceil(15 / 2) = 8; 3*3*8*2 + 16 = 160 params; 16 channels.
    assert_eq!(m.layers[0].output_shape, [8, 8, 16]);
    assert_eq!(m.layers[0].params, 160);
    // FLOPs: 2 * 8*8 * 16 * 3*3 = 18,432.
    assert_eq!(m.layers[0].flops, 18_432);
    // Separable: 3*3*16 + 16*32 = 656 params without bias.
    assert_eq!(m.layers[1].params, 656);
    // FLOPs: 2*8*8*(16*9) + 2*8*8*16*32 = 18,432 + 65,536.
    assert_eq!(m.layers[1].flops, 83_968);
    // Dilated 3x3 with rate 2 covers 5x5: valid gives 8 - 5 + 1 = 4.
    assert_eq!(m.layers[2].output_shape, [4, 4, 4]);
    assert_eq!(m.layers[2].params, 3 * 3 * 32 * 4 + 4);
    assert_eq!(
        codes("model m {\n input [8, 8, 4]\n conv2d(4, 3, strides=2, dilation_rate=2)\n}\n"),
        ["E0005"]
    );
}

#[test]
fn transposed_convolution_output_sizes_follow_keras() {
    let m = ok("model m {
  input [7, 7, 16]
  conv2d_transpose(8, 3, strides=2, padding=same)
  conv2d_transpose(4, 3, strides=2, padding=valid)
  conv2d_transpose(2, 3, strides=2, padding=same, output_padding=1)
  conv2d_transpose(2, 4, strides=2, padding=valid, output_padding=1)
}");
    // same: 7 * 2 = 14.
    assert_eq!(m.layers[0].output_shape, [14, 14, 8]);
    // Kernel [3, 3, filters, in] = 3*3*8*16 + 8 = 1,160.
    assert_eq!(m.layers[0].params, 1_160);
    // valid: 14 * 2 + max(3 - 2, 0) = 29.
    assert_eq!(m.layers[1].output_shape, [29, 29, 4]);
    // same with output_padding 1: (29 - 1) * 2 + 3 - 2 * 1 + 1 = 58.
    assert_eq!(m.layers[2].output_shape, [58, 58, 2]);
    // valid with output_padding 1: (58 - 1) * 2 + 4 + 1 = 119.
    assert_eq!(m.layers[3].output_shape, [119, 119, 2]);
    // TF's crop for `same`, 7 -> 14 with k=3, s=2: full (7-1)*2+3 = 15, total 1, top 0.
    let pads = m.layers[0].pads.unwrap();
    assert_eq!((pads.top, pads.bottom), (0, 1));
    assert_eq!(
        codes("model m {\n input [4, 4, 2]\n conv2d_transpose(2, 3, strides=2, output_padding=2)\n}\n"),
        ["E0005"]
    );
}

#[test]
fn up_sampling_reshape_and_joins() {
    let m = ok("model m {
  input [4, 6, 3]
  a = up_sampling2d(2)
  b = input -> up_sampling2d((2, 1)) -> up_sampling2d((1, 2))
  c = concatenate(a, b)
  d = multiply(a, b)
  e = c -> flatten -> reshape([-1, 12])
  output c, d, e
}");
    assert_eq!(layer(&m, "up_sampling2d").output_shape, [8, 12, 3]);
    assert_eq!(layer(&m, "concatenate").output_shape, [8, 12, 6]);
    assert_eq!(layer(&m, "multiply").output_shape, [8, 12, 3]);
    // 8 * 12 * 6 = 576 values = 48 x 12.
    assert_eq!(layer(&m, "reshape").output_shape, [48, 12]);
    assert_eq!(m.outputs, ["concatenate", "multiply", "reshape"]);
    // Keras numbering: axis 0 is the batch, 1 the height: widths and
    // channels must agree.
    let cat = |extra: &str, axis: &str| {
        format!("model m {{\n input [4, 6, 3]\n a = conv2d({extra}, 1)\n concatenate(input, a, axis={axis})\n}}\n")
    };
    let m = ok(&cat("3", "1"));
    assert_eq!(m.layers[1].output_shape, [8, 6, 3]);
    assert_eq!(m.layers[1].kind, LayerKind::Concatenate { axis: 0 });
    assert_eq!(ok(&cat("3", "2")).layers[1].output_shape, [4, 12, 3]);
    assert_eq!(ok(&cat("5", "3")).layers[1].output_shape, [4, 6, 8]);
    assert_eq!(ok(&cat("5", "-1")).layers[1].output_shape, [4, 6, 8]);
    assert_eq!(codes(&cat("5", "1")), ["E0023"]);
    for axis in ["0", "4", "-4"] {
        assert_eq!(codes(&cat("3", axis)), ["E0005"], "axis={axis}");
    }
    assert_eq!(codes("model m {\n input [4, 6, 3]\n add\n}\n"), ["E0024"]);
}

#[test]
fn several_inputs_and_outputs() {
    let m = ok("model two_heads {
  input image [32, 32, 3]
  input meta [4]
  features = image -> conv2d(8, 3) -> global_average_pooling2d
  m = meta -> dense(8)
  joined = concatenate(features, m)
  class = joined -> dense(5, activation=softmax, name=\"class\")
  box = joined -> dense(4, name=\"box\")
  output class, box
}");
    assert_eq!(m.inputs.len(), 2);
    assert_eq!(m.inputs[1].name, "meta");
    assert_eq!(m.inputs[1].shape, [4]);
    assert_eq!(m.outputs, ["class", "box"]);
    assert_eq!(m.shape_of("box").unwrap(), [4]);
    assert_eq!(layer(&m, "concatenate").output_shape, [16]);
    assert_eq!(layer(&m, "dense").inputs, ["meta"]);
}

#[test]
fn repeats_conditions_and_freezing() {
    let m = ok(
        "block unit(f) {\n conv2d(f, 3, padding=same) -> relu\n}\nmodel m(top=true, deep=false) {
  input [8, 8, 2]
  unit(4) * 3
  if deep { unit(4) } else { conv2d(4, 1, trainable=false) }
  if top {
    global_max_pooling2d
    dense(3)
  }
}",
    );
    let convs: Vec<&str> = m
        .layers
        .iter()
        .filter(|l| l.kind.keyword() == "conv2d")
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(convs, ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"]);
    let frozen = layer(&m, "conv2d_3");
    assert!(!frozen.trainable);
    assert_eq!(frozen.trainable_params, 0);
    // 1x1 conv 4 -> 4: 20 params, all non-trainable.
    assert_eq!(m.non_trainable_params(), 20);
    assert_eq!(m.output_shape(), [3]);
    // A frozen block call freezes everything inside it.
    let m = ok("block unit(f) {\n conv2d(f, 3) -> batch_normalization\n}\nmodel m {\n input [8, 8, 2]\n unit(4, trainable=false)\n dense_head()\n}\nblock dense_head() {\n flatten\n dense(2)\n}\n");
    assert!(m.layers[..2].iter().all(|l| !l.trainable));
    assert_eq!(m.trainable_params(), 6 * 6 * 4 * 2 + 2);
}

#[test]
fn imported_model_without_its_top() {
    let dir = std::env::temp_dir().join(format!("cnnc-graph-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("zoo")).unwrap();
    std::fs::write(
        dir.join("zoo/base.cnn"),
        "block stage(f) {\n conv2d(f, 3, strides=2) -> relu\n}\nmodel base(include_top=true) {\n input [32, 32, 3]\n stage(8)\n stage(16)\n if include_top {\n  global_average_pooling2d\n  dense(10, activation=softmax)\n }\n}\n",
    )
    .unwrap();
    let main = dir.join("transfer.cnn");
    let src = "import \"zoo/base.cnn\"\nmodel transfer {\n input [64, 64, 3]\n base(include_top=false, trainable=false)\n global_average_pooling2d\n dense(5, activation=softmax)\n}\n";
    std::fs::write(&main, src).unwrap();
    let (_, checked) = check_file(&main, src);
    let m = checked.unwrap();
    // Base without top on 64x64: floor((64 - 3) / 2) + 1 = 31, then 15; its
    // own input shape is not used.
    assert_eq!(m.layers[0].output_shape, [31, 31, 8]);
    assert_eq!(m.layers[2].output_shape, [15, 15, 16]);
    // Frozen base: 3*3*3*8+8 = 224 and 3*3*8*16+16 = 1,168; head 16*5+5 = 85.
    assert_eq!(m.non_trainable_params(), 224 + 1_168);
    assert_eq!(m.trainable_params(), 85);
    // An error inside the imported file names that file and the call site.
    let bad = "import \"zoo/base.cnn\"\nmodel t {\n input [2, 2, 3]\n base(include_top=false)\n}\n";
    std::fs::write(&main, bad).unwrap();
    let (sources, checked) = check_file(&main, bad);
    let diags = checked.unwrap_err();
    assert_eq!(diags[0].code, "E0006");
    let text = sources.render(&diags, false);
    assert!(text.contains("base.cnn:2:"), "{text}");
    assert!(text.contains("transfer.cnn:4:2"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn expansion_errors() {
    assert_eq!(
        codes("block b(f) {\n conv2d(f / 0, 1)\n}\nmodel m {\n input [4, 4, 1]\n b(4)\n}\n"),
        ["E0022"]
    );
    assert_eq!(
        codes("model m(top=1) {\n input [4, 4, 1]\n if top { flatten }\n}\n"),
        ["E0022"]
    );
    assert_eq!(
        codes("model m {\n input [4, 4, 1]\n flatten * 0\n}\n"),
        ["E0022"]
    );
    assert_eq!(
        codes("model m {\n input [4, 4, 1]\n x = flatten\n x -> dense(2)\n y -> dense(2)\n}\n"),
        ["E0020"]
    );
    assert_eq!(
        codes("block b() {\n input [4, 4, 1]\n}\nmodel m {\n input [4, 4, 1]\n b\n}\n"),
        ["E0024"]
    );
    assert_eq!(
        codes("block a() {\n b\n}\nblock b() {\n a\n}\nmodel m {\n input [4, 4, 1]\n a\n}\n"),
        ["E0025"]
    );
    assert_eq!(codes("model m {\n input [4, 4, 1]\n flatten\n}\nblock flatten2() { flatten }\nblock flatten2() { flatten }\n"), ["E0021"]);
    // Imports need a file.
    assert_eq!(
        codes("import \"x.cnn\"\nmodel m {\n input [4, 4, 1]\n flatten\n}\n"),
        ["E0019"]
    );
}

#[test]
fn the_shipped_bad_lib_is_only_blocks() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs/bad/lib/blocks.cnn");
    let src = std::fs::read_to_string(&path).unwrap();
    let (_, checked) = check_file(&path, &src);
    assert_eq!(checked.unwrap_err()[0].code, "E0024");
}

#[test]
fn unknown_spatial_sizes_flow_through_a_fully_convolutional_model() {
    let m = ok("model fcn {
  input [?, ?, 3]
  enc = conv2d(16, 3, padding=same, activation=relu)
  max_pool2d(2)
  conv2d(32, 3, strides=2, padding=same)
  conv2d_transpose(16, 3, strides=2, padding=same)
  up_sampling2d(2)
  add(enc)
  concatenate(enc)
  zero_padding2d(1)
  conv2d(4, 3, activation=softmax)
}");
    use cnnc_compiler::model::Dim;
    let unknown = Dim::UNKNOWN;
    assert_eq!(m.input_shape, vec![unknown, unknown, Dim::from(3)]);
    for l in &m.layers {
        assert_eq!(l.output_shape[..2], [unknown, unknown], "{}", l.name);
    }
    assert_eq!(layer(&m, "concatenate").output_shape[2], 32);
    // Parameters do not depend on the size: 3*3*3*16 + 16 = 448, ...
    assert_eq!(layer(&m, "conv2d").params, 448);
    // FLOPs do: unknown, counted 0; the model cannot be lowered as is.
    assert_eq!(layer(&m, "conv2d").flops, 0);
    assert!(!m.is_fully_known());
    assert!(matches!(
        cnnc_compiler::graph::lower::try_lower(&m),
        Err(cnnc_compiler::graph::lower::LowerError::UnknownSize(_))
    ));
    let text = cnnc_compiler::summary::render_text(&m);
    assert!(text.contains("(None, None, None, 16)"), "{text}");
    assert!(
        text.contains("FLOPs per image (forward): unknown"),
        "{text}"
    );
    let json = cnnc_compiler::summary::to_json(&m);
    assert_eq!(
        json["input_shape"],
        serde_json::json!([null, null, null, 3])
    );
    assert_eq!(json["flops"], serde_json::Value::Null);
    // `same` padding depends on the size: left to lowering; `valid` pads nothing.
    assert_eq!(layer(&m, "conv2d").pads, None);
    assert_eq!(layer(&m, "conv2d_2").pads, Some(Default::default()));
}

#[test]
fn global_pooling_removes_unknown_sizes_and_flatten_cannot() {
    let m = ok(
        "model m {\n input [?, 32, 3]\n conv2d(8, 3)\n global_average_pooling2d\n dense(10)\n}\n",
    );
    // Height unknown, width known: valid 3x3 gives [?, 30, 8].
    assert_eq!(m.layers[0].output_shape[1], 30);
    assert!(!m.layers[0].output_shape[0].is_known());
    assert_eq!(m.layers[2].output_shape, [10]);
    assert_eq!(m.layers[2].params, 8 * 10 + 10);
    // flatten of an unknown size feeding dense: located error.
    let src = "model m {\n input [?, ?, 3]\n conv2d(8, 3)\n flatten\n dense(10)\n}\n";
    let diags = check_source(src).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, "E0027");
    let dense_at = src.find("dense").unwrap();
    assert_eq!(diags[0].primary_span().start, dense_at);
    assert!(diags[0]
        .help
        .as_deref()
        .unwrap()
        .contains("global_average_pooling2d"));
    // `?` only for height and width; reshape needs a known size; joins of
    // known sizes still have to agree.
    assert_eq!(
        codes("model m {\n input [?, ?, ?]\n flatten\n}\n"),
        ["E0016"]
    );
    assert_eq!(codes("model m {\n input [?]\n flatten\n}\n"), ["E0016"]);
    assert_eq!(
        codes("model m {\n input [4, 4, 1]\n conv2d(?, 3)\n}\n"),
        ["E0004"]
    );
    assert_eq!(
        codes("model m {\n input [?, ?, 1]\n reshape([-1])\n}\n"),
        ["E0027"]
    );
    assert_eq!(
        codes("model m {\n input [?, 8, 1]\n a = conv2d(4, 3)\n b = input -> conv2d(4, 1)\n add(a, b)\n}\n"),
        ["E0023"]
    );
    // A valid window larger than a known axis is still an error with `?` elsewhere.
    assert_eq!(
        codes("model m {\n input [?, 2, 1]\n conv2d(4, 3)\n}\n"),
        ["E0006"]
    );
}

#[test]
fn layers_no_output_depends_on_are_left_out_as_keras_does() {
    // b3 is never joined: Keras's Model(inputs, outputs) leaves it out.
    let m = ok("model m {
  input [8, 8, 3]
  b1 = conv2d(8, 1)
  b2 = input -> conv2d(8, 3, padding=same)
  b3 = input -> conv2d(8, 5, padding=same)
  concatenate(b1, b2)
  global_average_pooling2d
  dense(2)
}");
    // b1: 3*8 + 8 = 32; b2: 9*3*8 + 8 = 224; dense: 16*2 + 2 = 34.
    assert_eq!(m.total_params(), 290);
    assert!(m.layers.iter().all(|l| l.name != "conv2d_2"));
    // The names are still given in order, as Keras names layers when they are created.
    assert_eq!(m.layers[2].name, "concatenate");
}

#[test]
fn review_findings_get_precise_messages() {
    // A misspelt parameter inside a block body.
    let d = check_source("block cb(filters, strides=1) {\n conv2d(filter, 3, strides=strides)\n}\nmodel m {\n input [8, 8, 1]\n cb(4)\n}\n").unwrap_err();
    assert_eq!(d[0].code, "E0022");
    assert_eq!(d[0].help.as_deref(), Some("did you mean `filters`?"));
    assert_eq!(d.len(), 1);
    // Python's `False` for a model parameter points at the value.
    let src = "model m(top=False) {\n input [8]\n if top { dense(2) } else { dense(3) }\n}\n";
    let d = check_source(src).unwrap_err();
    assert_eq!(d[0].code, "E0022");
    assert_eq!(d[0].primary_span().start, src.find("False").unwrap());
    assert_eq!(
        d[0].help.as_deref(),
        Some("write it in lower case: `top=false`")
    );
    // Values that look like parameters are not flagged (`same` next to `name`...).
    ok("block b(name, size) {\n conv2d(4, 3, padding=same, name=name)\n}\nmodel m {\n input [8, 8, 1]\n b(\"x\", 3)\n}\n");
}
