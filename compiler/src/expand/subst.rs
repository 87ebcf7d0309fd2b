//! Substituting block parameters into argument values and evaluating the
//! integer arithmetic on them (`filters * 4`), and `{param}` interpolation
//! in strings (`name="{name}_conv"`).

use crate::check::did_you_mean;
use crate::diagnostics::Diagnostic;
use crate::model::Span;
use crate::syntax::{BinOp, ChannelExpr, Value, ValueKind};
use std::collections::HashMap;

/// Parameter values of one block or model call, by name.
pub type Params = HashMap<String, Value>;

/// The longest string a substitution may build (`name="{name}{name}"`
/// nested in blocks doubles at every level).
const MAX_STRING: usize = 4096;
/// The most values a substituted tuple may hold, nested ones included.
const MAX_TUPLE_VALUES: usize = 1000;

/// Number of scalar values in `v`, counting inside tuples.
fn size(v: &Value) -> usize {
    match &v.kind {
        ValueKind::Tuple(items) => items.iter().map(size).sum::<usize>() + 1,
        _ => 1,
    }
}

/// `value` with every parameter name replaced by its value and every
/// arithmetic expression evaluated. Names that are not parameters (`relu`,
/// `same`) are left alone for the layer to interpret.
pub fn subst(value: &Value, params: &Params, diags: &mut Vec<Diagnostic>) -> Option<Value> {
    let span = value.span;
    let kind = match &value.kind {
        ValueKind::Ident(name) => match params.get(name) {
            Some(v) => return Some(v.clone()),
            None => return Some(value.clone()),
        },
        ValueKind::Str(s) if s.contains('{') => {
            ValueKind::Str(interpolate(s, span, params, diags)?)
        }
        ValueKind::Tuple(items) => {
            let items = items
                .iter()
                .map(|v| subst(v, params, diags))
                .collect::<Option<Vec<_>>>()?;
            if items.iter().map(size).sum::<usize>() > MAX_TUPLE_VALUES {
                diags.push(
                    Diagnostic::error("E0022", format!("a tuple of more than {MAX_TUPLE_VALUES} values"))
                        .with_label(span, "this tuple grows too large when parameters are substituted")
                        .with_help("tuples hold sizes such as `(3, 3)`; check the parameters passed through the blocks"),
                );
                return None;
            }
            ValueKind::Tuple(items)
        }
        ValueKind::Channels(ChannelExpr {
            op: Some((op, operand)),
        }) => {
            let operand = subst(operand, params, diags)?;
            ValueKind::Channels(ChannelExpr {
                op: Some((*op, Box::new(operand))),
            })
        }
        ValueKind::Binary { op, lhs, rhs } => {
            let l = subst(lhs, params, diags)?;
            let r = subst(rhs, params, diags)?;
            return evaluate(*op, &l, &r, span, params, diags);
        }
        _ => return Some(value.clone()),
    };
    Some(Value { kind, span })
}

/// A number operand of an expression: an integer or a float.
enum Num {
    Int(i64),
    Float(f64),
}

fn operand(v: &Value, params: &Params, diags: &mut Vec<Diagnostic>, expr: Span) -> Option<Num> {
    match &v.kind {
        ValueKind::Int(Some(n)) => Some(Num::Int(*n)),
        ValueKind::Float(f) => Some(Num::Float(*f)),
        ValueKind::Ident(name) => {
            let names: Vec<&str> = params.keys().map(String::as_str).collect();
            let mut d = Diagnostic::error(
                "E0022",
                format!("unknown parameter `{name}` in an expression"),
            )
            .with_label(v.span, "not a parameter of this block")
            .with_label(expr, "in this expression");
            d = match did_you_mean(name, &names) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None if names.is_empty() => {
                    d.with_help("expressions compute with numbers and the parameters of the enclosing block or model")
                }
                None => {
                    let mut sorted = names.clone();
                    sorted.sort_unstable();
                    d.with_help(format!("the parameters here are: {}", sorted.join(", ")))
                }
            };
            diags.push(d);
            None
        }
        _ => {
            diags.push(
                Diagnostic::error("E0022", "arithmetic needs numbers")
                    .with_label(v.span, "not a number")
                    .with_label(expr, "in this expression")
                    .with_help("only integers, numbers and numeric parameters can be added, subtracted, multiplied or divided"),
            );
            None
        }
    }
}

