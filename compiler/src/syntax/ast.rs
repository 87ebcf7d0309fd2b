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

/// A whole `.cnn` file: imports, blocks and at most one model, in source order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileAst {
    pub imports: Vec<Import>,
    pub blocks: Vec<BlockDef>,
    /// Models in source order (the checker reports more than one).
    pub models: Vec<ModelAst>,
}

/// `import "path.cnn"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The path as written, relative to the importing file.
    pub path: String,
    /// The string literal.
    pub path_span: Span,
    pub span: Span,
}

/// `block NAME(params) { statements }`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<ParamDef>,
    pub statements: Vec<Statement>,
    pub span: Span,
}

/// A block or model parameter: `filters` or `strides = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    pub name: Ident,
    pub default: Option<Value>,
    pub span: Span,
}

/// `model NAME(params) { statements }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAst {
    pub name: Ident,
    pub params: Vec<ParamDef>,
    pub statements: Vec<Statement>,
    /// The whole `model ... { ... }` text.
    pub span: Span,
}

/// One statement of a model or block body.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `input [h, w, c]` or `input NAME [h, w, c]`.
    Input(InputStmt),
    /// `x = a -> conv2d(64, 3) -> relu`, or a single layer such as `flatten`.
    Chain(ChainStmt),
    /// `output a, b`.
    Output(OutputStmt),
    /// `if flag { ... } else { ... }`.
    If(IfStmt),
}

impl Statement {
    /// The span of the whole statement.
    pub fn span(&self) -> Span {
        match self {
            Statement::Input(i) => i.span,
            Statement::Chain(c) => c.span,
            Statement::Output(o) => o.span,
            Statement::If(i) => i.span,
        }
    }
}

/// `input [28, 28, 1]`: the per-example input shape (NHWC without the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct InputStmt {
    /// The `input` keyword.
    pub keyword: Span,
    /// The input's name, if given (`input image [224, 224, 3]`).
    pub name: Option<Ident>,
    /// The shape, always a [`ValueKind::Tuple`] (the grammar requires brackets).
    pub shape: Value,
    pub span: Span,
}

/// `NAME = step -> step -> ...`: a chain of layer or block calls, optionally
/// naming its result.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainStmt {
    pub target: Option<Ident>,
    /// At least one step.
    pub steps: Vec<Step>,
    pub span: Span,
}

/// One step of a chain: a call, possibly repeated (`identity_block(64) * 2`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The layer, block or model call, or a tensor name (a call without arguments).
    pub call: LayerStmt,
    /// `* N`: the repeat count literal (an [`ValueKind::Int`]).
    pub repeat: Option<Value>,
    pub span: Span,
}

/// `output a, b, ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputStmt {
    pub keyword: Span,
    pub names: Vec<Ident>,
    pub span: Span,
}

/// `if flag { then } else { otherwise }`.
#[derive(Debug, Clone, PartialEq)]
pub struct IfStmt {
    pub keyword: Span,
    pub condition: Ident,
    pub then: Vec<Statement>,
    pub otherwise: Vec<Statement>,
    pub span: Span,
}

/// A call: `keyword` or `keyword(args)`: a layer, a block, a model, or (without
/// arguments, at the head of a chain) a tensor name.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStmt {
    /// The keyword (`conv2d`, `dense`, a block name, ...), not yet validated.
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
    /// `?`: an unknown size (allowed in `input` shapes).
    Unknown,
    /// Arithmetic on block parameters, `lhs op rhs` (`filters * 4`);
    /// evaluated when the block is expanded.
    Binary {
        op: BinOp,
        lhs: Box<Value>,
        rhs: Box<Value>,
    },
}

/// An arithmetic operator of a [`ValueKind::Binary`] expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// Exact integer division (an error if it leaves a remainder).
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// `in`, `in * factor`, or `in / divisor`: a filter count relative to the
/// number of incoming channels (the last axis of the layer's input).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelExpr {
    /// The operator and its operand (an [`ValueKind::Int`] or [`ValueKind::Float`]
    /// literal, or a block parameter's name before expansion; the checker
    /// requires a positive integer).
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
