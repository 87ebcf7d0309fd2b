//! The Keras layers `relu6` / `elu` / `leaky_relu`, `global_average_pooling2d`,
//! `global_max_pooling2d` and `zero_padding2d`: argument defaults, shapes,
//! parameter and FLOP counts (derived by hand below), names, errors, lowering
//! and fusion.

use cnnc_compiler::graph::lower::lower;
use cnnc_compiler::graph::passes::{optimize, Target};
use cnnc_compiler::graph::Op;
use cnnc_compiler::model::{Activation, LayerKind, Model, Pads2d};
use cnnc_compiler::{check_source, summary};

fn model(input: &str, body: &str) -> Result<Model, Vec<cnnc_compiler::Diagnostic>> {
    check_source(&format!("model m {{\n  input {input}\n{body}\n}}\n"))
}

fn codes(input: &str, body: &str) -> Vec<&'static str> {
    match model(input, body) {
        Ok(_) => vec![],
        Err(ds) => ds.iter().map(|d| d.code).collect(),
    }
}

fn act(m: &Model, i: usize) -> Activation {
    match &m.layers[i].kind {
        LayerKind::Activation { activation } => *activation,
        LayerKind::Conv2d { activation, .. } | LayerKind::Dense { activation, .. } => *activation,
        other => panic!("layer {i} has no activation: {other:?}"),
    }
}

fn pads(top: usize, bottom: usize, left: usize, right: usize) -> Pads2d {
    Pads2d {
        top,
        bottom,
        left,
        right,
    }
}

#[test]
fn activation_defaults_follow_keras() {
    let m = model(
        "[8]",
        "dense(4, activation=leaky_relu)\ndense(4, activation=elu)\ndense(4, activation=relu6)\n\
         leaky_relu\nleaky_relu(0.1)\nleaky_relu(negative_slope=0)\nelu\nelu(alpha=0.5)\nrelu6\n\
         activation(leaky_relu)",
    )
    .unwrap();
    let slope = |s: f32| Activation::LeakyRelu { negative_slope: s };
    // keras.activations.leaky_relu: 0.2; keras.layers.LeakyReLU: 0.3.
    assert_eq!(act(&m, 0), slope(0.2));
    assert_eq!(act(&m, 1), Activation::Elu { alpha: 1.0 });
    assert_eq!(act(&m, 2), Activation::Relu6);
    assert_eq!(act(&m, 3), slope(0.3));
    assert_eq!(act(&m, 4), slope(0.1));
    assert_eq!(act(&m, 5), slope(0.0));
    assert_eq!(act(&m, 6), Activation::Elu { alpha: 1.0 });
    assert_eq!(act(&m, 7), Activation::Elu { alpha: 0.5 });
    assert_eq!(act(&m, 8), Activation::Relu6);
    assert_eq!(act(&m, 9), slope(0.2));
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "dense",
            "dense_1",
            "dense_2",
            "leaky_re_lu",
            "leaky_re_lu_1",
            "leaky_re_lu_2",
            "elu",
            "elu_1",
            "activation",
            "activation_1",
        ]
    );
    // Activations keep the shape and have no parameters or FLOPs.
    for l in &m.layers[3..] {
        assert_eq!(l.output_shape, [4]);
        assert_eq!((l.params, l.flops), (0, 0));
    }
}

#[test]
fn global_pooling_shapes() {
    // Non-square [5, 7, 3] -> [3]; no parameters, no FLOPs.
    for (kw, class) in [
        ("global_average_pooling2d", "GlobalAveragePooling2D"),
        ("global_max_pooling2d", "GlobalMaxPooling2D"),
    ] {
        let m = model("[5, 7, 3]", &format!("{kw}\ndense(2)")).unwrap();
        let l = &m.layers[0];
        assert_eq!(l.name, kw);
        assert_eq!(l.kind.keras_class(), class);
        assert_eq!(l.kind.keyword(), kw);
        assert_eq!(l.output_shape, vec![3]);
        assert_eq!((l.params, l.flops), (0, 0));
        // dense after global pooling: 3 * 2 + 2 params.
        assert_eq!(m.total_params(), 8);
    }
    let m = model("[6, 6, 4]", "global_max_pooling2d()\nglobal_max_pooling2d").err();
    // A second global pooling sees a flat [4] input: an image is required.
    assert_eq!(m.unwrap()[0].code, "E0015");
}

