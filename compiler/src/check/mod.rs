//! Name resolution, defaults, validation and shape inference: the AST of a
//! `.cnn` file becomes a checked [`Model`], or a list of located
//! [`Diagnostic`]s (as many as can be found in one run).
//!
//! Error recovery: an invalid argument is reported and checking goes on
//! with the rest of the layer and the following layers. When a layer's
//! output shape cannot be known (unknown layer, invalid size argument, shape
//! error), the following layers are still checked for argument errors but
//! not for shape errors, so one mistake does not cascade into many.

pub(crate) mod layers;
pub mod shape;
mod suggest;
mod values;

pub use shape::{window_output, AxisOutput};
pub use suggest::did_you_mean;

use crate::diagnostics::Diagnostic;
use crate::expand::{expand, load, Expanded, Node, Ref};
use crate::model::{Dim, Layer, LayerKind, Model, ModelInput, Padding, Pads2d, Span};
use crate::sources::Sources;
use crate::syntax::{ChannelOp, InputStmt, LayerStmt, ValueKind};
use layers::{bind, resolve, LayerDef, Resolved};
use std::collections::HashMap;
use std::path::Path;
use values::Ctx;

/// Parses and checks a `.cnn` source text that imports nothing. Returns the
/// checked model, or every error found (as many as possible in one run),
/// with spans that are byte offsets into `source`.
pub fn check_source(source: &str) -> Result<Model, Vec<Diagnostic>> {
    check_loaded(load("<source>", None, source)).1
}

/// Parses and checks the spec `source` read from `path`, with the files it
/// imports (read relative to `path`). Returns the source map (to render
/// diagnostics with [`Sources::render`]) and the model or every error found.
pub fn check_file(path: &Path, source: &str) -> (Sources, Result<Model, Vec<Diagnostic>>) {
    let display = path.display().to_string();
    check_loaded(load(&display, Some(path), source))
}

