//! The front end's first stage: the pest grammar (`grammar/cnn.pest`) and the
//! AST ([`ast`]), every node carrying the [`Span`](crate::model::Span) it was
//! parsed from. [`parse`] turns source text into a [`ModelAst`] or one
//! friendly, located syntax error (`E0001`).

pub mod ast;
mod errors;
pub mod parser;

pub use ast::*;
pub use parser::{parse, parse_at};
