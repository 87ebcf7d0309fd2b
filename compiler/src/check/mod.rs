//! Name resolution, defaults, validation and shape inference: the AST of a
//! `.cnn` file becomes a checked [`Model`], or a list of located
//! [`Diagnostic`]s (as many as can be found in one run).
//!
//! Error recovery: an invalid argument is reported and checking goes on
//! with the rest of the layer and the following layers. When a layer's
//! output shape cannot be known (unknown layer, invalid size argument, shape
//! error), the following layers are still checked for argument errors but
//! not for shape errors, so one mistake does not cascade into many.

mod layers;
pub mod shape;
mod suggest;
mod values;

pub use shape::{window_output, AxisOutput};
pub use suggest::did_you_mean;

use crate::diagnostics::{Diagnostic, LineIndex};
use crate::model::{Layer, LayerKind, Model, Padding, Pads2d, Span};
use crate::syntax::{ChannelOp, InputStmt, LayerStmt, ModelAst, Statement, ValueKind};
use layers::{bind, lookup, resolve, unknown_layer, LayerDef, Resolved};
use std::collections::HashMap;
use values::Ctx;

/// Parses and checks a `.cnn` source text. Returns the checked model, or every
/// error found (as many as possible in one run).
pub fn check_source(source: &str) -> Result<Model, Vec<Diagnostic>> {
    let ast = crate::syntax::parse(source).map_err(|d| vec![d])?;
    check_model(&ast, source)
}

/// Checks a parsed model (`source` is the text it was parsed from, used for
/// quoting values and computing line numbers in messages).
pub fn check_model(ast: &ModelAst, source: &str) -> Result<Model, Vec<Diagnostic>> {
    let mut checker = Checker {
        ctx: Ctx {
            source,
            diags: Vec::new(),
        },
        names: HashMap::new(),
        counters: HashMap::new(),
        lines: LineIndex::new(source),
    };
    let model = checker.model(ast);
    let mut diags = checker.ctx.diags;
    if diags.is_empty() {
        if let Some(model) = model {
            return Ok(model);
        }
        diags.push(
            Diagnostic::error(
                "E0000",
                "the model could not be checked (internal error in cnnc)",
            )
            .with_label(ast.name.span, "while checking this model"),
        );
    }
    diags.sort_by_key(|d| d.primary_span().start);
    Err(diags)
}

/// Where the shape flowing into a layer was produced.
#[derive(Debug, Clone)]
struct Origin {
    /// "`max_pooling2d_2` at line 12" or "the `input` at line 2".
    what: String,
    span: Span,
}

/// The shape flowing between layers, with its origin for messages.
#[derive(Debug, Clone)]
struct Flow {
    shape: Vec<usize>,
    origin: Origin,
}

/// `[3, 3, 256]`.
fn fmt_shape(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A layer's output before it is assembled into a [`Layer`].
struct Inferred {
    kind: LayerKind,
    output: Vec<usize>,
    pads: Option<Pads2d>,
    params: usize,
    flops: u64,
}

struct Checker<'s> {
    ctx: Ctx<'s>,
    /// Layer names taken so far: span to point at, and whether the name was explicit.
    names: HashMap<String, (Span, bool)>,
    /// Keras-style counters of generated names, per prefix.
    counters: HashMap<&'static str, usize>,
    /// Line starts of the source, for "at line N" in notes.
    lines: LineIndex,
}