fn check_loaded(loaded: crate::expand::Loaded) -> (Sources, Result<Model, Vec<Diagnostic>>) {
    let combined = loaded.sources.combined();
    let mut diags = loaded.diags;
    if loaded.files.first().is_none_or(Option::is_none) {
        return (loaded.sources, Err(diags));
    }
    let (expanded, mut expand_diags) = expand(&loaded.files);
    // A name that a failed import would have defined is not a second mistake.
    let failed = &loaded.failed;
    if !failed.is_empty() {
        for d in expand_diags.iter_mut().filter(|d| d.code == "E0002") {
            d.notes.insert(
                0,
                format!(
                    "it may be defined in {}, which could not be imported",
                    failed
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    diags.extend(expand_diags);
    let mut model = None;
    if let Some(ex) = &expanded {
        let mut checker = Checker {
            ctx: Ctx {
                source: &combined,
                diags: Vec::new(),
            },
            names: HashMap::new(),
            counters: HashMap::new(),
            sources: &loaded.sources,
            bad_calls: Default::default(),
        };
        model = checker.model(ex);
        diags.extend(checker.ctx.diags);
    }
    if diags.is_empty() {
        if let Some(model) = model {
            return (loaded.sources, Ok(model));
        }
        let span = expanded.map(|e| e.name.span).unwrap_or_default();
        diags.push(
            Diagnostic::error(
                "E0000",
                "the model could not be checked (internal error in cnnc)",
            )
            .with_label(span, "while checking this model"),
        );
    }
    (loaded.sources, Err(tidy(diags)))
}

/// At most this many diagnostics are returned (more are counted in a note).
const MAX_DIAGNOSTICS: usize = 100;

/// Sorts diagnostics by position, merges the copies of one error that a
/// block expanded several times produces (same code and place), and keeps at
/// most [`MAX_DIAGNOSTICS`].
fn tidy(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by_key(|d| d.primary_span().start);
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut copies: Vec<usize> = Vec::new();
    let mut index: HashMap<(&'static str, Span), usize> = HashMap::new();
    for d in diags {
        let key = (d.code, d.primary_span());
        match index.get(&key) {
            Some(&i) => copies[i] += 1,
            None => {
                index.insert(key, out.len());
                out.push(d);
                copies.push(0);
            }
        }
    }
    for (d, n) in out.iter_mut().zip(&copies) {
        if *n > 0 {
            d.notes.push(format!(
                "the same error occurs {n} more time{} where this code is expanded again (a block called several times)",
                if *n == 1 { "" } else { "s" }
            ));
        }
    }
    if out.len() > MAX_DIAGNOSTICS {
        let more = out.len() - MAX_DIAGNOSTICS;
        out.truncate(MAX_DIAGNOSTICS);
        if let Some(last) = out.last_mut() {
            last.notes.push(format!(
                "{more} further error{} not shown",
                if more == 1 { "" } else { "s" }
            ));
        }
    }
    out
}

/// Where a tensor was produced, for messages.
#[derive(Debug, Clone)]
struct Origin {
    /// "`max_pooling2d_2` at line 12" or "the `input` at line 2".
    what: String,
    span: Span,
    /// How the shape came about: "conv2d(256, 1, strides=2) on [56, 56, 64]".
    how: Option<String>,
    /// The last layers on the way here that changed the spatial size and
    /// the channels (for notes on joins): "`conv2d_2` at line 4 made
    /// [32, 32, 64] into [16, 16, 64] (`...`)".
    spatial: Option<String>,
    channels: Option<String>,
}

/// A tensor flowing between layers: its shape and origin.
#[derive(Debug, Clone)]
struct Flow {
    shape: Vec<Dim>,
    origin: Origin,
    /// The layer or input name (for [`Layer::inputs`]).
    name: String,
}

/// `[3, 3, 256]`, `[?, ?, 64]`.
fn fmt_shape(shape: &[Dim]) -> String {
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
    output: Vec<Dim>,
    pads: Option<Pads2d>,
    params: usize,
    /// Parameters never trained (batch norm's moving statistics).
    frozen_params: usize,
    flops: u64,
}

impl Inferred {
    fn plain(kind: LayerKind, output: Vec<Dim>) -> Inferred {
        Inferred {
            kind,
            output,
            pads: None,
            params: 0,
            frozen_params: 0,
            flops: 0,
        }
    }
}

struct Checker<'s> {
    ctx: Ctx<'s>,
    /// Layer names taken so far: span to point at, and whether the name was explicit.
    names: HashMap<String, (Span, bool)>,
    /// Keras-style counters of generated names, per prefix.
    counters: HashMap<&'static str, usize>,
    /// The files, for "at line N" in notes.
    sources: &'s Sources,
    /// Calls whose arguments were invalid once: a block expanded again
    /// repeats the same mistake, which is reported once.
    bad_calls: std::collections::HashSet<Span>,
}

impl Checker<'_> {
    /// "line 12", or "`blocks.cnn` line 12" in an imported file.
    fn where_(&self, span: Span) -> String {
        self.sources.where_(span)
    }

    fn model(&mut self, ex: &Expanded) -> Option<Model> {
        let mut inputs: Vec<Option<Flow>> = Vec::new();
        let mut model_inputs = Vec::new();
        for input in &ex.inputs {
            let shape = self.input_shape(&input.stmt);
            let what = if input.stmt.name.is_some() {
                format!(
                    "the `input` `{}` at {}",
                    input.name,
                    self.where_(input.stmt.span)
                )
            } else {
                format!("the `input` at {}", self.where_(input.stmt.span))
            };
            self.names
                .entry(input.name.clone())
                .or_insert((input.stmt.keyword, true));
            inputs.push(shape.clone().map(|shape| Flow {
                shape,
                origin: Origin {
                    what,
                    span: input.stmt.span,
                    how: None,
                    spatial: None,
                    channels: None,
                },
                name: input.name.clone(),
            }));
            if let Some(shape) = shape {
                model_inputs.push(ModelInput {
                    name: input.name.clone(),
                    shape,
                    span: input.stmt.span,
                });
            }
        }
        let mut flows: Vec<Option<Flow>> = Vec::with_capacity(ex.nodes.len());
        let mut layers = Vec::with_capacity(ex.nodes.len());
        let mut total_params = 0usize;
        let mut total_flops = 0u64;
        for node in &ex.nodes {
            let before = self.ctx.diags.len();
            let flow = self.node(
                node,
                &inputs,
                &flows,
                &mut layers,
                &mut total_params,
                &mut total_flops,
            );
            flows.push(flow);
            if !node.context.is_empty() && self.ctx.diags.len() > before {
                let notes: Vec<String> = node
                    .context
                    .iter()
                    .map(|(block, span)| {
                        format!("in `{block}`, called at {}", self.sources.location(*span))
                    })
                    .collect();
                for d in &mut self.ctx.diags[before..] {
                    d.notes.extend(notes.iter().cloned());
                }
            }
        }
        let mut outputs = Vec::new();
        for (r, _, _) in &ex.outputs {
            let flow = match r {
                Some(Ref::Input(i)) => inputs.get(*i).cloned().flatten(),
                Some(Ref::Node(n)) => flows.get(*n).cloned().flatten(),
                None => None,
            };
            // An output without a value follows an error reported already.
            if let Some(f) = flow {
                outputs.push(f.name);
            }
        }
        // As Keras's `Model(inputs, outputs)`: layers that no output depends
        // on (a branch left out of a join) are not part of the model.
        let mut needed: std::collections::HashSet<&str> =
            outputs.iter().map(String::as_str).collect();
        let mut keep = vec![false; layers.len()];
        for (i, layer) in layers.iter().enumerate().rev() {
            if needed.contains(layer.name.as_str()) {
                keep[i] = true;
                needed.extend(layer.inputs.iter().map(String::as_str));
            }
        }
        let mut keep = keep.into_iter();
        layers.retain(|_| keep.next().unwrap_or(true));
        let first = model_inputs.first()?.shape.clone();
        Some(Model {
            name: ex.name.name.clone(),
            input_shape: first,
            inputs: model_inputs,
            outputs,
            layers,
        })
    }

    /// Checks one node; returns its output tensor if it could be computed.
    fn node(
        &mut self,
        node: &Node,
        inputs: &[Option<Flow>],
        flows: &[Option<Flow>],
        layers: &mut Vec<Layer>,
        total_params: &mut usize,
        total_flops: &mut u64,
    ) -> Option<Flow> {
        let l = &node.call;
        let def = node.def;
        if !node.args_ok || self.bad_calls.contains(&l.span) {
            return None;
        }
        let bound = bind(&mut self.ctx, def, l);
        let res = resolve(&mut self.ctx, def, &bound);
        if res.had_error {
            self.bad_calls.insert(l.span);
        }
        let name = self.layer_name(def, l, &res);
        let incoming: Vec<Flow> = node
            .inputs
            .iter()
            .map(|r| match r {
                Some(Ref::Input(i)) => inputs.get(*i).cloned().flatten(),
                Some(Ref::Node(n)) => flows.get(*n).cloned().flatten(),
                None => None,
            })
            .collect::<Option<Vec<Flow>>>()?;
        let kind = res.kind.clone()?;
        let inf = if def.family.is_join() {
            self.infer_join(node, &res, kind, &name, &incoming)?
        } else {
            self.infer(l, &res, kind, &name, &incoming[0])?
        };
        let (Some(p), Some(f)) = (
            total_params.checked_add(inf.params),
            total_flops.checked_add(inf.flops),
        ) else {
            self.overflow(l, &name, "the model's total parameter or FLOP count");
            return None;
        };
        *total_params = p;
        *total_flops = f;
        let changes_shape = !matches!(
            inf.kind,
            LayerKind::Dropout { .. }
                | LayerKind::Activation { .. }
                | LayerKind::BatchNormalization { .. }
        );
        let origin = if changes_shape {
            let call = values::snippet(self.ctx.source, l.span);
            let what = format!("`{name}` at {}", self.where_(l.span));
            let before = &incoming[0].shape;
            let step = format!(
                "{what} made {} into {} (`{call}`)",
                fmt_shape(before),
                fmt_shape(&inf.output)
            );
            let split = |s: &[Dim]| -> (Vec<Dim>, Option<Dim>) {
                match s.split_last() {
                    Some((c, hw)) => (hw.to_vec(), Some(*c)),
                    None => (Vec::new(), None),
                }
            };
            let (hw0, c0) = split(before);
            let (hw1, c1) = split(&inf.output);
            let spatial = if hw0 != hw1 {
                Some(step.clone())
            } else {
                incoming[0].origin.spatial.clone()
            };
            let channels = if c0 != c1 || before.len() != inf.output.len() {
                Some(step)
            } else {
                incoming[0].origin.channels.clone()
            };
            Origin {
                what,
                span: l.keyword.span,
                how: Some(format!(
                    "`{call}` applied to {}",
                    incoming
                        .iter()
                        .map(|f| fmt_shape(&f.shape))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )),
                spatial,
                channels,
            }
        } else {
            incoming[0].origin.clone()
        };
        let flow = Flow {
            shape: inf.output.clone(),
            origin,
            name: name.clone(),
        };
        if res.had_error {
            return Some(flow);
        }
        let trainable_params = if node.trainable {
            inf.params - inf.frozen_params
        } else {
            0
        };
        layers.push(Layer {
            name,
            kind: inf.kind,
            span: l.span,
            inputs: incoming.iter().map(|f| f.name.clone()).collect(),
            input_shape: incoming[0].shape.clone(),
            output_shape: inf.output,
            pads: inf.pads,
            params: inf.params,
            trainable_params,
            trainable: node.trainable,
            flops: inf.flops,
        });
        Some(flow)
    }

    /// The input shape: 3 positive dimensions `[h, w, c]` or 1 `[features]`;
    /// height and width may be `?` (unknown until the model runs).
    fn input_shape(&mut self, input: &InputStmt) -> Option<Vec<Dim>> {
        let ValueKind::Tuple(items) = &input.shape.kind else {
            return None;
        };
        let image = items.len() == 3;
        let mut unknown = Vec::new();
        let dims: Vec<Option<usize>> = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if matches!(v.kind, ValueKind::Unknown) && image && i < 2 {
                    unknown.push(i);
                    Some(1)
                } else if matches!(v.kind, ValueKind::Unknown) {
                    let d = Diagnostic::error("E0016", "only the height and width of an input may be unknown")
                        .with_label(v.span, if image { "the channels must be known" } else { "a flat input's size must be known" })
                        .with_note("`?` leaves a spatial size open for fully convolutional models: `input [?, ?, 3]`")
                        .with_help("give the number here, e.g. `input [?, ?, 3]`");
                    self.ctx.diags.push(d);
                    None
                } else {
                    self.ctx.positive_int(v, "input", &[])
                }
            })
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
        let sizes: Vec<usize> = dims.into_iter().collect::<Option<_>>()?;
        if sizes
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
        Some(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    if unknown.contains(&i) {
                        Dim::UNKNOWN
                    } else {
                        Dim::from(n)
                    }
                })
                .collect(),
        )
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
                dilation_rate,
                activation,
                use_bias,
            } => {
                let ([h, w], cin) = self.image_input(l, name, incoming)?;
                let filters = self.filters(res, filters, cin, incoming, l, name)?;
                let win = self.dilated_windows(
                    l,
                    res,
                    name,
                    incoming,
                    [h, w],
                    kernel_size,
                    strides,
                    dilation_rate,
                    padding,
                )?;
                let params = shape::conv2d_params(kernel_size, cin, filters, use_bias);
                let flops = win.flops(|o| shape::conv2d_flops(o, filters, kernel_size, cin));
                let output = win.shape(filters);
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
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                    output,
                    pads: win.pads,
                    params,
                    frozen_params: 0,
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
                let ([h, w], c) = self.image_input(l, name, incoming)?;
                let win = self.windows(
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
                    output: win.shape(c),
                    pads: win.pads,
                    params: 0,
                    frozen_params: 0,
                    flops: 0,
                })
            }
            LayerKind::Flatten => {
                // With an unknown height or width the length is unknown too.
                let n = match known(input) {
                    Some(sizes) => match count(&sizes) {
                        Some(n) => Dim::from(n),
                        None => {
                            self.overflow(l, name, "its output size");
                            return None;
                        }
                    },
                    None => Dim::UNKNOWN,
                };
                Some(Inferred {
                    kind,
                    output: vec![n],
                    pads: None,
                    params: 0,
                    frozen_params: 0,
                    flops: 0,
                })
            }
            LayerKind::Dense {
                units, use_bias, ..
            } => {
                if input.len() != 1 {
                    let mut keras_shape = input.clone();
                    if let Some(last) = keras_shape.last_mut() {
                        *last = Dim::from(units);
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
                let Some(inputs) = input[0].known() else {
                    let d = Diagnostic::error(
                        "E0027",
                        format!("`{name}` needs a known number of input features, but its input has shape {}", fmt_shape(input)),
                    )
                    .with_label(l.keyword.span, "the size of its weights depends on the number of inputs")
                    .with_label(incoming.origin.span, format!("outputs {}", fmt_shape(input)))
                    .with_note(self.produced_note(incoming))
                    .with_note("the input's height or width is `?`, so the flattened length is unknown")
                    .with_help("use `global_average_pooling2d` (or `global_max_pooling2d`) instead of `flatten`, which removes the unknown sizes, or give the input a fixed size");
                    self.ctx.diags.push(d);
                    return None;
                };
                let params = shape::dense_params(inputs, units, use_bias);
                let flops = shape::dense_flops(inputs, units);
                let (Some(params), Some(flops)) = (params, flops) else {
                    let what = format!("its parameter count ({inputs} inputs x {units} units)");
                    self.overflow(l, name, &what);
                    return None;
                };
                Some(Inferred {
                    kind,
                    output: vec![Dim::from(units)],
                    pads: None,
                    params,
                    frozen_params: 0,
                    flops,
                })
            }
            LayerKind::GlobalAvgPool2d | LayerKind::GlobalMaxPool2d => {
                let (_, c) = self.image_input(l, name, incoming)?;
                Some(Inferred {
                    kind,
                    output: vec![Dim::from(c)],
                    pads: None,
                    params: 0,
                    frozen_params: 0,
                    flops: 0,
                })
            }
            LayerKind::ZeroPadding2d { padding } => {
                let ([h, w], c) = self.image_input(l, name, incoming)?;
                let grow = |n: Dim, a: usize, b: usize| -> Option<Dim> {
                    match n.known() {
                        Some(n) => n.checked_add(a)?.checked_add(b).map(Dim::from),
                        None => Some(Dim::UNKNOWN),
                    }
                };
                let output = match (
                    grow(h, padding.top, padding.bottom),
                    grow(w, padding.left, padding.right),
                ) {
                    (Some(oh), Some(ow)) => vec![oh, ow, Dim::from(c)],
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
                    frozen_params: 0,
                    flops: 0,
                })
            }
            LayerKind::Dropout { .. } | LayerKind::Activation { .. } => Some(Inferred {
                kind,
                output: input.clone(),
                pads: None,
                params: 0,
                frozen_params: 0,
                flops: 0,
            }),
            LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                depth_multiplier,
                dilation_rate,
                use_bias,
                ..
            } => {
                let ([h, w], cin) = self.image_input(l, name, incoming)?;
                let win = self.dilated_windows(
                    l,
                    res,
                    name,
                    incoming,
                    [h, w],
                    kernel_size,
                    strides,
                    dilation_rate,
                    padding,
                )?;
                let out_c = cin.checked_mul(depth_multiplier);
                let params = out_c.and_then(|c| {
                    shape::conv2d_params(kernel_size, c, 1, false)?.checked_add(if use_bias {
                        c
                    } else {
                        0
                    })
                });
                let flops =
                    out_c.and_then(|c| win.flops(|o| shape::conv2d_flops(o, c, kernel_size, 1)));
                let (Some(out_c), Some(params), Some(flops)) = (out_c, params, flops) else {
                    self.overflow(l, name, "its parameter, FLOP or output size");
                    return None;
                };
                let output = win.shape(out_c);
                element_count(&output).or_else(|| {
                    self.overflow(l, name, "its output size");
                    None
                })?;
                Some(Inferred {
                    kind,
                    output,
                    pads: win.pads,
                    params,
                    frozen_params: 0,
                    flops,
                })
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
                let ([h, w], cin) = self.image_input(l, name, incoming)?;
                let filters = self.filters(res, filters, cin, incoming, l, name)?;
                let win = self.dilated_windows(
                    l,
                    res,
                    name,
                    incoming,
                    [h, w],
                    kernel_size,
                    strides,
                    dilation_rate,
                    padding,
                )?;
                let mid = cin.checked_mul(depth_multiplier);
                // Depthwise kernel kh*kw*cin*dm, pointwise cin*dm*filters, bias filters.
                let params = mid.and_then(|m| {
                    shape::conv2d_params(kernel_size, m, 1, false)?
                        .checked_add(shape::conv2d_params([1, 1], m, filters, use_bias)?)
                });
                let flops =
                    mid.and_then(|m| {
                        win.flops(|o| {
                            shape::conv2d_flops(o, m, kernel_size, 1)?
                                .checked_add(shape::conv2d_flops(o, filters, [1, 1], m)?)
                        })
                    });
                let output = win.shape(filters);
                let (Some(params), Some(flops), Some(_)) = (params, flops, element_count(&output))
                else {
                    self.overflow(l, name, "its parameter, FLOP or output size");
                    return None;
                };
                Some(Inferred {
                    kind: LayerKind::SeparableConv2d {
                        filters,
                        kernel_size,
                        strides,
                        padding,
                        depth_multiplier,
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                    output,
                    pads: win.pads,
                    params,
                    frozen_params: 0,
                    flops,
                })
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
                let ([h, w], cin) = self.image_input(l, name, incoming)?;
                let filters = self.filters(res, filters, cin, incoming, l, name)?;
                if let Some(op) = output_padding {
                    for axis in 0..2 {
                        if op[axis] >= strides[axis] {
                            let d = Diagnostic::error(
                                "E0005",
                                format!(
                                    "`output_padding` must be smaller than `strides`, found {} with strides {}",
                                    op[axis], strides[axis]
                                ),
                            )
                            .with_label(l.span, "output_padding >= strides")
                            .with_note("Keras rejects this too: the extra rows would get no input")
                            .with_help(format!("use `output_padding` from 0 to {}", strides[axis] - 1));
                            self.ctx.diags.push(d);
                            return None;
                        }
                    }
                }
                let mut out = [Dim::UNKNOWN; 2];
                let mut crop = [(0usize, 0usize); 2];
                for axis in 0..2 {
                    // The crop does not depend on the input size (TF's rule),
                    // so an unknown size is computed as 2 for it.
                    let size = [h, w][axis];
                    let n = size.known().unwrap_or(2);
                    let k = shape::dilated(kernel_size[axis], dilation_rate[axis]);
                    let o = k.and_then(|k| {
                        shape::transpose_output(
                            n,
                            k,
                            strides[axis],
                            padding,
                            output_padding.map(|p| p[axis]),
                        )
                    });
                    let (Some(k), Some(o)) = (k, o) else {
                        self.overflow(l, name, "its output size");
                        return None;
                    };
                    out[axis] = if size.is_known() {
                        Dim::from(o)
                    } else {
                        Dim::UNKNOWN
                    };
                    crop[axis] = shape::transpose_crop(n, k, strides[axis], o, padding);
                }
                let params = shape::conv2d_params(kernel_size, cin, filters, use_bias);
                let flops = match (h.known(), w.known()) {
                    (Some(h), Some(w)) => shape::conv2d_flops([h, w], filters, kernel_size, cin),
                    _ => Some(0),
                };
                let output = vec![out[0], out[1], Dim::from(filters)];
                let (Some(params), Some(flops), Some(_)) = (params, flops, element_count(&output))
                else {
                    self.overflow(l, name, "its parameter, FLOP or output size");
                    return None;
                };
                Some(Inferred {
                    kind: LayerKind::Conv2dTranspose {
                        filters,
                        kernel_size,
                        strides,
                        padding,
                        output_padding,
                        dilation_rate,
                        activation,
                        use_bias,
                    },
                    output,
                    pads: Some(Pads2d {
                        top: crop[0].0,
                        bottom: crop[0].1,
                        left: crop[1].0,
                        right: crop[1].1,
                    }),
                    params,
                    frozen_params: 0,
                    flops,
                })
            }
            LayerKind::BatchNormalization { center, scale, .. } => {
                // Keras numbering (axis 0 is the batch): the channels are -1 or `rank`.
                let rank = input.len() as i64;
                let (axis, axis_span) = res.axis;
                if axis != -1 && axis != rank {
                    let d = Diagnostic::error(
                        "E0005",
                        format!("`batch_normalization` over axis {axis} is not supported"),
                    )
                    .with_label(axis_span.unwrap_or(l.keyword.span), "only the last (channel) axis")
                    .with_note(format!(
                        "its input has shape {} (NHWC without the batch); as in Keras, axis 0 is the batch, so the channel axis is -1 or {}",
                        fmt_shape(input),
                        rank
                    ))
                    .with_help("use `axis=-1` (the default)");
                    self.ctx.diags.push(d);
                    return None;
                }
                let c = input.last()?.known()?;
                let per = usize::from(center) + usize::from(scale) + 2;
                let Some(params) = c.checked_mul(per) else {
                    self.overflow(l, name, "its parameter count");
                    return None;
                };
                Some(Inferred {
                    kind,
                    output: input.clone(),
                    pads: None,
                    params,
                    frozen_params: 2 * c,
                    flops: 0,
                })
            }
            LayerKind::UpSampling2d { size, .. } => {
                let ([h, w], c) = self.image_input(l, name, incoming)?;
                let scale = |n: Dim, f: usize| -> Option<Dim> {
                    match n.known() {
                        Some(n) => n.checked_mul(f).map(Dim::from),
                        None => Some(Dim::UNKNOWN),
                    }
                };
                let output = match (scale(h, size[0]), scale(w, size[1])) {
                    (Some(oh), Some(ow)) => vec![oh, ow, Dim::from(c)],
                    _ => {
                        self.overflow(l, name, "its output size");
                        return None;
                    }
                };
                element_count(&output).or_else(|| {
                    self.overflow(l, name, "its output size");
                    None
                })?;
                Some(Inferred::plain(kind, output))
            }
            LayerKind::Reshape { .. } => {
                let (target, span) = res.target_shape.clone()?;
                let Some(n) = known(input).and_then(|sizes| count(&sizes)) else {
                    let d = Diagnostic::error(
                        "E0027",
                        format!(
                            "`{name}` needs a known input size, but its input has shape {}",
                            fmt_shape(input)
                        ),
                    )
                    .with_label(l.keyword.span, "cannot check the number of values")
                    .with_label(
                        incoming.origin.span,
                        format!("outputs {}", fmt_shape(input)),
                    )
                    .with_note(self.produced_note(incoming))
                    .with_help("give the input a fixed size, or reshape after global pooling");
                    self.ctx.diags.push(d);
                    return None;
                };
                let known: usize = target
                    .iter()
                    .flatten()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))?;
                let output: Option<Vec<usize>> = if target.iter().any(Option::is_none) {
                    (known > 0 && n % known == 0)
                        .then(|| target.iter().map(|d| d.unwrap_or(n / known)).collect())
                } else {
                    (known == n).then(|| target.iter().flatten().copied().collect())
                };
                let Some(output) = output else {
                    let d = Diagnostic::error(
                        "E0026",
                        format!(
                            "`{name}` cannot reshape {} ({n} values) to {}",
                            fmt_shape(input),
                            values::snippet(self.ctx.source, span)
                        ),
                    )
                    .with_label(span, if target.iter().any(Option::is_none) {
                        format!("the known dimensions multiply to {known}, which does not divide {n}")
                    } else {
                        format!("{known} values")
                    })
                    .with_label(incoming.origin.span, format!("outputs {}", fmt_shape(input)))
                    .with_note(self.produced_note(incoming))
                    .with_help("the target must hold as many values as the input; use `-1` for one dimension to infer it");
                    self.ctx.diags.push(d);
                    return None;
                };
                Some(Inferred::plain(
                    LayerKind::Reshape {
                        target_shape: output.clone(),
                    },
                    crate::model::dims(&output),
                ))
            }
            LayerKind::Add | LayerKind::Multiply | LayerKind::Concatenate { .. } => None,
        }
    }

    /// Shape inference for `add`, `multiply` and `concatenate`: `E0023`
    /// when the shapes do not fit, pointing at every producer and saying how
    /// each shape came about.
    fn infer_join(
        &mut self,
        node: &Node,
        res: &Resolved,
        kind: LayerKind,
        name: &str,
        incoming: &[Flow],
    ) -> Option<Inferred> {
        let l = &node.call;
        let first = &incoming[0].shape;
        let (output, kind, mismatch) = match kind {
            LayerKind::Concatenate { .. } => {
                let rank = first.len() as i64;
                let (axis, axis_span) = res.axis;
                // Keras numbering: axis 0 is the batch, 1.. the dimensions
                // of an example; negative axes count from the end.
                let a = if axis < 0 { rank + axis } else { axis - 1 };
                if a < 0 || a >= rank {
                    let what = if axis == 0 {
                        "axis 0 is the batch, which cannot be joined".to_string()
                    } else {
                        format!("valid axes are 1 to {rank} or -{rank} to -1")
                    };
                    let d = Diagnostic::error(
                        "E0005",
                        format!(
                            "`axis={axis}` is out of range for inputs of shape {}",
                            fmt_shape(first)
                        ),
                    )
                    .with_label(axis_span.unwrap_or(l.keyword.span), what)
                    .with_note("as in Keras, axis 0 is the batch: for [height, width, channels] inputs axis 1 is the height, 2 the width, 3 (or -1) the channels")
                    .with_help("use `axis=-1` (the default) to join along channels");
                    self.ctx.diags.push(d);
                    return None;
                }
                let a = a as usize;
                let fits = |s: &[Dim]| {
                    s.len() == first.len()
                        && s.iter()
                            .zip(first)
                            .enumerate()
                            .all(|(i, (x, y))| i == a || compatible(*x, *y))
                };
                if incoming.iter().all(|f| fits(&f.shape)) {
                    let mut out = joined(incoming.iter().map(|f| f.shape.as_slice()));
                    // The joined axis: the sum, unknown if any part is.
                    let total = incoming.iter().try_fold(Some(0usize), |acc, f| {
                        Some(match (acc, f.shape[a].known()) {
                            (Some(t), Some(n)) => Some(t.checked_add(n)?),
                            _ => None,
                        })
                    });
                    let Some(total) = total else {
                        self.overflow(l, name, "its output size");
                        return None;
                    };
                    out[a] = Dim(total);
                    (out, LayerKind::Concatenate { axis: a }, None)
                } else {
                    (
                        Vec::new(),
                        kind,
                        Some(format!("all dimensions but axis {axis} must agree")),
                    )
                }
            }
            _ => {
                let same = |s: &[Dim]| {
                    s.len() == first.len() && s.iter().zip(first).all(|(x, y)| compatible(*x, *y))
                };
                if incoming.iter().all(|f| same(&f.shape)) {
                    (
                        joined(incoming.iter().map(|f| f.shape.as_slice())),
                        kind,
                        None,
                    )
                } else {
                    (
                        Vec::new(),
                        kind,
                        Some("all inputs must have the same shape".to_string()),
                    )
                }
            }
        };
        if let Some(rule) = mismatch {
            let shapes = incoming
                .iter()
                .map(|f| fmt_shape(&f.shape))
                .collect::<Vec<_>>()
                .join(" and ");
            let mut d = Diagnostic::error(
                "E0023",
                format!("`{name}` cannot join tensors of shapes {shapes}"),
            )
            .with_label(l.keyword.span, rule.clone());
            for (f, span) in incoming.iter().zip(&node.input_spans) {
                if *span != l.keyword.span {
                    d = d.with_label(*span, format!("this is {}", fmt_shape(&f.shape)));
                }
            }
            for f in incoming {
                d = d.with_label(f.origin.span, format!("outputs {}", fmt_shape(&f.shape)));
            }
            for f in incoming {
                let how = match &f.origin.how {
                    Some(h) => format!(": {h}"),
                    None => String::new(),
                };
                let mut note = format!(
                    "{} is produced by {}{how}",
                    fmt_shape(&f.shape),
                    f.origin.what
                );
                let differs = |axis: &dyn Fn(&[Dim]) -> Vec<Dim>| {
                    incoming.iter().any(|g| axis(&g.shape) != axis(first))
                };
                let hw = |s: &[Dim]| s[..s.len().saturating_sub(1)].to_vec();
                let c = |s: &[Dim]| s.last().copied().into_iter().collect::<Vec<_>>();
                let trail = [
                    (
                        differs(&hw),
                        &f.origin.spatial,
                        "its height and width were set",
                    ),
                    (differs(&c), &f.origin.channels, "its channels were set"),
                ];
                for (relevant, step, words) in trail {
                    if let Some(step) = step
                        .as_ref()
                        .filter(|s| relevant && !s.starts_with(&f.origin.what))
                    {
                        note += &format!("; {words} where {step}");
                    }
                }
                d = d.with_note(note);
            }
            let help = match kind {
                LayerKind::Concatenate { .. } => "make the other dimensions agree, e.g. with matching `strides` or pooling on both branches",
                _ => "make both branches produce the same shape: the same `strides` (or a strided 1x1 conv on the shortcut) and the same number of filters",
            };
            self.ctx.diags.push(d.with_help(help));
            return None;
        }
        if element_count(&output).is_none() {
            self.overflow(l, name, "its output size");
            return None;
        }
        Some(Inferred::plain(kind, output))
    }

    /// Like [`Self::windows`] for a kernel with dilation; Keras's rule that
    /// strides and dilation cannot both exceed 1 gives `E0005`.
    #[allow(clippy::too_many_arguments)]
    fn dilated_windows(
        &mut self,
        l: &LayerStmt,
        res: &Resolved,
        name: &str,
        incoming: &Flow,
        hw: [Dim; 2],
        kernel_size: [usize; 2],
        strides: [usize; 2],
        dilation_rate: [usize; 2],
        padding: Padding,
    ) -> Option<Window> {
        if dilation_rate != [1, 1] && strides != [1, 1] {
            let d = Diagnostic::error(
                "E0005",
                format!("`{name}` has both `strides` and `dilation_rate` above 1"),
            )
            .with_label(
                l.span,
                format!(
                    "strides {}x{} with dilation_rate {}x{}",
                    strides[0], strides[1], dilation_rate[0], dilation_rate[1]
                ),
            )
            .with_note("Keras rejects this combination: a dilated kernel moves one pixel at a time")
            .with_help("use `strides=1` with `dilation_rate`, or a separate strided layer");
            self.ctx.diags.push(d);
            return None;
        }
        let k = [
            shape::dilated(kernel_size[0], dilation_rate[0]),
            shape::dilated(kernel_size[1], dilation_rate[1]),
        ];
        let [Some(kh), Some(kw)] = k else {
            self.overflow(l, name, "its dilated kernel size");
            return None;
        };
        self.windows(
            l,
            res,
            name,
            incoming,
            hw,
            [kh, kw],
            strides,
            padding,
            "kernel",
        )
    }

    /// `([h, w], c)` of an image input (height and width may be unknown,
    /// the channels never are), or `E0015`.
    fn image_input(
        &mut self,
        l: &LayerStmt,
        name: &str,
        incoming: &Flow,
    ) -> Option<([Dim; 2], usize)> {
        if let [h, w, c] = incoming.shape[..] {
            return Some(([h, w], c.known()?));
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

    /// The number of filters: as written, or a channel expression
    /// (`in * 2`) resolved against `cin` incoming channels.
    fn filters(
        &mut self,
        res: &Resolved,
        written: usize,
        cin: usize,
        incoming: &Flow,
        l: &LayerStmt,
        name: &str,
    ) -> Option<usize> {
        match &res.filters_expr {
            None => Some(written),
            Some(expr) => self.resolve_filters(expr, cin, incoming, l, name),
        }
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

    /// Output sizes of both spatial axes of a conv or pooling window, or
    /// `E0006`. An unknown input size gives an unknown output size.
    #[allow(clippy::too_many_arguments)]
    fn windows(
        &mut self,
        l: &LayerStmt,
        res: &Resolved,
        name: &str,
        incoming: &Flow,
        dims: [Dim; 2],
        k: [usize; 2],
        s: [usize; 2],
        padding: Padding,
        what: &str,
    ) -> Option<Window> {
        let axis = |i: usize| {
            dims[i]
                .known()
                .map(|n| window_output(n, k[i], s[i], padding))
        };
        match (axis(0), axis(1)) {
            (Some(Some(oh)), Some(Some(ow))) => {
                return Some(Window {
                    out: [Dim::from(oh.out), Dim::from(ow.out)],
                    pads: Some(pads(oh, ow)),
                })
            }
            (Some(None), _) | (_, Some(None)) => {}
            (oh, ow) => {
                // Some size is unknown: so is the output's; `valid` pads
                // nothing, `same` pads by a size-dependent amount.
                let out = |o: Option<Option<AxisOutput>>| match o {
                    Some(Some(a)) => Dim::from(a.out),
                    _ => Dim::UNKNOWN,
                };
                return Some(Window {
                    out: [out(oh), out(ow)],
                    pads: (padding == Padding::Valid).then(Pads2d::default),
                });
            }
        }
        // Only known sizes get here.
        let hw = [dims[0].known().unwrap_or(0), dims[1].known().unwrap_or(0)];
        let mut formulas: Vec<(&str, String)> = Vec::new();
        for (axis, i) in [("height", 0), ("width", 1)] {
            if dims[i].is_known() && hw[i] < k[i] {
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
                k[0], k[1], dims[0], dims[1]
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
fn count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The number of values in the known dimensions of `shape` (unknown ones
/// count 1), or `None` on overflow: the overflow check for shapes with `?`.
fn element_count(shape: &[Dim]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(d.known().unwrap_or(1)))
}

/// The sizes of `shape`, if all are known.
fn known(shape: &[Dim]) -> Option<Vec<usize>> {
    crate::model::known_shape(shape)
}

/// Two dimensions that may be the same at run time: equal, or either unknown
/// (as Keras's merge layers accept `None`).
fn compatible(a: Dim, b: Dim) -> bool {
    match (a.known(), b.known()) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// The shape of a join's output: each dimension known if any input knows it.
fn joined<'a>(mut shapes: impl Iterator<Item = &'a [Dim]>) -> Vec<Dim> {
    let mut out: Vec<Dim> = shapes.next().map(<[Dim]>::to_vec).unwrap_or_default();
    for s in shapes {
        for (o, d) in out.iter_mut().zip(s) {
            if !o.is_known() {
                *o = *d;
            }
        }
    }
    out
}

/// Output height and width of a conv or pooling window, and its padding
/// (`None` for `same` over an unknown size).
struct Window {
    out: [Dim; 2],
    pads: Option<Pads2d>,
}

impl Window {
    /// `[oh, ow, channels]`.
    fn shape(&self, channels: usize) -> Vec<Dim> {
        vec![self.out[0], self.out[1], Dim::from(channels)]
    }

    /// FLOPs from the output size, 0 when it is unknown (`None` on overflow).
    fn flops(&self, f: impl FnOnce([usize; 2]) -> Option<u64>) -> Option<u64> {
        match (self.out[0].known(), self.out[1].known()) {
            (Some(h), Some(w)) => f([h, w]),
            _ => Some(0),
        }
    }
}
