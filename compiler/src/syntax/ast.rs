//! The abstract syntax tree of a `.cnn` file. Every node carries the
//! [`Span`] (byte offsets) of the text it was parsed from, so that the checker
//! can point at it.

use crate::model::Span;

/// An identifier with its location (`conv2d`, `relu`, `fashion_mnist`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `model NAME { statements }`: the whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAst {
    pub name: Ident,
    pub statements: Vec<Statement>,
    /// The whole `model ... { ... }` text.
    pub span: Span,
}

/// One statement of the model body.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `input [h, w, c]`.
    Input(InputStmt),
    /// A layer such as `conv2d(64, 3)` or `flatten`.
    Layer(LayerStmt),
}

impl Statement {
    /// The span of the whole statement.
    pub fn span(&self) -> Span {
        match self {
            Statement::Input(i) => i.span,
            Statement::Layer(l) => l.span,
        }
    }
}

/// `input [28, 28, 1]`: the per-example input shape (NHWC without the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct InputStmt {
    /// The `input` keyword.
    pub keyword: Span,
    /// The shape, always a [`ValueKind::Tuple`] (the grammar requires brackets).
    pub shape: Value,
    pub span: Span,
}

/// A layer statement: `keyword` or `keyword(args)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStmt {
    /// The layer keyword (`conv2d`, `dense`, ...), not yet validated.
    pub keyword: Ident,
    /// Arguments in source order (positional and named mixed as written).
    pub args: Vec<Arg>,
    /// The parenthesised argument list, if written.
    pub args_span: Option<Span>,
    pub span: Span,
}

/// One argument: positional (`64`) or named (`padding = same`).
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// The keyword of a named argument; `None` for a positional one.
    pub name: Option<Ident>,
    pub value: Value,
    pub span: Span,
}

/// A literal or expression value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

/// The kinds of values the grammar accepts; their meaning is decided by the checker.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// An integer literal; `None` when it does not fit in an `i64`.
    Int(Option<i64>),
    /// A floating-point literal (`0.5`, `1e-3`); may be infinite if huge.
    Float(f64),
    /// A bare identifier (`relu`, `same`, `true`).
    Ident(String),
    /// A string literal, without its quotes.
    Str(String),
    /// `(a, b, ...)` or `[a, b, ...]`.
    Tuple(Vec<Value>),
    /// A channel expression: `in`, `in * N`, `in / N`.
    Channels(ChannelExpr),
}

/// `in`, `in * factor`, or `in / divisor`: a filter count relative to the
/// number of incoming channels (the last axis of the layer's input).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelExpr {
    /// The operator and its operand (an [`ValueKind::Int`] or [`ValueKind::Float`]
    /// literal; the checker requires a positive integer).
    pub op: Option<(ChannelOp, Box<Value>)>,
}

/// The operator of a channel expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOp {
    /// `in * N`
    Mul,
    /// `in / N` (must divide exactly)
    Div,
}
