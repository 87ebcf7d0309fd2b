//! Errors of the importer.

use std::path::PathBuf;

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The model file cannot be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a serialized ONNX `ModelProto`.
    #[error("not an ONNX model (protobuf decoding failed: {0})")]
    Decode(String),

    /// The model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,

    /// An operator, or a use of it (an attribute value, a layout, a
    /// padding), that the cnnc language cannot express. `op_type` is the
    /// ONNX operator (`LRN`, `Conv`, ...), `node` the node's name (or, for an
    /// unnamed node, its first output).
    #[error("unsupported ONNX operator `{op_type}` (node `{node}`): {reason}")]
    Unsupported {
        op_type: String,
        node: String,
        reason: String,
    },

    /// A node that is malformed (missing inputs, inconsistent shapes).
    #[error("invalid ONNX node `{node}` ({op_type}): {reason}")]
    InvalidNode {
        op_type: String,
        node: String,
        reason: String,
    },

    /// A constant tensor that cannot be decoded.
    #[error("constant tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },

    /// A graph input cannot become a cnnc input.
    #[error("model input `{name}`: {reason}")]
    Input { name: String, reason: String },

    /// A graph output cannot be produced.
    #[error("model output `{name}`: {reason}")]
    Output { name: String, reason: String },

    /// The generated spec does not pass cnnc's checker, or checks to layers
    /// other than the ones the importer meant (an importer bug).
    #[error("internal error: the generated spec does not check as intended:\n{0}")]
    SpecRejected(String),

    /// The weights do not match the parameters of the checked spec (an
    /// importer bug).
    #[error("internal error: the weights do not match the generated spec: {0}")]
    WeightsMismatch(String),

    /// Writing the spec or the checkpoint failed.
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImportError {
    /// The ONNX operator type, for errors about one node.
    pub fn op_type(&self) -> Option<&str> {
        match self {
            ImportError::Unsupported { op_type, .. } | ImportError::InvalidNode { op_type, .. } => {
                Some(op_type)
            }
            _ => None,
        }
    }
}
