//! The op graph ([`ir`]), lowering from a checked model ([`lower`]), the
//! optimization passes ([`passes`]) and the inference memory plan
//! ([`memory`]).

pub mod dump;
pub mod ir;
pub mod lower;
pub mod memory;
pub mod passes;

pub use ir::{Graph, Node, NodeId, Op, Param, ParamId};
