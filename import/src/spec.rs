//! The spec writer: an imported [`Network`] as `.cnn` text in the graph
//! form of the language (grammar/README.md): one layer per line, each with
//! `name = "..."`; a layer that reads the line before it is written as a
//! chain step, any other read goes through a tensor name (the layer's own
//! name), joins name their inputs explicitly.

use crate::layers::{Layer, Network, Op};
use cnnc_compiler::model::{Activation, Interpolation, LayerKind, Padding};
use std::collections::HashSet;
use std::fmt::Write;

/// Writes the spec: `header` lines become `#` comments above
/// `model <name> { ... }`.
///
/// When the network ends in a classifier ("top", see [`top_start`]) the
/// model gets Keras's `include_top=true` parameter and the top is wrapped in
/// `if include_top { ... }`, so that another spec can call
/// `<name>(include_top=false)` for the last feature map (as
/// `keras.applications` models do).
pub fn write_spec(model_name: &str, header: &[String], net: &Network) -> String {
    let top = top_start(net);
    let single_input = net.inputs.len() == 1 && net.inputs[0].name == "input";
    let inputs: Vec<(String, String)> = net
        .inputs
        .iter()
        .map(|i| (i.name.clone(), join(i.shape.iter().map(|d| d.to_string()))))
        .collect();
    let mut out = String::new();
    write_head(
        &mut out,
        model_name,
        header,
        top.is_some(),
        &inputs,
        single_input,
    );
    let body = Body {
        layers: &net.layers,
        outputs: &net.outputs,
        single_input,
        top,
    };
    let named = body.named_tensors();
    let id_of = |n: &str| n.to_string();
    let written =
        body.write::<std::convert::Infallible>(&mut out, &named, &id_of, &|l| Ok(layer_call(l)));
    let Ok(()) = written;
    out
}

/// The lines before the statements: `header` as `#` comments, the `model`
/// line (with Keras's `include_top=true` parameter when `with_top`), one
/// `input` per `(name, dims)` (`input [dims]` for a `single` input called
/// `input`), then a blank line.
pub(crate) fn write_head(
    out: &mut String,
    model_name: &str,
    header: &[String],
    with_top: bool,
    inputs: &[(String, String)],
    single: bool,
) {
    for line in header {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
    if with_top {
        let _ = writeln!(out, "model {model_name}(include_top=true) {{");
    } else {
        let _ = writeln!(out, "model {model_name} {{");
    }
    for (name, dims) in inputs {
        if single {
            let _ = writeln!(out, "  input [{dims}]");
        } else {
            let _ = writeln!(out, "  input {name} [{dims}]");
        }
    }
    out.push('\n');
}

/// The statements of a model body, shared by the ONNX and Keras writers:
/// `layers` in order, reading checker-level names (layer or input names).
pub(crate) struct Body<'a> {
    pub layers: &'a [Layer],
    pub outputs: &'a [String],
    /// One input, called `input` (the first layer may read it implicitly).
    pub single_input: bool,
    /// Index of the first layer of the classifier top, wrapped in
    /// `if include_top { ... }`.
    pub top: Option<usize>,
}

impl<'a> Body<'a> {
    /// Whether the body needs an `output` statement (the output is not
    /// just the last layer).
    fn output_statement(&self) -> bool {
        let last = self.layers.last().map(|l| l.name.as_str());
        !(self.outputs.len() == 1 && Some(self.outputs[0].as_str()) == last)
    }

