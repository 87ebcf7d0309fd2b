//! Shape rules, parameter and FLOP counts, channel expressions and default
//! names. Expected values are derived by hand from the formulas in the
//! comments (TensorFlow's padding rule, Keras's parameter counts).

use cnnc_compiler::check::{window_output, AxisOutput};
use cnnc_compiler::check_source;
use cnnc_compiler::model::{Activation, LayerKind, Model, Padding, Pads2d};

fn spec_path(name: &str) -> String {
    format!("{}/../specs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fashion_mnist() -> Model {
    let src = std::fs::read_to_string(spec_path("fashion_mnist.cnn")).expect("spec file");
    check_source(&src).expect("the Fashion-MNIST spec checks")
}

/// Wraps layer lines in a model with the given input.
fn model(input: &str, body: &str) -> Result<Model, Vec<cnnc_compiler::Diagnostic>> {
    check_source(&format!("model m {{\n  input {input}\n{body}\n}}\n"))
}

fn codes(body: &str) -> Vec<&'static str> {
    match model("[28, 28, 1]", body) {
        Ok(_) => vec![],
        Err(ds) => ds.iter().map(|d| d.code).collect(),
    }
}

#[test]
fn same_padding_odd_input() {
    // ceil(7 / 2) = 4; total pad = (4 - 1) * 2 + 3 - 7 = 2 -> 1 top, 1 bottom.
    assert_eq!(
        window_output(7, 3, 2, Padding::Same),
        Some(AxisOutput {
            out: 4,
            pad_before: 1,
            pad_after: 1
        })
    );
}

#[test]
fn same_padding_even_input_puts_odd_pixel_after() {
    // ceil(6 / 2) = 3; total pad = (3 - 1) * 2 + 3 - 6 = 1 -> 0 before, 1 after.
    assert_eq!(
        window_output(6, 3, 2, Padding::Same),
        Some(AxisOutput {
            out: 3,
            pad_before: 0,
            pad_after: 1
        })
    );
}

#[test]
fn same_padding_stride_one_keeps_size() {
    // k = 7: total pad = 6 -> 3 and 3 (the Fashion-MNIST first layer).
    assert_eq!(
        window_output(28, 7, 1, Padding::Same),
        Some(AxisOutput {
            out: 28,
            pad_before: 3,
            pad_after: 3
        })
    );
    // A stride larger than the kernel needs no padding: ceil(7 / 3) = 3, (3-1)*3 + 2 - 7 = 1.
    assert_eq!(
        window_output(7, 2, 3, Padding::Same),
        Some(AxisOutput {
            out: 3,
            pad_before: 0,
            pad_after: 1
        })
    );
    // (4 - 1) * 2 + 2 - 8 = 0: no padding.
    assert_eq!(
        window_output(8, 2, 2, Padding::Same),
        Some(AxisOutput {
            out: 4,
            pad_before: 0,
            pad_after: 0
        })
    );
}

#[test]
fn valid_padding() {
    // floor((28 - 3) / 1) + 1 = 26
    assert_eq!(
        window_output(28, 3, 1, Padding::Valid).map(|a| a.out),
        Some(26)
    );
    // floor((7 - 2) / 2) + 1 = 3 (pooling drops the last row)
    assert_eq!(
        window_output(7, 2, 2, Padding::Valid).map(|a| a.out),
        Some(3)
    );
    // floor((7 - 3) / 2) + 1 = 3
    assert_eq!(
        window_output(7, 3, 2, Padding::Valid).map(|a| a.out),
        Some(3)
    );
    // n == k: exactly one output
    assert_eq!(
        window_output(5, 5, 3, Padding::Valid).map(|a| a.out),
        Some(1)
    );
    // n < k: no output
    assert_eq!(window_output(2, 3, 1, Padding::Valid), None);
    assert_eq!(window_output(5, 3, 0, Padding::Valid), None);
}