#[test]
fn zero_padding_forms() {
    let cases: [(&str, Pads2d, [usize; 3]); 5] = [
        ("zero_padding2d", pads(1, 1, 1, 1), [7, 9, 2]),
        ("zero_padding2d(2)", pads(2, 2, 2, 2), [9, 11, 2]),
        ("zero_padding2d((1, 3))", pads(1, 1, 3, 3), [7, 13, 2]),
        (
            "zero_padding2d(padding=((0, 2), (3, 1)))",
            pads(0, 2, 3, 1),
            [7, 11, 2],
        ),
        ("zero_padding2d(0)", pads(0, 0, 0, 0), [5, 7, 2]),
    ];
    for (line, p, out) in cases {
        let m = model("[5, 7, 2]", line).unwrap();
        let l = &m.layers[0];
        assert_eq!(l.kind, LayerKind::ZeroPadding2d { padding: p }, "{line}");
        assert_eq!(l.pads, Some(p));
        assert_eq!(l.output_shape, out.to_vec(), "{line}");
        assert_eq!((l.params, l.flops), (0, 0));
        assert_eq!(l.kind.keras_class(), "ZeroPadding2D");
    }
    // Padding feeds the next layer's shape: 3x3 valid conv on [7, 9] -> [5, 7].
    let m = model("[5, 7, 2]", "zero_padding2d\nconv2d(4, 3)").unwrap();
    assert_eq!(m.layers[1].output_shape, vec![5, 7, 4]);
}

#[test]
fn argument_errors() {
    let img = "[8, 8, 1]";
    assert_eq!(codes(img, "elu(-1)"), vec!["E0005"]);
    assert_eq!(codes(img, "elu(alpha=relu)"), vec!["E0004"]);
    assert_eq!(codes(img, "leaky_relu(-0.1)"), vec!["E0005"]);
    assert_eq!(codes(img, "leaky_relu(\"0.1\")"), vec!["E0004"]);
    assert_eq!(codes(img, "leaky_relu(0.1, 0.2)"), vec!["E0013"]);
    assert_eq!(codes(img, "leaky_relu(alpha=0.1)"), vec!["E0003"]);
    assert_eq!(codes(img, "relu6(1)"), vec!["E0013"]);
    assert_eq!(codes(img, "global_average_pooling2d(2)"), vec!["E0013"]);
    assert_eq!(
        codes(img, "global_max_pooling2d(keepdims=true)"),
        vec!["E0003"]
    );
    assert_eq!(codes(img, "zero_padding2d(-1)"), vec!["E0005"]);
    assert_eq!(codes(img, "zero_padding2d(1.5)"), vec!["E0004"]);
    assert_eq!(codes(img, "zero_padding2d(same)"), vec!["E0004"]);
    assert_eq!(codes(img, "zero_padding2d((1, 2, 3))"), vec!["E0004"]);
    assert_eq!(codes(img, "zero_padding2d(((1, 2), 3))"), vec!["E0004"]);
    assert_eq!(
        codes(img, "zero_padding2d(((1, -2), (0, 0)))"),
        vec!["E0005"]
    );
    assert_eq!(
        codes(img, "zero_padding2d(99999999999999999999)"),
        vec!["E0005"]
    );
    assert_eq!(codes(img, "flatten\nzero_padding2d"), vec!["E0015"]);
    assert_eq!(
        codes(img, "flatten\nglobal_average_pooling2d"),
        vec!["E0015"]
    );
    assert_eq!(codes(img, "conv2d(4, 3, activation=leaky)"), vec!["E0005"]);
}

