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

/// Parses a whole `.cnn` source into a [`FileAst`], or returns one located
/// syntax error (`E0001`). Spans are byte offsets into `source`.
pub fn parse(source: &str) -> Result<FileAst, Diagnostic> {
    parse_at(source, 0)
}

/// Like [`parse`], with every span (of the AST and of the error) shifted by
/// `base`: the offset of this file in a [`crate::sources::Sources`] map.
pub fn parse_at(source: &str, base: usize) -> Result<FileAst, Diagnostic> {
    let shift = |d: Diagnostic| d.shifted(base);
    super::errors::check_nesting(source).map_err(shift)?;
    pest::set_error_detail(true);
    let mut pairs = CnnParser::parse(Rule::file, source)
        .map_err(|e| shift(super::errors::syntax_error(source, &e)))?;
    let b = Builder { base };
    let file = pairs.next().ok_or_else(|| b.internal(Span::new(0, 0)))?;
    let mut ast = FileAst::default();
    for item in file.into_inner() {
        match item.as_rule() {
            Rule::import => ast.imports.push(b.import(item)?),
            Rule::block => ast.blocks.push(b.block(item)?),
            Rule::model => ast.models.push(b.model(item)?),
            _ => {}
        }
    }
    Ok(ast)
}

struct Builder {
    base: usize,
}

impl Builder {
    fn span_of(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(s.start() + self.base, s.end() + self.base)
    }

    /// A parse tree that does not have the shape the grammar promises. Cannot
    /// happen for a tree produced by the grammar, but reported instead of panicking.
    fn internal(&self, span: Span) -> Diagnostic {
        Diagnostic::error(
            "E0001",
            "malformed syntax tree (internal error in the cnnc parser)",
        )
        .with_label(span, "while reading this")
    }