#[test]
fn fashion_mnist_params_flops_and_shapes() {
    let m = fashion_mnist();
    assert_eq!(m.name, "fashion_mnist");
    assert_eq!(m.input_shape, vec![28, 28, 1]);
    // Keras's figure for the model of Géron ch. 14.
    assert_eq!(m.total_params(), 1_413_834);
    let with_params: Vec<usize> = m
        .layers
        .iter()
        .map(|l| l.params)
        .filter(|&p| p > 0)
        .collect();
    assert_eq!(
        with_params,
        vec![
            7 * 7 * 64 + 64,         // 3,200
            3 * 3 * 64 * 128 + 128,  // 73,856
            3 * 3 * 128 * 128 + 128, // 147,584
            3 * 3 * 128 * 256 + 256, // 295,168
            3 * 3 * 256 * 256 + 256, // 590,080
            2304 * 128 + 128,        // 295,040
            128 * 64 + 64,           // 8,256
            64 * 10 + 10,            // 650
        ]
    );
    assert_eq!(
        with_params,
        vec![3_200, 73_856, 147_584, 295_168, 590_080, 295_040, 8_256, 650]
    );
    // FLOPs = 2 * MACs: conv 2*oh*ow*f*kh*kw*cin, dense 2*in*units.
    let expected_flops: u64 = 2 * (28 * 28 * 64 * 49)
        + 2 * (14 * 14 * 128 * 9 * 64)
        + 2 * (14 * 14 * 128 * 9 * 128)
        + 2 * (7 * 7 * 256 * 9 * 128)
        + 2 * (7 * 7 * 256 * 9 * 256)
        + 2 * (2304 * 128 + 128 * 64 + 64 * 10);
    assert_eq!(expected_flops, 178_932_992);
    assert_eq!(m.flops(), expected_flops);
    let shapes: Vec<Vec<usize>> = m
        .layers
        .iter()
        .map(|l| cnnc_compiler::model::known_shape(&l.output_shape).unwrap())
        .collect();
    assert_eq!(
        shapes,
        vec![
            vec![28, 28, 64],
            vec![14, 14, 64],
            vec![14, 14, 128],
            vec![14, 14, 128],
            vec![7, 7, 128],
            vec![7, 7, 256],
            vec![7, 7, 256],
            vec![3, 3, 256],
            vec![2304],
            vec![128],
            vec![128],
            vec![64],
            vec![64],
            vec![10],
        ]
    );
    assert_eq!(m.output_shape(), &[10]);
    // Each layer's input is the previous layer's output.
    for pair in m.layers.windows(2) {
        assert_eq!(pair[0].output_shape, pair[1].input_shape);
    }
}

#[test]
fn fashion_mnist_resolved_arguments_and_pads() {
    let m = fashion_mnist();
    assert_eq!(
        m.layers[0].kind,
        LayerKind::Conv2d {
            filters: 64,
            kernel_size: [7, 7],
            strides: [1, 1],
            padding: Padding::Same,
            dilation_rate: [1, 1],
            activation: Activation::Relu,
            use_bias: true
        }
    );
    assert_eq!(
        m.layers[0].pads,
        Some(Pads2d {
            top: 3,
            bottom: 3,
            left: 3,
            right: 3
        })
    );
    // 3x3 same: total pad 2 -> 1 each side.
    assert_eq!(
        m.layers[2].pads,
        Some(Pads2d {
            top: 1,
            bottom: 1,
            left: 1,
            right: 1
        })
    );
    // Pooling defaults: pool_size 2, strides = pool_size, valid.
    assert_eq!(
        m.layers[1].kind,
        LayerKind::MaxPool2d {
            pool_size: [2, 2],
            strides: [2, 2],
            padding: Padding::Valid
        }
    );
    assert_eq!(m.layers[1].pads, Some(Pads2d::default()));
    assert_eq!(m.layers[8].kind, LayerKind::Flatten);
    assert_eq!(m.layers[8].pads, None);
    assert_eq!(m.layers[10].kind, LayerKind::Dropout { rate: 0.5 });
    assert_eq!(
        m.layers[13].kind,
        LayerKind::Dense {
            units: 10,
            activation: Activation::Softmax,
            use_bias: true
        }
    );
}

#[test]
fn default_names_follow_keras() {
    let m = fashion_mnist();
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "conv2d",
            "max_pooling2d",
            "conv2d_1",
            "conv2d_2",
            "max_pooling2d_1",
            "conv2d_3",
            "conv2d_4",
            "max_pooling2d_2",
            "flatten",
            "dense",
            "dropout",
            "dense_1",
            "dropout_1",
            "dense_2",
        ]
    );
}