    /// The tensors read through a name: every read but a chain step's read
    /// of the layer written just before it (or of the single input, for the
    /// first layer), plus the outputs when there is an `output` statement.
    pub fn named_tensors(&self) -> HashSet<&'a str> {
        let mut named: HashSet<&'a str> = HashSet::new();
        let layers = self.layers;
        for (i, layer) in layers.iter().enumerate() {
            let implicit = i > 0 && is_chain_step(layer) && layer.inputs[0] == layers[i - 1].name;
            let first_implicit =
                i == 0 && self.single_input && is_chain_step(layer) && layer.inputs[0] == "input";
            let skip = usize::from(implicit || first_implicit);
            named.extend(layer.inputs[skip..].iter().map(String::as_str));
        }
        if self.output_statement() {
            named.extend(self.outputs.iter().map(String::as_str));
        }
        named
    }

    /// Writes one statement per layer (`id = ` before the layers in `named`,
    /// `source -> ` before a chain step that does not read the line before
    /// it), the `include_top` block and the `output` statement, then the
    /// closing brace. `id_of` gives a tensor's spec identifier, `call` a
    /// layer's call text.
    pub fn write<E>(
        &self,
        out: &mut String,
        named: &HashSet<&str>,
        id_of: &dyn Fn(&str) -> String,
        call: &dyn Fn(&Layer) -> Result<String, E>,
    ) -> Result<(), E> {
        // The current tensor of the first statement is the (single) input.
        let mut current: Option<&str> = if self.single_input {
            Some("input")
        } else {
            None
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if self.top == Some(i) {
                out.push_str("  if include_top {\n");
            }
            let indent = if self.top.is_some_and(|t| i >= t) {
                "    "
            } else {
                "  "
            };
            let call = call(layer)?;
            let assign = if named.contains(layer.name.as_str()) {
                format!("{} = ", id_of(&layer.name))
            } else {
                String::new()
            };
            let statement = if !is_chain_step(layer) || current == Some(layer.inputs[0].as_str()) {
                format!("{assign}{call}")
            } else {
                format!("{assign}{} -> {call}", id_of(&layer.inputs[0]))
            };
            let _ = writeln!(out, "{indent}{statement}");
            current = Some(layer.name.as_str());
        }
        if self.top.is_some() {
            out.push_str("  }\n");
        }
        if self.output_statement() {
            let outs: Vec<String> = self.outputs.iter().map(|o| id_of(o)).collect();
            let _ = writeln!(out, "\n  output {}", outs.join(", "));
        }
        out.push_str("}\n");
        Ok(())
    }
}

/// Index of the first layer of the network's classifier "top": the chain
/// of layers after the last one with a spatial (`[H, W, C]`) output, as
/// `keras.applications`' `include_top` draws it (global pooling or
/// flatten, dense layers, softmax). `None` unless the network has one input
/// and one output, the output is the last layer, the last spatial layer is
/// not the output, and every top layer reads only the layer before it,
/// which nothing else reads.
pub fn top_start(net: &Network) -> Option<usize> {
    if net.inputs.len() != 1 {
        return None;
    }
    top_of_layers(&net.layers, &net.outputs)
}

/// [`top_start`] for any layer list (the Keras import's too) given its
/// outputs; `Layer::shape` must be filled in (at least its rank).
pub fn top_of_layers(layers: &[Layer], outputs: &[String]) -> Option<usize> {
    if outputs.len() != 1 {
        return None;
    }
    let last = layers.last()?;
    if outputs[0] != last.name {
        return None;
    }
    let start = layers.iter().rposition(|l| l.shape.len() == 3)? + 1;
    if start >= layers.len() {
        return None;
    }
    for i in start..layers.len() {
        let layer = &layers[i];
        let previous = &layers[i - 1].name;
        let readers = layers
            .iter()
            .flat_map(|l| &l.inputs)
            .filter(|n| *n == previous)
            .count();
        if !is_chain_step(layer)
            || layer.inputs.len() != 1
            || &layer.inputs[0] != previous
            || readers != 1
        {
            return None;
        }
    }
    Some(start)
}

