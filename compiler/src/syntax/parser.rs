//! The pest parser (grammar in `grammar/cnn.pest`) and the conversion of its
//! parse tree into the [`ast`](super::ast).

use super::ast::*;
use crate::diagnostics::Diagnostic;
use crate::model::Span;
use pest::iterators::Pair;
use pest::Parser;

/// The parser generated from `grammar/cnn.pest`.
#[derive(pest_derive::Parser)]
#[grammar = "../../grammar/cnn.pest"]
pub struct CnnParser;

/// Brackets nested deeper than this are rejected before parsing, so that no
/// input can exhaust the stack of the (recursive) parser or tree builder.
pub const MAX_NESTING: usize = 32;

/// Parses a whole `.cnn` source into a [`ModelAst`], or returns one located
/// syntax error (`E0001`).
pub fn parse(source: &str) -> Result<ModelAst, Diagnostic> {
    super::errors::check_nesting(source)?;
    pest::set_error_detail(true);
    let mut pairs = CnnParser::parse(Rule::file, source)
        .map_err(|e| super::errors::syntax_error(source, &e))?;
    let file = pairs.next().ok_or_else(|| internal(Span::new(0, 0)))?;
    let model = file
        .into_inner()
        .find(|p| p.as_rule() == Rule::model)
        .ok_or_else(|| internal(Span::new(0, 0)))?;
    build_model(model)
}

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

/// A parse tree that does not have the shape the grammar promises. Cannot
/// happen for a tree produced by the grammar, but reported instead of panicking.
fn internal(span: Span) -> Diagnostic {
    Diagnostic::error(
        "E0001",
        "malformed syntax tree (internal error in the cnnc parser)",
    )
    .with_label(span, "while reading this")
}

fn ident(pair: Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn build_model(pair: Pair<'_, Rule>) -> Result<ModelAst, Diagnostic> {
    let span = span_of(&pair);
    let mut name = None;
    let mut statements = Vec::new();
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::ident => name = Some(ident(p)),
            Rule::input_stmt => statements.push(Statement::Input(build_input(p)?)),
            Rule::layer => statements.push(Statement::Layer(build_layer(p)?)),
            _ => {}
        }
    }
    let name = name.ok_or_else(|| internal(span))?;
    Ok(ModelAst {
        name,
        statements,
        span,
    })
}

fn build_input(pair: Pair<'_, Rule>) -> Result<InputStmt, Diagnostic> {
    let span = span_of(&pair);
    let mut keyword = None;
    let mut shape = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::kw_input => keyword = Some(span_of(&p)),
            Rule::tuple => shape = Some(build_tuple(p)?),
            _ => {}
        }
    }
    match (keyword, shape) {
        (Some(keyword), Some(shape)) => Ok(InputStmt {
            keyword,
            shape,
            span,
        }),
        _ => Err(internal(span)),
    }
}

fn build_layer(pair: Pair<'_, Rule>) -> Result<LayerStmt, Diagnostic> {
    let span = span_of(&pair);
    let mut keyword = None;
    let mut args = Vec::new();
    let mut args_span = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::ident => keyword = Some(ident(p)),
            Rule::arg_list => {
                args_span = Some(span_of(&p));
                for a in p.into_inner() {
                    args.push(build_arg(a)?);
                }
            }
            _ => {}
        }
    }
    let keyword = keyword.ok_or_else(|| internal(span))?;
    Ok(LayerStmt {
        keyword,
        args,
        args_span,
        span,
    })
}

fn build_arg(pair: Pair<'_, Rule>) -> Result<Arg, Diagnostic> {
    let span = span_of(&pair);
    let inner = pair.into_inner().next().ok_or_else(|| internal(span))?;
    match inner.as_rule() {
        Rule::named_arg => {
            let mut it = inner.into_inner();
            let name = it.next().map(ident).ok_or_else(|| internal(span))?;
            let value = it
                .next()
                .ok_or_else(|| internal(span))
                .and_then(build_value)?;
            Ok(Arg {
                name: Some(name),
                value,
                span,
            })
        }
        Rule::value => Ok(Arg {
            name: None,
            value: build_value(inner)?,
            span,
        }),
        _ => Err(internal(span)),
    }
}

/// Builds a value from a `value` pair (or directly from one of its alternatives).
fn build_value(pair: Pair<'_, Rule>) -> Result<Value, Diagnostic> {
    let span = span_of(&pair);
    let pair = if pair.as_rule() == Rule::value {
        pair.into_inner().next().ok_or_else(|| internal(span))?
    } else {
        pair
    };
    let text = pair.as_str();
    let kind = match pair.as_rule() {
        Rule::int => ValueKind::Int(text.parse::<i64>().ok()),
        Rule::float => ValueKind::Float(text.parse::<f64>().map_err(|_| internal(span))?),
        Rule::ident => ValueKind::Ident(text.to_string()),
        Rule::string => {
            let inner = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
            ValueKind::Str(inner.ok_or_else(|| internal(span))?.to_string())
        }
        Rule::tuple => return build_tuple(pair),
        Rule::channels => {
            let mut op = None;
            let mut it = pair.into_inner().skip_while(|p| p.as_rule() == Rule::kw_in);
            if let Some(op_pair) = it.next() {
                let o = if op_pair.as_str() == "/" {
                    ChannelOp::Div
                } else {
                    ChannelOp::Mul
                };
                let operand = it
                    .next()
                    .ok_or_else(|| internal(span))
                    .and_then(build_value)?;
                op = Some((o, Box::new(operand)));
            }
            ValueKind::Channels(ChannelExpr { op })
        }
        _ => return Err(internal(span)),
    };
    Ok(Value { kind, span })
}

fn build_tuple(pair: Pair<'_, Rule>) -> Result<Value, Diagnostic> {
    let span = span_of(&pair);
    let items = pair
        .into_inner()
        .map(build_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value {
        kind: ValueKind::Tuple(items),
        span,
    })
}