#[test]
fn explicit_names_do_not_advance_counters() {
    let m = model(
        "[8, 8, 1]",
        "conv2d(4, 3, name=\"stem\")\navg_pool2d(2)\nrelu\nactivation(softmax)\nflatten\ndense(3)\nsoftmax(name=\"probs\")",
    )
    .unwrap();
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "stem",
            "average_pooling2d",
            "activation",
            "activation_1",
            "flatten",
            "dense",
            "probs"
        ]
    );
    assert_eq!(
        m.layers[2].kind,
        LayerKind::Activation {
            activation: Activation::Relu
        }
    );
    assert_eq!(
        m.layers[3].kind,
        LayerKind::Activation {
            activation: Activation::Softmax
        }
    );
}

#[test]
fn channel_expressions() {
    let m = model(
        "[16, 16, 3]",
        "conv2d(12, 3, padding=same)\nconv2d(in * 2, 3)\nconv2d(in, 1)\nconv2d(in / 4, 1)",
    )
    .unwrap();
    let filters: Vec<usize> = m
        .layers
        .iter()
        .map(|l| l.output_shape.last().unwrap().known().unwrap())
        .collect();
    assert_eq!(filters, vec![12, 24, 24, 6]);
    // Parameters use the resolved counts: 3*3*12*24 + 24 for `in * 2`.
    assert_eq!(m.layers[1].params, 3 * 3 * 12 * 24 + 24);
    assert_eq!(m.layers[3].params, 24 * 6 + 6);
    // 12 channels are not divisible by 5.
    let err = model("[16, 16, 3]", "conv2d(12, 3)\nconv2d(in / 5, 3)").unwrap_err();
    assert_eq!(
        err.iter().map(|d| d.code).collect::<Vec<_>>(),
        vec!["E0010"]
    );
    // `in * 0` and `in / 0` are invalid values.
    assert_eq!(codes("conv2d(in * 0, 3)\nflatten"), vec!["E0005"]);
    assert_eq!(codes("conv2d(in / 0, 3)\nflatten"), vec!["E0005"]);
    // Only `filters` accepts them.
    assert_eq!(codes("flatten\ndense(in)"), vec!["E0004"]);
}

#[test]
fn strides_and_pairs() {
    // 28 -> ceil(28/2) = 14 with same; (3,5) kernel valid: 28-3+1 = 26, 28-5+1 = 24.
    let m = model(
        "[28, 28, 1]",
        "conv2d(8, 3, strides=2, padding=same)\nconv2d(8, (3, 5))\nmax_pool2d([2, 3], strides=(1, 2))",
    )
    .unwrap();
    assert_eq!(m.layers[0].output_shape, vec![14, 14, 8]);
    // ceil(14/2)=7; total = 6*2 + 3 - 14 = 1 -> 0 top, 1 bottom.
    assert_eq!(
        m.layers[0].pads,
        Some(Pads2d {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1
        })
    );
    assert_eq!(m.layers[1].output_shape, vec![12, 10, 8]);
    // height floor((12-2)/1)+1 = 11, width floor((10-3)/2)+1 = 4.
    assert_eq!(m.layers[2].output_shape, vec![11, 4, 8]);
    // conv FLOPs: 2 * 12*10 * 8 * 3*5 * 8
    assert_eq!(m.layers[1].flops, 2 * 12 * 10 * 8 * 3 * 5 * 8);
    assert_eq!(m.layers[1].params, 3 * 5 * 8 * 8 + 8);
}

#[test]
fn use_bias_false_and_flat_input() {
    let m = model("[784]", "flatten\ndense(10, use_bias=false)").unwrap();
    // flatten on a rank-1 input is a no-op.
    assert_eq!(m.layers[0].output_shape, vec![784]);
    assert_eq!(m.layers[1].params, 7840);
    assert_eq!(m.layers[1].flops, 2 * 7840);
}

#[test]
fn keras_style_strings_and_trailing_commas() {
    let m = model(
        "(28, 28, 1,)",
        "conv2d(filters=4, kernel_size=3, padding=\"same\", activation=\"relu\",)\nflatten()\ndense(10)",
    )
    .unwrap();
    assert_eq!(m.layers[0].output_shape, vec![28, 28, 4]);
}