#[test]
fn did_you_mean_for_keras_spellings() {
    let help = |line: &str| {
        let d = model("[8, 8, 1]", line).unwrap_err();
        assert_eq!(d[0].code, "E0002", "{line}");
        d[0].help.clone().unwrap_or_default()
    };
    assert!(help("GlobalAveragePooling2D").contains("`global_average_pooling2d`"));
    assert!(help("global_max_pooling").contains("`global_max_pooling2d`"));
    assert!(help("ZeroPadding2D").contains("`zero_padding2d`"));
    assert!(help("LeakyReLU").contains("`leaky_relu`"));
    assert!(help("ReLU6").contains("`relu6`"));
    let d = model("[8, 8, 1]", "conv2d(4, 3, activation=leaky_rel)").unwrap_err();
    assert!(d[0].help.as_deref().unwrap().contains("`leaky_relu`"));
}

#[test]
fn lowering_and_fusion() {
    let m = model(
        "[6, 5, 2]",
        "zero_padding2d(((1, 0), (2, 1)))\nconv2d(4, 3, activation=elu)\nrelu6\n\
         global_max_pooling2d\ndense(3, activation=leaky_relu)",
    )
    .unwrap();
    let (g, _) = optimize(lower(&m), Target::Inference);
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert_eq!(
        *ops[1],
        Op::ZeroPadding2d {
            pads: pads(1, 0, 2, 1)
        }
    );
    assert_eq!(g.nodes[1].shape, vec![7, 8, 2]);
    match ops[2] {
        Op::FusedConv2d { activation, .. } => {
            assert_eq!(*activation, Activation::Elu { alpha: 1.0 })
        }
        other => panic!("expected fused_conv2d, got {other:?}"),
    }
    assert_eq!(g.nodes[2].fused, vec!["conv2d", "bias_add", "elu"]);
    assert_eq!(
        *ops[3],
        Op::Activation {
            activation: Activation::Relu6
        }
    );
    assert_eq!(*ops[4], Op::GlobalMaxPool2d);
    assert_eq!(g.nodes[4].shape, vec![4]);
    match ops[5] {
        Op::FusedMatMul { activation, .. } => assert_eq!(
            *activation,
            Activation::LeakyRelu {
                negative_slope: 0.2
            }
        ),
        other => panic!("expected fused_matmul, got {other:?}"),
    }
    assert_eq!(ops.len(), 6);
    // conv 3*3*2*4 + 4, dense 4*3 + 3.
    assert_eq!(g.param_count(), 76 + 15);
}

#[test]
fn global_pooling_spec_summary() {
    let path = format!("{}/../specs/global_pooling.cnn", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(path).unwrap();
    let m = check_source(&src).unwrap();
    // [32, 30, 3] -pad ((1, 2), (0, 1))-> [35, 31, 3] -conv 3x3-> [33, 29, 16]
    // -pad 1-> [35, 31, 16] -conv 3x3 stride 2-> [17, 15, 32] -> [32] -> [10].
    let shapes: Vec<Vec<usize>> = m
        .layers
        .iter()
        .map(|l| cnnc_compiler::model::known_shape(&l.output_shape).unwrap())
        .collect();
    assert_eq!(shapes[0], vec![35, 31, 3]);
    assert_eq!(shapes[1], vec![33, 29, 16]);
    assert_eq!(shapes[3], vec![35, 31, 16]);
    assert_eq!(shapes[4], vec![17, 15, 32]);
    assert_eq!(shapes[7], vec![32]);
    // Params: 3*3*3*16 + 16 = 448; 3*3*16*32 + 32 = 4,640; 32*10 + 10 = 330.
    assert_eq!(m.total_params(), 448 + 4640 + 330);
    // FLOPs: 2*33*29*16*27 = 826,848; 2*17*15*32*144 = 2,350,080; 2*32*10 = 640.
    assert_eq!(m.flops(), 826_848 + 2_350_080 + 640);
    let text = summary::render_text(&m);
    assert!(text.contains("Total params: 5,418"));
    insta::assert_snapshot!("global_pooling_summary", text);
}