impl Checker<'_> {
    fn line(&self, span: Span) -> usize {
        self.lines.line(span.start)
    }

    fn model(&mut self, ast: &ModelAst) -> Option<Model> {
        let inputs: Vec<&InputStmt> = ast
            .statements
            .iter()
            .filter_map(|s| {
                if let Statement::Input(i) = s {
                    Some(i)
                } else {
                    None
                }
            })
            .collect();
        let mut flow = None;
        let mut model_input = None;
        match inputs.first() {
            None => {
                let d = Diagnostic::error("E0008", format!("model `{}` has no `input`", ast.name.name))
                    .with_label(ast.name.span, "this model declares no input shape")
                    .with_help(
                        "declare the per-example input shape first, e.g. `input [28, 28, 1]` (height, width, channels)",
                    );
                self.ctx.diags.push(d);
            }
            Some(first) => {
                if let Some(shape) = self.input_shape(first) {
                    model_input = Some(shape.clone());
                    let line = self.line(first.span);
                    flow = Some(Flow {
                        shape,
                        origin: Origin {
                            what: format!("the `input` at line {line}"),
                            span: first.span,
                        },
                    });
                }
                if let Some(Statement::Layer(l)) = ast.statements.first() {
                    let d = Diagnostic::error("E0008", "`input` must come before the layers")
                        .with_label(first.keyword, "declared after a layer")
                        .with_label(l.keyword.span, "the first layer")
                        .with_help("move the `input [...]` line to the top of the model body");
                    self.ctx.diags.push(d);
                }
            }
        }
        for extra in inputs.iter().skip(1) {
            let d = Diagnostic::error("E0008", "the input is declared more than once")
                .with_label(extra.keyword, "second `input`")
                .with_label(inputs[0].keyword, "first declared here")
                .with_help("a model has exactly one input: remove one of them");
            self.ctx.diags.push(d);
        }

        let mut layers = Vec::new();
        let mut total_params = 0usize;
        let mut total_flops = 0u64;
        let mut layer_count = 0usize;
        for stmt in &ast.statements {
            let Statement::Layer(l) = stmt else { continue };
            layer_count += 1;
            let Some(def) = lookup(&l.keyword.name) else {
                self.ctx.diags.push(unknown_layer(l));
                flow = None;
                continue;
            };
            let bound = bind(&mut self.ctx, def, l);
            let res = resolve(&mut self.ctx, def, &bound);
            let name = self.layer_name(def, l, &res);
            let incoming = flow.take();
            let (Some(kind), Some(incoming)) = (res.kind.clone(), incoming) else {
                continue;
            };
            let Some(inf) = self.infer(l, &res, kind, &name, &incoming) else {
                continue;
            };
            let (Some(p), Some(f)) = (
                total_params.checked_add(inf.params),
                total_flops.checked_add(inf.flops),
            ) else {
                self.overflow(l, &name, "the model's total parameter or FLOP count");
                continue;
            };
            total_params = p;
            total_flops = f;
            let changes_shape = !matches!(
                inf.kind,
                LayerKind::Dropout { .. } | LayerKind::Activation { .. }
            );
            let origin = if changes_shape {
                Origin {
                    what: format!("`{name}` at line {}", self.line(l.span)),
                    span: l.keyword.span,
                }
            } else {
                incoming.origin.clone()
            };
            flow = Some(Flow {
                shape: inf.output.clone(),
                origin,
            });
            if !res.had_error {
                layers.push(Layer {
                    name,
                    kind: inf.kind,
                    span: l.span,
                    input_shape: incoming.shape,
                    output_shape: inf.output,
                    pads: inf.pads,
                    params: inf.params,
                    flops: inf.flops,
                });
            }
        }
        if layer_count == 0 {
            let d = Diagnostic::error("E0018", format!("model `{}` has no layers", ast.name.name))
                .with_label(ast.name.span, "this model computes nothing")
                .with_help("add layers after the input, e.g. `flatten` and then `dense(10, activation=softmax)`");
            self.ctx.diags.push(d);
        }
        Some(Model {
            name: ast.name.name.clone(),
            input_shape: model_input?,
            layers,
        })
    }

    /// The input shape: 3 positive dimensions `[h, w, c]` or 1 `[features]`.
    fn input_shape(&mut self, input: &InputStmt) -> Option<Vec<usize>> {
        let ValueKind::Tuple(items) = &input.shape.kind else {
            return None;
        };
        let dims: Vec<Option<usize>> = items
            .iter()
            .map(|v| self.ctx.positive_int(v, "input", &[]))
            .collect();
        if items.len() != 3 && items.len() != 1 {
            let given = crate::check::values::snippet(self.ctx.source, input.shape.span);
            let help = match items.len() {
                0 => "give the per-example shape, e.g. `input [28, 28, 1]`".to_string(),
                2 => {
                    let inner = given.trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
                    format!("add the channel axis (1 for grayscale, 3 for RGB): `input [{inner}, 1]`")
                }
                4 => rank4_help(&dims),
                _ => "write `input [height, width, channels]` (or `input [features]` for a flat input)".to_string(),
            };
            let d = Diagnostic::error(
                "E0016",
                format!(
                    "the input shape must have 3 dimensions [height, width, channels] or 1 [features], found {}",
                    items.len()
                ),
            )
            .with_label(
                input.shape.span,
                format!("{} dimension{}", items.len(), if items.len() == 1 { "" } else { "s" }),
            )
            .with_note("shapes are per example, in NHWC order without the batch dimension")
            .with_help(help);
            self.ctx.diags.push(d);
            return None;
        }
        let dims: Vec<usize> = dims.into_iter().collect::<Option<_>>()?;
        if dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
        {
            let d = Diagnostic::error("E0017", "the input is too large")
                .with_label(
                    input.shape.span,
                    "the number of values per example overflows 64-bit integers",
                )
                .with_help("use realistic sizes, e.g. `input [28, 28, 1]`");
            self.ctx.diags.push(d);
            return None;
        }
        Some(dims)
    }

    /// The explicit or generated (Keras-style) name of a layer; reports duplicates.
    fn layer_name(&mut self, def: &LayerDef, l: &LayerStmt, res: &Resolved) -> String {
        let (name, span, explicit) = match &res.name {
            Some((n, span)) => (n.clone(), *span, true),
            None => {
                let counter = self.counters.entry(def.default_name).or_insert(0);
                let n = if *counter == 0 {
                    def.default_name.to_string()
                } else {
                    format!("{}_{}", def.default_name, counter)
                };
                *counter += 1;
                (n, l.keyword.span, false)
            }
        };
        if bound_invalid_name(l) && res.name.is_none() {
            // An invalid explicit name was reported already; do not report it again as a duplicate.
            return name;
        }
        if let Some((prev_span, prev_explicit)) = self.names.get(&name).copied() {
            let here = if explicit {
                format!("`{name}` is already used")
            } else {
                format!("named `{name}` by default")
            };
            let there = if prev_explicit {
                "first used here".to_string()
            } else {
                format!("this layer is named `{name}` by default")
            };
            let help = if explicit {
                "choose a name that no other layer has".to_string()
            } else {
                "give one of the two layers another name with `name = \"...\"`".to_string()
            };
            let d = Diagnostic::error("E0009", format!("duplicate layer name `{name}`"))
                .with_label(span, here)
                .with_label(prev_span, there)
                .with_note("layer names identify weights in checkpoints and must be unique")
                .with_help(help);
            self.ctx.diags.push(d);
        } else {
            self.names.insert(name.clone(), (span, explicit));
        }
        name
    }

    fn overflow(&mut self, l: &LayerStmt, name: &str, what: &str) {
        let d = Diagnostic::error("E0017", format!("`{name}` is too large: {what} overflows"))
            .with_label(l.keyword.span, "sizes overflow 64-bit integers")
            .with_help("use realistic sizes: a network this large cannot be built");
        self.ctx.diags.push(d);
    }

    fn produced_note(&self, incoming: &Flow) -> String {
        format!(
            "the input to this layer is {}, produced by {}",
            fmt_shape(&incoming.shape),
            incoming.origin.what
        )
    }

    /// Shape inference for one layer, with parameter and FLOP counts.
    fn infer(
        &mut self,
        l: &LayerStmt,
        res: &Resolved,
        kind: LayerKind,
        name: &str,
        incoming: &Flow,
    ) -> Option<Inferred> {
        let input = &incoming.shape;
        match kind {
            LayerKind::Conv2d {
                filters,
                kernel_size,
                strides,
                padding,
                activation,
                use_bias,
            } => {
                let [h, w, cin] = self.image_input(l, name, incoming)?;
                let filters = match &res.filters_expr {
                    None => filters,
                    Some(expr) => self.resolve_filters(expr, cin, incoming, l, name)?,
                };
                let (oh, ow) = self.windows(
                    l,
                    res,
                    name,
                    incoming,
                    [h, w],
                    kernel_size,
                    strides,
                    padding,
                    "kernel",
                )?;
                let params = shape::conv2d_params(kernel_size, cin, filters, use_bias);
                let flops = shape::conv2d_flops([oh.out, ow.out], filters, kernel_size, cin);
                let output = vec![oh.out, ow.out, filters];
                let (Some(params), Some(flops), Some(_)) = (params, flops, element_count(&output))
                else {
                    self.overflow(l, name, "its parameter, FLOP or output size");
                    return None;
                };
                Some(Inferred {
                    kind: LayerKind::Conv2d {
                        filters,
                        kernel_size,
                        strides,
                        padding,
                        activation,
                        use_bias,
                    },
                    output,
                    pads: Some(pads(oh, ow)),
                    params,
                    flops,
                })
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
                let [h, w, c] = self.image_input(l, name, incoming)?;
                let (oh, ow) = self.windows(
                    l,
                    res,
                    name,
                    incoming,
                    [h, w],
                    pool_size,
                    strides,
                    padding,
                    "pool window",
                )?;
                Some(Inferred {
                    kind,
                    output: vec![oh.out, ow.out, c],
                    pads: Some(pads(oh, ow)),
                    params: 0,
                    flops: 0,
                })
            }
            LayerKind::Flatten => {
                let Some(n) = element_count(input) else {
                    self.overflow(l, name, "its output size");
                    return None;
                };
                Some(Inferred {
                    kind,
                    output: vec![n],
                    pads: None,
                    params: 0,
                    flops: 0,
                })
            }
            LayerKind::Dense {
                units, use_bias, ..
            } => {
                if input.len() != 1 {
                    let mut keras_shape = input.clone();
                    if let Some(last) = keras_shape.last_mut() {
                        *last = units;
                    }
                    let d = Diagnostic::error(
                        "E0007",
                        format!("`{name}` needs a flat input, but its input has shape {}", fmt_shape(input)),
                    )
                    .with_label(l.keyword.span, format!("dense layer on a {} input", fmt_shape(input)))
                    .with_label(incoming.origin.span, format!("outputs {}", fmt_shape(input)))
                    .with_note(self.produced_note(incoming))
                    .with_note(format!(
                        "Keras would apply `dense` to the last axis only (output {}); cnnc rejects this because it is almost always a missing `flatten`",
                        fmt_shape(&keras_shape)
                    ))
                    .with_help("add `flatten` before this layer");
                    self.ctx.diags.push(d);
                    return None;
                }
                let inputs = input[0];
                let params = shape::dense_params(inputs, units, use_bias);
                let flops = shape::dense_flops(inputs, units);
                let (Some(params), Some(flops)) = (params, flops) else {
                    let what = format!("its parameter count ({inputs} inputs x {units} units)");
                    self.overflow(l, name, &what);
                    return None;
                };
                Some(Inferred {
                    kind,
                    output: vec![units],
                    pads: None,
                    params,
                    flops,
                })
            }
            LayerKind::GlobalAvgPool2d | LayerKind::GlobalMaxPool2d => {
                let [_, _, c] = self.image_input(l, name, incoming)?;
                Some(Inferred {
                    kind,
                    output: vec![c],
                    pads: None,
                    params: 0,
                    flops: 0,
                })
            }
            LayerKind::ZeroPadding2d { padding } => {
                let [h, w, c] = self.image_input(l, name, incoming)?;
                let oh = h
                    .checked_add(padding.top)
                    .and_then(|v| v.checked_add(padding.bottom));
                let ow = w
                    .checked_add(padding.left)
                    .and_then(|v| v.checked_add(padding.right));
                let output = match (oh, ow) {
                    (Some(oh), Some(ow)) => vec![oh, ow, c],
                    _ => {
                        self.overflow(l, name, "its output size");
                        return None;
                    }
                };
                if element_count(&output).is_none() {
                    self.overflow(l, name, "its output size");
                    return None;
                }
                Some(Inferred {
                    kind,
                    output,
                    pads: Some(padding),
                    params: 0,
                    flops: 0,
                })
            }
            LayerKind::Dropout { .. } | LayerKind::Activation { .. } => Some(Inferred {
                kind,
                output: input.clone(),
                pads: None,
                params: 0,
                flops: 0,
            }),
        }
    }

    /// `[h, w, c]` of an image input, or `E0015`.
    fn image_input(&mut self, l: &LayerStmt, name: &str, incoming: &Flow) -> Option<[usize; 3]> {
        if let [h, w, c] = incoming.shape[..] {
            return Some([h, w, c]);
        }
        let help = if incoming.origin.what.starts_with("the `input`") {
            "declare an image input such as `input [28, 28, 1]`, or remove this layer".to_string()
        } else {
            "convolution and pooling layers must come before `flatten` and `dense`".to_string()
        };
        let d = Diagnostic::error(
            "E0015",
            format!(
                "`{name}` needs an image input [height, width, channels], but its input has shape {}",
                fmt_shape(&incoming.shape)
            ),
        )
        .with_label(l.keyword.span, "expects [height, width, channels]")
        .with_label(incoming.origin.span, format!("outputs {}", fmt_shape(&incoming.shape)))
        .with_note(self.produced_note(incoming))
        .with_help(help);
        self.ctx.diags.push(d);
        None
    }

    /// Resolves `in`, `in * N`, `in / N` against `cin` incoming channels.
    fn resolve_filters(
        &mut self,
        expr: &values::FilterExpr,
        cin: usize,
        incoming: &Flow,
        l: &LayerStmt,
        name: &str,
    ) -> Option<usize> {
        match expr.op {
            ChannelOp::Mul => match cin.checked_mul(expr.operand) {
                Some(f) => Some(f),
                None => {
                    self.overflow(l, name, "its number of filters");
                    None
                }
            },
            ChannelOp::Div => {
                if cin.is_multiple_of(expr.operand) {
                    return Some(cin / expr.operand);
                }
                let divisors: Vec<usize> = (1..=cin.min(100_000))
                    .filter(|d| cin.is_multiple_of(*d))
                    .collect();
                let help = if divisors.len() <= 16 && cin <= 100_000 {
                    format!(
                        "divide by a divisor of {cin} ({}), or write the number of filters directly",
                        divisors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    )
                } else {
                    "write the number of filters directly".to_string()
                };
                let text = values::snippet(self.ctx.source, expr.span);
                let d = Diagnostic::error(
                    "E0010",
                    format!("`{text}` does not divide the {cin} incoming channels evenly"),
                )
                .with_label(
                    expr.span,
                    format!("{cin} is not divisible by {}", expr.operand),
                )
                .with_label(
                    incoming.origin.span,
                    format!("outputs {}", fmt_shape(&incoming.shape)),
                )
                .with_note(self.produced_note(incoming))
                .with_help(help);
                self.ctx.diags.push(d);
                None
            }
        }
    }

    /// Output sizes of both spatial axes of a conv or pooling window, or `E0006`.
    #[allow(clippy::too_many_arguments)]
    fn windows(
        &mut self,
        l: &LayerStmt,
        res: &Resolved,
        name: &str,
        incoming: &Flow,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        padding: Padding,
        what: &str,
    ) -> Option<(AxisOutput, AxisOutput)> {
        let oh = window_output(hw[0], k[0], s[0], padding);
        let ow = window_output(hw[1], k[1], s[1], padding);
        if let (Some(oh), Some(ow)) = (oh, ow) {
            return Some((oh, ow));
        }
        let mut formulas: Vec<(&str, String)> = Vec::new();
        for (axis, i) in [("height", 0), ("width", 1)] {
            if hw[i] < k[i] {
                let v = shape::valid_output_signed(hw[i], k[i], s[i]);
                formulas.push((
                    axis,
                    format!("floor(({} - {}) / {}) + 1 = {v}", hw[i], k[i], s[i]),
                ));
            }
        }
        let formula = match &formulas[..] {
            [(_, a), (_, b)] if a == b => format!("output height and width = {a}"),
            _ => formulas
                .iter()
                .map(|(axis, f)| format!("output {axis} = {f}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let param = if what == "kernel" {
            "kernel_size"
        } else {
            "pool_size"
        };
        let from_input = incoming.origin.what.starts_with("the `input`");
        let fix = if from_input {
            format!("use `padding=same`, a smaller `{param}`, or a larger input")
        } else if what == "kernel" {
            format!(
                "use `padding=same`, a smaller `{param}`, or fewer pooling or strided layers before this one"
            )
        } else {
            format!("use `padding=same`, a smaller `{param}`, or remove this layer")
        };
        let primary = res.window_span.unwrap_or(l.keyword.span);
        let d = Diagnostic::error(
            "E0006",
            format!(
                "output of `{name}` would be empty: its {}x{} {what} does not fit in its {}x{} input",
                k[0], k[1], hw[0], hw[1]
            ),
        )
        .with_label(
            primary,
            format!(
                "{}x{} {what} with `padding=valid` needs an input of at least {}x{}",
                k[0], k[1], k[0], k[1]
            ),
        )
        .with_label(incoming.origin.span, format!("outputs {}", fmt_shape(&incoming.shape)))
        .with_note(self.produced_note(incoming))
        .with_note(format!("with `padding=valid`: {formula}"))
        .with_help(fix);
        self.ctx.diags.push(d);
        None
    }
}

/// The fix for a 4-dimensional input shape. The batch dimension comes
/// first (NHWC), so `[32, 28, 28, 1]` becomes `[28, 28, 1]`; but when the
/// first two dimensions are equal and the next two are not
/// (`[28, 28, 1, 1]`: height and width come first) the shape has an extra
/// trailing axis instead, and the two last dimensions are merged into one
/// channel axis.
fn rank4_help(dims: &[Option<usize>]) -> String {
    let generic = "shapes are per example: write `input [height, width, channels]`, without the batch dimension";
    let Some(d) = dims.iter().copied().collect::<Option<Vec<usize>>>() else {
        return generic.to_string();
    };
    let [d0, d1, d2, d3] = d[..] else {
        return generic.to_string();
    };
    // `[n, h, h, c]`: a batch of square images (also `[32, 32, 32, 3]`).
    let batch_first = d1 == d2 || d0 != d1 || d0 == 1;
    if !batch_first {
        match d2.checked_mul(d3) {
            Some(c) => format!(
                "the first two dimensions look like height and width, and one example has a single channel axis: write `input [{d0}, {d1}, {c}]`"
            ),
            None => generic.to_string(),
        }
    } else {
        format!(
            "a 4-dimensional shape looks like it includes the batch dimension (the first one); write the shape of one example, [height, width, channels]: `input [{d1}, {d2}, {d3}]`"
        )
    }
}

/// Whether the layer has a `name = ...` argument (valid or not).
fn bound_invalid_name(l: &LayerStmt) -> bool {
    l.args
        .iter()
        .any(|a| a.name.as_ref().is_some_and(|n| n.name == "name"))
}

fn pads(h: AxisOutput, w: AxisOutput) -> Pads2d {
    Pads2d {
        top: h.pad_before,
        bottom: h.pad_after,
        left: w.pad_before,
        right: w.pad_after,
    }
}

/// The number of values in a tensor of `shape`, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}