/// Whether the layer reads one tensor (written as a chain step); joins
/// name all their inputs.
pub(crate) fn is_chain_step(layer: &Layer) -> bool {
    !matches!(
        layer.op,
        Op::Layer(LayerKind::Add | LayerKind::Multiply | LayerKind::Concatenate { .. })
    )
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// A float as the spec writes it: the shortest decimal that reads back as
/// the same f32, always with a `.` (so that it is a FLOAT token).
pub fn float(v: f32) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// `3` for a square size, `(3, 5)` otherwise.
fn size(v: [usize; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("({}, {})", v[0], v[1])
    }
}

fn padding_arg(p: Padding, args: &mut Vec<String>) {
    if p == Padding::Same {
        args.push("padding=same".into());
    }
}

/// `name=v` unless `v` is Keras's default `(1, 1)` (`strides`, `dilation_rate`).
fn pair_arg(name: &str, v: [usize; 2], args: &mut Vec<String>) {
    if v != [1, 1] {
        args.push(format!("{name}={}", size(v)));
    }
}

fn use_bias_arg(use_bias: bool, args: &mut Vec<String>) {
    if !use_bias {
        args.push("use_bias=false".into());
    }
}

fn activation_arg(a: Activation, args: &mut Vec<String>) {
    match a {
        Activation::Linear => {}
        other => args.push(format!("activation={}", other.name())),
    }
}

/// The layer as a call: keyword, positional arguments, non-default named
/// arguments, `name = "..."`.
pub fn layer_call(layer: &Layer) -> String {
    layer_call_with(layer, &|name| name.to_string())
}

/// [`layer_call`] with the tensor identifier of each input of a join given
/// by `id_of` (the Keras writer renames tensors that clash with keywords).
pub fn layer_call_with(layer: &Layer, id_of: &dyn Fn(&str) -> String) -> String {
    let Op::Layer(kind) = &layer.op else {
        // Affine maps are materialized before writing (layers::tidy).
        return format!("# unmaterialized affine map {}", layer.name);
    };
    let mut args: Vec<String> = Vec::new();
    let keyword: String = match kind {
        LayerKind::Conv2d {
            filters,
            kernel_size,
            strides,
            padding,
            dilation_rate,
            activation,
            use_bias,
        } => {
            args.push(filters.to_string());
            args.push(size(*kernel_size));
            pair_arg("strides", *strides, &mut args);
            padding_arg(*padding, &mut args);
            pair_arg("dilation_rate", *dilation_rate, &mut args);
            activation_arg(*activation, &mut args);
            use_bias_arg(*use_bias, &mut args);
            "conv2d".into()
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
            args.push(size(*kernel_size));
            pair_arg("strides", *strides, &mut args);
            padding_arg(*padding, &mut args);
            if *depth_multiplier != 1 {
                args.push(format!("depth_multiplier={depth_multiplier}"));
            }
            pair_arg("dilation_rate", *dilation_rate, &mut args);
            activation_arg(*activation, &mut args);
            use_bias_arg(*use_bias, &mut args);
            "depthwise_conv2d".into()
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
            args.push(filters.to_string());
            args.push(size(*kernel_size));
            pair_arg("strides", *strides, &mut args);
            padding_arg(*padding, &mut args);
            pair_arg("dilation_rate", *dilation_rate, &mut args);
            if *depth_multiplier != 1 {
                args.push(format!("depth_multiplier={depth_multiplier}"));
            }
            activation_arg(*activation, &mut args);
            use_bias_arg(*use_bias, &mut args);
            "separable_conv2d".into()
        }
        LayerKind::Conv2dTranspose {
            filters,
            kernel_size,
            strides,
            padding,
            output_padding,
            dilation_rate,
            activation,
            use_bias,
        } => {
            args.push(filters.to_string());
            args.push(size(*kernel_size));
            pair_arg("strides", *strides, &mut args);
            padding_arg(*padding, &mut args);
            pair_arg("dilation_rate", *dilation_rate, &mut args);
            if let Some(p) = output_padding {
                args.push(format!("output_padding=({}, {})", p[0], p[1]));
            }
            activation_arg(*activation, &mut args);
            use_bias_arg(*use_bias, &mut args);
            "conv2d_transpose".into()
        }
        LayerKind::Dense {
            units,
            activation,
            use_bias,
        } => {
            args.push(units.to_string());
            activation_arg(*activation, &mut args);
            use_bias_arg(*use_bias, &mut args);
            "dense".into()
        }
        LayerKind::BatchNormalization { epsilon, .. } => {
            args.push(format!("epsilon={}", float(*epsilon)));
            "batch_normalization".into()
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
            args.push(size(*pool_size));
            if strides != pool_size {
                args.push(format!("strides={}", size(*strides)));
            }
            padding_arg(*padding, &mut args);
            kind.keyword().into()
        }
        LayerKind::ZeroPadding2d { padding: p } => {
            args.push(format!(
                "(({}, {}), ({}, {}))",
                p.top, p.bottom, p.left, p.right
            ));
            "zero_padding2d".into()
        }
        LayerKind::Reshape { target_shape } => {
            args.push(format!(
                "[{}]",
                join(target_shape.iter().map(|d| d.to_string()))
            ));
            "reshape".into()
        }
        LayerKind::Add | LayerKind::Multiply => {
            args.extend(layer.inputs.iter().map(|i| id_of(i)));
            kind.keyword().into()
        }
        LayerKind::Concatenate { axis } => {
            args.extend(layer.inputs.iter().map(|i| id_of(i)));
            // `axis` counts with the batch as axis 0 (Keras); -1 is the default.
            let rank = layer.shape.len();
            if *axis + 1 != rank {
                args.push(format!("axis={}", axis + 1));
            }
            "concatenate".into()
        }
        LayerKind::Dropout { rate } => {
            args.push(float(*rate));
            "dropout".into()
        }
        LayerKind::Activation { activation } => match activation {
            Activation::Elu { alpha } => {
                args.push(format!("alpha={}", float(*alpha)));
                "elu".into()
            }
            Activation::LeakyRelu { negative_slope } => {
                args.push(format!("negative_slope={}", float(*negative_slope)));
                "leaky_relu".into()
            }
            other => other.name().into(),
        },
        LayerKind::UpSampling2d {
            size: s,
            interpolation,
        } => {
            args.push(size(*s));
            if *interpolation == Interpolation::Bilinear {
                args.push("interpolation=bilinear".into());
            }
            "up_sampling2d".into()
        }
        #[allow(unreachable_patterns)]
        other => other.keyword().into(),
    };
    args.push(format!("name=\"{}\"", layer.name));
    format!("{keyword}({})", args.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Input, Weight};
    use crate::tensor::Tensor;

    fn layer(name: &str, kind: LayerKind, inputs: &[&str], shape: &[usize]) -> Layer {
        Layer {
            name: name.into(),
            op: Op::Layer(kind),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            weights: Vec::<Weight>::new(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn floats_read_back_as_floats() {
        assert_eq!(float(1e-5), "1e-5");
        assert_eq!(float(0.5), "0.5");
        assert_eq!(float(2.0), "2.0");
        assert_eq!("1e-5".parse::<f32>().unwrap(), 1e-5);
        let _ = Tensor::f32(vec![], vec![0.0]);
    }

    #[test]
    fn residual_graph_text() {
        let conv = |filters| LayerKind::Conv2d {
            filters,
            kernel_size: [3, 3],
            strides: [1, 1],
            padding: Padding::Same,
            dilation_rate: [1, 1],
            activation: Activation::Relu,
            use_bias: true,
        };
        let net = Network {
            inputs: vec![Input {
                name: "input".into(),
                shape: vec![8, 8, 4],
            }],
            layers: vec![
                layer("c1", conv(4), &["input"], &[8, 8, 4]),
                layer("c2", conv(4), &["c1"], &[8, 8, 4]),
                layer("sum", LayerKind::Add, &["c1", "c2"], &[8, 8, 4]),
                layer("gap", LayerKind::GlobalAvgPool2d, &["sum"], &[4]),
            ],
            outputs: vec!["gap".into()],
        };
        let text = write_spec("net", &["from test".into()], &net);
        // The classifier top (the layers after the last [H, W, C] one) is
        // behind Keras's `include_top`.
        let expected = "# from test
model net(include_top=true) {
  input [8, 8, 4]

  c1 = conv2d(4, 3, padding=same, activation=relu, name=\"c1\")
  c2 = conv2d(4, 3, padding=same, activation=relu, name=\"c2\")
  add(c1, c2, name=\"sum\")
  if include_top {
    global_average_pooling2d(name=\"gap\")
  }
}
";
        assert_eq!(text, expected);
        // The compiler accepts it and builds what was meant.
        let model = cnnc_compiler::check_source(&text).expect("spec checks");
        let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["c1", "c2", "sum", "gap"]);
        assert_eq!(
            model.layers[2].inputs,
            vec!["c1".to_string(), "c2".to_string()]
        );
        // Without its top, called from another model, it ends at `sum`.
        let dir = std::env::temp_dir().join(format!("cnnc-import-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("net.cnn"), &text).unwrap();
        let features = dir.join("features.cnn");
        let source = "import \"net.cnn\"\nmodel features {\n  input [8, 8, 4]\n  net(include_top=false)\n}\n";
        let (_, checked) = cnnc_compiler::check_file(&features, source);
        let model = checked.expect("spec checks");
        assert_eq!(model.layers.last().unwrap().name, "sum");
        std::fs::remove_dir_all(&dir).unwrap();
        // A network whose output is spatial has no top.
        let mut fcn = net.clone();
        fcn.layers.pop();
        fcn.outputs = vec!["sum".into()];
        assert_eq!(top_start(&fcn), None);
        assert!(write_spec("fcn", &[], &fcn).contains("model fcn {"));
    }
}