#[test]
fn dropout_rate_range() {
    assert_eq!(codes("flatten\ndropout(0)"), Vec::<&str>::new());
    assert_eq!(codes("flatten\ndropout(0.999)"), Vec::<&str>::new());
    assert_eq!(codes("flatten\ndropout(1)"), vec!["E0005"]);
    assert_eq!(codes("flatten\ndropout(-0.1)"), vec!["E0005"]);
    assert_eq!(codes("flatten\ndropout(1e999)"), vec!["E0005"]);
    // rounds to 1.0 in f32
    assert_eq!(codes("flatten\ndropout(0.99999999999)"), vec!["E0005"]);
}

#[test]
fn shape_errors() {
    assert_eq!(codes("conv2d(8, 29)"), vec!["E0006"]);
    assert_eq!(codes("max_pool2d(30)"), vec!["E0006"]);
    // `same` never makes the output empty.
    assert_eq!(
        codes("max_pool2d(30, padding=same)\nflatten"),
        Vec::<&str>::new()
    );
    assert_eq!(codes("dense(10)"), vec!["E0007"]);
    assert_eq!(codes("flatten\nmax_pool2d(2)"), vec!["E0015"]);
}

#[test]
fn several_errors_without_cascades() {
    // One shape error: later layers are not shape-checked, but their
    // arguments are.
    let got = codes("conv2d(8, 40)\ndense(10)\nconv2d(4, 3)\ndropout(2)");
    assert_eq!(got, vec!["E0006", "E0005"]);
    // An unknown layer does not produce shape errors after it.
    let got = codes("conv2(8, 3)\ndense(10)\ndense(10, activaton=relu)");
    assert_eq!(got, vec!["E0002", "E0003"]);
    // An unknown argument does not stop shape checking of the same layer.
    let got = codes("conv2d(8, 40, activaton=relu)");
    assert_eq!(got, vec!["E0006", "E0003"]); // in source order: `40` comes first
}

#[test]
fn argument_errors() {
    assert_eq!(codes("conv2d(8)"), vec!["E0011"]);
    assert_eq!(codes("conv2d(8, 3, filters=4)"), vec!["E0012"]);
    assert_eq!(codes("flatten(1)"), vec!["E0013"]);
    assert_eq!(codes("flatten\ndense(activation=relu, 10)"), vec!["E0014"]);
    assert_eq!(codes("conv2d(8, 3, padding=full)\nflatten"), vec!["E0005"]);
    assert_eq!(codes("conv2d(8, (3, 3, 3))\nflatten"), vec!["E0004"]);
    assert_eq!(codes("conv2d(8, 3.0)\nflatten"), vec!["E0004"]);
    assert_eq!(
        codes("conv2d(8, 3, use_bias=\"true\")\nflatten"),
        vec!["E0004"]
    );
    assert_eq!(codes("conv2d(8, 3, name=conv)\nflatten"), vec!["E0004"]);
    assert_eq!(codes("conv2d(8, 3, name=\"a b\")\nflatten"), vec!["E0005"]);
    assert_eq!(
        codes("conv2d(99999999999999999999, 3)\nflatten"),
        vec!["E0005"]
    );
    assert_eq!(
        codes("flatten\ndense(10, name=\"x\")\ndense(10, name=\"x\")"),
        vec!["E0009"]
    );
}

#[test]
fn input_errors() {
    let src = "model m {\n  flatten\n}\n";
    assert_eq!(
        check_source(src)
            .unwrap_err()
            .iter()
            .map(|d| d.code)
            .collect::<Vec<_>>(),
        vec!["E0008"]
    );
    assert!(model("[28, 28]", "flatten").is_err_and(|e| e[0].code == "E0016"));
    assert!(model("[1, 28, 28, 1]", "flatten").is_err_and(|e| e[0].code == "E0016"));
    assert!(model("[28, 0, 1]", "flatten").is_err_and(|e| e[0].code == "E0005"));
    assert!(model("[28, 28, 1]", "").is_err_and(|e| e[0].code == "E0018"));
}