/// `lhs op rhs` on integers (exact, checked) or, if either is a float, on floats.
fn evaluate(
    op: BinOp,
    lhs: &Value,
    rhs: &Value,
    span: Span,
    params: &Params,
    diags: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let l = operand(lhs, params, diags, span);
    let r = operand(rhs, params, diags, span);
    let (l, r) = (l?, r?);
    let kind = match (l, r) {
        (Num::Int(a), Num::Int(b)) => {
            let result = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                BinOp::Mul => a.checked_mul(b),
                BinOp::Div => {
                    if b == 0 {
                        diags.push(
                            Diagnostic::error("E0022", "division by zero")
                                .with_label(rhs.span, "this is 0")
                                .with_help("divide by a positive integer"),
                        );
                        return None;
                    }
                    if a % b != 0 {
                        diags.push(
                            Diagnostic::error("E0022", format!("{a} / {b} is not a whole number"))
                                .with_label(span, format!("{a} is not divisible by {b}"))
                                .with_help("sizes are whole numbers: divide by a divisor, or write the value directly"),
                        );
                        return None;
                    }
                    Some(a / b)
                }
            };
            match result {
                Some(n) => ValueKind::Int(Some(n)),
                None => ValueKind::Int(None),
            }
        }
        (a, b) => {
            let f = |n: Num| match n {
                Num::Int(i) => i as f64,
                Num::Float(x) => x,
            };
            let (a, b) = (f(a), f(b));
            ValueKind::Float(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
            })
        }
    };
    Some(Value { kind, span })
}

/// Replaces each `{param}` in `s` by the parameter's value as text.
fn interpolate(
    s: &str,
    span: Span,
    params: &Params,
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out += &rest[..open];
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            diags.push(
                Diagnostic::error("E0022", "unclosed `{` in a string")
                    .with_label(span, "`{name}` inserts a parameter; this `{` has no `}`")
                    .with_help("close it, e.g. `name=\"{name}_conv\"`"),
            );
            return None;
        };
        let key = after[..close].trim();
        match params.get(key) {
            Some(v) => match &v.kind {
                ValueKind::Str(t) | ValueKind::Ident(t) => out += t,
                ValueKind::Int(Some(n)) => out += &n.to_string(),
                ValueKind::Float(f) => out += &f.to_string(),
                _ => {
                    diags.push(
                        Diagnostic::error(
                            "E0022",
                            format!("parameter `{key}` cannot be inserted into a string"),
                        )
                        .with_label(span, format!("`{{{key}}}` is not a name, string or number"))
                        .with_label(v.span, "its value"),
                    );
                    return None;
                }
            },
            None => {
                let names: Vec<&str> = params.keys().map(String::as_str).collect();
                let d =
                    Diagnostic::error("E0022", format!("unknown parameter `{key}` in a string"))
                        .with_label(span, format!("`{{{key}}}` names no parameter"));
                let d = match did_you_mean(key, &names) {
                    Some(m) => d.with_help(format!("did you mean `{{{m}}}`?")),
                    None => d.with_help(
                        "`{p}` inserts the value of parameter `p` of the enclosing block or model",
                    ),
                };
                diags.push(d);
                return None;
            }
        }
        rest = &after[close + 1..];
        if out.len() > MAX_STRING {
            break;
        }
    }
    out += rest;
    if out.len() > MAX_STRING {
        diags.push(
            Diagnostic::error("E0022", format!("a string longer than {MAX_STRING} bytes"))
                .with_label(
                    span,
                    "this string grows too long when parameters are inserted",
                )
                .with_help(
                    "layer names are short: check the `{...}` insertions passed through the blocks",
                ),
        );
        return None;
    }
    Some(out)
}