    fn ident(&self, pair: Pair<'_, Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span_of(&pair),
        }
    }

    fn import(&self, pair: Pair<'_, Rule>) -> Result<Import, Diagnostic> {
        let span = self.span_of(&pair);
        let lit = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::string)
            .ok_or_else(|| self.internal(span))?;
        let path_span = self.span_of(&lit);
        let text = lit.as_str();
        let path = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(|| self.internal(span))?
            .to_string();
        Ok(Import {
            path,
            path_span,
            span,
        })
    }

    fn params(&self, pair: Pair<'_, Rule>) -> Result<Vec<ParamDef>, Diagnostic> {
        let mut params = Vec::new();
        for p in pair.into_inner() {
            let span = self.span_of(&p);
            let mut it = p.into_inner();
            let name = it
                .next()
                .map(|n| self.ident(n))
                .ok_or_else(|| self.internal(span))?;
            let default = it.next().map(|v| self.value(v)).transpose()?;
            params.push(ParamDef {
                name,
                default,
                span,
            });
        }
        Ok(params)
    }

    /// `(name, params, statements)` of a block or model.
    #[allow(clippy::type_complexity)]
    fn header_and_body(
        &self,
        pair: Pair<'_, Rule>,
        span: Span,
    ) -> Result<(Ident, Vec<ParamDef>, Vec<Statement>), Diagnostic> {
        let mut name = None;
        let mut params = Vec::new();
        let mut statements = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::param_list => params = self.params(p)?,
                Rule::body => statements = self.body(p)?,
                _ => {}
            }
        }
        let name = name.ok_or_else(|| self.internal(span))?;
        Ok((name, params, statements))
    }

    fn block(&self, pair: Pair<'_, Rule>) -> Result<BlockDef, Diagnostic> {
        let span = self.span_of(&pair);
        let (name, params, statements) = self.header_and_body(pair, span)?;
        Ok(BlockDef {
            name,
            params,
            statements,
            span,
        })
    }

    fn model(&self, pair: Pair<'_, Rule>) -> Result<ModelAst, Diagnostic> {
        let span = self.span_of(&pair);
        let (name, params, statements) = self.header_and_body(pair, span)?;
        Ok(ModelAst {
            name,
            params,
            statements,
            span,
        })
    }

    fn body(&self, pair: Pair<'_, Rule>) -> Result<Vec<Statement>, Diagnostic> {
        pair.into_inner().map(|p| self.statement(p)).collect()
    }

    fn statement(&self, pair: Pair<'_, Rule>) -> Result<Statement, Diagnostic> {
        let span = self.span_of(&pair);
        match pair.as_rule() {
            Rule::input_stmt => self.input(pair).map(Statement::Input),
            Rule::output_stmt => {
                let mut keyword = span;
                let mut names = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::kw_output => keyword = self.span_of(&p),
                        Rule::ident => names.push(self.ident(p)),
                        _ => {}
                    }
                }
                Ok(Statement::Output(OutputStmt {
                    keyword,
                    names,
                    span,
                }))
            }
            Rule::if_stmt => {
                let mut keyword = span;
                let mut condition = None;
                let mut bodies = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::kw_if => keyword = self.span_of(&p),
                        Rule::ident => condition = Some(self.ident(p)),
                        Rule::body => bodies.push(self.body(p)?),
                        _ => {}
                    }
                }
                let condition = condition.ok_or_else(|| self.internal(span))?;
                let mut bodies = bodies.into_iter();
                let then = bodies.next().ok_or_else(|| self.internal(span))?;
                let otherwise = bodies.next().unwrap_or_default();
                Ok(Statement::If(IfStmt {
                    keyword,
                    condition,
                    then,
                    otherwise,
                    span,
                }))
            }
            Rule::chain_stmt => {
                let mut target = None;
                let mut steps = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::assign => {
                            let id = p.into_inner().next().ok_or_else(|| self.internal(span))?;
                            target = Some(self.ident(id));
                        }
                        Rule::step => steps.push(self.step(p)?),
                        _ => {}
                    }
                }
                if steps.is_empty() {
                    return Err(self.internal(span));
                }
                Ok(Statement::Chain(ChainStmt {
                    target,
                    steps,
                    span,
                }))
            }
            _ => Err(self.internal(span)),
        }
    }

    fn step(&self, pair: Pair<'_, Rule>) -> Result<Step, Diagnostic> {
        let span = self.span_of(&pair);
        let mut call = None;
        let mut repeat = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::call => call = Some(self.call(p)?),
                Rule::repeat => {
                    let n = p.into_inner().next().ok_or_else(|| self.internal(span))?;
                    repeat = Some(self.value(n)?);
                }
                _ => {}
            }
        }
        Ok(Step {
            call: call.ok_or_else(|| self.internal(span))?,
            repeat,
            span,
        })
    }

    fn input(&self, pair: Pair<'_, Rule>) -> Result<InputStmt, Diagnostic> {
        let span = self.span_of(&pair);
        let mut keyword = None;
        let mut name = None;
        let mut shape = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_input => keyword = Some(self.span_of(&p)),
                Rule::ident => name = Some(self.ident(p)),
                Rule::tuple => shape = Some(self.tuple(p)?),
                _ => {}
            }
        }
        match (keyword, shape) {
            (Some(keyword), Some(shape)) => Ok(InputStmt {
                keyword,
                name,
                shape,
                span,
            }),
            _ => Err(self.internal(span)),
        }
    }

    fn call(&self, pair: Pair<'_, Rule>) -> Result<LayerStmt, Diagnostic> {
        let span = self.span_of(&pair);
        let mut keyword = None;
        let mut args = Vec::new();
        let mut args_span = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident | Rule::kw_input => keyword = Some(self.ident(p)),
                Rule::arg_list => {
                    args_span = Some(self.span_of(&p));
                    for a in p.into_inner() {
                        args.push(self.arg(a)?);
                    }
                }
                _ => {}
            }
        }
        let keyword = keyword.ok_or_else(|| self.internal(span))?;
        Ok(LayerStmt {
            keyword,
            args,
            args_span,
            span,
        })
    }

    fn arg(&self, pair: Pair<'_, Rule>) -> Result<Arg, Diagnostic> {
        let span = self.span_of(&pair);
        let inner = pair
            .into_inner()
            .next()
            .ok_or_else(|| self.internal(span))?;
        match inner.as_rule() {
            Rule::named_arg => {
                let mut it = inner.into_inner();
                let name = it
                    .next()
                    .map(|n| self.ident(n))
                    .ok_or_else(|| self.internal(span))?;
                let value = it
                    .next()
                    .ok_or_else(|| self.internal(span))
                    .and_then(|v| self.value(v))?;
                Ok(Arg {
                    name: Some(name),
                    value,
                    span,
                })
            }
            Rule::value => Ok(Arg {
                name: None,
                value: self.value(inner)?,
                span,
            }),
            _ => Err(self.internal(span)),
        }
    }

    /// Builds a value from a `value` pair (or directly from one of its alternatives).
    fn value(&self, pair: Pair<'_, Rule>) -> Result<Value, Diagnostic> {
        let span = self.span_of(&pair);
        let pair = if pair.as_rule() == Rule::value {
            pair.into_inner()
                .next()
                .ok_or_else(|| self.internal(span))?
        } else {
            pair
        };
        let span = self.span_of(&pair);
        let text = pair.as_str();
        let kind = match pair.as_rule() {
            Rule::int => ValueKind::Int(text.parse::<i64>().ok()),
            Rule::float => ValueKind::Float(text.parse::<f64>().map_err(|_| self.internal(span))?),
            Rule::ident => ValueKind::Ident(text.to_string()),
            Rule::unknown => ValueKind::Unknown,
            Rule::string => {
                let inner = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
                ValueKind::Str(inner.ok_or_else(|| self.internal(span))?.to_string())
            }
            Rule::tuple => return self.tuple(pair),
            Rule::expr => return self.expr(pair),
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
                        .ok_or_else(|| self.internal(span))
                        .and_then(|v| self.value(v))?;
                    op = Some((o, Box::new(operand)));
                }
                ValueKind::Channels(ChannelExpr { op })
            }
            _ => return Err(self.internal(span)),
        };
        Ok(Value { kind, span })
    }

    /// `a op b op c ...` with `*` and `/` binding tighter than `+` and `-`,
    /// all left-associative.
    fn expr(&self, pair: Pair<'_, Rule>) -> Result<Value, Diagnostic> {
        let span = self.span_of(&pair);
        let mut operands = Vec::new();
        let mut ops = Vec::new();
        for p in pair.into_inner() {
            if p.as_rule() == Rule::bin_op {
                ops.push(match p.as_str() {
                    "*" => BinOp::Mul,
                    "/" => BinOp::Div,
                    "+" => BinOp::Add,
                    _ => BinOp::Sub,
                });
            } else {
                operands.push(self.value(p)?);
            }
        }
        if operands.len() != ops.len() + 1 {
            return Err(self.internal(span));
        }
        let join = |lhs: Value, op: BinOp, rhs: Value| Value {
            span: Span::new(lhs.span.start, rhs.span.end),
            kind: ValueKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            },
        };
        // Fold `*` and `/` first, then `+` and `-`.
        let mut operands = operands.into_iter();
        let mut terms: Vec<Value> = vec![operands.next().ok_or_else(|| self.internal(span))?];
        let mut term_ops = Vec::new();
        for (op, rhs) in ops.into_iter().zip(operands) {
            if matches!(op, BinOp::Mul | BinOp::Div) {
                let lhs = terms.pop().ok_or_else(|| self.internal(span))?;
                terms.push(join(lhs, op, rhs));
            } else {
                term_ops.push(op);
                terms.push(rhs);
            }
        }
        let mut terms = terms.into_iter();
        let mut acc = terms.next().ok_or_else(|| self.internal(span))?;
        for (op, rhs) in term_ops.into_iter().zip(terms) {
            acc = join(acc, op, rhs);
        }
        Ok(acc)
    }

    fn tuple(&self, pair: Pair<'_, Rule>) -> Result<Value, Diagnostic> {
        let span = self.span_of(&pair);
        let items = pair
            .into_inner()
            .map(|v| self.value(v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value {
            kind: ValueKind::Tuple(items),
            span,
        })
    }
}
