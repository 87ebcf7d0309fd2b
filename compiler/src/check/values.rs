//! Converting argument values to what a parameter needs (positive integers,
//! pairs, enums, booleans, rates, names), reporting `E0004` (wrong type) and
//! `E0005` (invalid value) with the fix.

use super::suggest::did_you_mean;
use crate::diagnostics::Diagnostic;
use crate::model::{Activation, Padding, Pads2d, Span};
use crate::syntax::{ChannelOp, Value, ValueKind};

/// The diagnostics sink and source text shared by the checker's stages.
pub(crate) struct Ctx<'s> {
    pub source: &'s str,
    pub diags: Vec<Diagnostic>,
}

/// A channel expression for `filters` (`in`, `in * N`, `in / N`), resolved
/// against the incoming channel count during shape inference.
#[derive(Debug, Clone)]
pub(crate) struct FilterExpr {
    pub op: ChannelOp,
    pub operand: usize,
    pub span: Span,
}

/// The text of `span`, shortened for messages.
pub(crate) fn snippet(source: &str, span: Span) -> String {
    let text = source.get(span.start..span.end).unwrap_or("").trim();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 40 {
        let short: String = text.chars().take(37).collect();
        format!("{short}...")
    } else {
        text
    }
}

/// A typical good value of each parameter, for help lines.
fn example_value(param: &str) -> &'static str {
    match param {
        "filters" => "32",
        "kernel_size" => "3",
        "pool_size" => "2",
        "strides" => "1",
        "units" => "64",
        "rate" => "0.5",
        "padding" => "same",
        "activation" => "relu",
        "use_bias" => "true",
        "alpha" => "1.0",
        "negative_slope" => "0.3",
        "momentum" => "0.99",
        "epsilon" => "0.001",
        "depth_multiplier" => "1",
        "dilation_rate" => "2",
        "size" => "2",
        "axis" => "-1",
        "output_padding" => "1",
        "target_shape" => "[7, 7, 64]",
        _ => "1",
    }
}

