//! Conv-family kernels against TensorFlow / Keras: outputs and gradients of
//! `Conv2D` (dilated), `DepthwiseConv2D` and `Conv2DTranspose` recorded by
//! `tests/reference/conv_family_tf.py` (see its header to regenerate) must be
//! reproduced to a max abs difference of 1e-4. Geometry (pads, output sizes,
//! crops) is derived here from the Keras/TF rules, and the output shape
//! Keras produced is checked against it.

mod conv_family_support;

/// The tests (in a module so that `cargo test conv_family` selects them).
mod conv_family_tf {
    use super::conv_family_support::*;
    use cnnc_compiler::model::{Activation, Padding};
    use cnnc_runtime::kernels::conv_transpose::{
        conv2d_transpose_axis, conv2d_transpose_backward, conv2d_transpose_forward,
        Conv2dTransposeShape,
    };
    use cnnc_runtime::kernels::depthwise::{
        depthwise_conv2d_backward, depthwise_conv2d_forward, DepthwiseConv2dShape,
    };
    use cnnc_runtime::kernels::{conv2d_backward, conv2d_forward, Conv2dShape};
    use serde_json::Value;

    const TOL: f32 = 1e-4;

    fn load() -> Vec<Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/reference/conv_family_tf.json"
        );
        let text = std::fs::read_to_string(path).expect("reference JSON (see conv_family_tf.py)");
        let doc: Value = serde_json::from_str(&text).expect("valid JSON");
        doc["cases"].as_array().expect("cases").clone()
    }

    fn floats(v: &Value, key: &str) -> Vec<f32> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}"))
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    fn dims<const N: usize>(v: &Value, key: &str) -> [usize; N] {
        let d: Vec<usize> = v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}"))
            .iter()
            .map(|x| x.as_u64().expect("integer") as usize)
            .collect();
        d.try_into().unwrap_or_else(|_| panic!("{key}: {N} dims"))
    }

    fn padding(v: &Value) -> Padding {
        match v["padding"].as_str() {
            Some("same") => Padding::Same,
            Some("valid") => Padding::Valid,
            other => panic!("padding {other:?}"),
        }
    }

    /// Forward output and `(dx, dkernel, dbias)` for the recorded `dy`.
    type Run = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    #[track_caller]
    fn check(case: &Value, got: Run) {
        let name = case["name"].as_str().expect("name");
        let (y, dx, dk, db) = got;
        for (key, v) in [("y", y), ("dx", dx), ("dkernel", dk), ("dbias", db)] {
            let want = floats(case, key);
            let diff = max_abs_diff(&v, &want);
            assert!(diff <= TOL, "{name} {key}: max abs diff {diff}");
        }
    }

    fn run_conv2d(case: &Value) -> Run {
        let [n, h, w, c] = dims(case, "input_shape");
        let k = dims(case, "kernel_size");
        let s = dims(case, "strides");
        let d = dims(case, "dilation_rate");
        let f = case["filters"].as_u64().expect("filters") as usize;
        let pads = pads2d(padding(case) == Padding::Same, h, w, k, s, d);
        let shape = Conv2dShape::new(&conv_attrs(c, f, k, s, d, pads), n, h, w).expect("geometry");
        assert_eq!(
            [n, shape.out_h, shape.out_w, f],
            dims(case, "output_shape"),
            "{}",
            case["name"]
        );
        let (x, kernel, bias) = (
            floats(case, "x"),
            floats(case, "kernel"),
            floats(case, "bias"),
        );
        let mut y = vec![0.0; shape.output_len()];
        conv2d_forward(&shape, &x, &kernel, Some(&bias), Activation::Linear, &mut y).unwrap();
        let mut dy = floats(case, "dy");
        let (mut dx, mut dk, mut db) = (vec![0.0; x.len()], vec![0.0; kernel.len()], vec![0.0; f]);
        conv2d_backward(
            &shape,
            &x,
            &kernel,
            &y,
            Activation::Linear,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            Some(&mut db),
        )
        .unwrap();
        (y, dx, dk, db)
    }

    fn run_depthwise(case: &Value) -> Run {
        let [n, h, w, c] = dims(case, "input_shape");
        let k = dims(case, "kernel_size");
        let s = dims(case, "strides");
        let d = dims(case, "dilation_rate");
        let dm = case["depth_multiplier"].as_u64().expect("depth_multiplier") as usize;
        let pads = pads2d(padding(case) == Padding::Same, h, w, k, s, d);
        let attrs = depthwise_attrs(c, dm, k, s, d, pads);
        let shape = DepthwiseConv2dShape::new(&attrs, n, h, w).expect("geometry");
        assert_eq!(dims(case, "kernel_shape"), [k[0], k[1], c, dm]);
        assert_eq!(
            [n, shape.out_h, shape.out_w, c * dm],
            dims(case, "output_shape"),
            "{}",
            case["name"]
        );
        let (x, kernel, bias) = (
            floats(case, "x"),
            floats(case, "kernel"),
            floats(case, "bias"),
        );
        let mut y = vec![0.0; shape.output_len()];
        depthwise_conv2d_forward(&shape, &x, &kernel, Some(&bias), Activation::Linear, &mut y)
            .unwrap();
        let mut dy = floats(case, "dy");
        let (mut dx, mut dk, mut db) = (
            vec![0.0; x.len()],
            vec![0.0; kernel.len()],
            vec![0.0; c * dm],
        );
        depthwise_conv2d_backward(
            &shape,
            &x,
            &kernel,
            &y,
            Activation::Linear,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            Some(&mut db),
        )
        .unwrap();
        (y, dx, dk, db)
    }

    fn run_transpose(case: &Value) -> Run {
        let [n, h, w, cin] = dims(case, "input_shape");
        let k = dims(case, "kernel_size");
        let s = dims(case, "strides");
        let d = dims(case, "dilation_rate");
        let f = case["filters"].as_u64().expect("filters") as usize;
        let op: Option<[usize; 2]> =
            (!case["output_padding"].is_null()).then(|| dims(case, "output_padding"));
        let p = padding(case);
        let (oh, crop_h) =
            conv2d_transpose_axis(h, k[0], s[0], d[0], p, op.map(|o| o[0])).expect("axis h");
        let (ow, crop_w) =
            conv2d_transpose_axis(w, k[1], s[1], d[1], p, op.map(|o| o[1])).expect("axis w");
        assert_eq!(dims(case, "kernel_shape"), [k[0], k[1], f, cin]);
        assert_eq!(
            [n, oh, ow, f],
            dims(case, "output_shape"),
            "{}",
            case["name"]
        );
        let attrs = transpose_attrs(cin, f, k, s, d, [crop_h, crop_w]);
        let shape = Conv2dTransposeShape::new(&attrs, n, h, w, oh, ow).expect("geometry");
        let (x, kernel, bias) = (
            floats(case, "x"),
            floats(case, "kernel"),
            floats(case, "bias"),
        );
        let mut y = vec![0.0; shape.output_len()];
        conv2d_transpose_forward(&shape, &x, &kernel, Some(&bias), Activation::Linear, &mut y)
            .unwrap();
        let mut dy = floats(case, "dy");
        let (mut dx, mut dk, mut db) = (vec![0.0; x.len()], vec![0.0; kernel.len()], vec![0.0; f]);
        conv2d_transpose_backward(
            &shape,
            &x,
            &kernel,
            &y,
            Activation::Linear,
            &mut dy,
            Some(&mut dx),
            Some(&mut dk),
            Some(&mut db),
        )
        .unwrap();
        (y, dx, dk, db)
    }

    fn run_kind(kind: &str, run: fn(&Value) -> Run) {
        let cases: Vec<Value> = load().into_iter().filter(|c| c["kind"] == kind).collect();
        assert!(cases.len() >= 3, "{kind}: only {} cases", cases.len());
        for case in &cases {
            check(case, run(case));
        }
    }

    #[test]
    fn dilated_conv2d_matches_keras() {
        run_kind("conv2d", run_conv2d);
    }

    #[test]
    fn depthwise_conv2d_matches_keras() {
        run_kind("depthwise", run_depthwise);
    }

    #[test]
    fn conv2d_transpose_matches_keras() {
        run_kind("conv2d_transpose", run_transpose);
    }
}
