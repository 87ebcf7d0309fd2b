//! cnnc compiler: `.cnn` source -> AST (with spans) -> checked model ->
//! op graph -> optimized op graph.
//!
//! The stages, one module each, in the order data flows:
//! - [`syntax`]: the pest grammar (`grammar/cnn.pest`) and the AST, every node with a [`model::Span`];
//! - [`expand`]: loading imports ([`sources`]), inlining blocks and models,
//!   resolving tensor names: the graph of layer calls;
//! - [`check`]: name resolution, Keras defaults, argument validation and shape
//!   inference, producing a [`model::Model`] or located [`diagnostics::Diagnostic`]s;
//! - [`summary`]: the Keras-style `model.summary()` table and its JSON form;
//! - [`dot`]: a Graphviz picture of the model;
//! - [`graph`]: lowering to primitive ops ([`graph::lower`]) and the optimization passes ([`graph::passes`]).
//!
//! This crate never depends on the runtime.

pub mod check;
pub mod diagnostics;
pub mod dot;
pub(crate) mod expand;
pub mod graph;
pub mod model;
pub mod sources;
pub mod summary;
pub mod syntax;

pub use check::{check_file, check_source};
pub use diagnostics::{render_diagnostics, Diagnostic};
pub use model::Model;
pub use sources::Sources;