impl Ctx<'_> {
    /// "an integer `0`", "the name `relu`", ... for "found ..." messages.
    pub fn describe(&self, v: &Value) -> String {
        let text = snippet(self.source, v.span);
        let what = match &v.kind {
            ValueKind::Int(_) => "the integer",
            ValueKind::Float(_) => "the number",
            ValueKind::Ident(_) => "the name",
            ValueKind::Str(_) => "the string",
            ValueKind::Tuple(_) => "the tuple",
            ValueKind::Channels(_) => "the channel expression",
            ValueKind::Binary { .. } => "the expression",
            ValueKind::Unknown => "the unknown size",
        };
        format!("{what} `{text}`")
    }

    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// A type error: `expected` (e.g. "a positive integer") for `param`.
    fn wrong_type(&mut self, v: &Value, param: &str, expected: &str, help: Option<String>) {
        let found = self.describe(v);
        let mut d = Diagnostic::error(
            "E0004",
            format!("wrong type for `{param}`: expected {expected}, found {found}"),
        )
        .with_label(v.span, format!("expected {expected}"));
        if let ValueKind::Channels(_) = v.kind {
            d = d.with_note(
                "channel expressions (`in`, `in * N`, `in / N`) are only allowed for `filters`",
            );
        }
        if let ValueKind::Unknown = v.kind {
            d = d.with_note(
                "`?` (an unknown size) is only allowed for the height and width in `input` shapes",
            );
        }
        let help = help.or_else(|| {
            Some(if param == "input" {
                "write each dimension as a positive integer, e.g. `input [28, 28, 1]`".to_string()
            } else {
                format!("for example `{param} = {}`", example_value(param))
            })
        });
        self.push(d.with_help_opt(help));
    }

    /// When a name given in the wrong place is a valid value of another
    /// parameter of the layer (`conv2d(64, 3, relu)`), suggest naming it.
    pub fn keyword_hint(v: &Value, params: &[&str]) -> Option<String> {
        let word = match &v.kind {
            ValueKind::Ident(s) | ValueKind::Str(s) => s.as_str(),
            _ => return None,
        };
        let target = if Activation::from_name(word).is_some() {
            "activation"
        } else if word == "same" || word == "valid" {
            "padding"
        } else if word == "true" || word == "false" {
            "use_bias"
        } else {
            return None;
        };
        params
            .contains(&target)
            .then(|| format!("to set the {target}, name it: `{target}={word}`"))
    }

    /// A positive integer (`filters`, `units`, a dimension, ...).
    pub fn positive_int(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<usize> {
        match &v.kind {
            ValueKind::Int(Some(n)) if *n > 0 => match usize::try_from(*n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.too_large(v, param);
                    None
                }
            },
            ValueKind::Int(Some(n)) => {
                let help = match param {
                    "strides" => {
                        "a stride of 1 moves the window one pixel at a time: `strides=1` (the default)".to_string()
                    }
                    "filters" => "a convolution needs at least one filter, e.g. `conv2d(32, 3)`".to_string(),
                    "units" => "a dense layer needs at least one unit, e.g. `dense(64)`".to_string(),
                    "input" => "every dimension of the input is at least 1, e.g. `input [28, 28, 1]`".to_string(),
                    _ => format!("use a positive integer, e.g. `{param}={}`", example_value(param)),
                };
                let d = Diagnostic::error(
                    "E0005",
                    format!("`{param}` must be a positive integer, found {n}"),
                )
                .with_label(v.span, format!("`{param}` must be at least 1"))
                .with_help(help);
                self.push(d);
                None
            }
            ValueKind::Int(None) => {
                self.too_large(v, param);
                None
            }
            ValueKind::Float(f) => {
                let help = if f.is_finite() && f.fract() == 0.0 && *f >= 1.0 && *f < 1e15 {
                    Some(format!("write it without a decimal point: `{}`", *f as u64))
                } else {
                    None
                };
                self.wrong_type(v, param, "a positive integer", help);
                None
            }
            ValueKind::Str(s) if s.trim().parse::<i64>().is_ok() => {
                let help = format!("write the number without quotes: `{}`", s.trim());
                self.wrong_type(v, param, "a positive integer", Some(help));
                None
            }
            _ => {
                let hint = Self::keyword_hint(v, params);
                self.wrong_type(v, param, "a positive integer", hint);
                None
            }
        }
    }

    fn too_large(&mut self, v: &Value, param: &str) {
        let d = Diagnostic::error("E0005", format!("`{param}` is too large"))
            .with_label(v.span, "this number does not fit in 64 bits")
            .with_help(if param == "input" {
                "use realistic sizes, e.g. `input [28, 28, 1]`".to_string()
            } else {
                format!(
                    "use a realistic value, e.g. `{param}={}`",
                    example_value(param)
                )
            });
        self.push(d);
    }

    /// `kernel_size`, `strides`, `pool_size`: one positive integer (used for
    /// both axes) or a pair `(height, width)`.
    pub fn pair(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<[usize; 2]> {
        match &v.kind {
            ValueKind::Tuple(items) if items.len() == 2 => {
                let h = self.positive_int(&items[0], param, params);
                let w = self.positive_int(&items[1], param, params);
                Some([h?, w?])
            }
            ValueKind::Tuple(items) => {
                let found = format!(
                    "{} value{}",
                    items.len(),
                    if items.len() == 1 { "" } else { "s" }
                );
                let d = Diagnostic::error(
                    "E0004",
                    format!("wrong type for `{param}`: expected an integer or a pair (height, width), found {found}"),
                )
                .with_label(v.span, format!("{found}, expected 2"))
                .with_help(format!(
                    "give one size for both axes, `{param}={e}`, or two, `{param}=({e}, {e})`",
                    e = example_value(param)
                ));
                self.push(d);
                None
            }
            ValueKind::Int(_) | ValueKind::Float(_) => {
                let n = self.positive_int(v, param, params)?;
                Some([n, n])
            }
            _ => {
                let hint = Self::keyword_hint(v, params);
                self.wrong_type(v, param, "an integer or a pair (height, width)", hint);
                None
            }
        }
    }

    /// A value from a fixed set of names (`same`/`valid`, activations),
    /// written as a name or a string (`padding=same` or `padding="same"`).
    fn one_of<T: Copy>(
        &mut self,
        v: &Value,
        param: &str,
        options: &[(&'static str, T)],
        params: &[&str],
    ) -> Option<T> {
        let names: Vec<&'static str> = options.iter().map(|(n, _)| *n).collect();
        let list = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match &v.kind {
            ValueKind::Ident(s) | ValueKind::Str(s) => {
                if let Some((_, t)) = options.iter().find(|(n, _)| n == s) {
                    return Some(*t);
                }
                let help = match did_you_mean(s, &names) {
                    Some(m) => Some(format!("did you mean `{m}`?")),
                    None => Self::keyword_hint(v, params),
                };
                let d = Diagnostic::error("E0005", format!("invalid value for `{param}`: `{s}`"))
                    .with_label(v.span, format!("not a valid `{param}`"))
                    .with_note(format!("`{param}` is one of {list}"));
                self.push(d.with_help_opt(help));
                None
            }
            _ => {
                let d = Diagnostic::error(
                    "E0004",
                    format!(
                        "wrong type for `{param}`: expected one of {list}, found {}",
                        self.describe(v)
                    ),
                )
                .with_label(v.span, format!("expected one of {list}"))
                .with_help(format!("for example `{param}={}`", names[0]));
                self.push(d);
                None
            }
        }
    }

    /// `padding`: `same` or `valid`.
    pub fn padding(&mut self, v: &Value, params: &[&str]) -> Option<Padding> {
        self.one_of(
            v,
            "padding",
            &[("same", Padding::Same), ("valid", Padding::Valid)],
            params,
        )
    }

    /// An activation by its Keras name.
    pub fn activation(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<Activation> {
        let options: Vec<(&'static str, Activation)> =
            Activation::ALL.iter().map(|a| (a.name(), *a)).collect();
        self.one_of(v, param, &options, params)
    }

    /// `true` or `false` (bare names, as in Python without the capital).
    pub fn boolean(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<bool> {
        match &v.kind {
            ValueKind::Ident(_) => {
                self.one_of(v, param, &[("true", true), ("false", false)], params)
            }
            ValueKind::Str(s) if s == "true" || s == "false" => {
                self.wrong_type(
                    v,
                    param,
                    "`true` or `false`",
                    Some(format!("write it without quotes: `{param}={s}`")),
                );
                None
            }
            ValueKind::Int(Some(n)) if *n == 0 || *n == 1 => {
                let b = if *n == 1 { "true" } else { "false" };
                self.wrong_type(
                    v,
                    param,
                    "`true` or `false`",
                    Some(format!("write `{param}={b}`")),
                );
                None
            }
            _ => {
                self.wrong_type(
                    v,
                    param,
                    "`true` or `false`",
                    Some(format!("write `{param}=true` or `{param}=false`")),
                );
                None
            }
        }
    }

    /// A finite number `>= 0` (`alpha` of `elu`, `negative_slope` of
    /// `leaky_relu`; Keras rejects a negative `negative_slope`, and cnnc also
    /// a negative `alpha`, whose derivative cannot be recovered from the output).
    pub fn non_negative_number(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<f32> {
        let x = match &v.kind {
            ValueKind::Float(f) => *f,
            ValueKind::Int(Some(n)) => *n as f64,
            ValueKind::Int(None) => f64::INFINITY,
            _ => {
                let hint = Self::keyword_hint(v, params);
                self.wrong_type(v, param, "a number", hint);
                return None;
            }
        };
        let x32 = x as f32;
        if x >= 0.0 && x32.is_finite() {
            return Some(x32);
        }
        let shown = snippet(self.source, v.span);
        let d = Diagnostic::error(
            "E0005",
            format!("`{param}` must be a finite number at least 0, found {shown}"),
        )
        .with_label(v.span, "not a finite number >= 0")
        .with_help(format!(
            "use a value such as `{param}={}` (the Keras default)",
            example_value(param)
        ));
        self.push(d);
        None
    }

    /// A finite number in `[lo, hi]` (`lo_open`: excluding `lo`), e.g.
    /// batch norm's `momentum` in [0, 1] and `epsilon` > 0.
    pub fn number_in(
        &mut self,
        v: &Value,
        param: &str,
        (lo, lo_open): (f64, bool),
        hi: f64,
        params: &[&str],
    ) -> Option<f32> {
        let x = match &v.kind {
            ValueKind::Float(f) => *f,
            ValueKind::Int(Some(n)) => *n as f64,
            ValueKind::Int(None) => f64::INFINITY,
            _ => {
                let hint = Self::keyword_hint(v, params);
                self.wrong_type(v, param, "a number", hint);
                return None;
            }
        };
        let ok_lo = if lo_open { x > lo } else { x >= lo };
        if ok_lo && x <= hi && (x as f32).is_finite() {
            return Some(x as f32);
        }
        let range = match (lo_open, hi.is_finite()) {
            (true, true) => format!("greater than {lo} and at most {hi}"),
            (true, false) => format!("greater than {lo}"),
            (false, true) => format!("from {lo} to {hi}"),
            (false, false) => format!("at least {lo}"),
        };
        let shown = snippet(self.source, v.span);
        let d = Diagnostic::error(
            "E0005",
            format!("`{param}` must be a number {range}, found {shown}"),
        )
        .with_label(v.span, format!("not {range}"))
        .with_help(format!(
            "use a value such as `{param}={}` (the Keras default)",
            example_value(param)
        ));
        self.push(d);
        None
    }

    /// Any integer, negative ones included (`axis=-1`).
    pub fn integer(&mut self, v: &Value, param: &str, params: &[&str]) -> Option<i64> {
        match &v.kind {
            ValueKind::Int(Some(n)) => Some(*n),
            ValueKind::Int(None) => {
                self.too_large(v, param);
                None
            }
            _ => {
                let hint = Self::keyword_hint(v, params);
                self.wrong_type(v, param, "an integer", hint);
                None
            }
        }
    }

    /// `output_padding`: one integer >= 0 for both axes or a pair.
    pub fn non_negative_pair(&mut self, v: &Value, param: &str) -> Option<[usize; 2]> {
        let one = |ctx: &mut Self, v: &Value| -> Option<usize> {
            match &v.kind {
                ValueKind::Int(Some(n)) if *n >= 0 => usize::try_from(*n).ok(),
                _ => {
                    ctx.wrong_type(v, param, "an integer >= 0", None);
                    None
                }
            }
        };
        match &v.kind {
            ValueKind::Tuple(items) if items.len() == 2 => {
                let h = one(self, &items[0]);
                let w = one(self, &items[1]);
                Some([h?, w?])
            }
            ValueKind::Int(_) => one(self, v).map(|n| [n, n]),
            _ => {
                self.wrong_type(v, param, "an integer >= 0 or a pair (height, width)", None);
                None
            }
        }
    }

    /// `up_sampling2d`'s `interpolation`: `nearest` or `bilinear`.
    pub fn interpolation(
        &mut self,
        v: &Value,
        params: &[&str],
    ) -> Option<crate::model::Interpolation> {
        use crate::model::Interpolation;
        self.one_of(
            v,
            "interpolation",
            &[
                ("nearest", Interpolation::Nearest),
                ("bilinear", Interpolation::Bilinear),
            ],
            params,
        )
    }

    /// `reshape`'s `target_shape`: a tuple of positive integers, at most one
    /// of them `-1` (returned as `None`, inferred from the input).
    pub fn target_shape(&mut self, v: &Value) -> Option<Vec<Option<usize>>> {
        let ValueKind::Tuple(items) = &v.kind else {
            self.wrong_type(
                v,
                "target_shape",
                "a shape such as `[7, 7, 64]`",
                Some("write the per-example shape in brackets, e.g. `reshape([7, 7, 64])`".into()),
            );
            return None;
        };
        if items.is_empty() {
            self.wrong_type(v, "target_shape", "at least one dimension", None);
            return None;
        }
        let mut dims = Vec::new();
        let mut unknown = 0;
        for item in items {
            match &item.kind {
                ValueKind::Int(Some(-1)) => {
                    unknown += 1;
                    dims.push(None);
                }
                _ => dims.push(Some(self.positive_int(item, "target_shape", &[])?)),
            }
        }
        if unknown > 1 {
            let d = Diagnostic::error("E0005", "`target_shape` may contain `-1` only once")
                .with_label(v.span, format!("{unknown} dimensions are `-1`"))
                .with_help("give all dimensions but one; `-1` stands for the one that is inferred");
            self.push(d);
            return None;
        }
        Some(dims)
    }

    /// `zero_padding2d`'s `padding`, as Keras accepts it: `n` (all four
    /// sides), `(h, w)` (`h` rows on top and bottom, `w` columns left and
    /// right) or `((top, bottom), (left, right))`; every amount an integer >= 0.
    pub fn zero_padding(&mut self, v: &Value) -> Option<Pads2d> {
        const FORMS: &str = "`padding=1`, `padding=(1, 2)` or `padding=((1, 0), (2, 2))`";
        let bad_shape = |ctx: &mut Self, v: &Value| {
            let found = ctx.describe(v);
            let d = Diagnostic::error(
                "E0004",
                format!(
                    "wrong type for `padding`: expected an integer, a pair or a pair of pairs, found {found}"
                ),
            )
            .with_label(v.span, "expected `n`, `(h, w)` or `((top, bottom), (left, right))`")
            .with_help(format!("write the padding as {FORMS}"));
            ctx.push(d);
        };
        match &v.kind {
            ValueKind::Int(_) | ValueKind::Float(_) => {
                let n = self.pad_amount(v)?;
                Some(Pads2d {
                    top: n,
                    bottom: n,
                    left: n,
                    right: n,
                })
            }
            ValueKind::Tuple(items) if items.len() == 2 => {
                let all_ints = items.iter().all(|i| matches!(i.kind, ValueKind::Int(_)));
                let all_pairs = items
                    .iter()
                    .all(|i| matches!(&i.kind, ValueKind::Tuple(t) if t.len() == 2));
                if all_ints {
                    let h = self.pad_amount(&items[0]);
                    let w = self.pad_amount(&items[1]);
                    let (h, w) = (h?, w?);
                    Some(Pads2d {
                        top: h,
                        bottom: h,
                        left: w,
                        right: w,
                    })
                } else if all_pairs {
                    let mut amounts = [0usize; 4];
                    let mut ok = true;
                    for (k, item) in items.iter().enumerate() {
                        if let ValueKind::Tuple(t) = &item.kind {
                            for (j, x) in t.iter().enumerate() {
                                match self.pad_amount(x) {
                                    Some(n) => amounts[2 * k + j] = n,
                                    None => ok = false,
                                }
                            }
                        }
                    }
                    let [top, bottom, left, right] = amounts;
                    ok.then_some(Pads2d {
                        top,
                        bottom,
                        left,
                        right,
                    })
                } else {
                    bad_shape(self, v);
                    None
                }
            }
            _ => {
                bad_shape(self, v);
                None
            }
        }
    }

    /// One padding amount: an integer >= 0.
    fn pad_amount(&mut self, v: &Value) -> Option<usize> {
        match &v.kind {
            ValueKind::Int(Some(n)) if *n >= 0 => match usize::try_from(*n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.too_large(v, "padding");
                    None
                }
            },
            ValueKind::Int(Some(n)) => {
                let d = Diagnostic::error(
                    "E0005",
                    format!("`padding` amounts must be at least 0, found {n}"),
                )
                .with_label(v.span, "negative padding")
                .with_help("use 0 for no padding on a side, e.g. `padding=((0, 1), (0, 1))`");
                self.push(d);
                None
            }
            ValueKind::Int(None) => {
                self.too_large(v, "padding");
                None
            }
            _ => {
                self.wrong_type(
                    v,
                    "padding",
                    "an integer",
                    Some("write each amount as a whole number of pixels, e.g. `padding=1`".into()),
                );
                None
            }
        }
    }

    /// The dropout rate: a number in `[0, 1)`.
    pub fn rate(&mut self, v: &Value) -> Option<f32> {
        let r = match &v.kind {
            ValueKind::Float(f) => *f,
            ValueKind::Int(Some(n)) => *n as f64,
            ValueKind::Int(None) => f64::INFINITY,
            _ => {
                self.wrong_type(
                    v,
                    "rate",
                    "a number between 0 and 1",
                    Some("for example `dropout(0.5)`".into()),
                );
                return None;
            }
        };
        // Checked after rounding to f32, the type the runtime uses.
        let r32 = r as f32;
        if (0.0..1.0).contains(&r) && r32 < 1.0 {
            return Some(r32);
        }
        let shown = snippet(self.source, v.span);
        let mut d = Diagnostic::error(
            "E0005",
            format!("dropout rate must be at least 0 and below 1, found {shown}"),
        )
        .with_label(v.span, "not in [0, 1)")
        .with_note("the rate is the fraction of inputs set to zero during training: 1 would drop everything");
        d = if (1.0..=100.0).contains(&r) && r.fract() == 0.0 {
            d.with_help(format!(
                "to drop {shown}% of the inputs write `dropout({})`",
                r / 100.0
            ))
        } else {
            d.with_help("use a rate such as `dropout(0.5)` (drop half of the inputs)")
        };
        self.push(d);
        None
    }

    /// A layer name: a string of letters, digits, `_`, `-` and `.`.
    pub fn layer_name(&mut self, v: &Value) -> Option<String> {
        match &v.kind {
            ValueKind::Str(s) => {
                let ok = !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if ok {
                    Some(s.clone())
                } else {
                    let d = Diagnostic::error("E0005", format!("invalid layer name {}", snippet(self.source, v.span)))
                        .with_label(v.span, "not a valid name")
                        .with_note("a layer name is made of ASCII letters, digits, `_`, `-` and `.`, and is not empty")
                        .with_help("for example `name = \"conv1\"`");
                    self.push(d);
                    None
                }
            }
            ValueKind::Ident(s) => {
                self.wrong_type(
                    v,
                    "name",
                    "a string",
                    Some(format!("put the name in quotes: `name = \"{s}\"`")),
                );
                None
            }
            _ => {
                self.wrong_type(
                    v,
                    "name",
                    "a string",
                    Some("for example `name = \"conv1\"`".into()),
                );
                None
            }
        }
    }

    /// `filters`: a positive integer or a channel expression.
    pub fn filters(&mut self, v: &Value, params: &[&str]) -> Option<Result<usize, FilterExpr>> {
        match &v.kind {
            ValueKind::Channels(expr) => {
                let (op, operand) = match &expr.op {
                    None => (ChannelOp::Mul, 1),
                    Some((op, operand)) => {
                        let what = if *op == ChannelOp::Mul {
                            "multiplier"
                        } else {
                            "divisor"
                        };
                        let n = match &operand.kind {
                            ValueKind::Int(Some(n)) if *n > 0 => usize::try_from(*n).ok(),
                            _ => None,
                        };
                        let Some(n) = n else {
                            let (code, msg) = match operand.kind {
                                ValueKind::Int(_) => (
                                    "E0005",
                                    format!(
                                        "the {what} in `{}` must be a positive integer",
                                        snippet(self.source, v.span)
                                    ),
                                ),
                                _ => (
                                    "E0004",
                                    format!(
                                        "the {what} in `{}` must be an integer",
                                        snippet(self.source, v.span)
                                    ),
                                ),
                            };
                            let d = Diagnostic::error(code, msg)
                                .with_label(operand.span, "expected a positive integer")
                                .with_help("write `in * 2` to double the incoming channels, `in / 2` to halve them");
                            self.push(d);
                            return None;
                        };
                        (*op, n)
                    }
                };
                Some(Err(FilterExpr {
                    op,
                    operand,
                    span: v.span,
                }))
            }
            _ => self.positive_int(v, "filters", params).map(Ok),
        }
    }
}
