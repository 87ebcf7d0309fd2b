//! The op graph ([`ir`]), lowering from a checked model ([`lower`]) and the
//! optimization passes ([`passes`]).

pub mod dump;
pub mod ir;
pub mod lower;
pub mod passes;

pub use ir::{Graph, Node, NodeId, Op, Param, ParamId};
